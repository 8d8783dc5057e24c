//! Crash tests with real processes: a test binary runs itself again as a
//! child that plays a role, and the parent kills it with SIGKILL in the
//! middle of its work.
//!
//! The child is the same test binary started with `--exact <entry test>`
//! and an environment variable naming the role; the entry test plays the
//! role when the variable is set ([`role`]) and returns at once otherwise.
//! The child reports progress as lines on stdout, which the parent reads
//! ([`kill_after`]) to choose the moment of the kill.
//!
//! # No orphans
//!
//! A child is held in a [`ChildGuard`], killed and reaped when dropped, on
//! every path out of the test, panics included; and a child that calls
//! [`exit_when_parent_is_gone`] ends as soon as its stdin closes, so it
//! cannot outlive the test process however that one ends.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The environment variable that names a child's role.
pub const ROLE_VAR: &str = "HERALD_CRASH_ROLE";

/// How long a child may take to print what the parent waits for.
const CHILD_TIMEOUT: Duration = Duration::from_secs(60);

/// The role this process plays, if it was started by [`spawn_self`].
pub fn role() -> Option<String> {
    std::env::var(ROLE_VAR).ok()
}

/// In a child: ends the process as soon as the parent is gone (its end of
/// the child's stdin closed).
pub fn exit_when_parent_is_gone() {
    std::thread::spawn(|| {
        let mut sink = Vec::new();
        let _ = std::io::stdin().read_to_end(&mut sink);
        std::process::exit(3);
    });
}

/// A child process, killed (SIGKILL) and reaped when dropped.
pub struct ChildGuard(Child);

impl ChildGuard {
    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Writes `line` to the child's stdin (for a child that takes
    /// commands, such as a graceful stop).
    ///
    /// # Panics
    ///
    /// If the child's stdin is gone.
    pub fn send_line(&mut self, line: &str) {
        let stdin = self.0.stdin.as_mut().expect("piped stdin");
        writeln!(stdin, "{line}").expect("write to the child's stdin");
        stdin.flush().expect("flush the child's stdin");
    }

    /// Waits until the child exits by itself, polling under a deadline;
    /// returns whether it exited successfully.
    ///
    /// # Panics
    ///
    /// If it is still running after `within` (it is killed first).
    pub fn wait_for_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for the child") {
                return status.success();
            }
            if Instant::now() >= deadline {
                self.kill();
                panic!("the child did not exit within {within:?}");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the child with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        // Fails only if it has been reaped already.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts this test binary again, running only the test `entry`, in `role`,
/// with `env` added to its environment, its stdin and stdout piped.
///
/// # Panics
///
/// If the process cannot be started.
pub fn spawn_self(entry: &str, role: &str, env: &[(&str, &OsStr)]) -> ChildGuard {
    let mut cmd = Command::new(std::env::current_exe().expect("the test binary"));
    cmd.args(["--exact", entry, "--nocapture", "--test-threads=1"])
        .env(ROLE_VAR, role)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (key, value) in env {
        cmd.env(key, value);
    }
    ChildGuard(cmd.spawn().expect("start the child process"))
}

/// Reads the child's stdout until `count` lines starting with `prefix` came,
/// then kills it with SIGKILL and reaps it; returns the rest of those lines.
///
/// # Panics
///
/// If the child ends, or stays silent for a minute, before printing them
/// (it is killed first).
pub fn kill_after(mut child: ChildGuard, prefix: &'static str, count: usize) -> Vec<String> {
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = std::sync::mpsc::channel();
    // A thread reads, so that the wait has a deadline; it ends when the pipe
    // closes (the child killed).
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if let Some(rest) = line.strip_prefix(prefix) {
                if tx.send(rest.trim().to_owned()).is_err() {
                    return;
                }
            }
        }
    });
    let deadline = Instant::now() + CHILD_TIMEOUT;
    let mut seen = Vec::new();
    while seen.len() < count {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => seen.push(line),
            Err(err) => {
                child.kill();
                panic!(
                    "the child printed {} {prefix:?} lines of {count}, then {err}",
                    seen.len()
                );
            }
        }
    }
    child.kill();
    seen
}
