//! Shared test support: a real `nats-server`, a test NATS client watching the router
//! subjects, the registrar in-process or as the real binary, and bounded waits.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use route_registrar::Config;
use router::bus::{Bus, NatsOptions, Subscription};
use router::protocol::{RegistryMessage, SUBJECT_REGISTER, SUBJECT_UNREGISTER};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How long anything that should happen may take before a test fails.
pub const DEADLINE: Duration = Duration::from_secs(10);

/// Polls `condition` every 20 ms until it holds; panics naming `what` after `within`.
pub async fn eventually<F, Fut>(what: &str, within: Duration, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + within;
    loop {
        if condition().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A free TCP port on 127.0.0.1 (nothing listens on it when this returns).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn nats_server_binary() -> PathBuf {
    let installed = Path::new("/usr/sbin/nats-server");
    if installed.exists() {
        return installed.to_owned();
    }
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nats-server"))
        .find(|path| path.exists())
        .unwrap_or_else(|| {
            panic!("nats-server not found: install it with `apt-get install -y nats-server`")
        })
}

/// A real `nats-server` on a free loopback port, killed on drop.
pub struct NatsServer {
    port: u16,
    auth: Option<(String, String)>,
    child: Option<Child>,
    /// Holds the server's log (a file, not a pipe: Go exits on EPIPE on stderr).
    dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server without authentication.
    pub async fn start() -> Self {
        Self::launch(None).await
    }

    /// Starts a server that requires `user`/`pass`.
    pub async fn start_with_auth(user: &str, pass: &str) -> Self {
        Self::launch(Some((user.to_owned(), pass.to_owned()))).await
    }

    async fn launch(auth: Option<(String, String)>) -> Self {
        let mut server = NatsServer {
            port: free_port(),
            auth,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        server.spawn().await;
        server
    }

    async fn spawn(&mut self) {
        let mut command = Command::new(nats_server_binary());
        command
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("nats.log")).unwrap());
        if let Some((user, pass)) = &self.auth {
            command.args(["--user", user, "--pass", pass]);
        }
        let mut child = command.spawn().unwrap();
        let deadline = Instant::now() + DEADLINE;
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                break;
            }
            if let Some(status) = child.try_wait().unwrap() {
                let log = std::fs::read_to_string(self.dir.path().join("nats.log"));
                panic!("nats-server exited with {status}: {log:?}");
            }
            assert!(
                Instant::now() < deadline,
                "nats-server on port {} not ready after {DEADLINE:?}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.child = Some(child);
    }

    /// `127.0.0.1:PORT`, as `message_bus_servers[].host` wants it.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn url(&self) -> String {
        format!("nats://{}", self.address())
    }

    /// Kills the server and waits for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills the server and starts a new one on the same port.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn().await;
    }

    /// A connected test client.
    pub async fn client(&self) -> Bus {
        let (user, pass) = self.auth.clone().unwrap_or_default();
        let bus = Bus::connect_nats(&NatsOptions {
            urls: vec![self.url()],
            user,
            pass,
            name: "e2e-test".to_owned(),
        })
        .await
        .unwrap();
        let mut state = bus.state();
        tokio::time::timeout(DEADLINE, state.wait_for(|s| s.connected))
            .await
            .expect("test client did not connect to nats-server")
            .unwrap();
        bus
    }

    /// A test client subscribed to the registration subjects.
    pub async fn watch(&self) -> Watcher {
        let bus = self.client().await;
        Watcher::new(bus).await
    }

    /// The top-level part of a registrar config using this server.
    pub fn config_head(&self) -> String {
        let auth = match &self.auth {
            Some((user, pass)) => format!(", user: {user}, password: {pass}"),
            None => String::new(),
        };
        format!(
            "message_bus_servers:\n  - {{host: \"{}\"{auth}}}\nhost: 127.0.0.1\n",
            self.address()
        )
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What a watcher saw: the subject and the parsed message.
#[derive(Debug, Clone)]
pub struct Seen {
    pub subject: String,
    pub message: RegistryMessage,
    pub at: Instant,
}

impl Seen {
    pub fn is_register(&self, port: u16) -> bool {
        self.subject == SUBJECT_REGISTER && self.message.port == port
    }

    pub fn is_unregister(&self, port: u16) -> bool {
        self.subject == SUBJECT_UNREGISTER && self.message.port == port
    }
}

/// A test NATS client's view of `router.register` and `router.unregister`, in order.
pub struct Watcher {
    pub bus: Bus,
    messages: Subscription,
    /// Everything received so far, in order.
    pub seen: Vec<Seen>,
    /// Received but not yet returned by `expect`.
    pending: std::collections::VecDeque<Seen>,
}

impl Watcher {
    pub async fn new(bus: Bus) -> Self {
        let messages = bus.subscribe("router.*").await.unwrap();
        // The server has the subscriptions once the flush's PING is answered.
        bus.flush().await.unwrap();
        Watcher {
            bus,
            messages,
            seen: Vec::new(),
            pending: Default::default(),
        }
    }

    /// Forgets the messages received but not yet matched, so that the next `expect`
    /// only matches a message received from now on.
    pub fn clear_pending(&mut self) {
        self.pending.clear();
    }

    /// The next message on either subject, or `None` if none came before `deadline`.
    async fn next_before(&mut self, deadline: Instant) -> Option<Seen> {
        let message = loop {
            let message = tokio::time::timeout_at(deadline, self.messages.next())
                .await
                .ok()??;
            if message.subject == SUBJECT_REGISTER || message.subject == SUBJECT_UNREGISTER {
                break message;
            }
        };
        let seen = Seen {
            subject: message.subject,
            message: RegistryMessage::parse(&message.payload).unwrap(),
            at: Instant::now(),
        };
        self.seen.push(seen.clone());
        Some(seen)
    }

    /// The first pending message matching `want`, else waits up to `within` for one;
    /// the other messages stay pending for later `expect`s. Panics naming `what`.
    pub async fn expect(
        &mut self,
        what: &str,
        within: Duration,
        want: impl Fn(&Seen) -> bool,
    ) -> Seen {
        if let Some(i) = self.pending.iter().position(&want) {
            return self.pending.remove(i).unwrap();
        }
        let deadline = Instant::now() + within;
        let from = self.seen.len();
        loop {
            match self.next_before(deadline).await {
                Some(seen) if want(&seen) => return seen,
                Some(seen) => self.pending.push_back(seen),
                None => panic!(
                    "no {what} within {within:?}; saw {:#?}",
                    self.seen[from..]
                        .iter()
                        .map(|s| (&s.subject, s.message.port, &s.message.uris))
                        .collect::<Vec<_>>()
                ),
            }
        }
    }

    pub async fn expect_register(&mut self, port: u16) -> Seen {
        self.expect(&format!("register of port {port}"), DEADLINE, |s| {
            s.is_register(port)
        })
        .await
    }

    pub async fn expect_unregister(&mut self, port: u16) -> Seen {
        self.expect(&format!("unregister of port {port}"), DEADLINE, |s| {
            s.is_unregister(port)
        })
        .await
    }
}

/// The registrar library's `run`, in this process, on a real NATS connection.
pub struct InProcessRegistrar {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), route_registrar::RegistrarError>>,
}

impl InProcessRegistrar {
    pub async fn start(config_text: &str) -> Self {
        // The registrar's logs, shown for failed tests (filter with RUST_LOG).
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info".into()),
            )
            .with_test_writer()
            .try_init();
        let config = Config::from_text(config_text).unwrap();
        let bus = Bus::connect_nats(&config.nats_options()).await.unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(route_registrar::run(config, bus, shutdown.clone()));
        InProcessRegistrar { shutdown, task }
    }

    /// Cancels it and waits for `run` to return `Ok`.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("registrar did not stop in time")
            .unwrap()
            .unwrap();
    }
}

impl Drop for InProcessRegistrar {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// The real `route-registrar` binary, killed on drop; its stderr goes to a file.
pub struct RegistrarProcess {
    child: tokio::process::Child,
    dir: tempfile::TempDir,
}

impl RegistrarProcess {
    pub fn binary() -> &'static str {
        env!("CARGO_BIN_EXE_route-registrar")
    }

    pub fn spawn(config_text: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("registrar.yml");
        std::fs::write(&config, config_text).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = tokio::process::Command::new(Self::binary())
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        RegistrarProcess { child, dir }
    }

    pub fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(self.child.id().unwrap() as i32).unwrap();
        rustix::process::kill_process(pid, signal).unwrap();
    }

    pub async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(DEADLINE, self.child.wait())
            .await
            .expect("route-registrar did not exit in time")
            .unwrap()
    }

    /// Whether the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr.log")).unwrap()
    }
}

/// Runs the binary on `config_text` (which should make it exit) and returns its exit
/// status and stderr.
pub async fn run_binary_to_exit(config_text: &str) -> (ExitStatus, String) {
    let mut process = RegistrarProcess::spawn(config_text);
    let status = process.wait().await;
    (status, process.stderr())
}
