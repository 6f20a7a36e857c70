//! Counters and the latency histogram behind `/metrics` (Prometheus text) and `/varz`.
//!
//! Request counters are sharded per worker thread (each shard on its own cache line), so
//! the hot path does uncontended relaxed adds; a scrape sums the shards.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;

use crate::route_table::{RegistryChange, RouteTable};

/// Upper bounds of the latency histogram buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What a finished request contributes to the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered by an app.
    Routed,
    /// Refused by the router for the client's fault or a missing route (4xx).
    Rejected,
    /// The app failed (502).
    BadGateway,
    /// Every endpoint at `backends.max_conns`.
    ConnectionLimit,
    /// Any other router-written answer (503 no endpoints, ...).
    Other,
}

/// Counters of one worker, alone on a cache line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct RequestCounters {
    total_requests: AtomicU64,
    /// 1xx, 2xx, 3xx, 4xx, 5xx, other.
    responses: [AtomicU64; 6],
    routed_app_requests: AtomicU64,
    rejected_requests: AtomicU64,
    bad_gateways: AtomicU64,
    backend_exhausted_conns: AtomicU64,
    websocket_upgrades: AtomicU64,
    websocket_failures: AtomicU64,
    retries: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_count: AtomicU64,
    latency_sum_micros: AtomicU64,
}

impl RequestCounters {
    /// Counts one finished request.
    pub fn record(&self, status: u16, outcome: Outcome, latency: Duration) {
        let add = |c: &AtomicU64| {
            c.fetch_add(1, Ordering::Relaxed);
        };
        add(&self.total_requests);
        let class = match status {
            100..=199 => 0,
            200..=299 => 1,
            300..=399 => 2,
            400..=499 => 3,
            500..=599 => 4,
            _ => 5,
        };
        add(&self.responses[class]);
        match outcome {
            Outcome::Routed => add(&self.routed_app_requests),
            Outcome::Rejected => add(&self.rejected_requests),
            Outcome::BadGateway => add(&self.bad_gateways),
            Outcome::ConnectionLimit => add(&self.backend_exhausted_conns),
            Outcome::Other => {}
        }
        let seconds = latency.as_secs_f64();
        if let Some(bucket) = LATENCY_BUCKETS.iter().position(|&le| seconds <= le) {
            add(&self.latency_buckets[bucket]);
        }
        add(&self.latency_count);
        self.latency_sum_micros
            .fetch_add(latency.as_micros() as u64, Ordering::Relaxed);
    }

    /// Counts a WebSocket upgrade, successful or not.
    pub fn websocket(&self, upgraded: bool) {
        let counter = if upgraded {
            &self.websocket_upgrades
        } else {
            &self.websocket_failures
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a retry on another endpoint.
    pub fn retry(&self) {
        self.retries.fetch_add(1, Ordering::Relaxed);
    }
}

/// All the router's metrics.
#[derive(Debug)]
pub struct Metrics {
    workers: Box<[RequestCounters]>,
    /// register: added, updated, refreshed; unregister: removed, unknown.
    registry_messages: [[AtomicU64; 5]; 2],
    invalid_messages: AtomicU64,
    routes_pruned: AtomicU64,
    access_log_dropped: AtomicU64,
    nats_connected: AtomicBool,
    started: std::time::Instant,
}

const CHANGES: [(RegistryChange, &str); 5] = [
    (RegistryChange::Added, "added"),
    (RegistryChange::Updated, "updated"),
    (RegistryChange::Refreshed, "unmodified"),
    (RegistryChange::Removed, "removed"),
    (RegistryChange::Unknown, "unknown"),
];

impl Metrics {
    /// Metrics for `workers` proxy threads (worker `i` uses shard `i`).
    pub fn new(workers: usize) -> Self {
        Metrics {
            workers: (0..workers.max(1))
                .map(|_| RequestCounters::default())
                .collect(),
            registry_messages: Default::default(),
            invalid_messages: AtomicU64::new(0),
            routes_pruned: AtomicU64::new(0),
            access_log_dropped: AtomicU64::new(0),
            nats_connected: AtomicBool::new(false),
            started: std::time::Instant::now(),
        }
    }

    /// The counters of worker `index`.
    pub fn worker(&self, index: usize) -> &RequestCounters {
        &self.workers[index % self.workers.len()]
    }

    /// Counts the changes one registry message made.
    pub fn registry_message(&self, unregister: bool, changes: &[RegistryChange]) {
        for change in changes {
            if let Some(i) = CHANGES.iter().position(|(c, _)| c == change) {
                self.registry_messages[usize::from(unregister)][i].fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    /// Counts a message dropped as invalid.
    pub fn invalid_message(&self) {
        self.invalid_messages.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts pruned endpoints.
    pub fn pruned(&self, endpoints: usize) {
        self.routes_pruned
            .fetch_add(endpoints as u64, Ordering::Relaxed);
    }

    /// Counts an access-log line dropped because the writer fell behind.
    pub fn access_log_dropped(&self) {
        self.access_log_dropped.fetch_add(1, Ordering::Relaxed);
    }

    /// Records whether the message bus is connected.
    pub fn set_nats_connected(&self, connected: bool) {
        self.nats_connected.store(connected, Ordering::Relaxed);
    }

    fn sum(&self, f: impl Fn(&RequestCounters) -> &AtomicU64) -> u64 {
        self.workers
            .iter()
            .map(|w| f(w).load(Ordering::Relaxed))
            .sum()
    }

    /// The Prometheus text exposition.
    pub fn prometheus(&self, table: &RouteTable) -> String {
        let mut out = String::with_capacity(4096);
        let mut counter = |name: &str, help: &str, value: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        };
        counter(
            "total_requests",
            "Requests received.",
            self.sum(|w| &w.total_requests),
        );
        counter(
            "routed_app_requests",
            "Requests answered by an app.",
            self.sum(|w| &w.routed_app_requests),
        );
        counter(
            "rejected_requests",
            "Requests refused by the router with a 4xx.",
            self.sum(|w| &w.rejected_requests),
        );
        counter(
            "bad_gateways",
            "502 answers.",
            self.sum(|w| &w.bad_gateways),
        );
        counter(
            "backend_exhausted_conns",
            "Requests refused because every endpoint was at backends.max_conns.",
            self.sum(|w| &w.backend_exhausted_conns),
        );
        counter(
            "websocket_upgrades",
            "WebSocket upgrades proxied.",
            self.sum(|w| &w.websocket_upgrades),
        );
        counter(
            "websocket_failures",
            "WebSocket upgrades that failed.",
            self.sum(|w| &w.websocket_failures),
        );
        counter(
            "retries",
            "Attempts on another endpoint.",
            self.sum(|w| &w.retries),
        );
        counter(
            "routes_pruned",
            "Endpoints pruned for not re-registering.",
            self.routes_pruned.load(Ordering::Relaxed),
        );
        counter(
            "invalid_registry_messages",
            "Registry messages dropped as invalid.",
            self.invalid_messages.load(Ordering::Relaxed),
        );
        counter(
            "access_log_dropped_lines",
            "Access-log lines dropped because the writer fell behind.",
            self.access_log_dropped.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP responses Responses by status class.\n# TYPE responses counter"
        );
        for (i, class) in ["1xx", "2xx", "3xx", "4xx", "5xx", "xxx"]
            .iter()
            .enumerate()
        {
            let _ = writeln!(
                out,
                "responses{{status_group=\"{class}\"}} {}",
                self.sum(|w| &w.responses[i])
            );
        }
        let _ = writeln!(
            out,
            "# HELP registry_message Registry messages by action.\n# TYPE registry_message counter"
        );
        for (kind, row) in ["register", "unregister"]
            .iter()
            .zip(&self.registry_messages)
        {
            for (i, (_, action)) in CHANGES.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "registry_message{{message=\"{kind}\",action=\"{action}\"}} {}",
                    row[i].load(Ordering::Relaxed)
                );
            }
        }
        let _ = writeln!(
            out,
            "# HELP latency_seconds Time from request to the end of the response.\n# TYPE latency_seconds histogram"
        );
        let mut cumulative = 0;
        for (i, le) in LATENCY_BUCKETS.iter().enumerate() {
            cumulative += self.sum(|w| &w.latency_buckets[i]);
            let _ = writeln!(out, "latency_seconds_bucket{{le=\"{le}\"}} {cumulative}");
        }
        let count = self.sum(|w| &w.latency_count);
        let _ = writeln!(out, "latency_seconds_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(
            out,
            "latency_seconds_sum {}",
            self.sum(|w| &w.latency_sum_micros) as f64 / 1e6
        );
        let _ = writeln!(out, "latency_seconds_count {count}");
        let mut gauge = |name: &str, help: &str, value: f64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        };
        gauge(
            "total_routes",
            "HTTP routes in the table.",
            table.route_count() as f64,
        );
        gauge(
            "nats_connected",
            "1 while the message bus is connected.",
            f64::from(u8::from(self.nats_connected.load(Ordering::Relaxed))),
        );
        gauge(
            "uptime_seconds",
            "Seconds since start.",
            self.started.elapsed().as_secs_f64().floor(),
        );
        out
    }

    /// The `/varz` document: the same figures as JSON.
    pub fn varz(&self, table: &RouteTable) -> serde_json::Value {
        let classes = ["1xx", "2xx", "3xx", "4xx", "5xx", "xxx"];
        let responses: serde_json::Map<String, serde_json::Value> = classes
            .iter()
            .enumerate()
            .map(|(i, c)| ((*c).to_owned(), json!(self.sum(|w| &w.responses[i]))))
            .collect();
        let count = self.sum(|w| &w.latency_count);
        json!({
            "type": "Router",
            "uptime_seconds": self.started.elapsed().as_secs(),
            "requests": self.sum(|w| &w.total_requests),
            "routed_app_requests": self.sum(|w| &w.routed_app_requests),
            "rejected_requests": self.sum(|w| &w.rejected_requests),
            "bad_gateways": self.sum(|w| &w.bad_gateways),
            "backend_exhausted_conns": self.sum(|w| &w.backend_exhausted_conns),
            "websocket_upgrades": self.sum(|w| &w.websocket_upgrades),
            "websocket_failures": self.sum(|w| &w.websocket_failures),
            "retries": self.sum(|w| &w.retries),
            "responses": responses,
            "urls": table.route_count(),
            "routes_pruned": self.routes_pruned.load(Ordering::Relaxed),
            "invalid_registry_messages": self.invalid_messages.load(Ordering::Relaxed),
            "access_log_dropped_lines": self.access_log_dropped.load(Ordering::Relaxed),
            "nats_connected": self.nats_connected.load(Ordering::Relaxed),
            "latency": {
                "count": count,
                "mean_seconds": if count == 0 { 0.0 } else {
                    self.sum(|w| &w.latency_sum_micros) as f64 / 1e6 / count as f64
                },
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_over_workers_and_render() {
        let m = Metrics::new(2);
        m.worker(0)
            .record(200, Outcome::Routed, Duration::from_millis(3));
        m.worker(1)
            .record(502, Outcome::BadGateway, Duration::from_secs(20));
        m.worker(1)
            .record(404, Outcome::Rejected, Duration::from_micros(100));
        m.registry_message(false, &[RegistryChange::Added, RegistryChange::Added]);
        m.pruned(3);
        let text = m.prometheus(&RouteTable::default());
        for line in [
            "total_requests 3",
            "bad_gateways 1",
            "rejected_requests 1",
            "responses{status_group=\"2xx\"} 1",
            "responses{status_group=\"5xx\"} 1",
            "registry_message{message=\"register\",action=\"added\"} 2",
            "routes_pruned 3",
            "latency_seconds_bucket{le=\"0.0005\"} 1",
            "latency_seconds_bucket{le=\"0.005\"} 2",
            "latency_seconds_bucket{le=\"10\"} 2",
            "latency_seconds_bucket{le=\"+Inf\"} 3",
            "latency_seconds_count 3",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert_eq!(m.varz(&RouteTable::default())["requests"], 3);
    }
}
