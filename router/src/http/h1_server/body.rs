//! The request body as the proxy reads it on the native HTTP/1 server: the connection
//! lends its read side to the body for the time of one request (behind a mutex nobody
//! else touches meanwhile), and takes it back when the response is written.

use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::upstream::http1::{BodyEvent, BodyReader, Framing};

/// The interim answer to `Expect: 100-continue`.
pub(super) const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// The connection while a request body is being read from it.
pub(super) struct Lent<I> {
    pub io: I,
    pub buf: BytesMut,
    pub reader: BodyReader,
    /// Bytes of "100 Continue" still to write before the first body read.
    pub continue_left: usize,
}

/// Reads request body frames; implemented by [`Lent`] for any connection type.
pub trait BodySource: Send {
    /// The next frame, `None` at the end.
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>>;
    /// Whether the body has been read to its end.
    fn is_done(&self) -> bool;
    /// Back to the concrete type, when the connection takes its read side back.
    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send>;
}

impl<I: AsyncRead + AsyncWrite + Unpin + Send + 'static> BodySource for Lent<I> {
    fn poll_frame(&mut self, cx: &mut Context<'_>) -> Poll<Option<io::Result<Frame<Bytes>>>> {
        // The client waits for 100 Continue before sending: send it on the first read.
        while self.continue_left > 0 {
            let from = CONTINUE.len() - self.continue_left;
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &CONTINUE[from..]))?;
            if n == 0 {
                return Poll::Ready(Some(Err(io::ErrorKind::WriteZero.into())));
            }
            self.continue_left -= n;
            if self.continue_left == 0 {
                ready!(Pin::new(&mut self.io).poll_flush(cx))?;
            }
        }
        loop {
            if self.reader.is_done() {
                return Poll::Ready(None);
            }
            match self.reader.step(&mut self.buf) {
                Ok(Some(BodyEvent::Data(data))) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                Ok(Some(BodyEvent::Trailers(t))) => {
                    return Poll::Ready(Some(Ok(Frame::trailers(t))));
                }
                Ok(Some(BodyEvent::End)) => return Poll::Ready(None),
                Ok(None) => {}
                Err(e) => {
                    return Poll::Ready(Some(Err(io::Error::new(io::ErrorKind::InvalidData, e))));
                }
            }
            if self.buf.capacity() - self.buf.len() < 1024 {
                self.buf.reserve(16 * 1024);
            }
            let n = ready!(tokio_util::io::poll_read_buf(
                Pin::new(&mut self.io),
                cx,
                &mut self.buf
            ))?;
            if n == 0 {
                return Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into())));
            }
        }
    }

    fn is_done(&self) -> bool {
        self.reader.is_done()
    }

    fn into_any(self: Box<Self>) -> Box<dyn std::any::Any + Send> {
        self
    }
}

/// A request body read from a native HTTP/1 connection.
pub struct NativeBody {
    source: Arc<Mutex<Option<Box<dyn BodySource>>>>,
    exact_len: Option<u64>,
}

impl std::fmt::Debug for NativeBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeBody")
            .field("exact_len", &self.exact_len)
            .finish()
    }
}

impl NativeBody {
    pub(super) fn new(source: Arc<Mutex<Option<Box<dyn BodySource>>>>, framing: Framing) -> Self {
        NativeBody {
            source,
            exact_len: match framing {
                Framing::Length(n) => Some(n),
                _ => None,
            },
        }
    }
}

impl http_body::Body for NativeBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut guard = match self.source.lock() {
            Ok(guard) => guard,
            Err(poisoned) => poisoned.into_inner(),
        };
        match guard.as_mut() {
            Some(source) => source.poll_frame(cx),
            // The connection took its read side back: the request is over.
            None => Poll::Ready(Some(Err(io::ErrorKind::UnexpectedEof.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.source
            .lock()
            .map(|g| g.as_ref().is_none_or(|s| s.is_done()))
            .unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        match self.exact_len {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}
