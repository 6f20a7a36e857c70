//! What a registration message carries.

use crate::support::{DEADLINE, InProcessRegistrar, NatsServer, free_port};

#[tokio::test]
async fn register_message_carries_the_route_fields() {
    let nats = NatsServer::start_with_auth("registrar", "s3cret").await;
    let mut watcher = nats.watch().await;
    // The first server is down: the client must use the second one.
    let config = format!(
        r#"
message_bus_servers:
  - {{host: "127.0.0.1:{dead}", user: registrar, password: s3cret}}
  - {{host: "{live}", user: registrar, password: s3cret}}
host: 127.0.0.1
availability_zone: z1
routes:
  - name: admin-ui
    port: 7101
    tls_port: 7102
    server_cert_domain_san: admin.internal
    uris: [admin.example.com, admin.example.com/ui]
    registration_interval: 200ms
    tags: {{component: admin, index: 0}}
    route_service_url: https://rs.example.com
    protocol: http2
    options: {{loadbalancing: least-connection}}
"#,
        dead = free_port(),
        live = nats.address(),
    );
    let registrar = InProcessRegistrar::start(&config).await;

    let first = watcher.expect_register(7101).await;
    let m = &first.message;
    assert_eq!(m.host, "127.0.0.1");
    assert_eq!((m.port, m.tls_port), (7101, 7102));
    assert_eq!(m.uris, ["admin.example.com", "admin.example.com/ui"]);
    assert_eq!(m.server_cert_domain_san, "admin.internal");
    assert_eq!(m.route_service_url, "https://rs.example.com");
    assert_eq!(m.protocol, "http2");
    assert_eq!(m.options.loadbalancing, "least-connection");
    assert_eq!(m.availability_zone, "z1");
    assert_eq!(m.tags["component"], "admin");
    assert_eq!(m.tags["index"], "0");
    assert_eq!(m.stale_threshold_in_seconds, 1, "3 x 200ms, rounded up");
    assert!(!m.private_instance_id.is_empty());
    assert_eq!(m.external_port, 0);
    m.validate().unwrap();

    // Registered again every interval, with the same instance id.
    let second = watcher.expect_register(7101).await;
    assert_eq!(second.message, first.message);

    registrar.stop().await;
    let gone = watcher.expect_unregister(7101).await;
    assert_eq!(gone.message.private_instance_id, m.private_instance_id);
}

#[tokio::test]
async fn tcp_route_registration_carries_external_port() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let config = nats.config_head()
        + "routes:\n  - name: postgres\n    port: 7201\n    external_port: 40001\n    registration_interval: 200ms\n";
    let registrar = InProcessRegistrar::start(&config).await;

    let seen = watcher.expect_register(7201).await;
    assert_eq!(seen.message.external_port, 40001);
    assert!(seen.message.uris.is_empty());
    seen.message.validate().unwrap();

    registrar.stop().await;
    let gone = watcher.expect_unregister(7201).await;
    assert_eq!(gone.message.external_port, 40001);
}

#[tokio::test]
async fn routes_are_registered_on_their_own_intervals() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let config = nats.config_head()
        + "routes:
  - {name: fast, port: 7301, uris: [fast.example.com], registration_interval: 100ms}
  - {name: slow, port: 7302, uris: [slow.example.com], registration_interval: 1s}
";
    let registrar = InProcessRegistrar::start(&config).await;
    watcher.expect_register(7302).await;
    // Until the slow route's second registration, the fast one registers ~9 times.
    watcher
        .expect("second register of the slow route", DEADLINE, |s| {
            s.is_register(7302)
        })
        .await;
    let fast = watcher.seen.iter().filter(|s| s.is_register(7301)).count();
    assert!(fast >= 5, "fast route registered only {fast} times in 1s");
    registrar.stop().await;
}
