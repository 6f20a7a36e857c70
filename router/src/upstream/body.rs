//! Bodies crossing the upstream side: the request body sent to an endpoint, and the
//! response body read from it.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::connect::UpstreamIo;
use super::http1::{BodyEvent, BodyReader, Conn, Http1Error};
use super::pool;

/// A request body sent upstream: the client's, streamed (read by hyper's server or by
/// the native HTTP/1 server), or none.
#[derive(Debug)]
pub enum RequestBody {
    Downstream(Incoming),
    Native(crate::http::h1_server::NativeBody),
    Empty,
}

/// Any error a request body can fail with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl RequestBody {
    /// The body hyper's server read, or none when it is already at its end.
    pub fn from_incoming(body: Incoming) -> Self {
        if body.is_end_stream() {
            RequestBody::Empty
        } else {
            RequestBody::Downstream(body)
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            RequestBody::Downstream(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            RequestBody::Native(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            RequestBody::Empty => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            RequestBody::Downstream(body) => body.is_end_stream(),
            RequestBody::Native(body) => body.is_end_stream(),
            RequestBody::Empty => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            RequestBody::Downstream(body) => body.size_hint(),
            RequestBody::Native(body) => body.size_hint(),
            RequestBody::Empty => SizeHint::with_exact(0),
        }
    }
}

/// An HTTP/1 response being read off its connection.
pub(super) struct Http1Body {
    pub conn: Option<Conn>,
    pub reader: BodyReader,
    /// Whether the connection may carry another exchange once the body is read.
    pub keep_alive: bool,
    pub key: Arc<str>,
    pub max_idle: usize,
}

impl Http1Body {
    /// Returns the connection to the pool if the exchange ended cleanly.
    fn finish(&mut self) {
        if !self.reader.is_done() {
            return;
        }
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.is_reusable()
        {
            pool::checkin(self.key.clone(), conn, self.max_idle);
        }
    }
}

enum Inner {
    Http1(Http1Body),
    Http2(Incoming),
    /// A 101 answer: the connection goes to the upgrade pipe, the body is empty.
    Upgraded(Option<(UpstreamIo, Bytes)>),
}

/// A response body from an endpoint. Frames (trailers included) pass through as they
/// come; HTTP/1 connections go back to the pool at the end; the request deadline is
/// enforced while it streams.
pub struct UpstreamBody {
    inner: Inner,
    deadline: Option<Deadline>,
}

/// The request deadline while a body streams. The timer is armed only when the body has
/// to wait for the endpoint: a body read in one go costs no timer at all.
pub(super) struct Deadline {
    at: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl Deadline {
    pub(super) fn at(at: Instant) -> Self {
        Deadline { at, timer: None }
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let at = self.at;
        self.timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(at)))
            .as_mut()
            .poll(cx)
    }
}

/// An error while streaming an upstream body.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamBodyError {
    #[error("upstream body: {0}")]
    Hyper(#[from] hyper::Error),
    #[error("upstream body: {0}")]
    Http1(#[from] Http1Error),
    #[error("upstream body: endpoint_timeout elapsed")]
    Timeout,
}

impl UpstreamBody {
    pub(super) fn http1(body: Http1Body, deadline: Option<Deadline>) -> Self {
        UpstreamBody {
            inner: Inner::Http1(body),
            deadline,
        }
    }

    pub(super) fn http2(body: Incoming, deadline: Option<Deadline>) -> Self {
        UpstreamBody {
            inner: Inner::Http2(body),
            deadline,
        }
    }

    pub(super) fn upgraded(io: UpstreamIo, read_ahead: Bytes) -> Self {
        UpstreamBody {
            inner: Inner::Upgraded(Some((io, read_ahead))),
            deadline: None,
        }
    }

    /// After a 101: the endpoint's connection and the bytes it sent past the head.
    pub fn take_upgraded(&mut self) -> Option<(UpstreamIo, Bytes)> {
        match &mut self.inner {
            Inner::Upgraded(io) => io.take(),
            _ => None,
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
        let polled = match &mut this.inner {
            Inner::Http1(body) => match &mut body.conn {
                None => Poll::Ready(None),
                Some(conn) => match body.reader.poll_next(conn, cx) {
                    Poll::Ready(Ok(BodyEvent::Data(data))) => {
                        Poll::Ready(Some(Ok(Frame::data(data))))
                    }
                    Poll::Ready(Ok(BodyEvent::Trailers(t))) => {
                        body.finish();
                        Poll::Ready(Some(Ok(Frame::trailers(t))))
                    }
                    Poll::Ready(Ok(BodyEvent::End)) => {
                        body.finish();
                        Poll::Ready(None)
                    }
                    Poll::Ready(Err(e)) => {
                        body.conn = None;
                        Poll::Ready(Some(Err(e.into())))
                    }
                    Poll::Pending => Poll::Pending,
                },
            },
            Inner::Http2(body) => Pin::new(body)
                .poll_frame(cx)
                .map(|f| f.map(|f| f.map_err(UpstreamBodyError::from))),
            Inner::Upgraded(_) => Poll::Ready(None),
        };
        if polled.is_pending()
            && let Some(deadline) = &mut this.deadline
        {
            ready!(deadline.poll(cx));
            if let Inner::Http1(body) = &mut this.inner {
                body.conn = None;
            }
            return Poll::Ready(Some(Err(UpstreamBodyError::Timeout)));
        }
        // A body that ends with its last data frame returns its connection at once.
        if let Inner::Http1(body) = &mut this.inner {
            body.finish();
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Http1(body) => body.reader.is_done(),
            Inner::Http2(body) => body.is_end_stream(),
            Inner::Upgraded(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Http1(body) => match body.reader.exact_len() {
                Some(n) => SizeHint::with_exact(n),
                None => SizeHint::default(),
            },
            Inner::Http2(body) => body.size_hint(),
            Inner::Upgraded(_) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        // Bodiless responses (HEAD, 204, 304) may never be polled: their connection is
        // still reusable.
        if let Inner::Http1(body) = &mut self.inner {
            body.finish();
        }
    }
}
