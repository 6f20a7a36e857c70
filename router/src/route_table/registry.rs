//! The control plane's working registry, and publication of snapshots from it.
//!
//! Only the route-update loop writes; `/routes` reads. All state is behind one mutex,
//! held for microseconds per message by the writer and rarely by anyone else. Nothing
//! here does I/O or reads a clock: callers pass `now`, so tests drive time by hand.
//!
//! A route keeps what the registry needs beyond the snapshot's pool: when each endpoint
//! was last registered, whether it is static, and when the route was emptied. A publish
//! builds new pools only for the hosts changed since the last one.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use arc_swap::ArcSwap;
use hashbrown::{HashMap, HashSet};
use http::HeaderValue;
use smallvec::SmallVec;
use tokio::time::Instant;

use super::host_map::HostChange;
use super::text::Interner;
use super::uri::normalize_uri;
use super::{
    Endpoint, EndpointData, EndpointHeaders, EndpointStats, Pool, RouteTable, Tags,
    UpstreamProtocol, host_pools, label_bit,
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

/// One route: a context path of an HTTP host, or a TCP router port.
#[derive(Debug)]
struct Route {
    /// "" for the whole host, and for TCP routes.
    context_path: Box<str>,
    /// Sorted by endpoint key (the pool's order).
    endpoints: SmallVec<[Registered; 1]>,
    algorithm: Algorithm,
    /// When the last endpoint left (the route then answers 503 until it expires).
    emptied_at: Option<Instant>,
}

impl Route {
    fn new(context_path: &str, algorithm: Algorithm) -> Route {
        Route {
            context_path: Box::from(context_path),
            endpoints: SmallVec::new(),
            algorithm,
            emptied_at: None,
        }
    }

    /// Where the endpoint with `key` is, or would go.
    fn position(&self, key: &str) -> Result<usize, usize> {
        self.endpoints
            .binary_search_by(|r| (*r.endpoint.key).cmp(key))
    }
}

/// An HTTP host's routes, one per context path; most hosts have one, kept inline.
type HostRoutes = SmallVec<[Route; 1]>;

#[derive(Debug, Default)]
struct State {
    /// Route host (lowercase, `*.suffix` for wildcards) -> its routes.
    hosts: HashMap<Arc<str>, HostRoutes>,
    tcp: BTreeMap<u16, Route>,
    /// Live counters by endpoint key, so an endpoint on several routes has one count.
    /// The key is shared with the endpoints.
    stats: HashMap<Arc<str>, Arc<EndpointStats>>,
    texts: Interner,
    /// Hosts changed since the last publish.
    dirty_hosts: HashSet<Arc<str>>,
    tcp_dirty: bool,
    wildcards_by_suffix_labels: WildcardCounts,
    /// Replaced snapshots a reader still held at the publish; freed here when the
    /// readers are done, so that the request path never pays for freeing one.
    retired: Vec<Arc<RouteTable>>,
}

/// Published wildcard hosts by the number of labels of their suffix (63: 63 or more).
#[derive(Debug)]
struct WildcardCounts([usize; 64]);

impl Default for WildcardCounts {
    fn default() -> Self {
        WildcardCounts([0; 64])
    }
}

impl WildcardCounts {
    /// The label counts that have wildcard hosts, as [`label_bit`]s.
    fn label_bits(&self) -> u64 {
        (0..64)
            .filter(|&labels| self.0[labels] > 0)
            .fold(0, |bits, labels| bits | label_bit(labels))
    }
}

/// Endpoints with their TTLs, keyed for register, unregister and prune.
#[derive(Debug)]
pub struct Registry {
    settings: RegistrySettings,
    state: Mutex<State>,
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
            state: Mutex::default(),
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

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves whole entries behind (every change is one
        // insert or removal), so the state is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds or refreshes the message's endpoint on each of its routes. The message must
    /// have passed `validate()`. One change per route, in `uris` order, TCP last.
    pub fn register(
        &self,
        msg: &RegistryMessage,
        now: Instant,
        permanent: bool,
    ) -> Vec<RegistryChange> {
        let ttl = self.settings.ttl(msg.stale_threshold_in_seconds);
        let key = endpoint_key(&msg.host, msg.endpoint_port());
        let algorithm = Algorithm::from_name(&msg.options.loadbalancing);
        let mut changes = Vec::with_capacity(msg.uris.len() + 1);
        let mut guard = self.lock();
        let State {
            hosts,
            tcp,
            stats,
            texts,
            dirty_hosts,
            tcp_dirty,
            ..
        } = &mut *guard;
        // One endpoint for all of the message's routes (made when first needed).
        let mut endpoint = None;
        let mut registration = Registration {
            msg,
            key: &key,
            ttl,
            algorithm,
            now,
            permanent,
            endpoint: &mut endpoint,
            stats,
            texts,
            endpoint_count: &self.endpoint_count,
        };
        let mut uri_buf = String::new();
        for uri in &msg.uris {
            let (host, path) = normalize_uri(uri, &mut uri_buf);
            let routes = match hosts.get_mut(host) {
                Some(routes) => routes,
                None => hosts.entry(Arc::from(host)).or_default(),
            };
            let index = match routes.iter().position(|r| *r.context_path == *path) {
                Some(index) => index,
                None => {
                    routes.push(Route::new(path, self.settings.balancing_algorithm));
                    routes.len() - 1
                }
            };
            let (change, dirty) = registration.apply(&mut routes[index]);
            if dirty
                && !dirty_hosts.contains(host)
                && let Some((host, _)) = hosts.get_key_value(host)
            {
                dirty_hosts.insert(host.clone());
            }
            changes.push(change);
        }
        if msg.external_port != 0 {
            let route = tcp
                .entry(msg.external_port)
                .or_insert_with(|| Route::new("", self.settings.balancing_algorithm));
            let (change, dirty) = registration.apply(route);
            *tcp_dirty |= dirty;
            changes.push(change);
        }
        changes
    }

    /// Removes the message's endpoint (by `host:port`, TLS port first) from each of its
    /// routes; other fields are ignored, as in gorouter. Static endpoints stay.
    pub fn unregister(&self, msg: &RegistryMessage, now: Instant) -> Vec<RegistryChange> {
        let key = endpoint_key(&msg.host, msg.endpoint_port());
        let drop_empty = self.settings.empty_pool_timeout.is_zero();
        let mut changes = Vec::with_capacity(msg.uris.len() + 1);
        let mut guard = self.lock();
        let State {
            hosts,
            tcp,
            dirty_hosts,
            tcp_dirty,
            ..
        } = &mut *guard;
        let mut uri_buf = String::new();
        for uri in &msg.uris {
            let (host, path) = normalize_uri(uri, &mut uri_buf);
            let Some((host_key, routes)) = hosts.get_key_value_mut(host) else {
                changes.push(RegistryChange::Unknown);
                continue;
            };
            let Some(index) = routes.iter().position(|r| *r.context_path == *path) else {
                changes.push(RegistryChange::Unknown);
                continue;
            };
            let change = self.unregister_from(&mut routes[index], &key, now);
            if change == RegistryChange::Removed {
                dirty_hosts.insert(host_key.clone());
                if drop_empty && routes[index].endpoints.is_empty() {
                    routes.remove(index);
                    if routes.is_empty() {
                        hosts.remove(host);
                    }
                }
            }
            changes.push(change);
        }
        if msg.external_port != 0 {
            let port = msg.external_port;
            let change = match tcp.get_mut(&port) {
                Some(route) => self.unregister_from(route, &key, now),
                None => RegistryChange::Unknown,
            };
            if change == RegistryChange::Removed {
                *tcp_dirty = true;
                if drop_empty && tcp.get(&port).is_some_and(|r| r.endpoints.is_empty()) {
                    tcp.remove(&port);
                }
            }
            changes.push(change);
        }
        changes
    }

    fn unregister_from(&self, route: &mut Route, key: &str, now: Instant) -> RegistryChange {
        match route.position(key) {
            Ok(index) if !route.endpoints[index].permanent => {
                route.endpoints.remove(index);
                self.endpoint_count.fetch_sub(1, Ordering::Relaxed);
                if route.endpoints.is_empty() {
                    route.emptied_at = Some(now);
                }
                RegistryChange::Removed
            }
            _ => RegistryChange::Unknown,
        }
    }

    /// Removes endpoints not refreshed within their TTL, and empty routes whose
    /// `empty_pool_timeout` has passed. Returns the number of endpoints removed.
    pub fn prune(&self, now: Instant) -> usize {
        let empty_timeout = self.settings.empty_pool_timeout;
        let mut pruned = 0;
        // Returns (changed, expired).
        let mut prune_route = |route: &mut Route| {
            let before = route.endpoints.len();
            route.endpoints.retain(|r| {
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
        let mut guard = self.lock();
        let State {
            hosts,
            tcp,
            stats,
            texts,
            dirty_hosts,
            tcp_dirty,
            ..
        } = &mut *guard;
        hosts.retain(|host, routes| {
            let mut changed = false;
            routes.retain(|route| {
                let (route_changed, expired) = prune_route(route);
                changed |= route_changed;
                !expired
            });
            if changed {
                dirty_hosts.insert(host.clone());
            }
            !routes.is_empty()
        });
        tcp.retain(|_, route| {
            let (changed, expired) = prune_route(route);
            *tcp_dirty |= changed;
            !expired
        });
        self.endpoint_count.fetch_sub(pruned, Ordering::Relaxed);
        // Counters and texts nobody references any more (the maps hold the last
        // reference).
        stats.retain(|_, s| Arc::strong_count(s) > 1);
        texts.forget_unused();
        pruned
    }

    /// Marks every endpoint as refreshed now: used when NATS comes back, so endpoints
    /// are not pruned for the time the bus was away (gorouter's `freshenRoutes`).
    pub fn freshen(&self, now: Instant) {
        let mut guard = self.lock();
        let state = &mut *guard;
        let routes = state
            .hosts
            .values_mut()
            .flat_map(|routes| routes.iter_mut())
            .chain(state.tcp.values_mut());
        for route in routes {
            route.endpoints.iter_mut().for_each(|r| r.updated_at = now);
        }
    }

    /// Publishes a new snapshot with every change since the last publish, atomically.
    /// Returns whether anything changed.
    pub fn publish(&self) -> bool {
        let mut guard = self.lock();
        let State {
            hosts,
            tcp,
            dirty_hosts,
            tcp_dirty,
            wildcards_by_suffix_labels,
            retired,
            ..
        } = &mut *guard;
        if dirty_hosts.is_empty() && !*tcp_dirty {
            return false;
        }
        let mut table = RouteTable::clone(&self.table.load());
        // Taken, not drained: after a burst the set is large, and draining would clear
        // all of its buckets at every publish.
        let changes: Vec<HostChange> = std::mem::take(dirty_hosts)
            .into_iter()
            .map(|host| HostChange {
                hash: table.hosts.hash(host.as_bytes()),
                head: hosts
                    .get(&host)
                    .and_then(|routes| first_pool(&host, routes)),
                host,
            })
            .collect();
        let mut route_count = table.route_count;
        table.hosts.apply(changes, |old, new| {
            let count = |head: Option<&Arc<Pool>>| head.map_or(0, |p| host_pools(p).count());
            route_count = route_count + count(new) - count(old);
            let suffix_labels = |head: Option<&Arc<Pool>>| {
                let suffix = head.and_then(|p| p.host.strip_prefix("*."))?;
                Some(suffix.bytes().filter(|&b| b == b'.').count() + 1)
            };
            if let Some(labels) = suffix_labels(old) {
                wildcards_by_suffix_labels.0[labels.min(63)] -= 1;
            }
            if let Some(labels) = suffix_labels(new) {
                wildcards_by_suffix_labels.0[labels.min(63)] += 1;
            }
        });
        table.route_count = route_count;
        table.wildcard_suffix_labels = wildcards_by_suffix_labels.label_bits();
        let tcp_changed = std::mem::take(tcp_dirty);
        if tcp_changed {
            let no_host: Arc<str> = Arc::from("");
            table.tcp = Arc::new(
                tcp.iter()
                    .map(|(port, route)| (*port, make_pool(&no_host, route, None)))
                    .collect(),
            );
        }
        let old = self.table.swap(Arc::new(table));
        // After the swap every reader of the old snapshot holds a counted reference.
        retired.retain(|t| Arc::strong_count(t) > 1);
        if Arc::strong_count(&old) > 1 {
            retired.push(old);
        }
        drop(guard);
        if tcp_changed {
            self.tcp_version.send_modify(|v| *v += 1);
        }
        true
    }

    /// Every route with its endpoints and remaining TTL (for `/routes`).
    pub fn dump(&self, now: Instant) -> BTreeMap<String, Vec<(Arc<Endpoint>, Duration)>> {
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
        let endpoints = |route: &Route| {
            route
                .endpoints
                .iter()
                .map(|r| (r.endpoint.clone(), ttl_left(r)))
                .collect()
        };
        let state = self.lock();
        let mut out = BTreeMap::new();
        for (host, routes) in &state.hosts {
            for route in routes {
                out.insert(format!("{host}{}", route.context_path), endpoints(route));
            }
        }
        for (port, route) in &state.tcp {
            out.insert(format!("tcp:{port}"), endpoints(route));
        }
        out
    }
}

/// One register message being applied to its routes.
struct Registration<'a> {
    msg: &'a RegistryMessage,
    key: &'a str,
    ttl: Duration,
    algorithm: Option<Algorithm>,
    now: Instant,
    permanent: bool,
    endpoint: &'a mut Option<Arc<Endpoint>>,
    stats: &'a mut HashMap<Arc<str>, Arc<EndpointStats>>,
    texts: &'a mut Interner,
    endpoint_count: &'a AtomicUsize,
}

impl Registration<'_> {
    /// Adds or refreshes the endpoint on `route`. Returns the change and whether the
    /// route's pool changed (a new algorithm changes it even on a refresh).
    fn apply(&mut self, route: &mut Route) -> (RegistryChange, bool) {
        let mut dirty = false;
        if let Some(algorithm) = self.algorithm {
            dirty = route.algorithm != algorithm;
            route.algorithm = algorithm;
        }
        route.emptied_at = None;
        let change = match route.position(self.key) {
            Ok(index) => {
                let existing = &mut route.endpoints[index];
                existing.updated_at = self.now;
                existing.permanent |= self.permanent;
                if existing.endpoint.data.is_registered_by(self.msg, self.ttl) {
                    RegistryChange::Refreshed
                } else {
                    existing.endpoint = self.endpoint();
                    RegistryChange::Updated
                }
            }
            Err(index) => {
                let registered = Registered {
                    endpoint: self.endpoint(),
                    updated_at: self.now,
                    permanent: self.permanent,
                };
                route.endpoints.insert(index, registered);
                self.endpoint_count.fetch_add(1, Ordering::Relaxed);
                RegistryChange::Added
            }
        };
        (change, dirty || change != RegistryChange::Refreshed)
    }

    fn endpoint(&mut self) -> Arc<Endpoint> {
        if let Some(endpoint) = self.endpoint {
            return endpoint.clone();
        }
        let data = EndpointData::from_message(self.msg, self.ttl, self.texts);
        let endpoint = make_endpoint(self.stats, self.texts, self.key, data);
        *self.endpoint = Some(endpoint.clone());
        endpoint
    }
}

/// The pools of a host's routes, linked longest context path first; the first returned.
fn first_pool(host: &Arc<str>, routes: &HostRoutes) -> Option<Arc<Pool>> {
    let mut by_length: SmallVec<[&Route; 4]> = routes.iter().collect();
    by_length.sort_by_key(|r| r.context_path.len());
    by_length
        .into_iter()
        .fold(None, |shorter, route| Some(make_pool(host, route, shorter)))
}

fn make_pool(host: &Arc<str>, route: &Route, shorter: Option<Arc<Pool>>) -> Arc<Pool> {
    let endpoints = route.endpoints.iter().map(|r| r.endpoint.clone()).collect();
    Arc::new(Pool::new(
        host,
        &route.context_path,
        endpoints,
        route.algorithm,
        shorter,
    ))
}

fn make_endpoint(
    stats: &mut HashMap<Arc<str>, Arc<EndpointStats>>,
    texts: &mut Interner,
    key: &str,
    data: EndpointData,
) -> Arc<Endpoint> {
    let (key, stats) = match stats.get_key_value(key) {
        Some((key, stats)) => (key.clone(), stats.clone()),
        None => {
            let key: Arc<str> = Arc::from(key);
            let new = Arc::new(EndpointStats::default());
            stats.insert(key.clone(), new.clone());
            (key, new)
        }
    };
    let socket_addr = data
        .host
        .parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, data.port));
    // validate() checked these are visible ASCII, so the conversions cannot fail;
    // an empty value is still a valid header value.
    let header = |v: &str| HeaderValue::from_str(v).unwrap_or(HeaderValue::from_static(""));
    let instance_id = if data.instance_id.is_empty() {
        header(&key)
    } else {
        header(&data.instance_id)
    };
    let headers = EndpointHeaders {
        app_id: header(&data.app_id),
        instance_index: texts
            .header(&data.instance_index)
            .unwrap_or(HeaderValue::from_static("")),
        instance_id,
    };
    Arc::new(Endpoint {
        key,
        data,
        socket_addr,
        headers,
        stats,
    })
}

/// `host:port`, `[host]:port` for a bare IPv6 address. Built by hand: `format!` was 3%
/// of a registration's instructions.
fn endpoint_key(host: &str, port: u16) -> String {
    let bracket = host.contains(':') && !host.starts_with('[');
    let mut key = String::with_capacity(host.len() + 8);
    if bracket {
        key.push('[');
    }
    key.push_str(host);
    if bracket {
        key.push(']');
    }
    key.push(':');
    key.push_str(itoa::Buffer::new().format(port));
    key
}

fn protocol_of(msg: &RegistryMessage) -> UpstreamProtocol {
    if msg.protocol == "http2" {
        UpstreamProtocol::Http2
    } else {
        UpstreamProtocol::Http1
    }
}

impl EndpointData {
    fn from_message(msg: &RegistryMessage, ttl: Duration, texts: &mut Interner) -> EndpointData {
        EndpointData {
            host: msg.host.clone(),
            port: msg.endpoint_port(),
            tls: msg.tls_port != 0,
            app_id: msg.app.clone(),
            instance_id: msg.private_instance_id.clone(),
            instance_index: texts.text(&msg.private_instance_index),
            server_cert_domain_san: msg.server_cert_domain_san.clone(),
            route_service_url: texts.text(&msg.route_service_url),
            isolation_segment: texts.text(&msg.isolation_segment),
            availability_zone: texts.text(&msg.availability_zone),
            protocol: protocol_of(msg),
            tags: Tags::from_map(&msg.tags),
            ttl,
            updated_at_ns: msg.endpoint_updated_at_ns,
        }
    }

    /// Whether `msg` registers exactly this data: `from_message(msg, ttl) == *self`,
    /// without building a copy (every endpoint re-registers every 20 s or so).
    fn is_registered_by(&self, msg: &RegistryMessage, ttl: Duration) -> bool {
        // Destructured so that a new field cannot be forgotten here.
        let EndpointData {
            host,
            port,
            tls,
            app_id,
            instance_id,
            instance_index,
            server_cert_domain_san,
            route_service_url,
            isolation_segment,
            availability_zone,
            protocol,
            tags,
            ttl: own_ttl,
            updated_at_ns,
        } = self;
        *host == msg.host
            && *port == msg.endpoint_port()
            && *tls == (msg.tls_port != 0)
            && *app_id == msg.app
            && *instance_id == msg.private_instance_id
            && *instance_index == msg.private_instance_index
            && *server_cert_domain_san == msg.server_cert_domain_san
            && *route_service_url == msg.route_service_url
            && *isolation_segment == msg.isolation_segment
            && *availability_zone == msg.availability_zone
            && *protocol == protocol_of(msg)
            && tags.matches(&msg.tags)
            && *own_ttl == ttl
            && *updated_at_ns == msg.endpoint_updated_at_ns
    }
}

/// A random index below `len` (balancer start positions; not security relevant).
pub(crate) fn random_index(len: usize) -> usize {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(super::clock_ms());
    (h.finish() as usize) % len.max(1)
}

#[cfg(test)]
mod key_tests {
    use super::endpoint_key;

    #[test]
    fn endpoint_keys_bracket_bare_ipv6_addresses() {
        assert_eq!(endpoint_key("10.0.0.1", 8080), "10.0.0.1:8080");
        assert_eq!(endpoint_key("::1", 443), "[::1]:443");
        assert_eq!(endpoint_key("[::1]", 0), "[::1]:0");
        assert_eq!(endpoint_key("h", 65535), "h:65535");
    }
}
