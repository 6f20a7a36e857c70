//! The response body served downstream: an upstream body streamed through frame by frame
//! (never re-buffered), or a small body the router wrote itself. When it ends, or is
//! dropped early, the request is complete: the endpoint's in-flight slot is released and
//! metrics and the access log are written, once.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Instant;

use super::proxy::ProxyContext;
use crate::access_log::AccessRecord;
use crate::balancer::InFlight;
use crate::metrics::Outcome;
use crate::upstream::{UpstreamBody, UpstreamBodyError, UpstreamIo};

enum Inner {
    /// Streamed from an endpoint; holds the endpoint's in-flight slot until it ends.
    Upstream(UpstreamBody, Option<InFlight>),
    /// Written by the router (errors, status pages).
    Full(Option<Bytes>),
    /// After a 101 on the native HTTP/1 server: the endpoint's connection, which that
    /// server joins to the client's; the in-flight slot lives as long as the pipe.
    Upgraded(Option<(UpstreamIo, Bytes, InFlight)>),
}

/// A response body served downstream.
pub struct ProxyBody {
    inner: Inner,
    completion: Option<Completion>,
}

/// What is recorded when a response is over.
pub struct Completion {
    pub ctx: Arc<ProxyContext>,
    pub started: Instant,
    pub status: u16,
    pub outcome: Outcome,
    pub response_bytes: u64,
    /// Time spent waiting for the endpoint's response headers.
    pub backend_time: std::time::Duration,
    pub record: Option<Box<AccessRecord>>,
}

impl Completion {
    fn complete(self) {
        let elapsed = self.started.elapsed();
        self.ctx
            .metrics
            .worker(self.ctx.worker)
            .record(self.status, self.outcome, elapsed);
        if let (Some(log), Some(mut record)) = (&self.ctx.access_log, self.record) {
            record.response_bytes = self.response_bytes;
            record.response_time = elapsed;
            record.gorouter_time = elapsed.saturating_sub(self.backend_time);
            log.log(&record);
        }
    }
}

impl ProxyBody {
    /// A body of the given bytes.
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        ProxyBody {
            inner: Inner::Full(Some(bytes.into())),
            completion: None,
        }
    }

    /// An empty body.
    pub fn empty() -> Self {
        ProxyBody {
            inner: Inner::Full(None),
            completion: None,
        }
    }

    /// An endpoint's body, holding its in-flight slot.
    pub fn upstream(body: UpstreamBody, in_flight: InFlight) -> Self {
        ProxyBody {
            inner: Inner::Upstream(body, Some(in_flight)),
            completion: None,
        }
    }

    /// A 101 answer whose endpoint connection waits to be piped to the client's.
    pub fn upgraded(io: UpstreamIo, read_ahead: Bytes, in_flight: InFlight) -> Self {
        ProxyBody {
            inner: Inner::Upgraded(Some((io, read_ahead, in_flight))),
            completion: None,
        }
    }

    /// The endpoint's side of an upgrade, for the server to pipe.
    pub fn take_upgraded(&mut self) -> Option<(UpstreamIo, Bytes, InFlight)> {
        match &mut self.inner {
            Inner::Upgraded(upgraded) => upgraded.take(),
            _ => None,
        }
    }

    /// Records the request when this body ends.
    pub fn on_complete(&mut self, completion: Completion) {
        self.completion = Some(completion);
    }

    fn finish(&mut self) {
        if let Inner::Upstream(_, in_flight) = &mut self.inner {
            in_flight.take();
        }
        if let Some(completion) = self.completion.take() {
            completion.complete();
        }
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = UpstreamBodyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        let frame = match &mut this.inner {
            Inner::Upstream(body, _) => Pin::new(body).poll_frame(cx),
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Upgraded(_) => Poll::Ready(None),
        };
        match &frame {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(c)) = (frame.data_ref(), &mut this.completion) {
                    c.response_bytes += data.len() as u64;
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        match &self.inner {
            Inner::Upstream(body, _) => body.is_end_stream(),
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Upgraded(_) => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            Inner::Upstream(body, _) => body.size_hint(),
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Upgraded(_) => SizeHint::with_exact(0),
        }
    }
}

impl Drop for ProxyBody {
    fn drop(&mut self) {
        // Bodiless responses are never polled, and clients may leave mid-body.
        self.finish();
    }
}
