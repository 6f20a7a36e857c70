//! The TCP router: registrations with `external_port: N` map router port N to their
//! endpoints (DESIGN.md, "TCP routes"), and the bytes are piped unchanged.
//!
//! Lifecycle:
//! - One task ([`run`]) keeps the listeners in step with the route table: after each
//!   publish that changed TCP routes (`Registry::tcp_changes`) it opens a listener on
//!   every port whose route has endpoints and closes those whose route went. Ports
//!   outside `tcp_port_range` are skipped with a warning (the registry does not check
//!   them); a failed bind is logged and tried again on the next change.
//! - Each listener accepts connections until its route goes. A closed listener leaves
//!   its connections piping: they belong to the router, not to the listener.
//! - Each connection loads the current snapshot, picks an endpoint with the balancer
//!   (the pool's algorithm, round-robin unless the route asked otherwise), dials it within
//!   `endpoint_dial_timeout`, retries a failed dial on another endpoint (up to
//!   `backends.max_attempts`, the failed one skipped for 30 s as on the HTTP path), then
//!   hands both sockets to [`pipe::pipe_bidirectional`]. The balancer's in-flight slot is
//!   held for the connection's life, so `backends.max_conns` bounds TCP connections too.
//! - On stop: listeners close at once; open connections get up to `drain_timeout` to
//!   finish, then are cut.
//!
//! The router does not originate TLS on TCP routes: an endpoint's `tls_port` is dialed
//! like any port, so TLS between client and app passes through untouched.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::balancer::{self, InFlight, Pick};
use crate::config::Config;
use crate::pipe;
use crate::route_table::{Endpoint, Pool, RouteTable};

/// How long an endpoint that refused a connection is skipped (as on the HTTP path).
const FAILURE_MARK: Duration = Duration::from_secs(30);

/// What the TCP router needs from the config.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Address the TCP route listeners bind (`tcp_listen_host`).
    pub listen_host: IpAddr,
    /// Router ports a TCP route may claim, inclusive (`tcp_port_range`).
    pub port_range: (u16, u16),
    pub dial_timeout: Duration,
    /// Dial attempts per connection, each on another endpoint (at least 1).
    pub max_attempts: u32,
    /// Connections per endpoint (0: unlimited).
    pub max_conns: u32,
    /// How long open connections may go on after stop.
    pub drain_timeout: Duration,
}

impl TcpSettings {
    /// The TCP part of a router config.
    pub fn from_config(config: &Config) -> Self {
        TcpSettings {
            listen_host: config.tcp_listen_host,
            port_range: config.tcp_port_range,
            dial_timeout: config.endpoint_dial_timeout,
            max_attempts: config.backends.max_attempts,
            max_conns: config.backends.max_conns,
            drain_timeout: config.drain_timeout,
        }
    }
}

/// Why a downstream connection got no upstream one.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    #[error("the route has no endpoints")]
    NoEndpoints,
    #[error("every endpoint is at backends.max_conns")]
    ConnectionLimit,
    #[error("dial tcp {addr}: {source}")]
    Dial { addr: String, source: io::Error },
    #[error("dial tcp {0}: i/o timeout")]
    DialTimeout(String),
}

/// Runs the TCP router until `stop`, then drains (see the module docs).
pub async fn run(
    table: Arc<ArcSwap<RouteTable>>,
    mut changes: watch::Receiver<u64>,
    settings: TcpSettings,
    stop: CancellationToken,
) {
    let mut router = TcpRouter {
        table,
        settings: Arc::new(settings),
        listeners: BTreeMap::new(),
        out_of_range: BTreeSet::new(),
        connections: TaskTracker::new(),
        cut: CancellationToken::new(),
    };
    loop {
        router.reconcile().await;
        tokio::select! {
            biased;
            () = stop.cancelled() => break,
            changed = changes.changed() => {
                if changed.is_err() {
                    // The registry is gone, so the table is final: serve it until stop.
                    stop.cancelled().await;
                    break;
                }
            }
        }
    }
    router.drain().await;
}

/// An open listener of one TCP route.
struct RouteListener {
    stop: CancellationToken,
    task: JoinHandle<()>,
}

impl RouteListener {
    /// Stops accepting and returns once the socket is closed, so that the port can be
    /// bound again right away if the route comes back.
    async fn close(self) {
        self.stop.cancel();
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "TCP accept loop failed");
        }
    }
}

struct TcpRouter {
    table: Arc<ArcSwap<RouteTable>>,
    settings: Arc<TcpSettings>,
    listeners: BTreeMap<u16, RouteListener>,
    /// Ports already warned about, so that every table change does not warn again.
    out_of_range: BTreeSet<u16>,
    connections: TaskTracker,
    /// Cuts the connections still open when `drain_timeout` runs out.
    cut: CancellationToken,
}

impl TcpRouter {
    /// Opens and closes listeners to match the current table.
    async fn reconcile(&mut self) {
        let table = self.table.load_full();
        // A route kept without endpoints (`empty_pool_timeout`) has nothing to serve.
        let wanted: BTreeSet<u16> = table
            .tcp_ports()
            .filter(|&port| {
                table
                    .tcp_pool(port)
                    .is_some_and(|p| !p.endpoints.is_empty())
            })
            .collect();

        let gone: Vec<u16> = self
            .listeners
            .keys()
            .filter(|port| !wanted.contains(port))
            .copied()
            .collect();
        for port in gone {
            if let Some(listener) = self.listeners.remove(&port) {
                listener.close().await;
                tracing::info!(port, "TCP route gone; listener closed");
            }
        }
        self.out_of_range.retain(|port| wanted.contains(port));

        let (low, high) = self.settings.port_range;
        for port in wanted {
            if self.listeners.contains_key(&port) {
                continue;
            }
            if port < low || port > high {
                if self.out_of_range.insert(port) {
                    tracing::warn!(
                        port,
                        "TCP route ignored: port outside tcp_port_range {low}-{high}"
                    );
                }
                continue;
            }
            let addr = SocketAddr::new(self.settings.listen_host, port);
            match TcpListener::bind(addr).await {
                Ok(socket) => {
                    tracing::info!(%addr, "TCP route listener opened");
                    let stop = CancellationToken::new();
                    let task = tokio::spawn(accept_loop(
                        socket,
                        port,
                        self.table.clone(),
                        self.settings.clone(),
                        self.connections.clone(),
                        stop.clone(),
                        self.cut.clone(),
                    ));
                    self.listeners.insert(port, RouteListener { stop, task });
                }
                Err(err) => tracing::warn!(
                    %addr,
                    error = %err,
                    "cannot listen for TCP route; will try again on the next TCP route change"
                ),
            }
        }
    }

    /// Closes every listener, then lets connections finish up to `drain_timeout`.
    async fn drain(mut self) {
        for (_, listener) in std::mem::take(&mut self.listeners) {
            listener.close().await;
        }
        self.connections.close();
        let timeout = self.settings.drain_timeout;
        if tokio::time::timeout(timeout, self.connections.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                open = self.connections.len(),
                "drain_timeout elapsed with TCP connections still open; closing them"
            );
            self.cut.cancel();
            self.connections.wait().await;
        }
    }
}

async fn accept_loop(
    socket: TcpListener,
    port: u16,
    table: Arc<ArcSwap<RouteTable>>,
    settings: Arc<TcpSettings>,
    connections: TaskTracker,
    stop: CancellationToken,
    cut: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            biased;
            () = stop.cancelled() => return,
            accepted = socket.accept() => accepted,
        };
        match accepted {
            Ok((downstream, peer)) => {
                let pool = table.load().tcp_pool(port).cloned();
                let settings = settings.clone();
                let cut = cut.clone();
                connections.spawn(async move {
                    tokio::select! {
                        () = serve_connection(downstream, peer, port, pool, &settings) => {}
                        () = cut.cancelled() => {}
                    }
                });
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(port, error = %err, "TCP accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    downstream: TcpStream,
    peer: SocketAddr,
    port: u16,
    pool: Option<Arc<Pool>>,
    settings: &TcpSettings,
) {
    let connected = match &pool {
        Some(pool) => connect_upstream(pool, settings).await,
        // The route went between the table change and this accept.
        None => Err(TcpError::NoEndpoints),
    };
    let (upstream, endpoint, _in_flight) = match connected {
        Ok(connected) => connected,
        Err(err) => {
            // Dropping the downstream socket closes it: the client sees EOF at once.
            tracing::warn!(port, client = %peer, error = %err, "TCP connection not routed");
            return;
        }
    };
    // Pass bytes on as they come: the client already chose when to send them.
    let _ = downstream.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    match pipe::pipe_bidirectional(downstream, upstream).await {
        Ok(stats) => tracing::debug!(
            port,
            client = %peer,
            endpoint = %endpoint.key,
            downstream_bytes = stats.a_to_b,
            upstream_bytes = stats.b_to_a,
            "TCP connection closed"
        ),
        Err(err) => tracing::debug!(
            port,
            client = %peer,
            endpoint = %endpoint.key,
            error = %err,
            "TCP connection ended with an error"
        ),
    }
}

/// Dials an endpoint of `pool`, trying others when a dial fails.
async fn connect_upstream(
    pool: &Pool,
    settings: &TcpSettings,
) -> Result<(TcpStream, Arc<Endpoint>, InFlight), TcpError> {
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_error = TcpError::NoEndpoints;
    while tried.len() < settings.max_attempts.max(1) as usize {
        let (endpoint, in_flight) = match balancer::pick(pool, settings.max_conns, &tried) {
            Pick::Endpoint(endpoint, in_flight) => (endpoint, in_flight),
            Pick::AllOverloaded => return Err(TcpError::ConnectionLimit),
            Pick::Exhausted => break,
        };
        match dial(&endpoint, settings.dial_timeout).await {
            Ok(upstream) => {
                endpoint.stats.clear_failed();
                return Ok((upstream, endpoint, in_flight));
            }
            Err(err) => {
                tracing::info!(endpoint = %endpoint.key, error = %err, "TCP dial failed; trying another endpoint");
                endpoint.stats.mark_failed(FAILURE_MARK);
                tried.push(endpoint.key.clone());
                last_error = err;
            }
        }
    }
    Err(last_error)
}

async fn dial(endpoint: &Endpoint, timeout: Duration) -> Result<TcpStream, TcpError> {
    let connect = async {
        match endpoint.socket_addr {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((endpoint.data.host.as_str(), endpoint.data.port)).await,
        }
    };
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(stream)) => Ok(stream),
        Ok(Err(source)) => Err(TcpError::Dial {
            addr: endpoint.key.to_string(),
            source,
        }),
        Err(_) => Err(TcpError::DialTimeout(endpoint.key.to_string())),
    }
}
