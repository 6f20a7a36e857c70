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
use hyper::body::Incoming;
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::time::Instant;

use crate::route_table::{Endpoint, UpstreamProtocol};
use crate::tls::TlsFailure;

mod body;
mod connect;
mod pool;

pub use body::{RequestBody, UpstreamBody, UpstreamBodyError};
pub use connect::{Alpn, UpstreamIo, UpstreamTls};
use pool::PoolReturn;

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

/// A copy of a bodiless idempotent request, kept while it goes out on a reused
/// connection: if the app closed that connection as the request was written (the
/// keep-alive race), the copy goes out again on a fresh connection.
struct Replay(http::request::Parts);

impl Replay {
    fn of(req: &Request<RequestBody>) -> Option<Replay> {
        let idempotent = matches!(
            *req.method(),
            http::Method::GET | http::Method::HEAD | http::Method::OPTIONS | http::Method::TRACE
        );
        if !idempotent || !req.body().is_end_stream() {
            return None;
        }
        let mut parts = Request::new(()).into_parts().0;
        parts.method = req.method().clone();
        parts.uri = req.uri().clone();
        parts.version = req.version();
        parts.headers = req.headers().clone();
        Some(Replay(parts))
    }

    fn into_request(self) -> Request<RequestBody> {
        Request::from_parts(self.0, RequestBody::Empty)
    }
}

/// Sends `req` to `endpoint`. `upgrade` asks for a connection the response may take
/// over (WebSocket): always HTTP/1.1, never returned to the pool after a 101.
pub async fn send(
    endpoint: &Endpoint,
    req: Request<RequestBody>,
    settings: &UpstreamSettings,
    started: Instant,
    upgrade: bool,
) -> Result<Response<UpstreamBody>, SendError> {
    let deadline =
        (!settings.request_timeout.is_zero()).then(|| started + settings.request_timeout);
    if settings.http2 && endpoint.data.protocol == UpstreamProtocol::Http2 && !upgrade {
        send_http2(endpoint, req, settings, deadline).await
    } else {
        send_http1(endpoint, req, settings, deadline).await
    }
}

async fn send_http1(
    endpoint: &Endpoint,
    mut req: Request<RequestBody>,
    settings: &UpstreamSettings,
    deadline: Option<Instant>,
) -> Result<Response<UpstreamBody>, SendError> {
    if let Some(mut sender) = pool::checkout(&endpoint.key, settings.idle_timeout)
        && sender.ready().await.is_ok()
    {
        let replay = Replay::of(&req);
        match with_deadline(deadline, sender.try_send_request(req)).await {
            Ok(Ok(resp)) => return Ok(wrap_http1(resp, endpoint, sender, settings, deadline)),
            Ok(Err(mut err)) => match (err.take_message(), replay) {
                // The connection was closed under us before the request was written.
                (Some(unsent), _) => req = unsent,
                (None, Some(replay)) if err.error().is_incomplete_message() => {
                    tracing::debug!(endpoint = %endpoint.key, "pooled connection closed under a request; replaying it");
                    req = replay.into_request();
                }
                (None, _) => {
                    return Err(SendError::Failed(UpstreamError::Exchange(err.into_error())));
                }
            },
            Err(timeout) => return Err(SendError::Failed(timeout)),
        }
    }
    let mut sender = match connect_http1(endpoint, settings).await {
        Ok(sender) => sender,
        Err(err) => return Err(SendError::NotSent(err, Box::new(req))),
    };
    match with_deadline(deadline, sender.send_request(req)).await {
        Ok(Ok(resp)) => Ok(wrap_http1(resp, endpoint, sender, settings, deadline)),
        Ok(Err(err)) => Err(SendError::Failed(UpstreamError::Exchange(err))),
        Err(timeout) => Err(SendError::Failed(timeout)),
    }
}

async fn connect_http1(
    endpoint: &Endpoint,
    settings: &UpstreamSettings,
) -> Result<pool::H1Sender, UpstreamError> {
    let io = connect::dial(endpoint, settings, Alpn::Http1).await?;
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(io))
        .await
        .map_err(UpstreamError::Handshake)?;
    tokio::spawn(async move {
        // with_upgrades: a 101 hands the connection to the WebSocket pipe.
        if let Err(err) = conn.with_upgrades().await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

async fn send_http2(
    endpoint: &Endpoint,
    mut req: Request<RequestBody>,
    settings: &UpstreamSettings,
    deadline: Option<Instant>,
) -> Result<Response<UpstreamBody>, SendError> {
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
    match with_deadline(deadline, sender.send_request(req)).await {
        Ok(Ok(resp)) => Ok(resp.map(|inner| UpstreamBody {
            inner,
            pool_return: None,
            deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
        })),
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

async fn with_deadline<F: std::future::Future>(
    deadline: Option<Instant>,
    fut: F,
) -> Result<F::Output, UpstreamError> {
    match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, fut)
            .await
            .map_err(|_| UpstreamError::Timeout),
        None => Ok(fut.await),
    }
}

fn wrap_http1(
    resp: Response<Incoming>,
    endpoint: &Endpoint,
    sender: pool::H1Sender,
    settings: &UpstreamSettings,
    deadline: Option<Instant>,
) -> Response<UpstreamBody> {
    // After a 101 the connection belongs to the upgrade, not to the pool; an upgraded
    // connection has no deadline either (gorouter applies none to WebSockets).
    let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    resp.map(|inner| UpstreamBody {
        inner,
        pool_return: (!switching).then(|| PoolReturn {
            key: endpoint.key.clone(),
            sender,
            max_idle: settings.max_idle_per_host,
        }),
        deadline: deadline
            .filter(|_| !switching)
            .map(|d| Box::pin(tokio::time::sleep_until(d))),
    })
}
