//! Benchmarks of the router (issue 7): criterion micro-benchmarks of the hot path in
//! `benches/*.rs`, and the load benchmark (`bench-load`, run by `scripts/bench`) that
//! drives the router, nginx and HAProxy with the same load. See `benches/README.md`.
//!
//! # Layout
//! - [`fixtures`]: route sets and requests shared by both kinds of benchmark.
//! - [`backend`]: the load benchmark's backend (small and 1 MiB responses, WebSocket
//!   echo, TCP sink).
//! - [`peers`]: the processes under test and their configs (router, nginx, HAProxy,
//!   NATS), all on 127.0.0.1.
//! - [`procs`]: child processes pinned with taskset, stopped on drop; RSS readings.
//! - [`load`]: wrk and h2load runs and their results.
//! - [`clients`]: load clients written here: WebSocket echo, TCP push, idle connections,
//!   route churn and register-to-serving latency.
//! - [`http1`]: a minimal keep-alive HTTP/1.1 client for those probes.
//! - [`stats`]: latency samples and percentiles.
//! - [`run`]: one whole run: scenarios x targets, then the scale figures.
//! - [`report`]: results as JSON, a Markdown table and an SVG chart.

pub mod backend;
pub mod clients;
pub mod fixtures;
pub mod http1;
pub mod load;
pub mod peers;
pub mod procs;
pub mod report;
pub mod run;
pub mod stats;
