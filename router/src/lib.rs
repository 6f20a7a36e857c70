//! The edge router.
//!
//! # Layout
//! The request path reads top to bottom, one module per stage:
//! - [`listener`]: accepts downstream connections on each worker thread.
//! - [`http`]: serves HTTP/1.1 and HTTP/2 downstream; `http::proxy` is the hot path
//!   (route -> balance -> upstream -> respond) and calls the stages below in order.
//! - [`route_table`]: the lock-free routing table (snapshot lookup) and the registry the
//!   control plane edits.
//! - [`balancer`]: picks an endpoint from a pool (round-robin, least-connection).
//! - [`upstream`]: dials endpoints and keeps a per-thread pool of idle connections.
//! - [`websocket`]: after a 101, joins client and endpoint with a byte pipe.
//! - [`tcp`]: TCP routes (`external_port`): a listener per routed port, then a pipe.
//! - [`pipe`]: moves bytes both ways between two connections, zero-copy (splice) on Linux.
//! - [`deadline`]: a connection's timer, reused for the deadlines of its requests.
//!
//! Around it:
//! - [`protocol`]: gorouter's NATS subjects and payloads (shared with the other crates).
//! - [`bus`]: the message bus, NATS or in-process, behind one type.
//! - [`route_updates`]: the control loop feeding the registry from the bus and the config,
//!   batching updates and pruning stale endpoints.
//! - [`status`]: `/health`, `/metrics`, `/varz`, `/routes`.
//! - [`metrics`]: counters and the latency histogram, sharded per worker.
//! - [`access_log`]: the CF access log, written by its own thread.
//! - [`config`]: the YAML config with gorouter's keys.
//! - [`tls`]: rustls configs: the TLS listener (SNI, ALPN, client certificates) and TLS
//!   to endpoints.
//! - [`server`]: `run(config, listeners, shutdown)`, which starts all of the above.
//! - [`fuzzing`]: the fuzz targets' bodies (`fuzz/`), replayed by `tests/fuzz_corpus.rs`.

pub mod access_log;
pub mod balancer;
pub mod bus;
pub mod config;
pub mod deadline;
pub mod fuzzing;
pub mod http;
pub mod listener;
pub mod metrics;
pub mod pipe;
pub mod protocol;
pub mod route_table;
pub mod route_updates;
pub mod server;
pub mod status;
pub mod stop_signal;
pub mod tcp;
pub mod tls;
pub mod upstream;
pub mod websocket;

pub use config::Config;
pub use server::{Listeners, RouterHandle, run};
