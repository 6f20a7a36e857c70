//! Upstream: send one request to an endpoint over a pooled or new connection.
//!
//! HTTP/1.1 by default, reusing this worker's idle keep-alive connections; HTTP/2 (h2
//! over TLS by ALPN, h2c on plain ports) for endpoints registered with `protocol: http2`,
//! one multiplexed connection per endpoint. A connection goes back to the pool when its
//! response body has been read to the end; a body dropped early closes it.

use std::sync::Arc;
use std::time::Duration;

use http::uri::{Authority, Scheme, Uri};
use http::{Request, Response};
use http_body::Body as _;
use http_body_util::BodyExt as _;
use hyper::client::conn::http2;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::deadline::LentTimer;
use crate::http::headers::AddedHeaders;
use crate::route_table::{Endpoint, UpstreamProtocol};
use crate::tls::TlsFailure;

mod body;
mod connect;
pub mod http1;
mod pool;

use body::Http1Body;
pub use body::{RequestBody, UpstreamBody, UpstreamBodyError};
pub use connect::{Alpn, UpstreamIo, UpstreamTls};

/// Upstream limits from the config.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub dial_timeout: Duration,
    pub tls_handshake_timeout: Duration,
    /// Deadline for the whole exchange, response body included (0: none).
    pub request_timeout: Duration,
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
    /// Speak HTTP/2 to `protocol: http2` endpoints (else HTTP/1.1 to all).
    pub http2: bool,
    pub tls: Arc<UpstreamTls>,
}

/// Why an exchange with an endpoint failed, and whether the request may have reached it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("dial tcp {addr}: {source}")]
    Dial {
        addr: String,
        source: std::io::Error,
    },
    #[error("dial tcp {0}: i/o timeout")]
    DialTimeout(String),
    #[error("tls {addr}: {reason}")]
    Tls {
        addr: String,
        failure: TlsFailure,
        reason: String,
    },
    #[error("handshake: {0}")]
    Handshake(hyper::Error),
    #[error("{0}")]
    Http1(http1::Http1Error),
    #[error("{0}")]
    Exchange(hyper::Error),
    #[error("timeout awaiting response headers")]
    Timeout,
}

impl UpstreamError {
    /// True when no byte of the request can have reached the app: safe to retry anywhere.
    pub fn is_before_request(&self) -> bool {
        matches!(
            self,
            UpstreamError::Dial { .. }
                | UpstreamError::DialTimeout(_)
                | UpstreamError::Tls { .. }
                | UpstreamError::Handshake(_)
        )
    }
}

/// A failed send: either the request never left (it is handed back, so another endpoint
/// can be tried) or it may have reached the app.
#[derive(Debug)]
pub enum SendError {
    NotSent(UpstreamError, Box<Request<RequestBody>>),
    Failed(UpstreamError),
}

/// Sends `req` to `endpoint`. `upgrade` asks for a connection the response may take
/// over (WebSocket): always HTTP/1.1, never returned to the pool after a 101.
pub fn send<'a>(
    endpoint: &'a Endpoint,
    req: Request<RequestBody>,
    added: &'a AddedHeaders,
    settings: &'a UpstreamSettings,
    started: Instant,
    upgrade: bool,
    timer: Option<LentTimer<'a>>,
) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, SendError>> + Send + 'a {
    use futures_util::future::Either;
    let deadline = RequestDeadline {
        at: (!settings.request_timeout.is_zero()).then(|| started + settings.request_timeout),
        timer,
    };
    // Not an `async fn`, so the request is not held twice (here and in the exchange).
    // HTTP/2 is boxed: its futures are large, and inline they would grow every
    // connection's task, idle ones included.
    if settings.http2 && endpoint.data.protocol == UpstreamProtocol::Http2 && !upgrade {
        Either::Left(Box::pin(send_http2(
            endpoint, req, added, settings, deadline,
        )))
    } else {
        let (parts, body) = req.into_parts();
        Either::Right(send_http1(
            endpoint, parts, body, added, settings, deadline, upgrade,
        ))
    }
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice (see proxy::handle)"
)]
fn send_http1(
    endpoint: &Endpoint,
    parts: http::request::Parts,
    mut body: RequestBody,
    added: &AddedHeaders,
    settings: &UpstreamSettings,
    mut deadline: RequestDeadline<'_>,
    upgrade: bool,
) -> impl std::future::Future<Output = Result<Response<UpstreamBody>, SendError>> {
    async move {
        let (head, chunked) = http1::request_head(&parts, &body, added, endpoint);
        let not_sent =
            |err, parts, body| SendError::NotSent(err, Box::new(Request::from_parts(parts, body)));

        // A pooled connection first; if the endpoint closed it as we wrote (the keep-alive
        // race), a bodiless request goes again on a fresh connection.
        let mut conn = match pool::checkout(&endpoint.key, settings.idle_timeout) {
            Some(conn) => conn,
            None => match Box::pin(dial_http1(endpoint, settings)).await {
                Ok(conn) => conn,
                Err(err) => return Err(not_sent(err, parts, body)),
            },
        };
        let replayable = body.is_end_stream() && is_idempotent(&parts.method);
        let exchange = loop {
            let result = with_deadline(
                deadline.at,
                deadline.timer.as_mut().map(|t| t.as_mut()),
                exchange_http1(&mut conn, &head, &mut body, chunked, &parts.method),
            )
            .await
            .map_err(SendError::Failed)?;
            match result {
                Ok(head) => break head,
                // The request never left: another endpoint may have it, or a fresh
                // connection when this one was a pooled one gone stale.
                Err(Exchange::Unsent(err)) if !conn.reused => {
                    return Err(not_sent(UpstreamError::Http1(err), parts, body));
                }
                Err(Exchange::Unsent(err)) | Err(Exchange::ClosedUnanswered(err))
                    if conn.reused && (replayable || matches!(body, RequestBody::Empty)) =>
                {
                    tracing::debug!(endpoint = %endpoint.key, error = %err, "pooled connection was closed; using a new one");
                }
                // A fresh connection closed (or reset) with no answer: an app going away, or
                // one whose listener closed with us in its backlog. As gorouter does for an
                // EOF, an idempotent bodiless request goes to another endpoint.
                Err(Exchange::ClosedUnanswered(err)) if !conn.reused && replayable => {
                    return Err(not_sent(UpstreamError::Http1(err), parts, body));
                }
                Err(
                    Exchange::Unsent(err) | Exchange::ClosedUnanswered(err) | Exchange::Failed(err),
                ) => {
                    return Err(SendError::Failed(UpstreamError::Http1(err)));
                }
            }
            conn = match Box::pin(dial_http1(endpoint, settings)).await {
                Ok(conn) => conn,
                Err(err) => return Err(not_sent(err, parts, body)),
            };
        };
        // The request went out: its header map serves the next request head.
        crate::http::headers::recycle_map(parts.headers);
        if exchange.status == http::StatusCode::SWITCHING_PROTOCOLS && upgrade {
            let (io, read_ahead) = conn.into_upgraded();
            return Ok(exchange.into_response(UpstreamBody::upgraded(io, read_ahead)));
        }
        let body = Http1Body {
            reader: http1::BodyReader::new(exchange.framing),
            keep_alive: exchange.keep_alive,
            conn: Some(conn),
            key: endpoint.key.clone(),
            max_idle: settings.max_idle_per_host,
        };
        let deadline = deadline.at.map(body::Deadline::at);
        Ok(exchange.into_response(UpstreamBody::http1(body, deadline)))
    }
}

/// How an HTTP/1 exchange failed.
enum Exchange {
    /// The request head could not be written: it never reached an app.
    Unsent(http1::Http1Error),
    /// The connection closed with no answer after a bodiless request went out: on a
    /// pooled connection, the endpoint closed it as we wrote (the keep-alive race).
    ClosedUnanswered(http1::Http1Error),
    /// Anything later: the request may have reached the app.
    Failed(http1::Http1Error),
}

fn is_idempotent(method: &http::Method) -> bool {
    matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
    )
}

/// Writes the request (head, then the body as it arrives) and reads the response head.
/// If the endpoint answers before the body is all sent, sending stops there.
async fn exchange_http1(
    conn: &mut http1::Conn,
    head: &[u8],
    body: &mut RequestBody,
    chunked: bool,
    method: &http::Method,
) -> Result<http1::ResponseHead, Exchange> {
    if let Err(err) = conn.write_all(head).await {
        return Err(Exchange::Unsent(err.into()));
    }
    if !body.is_end_stream() {
        let mut trailers = None;
        loop {
            let step = tokio::select! {
                frame = body.frame() => BodyStep::Frame(frame),
                answered = conn.wait_for_answer(method) => BodyStep::Answered(answered),
            };
            match step {
                BodyStep::Frame(None) => break,
                BodyStep::Frame(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => match conn.write_body(&data, chunked, method).await {
                        Ok(false) => {}
                        // The app answered (or closed) while we were sending.
                        Ok(true) => {
                            conn.mark_cut_short();
                            break;
                        }
                        Err(err) => return Err(Exchange::Failed(err)),
                    },
                    Err(frame) => trailers = frame.into_trailers().ok(),
                },
                BodyStep::Frame(Some(Err(err))) => {
                    // The client went away mid-body: the app must not see a complete request.
                    return Err(Exchange::Failed(http1::Http1Error::Io(
                        std::io::Error::other(err),
                    )));
                }
                // An interim 100 Continue: keep sending.
                BodyStep::Answered(Ok(false)) => {}
                // The app answered early (e.g. 413) or closed: stop sending, read its
                // answer (or find it gone).
                BodyStep::Answered(Ok(true)) => {
                    conn.mark_cut_short();
                    break;
                }
                BodyStep::Answered(Err(err)) => return Err(Exchange::Failed(err)),
            }
        }
        if !conn.is_cut_short()
            && let Err(err) = conn.finish_body(chunked, trailers.as_ref()).await
        {
            return Err(Exchange::Failed(err.into()));
        }
    }
    let bodiless = body.is_end_stream();
    match conn.read_response_head(method).await {
        Ok(head) => Ok(head),
        Err(err @ http1::Http1Error::ClosedBeforeResponse) if bodiless => {
            Err(Exchange::ClosedUnanswered(err))
        }
        Err(err) => Err(Exchange::Failed(err)),
    }
}

enum BodyStep {
    Frame(Option<Result<http_body::Frame<bytes::Bytes>, body::BoxError>>),
    /// The endpoint sent something (or closed) before the body was all sent: whether it
    /// is a final answer.
    Answered(Result<bool, http1::Http1Error>),
}

async fn dial_http1(
    endpoint: &Endpoint,
    settings: &UpstreamSettings,
) -> Result<http1::Conn, UpstreamError> {
    Ok(http1::Conn::new(
        connect::dial(endpoint, settings, Alpn::Http1).await?,
    ))
}

async fn send_http2(
    endpoint: &Endpoint,
    mut req: Request<RequestBody>,
    added: &AddedHeaders,
    settings: &UpstreamSettings,
    deadline: RequestDeadline<'_>,
) -> Result<Response<UpstreamBody>, SendError> {
    // hyper's HTTP/2 client takes headers from the map only. A request handed back
    // unsent keeps them: harmless, the next attempt inserts over them.
    added.insert_into(Some(endpoint), req.headers_mut());
    // HTTP/2 carries the authority and scheme as pseudo-headers: give the target both.
    let authority = req
        .headers()
        .get(http::header::HOST)
        .and_then(|h| Authority::try_from(h.as_bytes()).ok());
    if let Some(authority) = authority {
        let mut parts = req.uri().clone().into_parts();
        parts.scheme = Some(if endpoint.data.tls {
            Scheme::HTTPS
        } else {
            Scheme::HTTP
        });
        parts.authority = Some(authority);
        if let Ok(uri) = Uri::from_parts(parts) {
            *req.uri_mut() = uri;
        }
    }
    req.headers_mut().remove(http::header::HOST);
    *req.version_mut() = http::Version::HTTP_2;

    let mut sender = match pool::h2_sender(&endpoint.key) {
        Some(sender) => sender,
        None => match connect_http2(endpoint, settings).await {
            Ok(sender) => sender,
            Err(err) => return Err(SendError::NotSent(err, Box::new(req))),
        },
    };
    if let Err(err) = sender.ready().await {
        return Err(SendError::NotSent(
            UpstreamError::Handshake(err),
            Box::new(req),
        ));
    }
    let RequestDeadline {
        at: deadline,
        timer,
    } = deadline;
    match with_deadline(deadline, timer, sender.send_request(req)).await {
        Ok(Ok(resp)) => {
            Ok(resp.map(|inner| UpstreamBody::http2(inner, deadline.map(body::Deadline::at))))
        }
        Ok(Err(err)) => Err(SendError::Failed(UpstreamError::Exchange(err))),
        Err(timeout) => Err(SendError::Failed(timeout)),
    }
}

async fn connect_http2(
    endpoint: &Endpoint,
    settings: &UpstreamSettings,
) -> Result<pool::H2Sender, UpstreamError> {
    let io = connect::dial(endpoint, settings, Alpn::Http2).await?;
    let (sender, conn) = http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Handshake)?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(error = %err, "upstream HTTP/2 connection ended with an error");
        }
    });
    pool::keep_h2(endpoint.key.clone(), sender.clone());
    Ok(sender)
}

/// When a request times out (`endpoint_timeout` from its start), and the timer that
/// keeps that deadline when the downstream connection lends one.
struct RequestDeadline<'t> {
    at: Option<Instant>,
    timer: Option<LentTimer<'t>>,
}

/// `fut`, failed with [`UpstreamError::Timeout`] at `deadline`, on the connection's timer
/// when it lends one. Not an `async fn`: that would hold `fut` twice in its state (as
/// argument and inside the timeout), and these futures live in every connection's task.
fn with_deadline<'t, F: std::future::Future + 't>(
    deadline: Option<Instant>,
    timer: Option<LentTimer<'t>>,
    fut: F,
) -> impl std::future::Future<Output = Result<F::Output, UpstreamError>> + 't {
    use futures_util::future::{Either, FutureExt as _};
    match (deadline, timer) {
        (Some(deadline), Some(timer)) => Either::Left(Either::Left(
            crate::deadline::before(fut, timer, deadline)
                .map(|r| r.map_err(|_| UpstreamError::Timeout)),
        )),
        (Some(deadline), None) => Either::Left(Either::Right(
            tokio::time::timeout_at(deadline, fut).map(|r| r.map_err(|_| UpstreamError::Timeout)),
        )),
        (None, _) => Either::Right(fut.map(Ok)),
    }
}
