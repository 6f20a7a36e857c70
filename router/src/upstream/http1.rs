//! HTTP/1.1 to endpoints, on httparse, driven inside the downstream connection's task:
//! no connection task, no channels, no wake-ups between tasks. The request head is
//! written in one buffer (one write for a bodiless request); the response head is parsed
//! from the read buffer; body bytes are handed on as slices of that buffer.
//!
//! Framing follows RFC 9112 section 6: no body for HEAD, 1xx, 204 and 304; chunked when
//! Transfer-Encoding ends in chunked (Content-Length is then ignored and the connection
//! not reused); Content-Length otherwise (differing values are an error); else the body
//! runs to the end of the connection. A connection is reused only when the exchange ended
//! cleanly on a message boundary and both sides allow keep-alive.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::{Buf, Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, HeaderName, HeaderValue, TRANSFER_ENCODING};
use http::{HeaderMap, Method, Response, StatusCode, Version};
use tokio::io::{AsyncWrite, AsyncWriteExt};

use super::connect::UpstreamIo;

/// Most response headers accepted from an endpoint.
const MAX_HEADERS: usize = 128;
/// Largest response head accepted from an endpoint.
const MAX_HEAD_BYTES: usize = 256 * 1024;
/// Longest chunk-size line (with extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
thread_local! {
    /// Scratch space for header positions while a head is parsed.
    static FIELDS: std::cell::RefCell<Vec<[usize; 4]>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Read granularity: large enough for a small response in one read.
const READ_CHUNK: usize = 16 * 1024;

/// Why an exchange on an HTTP/1 connection failed.
#[derive(Debug, thiserror::Error)]
pub enum Http1Error {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("endpoint closed the connection before answering")]
    ClosedBeforeResponse,
    #[error("malformed response: {0}")]
    Malformed(&'static str),
    #[error("response head larger than {MAX_HEAD_BYTES} bytes")]
    HeadTooLarge,
    #[error("unexpected end of the response body")]
    Truncated,
}

/// An HTTP/1.1 connection to an endpoint.
pub struct Conn {
    pub(super) io: UpstreamIo,
    read_buf: BytesMut,
    /// The connection carried an exchange before (a stale keep-alive may close under us).
    pub(super) reused: bool,
    /// The request body was not sent to its end (the endpoint answered early): the
    /// connection is out of step and must not be reused.
    cut_short: bool,
}

impl Conn {
    /// Wraps a freshly dialed connection.
    pub fn new(io: UpstreamIo) -> Conn {
        Conn {
            io,
            read_buf: BytesMut::with_capacity(READ_CHUNK),
            reused: false,
            cut_short: false,
        }
    }

    /// Whether the endpoint closed (or wrote to) an idle connection: checked without
    /// blocking before reuse, since no task watches idle connections.
    pub fn is_closed_while_idle(&self) -> bool {
        let tcp = match &self.io {
            tokio_util::either::Either::Left(tcp) => tcp,
            tokio_util::either::Either::Right(tls) => tls.get_ref().0,
        };
        let mut probe = [0u8; 1];
        // Ok(0): closed; Ok(_): bytes nobody asked for; WouldBlock: alive and quiet.
        !matches!(tcp.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
    }

    /// Writes `bytes` (a request head, maybe with a body) and flushes.
    pub async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.io.write_all(bytes).await?;
        self.io.flush().await
    }

    /// Writes one body chunk in the framing the head announced, watching for the
    /// endpoint's answer meanwhile: returns `true` when a final answer (or the end of the
    /// connection) arrived first, and the rest is then not sent. An endpoint that answers
    /// early and stops reading must not leave the upload blocked on a full socket.
    pub async fn write_body(
        &mut self,
        data: &[u8],
        chunked: bool,
        method: &Method,
    ) -> Result<bool, Http1Error> {
        if !chunked {
            return self.write_racing(data, method).await;
        }
        if data.is_empty() {
            return Ok(false);
        }
        let size = format!("{:x}\r\n", data.len());
        for part in [size.as_bytes(), data, b"\r\n"] {
            if self.write_racing(part, method).await? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    async fn write_racing(&mut self, mut buf: &[u8], method: &Method) -> Result<bool, Http1Error> {
        enum Race {
            Read(usize),
            Wrote(usize),
        }
        while !buf.is_empty() {
            let step = std::future::poll_fn(|cx| {
                if let Poll::Ready(read) = self.poll_fill(cx) {
                    return Poll::Ready(read.map(Race::Read));
                }
                Pin::new(&mut self.io)
                    .poll_write(cx, buf)
                    .map(|w| w.map(Race::Wrote))
            })
            .await?;
            match step {
                Race::Wrote(0) => return Err(io::Error::from(io::ErrorKind::WriteZero).into()),
                Race::Wrote(n) => buf = &buf[n..],
                Race::Read(0) => return Ok(true),
                Race::Read(_) => {
                    if self.answer_is_final(method)? {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }

    /// Ends a chunked body (with trailers, if any) and flushes.
    pub async fn finish_body(
        &mut self,
        chunked: bool,
        trailers: Option<&HeaderMap>,
    ) -> io::Result<()> {
        if chunked {
            let mut end = Vec::with_capacity(64);
            end.extend_from_slice(b"0\r\n");
            if let Some(trailers) = trailers {
                write_headers(&mut end, trailers);
            }
            end.extend_from_slice(b"\r\n");
            self.io.write_all(&end).await?;
        }
        self.io.flush().await
    }

    /// Reads one more chunk of bytes into the buffer; `Ok(0)` at end of stream.
    async fn fill(&mut self) -> io::Result<usize> {
        std::future::poll_fn(|cx| self.poll_fill(cx)).await
    }

    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.read_buf.capacity() - self.read_buf.len() < 1024 {
            self.read_buf.reserve(READ_CHUNK);
        }
        // Reads straight into the buffer's spare capacity: body bytes are later split off
        // this buffer and handed downstream without another copy.
        tokio_util::io::poll_read_buf(Pin::new(&mut self.io), cx, &mut self.read_buf)
    }

    /// Reads the response head. 1xx interim responses other than 101 are skipped (the
    /// downstream side answers `Expect: 100-continue` itself).
    pub async fn read_response_head(
        &mut self,
        method: &Method,
    ) -> Result<ResponseHead, Http1Error> {
        let mut got_bytes = false;
        loop {
            if !self.read_buf.is_empty() {
                got_bytes = true;
                if let Some(head) = parse_response_head(&mut self.read_buf, method)? {
                    let informational = head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS;
                    if informational {
                        continue;
                    }
                    return Ok(head);
                }
                if self.read_buf.len() > MAX_HEAD_BYTES {
                    return Err(Http1Error::HeadTooLarge);
                }
            }
            let filled = match self.fill().await {
                Ok(n) => n,
                // A reset before any byte of an answer is a close before the response.
                Err(e) if !got_bytes && is_disconnect(&e) => 0,
                Err(e) => return Err(e.into()),
            };
            if filled == 0 {
                return Err(if got_bytes {
                    Http1Error::Malformed("connection closed inside the response head")
                } else {
                    Http1Error::ClosedBeforeResponse
                });
            }
        }
    }

    /// Whether the exchange just read left the connection on a message boundary: the
    /// whole request went out and nothing arrived beyond the response.
    pub fn is_reusable(&self) -> bool {
        self.read_buf.is_empty() && !self.cut_short
    }

    /// Records that the request body was not sent to its end.
    pub fn mark_cut_short(&mut self) {
        self.cut_short = true;
    }

    /// Whether the request body was cut short.
    pub fn is_cut_short(&self) -> bool {
        self.cut_short
    }

    /// Waits until the endpoint sends something or closes; what it sent stays buffered.
    /// Returns whether that is a final answer (or the end of the connection), as opposed
    /// to interim 1xx responses, which are consumed here.
    pub async fn wait_for_answer(&mut self, method: &Method) -> Result<bool, Http1Error> {
        if self.fill().await? == 0 {
            return Ok(true);
        }
        self.answer_is_final(method)
    }

    /// Looks at what the endpoint sent so far: consumes interim 1xx responses, and says
    /// whether a final answer has begun.
    fn answer_is_final(&mut self, method: &Method) -> Result<bool, Http1Error> {
        loop {
            let mut probe = self.read_buf.clone();
            match parse_response_head(&mut probe, method)? {
                // Not a whole head yet: keep sending; the rest will come.
                None => return Ok(false),
                Some(head)
                    if head.status.is_informational()
                        && head.status != StatusCode::SWITCHING_PROTOCOLS =>
                {
                    let consumed = self.read_buf.len() - probe.len();
                    self.read_buf.advance(consumed);
                    if self.read_buf.is_empty() {
                        return Ok(false);
                    }
                }
                Some(_) => return Ok(true),
            }
        }
    }

    /// Hands the connection over (after a 101): the stream and the bytes read past the head.
    pub fn into_upgraded(self) -> (UpstreamIo, Bytes) {
        (self.io, self.read_buf.freeze())
    }
}

fn is_disconnect(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe | io::ErrorKind::UnexpectedEof
    )
}

/// Serialises a request head for an endpoint, choosing the body framing from the body:
/// one Content-Length when its size is known (a client's duplicate or listed values
/// collapse to one, RFC 9110 8.6; an announced 0 is kept), else chunked. Returns the head
/// and whether the body is chunked.
pub fn request_head(
    parts: &http::request::Parts,
    body: &impl http_body::Body,
    added: &crate::http::headers::AddedHeaders,
    endpoint: &crate::route_table::Endpoint,
) -> (Vec<u8>, bool) {
    let mut head = Vec::with_capacity(512);
    head.extend_from_slice(parts.method.as_str().as_bytes());
    head.push(b' ');
    let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    head.extend_from_slice(target.as_bytes());
    head.extend_from_slice(b" HTTP/1.1\r\n");
    let exact = body.size_hint().exact();
    let chunked = !body.is_end_stream() && exact.is_none();
    let announced = parts.headers.contains_key(CONTENT_LENGTH);
    for (name, value) in &parts.headers {
        if name != CONTENT_LENGTH {
            write_header(&mut head, name.as_str().as_bytes(), value.as_bytes());
        }
    }
    added.write_http1(endpoint, &mut head);
    if chunked {
        head.extend_from_slice(b"transfer-encoding: chunked\r\n");
    } else if let Some(len) = exact.filter(|&n| n > 0 || announced) {
        write_header(
            &mut head,
            b"content-length",
            itoa::Buffer::new().format(len).as_bytes(),
        );
    }
    head.extend_from_slice(b"\r\n");
    (head, chunked)
}

/// The parsed head of a response.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// Both sides allow the connection to carry another exchange afterwards.
    pub keep_alive: bool,
}

impl ResponseHead {
    /// An `http::Response` with this head and `body`.
    pub fn into_response<B>(self, body: B) -> Response<B> {
        let mut resp = Response::new(body);
        *resp.status_mut() = self.status;
        *resp.version_mut() = self.version;
        *resp.headers_mut() = self.headers;
        resp
    }
}

/// How the response body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Empty,
    Length(u64),
    Chunked,
    UntilClose,
}

fn parse_response_head(
    buf: &mut BytesMut,
    method: &Method,
) -> Result<Option<ResponseHead>, Http1Error> {
    // Most responses carry a few headers: parse with 16 slots (cheap to zero), and only
    // on overflow again with the full MAX_HEADERS.
    let mut few = [httparse::EMPTY_HEADER; 16];
    let mut many;
    let mut parsed = httparse::Response::new(&mut few);
    let mut result = parsed.parse(buf);
    if let Err(httparse::Error::TooManyHeaders) = result {
        many = [httparse::EMPTY_HEADER; MAX_HEADERS];
        parsed = httparse::Response::new(&mut many);
        result = parsed.parse(buf);
    }
    let len = match result {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(Http1Error::Malformed("too many response headers"));
        }
        Err(_) => return Err(Http1Error::Malformed("invalid response head")),
    };
    let status = parsed
        .code
        .and_then(|c| StatusCode::from_u16(c).ok())
        .ok_or(Http1Error::Malformed("invalid status code"))?;
    let version = if parsed.version == Some(0) {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    // Header values stay slices of the head (no copy per value): note where they are,
    // split the head off, then build the map.
    let base = buf.as_ptr() as usize;
    FIELDS.with_borrow_mut(|fields| {
        fields.clear();
        fields.extend(parsed.headers.iter().map(|h| {
            [
                h.name.as_ptr() as usize - base,
                h.name.len(),
                h.value.as_ptr() as usize - base,
                h.value.len(),
            ]
        }));
    });
    let head = buf.split_to(len).freeze();
    let mut seen = MessageHeaders::default();
    let mut headers = FIELDS.with_borrow(|fields| {
        // Room for what the proxy adds: the request id, a sticky cookie.
        let mut headers = crate::http::headers::take_map(fields.len() + 2);
        for &[name, name_len, value, value_len] in fields.iter() {
            let name = HeaderName::from_bytes(&head[name..name + name_len])
                .map_err(|_| Http1Error::Malformed("invalid header name"))?;
            let value = HeaderValue::from_maybe_shared(head.slice(value..value + value_len))
                .map_err(|_| Http1Error::Malformed("invalid header value"))?;
            seen.note(&name);
            headers.append(name, value);
        }
        Ok::<_, Http1Error>(headers)
    })?;
    let framing = response_framing(status, method, &headers, seen)?;
    let mut keep_alive = seen.keep_alive(version, &headers);
    // A response with both framings is ambiguous: read it by Transfer-Encoding, then
    // close, so whatever the other reading would have been cannot desynchronise us.
    if framing == Framing::UntilClose || (seen.transfer_encoding && seen.content_length) {
        keep_alive = false;
    }
    // The client sees the framing we read by, and no other (RFC 9112 6.3: a proxy removes
    // a Content-Length that Transfer-Encoding overrides).
    match framing {
        Framing::Chunked | Framing::UntilClose => {
            if seen.content_length {
                headers.remove(CONTENT_LENGTH);
            }
        }
        // One length, as the app wrote it, passes as is; repeats or odd spellings
        // ("007", "5, 5") are replaced by the one length we read by.
        Framing::Length(_) if is_canonical_length(&headers) => {}
        Framing::Length(n) => {
            headers.insert(CONTENT_LENGTH, crate::http::headers::decimal_value(n));
        }
        Framing::Empty => {}
    }
    Ok(Some(ResponseHead {
        status,
        version,
        headers,
        framing,
        keep_alive,
    }))
}

fn response_framing(
    status: StatusCode,
    method: &Method,
    headers: &HeaderMap,
    seen: MessageHeaders,
) -> Result<Framing, Http1Error> {
    if method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED
    {
        return Ok(Framing::Empty);
    }
    if !seen.transfer_encoding && !seen.content_length {
        return Ok(Framing::UntilClose);
    }
    if seen.transfer_encoding {
        let last = headers
            .get_all(TRANSFER_ENCODING)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b','))
            .map(<[u8]>::trim_ascii)
            .rfind(|t| !t.is_empty());
        return Ok(match last {
            Some(t) if t.eq_ignore_ascii_case(b"chunked") => Framing::Chunked,
            _ => Framing::UntilClose,
        });
    }
    let mut length = None;
    for value in headers.get_all(CONTENT_LENGTH) {
        for part in value.as_bytes().split(|&b| b == b',') {
            let part = part.trim_ascii();
            if part.is_empty() || !part.iter().all(u8::is_ascii_digit) || part.len() > 19 {
                return Err(Http1Error::Malformed("invalid Content-Length"));
            }
            let n: u64 = std::str::from_utf8(part)
                .ok()
                .and_then(|s| s.parse().ok())
                .ok_or(Http1Error::Malformed("invalid Content-Length"))?;
            if length.is_some_and(|l| l != n) {
                return Err(Http1Error::Malformed("conflicting Content-Length values"));
            }
            length = Some(n);
        }
    }
    Ok(match length {
        Some(0) => Framing::Empty,
        Some(n) => Framing::Length(n),
        None => Framing::UntilClose,
    })
}

/// Which of the headers that frame a message or steer its connection a head has,
/// noted as the header map is built: most heads have few of them, and the checks below
/// then skip the map lookups (each hashes a name).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct MessageHeaders {
    pub transfer_encoding: bool,
    pub content_length: bool,
    pub connection: bool,
    pub expect: bool,
}

impl MessageHeaders {
    pub fn note(&mut self, name: &HeaderName) {
        if name == TRANSFER_ENCODING {
            self.transfer_encoding = true;
        } else if name == CONTENT_LENGTH {
            self.content_length = true;
        } else if name == CONNECTION {
            self.connection = true;
        } else if name == http::header::EXPECT {
            self.expect = true;
        }
    }

    /// Whether the connection persists after this message, by its version and
    /// `Connection` header (RFC 9112 9.3), requests and responses alike.
    pub fn keep_alive(&self, version: Version, headers: &HeaderMap) -> bool {
        match version {
            Version::HTTP_10 => self.connection && has_token(headers, CONNECTION, b"keep-alive"),
            _ => !(self.connection && has_token(headers, CONNECTION, b"close")),
        }
    }
}

/// Exactly one Content-Length, in plain decimal without leading zeros.
fn is_canonical_length(headers: &HeaderMap) -> bool {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    match (values.next(), values.next()) {
        (Some(value), None) => {
            let bytes = value.as_bytes();
            !bytes.is_empty()
                && bytes.iter().all(u8::is_ascii_digit)
                && (bytes.len() == 1 || bytes[0] != b'0')
        }
        _ => false,
    }
}

/// Whether a `name` header lists `token` (case-insensitive, comma-separated).
fn has_token(headers: &HeaderMap, name: HeaderName, token: &[u8]) -> bool {
    headers
        .get_all(name)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// Appends `name: value\r\n` for every header.
pub fn write_headers(out: &mut Vec<u8>, headers: &HeaderMap) {
    for (name, value) in headers {
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
}

/// Appends one `name: value\r\n` line.
pub fn write_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Reads a response body off a connection, frame by frame.
#[derive(Debug)]
pub struct BodyReader {
    framing: Framing,
    /// Bytes left in the current Content-Length body or chunk.
    remaining: u64,
    chunk: ChunkState,
    done: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Data,
    DataEnd,
    Trailers,
}

/// One step of a body.
pub enum BodyEvent {
    Data(Bytes),
    Trailers(HeaderMap),
    End,
}

impl BodyReader {
    /// A reader for a body with `framing`.
    pub fn new(framing: Framing) -> BodyReader {
        BodyReader {
            framing,
            remaining: match framing {
                Framing::Length(n) => n,
                _ => 0,
            },
            chunk: ChunkState::Size,
            done: framing == Framing::Empty,
        }
    }

    /// Whether the body has been read to its end.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The exact size, when known.
    pub fn exact_len(&self) -> Option<u64> {
        match self.framing {
            Framing::Empty => Some(0),
            Framing::Length(_) => Some(self.remaining),
            _ => None,
        }
    }

    /// Polls the next body event from `conn`.
    pub fn poll_next(
        &mut self,
        conn: &mut Conn,
        cx: &mut Context<'_>,
    ) -> Poll<Result<BodyEvent, Http1Error>> {
        loop {
            if self.done {
                return Poll::Ready(Ok(BodyEvent::End));
            }
            if let Some(event) = self.step(&mut conn.read_buf)? {
                return Poll::Ready(Ok(event));
            }
            let n = ready!(conn.poll_fill(cx))?;
            if n == 0 {
                if self.framing == Framing::UntilClose {
                    self.done = true;
                    return Poll::Ready(Ok(BodyEvent::End));
                }
                return Poll::Ready(Err(Http1Error::Truncated));
            }
        }
    }

    /// Consumes what it can from `buf`: an event, or `None` when more bytes are needed.
    pub fn step(&mut self, buf: &mut BytesMut) -> Result<Option<BodyEvent>, Http1Error> {
        match self.framing {
            Framing::Empty => {
                self.done = true;
                Ok(Some(BodyEvent::End))
            }
            Framing::UntilClose => {
                Ok((!buf.is_empty()).then(|| BodyEvent::Data(buf.split().freeze())))
            }
            Framing::Length(_) => {
                if buf.is_empty() {
                    return Ok(None);
                }
                let take = (buf.len() as u64).min(self.remaining) as usize;
                self.remaining -= take as u64;
                if self.remaining == 0 {
                    self.done = true;
                }
                Ok(Some(BodyEvent::Data(buf.split_to(take).freeze())))
            }
            Framing::Chunked => self.step_chunked(buf),
        }
    }

    fn step_chunked(&mut self, buf: &mut BytesMut) -> Result<Option<BodyEvent>, Http1Error> {
        loop {
            match self.chunk {
                ChunkState::Size => {
                    let Some(line_end) = find_crlf(buf) else {
                        if buf.len() > MAX_CHUNK_LINE {
                            return Err(Http1Error::Malformed("chunk size line too long"));
                        }
                        return Ok(None);
                    };
                    let size = parse_chunk_size(&buf[..line_end])?;
                    buf.advance(line_end + 2);
                    if size == 0 {
                        self.chunk = ChunkState::Trailers;
                    } else {
                        self.remaining = size;
                        self.chunk = ChunkState::Data;
                    }
                }
                ChunkState::Data => {
                    if buf.is_empty() {
                        return Ok(None);
                    }
                    let take = (buf.len() as u64).min(self.remaining) as usize;
                    self.remaining -= take as u64;
                    if self.remaining == 0 {
                        self.chunk = ChunkState::DataEnd;
                    }
                    return Ok(Some(BodyEvent::Data(buf.split_to(take).freeze())));
                }
                ChunkState::DataEnd => {
                    if buf.len() < 2 {
                        return Ok(None);
                    }
                    if &buf[..2] != b"\r\n" {
                        return Err(Http1Error::Malformed("chunk not followed by CRLF"));
                    }
                    buf.advance(2);
                    self.chunk = ChunkState::Size;
                }
                ChunkState::Trailers => {
                    if buf.starts_with(b"\r\n") {
                        buf.advance(2);
                        self.done = true;
                        return Ok(Some(BodyEvent::End));
                    }
                    let Some(end) = find(buf, b"\r\n\r\n") else {
                        if buf.len() > MAX_HEAD_BYTES {
                            return Err(Http1Error::HeadTooLarge);
                        }
                        return Ok(None);
                    };
                    let trailers = parse_trailers(&buf[..end + 4])?;
                    buf.advance(end + 4);
                    self.done = true;
                    return Ok(Some(BodyEvent::Trailers(trailers)));
                }
            }
        }
    }
}

fn find_crlf(buf: &[u8]) -> Option<usize> {
    find(buf, b"\r\n")
}

fn find(buf: &[u8], needle: &[u8]) -> Option<usize> {
    buf.windows(needle.len()).position(|w| w == needle)
}

/// Parses `HEX[;ext]`: at most 16 hex digits right before the `;` or the end, extensions
/// ignored. Whitespace around the size, which RFC 9112 tolerates as BWS, is refused: it
/// is where parsers disagree, and disagreement is what request smuggling needs.
pub fn parse_chunk_size(line: &[u8]) -> Result<u64, Http1Error> {
    let digits = line.split(|&b| b == b';').next().unwrap_or_default();
    if digits.is_empty() || digits.len() > 16 || !digits.iter().all(u8::is_ascii_hexdigit) {
        return Err(Http1Error::Malformed("invalid chunk size"));
    }
    let text =
        std::str::from_utf8(digits).map_err(|_| Http1Error::Malformed("invalid chunk size"))?;
    u64::from_str_radix(text, 16).map_err(|_| Http1Error::Malformed("invalid chunk size"))
}

fn parse_trailers(block: &[u8]) -> Result<HeaderMap, Http1Error> {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    match httparse::parse_headers(block, &mut slots) {
        Ok(httparse::Status::Complete((_, parsed))) => {
            let mut trailers = HeaderMap::with_capacity(parsed.len());
            for h in parsed {
                let name = HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|_| Http1Error::Malformed("invalid trailer name"))?;
                let value = HeaderValue::from_bytes(h.value)
                    .map_err(|_| Http1Error::Malformed("invalid trailer value"))?;
                trailers.append(name, value);
            }
            Ok(trailers)
        }
        _ => Err(Http1Error::Malformed("invalid trailers")),
    }
}

#[cfg(test)]
mod tests;
