//! The status listeners: /health and /routes.

use std::time::Duration;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_ok_when_serving_and_503_when_draining() {
    let router = TestRouter::start(test_config()).await;
    let health = eventually("healthy", Duration::from_secs(5), || async {
        let a = get(router.status, "x", "/health", &[]).await;
        (a.status == 200).then_some(a)
    })
    .await;
    assert_eq!(health.text(), "ok\n");
    router.handle.as_ref().unwrap().health().set_draining();
    assert_eq!(get(router.status, "x", "/health", &[]).await.status, 503);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_waits_for_the_start_delay_when_routes_come_from_nats() {
    let nats = NatsServer::start();
    let mut config = test_config();
    config.nats = nats.router_config();
    config.start_response_delay_interval = Duration::from_millis(300);
    let router = TestRouter::start(config).await;
    assert_eq!(get(router.status, "x", "/health", &[]).await.status, 503);
    eventually(
        "healthy after the delay",
        Duration::from_secs(5),
        || async { (get(router.status, "x", "/health", &[]).await.status == 200).then_some(()) },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_are_listed_behind_basic_auth() {
    let backend = Backend::http("listed").await;
    let mut config = test_config();
    config.status.user = "admin".into();
    config.status.pass = "s3cret".into();
    let mut reg = backend.registration(&["listed.example.com/path"]);
    reg.tags.insert("component".into(), "test".into());
    config.routes = vec![reg];
    let router = TestRouter::start(config).await;

    let anonymous = get(router.routes, "x", "/routes", &[]).await;
    assert_eq!(anonymous.status, 401);
    let wrong = get(
        router.routes,
        "x",
        "/routes",
        &[("authorization", "Basic YWRtaW46bm8=")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    // admin:s3cret
    let answer = get(
        router.routes,
        "x",
        "/routes",
        &[("authorization", "Basic YWRtaW46czNjcmV0")],
    )
    .await;
    assert_eq!(answer.status, 200);
    let routes = answer.json();
    let endpoint = &routes["listed.example.com/path"][0];
    assert_eq!(
        endpoint["address"],
        format!("127.0.0.1:{}", backend.addr.port())
    );
    assert_eq!(endpoint["private_instance_id"], "instance-listed");
    assert_eq!(endpoint["app"], "app-listed");
    assert_eq!(endpoint["tags"]["component"], "test");
    assert_eq!(endpoint["ttl"], -1);
    // /routes is not served on the public status port.
    assert_eq!(get(router.status, "x", "/routes", &[]).await.status, 404);
}
