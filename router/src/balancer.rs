//! Picks an endpoint from a pool: round-robin or least-connection, skipping endpoints
//! marked failed, already tried for this request, or at `backends.max_conns`.
//!
//! The pick reserves an in-flight slot atomically ([`InFlight`]), so `max_conns` is exact
//! under concurrency; the slot is released when the guard drops (after the response body).

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::config::Algorithm;
use crate::route_table::{Endpoint, EndpointStats, Pool};

/// An in-flight request on an endpoint; dropping it releases the slot.
#[derive(Debug)]
pub struct InFlight(Arc<EndpointStats>);

impl InFlight {
    /// Takes a slot if the endpoint has fewer than `max_conns` (0: unlimited) in flight.
    pub fn try_acquire(stats: &Arc<EndpointStats>, max_conns: u32) -> Option<InFlight> {
        if max_conns == 0 {
            stats.in_flight.fetch_add(1, Ordering::Relaxed);
            return Some(InFlight(stats.clone()));
        }
        stats
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |n| {
                (n < max_conns).then_some(n + 1)
            })
            .ok()
            .map(|_| InFlight(stats.clone()))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The outcome of a pick.
#[derive(Debug)]
pub enum Pick {
    Endpoint(Arc<Endpoint>, InFlight),
    /// Every endpoint is at `max_conns`: 503 `Connection Limit Reached`.
    AllOverloaded,
    /// No endpoint left to try (empty pool, or all tried).
    Exhausted,
}

/// Picks an endpoint not in `tried`, by the pool's algorithm.
pub fn pick(pool: &Pool, max_conns: u32, tried: &[Arc<str>]) -> Pick {
    let endpoints = &pool.endpoints;
    if endpoints.is_empty() {
        return Pick::Exhausted;
    }
    let untried = |e: &&Arc<Endpoint>| !tried.iter().any(|t| **t == *e.key);
    match pool.algorithm {
        Algorithm::RoundRobin => {
            let len = endpoints.len();
            let start = pool.cursor.fetch_add(1, Ordering::Relaxed) as usize;
            let ring = (0..len).map(|i| &endpoints[(start + i) % len]);
            // First pass honours failure marks; if every untried endpoint is marked failed,
            // a second pass ignores the marks (gorouter clears them and goes on).
            for respect_failures in [true, false] {
                for endpoint in ring.clone().filter(untried) {
                    if respect_failures && endpoint.stats.is_failed_now() {
                        continue;
                    }
                    if let Some(slot) = InFlight::try_acquire(&endpoint.stats, max_conns) {
                        return Pick::Endpoint(endpoint.clone(), slot);
                    }
                }
            }
        }
        Algorithm::LeastConnection => {
            // Start at a rotating offset so that ties fall on different endpoints.
            let len = endpoints.len();
            let start = pool.cursor.fetch_add(1, Ordering::Relaxed) as usize;
            let mut candidates: Vec<&Arc<Endpoint>> = (0..len)
                .map(|i| &endpoints[(start + i) % len])
                .filter(untried)
                .collect();
            candidates.sort_by_key(|e| e.stats.in_flight.load(Ordering::Relaxed));
            for endpoint in candidates {
                if let Some(slot) = InFlight::try_acquire(&endpoint.stats, max_conns) {
                    return Pick::Endpoint(endpoint.clone(), slot);
                }
            }
        }
    }
    let all_full = max_conns > 0
        && endpoints
            .iter()
            .all(|e| e.stats.in_flight.load(Ordering::Relaxed) >= max_conns);
    if all_full {
        Pick::AllOverloaded
    } else {
        Pick::Exhausted
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::time::Instant;

    use super::*;
    use crate::protocol::RegistryMessage;
    use crate::route_table::{Registry, RegistrySettings};

    fn pool(ports: &[u16], algorithm: &str) -> Arc<Pool> {
        let reg = Registry::new(RegistrySettings::default());
        for &port in ports {
            let mut m = RegistryMessage {
                host: "127.0.0.1".into(),
                port,
                uris: vec!["a.com".into()],
                ..Default::default()
            };
            m.options.loadbalancing = algorithm.into();
            reg.register(&m, Instant::now(), false);
        }
        reg.publish();
        reg.table().load().lookup("a.com", "/").unwrap().clone()
    }

    fn port_of(p: Pick) -> u16 {
        match p {
            Pick::Endpoint(e, _) => e.data.port,
            other => panic!("no endpoint: {other:?}"),
        }
    }

    #[test]
    fn round_robin_is_even() {
        let pool = pool(&[1, 2, 3], "round-robin");
        let mut counts = [0; 4];
        for _ in 0..300 {
            counts[port_of(pick(&pool, 0, &[])) as usize] += 1;
        }
        assert_eq!(&counts[1..], [100, 100, 100]);
    }

    #[test]
    fn failed_and_tried_endpoints_are_skipped() {
        let pool = pool(&[1, 2, 3], "round-robin");
        pool.endpoints[0].stats.mark_failed(Duration::from_secs(30));
        let tried = [pool.endpoints[1].key.clone()];
        for _ in 0..10 {
            assert_eq!(port_of(pick(&pool, 0, &tried)), 3);
        }
        // With only failed endpoints left, the failure marks are ignored.
        let tried = [pool.endpoints[1].key.clone(), pool.endpoints[2].key.clone()];
        assert_eq!(port_of(pick(&pool, 0, &tried)), 1);
        let all: Vec<_> = pool.endpoints.iter().map(|e| e.key.clone()).collect();
        assert!(matches!(pick(&pool, 0, &all), Pick::Exhausted));
    }

    #[test]
    fn max_conns_is_exact_and_reports_overload() {
        let pool = pool(&[1, 2], "round-robin");
        let a = pick(&pool, 1, &[]);
        let b = pick(&pool, 1, &[]);
        assert!(matches!(pick(&pool, 1, &[]), Pick::AllOverloaded));
        drop(a);
        assert!(matches!(pick(&pool, 1, &[]), Pick::Endpoint(..)));
        drop(b);
    }

    #[test]
    fn least_connection_prefers_the_idle_endpoint() {
        let pool = pool(&[1, 2], "least-connection");
        let busy = pick(&pool, 0, &[]);
        let busy_port = port_of_ref(&busy);
        for _ in 0..10 {
            let p = pick(&pool, 0, &[]);
            assert_ne!(port_of_ref(&p), busy_port);
        }
    }

    fn port_of_ref(p: &Pick) -> u16 {
        match p {
            Pick::Endpoint(e, _) => e.data.port,
            other => panic!("no endpoint: {other:?}"),
        }
    }
}
