//! Route lookups at 100 000 routes for callgrind: the route_lookup bench's exact-host
//! requests (1 024 of them, spread over the table), looked up in turn. Only
//! `lookup_all` is meant to be counted:
//!
//! ```text
//! cargo build --release -p benches --example lookup_instructions
//! valgrind --tool=callgrind --cache-sim=yes --toggle-collect='*lookup_all*' \
//!     target/release/examples/lookup_instructions [ROUNDS]
//! ```
//!
//! Instructions and L1 data-cache misses per lookup are `Ir` and `D1mr + D1mw` divided
//! by 1 024 x ROUNDS (default 10). Run without valgrind, it also times each round and
//! prints the median and the fastest tenth's time per lookup, for A/B runs of two builds
//! (`taskset -c 1 target/release/examples/lookup_instructions 2000`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use benches::fixtures::{self, RouteKind};
use router::route_table::TableReader;

/// The router binary's allocator, so the table is laid out as in the router.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUTES: usize = 100_000;

#[inline(never)]
fn lookup_all(reader: &mut TableReader, requests: &[(String, String)], rounds: usize) -> usize {
    let mut found = 0;
    for _ in 0..rounds {
        for (host, path) in requests {
            found += usize::from(
                reader
                    .load()
                    .lookup(black_box(host), black_box(path))
                    .is_some(),
            );
        }
    }
    found
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("ROUNDS is a count"))
        .unwrap_or(10);
    let registry = fixtures::registry_with_routes(ROUTES);
    let mut reader = TableReader::new(registry.table());
    let requests: Vec<(String, String)> = fixtures::sample_indices(ROUTES, RouteKind::Exact, 1024)
        .into_iter()
        .map(fixtures::request_for)
        .collect();
    let found = lookup_all(&mut reader, &requests, rounds);
    assert_eq!(found, requests.len() * rounds);
    // Rounds timed one by one: the median is what a lookup costs when nothing else
    // runs, which the mean of a noisy machine is not.
    let mut round_ns: Vec<f64> = (0..rounds)
        .map(|_| {
            let start = std::time::Instant::now();
            black_box(lookup_all(&mut reader, &requests, 1));
            start.elapsed().as_nanos() as f64 / requests.len() as f64
        })
        .collect();
    round_ns.sort_by(f64::total_cmp);
    println!(
        "{found} lookups at {ROUTES} routes; per lookup: median {:.1} ns, p10 {:.1} ns",
        round_ns[round_ns.len() / 2],
        round_ns[round_ns.len() / 10]
    );
}
