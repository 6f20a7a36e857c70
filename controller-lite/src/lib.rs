//! controller-lite: a small Cloud-Foundry-like platform around the router: push an app's
//! bits, stage them into a droplet, run its instances, keep them healthy and routed.
//!
//! # Layout
//! The controller side (desired state):
//! - [`api`]: the REST API, a subset of Cloud Controller v3 (JSON, CF error bodies,
//!   pagination, bearer tokens with read/write scopes).
//! - [`store`]: desired state in SQLite under the data directory (apps, packages, builds,
//!   droplets, routes, tokens).
//! - [`blobs`]: the blob directory holding uploaded packages and staged droplets.
//! - [`staging`]: turns a package (tar.gz or zip of a directory) into a droplet: the same
//!   files plus a start command (`--command` or a `Procfile` `web:` line).
//! - [`health_manager`]: converges actual state (agent heartbeats) to desired state (the
//!   store): places missing instances, retires extra ones, restarts crashed ones with
//!   CF's backoff.
//! - [`logs`]: per-app recent log lines and live followers.
//! - [`controller`]: wires the above to the bus and serves the API.
//!
//! The cell side (actual state):
//! - [`agent`]: runs instances as child processes, health-checks them, captures their
//!   output, heartbeats their state and emits `router.register`/`router.unregister`.
//!
//! Shared:
//! - [`messages`]: the controller <-> agent subjects and payloads on the bus (NATS or the
//!   in-process bus, both from `router::bus`).
//! - [`up`]: controller + agent + router in one process (`controller-lite up`).
//! - [`client`] and [`cli`]: the HTTP client and the `push`/`apps`/`scale`/... commands.
//! - [`util`]: timestamps and random tokens.

pub mod agent;
pub mod api;
pub mod blobs;
pub mod cli;
pub mod client;
pub mod controller;
pub mod health_manager;
pub mod logs;
pub mod messages;
pub mod staging;
pub mod store;
pub mod up;
pub mod util;
