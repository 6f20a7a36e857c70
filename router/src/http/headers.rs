//! Header rewriting on the way to the app and back, as gorouter does it.

use std::net::{IpAddr, SocketAddr};
use std::sync::LazyLock;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};
use smallvec::SmallVec;

use crate::route_table::Endpoint;
use crate::upstream::http1::write_header;

pub const X_CF_ROUTER_ERROR: HeaderName = HeaderName::from_static("x-cf-routererror");
pub const X_VCAP_REQUEST_ID: HeaderName = HeaderName::from_static("x-vcap-request-id");
pub const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub const X_REQUEST_START: HeaderName = HeaderName::from_static("x-request-start");
pub const X_CF_APPLICATION_ID: HeaderName = HeaderName::from_static("x-cf-applicationid");
pub const X_CF_INSTANCE_INDEX: HeaderName = HeaderName::from_static("x-cf-instanceindex");
pub const X_CF_INSTANCE_ID: HeaderName = HeaderName::from_static("x-cf-instanceid");
pub const X_CF_APP_INSTANCE: HeaderName = HeaderName::from_static("x-cf-app-instance");

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1, plus the legacy ones
/// Go's reverse proxy also drops).
// A static, not a const: a const array of HeaderName is built and dropped at every use.
static HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// The lengths of the [`HOP_BY_HOP`] names and `te`, as bits.
static HOP_LENGTHS: LazyLock<u32> = LazyLock::new(|| {
    HOP_BY_HOP
        .iter()
        .chain([&header::TE])
        .fold(0, |bits, name| bits | 1 << name.as_str().len())
});

/// Facts about the downstream connection, computed once per connection.
#[derive(Debug, Clone)]
pub struct Downstream {
    pub peer: SocketAddr,
    /// The client certificate of a mutual-TLS connection, as an XFCC value.
    pub client_cert: Option<HeaderValue>,
    /// `client_ip` as a header value, ready to append to X-Forwarded-For.
    pub client_ip_header: HeaderValue,
    pub tls: bool,
}

impl Downstream {
    /// Describes a connection from `peer`.
    pub fn new(peer: SocketAddr, tls: bool) -> Self {
        let client_ip_header = client_ip_value(peer.ip());
        Downstream {
            peer,
            client_cert: None,
            client_ip_header,
            tls,
        }
    }
}

thread_local! {
    /// The last client address a worker saw, with its header value: connections mostly
    /// come from a few addresses (the load balancer in front, a benchmark's client), and
    /// a clone of the value is a reference count where a new one is an allocation.
    static LAST_CLIENT_IP: std::cell::RefCell<Option<(IpAddr, HeaderValue)>> =
        const { std::cell::RefCell::new(None) };
}

/// `ip` as a header value, from the worker's last one when it is the same address.
fn client_ip_value(ip: IpAddr) -> HeaderValue {
    LAST_CLIENT_IP
        .try_with(|last| {
            let mut last = last.borrow_mut();
            match &*last {
                Some((seen, value)) if *seen == ip => value.clone(),
                _ => {
                    let value = ip_value(ip);
                    *last = Some((ip, value.clone()));
                    value
                }
            }
        })
        .unwrap_or_else(|_| ip_value(ip))
}

/// `ip` as a header value. IPv4 is written digit by digit: through `Display` (four `u8`
/// formats with padding logic) it cost ~800 instructions, once per connection.
fn ip_value(ip: IpAddr) -> HeaderValue {
    let IpAddr::V4(v4) = ip else {
        // An IP address always formats to a valid header value.
        return HeaderValue::from_str(&ip.to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
    };
    let mut text = [0u8; 15];
    let mut len = 0;
    for (i, octet) in v4.octets().into_iter().enumerate() {
        if i > 0 {
            text[len] = b'.';
            len += 1;
        }
        let mut digits = itoa::Buffer::new();
        let digits = digits.format(octet).as_bytes();
        text[len..len + digits.len()].copy_from_slice(digits);
        len += digits.len();
    }
    small_value(&text[..len]).unwrap_or(HeaderValue::from_static("unknown"))
}

/// Removes hop-by-hop headers and those the `Connection` header names. `TE: trailers`
/// survives: it announces that the client accepts trailers (gRPC needs it end to end).
/// `Host` and `Content-Length` survive a `Connection` listing: they describe the message,
/// not the hop (Go's reverse proxy, gorouter, keeps them outside its header map).
pub fn remove_hop_by_hop(headers: &mut HeaderMap) {
    // One pass over the names (comparisons, no hashing) finds what is there: most
    // messages carry one of these headers or none, so most removals below never run.
    let mut found = [false; 8];
    let mut te = false;
    let hop_lengths = *HOP_LENGTHS;
    for name in headers.keys() {
        // Most names have no hop-by-hop header's length and are not compared at all.
        let len = name.as_str().len();
        if len >= 32 || hop_lengths >> len & 1 == 0 {
            continue;
        }
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            found[i] = true;
        } else if name == header::TE {
            te = true;
        }
    }
    if found[0] {
        // A listed name is looked for among the names present (a few comparisons) before
        // anything is removed: `Connection: close` names no header, and a lookup by
        // `&str` would parse and hash it only to miss.
        let mut listed: SmallVec<[HeaderName; 2]> = SmallVec::new();
        // Bytes, not `to_str`: one non-ASCII byte must not shield the other tokens.
        for token in headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        {
            let token = token.trim_ascii();
            if token.is_empty()
                || token.eq_ignore_ascii_case(header::HOST.as_str().as_bytes())
                || token.eq_ignore_ascii_case(header::CONTENT_LENGTH.as_str().as_bytes())
            {
                continue;
            }
            // A listed TE goes entirely, `trailers` or not.
            if let Some(name) = headers
                .keys()
                .find(|name| name.as_str().as_bytes().eq_ignore_ascii_case(token))
            {
                listed.push(name.clone());
            }
        }
        for name in listed {
            headers.remove(name);
        }
    }
    for (name, _) in HOP_BY_HOP.iter().zip(found).filter(|(_, found)| *found) {
        headers.remove(name);
    }
    if !te {
        return;
    }
    let te_trailers = headers
        .get_all(header::TE)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"trailers"));
    headers.remove(header::TE);
    if te_trailers {
        headers.insert(header::TE, HeaderValue::from_static("trailers"));
    }
}

/// The headers the router adds to a request for the app. They travel beside the
/// client's header map and are written after its lines (or inserted into it, for
/// HTTP/2): cheaper than inserting each into the map, which hashes every name, and the
/// same for every attempt of a retried request.
#[derive(Debug, Clone)]
pub struct AddedHeaders {
    /// The client's X-Forwarded-For values joined, then the client's address.
    pub forwarded_for: HeaderValue,
    /// `None`: the client sent its own X-Forwarded-Proto, which passes.
    pub forwarded_proto: Option<HeaderValue>,
    /// `None`: the client sent its own X-Request-Start, which passes.
    pub request_start: Option<HeaderValue>,
    pub request_id: HeaderValue,
}

impl AddedHeaders {
    /// The lines, with the endpoint's (X-CF-ApplicationID and friends), for an HTTP/1
    /// request head.
    pub fn write_http1(&self, endpoint: &Endpoint, head: &mut Vec<u8>) {
        let mut line = |name: &HeaderName, value: &HeaderValue| {
            write_header(head, name.as_str().as_bytes(), value.as_bytes());
        };
        line(&X_FORWARDED_FOR, &self.forwarded_for);
        if let Some(proto) = &self.forwarded_proto {
            line(&X_FORWARDED_PROTO, proto);
        }
        if let Some(start) = &self.request_start {
            line(&X_REQUEST_START, start);
        }
        line(&X_VCAP_REQUEST_ID, &self.request_id);
        line(&X_CF_APPLICATION_ID, &endpoint.headers.app_id);
        line(&X_CF_INSTANCE_INDEX, &endpoint.headers.instance_index);
        line(&X_CF_INSTANCE_ID, &endpoint.headers.instance_id);
    }

    /// Inserts them, with the endpoint's if given, into `headers` (HTTP/2 requests).
    pub fn insert_into(&self, endpoint: Option<&Endpoint>, headers: &mut HeaderMap) {
        headers.insert(X_FORWARDED_FOR, self.forwarded_for.clone());
        if let Some(proto) = &self.forwarded_proto {
            headers.insert(X_FORWARDED_PROTO, proto.clone());
        }
        if let Some(start) = &self.request_start {
            headers.insert(X_REQUEST_START, start.clone());
        }
        headers.insert(X_VCAP_REQUEST_ID, self.request_id.clone());
        if let Some(endpoint) = endpoint {
            headers.insert(X_CF_APPLICATION_ID, endpoint.headers.app_id.clone());
            headers.insert(X_CF_INSTANCE_INDEX, endpoint.headers.instance_index.clone());
            headers.insert(X_CF_INSTANCE_ID, endpoint.headers.instance_id.clone());
        }
    }
}

/// Headers of the client's that [`AddedHeaders`] replaces or decides on.
static ADDED: [HeaderName; 7] = [
    X_FORWARDED_FOR,
    X_FORWARDED_PROTO,
    X_REQUEST_START,
    X_VCAP_REQUEST_ID,
    X_CF_APPLICATION_ID,
    X_CF_INSTANCE_INDEX,
    X_CF_INSTANCE_ID,
];

/// Rewrites request headers for the app: removes hop-by-hop headers and the client's
/// versions of the headers the router sets, and returns what the router adds
/// (X-Forwarded-For, X-Forwarded-Proto, X-Request-Start, X-Vcap-Request-Id; the
/// endpoint's X-CF-* per attempt). Done once per request, whatever the attempts.
#[must_use = "the added headers must be sent"]
pub fn rewrite_request(
    headers: &mut HeaderMap,
    downstream: &Downstream,
    request_id: &HeaderValue,
) -> AddedHeaders {
    remove_hop_by_hop(headers);
    // One pass over the names (comparisons, no hashing): most requests carry none of
    // these, and then the map is not touched again.
    let mut present = [false; ADDED.len()];
    for name in headers.keys() {
        if let Some(i) = ADDED.iter().position(|added| added == name) {
            present[i] = true;
        }
    }
    let [xff, xfp, start, id, app_id, index, instance_id] = present;
    let forwarded_for = if xff {
        let joined = forwarded_for(headers, downstream);
        headers.remove(X_FORWARDED_FOR);
        joined
    } else {
        downstream.client_ip_header.clone()
    };
    let forwarded_proto =
        (!xfp).then(|| HeaderValue::from_static(if downstream.tls { "https" } else { "http" }));
    let request_start = (!start).then(|| {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        decimal_value(ms)
    });
    for (name, _) in ADDED
        .iter()
        .zip([false, false, false, id, app_id, index, instance_id])
        .filter(|(_, present)| *present)
    {
        headers.remove(name);
    }
    AddedHeaders {
        forwarded_for,
        forwarded_proto,
        request_start,
        request_id: request_id.clone(),
    }
}

pub const X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// Applies `forwarded_client_cert`: pass the client's header, keep it only on mutual-TLS
/// connections, or replace it with the connection's certificate.
pub fn forward_client_cert(
    headers: &mut HeaderMap,
    downstream: &Downstream,
    mode: crate::config::ForwardedClientCert,
) {
    use crate::config::ForwardedClientCert as Mode;
    match mode {
        Mode::AlwaysForward => {}
        Mode::Forward => {
            if downstream.client_cert.is_none() {
                headers.remove(X_FORWARDED_CLIENT_CERT);
            }
        }
        Mode::SanitizeSet => {
            headers.remove(X_FORWARDED_CLIENT_CERT);
            if let Some(cert) = &downstream.client_cert {
                headers.insert(X_FORWARDED_CLIENT_CERT, cert.clone());
            }
        }
    }
}

/// The client's X-Forwarded-For values joined into one, as Go's reverse proxy does,
/// then the client's address.
fn forwarded_for(headers: &HeaderMap, downstream: &Downstream) -> HeaderValue {
    let mut prior = headers.get_all(X_FORWARDED_FOR).iter();
    let Some(first) = prior.next() else {
        return downstream.client_ip_header.clone();
    };
    let mut joined = Vec::with_capacity(first.len() + 48);
    joined.extend_from_slice(first.as_bytes());
    for value in prior {
        joined.extend_from_slice(b", ");
        joined.extend_from_slice(value.as_bytes());
    }
    joined.extend_from_slice(b", ");
    joined.extend_from_slice(downstream.client_ip_header.as_bytes());
    // Built from valid header values and ", ": still a valid value.
    HeaderValue::from_bytes(&joined).unwrap_or_else(|_| downstream.client_ip_header.clone())
}

/// A new request id (UUID v4), as sent to the app and returned to the client.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let text = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    small_value(text.as_bytes()).unwrap_or(HeaderValue::from_static("-"))
}

/// `n` in decimal as a header value (Content-Length, X-Request-Start).
pub fn decimal_value(n: u64) -> HeaderValue {
    let mut digits = itoa::Buffer::new();
    // Digits are always a valid value.
    small_value(digits.format(n).as_bytes()).unwrap_or(HeaderValue::from_static("0"))
}

/// Spare header maps per worker thread: a request and its response each need one, and
/// a cleared map keeps its memory, so reusing them saves four allocations per request.
const MAX_SPARE_MAPS: usize = 64;
/// Maps grown past this (a request with many headers) are freed rather than kept.
const MAX_KEPT_CAPACITY: usize = 64;

thread_local! {
    static SPARE_MAPS: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty header map with room for `capacity` entries.
pub fn take_map(capacity: usize) -> HeaderMap {
    match SPARE_MAPS.try_with(|spare| spare.borrow_mut().pop()) {
        Ok(Some(mut map)) => {
            map.reserve(capacity);
            map
        }
        _ => HeaderMap::with_capacity(capacity),
    }
}

/// Gives a header map that is no longer needed back for [`take_map`].
pub fn recycle_map(mut map: HeaderMap) {
    if map.capacity() > MAX_KEPT_CAPACITY {
        return;
    }
    map.clear();
    let _ = SPARE_MAPS.try_with(|spare| {
        if let Ok(mut spare) = spare.try_borrow_mut()
            && spare.len() < MAX_SPARE_MAPS
        {
            spare.push(map);
        }
    });
}

/// Block that small per-request values are carved from.
const VALUE_BLOCK: usize = 4096;

thread_local! {
    static VALUE_BLOCKS: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

/// A header value holding a copy of `bytes`, or `None` if they are not a valid value.
/// Values are carved from a per-thread block shared by reference count, so making one
/// (and cloning it, for the response) costs no allocation: `HeaderValue::from_str` would
/// allocate once, and again at the first clone.
pub fn small_value(bytes: &[u8]) -> Option<HeaderValue> {
    let shared = VALUE_BLOCKS
        .try_with(|block| {
            let mut block = block.borrow_mut();
            if block.capacity() < bytes.len() {
                *block = bytes::BytesMut::with_capacity(VALUE_BLOCK.max(bytes.len()));
            }
            block.extend_from_slice(bytes);
            block.split().freeze()
        })
        .unwrap_or_else(|_| bytes::Bytes::copy_from_slice(bytes));
    HeaderValue::from_maybe_shared(shared).ok()
}

/// Rewrites an app's response headers for the client.
pub fn rewrite_response(headers: &mut HeaderMap, request_id: &HeaderValue) {
    remove_hop_by_hop(headers);
    if !headers.contains_key(X_VCAP_REQUEST_ID) {
        headers.insert(X_VCAP_REQUEST_ID, request_id.clone());
    }
}

/// gorouter's measure of a request's header size: request line plus every header's name
/// and value with 4 bytes of framing each.
pub fn request_header_size(method: &str, target: &str, headers: &HeaderMap) -> usize {
    let mut size = method.len() + target.len() + 10;
    for (name, value) in headers {
        size += name.as_str().len() + value.len() + 4;
    }
    size
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, X-Secret".parse().unwrap());
        h.insert("x-secret", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept", "te"]);
    }

    #[test]
    fn connection_cannot_remove_host_or_content_length() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_bytes(b"host, content-length, x-a, caf\xc3\xa9").unwrap(),
        );
        h.insert(header::HOST, "a.example.com".parse().unwrap());
        h.insert(header::CONTENT_LENGTH, "3".parse().unwrap());
        h.insert("x-a", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        let mut names = names;
        names.sort();
        assert_eq!(names, ["content-length", "host"]);
    }

    #[test]
    fn every_connection_header_counts_and_a_listed_te_goes_entirely() {
        let mut h = HeaderMap::new();
        h.append(header::CONNECTION, "close".parse().unwrap());
        h.append(header::CONNECTION, " TE ,X-B,,".parse().unwrap());
        h.insert(header::TE, "trailers".parse().unwrap());
        h.insert("x-b", "1".parse().unwrap());
        // A header named like the option goes too, as in Go.
        h.insert("close", "1".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        remove_hop_by_hop(&mut h);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-kept"]);
    }

    #[test]
    fn every_hop_by_hop_name_passes_the_length_filter() {
        for name in HOP_BY_HOP.iter().chain([&header::TE]) {
            assert_ne!(*HOP_LENGTHS >> name.as_str().len() & 1, 0, "{name}");
        }
    }

    #[test]
    fn client_ips_are_written_as_header_values() {
        let ips = [
            "0.0.0.0",
            "127.0.0.1",
            "10.200.5.255",
            "255.255.255.255",
            "::1",
            "fe80::1:2",
        ];
        // Each twice in a row, and the list twice: the worker's last-address cache must
        // give every address its own value.
        for ip in ips.iter().chain(&ips).flat_map(|ip| [ip, ip]) {
            let peer = SocketAddr::new(ip.parse().unwrap(), 80);
            assert_eq!(Downstream::new(peer, false).client_ip_header, ip);
        }
    }

    #[test]
    fn forwarded_for_is_joined_and_appended() {
        let d = Downstream::new("10.0.0.9:1234".parse().unwrap(), false);
        let id = new_request_id();
        let mut h = HeaderMap::new();
        let added = rewrite_request(&mut h, &d, &id);
        assert_eq!(added.forwarded_for, "10.0.0.9");
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.append(X_FORWARDED_FOR, "2.2.2.2, 3.3.3.3".parse().unwrap());
        let added = rewrite_request(&mut h, &d, &id);
        assert_eq!(added.forwarded_for, "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        assert!(!h.contains_key(X_FORWARDED_FOR));
        added.insert_into(None, &mut h);
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
    }

    #[test]
    fn the_clients_proto_and_start_pass_and_its_ids_are_replaced() {
        let d = Downstream::new("10.0.0.9:1234".parse().unwrap(), true);
        let id = new_request_id();
        let mut h = HeaderMap::new();
        let added = rewrite_request(&mut h, &d, &id);
        assert_eq!(added.forwarded_proto.as_ref().unwrap(), "https");
        assert!(added.request_start.is_some());

        let mut h = HeaderMap::new();
        h.insert(X_FORWARDED_PROTO, "http".parse().unwrap());
        h.insert(X_REQUEST_START, "12".parse().unwrap());
        h.insert(X_VCAP_REQUEST_ID, "forged".parse().unwrap());
        h.insert(X_CF_INSTANCE_ID, "forged".parse().unwrap());
        h.insert("x-kept", "1".parse().unwrap());
        let added = rewrite_request(&mut h, &d, &id);
        assert!(added.forwarded_proto.is_none() && added.request_start.is_none());
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["x-forwarded-proto", "x-kept", "x-request-start"]);
        added.insert_into(None, &mut h);
        assert_eq!(h[X_VCAP_REQUEST_ID], id);
        assert_eq!(h[X_FORWARDED_PROTO], "http");
    }

    #[test]
    fn request_ids_are_uuids() {
        let id = new_request_id();
        assert!(uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok());
        assert_ne!(id, new_request_id());
    }
}
