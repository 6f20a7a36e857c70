use std::time::Duration;

use proptest::prelude::*;
use tokio::time::Instant;

use super::*;
use crate::protocol::RegistryMessage;

fn msg(host_port: u16, uris: &[&str]) -> RegistryMessage {
    RegistryMessage {
        host: "127.0.0.1".into(),
        port: host_port,
        uris: uris.iter().map(|u| u.to_string()).collect(),
        ..Default::default()
    }
}

fn endpoints_of(table: &RouteTable, host: &str, path: &str) -> Option<(String, Vec<u16>)> {
    table.lookup(host, path).map(|p| {
        let mut ports: Vec<u16> = p.endpoints.iter().map(|e| e.data.port).collect();
        ports.sort();
        (p.route_name(), ports)
    })
}

#[test]
fn exact_host_is_case_insensitive_and_ignores_port() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    reg.register(&msg(1, &["App.Example.com"]), now, false);
    assert!(reg.publish());
    let t = reg.table().load_full();
    assert_eq!(
        endpoints_of(&t, "APP.example.COM:8081", "/x"),
        Some(("app.example.com".into(), vec![1]))
    );
    assert_eq!(endpoints_of(&t, "other.example.com", "/"), None);
    assert_eq!(t.route_count(), 1);
}

#[test]
fn most_specific_wildcard_wins_and_exact_beats_wildcard() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    reg.register(&msg(1, &["*.example.com"]), now, false);
    reg.register(&msg(2, &["*.b.example.com"]), now, false);
    reg.register(&msg(3, &["a.b.example.com"]), now, false);
    reg.publish();
    let t = reg.table().load_full();
    assert_eq!(endpoints_of(&t, "a.b.example.com", "/").unwrap().1, [3]);
    assert_eq!(endpoints_of(&t, "x.b.example.com", "/").unwrap().1, [2]);
    assert_eq!(endpoints_of(&t, "x.y.b.example.com", "/").unwrap().1, [2]);
    assert_eq!(endpoints_of(&t, "x.example.com", "/").unwrap().1, [1]);
    assert_eq!(endpoints_of(&t, "example.com", "/"), None);
}

#[test]
fn context_paths_match_whole_segments_longest_first() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    reg.register(&msg(1, &["a.com"]), now, false);
    reg.register(&msg(2, &["a.com/foo"]), now, false);
    reg.register(&msg(3, &["a.com/foo/bar"]), now, false);
    reg.publish();
    let t = reg.table().load_full();
    let port = |path| endpoints_of(&t, "a.com", path).unwrap().1[0];
    assert_eq!(port("/"), 1);
    assert_eq!(port("/foobar"), 1);
    assert_eq!(port("/foo"), 2);
    assert_eq!(port("/FOO/"), 2);
    assert_eq!(port("/foo/baz?q=/foo/bar"), 2);
    // The query ends the path: `/foo?x` is in /foo, `/foobar?x` and `/?/foo` are not.
    assert_eq!(port("/foo?x=1"), 2);
    assert_eq!(port("/foo/bar?"), 3);
    assert_eq!(port("/foobar?x=/foo"), 1);
    assert_eq!(port("/?/foo"), 1);
    assert_eq!(port("?"), 1);
    assert_eq!(port("/foo/bar"), 3);
    assert_eq!(port("/foo/bar/baz"), 3);
}

#[test]
fn refresh_keeps_the_snapshot_and_change_replaces_the_endpoint() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    let mut m = msg(1, &["a.com"]);
    assert_eq!(reg.register(&m, now, false), [RegistryChange::Added]);
    reg.publish();
    assert_eq!(reg.register(&m, now, false), [RegistryChange::Refreshed]);
    assert!(!reg.publish(), "a refresh must not publish a new snapshot");
    m.app = "new-app".into();
    assert_eq!(reg.register(&m, now, false), [RegistryChange::Updated]);
    assert!(reg.publish());
    let t = reg.table().load_full();
    assert_eq!(
        t.lookup("a.com", "/").unwrap().endpoints[0].data.app_id,
        "new-app"
    );
    assert_eq!(reg.endpoint_count(), 1);
}

#[test]
fn unregister_removes_and_empty_routes_disappear() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    reg.register(&msg(1, &["a.com", "b.com/x"]), now, false);
    reg.register(&msg(2, &["a.com"]), now, false);
    reg.publish();
    assert_eq!(
        reg.unregister(&msg(1, &["a.com", "b.com/x", "c.com"]), now),
        [
            RegistryChange::Removed,
            RegistryChange::Removed,
            RegistryChange::Unknown
        ]
    );
    reg.publish();
    let t = reg.table().load_full();
    assert_eq!(endpoints_of(&t, "a.com", "/").unwrap().1, [2]);
    assert_eq!(endpoints_of(&t, "b.com", "/x"), None);
    assert_eq!(t.route_count(), 1);
    assert_eq!(reg.endpoint_count(), 1);
}

#[test]
fn empty_pool_timeout_keeps_an_empty_route_until_it_expires() {
    let reg = Registry::new(RegistrySettings {
        empty_pool_timeout: Duration::from_secs(10),
        ..Default::default()
    });
    let now = Instant::now();
    reg.register(&msg(1, &["a.com"]), now, false);
    reg.unregister(&msg(1, &["a.com"]), now);
    reg.publish();
    let t = reg.table().load_full();
    assert!(t.lookup("a.com", "/").unwrap().endpoints.is_empty());
    reg.prune(now + Duration::from_secs(5));
    reg.publish();
    assert!(reg.table().load().lookup("a.com", "/").is_some());
    reg.prune(now + Duration::from_secs(11));
    reg.publish();
    assert!(reg.table().load().lookup("a.com", "/").is_none());
}

#[test]
fn prune_removes_stale_but_not_static_endpoints_and_honours_own_ttl() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    reg.register(&msg(1, &["a.com"]), now, true);
    reg.register(&msg(2, &["a.com"]), now, false);
    let mut short = msg(3, &["a.com"]);
    short.stale_threshold_in_seconds = 10;
    reg.register(&short, now, false);
    assert_eq!(reg.prune(now + Duration::from_secs(11)), 1);
    assert_eq!(reg.prune(now + Duration::from_secs(121)), 1);
    reg.publish();
    assert_eq!(
        endpoints_of(&reg.table().load(), "a.com", "/").unwrap().1,
        [1]
    );
    // Static endpoints survive an unregister too: the config file owns them.
    reg.unregister(&msg(1, &["a.com"]), now);
    assert_eq!(reg.endpoint_count(), 1);
}

#[test]
fn freshen_restarts_every_ttl() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    reg.register(&msg(1, &["a.com"]), now, false);
    reg.freshen(now + Duration::from_secs(100));
    assert_eq!(reg.prune(now + Duration::from_secs(200)), 0);
    assert_eq!(reg.prune(now + Duration::from_secs(221)), 1);
}

#[test]
fn endpoint_stats_are_shared_across_routes() {
    let reg = Registry::new(RegistrySettings::default());
    reg.register(&msg(1, &["a.com", "b.com"]), Instant::now(), false);
    reg.publish();
    let t = reg.table().load_full();
    let a = &t.lookup("a.com", "/").unwrap().endpoints[0];
    let b = &t.lookup("b.com", "/").unwrap().endpoints[0];
    assert!(Arc::ptr_eq(&a.stats, &b.stats));
}

#[test]
fn tcp_routes_are_keyed_by_external_port() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    let mut m = msg(1, &[]);
    m.external_port = 5000;
    reg.register(&m, now, false);
    reg.publish();
    assert_eq!(
        reg.table().load().tcp_pool(5000).unwrap().endpoints.len(),
        1
    );
    reg.unregister(&m, now);
    reg.publish();
    assert!(reg.table().load().tcp_pool(5000).is_none());
}

#[test]
fn any_changed_field_updates_the_endpoint() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    let base = {
        let mut m = msg(1, &["a.com"]);
        m.app = "app".into();
        m.tags.insert("k".into(), "v".into());
        m
    };
    reg.register(&base, now, false);
    let changes: [fn(&mut RegistryMessage); 12] = [
        |m| m.tls_port = 1,
        |m| m.app = "other".into(),
        |m| m.private_instance_id = "id".into(),
        |m| m.private_instance_index = "3".into(),
        |m| m.server_cert_domain_san = "san".into(),
        |m| m.route_service_url = "https://rs".into(),
        |m| m.isolation_segment = "iso".into(),
        |m| m.availability_zone = "z9".into(),
        |m| m.protocol = "http2".into(),
        |m| drop(m.tags.insert("k".into(), "w".into())),
        |m| m.stale_threshold_in_seconds = 7,
        |m| m.endpoint_updated_at_ns = 9,
    ];
    for change in changes {
        let mut m = base.clone();
        change(&mut m);
        // (The TLS port is the same number as the port: the same endpoint key.)
        assert_eq!(
            reg.register(&m, now, false),
            [RegistryChange::Updated],
            "{m:?}"
        );
        assert_eq!(reg.register(&m, now, false), [RegistryChange::Refreshed]);
        reg.unregister(&m, now);
        reg.register(&base, now, false);
    }
}

#[test]
fn a_held_snapshot_does_not_change() {
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    reg.register(&msg(1, &["a.com"]), now, false);
    reg.publish();
    let before = reg.table().load_full();
    reg.register(&msg(2, &["a.com", "b.com"]), now, false);
    reg.unregister(&msg(1, &["a.com"]), now);
    reg.publish();
    assert_eq!(endpoints_of(&before, "a.com", "/").unwrap().1, [1]);
    assert_eq!(endpoints_of(&before, "b.com", "/"), None);
    let after = reg.table().load_full();
    assert_eq!(endpoints_of(&after, "a.com", "/").unwrap().1, [2]);
    assert_eq!(endpoints_of(&after, "b.com", "/").unwrap().1, [2]);
}

/// Enough hosts that shards hold several and are rebuilt many times over: every host
/// must stay findable (and removed ones gone) through batches of adds and removals.
#[test]
fn many_hosts_through_batches_of_changes() {
    const HOSTS: usize = 12_000;
    let uri = |i: usize| match i % 4 {
        0 => format!("*.w{i}.example.com"),
        1 => format!("h{i}.example.com/p"),
        _ => format!("h{i}.example.com"),
    };
    let request = |i: usize| match i % 4 {
        0 => (format!("x.W{i}.example.com"), "/"),
        1 => (format!("h{i}.example.com"), "/p/q"),
        _ => (format!("H{i}.example.com:80"), "/"),
    };
    let reg = Registry::new(RegistrySettings::default());
    let now = Instant::now();
    let mut present = vec![false; HOSTS];
    let mut rng = 0x2545_f491_4f6c_dd1du64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng as usize
    };
    for round in 0..6 {
        for _ in 0..HOSTS / 2 {
            let i = next() % HOSTS;
            let m = msg((i % 50_000) as u16 + 1, &[&uri(i)]);
            if present[i] && round > 0 {
                reg.unregister(&m, now);
                present[i] = false;
            } else {
                reg.register(&m, now, false);
                present[i] = true;
            }
            if next() % 500 == 0 {
                reg.publish();
            }
        }
        reg.publish();
        let table = reg.table().load_full();
        for (i, &present) in present.iter().enumerate() {
            let (host, path) = request(i);
            let found = table.lookup(&host, path).map(|p| p.route_name());
            let expected = present.then(|| uri(i));
            assert_eq!(found, expected, "round {round}: {host}{path}");
        }
        let count = present.iter().filter(|p| **p).count();
        assert_eq!(table.route_count(), count);
        assert_eq!(table.pools().count(), count);
        assert_eq!(reg.endpoint_count(), count);
    }
}

// A naive model: a list of (uri, port, updated_at) rows, searched linearly.
#[derive(Debug, Clone)]
enum Op {
    Register(usize, u16),
    Unregister(usize, u16),
    Advance(u64),
    Prune,
}

const URIS: [&str; 8] = [
    "a.com",
    "a.com/x",
    "a.com/x/y",
    "*.a.com",
    "b.a.com",
    "*.b.a.com",
    "b.a.com/x",
    "c.com/x",
];
const PROBES: [(&str, &str); 9] = [
    ("a.com", "/"),
    ("a.com", "/x/y/z"),
    ("A.com", "/xy"),
    ("b.a.com", "/x"),
    ("z.b.a.com", "/x"),
    ("z.a.com", "/"),
    ("c.com", "/"),
    ("c.com", "/X/1"),
    ("q.z.b.a.com", "/"),
];

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..URIS.len(), 1u16..4).prop_map(|(u, p)| Op::Register(u, p)),
        2 => (0..URIS.len(), 1u16..4).prop_map(|(u, p)| Op::Unregister(u, p)),
        1 => (0u64..200).prop_map(Op::Advance),
        1 => Just(Op::Prune),
    ]
}

fn model_lookup(rows: &[(usize, u16, u64)], host: &str, path: &str) -> Option<(String, Vec<u16>)> {
    let host = host.to_ascii_lowercase();
    let path = path.to_ascii_lowercase();
    let matching = |route_host: &str| -> Option<(String, Vec<u16>)> {
        let mut best: Option<(usize, &str)> = None;
        for (u, _, _) in rows {
            let key = RouteKey::parse(URIS[*u]);
            if &*key.host != route_host {
                continue;
            }
            let ctx = &*key.path;
            let ok = path.starts_with(ctx)
                && (path.len() == ctx.len() || path.as_bytes()[ctx.len()] == b'/');
            if ok && best.is_none_or(|(len, _)| ctx.len() > len) {
                best = Some((ctx.len(), URIS[*u]));
            }
        }
        best.map(|(_, uri)| {
            let mut ports: Vec<u16> = rows
                .iter()
                .filter(|(u, _, _)| URIS[*u] == uri)
                .map(|(_, p, _)| *p)
                .collect();
            ports.sort();
            (uri.to_string(), ports)
        })
    };
    if let Some(found) = matching(&host) {
        return Some(found);
    }
    let mut rest = host.as_str();
    while let Some(dot) = rest.find('.') {
        rest = &rest[dot + 1..];
        if let Some(found) = matching(&format!("*.{rest}")) {
            return Some(found);
        }
    }
    None
}

proptest! {
    #[test]
    fn table_agrees_with_a_naive_model(ops in proptest::collection::vec(op(), 1..60)) {
        let reg = Registry::new(RegistrySettings {
            droplet_stale_threshold: Duration::from_secs(120),
            ..Default::default()
        });
        let start = Instant::now();
        let mut now_s = 0u64;
        let mut rows: Vec<(usize, u16, u64)> = Vec::new();
        for op in ops {
            let now = start + Duration::from_secs(now_s);
            match op {
                Op::Register(u, p) => {
                    reg.register(&msg(p, &[URIS[u]]), now, false);
                    rows.retain(|(ru, rp, _)| !(*ru == u && *rp == p));
                    rows.push((u, p, now_s));
                }
                Op::Unregister(u, p) => {
                    reg.unregister(&msg(p, &[URIS[u]]), now);
                    rows.retain(|(ru, rp, _)| !(*ru == u && *rp == p));
                }
                Op::Advance(s) => now_s += s,
                Op::Prune => {
                    reg.prune(now);
                    rows.retain(|(_, _, at)| now_s - at <= 120);
                }
            }
            reg.publish();
            let table = reg.table().load_full();
            for (host, path) in PROBES {
                let got = endpoints_of(&table, host, path).map(|(name, ports)| {
                    // Report the route as registered, to compare with the model's URI.
                    let uri = URIS.iter().find(|u| RouteKey::parse(u) == RouteKey::parse(&name));
                    (uri.map(|u| u.to_string()).unwrap_or(name), ports)
                });
                prop_assert_eq!(got, model_lookup(&rows, host, path), "probe {} {}", host, path);
            }
            prop_assert_eq!(reg.endpoint_count(), rows.len());
        }
    }
}
