//! Downstream limits: idle keep-alive, slow headers, Expect: 100-continue.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::support::*;

/// Reads until the server closes the connection; returns how long that took.
fn time_until_closed(stream: &mut TcpStream, limit: Duration) -> Duration {
    let start = Instant::now();
    stream.set_read_timeout(Some(limit)).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return start.elapsed(),
            Ok(_) => continue,
            Err(e) => panic!("connection still open after {limit:?}: {e}"),
        }
    }
}

/// A router routing idle.example.com to a backend (returned to keep it up), whose
/// keep-alive connections idle out after `timeout`.
async fn idle_router(timeout: Duration) -> (Backend, TestRouter) {
    let backend = Backend::http("idle").await;
    let mut config = test_config();
    config.frontend_idle_timeout = timeout;
    config.routes = vec![backend.registration(&["idle.example.com"])];
    (backend, TestRouter::start(config).await)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_are_closed_after_frontend_idle_timeout() {
    let (_backend, router) = idle_router(Duration::from_millis(300)).await;
    let addr = router.http;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: idle.example.com\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        // Idle from here on: closed after about 300 ms, certainly well before 10 s.
        let idle = time_until_closed(&mut stream, Duration::from_secs(10));
        assert!(
            idle >= Duration::from_millis(200),
            "closed too early: {idle:?}"
        );
    })
    .await
    .unwrap();
}

/// The idle deadline restarts with every response: requests spaced under the timeout
/// keep a connection alive well past the first deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_request_restarts_the_idle_deadline() {
    let (_backend, router) = idle_router(Duration::from_millis(400)).await;
    let addr = router.http;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        for _ in 0..5 {
            stream
                .write_all(b"GET / HTTP/1.1\r\nHost: idle.example.com\r\n\r\n")
                .unwrap();
            let mut buf = [0u8; 4096];
            let n = stream.read(&mut buf).unwrap();
            assert!(
                buf[..n].starts_with(b"HTTP/1.1 200"),
                "after {:?}: {}",
                started.elapsed(),
                String::from_utf8_lossy(&buf[..n])
            );
            // The gap is the scenario: idle for most of the timeout, then a request.
            std::thread::sleep(Duration::from_millis(250));
        }
        assert!(started.elapsed() > Duration::from_millis(1000));
        let idle = time_until_closed(&mut stream, Duration::from_secs(10));
        assert!(
            idle >= Duration::from_millis(50),
            "closed too early: {idle:?}"
        );
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_headers_are_cut_off_and_other_clients_are_served() {
    let backend = Backend::http("slow").await;
    let mut config = test_config();
    config.read_header_timeout = Duration::from_millis(300);
    config.routes = vec![backend.registration(&["slow.example.com"])];
    let router = TestRouter::start(config).await;
    let addr = router.http;
    let slowloris = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: slow.exa")
            .unwrap();
        time_until_closed(&mut stream, Duration::from_secs(10))
    });
    assert_eq!(
        get(router.http, "slow.example.com", "/", &[]).await.status,
        200
    );
    slowloris.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_gets_100_then_the_answer() {
    let backend = Backend::http("continue").await;
    let mut config = test_config();
    config.routes = vec![backend.registration(&["continue.example.com"])];
    let router = TestRouter::start(config).await;
    let addr = router.http;
    tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(
                b"POST /count HTTP/1.1\r\nHost: continue.example.com\r\n\
                  Content-Length: 5\r\nExpect: 100-continue\r\n\r\n",
            )
            .unwrap();
        let mut buf = [0u8; 4096];
        let n = stream.read(&mut buf).unwrap();
        let interim = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            interim.starts_with("HTTP/1.1 100 Continue\r\n"),
            "{interim}"
        );
        stream.write_all(b"hello").unwrap();
        let mut answer = interim.split_once("\r\n\r\n").unwrap().1.to_owned();
        while !answer.ends_with("\r\n\r\n5") {
            let n = stream.read(&mut buf).unwrap();
            assert!(n > 0, "closed before the answer: {answer}");
            answer.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    })
    .await
    .unwrap();
}
