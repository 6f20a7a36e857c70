//! The registrar and the real router on one nats-server: routes become routable, and
//! stop being routed when their health check fails.

use std::net::SocketAddr;
use std::time::Duration;

use router::bus::{Bus, NatsOptions};
use router::{Config as RouterConfig, Listeners};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::support::{DEADLINE, InProcessRegistrar, NatsServer, eventually, free_port};

/// The real router, in-process, fed by `nats`.
struct TestRouter {
    http: SocketAddr,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<Result<(), router::server::ServerError>>,
}

impl TestRouter {
    async fn start(nats: &NatsServer) -> Self {
        let config = RouterConfig::from_yaml(&format!(
            "nats:\n  hosts: [{{hostname: 127.0.0.1, port: {}}}]\n\
             worker_threads: 1\nstart_response_delay_interval: 0s\ntcp_listen_host: 127.0.0.1\n",
            nats.address().rsplit_once(':').unwrap().1
        ))
        .unwrap();
        let bus = Bus::connect_nats(&NatsOptions {
            urls: config.nats.urls(),
            name: "router".to_owned(),
            ..NatsOptions::default()
        })
        .await
        .unwrap();
        let listeners = Listeners::bind_ephemeral().unwrap();
        let http = listeners.http_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(router::run(config, listeners, Some(bus), shutdown.clone()));
        TestRouter {
            http,
            shutdown,
            task,
        }
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        tokio::time::timeout(DEADLINE, &mut self.task)
            .await
            .expect("router did not stop in time")
            .unwrap()
            .unwrap();
    }
}

/// A tiny HTTP/1.1 backend answering every request with 200 and `body`.
async fn backend(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 4096];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = stream.write_all(response.as_bytes()).await;
            });
        }
    });
    port
}

/// `GET /` through the router with `Host: host`: the status and the body.
async fn get(router: SocketAddr, host: &str) -> (u16, String) {
    let exchange = async {
        let mut stream = TcpStream::connect(router).await.unwrap();
        let request = format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        String::from_utf8_lossy(&response).into_owned()
    };
    let response = tokio::time::timeout(DEADLINE, exchange)
        .await
        .expect("no answer from the router");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response:?}"));
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_becomes_routable_through_the_real_router() {
    let nats = NatsServer::start().await;
    let router = TestRouter::start(&nats).await;
    let port = backend("hello from the backend").await;
    let dir = tempfile::tempdir().unwrap();
    let healthy = dir.path().join("healthy");
    std::fs::write(&healthy, "").unwrap();
    let config = nats.config_head()
        + &format!(
            "routes:
  - name: svc
    port: {port}
    uris: [svc.example.com]
    registration_interval: 200ms
    health_check: {{name: file-check, script_path: 'test -f {}'}}
",
            healthy.display()
        );
    let registrar = InProcessRegistrar::start(&config).await;
    let http = router.http;

    eventually("the route to be served", DEADLINE, || async move {
        get(http, "svc.example.com").await == (200, "hello from the backend".to_owned())
    })
    .await;

    // The check fails: the unregister removes the route within about one interval.
    std::fs::remove_file(&healthy).unwrap();
    eventually(
        "the route to be removed",
        Duration::from_secs(3),
        || async move { get(http, "svc.example.com").await.0 != 200 },
    )
    .await;

    std::fs::write(&healthy, "").unwrap();
    eventually(
        "the route to be back",
        Duration::from_secs(3),
        || async move { get(http, "svc.example.com").await.0 == 200 },
    )
    .await;

    // Shutdown unregisters it.
    registrar.stop().await;
    eventually(
        "the route to be gone",
        Duration::from_secs(3),
        || async move { get(http, "svc.example.com").await.0 != 200 },
    )
    .await;
    router.stop().await;
}

/// A TCP echo server on 127.0.0.1.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = stream.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    port
}

/// Sends `ping` to the router's TCP port and reads it back, if the port is open.
async fn echo_through(port: u16) -> Option<String> {
    let exchange = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.ok()?;
        stream.write_all(b"ping").await.ok()?;
        let mut buf = [0u8; 4];
        stream.read_exact(&mut buf).await.ok()?;
        Some(String::from_utf8_lossy(&buf).into_owned())
    };
    tokio::time::timeout(DEADLINE, exchange)
        .await
        .ok()
        .flatten()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_route_carries_bytes_through_the_real_router() {
    let nats = NatsServer::start().await;
    let router = TestRouter::start(&nats).await;
    let echo = echo_server().await;
    let external = free_port();
    let config = nats.config_head()
        + &format!(
            "routes:
  - name: db
    port: {echo}
    external_port: {external}
    registration_interval: 200ms
"
        );
    let registrar = InProcessRegistrar::start(&config).await;
    eventually("the TCP route to carry bytes", DEADLINE, || async move {
        echo_through(external).await.as_deref() == Some("ping")
    })
    .await;

    // Shutdown unregisters it, and the router closes the port.
    registrar.stop().await;
    eventually("the TCP listener to close", DEADLINE, || async move {
        TcpStream::connect(("127.0.0.1", external)).await.is_err()
    })
    .await;
    router.stop().await;
}
