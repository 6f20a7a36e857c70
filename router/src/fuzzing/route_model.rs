//! The routing table against a naive model: routes in a `BTreeMap`, endpoints in a list,
//! lookups by linear scan, written from the rules in DESIGN.md rather than from the
//! table's code (as `route_table/tests.rs` does with proptest, but driven by the fuzzer).

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::time::Instant;

use super::Input;
use crate::protocol::{RegistryMessage, validate_uri};
use crate::route_table::{Registry, RegistrySettings, RouteTable};

/// TTL cap of every model run (`droplet_stale_threshold`).
const THRESHOLD_S: u64 = 120;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Slot {
    /// Lowercased host (`*.suffix` for wildcards) and context path.
    Http(String, String),
    Tcp(u16),
}

#[derive(Debug, Clone)]
struct ModelEndpoint {
    updated_s: u64,
    ttl_s: u64,
    permanent: bool,
    app: String,
}

#[derive(Debug, Default)]
struct ModelRoute {
    /// By endpoint port (every endpoint has host 127.0.0.1).
    endpoints: BTreeMap<u16, ModelEndpoint>,
    emptied_s: Option<u64>,
}

/// What a lookup found: route name, and the endpoints' ports and apps, sorted.
type Found = Option<(String, Vec<(u16, String)>)>;

struct Model {
    routes: BTreeMap<Slot, ModelRoute>,
    empty_pool_timeout_s: u64,
}

/// A registered URI as a route: lowercase, no query, no port, no trailing `/`.
fn slot_of(uri: &str) -> Slot {
    let uri = uri
        .split('?')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (host, path) = match uri.find('/') {
        Some(slash) => uri.split_at(slash),
        None => (uri.as_str(), ""),
    };
    let host = host.split(':').next().unwrap_or_default();
    Slot::Http(host.to_owned(), path.trim_end_matches('/').to_owned())
}

/// A request's Host as a route host: port and one trailing dot dropped, lowercase.
pub(crate) fn request_host(host: &str) -> Option<String> {
    let host = if host.starts_with('[') {
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.split(':').next().unwrap_or_default()
    };
    let host = host.strip_suffix('.').unwrap_or(host);
    (!host.is_empty() && host.len() <= 255).then(|| host.to_ascii_lowercase())
}

impl Model {
    fn register(
        &mut self,
        slots: &[Slot],
        port: u16,
        app: &str,
        stale_s: u64,
        now: u64,
        permanent: bool,
    ) {
        let ttl_s = if stale_s == 0 || stale_s > THRESHOLD_S {
            THRESHOLD_S
        } else {
            stale_s
        };
        for slot in slots {
            let route = self.routes.entry(slot.clone()).or_default();
            route.emptied_s = None;
            let was_permanent = route.endpoints.get(&port).is_some_and(|e| e.permanent);
            route.endpoints.insert(
                port,
                ModelEndpoint {
                    updated_s: now,
                    ttl_s,
                    permanent: permanent || was_permanent,
                    app: app.to_owned(),
                },
            );
        }
    }

    fn unregister(&mut self, slots: &[Slot], port: u16, now: u64) {
        for slot in slots {
            let Some(route) = self.routes.get_mut(slot) else {
                continue;
            };
            if route.endpoints.get(&port).is_some_and(|e| !e.permanent) {
                route.endpoints.remove(&port);
                if route.endpoints.is_empty() {
                    route.emptied_s = Some(now);
                    if self.empty_pool_timeout_s == 0 {
                        self.routes.remove(slot);
                    }
                }
            }
        }
    }

    fn prune(&mut self, now: u64) {
        let timeout = self.empty_pool_timeout_s;
        self.routes.retain(|_, route| {
            let before = route.endpoints.len();
            route
                .endpoints
                .retain(|_, e| e.permanent || now - e.updated_s <= e.ttl_s);
            if route.endpoints.len() < before && route.endpoints.is_empty() {
                route.emptied_s = Some(now);
            }
            !(route.endpoints.is_empty() && route.emptied_s.is_none_or(|t| now - t >= timeout))
        });
    }

    fn freshen(&mut self, now: u64) {
        for route in self.routes.values_mut() {
            for e in route.endpoints.values_mut() {
                e.updated_s = now;
            }
        }
    }

    fn endpoint_count(&self) -> usize {
        self.routes.values().map(|r| r.endpoints.len()).sum()
    }

    fn found(host: &str, path: &str, route: &ModelRoute) -> Found {
        let endpoints = route
            .endpoints
            .iter()
            .map(|(port, e)| (*port, e.app.clone()))
            .collect();
        Some((format!("{host}{path}"), endpoints))
    }

    /// Exact host first, then wildcards from the most specific; within a host, the
    /// longest context path on whole segments whose route has endpoints, else the
    /// longest matching empty one.
    fn lookup(&self, host: &str, path: &str) -> Found {
        let host = request_host(host)?;
        let path = path
            .split('?')
            .next()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let in_host = |route_host: &str| -> Found {
            let mut best: Option<(&str, &ModelRoute)> = None;
            let mut best_empty: Option<(&str, &ModelRoute)> = None;
            for (slot, route) in &self.routes {
                let Slot::Http(h, ctx) = slot else { continue };
                let segment_match = path.starts_with(ctx.as_str())
                    && (path.len() == ctx.len() || path.as_bytes()[ctx.len()] == b'/');
                if h != route_host || !segment_match {
                    continue;
                }
                let target = if route.endpoints.is_empty() {
                    &mut best_empty
                } else {
                    &mut best
                };
                if target.is_none_or(|(c, _)| ctx.len() > c.len()) {
                    *target = Some((ctx, route));
                }
            }
            best.or(best_empty)
                .and_then(|(ctx, route)| Self::found(route_host, ctx, route))
        };
        if let Some(found) = in_host(&host) {
            return Some(found);
        }
        let mut rest = host.as_str();
        while let Some(dot) = rest.find('.') {
            rest = &rest[dot + 1..];
            if let Some(found) = in_host(&format!("*.{rest}")) {
                return Some(found);
            }
        }
        None
    }

    fn tcp(&self, port: u16) -> Option<Vec<(u16, String)>> {
        self.routes
            .get(&Slot::Tcp(port))
            .and_then(|r| Self::found("", "", r))
            .map(|(_, endpoints)| endpoints)
    }
}

fn table_lookup(table: &RouteTable, host: &str, path: &str) -> Found {
    table.lookup(host, path).map(|pool| {
        let mut endpoints: Vec<(u16, String)> = pool
            .endpoints
            .iter()
            .map(|e| (e.data.port, e.data.app_id.clone()))
            .collect();
        endpoints.sort();
        (pool.route_name(), endpoints)
    })
}

fn message(
    uris: &[&str],
    port: u16,
    app: &str,
    stale_s: u64,
    external_port: u16,
) -> RegistryMessage {
    RegistryMessage {
        host: "127.0.0.1".into(),
        port,
        uris: uris.iter().map(|u| (*u).to_owned()).collect(),
        app: app.to_owned(),
        stale_threshold_in_seconds: stale_s,
        external_port,
        ..Default::default()
    }
}

const URIS: [&str; 12] = [
    "a.com",
    "A.com/X",
    "a.com/x/y/",
    "*.a.com",
    "b.a.com",
    "*.b.a.com",
    "b.a.com/x",
    "c.com/x?q=1",
    "a.com:8080/x",
    "*.a.com/x",
    "C.com/x/",
    "d.com//",
];

const HOSTS: [&str; 12] = [
    "a.com",
    "A.COM:80",
    "b.a.com",
    "z.b.a.com",
    "z.a.com",
    "c.com",
    "q.z.b.a.com",
    "a.com.",
    "d.com",
    "[::1]:80",
    "",
    "x.y",
];

const PATHS: [&str; 6] = ["/", "/x", "/X/y/z", "/xy", "/x?y=/x/y", ""];

const TCP_PORTS: [u16; 2] = [6000, 6001];

/// Arbitrary register / unregister / prune / freshen / time sequences on the registry,
/// compared after every step with the model: lookups (route, endpoints and their data),
/// TCP routes and the endpoint count.
pub fn route_table_ops(data: &[u8]) {
    let mut input = Input::new(data);
    let empty_pool_timeout_s = if input.byte() & 1 == 0 { 0 } else { 10 };
    let registry = Registry::new(RegistrySettings {
        droplet_stale_threshold: Duration::from_secs(THRESHOLD_S),
        empty_pool_timeout: Duration::from_secs(empty_pool_timeout_s),
        ..Default::default()
    });
    let mut model = Model {
        routes: BTreeMap::new(),
        empty_pool_timeout_s,
    };
    let start = Instant::now();
    let mut now_s = 0u64;
    let mut steps = 0;
    while !input.is_empty() && steps < 200 {
        steps += 1;
        let op = input.byte();
        let now = start + Duration::from_secs(now_s);
        let uri_a = URIS[usize::from(input.byte()) % URIS.len()];
        let uri_b = URIS[usize::from(input.byte()) % URIS.len()];
        let uris: Vec<&str> = match op >> 4 & 3 {
            0 => vec![],
            1 | 2 => vec![uri_a],
            _ => vec![uri_a, uri_b],
        };
        let external_port = if op & 0x40 != 0 || uris.is_empty() {
            TCP_PORTS[usize::from(op >> 7)]
        } else {
            0
        };
        let mut slots: Vec<Slot> = uris.iter().map(|u| slot_of(u)).collect();
        if external_port != 0 {
            slots.push(Slot::Tcp(external_port));
        }
        let port = u16::from(input.byte() % 4) + 1;
        match op & 0xf {
            0..=5 => {
                let app = ["", "app-1", "app-2"][usize::from(op % 3)];
                let stale_s = [0, 5, 60, 500][usize::from(input.byte() % 4)];
                let permanent = op & 0xf == 5;
                let msg = message(&uris, port, app, stale_s, external_port);
                registry.register(&msg, now, permanent);
                model.register(&slots, port, app, stale_s, now_s, permanent);
            }
            6..=8 => {
                let msg = message(&uris, port, "", 0, external_port);
                registry.unregister(&msg, now);
                model.unregister(&slots, port, now_s);
            }
            9..=11 => now_s += u64::from(input.byte()),
            12 | 13 => {
                registry.prune(now);
                model.prune(now_s);
            }
            14 => {
                registry.freshen(now);
                model.freshen(now_s);
            }
            _ => {}
        }
        registry.publish();
        let table = registry.table().load_full();
        for host in HOSTS {
            for path in PATHS {
                assert_eq!(
                    table_lookup(&table, host, path),
                    model.lookup(host, path),
                    "lookup {host:?} {path:?} after step {steps}"
                );
            }
        }
        for port in TCP_PORTS {
            let got = table.tcp_pool(port).map(|pool| {
                let mut e: Vec<(u16, String)> = pool
                    .endpoints
                    .iter()
                    .map(|e| (e.data.port, e.data.app_id.clone()))
                    .collect();
                e.sort();
                e
            });
            assert_eq!(got, model.tcp(port), "tcp port {port} after step {steps}");
        }
        assert_eq!(
            registry.endpoint_count(),
            model.endpoint_count(),
            "endpoint count"
        );
    }
}

/// Host and path matching with arbitrary URIs and requests: the first lines are route
/// URIs (valid ones are registered, each to its own endpoint), the rest `host path`
/// requests, each looked up in the table and in the model.
pub fn route_lookup(data: &[u8]) {
    let mut input = Input::new(data);
    let uri_count = usize::from(input.byte() % 8);
    let registry = Registry::new(RegistrySettings::default());
    let mut model = Model {
        routes: BTreeMap::new(),
        empty_pool_timeout_s: 0,
    };
    let now = Instant::now();
    let mut registered = Vec::new();
    for i in 0..uri_count {
        let uri = String::from_utf8_lossy(input.line()).into_owned();
        if validate_uri(&uri).is_err() {
            continue;
        }
        let port = i as u16 + 1;
        registry.register(&message(&[&uri], port, "", 0, 0), now, false);
        model.register(&[slot_of(&uri)], port, "", 0, 0, false);
        registered.push(uri);
    }
    registry.publish();
    let table = registry.table().load_full();
    while !input.is_empty() {
        let line = String::from_utf8_lossy(input.line()).into_owned();
        let (host, path) = line.split_once(' ').unwrap_or((&line, "/"));
        assert_eq!(
            table_lookup(&table, host, path),
            model.lookup(host, path),
            "lookup {host:?} {path:?} with routes {registered:?}"
        );
    }
    for uri in &registered {
        if let Some((host, path)) = super::request_for_uri(uri) {
            assert!(
                table.lookup(&host, &path).is_some(),
                "{uri:?} is not found by {host:?} {path:?}"
            );
        }
    }
}
