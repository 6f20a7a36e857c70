//! TCP routes (`external_port`): listeners follow registrations, connections balance and
//! retry, and the bytes pass through intact.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use router::protocol::{RegistryMessage, SUBJECT_REGISTER, SUBJECT_UNREGISTER};
use router::route_table::clock_ms;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::*;

/// A TCP backend that echoes every byte back and half-closes after the client does.
struct EchoServer {
    addr: SocketAddr,
    stop: CancellationToken,
}

impl EchoServer {
    async fn start() -> EchoServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let stop_task = stop.clone();
        tokio::spawn(async move {
            loop {
                let (stream, _) = tokio::select! {
                    accepted = listener.accept() => accepted.unwrap(),
                    () = stop_task.cancelled() => return,
                };
                tokio::spawn(async move {
                    let (mut read, mut write) = stream.into_split();
                    let mut buf = vec![0u8; 64 * 1024];
                    loop {
                        match read.read(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(n) => {
                                if write.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                    let _ = write.shutdown().await;
                });
            }
        });
        EchoServer { addr, stop }
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// A TCP backend that writes its name to every connection, then closes it.
async fn name_server(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = stream.write_all(name.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    addr
}

/// A registration mapping router port `external_port` to `backend`, no HTTP route.
fn tcp_route(backend: SocketAddr, external_port: u16) -> RegistryMessage {
    RegistryMessage {
        host: "127.0.0.1".into(),
        port: backend.port(),
        external_port,
        private_instance_id: format!("tcp-{}", backend.port()),
        ..Default::default()
    }
}

/// The test config with TCP listeners on loopback only.
fn tcp_config() -> router::Config {
    router::Config {
        tcp_listen_host: [127, 0, 0, 1].into(),
        ..test_config()
    }
}

async fn router_on_nats(nats: &NatsServer, tweak: impl FnOnce(&mut router::Config)) -> TestRouter {
    let mut config = tcp_config();
    tweak(&mut config);
    TestRouter::on_nats(nats, config).await
}

async fn connect(port: u16) -> std::io::Result<TcpStream> {
    TcpStream::connect(("127.0.0.1", port)).await
}

/// Waits until `port` refuses connections.
async fn wait_closed(what: &str, port: u16) {
    eventually(what, Duration::from_secs(5), || async {
        match connect(port).await {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Some(()),
            _ => None,
        }
    })
    .await;
}

/// Sends `message` on `stream` and expects it back.
async fn echo_once(stream: &mut TcpStream, message: &[u8]) {
    stream.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back))
        .await
        .expect("no echo within 5 s")
        .unwrap();
    assert_eq!(back, message);
}

/// Waits until a new connection to `port` echoes.
async fn wait_echoing(what: &str, port: u16) {
    eventually(what, Duration::from_secs(5), || async {
        let mut stream = connect(port).await.ok()?;
        stream.write_all(b"probe").await.ok()?;
        let mut back = [0u8; 5];
        stream.read_exact(&mut back).await.ok()?;
        (&back == b"probe").then_some(())
    })
    .await;
}

/// Connects to `port` and reads what the backend says before closing.
async fn read_name(port: u16) -> Option<String> {
    let mut stream = connect(port).await.ok()?;
    let mut name = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut name))
        .await
        .ok()?
        .ok()?;
    (!name.is_empty()).then_some(name)
}

/// Byte `pos` of the test stream: each 8-byte word holds its own index, so a lost,
/// repeated or reordered chunk shows at the first byte that differs.
fn pattern_byte(pos: u64) -> u8 {
    ((pos >> 3) >> (8 * (pos & 7))) as u8
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_route_echoes_100_mb_intact_both_ways_at_once() {
    const TOTAL: u64 = 100 * 1024 * 1024;
    let echo = EchoServer::start().await;
    let port = free_port();
    let mut config = tcp_config();
    config.routes = vec![tcp_route(echo.addr, port)];
    let _router = TestRouter::start(config).await;
    wait_echoing("the TCP listener to open", port).await;

    let (mut read, mut write) = connect(port).await.unwrap().into_split();
    // The writer and the reader run at once: 100 MB flow each way through the router
    // simultaneously (client -> echo and echo -> client).
    let writer = tokio::spawn(async move {
        let mut chunk = vec![0u8; 256 * 1024];
        let mut pos = 0u64;
        while pos < TOTAL {
            let len = (TOTAL - pos).min(chunk.len() as u64) as usize;
            for (i, byte) in chunk[..len].iter_mut().enumerate() {
                *byte = pattern_byte(pos + i as u64);
            }
            write.write_all(&chunk[..len]).await.unwrap();
            pos += len as u64;
        }
        write.shutdown().await.unwrap();
    });
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; 256 * 1024];
        let mut pos = 0u64;
        loop {
            let n = read.read(&mut buf).await.unwrap();
            if n == 0 {
                return pos;
            }
            if let Some(i) = (0..n).find(|&i| buf[i] != pattern_byte(pos + i as u64)) {
                panic!("byte {} came back altered", pos + i as u64);
            }
            pos += n as u64;
        }
    });
    let deadline = Duration::from_secs(120);
    tokio::time::timeout(deadline, writer)
        .await
        .expect("writer stuck")
        .unwrap();
    let received = tokio::time::timeout(deadline, reader)
        .await
        .expect("reader stuck")
        .unwrap();
    assert_eq!(received, TOTAL, "the echo ended early or ran long");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_listener_opens_on_register_and_closes_when_the_last_endpoint_unregisters() {
    let nats = NatsServer::start();
    let router = router_on_nats(&nats, |_| {}).await;
    let registry = router.handle.as_ref().unwrap().registry().clone();
    let bus = nats.client().await;
    let (first, second) = (EchoServer::start().await, EchoServer::start().await);
    let port = free_port();
    let endpoints = || {
        registry
            .table()
            .load()
            .tcp_pool(port)
            .map_or(0, |pool| pool.endpoints.len())
    };
    assert!(connect(port).await.is_err(), "open before any registration");

    publish(&bus, SUBJECT_REGISTER, &tcp_route(first.addr, port)).await;
    publish(&bus, SUBJECT_REGISTER, &tcp_route(second.addr, port)).await;
    wait_echoing("the listener to open on register", port).await;
    let mut kept = connect(port).await.unwrap();
    echo_once(&mut kept, b"before").await;

    // One endpoint left: the listener stays.
    publish(&bus, SUBJECT_UNREGISTER, &tcp_route(first.addr, port)).await;
    eventually("one endpoint left", Duration::from_secs(5), || async {
        (endpoints() == 1).then_some(())
    })
    .await;
    for _ in 0..3 {
        echo_once(&mut connect(port).await.unwrap(), b"still open").await;
    }

    publish(&bus, SUBJECT_UNREGISTER, &tcp_route(second.addr, port)).await;
    wait_closed("the listener to close after the last unregister", port).await;
    // Closing the listener leaves established connections piping.
    echo_once(&mut kept, b"after the listener closed").await;

    // The route may come back: the port is bound again.
    publish(&bus, SUBJECT_REGISTER, &tcp_route(second.addr, port)).await;
    wait_echoing("the listener to reopen", port).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connections_balance_round_robin_over_three_endpoints() {
    let port = free_port();
    let mut config = tcp_config();
    config.routes = vec![
        tcp_route(name_server("a").await, port),
        tcp_route(name_server("b").await, port),
        tcp_route(name_server("c").await, port),
    ];
    let _router = TestRouter::start(config).await;
    let first = eventually("the TCP listener to open", Duration::from_secs(5), || {
        read_name(port)
    })
    .await;
    let mut counts = BTreeMap::from([(first, 1)]);
    // One connection at a time, so the picks are consecutive turns of the cursor.
    for _ in 1..30 {
        let name = read_name(port).await.expect("connection not routed");
        *counts.entry(name).or_insert(0) += 1;
    }
    let expected: BTreeMap<String, i32> =
        [("a".into(), 10), ("b".into(), 10), ("c".into(), 10)].into();
    assert_eq!(counts, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_connect_failure_is_retried_on_another_endpoint() {
    let port = free_port();
    // Nothing listens there: connecting is refused.
    let dead = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let live = name_server("live").await;
    let mut config = tcp_config();
    config.routes = vec![tcp_route(dead, port), tcp_route(live, port)];
    let router = TestRouter::start(config).await;
    eventually("the TCP listener to open", Duration::from_secs(5), || {
        read_name(port)
    })
    .await;
    // The cursor moves on every connection, so the dead endpoint comes first within two
    // of them: each must still reach the live one.
    for _ in 0..6 {
        assert_eq!(read_name(port).await.as_deref(), Some("live"));
    }
    let table = router
        .handle
        .as_ref()
        .unwrap()
        .registry()
        .table()
        .load_full();
    let pool = table.tcp_pool(port).unwrap();
    let dead_endpoint = pool
        .endpoints
        .iter()
        .find(|e| e.data.port == dead.port())
        .unwrap();
    assert!(
        dead_endpoint.stats.is_failed(clock_ms()),
        "the refused endpoint must be marked failed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_route_outside_tcp_port_range_is_not_opened() {
    let nats = NatsServer::start();
    let allowed = free_port();
    let outside = free_port();
    assert_ne!(allowed, outside);
    let router = router_on_nats(&nats, |c| c.tcp_port_range = (allowed, allowed)).await;
    let bus = nats.client().await;
    let echo = EchoServer::start().await;
    // In this order, the snapshot that opens `allowed` already holds `outside`.
    publish(&bus, SUBJECT_REGISTER, &tcp_route(echo.addr, outside)).await;
    publish(&bus, SUBJECT_REGISTER, &tcp_route(echo.addr, allowed)).await;
    wait_echoing("the port inside the range to open", allowed).await;
    let table = router
        .handle
        .as_ref()
        .unwrap()
        .registry()
        .table()
        .load_full();
    assert!(
        table.tcp_pool(outside).is_some(),
        "the route itself is registered"
    );
    let refused = connect(outside).await;
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused),
        "port {outside} outside tcp_port_range was opened: {refused:?}"
    );
}
