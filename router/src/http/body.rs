//! The response body type the downstream side serves: an upstream body streamed through
//! frame by frame (never re-buffered), or a small body the router wrote itself.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use crate::balancer::InFlight;
use crate::upstream::{UpstreamBody, UpstreamBodyError};

/// A response body served downstream.
pub enum ProxyBody {
    /// Streamed from an endpoint; holds the endpoint's in-flight slot until it ends.
    Upstream(UpstreamBody, Option<InFlight>),
    /// Written by the router (errors, status pages).
    Full(Option<Bytes>),
}

impl ProxyBody {
    /// A body of the given bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(bytes.into()))
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody::Full(None)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            ProxyBody::Upstream(body, in_flight) => {
                let frame = Pin::new(&mut *body).poll_frame(cx);
                if let Poll::Ready(None | Some(Err(_))) = &frame {
                    // The exchange is over: free the endpoint's slot now, not at drop.
                    in_flight.take();
                }
                frame
            }
            ProxyBody::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Upstream(body, _) => body.is_end_stream(),
            ProxyBody::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Upstream(body, _) => body.size_hint(),
            ProxyBody::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
        }
    }
}
