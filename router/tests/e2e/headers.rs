//! Headers on the way to the app and back, checked by an echoing backend.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_are_set_as_gorouter_does() {
    let backend = Backend::http("echo").await;
    let mut config = test_config();
    let mut reg = backend.registration(&["hdr.example.com"]);
    reg.app = "app-guid-1".into();
    reg.private_instance_id = "instance-guid-1".into();
    reg.private_instance_index = "3".into();
    config.routes = vec![reg];
    let router = TestRouter::start(config).await;

    let answer = get(
        router.http,
        "hdr.example.com",
        "/",
        &[("x-forwarded-for", "1.2.3.4")],
    )
    .await;
    assert_eq!(answer.status, 200);
    let echo = answer.json();
    let h = &echo["headers"];
    assert_eq!(h["x-forwarded-for"][0], "1.2.3.4, 127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "http");
    assert_eq!(h["x-cf-applicationid"][0], "app-guid-1");
    assert_eq!(h["x-cf-instanceid"][0], "instance-guid-1");
    assert_eq!(h["x-cf-instanceindex"][0], "3");
    let start: u64 = h["x-request-start"][0].as_str().unwrap().parse().unwrap();
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        now_ms - start < 60_000,
        "X-Request-Start is not in ms: {start}"
    );
    let request_id = h["x-vcap-request-id"][0].as_str().unwrap();
    assert!(uuid::Uuid::parse_str(request_id).is_ok());
    assert_eq!(answer.header("x-vcap-request-id"), Some(request_id));

    // Without a prior X-Forwarded-For the client's address alone; a client's
    // X-Forwarded-Proto and X-Request-Start pass through; X-Vcap-Request-Id and the
    // X-CF-* endpoint headers are replaced.
    let answer = get(
        router.http,
        "hdr.example.com",
        "/",
        &[
            ("x-forwarded-proto", "https"),
            ("x-request-start", "42"),
            ("x-vcap-request-id", "spoofed"),
            ("x-cf-instanceid", "forged"),
            ("x-cf-applicationid", "forged"),
        ],
    )
    .await;
    let h = &answer.json()["headers"];
    // The router's endpoint headers replace the client's: one value each.
    assert_eq!(h["x-cf-instanceid"], serde_json::json!(["instance-guid-1"]));
    assert_eq!(h["x-cf-applicationid"], serde_json::json!(["app-guid-1"]));
    assert_eq!(h["x-vcap-request-id"].as_array().unwrap().len(), 1);
    assert_eq!(h["x-forwarded-for"][0], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"][0], "https");
    assert_eq!(h["x-request-start"][0], "42");
    assert_ne!(h["x-vcap-request-id"][0], "spoofed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_target_pass_byte_for_byte_and_hop_by_hop_headers_are_dropped() {
    let backend = Backend::http("raw").await;
    let mut config = test_config();
    config.routes = vec![backend.registration(&["raw.example.com"])];
    let router = TestRouter::start(config).await;
    let addr = router.http;
    let answer = tokio::task::spawn_blocking(move || {
        raw_exchange(
            addr,
            b"GET /A/%2f/../b;x?q=%41&e= HTTP/1.1\r\nHost: RaW.Example.com:99\r\n\
              Connection: X-Hop, keep-alive\r\nX-Hop: secret\r\nKeep-Alive: timeout=5\r\n\
              Proxy-Connection: keep-alive\r\nTE: trailers, deflate\r\nX-Kept: yes\r\n\r\n",
            Duration::from_secs(5),
        )
    })
    .await
    .unwrap();
    assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
    let body = answer.split_once("\r\n\r\n").unwrap().1;
    let echo: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(echo["target"], "/A/%2f/../b;x?q=%41&e=");
    let h = &echo["headers"];
    assert_eq!(h["host"][0], "RaW.Example.com:99");
    assert_eq!(h["x-kept"][0], "yes");
    assert_eq!(h["te"][0], "trailers");
    for dropped in ["x-hop", "keep-alive", "proxy-connection"] {
        assert!(h.get(dropped).is_none(), "{dropped} was forwarded: {h}");
    }
}
