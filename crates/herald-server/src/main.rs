//! The `herald` binary: see the [`herald_server`] crate docs.

fn main() -> std::process::ExitCode {
    herald_server::cli::main()
}
