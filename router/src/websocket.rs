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
use hyper::upgrade::{OnUpgrade, Upgraded};
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

/// Waits for both sides to be handed over, then pipes bytes until either side closes.
pub async fn pipe_upgraded(downstream: OnUpgrade, upstream: OnUpgrade) -> io::Result<PipeStats> {
    let (downstream, upstream) =
        tokio::try_join!(downstream, upstream).map_err(io::Error::other)?;
    let downstream =
        hyper_util::server::conn::auto::upgrade::downcast::<TokioIo<TcpStream>>(downstream);
    let upstream = upstream.downcast::<TokioIo<UpstreamIo>>();
    match (downstream, upstream) {
        (Ok(down), Ok(up)) => {
            let (down_io, down_buf) = (down.io.into_inner(), down.read_buf);
            match up.io.into_inner() {
                Either::Left(up_io) => {
                    let (mut down_io, mut up_io) = (down_io, up_io);
                    deliver_read_ahead(&mut down_io, down_buf, &mut up_io, up.read_buf).await?;
                    pipe::pipe_bidirectional(down_io, up_io).await
                }
                Either::Right(up_tls) => buffered(down_io, down_buf, up_tls, up.read_buf).await,
            }
        }
        (down, up) => {
            let down = down.map_or_else(rewrap, |d| {
                (Box::new(d.io.into_inner()) as BoxedIo, d.read_buf)
            });
            let up = up.map_or_else(rewrap, |u| {
                (Box::new(u.io.into_inner()) as BoxedIo, u.read_buf)
            });
            buffered(down.0, down.1, up.0, up.1).await
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}
type BoxedIo = Box<dyn Io>;

/// An upgraded connection whose type we could not recover: used through hyper's traits.
fn rewrap(upgraded: Upgraded) -> (BoxedIo, Bytes) {
    (Box::new(TokioIo::new(upgraded)), Bytes::new())
}

async fn deliver_read_ahead<A, B>(
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

async fn buffered<A, B>(mut a: A, a_read: Bytes, mut b: B, b_read: Bytes) -> io::Result<PipeStats>
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
