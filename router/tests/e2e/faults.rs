//! Faults around the router, against the router binary: nats-server killed and
//! restarted, and apps that reset mid-response, accept and hang, or answer garbage.
//! After each, the router's file descriptors and memory return to their baseline (no
//! leaked connection, task or buffer), and it goes on serving.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use router::protocol::{SUBJECT_REGISTER, SUBJECT_UNREGISTER};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::*;

/// Open file descriptors of a process.
fn fd_count(router: &RouterProcess) -> usize {
    std::fs::read_dir(format!("/proc/{}/fd", router.child.id()))
        .unwrap()
        .count()
}

/// What a faulty app does once it has read a request head.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Sends the head and part of the body, then resets the connection.
    ResetMidResponse,
    /// Resets the connection without answering.
    ResetBeforeAnswer,
    /// Never answers, and keeps the connection until the router closes it.
    Hang,
    /// Answers these bytes, then closes.
    Garbage(&'static [u8]),
}

/// An app with a fault; counts the connections it has open.
struct FaultyApp {
    addr: SocketAddr,
    open: Arc<AtomicUsize>,
    accepted: Arc<AtomicUsize>,
}

impl FaultyApp {
    async fn start(fault: Fault) -> FaultyApp {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let open = Arc::new(AtomicUsize::new(0));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (open_task, accepted_task) = (open.clone(), accepted.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                accepted_task.fetch_add(1, Ordering::Relaxed);
                open_task.fetch_add(1, Ordering::Relaxed);
                let open = open_task.clone();
                tokio::spawn(async move {
                    serve_fault(stream, fault).await;
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        FaultyApp {
            addr,
            open,
            accepted,
        }
    }

    fn route(&self, uri: &str) -> String {
        format!(
            "  - {{host: 127.0.0.1, port: {}, uris: [{uri}]}}\n",
            self.addr.port()
        )
    }
}

async fn serve_fault(mut stream: TcpStream, fault: Fault) {
    let mut head = Vec::new();
    let mut buf = [0u8; 4096];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let reset = |stream: TcpStream| {
        let _ = socket2::SockRef::from(&stream).set_linger(Some(Duration::ZERO));
        drop(stream);
    };
    match fault {
        Fault::ResetMidResponse => {
            let _ = stream
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
                .await;
            let _ = stream.write_all(&[b'x'; 1000]).await;
            reset(stream);
        }
        Fault::ResetBeforeAnswer => reset(stream),
        Fault::Hang => {
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        }
        Fault::Garbage(bytes) => {
            let _ = stream.write_all(bytes).await;
            let _ = stream.shutdown().await;
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    return;
                }
            }
        }
    }
}

/// Sends one GET with `Connection: close` and returns the status (0: no status line)
/// and whether the whole response arrived; panics if it takes longer than `limit`.
async fn fetch(addr: SocketAddr, host: &str, limit: Duration) -> (u16, bool) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        stream
            .write_all(
                format!("GET / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
        let mut out = Vec::new();
        let complete = stream.read_to_end(&mut out).await.is_ok();
        let text = String::from_utf8_lossy(&out).into_owned();
        let status = text
            .strip_prefix("HTTP/1.1 ")
            .and_then(|rest| rest.get(..3))
            .and_then(|code| code.parse().ok())
            .unwrap_or(0);
        let body_ok = match text.split_once("\r\n\r\n") {
            Some((head, body)) => head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .is_none_or(|len| body.len() == len),
            None => false,
        };
        (status, complete && body_ok)
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| panic!("no answer from the router within {limit:?}"))
}

/// Starts the router binary with `routes` plus a healthy route `ok.example.com`.
async fn router_with(routes: &str, extra: &str) -> (RouterProcess, Backend) {
    let healthy = Backend::http("healthy").await;
    let yaml = format!(
        "{extra}routes:\n{routes}  - {{host: 127.0.0.1, port: {}, uris: [ok.example.com]}}\n",
        healthy.addr.port()
    );
    (RouterProcess::start(&yaml), healthy)
}

/// Runs `rounds` of `exchange`, after a warm-up, and checks that the router's fds return
/// to their baseline and its memory stays near it.
async fn assert_no_leak<F, Fut>(router: &RouterProcess, rounds: usize, mut exchange: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..20 {
        exchange().await;
    }
    let fds = eventually("fds to settle", Duration::from_secs(5), || async {
        let before = fd_count(router);
        tokio::time::sleep(Duration::from_millis(50)).await;
        (fd_count(router) == before).then_some(before)
    })
    .await;
    let rss = router.rss_kib();
    for _ in 0..rounds {
        exchange().await;
    }
    let after = eventually("fds back to baseline", Duration::from_secs(10), || async {
        let now = fd_count(router);
        (now <= fds).then_some(now)
    })
    .await;
    assert!(after <= fds);
    let grown = router.rss_kib().saturating_sub(rss);
    assert!(
        grown < 8 * 1024,
        "RSS grew by {grown} KiB over {rounds} faulty exchanges"
    );
    assert_eq!(
        fetch(router.http, "ok.example.com", Duration::from_secs(5)).await,
        (200, true)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_mid_response_cuts_the_client_off_and_leaks_nothing() {
    let app = FaultyApp::start(Fault::ResetMidResponse).await;
    let (router, _healthy) = router_with(&app.route("reset.example.com"), "").await;
    assert_no_leak(&router, 200, || async {
        let (status, complete) =
            fetch(router.http, "reset.example.com", Duration::from_secs(5)).await;
        // The head went out before the reset: the client sees a cut-off body, never a
        // complete response.
        assert!(status == 200 || status == 0, "status {status}");
        assert!(!complete, "a reset response looked complete");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_reset_before_answering_is_502() {
    let app = FaultyApp::start(Fault::ResetBeforeAnswer).await;
    let (router, _healthy) = router_with(&app.route("rst.example.com"), "").await;
    assert_no_leak(&router, 200, || async {
        let (status, complete) =
            fetch(router.http, "rst.example.com", Duration::from_secs(5)).await;
        assert_eq!((status, complete), (502, true));
    })
    .await;
}

/// An app that closes a fresh connection without answering (it is going away) costs an
/// idempotent request nothing: it goes to another endpoint, as gorouter retries an EOF.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_closed_unanswered_on_a_fresh_connection_goes_to_another_endpoint() {
    let app = FaultyApp::start(Fault::ResetBeforeAnswer).await;
    let healthy = Backend::http("healthy").await;
    let router = RouterProcess::start(&format!(
        "routes:\n{}  - {{host: 127.0.0.1, port: {}, uris: [mix.example.com]}}\n",
        app.route("mix.example.com"),
        healthy.addr.port()
    ));
    for _ in 0..10 {
        let (status, complete) =
            fetch(router.http, "mix.example.com", Duration::from_secs(5)).await;
        assert_eq!((status, complete), (200, true));
    }
    // Round-robin reaches the faulty app within two requests; then it is skipped.
    assert!(app.accepted.load(Ordering::Relaxed) >= 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_accepts_and_hangs_is_502_at_endpoint_timeout() {
    let app = FaultyApp::start(Fault::Hang).await;
    let (router, _healthy) =
        router_with(&app.route("hang.example.com"), "endpoint_timeout: 300ms\n").await;
    let started = Instant::now();
    let answers: Vec<_> = (0..20)
        .map(|_| {
            let addr = router.http;
            tokio::spawn(
                async move { fetch(addr, "hang.example.com", Duration::from_secs(5)).await },
            )
        })
        .collect();
    for answer in answers {
        assert_eq!(answer.await.unwrap(), (502, true));
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(4),
        "{took:?}"
    );
    // The router closed every connection to the app it gave up on.
    eventually("app connections closed", Duration::from_secs(5), || async {
        (app.open.load(Ordering::Relaxed) == 0).then_some(())
    })
    .await;
    assert_no_leak(&router, 40, || async {
        assert_eq!(
            fetch(router.http, "hang.example.com", Duration::from_secs(5)).await,
            (502, true)
        );
    })
    .await;
    assert_eq!(app.open.load(Ordering::Relaxed), 0);
}

/// Every request on a keep-alive connection has the whole `endpoint_timeout`: the
/// connection keeps its requests' deadlines on one timer, which must move on to each
/// request's own deadline rather than fire at a previous one's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_on_a_keep_alive_connection_has_the_whole_endpoint_timeout() {
    let app = FaultyApp::start(Fault::Hang).await;
    let (router, _healthy) =
        router_with(&app.route("hang.example.com"), "endpoint_timeout: 600ms\n").await;
    let addr = router.http;
    let (first, second, waited) = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let first = exchange_on(
            &mut stream,
            b"GET / HTTP/1.1\r\nHost: ok.example.com\r\n\r\n",
        );
        // The scenario, not a synchronisation: the first request's deadline must fall
        // while the second request waits.
        std::thread::sleep(Duration::from_millis(300));
        let sent = Instant::now();
        let second = exchange_on(
            &mut stream,
            b"GET / HTTP/1.1\r\nHost: hang.example.com\r\n\r\n",
        );
        (first, second, sent.elapsed())
    })
    .await
    .unwrap();
    assert!(first.starts_with("HTTP/1.1 200"), "{first}");
    assert!(second.starts_with("HTTP/1.1 502"), "{second}");
    assert!(
        waited >= Duration::from_millis(550) && waited < Duration::from_secs(4),
        "the second request failed after {waited:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_an_upstream_is_502_and_leaks_nothing() {
    const GARBAGE: [&[u8]; 7] = [
        b"\x00\x01\x02 not http\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
        b"HTTP/1.1 200 OK\r\nX-A: a\rX-Injected: 1\r\n\r\n",
        b"SSH-2.0-OpenSSH_9.6\r\n",
    ];
    let apps: Vec<FaultyApp> =
        futures_util::future::join_all(GARBAGE.iter().map(|g| FaultyApp::start(Fault::Garbage(g))))
            .await;
    let routes: String = apps
        .iter()
        .enumerate()
        .map(|(i, app)| app.route(&format!("garbage{i}.example.com")))
        .collect();
    let (router, _healthy) = router_with(&routes, "").await;
    assert_no_leak(&router, 30, || async {
        for (i, garbage) in GARBAGE.iter().enumerate() {
            let host = format!("garbage{i}.example.com");
            let (status, _) = fetch(router.http, &host, Duration::from_secs(5)).await;
            assert_eq!(status, 502, "{:?}", String::from_utf8_lossy(garbage));
        }
    })
    .await;
    // A garbage answer is an endpoint failure, never retried as if the request had not
    // been sent (one connection per request).
    assert!(
        apps.iter()
            .all(|a| a.accepted.load(Ordering::Relaxed) == 20 + 30)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodiless_answers_pass_on_only_a_valid_content_length() {
    // No body follows a HEAD answer or a 204, so their Content-Length is never checked
    // by reading: the router must not pass a broken one on to the client.
    let broken = FaultyApp::start(Fault::Garbage(
        b"HTTP/1.1 200 OK\r\nContent-Length: 10GET /x HTTP/1.1\r\n\r\n",
    ))
    .await;
    let no_content = FaultyApp::start(Fault::Garbage(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n",
    ))
    .await;
    let sized = FaultyApp::start(Fault::Garbage(
        b"HTTP/1.1 200 OK\r\nContent-Length: 1234\r\n\r\n",
    ))
    .await;
    let routes = [
        broken.route("broken.example.com"),
        no_content.route("nocontent.example.com"),
        sized.route("sized.example.com"),
    ]
    .concat();
    let (router, _healthy) = router_with(&routes, "").await;
    let answer = |method: &'static str, host: &'static str| async move {
        let mut stream = TcpStream::connect(router.http).await.unwrap();
        let request = format!("{method} / HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut out = Vec::new();
        let _ = stream.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).to_ascii_lowercase()
    };
    let head = answer("HEAD", "broken.example.com").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    let no_content = answer("GET", "nocontent.example.com").await;
    assert!(no_content.starts_with("http/1.1 204"), "{no_content}");
    assert!(!no_content.contains("content-length"), "{no_content}");
    // A valid length on a HEAD answer is the size of the full answer: kept.
    let sized = answer("HEAD", "sized.example.com").await;
    assert!(sized.contains("content-length: 1234\r\n"), "{sized}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restarts_keep_routes_and_registration_resumes() {
    let mut nats = NatsServer::start();
    let backend = Backend::http("registrar").await;
    let router = RouterProcess::start(&format!(
        "nats: {{hosts: [{{hostname: 127.0.0.1, port: {}}}]}}\n\
         droplet_stale_threshold: 1s\nprune_stale_droplets_interval: 100ms\n",
        nats.port
    ));
    // A registrar refreshing its route every 200 ms, across NATS outages (it reconnects).
    let bus = nats.client().await;
    let registration = backend.registration(&["kept.example.com"]);
    let registrar = {
        let (bus, registration) = (bus.clone(), registration.clone());
        tokio::spawn(async move {
            loop {
                let payload = bytes::Bytes::from(serde_json::to_vec(&registration).unwrap());
                let _ = bus.publish(SUBJECT_REGISTER, payload).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };
    eventually("route to serve", Duration::from_secs(10), || async {
        (get(router.http, "kept.example.com", "/", &[]).await.status == 200).then_some(())
    })
    .await;
    let fds = fd_count(&router);

    for outage in 0..3 {
        nats.stop();
        // Two TTLs without registrations: the router must keep the route (pruning is
        // suspended while NATS is away), checked all along rather than once.
        let down = Instant::now();
        while down.elapsed() < Duration::from_millis(2200) {
            let answer = get(router.http, "kept.example.com", "/", &[]).await;
            assert_eq!(
                answer.status, 200,
                "outage {outage}: route lost while NATS was down"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        nats.restart();
        // Registration resumes: new routes are learnt again...
        let fresh = backend.registration(&[&format!("fresh{outage}.example.com")]);
        eventually(
            "registration after restart",
            Duration::from_secs(10),
            || async {
                let payload = bytes::Bytes::from(serde_json::to_vec(&fresh).unwrap());
                let _ = bus.publish(SUBJECT_REGISTER, payload).await;
                (get(router.http, &format!("fresh{outage}.example.com"), "/", &[])
                    .await
                    .status
                    == 200)
                    .then_some(())
            },
        )
        .await;
        // ...and unregistrations too.
        publish(&bus, SUBJECT_UNREGISTER, &fresh).await;
        eventually(
            "unregistration after restart",
            Duration::from_secs(5),
            || async {
                (get(router.http, &format!("fresh{outage}.example.com"), "/", &[])
                    .await
                    .status
                    == 404)
                    .then_some(())
            },
        )
        .await;
    }
    // The refreshed route outlives several TTLs after the last restart: pruning is back
    // on, and the registrar's refreshes are what keeps it.
    let since = Instant::now();
    while since.elapsed() < Duration::from_millis(2500) {
        assert_eq!(
            get(router.http, "kept.example.com", "/", &[]).await.status,
            200
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registrar.abort();
    eventually(
        "pruned once the registrar stops",
        Duration::from_secs(10),
        || async {
            (get(router.http, "kept.example.com", "/", &[]).await.status == 404).then_some(())
        },
    )
    .await;
    // Three reconnects left no socket behind.
    eventually("fds back to baseline", Duration::from_secs(5), || async {
        (fd_count(&router) <= fds).then_some(())
    })
    .await;
}
