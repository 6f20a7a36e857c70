//! Child processes of the load benchmark: started pinned to a CPU with `taskset`, their
//! output kept in a log file, stopped (SIGTERM, then SIGKILL) when the guard drops, so an
//! error anywhere in a run leaves nothing behind.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// A running child process, stopped on drop.
#[derive(Debug)]
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

/// `program args...` run under `taskset -c cpus`.
pub fn pinned(cpus: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
    let mut cmd = Command::new("taskset");
    cmd.arg("-c").arg(cpus).arg(program);
    cmd
}

impl Proc {
    /// Starts `cmd`, with stdout and stderr going to `log_dir/<name>.log`.
    pub fn spawn(name: &str, cmd: &mut Command, log_dir: &Path) -> anyhow::Result<Proc> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let out = File::create(&log).with_context(|| log.display().to_string())?;
        let err = out.try_clone()?;
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error with the end of the log if the process has exited.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "{} exited ({status}); end of {}:\n{}",
                self.name,
                self.log.display(),
                log_tail(&self.log)
            );
        }
        Ok(())
    }

    /// Waits until `addr` accepts TCP connections, or fails after `timeout`.
    pub fn wait_for_port(&mut self, addr: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_running()?;
            if std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "{} does not listen on {addr} after {timeout:?}; end of {}:\n{}",
                    self.name,
                    self.log.display(),
                    log_tail(&self.log)
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Resident memory of the process and its descendants (nginx's workers), in KiB.
    pub fn tree_rss_kib(&self) -> u64 {
        let root = self.pid();
        let mut total = rss_kib(root);
        for pid in descendants(root) {
            total += rss_kib(pid);
        }
        total
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = Pid::from_raw(self.child.id() as i32);
        let _ = kill(pid, Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The last lines of a log file.
pub fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

/// `VmRSS` of `pid` in KiB (0 if the process is gone).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// CPU time a process has used, all its threads together.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTime {
    /// Seconds in user space.
    pub user: f64,
    /// Seconds in the kernel on its behalf (system calls, and the network stack's work
    /// that runs in them).
    pub system: f64,
}

impl CpuTime {
    /// User and kernel seconds together.
    pub fn total(&self) -> f64 {
        self.user + self.system
    }
}

impl std::ops::Add for CpuTime {
    type Output = CpuTime;
    fn add(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user + other.user,
            system: self.system + other.system,
        }
    }
}

impl std::ops::Sub for CpuTime {
    type Output = CpuTime;
    fn sub(self, other: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - other.user,
            system: self.system - other.system,
        }
    }
}

/// CPU time used so far by `root` and its descendants (nginx's workers).
pub fn tree_cpu_time(root: u32) -> CpuTime {
    descendants(root)
        .into_iter()
        .fold(cpu_time(root), |total, pid| total + cpu_time(pid))
}

/// CPU time of `pid` from `/proc/PID/stat` (zero if the process is gone).
pub fn cpu_time(pid: u32) -> CpuTime {
    stat_cpu_time(&format!("/proc/{pid}/stat"))
}

/// CPU time from a `stat` file of `/proc` (zero if it cannot be read).
fn stat_cpu_time(path: &str) -> CpuTime {
    let stat = std::fs::read_to_string(path).unwrap_or_default();
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .filter(|&t| t > 0)
        .unwrap_or(100) as f64;
    parse_stat_ticks(&stat).map_or_else(CpuTime::default, |(user, system)| CpuTime {
        user: user as f64 / ticks_per_second,
        system: system as f64 / ticks_per_second,
    })
}

/// CPU time of one thread `tid` of process `pid` (zero if it is gone). A process's
/// first thread has the process's id.
pub fn thread_cpu_time(pid: u32, tid: u32) -> CpuTime {
    stat_cpu_time(&format!("/proc/{pid}/task/{tid}/stat"))
}

/// `(utime, stime)` in clock ticks from a `/proc/PID/stat` line: fields 14 and 15,
/// counted after the command name, which may itself hold spaces and parentheses.
fn parse_stat_ticks(stat: &str) -> Option<(u64, u64)> {
    let (_, rest) = stat.rsplit_once(')')?;
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let mut fields = rest.split_whitespace().skip(11);
    let user = fields.next()?.parse().ok()?;
    let system = fields.next()?.parse().ok()?;
    Some((user, system))
}

/// Every process below `root` in the process tree.
fn descendants(root: u32) -> Vec<u32> {
    let mut parents: Vec<(u32, u32)> = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse().ok()) else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // The command name may hold spaces and parentheses: the ppid follows the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse().ok());
            if let Some(ppid) = ppid {
                parents.push((pid, ppid));
            }
        }
    }
    let mut found = vec![root];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, p)| *p == parent)
                .map(|(c, _)| *c),
        );
        i += 1;
    }
    found.remove(0);
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_ticks_are_read_after_a_command_name_with_spaces_and_parentheses() {
        let line = "4242 (nginx: worker (x) 1) S 4241 4241 4241 0 -1 4194624 1480 0 0 0 731 1290 0 0 20 0 1 0 123 0 0";
        assert_eq!(parse_stat_ticks(line), Some((731, 1290)));
        assert_eq!(parse_stat_ticks("4242 (cut short) S 1 2"), None);
        assert_eq!(parse_stat_ticks(""), None);
    }

    #[test]
    fn the_cpu_time_read_follows_the_work_done() {
        // Burn user time until the reading has moved by 30 ms (the clock tick is 10 ms):
        // a parse of the wrong fields would stay put (or move with the wall clock).
        let before = cpu_time(std::process::id());
        let start = Instant::now();
        let mut x = 0u64;
        let used = loop {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
            let used = cpu_time(std::process::id()) - before;
            if used.user >= 0.03 || start.elapsed() > Duration::from_secs(10) {
                break used;
            }
        };
        assert!(used.user >= 0.03, "{used:?} after {:?}", start.elapsed());
        assert!(used.system >= 0.0, "{used:?}");
    }
}
