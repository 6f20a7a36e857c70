//! Reacting to routers: `router.start` and `router.greet`.

use std::time::Duration;

use bytes::Bytes;
use router::protocol::{RouterStart, SUBJECT_GREET, SUBJECT_START};
use tokio::time::Instant;

use crate::support::{InProcessRegistrar, NatsServer, Watcher};

async fn announce_router(watcher: &Watcher, minimum_interval_s: u64) {
    let start = RouterStart {
        id: "0-test-router".to_owned(),
        hosts: vec!["127.0.0.1".to_owned()],
        minimum_register_interval_in_seconds: minimum_interval_s,
        prune_threshold_in_seconds: 120,
    };
    watcher
        .bus
        .publish(
            SUBJECT_START,
            Bytes::from(serde_json::to_vec(&start).unwrap()),
        )
        .await
        .unwrap();
    watcher.bus.flush().await.unwrap();
}

#[tokio::test]
async fn router_start_re_registers_healthy_routes_at_once() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let config = nats.config_head()
        + "routes:
  - {name: up, port: 7801, uris: [up.example.com], registration_interval: 60s}
  - name: down
    port: 7802
    uris: [down.example.com]
    registration_interval: 60s
    health_check: {name: fails, script_path: 'exit 1'}
";
    let registrar = InProcessRegistrar::start(&config).await;
    watcher.expect_register(7801).await;
    watcher.expect_unregister(7802).await;

    watcher.clear_pending();
    let from = watcher.seen.len();
    announce_router(&watcher, 20).await;
    let announced = Instant::now();
    let seen = watcher.expect_register(7801).await;
    let took = seen.at - announced;
    assert!(took < Duration::from_millis(1500), "took {took:?}");
    assert!(
        !watcher.seen[from..].iter().any(|s| s.is_register(7802)),
        "an unhealthy route was registered on router.start"
    );
    registrar.stop().await;
}

#[tokio::test]
async fn router_register_interval_is_adopted_only_when_configured() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let route = |port: u16| {
        format!(
            "routes:\n  - {{name: r{port}, port: {port}, uris: [r{port}.example.com], registration_interval: 60s}}\n"
        )
    };
    let adopting = InProcessRegistrar::start(
        &(nats.config_head() + "use_router_register_interval: true\n" + &route(7901)),
    )
    .await;
    let keeping = InProcessRegistrar::start(&(nats.config_head() + &route(7902))).await;
    watcher.expect_register(7901).await;
    watcher.expect_register(7902).await;

    watcher.clear_pending();
    let from = watcher.seen.len();
    announce_router(&watcher, 1).await;
    // The adopting route: the re-registration, then one per second.
    for _ in 0..3 {
        watcher.expect_register(7901).await;
    }
    let last = watcher.seen.last().unwrap().message.clone();
    assert_eq!(last.stale_threshold_in_seconds, 3, "3 x the adopted 1s");
    let kept = watcher.seen[from..]
        .iter()
        .filter(|s| s.is_register(7902))
        .count();
    assert!(
        kept <= 1,
        "the other route kept its 60s interval, yet registered {kept} times"
    );

    adopting.stop().await;
    keeping.stop().await;
}

#[tokio::test]
async fn router_greet_answer_sets_the_interval_when_configured() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let responder = nats.client().await;
    let mut greets = responder.subscribe(SUBJECT_GREET).await.unwrap();
    responder.flush().await.unwrap();
    let answering = tokio::spawn(async move {
        while let Some(greet) = greets.next().await {
            let answer = RouterStart {
                id: "0-greeted".to_owned(),
                hosts: vec![],
                minimum_register_interval_in_seconds: 1,
                prune_threshold_in_seconds: 120,
            };
            let reply = greet.reply.unwrap();
            responder
                .publish(&reply, Bytes::from(serde_json::to_vec(&answer).unwrap()))
                .await
                .unwrap();
        }
    });
    let registrar = InProcessRegistrar::start(
        &(nats.config_head()
            + "use_router_register_interval: true
routes:
  - {name: g, port: 7951, uris: [g.example.com], registration_interval: 60s}
"),
    )
    .await;
    for _ in 0..3 {
        watcher.expect_register(7951).await;
    }
    registrar.stop().await;
    answering.abort();
}
