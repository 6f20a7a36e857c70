//! The route emitter: which of this agent's instances are registered with the router, and
//! the messages that keep it so. Pure state; the agent loop publishes what it returns.
//!
//! As Diego's route-emitter: one registration per healthy instance, re-sent every
//! `minimumRegisterIntervalInSeconds` (learned from `router.greet` / `router.start`) so
//! the router's TTL never lapses, sent again in full when a router (re)starts, and an
//! unregistration as soon as an instance stops being healthy.

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use router::protocol::{RegistryMessage, SUBJECT_REGISTER, SUBJECT_UNREGISTER};

use crate::messages::{DesiredInstance, InstanceKey};
use crate::util::unix_nanos;

/// Used until a router tells us its interval (gorouter's BOSH default).
pub const DEFAULT_REGISTER_INTERVAL: Duration = Duration::from_secs(20);

/// One message to publish.
pub type Outgoing = (&'static str, RegistryMessage);

/// Registered routes of this agent's instances.
#[derive(Debug)]
pub struct Emitter {
    host: String,
    zone: String,
    registered: HashMap<InstanceKey, RegistryMessage>,
    /// How often to re-register everything.
    pub interval: Duration,
}

impl Emitter {
    /// An emitter registering endpoints at `host` (the address routers dial).
    pub fn new(host: &str, zone: &str) -> Self {
        Emitter {
            host: host.to_owned(),
            zone: zone.to_owned(),
            registered: HashMap::new(),
            interval: DEFAULT_REGISTER_INTERVAL,
        }
    }

    /// The registration for a healthy instance.
    pub fn message(
        &self,
        desired: &DesiredInstance,
        instance_guid: &str,
        port: u16,
    ) -> RegistryMessage {
        let mut tags = BTreeMap::new();
        tags.insert("component".to_owned(), "controller-lite".to_owned());
        tags.insert("app_name".to_owned(), desired.app_name.clone());
        RegistryMessage {
            host: self.host.clone(),
            port,
            uris: desired.uris.clone(),
            app: desired.key.app_guid.clone(),
            private_instance_id: instance_guid.to_owned(),
            private_instance_index: desired.key.index.to_string(),
            tags,
            protocol: "http1".to_owned(),
            endpoint_updated_at_ns: unix_nanos(SystemTime::now()),
            availability_zone: self.zone.clone(),
            ..Default::default()
        }
    }

    /// Registers (or updates) an instance's routes. URIs it no longer has are
    /// unregistered first, so a route unmapped from a running app stops at once.
    pub fn register(&mut self, key: &InstanceKey, msg: RegistryMessage) -> Vec<Outgoing> {
        let mut out = Vec::new();
        if let Some(old) = self.registered.get(key) {
            let gone: Vec<String> = old
                .uris
                .iter()
                .filter(|u| !msg.uris.contains(u))
                .cloned()
                .collect();
            if !gone.is_empty()
                || old.port != msg.port
                || old.private_instance_id != msg.private_instance_id
            {
                let mut unregister = old.clone();
                if old.port == msg.port && old.private_instance_id == msg.private_instance_id {
                    unregister.uris = gone;
                }
                out.push((SUBJECT_UNREGISTER, unregister));
            }
        }
        if msg.uris.is_empty() {
            self.registered.remove(key);
        } else {
            out.push((SUBJECT_REGISTER, msg.clone()));
            self.registered.insert(key.clone(), msg);
        }
        out
    }

    /// Unregisters an instance that is stopping or crashed.
    pub fn unregister(&mut self, key: &InstanceKey) -> Option<Outgoing> {
        self.registered
            .remove(key)
            .map(|msg| (SUBJECT_UNREGISTER, msg))
    }

    /// Whether an instance is currently registered.
    pub fn is_registered(&self, key: &InstanceKey) -> bool {
        self.registered.contains_key(key)
    }

    /// Every registration, for the periodic refresh.
    pub fn refresh(&self) -> Vec<Outgoing> {
        self.registered
            .values()
            .map(|m| (SUBJECT_REGISTER, m.clone()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(uris: &[&str]) -> DesiredInstance {
        DesiredInstance {
            key: InstanceKey {
                app_guid: "app".into(),
                index: 2,
            },
            app_name: "hello".into(),
            version: 1,
            attempt: 0,
            droplet_guid: "d".into(),
            command: "x".into(),
            memory_mb: 64,
            health_check_type: "port".into(),
            health_check_endpoint: String::new(),
            uris: uris.iter().map(|u| u.to_string()).collect(),
        }
    }

    #[test]
    fn messages_carry_the_instance_identity() {
        let e = Emitter::new("127.0.0.1", "z1");
        let m = e.message(&desired(&["a.localhost"]), "iid", 4000);
        assert_eq!((m.host.as_str(), m.port), ("127.0.0.1", 4000));
        assert_eq!(m.private_instance_index, "2");
        assert_eq!(m.app, "app");
        assert_eq!(m.availability_zone, "z1");
        m.validate().unwrap();
    }

    #[test]
    fn unmapped_uris_are_unregistered_and_the_rest_refreshed() {
        let mut e = Emitter::new("127.0.0.1", "");
        let d = desired(&["a", "b"]);
        let key = d.key.clone();
        let out = e.register(&key, e.message(&d, "iid", 1));
        assert_eq!(out.len(), 1);
        let d2 = desired(&["b"]);
        let out = e.register(&key, e.message(&d2, "iid", 1));
        assert_eq!(out[0].0, SUBJECT_UNREGISTER);
        assert_eq!(out[0].1.uris, vec!["a".to_owned()]);
        assert_eq!(out[1].0, SUBJECT_REGISTER);
        assert_eq!(e.refresh().len(), 1);
        let (subject, msg) = e.unregister(&key).unwrap();
        assert_eq!(
            (subject, msg.uris),
            (SUBJECT_UNREGISTER, vec!["b".to_owned()])
        );
        assert!(e.refresh().is_empty());
    }
}
