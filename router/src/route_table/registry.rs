//! The control plane's working registry, and publication of snapshots from it.
//!
//! Only the route-update loop writes; anyone may read. Nothing here does I/O or reads a
//! clock: callers pass `now`, so tests drive time by hand.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use dashmap::{DashMap, DashSet};
use http::HeaderValue;
use tokio::time::Instant;

use super::{
    Endpoint, EndpointData, EndpointHeaders, EndpointStats, HostRoutes, Pool, RouteKey, RouteTable,
    Shard, UpstreamProtocol, shard_of,
};
use crate::config::{Algorithm, Config};
use crate::protocol::RegistryMessage;

/// What the registry needs from the config.
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    pub droplet_stale_threshold: Duration,
    pub empty_pool_timeout: Duration,
    pub balancing_algorithm: Algorithm,
}

impl RegistrySettings {
    /// The registry-related part of a router config.
    pub fn from_config(config: &Config) -> Self {
        RegistrySettings {
            droplet_stale_threshold: config.droplet_stale_threshold,
            empty_pool_timeout: config.empty_pool_timeout,
            balancing_algorithm: config.balancing_algorithm,
        }
    }

    fn ttl(&self, stale_threshold_in_seconds: u64) -> Duration {
        crate::config::endpoint_ttl(self.droplet_stale_threshold, stale_threshold_in_seconds)
    }
}

impl Default for RegistrySettings {
    fn default() -> Self {
        RegistrySettings::from_config(&Config::default())
    }
}

/// The effect of one register or unregister on one route (for logs and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RegistryChange {
    /// A new endpoint joined the route.
    Added,
    /// A known endpoint's data changed.
    Updated,
    /// A known endpoint re-registered unchanged: only its TTL was refreshed.
    Refreshed,
    /// An endpoint left the route.
    Removed,
    /// An unregister for an endpoint the route does not have.
    Unknown,
}

#[derive(Debug)]
struct Registered {
    endpoint: Arc<Endpoint>,
    updated_at: Instant,
    /// Static routes from the config file are never pruned or unregistered.
    permanent: bool,
}

#[derive(Debug)]
struct RouteEntry {
    endpoints: BTreeMap<Arc<str>, Registered>,
    algorithm: Algorithm,
    /// When the last endpoint left (the route then answers 503 until it expires).
    emptied_at: Option<Instant>,
}

/// Where a route lives: an HTTP host + path, or a TCP router port.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Slot {
    Http(RouteKey),
    Tcp(u16),
}

/// Endpoints with their TTLs, keyed for register, unregister and prune.
#[derive(Debug)]
pub struct Registry {
    settings: RegistrySettings,
    /// host -> context path -> route.
    hosts: DashMap<Arc<str>, HashMap<Box<str>, RouteEntry>>,
    tcp: DashMap<u16, RouteEntry>,
    /// Live counters by endpoint key, so an endpoint on several routes has one count.
    stats: DashMap<Arc<str>, Arc<EndpointStats>>,
    /// Hosts changed since the last publish.
    dirty_hosts: DashSet<Arc<str>>,
    tcp_dirty: std::sync::atomic::AtomicBool,
    table: Arc<ArcSwap<RouteTable>>,
    /// Bumped after every publish that changed TCP routes, for the TCP listener manager.
    tcp_version: tokio::sync::watch::Sender<u64>,
    endpoint_count: AtomicUsize,
}

impl Registry {
    /// An empty registry publishing to a fresh table.
    pub fn new(settings: RegistrySettings) -> Self {
        Registry {
            settings,
            hosts: DashMap::new(),
            tcp: DashMap::new(),
            stats: DashMap::new(),
            dirty_hosts: DashSet::new(),
            tcp_dirty: Default::default(),
            table: Arc::new(ArcSwap::from_pointee(RouteTable::default())),
            tcp_version: tokio::sync::watch::Sender::new(0),
            endpoint_count: AtomicUsize::new(0),
        }
    }

    /// The published table, for the request path to `load()`.
    pub fn table(&self) -> Arc<ArcSwap<RouteTable>> {
        self.table.clone()
    }

    /// Notified after each publish that changed TCP routes (the value is a counter).
    pub fn tcp_changes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.tcp_version.subscribe()
    }

    /// Number of (route, endpoint) registrations held.
    pub fn endpoint_count(&self) -> usize {
        self.endpoint_count.load(Ordering::Relaxed)
    }

    /// Adds or refreshes the message's endpoint on each of its routes. The message must
    /// have passed `validate()`. One change per route, in `uris` order, TCP last.
    pub fn register(
        &self,
        msg: &RegistryMessage,
        now: Instant,
        permanent: bool,
    ) -> Vec<RegistryChange> {
        let data = endpoint_data(msg, self.settings.ttl(msg.stale_threshold_in_seconds));
        let key: Arc<str> = Arc::from(endpoint_key(&data.host, data.port));
        let algorithm = Algorithm::from_name(&msg.options.loadbalancing);
        let mut changes = Vec::with_capacity(msg.uris.len() + 1);
        let mut new_endpoint: Option<Arc<Endpoint>> = None;
        for slot in slots(msg) {
            let change = self.with_new_route(&slot, |route| {
                if let Some(algorithm) = algorithm {
                    route.algorithm = algorithm;
                }
                route.emptied_at = None;
                match route.endpoints.get_mut(&key) {
                    Some(existing) if existing.endpoint.data == data => {
                        existing.updated_at = now;
                        existing.permanent |= permanent;
                        RegistryChange::Refreshed
                    }
                    existing => {
                        let endpoint = new_endpoint
                            .get_or_insert_with(|| self.make_endpoint(&key, data.clone()))
                            .clone();
                        let was_permanent = existing.as_ref().is_some_and(|r| r.permanent);
                        let change = if existing.is_some() {
                            RegistryChange::Updated
                        } else {
                            self.endpoint_count.fetch_add(1, Ordering::Relaxed);
                            RegistryChange::Added
                        };
                        route.endpoints.insert(
                            key.clone(),
                            Registered {
                                endpoint,
                                updated_at: now,
                                permanent: permanent || was_permanent,
                            },
                        );
                        change
                    }
                }
            });
            if change != RegistryChange::Refreshed {
                self.mark_dirty(&slot);
            }
            changes.push(change);
        }
        changes
    }

    /// Removes the message's endpoint (by `host:port`, TLS port first) from each of its
    /// routes; other fields are ignored, as in gorouter. Static endpoints stay.
    pub fn unregister(&self, msg: &RegistryMessage, now: Instant) -> Vec<RegistryChange> {
        let key = endpoint_key(&msg.host, msg.endpoint_port());
        let mut changes = Vec::with_capacity(msg.uris.len() + 1);
        for slot in slots(msg) {
            let change = self.with_existing_route(&slot, |route| {
                let Some(route) = route else {
                    return RegistryChange::Unknown;
                };
                match route.endpoints.get(key.as_str()) {
                    Some(r) if !r.permanent => {
                        route.endpoints.remove(key.as_str());
                        self.endpoint_count.fetch_sub(1, Ordering::Relaxed);
                        if route.endpoints.is_empty() {
                            route.emptied_at = Some(now);
                        }
                        RegistryChange::Removed
                    }
                    _ => RegistryChange::Unknown,
                }
            });
            if change == RegistryChange::Removed {
                self.mark_dirty(&slot);
            }
            changes.push(change);
        }
        changes
    }

    /// Removes endpoints not refreshed within their TTL, and empty routes whose
    /// `empty_pool_timeout` has passed. Returns the number of endpoints removed.
    pub fn prune(&self, now: Instant) -> usize {
        let mut pruned = 0;
        let empty_timeout = self.settings.empty_pool_timeout;
        let mut prune_route = |route: &mut RouteEntry| -> (bool, bool) {
            let before = route.endpoints.len();
            route.endpoints.retain(|_, r| {
                r.permanent || now.saturating_duration_since(r.updated_at) <= r.endpoint.data.ttl
            });
            let removed = before - route.endpoints.len();
            pruned += removed;
            if removed > 0 && route.endpoints.is_empty() {
                route.emptied_at = Some(now);
            }
            let expired = route.endpoints.is_empty()
                && route
                    .emptied_at
                    .is_none_or(|t| now.saturating_duration_since(t) >= empty_timeout);
            (removed > 0 || expired, expired)
        };
        for mut host in self.hosts.iter_mut() {
            let mut changed = false;
            host.value_mut().retain(|_, route| {
                let (route_changed, expired) = prune_route(route);
                changed |= route_changed;
                !expired
            });
            if changed {
                self.dirty_hosts.insert(host.key().clone());
            }
        }
        self.hosts.retain(|_, paths| !paths.is_empty());
        let mut tcp_changed = false;
        self.tcp.retain(|_, route| {
            let (changed, expired) = prune_route(route);
            tcp_changed |= changed;
            !expired
        });
        if tcp_changed {
            self.tcp_dirty.store(true, Ordering::Relaxed);
        }
        self.endpoint_count.fetch_sub(pruned, Ordering::Relaxed);
        // Counters nobody references any more (the map holds the last reference).
        self.stats.retain(|_, s| Arc::strong_count(s) > 1);
        pruned
    }

    /// Marks every endpoint as refreshed now: used when NATS comes back, so endpoints
    /// are not pruned for the time the bus was away (gorouter's `freshenRoutes`).
    pub fn freshen(&self, now: Instant) {
        for mut host in self.hosts.iter_mut() {
            for route in host.value_mut().values_mut() {
                route
                    .endpoints
                    .values_mut()
                    .for_each(|r| r.updated_at = now);
            }
        }
        for mut route in self.tcp.iter_mut() {
            route
                .endpoints
                .values_mut()
                .for_each(|r| r.updated_at = now);
        }
    }

    /// Publishes a new snapshot with every change since the last publish, atomically.
    /// Returns whether anything changed.
    pub fn publish(&self) -> bool {
        let dirty: Vec<Arc<str>> = self.dirty_hosts.iter().map(|h| h.key().clone()).collect();
        let tcp_dirty = self.tcp_dirty.swap(false, Ordering::Relaxed);
        if dirty.is_empty() && !tcp_dirty {
            return false;
        }
        for host in &dirty {
            self.dirty_hosts.remove(host);
        }
        let old = self.table.load_full();
        let mut shards: Vec<Arc<Shard>> = old.shards.iter().cloned().collect();
        let mut route_count = old.route_count;
        let mut wildcard_hosts = old.wildcard_hosts;
        for host in dirty {
            let (wildcard, map_key) = match host.strip_prefix("*.") {
                Some(suffix) => (true, Arc::<str>::from(suffix)),
                None => (false, host.clone()),
            };
            // Clones the shard the first time this publish touches it (the old snapshot
            // still holds it); later hosts in the same shard reuse the copy.
            let shard = Arc::make_mut(&mut shards[shard_of(&map_key)]);
            let map = if wildcard {
                &mut shard.wildcard
            } else {
                &mut shard.exact
            };
            let new_routes = self.host_routes(&host);
            let exists = new_routes.is_some();
            let old_routes = match new_routes {
                Some(routes) => {
                    route_count += routes.len();
                    map.insert(map_key, routes)
                }
                None => map.remove(&map_key),
            };
            if let Some(old_routes) = &old_routes {
                route_count -= old_routes.len();
            }
            if wildcard {
                match (old_routes.is_some(), exists) {
                    (false, true) => wildcard_hosts += 1,
                    (true, false) => wildcard_hosts -= 1,
                    _ => {}
                }
            }
        }
        let tcp = if tcp_dirty {
            Arc::new(
                self.tcp
                    .iter()
                    .map(|r| (*r.key(), self.make_pool(Arc::from(""), "", r.value())))
                    .collect(),
            )
        } else {
            old.tcp.clone()
        };
        self.table.store(Arc::new(RouteTable {
            shards: shards.into(),
            wildcard_hosts,
            route_count,
            tcp,
        }));
        if tcp_dirty {
            self.tcp_version.send_modify(|v| *v += 1);
        }
        true
    }

    /// Every route with its endpoints and remaining TTL (for `/routes`).
    pub fn dump(&self, now: Instant) -> BTreeMap<String, Vec<(Arc<Endpoint>, Duration)>> {
        let mut out = BTreeMap::new();
        let ttl_left = |r: &Registered| {
            if r.permanent {
                Duration::MAX
            } else {
                r.endpoint
                    .data
                    .ttl
                    .saturating_sub(now.saturating_duration_since(r.updated_at))
            }
        };
        for host in self.hosts.iter() {
            for (path, route) in host.value() {
                out.insert(
                    format!("{}{}", host.key(), path),
                    route
                        .endpoints
                        .values()
                        .map(|r| (r.endpoint.clone(), ttl_left(r)))
                        .collect(),
                );
            }
        }
        for route in self.tcp.iter() {
            out.insert(
                format!("tcp:{}", route.key()),
                route
                    .endpoints
                    .values()
                    .map(|r| (r.endpoint.clone(), ttl_left(r)))
                    .collect(),
            );
        }
        out
    }

    /// Runs `f` on the route of `slot`, creating the route if needed.
    fn with_new_route<R>(&self, slot: &Slot, f: impl FnOnce(&mut RouteEntry) -> R) -> R {
        let new_route = || RouteEntry {
            endpoints: BTreeMap::new(),
            algorithm: self.settings.balancing_algorithm,
            emptied_at: None,
        };
        match slot {
            Slot::Http(key) => {
                let mut host = self.hosts.entry(key.host.clone()).or_default();
                f(host.entry(key.path.clone()).or_insert_with(new_route))
            }
            Slot::Tcp(port) => f(&mut self.tcp.entry(*port).or_insert_with(new_route)),
        }
    }

    /// Runs `f` on the route of `slot` if it exists, then drops the route if `f` left it
    /// empty and empty routes are not kept (`empty_pool_timeout` 0).
    fn with_existing_route<R>(
        &self,
        slot: &Slot,
        f: impl FnOnce(Option<&mut RouteEntry>) -> R,
    ) -> R {
        let drop_empty = self.settings.empty_pool_timeout.is_zero();
        match slot {
            Slot::Http(key) => {
                let Some(mut host) = self.hosts.get_mut(&key.host) else {
                    return f(None);
                };
                let result = f(host.get_mut(&key.path));
                if drop_empty && host.get(&key.path).is_some_and(|r| r.endpoints.is_empty()) {
                    host.remove(&key.path);
                }
                let host_empty = host.is_empty();
                drop(host);
                if host_empty {
                    self.hosts.remove_if(&key.host, |_, paths| paths.is_empty());
                }
                result
            }
            Slot::Tcp(port) => {
                let Some(mut route) = self.tcp.get_mut(port) else {
                    return f(None);
                };
                let result = f(Some(&mut route));
                drop(route);
                if drop_empty {
                    self.tcp.remove_if(port, |_, r| r.endpoints.is_empty());
                }
                result
            }
        }
    }

    fn mark_dirty(&self, slot: &Slot) {
        match slot {
            Slot::Http(key) => {
                self.dirty_hosts.insert(key.host.clone());
            }
            Slot::Tcp(_) => self.tcp_dirty.store(true, Ordering::Relaxed),
        }
    }

    fn host_routes(&self, host: &Arc<str>) -> Option<HostRoutes> {
        let paths = self.hosts.get(host)?;
        let mut pools: Vec<Arc<Pool>> = paths
            .iter()
            .map(|(path, route)| self.make_pool(host.clone(), path, route))
            .collect();
        pools.sort_by_key(|p| std::cmp::Reverse(p.context_path.len()));
        Some(pools.into())
    }

    fn make_pool(&self, host: Arc<str>, path: &str, route: &RouteEntry) -> Arc<Pool> {
        let endpoints: Box<[Arc<Endpoint>]> = route
            .endpoints
            .values()
            .map(|r| r.endpoint.clone())
            .collect();
        let start = if endpoints.is_empty() {
            0
        } else {
            random_index(endpoints.len())
        };
        Arc::new(Pool {
            host,
            context_path: Box::from(path),
            endpoints,
            algorithm: route.algorithm,
            cursor: std::sync::atomic::AtomicUsize::new(start),
        })
    }

    fn make_endpoint(&self, key: &Arc<str>, data: EndpointData) -> Arc<Endpoint> {
        let stats = self.stats.entry(key.clone()).or_default().clone();
        let socket_addr = data
            .host
            .parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, data.port));
        // validate() checked these are visible ASCII, so the conversions cannot fail;
        // an empty value is still a valid header value.
        let header = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""));
        let instance_id = if data.instance_id.is_empty() {
            header(key)
        } else {
            header(&data.instance_id)
        };
        let headers = EndpointHeaders {
            app_id: header(&data.app_id),
            instance_index: header(&data.instance_index),
            instance_id,
        };
        Arc::new(Endpoint {
            key: key.clone(),
            data,
            socket_addr,
            headers,
            stats,
        })
    }
}

fn slots(msg: &RegistryMessage) -> impl Iterator<Item = Slot> + '_ {
    msg.uris
        .iter()
        .map(|uri| Slot::Http(RouteKey::parse(uri)))
        .chain((msg.external_port != 0).then_some(Slot::Tcp(msg.external_port)))
}

fn endpoint_key(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

fn endpoint_data(msg: &RegistryMessage, ttl: Duration) -> EndpointData {
    EndpointData {
        host: msg.host.clone(),
        port: msg.endpoint_port(),
        tls: msg.tls_port != 0,
        app_id: msg.app.clone(),
        instance_id: msg.private_instance_id.clone(),
        instance_index: msg.private_instance_index.clone(),
        server_cert_domain_san: msg.server_cert_domain_san.clone(),
        route_service_url: msg.route_service_url.clone(),
        isolation_segment: msg.isolation_segment.clone(),
        availability_zone: msg.availability_zone.clone(),
        protocol: if msg.protocol == "http2" {
            UpstreamProtocol::Http2
        } else {
            UpstreamProtocol::Http1
        },
        tags: msg.tags.clone(),
        ttl,
        updated_at_ns: msg.endpoint_updated_at_ns,
    }
}

/// A random index below `len` (balancer start positions; not security relevant).
pub(crate) fn random_index(len: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(super::clock_ms());
    (h.finish() as usize) % len.max(1)
}
