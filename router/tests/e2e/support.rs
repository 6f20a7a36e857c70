//! Shared test support: a real nats-server, real HTTP backends, the router in-process or
//! as its binary, an HTTP client, and `eventually` (poll with a deadline, never sleep).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use router::bus::{Bus, NatsOptions};
use router::protocol::RegistryMessage;
use router::{Config, Listeners};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A free TCP port on 127.0.0.1 (bound then released; for processes that bind themselves).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `nats-server` on a free loopback port, killed on drop.
pub struct NatsServer {
    pub port: u16,
    child: Option<Child>,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Starts nats-server with protocol tracing on, so tests can see what was published.
    pub fn start() -> NatsServer {
        let dir = tempfile::tempdir().unwrap();
        let mut server = NatsServer {
            port: free_port(),
            child: None,
            log: dir.path().join("nats.log"),
            _dir: dir,
        };
        server.restart();
        server
    }

    /// Starts (again) on the same port.
    pub fn restart(&mut self) {
        self.stop();
        let binary = ["/usr/sbin/nats-server", "/usr/bin/nats-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .unwrap_or_else(|| {
                panic!("nats-server is not installed: run `apt-get install -y nats-server`")
            });
        let child = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-V", "-l"])
            .arg(&self.log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the server and waits for it to exit.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// How many PUB messages on `subject` the server has traced so far.
    pub fn published(&self, subject: &str) -> usize {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let needle = format!("[PUB {subject} ");
        log.matches(&needle).count()
    }

    /// A client connected to this server.
    pub async fn client(&self) -> Bus {
        let bus = Bus::connect_nats(&NatsOptions {
            urls: vec![self.url()],
            name: "test".into(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut state = bus.state();
        tokio::time::timeout(Duration::from_secs(10), state.wait_for(|s| s.connected))
            .await
            .expect("test client did not connect to nats")
            .unwrap();
        bus
    }

    /// The config fragment pointing a router at this server.
    pub fn router_config(&self) -> router::config::NatsConfig {
        router::config::NatsConfig {
            hosts: vec![router::config::NatsHost {
                hostname: "127.0.0.1".into(),
                port: self.port,
            }],
            ..Default::default()
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A real HTTP/1.1 backend. Every request gets a JSON echo of what arrived, except
/// `/bytes/N` (streams N bytes), `/count` (reads the body, answers its length),
/// `/sleep/MS` (echoes after MS milliseconds), `/session` (echoes and sets a JSESSIONID
/// cookie) and `/die` (drops the connection without answering).
pub struct Backend {
    pub addr: SocketAddr,
    pub name: String,
    pub requests: Arc<AtomicUsize>,
    stop: CancellationToken,
    tasks: tokio_util::task::TaskTracker,
}

impl Backend {
    pub async fn http(name: &str) -> Backend {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let requests = Arc::new(AtomicUsize::new(0));
        let (name_owned, stop_task, count) = (name.to_owned(), stop.clone(), requests.clone());
        let tasks = tokio_util::task::TaskTracker::new();
        let conn_tasks = tasks.clone();
        tasks.spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    () = stop_task.cancelled() => return,
                };
                let name = name_owned.clone();
                let count = count.clone();
                let stop = stop_task.clone();
                conn_tasks.spawn(async move {
                    let service = service_fn(move |req| {
                        count.fetch_add(1, Ordering::Relaxed);
                        backend_answer(name.clone(), req)
                    });
                    let conn = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service);
                    tokio::select! {
                        _ = conn => {}
                        () = stop.cancelled() => {}
                    }
                });
            }
        });
        Backend {
            addr,
            name: name.to_owned(),
            requests,
            stop,
            tasks,
        }
    }

    /// A registration of this backend for `uris`.
    pub fn registration(&self, uris: &[&str]) -> RegistryMessage {
        RegistryMessage {
            host: "127.0.0.1".into(),
            port: self.addr.port(),
            uris: uris.iter().map(|u| u.to_string()).collect(),
            app: format!("app-{}", self.name),
            private_instance_id: format!("instance-{}", self.name),
            private_instance_index: "0".into(),
            ..Default::default()
        }
    }

    /// Dies like a killed process: stops listening and closes every connection, and
    /// returns once all of that is done.
    pub async fn stop(&self) {
        self.stop.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

type BackendBody = http_body_util::Either<
    Full<Bytes>,
    StreamBody<futures_util::stream::Iter<std::vec::IntoIter<Result<Frame<Bytes>, Infallible>>>>,
>;

async fn backend_answer(
    name: String,
    req: Request<Incoming>,
) -> Result<Response<BackendBody>, std::io::Error> {
    let path = req.uri().path().to_owned();
    if path == "/die" {
        // An error from the service makes hyper close the connection unanswered.
        return Err(std::io::Error::other("told to die"));
    }
    if let Some(ms) = path.strip_prefix("/sleep/") {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    if let Some(n) = path.strip_prefix("/bytes/") {
        // Streams N bytes in 64 KiB chunks without holding them all at once.
        let n: usize = n.parse().unwrap_or(0);
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let frames: Vec<_> = (0..n.div_ceil(chunk.len()))
            .map(|i| {
                let len = (n - i * chunk.len()).min(chunk.len());
                Ok(Frame::data(chunk.slice(..len)))
            })
            .collect();
        let body = StreamBody::new(futures_util::stream::iter(frames));
        return Ok(Response::new(http_body_util::Either::Right(body)));
    }
    if path == "/count" {
        let mut body = req.into_body();
        let mut total = 0usize;
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
            }
        }
        return Ok(Response::new(http_body_util::Either::Left(Full::new(
            Bytes::from(total.to_string()),
        ))));
    }
    let headers: BTreeMap<String, Vec<String>> = req
        .headers()
        .keys()
        .map(|k| {
            let values = req
                .headers()
                .get_all(k)
                .iter()
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
                .collect();
            (k.as_str().to_owned(), values)
        })
        .collect();
    let echo = serde_json::json!({
        "backend": name,
        "method": req.method().as_str(),
        "target": req.uri().to_string(),
        "headers": headers,
    });
    let mut resp = Response::new(http_body_util::Either::Left(Full::new(Bytes::from(
        echo.to_string(),
    ))));
    resp.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    resp.headers_mut()
        .insert("x-backend", name.parse().unwrap());
    if path == "/session" {
        resp.headers_mut().insert(
            "set-cookie",
            format!("JSESSIONID=session-{name}; Path=/; SameSite=Lax")
                .parse()
                .unwrap(),
        );
    }
    Ok(resp)
}

/// The router running in this process, on ephemeral ports.
pub struct TestRouter {
    pub http: SocketAddr,
    /// The TLS listener (serving only when the config enables TLS).
    pub tls: SocketAddr,
    pub status: SocketAddr,
    pub routes: SocketAddr,
    pub handle: Option<router::RouterHandle>,
}

impl TestRouter {
    /// Starts a router with `config` (ports are replaced by ephemeral ones).
    pub async fn start(config: Config) -> TestRouter {
        let listeners = Listeners::bind_ephemeral().unwrap();
        let (http, tls, status, routes) = (
            listeners.http_addr().unwrap(),
            listeners.tls_addr().unwrap(),
            listeners.status_addr().unwrap(),
            listeners.routes_addr().unwrap(),
        );
        let handle = router::server::start(config, listeners, None)
            .await
            .unwrap();
        TestRouter {
            http,
            tls,
            status,
            routes,
            handle: Some(handle),
        }
    }

    /// Starts a router fed by `nats`, and waits until it has subscribed (it announces
    /// itself with `router.start` once it has).
    pub async fn on_nats(nats: &NatsServer, mut config: Config) -> TestRouter {
        let before = nats.published("router.start");
        config.nats = nats.router_config();
        let router = TestRouter::start(config).await;
        eventually("router.start", Duration::from_secs(10), || async {
            (nats.published("router.start") > before).then_some(())
        })
        .await;
        router
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.http, path)
    }
}

impl Drop for TestRouter {
    fn drop(&mut self) {
        if let Some(handle) = &self.handle {
            handle.shutdown();
        }
    }
}

/// A test config: fast timers, one worker, no NATS.
pub fn test_config() -> Config {
    Config {
        worker_threads: 1,
        start_response_delay_interval: Duration::ZERO,
        drain_timeout: Duration::from_secs(5),
        ..Config::default()
    }
}

/// A response as the tests look at it.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
}

impl Answer {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends a GET with `Host: host` (plus `extra` headers) and reads the whole answer.
pub async fn get(router: SocketAddr, host: &str, path: &str, extra: &[(&str, &str)]) -> Answer {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let mut req = Request::get(format!("http://{router}{path}")).header("host", host);
    for (k, v) in extra {
        req = req.header(*k, *v);
    }
    let resp = client
        .request(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    Answer {
        status: parts.status.as_u16(),
        headers: parts.headers,
        body: body.collect().await.unwrap().to_bytes(),
    }
}

/// Sends raw bytes on a new connection and returns everything read until the server
/// closes or `timeout` passes (blocking; run with spawn_blocking for long waits).
pub fn raw_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(timeout)).unwrap();
    exchange_on(&mut stream, request)
}

/// Sends raw bytes on an open connection and returns what is read until one full
/// response (with a Content-Length) is in, the server closes, or the read timeout passes.
pub fn exchange_on(stream: &mut TcpStream, request: &[u8]) -> String {
    stream.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    loop {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if std::str::from_utf8(&out).is_ok_and(response_complete) {
                    break;
                }
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn response_complete(text: &str) -> bool {
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case("content-length")
            .then(|| v.trim().parse::<usize>().ok())
            .flatten()
    });
    length.is_some_and(|n| body.len() >= n)
}

/// Publishes a registration and flushes it to the server.
pub async fn publish(bus: &Bus, subject: &str, msg: &RegistryMessage) {
    bus.publish(subject, Bytes::from(serde_json::to_vec(msg).unwrap()))
        .await
        .unwrap();
    bus.flush().await.unwrap();
}

/// The router binary as a child process, killed on drop.
pub struct RouterProcess {
    pub child: Child,
    pub http: SocketAddr,
    pub status: SocketAddr,
    _dir: tempfile::TempDir,
}

impl RouterProcess {
    /// Runs `router --config` with `yaml` plus free ports, and waits for `/health` 200.
    pub fn start(yaml: &str) -> RouterProcess {
        let dir = tempfile::tempdir().unwrap();
        let (http, status, routes) = (free_port(), free_port(), free_port());
        let path = dir.path().join("router.yml");
        std::fs::write(
            &path,
            format!(
                "port: {http}\nstatus: {{port: {status}, host: 127.0.0.1, routes: {{port: {routes}}}}}\n\
                 worker_threads: 1\nstart_response_delay_interval: 0s\n{yaml}"
            ),
        )
        .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_router"))
            .arg("--config")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let process = RouterProcess {
            child,
            http: SocketAddr::from(([127, 0, 0, 1], http)),
            status: SocketAddr::from(([127, 0, 0, 1], status)),
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let health = TcpStream::connect(process.status).ok().map(|_| {
                raw_exchange(
                    process.status,
                    b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                    Duration::from_secs(2),
                )
            });
            if health.is_some_and(|h| h.starts_with("HTTP/1.1 200")) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "router binary did not become healthy"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        process
    }

    /// Peak resident memory of the process so far, in KiB (VmHWM).
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmHWM:")
    }

    /// Current resident memory in KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        proc_status_kib(self.child.id(), "VmRSS:")
    }

    /// Sends a signal (`TERM`, `USR1`, ...) with kill(1).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -s {name} failed");
    }
}

fn proc_status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

impl Drop for RouterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
