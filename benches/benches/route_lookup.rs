//! Route lookup: `RouteTable::lookup(host, path)` on a published snapshot, as the request
//! path does it (the worker's `TableReader` checks that its snapshot is still the
//! published one, then the lookup), for an exact host, a wildcard host and a context
//! path, at 1 000 and 100 000 routes, plus a miss.
//!
//! Each iteration looks up the next of 1 024 different requests spread over the table, so
//! caches see a realistic mix rather than one hot key. Hosts arrive mixed-case, some with
//! a port, and are normalised by the lookup.
//!
//! Run: `cargo bench -p benches --bench route_lookup`
//! (quick: `cargo bench -p benches --bench route_lookup -- --warm-up-time 1 --measurement-time 2`)
//!
//! Figures of 2026-11-21 (before the reader and the caller-owned host buffer; 2-core VM
//! shared with other builds, pinned to CPU 1,
//! `--warm-up-time 1 --measurement-time 3`; criterion's estimate per lookup):
//!   exact 92 ns, wildcard 109 ns, context_path 90 ns, miss 150 ns at 1 000 routes;
//!   exact 129 ns, wildcard 131 ns, context_path 157 ns, miss 154 ns at 100 000 routes.
//! 2026-11-22, same settings, after: exact 80-86 ns at 1 000 routes; at 100 000 routes
//! exact 73-127 ns (four runs), wildcard 127-138 ns, context_path 119-139 ns, miss
//! 143-162 ns: the machine's noise is larger than the change.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;

use benches::fixtures::{self, RouteKind};
use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use router::route_table::TableReader;

fn lookups(c: &mut Criterion) {
    let mut group = c.benchmark_group("route_lookup");
    for routes in [1_000usize, 100_000] {
        let registry = fixtures::registry_with_routes(routes);
        let table = registry.table();
        let mut reader = TableReader::new(table.clone());
        for (name, kind) in [
            ("exact", RouteKind::Exact),
            ("wildcard", RouteKind::Wildcard),
            ("context_path", RouteKind::ContextPath),
        ] {
            let requests: Vec<(String, String)> = fixtures::sample_indices(routes, kind, 1024)
                .into_iter()
                .map(fixtures::request_for)
                .collect();
            // Every request must find its route, or the figure means nothing.
            for (host, path) in &requests {
                assert!(table.load().lookup(host, path).is_some(), "{host}{path}");
            }
            let mut i = 0usize;
            group.bench_function(BenchmarkId::new(name, routes), |b| {
                b.iter(|| {
                    let (host, path) = &requests[i % requests.len()];
                    i = i.wrapping_add(1);
                    black_box(
                        reader
                            .load()
                            .lookup(black_box(host), black_box(path))
                            .is_some(),
                    )
                })
            });
        }
        let misses: Vec<String> = (0..1024)
            .map(|i| format!("unknown-{i}.apps.{}", fixtures::DOMAIN))
            .collect();
        let mut i = 0usize;
        group.bench_function(BenchmarkId::new("miss", routes), |b| {
            b.iter(|| {
                let host = &misses[i % misses.len()];
                i = i.wrapping_add(1);
                black_box(reader.load().lookup(black_box(host), "/").is_none())
            })
        });
    }
    group.finish();
}

criterion_group!(benches, lookups);
criterion_main!(benches);
