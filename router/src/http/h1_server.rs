//! The native HTTP/1.1 server: one task per connection reads request heads with
//! httparse, calls [`super::handle`] (the same hot path as HTTP/2), and writes the
//! response head and body itself. With the upstream client of `upstream::http1`, a
//! keep-alive request costs no task switch, no channel and no copy of body bytes.
//!
//! Lifecycle of a connection:
//! - The first bytes decide the protocol: the HTTP/2 preface goes to hyper's HTTP/2
//!   server (prior knowledge); anything else is HTTP/1.
//! - A head must arrive within `header_read_timeout` of the previous response (or of
//!   accept); one timer per connection, reset per request. Idle connections close on stop.
//! - Between requests a connection waits for readiness holding no buffers (`idle`).
//! - Malformed heads get 400 (431, 501, 505, 417 as fits) and the connection closes.
//! - A request with a body lends the connection's read side to the body while the proxy
//!   runs; `Expect: 100-continue` is answered on the first read of it.
//! - The response goes out with Content-Length when its size is known, else chunked
//!   (HTTP/1.1) or delimited by closing (HTTP/1.0). Head and a small first body chunk
//!   leave in one write.
//! - A request body the app did not read is drained (up to a limit) so the next request
//!   starts on a message boundary; past the limit the connection closes.
//! - A 101 turns the connection into a byte pipe to the endpoint (splice on plain TCP).
//! - Pipelined requests are served in order from the buffer.

use std::any::Any;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{CONNECTION, CONTENT_LENGTH, DATE, TRANSFER_ENCODING};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::body::ProxyBody;
use super::headers::Downstream;
use super::proxy::{ProxyContext, handle};
use crate::deadline;
use crate::listener::DownstreamSettings;
use crate::upstream::RequestBody;
use crate::upstream::http1::{BodyReader, Framing, write_header};

mod body;
mod idle;
pub mod request;

pub use body::NativeBody;
use body::{BodySource, Lent};

/// Most request headers accepted (more: 431).
const MAX_HEADERS: usize = 100;
/// Unread request body drained after a response so the connection can be reused.
const MAX_DRAIN: usize = 256 * 1024;
/// Body chunks up to this size are copied next to the head and sent in one write.
const COALESCE: usize = 16 * 1024;

/// What the first bytes of a connection said.
pub enum Start<I> {
    /// HTTP/1: served here to the end.
    Done,
    /// The HTTP/2 preface: serve `io` with HTTP/2, replaying `read` first.
    Http2 { io: I, read: Bytes },
}

struct Conn<I> {
    io: I,
    bufs: Buffers,
    fields: request::FieldOffsets,
}

/// A connection's read and write buffers. They go back to the worker's spares when the
/// connection ends, as between requests: with a new connection per request, allocating
/// and freeing them (12 KiB) was ~800 instructions a request.
#[derive(Default)]
struct Buffers {
    read: BytesMut,
    write: Vec<u8>,
}

impl Buffers {
    /// Gives both buffers back to the worker's spares, leaving none.
    fn give_back(&mut self) {
        idle::give_back(&mut self.read, &mut self.write);
    }
}

impl Drop for Buffers {
    fn drop(&mut self) {
        self.give_back();
    }
}

/// Serves an HTTP/1 connection until it closes. Returns the connection when the client
/// turns out to speak HTTP/2 with prior knowledge.
pub async fn serve<I>(
    io: I,
    downstream: &Downstream,
    ctx: &Arc<ProxyContext>,
    settings: &DownstreamSettings,
    stop: &CancellationToken,
) -> Start<I>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // No buffers until the first bytes arrive (see `idle`).
    let mut conn = Conn {
        io,
        bufs: Buffers::default(),
        fields: Vec::with_capacity(32),
    };
    let head_limit = settings.max_request_header_bytes + 64 * 1024;
    // The head deadline moves with every request; the timer follows only when it fires
    // (see `deadline`), so a keep-alive request costs no timer-wheel update.
    let timer = tokio::time::sleep(settings.header_read_timeout);
    tokio::pin!(timer);
    // The requests' deadlines (`endpoint_timeout`), on one timer likewise.
    let request_timer = tokio::time::sleep(settings.header_read_timeout);
    tokio::pin!(request_timer);
    // Registered once with the token, then read without its lock.
    let stopped = crate::stop_signal::Stopped::new(stop);
    tokio::pin!(stopped);
    let mut first = true;
    loop {
        let head_deadline = Instant::now() + settings.header_read_timeout;
        // 1. A request head (or the HTTP/2 preface, or the end).
        let head = loop {
            if first && request::may_be_h2_preface(&conn.bufs.read) && !conn.bufs.read.is_empty() {
                if conn.bufs.read.len() >= request::H2_PREFACE.len() {
                    if settings.enable_http2 {
                        return Start::Http2 {
                            io: conn.io,
                            read: std::mem::take(&mut conn.bufs.read).freeze(),
                        };
                    }
                    let _ = write_error(&mut conn.io, StatusCode::HTTP_VERSION_NOT_SUPPORTED).await;
                    return Start::Done;
                }
            } else if !conn.bufs.read.is_empty() {
                match request::parse::<MAX_HEADERS>(&mut conn.bufs.read, &mut conn.fields) {
                    Ok(Some(head)) => break head,
                    Ok(None) if conn.bufs.read.len() > head_limit => {
                        let _ = write_431(&mut conn.io).await;
                        return Start::Done;
                    }
                    Ok(None) => {}
                    Err(err) => {
                        tracing::debug!(peer = %downstream.peer, error = %err, "bad request head");
                        let status =
                            StatusCode::from_u16(err.status()).unwrap_or(StatusCode::BAD_REQUEST);
                        let _ = if status == StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE {
                            write_431(&mut conn.io).await
                        } else {
                            write_error(&mut conn.io, status).await
                        };
                        return Start::Done;
                    }
                }
            }
            let idle = conn.bufs.read.is_empty();
            if idle {
                // Between requests (or before the first): wait without buffers.
                conn.bufs.give_back();
                tokio::select! {
                    () = idle::readable(&conn.io) => {}
                    () = deadline::reached(timer.as_mut(), head_deadline) => return Start::Done,
                    () = &mut stopped => return Start::Done,
                }
                conn.bufs.read = idle::take_read_buffer();
                conn.bufs.write = idle::take_write_buffer();
            }
            conn.bufs.read.reserve(4 * 1024);
            let read = tokio::select! {
                read = conn.io.read_buf(&mut conn.bufs.read) => read,
                () = deadline::reached(timer.as_mut(), head_deadline) => return Start::Done,
                // Idle connections close at once on shutdown; a head in progress finishes.
                () = &mut stopped, if idle => return Start::Done,
            };
            match read {
                Ok(0) | Err(_) => return Start::Done,
                Ok(_) => {}
            }
        };
        first = false;

        // 2. The request, its body lent the connection's read side.
        let request::RequestHead {
            parts,
            framing,
            keep_alive,
            expect_continue,
        } = head;
        let method = parts.method.clone();
        let version = parts.version;
        let mut body_done = true;
        let resp = if framing == Framing::Empty {
            handle(
                Request::from_parts(parts, RequestBody::Empty),
                downstream,
                ctx,
                Some(request_timer.as_mut()),
            )
            .await
        } else {
            let source: Box<dyn BodySource> = Box::new(Lent {
                io: conn.io,
                buf: std::mem::take(&mut conn.bufs.read),
                reader: BodyReader::new(framing),
                continue_left: if expect_continue {
                    body::CONTINUE.len()
                } else {
                    0
                },
            });
            let shared = Arc::new(Mutex::new(Some(source)));
            let body = RequestBody::Native(NativeBody::new(shared.clone(), framing));
            let resp = handle(
                Request::from_parts(parts, body),
                downstream,
                ctx,
                Some(request_timer.as_mut()),
            )
            .await;
            // 3. The connection back, on a message boundary if the body can be drained.
            let taken = match shared.lock() {
                Ok(mut guard) => guard.take(),
                Err(poisoned) => poisoned.into_inner().take(),
            };
            let Some(Ok(back)) = taken.map(|s| s.into_any().downcast::<Lent<I>>()) else {
                return Start::Done;
            };
            let Lent {
                io,
                buf,
                mut reader,
                ..
            } = *back;
            conn.io = io;
            conn.bufs.read = buf;
            body_done = drain(&mut conn, &mut reader).await;
            resp
        };

        // 4. The response. After the router refused a request as malformed (400, 431),
        // the connection closes, as Go's server does: what follows is not trusted.
        let refused = matches!(resp.status().as_u16(), 400 | 431)
            && resp
                .headers()
                .contains_key(super::headers::X_CF_ROUTER_ERROR);
        let reuse = keep_alive && body_done && !refused && !stopped.is_stopped();
        match write_response(&mut conn, resp, &method, version, reuse).await {
            Ok(Next::KeepAlive) => {}
            Ok(Next::Close) | Err(_) => {
                if !body_done {
                    linger(&mut conn).await;
                } else if downstream.tls {
                    // TLS says goodbye (close_notify). Plain TCP just closes: close(2)
                    // sends the FIN, and a shutdown(2) first would be one more system
                    // call per connection that changes nothing.
                    let _ = conn.io.shutdown().await;
                }
                return Start::Done;
            }
            Ok(Next::Upgrade(upstream, read_ahead, in_flight)) => {
                let leftover = std::mem::take(&mut conn.bufs.read).freeze();
                // Boxed: upgrades are rare, and the pipe's future inline would grow every
                // connection's task.
                let piped = Box::pin(pipe_upgraded(conn.io, leftover, upstream, read_ahead)).await;
                if let Err(err) = piped {
                    tracing::debug!(error = %err, "upgraded connection ended with an error");
                }
                drop(in_flight);
                return Start::Done;
            }
        }
    }
}

/// Reads and drops what remains of a request body, up to [`MAX_DRAIN`] bytes; `false`
/// when it could not reach the end (the connection must then close).
async fn drain<I: AsyncRead + Unpin>(conn: &mut Conn<I>, reader: &mut BodyReader) -> bool {
    let mut drained = 0usize;
    loop {
        if reader.is_done() {
            return true;
        }
        match reader.step(&mut conn.bufs.read) {
            Err(_) => return false,
            Ok(Some(crate::upstream::http1::BodyEvent::Data(d))) => {
                drained += d.len();
                if drained > MAX_DRAIN {
                    return false;
                }
                continue;
            }
            Ok(Some(_)) => continue,
            Ok(None) => {}
        }
        conn.bufs.read.reserve(16 * 1024);
        match tokio::time::timeout(
            Duration::from_secs(1),
            conn.io.read_buf(&mut conn.bufs.read),
        )
        .await
        {
            Ok(Ok(n)) if n > 0 => {}
            _ => return false,
        }
    }
}

/// Closes a connection whose client may still be sending a body we did not read:
/// stop writing, then read and drop for a moment, so that the kernel does not answer the
/// unread bytes with a reset that could destroy the response before the client reads it.
async fn linger<I: AsyncRead + AsyncWrite + Unpin>(conn: &mut Conn<I>) {
    let _ = conn.io.shutdown().await;
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut discarded = 0usize;
    while discarded < 64 * 1024 * 1024 {
        conn.bufs.read.clear();
        conn.bufs.read.reserve(64 * 1024);
        match tokio::time::timeout_at(deadline, conn.io.read_buf(&mut conn.bufs.read)).await {
            Ok(Ok(n)) if n > 0 => discarded += n,
            _ => return,
        }
    }
}

enum Next {
    KeepAlive,
    Close,
    Upgrade(
        crate::upstream::UpstreamIo,
        Bytes,
        crate::balancer::InFlight,
    ),
}

/// Writes the response head and streams its body; says what the connection does next.
async fn write_response<I: AsyncWrite + Unpin>(
    conn: &mut Conn<I>,
    resp: Response<ProxyBody>,
    method: &Method,
    version: Version,
    reuse: bool,
) -> std::io::Result<Next> {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let upgrade = if status == StatusCode::SWITCHING_PROTOCOLS {
        body.take_upgraded()
    } else {
        None
    };
    let bodiless = method == Method::HEAD
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let exact = body.size_hint().exact();
    let chunked = !bodiless && exact.is_none() && version == Version::HTTP_11;
    // HTTP/1.0 without a length: the body ends when the connection does.
    let close_delimited = !bodiless && exact.is_none() && !chunked;
    let keep_alive = reuse && !close_delimited && upgrade.is_none();

    let out = &mut conn.bufs.write;
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(reason(status).as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        // Framing and connection headers are ours to set.
        if name == TRANSFER_ENCODING || name == CONNECTION || name == CONTENT_LENGTH {
            continue;
        }
        write_header(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if !parts.headers.contains_key(DATE) {
        with_http_date(|date| write_header(out, b"date", date));
    }
    if let (false, Some(n)) = (bodiless, exact) {
        write_header(
            out,
            b"content-length",
            itoa::Buffer::new().format(n).as_bytes(),
        );
    }
    // A HEAD or 304 answer keeps the app's Content-Length (the size of the full answer),
    // if it is one valid length: the app's bytes are not checked when no body follows.
    // Never on 1xx and 204 (RFC 9110 8.6).
    if bodiless
        && !status.is_informational()
        && status != StatusCode::NO_CONTENT
        && let Some(len) = bodiless_length(&parts.headers)
    {
        write_header(out, b"content-length", len.as_bytes());
    }
    if chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    if upgrade.is_some() {
        // restore_upgrade_headers already put Connection: upgrade back among the headers,
        // which the loop above skipped as a connection header.
        out.extend_from_slice(b"connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    } else if version == Version::HTTP_10 {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
    super::headers::recycle_map(parts.headers);

    if let Some((io, read_ahead, in_flight)) = upgrade {
        conn.io.write_all(&conn.bufs.write).await?;
        conn.io.flush().await?;
        return Ok(Next::Upgrade(io, read_ahead, in_flight));
    }
    if bodiless {
        conn.io.write_all(&conn.bufs.write).await?;
        conn.io.flush().await?;
        drop(body);
        return Ok(if keep_alive {
            Next::KeepAlive
        } else {
            Next::Close
        });
    }

    // The body, frame by frame. Small frames join what is buffered (the head, at first),
    // which goes out before waiting for the next frame: one write for a small response.
    loop {
        match body.frame().await {
            None => {
                if chunked {
                    conn.bufs.write.extend_from_slice(b"0\r\n\r\n");
                }
                break;
            }
            Some(Err(err)) => {
                // The head may be out already: all we can do is cut the connection.
                tracing::debug!(error = %err, "response body failed; closing the connection");
                return Ok(Next::Close);
            }
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if !data.is_empty() {
                        if chunked {
                            push_chunk_size(&mut conn.bufs.write, data.len());
                        }
                        if data.len() <= COALESCE {
                            conn.bufs.write.extend_from_slice(data);
                        } else {
                            conn.io.write_all(&conn.bufs.write).await?;
                            conn.bufs.write.clear();
                            conn.io.write_all(data).await?;
                        }
                        if chunked {
                            conn.bufs.write.extend_from_slice(b"\r\n");
                        }
                    }
                } else if let Ok(trailers) = frame.into_trailers() {
                    if chunked {
                        conn.bufs.write.extend_from_slice(b"0\r\n");
                        crate::upstream::http1::write_headers(&mut conn.bufs.write, &trailers);
                        conn.bufs.write.extend_from_slice(b"\r\n");
                    }
                    break;
                }
            }
        }
        if body.is_end_stream() {
            if chunked {
                conn.bufs.write.extend_from_slice(b"0\r\n\r\n");
            }
            break;
        }
        if !conn.bufs.write.is_empty() {
            conn.io.write_all(&conn.bufs.write).await?;
            conn.bufs.write.clear();
        }
    }
    conn.io.write_all(&conn.bufs.write).await?;
    conn.bufs.write.clear();
    conn.io.flush().await?;
    drop(body);
    Ok(if keep_alive {
        Next::KeepAlive
    } else {
        Next::Close
    })
}

/// Joins the client's connection to the endpoint's after a 101: splice when both are
/// plain TCP, a buffered copy otherwise.
async fn pipe_upgraded<I>(
    client: I,
    client_read_ahead: Bytes,
    upstream: crate::upstream::UpstreamIo,
    upstream_read_ahead: Bytes,
) -> std::io::Result<crate::pipe::PipeStats>
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let client: Box<dyn Any + Send> = Box::new(client);
    match (client.downcast::<TcpStream>(), upstream) {
        (Ok(client), tokio_util::either::Either::Left(mut up)) => {
            let mut client = *client;
            crate::websocket::deliver_read_ahead(
                &mut client,
                client_read_ahead,
                &mut up,
                upstream_read_ahead,
            )
            .await?;
            crate::pipe::pipe_bidirectional(client, up).await
        }
        (Ok(client), up) => {
            crate::websocket::buffered(*client, client_read_ahead, up, upstream_read_ahead).await
        }
        (Err(client), up) => match client.downcast::<I>() {
            Ok(client) => {
                crate::websocket::buffered(*client, client_read_ahead, up, upstream_read_ahead)
                    .await
            }
            Err(_) => Err(std::io::Error::other("connection of an unexpected type")),
        },
    }
}

async fn write_error<I: AsyncWrite + Unpin>(io: &mut I, status: StatusCode) -> std::io::Result<()> {
    let text = format!(
        "HTTP/1.1 {} {}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
        status.as_str(),
        reason(status)
    );
    io.write_all(text.as_bytes()).await?;
    io.flush().await?;
    io.shutdown().await
}

async fn write_431<I: AsyncWrite + Unpin>(io: &mut I) -> std::io::Result<()> {
    io.write_all(
        b"HTTP/1.1 431 Request Header Fields Too Large\r\nx-cf-routererror: max-request-size-exceeded\r\n\
          content-length: 0\r\nconnection: close\r\n\r\n",
    )
    .await?;
    io.flush().await?;
    io.shutdown().await
}

/// The app's Content-Length of a bodiless answer, if it is one decimal length (repeats
/// of the same value count as one).
fn bodiless_length(headers: &http::HeaderMap) -> Option<&http::HeaderValue> {
    let mut values = headers.get_all(CONTENT_LENGTH).iter();
    let first = values.next()?;
    let bytes = first.as_bytes();
    let valid = !bytes.is_empty() && bytes.len() <= 19 && bytes.iter().all(u8::is_ascii_digit);
    (valid && values.all(|v| v == first)).then_some(first)
}

/// Appends a chunk-size line: `len` in hex, then CRLF (no allocation, unlike `format!`).
fn push_chunk_size(out: &mut Vec<u8>, len: usize) {
    let mut digits = [0u8; 2 * std::mem::size_of::<usize>()];
    let mut at = digits.len();
    let mut rest = len;
    loop {
        at -= 1;
        digits[at] = b"0123456789abcdef"[rest & 0xf];
        rest >>= 4;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[at..]);
    out.extend_from_slice(b"\r\n");
}

fn reason(status: StatusCode) -> &'static str {
    match status.as_u16() {
        496 => "SSL Certificate Required",
        525 => "SSL Handshake Failed",
        526 => "Invalid SSL Certificate",
        _ => status.canonical_reason().unwrap_or(""),
    }
}

thread_local! {
    static DATE_CACHE: std::cell::RefCell<(u64, Vec<u8>)> = const { std::cell::RefCell::new((0, Vec::new())) };
}

/// The current `Date` value, formatted at most once per second per thread.
fn with_http_date(f: impl FnOnce(&[u8])) {
    let now = std::time::SystemTime::now();
    let secs = now
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    DATE_CACHE.with_borrow_mut(|(at, text)| {
        if *at != secs || text.is_empty() {
            *at = secs;
            *text = httpdate::fmt_http_date(now).into_bytes();
        }
        f(text);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_sizes_are_lowercase_hex_lines() {
        for (len, line) in [
            (0usize, "0\r\n"),
            (9, "9\r\n"),
            (10, "a\r\n"),
            (4096, "1000\r\n"),
            (usize::MAX, "ffffffffffffffff\r\n"),
        ] {
            let mut out = b"x".to_vec();
            push_chunk_size(&mut out, len);
            assert_eq!(out, [b"x", line.as_bytes()].concat(), "{len}");
        }
    }
}
