//! Background processes that are stopped, by PID, when dropped.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A child process the lab started; dropping it sends SIGTERM, then SIGKILL
/// if it has not exited within two seconds, and reaps it.
pub struct Process {
    child: Child,
    what: String,
}

impl Process {
    /// Start `cmd` with its output discarded.
    pub fn spawn(cmd: &mut Command, what: &str) -> Result<Process> {
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Process {
            child,
            what: what.to_string(),
        })
    }

    /// Start `cmd` with its stdout and stderr going to `log`.
    pub fn spawn_logged(cmd: &mut Command, what: &str, log: std::fs::File) -> Result<Process> {
        let err = log.try_clone().context("duplicating the log file")?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err))
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Process {
            child,
            what: what.to_string(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Let the process run on after this value is dropped; its PID.
    pub fn detach(self) -> u32 {
        let pid = self.child.id();
        std::mem::forget(self);
        pid
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Send `signal` and wait up to `timeout` for the process to exit;
    /// true if it did.
    pub fn signal_and_wait(&mut self, signal: Signal, timeout: Duration) -> bool {
        let _ = kill(Pid::from_raw(self.child.id() as i32), signal);
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.is_running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.is_running() && !self.signal_and_wait(Signal::SIGTERM, Duration::from_secs(2)) {
            eprintln!("lab: {} ignored SIGTERM, killing it", self.what);
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
