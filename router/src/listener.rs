//! Accepts downstream connections (plain, and TLS when enabled) and serves each with
//! hyper (HTTP/1.1, or HTTP/2 by ALPN or prior knowledge), calling
//! [`crate::http::handle`] for every request.
//!
//! Each worker thread runs one single-threaded runtime with its own accept loops on
//! clones of the listening sockets: a connection, its requests and its upstream
//! connections all stay on one thread, so nothing on the hot path crosses threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::rt::{Read, Write};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Http2Config;
use crate::http::h1_server::Start;
use crate::http::{Downstream, ProxyContext, handle};
use tokio::io::{AsyncRead, AsyncWrite};

/// Downstream connection limits from the config.
#[derive(Debug, Clone)]
pub struct DownstreamSettings {
    /// Time allowed to send a request's headers, idle keep-alive time included.
    pub header_read_timeout: Duration,
    pub max_request_header_bytes: usize,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub drain_timeout: Duration,
    pub enable_http2: bool,
    pub http2: Http2Config,
    pub tls_handshake_timeout: Duration,
    /// Serve HTTP/1 with the native server (else hyper's).
    pub native_http1: bool,
}

/// A listening socket, and the TLS acceptor when it is the TLS listener.
pub struct Listener {
    pub socket: TcpListener,
    pub tls: Option<TlsAcceptor>,
}

/// Accepts connections until `stop` fires, then lets open connections (and upgraded
/// pipes) finish, up to `drain_timeout`, and returns.
pub async fn serve(
    listeners: Vec<Listener>,
    ctx: Arc<ProxyContext>,
    settings: Arc<DownstreamSettings>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    let anchor = tokio::spawn(anchor_timers());
    let accept_loops: Vec<_> = listeners
        .into_iter()
        .map(|listener| {
            tokio::spawn(accept_loop(
                listener,
                ctx.clone(),
                settings.clone(),
                stop.clone(),
                connections.clone(),
            ))
        })
        .collect();
    for accept_loop in accept_loops {
        let _ = accept_loop.await;
    }
    connections.close();
    ctx.pipes.close();
    let drained = async {
        connections.wait().await;
        ctx.pipes.wait().await;
    };
    if tokio::time::timeout(settings.drain_timeout, drained)
        .await
        .is_err()
    {
        tracing::warn!(
            connections = connections.len(),
            pipes = ctx.pipes.len(),
            "drain_timeout elapsed with connections still open; closing them"
        );
    }
    anchor.abort();
}

/// Keeps a timer due within [`ANCHOR_PERIOD`] on this worker's runtime, for as long as it
/// serves.
///
/// Tokio wakes its I/O driver (an eventfd write, then one more `epoll_wait` turn) whenever
/// a timer is registered earlier than every timer pending when the driver last parked,
/// even on the driver's own thread while it is busy running tasks
/// (tokio-rs/tokio#5207). Between connections no timer may be pending, so each new
/// connection's head deadline and upstream timeout paid for that: 1.6 extra system calls
/// per request with a new connection per request. With this timer pending, the
/// connection timers (seconds) are never the earliest and register without a wake-up.
async fn anchor_timers() {
    loop {
        tokio::time::sleep(ANCHOR_PERIOD).await;
    }
}

/// Shorter than any connection timeout in practice; one wake-up per period when idle.
const ANCHOR_PERIOD: Duration = Duration::from_secs(1);

async fn accept_loop(
    listener: Listener,
    ctx: Arc<ProxyContext>,
    settings: Arc<DownstreamSettings>,
    stop: CancellationToken,
    connections: TaskTracker,
) {
    // Registered with the token once, then read without its lock.
    let stopped = crate::stop_signal::Stopped::new(&stop);
    tokio::pin!(stopped);
    // Connections share the token through an `Arc`: cloning (and dropping) the token
    // itself takes its process-wide lock, twice per connection.
    let shared_stop = Arc::new(stop.clone());
    loop {
        let accepted = tokio::select! {
            biased;
            () = &mut stopped => return,
            accepted = listener.socket.accept() => accepted,
        };
        match accepted {
            Ok((stream, peer)) => {
                let _ = stream.set_nodelay(true);
                let (ctx, settings, stop) = (ctx.clone(), settings.clone(), shared_stop.clone());
                // The connection's future (kilobytes: a request's proxy state is inline)
                // is boxed once here, so that the task tokio allocates stays small: tokio
                // moves a task's future into place at spawn and writes its stage over it
                // when it completes, and with the future inline those copies were ~6 000
                // of the ~34 000 instructions of a request on a new connection.
                match &listener.tls {
                    None => connections.spawn(Box::pin(async move {
                        let downstream = Downstream::new(peer, false);
                        serve_connection(stream, downstream, ctx, settings, stop, false).await
                    })),
                    Some(acceptor) => connections.spawn(Box::pin(serve_tls(
                        stream,
                        peer,
                        acceptor.clone(),
                        ctx,
                        settings,
                        stop,
                    ))),
                };
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_tls(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: TlsAcceptor,
    ctx: Arc<ProxyContext>,
    settings: Arc<DownstreamSettings>,
    stop: Arc<CancellationToken>,
) {
    let handshake = tokio::time::timeout(settings.tls_handshake_timeout, acceptor.accept(stream));
    let tls = match handshake.await {
        Ok(Ok(tls)) => tls,
        Ok(Err(err)) => {
            tracing::debug!(peer = %peer, error = %err, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(peer = %peer, "TLS handshake timed out");
            return;
        }
    };
    let client_cert = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|chain| chain.first())
        .and_then(crate::tls::client_cert_header);
    let alpn_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut downstream = Downstream::new(peer, true);
    downstream.client_cert = client_cert;
    serve_connection(tls, downstream, ctx, settings, stop, alpn_h2).await;
}

/// Serves one accepted downstream connection (plain, or after the TLS handshake) until it
/// closes: HTTP/1 on the native server (or hyper's, by config), HTTP/2 (ALPN `h2`, or
/// the preface on a plain connection) on hyper's. Public so that the fuzzer drives the
/// same code over an in-memory stream.
pub async fn serve_connection<I>(
    io: I,
    downstream: Downstream,
    ctx: Arc<ProxyContext>,
    settings: Arc<DownstreamSettings>,
    stop: Arc<CancellationToken>,
    alpn_h2: bool,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // hyper's connection future is boxed: it is kilobytes, and inline it would be part of
    // every connection's future, native HTTP/1 ones included (moved at spawn, and
    // resident while the connection lives).
    if alpn_h2 || !settings.native_http1 {
        return Box::pin(serve_hyper(
            TokioIo::new(io),
            downstream,
            ctx,
            settings,
            stop,
        ))
        .await;
    }
    let h1 = crate::http::h1_server::serve(io, &downstream, &ctx, &settings, &stop);
    if let Start::Http2 { io, read } = h1.await {
        Box::pin(serve_hyper(
            TokioIo::new(Prefixed { prefix: read, io }),
            downstream,
            ctx,
            settings,
            stop,
        ))
        .await;
    }
}

/// A connection whose first bytes were already read: they are read again first.
struct Prefixed<I> {
    prefix: bytes::Bytes,
    io: I,
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            let head = self.prefix.split_to(n);
            buf.put_slice(&head);
            return std::task::Poll::Ready(Ok(()));
        }
        std::pin::Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Serves a connection with hyper (HTTP/2, or HTTP/1 when so configured).
async fn serve_hyper<I>(
    io: I,
    downstream: Downstream,
    ctx: Arc<ProxyContext>,
    settings: Arc<DownstreamSettings>,
    stop: Arc<CancellationToken>,
) where
    I: Read + Write + Unpin + Send + 'static,
{
    let peer = downstream.peer;
    let downstream = Arc::new(downstream);
    let service = service_fn(move |req| {
        let downstream = downstream.clone();
        let ctx = ctx.clone();
        async move {
            let req = req.map(crate::upstream::RequestBody::from_incoming);
            Ok::<_, Infallible>(handle(req, &downstream, &ctx, None).await)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // Past our own limit (answered with gorouter's 431) hyper must not cut in first.
        .max_buf_size(settings.max_request_header_bytes.max(8192) + 64 * 1024);
    let h2 = &settings.http2;
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(h2.max_concurrent_streams)
        .initial_stream_window_size(h2.initial_stream_window_size)
        .initial_connection_window_size(h2.initial_connection_window_size)
        .max_frame_size(h2.max_frame_size)
        .max_header_list_size(settings.max_request_header_bytes.min(u32::MAX as usize) as u32)
        .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)));
    if !settings.enable_http2 {
        builder = builder.http1_only();
    }
    let conn = builder.serve_connection_with_upgrades(io, service);
    tokio::pin!(conn);
    let result = tokio::select! {
        result = conn.as_mut() => result,
        () = stop.cancelled() => {
            // Finish the request in flight, close idle keep-alive connections now.
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(err) = result {
        tracing::debug!(peer = %peer, error = %err, "downstream connection error");
    }
}
