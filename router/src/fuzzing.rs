//! Fuzz target bodies, shared by the cargo-fuzz targets in `fuzz/` (nightly) and by the
//! corpus replay test `tests/fuzz_corpus.rs` (stable): each target there is a one-line
//! call to the function of the same name here.
//!
//! Every function takes arbitrary bytes, must never panic on its own, and checks
//! properties with `assert!`: a failed assertion is a finding, like a crash. The parsers
//! are checked for round trips and for what the router relies on; the route table
//! against a naive model ([`route_model`]); the proxy end to end ([`proxy`]) by the
//! framing of what reaches the app and the client ([`wire`]).
//!
//! Not on the request path: nothing in the router calls this module.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use http::header::{HeaderMap, HeaderName, HeaderValue};

use crate::config::{Config, ForwardedClientCert, parse_duration, parse_port_range};
use crate::http::headers::{self, Downstream};
use crate::http::{ProxyError, sticky, w3c};
use crate::protocol::RegistryMessage;
use crate::route_table::{Registry, RegistrySettings};

mod proxy;
mod route_model;
mod wire;

pub use proxy::proxy_http1;
/// The model's request-host normalisation, the reference the lookup's is tested against.
#[cfg(test)]
pub(crate) use route_model::request_host;
pub use route_model::{route_lookup, route_table_ops};

/// A cursor over fuzz input: small structured choices first, the rest as bytes.
pub(crate) struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Input { data }
    }

    /// One byte, 0 when the input is exhausted.
    pub(crate) fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    /// Up to the next `\n` (excluded), or the rest.
    pub(crate) fn line(&mut self) -> &'a [u8] {
        let end = self
            .data
            .iter()
            .position(|&b| b == b'\n')
            .unwrap_or(self.data.len());
        let line = &self.data[..end];
        self.data = self.data.get(end + 1..).unwrap_or_default();
        line
    }

    /// Everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }
}

/// `router.register` payloads: `parse` never panics; a parsed message survives a JSON
/// round trip; a valid one can be registered, is found under each of its URIs, and is
/// gone after the matching unregister.
pub fn register_message(data: &[u8]) {
    let Ok(msg) = RegistryMessage::parse(data) else {
        return;
    };
    let json = match serde_json::to_vec(&msg) {
        Ok(json) => json,
        Err(err) => panic!("a parsed message does not serialise: {err}"),
    };
    assert_eq!(
        RegistryMessage::parse(&json).ok().as_ref(),
        Some(&msg),
        "JSON round trip changed the message: {}",
        String::from_utf8_lossy(&json)
    );
    if msg.validate().is_err() {
        return;
    }
    let registry = Registry::new(RegistrySettings::default());
    let now = tokio::time::Instant::now();
    registry.register(&msg, now, false);
    registry.publish();
    let table = registry.table().load_full();
    let key_port = msg.endpoint_port();
    for uri in &msg.uris {
        let Some((host, path)) = request_for_uri(uri) else {
            continue;
        };
        let pool = table.lookup(&host, &path);
        assert!(
            pool.is_some_and(|p| p.endpoints.iter().any(|e| e.data.port == key_port)),
            "registered uri {uri:?} is not found by a request to {host:?} {path:?}"
        );
    }
    if msg.external_port != 0 {
        assert!(table.tcp_pool(msg.external_port).is_some());
    }
    registry.unregister(&msg, now);
    registry.publish();
    assert_eq!(registry.endpoint_count(), 0, "unregister left endpoints");
    let table = registry.table().load_full();
    for uri in &msg.uris {
        if let Some((host, path)) = request_for_uri(uri) {
            assert!(table.lookup(&host, &path).is_none(), "{uri:?} survived");
        }
    }
}

/// A request host and path that must reach a route registered as `uri`, for URIs whose
/// host is an ordinary DNS name (optionally `*.`-prefixed and with a `:port`): `None`
/// for the odd hosts `validate_uri` lets through (empty labels, colons inside).
fn request_for_uri(uri: &str) -> Option<(String, String)> {
    let uri = uri.split('?').next().unwrap_or_default();
    let (host, path) = match uri.find('/') {
        Some(slash) => uri.split_at(slash),
        None => (uri, ""),
    };
    let host = match host.split_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        Some(_) => return None,
        None => host,
    };
    let (wildcard, name) = match host.strip_prefix("*.") {
        Some(rest) => (true, rest),
        None => (false, host),
    };
    let ordinary = name.split('.').all(|label| {
        !label.is_empty()
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    if !ordinary {
        return None;
    }
    let host = if wildcard {
        format!("x.{name}")
    } else {
        name.to_owned()
    };
    let path = if path.is_empty() { "/" } else { path };
    Some((host, path.to_owned()))
}

/// The YAML config: `from_yaml` never panics, and what it accepts validates again.
pub fn config(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(config) = Config::from_yaml(text) {
        assert!(
            config.validate().is_ok(),
            "an accepted config fails validate"
        );
        let _ = config.endpoint_ttl(u64::from(data.len() as u8));
        let _ = config.nats.urls();
    }
}

/// Go-style durations and port ranges: no panic, and what parses prints and parses back
/// to the same value.
pub fn duration(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(d) = parse_duration(text) {
        // Below 2^53 ns the float arithmetic of the parser is exact.
        let ms = d.as_millis();
        if ms < 9_000_000_000 {
            let back = format!("{ms}ms");
            assert_eq!(
                parse_duration(&back),
                Ok(Duration::from_millis(ms as u64)),
                "{back:?}"
            );
        }
        let secs = d.as_secs();
        assert_eq!(
            parse_duration(&secs.to_string()),
            Ok(Duration::from_secs(secs))
        );
    }
    if let Ok((lo, hi)) = parse_port_range(text) {
        assert!(lo >= 1 && lo <= hi, "{text:?} gave {lo}-{hi}");
        assert_eq!(parse_port_range(&format!("{lo}-{hi}")), Ok((lo, hi)));
    }
}

/// Header rewriting on the way to the app and back: hop-by-hop headers (and those the
/// `Connection` header names) never pass, X-Forwarded-For is one value ending in the
/// client's address, and the request id is ours.
pub fn header_rewrite(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let ip = IpAddr::from([10, 0, input.byte(), input.byte()]);
    let ip = if flags & 1 == 0 {
        ip
    } else {
        IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0, u16::from(input.byte())])
    };
    let downstream = Downstream::new(SocketAddr::new(ip, 4321), flags & 2 != 0);
    let original = header_map(&mut input);

    let request_id = headers::new_request_id();
    let mut req = original.clone();
    headers::rewrite_request(&mut req, &downstream, &request_id).insert_into(None, &mut req);
    let listed = connection_listed(&original);
    let te_listed = listed.iter().any(|n| n == "te");
    let readded = [
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-request-start",
        "x-vcap-request-id",
    ];
    let removed = listed.iter().map(String::as_str).chain(HOP_BY_HOP);
    for name in removed {
        if readded.contains(&name) || (name == "te" && !te_listed) {
            continue;
        }
        assert!(!req.contains_key(name), "{name} survived: {req:?}");
    }
    let te: Vec<_> = req.get_all("te").iter().collect();
    assert!(te.is_empty() || te == ["trailers"], "te: {te:?}");
    let xff: Vec<_> = req.get_all("x-forwarded-for").iter().collect();
    assert_eq!(xff.len(), 1, "x-forwarded-for: {xff:?}");
    let client_ip = ip.to_string();
    assert!(
        xff[0].as_bytes().ends_with(client_ip.as_bytes()),
        "x-forwarded-for {:?} does not end with {client_ip}",
        xff[0]
    );
    if !listed.contains(&"x-forwarded-for".to_owned()) {
        let prior: Vec<&[u8]> = original
            .get_all("x-forwarded-for")
            .iter()
            .map(HeaderValue::as_bytes)
            .chain([client_ip.as_bytes()])
            .collect();
        assert_eq!(xff[0].as_bytes(), prior.join(&b", "[..]).as_slice());
    }
    assert_eq!(req.get("x-vcap-request-id"), Some(&request_id));
    assert!(req.contains_key("x-forwarded-proto") && req.contains_key("x-request-start"));
    let _ = headers::request_header_size("GET", "/", &req);

    let mode = match flags >> 4 & 3 {
        0 => ForwardedClientCert::AlwaysForward,
        1 => ForwardedClientCert::Forward,
        _ => ForwardedClientCert::SanitizeSet,
    };
    let had_xfcc = req.contains_key(headers::X_FORWARDED_CLIENT_CERT);
    headers::forward_client_cert(&mut req, &downstream, mode);
    let has_xfcc = req.contains_key(headers::X_FORWARDED_CLIENT_CERT);
    match mode {
        ForwardedClientCert::AlwaysForward => assert_eq!(had_xfcc, has_xfcc),
        _ => assert!(
            !has_xfcc,
            "XFCC forwarded from a connection without a certificate"
        ),
    }

    let mut resp = original;
    headers::rewrite_response(&mut resp, &request_id);
    for name in HOP_BY_HOP.iter().filter(|n| **n != "te") {
        assert!(!resp.contains_key(*name), "{name} in the response");
    }
    assert!(resp.contains_key("x-vcap-request-id"));
    let upgrade = crate::websocket::requested_upgrade(&resp);
    assert!(upgrade.is_none(), "upgrade headers survived the rewrite");
}

/// Hop-by-hop headers the router must not forward either way (RFC 9110 7.6.1, and the
/// legacy ones); `te` is kept only as `te: trailers`.
const HOP_BY_HOP: [&str; 9] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// The header names listed in `Connection` values, as the RFC reads them: every
/// comma-separated token, whatever other bytes the value holds; but `Host` and
/// `Content-Length`, which describe the message (gorouter keeps them too).
fn connection_listed(headers: &HeaderMap) -> Vec<String> {
    headers
        .get_all("connection")
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .filter_map(|token| HeaderName::from_bytes(token.trim_ascii()).ok())
        .map(|name| name.as_str().to_owned())
        .filter(|name| name != "host" && name != "content-length")
        .collect()
}

/// Reads `name: value` lines into a header map; lines that are not a valid header are
/// skipped.
fn header_map(input: &mut Input<'_>) -> HeaderMap {
    let mut map = HeaderMap::new();
    while !input.is_empty() {
        let line = input.line();
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        if let (Ok(name), Ok(value)) =
            (HeaderName::from_bytes(name), HeaderValue::from_bytes(value))
        {
            map.append(name, value);
        }
    }
    map
}

/// Sticky sessions: the requested instance comes from a `__VCAP_ID__` cookie beside a
/// session cookie; the `__VCAP_ID__` the router sets is a valid header, carrying the
/// session cookie's Secure.
pub fn sticky_cookies(data: &[u8]) {
    let mut input = Input::new(data);
    let flags = input.byte();
    let names = vec!["JSESSIONID".to_owned(), "SESSION".to_owned()];
    let instance_id = String::from_utf8_lossy(input.line()).into_owned();
    let context_path = String::from_utf8_lossy(input.line()).into_owned();
    let headers = header_map(&mut input);

    if let Some(id) = sticky::requested_instance(&headers, &names) {
        assert!(!id.is_empty() && !id.contains(';'), "{id:?}");
        let cookies: Vec<&[u8]> = headers
            .get_all("cookie")
            .iter()
            .map(HeaderValue::as_bytes)
            .collect();
        assert!(
            cookies
                .iter()
                .any(|c| c.windows(id.len()).any(|w| w == id.as_bytes())),
            "{id:?} is not in {cookies:?}"
        );
        assert!(
            cookies.iter().any(|c| names
                .iter()
                .any(|n| c.windows(n.len()).any(|w| w == n.as_bytes()))),
            "no session cookie beside __VCAP_ID__"
        );
    }
    let found = sticky::response_cookies(&headers, &names);
    let secure_flag = flags & 1 != 0;
    let cookie = sticky::vcap_id_cookie(
        &instance_id,
        &context_path,
        found.session.as_ref(),
        secure_flag,
    );
    let valid_id = instance_id
        .bytes()
        .all(|b| b.is_ascii_graphic() && !matches!(b, b'"' | b',' | b';' | b'\\'));
    match cookie {
        Some(cookie) => {
            assert!(valid_id);
            let text = String::from_utf8_lossy(cookie.as_bytes());
            assert!(
                text.starts_with(&format!("{}={instance_id}; Path=", sticky::VCAP_ID)),
                "{text:?}"
            );
            let path = text.split("; ").nth(1).unwrap_or_default();
            assert!(
                path.starts_with("Path=") && !path.contains(';') && path.is_ascii(),
                "the context path escaped Path=: {text:?}"
            );
            let secure = secure_flag || found.session.as_ref().is_some_and(|s| s.secure);
            assert_eq!(text.contains("; Secure"), secure, "{text:?}");
        }
        // Whatever the context path: bytes a cookie path cannot hold are dropped.
        None => assert!(!valid_id, "no cookie for {instance_id:?}"),
    }
}

/// `X-CF-App-Instance: APPGUID:INDEX`: what parses is exactly a lowercase UUID, a colon
/// and digits; refusals and lookups failures make well-formed error responses.
pub fn app_instance_header(data: &[u8]) {
    match crate::http::proxy::parse_app_instance(data) {
        Ok((guid, index)) => {
            assert_eq!(guid.len(), 36);
            assert!(!index.is_empty() && index.bytes().all(|b| b.is_ascii_digit()));
            assert_eq!(format!("{guid}:{index}").as_bytes(), data);
            let err = ProxyError::UnknownInstance {
                guid: guid.to_owned(),
                index: index.to_owned(),
                host: "h".to_owned(),
            };
            assert_eq!(err.to_response().status(), 400);
        }
        Err(err) => {
            let resp = err.to_response();
            assert_eq!(resp.status(), 400);
            assert_eq!(
                resp.headers()
                    .get(headers::X_CF_ROUTER_ERROR)
                    .map(HeaderValue::as_bytes),
                Some(&b"invalid_cf_app_instance_header"[..])
            );
        }
    }
    let host = String::from_utf8_lossy(data).into_owned();
    let resp = ProxyError::UnknownRoute { host }.to_response();
    assert_eq!(resp.status(), 404);
}

/// W3C trace context: what `parse_traceparent` accepts is exactly the canonical form; a
/// rewrite always leaves a valid `traceparent`, keeps a valid incoming trace id, and puts
/// this router's `tracestate` entry first and once.
pub fn traceparent(data: &[u8]) {
    let mut input = Input::new(data);
    let tenant_len = usize::from(input.byte() % 8);
    let value = input.line();
    let state = input.rest();
    let parsed = w3c::parse_traceparent(value);
    if let Some(p) = &parsed {
        let canonical = format!("00-{}-{}-{}", p.trace_id, p.parent_id, p.flags);
        assert_eq!(canonical.len(), 55);
        assert_eq!(&canonical.as_bytes()[2..], &value[2..]);
    }
    let mut headers = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(value) {
        headers.insert(w3c::TRACEPARENT, v);
    }
    if let Ok(v) = HeaderValue::from_bytes(state) {
        headers.insert(w3c::TRACESTATE, v);
    }
    let incoming = parsed
        .as_ref()
        .filter(|_| headers.contains_key(w3c::TRACEPARENT))
        .map(|p| p.trace_id.to_owned());
    if let Some(id) = w3c::request_id_from_trace(&headers) {
        let trace = incoming.as_deref().unwrap_or_default();
        assert_eq!(id.to_str().unwrap_or_default().replace('-', ""), trace);
    }
    let tenant = &"tenant1"[..tenant_len.min(7)];
    let request_id = headers::new_request_id();
    w3c::rewrite(
        &mut headers,
        request_id.to_str().unwrap_or_default(),
        tenant,
    );
    let out = headers.get(w3c::TRACEPARENT).map(HeaderValue::as_bytes);
    let out = out.and_then(w3c::parse_traceparent);
    let Some(out) = out else {
        panic!("rewrite left no valid traceparent");
    };
    if let Some(trace) = &incoming {
        assert_eq!(out.trace_id, trace);
    }
    let state = headers
        .get(w3c::TRACESTATE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let key = if tenant.is_empty() {
        "gorouter".to_owned()
    } else {
        format!("{tenant}@gorouter")
    };
    assert!(
        state.starts_with(&format!("{key}={}", out.parent_id)),
        "{state:?}"
    );
    let ours = state
        .split(',')
        .filter(|e| e.trim().split('=').next() == Some(key.as_str()))
        .count();
    assert_eq!(ours, 1, "{state:?}");
}
