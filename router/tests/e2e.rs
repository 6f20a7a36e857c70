//! End-to-end tests of the router over real sockets, with a real nats-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

// Helpers are shared by all test modules; not every module uses every helper.
#[allow(dead_code)]
#[path = "e2e/support.rs"]
mod support;

#[path = "e2e/config_cli.rs"]
mod config_cli;
#[path = "e2e/drain.rs"]
mod drain;
#[path = "e2e/errors.rs"]
mod errors;
#[path = "e2e/faults.rs"]
mod faults;
#[path = "e2e/headers.rs"]
mod headers;
#[path = "e2e/hostile.rs"]
mod hostile;
#[path = "e2e/limits.rs"]
mod limits;
#[path = "e2e/nats.rs"]
mod nats;
#[path = "e2e/operations.rs"]
mod operations;
#[path = "e2e/routing.rs"]
mod routing;
#[path = "e2e/status.rs"]
mod status;
#[path = "e2e/streaming.rs"]
mod streaming;
#[path = "e2e/tcp.rs"]
mod tcp;
#[path = "e2e/tls.rs"]
mod tls;
#[allow(dead_code)]
#[path = "e2e/tls_support.rs"]
mod tls_support;
#[path = "e2e/upstream_http1.rs"]
mod upstream_http1;
#[path = "e2e/websocket.rs"]
mod websocket;
