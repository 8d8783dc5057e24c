//! Crash tests with real processes: a test binary runs itself again as a
//! child that plays a role, and the parent kills it with SIGKILL in the
//! middle of its work.
//!
//! The child is the same test binary started with `--exact <entry test>`
//! and an environment variable naming the role; the entry test plays the
//! role when the variable is set and returns at once otherwise. The child
//! reports progress as lines on stdout, which the parent reads to choose the
//! moment of the kill.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

/// The environment variable that names a child's role.
pub const ROLE_VAR: &str = "HERALD_CRASH_ROLE";

/// The role this process plays, if it was started by [`spawn_self`].
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// Starts this test binary again, running only the test `entry`, in `role`,
/// with `env` added to its environment and its stdout piped to the parent.
///
/// # Panics
///
/// If the process cannot be started.
pub fn spawn_self(entry: &str, role: &str, env: &[(&str, &std::ffi::OsStr)]) -> Child {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        cmd.env(key, value);
    }
    cmd.spawn().expect("start the child process")
}

/// Reads the child's stdout until `count` lines starting with `prefix` came,
/// then kills it with SIGKILL and reaps it; returns the rest of those lines.
///
/// # Panics
///
/// If the child ends before printing them (it is reaped first).
pub fn kill_after(mut child: Child, prefix: &str, count: usize) -> Vec<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let mut seen = Vec::new();
    for line in BufReader::new(stdout).lines() {
        let Ok(line) = line else { break };
        if let Some(rest) = line.strip_prefix(prefix) {
            seen.push(rest.trim().to_owned());
            if seen.len() >= count {
                break;
            }
        }
    }
    // Killed in every case, so that no child outlives the test.
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        seen.len() >= count,
        "the child ended after {} of {count} {prefix:?} lines",
        seen.len()
    );
    seen
}
