//! Byte pipes between two connections, for TCP routes and WebSocket upgrades: once the
//! route is chosen the router no longer looks at the bytes, so it should not copy them.
//!
//! On Linux, [`pipe_bidirectional`] moves each direction with splice(2) through a kernel
//! pipe (socket -> pipe -> socket): the data never enters user space. Each direction
//! alternates "fill the pipe from the source" and "drain it into the destination", driven
//! by tokio's readiness (`readable()` / `writable()` + `try_io`), so a slow reader holds
//! at most one pipe's worth (64 KiB by default) per direction in the kernel.
//!
//! Lifecycle of one direction:
//! 1. splice source -> pipe (only when the pipe is empty; see `fill`).
//! 2. splice pipe -> destination until the pipe is empty; back to 1.
//! 3. On EOF from the source: `shutdown(Write)` on the destination (half-close), and the
//!    direction ends; the other one keeps going until its own EOF.
//! 4. Any error (reset, broken pipe) ends both directions and is returned.
//!
//! Where splice is unavailable (EINVAL, ENOSYS: old kernels, sandboxes) a direction falls
//! back to a buffered copy before it has moved any byte. [`copy_bidirectional_buffered`]
//! is the same contract for streams that have no file descriptor to splice (TLS).

use std::io;
use std::net::Shutdown;
use std::os::fd::OwnedFd;

use rustix::io::Errno;
use rustix::pipe::{PipeFlags, SpliceFlags};
use tokio::io::{AsyncRead, AsyncWrite, Interest};
use tokio::net::TcpStream;

/// Bytes moved by a finished pipe, per direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeStats {
    /// Bytes read from the first stream and written to the second.
    pub a_to_b: u64,
    /// Bytes read from the second stream and written to the first.
    pub b_to_a: u64,
}

/// Size of the user-space buffer of the fallback copy.
const BUFFERED_CHUNK: usize = 64 * 1024;

/// Pipes bytes both ways between `a` and `b` until both directions reached EOF, with
/// splice(2) where the kernel allows it. An EOF one way half-closes the other stream's
/// write side; an error either way ends the pipe and is returned.
pub async fn pipe_bidirectional(a: TcpStream, b: TcpStream) -> io::Result<PipeStats> {
    // One kernel pipe per direction. If pipes cannot be made (no splice support, fd
    // limit), the buffered copy still serves the connection.
    let (a_to_b, b_to_a) = match (KernelPipe::new(), KernelPipe::new()) {
        (Ok(p1), Ok(p2)) => (p1, p2),
        (Err(err), _) | (_, Err(err)) => {
            tracing::debug!(error = %err, "no kernel pipe; using a buffered copy");
            return copy_bidirectional_buffered(a, b).await;
        }
    };
    let (sent, received) = tokio::try_join!(one_way(&a, &b, &a_to_b), one_way(&b, &a, &b_to_a))?;
    Ok(PipeStats {
        a_to_b: sent,
        b_to_a: received,
    })
}

/// Pipes bytes both ways through a user-space buffer: for streams without a socket to
/// splice (TLS). Same half-close and error behaviour as [`pipe_bidirectional`].
pub async fn copy_bidirectional_buffered<A, B>(mut a: A, mut b: B) -> io::Result<PipeStats>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (a_to_b, b_to_a) = tokio::io::copy_bidirectional(&mut a, &mut b).await?;
    Ok(PipeStats { a_to_b, b_to_a })
}

/// A kernel pipe: the buffer one direction splices through.
struct KernelPipe {
    read: OwnedFd,
    write: OwnedFd,
    /// How much one splice into the pipe may move.
    capacity: usize,
}

impl KernelPipe {
    fn new() -> io::Result<Self> {
        let (read, write) = rustix::pipe::pipe_with(PipeFlags::CLOEXEC | PipeFlags::NONBLOCK)?;
        // The default (64 KiB) is kept: a larger pipe costs unswappable kernel memory on
        // every open connection and gained little on loopback.
        let capacity = rustix::pipe::fcntl_getpipe_size(&read).unwrap_or(64 * 1024);
        Ok(KernelPipe {
            read,
            write,
            capacity,
        })
    }
}

/// Moves `src` -> `dst` until EOF, then half-closes `dst`. Returns the bytes moved.
async fn one_way(src: &TcpStream, dst: &TcpStream, pipe: &KernelPipe) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        let filled = match fill(src, pipe).await {
            Ok(0) => break,
            Ok(n) => n,
            // Decided on the first splice, before any byte went through the pipe.
            Err(err) if moved == 0 && splice_unsupported(&err) => {
                tracing::debug!(error = %err, "splice unsupported; using a buffered copy");
                return copy_buffered_one_way(src, dst).await;
            }
            Err(err) => return Err(err),
        };
        drain(pipe, dst, filled).await?;
        moved += filled as u64;
    }
    half_close(dst)?;
    Ok(moved)
}

/// Splices what `src` has (up to the pipe's capacity) into the empty pipe; 0 is EOF.
///
/// The pipe is always empty here, so a splice that would block can only be waiting on
/// `src`: that is what makes clearing `src`'s readiness on EAGAIN correct.
async fn fill(src: &TcpStream, pipe: &KernelPipe) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        src.readable().await?;
        match src.try_io(Interest::READABLE, || {
            Ok(rustix::pipe::splice(
                src,
                None,
                &pipe.write,
                None,
                pipe.capacity,
                flags,
            )?)
        }) {
            Ok(n) => return Ok(n),
            Err(err) if retry_later(&err) => continue,
            Err(err) => return Err(err),
        }
    }
}

/// Splices `len` bytes from the pipe into `dst`. The pipe holds them, so a splice that
/// would block is waiting on `dst`.
async fn drain(pipe: &KernelPipe, dst: &TcpStream, mut len: usize) -> io::Result<()> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    while len > 0 {
        dst.writable().await?;
        match dst.try_io(Interest::WRITABLE, || {
            Ok(rustix::pipe::splice(
                &pipe.read, None, dst, None, len, flags,
            )?)
        }) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => len -= n,
            Err(err) if retry_later(&err) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// The fallback for one direction: read into a buffer, write it out.
async fn copy_buffered_one_way(src: &TcpStream, dst: &TcpStream) -> io::Result<u64> {
    let mut moved = 0u64;
    let mut buf = vec![0u8; BUFFERED_CHUNK];
    loop {
        src.readable().await?;
        let n = match src.try_read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(err) if retry_later(&err) => continue,
            Err(err) => return Err(err),
        };
        let mut written = 0;
        while written < n {
            dst.writable().await?;
            match dst.try_write(&buf[written..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(w) => written += w,
                Err(err) if retry_later(&err) => continue,
                Err(err) => return Err(err),
            }
        }
        moved += n as u64;
    }
    half_close(dst)?;
    Ok(moved)
}

/// Passes an EOF on: the peer of `dst` reads EOF, and may still send the other way.
fn half_close(dst: &TcpStream) -> io::Result<()> {
    match socket2::SockRef::from(dst).shutdown(Shutdown::Write) {
        // The peer is already gone entirely: nothing left to tell it.
        Err(err) if err.kind() == io::ErrorKind::NotConnected => Ok(()),
        other => other,
    }
}

/// A spurious wake-up (readiness was stale) or a signal: wait and try again.
fn retry_later(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// splice(2) cannot serve these descriptors at all, as opposed to a connection error.
fn splice_unsupported(err: &io::Error) -> bool {
    let raw = err.raw_os_error();
    raw == Some(Errno::INVAL.raw_os_error()) || raw == Some(Errno::NOSYS.raw_os_error())
}

#[cfg(test)]
mod tests;
