//! The control thread's work per `router.register` of a new route, at 100 000 routes,
//! for callgrind: parse + validate + register, and one publish per 10 messages (what
//! 10 000 messages/s with the router's 1 ms publish interval come to). Only
//! `apply_churn` is meant to be counted:
//!
//! ```text
//! cargo build --release -p benches --example churn_instructions
//! valgrind --tool=callgrind --cache-sim=yes --toggle-collect='*apply_churn*' \
//!     target/release/examples/churn_instructions [MESSAGES]
//! ```
//!
//! Instructions and L1 data-cache misses per message are then `Ir` and `D1mr + D1mw`
//! divided by MESSAGES (default 10 000): repeatable, unlike wall-clock time on a
//! shared machine.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use benches::fixtures;
use router::protocol::RegistryMessage;
use router::route_table::Registry;

/// The router binary's allocator: allocation is part of the work being counted.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

const ROUTES: usize = 100_000;
const PER_PUBLISH: usize = 10;

#[inline(never)]
fn apply_churn(registry: &Registry, payloads: &[Vec<u8>]) {
    for batch in payloads.chunks(PER_PUBLISH) {
        let now = tokio::time::Instant::now();
        for payload in batch {
            let msg = RegistryMessage::parse(payload).unwrap();
            msg.validate().unwrap();
            registry.register(&msg, now, false);
        }
        registry.publish();
    }
}

fn main() {
    let messages: usize = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("MESSAGES is a count"))
        .unwrap_or(10_000);
    let registry = fixtures::registry_with_routes(ROUTES);
    let payloads = fixtures::new_route_payloads("churn", messages, ROUTES);
    let table = registry.table();
    apply_churn(&registry, &payloads);
    assert_eq!(table.load().route_count(), ROUTES + messages);
    println!("{messages} registrations applied at {ROUTES} routes");
}
