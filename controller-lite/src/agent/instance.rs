//! One instance's life: unpack the droplet into its own directory, start the command as a
//! child process in its own process group, wait for its health check, watch it, and stop
//! it gracefully. Every change of state is reported to the agent loop as an [`Event`].
//!
//! ```text
//! unpack -> spawn -> STARTING --health check ok--> RUNNING --exit/check fails--> CRASHED
//!              \            \--exit/timeout--> CRASHED
//!               stop (any time): SIGTERM the group, SIGKILL after 10 s -> Stopped
//! ```
//!
//! Instances do not outlive their agent, as containers die with a Diego cell: see
//! [`LIFELINE`].

use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, SystemTime};

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::DropletSource;
use super::limits::{self, MemoryEnforcement};
use crate::messages::{DesiredInstance, InstanceKey, LogLine};
use crate::staging;
use crate::util::unix_nanos;

/// Between SIGTERM and SIGKILL (Diego's `graceful_shutdown_interval_in_seconds`).
pub const GRACE_PERIOD: Duration = Duration::from_secs(10);
/// While starting, how often the health check is tried.
const STARTING_CHECK_INTERVAL: Duration = Duration::from_millis(100);
/// While running, how often the health check is repeated.
const RUNNING_CHECK_INTERVAL: Duration = Duration::from_secs(10);
/// Timeout of one health check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The first lines of every instance's shell: a watchdog that SIGKILLs the instance's
/// process group once the agent is gone.
///
/// The agent keeps the write end of the instance's stdin pipe and never writes to it; the
/// kernel closes it when the agent exits, however it exits (even SIGKILL, which no
/// handler of ours sees). The watchdog, a background subshell in the instance's process
/// group, then reads EOF and kills the whole group. Without it, the instances of a
/// killed agent would run on as orphans that nobody supervises, while the controller
/// starts replacements elsewhere. `PR_SET_PDEATHSIG` would need `pre_exec` (unsafe
/// code), would only reach the shell, not the app it forks, and fires when the spawning
/// thread exits rather than the agent process.
///
/// The main shell hands the pipe (fd 3) to the watchdog only, and gives the app
/// `/dev/null` as stdin as before. The watchdog ignores a stop's SIGTERM, so it keeps
/// watching through the grace period (see [`GRACEFUL_STOP`]); the agent's SIGKILL to the
/// group once the app is gone ends it. It is forked with SIGTERM ignored, which a
/// subshell keeps, rather than ignoring it itself, which it might do only after a
/// SIGTERM.
const LIFELINE: &str = "exec 3<&0 </dev/null\n\
    trap '' TERM\n\
    { read -r _ <&3; kill -s KILL 0; } >/dev/null 2>&1 &\n\
    exec 3<&-\n";

/// After the watchdog: the shell outlives a stop's SIGTERM until the app has exited.
/// (A SIGTERM between the two `trap`s is lost: the agent's SIGKILL comes after the grace
/// period instead.)
///
/// The SIGTERM goes to the whole group, so the app gets it directly. A shell without a
/// trap would die of it at once; the agent, which waits for the shell (its child), would
/// then take the instance for gone and SIGKILL the group right away, cutting requests in
/// progress and leaving the app no grace period at all. With the trap, the shell waits
/// for the command in progress, then exits with its status (`exit` with no operand in a
/// trap keeps `$?`) instead of going on to the next command. Programs the shell starts
/// get a trapped signal at its default action, so the app ends on SIGTERM, or handles it
/// itself, as on Cloud Foundry.
const GRACEFUL_STOP: &str = "trap exit TERM\n";

/// The whole shell script of an instance: [`LIFELINE`], [`GRACEFUL_STOP`], then `body`.
fn instance_script(body: &str) -> String {
    format!("{LIFELINE}{GRACEFUL_STOP}{body}")
}

/// What the agent needs to start an instance.
#[derive(Debug, Clone)]
pub struct LaunchSpec {
    pub desired: DesiredInstance,
    pub instance_guid: String,
    /// The instance's own directory (`app/` and `tmp/` inside); removed at the end.
    pub dir: PathBuf,
    /// Where the droplet (tar.gz) to unpack into `dir/app` comes from.
    pub droplets: DropletSource,
    /// The address the router dials (also `CF_INSTANCE_IP`).
    pub host: String,
    pub memory: MemoryEnforcement,
    /// Time allowed to pass the first health check (CC's default: 60 s).
    pub startup_timeout: Duration,
}

/// A state change of one instance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Starting {
        port: u16,
        pid: Option<u32>,
    },
    Running,
    Crashed {
        details: String,
    },
    /// Gone after a stop request; the agent forgets it.
    Stopped,
}

/// An [`Event`] with the instance it concerns.
#[derive(Debug, Clone)]
pub struct InstanceEvent {
    pub key: InstanceKey,
    pub instance_guid: String,
    pub event: Event,
}

/// Handle to a launched instance.
#[derive(Debug)]
pub struct InstanceHandle {
    pub instance_guid: String,
    stop: CancellationToken,
}

impl InstanceHandle {
    /// Asks the instance to stop (SIGTERM, SIGKILL after the grace period); it reports
    /// [`Event::Stopped`] when gone.
    pub fn stop(&self) {
        self.stop.cancel();
    }
}

/// Starts an instance in a task of its own.
pub fn launch(
    spec: LaunchSpec,
    events: mpsc::UnboundedSender<InstanceEvent>,
    logs: mpsc::UnboundedSender<LogLine>,
) -> InstanceHandle {
    let stop = CancellationToken::new();
    let handle = InstanceHandle {
        instance_guid: spec.instance_guid.clone(),
        stop: stop.clone(),
    };
    tokio::spawn(async move {
        let key = spec.desired.key.clone();
        let instance_guid = spec.instance_guid.clone();
        let dir = spec.dir.clone();
        let emit = |event| {
            // The agent loop outlives its instances; if it is gone nobody needs to know.
            let _ = events.send(InstanceEvent {
                key: key.clone(),
                instance_guid: instance_guid.clone(),
                event,
            });
        };
        let cell = CellLog {
            logs: logs.clone(),
            key: key.clone(),
        };
        let end = run(&spec, &stop, &emit, &logs, &cell).await;
        let dir_for_cleanup = dir.clone();
        // Best effort: a leftover directory is only disk space.
        let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(dir_for_cleanup)).await;
        match end {
            End::Stopped => {
                cell.say(format!("Stopped instance {}", spec.instance_guid));
                emit(Event::Stopped);
            }
            End::Crashed(details) => {
                cell.say(format!("Instance crashed: {details}"));
                emit(Event::Crashed { details });
                // A stop may still come for a crashed instance: acknowledge it.
                stop.cancelled().await;
                emit(Event::Stopped);
            }
        }
    });
    handle
}

enum End {
    Stopped,
    Crashed(String),
}

struct CellLog {
    logs: mpsc::UnboundedSender<LogLine>,
    key: InstanceKey,
}

impl CellLog {
    fn say(&self, message: String) {
        let _ = self.logs.send(LogLine {
            app_guid: self.key.app_guid.clone(),
            timestamp_ns: unix_nanos(SystemTime::now()),
            source_type: "CELL".to_owned(),
            instance: self.key.index.to_string(),
            stream: "OUT".to_owned(),
            message,
        });
    }
}

async fn run(
    spec: &LaunchSpec,
    stop: &CancellationToken,
    emit: &impl Fn(Event),
    logs: &mpsc::UnboundedSender<LogLine>,
    cell: &CellLog,
) -> End {
    cell.say(format!(
        "Creating container for app {}, instance {}",
        spec.desired.app_name, spec.instance_guid
    ));
    let app_dir = spec.dir.join("app");
    let tmp_dir = spec.dir.join("tmp");
    let droplet = match spec.droplets.fetch(&spec.desired.droplet_guid).await {
        Ok(path) => path,
        Err(details) => return End::Crashed(details),
    };
    let unpack_to = app_dir.clone();
    let tmp_to = tmp_dir.clone();
    let unpacked = tokio::task::spawn_blocking(move || {
        std::fs::create_dir_all(&tmp_to)?;
        staging::unpack(&droplet, &unpack_to)
    })
    .await;
    match unpacked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return End::Crashed(format!("failed to unpack droplet: {e}")),
        Err(e) => return End::Crashed(format!("failed to unpack droplet: {e}")),
    }
    if stop.is_cancelled() {
        return End::Stopped;
    }
    let port = match free_port().await {
        Ok(p) => p,
        Err(e) => return End::Crashed(format!("no free port: {e}")),
    };
    let cgroup = match spec
        .memory
        .create_cgroup(&spec.instance_guid, spec.desired.memory_mb)
    {
        Ok(c) => c,
        Err(e) => return End::Crashed(format!("cannot create the memory cgroup: {e}")),
    };
    let mut child = match command(spec, port, &app_dir, &tmp_dir).spawn() {
        Ok(c) => c,
        Err(e) => return End::Crashed(format!("failed to start /bin/sh: {e}")),
    };
    let pid = child.id();
    // Held until the instance is over: dropping it lets the watchdog kill the group.
    let lifeline = child.stdin.take();
    if let (Some(cg), Some(pid)) = (&cgroup, pid)
        && let Err(e) = limits::enter_cgroup(cg, pid)
    {
        kill_group(pid, Signal::SIGKILL);
        let _ = child.wait().await;
        return End::Crashed(format!("cannot enter the memory cgroup: {e}"));
    }
    pump_output(&mut child, &spec.desired.key, logs);
    emit(Event::Starting { port, pid });
    cell.say(format!(
        "Starting health monitoring of container (port {port})"
    ));
    let end = supervise(spec, stop, emit, &mut child, pid, port).await;
    drop(lifeline);
    if let Some(cg) = &cgroup {
        limits::remove_cgroup(cg);
    }
    end
}

fn command(
    spec: &LaunchSpec,
    port: u16,
    app_dir: &std::path::Path,
    tmp_dir: &std::path::Path,
) -> Command {
    let d = &spec.desired;
    let script = instance_script(&format!(
        "{}{}",
        spec.memory.shell_prologue(d.memory_mb),
        d.command
    ));
    let vcap_application = serde_json::json!({
        "application_id": d.key.app_guid,
        "application_name": d.app_name,
        "application_uris": d.uris,
        "application_version": d.version.to_string(),
        "name": d.app_name,
        "uris": d.uris,
        "version": d.version.to_string(),
        "process_id": d.key.app_guid,
        "process_type": "web",
        "limits": {"mem": d.memory_mb, "disk": 1024, "fds": 16384},
        "space_name": "default",
        "organization_name": "default",
        "cf_api": "",
        "host": "0.0.0.0",
        "instance_id": spec.instance_guid,
        "instance_index": d.key.index,
        "port": port,
    });
    let mut cmd = Command::new("/bin/sh");
    cmd.arg("-c")
        .arg(script)
        .current_dir(app_dir)
        // The lifeline: see [`LIFELINE`].
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so stop and crash clean-up reach every descendant.
        .process_group(0)
        .kill_on_drop(true);
    // The agent's own credentials are none of the app's business.
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("CONTROLLER_LITE") {
            cmd.env_remove(name);
        }
    }
    let port_s = port.to_string();
    let index = d.key.index.to_string();
    cmd.env("PORT", &port_s)
        .env("VCAP_APP_PORT", &port_s)
        .env("VCAP_APP_HOST", "0.0.0.0")
        .env("CF_INSTANCE_INDEX", &index)
        .env("INSTANCE_INDEX", &index)
        .env("CF_INSTANCE_GUID", &spec.instance_guid)
        .env("INSTANCE_GUID", &spec.instance_guid)
        .env("CF_INSTANCE_IP", &spec.host)
        .env("CF_INSTANCE_PORT", &port_s)
        .env("CF_INSTANCE_ADDR", format!("{}:{port}", spec.host))
        .env(
            "CF_INSTANCE_PORTS",
            format!(r#"[{{"external":{port},"internal":{port}}}]"#),
        )
        .env("MEMORY_LIMIT", format!("{}m", d.memory_mb))
        .env("VCAP_APPLICATION", vcap_application.to_string())
        .env("VCAP_SERVICES", "{}")
        .env("TMPDIR", tmp_dir);
    cmd
}

async fn supervise(
    spec: &LaunchSpec,
    stop: &CancellationToken,
    emit: &impl Fn(Event),
    child: &mut Child,
    pid: Option<u32>,
    port: u16,
) -> End {
    let d = &spec.desired;
    // Starting: until the first healthy check, the process exits, or time runs out.
    let deadline = tokio::time::Instant::now() + spec.startup_timeout;
    loop {
        tokio::select! {
            status = child.wait() => {
                reap_group(pid);
                return End::Crashed(exit_details(status));
            }
            () = stop.cancelled() => {
                terminate(child, pid).await;
                return End::Stopped;
            }
            () = tokio::time::sleep_until(deadline) => {
                terminate(child, pid).await;
                return End::Crashed(format!(
                    "health check never passed within {}s", spec.startup_timeout.as_secs()
                ));
            }
            healthy = check(&d.health_check_type, &d.health_check_endpoint, port) => {
                if healthy {
                    break;
                }
                tokio::time::sleep(STARTING_CHECK_INTERVAL).await;
            }
        }
    }
    emit(Event::Running);
    // Running: watch the process, and re-check health now and then.
    let mut ticker = tokio::time::interval(RUNNING_CHECK_INTERVAL);
    ticker.tick().await;
    loop {
        tokio::select! {
            status = child.wait() => {
                reap_group(pid);
                return End::Crashed(exit_details(status));
            }
            () = stop.cancelled() => {
                terminate(child, pid).await;
                return End::Stopped;
            }
            _ = ticker.tick() => {
                if !check(&d.health_check_type, &d.health_check_endpoint, port).await {
                    terminate(child, pid).await;
                    return End::Crashed("health check failed".to_owned());
                }
            }
        }
    }
}

fn exit_details(status: std::io::Result<ExitStatus>) -> String {
    match status {
        Ok(s) => match (s.code(), std::os::unix::process::ExitStatusExt::signal(&s)) {
            (Some(code), _) => format!("APP/PROC/WEB: Exited with status {code}"),
            (None, Some(sig)) => format!("APP/PROC/WEB: Exited on signal {sig}"),
            _ => "APP/PROC/WEB: Exited".to_owned(),
        },
        Err(e) => format!("APP/PROC/WEB: lost track of the process: {e}"),
    }
}

/// SIGTERM to the whole group, SIGKILL after the grace period. The shell waits for the
/// app before it exits ([`GRACEFUL_STOP`]), so the app has the whole grace period.
async fn terminate(child: &mut Child, pid: Option<u32>) {
    let Some(pid) = pid else {
        let _ = child.kill().await;
        return;
    };
    kill_group(pid, Signal::SIGTERM);
    if tokio::time::timeout(GRACE_PERIOD, child.wait())
        .await
        .is_err()
    {
        kill_group(pid, Signal::SIGKILL);
        let _ = child.wait().await;
    }
    // Descendants that ignored SIGTERM must not outlive the instance.
    kill_group(pid, Signal::SIGKILL);
}

/// After the main process exited on its own, kills what is left of its group.
fn reap_group(pid: Option<u32>) {
    if let Some(pid) = pid {
        kill_group(pid, Signal::SIGKILL);
    }
}

fn kill_group(pid: u32, signal: Signal) {
    if let Ok(pid) = i32::try_from(pid) {
        // ESRCH (group already gone) is the normal case after an exit.
        let _ = killpg(Pid::from_raw(pid), signal);
    }
}

/// One health check: `port` (TCP connect), `http` (GET endpoint answers 2xx) or
/// `process` (always healthy while the process lives).
async fn check(kind: &str, endpoint: &str, port: u16) -> bool {
    let addr = ("127.0.0.1", port);
    match kind {
        "process" => true,
        "http" => {
            let probe = async {
                let mut stream = TcpStream::connect(addr).await?;
                let path = if endpoint.is_empty() { "/" } else { endpoint };
                stream
                    .write_all(format!("GET {path} HTTP/1.0\r\nHost: localhost\r\nUser-Agent: controller-lite-healthcheck\r\n\r\n").as_bytes())
                    .await?;
                let mut head = [0u8; 12];
                stream.read_exact(&mut head).await?;
                Ok::<bool, std::io::Error>(head.starts_with(b"HTTP/1.") && head[9] == b'2')
            };
            matches!(
                tokio::time::timeout(CHECK_TIMEOUT, probe).await,
                Ok(Ok(true))
            )
        }
        _ => matches!(
            tokio::time::timeout(CHECK_TIMEOUT, TcpStream::connect(addr)).await,
            Ok(Ok(_))
        ),
    }
}

/// A port the kernel says is free now. Another process could take it before the app
/// binds it; the app then fails its health check and is restarted on a new port.
async fn free_port() -> std::io::Result<u16> {
    let listener = tokio::net::TcpListener::bind(("0.0.0.0", 0)).await?;
    Ok(listener.local_addr()?.port())
}

fn pump_output(child: &mut Child, key: &InstanceKey, logs: &mpsc::UnboundedSender<LogLine>) {
    if let Some(out) = child.stdout.take() {
        tokio::spawn(pump(out, key.clone(), "OUT", logs.clone()));
    }
    if let Some(err) = child.stderr.take() {
        tokio::spawn(pump(err, key.clone(), "ERR", logs.clone()));
    }
}

async fn pump(
    reader: impl AsyncRead + Unpin,
    key: InstanceKey,
    stream: &'static str,
    logs: mpsc::UnboundedSender<LogLine>,
) {
    let mut lines = BufReader::new(reader).split(b'\n');
    while let Ok(Some(line)) = lines.next_segment().await {
        let message = String::from_utf8_lossy(&line)
            .trim_end_matches('\r')
            .to_owned();
        let sent = logs.send(LogLine {
            app_guid: key.app_guid.clone(),
            timestamp_ns: unix_nanos(SystemTime::now()),
            source_type: "APP/PROC/WEB".to_owned(),
            instance: key.index.to_string(),
            stream: stream.to_owned(),
            message,
        });
        if sent.is_err() {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;

    use super::*;

    /// Whether `pid` is gone: no such process, or a zombie (an orphan's zombie stays
    /// until an init that reaps it does).
    fn gone(pid: u32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |stat| {
            stat.rsplit_once(") ")
                .is_some_and(|(_, rest)| rest.starts_with('Z'))
        })
    }

    fn shell(script: &str) -> Child {
        Command::new("/bin/sh")
            .arg("-c")
            .arg(instance_script(script))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap()
    }

    #[tokio::test]
    async fn closing_the_lifeline_kills_the_whole_group() {
        // A background descendant, as apps that fork have: it must die too.
        let mut child = shell("sleep 60 &\necho $!\nsleep 60");
        let lifeline = child.stdin.take();
        let mut out = child.stdout.take().unwrap();
        let descendant: u32 = line(&mut out).await.trim().parse().unwrap();
        assert!(!gone(descendant));

        drop(lifeline);
        assert_killed(&mut child, "the shell dies once the lifeline is closed").await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !gone(descendant) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "descendant survived"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The next line of `out`, bounded.
    async fn line(out: &mut tokio::process::ChildStdout) -> String {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(10), async {
            while out.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
        })
        .await
        .expect("a line of output");
        String::from_utf8(line).unwrap()
    }

    /// Waits (bounded) for `child` to end, and asserts that SIGKILL ended it.
    async fn assert_killed(child: &mut Child, what: &str) {
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect(what)
            .unwrap();
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(9)
        );
    }

    /// An instance shell running [`app`]`(on_term)`, once the app has said "ready": the
    /// shell, its clean-up guard, its lifeline and its output.
    async fn ready_app(
        on_term: &str,
    ) -> (
        Child,
        KillGroupOnDrop,
        Option<tokio::process::ChildStdin>,
        tokio::process::ChildStdout,
    ) {
        let mut child = shell(&app(on_term));
        let kill = KillGroupOnDrop(child.id().unwrap());
        let lifeline = child.stdin.take();
        let mut out = child.stdout.take().unwrap();
        assert_eq!(line(&mut out).await, "ready");
        (child, kill, lifeline, out)
    }

    /// An app (a shell here, as any program the command starts) that answers SIGTERM with
    /// `on_term` and otherwise runs until killed.
    fn app(on_term: &str) -> String {
        format!("sh -c 'trap \"{on_term}\" TERM; echo ready; while :; do sleep 1; done'")
    }

    fn sigterm_group(child: &Child) {
        let pid = i32::try_from(child.id().unwrap()).unwrap();
        killpg(Pid::from_raw(pid), Signal::SIGTERM).unwrap();
    }

    /// SIGKILLs the group when dropped, so a failing test leaves no app behind.
    struct KillGroupOnDrop(u32);

    impl Drop for KillGroupOnDrop {
        fn drop(&mut self) {
            kill_group(self.0, Signal::SIGKILL);
        }
    }

    #[tokio::test]
    async fn a_stop_lets_the_app_finish_and_keeps_its_exit_status() {
        let (mut child, _kill, _lifeline, mut out) = ready_app("echo finishing; exit 3").await;

        // The stop's SIGTERM to the group: the shell must not die of it, or the agent
        // would SIGKILL the app at once; it waits for the app and exits as the app did.
        sigterm_group(&child);
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the shell exits once the app has")
            .unwrap();
        assert_eq!(status.code(), Some(3), "{status:?}");
        assert_eq!(line(&mut out).await, "finishing");
    }

    #[tokio::test]
    async fn closing_the_lifeline_during_a_stop_still_kills_the_group() {
        // An app that SIGTERM does not end: the watchdog must outlive the SIGTERM too.
        let (mut child, _kill, lifeline, mut out) = ready_app("echo not yet").await;
        sigterm_group(&child);
        assert_eq!(line(&mut out).await, "not yet");

        drop(lifeline);
        assert_killed(&mut child, "the shell dies once the lifeline is closed").await;
    }

    #[tokio::test]
    async fn a_held_lifeline_is_not_the_apps_stdin() {
        // `cat` reads /dev/null and ends at once; the lifeline stays open meanwhile.
        let mut child = shell("cat\necho done");
        let _lifeline = child.stdin.take();
        let mut out = child.stdout.take().unwrap();
        let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
            .await
            .expect("the app's stdin is /dev/null, not the lifeline")
            .unwrap();
        assert!(status.success());
        let mut text = String::new();
        out.read_to_string(&mut text).await.unwrap();
        assert_eq!(text, "done\n");
    }
}
