//! Bodies crossing the upstream side: the request body sent to an endpoint, and the
//! response body read from it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::Sleep;

use super::pool::PoolReturn;

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

/// A response body from an endpoint: returns an HTTP/1 connection to the pool at its
/// end, and enforces the request deadline while it streams. Frames (trailers included)
/// pass through as they come.
pub struct UpstreamBody {
    pub(super) inner: Incoming,
    pub(super) pool_return: Option<PoolReturn>,
    pub(super) deadline: Option<Pin<Box<Sleep>>>,
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
        if let Some(pool_return) = self.pool_return.take() {
            pool_return.checkin();
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
