//! Applying a `router.register` message at 100 000 routes, the way the control loop does
//! it: parse the JSON payload, validate it, register it, publish a new snapshot.
//!
//! - `new_route`: the message adds a route (the table changes, so the publish clones the
//!   one shard holding the host). Untimed after each: unregister and publish again, so
//!   the table stays at 100 000 routes.
//! - `refresh`: the message re-registers a known endpoint unchanged (the steady state:
//!   every endpoint does it every 20 s); nothing is published.
//! - `parse_validate`: the JSON part alone.
//!
//! Run: `cargo bench -p benches --bench register`
//!
//! Last figures (2026-11-21, 2-core VM shared with other builds, pinned to CPU 1,
//! `--warm-up-time 1 --measurement-time 3`; criterion's estimate):
//!   new_route/100000 119 us (publish is most of it: see `publish/batch/1`),
//!   refresh/100000 3.4 us, parse_validate 1.36 us.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, Instant};

use benches::fixtures;
use criterion::{Criterion, criterion_group, criterion_main};
use router::protocol::RegistryMessage;

const ROUTES: usize = 100_000;

fn apply(payload: &[u8], registry: &router::route_table::Registry) -> RegistryMessage {
    let msg = RegistryMessage::parse(payload).unwrap();
    msg.validate().unwrap();
    registry.register(&msg, tokio::time::Instant::now(), false);
    registry.publish();
    msg
}

fn register(c: &mut Criterion) {
    let registry = fixtures::registry_with_routes(ROUTES);
    let new_payloads = fixtures::new_route_payloads("new", 1024, ROUTES);
    let known_payloads: Vec<Vec<u8>> =
        fixtures::sample_indices(ROUTES, fixtures::RouteKind::Exact, 1024)
            .into_iter()
            .map(|i| fixtures::payload(&fixtures::route_registration(i)))
            .collect();

    let mut group = c.benchmark_group("register");
    group.bench_function("new_route/100000", |b| {
        b.iter_custom(|iters| {
            let mut timed = Duration::ZERO;
            for k in 0..iters as usize {
                let payload = &new_payloads[k % new_payloads.len()];
                let start = Instant::now();
                let msg = apply(black_box(payload), &registry);
                timed += start.elapsed();
                registry.unregister(&msg, tokio::time::Instant::now());
                registry.publish();
            }
            timed
        })
    });
    assert_eq!(registry.table().load().route_count(), ROUTES);

    let mut k = 0usize;
    group.bench_function("refresh/100000", |b| {
        b.iter(|| {
            let payload = &known_payloads[k % known_payloads.len()];
            k = k.wrapping_add(1);
            apply(black_box(payload), &registry)
        })
    });

    let mut k = 0usize;
    group.bench_function("parse_validate", |b| {
        b.iter(|| {
            let payload = &known_payloads[k % known_payloads.len()];
            k = k.wrapping_add(1);
            let msg = RegistryMessage::parse(black_box(payload)).unwrap();
            msg.validate().unwrap();
            msg
        })
    });
    group.finish();
}

criterion_group!(benches, register);
criterion_main!(benches);
