#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests of route-registrar against a real `nats-server`: the registrar runs
//! in-process (`route_registrar::run`) or as the real binary, and a test NATS client
//! watches what it publishes. One test binary; the modules live in `tests/e2e/`.

#[path = "e2e/support.rs"]
mod support;

#[path = "e2e/bad_config.rs"]
mod bad_config;
#[path = "e2e/health.rs"]
mod health;
#[path = "e2e/nats_restart.rs"]
mod nats_restart;
#[path = "e2e/registration.rs"]
mod registration;
#[path = "e2e/router_start.rs"]
mod router_start;
#[path = "e2e/shutdown.rs"]
mod shutdown;
#[path = "e2e/through_router.rs"]
mod through_router;
