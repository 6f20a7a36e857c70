//! Snapshot publication under churn, at 100 000 routes.
//!
//! - `batch/N`: `Registry::publish` after N new routes were registered (the control loop
//!   applies what NATS delivered together, up to 4 096 messages, then publishes once).
//!   Only the publish is timed; the routes are removed again untimed.
//! - `lookup_during_churn`: the route lookup of `route_lookup` (exact host) while another
//!   thread registers, publishes, unregisters and publishes again as fast as it can: what
//!   readers pay while snapshots are being replaced (compare with `route_lookup/exact`).
//!
//! Run: `cargo bench -p benches --bench publish`
//!
//! Last figures (2026-11-21, 2-core VM shared with other builds, pinned to CPU 1,
//! `--warm-up-time 1 --measurement-time 3`; criterion's estimate):
//!   batch/1 43 us, batch/64 2.78 ms, batch/4096 18.1 ms;
//!   lookup_during_churn 461 ns with the writer on the same CPU (6 900 publishes/s),
//!   722 ns on both CPUs of the busy machine (4 400 publishes/s); 129 ns without churn.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use benches::fixtures::{self, RouteKind};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

const ROUTES: usize = 100_000;

fn publish(c: &mut Criterion) {
    let registry = Arc::new(fixtures::registry_with_routes(ROUTES));
    let mut group = c.benchmark_group("publish");
    for batch in [1usize, 64, 4096] {
        let messages: Vec<_> = (0..batch)
            .map(|k| {
                let uri = format!("batch-{k}.apps.{}", fixtures::DOMAIN);
                fixtures::registration(&uri, "10.200.0.1", 8080, ROUTES + k)
            })
            .collect();
        group.bench_function(BenchmarkId::new("batch", batch), |b| {
            b.iter_custom(|iters| {
                let mut timed = Duration::ZERO;
                for _ in 0..iters {
                    let now = tokio::time::Instant::now();
                    for msg in &messages {
                        registry.register(msg, now, false);
                    }
                    let start = Instant::now();
                    assert!(registry.publish());
                    timed += start.elapsed();
                    for msg in &messages {
                        registry.unregister(msg, now);
                    }
                    registry.publish();
                }
                timed
            })
        });
    }
    assert_eq!(registry.table().load().route_count(), ROUTES);

    // Readers while a writer churns.
    let stop = Arc::new(AtomicBool::new(false));
    let publishes = Arc::new(AtomicU64::new(0));
    let writer = {
        let (registry, stop, publishes) = (registry.clone(), stop.clone(), publishes.clone());
        std::thread::spawn(move || {
            let mut k = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let uri = format!("churn-{}.apps.{}", k % 4096, fixtures::DOMAIN);
                let msg = fixtures::registration(&uri, "10.200.0.2", 8080, k);
                let now = tokio::time::Instant::now();
                registry.register(&msg, now, false);
                registry.publish();
                registry.unregister(&msg, now);
                registry.publish();
                publishes.fetch_add(2, Ordering::Relaxed);
                k += 1;
            }
        })
    };
    let table = registry.table();
    let requests: Vec<(String, String)> = fixtures::sample_indices(ROUTES, RouteKind::Exact, 1024)
        .into_iter()
        .map(fixtures::request_for)
        .collect();
    let mut i = 0usize;
    let started = Instant::now();
    group.bench_function(BenchmarkId::new("lookup_during_churn", ROUTES), |b| {
        b.iter(|| {
            let (host, path) = &requests[i % requests.len()];
            i = i.wrapping_add(1);
            let snapshot = table.load();
            black_box(snapshot.lookup(black_box(host), black_box(path)).is_some())
        })
    });
    stop.store(true, Ordering::Relaxed);
    writer.join().unwrap();
    eprintln!(
        "publish/lookup_during_churn: the writer published {:.0} snapshots/s meanwhile",
        publishes.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64()
    );
    group.finish();
}

criterion_group!(benches, publish);
criterion_main!(benches);
