//! gorouter's error responses: status, X-Cf-Routererror and body, over real sockets.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_route_is_404_with_gorouter_body() {
    let router = TestRouter::start(test_config()).await;
    let answer = get(router.http, "nowhere.example.com", "/", &[]).await;
    assert_eq!(answer.status, 404);
    assert_eq!(answer.header("x-cf-routererror"), Some("unknown_route"));
    assert_eq!(
        answer.text(),
        "404 Not Found: Requested route ('nowhere.example.com') does not exist.\n"
    );
    assert!(answer.header("x-vcap-request-id").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn route_without_endpoints_is_503_no_endpoints() {
    let nats = NatsServer::start();
    let mut config = test_config();
    config.empty_pool_timeout = Duration::from_secs(60);
    let router = TestRouter::on_nats(&nats, config).await;
    let bus = nats.client().await;
    let backend = Backend::http("gone").await;
    let reg = backend.registration(&["empty.example.com"]);
    publish(&bus, router::protocol::SUBJECT_REGISTER, &reg).await;
    eventually("route", Duration::from_secs(5), || async {
        (get(router.http, "empty.example.com", "/", &[]).await.status == 200).then_some(())
    })
    .await;
    publish(&bus, router::protocol::SUBJECT_UNREGISTER, &reg).await;
    let answer = eventually("503", Duration::from_secs(5), || async {
        let a = get(router.http, "empty.example.com", "/", &[]).await;
        (a.status == 503).then_some(a)
    })
    .await;
    assert_eq!(answer.header("x-cf-routererror"), Some("no_endpoints"));
    assert_eq!(
        answer.text(),
        "503 Service Unavailable: Requested route ('empty.example.com') has no available endpoints.\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_endpoints_give_502_endpoint_failure_after_retries() {
    // Ports that were free a moment ago: connecting to them is refused.
    let mut config = test_config();
    config.routes = (0..2)
        .map(|i| router::protocol::RegistryMessage {
            host: "127.0.0.1".into(),
            port: free_port(),
            uris: vec!["dead.example.com".into()],
            private_instance_id: format!("dead-{i}"),
            ..Default::default()
        })
        .collect();
    let router = TestRouter::start(config).await;
    let answer = get(router.http, "dead.example.com", "/", &[]).await;
    assert_eq!(answer.status, 502);
    let reason = answer.header("x-cf-routererror").unwrap();
    assert!(
        reason.starts_with("endpoint_failure (dial tcp 127.0.0.1:"),
        "{reason}"
    );
    assert_eq!(
        answer.text(),
        "502 Bad Gateway: Registered endpoint failed to handle the request.\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_endpoint_is_retried_on_a_live_one() {
    let live = Backend::http("live").await;
    let mut config = test_config();
    let mut dead = live.registration(&["retry.example.com"]);
    dead.port = free_port();
    dead.private_instance_id = "dead".into();
    config.routes = vec![dead, live.registration(&["retry.example.com"])];
    let router = TestRouter::start(config).await;
    for _ in 0..10 {
        let answer = get(router.http, "retry.example.com", "/", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("x-backend"), Some("live"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn empty_host_is_400() {
    let router = TestRouter::start(test_config()).await;
    let addr = router.http;
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(
            addr,
            b"GET / HTTP/1.1\r\nHost: \r\n\r\n",
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 400 Bad Request\r\n"),
        "{answer}"
    );
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-cf-routererror: empty_host")
    );
    assert!(
        answer.ends_with("400 Bad Request: Request had empty Host header\n"),
        "{answer}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_headers_are_431() {
    let backend = Backend::http("big").await;
    let mut config = test_config();
    config.max_request_header_bytes = 4096;
    config.routes = vec![backend.registration(&["big.example.com"])];
    let router = TestRouter::start(config).await;
    let ok = get(
        router.http,
        "big.example.com",
        "/",
        &[("x-pad", &"a".repeat(3000))],
    )
    .await;
    assert_eq!(ok.status, 200);
    let big = get(
        router.http,
        "big.example.com",
        "/",
        &[("x-pad", &"a".repeat(5000))],
    )
    .await;
    assert_eq!(big.status, 431);
    assert_eq!(
        big.header("x-cf-routererror"),
        Some("max-request-size-exceeded")
    );
    assert!(big.body.is_empty());
    assert_eq!(
        backend.requests.load(std::sync::atomic::Ordering::Relaxed),
        1
    );
}
