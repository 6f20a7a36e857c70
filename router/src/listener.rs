//! Accepts downstream connections and serves each with hyper (HTTP/1.1, or HTTP/2 with
//! prior knowledge), calling [`crate::http::handle`] for every request.
//!
//! Each worker thread runs one single-threaded runtime with its own accept loop on a clone
//! of the listening socket: a connection, its requests and its upstream connections all
//! stay on one thread, so nothing on the hot path crosses threads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::http::{Downstream, ProxyContext, handle};

/// Downstream connection limits from the config.
#[derive(Debug, Clone)]
pub struct DownstreamSettings {
    /// Time allowed to send a request's headers, idle keep-alive time included.
    pub header_read_timeout: Duration,
    pub max_request_header_bytes: usize,
    /// How long in-flight requests may take to finish once shutdown starts.
    pub drain_timeout: Duration,
}

/// Accepts connections until `stop` fires, then lets open connections finish their
/// in-flight requests (up to `drain_timeout`) and returns.
pub async fn serve(
    listener: TcpListener,
    ctx: Arc<ProxyContext>,
    settings: Arc<DownstreamSettings>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = stop.cancelled() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                connections.spawn(serve_connection(
                    stream,
                    peer,
                    ctx.clone(),
                    settings.clone(),
                    stop.clone(),
                ));
            }
            Err(err) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::error!(error = %err, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    drop(listener);
    connections.close();
    if tokio::time::timeout(settings.drain_timeout, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            open = connections.len(),
            "drain_timeout elapsed with connections still open; closing them"
        );
    }
}

async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    ctx: Arc<ProxyContext>,
    settings: Arc<DownstreamSettings>,
    stop: CancellationToken,
) {
    let _ = stream.set_nodelay(true);
    let downstream = Arc::new(Downstream::new(peer, false));
    let service = service_fn(move |req| {
        let downstream = downstream.clone();
        let ctx = ctx.clone();
        async move { Ok::<_, Infallible>(handle(req, &downstream, &ctx).await) }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout)
        // Past our own limit (answered with gorouter's 431) hyper must not cut in first.
        .max_buf_size(settings.max_request_header_bytes.max(8192) + 64 * 1024);
    builder.http2().timer(TokioTimer::new());
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
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
