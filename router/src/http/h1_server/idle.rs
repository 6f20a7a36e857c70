//! Idle keep-alive connections hold no buffers.
//!
//! Between requests a connection gives its read and write buffers back to this worker
//! thread's spares and waits for readiness instead of a read (nginx does the same). The
//! buffers are taken again when bytes arrive. At 10 000 idle connections that is the
//! difference between ~12 KB and nothing per connection; on a busy connection it costs
//! two thread-local pushes and pops per request, no allocation.

use std::any::Any;
use std::cell::RefCell;

use bytes::BytesMut;
use tokio::net::TcpStream;

/// Capacity of a connection's read buffer: a request head (and its body's start) fits.
pub const READ_CAPACITY: usize = 8 * 1024;
/// Capacity of a connection's write buffer: a response head and a small body.
pub const WRITE_CAPACITY: usize = 4 * 1024;
/// Spare buffers kept per worker thread, so a burst's buffers are not freed at once.
const MAX_SPARE: usize = 64;

#[derive(Default)]
struct Spare {
    read: Vec<BytesMut>,
    write: Vec<Vec<u8>>,
}

thread_local! {
    static SPARE: RefCell<Spare> = RefCell::default();
}

/// An empty read buffer with at least [`READ_CAPACITY`] bytes of room.
pub fn take_read_buffer() -> BytesMut {
    SPARE
        .try_with(|s| s.borrow_mut().read.pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| BytesMut::with_capacity(READ_CAPACITY))
}

/// An empty write buffer with at least [`WRITE_CAPACITY`] bytes of room.
pub fn take_write_buffer() -> Vec<u8> {
    SPARE
        .try_with(|s| s.borrow_mut().write.pop())
        .ok()
        .flatten()
        .unwrap_or_else(|| Vec::with_capacity(WRITE_CAPACITY))
}

/// Gives a connection's buffers back, leaving it none. A read buffer is kept only when
/// its memory is no longer shared with request heads still alive elsewhere (an access
/// log line, say) and it still has its full room; oversized ones (a long body went
/// through) are freed rather than hoarded.
pub fn give_back(read: &mut BytesMut, write: &mut Vec<u8>) {
    let mut read = std::mem::take(read);
    let mut write = std::mem::take(write);
    read.clear();
    write.clear();
    let keep_read = read.capacity() <= 4 * READ_CAPACITY && read.try_reclaim(READ_CAPACITY);
    let keep_write = (WRITE_CAPACITY..=4 * WRITE_CAPACITY).contains(&write.capacity());
    let _ = SPARE.try_with(|s| {
        if let Ok(mut s) = s.try_borrow_mut() {
            if keep_read && s.read.len() < MAX_SPARE {
                s.read.push(read);
            }
            if keep_write && s.write.len() < MAX_SPARE {
                s.write.push(write);
            }
        }
    });
}

/// Waits until `io` may have bytes to read, without a buffer: readiness for plain TCP,
/// and for TLS when rustls holds no decrypted bytes already. Other streams (the fuzzer's
/// in-memory ones) return at once and are read as usual.
pub async fn readable<I: Any>(io: &I) {
    let io: &dyn Any = io;
    let tcp = if let Some(tcp) = io.downcast_ref::<TcpStream>() {
        tcp
    } else if let Some(tls) = io.downcast_ref::<tokio_rustls::server::TlsStream<TcpStream>>() {
        let (tcp, session) = tls.get_ref();
        // Plaintext already decrypted (or a close_notify) is not visible to the socket.
        if !session.wants_read() {
            return;
        }
        tcp
    } else {
        return;
    };
    // The poll form waits in the socket's reader slot, where `readable()` would link a
    // waiter into a list under a lock (2% of the instructions of a keep-alive request).
    // The slot keeps only the last waker: fine, as the connection is the socket's only
    // reader. An error shows again on the read that follows.
    let _ = std::future::poll_fn(|cx| tcp.poll_read_ready(cx)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spare_counts() -> (usize, usize) {
        SPARE.with_borrow(|s| (s.read.len(), s.write.len()))
    }

    #[test]
    fn buffers_given_back_are_reused_unless_shared_or_oversized() {
        let (read0, write0) = spare_counts();
        let mut read = take_read_buffer();
        let mut write = take_write_buffer();
        read.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        write.extend_from_slice(b"HTTP/1.1 200 OK\r\n\r\n");
        give_back(&mut read, &mut write);
        assert_eq!((read.capacity(), write.capacity()), (0, 0));
        assert_eq!(spare_counts(), (read0 + 1, write0 + 1));
        let again = take_read_buffer();
        assert!(again.is_empty() && again.capacity() >= READ_CAPACITY);
        let write_again = take_write_buffer();
        assert!(write_again.is_empty() && write_again.capacity() >= WRITE_CAPACITY);

        // A head split off and still alive elsewhere: its memory is not reclaimable.
        let mut shared = again;
        shared.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
        let head = shared.split_to(8).freeze();
        give_back(&mut shared, &mut Vec::new());
        assert_eq!(spare_counts().0, read0);
        drop(head);

        // A buffer grown by a large body is freed, not hoarded.
        let mut big = BytesMut::with_capacity(1024 * 1024);
        give_back(&mut big, &mut Vec::with_capacity(1024 * 1024));
        assert_eq!(spare_counts(), (read0, write0));
    }
}
