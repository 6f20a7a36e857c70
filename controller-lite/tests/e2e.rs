#![allow(clippy::unwrap_used, clippy::expect_used)]
//! End-to-end tests: the whole platform (`up` in-process: controller, agent, router on
//! the in-process bus) with real app processes (the Python example app), reached through
//! the real router; and, in `multi_agent`, on a real NATS server with two agents, also as
//! `controller-lite agent` processes.

#[path = "e2e/support.rs"]
mod support;

#[path = "e2e/api_errors.rs"]
mod api_errors;
#[path = "e2e/lifecycle.rs"]
mod lifecycle;
#[path = "e2e/multi_agent.rs"]
mod multi_agent;
#[path = "e2e/push.rs"]
mod push;
#[path = "e2e/recovery.rs"]
mod recovery;
