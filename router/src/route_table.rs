//! The routing table: host (+ context path) -> pool of endpoints.
//!
//! Two halves, both free of I/O:
//! - [`Registry`] is the control plane's working state: endpoints with their TTLs,
//!   changed by `register` / `unregister` / `prune`, then `publish`ed.
//! - [`RouteTable`] is an immutable snapshot the request path reads through an `ArcSwap`
//!   (each worker through its [`TableReader`]); `lookup(host, path)` allocates nothing
//!   and takes no lock.
//!
//! A snapshot maps each host to its pools (one per context path, longest first, linked
//! from the first: most hosts have one). The host index ([`host_map`]) is split into
//! 4 096 small shards that snapshots share, so a publish copies only the few shards its
//! changes touch: a register at 100 000 routes costs microseconds, not a rebuild, and
//! 10 000 registrations per second cost little. A lookup hashes the host once and
//! follows few pointers, since at 100 000 routes nearly every one is a cache miss.
//!
//! Memory is what limits the table size, so a route holds little: an [`Endpoint`] (shared
//! by the routes it serves and by snapshots) keeps its tags in one allocation
//! ([`Tags`]) and shares values that repeat across endpoints, like the instance index
//! ([`SharedText`]); a route's endpoints are a small vector (one inline), and the
//! registry keeps a host's routes inline. Per-endpoint live counters ([`EndpointStats`])
//! are atomics shared by every snapshot and route that holds the endpoint.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderValue;
use smallvec::SmallVec;

use crate::config::Algorithm;

mod host_map;
mod registry;
mod tags;
mod text;
mod uri;

use host_map::HostMap;
pub use registry::{Registry, RegistryChange, RegistrySettings};
pub use tags::{Tags, TagsIter};
pub use text::SharedText;
pub use uri::{MAX_HOST_LEN, RequestHost, RouteKey, label_bit};

/// Protocol spoken to an endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UpstreamProtocol {
    #[default]
    Http1,
    Http2,
}

/// The registered facts about one endpoint (what a re-registration compares). Fields
/// whose values repeat across endpoints are [`SharedText`]s.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct EndpointData {
    pub host: String,
    pub port: u16,
    pub tls: bool,
    pub app_id: String,
    pub instance_id: String,
    pub instance_index: SharedText,
    pub server_cert_domain_san: String,
    pub route_service_url: SharedText,
    pub isolation_segment: SharedText,
    pub availability_zone: SharedText,
    pub protocol: UpstreamProtocol,
    pub tags: Tags,
    pub ttl: Duration,
    pub updated_at_ns: i64,
}

/// Live per-endpoint counters, shared by all snapshots and routes holding the endpoint.
#[derive(Debug, Default)]
pub struct EndpointStats {
    /// Requests dispatched to the endpoint and not yet finished.
    pub in_flight: AtomicU32,
    /// Until when (ms on [`clock_ms`]) balancers skip the endpoint after a failure.
    failed_until_ms: AtomicU64,
}

impl EndpointStats {
    /// Marks the endpoint failed for `duration` from now.
    pub fn mark_failed(&self, duration: Duration) {
        let until = clock_ms().saturating_add(duration.as_millis() as u64);
        self.failed_until_ms.store(until, Ordering::Relaxed);
    }

    /// Whether a failure mark is in force at `now_ms`.
    pub fn is_failed(&self, now_ms: u64) -> bool {
        self.failed_until_ms.load(Ordering::Relaxed) > now_ms
    }

    /// Whether a failure mark is in force now; reads the clock only if there is a mark.
    pub fn is_failed_now(&self) -> bool {
        let until = self.failed_until_ms.load(Ordering::Relaxed);
        until != 0 && until > clock_ms()
    }

    /// Removes a failure mark.
    pub fn clear_failed(&self) {
        self.failed_until_ms.store(0, Ordering::Relaxed);
    }
}

/// Milliseconds since the router's start, on tokio's clock (pausable in tests).
pub fn clock_ms() -> u64 {
    static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(std::time::Instant::now);
    // +1 so that 0 can mean "never failed".
    (tokio::time::Instant::now()
        .into_std()
        .saturating_duration_since(epoch)
        .as_millis() as u64)
        + 1
}

/// Header values sent to the app, computed once at registration instead of per request.
#[derive(Debug, Clone)]
pub struct EndpointHeaders {
    pub app_id: HeaderValue,
    pub instance_index: HeaderValue,
    pub instance_id: HeaderValue,
}

/// One backend endpoint as the request path sees it.
#[derive(Debug)]
pub struct Endpoint {
    /// Canonical `host:port` (the TLS port when set): the endpoint's identity.
    pub key: Arc<str>,
    pub data: EndpointData,
    /// The address to dial, when `host` is an IP literal (the common case).
    pub socket_addr: Option<SocketAddr>,
    pub headers: EndpointHeaders,
    pub stats: Arc<EndpointStats>,
}

/// The endpoints of one route (host + context path) and how to balance over them.
#[derive(Debug)]
pub struct Pool {
    /// The route's host as registered, lowercased (`*.example.com` for a wildcard).
    pub host: Arc<str>,
    /// The context path, lowercased, without a trailing `/`; "" for the whole host.
    pub context_path: Box<str>,
    /// Sorted by endpoint key. Inline when there is one.
    pub endpoints: SmallVec<[Arc<Endpoint>; 1]>,
    pub algorithm: Algorithm,
    /// Round-robin position, starting at a random index for every new pool.
    pub(crate) cursor: AtomicU32,
    /// The same host's pool with the next shorter context path.
    shorter: Option<Arc<Pool>>,
    /// The first bytes of `host`, zero-padded: the lookup compares hosts here, in the
    /// pool it reads anyway, instead of taking another cache miss on `host`.
    host_prefix: [u8; HOST_PREFIX],
}

/// Host bytes kept inline in a pool (most hosts are shorter).
const HOST_PREFIX: usize = 32;

impl Pool {
    /// The route as written in registrations: `host` or `host/path`.
    pub fn route_name(&self) -> String {
        format!("{}{}", self.host, self.context_path)
    }

    /// Finds the endpoint serving instance `instance_id`, if it is in the pool.
    pub fn endpoint_by_instance_id(&self, instance_id: &str) -> Option<&Arc<Endpoint>> {
        self.endpoints
            .iter()
            .find(|e| e.data.instance_id == instance_id)
    }

    fn new(
        host: &Arc<str>,
        context_path: &str,
        endpoints: SmallVec<[Arc<Endpoint>; 1]>,
        algorithm: Algorithm,
        shorter: Option<Arc<Pool>>,
    ) -> Pool {
        let mut host_prefix = [0; HOST_PREFIX];
        let head = &host.as_bytes()[..host.len().min(HOST_PREFIX)];
        host_prefix[..head.len()].copy_from_slice(head);
        let start = if endpoints.is_empty() {
            0
        } else {
            registry::random_index(endpoints.len())
        };
        Pool {
            host: host.clone(),
            context_path: Box::from(context_path),
            endpoints,
            algorithm,
            cursor: AtomicU32::new(start as u32),
            shorter,
            host_prefix,
        }
    }

    /// Whether this pool's host is `host` (lowercase).
    fn is_for_host(&self, host: &[u8]) -> bool {
        let len = self.host.len();
        let head = len.min(HOST_PREFIX);
        len == host.len()
            && self.host_prefix[..head] == host[..head]
            && (len == head || self.host.as_bytes()[head..] == host[head..])
    }

    /// Whether `path` (the request path, query included) is inside this pool's context
    /// path: on whole segments, the query not part of it.
    fn matches_path(&self, path: &[u8]) -> bool {
        let ctx = self.context_path.as_bytes();
        path.len() >= ctx.len()
            && path[..ctx.len()].eq_ignore_ascii_case(ctx)
            && (path.len() == ctx.len() || matches!(path[ctx.len()], b'/' | b'?'))
    }
}

/// `pool` and the same host's pools with shorter context paths, longest first.
fn host_pools(pool: &Arc<Pool>) -> impl Iterator<Item = &Arc<Pool>> {
    std::iter::successors(Some(pool), |p| p.shorter.as_ref())
}

/// One thread's reader of the published table: it keeps the snapshot it last saw and
/// checks at every load (one atomic read) that it is still the published one, instead of
/// taking an `ArcSwap` guard (debt slots, a reference count) per request. A replaced
/// snapshot is let go at the reader's next load.
pub struct TableReader {
    cache: arc_swap::Cache<Arc<ArcSwap<RouteTable>>, Arc<RouteTable>>,
}

impl TableReader {
    pub fn new(table: Arc<ArcSwap<RouteTable>>) -> Self {
        TableReader {
            cache: arc_swap::Cache::new(table),
        }
    }

    /// Whether this reader reads `table`.
    pub fn reads(&self, table: &ArcSwap<RouteTable>) -> bool {
        std::ptr::eq(self.cache.arc_swap(), table)
    }

    /// The published snapshot.
    pub fn load(&mut self) -> &RouteTable {
        self.cache.load()
    }
}

/// An immutable snapshot of all routes.
#[derive(Debug, Clone, Default)]
pub struct RouteTable {
    hosts: HostMap,
    /// The label counts of wildcard routes' suffixes (`*.b.c`: 2), as [`label_bit`]s: a
    /// lookup probes only suffixes of those lengths, and none if there are no wildcards.
    wildcard_suffix_labels: u64,
    route_count: usize,
    tcp: Arc<BTreeMap<u16, Arc<Pool>>>,
}

impl RouteTable {
    /// Finds the pool for a request: `host` as sent (any case, port allowed), `path` the
    /// request path. Exact host before wildcards (most specific wildcard first); within a
    /// host the longest context path on whole segments whose pool has endpoints, else the
    /// longest matching empty pool (answered with 503 `no_endpoints`).
    pub fn lookup(&self, host: &str, path: &str) -> Option<&Arc<Pool>> {
        let mut buf = [0; MAX_HOST_LEN + 1];
        let mut host = RequestHost::parse(host, &mut buf)?;
        // The query is not cut off here: a context path never holds `?`, so a path
        // matches up to a `?` as it would up to its end (`matches_path`).
        let path = path.as_bytes();
        if let Some(pool) = self
            .hosts
            .get(host.exact())
            .and_then(|p| best_pool(p, path))
        {
            return Some(pool);
        }
        while let Some(key) = host.next_wildcard(self.wildcard_suffix_labels) {
            if let Some(pool) = self.hosts.get(key).and_then(|p| best_pool(p, path)) {
                return Some(pool);
            }
        }
        None
    }

    /// The pool of a TCP route on router port `port`.
    pub fn tcp_pool(&self, port: u16) -> Option<&Arc<Pool>> {
        self.tcp.get(&port)
    }

    /// All TCP routes' ports.
    pub fn tcp_ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.tcp.keys().copied()
    }

    /// Number of HTTP routes (host + context path pairs).
    pub fn route_count(&self) -> usize {
        self.route_count
    }

    /// Every HTTP pool, in no particular order (for `/routes` and metrics).
    pub fn pools(&self) -> impl Iterator<Item = &Arc<Pool>> + '_ {
        self.hosts.heads().flat_map(host_pools)
    }
}

/// The longest context path matching `path` whose pool has endpoints, else the longest
/// matching one.
fn best_pool<'a>(first: &'a Arc<Pool>, path: &[u8]) -> Option<&'a Arc<Pool>> {
    let mut empty_match = None;
    for pool in host_pools(first) {
        if pool.matches_path(path) {
            if !pool.endpoints.is_empty() {
                return Some(pool);
            }
            empty_match.get_or_insert(pool);
        }
    }
    empty_match
}

#[cfg(test)]
mod tests;
