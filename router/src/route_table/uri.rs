//! Route keys: how registered URIs and request hosts are normalised.

use std::sync::Arc;

/// A registered route: lowercased host (`*.example.com` for a wildcard) and context path
/// (lowercased, no trailing `/`, "" for the whole host). gorouter lowercases the path too.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub host: Arc<str>,
    pub path: Box<str>,
}

impl RouteKey {
    /// Normalises a registered `host[/path][?query]` URI (already validated).
    pub fn parse(uri: &str) -> RouteKey {
        let uri = uri.split('?').next().unwrap_or_default();
        let lower = uri.to_ascii_lowercase();
        let (host, path) = match lower.find('/') {
            Some(slash) => lower.split_at(slash),
            None => (lower.as_str(), ""),
        };
        // The port, if a registration carries one, is not part of the route.
        let host = strip_port(host);
        let path = path.trim_end_matches('/');
        RouteKey {
            host: Arc::from(host),
            path: Box::from(path),
        }
    }

    /// Whether the host is a wildcard (`*.example.com`).
    pub fn is_wildcard(&self) -> bool {
        self.host.starts_with("*.")
    }
}

fn strip_port(host: &str) -> &str {
    if host.starts_with('[') {
        return match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        };
    }
    match host.find(':') {
        Some(colon) => &host[..colon],
        None => host,
    }
}

/// Lowercases a request's Host into `buf` and strips its port; `None` if it is empty or
/// longer than `buf`. Brackets keep an IPv6 literal whole (gorouter cuts at the first `:`).
pub fn normalize_request_host<'b>(host: &str, buf: &'b mut [u8]) -> Option<&'b str> {
    let host = strip_port(host);
    let host = host.strip_suffix('.').unwrap_or(host);
    if host.is_empty() || host.len() > buf.len() {
        return None;
    }
    let out = &mut buf[..host.len()];
    for (o, b) in out.iter_mut().zip(host.bytes()) {
        *o = b.to_ascii_lowercase();
    }
    std::str::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registered_uris_are_normalised() {
        let k = RouteKey::parse("App.Example.COM/Foo/Bar/?x=1");
        assert_eq!(&*k.host, "app.example.com");
        assert_eq!(&*k.path, "/foo/bar");
        let k = RouteKey::parse("a.b:8080");
        assert_eq!((&*k.host, &*k.path), ("a.b", ""));
        assert!(RouteKey::parse("*.b.c/").is_wildcard());
    }

    #[test]
    fn request_hosts_lose_port_and_case() {
        let mut buf = [0u8; 255];
        assert_eq!(normalize_request_host("A.B:81", &mut buf), Some("a.b"));
        assert_eq!(normalize_request_host("[::1]:81", &mut buf), Some("[::1]"));
        assert_eq!(normalize_request_host("a.b.", &mut buf), Some("a.b"));
        assert_eq!(normalize_request_host(":80", &mut buf), None);
        let long = "a".repeat(300);
        assert_eq!(normalize_request_host(&long, &mut buf), None);
    }
}
