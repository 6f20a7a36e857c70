//! Header rewriting on the way to the app and back, as gorouter does it.

use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use http::header::{self, HeaderName, HeaderValue};

use crate::route_table::Endpoint;

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
        // An IP address always formats to a valid header value.
        let client_ip_header = HeaderValue::from_str(&peer.ip().to_string())
            .unwrap_or(HeaderValue::from_static("unknown"));
        Downstream {
            peer,
            client_cert: None,
            client_ip_header,
            tls,
        }
    }
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
    for name in headers.keys() {
        if let Some(i) = HOP_BY_HOP.iter().position(|hop| hop == name) {
            found[i] = true;
        } else if name == header::TE {
            te = true;
        }
    }
    if found[0] {
        let listed: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            // Bytes, not `to_str`: one non-ASCII byte must not shield the other tokens.
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .filter_map(|name| HeaderName::from_bytes(name.trim_ascii()).ok())
            .filter(|name| *name != header::HOST && *name != header::CONTENT_LENGTH)
            .filter(|name| !HOP_BY_HOP.contains(name))
            .collect();
        for name in listed {
            te |= name == header::TE;
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

/// Rewrites request headers for the app: hop-by-hop removal, forwarding headers, request
/// id and request start time. Done once per request, whatever the number of attempts.
pub fn rewrite_request(headers: &mut HeaderMap, downstream: &Downstream, request_id: &HeaderValue) {
    remove_hop_by_hop(headers);
    append_forwarded_for(headers, downstream);
    if !headers.contains_key(X_FORWARDED_PROTO) {
        let proto = if downstream.tls { "https" } else { "http" };
        headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    }
    if !headers.contains_key(X_REQUEST_START) {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        headers.insert(X_REQUEST_START, decimal_value(ms));
    }
    headers.insert(X_VCAP_REQUEST_ID, request_id.clone());
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

/// Tells the app which endpoint the request was sent to (set again on each attempt).
pub fn set_endpoint_headers(headers: &mut HeaderMap, endpoint: &Endpoint) {
    headers.insert(X_CF_APPLICATION_ID, endpoint.headers.app_id.clone());
    headers.insert(X_CF_INSTANCE_INDEX, endpoint.headers.instance_index.clone());
    headers.insert(X_CF_INSTANCE_ID, endpoint.headers.instance_id.clone());
}

/// Appends the client's address to X-Forwarded-For, joining earlier values into one
/// header as Go's reverse proxy does.
fn append_forwarded_for(headers: &mut HeaderMap, downstream: &Downstream) {
    let mut prior = headers.get_all(X_FORWARDED_FOR).iter();
    let Some(first) = prior.next() else {
        headers.insert(X_FORWARDED_FOR, downstream.client_ip_header.clone());
        return;
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
    if let Ok(value) = HeaderValue::from_bytes(&joined) {
        headers.insert(X_FORWARDED_FOR, value);
    }
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
    fn forwarded_for_is_joined_and_appended() {
        let d = Downstream::new("10.0.0.9:1234".parse().unwrap(), false);
        let mut h = HeaderMap::new();
        append_forwarded_for(&mut h, &d);
        assert_eq!(h[X_FORWARDED_FOR], "10.0.0.9");
        let mut h = HeaderMap::new();
        h.append(X_FORWARDED_FOR, "1.1.1.1".parse().unwrap());
        h.append(X_FORWARDED_FOR, "2.2.2.2, 3.3.3.3".parse().unwrap());
        append_forwarded_for(&mut h, &d);
        assert_eq!(h[X_FORWARDED_FOR], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.0.0.9");
        assert_eq!(h.get_all(X_FORWARDED_FOR).iter().count(), 1);
    }

    #[test]
    fn request_ids_are_uuids() {
        let id = new_request_id();
        assert!(uuid::Uuid::parse_str(id.to_str().unwrap()).is_ok());
        assert_ne!(id, new_request_id());
    }
}
