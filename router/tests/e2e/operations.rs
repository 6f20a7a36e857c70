//! What operators rely on: balancing, retries, stickiness, access log, metrics, tracing.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use router::protocol::{SUBJECT_REGISTER, SUBJECT_UNREGISTER};

use crate::support::*;

fn requests(b: &Backend) -> usize {
    b.requests.load(Ordering::Relaxed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_connection_prefers_the_idle_endpoint() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let mut config = test_config();
    config.balancing_algorithm = router::config::Algorithm::LeastConnection;
    config.routes = vec![
        a.registration(&["lc.example.com"]),
        b.registration(&["lc.example.com"]),
    ];
    let router = TestRouter::start(config).await;
    let addr = router.http;
    let slow = tokio::spawn(async move { get(addr, "lc.example.com", "/sleep/1500", &[]).await });
    let busy = eventually("slow request to arrive", Duration::from_secs(5), || async {
        match (requests(&a), requests(&b)) {
            (1, 0) => Some("a"),
            (0, 1) => Some("b"),
            _ => None,
        }
    })
    .await;
    for _ in 0..10 {
        let answer = get(router.http, "lc.example.com", "/", &[]).await;
        assert_ne!(
            answer.header("x-backend"),
            Some(busy),
            "sent to the busy endpoint"
        );
    }
    assert_eq!(slow.await.unwrap().status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_endpoint_fails_no_get_and_is_skipped_afterwards() {
    let backends = [
        Backend::http("k0").await,
        Backend::http("k1").await,
        Backend::http("k2").await,
    ];
    let mut config = test_config();
    config.routes = backends
        .iter()
        .map(|b| b.registration(&["kill.example.com"]))
        .collect();
    let router = TestRouter::start(config).await;
    for _ in 0..30 {
        assert_eq!(
            get(router.http, "kill.example.com", "/", &[]).await.status,
            200
        );
    }
    backends[1].stop().await;
    let served_before = requests(&backends[1]);
    for _ in 0..60 {
        let answer = get(router.http, "kill.example.com", "/", &[]).await;
        assert_eq!(answer.status, 200, "{}", answer.text());
        assert_ne!(answer.header("x-backend"), Some("k1"));
    }
    assert_eq!(requests(&backends[1]), served_before);
    // One connection failure, one retry; afterwards the endpoint is skipped, not retried.
    let metrics = get(router.status, "x", "/metrics", &[]).await.text();
    assert!(metrics.lines().any(|l| l == "retries 1"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_whose_upstream_dies_mid_request_is_not_replayed() {
    let (a, b) = (Backend::http("a").await, Backend::http("b").await);
    let mut config = test_config();
    config.routes = vec![
        a.registration(&["die.example.com"]),
        b.registration(&["die.example.com"]),
    ];
    let router = TestRouter::start(config).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(format!("http://{}/die", router.http))
        .header("host", "die.example.com")
        .body(http_body_util::Full::new(bytes::Bytes::from_static(
            b"payload",
        )))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 502);
    assert_eq!(requests(&a) + requests(&b), 1, "the POST was replayed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sticky_sessions_hold_for_100_requests_and_move_when_the_instance_goes() {
    let nats = NatsServer::start();
    let router = TestRouter::on_nats(&nats, test_config()).await;
    let bus = nats.client().await;
    let backends = [
        Backend::http("s0").await,
        Backend::http("s1").await,
        Backend::http("s2").await,
    ];
    for b in &backends {
        publish(
            &bus,
            SUBJECT_REGISTER,
            &b.registration(&["sticky.example.com"]),
        )
        .await;
    }
    eventually("three endpoints", Duration::from_secs(5), || async {
        (router.handle.as_ref().unwrap().registry().endpoint_count() == 3).then_some(())
    })
    .await;

    let first = get(router.http, "sticky.example.com", "/session", &[]).await;
    let owner = first.header("x-backend").unwrap().to_owned();
    let cookies: Vec<&str> = first
        .headers
        .get_all("set-cookie")
        .iter()
        .map(|v| v.to_str().unwrap())
        .collect();
    let vcap = cookies
        .iter()
        .find(|c| c.starts_with("__VCAP_ID__="))
        .unwrap_or_else(|| panic!("no __VCAP_ID__ in {cookies:?}"));
    assert_eq!(
        *vcap,
        format!("__VCAP_ID__=instance-{owner}; Path=/; HttpOnly; SameSite=Lax")
    );
    let cookie = format!("JSESSIONID=session-{owner}; __VCAP_ID__=instance-{owner}");
    for _ in 0..100 {
        let answer = get(
            router.http,
            "sticky.example.com",
            "/",
            &[("cookie", &cookie)],
        )
        .await;
        assert_eq!(answer.header("x-backend"), Some(owner.as_str()));
    }

    let gone = backends.iter().find(|b| b.name == owner).unwrap();
    publish(
        &bus,
        SUBJECT_UNREGISTER,
        &gone.registration(&["sticky.example.com"]),
    )
    .await;
    let moved = eventually("session to move", Duration::from_secs(5), || async {
        let a = get(
            router.http,
            "sticky.example.com",
            "/",
            &[("cookie", &cookie)],
        )
        .await;
        (a.header("x-backend") != Some(owner.as_str())).then_some(a)
    })
    .await;
    let new_owner = moved.header("x-backend").unwrap();
    assert_eq!(
        moved.header("set-cookie"),
        Some(format!("__VCAP_ID__=instance-{new_owner}; Path=/; HttpOnly").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn access_log_lines_parse_field_by_field() {
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("access.log");
    let backend = Backend::http("logged").await;
    let mut config = test_config();
    config.access_log.file = log_path.to_string_lossy().into_owned();
    let mut reg = backend.registration(&["log.example.com"]);
    reg.app = "app-guid".into();
    reg.private_instance_index = "4".into();
    config.routes = vec![reg];
    let router = TestRouter::start(config).await;
    let answer = get(
        router.http,
        "log.example.com",
        "/x?y=1",
        &[
            ("user-agent", "test \"agent\""),
            ("referer", "http://ref/"),
            ("x-forwarded-for", "9.9.9.9"),
        ],
    )
    .await;
    let request_id = answer.header("x-vcap-request-id").unwrap().to_owned();
    get(router.http, "missing.example.com", "/", &[]).await;
    let text = eventually("two access-log lines", Duration::from_secs(5), || async {
        let text = std::fs::read_to_string(&log_path).unwrap_or_default();
        (text.lines().count() >= 2).then_some(text)
    })
    .await;
    let mut lines = text.lines();
    let line = lines.next().unwrap();
    let fields = parse_access_line(line);
    assert_eq!(fields["host"], "log.example.com");
    assert_eq!(fields["request"], "GET /x?y=1 HTTP/1.1");
    assert_eq!(fields["status"], "200");
    assert_eq!(fields["response_bytes"], answer.body.len().to_string());
    assert_eq!(fields["referer"], "http://ref/");
    assert_eq!(fields["user_agent"], "test \\\"agent\\\"");
    assert!(fields["client"].starts_with("127.0.0.1:"));
    assert_eq!(
        fields["backend"],
        format!("127.0.0.1:{}", backend.addr.port())
    );
    assert_eq!(fields["x_forwarded_for"], "9.9.9.9, 127.0.0.1");
    assert_eq!(fields["x_forwarded_proto"], "http");
    assert_eq!(fields["vcap_request_id"], request_id);
    assert_eq!(fields["app_id"], "app-guid");
    assert_eq!(fields["app_index"], "4");
    assert_eq!(fields["instance_id"], "instance-logged");
    assert_eq!(fields["x_cf_routererror"], "-");
    assert!(fields["response_time"].parse::<f64>().unwrap() >= 0.0);
    assert!(fields["gorouter_time"].parse::<f64>().unwrap() >= 0.0);
    assert!(
        humantime::parse_rfc3339(&fields["time"]).is_ok(),
        "{}",
        fields["time"]
    );

    let missing = parse_access_line(lines.next().unwrap());
    assert_eq!(missing["status"], "404");
    assert_eq!(missing["backend"], "-");
    assert_eq!(missing["x_cf_routererror"], "unknown_route");
}

/// Splits a CF access-log line into named fields (quoted strings keep their escapes).
fn parse_access_line(line: &str) -> BTreeMap<String, String> {
    let mut fields = BTreeMap::new();
    let (host, rest) = line.split_once(" - [").unwrap();
    fields.insert("host".into(), host.into());
    let (time, rest) = rest.split_once("] ").unwrap();
    fields.insert("time".into(), time.into());
    let mut rest = rest;
    let take_quoted = |rest: &mut &str| -> String {
        let s = rest.trim_start().strip_prefix('"').unwrap();
        let mut end = 0;
        let bytes = s.as_bytes();
        while bytes[end] != b'"' {
            end += if bytes[end] == b'\\' { 2 } else { 1 };
        }
        *rest = &s[end + 1..];
        s[..end].to_owned()
    };
    fields.insert("request".into(), take_quoted(&mut rest));
    let mut numbers = rest.trim_start().splitn(4, ' ');
    for name in ["status", "request_bytes", "response_bytes"] {
        fields.insert(name.into(), numbers.next().unwrap().into());
    }
    rest = numbers.next().unwrap();
    for name in ["referer", "user_agent", "client", "backend"] {
        let value = take_quoted(&mut rest);
        fields.insert(name.into(), value);
    }
    while let Some((key, after)) = rest.trim_start().split_once(':') {
        let key = key.to_owned();
        rest = after;
        let value = if rest.starts_with('"') {
            take_quoted(&mut rest)
        } else {
            let (v, after) = rest.split_once(' ').unwrap_or((rest, ""));
            rest = after;
            v.to_owned()
        };
        fields.insert(key, value);
    }
    fields
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_counters_move_as_requests_are_served() {
    let backend = Backend::http("m").await;
    let mut config = test_config();
    config.status.user = "u".into();
    config.status.pass = "p".into();
    config.routes = vec![backend.registration(&["m.example.com"])];
    let router = TestRouter::start(config).await;
    for _ in 0..5 {
        get(router.http, "m.example.com", "/", &[]).await;
    }
    for _ in 0..2 {
        get(router.http, "nope.example.com", "/", &[]).await;
    }
    let metrics = eventually("metrics to settle", Duration::from_secs(5), || async {
        let text = get(router.status, "x", "/metrics", &[]).await.text();
        text.lines()
            .any(|l| l == "total_requests 7")
            .then_some(text)
    })
    .await;
    for line in [
        "routed_app_requests 5",
        "rejected_requests 2",
        "responses{status_group=\"2xx\"} 5",
        "responses{status_group=\"4xx\"} 2",
        "total_routes 1",
        "latency_seconds_count 7",
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert_eq!(get(router.status, "x", "/varz", &[]).await.status, 401);
    let varz = get(
        router.status,
        "x",
        "/varz",
        &[("authorization", "Basic dTpw")],
    )
    .await;
    assert_eq!(varz.json()["requests"], 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn w3c_trace_context_is_continued() {
    let backend = Backend::http("t").await;
    let mut config = test_config();
    config.tracing.enable_w3c = true;
    config.routes = vec![backend.registration(&["trace.example.com"])];
    let router = TestRouter::start(config).await;
    let answer = get(
        router.http,
        "trace.example.com",
        "/",
        &[(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )],
    )
    .await;
    let h = &answer.json()["headers"];
    let tp = h["traceparent"][0].as_str().unwrap();
    assert!(
        tp.starts_with("00-0af7651916cd43dd8448eb211c80319c-"),
        "{tp}"
    );
    assert!(!tp.contains("b7ad6b7169203331"));
    assert!(
        h["tracestate"][0]
            .as_str()
            .unwrap()
            .starts_with("gorouter=")
    );
    assert_eq!(
        answer.header("x-vcap-request-id"),
        Some("0af76519-16cd-43dd-8448-eb211c80319c")
    );
}
