//! The control loop: feeds the registry from the config's static routes and the bus,
//! publishes snapshots in batches, prunes stale endpoints, and announces the router.
//!
//! One task owns all writes to the registry. Messages that arrive together are applied
//! together and published as one snapshot, so a burst of registrations costs one publish.
//! A change is published at once unless the last publish was less than
//! [`PUBLISH_INTERVAL`] ago; then it waits for the rest of the interval, so that a steady
//! trickle of registrations (10 000/s from many emitters) makes at most one snapshot per
//! interval, not one per message.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::FutureExt;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::bus::{Bus, BusMessage, BusState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::protocol::{
    RegistryMessage, RouterStart, SUBJECT_GREET, SUBJECT_REGISTER, SUBJECT_START,
    SUBJECT_UNREGISTER,
};
use crate::route_table::Registry;

/// Most messages applied before a publish, so a flood cannot starve readers of updates.
const MAX_BATCH: usize = 4096;

/// Least time between two publishes of bus changes.
const PUBLISH_INTERVAL: Duration = Duration::from_millis(1);

/// Loads the config's static routes (permanent: never pruned) and publishes them.
pub fn load_static_routes(registry: &Registry, config: &Config) {
    let now = Instant::now();
    for route in &config.routes {
        registry.register(route, now, true);
    }
    registry.publish();
}

/// The payload of `router.start` and the answer to `router.greet`.
pub fn router_start(config: &Config, id: &str) -> RouterStart {
    let host = if config.status.host.is_unspecified() {
        "127.0.0.1".to_owned()
    } else {
        config.status.host.to_string()
    };
    RouterStart {
        id: id.to_owned(),
        hosts: vec![host],
        minimum_register_interval_in_seconds: config.start_response_delay_interval.as_secs(),
        prune_threshold_in_seconds: config.droplet_stale_threshold.as_secs(),
    }
}

/// Runs until `shutdown`: applies bus messages, prunes, answers greets.
pub async fn run(
    registry: Arc<Registry>,
    config: Arc<Config>,
    bus: Option<Bus>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let start_payload = match serde_json::to_vec(&router_start(
        &config,
        &format!("0-{}", uuid::Uuid::new_v4()),
    )) {
        Ok(payload) => Bytes::from(payload),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode router.start");
            Bytes::new()
        }
    };
    let mut prune_ticker = tokio::time::interval(config.prune_stale_droplets_interval);
    prune_ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    prune_ticker.reset(); // The first tick is one interval from now, not at once.

    let Some(bus) = bus else {
        // Static routes only: pruning has nothing to do (they are permanent).
        shutdown.cancelled().await;
        return;
    };
    let mut subscription = match bus.subscribe("router.*").await {
        Ok(sub) => sub,
        Err(err) => {
            tracing::error!(error = %err, "cannot subscribe to router.*; routes come from the config only");
            shutdown.cancelled().await;
            return;
        }
    };
    let mut state = bus.state();
    let mut seen_connects = 0;
    // Announce on the connection we may already have.
    let current = *state.borrow_and_update();
    on_state(
        &registry,
        &bus,
        &metrics,
        &start_payload,
        current,
        &mut seen_connects,
    )
    .await;

    let mut last_publish: Option<Instant> = None;
    // Whether changes may be waiting for the publish interval to pass.
    let mut unpublished = false;
    loop {
        let publish_at = last_publish.map_or_else(Instant::now, |at| at + PUBLISH_INTERVAL);
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep_until(publish_at), if unpublished => {
                unpublished = false;
                if registry.publish() {
                    last_publish = Some(Instant::now());
                }
            }
            msg = subscription.next() => {
                let Some(msg) = msg else {
                    tracing::error!("bus subscription ended");
                    shutdown.cancelled().await;
                    return;
                };
                let mut batch = 1;
                handle_message(&registry, &bus, &metrics, &start_payload, msg).await;
                // Drain what is already queued, then publish once.
                while batch < MAX_BATCH {
                    match subscription.next().now_or_never() {
                        Some(Some(msg)) => {
                            handle_message(&registry, &bus, &metrics, &start_payload, msg).await;
                            batch += 1;
                        }
                        _ => break,
                    }
                }
                let now = Instant::now();
                if now < publish_at {
                    unpublished = true;
                } else {
                    unpublished = false;
                    if registry.publish() {
                        last_publish = Some(now);
                        tracing::debug!(messages = batch, "published route table");
                    }
                }
            }
            changed = state.changed() => {
                if changed.is_err() {
                    continue;
                }
                let current = *state.borrow_and_update();
                on_state(&registry, &bus, &metrics, &start_payload, current, &mut seen_connects).await;
            }
            _ = prune_ticker.tick() => {
                let connected = state.borrow().connected;
                if config.suspend_pruning_if_nats_unavailable && !connected {
                    tracing::info!("prune-suspended: NATS is unavailable");
                    continue;
                }
                let pruned = registry.prune(Instant::now());
                if pruned > 0 {
                    metrics.pruned(pruned);
                    tracing::info!(endpoints = pruned, "pruned-route");
                }
                if registry.publish() {
                    last_publish = Some(Instant::now());
                    unpublished = false;
                }
            }
        }
    }
}

/// On every (re)connect: refresh all TTLs (the bus was away, not the endpoints) and
/// announce the router so that emitters re-register at once.
async fn on_state(
    registry: &Registry,
    bus: &Bus,
    metrics: &Metrics,
    start_payload: &Bytes,
    state: BusState,
    seen_connects: &mut u64,
) {
    metrics.set_nats_connected(state.connected);
    if !state.connected {
        tracing::warn!("message bus disconnected");
        return;
    }
    if state.connects == *seen_connects {
        return;
    }
    if *seen_connects > 0 {
        registry.freshen(Instant::now());
    }
    *seen_connects = state.connects;
    tracing::info!(
        connects = state.connects,
        "message bus connected; sending router.start"
    );
    if let Err(err) = bus.publish(SUBJECT_START, start_payload.clone()).await {
        tracing::warn!(error = %err, "cannot publish router.start");
    }
}

async fn handle_message(
    registry: &Registry,
    bus: &Bus,
    metrics: &Metrics,
    start_payload: &Bytes,
    msg: BusMessage,
) {
    match msg.subject.as_str() {
        SUBJECT_REGISTER | SUBJECT_UNREGISTER => {
            let parsed = RegistryMessage::parse(&msg.payload).and_then(|m| {
                m.validate()?;
                Ok(m)
            });
            let reg = match parsed {
                Ok(reg) => reg,
                Err(reason) => {
                    metrics.invalid_message();
                    tracing::warn!(
                        subject = %msg.subject,
                        reason = %reason,
                        payload = %String::from_utf8_lossy(&msg.payload[..msg.payload.len().min(512)]),
                        "dropping invalid registry message"
                    );
                    return;
                }
            };
            let now = Instant::now();
            let unregister = msg.subject == SUBJECT_UNREGISTER;
            let changes = if unregister {
                registry.unregister(&reg, now)
            } else {
                registry.register(&reg, now, false)
            };
            metrics.registry_message(unregister, &changes);
            tracing::debug!(subject = %msg.subject, host = %reg.host, port = reg.endpoint_port(), ?changes, "registry message");
        }
        SUBJECT_GREET => {
            let Some(reply) = msg.reply else { return };
            if let Err(err) = bus.publish(&reply, start_payload.clone()).await {
                tracing::warn!(error = %err, "cannot answer router.greet");
            }
        }
        _ => {}
    }
}
