//! WebSocket, and any other HTTP/1.1 `Upgrade`: once the endpoint answers 101, the
//! client's and the endpoint's connections are joined by a byte pipe until either side
//! closes. Plain TCP on both sides pipes with splice(2) (no copy through user space);
//! TLS on either side falls back to a buffered copy.
//!
//! Lifecycle: request with `Connection: upgrade` + `Upgrade: X` -> forwarded with both
//! headers -> endpoint answers 101 (anything else is an ordinary response) -> 101 sent to
//! the client -> both connections handed over by hyper -> bytes hyper had read ahead are
//! delivered first -> pipe. The endpoint's in-flight slot is held until the pipe ends;
//! during a drain, pipes get `drain_timeout` to finish.

use std::io;

use bytes::Bytes;
use http::HeaderMap;
use http::header::{CONNECTION, HeaderValue, UPGRADE};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::either::Either;

use crate::pipe::{self, PipeStats};
use crate::upstream::UpstreamIo;

/// The `Upgrade` value of a request that asks to switch protocols, if it does.
pub fn requested_upgrade(headers: &HeaderMap) -> Option<HeaderValue> {
    let asks = headers
        .get_all(CONNECTION)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .any(|token| token.trim_ascii().eq_ignore_ascii_case(b"upgrade"));
    if asks {
        headers.get(UPGRADE).cloned()
    } else {
        None
    }
}

/// Puts back the headers hop-by-hop removal took, on the request to the endpoint and on
/// the 101 to the client.
pub fn restore_upgrade_headers(headers: &mut HeaderMap, upgrade: &HeaderValue) {
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, upgrade.clone());
}

/// Waits for the client's connection to be handed over, then pipes bytes between it
/// and the endpoint's connection until either side closes.
pub async fn pipe_upgraded(
    downstream: OnUpgrade,
    upstream: UpstreamIo,
    upstream_read_ahead: Bytes,
) -> io::Result<PipeStats> {
    let downstream = downstream.await.map_err(io::Error::other)?;
    let downstream =
        hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(downstream);
    match (downstream, upstream) {
        (Ok(down), Either::Left(mut up_tcp)) => {
            let (mut down_tcp, down_read) = (down.io.into_inner(), down.read_buf);
            deliver_read_ahead(&mut down_tcp, down_read, &mut up_tcp, upstream_read_ahead).await?;
            pipe::pipe_bidirectional(down_tcp, up_tcp).await
        }
        (Ok(down), Either::Right(up_tls)) => {
            buffered(
                down.io.into_inner(),
                down.read_buf,
                up_tls,
                upstream_read_ahead,
            )
            .await
        }
        // A TLS client: hyper's Upgraded replays the bytes it read ahead itself.
        (Err(upgraded), up) => {
            buffered(
                TokioIo::new(upgraded),
                Bytes::new(),
                up,
                upstream_read_ahead,
            )
            .await
        }
    }
}

/// Delivers the bytes each side sent right behind its handshake to the other side.
pub(crate) async fn deliver_read_ahead<A, B>(
    a: &mut A,
    a_read: Bytes,
    b: &mut B,
    b_read: Bytes,
) -> io::Result<()>
where
    A: AsyncWrite + Unpin,
    B: AsyncWrite + Unpin,
{
    // Bytes one side sent right behind its handshake belong to the other side.
    if !a_read.is_empty() {
        b.write_all(&a_read).await?;
    }
    if !b_read.is_empty() {
        a.write_all(&b_read).await?;
    }
    Ok(())
}

/// Delivers the read-ahead bytes, then copies both ways through a buffer (TLS sides).
pub(crate) async fn buffered<A, B>(
    mut a: A,
    a_read: Bytes,
    mut b: B,
    b_read: Bytes,
) -> io::Result<PipeStats>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    deliver_read_ahead(&mut a, a_read, &mut b, b_read).await?;
    pipe::copy_bidirectional_buffered(a, b).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upgrade_needs_the_connection_token() {
        let mut h = HeaderMap::new();
        h.insert(UPGRADE, HeaderValue::from_static("websocket"));
        assert!(requested_upgrade(&h).is_none());
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, Upgrade"));
        assert_eq!(requested_upgrade(&h).unwrap(), "websocket");
    }
}
