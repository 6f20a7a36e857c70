//! Route sets and requests shared by the micro-benchmarks and the load benchmark, so both
//! measure the same shapes: route-emitter style registrations, one endpoint per route.
//!
//! A route set of `n` routes mixes the three kinds of route by index: one in ten is a
//! wildcard host, two in ten are context paths (`/api` and `/api/v2` on one host), the
//! rest are exact hosts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use router::protocol::RegistryMessage;
use router::route_table::Registry;

/// Domain under which all generated routes live.
pub const DOMAIN: &str = "bench.internal";

/// What kind of route index `i` of a route set is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteKind {
    Exact,
    Wildcard,
    ContextPath,
}

/// The kind of route at index `i`.
pub fn kind_of(i: usize) -> RouteKind {
    match i % 10 {
        0 => RouteKind::Wildcard,
        1 | 2 => RouteKind::ContextPath,
        _ => RouteKind::Exact,
    }
}

/// The registered URI of route `i`.
pub fn route_uri(i: usize) -> String {
    match kind_of(i) {
        RouteKind::Wildcard => format!("*.w{i}.{DOMAIN}"),
        RouteKind::ContextPath => {
            let path = if i % 10 == 1 { "/api" } else { "/api/v2" };
            format!("ctx-{}.{DOMAIN}{path}", i / 10)
        }
        RouteKind::Exact => format!("app-{i}.apps.{DOMAIN}"),
    }
}

/// A distinct private address per route index (10.x.y.z), as Diego cells hand out.
pub fn endpoint_ip(i: usize) -> String {
    let i = i as u32;
    Ipv4Addr::new(10, (i >> 16) as u8, (i >> 8) as u8, i as u8).to_string()
}

/// A route-emitter style registration of `uri` on `ip:port`: every field route-emitter
/// sends is filled in, so parsing and memory figures are realistic.
pub fn registration(uri: &str, ip: &str, port: u16, i: usize) -> RegistryMessage {
    let mut tags = BTreeMap::new();
    tags.insert("component".to_owned(), "route-emitter".to_owned());
    tags.insert("app_name".to_owned(), format!("app-{i}"));
    tags.insert("space_name".to_owned(), "bench".to_owned());
    tags.insert("organization_name".to_owned(), "bench-org".to_owned());
    RegistryMessage {
        host: ip.to_owned(),
        port,
        uris: vec![uri.to_owned()],
        app: format!("6a1f0a3e-0000-4000-8000-{i:012x}"),
        private_instance_id: format!("2f0c3b4a-1d2e-4f5a-6b7c-{i:012x}"),
        private_instance_index: "0".to_owned(),
        tags,
        stale_threshold_in_seconds: 120,
        endpoint_updated_at_ns: 1_700_000_000_000_000_000 + i as i64,
        availability_zone: "z1".to_owned(),
        ..Default::default()
    }
}

/// The registration of route `i` of a route set, on port 8080 of its own address.
pub fn route_registration(i: usize) -> RegistryMessage {
    registration(&route_uri(i), &endpoint_ip(i), 8080, i)
}

/// The JSON payload of a registration, as it arrives from NATS.
pub fn payload(msg: &RegistryMessage) -> Vec<u8> {
    // Serialising plain strings, numbers and maps cannot fail.
    serde_json::to_vec(msg).unwrap_or_default()
}

/// Payloads registering `count` routes that no route set has, `<prefix>-<k>.apps.<DOMAIN>`
/// on one endpoint, with app data numbered from `first_index` (past the route set).
pub fn new_route_payloads(prefix: &str, count: usize, first_index: usize) -> Vec<Vec<u8>> {
    (0..count)
        .map(|k| {
            let uri = format!("{prefix}-{k}.apps.{DOMAIN}");
            payload(&registration(&uri, "10.200.0.1", 8080, first_index + k))
        })
        .collect()
}

/// A registry holding routes `0..n` of the route set, published.
pub fn registry_with_routes(n: usize) -> Registry {
    let registry = Registry::new(Default::default());
    let now = tokio::time::Instant::now();
    for i in 0..n {
        registry.register(&route_registration(i), now, false);
    }
    registry.publish();
    registry
}

/// Indices of routes of `kind` in `0..n`, spread over the whole set, at most `count`.
pub fn sample_indices(n: usize, kind: RouteKind, count: usize) -> Vec<usize> {
    let all: Vec<usize> = (0..n).filter(|&i| kind_of(i) == kind).collect();
    if all.is_empty() {
        return all;
    }
    let step = (all.len() / count.max(1)).max(1);
    // A stride coprime to typical table sizes, so consecutive lookups hit unrelated shards.
    all.iter().step_by(step).take(count).copied().collect()
}

/// A request (`Host`, path) that matches route `i`; wildcard routes get a subdomain and
/// context paths a longer path, so the lookup does its full work.
pub fn request_for(i: usize) -> (String, String) {
    match kind_of(i) {
        RouteKind::Wildcard => (format!("App-X{i}.W{i}.{DOMAIN}:443"), "/".to_owned()),
        RouteKind::ContextPath => (
            format!("ctx-{}.{DOMAIN}", i / 10),
            if i % 10 == 1 {
                "/api/users/42?page=2".to_owned()
            } else {
                "/api/v2/users/42?page=2".to_owned()
            },
        ),
        RouteKind::Exact => (format!("App-{i}.Apps.{DOMAIN}"), "/index.html".to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_generated_request_finds_its_route() {
        let n = 1000;
        let registry = registry_with_routes(n);
        let table = registry.table().load_full();
        assert_eq!(table.route_count(), n);
        for i in 0..n {
            let (host, path) = request_for(i);
            let pool = table.lookup(&host, &path).unwrap();
            let uri = route_uri(i);
            assert_eq!(pool.route_name(), uri.to_ascii_lowercase(), "route {i}");
        }
    }

    #[test]
    fn generated_registrations_are_valid() {
        for i in 0..30 {
            route_registration(i).validate().unwrap();
            let parsed = RegistryMessage::parse(&payload(&route_registration(i))).unwrap();
            assert_eq!(parsed, route_registration(i));
        }
    }
}
