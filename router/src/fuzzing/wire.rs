//! A strict, independent reader of HTTP/1.1 byte streams (RFC 9112), used as the oracle
//! of the proxy target: whatever a client sends, every message the router writes to an
//! app or back to the client must parse here, with one unambiguous framing. It is
//! deliberately not hyper's parser, so that it can disagree with it.

/// One parsed message head.
#[derive(Debug)]
pub(super) struct Head {
    pub start_line: String,
    /// Lowercased names, raw values (OWS trimmed).
    pub headers: Vec<(String, Vec<u8>)>,
}

impl Head {
    pub fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
        self.headers
            .iter()
            .filter(move |(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }

    fn has_token(&self, name: &str, token: &str) -> bool {
        self.all(name)
            .flat_map(|v| v.split(|&b| b == b','))
            .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
    }
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Parses a head at the start of `buf`: `Ok(None)` if it is incomplete.
fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, String> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Ok(None);
    };
    let text = &buf[..end];
    // Split on CRLF only, so that a bare CR or LF anywhere is an error.
    let mut out = Vec::new();
    let mut rest = text;
    loop {
        match rest.windows(2).position(|w| w == b"\r\n") {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 2..];
            }
            None => {
                out.push(rest);
                break;
            }
        }
    }
    for line in &out {
        if line.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(format!(
                "bare CR, LF or NUL in {:?}",
                String::from_utf8_lossy(line)
            ));
        }
    }
    let (start, header_lines) = out.split_first().ok_or("empty head")?;
    let start_line = std::str::from_utf8(start)
        .map_err(|_| "start line is not UTF-8".to_owned())?
        .to_owned();
    let mut headers = Vec::new();
    for line in header_lines {
        if line.first().is_some_and(|b| *b == b' ' || *b == b'\t') {
            return Err("obs-fold line".to_owned());
        }
        let colon = line.iter().position(|&b| b == b':').ok_or_else(|| {
            format!(
                "header line without colon: {:?}",
                String::from_utf8_lossy(line)
            )
        })?;
        let name = &line[..colon];
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(format!(
                "bad header name {:?}",
                String::from_utf8_lossy(name)
            ));
        }
        let value = line[colon + 1..].trim_ascii();
        if value.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f) {
            return Err("control byte in a header value".to_owned());
        }
        headers.push((
            String::from_utf8_lossy(name).to_ascii_lowercase(),
            value.to_vec(),
        ));
    }
    Ok(Some((
        Head {
            start_line,
            headers,
        },
        end + 4,
    )))
}

/// The framing the headers declare: exactly one of none, one Content-Length value, or a
/// Transfer-Encoding ending in chunked; anything ambiguous is an error.
fn declared_framing(head: &Head) -> Result<Framing, String> {
    let te: Vec<&[u8]> = head.all("transfer-encoding").collect();
    let cl: Vec<&[u8]> = head.all("content-length").collect();
    if !te.is_empty() && !cl.is_empty() {
        return Err("both Transfer-Encoding and Content-Length".to_owned());
    }
    if !te.is_empty() {
        let last = te
            .iter()
            .flat_map(|v| v.split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .next_back()
            .unwrap_or_default();
        return if last.eq_ignore_ascii_case(b"chunked") {
            Ok(Framing::Chunked)
        } else {
            Ok(Framing::UntilClose)
        };
    }
    match cl.as_slice() {
        [] => Ok(Framing::None),
        [one] => {
            let text = std::str::from_utf8(one).unwrap_or_default();
            if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
                return Err(format!("bad Content-Length {text:?}"));
            }
            text.parse()
                .map(Framing::Length)
                .map_err(|_| format!("Content-Length out of range {text:?}"))
        }
        _ => Err(format!("{} Content-Length headers", cl.len())),
    }
}

/// Skips a chunked body at the start of `buf`: `Ok(None)` if it is incomplete.
fn chunked_len(buf: &[u8]) -> Result<Option<usize>, String> {
    let mut at = 0;
    loop {
        let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
            return Ok(None);
        };
        let line = &buf[at..at + eol];
        let size_text = line.split(|&b| b == b';').next().unwrap_or_default();
        if size_text.is_empty() || !size_text.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "bad chunk size line {:?}",
                String::from_utf8_lossy(line)
            ));
        }
        if line.iter().any(|&b| b == b'\r' || b == b'\n') {
            return Err("bare CR or LF in a chunk line".to_owned());
        }
        let size = usize::from_str_radix(std::str::from_utf8(size_text).unwrap_or("x"), 16)
            .map_err(|_| "chunk size overflows".to_owned())?;
        at += eol + 2;
        if size == 0 {
            // Trailer section: header lines, then an empty line.
            loop {
                let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") else {
                    return Ok(None);
                };
                if eol == 0 {
                    return Ok(Some(at + 2));
                }
                let line = &buf[at..at + eol];
                if !line.contains(&b':') || line.iter().any(|&b| b == b'\r' || b == b'\n') {
                    return Err("bad trailer line".to_owned());
                }
                at += eol + 2;
            }
        }
        if buf.len() < at + size + 2 {
            return Ok(None);
        }
        if &buf[at + size..at + size + 2] != b"\r\n" {
            return Err("chunk data not followed by CRLF".to_owned());
        }
        at += size + 2;
    }
}

/// Length of the body framed by `framing` at the start of `buf`; `None` if the stream
/// ends inside it (allowed only as the last thing on a connection).
fn body_len(framing: Framing, buf: &[u8]) -> Result<Option<usize>, String> {
    match framing {
        Framing::None => Ok(Some(0)),
        Framing::Length(n) => Ok(usize::try_from(n).ok().filter(|n| *n <= buf.len())),
        Framing::Chunked => chunked_len(buf),
        Framing::UntilClose => Ok(Some(buf.len())),
    }
}

/// Checks what the router wrote on one upstream connection: HTTP/1.1 requests, each with
/// one Host, the router's forwarding headers, no hop-by-hop header but an upgrade's, and
/// an unambiguous framing. Stops at an upgrade the app accepted (`upgraded`).
pub(super) fn check_upstream_requests(
    buf: &[u8],
    upgraded: bool,
    client_ip: &str,
) -> Result<(), String> {
    let mut at = 0;
    while at < buf.len() {
        let Some((head, len)) = parse_head(&buf[at..])? else {
            return Ok(()); // Cut off by a close: the app never saw a whole request.
        };
        let mut parts = head.start_line.split(' ');
        let (method, target, version) = (parts.next(), parts.next(), parts.next());
        let method = method.filter(|m| !m.is_empty() && m.bytes().all(is_tchar));
        let target = target.filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_graphic()));
        if method.is_none()
            || target.is_none()
            || version != Some("HTTP/1.1")
            || parts.next().is_some()
        {
            return Err(format!("bad request line {:?}", head.start_line));
        }
        let hosts = head.all("host").count();
        if hosts != 1 {
            return Err(format!("{hosts} Host headers upstream"));
        }
        let xff: Vec<&[u8]> = head.all("x-forwarded-for").collect();
        if xff.len() != 1 || !xff[0].ends_with(client_ip.as_bytes()) {
            return Err(format!("X-Forwarded-For upstream: {xff:?}"));
        }
        if head.all("x-vcap-request-id").count() != 1 {
            return Err("not one X-Vcap-Request-Id upstream".to_owned());
        }
        let upgrade = head.has_token("connection", "upgrade") && head.all("upgrade").count() > 0;
        for hop in [
            "keep-alive",
            "proxy-connection",
            "trailer",
            "proxy-authorization",
        ] {
            if head.all(hop).count() > 0 {
                return Err(format!("hop-by-hop {hop} sent upstream"));
            }
        }
        if !upgrade && (head.all("connection").count() > 0 || head.all("upgrade").count() > 0) {
            return Err("Connection or Upgrade sent upstream without an upgrade".to_owned());
        }
        let framing = declared_framing(&head)?;
        if framing == Framing::UntilClose {
            return Err("a request body delimited by close".to_owned());
        }
        at += len;
        if upgrade && upgraded {
            return Ok(());
        }
        match body_len(framing, &buf[at..])? {
            Some(n) => at += n,
            None => return Ok(()),
        }
    }
    Ok(())
}

/// Checks what the router wrote back to the client on HTTP/1: a sequence of responses,
/// each with an unambiguous framing, until a 101 or the end. A response to HEAD carries
/// a Content-Length but no body: if skipping the body lands on garbage, the next head is
/// looked for right after the previous one.
pub(super) fn check_downstream_responses(buf: &[u8]) -> Result<(), String> {
    let mut at = 0;
    while at < buf.len() {
        let Some((head, len)) = parse_head(&buf[at..])? else {
            return Err(format!(
                "incomplete response head at the end: {:?}",
                String::from_utf8_lossy(&buf[at..])
            ));
        };
        let status = parse_status_line(&head.start_line)?;
        at += len;
        if status == 101 {
            return Ok(());
        }
        if (100..200).contains(&status) {
            if head.all("content-length").count() + head.all("transfer-encoding").count() > 0 {
                return Err(format!("framing headers on a {status}"));
            }
            continue;
        }
        let framing = declared_framing(&head)?;
        if matches!(status, 204 | 304) {
            if framing == Framing::Chunked {
                return Err(format!("{status} with Transfer-Encoding"));
            }
            if status == 204 && framing != Framing::None {
                return Err("204 with Content-Length (RFC 9110 8.6)".to_owned());
            }
            continue;
        }
        // Neither length nor chunked: the body runs to the close (RFC 9112 6.3).
        let framing = match framing {
            Framing::None => Framing::UntilClose,
            other => other,
        };
        match body_len(framing, &buf[at..])? {
            Some(n) => {
                let next = at + n;
                let next_is_head = next >= buf.len() || buf[next..].starts_with(b"HTTP/1.");
                // A HEAD answer: Content-Length announced, no body sent.
                at = if next_is_head || !buf[at..].starts_with(b"HTTP/1.") {
                    next
                } else {
                    at
                };
            }
            // The router closes a response it cannot finish (endpoint failed mid-body).
            None => return Ok(()),
        }
    }
    Ok(())
}

fn parse_status_line(line: &str) -> Result<u16, String> {
    let bad = || format!("bad status line {line:?}");
    let rest = line
        .strip_prefix("HTTP/1.1 ")
        .or_else(|| line.strip_prefix("HTTP/1.0 "))
        .ok_or_else(bad)?;
    let code = rest.get(..3).ok_or_else(bad)?;
    if !code.bytes().all(|b| b.is_ascii_digit()) || !(rest.len() == 3 || rest.as_bytes()[3] == b' ')
    {
        return Err(bad());
    }
    code.parse().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn well_framed_streams_pass_and_ambiguous_ones_fail() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nhiHTTP/1.1 200 OK\r\n\
                   transfer-encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n";
        assert_eq!(check_downstream_responses(ok), Ok(()));
        let head_then_next = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nHTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(check_downstream_responses(head_then_next), Ok(()));
        for bad in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\nb: c\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nx: a\r\n b\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nz\r\n",
        ] {
            assert!(
                check_downstream_responses(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let req = b"GET / HTTP/1.1\r\nhost: a\r\nx-forwarded-for: 1.2.3.4\r\nx-vcap-request-id: 1\r\n\r\n";
        assert_eq!(check_upstream_requests(req, false, "1.2.3.4"), Ok(()));
        let two_hosts = b"GET / HTTP/1.1\r\nhost: a\r\nhost: b\r\nx-forwarded-for: 1.2.3.4\r\nx-vcap-request-id: 1\r\n\r\n";
        assert!(check_upstream_requests(two_hosts, false, "1.2.3.4").is_err());
    }
}
