//! Graceful drain of the router binary: SIGUSR1 and SIGTERM under load.

use std::time::{Duration, Instant};

use crate::support::*;

async fn wait_for_exit(router: &mut RouterProcess, timeout: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = router.child.try_wait().unwrap() {
            return status;
        }
        assert!(
            Instant::now() < deadline,
            "router did not exit within {timeout:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn slow_requests(
    router: &RouterProcess,
    backend: &Backend,
    n: usize,
    path: &str,
) -> Vec<tokio::task::JoinHandle<Answer>> {
    let handles: Vec<_> = (0..n)
        .map(|_| {
            let addr = router.http;
            let path = path.to_owned();
            tokio::spawn(async move { get(addr, "drain.example.com", &path, &[]).await })
        })
        .collect();
    eventually(
        "all slow requests at the backend",
        Duration::from_secs(10),
        || async {
            (backend.requests.load(std::sync::atomic::Ordering::Relaxed) >= n).then_some(())
        },
    )
    .await;
    handles
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_drain_under_load_loses_no_request() {
    let backend = Backend::http("drain").await;
    let mut router = RouterProcess::start(&format!(
        "drain_wait: 500ms\ndrain_timeout: 30s\nroutes:\n  - {{host: 127.0.0.1, port: {}, uris: [drain.example.com]}}\n",
        backend.addr.port()
    ));
    let in_flight = slow_requests(&router, &backend, 20, "/sleep/1500").await;
    let signalled = Instant::now();
    router.signal("USR1");
    let health = eventually("health to fail", Duration::from_secs(5), || async {
        let a = get(router.status, "x", "/health", &[]).await;
        (a.status == 503).then_some(a)
    })
    .await;
    assert_eq!(health.status, 503);
    // Still serving during drain_wait.
    let during = get(router.http, "drain.example.com", "/", &[]).await;
    assert_eq!(during.status, 200);
    assert!(
        signalled.elapsed() < Duration::from_millis(500),
        "drain_wait passed too early to check"
    );
    for handle in in_flight {
        let answer = handle.await.unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    let status = wait_for_exit(&mut router, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    assert!(
        std::net::TcpStream::connect(router.http).is_err(),
        "still accepting after exit"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_accepting_at_once_and_finishes_in_flight_requests() {
    let backend = Backend::http("term").await;
    let mut router = RouterProcess::start(&format!(
        "drain_wait: 10s\ndrain_timeout: 30s\nroutes:\n  - {{host: 127.0.0.1, port: {}, uris: [drain.example.com]}}\n",
        backend.addr.port()
    ));
    let in_flight = slow_requests(&router, &backend, 5, "/sleep/1000").await;
    router.signal("TERM");
    eventually("listener to close", Duration::from_secs(5), || async {
        std::net::TcpStream::connect(router.http)
            .is_err()
            .then_some(())
    })
    .await;
    for handle in in_flight {
        assert_eq!(handle.await.unwrap().status, 200);
    }
    let status = wait_for_exit(&mut router, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigusr1_drain_under_continuous_load_answers_every_request_the_app_saw() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let backend = Backend::http("load").await;
    let mut router = RouterProcess::start(&format!(
        "drain_wait: 300ms\ndrain_timeout: 30s\nroutes:\n  - {{host: 127.0.0.1, port: {}, uris: [drain.example.com]}}\n",
        backend.addr.port()
    ));
    let stop = Arc::new(AtomicBool::new(false));
    let answered = Arc::new(AtomicUsize::new(0));
    let unanswered = Arc::new(AtomicUsize::new(0));
    // Eight clients, each sending request after request on new connections until the
    // router is gone: before, during and after the drain.
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (addr, stop) = (router.http, stop.clone());
            let (answered, unanswered) = (answered.clone(), unanswered.clone());
            tokio::spawn(async move {
                let mut broken = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = tokio::net::TcpStream::connect(addr).await else {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                        continue;
                    };
                    let request = b"GET /sleep/30 HTTP/1.1\r\nHost: drain.example.com\r\nConnection: close\r\n\r\n";
                    if stream.write_all(request).await.is_err() {
                        unanswered.fetch_add(1, Ordering::Relaxed);
                        continue;
                    }
                    let mut out = Vec::new();
                    let _ = stream.read_to_end(&mut out).await;
                    let text = String::from_utf8_lossy(&out).into_owned();
                    if out.is_empty() {
                        // Closed unanswered: accepted by the kernel as the listener closed.
                        unanswered.fetch_add(1, Ordering::Relaxed);
                    } else if text.starts_with("HTTP/1.1 200") && text.ends_with('}') {
                        answered.fetch_add(1, Ordering::Relaxed);
                    } else {
                        broken.push(text);
                    }
                }
                broken
            })
        })
        .collect();
    eventually("load to flow", Duration::from_secs(5), || async {
        (answered.load(Ordering::Relaxed) >= 50).then_some(())
    })
    .await;
    router.signal("USR1");
    let before_drain = answered.load(Ordering::Relaxed);
    let status = wait_for_exit(&mut router, Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(0));
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        let broken = client.await.unwrap();
        assert!(broken.is_empty(), "cut or failed answers: {broken:?}");
    }
    let answered = answered.load(Ordering::Relaxed);
    assert!(
        answered > before_drain,
        "nothing was served during drain_wait"
    );
    // Every request that reached the app got its answer back to the client.
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        answered,
        "{} requests closed unanswered",
        unanswered.load(Ordering::Relaxed)
    );
}
