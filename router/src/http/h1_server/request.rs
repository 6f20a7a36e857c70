//! Request heads off the wire: httparse into `http::request::Parts`, with header values
//! and the target kept as slices of the read buffer (no copy), and the body framing
//! decided by RFC 9112 section 6, refusing the ambiguous cases request smuggling needs.

use bytes::BytesMut;
use http::header::{CONTENT_LENGTH, EXPECT, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Request, Uri, Version};

use crate::upstream::http1::{Framing, MessageHeaders};

/// A parsed request head and what it says about the connection.
#[derive(Debug)]
pub struct RequestHead {
    pub parts: http::request::Parts,
    pub framing: Framing,
    /// The client allows another request on this connection afterwards.
    pub keep_alive: bool,
    /// `Expect: 100-continue`: send 100 before reading the body.
    pub expect_continue: bool,
}

/// Why a head could not be accepted; each maps to a response and a closed connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("too many request headers")]
    TooManyHeaders,
    #[error("unsupported HTTP version")]
    Version,
    #[error("unsupported transfer coding")]
    TransferCoding,
    #[error("unsupported expectation")]
    Expectation,
}

impl HeadError {
    /// The status answered before closing.
    pub fn status(self) -> u16 {
        match self {
            HeadError::Malformed(_) => 400,
            HeadError::TooManyHeaders => 431,
            HeadError::Version => 505,
            HeadError::TransferCoding => 501,
            HeadError::Expectation => 417,
        }
    }
}

/// Where a header's name and value sit in the head: `[name_start, name_len,
/// value_start, value_len]`. Reused across requests (no per-request allocation).
pub type FieldOffsets = Vec<[usize; 4]>;

/// Headers the proxy adds to every request; room is made for them up front.
const ADDED_HEADERS: usize = 8;

/// Parses a request head from the front of `buf`, consuming it. `Ok(None)`: incomplete.
/// At most `N` headers (more: 431).
pub fn parse<const N: usize>(
    buf: &mut BytesMut,
    fields: &mut FieldOffsets,
) -> Result<Option<RequestHead>, HeadError> {
    // Uninitialised slots: zeroing N headers for every request would cost more than
    // parsing a small head.
    let mut slots = [const { std::mem::MaybeUninit::<httparse::Header<'_>>::uninit() }; N];
    let mut parsed = httparse::Request::new(&mut []);
    let len = match parsed.parse_with_uninit_headers(buf, &mut slots) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooManyHeaders),
        Err(httparse::Error::Version) => return Err(HeadError::Version),
        Err(_) => return Err(HeadError::Malformed("invalid request head")),
    };
    let method = Method::from_bytes(parsed.method.unwrap_or_default().as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let version = match parsed.version {
        Some(0) => Version::HTTP_10,
        Some(1) => Version::HTTP_11,
        _ => return Err(HeadError::Version),
    };
    // Remember where things are, then split the head off the buffer so that header
    // values and the target can share its memory.
    let base = buf.as_ptr() as usize;
    let offset = |s: &[u8]| (s.as_ptr() as usize - base, s.len());
    let target = offset(parsed.path.unwrap_or_default().as_bytes());
    fields.clear();
    fields.extend(parsed.headers.iter().map(|h| {
        let (name, name_len) = offset(h.name.as_bytes());
        let (value, value_len) = offset(h.value);
        [name, name_len, value, value_len]
    }));
    let head = buf.split_to(len).freeze();

    let uri = Uri::from_maybe_shared(head.slice(target.0..target.0 + target.1))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let mut headers = crate::http::headers::take_map(fields.len() + ADDED_HEADERS);
    let mut seen = MessageHeaders::default();
    for &[name, name_len, value, value_len] in fields.iter() {
        let name = HeaderName::from_bytes(&head[name..name + name_len])
            .map_err(|_| HeadError::Malformed("invalid header name"))?;
        let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
            .map_err(|_| HeadError::Malformed("invalid header value"))?;
        seen.note(&name);
        headers.append(name, value);
    }

    let framing = if seen.transfer_encoding || seen.content_length {
        request_framing(version, &headers)?
    } else {
        Framing::Empty
    };
    let keep_alive = seen.keep_alive(version, &headers);
    let expect = if seen.expect {
        headers.get(EXPECT)
    } else {
        None
    };
    let expect_continue = match expect {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"100-continue") => {
            version == Version::HTTP_11
        }
        Some(_) => return Err(HeadError::Expectation),
    };
    let mut parts = Request::new(()).into_parts().0;
    parts.method = method;
    parts.uri = uri;
    parts.version = version;
    parts.headers = headers;
    Ok(Some(RequestHead {
        parts,
        framing,
        keep_alive,
        expect_continue,
    }))
}

/// RFC 9112 6.1-6.3 for requests, strictly: Transfer-Encoding and Content-Length
/// together, Transfer-Encoding in HTTP/1.0, a coding other than a final `chunked`, and
/// Content-Length values that disagree or do not parse are all refused.
fn request_framing(version: Version, headers: &HeaderMap) -> Result<Framing, HeadError> {
    if headers.contains_key(TRANSFER_ENCODING) {
        if headers.contains_key(CONTENT_LENGTH) {
            return Err(HeadError::Malformed(
                "both Transfer-Encoding and Content-Length",
            ));
        }
        if version == Version::HTTP_10 {
            return Err(HeadError::Malformed("Transfer-Encoding in HTTP/1.0"));
        }
        let codings: Vec<&[u8]> = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .collect();
        // RFC 9112 6.1: chunked must come last, or the message has no end (400); other
        // codings are ones we do not decode (501).
        return match codings.as_slice() {
            [only] if only.eq_ignore_ascii_case(b"chunked") => Ok(Framing::Chunked),
            [.., last] if last.eq_ignore_ascii_case(b"chunked") => Err(HeadError::TransferCoding),
            _ => Err(HeadError::Malformed(
                "Transfer-Encoding does not end in chunked",
            )),
        };
    }
    let mut length: Option<u64> = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            let n = (!part.is_empty() && part.len() <= 19 && part.iter().all(u8::is_ascii_digit))
                .then(|| std::str::from_utf8(part).ok()?.parse::<u64>().ok())
                .flatten()
                .ok_or(HeadError::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(HeadError::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        None | Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
    })
}

/// The HTTP/2 connection preface: a client speaking HTTP/2 with prior knowledge.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Whether `buf` is (so far) the start of the HTTP/2 preface.
pub fn may_be_h2_preface(buf: &[u8]) -> bool {
    let n = buf.len().min(H2_PREFACE.len());
    buf[..n] == H2_PREFACE[..n]
}

/// The bytes of `head`, for tests and the fuzzer.
pub fn parse_bytes(bytes: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    parse::<100>(&mut BytesMut::from(bytes), &mut Vec::new())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<RequestHead, HeadError> {
        parse_bytes(text.as_bytes()).map(|h| h.expect("complete"))
    }

    #[test]
    fn a_request_parses_zero_copy_with_its_framing() {
        let h = head("POST /a/%2F?b=1 HTTP/1.1\r\nHost: X.example\r\nContent-Length: 5\r\n\r\n")
            .unwrap();
        assert_eq!(h.parts.method, Method::POST);
        assert_eq!(h.parts.uri, "/a/%2F?b=1");
        assert_eq!(h.parts.headers["host"], "X.example");
        assert_eq!(h.framing, Framing::Length(5));
        assert!(h.keep_alive);
        assert!(parse_bytes(b"GET / HTTP/1.1\r\nHost: a").unwrap().is_none());
    }

    #[test]
    fn keep_alive_and_expect_follow_the_version() {
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(
            head("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            !head("GET / HTTP/1.1\r\nConnection: close\r\n\r\n")
                .unwrap()
                .keep_alive
        );
        assert!(
            head("PUT / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
                .unwrap()
                .expect_continue
        );
        assert_eq!(
            head("PUT / HTTP/1.1\r\nExpect: tea\r\n\r\n").unwrap_err(),
            HeadError::Expectation
        );
    }

    #[test]
    fn smuggling_shapes_are_refused() {
        let cases = [
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
                501,
            ),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
            ),
            (
                "POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                400,
            ),
            ("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n", 400),
            ("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n", 400),
            ("GET / HTTP/1.1\r\nX-A: 1\r\n folded\r\n\r\n", 400),
            ("GET / HTTP/2.0\r\n\r\n", 505),
            ("G@T / HTTP/1.1\r\n\r\n", 400),
        ];
        for (text, status) in cases {
            let err = head(text).unwrap_err();
            assert_eq!(err.status(), status, "{text:?}: {err}");
        }
        assert_eq!(
            head("POST / HTTP/1.1\r\nContent-Length: 7, 7\r\n\r\n")
                .unwrap()
                .framing,
            Framing::Length(7)
        );
        assert_eq!(
            head("POST / HTTP/1.1\r\nTransfer-Encoding: Chunked\r\n\r\n")
                .unwrap()
                .framing,
            Framing::Chunked
        );
    }

    #[test]
    fn the_h2_preface_is_recognised_early() {
        assert!(may_be_h2_preface(b"PRI * HT"));
        assert!(may_be_h2_preface(H2_PREFACE));
        assert!(!may_be_h2_preface(b"GET / HTTP/1.1"));
    }
}
