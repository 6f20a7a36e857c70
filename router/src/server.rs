//! Starts the router: registry and control loop on the caller's runtime, status
//! listeners beside them, and the proxy on `worker_threads` threads with one
//! single-threaded runtime each.
//!
//! Sockets are bound by the caller ([`Listeners`]), so tests bind `127.0.0.1:0` and read
//! the ports back; the binary binds the configured ports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::sync::Arc;

use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::access_log::AccessLog;
use crate::bus::{Bus, BusError, NatsOptions};
use crate::config::Config;
use crate::http::ProxyContext;
use crate::listener::{self, DownstreamSettings};
use crate::metrics::Metrics;
use crate::route_table::{Registry, RegistrySettings};
use crate::route_updates;
use crate::status::{self, Credentials, Health, StatusListener, StatusState};
use crate::tcp;

/// The router's listening sockets, bound before start.
#[derive(Debug)]
pub struct Listeners {
    pub http: TcpListener,
    /// The TLS listener; used when `enable_ssl` is on.
    pub tls: Option<TcpListener>,
    pub status: TcpListener,
    pub routes: TcpListener,
}

impl Listeners {
    /// Binds the ports of `config`: HTTP on all interfaces, status on `status.host`,
    /// routes on 127.0.0.1.
    pub fn bind(config: &Config) -> io::Result<Self> {
        let bind = |addr: SocketAddr| {
            TcpListener::bind(addr)
                .map_err(|e| io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
        };
        let tls = if config.enable_ssl {
            Some(bind(SocketAddr::from((
                Ipv4Addr::UNSPECIFIED,
                config.ssl_port,
            )))?)
        } else {
            None
        };
        Ok(Listeners {
            http: bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, config.port)))?,
            tls,
            status: bind(SocketAddr::new(config.status.host, config.status.port))?,
            routes: bind(SocketAddr::from((
                Ipv4Addr::LOCALHOST,
                config.status.routes.port,
            )))?,
        })
    }

    /// Binds every listener to a free port on 127.0.0.1 (for tests and embedding).
    pub fn bind_ephemeral() -> io::Result<Self> {
        let bind = || TcpListener::bind((Ipv4Addr::LOCALHOST, 0));
        Ok(Listeners {
            http: bind()?,
            tls: Some(bind()?),
            status: bind()?,
            routes: bind()?,
        })
    }

    /// Address of the proxy listener.
    pub fn http_addr(&self) -> io::Result<SocketAddr> {
        self.http.local_addr()
    }

    /// Address of the TLS listener, if bound.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Address of the status listener.
    pub fn status_addr(&self) -> io::Result<SocketAddr> {
        self.status.local_addr()
    }

    /// Address of the routes listener.
    pub fn routes_addr(&self) -> io::Result<SocketAddr> {
        self.routes.local_addr()
    }
}

/// Why the router could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("listener: {0}")]
    Io(#[from] io::Error),
    #[error("config: {0}")]
    Config(#[from] crate::config::ConfigError),
    #[error("message bus: {0}")]
    Bus(#[from] BusError),
    #[error("worker thread {0} failed")]
    Worker(usize),
    #[error("TCP router thread failed")]
    TcpRouter,
}

/// A running router.
#[derive(Debug)]
pub struct RouterHandle {
    health: Arc<Health>,
    registry: Arc<Registry>,
    /// Stops accepting and drains the workers.
    stop: CancellationToken,
    /// Stops the control loop and status listeners, after the workers are done.
    control_stop: CancellationToken,
    workers: Vec<oneshot::Receiver<()>>,
    /// Done when the TCP router has drained.
    tcp_router: oneshot::Receiver<()>,
    drain_wait: std::time::Duration,
}

impl RouterHandle {
    /// The registry the control loop feeds (read-only use: inspection, tests).
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The health state `/health` reports.
    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Graceful drain (SIGUSR1): `/health` fails at once, traffic is served for
    /// `drain_wait`, then listeners close and in-flight requests finish.
    pub fn drain(&self) {
        self.health.set_draining();
        let stop = self.stop.clone();
        let wait = self.drain_wait;
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            stop.cancel();
        });
    }

    /// Shutdown (SIGTERM): like a drain without the wait.
    pub fn shutdown(&self) {
        self.health.set_draining();
        self.stop.cancel();
    }

    /// Waits until every worker has finished, then stops the control plane.
    pub async fn wait(self) -> Result<(), ServerError> {
        let mut result = Ok(());
        for (i, worker) in self.workers.into_iter().enumerate() {
            if worker.await.is_err() {
                result = Err(ServerError::Worker(i));
            }
        }
        if self.tcp_router.await.is_err() {
            result = Err(ServerError::TcpRouter);
        }
        self.control_stop.cancel();
        result
    }
}

/// Starts the router; `bus` overrides the config's NATS servers (controller-lite passes
/// its in-process bus). Must be called inside a tokio runtime.
pub async fn start(
    config: Config,
    listeners: Listeners,
    bus: Option<Bus>,
) -> Result<RouterHandle, ServerError> {
    start_with_access_tap(config, listeners, bus, None).await
}

/// Like [`start`], and every request's access record is also sent to `tap` (dropped,
/// and counted, when the receiver falls behind).
pub async fn start_with_access_tap(
    config: Config,
    listeners: Listeners,
    bus: Option<Bus>,
    tap: Option<tokio::sync::mpsc::Sender<crate::access_log::AccessRecord>>,
) -> Result<RouterHandle, ServerError> {
    let config = Arc::new(config);
    let registry = Arc::new(Registry::new(RegistrySettings::from_config(&config)));
    route_updates::load_static_routes(&registry, &config);

    let bus = match bus {
        Some(bus) => Some(bus),
        None if !config.nats.hosts.is_empty() => Some(
            Bus::connect_nats(&NatsOptions {
                urls: config.nats.urls(),
                user: config.nats.user.clone(),
                pass: config.nats.pass.clone(),
                name: "router".to_owned(),
            })
            .await?,
        ),
        None => None,
    };
    let health = Arc::new(Health::default());
    let workers_count = config.effective_worker_threads();
    let metrics = Arc::new(Metrics::new(workers_count));
    let access_log = match (config.access_log.file.as_str(), tap) {
        ("", None) => None,
        ("", Some(tap)) => Some(AccessLog::tap_only(tap, metrics.clone())),
        (file, tap) => Some(AccessLog::open(file, metrics.clone())?.with_tap(tap)),
    };
    let control_stop = CancellationToken::new();
    let stop = CancellationToken::new();

    let warm_up = if bus.is_some() {
        config.start_response_delay_interval
    } else {
        std::time::Duration::ZERO
    };
    tokio::spawn(route_updates::run(
        registry.clone(),
        config.clone(),
        bus,
        metrics.clone(),
        control_stop.clone(),
    ));

    let status_state = Arc::new(StatusState {
        health: health.clone(),
        registry: registry.clone(),
        metrics: metrics.clone(),
        credentials: Credentials {
            user: config.status.user.clone(),
            pass: config.status.pass.clone(),
        },
    });
    for (socket, kind) in [
        (listeners.status, StatusListener::Status),
        (listeners.routes, StatusListener::Routes),
    ] {
        socket.set_nonblocking(true)?;
        let socket = tokio::net::TcpListener::from_std(socket)?;
        tokio::spawn(status::serve(
            socket,
            kind,
            status_state.clone(),
            control_stop.clone(),
        ));
    }

    let header_read_timeout = if config.read_header_timeout.is_zero() {
        config.frontend_idle_timeout
    } else {
        config.read_header_timeout.min(config.frontend_idle_timeout)
    };
    let settings = Arc::new(DownstreamSettings {
        header_read_timeout,
        max_request_header_bytes: config.max_request_header_bytes,
        drain_timeout: config.drain_timeout,
        enable_http2: config.enable_http2,
        http2: config.http2.clone(),
        tls_handshake_timeout: config.tls_handshake_timeout,
        native_http1: config.http1_server == crate::config::Http1Server::Native,
    });
    let tls = match (&listeners.tls, config.enable_ssl) {
        (Some(socket), true) => {
            socket.set_nonblocking(true)?;
            Some((
                socket,
                tokio_rustls::TlsAcceptor::from(crate::tls::server_config(&config)?),
            ))
        }
        _ => None,
    };
    let upstream_tls = Arc::new(crate::upstream::UpstreamTls::new(&config)?);
    listeners.http.set_nonblocking(true)?;
    let mut workers = Vec::new();
    for index in 0..workers_count {
        let mut sockets = vec![(listeners.http.try_clone()?, None)];
        if let Some((socket, acceptor)) = &tls {
            sockets.push((socket.try_clone()?, Some(acceptor.clone())));
        }
        let (done_tx, done_rx) = oneshot::channel();
        let ctx = Arc::new(ProxyContext::new(
            &config,
            registry.table(),
            metrics.clone(),
            index,
            access_log.clone(),
            upstream_tls.clone(),
        ));
        let settings = settings.clone();
        let stop = stop.clone();
        std::thread::Builder::new()
            .name(format!("router-worker-{index}"))
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(err) => {
                        tracing::error!(error = %err, worker = index, "cannot build worker runtime");
                        return;
                    }
                };
                runtime.block_on(async move {
                    let mut listeners = Vec::new();
                    for (socket, tls) in sockets {
                        match tokio::net::TcpListener::from_std(socket) {
                            Ok(socket) => listeners.push(listener::Listener { socket, tls }),
                            Err(err) => {
                                tracing::error!(error = %err, "cannot register listener");
                                return;
                            }
                        }
                    }
                    listener::serve(listeners, ctx, settings, stop).await;
                });
                let _ = done_tx.send(());
            })?;
        workers.push(done_rx);
    }
    let tcp_router = spawn_tcp_router(&config, &registry, stop.clone())?;

    let warm_health = health.clone();
    tokio::spawn(async move {
        tokio::time::sleep(warm_up).await;
        warm_health.set_healthy();
    });
    tracing::info!(
        http = %listeners.http.local_addr()?,
        workers = workers.len(),
        routes = registry.table().load().route_count(),
        "router started"
    );
    Ok(RouterHandle {
        health,
        registry,
        stop,
        control_stop,
        workers,
        tcp_router,
        drain_wait: config.drain_wait,
    })
}

/// Starts the TCP router ([`tcp::run`]) on its own thread with a single-threaded runtime,
/// like a worker; the receiver completes when it has drained after `stop`.
fn spawn_tcp_router(
    config: &Config,
    registry: &Registry,
    stop: CancellationToken,
) -> io::Result<oneshot::Receiver<()>> {
    let (done_tx, done_rx) = oneshot::channel();
    let (table, changes) = (registry.table(), registry.tcp_changes());
    let settings = tcp::TcpSettings::from_config(config);
    std::thread::Builder::new()
        .name("router-tcp".to_owned())
        .spawn(move || {
            match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime.block_on(tcp::run(table, changes, settings, stop)),
                Err(err) => {
                    tracing::error!(error = %err, "cannot build TCP router runtime");
                    return;
                }
            }
            let _ = done_tx.send(());
        })?;
    Ok(done_rx)
}

/// Runs the router until `shutdown` fires, then drains and returns.
pub async fn run(
    config: Config,
    listeners: Listeners,
    bus: Option<Bus>,
    shutdown: CancellationToken,
) -> Result<(), ServerError> {
    let handle = start(config, listeners, bus).await?;
    shutdown.cancelled().await;
    handle.shutdown();
    handle.wait().await
}
