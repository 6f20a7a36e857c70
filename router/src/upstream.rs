//! Upstream connections: dial an endpoint, or reuse an idle keep-alive connection from
//! this worker thread's pool, and send one request.
//!
//! The pool is per thread (each worker runs its own single-threaded runtime), so checkout
//! and return take no lock. A connection goes back to the pool when its response body has
//! been read to the end ([`UpstreamBody`]); a body dropped early closes the connection.

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::{Instant, Sleep};

use crate::route_table::Endpoint;

/// Upstream limits from the config.
#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    pub dial_timeout: Duration,
    /// Deadline for the whole exchange, response body included (0: none).
    pub request_timeout: Duration,
    pub max_idle_per_host: usize,
    pub idle_timeout: Duration,
}

/// Why an exchange with an endpoint failed, and whether the request may have reached it.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("dial tcp {addr}: {source}")]
    Dial { addr: String, source: io::Error },
    #[error("dial tcp {0}: i/o timeout")]
    DialTimeout(String),
    #[error("cannot resolve {0}")]
    Resolve(String),
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
                | UpstreamError::Resolve(_)
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

/// A request body sent upstream: the client's, streamed, or none.
#[derive(Debug)]
pub enum RequestBody {
    Downstream(Incoming),
    Empty,
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Downstream(body) => Pin::new(body).poll_frame(cx),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Downstream(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Downstream(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

type Sender = http1::SendRequest<RequestBody>;

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

struct IdleConn {
    sender: Sender,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<IdleConn>>> = RefCell::new(HashMap::new());
}

fn checkout(key: &str, idle_timeout: Duration) -> Option<Sender> {
    IDLE.with_borrow_mut(|idle| {
        let conns = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some(conn) = conns.pop() {
            if !conn.sender.is_closed() && now.duration_since(conn.since) < idle_timeout {
                return Some(conn.sender);
            }
        }
        None
    })
}

fn checkin(key: Arc<str>, sender: Sender, max_idle: usize) {
    if sender.is_closed() || max_idle == 0 {
        return;
    }
    // try_with: a body dropped while the thread shuts down just closes its connection.
    let _ = IDLE.try_with(|idle| {
        if let Ok(mut idle) = idle.try_borrow_mut() {
            let conns = idle.entry(key).or_default();
            if conns.len() < max_idle {
                conns.push(IdleConn {
                    sender,
                    since: Instant::now(),
                });
            }
        }
    });
}

/// Sends `req` to `endpoint`. On a pooled connection found dead before the request went
/// out, retries once on a fresh connection (that is not a new attempt).
pub async fn send(
    endpoint: &Endpoint,
    mut req: Request<RequestBody>,
    settings: &UpstreamSettings,
    started: Instant,
) -> Result<Response<UpstreamBody>, SendError> {
    let deadline =
        (!settings.request_timeout.is_zero()).then(|| started + settings.request_timeout);
    if let Some(mut sender) = checkout(&endpoint.key, settings.idle_timeout)
        && sender.ready().await.is_ok()
    {
        let replay = Replay::of(&req);
        match with_deadline(deadline, sender.try_send_request(req)).await {
            Ok(Ok(resp)) => return Ok(wrap(resp, endpoint, sender, settings, deadline)),
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
    let mut sender = match connect(endpoint, settings).await {
        Ok(sender) => sender,
        Err(err) => return Err(SendError::NotSent(err, Box::new(req))),
    };
    match with_deadline(deadline, sender.send_request(req)).await {
        Ok(Ok(resp)) => Ok(wrap(resp, endpoint, sender, settings, deadline)),
        Ok(Err(err)) => Err(SendError::Failed(UpstreamError::Exchange(err))),
        Err(timeout) => Err(SendError::Failed(timeout)),
    }
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

async fn connect(
    endpoint: &Endpoint,
    settings: &UpstreamSettings,
) -> Result<Sender, UpstreamError> {
    let addr_text = || endpoint.key.to_string();
    let dial = async {
        match endpoint.socket_addr {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((endpoint.data.host.as_str(), endpoint.data.port)).await,
        }
    };
    let stream = match tokio::time::timeout(settings.dial_timeout, dial).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(UpstreamError::Dial {
                addr: addr_text(),
                source,
            });
        }
        Err(_) => return Err(UpstreamError::DialTimeout(addr_text())),
    };
    // Small requests and responses must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    let (sender, conn) = http1::Builder::new()
        .handshake(TokioIo::new(stream))
        .await
        .map_err(UpstreamError::Handshake)?;
    tokio::spawn(async move {
        if let Err(err) = conn.await {
            tracing::debug!(error = %err, "upstream connection ended with an error");
        }
    });
    Ok(sender)
}

fn wrap(
    resp: Response<Incoming>,
    endpoint: &Endpoint,
    sender: Sender,
    settings: &UpstreamSettings,
    deadline: Option<Instant>,
) -> Response<UpstreamBody> {
    resp.map(|inner| UpstreamBody {
        inner,
        pool_return: Some((endpoint.key.clone(), sender, settings.max_idle_per_host)),
        deadline: deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
    })
}

/// A response body from an endpoint: returns the connection to the pool at its end, and
/// enforces the request deadline while it streams.
pub struct UpstreamBody {
    inner: Incoming,
    pool_return: Option<(Arc<str>, Sender, usize)>,
    deadline: Option<Pin<Box<Sleep>>>,
}

/// An error while streaming an upstream body.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("upstream body: {0}")]
    Hyper(#[from] hyper::Error),
    #[error("upstream body: endpoint_timeout elapsed")]
    Timeout,
}

impl UpstreamBody {
    fn finish(&mut self) {
        if let Some((key, sender, max_idle)) = self.pool_return.take() {
            checkin(key, sender, max_idle);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(None) => {
                this.finish();
                Poll::Ready(None)
            }
            Poll::Ready(Some(Ok(frame))) => {
                if this.inner.is_end_stream() {
                    this.finish();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.pool_return = None;
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Pending => {
                if let Some(deadline) = &mut this.deadline {
                    ready!(deadline.as_mut().poll(cx));
                    this.pool_return = None;
                    return Poll::Ready(Some(Err(UpstreamBodyError::Timeout)));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Bodiless responses (HEAD, 204, 304) may never be polled: their connection is
        // still reusable.
        if self.inner.is_end_stream() {
            self.finish();
        }
    }
}
