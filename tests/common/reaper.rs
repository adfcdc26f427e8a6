//! Leak guard for spawned servers: a detached shell that waits for the test process to
//! die and then runs a cleanup command, so a test killed by a timeout (no `Drop`) does
//! not leave Postgres, Redis or pgmemo running. A normal `Drop` kills the reaper first.

use std::process::{Child, Command, Stdio};

/// A running watchdog; dropping it cancels the cleanup.
pub struct Reaper {
    child: Option<Child>,
}

impl Reaper {
    /// Runs `cleanup` (a `sh` command) once this test process has exited.
    ///
    /// `setsid` puts the watchdog in its own session so a runner that kills the test's
    /// process group does not take the watchdog down with it.
    pub fn spawn(cleanup: &str) -> Reaper {
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; {cleanup}",
            pid = std::process::id()
        );
        let child = Command::new("setsid")
            .args(["sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok();
        if child.is_none() {
            eprintln!("warning: could not spawn the cleanup watchdog (setsid/sh missing?)");
        }
        Reaper { child }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
