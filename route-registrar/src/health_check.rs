//! Running a route's health check: `/bin/sh -c script_path` in its own process group,
//! killed (the whole group, so `sleep`s and pipelines the script started die too) when it
//! outlives its timeout or when the caller stops waiting for it.
//!
//! Lifecycle of one check: spawn -> wait for exit and for EOF on stdout/stderr (at most
//! `timeout`) -> on timeout, SIGKILL the group, then reap the shell. Dropping the future
//! at any point also kills the group (a guard does it), so a shutdown never leaves a
//! script behind.

use std::process::{ExitStatus, Stdio};

use rustix::process::{Pid, Signal, kill_process_group};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};

use crate::config::{HealthCheck, format_duration};

/// How much of a script's stdout and of its stderr is kept for the logs.
const OUTPUT_LIMIT: usize = 4096;

/// The result of one run of a health check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Exit status 0.
    Healthy,
    /// Any other exit status, or killed by a signal.
    Unhealthy { status: String, output: String },
    /// `/bin/sh` could not be started, or waiting for it failed.
    Failed { reason: String },
    /// Still running at the timeout; the process group was killed.
    TimedOut,
}

impl Outcome {
    /// Whether the route should be registered.
    pub fn is_healthy(&self) -> bool {
        matches!(self, Outcome::Healthy)
    }
}

/// Runs `check` once. Never returns later than about `check.timeout` (plus the time it
/// takes the kernel to deliver a SIGKILL).
pub async fn run(check: &HealthCheck) -> Outcome {
    let mut command = Command::new("/bin/sh");
    command
        .arg("-c")
        .arg(&check.script_path)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(e) => {
            return Outcome::Failed {
                reason: format!("cannot start /bin/sh: {e}"),
            };
        }
    };
    // Declared after `child`, so dropped before it: the group is killed while the shell
    // is not yet reaped, hence its pid (= the group id) cannot have been reused.
    let mut guard = GroupKiller::new(&child);

    let stdout = read_capped(child.stdout.take());
    let stderr = read_capped(child.stderr.take());
    let finished = async { tokio::join!(child.wait(), stdout, stderr) };
    let outcome = match tokio::time::timeout(check.timeout, finished).await {
        Ok((Ok(status), stdout, stderr)) => from_status(status, stdout, stderr),
        Ok((Err(e), _, _)) => Outcome::Failed {
            reason: format!("waiting for the script failed: {e}"),
        },
        Err(_) => {
            tracing::debug!(
                check = %check.name,
                timeout = %format_duration(check.timeout),
                "health check timed out; killing its process group"
            );
            guard.kill();
            // SIGKILL cannot be ignored: this returns as soon as the kernel is done.
            let _ = child.wait().await;
            return Outcome::TimedOut;
        }
    };
    // The shell is gone; whatever it left in the background is not ours to kill now that
    // its pid may be reused.
    guard.disarm();
    outcome
}

fn from_status(status: ExitStatus, stdout: String, stderr: String) -> Outcome {
    if status.success() {
        return Outcome::Healthy;
    }
    let mut output = stdout;
    if !stderr.is_empty() {
        if !output.is_empty() {
            output.push('\n');
        }
        output.push_str(&stderr);
    }
    Outcome::Unhealthy {
        status: status.to_string(),
        output,
    }
}

/// Reads a pipe to its end, keeping the first [`OUTPUT_LIMIT`] bytes (lossy UTF-8). The
/// rest is drained so that a chatty script never blocks on a full pipe.
async fn read_capped(pipe: Option<impl AsyncRead + Unpin>) -> String {
    let Some(mut pipe) = pipe else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_LIMIT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    String::from_utf8_lossy(&kept).trim_end().to_owned()
}

/// Kills a child's process group on drop unless disarmed.
struct GroupKiller {
    group: Option<Pid>,
}

impl GroupKiller {
    fn new(child: &Child) -> Self {
        let group = child
            .id()
            .and_then(|id| i32::try_from(id).ok())
            .and_then(Pid::from_raw);
        GroupKiller { group }
    }

    fn kill(&mut self) {
        if let Some(group) = self.group.take() {
            // ESRCH (already gone) is fine.
            let _ = kill_process_group(group, Signal::KILL);
        }
    }

    fn disarm(&mut self) {
        self.group = None;
    }
}

impl Drop for GroupKiller {
    fn drop(&mut self) {
        self.kill();
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    fn check(script: &str, timeout: Duration) -> HealthCheck {
        HealthCheck {
            name: "test".to_owned(),
            script_path: script.to_owned(),
            timeout,
        }
    }

    #[tokio::test]
    async fn exit_zero_is_healthy_and_anything_else_is_not() {
        let long = Duration::from_secs(10);
        assert_eq!(run(&check("true", long)).await, Outcome::Healthy);
        match run(&check("echo out; echo err >&2; exit 3", long)).await {
            Outcome::Unhealthy { status, output } => {
                assert!(status.contains('3'), "{status}");
                assert_eq!(output, "out\nerr");
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            run(&check("/nonexistent/script", long)).await,
            Outcome::Unhealthy { .. }
        ));
    }

    #[tokio::test]
    async fn a_hung_script_and_its_children_are_killed_at_the_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let pid_file = dir.path().join("sleep.pid");
        let script = format!("sleep 60 & echo $! > {}; wait", pid_file.display());
        let started = Instant::now();
        let outcome = run(&check(&script, Duration::from_millis(300))).await;
        assert_eq!(outcome, Outcome::TimedOut);
        assert!(started.elapsed() < Duration::from_secs(5));
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        // The orphaned sleep is gone, or a zombie awaiting its new parent's reaping.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            match std::fs::read_to_string(&stat) {
                Err(_) => break,
                Ok(s) if s.split(") ").nth(1).is_some_and(|r| r.starts_with('Z')) => break,
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await
                }
                Ok(s) => panic!("sleep still alive: {s}"),
            }
        }
    }

    #[tokio::test]
    async fn output_is_capped() {
        let outcome = run(&check(
            "head -c 100000 /dev/zero | tr '\\0' x; exit 1",
            Duration::from_secs(10),
        ))
        .await;
        match outcome {
            Outcome::Unhealthy { output, .. } => assert_eq!(output.len(), OUTPUT_LIMIT),
            other => panic!("{other:?}"),
        }
    }
}
