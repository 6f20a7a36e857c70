//! Routing through the real proxy: static routes, precedence, HTTP/2, instance targeting.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn static_routes_serve_without_nats() {
    let backend = Backend::http("static").await;
    let mut config = test_config();
    config.routes = vec![backend.registration(&["static.example.com"])];
    let router = TestRouter::start(config).await;
    let answer = get(router.http, "static.example.com", "/hello", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["backend"], "static");
    assert_eq!(answer.json()["target"], "/hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcard_and_context_path_precedence() {
    let (wild, deep_wild, exact, api, api_v2) = (
        Backend::http("wild").await,
        Backend::http("deep-wild").await,
        Backend::http("exact").await,
        Backend::http("api").await,
        Backend::http("api-v2").await,
    );
    let mut config = test_config();
    config.routes = vec![
        wild.registration(&["*.example.com"]),
        deep_wild.registration(&["*.apps.example.com"]),
        exact.registration(&["www.apps.example.com"]),
        api.registration(&["www.apps.example.com/api"]),
        api_v2.registration(&["www.apps.example.com/api/v2"]),
    ];
    let router = TestRouter::start(config).await;
    let cases = [
        ("a.example.com", "/", "wild"),
        ("a.b.example.com", "/api", "wild"),
        ("x.apps.example.com", "/", "deep-wild"),
        ("y.x.apps.example.com", "/", "deep-wild"),
        ("WWW.Apps.Example.COM:8081", "/", "exact"),
        ("www.apps.example.com", "/apix", "exact"),
        ("www.apps.example.com", "/api", "api"),
        ("www.apps.example.com", "/API/v1?x=/api/v2", "api"),
        ("www.apps.example.com", "/api/v2/users", "api-v2"),
    ];
    for (host, path, expected) in cases {
        let answer = get(router.http, host, path, &[]).await;
        assert_eq!(answer.status, 200, "{host}{path}");
        assert_eq!(answer.header("x-backend"), Some(expected), "{host}{path}");
    }
    assert_eq!(get(router.http, "example.com", "/", &[]).await.status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_spreads_requests_evenly() {
    let backends = [
        Backend::http("r0").await,
        Backend::http("r1").await,
        Backend::http("r2").await,
    ];
    let mut config = test_config();
    config.routes = backends
        .iter()
        .map(|b| b.registration(&["rr.example.com"]))
        .collect();
    let router = TestRouter::start(config).await;
    for _ in 0..300 {
        assert_eq!(
            get(router.http, "rr.example.com", "/", &[]).await.status,
            200
        );
    }
    for b in &backends {
        assert_eq!(
            b.requests.load(std::sync::atomic::Ordering::Relaxed),
            100,
            "{}",
            b.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_prior_knowledge_is_proxied_to_an_http1_backend() {
    let backend = Backend::http("h2").await;
    let mut config = test_config();
    config.routes = vec![backend.registration(&["h2.example.com"])];
    let router = TestRouter::start(config).await;
    // A real HTTP/2 connection to the router, with the app's name as :authority.
    let tcp = tokio::net::TcpStream::connect(router.http).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get("http://h2.example.com/x?y=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let echo: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(echo["backend"], "h2");
    assert_eq!(echo["target"], "/x?y=1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_instance_header_reaches_the_exact_instance() {
    let guid = "0123abcd-0000-4000-8000-00000000beef";
    let backends = [Backend::http("i0").await, Backend::http("i1").await];
    let mut config = test_config();
    config.routes = backends
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let mut r = b.registration(&["inst.example.com"]);
            r.app = guid.into();
            r.private_instance_index = i.to_string();
            r
        })
        .collect();
    let router = TestRouter::start(config).await;
    for _ in 0..6 {
        let answer = get(
            router.http,
            "inst.example.com",
            "/",
            &[("x-cf-app-instance", &format!("{guid}:1"))],
        )
        .await;
        assert_eq!(answer.header("x-backend"), Some("i1"));
        assert!(answer.json()["headers"].get("x-cf-app-instance").is_none());
    }
    let bad = get(
        router.http,
        "inst.example.com",
        "/",
        &[("x-cf-app-instance", "nope")],
    )
    .await;
    assert_eq!(bad.status, 400);
    assert_eq!(
        bad.header("x-cf-routererror"),
        Some("invalid_cf_app_instance_header")
    );
    let missing = get(
        router.http,
        "inst.example.com",
        "/",
        &[("x-cf-app-instance", &format!("{guid}:7"))],
    )
    .await;
    assert_eq!(missing.status, 400);
    assert_eq!(missing.header("x-cf-routererror"), Some("unknown_route"));
    assert!(missing.text().contains("Requested instance ('7')"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_hyper_http1_server_remains_selectable() {
    let backend = Backend::http("hyper-h1").await;
    let mut config = test_config();
    config.http1_server = router::config::Http1Server::Hyper;
    config.routes = vec![backend.registration(&["hyper.example.com"])];
    let router = TestRouter::start(config).await;
    let answer = get(router.http, "hyper.example.com", "/x", &[]).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["target"], "/x");
    assert_eq!(
        get(router.http, "nope.example.com", "/", &[]).await.status,
        404
    );
}
