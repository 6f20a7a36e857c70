//! This worker thread's upstream connections: idle HTTP/1 keep-alive connections per
//! endpoint (LIFO, capped), and one multiplexed HTTP/2 connection per endpoint.
//! Thread-local, so checkout and return take no lock.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hyper::client::conn::http2;
use tokio::time::Instant;

use super::RequestBody;
use super::http1::Conn;

pub(super) type H2Sender = http2::SendRequest<RequestBody>;

struct IdleConn {
    conn: Conn,
    since: Instant,
}

thread_local! {
    static IDLE: RefCell<HashMap<Arc<str>, Vec<IdleConn>, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
    static H2: RefCell<HashMap<Arc<str>, H2Sender, foldhash::fast::RandomState>> =
        RefCell::new(HashMap::default());
}

/// An idle HTTP/1 connection to `key` that is still open and not idle too long.
pub(super) fn checkout(key: &str, idle_timeout: Duration) -> Option<Conn> {
    IDLE.with_borrow_mut(|idle| {
        let conns = idle.get_mut(key)?;
        let now = Instant::now();
        while let Some(idle) = conns.pop() {
            if now.duration_since(idle.since) < idle_timeout && !idle.conn.is_closed_while_idle() {
                let mut conn = idle.conn;
                conn.reused = true;
                return Some(conn);
            }
        }
        None
    })
}

/// Puts a connection whose exchange ended cleanly back in the idle pool, unless the
/// pool for `key` is full.
pub(super) fn checkin(key: Arc<str>, conn: Conn, max_idle: usize) {
    if max_idle == 0 {
        return;
    }
    // try_with: a body dropped while the thread shuts down just closes its connection.
    let _ = IDLE.try_with(|idle| {
        if let Ok(mut idle) = idle.try_borrow_mut() {
            let conns = idle.entry(key).or_default();
            if conns.len() < max_idle {
                conns.push(IdleConn {
                    conn,
                    since: Instant::now(),
                });
            }
        }
    });
}

/// The live HTTP/2 connection to `key`, if any.
pub(super) fn h2_sender(key: &str) -> Option<H2Sender> {
    H2.with_borrow_mut(|h2| {
        let sender = h2.get(key)?;
        if sender.is_closed() {
            h2.remove(key);
            return None;
        }
        Some(sender.clone())
    })
}

/// Keeps an HTTP/2 connection for later requests to `key`.
pub(super) fn keep_h2(key: Arc<str>, sender: H2Sender) {
    H2.with_borrow_mut(|h2| h2.insert(key, sender));
}
