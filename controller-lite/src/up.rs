//! `controller-lite up`: controller, agent and router in one process, talking over the
//! in-process bus (or NATS with `--nats`), with state under the data directory. Apps in
//! the store are started again by the first convergence: restarting `up` recovers them.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use router::bus::{Bus, BusError, NatsOptions};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::agent::{self, AgentConfig, DropletSource};
use crate::api;
use crate::cli::{self, PushOptions};
use crate::client::ApiClient;
use crate::controller::{Controller, ControllerError};

/// The example app pushed by `--demo`, built into the binary so `up --demo` works from
/// anywhere.
const DEMO_APP_PY: &str = include_str!("../../examples/hello/app.py");
const DEMO_PROCFILE: &str = include_str!("../../examples/hello/Procfile");

/// `up` failures.
#[derive(Debug, thiserror::Error)]
pub enum UpError {
    #[error(transparent)]
    Controller(#[from] ControllerError),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("router: {0}")]
    Router(#[from] router::server::ServerError),
    #[error("demo app: {0}")]
    Demo(String),
}

/// What `up` starts.
#[derive(Debug, Clone)]
pub struct UpOptions {
    pub data_dir: PathBuf,
    /// `nats://host:port`; `None` for the in-process bus.
    pub nats: Option<String>,
    /// 0 picks a free port (tests).
    pub api_port: u16,
    /// 0 picks a free port (tests).
    pub router_port: u16,
    /// Listen on 127.0.0.1 only (tests) rather than all interfaces.
    pub loopback_only: bool,
    /// Proxy threads of the embedded router.
    pub router_workers: usize,
    /// Memory the embedded agent offers.
    pub agent_memory_mb: u64,
    pub startup_timeout: Duration,
}

impl UpOptions {
    /// The documented defaults: API on 9022, router on 8081.
    pub fn new(data_dir: &Path) -> Self {
        UpOptions {
            data_dir: data_dir.to_owned(),
            nats: None,
            api_port: 9022,
            router_port: 8081,
            loopback_only: false,
            router_workers: 1,
            agent_memory_mb: total_memory_mb().unwrap_or(4096),
            startup_timeout: Duration::from_secs(60),
        }
    }
}

/// A running `up`.
#[derive(Debug)]
pub struct Up {
    pub api_addr: SocketAddr,
    pub router_addr: SocketAddr,
    pub admin_token_path: PathBuf,
    pub admin_token: String,
    shutdown: CancellationToken,
    agent: JoinHandle<()>,
    others: Vec<JoinHandle<()>>,
}

fn listen(ip: Ipv4Addr, port: u16) -> Result<TcpListener, UpError> {
    let addr = SocketAddr::from((ip, port));
    TcpListener::bind(addr).map_err(|source| UpError::Listen {
        addr: addr.to_string(),
        source,
    })
}

impl Up {
    /// Starts the router, the controller (API and convergence) and an agent.
    pub async fn start(opts: &UpOptions) -> Result<Up, UpError> {
        let bus = match &opts.nats {
            None => Bus::local(),
            Some(url) => {
                Bus::connect_nats(&NatsOptions {
                    urls: vec![url.clone()],
                    name: "controller-lite-up".to_owned(),
                    ..Default::default()
                })
                .await?
            }
        };
        let ip = if opts.loopback_only {
            Ipv4Addr::LOCALHOST
        } else {
            Ipv4Addr::UNSPECIFIED
        };
        let shutdown = CancellationToken::new();
        let mut others = Vec::new();

        // The router first: agents greet it to learn the register interval.
        let router_config = router::Config {
            port: opts.router_port,
            worker_threads: opts.router_workers,
            ..router::Config::default()
        };
        // Status listeners on free loopback ports (nothing in `up` needs them at fixed
        // ports); the proxy listener where the user asked.
        let mut listeners =
            router::Listeners::bind_ephemeral().map_err(|source| UpError::Listen {
                addr: "127.0.0.1:0".to_owned(),
                source,
            })?;
        listeners.http = listen(ip, opts.router_port)?;
        let router_addr = local(&listeners.http, ip)?;
        // The router's access records become the apps' `RTR` log lines.
        let (access_tap, mut access_records) = tokio::sync::mpsc::channel(4096);
        let handle = router::server::start_with_access_tap(
            router_config,
            listeners,
            Some(bus.clone()),
            Some(access_tap),
        )
        .await?;
        let router_stop = CancellationToken::new();
        {
            let router_stop = router_stop.clone();
            others.push(tokio::spawn(async move {
                router_stop.cancelled().await;
                handle.shutdown();
                if let Err(e) = handle.wait().await {
                    tracing::error!(error = %e, "router stopped with an error");
                }
            }));
        }

        let controller = Controller::open(&opts.data_dir, bus.clone())?;
        {
            let controller = controller.clone();
            others.push(tokio::spawn(async move {
                while let Some(record) = access_records.recv().await {
                    crate::logs::append_access_record(&controller.logs, &record);
                }
            }));
        }
        let admin_token = std::fs::read_to_string(&controller.admin_token_path)
            .map(|t| t.trim().to_owned())
            .unwrap_or_default();
        let api_listener = listen(ip, opts.api_port)?;
        let api_addr = local(&api_listener, ip)?;
        api_listener
            .set_nonblocking(true)
            .map_err(|source| UpError::Listen {
                addr: api_addr.to_string(),
                source,
            })?;
        let api_listener =
            tokio::net::TcpListener::from_std(api_listener).map_err(|source| UpError::Listen {
                addr: api_addr.to_string(),
                source,
            })?;
        {
            let (c, s) = (controller.clone(), shutdown.clone());
            others.push(tokio::spawn(async move {
                if let Err(e) = api::serve(c, api_listener, s).await {
                    tracing::error!(error = %e, "API server failed");
                }
            }));
        }
        {
            let (c, s) = (controller.clone(), shutdown.clone());
            others.push(tokio::spawn(async move {
                if let Err(e) = c.run(s).await {
                    tracing::error!(error = %e, "controller loop failed");
                }
            }));
        }

        let agent_config = AgentConfig {
            id: "local".to_owned(),
            zone: String::new(),
            host: "127.0.0.1".to_owned(),
            memory_mb: opts.agent_memory_mb,
            work_dir: opts.data_dir.join("agent"),
            droplets: DropletSource::Local(controller.blobs.clone()),
            startup_timeout: opts.startup_timeout,
            heartbeat_interval: Duration::from_secs(2),
        };
        let agent_shutdown = shutdown.clone();
        let agent = tokio::spawn(async move {
            if let Err(e) = agent::run(agent_config, bus, agent_shutdown).await {
                tracing::error!(error = %e, "agent failed");
            }
            // The router goes last, after the agent has unregistered every route.
            router_stop.cancel();
        });
        Ok(Up {
            api_addr,
            router_addr,
            admin_token_path: controller.admin_token_path.clone(),
            admin_token,
            shutdown,
            agent,
            others,
        })
    }

    /// A client for the API with the admin token.
    pub fn client(&self) -> ApiClient {
        ApiClient::new(
            &format!("http://{}", self.api_addr),
            Some(self.admin_token.clone()),
        )
    }

    /// Stops everything: instances (gracefully), then the API, the loop and the router.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.agent.await;
        for mut task in self.others {
            // Bounded: a stuck client connection must not keep `up` from exiting.
            if tokio::time::timeout(Duration::from_secs(15), &mut task)
                .await
                .is_err()
            {
                tracing::warn!("a component did not stop within 15 s; aborting it");
                task.abort();
            }
        }
    }

    /// Waits for Ctrl-C or SIGTERM, then stops.
    pub async fn run_until_signalled(self) {
        wait_for_signal().await;
        tracing::info!("stopping: instances first, then the router");
        self.stop().await;
    }
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; Ctrl-C only");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn local(listener: &TcpListener, ip: Ipv4Addr) -> Result<SocketAddr, UpError> {
    let addr = listener.local_addr().map_err(|source| UpError::Listen {
        addr: "(bound socket)".to_owned(),
        source,
    })?;
    // Report an address a client can dial, not 0.0.0.0.
    let ip = if ip.is_unspecified() {
        Ipv4Addr::LOCALHOST
    } else {
        ip
    };
    Ok(SocketAddr::from((ip, addr.port())))
}

/// Writes the demo app under the data directory and pushes it (3 instances,
/// `hello.localhost`).
pub async fn push_demo(
    up: &Up,
    data_dir: &Path,
    out: &mut dyn std::io::Write,
) -> Result<(), UpError> {
    let dir = data_dir.join("demo").join("hello");
    std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::write(dir.join("app.py"), DEMO_APP_PY))
        .and_then(|()| std::fs::write(dir.join("Procfile"), DEMO_PROCFILE))
        .map_err(|e| UpError::Demo(format!("{}: {e}", dir.display())))?;
    let opts = PushOptions {
        name: "hello".to_owned(),
        path: dir,
        command: None,
        instances: Some(3),
        memory_mb: Some(128),
        route: Some("hello.localhost".to_owned()),
        no_route: false,
        timeout: Duration::from_secs(120),
    };
    cli::push(&up.client(), &opts, out)
        .await
        .map_err(|e| UpError::Demo(e.to_string()))?;
    Ok(())
}

/// Total memory from /proc/meminfo, in MB.
fn total_memory_mb() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024)
}
