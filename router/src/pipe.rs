//! Byte pipes between two connections, for TCP routes and WebSocket upgrades: once the
//! route is chosen the router no longer looks at the bytes.
//!
//! On Linux, [`pipe_bidirectional`] moves each direction in one of two ways, chosen by
//! what the traffic looks like:
//! - **Small reads** (messages, interactive traffic) go through a per-thread buffer:
//!   read, then write straight away. One copy in and one out is cheaper than splice(2)
//!   for a few hundred bytes (splice must copy a small segment into a page of its own,
//!   then account for the page in the pipe and in the socket it goes to).
//! - **Bulk**: a read that fills the buffer means more is waiting, and the direction
//!   switches to splice(2) through a kernel pipe (socket -> pipe -> socket): the bytes
//!   never enter user space. A splice that brings little switches it back. After
//!   1 MiB the pipe grows to 1 MiB, so that one splice pair moves up to that much.
//!
//! Both are driven by tokio's readiness (`poll_read_ready` / `poll_write_ready` +
//! `try_io`; `read_ready` says why not `readable()`). At rest
//! a direction holds no buffer (a write the destination cannot take whole keeps its
//! rest in a buffer of its own until it is written) and no kernel pipe until it first
//! sees bulk, so an idle WebSocket costs no more than its two sockets.
//!
//! Lifecycle of one direction:
//! 1. Read what the source has; write it to the destination (buffer or splice).
//! 2. On EOF from the source: `shutdown(Write)` on the destination (half-close), and the
//!    direction ends; the other one keeps going until its own EOF.
//! 3. Any error (reset, broken pipe) ends both directions and is returned.
//!
//! Where splice is unavailable (EINVAL, ENOSYS: old kernels, sandboxes) a direction stays
//! with the buffer. [`copy_bidirectional_buffered`] is the same contract for streams that
//! have no file descriptor to splice (TLS).

use std::cell::RefCell;
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
    /// Of all those, the bytes that went through splice(2) rather than a buffer.
    pub spliced: u64,
}

/// Size of the per-thread buffer of small reads; a read that fills it is bulk.
const READ_BUFFER: usize = 16 * 1024;

/// A splice that brings less than this is no longer bulk: back to the buffer.
const SPLICE_AT_LEAST: usize = 4 * 1024;

/// A direction that has spliced this much is a long transfer: its pipe grows to
/// [`LONG_TRANSFER_PIPE`].
const LONG_TRANSFER_AFTER: u64 = 1024 * 1024;

/// The pipe size of a long transfer (Linux's default `pipe-max-size`). Each splice moves
/// up to this much, so the receiver behind the router wakes once per 1 MiB rather than
/// per 64 KiB: -20% of the router's CPU per MiB in the TCP benchmark. Short transfers
/// keep the default, as the pipe's size counts against the user's pipe quota
/// (`pipe-user-pages-soft`) whether it holds data or not.
const LONG_TRANSFER_PIPE: usize = 1024 * 1024;

thread_local! {
    /// The buffer small reads go through. Each read is written out before the next
    /// await, so one buffer serves every pipe of the thread.
    static READ_SCRATCH: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Pipes bytes both ways between `a` and `b` until both directions reached EOF, with
/// splice(2) for bulk where the kernel allows it. An EOF one way half-closes the other
/// stream's write side; an error either way ends the pipe and is returned.
pub async fn pipe_bidirectional(a: TcpStream, b: TcpStream) -> io::Result<PipeStats> {
    let (a_to_b, b_to_a) = tokio::try_join!(
        one_way(&a, &b, Splice::WhenBulk),
        one_way(&b, &a, Splice::WhenBulk)
    )?;
    Ok(PipeStats {
        a_to_b: a_to_b.moved,
        b_to_a: b_to_a.moved,
        spliced: a_to_b.spliced + b_to_a.spliced,
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
    Ok(PipeStats {
        a_to_b,
        b_to_a,
        spliced: 0,
    })
}

/// Whether a direction may use splice(2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Splice {
    WhenBulk,
    /// The buffer only (splice is unsupported here; tests of the buffered path).
    Never,
}

/// What one direction moved.
#[derive(Debug, Clone, Copy, Default)]
struct Moved {
    moved: u64,
    spliced: u64,
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
        // The default size (64 KiB) to start with: only a long transfer grows it
        // (`LONG_TRANSFER_PIPE`), as the size counts against the user's pipe quota.
        let capacity = rustix::pipe::fcntl_getpipe_size(&read).unwrap_or(64 * 1024);
        Ok(KernelPipe {
            read,
            write,
            capacity,
        })
    }

    /// Asks for a larger pipe (empty, as between two splices); where the kernel refuses
    /// (over the user's pipe quota, above `pipe-max-size`) the pipe stays as it was.
    fn grow(&mut self, size: usize) {
        match rustix::pipe::fcntl_setpipe_size(&self.read, size) {
            Ok(granted) => self.capacity = granted,
            Err(err) => tracing::debug!(error = %err, size, "pipe not grown"),
        }
    }
}

/// Moves `src` -> `dst` until EOF, then half-closes `dst`.
async fn one_way(src: &TcpStream, dst: &TcpStream, mut splice: Splice) -> io::Result<Moved> {
    let mut total = Moved::default();
    // Made at the first bulk read, kept for the next (an empty pipe holds no pages).
    let mut pipe: Option<KernelPipe> = None;
    let mut splicing = false;
    loop {
        if splicing && let Some(pipe) = &mut pipe {
            // The pipe is empty here: anything an earlier splice put in was drained.
            let filled = match fill(src, pipe).await {
                Ok(0) => break,
                Ok(n) => n,
                Err(err) if splice_unsupported(&err) => {
                    tracing::debug!(error = %err, "splice unsupported; using the buffer");
                    splice = Splice::Never;
                    splicing = false;
                    continue;
                }
                Err(err) => return Err(err),
            };
            drain(pipe, dst, filled).await?;
            let before = total.spliced;
            total.moved += filled as u64;
            total.spliced += filled as u64;
            if before < LONG_TRANSFER_AFTER && total.spliced >= LONG_TRANSFER_AFTER {
                pipe.grow(LONG_TRANSFER_PIPE);
            }
            splicing = filled >= SPLICE_AT_LEAST;
            continue;
        }
        let bulk = match copy_small_read(src, dst).await? {
            SmallRead::Eof => break,
            SmallRead::Moved { len, filled_buffer } => {
                total.moved += len as u64;
                filled_buffer
            }
        };
        if bulk && splice == Splice::WhenBulk {
            if pipe.is_none() {
                match KernelPipe::new() {
                    Ok(made) => pipe = Some(made),
                    // Out of descriptors, say: the buffer still serves.
                    Err(err) => tracing::debug!(error = %err, "no kernel pipe; using the buffer"),
                }
            }
            splicing = pipe.is_some();
        }
    }
    half_close(dst)?;
    Ok(total)
}

/// What one buffered read did.
enum SmallRead {
    Eof,
    Moved { len: usize, filled_buffer: bool },
}

/// Reads what `src` has (up to [`READ_BUFFER`]) and writes it all to `dst`: at once
/// when `dst` takes it, else from a copy of the rest once `dst` is writable.
async fn copy_small_read(src: &TcpStream, dst: &TcpStream) -> io::Result<SmallRead> {
    loop {
        read_ready(src).await?;
        let step = READ_SCRATCH.with_borrow_mut(|buf| -> io::Result<Option<(usize, Vec<u8>)>> {
            if buf.len() < READ_BUFFER {
                buf.resize(READ_BUFFER, 0);
            }
            let mut short_read = 0;
            let read = src.try_io(Interest::READABLE, || {
                let len = rustix::io::read(src, &mut buf[..])?;
                if 0 < len && len < READ_BUFFER {
                    // A short read emptied the socket, so its readiness goes with it
                    // (as tokio's own `poll_read` does; the closed bits stay): that
                    // saves the read that would only have said EAGAIN.
                    short_read = len;
                    return Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(len)
            });
            let len = match read {
                Ok(0) => return Ok(Some((0, Vec::new()))),
                Ok(len) => len,
                Err(err) if retry_later(&err) && short_read > 0 => short_read,
                Err(err) if retry_later(&err) => return Ok(None),
                Err(err) => return Err(err),
            };
            let written = match dst.try_write(&buf[..len]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => written,
                Err(err) if retry_later(&err) => 0,
                Err(err) => return Err(err),
            };
            // Only what `dst` did not take leaves the shared buffer.
            Ok(Some((len, buf[written..len].to_vec())))
        })?;
        let Some((len, rest)) = step else {
            continue;
        };
        if len == 0 {
            return Ok(SmallRead::Eof);
        }
        write_all(dst, &rest).await?;
        return Ok(SmallRead::Moved {
            len,
            filled_buffer: len == READ_BUFFER,
        });
    }
}

/// Writes `bytes` to `dst`, waiting for it to be writable.
async fn write_all(dst: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        write_ready(dst).await?;
        match dst.try_write(bytes) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(written) => bytes = &bytes[written..],
            Err(err) if retry_later(&err) => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Splices what `src` has (up to the pipe's capacity) into the empty pipe; 0 is EOF.
///
/// The pipe is always empty here, so a splice that would block can only be waiting on
/// `src`: that is what makes clearing `src`'s readiness on EAGAIN correct.
async fn fill(src: &TcpStream, pipe: &KernelPipe) -> io::Result<usize> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        read_ready(src).await?;
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
        write_ready(dst).await?;
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

/// Waits until `stream` is (or may be) readable. The poll form keeps one waker in the
/// socket's reader slot, where `readable()` links a waiter into a list under a lock on
/// every wait: a quarter of the router's instructions per WebSocket message went there.
/// The slot holds only the last waker, which is enough here: each socket of a pipe has
/// one reading direction and one writing direction.
async fn read_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_read_ready(cx)).await
}

/// Waits until `stream` is (or may be) writable; see [`read_ready`].
async fn write_ready(stream: &TcpStream) -> io::Result<()> {
    std::future::poll_fn(|cx| stream.poll_write_ready(cx)).await
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
