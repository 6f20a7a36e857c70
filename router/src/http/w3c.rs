//! W3C Trace Context (`tracing.enable_w3c`), as gorouter handles it: a valid incoming
//! `traceparent` keeps its trace id and flags with a new parent id (this hop); otherwise
//! a new trace starts from the request id. `tracestate` gets this router's entry first.

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// Longest `tracestate` kept (W3C: 512 is a minimum to support; gorouter drops > 2048).
const MAX_TRACESTATE: usize = 2048;

/// A parsed `traceparent`: `00-<trace id>-<parent id>-<flags>`, lowercase hex.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent<'a> {
    pub trace_id: &'a str,
    pub parent_id: &'a str,
    pub flags: &'a str,
}

/// Parses a `traceparent` value; `None` unless it is exactly 55 well-formed characters
/// with a non-zero trace id and parent id.
pub fn parse_traceparent(value: &[u8]) -> Option<TraceParent<'_>> {
    let text = std::str::from_utf8(value).ok()?;
    if text.len() != 55 {
        return None;
    }
    let mut parts = text.split('-');
    let (version, trace_id, parent_id, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| {
        s.len() == len
            && s.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let zero = |s: &str| s.bytes().all(|b| b == b'0');
    let valid = hex(version, 2)
        && version != "ff"
        && hex(trace_id, 32)
        && !zero(trace_id)
        && hex(parent_id, 16)
        && !zero(parent_id)
        && hex(flags, 2);
    valid.then_some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// gorouter derives the request id from a valid incoming trace id, so that logs and
/// traces share one id.
pub fn request_id_from_trace(headers: &HeaderMap) -> Option<HeaderValue> {
    let parent = parse_traceparent(headers.get(TRACEPARENT)?.as_bytes())?;
    let t = parent.trace_id;
    let id = format!(
        "{}-{}-{}-{}-{}",
        &t[..8],
        &t[8..12],
        &t[12..16],
        &t[16..20],
        &t[20..]
    );
    HeaderValue::from_str(&id).ok()
}

/// Rewrites `traceparent` and `tracestate` for this hop. `request_id` is the request's
/// UUID (hyphenated), the trace id of new traces; `tenant` prefixes the state entry.
pub fn rewrite(headers: &mut HeaderMap, request_id: &str, tenant: &str) {
    let span_id: String = uuid::Uuid::new_v4().simple().to_string()[..16].to_owned();
    let incoming = headers
        .get(TRACEPARENT)
        .and_then(|v| parse_traceparent(v.as_bytes()))
        .map(|p| (p.trace_id.to_owned(), p.flags.to_owned()));
    let (trace_id, flags) =
        incoming.unwrap_or_else(|| (request_id.replace('-', ""), "01".to_owned()));
    if let Ok(value) = HeaderValue::from_str(&format!("00-{trace_id}-{span_id}-{flags}")) {
        headers.insert(TRACEPARENT, value);
    }

    let key = if tenant.is_empty() {
        "gorouter".to_owned()
    } else {
        format!("{tenant}@gorouter")
    };
    let prior: Vec<String> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter(|v| v.len() <= MAX_TRACESTATE)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|entry| !entry.is_empty() && entry.split('=').next() != Some(key.as_str()))
        .map(str::to_owned)
        .collect();
    let mut state = format!("{key}={span_id}");
    for entry in prior {
        state.push(',');
        state.push_str(&entry);
    }
    headers.remove(TRACESTATE);
    if let Ok(value) = HeaderValue::from_str(&state) {
        headers.insert(TRACESTATE, value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    #[test]
    fn traceparent_is_parsed_strictly() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(p.trace_id, "0af7651916cd43dd8448eb211c80319c");
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
        ] {
            assert!(parse_traceparent(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn valid_trace_is_continued_with_a_new_parent() {
        let mut h = HeaderMap::new();
        h.insert(TRACEPARENT, HeaderValue::from_static(VALID));
        h.insert(
            TRACESTATE,
            HeaderValue::from_static("gorouter=1111111111111111,vendor=x"),
        );
        rewrite(&mut h, "a0000000-0000-4000-8000-000000000001", "");
        let tp = h[TRACEPARENT].to_str().unwrap();
        let parsed = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(parsed.trace_id, "0af7651916cd43dd8448eb211c80319c");
        assert_eq!(parsed.flags, "01");
        assert_ne!(parsed.parent_id, "b7ad6b7169203331");
        assert_eq!(
            h[TRACESTATE].to_str().unwrap(),
            format!("gorouter={},vendor=x", parsed.parent_id)
        );
    }

    #[test]
    fn missing_trace_starts_from_the_request_id() {
        let mut h = HeaderMap::new();
        rewrite(&mut h, "a0000000-0000-4000-8000-000000000001", "t1");
        let tp = h[TRACEPARENT].to_str().unwrap().to_owned();
        let parsed = parse_traceparent(tp.as_bytes()).unwrap();
        assert_eq!(parsed.trace_id, "a0000000000040008000000000000001");
        assert!(h[TRACESTATE].to_str().unwrap().starts_with("t1@gorouter="));
    }
}
