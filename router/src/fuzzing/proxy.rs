//! The proxy end to end: arbitrary bytes from a client, through the production
//! connection handling ([`crate::listener::serve_connection`]: the native HTTP/1 server,
//! or hyper's HTTP/2 after the preface; [`crate::http::handle`]; the upstream HTTP/1
//! client), to an app in this process that answers with arbitrary bytes.
//!
//! Input: `CLIENT_BYTES ==UPSTREAM== APP_BYTES`. The app answers the first request head
//! it reads on each connection with `APP_BYTES`, then closes its side, or keeps the
//! connection open when `APP_BYTES` starts with `~` (an app that hangs). Without the
//! separator the app answers a small 200.
//!
//! Each run has its own single-threaded runtime on its own thread, for the router and the
//! app. The client, on the calling thread, writes its bytes, waits until that runtime is
//! idle (nothing left to do but wait for input), half-closes, waits again, then the app
//! goes away. Checked:
//! - every task ends once both peers are gone (no hang, no leaked connection task);
//! - every request the app received is well framed, with one Host and the router's
//!   forwarding headers, and no hop-by-hop header ([`super::wire`]);
//! - what the client received on HTTP/1 is a well-framed sequence of responses.
//!
//! `FUZZ_DEBUG=1` prints what the app and the client received, for triage.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt, DuplexStream, ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::{Handle, RuntimeMetrics};
use tokio_util::sync::CancellationToken;

use super::wire;
use crate::config::{Config, ForwardedClientCert, Http2Config};
use crate::http::{Downstream, ProxyContext};
use crate::listener::{DownstreamSettings, serve_connection};
use crate::metrics::Metrics;
use crate::protocol::RegistryMessage;
use crate::route_table::{Registry, RegistrySettings};
use crate::upstream::UpstreamTls;

/// Splits the client's bytes from the app's.
pub const SEPARATOR: &[u8] = b"==UPSTREAM==";
/// The app's answer when the input has no separator.
const DEFAULT_ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
/// The downstream peer's address as forwarded (the socket address below).
const CLIENT_IP: &str = "10.1.2.3";
/// `X-CF-App-Instance` target of the routes (`APP_GUID:0`).
const APP_GUID: &str = "0123abcd-0000-4000-8000-00000000beef";
/// Longest a run may stay busy, or keep tasks after both peers left, before it counts
/// as a hang.
const HANG_LIMIT: Duration = Duration::from_secs(10);
/// How long the router's runtime must stay parked to count as idle.
const IDLE_FOR: Duration = Duration::from_micros(300);

/// Runs one client connection and its app exchanges; panics on a finding.
pub fn proxy_http1(data: &[u8]) {
    let (client, app) = match data.windows(SEPARATOR.len()).position(|w| w == SEPARATOR) {
        Some(i) => (&data[..i], &data[i + SEPARATOR.len()..]),
        None => (data, DEFAULT_ANSWER),
    };
    let (hang, answer) = match app.strip_prefix(b"~") {
        Some(rest) => (true, rest.to_vec()),
        None => (false, app.to_vec()),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => panic!("cannot build a runtime: {err}"),
    };
    let metrics = runtime.metrics();
    // Room for all of the client's bytes: writing never waits on the router.
    let (client_io, server_io) = tokio::io::duplex(client.len() + 64 * 1024);
    let (client_read, mut client_write) = tokio::io::split(client_io);
    let server_done = Arc::new(AtomicBool::new(false));
    let (finish, finished) = tokio::sync::oneshot::channel();
    let upgraded = answer.starts_with(b"HTTP/1.1 101") || answer.starts_with(b"HTTP/1.0 101");
    let router_side = {
        let server_done = server_done.clone();
        std::thread::spawn(move || {
            runtime.block_on(run_router(
                server_io,
                client_read,
                answer,
                hang,
                server_done,
                finished,
            ))
        })
    };
    write_now(&mut client_write, client);
    wait_idle(&metrics, &server_done);
    shutdown_now(&mut client_write);
    wait_idle(&metrics, &server_done);
    let _ = finish.send(());
    drop(client_write);
    let (downstream, received) = match router_side.join() {
        Ok(outcome) => outcome,
        Err(panic) => std::panic::resume_unwind(panic),
    };

    if std::env::var_os("FUZZ_DEBUG").is_some() {
        for received in &received {
            eprintln!("app received: {:?}", String::from_utf8_lossy(received));
        }
        eprintln!(
            "client received: {:?}",
            String::from_utf8_lossy(&downstream)
        );
    }
    for (i, received) in received.iter().enumerate() {
        if let Err(err) = wire::check_upstream_requests(received, upgraded, CLIENT_IP) {
            panic!(
                "upstream connection {i}: {err}\nreceived: {:?}",
                String::from_utf8_lossy(received)
            );
        }
    }
    if downstream.starts_with(b"HTTP/1.")
        && let Err(err) = wire::check_downstream_responses(&downstream)
    {
        panic!(
            "downstream: {err}\nsent: {:?}",
            String::from_utf8_lossy(&downstream)
        );
    }
}

/// The router side of a run, on its own runtime thread: the app, the downstream
/// connection and a reader of what the client receives. Once told to finish, the app goes
/// away and every task must end. Returns what the client and the app received.
async fn run_router(
    server_io: DuplexStream,
    mut client_read: ReadHalf<DuplexStream>,
    answer: Vec<u8>,
    hang: bool,
    server_done: Arc<AtomicBool>,
    finish: tokio::sync::oneshot::Receiver<()>,
) -> (Vec<u8>, Vec<Vec<u8>>) {
    let app = App::start(answer, hang).await;
    let settings = Arc::new(DownstreamSettings {
        header_read_timeout: Duration::from_secs(30),
        max_request_header_bytes: 8192,
        drain_timeout: Duration::from_secs(1),
        enable_http2: true,
        http2: Http2Config::default(),
        tls_handshake_timeout: Duration::from_secs(1),
        native_http1: true,
    });
    let peer = std::net::SocketAddr::from(([10, 1, 2, 3], 4567));
    let ctx = context(app.port);
    tokio::spawn(async move {
        let downstream = Downstream::new(peer, false);
        let stop = Arc::new(CancellationToken::new());
        serve_connection(server_io, downstream, ctx, settings, stop, false).await;
        server_done.store(true, Ordering::Release);
    });
    let reader = tokio::spawn(async move {
        let mut out = Vec::new();
        let _ = client_read.read_to_end(&mut out).await;
        out
    });
    let _ = finish.await;
    app.stop.cancel();
    let metrics = Handle::current().metrics();
    let deadline = std::time::Instant::now() + HANG_LIMIT;
    while metrics.num_alive_tasks() > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{} tasks still alive {HANG_LIMIT:?} after client and app closed",
            metrics.num_alive_tasks()
        );
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (reader.await.unwrap_or_default(), app.received())
}

/// Writes all of `bytes` into the in-memory connection, which has room for them.
fn write_now(client: &mut WriteHalf<DuplexStream>, mut bytes: &[u8]) {
    let mut cx = Context::from_waker(Waker::noop());
    while !bytes.is_empty() {
        match Pin::new(&mut *client).poll_write(&mut cx, bytes) {
            Poll::Ready(Ok(n)) if n > 0 => bytes = &bytes[n..],
            Poll::Ready(_) => return, // The router side is gone.
            Poll::Pending => std::thread::yield_now(),
        }
    }
}

/// Half-closes the client's side: the router reads EOF.
fn shutdown_now(client: &mut WriteHalf<DuplexStream>) {
    let mut cx = Context::from_waker(Waker::noop());
    while Pin::new(&mut *client).poll_shutdown(&mut cx).is_pending() {
        std::thread::yield_now();
    }
}

/// Waits until the router side is idle (its runtime thread has been parked, with nothing
/// to do, for a while: loopback TCP and in-memory streams deliver at once, so nothing is
/// on its way) or its connection is over. Panics if it stays busy: something spins.
fn wait_idle(metrics: &RuntimeMetrics, server_done: &AtomicBool) {
    let deadline = std::time::Instant::now() + HANG_LIMIT;
    loop {
        if server_done.load(Ordering::Acquire) {
            return;
        }
        // Odd: parked. The count moves as soon as anything wakes the runtime.
        let count = metrics.worker_park_unpark_count(0);
        if count % 2 == 1 {
            std::thread::sleep(IDLE_FOR);
            if metrics.worker_park_unpark_count(0) == count {
                return;
            }
        } else {
            std::thread::sleep(Duration::from_micros(20));
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the router never went idle in {HANG_LIMIT:?}: a busy loop"
        );
    }
}

/// The routes of the run: exact, context path and wildcard routes to the app, and a
/// route to a port nothing listens on. Static, so nothing prunes them.
fn context(app_port: u16) -> Arc<ProxyContext> {
    let config = Config {
        endpoint_timeout: Duration::from_secs(30),
        endpoint_dial_timeout: Duration::from_secs(1),
        max_idle_conns_per_host: 0,
        max_request_header_bytes: 8192,
        forwarded_client_cert: ForwardedClientCert::Forward,
        tracing: crate::config::TracingConfig {
            enable_w3c: true,
            w3c_tenant_id: "fuzz".to_owned(),
        },
        ..Config::default()
    };
    let registry = Registry::new(RegistrySettings::from_config(&config));
    let now = tokio::time::Instant::now();
    for (uri, port) in [
        ("fuzz.test", app_port),
        ("fuzz.test/ctx", app_port),
        ("*.wild.test", app_port),
        ("dead.test", 1),
    ] {
        let msg = RegistryMessage {
            host: "127.0.0.1".to_owned(),
            port,
            uris: vec![uri.to_owned()],
            app: APP_GUID.to_owned(),
            private_instance_id: "fuzz-instance".to_owned(),
            private_instance_index: "0".to_owned(),
            ..Default::default()
        };
        registry.register(&msg, now, true);
    }
    registry.publish();
    Arc::new(ProxyContext::new(
        &config,
        registry.table(),
        Arc::new(Metrics::new(1)),
        0,
        None,
        upstream_tls(&config),
    ))
}

fn upstream_tls(config: &Config) -> Arc<UpstreamTls> {
    thread_local! {
        static TLS: std::cell::OnceCell<Arc<UpstreamTls>> = const { std::cell::OnceCell::new() };
    }
    TLS.with(|cell| {
        cell.get_or_init(|| match UpstreamTls::new(config) {
            Ok(tls) => Arc::new(tls),
            Err(err) => panic!("upstream TLS config: {err}"),
        })
        .clone()
    })
}

/// The app behind the route: answers each connection's first request head with fixed
/// bytes, and records everything it receives, per connection.
struct App {
    port: u16,
    stop: CancellationToken,
    received: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl App {
    async fn start(answer: Vec<u8>, hang: bool) -> App {
        let listener = match TcpListener::bind("127.0.0.1:0").await {
            Ok(listener) => listener,
            Err(err) => panic!("cannot bind the app: {err}"),
        };
        let port = listener.local_addr().map_or(0, |a| a.port());
        let stop = CancellationToken::new();
        let received = Arc::new(Mutex::new(Vec::new()));
        let (stop_accept, log) = (stop.clone(), received.clone());
        tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => return,
                    },
                    () = stop_accept.cancelled() => return,
                };
                let index = {
                    let mut log = log.lock().unwrap_or_else(|e| e.into_inner());
                    log.push(Vec::new());
                    log.len() - 1
                };
                let conn = AppConnection {
                    answer: answer.clone(),
                    hang,
                    log: log.clone(),
                    index,
                };
                tokio::spawn(conn.serve(stream, stop_accept.clone()));
            }
        });
        App {
            port,
            stop,
            received,
        }
    }

    fn received(&self) -> Vec<Vec<u8>> {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

struct AppConnection {
    answer: Vec<u8>,
    hang: bool,
    log: Arc<Mutex<Vec<Vec<u8>>>>,
    index: usize,
}

impl AppConnection {
    async fn serve(self, stream: TcpStream, stop: CancellationToken) {
        tokio::select! {
            () = self.exchange(stream) => {}
            () = stop.cancelled() => {}
        }
    }

    async fn exchange(&self, stream: TcpStream) {
        let (mut read, mut write) = stream.into_split();
        let mut answered = false;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = read.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            let head_done = {
                let mut log = self.log.lock().unwrap_or_else(|e| e.into_inner());
                let received = &mut log[self.index];
                received.extend_from_slice(&buf[..n]);
                received.windows(4).any(|w| w == b"\r\n\r\n")
            };
            if head_done && !answered {
                answered = true;
                let _ = write.write_all(&self.answer).await;
                if !self.hang {
                    let _ = write.shutdown().await;
                }
            }
        }
        if self.hang {
            // Keeps the connection open until the run ends.
            std::future::pending::<()>().await;
        }
    }
}
