//! route-registrar: keeps host services (not platform apps) registered with the router
//! over NATS, health-checked, with the config keys of Cloud Foundry's route-registrar.
//!
//! # Layout
//! - [`config`]: the YAML/JSON config file -> a validated [`Config`] whose routes carry
//!   the `router.register` message they publish.
//! - [`health_check`]: runs a route's `/bin/sh -c` health script with a timeout, killing
//!   its whole process group when it hangs.
//! - [`registrar`]: [`run`], one task per route (check, then register or unregister, every
//!   interval), re-registration on `router.start` and on reconnect, and unregistration of
//!   every route at shutdown.
//!
//! The message types and the bus (NATS or in-process) are the router crate's:
//! [`router::protocol`] and [`router::bus`].

pub mod config;
pub mod health_check;
pub mod registrar;

pub use config::Config;
pub use registrar::{RegistrarError, run};
