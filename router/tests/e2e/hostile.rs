//! Hostile clients over real sockets: request smuggling, header injection, oversize
//! requests, slowloris and slow bodies, piles of idle connections, HTTP/2 abuse, and
//! WebSocket frames split byte by byte. Each test checks the router's answer (400, 431,
//! a reset stream, a GOAWAY or a close) and that it goes on serving other clients.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::*;

const HOST: &str = "hostile.example.com";

async fn router_with_backend(tweak: impl FnOnce(&mut router::Config)) -> (TestRouter, Backend) {
    let backend = Backend::http("hostile").await;
    let mut config = test_config();
    config.routes = vec![backend.registration(&[HOST])];
    tweak(&mut config);
    (TestRouter::start(config).await, backend)
}

/// A normal client still gets its answer.
async fn assert_still_serves(addr: SocketAddr) {
    let answer = tokio::time::timeout(Duration::from_secs(5), get(addr, HOST, "/", &[]))
        .await
        .expect("the router no longer answers");
    assert_eq!(answer.status, 200, "{}", answer.text());
}

/// Sends `request` on a new connection and reads until the router closes it; panics if it
/// is still open after `limit`. Write errors are ignored: the router may close first.
async fn until_closed(addr: SocketAddr, request: &[u8], limit: Duration) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let _ = stream.write_all(request).await;
    let mut out = Vec::new();
    let read = tokio::time::timeout(limit, async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(
        read.is_ok(),
        "connection still open after {limit:?}; got {:?}",
        String::from_utf8_lossy(&out)
    );
    String::from_utf8_lossy(&out).into_owned()
}

fn statuses(answer: &str) -> Vec<&str> {
    answer
        .match_indices("HTTP/1.1 ")
        .map(|(i, _)| &answer[i + 9..i + 12])
        .collect()
}

// ---- Request smuggling -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn content_length_with_transfer_encoding_cannot_smuggle_a_request() {
    let (router, backend) = router_with_backend(|_| {}).await;
    // A front end that trusted Content-Length would see one request with a 34-byte
    // body; one that trusts Transfer-Encoding sees an empty body and a second request.
    let answer = until_closed(
        router.http,
        b"POST /count HTTP/1.1\r\nHost: hostile.example.com\r\nContent-Length: 34\r\n\
          Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /smuggled HTTP/1.1\r\nHost: x\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    // Refused outright (RFC 9112 6.1 allows it; nginx does the same), and the
    // connection closed, so the bytes behind the head are never read as a request.
    assert_eq!(statuses(&answer), ["400"], "{answer}");
    assert_eq!(backend.requests.load(Ordering::Relaxed), 0);
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_framing_is_refused_with_400() {
    let (router, backend) = router_with_backend(|_| {}).await;
    let cases: [(&str, &[u8]); 7] = [
        (
            "duplicate Content-Length with different values",
            b"POST /count HTTP/1.1\r\nHost: hostile.example.com\r\nContent-Length: 3\r\n\
              Content-Length: 4\r\n\r\nabcd",
        ),
        (
            "Content-Length list with different values",
            b"POST /count HTTP/1.1\r\nHost: hostile.example.com\r\nContent-Length: 3, 4\r\n\r\nabcd",
        ),
        (
            "Transfer-Encoding in HTTP/1.0",
            b"POST /count HTTP/1.0\r\nHost: hostile.example.com\r\n\
              Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
        ),
        (
            "Transfer-Encoding not ending in chunked",
            b"POST /count HTTP/1.1\r\nHost: hostile.example.com\r\n\
              Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n",
        ),
        (
            "obs-fold",
            b"GET / HTTP/1.1\r\nHost: hostile.example.com\r\nX-A: a\r\n X-Injected: 1\r\n\r\n",
        ),
        (
            "bare CR in a header value",
            b"GET / HTTP/1.1\r\nHost: hostile.example.com\r\nX-A: a\rX-Injected: 1\r\n\r\n",
        ),
        (
            "space before the colon",
            b"GET / HTTP/1.1\r\nHost : hostile.example.com\r\n\r\n",
        ),
    ];
    for (what, request) in cases {
        let answer = until_closed(router.http, request, Duration::from_secs(5)).await;
        assert_eq!(statuses(&answer), ["400"], "{what}: {answer}");
    }
    assert_eq!(
        backend.requests.load(Ordering::Relaxed),
        0,
        "a malformed request reached the app"
    );
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_chunk_sizes_end_the_request_without_reaching_the_app_whole() {
    let (router, backend) = router_with_backend(|_| {}).await;
    for body in [
        &b"zz\r\nhello\r\n0\r\n\r\n"[..],
        b"ffffffffffffffffff\r\nhello\r\n0\r\n\r\n",
        b"-5\r\nhello\r\n0\r\n\r\n",
        b"5\r\nhelloXX0\r\n\r\n",
        b"5 ;x\r\nhello\r\n0\r\n\r\n",
    ] {
        let mut request = b"POST /count HTTP/1.1\r\nHost: hostile.example.com\r\n\
                            Transfer-Encoding: chunked\r\n\r\n"
            .to_vec();
        request.extend_from_slice(body);
        request.extend_from_slice(b"GET /smuggled HTTP/1.1\r\nHost: hostile.example.com\r\n\r\n");
        let answer = until_closed(router.http, &request, Duration::from_secs(5)).await;
        let shown = String::from_utf8_lossy(body);
        // Either refused outright, or the app got a cut-off body and the router answered
        // with an error; never the app's 200 for a body it could not frame, and never a
        // second request read from the garbage.
        assert!(
            !statuses(&answer).contains(&"200"),
            "{shown:?} was accepted: {answer}"
        );
        assert!(statuses(&answer).len() <= 1, "{shown:?}: {answer}");
    }
    let seen = backend.requests.load(Ordering::Relaxed);
    assert!(seen <= 5, "the app saw {seen} requests for 5 attempts");
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bare_lf_line_endings_are_normalised_before_the_app() {
    let (router, _backend) = router_with_backend(|_| {}).await;
    let answer = until_closed(
        router.http,
        b"GET /echo HTTP/1.1\nHost: hostile.example.com\nX-A: a\nConnection: close\n\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&answer), ["200"], "{answer}");
    let echo: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(echo["headers"]["x-a"][0], "a");
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_host_headers_are_refused_and_absolute_form_wins_over_host() {
    let (router, backend) = router_with_backend(|_| {}).await;
    // A router that routed on one Host while the app read the other would let a client
    // reach one app's virtual host through another's route.
    let answer = until_closed(
        router.http,
        b"GET / HTTP/1.1\r\nHost: hostile.example.com\r\nHost: other.example.com\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&answer), ["400"], "{answer}");
    assert!(answer.contains("too many Host headers"), "{answer}");
    assert_eq!(backend.requests.load(Ordering::Relaxed), 0);

    // Absolute form: the target's authority is the host (RFC 9112 3.2.2), for routing and
    // for the app.
    let answer = until_closed(
        router.http,
        b"GET http://hostile.example.com/x HTTP/1.1\r\nHost: other.example.com\r\n\
          Connection: close\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&answer), ["200"], "{answer}");
    let echo: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    assert_eq!(echo["headers"]["host"], serde_json::json!([HOST]));
    assert_eq!(echo["target"], "/x");
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_header_cannot_strip_host_or_content_length() {
    let (router, _backend) = router_with_backend(|_| {}).await;
    let answer = until_closed(
        router.http,
        b"POST /echo HTTP/1.1\r\nHost: hostile.example.com\r\n\
          Connection: close, host, content-length, x-forwarded-for\r\n\
          X-Forwarded-For: 6.6.6.6\r\nContent-Length: 3\r\n\r\nabc",
        Duration::from_secs(5),
    )
    .await;
    assert_eq!(statuses(&answer), ["200"], "{answer}");
    let echo: serde_json::Value =
        serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
    let h = &echo["headers"];
    assert_eq!(h["host"], serde_json::json!([HOST]));
    assert_eq!(h["content-length"], serde_json::json!(["3"]));
    // A hop-by-hop X-Forwarded-For is dropped, then set to the client alone.
    assert_eq!(h["x-forwarded-for"], serde_json::json!(["127.0.0.1"]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_content_length_reaches_the_app_as_one() {
    let (router, _backend) = router_with_backend(|_| {}).await;
    // Same value twice, and as a list: valid framing (RFC 9110 8.6), but an app must not
    // be left to decide what two Content-Length lines mean.
    for lengths in [
        "Content-Length: 3\r\nContent-Length: 3",
        "Content-Length: 3, 3",
    ] {
        let request = format!(
            "POST /echo HTTP/1.1\r\nHost: {HOST}\r\n{lengths}\r\nConnection: close\r\n\r\nabc"
        );
        let answer = until_closed(router.http, request.as_bytes(), Duration::from_secs(5)).await;
        assert_eq!(statuses(&answer), ["200"], "{answer}");
        let echo: serde_json::Value =
            serde_json::from_str(answer.split_once("\r\n\r\n").unwrap().1).unwrap();
        assert_eq!(
            echo["headers"]["content-length"],
            serde_json::json!(["3"]),
            "{lengths:?}"
        );
    }
}

// ---- Header injection --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_values_cannot_split_a_header_at_the_app() {
    let backend = Backend::http("inject").await;
    let mut config = test_config();
    // Static routes built in code skip validation: the endpoint headers must still be
    // safe (the registration path refuses such values; see the NATS test below).
    let mut reg = backend.registration(&[HOST]);
    reg.app = "app\r\nX-Injected: app".into();
    reg.private_instance_id = "id\nX-Injected: id".into();
    config.routes = vec![reg];
    let router = TestRouter::start(config).await;
    let answer = get(
        router.http,
        HOST,
        "/%0d%0aX-Injected:%20target",
        &[
            ("x-forwarded-for", "1.1.1.1, \u{a0}evil"),
            ("x-forwarded-proto", "https\tX-Injected: tab"),
        ],
    )
    .await;
    assert_eq!(answer.status, 200);
    let echo = answer.json();
    let h = echo["headers"].as_object().unwrap();
    assert!(!h.contains_key("x-injected"), "a header was split: {h:?}");
    assert_eq!(echo["target"], "/%0d%0aX-Injected:%20target");
    assert_eq!(h["x-cf-applicationid"], serde_json::json!([""]));
    assert_eq!(h["x-forwarded-for"].as_array().unwrap().len(), 1);
    assert!(
        h["x-forwarded-for"][0]
            .as_str()
            .unwrap()
            .ends_with(", 127.0.0.1")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_with_header_breaking_values_are_dropped() {
    let nats = NatsServer::start();
    let mut config = test_config();
    config.nats = nats.router_config();
    let router = TestRouter::start(config).await;
    eventually("router subscribed", Duration::from_secs(10), || async {
        (nats.published("router.start") >= 1).then_some(())
    })
    .await;
    let bus = nats.client().await;
    let backend = Backend::http("inject").await;
    for (field, value) in [
        ("app", "a\r\nX-Injected: 1"),
        ("private_instance_id", "i\nX-Injected: 1"),
        ("private_instance_index", "0\r\n"),
        ("app", "caf\u{e9}"),
    ] {
        let mut reg = serde_json::to_value(backend.registration(&["evil.example.com"])).unwrap();
        reg[field] = value.into();
        publish_json(&bus, &reg).await;
    }
    let good = backend.registration(&["good.example.com"]);
    publish(&bus, router::protocol::SUBJECT_REGISTER, &good).await;
    eventually("the valid route", Duration::from_secs(5), || async {
        (get(router.http, "good.example.com", "/", &[]).await.status == 200).then_some(())
    })
    .await;
    // Messages are applied in order: the bad ones came first and were dropped.
    assert_eq!(
        get(router.http, "evil.example.com", "/", &[]).await.status,
        404
    );
}

async fn publish_json(bus: &router::bus::Bus, value: &serde_json::Value) {
    bus.publish(
        router::protocol::SUBJECT_REGISTER,
        bytes::Bytes::from(serde_json::to_vec(value).unwrap()),
    )
    .await
    .unwrap();
}

// ---- Oversize requests -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_request_lines_headers_and_header_counts_get_431_or_414() {
    let (router, backend) = router_with_backend(|c| c.max_request_header_bytes = 16 * 1024).await;
    let big_header = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(20 * 1024)
    );
    let answer = until_closed(router.http, big_header.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(statuses(&answer), ["431"], "{answer}");
    assert!(
        answer
            .to_ascii_lowercase()
            .contains("x-cf-routererror: max-request-size-exceeded"),
        "{answer}"
    );

    // Past the parser's buffer: refused before anything is routed.
    let huge_header = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "a".repeat(1024 * 1024)
    );
    let answer = until_closed(router.http, huge_header.as_bytes(), Duration::from_secs(10)).await;
    assert!(
        answer.is_empty() || statuses(&answer) == ["431"],
        "{}",
        &answer[..answer.len().min(300)]
    );

    let long_line = format!(
        "GET /{} HTTP/1.1\r\nHost: {HOST}\r\n\r\n",
        "a".repeat(200 * 1024)
    );
    let answer = until_closed(router.http, long_line.as_bytes(), Duration::from_secs(10)).await;
    let status = statuses(&answer);
    assert!(
        status == ["414"] || status == ["431"],
        "{}",
        &answer[..answer.len().min(300)]
    );

    let mut many = format!("GET / HTTP/1.1\r\nHost: {HOST}\r\n");
    for i in 0..500 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    many.push_str("\r\n");
    let answer = until_closed(router.http, many.as_bytes(), Duration::from_secs(5)).await;
    assert_eq!(statuses(&answer), ["431"], "{answer}");

    assert_eq!(backend.requests.load(Ordering::Relaxed), 0);
    assert_still_serves(router.http).await;
}

// ---- Slow clients ------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_headers_are_cut_at_read_header_timeout_while_others_are_served() {
    let (router, _backend) =
        router_with_backend(|c| c.read_header_timeout = Duration::from_millis(500)).await;
    let addr = router.http;
    // 50 clients each sending one byte of their headers every 100 ms: each keeps its
    // connection busy, but none finishes its headers in time.
    let slowloris: Vec<_> = (0..50)
        .map(|_| {
            tokio::spawn(async move {
                let mut stream = TcpStream::connect(addr).await.unwrap();
                let started = Instant::now();
                let request = format!(
                    "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Slow: {}",
                    "a".repeat(100)
                );
                for byte in request.bytes() {
                    if stream.write_all(&[byte]).await.is_err() {
                        return started.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                panic!("the router read a whole trickled request head");
            })
        })
        .collect();
    assert_still_serves(router.http).await;
    for client in slowloris {
        let cut_after = client.await.unwrap();
        assert!(
            cut_after >= Duration::from_millis(400) && cut_after < Duration::from_secs(5),
            "cut after {cut_after:?}"
        );
    }
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_is_cut_at_endpoint_timeout() {
    let (router, _backend) =
        router_with_backend(|c| c.endpoint_timeout = Duration::from_millis(800)).await;
    let started = Instant::now();
    // Headers announce 100 bytes; 3 come, then nothing.
    let answer = until_closed(
        router.http,
        b"POST /count HTTP/1.1\r\nHost: hostile.example.com\r\nContent-Length: 100\r\n\r\nabc",
        Duration::from_secs(10),
    )
    .await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(5),
        "closed after {took:?}: {answer}"
    );
    let status = statuses(&answer);
    assert!(status.is_empty() || status == ["502"], "{answer}");
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_thousand_idle_connections_do_not_stop_the_router() {
    let (router, _backend) =
        router_with_backend(|c| c.read_header_timeout = Duration::from_secs(2)).await;
    let mut idle = Vec::with_capacity(2000);
    for _ in 0..2000 {
        idle.push(TcpStream::connect(router.http).await.unwrap());
    }
    let started = Instant::now();
    assert_still_serves(router.http).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served in {:?} beside 2000 idle connections",
        started.elapsed()
    );
    // Idle connections that never send a request are closed at read_header_timeout.
    let closed = tokio::time::timeout(Duration::from_secs(15), async {
        for mut stream in idle {
            let mut buf = [0u8; 64];
            while let Ok(n) = stream.read(&mut buf).await {
                if n == 0 {
                    break;
                }
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "idle connections were not closed");
    assert_still_serves(router.http).await;
}

// ---- HTTP/2 abuse ------------------------------------------------------------------

/// Hand-written HTTP/2 frames, so that the client can break the rules.
mod h2raw {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;
    use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
    use tokio::sync::mpsc;

    pub const HEADERS: u8 = 1;
    pub const RST_STREAM: u8 = 3;
    pub const SETTINGS: u8 = 4;
    pub const GOAWAY: u8 = 7;
    pub const WINDOW_UPDATE: u8 = 8;
    pub const CONTINUATION: u8 = 9;
    pub const END_STREAM: u8 = 0x1;
    pub const END_HEADERS: u8 = 0x4;

    pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let len = payload.len() as u32;
        let mut f = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
        f.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// An HPACK integer with an `n`-bit prefix, the prefix's other bits set to `flags`.
    pub fn int(flags: u8, n: u32, mut value: usize, out: &mut Vec<u8>) {
        let max = (1usize << n) - 1;
        if value < max {
            out.push(flags | value as u8);
            return;
        }
        out.push(flags | max as u8);
        value -= max;
        while value >= 128 {
            out.push((value % 128 + 128) as u8);
            value /= 128;
        }
        out.push(value as u8);
    }

    pub fn string(s: &[u8], out: &mut Vec<u8>) {
        int(0, 7, s.len(), out);
        out.extend_from_slice(s);
    }

    /// A literal field, not indexed, with a new name (any bytes: this is the point).
    pub fn literal(name: &[u8], value: &[u8], out: &mut Vec<u8>) {
        out.push(0);
        string(name, out);
        string(value, out);
    }

    /// `GET path` to `authority` (method, scheme and path from the static table).
    pub fn request_block(method_post: bool, authority: &str, path: &str) -> Vec<u8> {
        let mut b = vec![if method_post { 0x83 } else { 0x82 }, 0x86];
        if path == "/" {
            b.push(0x84);
        } else {
            int(0, 4, 4, &mut b);
            string(path.as_bytes(), &mut b);
        }
        int(0, 4, 1, &mut b);
        string(authority.as_bytes(), &mut b);
        b
    }

    /// What the server sent, frame by frame, as (type, flags, stream, payload).
    pub type Frame = (u8, u8, u32, Vec<u8>);

    pub struct Conn {
        pub write: OwnedWriteHalf,
        pub frames: mpsc::UnboundedReceiver<Frame>,
    }

    impl Conn {
        /// Connects with prior knowledge and sends the preface and empty SETTINGS.
        pub async fn open(addr: std::net::SocketAddr) -> Conn {
            let stream = TcpStream::connect(addr).await.unwrap();
            let (read, mut write) = stream.into_split();
            write
                .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
                .await
                .unwrap();
            write.write_all(&frame(SETTINGS, 0, 0, &[])).await.unwrap();
            let (tx, frames) = mpsc::unbounded_channel();
            tokio::spawn(read_frames(read, tx));
            Conn { write, frames }
        }

        /// Sends bytes; false once the router has closed the connection.
        pub async fn send(&mut self, bytes: &[u8]) -> bool {
            self.write.write_all(bytes).await.is_ok()
        }

        /// Frames until a GOAWAY, the end of the connection, or `limit`.
        pub async fn collect(&mut self, limit: std::time::Duration) -> Vec<Frame> {
            let mut out = Vec::new();
            let _ = tokio::time::timeout(limit, async {
                while let Some(f) = self.frames.recv().await {
                    let goaway = f.0 == GOAWAY;
                    out.push(f);
                    if goaway {
                        break;
                    }
                }
            })
            .await;
            out
        }
    }

    async fn read_frames(mut read: OwnedReadHalf, tx: mpsc::UnboundedSender<Frame>) {
        let mut head = [0u8; 9];
        while read.read_exact(&mut head).await.is_ok() {
            let len =
                (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
            let stream = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
            let mut payload = vec![0u8; len];
            if read.read_exact(&mut payload).await.is_err() {
                return;
            }
            if tx.send((head[3], head[4], stream, payload)).is_err() {
                return;
            }
        }
    }

    /// The error code of the GOAWAY among `frames`, if any.
    pub fn goaway(frames: &[Frame]) -> Option<u32> {
        frames
            .iter()
            .find(|f| f.0 == GOAWAY)
            .map(|f| u32::from_be_bytes([f.3[4], f.3[5], f.3[6], f.3[7]]))
    }

    /// Streams reset by the router, with their error codes.
    pub fn resets(frames: &[Frame]) -> Vec<(u32, u32)> {
        frames
            .iter()
            .filter(|f| f.0 == RST_STREAM)
            .map(|f| (f.2, u32::from_be_bytes([f.3[0], f.3[1], f.3[2], f.3[3]])))
            .collect()
    }

    /// Streams the router answered with a response head.
    pub fn answered(frames: &[Frame]) -> Vec<u32> {
        frames
            .iter()
            .filter(|f| f.0 == HEADERS)
            .map(|f| f.2)
            .collect()
    }

    pub const PROTOCOL_ERROR: u32 = 0x1;
    pub const FLOW_CONTROL_ERROR: u32 = 0x3;
    pub const ENHANCE_YOUR_CALM: u32 = 0xb;
    pub const REFUSED_STREAM: u32 = 0x7;
}

use h2raw::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_rapid_reset_is_stopped_with_goaway() {
    let (router, backend) = router_with_backend(|_| {}).await;
    let mut conn = Conn::open(router.http).await;
    let block = request_block(false, HOST, "/sleep/100");
    let mut burst = Vec::new();
    for i in 0..2000u32 {
        let stream = 2 * i + 1;
        burst.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, &block));
        burst.extend(frame(RST_STREAM, 0, stream, &8u32.to_be_bytes()));
    }
    let _ = conn.send(&burst).await;
    let frames = conn.collect(Duration::from_secs(5)).await;
    assert_eq!(
        goaway(&frames),
        Some(ENHANCE_YOUR_CALM),
        "no GOAWAY after 2000 reset streams"
    );
    let reached = backend.requests.load(Ordering::Relaxed);
    assert!(
        reached < 200,
        "{reached} of 2000 reset requests reached the app"
    );
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_continuation_flood_is_cut_off() {
    let (router, backend) = router_with_backend(|c| c.max_request_header_bytes = 64 * 1024).await;
    let mut conn = Conn::open(router.http).await;
    let mut first = request_block(false, HOST, "/");
    literal(b"x-flood", &[b'a'; 100], &mut first);
    let mut sent_ok = conn.send(&frame(HEADERS, 0, 1, &first)).await;
    let mut fragment = Vec::new();
    while fragment.len() < 16_000 {
        literal(b"x-flood", &[b'a'; 100], &mut fragment);
    }
    let continuation = frame(CONTINUATION, 0, 1, &fragment);
    // Up to 100 MB of header block, never ended: the router must give up long before.
    let mut sent = 0usize;
    while sent_ok && sent < 100 * 1024 * 1024 {
        sent_ok = conn.send(&continuation).await;
        sent += continuation.len();
    }
    let frames = conn.collect(Duration::from_secs(5)).await;
    // The GOAWAY may be lost to the reset behind it; the cut itself may not.
    assert!(
        !sent_ok || goaway(&frames) == Some(ENHANCE_YOUR_CALM),
        "100 MB of CONTINUATION accepted without a GOAWAY"
    );
    assert!(
        sent < 10 * 1024 * 1024,
        "read {sent} bytes of one header block"
    );
    assert_eq!(backend.requests.load(Ordering::Relaxed), 0);
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_hpack_bomb_is_refused() {
    let (router, backend) = router_with_backend(|c| c.max_request_header_bytes = 64 * 1024).await;
    let mut conn = Conn::open(router.http).await;
    // One 4 KB entry in the dynamic table, then 15 000 one-byte references to it: a
    // 16 KB block that decodes to 60 MB of headers.
    let mut block = request_block(false, HOST, "/");
    block.push(0x40);
    string(b"x-bomb", &mut block);
    string(&[b'b'; 4000], &mut block);
    block.extend(std::iter::repeat_n(0xbe, 12_000));
    let (head, rest) = block.split_at(16_000);
    let mut bytes = frame(HEADERS, END_STREAM, 1, head);
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, rest));
    let _ = conn.send(&bytes).await;
    let frames = conn.collect(Duration::from_secs(5)).await;
    assert_eq!(
        goaway(&frames),
        Some(ENHANCE_YOUR_CALM),
        "bomb accepted: {frames:?}"
    );
    assert_eq!(
        backend.requests.load(Ordering::Relaxed),
        0,
        "the bomb reached the app"
    );
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_window_overflow_is_a_flow_control_error() {
    let (router, _backend) = router_with_backend(|_| {}).await;
    let mut conn = Conn::open(router.http).await;
    let _ = conn
        .send(&frame(WINDOW_UPDATE, 0, 0, &0x7fff_ffffu32.to_be_bytes()))
        .await;
    let frames = conn.collect(Duration::from_secs(5)).await;
    assert_eq!(goaway(&frames), Some(FLOW_CONTROL_ERROR), "{frames:?}");

    // On a stream: the stream is reset, the connection lives on.
    let mut conn = Conn::open(router.http).await;
    let block = request_block(true, HOST, "/count");
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &block);
    bytes.extend(frame(WINDOW_UPDATE, 0, 1, &0x7fff_ffffu32.to_be_bytes()));
    let _ = conn.send(&bytes).await;
    let frames = conn.collect(Duration::from_secs(2)).await;
    assert!(
        resets(&frames).contains(&(1, FLOW_CONTROL_ERROR))
            || goaway(&frames) == Some(FLOW_CONTROL_ERROR),
        "{frames:?}"
    );
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_streams_beyond_max_concurrent_streams_are_refused() {
    let (router, backend) = router_with_backend(|c| c.http2.max_concurrent_streams = 5).await;
    let mut conn = Conn::open(router.http).await;
    // 30 uploads that never end: each holds its stream open.
    let block = request_block(true, HOST, "/count");
    let mut bytes = Vec::new();
    for i in 0..30u32 {
        bytes.extend(frame(HEADERS, END_HEADERS, 2 * i + 1, &block));
    }
    let _ = conn.send(&bytes).await;
    let frames = conn.collect(Duration::from_secs(2)).await;
    let refused = resets(&frames)
        .iter()
        .filter(|(_, code)| *code == REFUSED_STREAM)
        .count();
    assert!(
        refused >= 25 || goaway(&frames).is_some(),
        "{refused} streams refused: {:?}",
        resets(&frames)
    );
    let reached = backend.requests.load(Ordering::Relaxed);
    assert!(reached <= 5, "{reached} concurrent streams reached the app");
    assert_still_serves(router.http).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_header_values_with_crlf_never_reach_the_app() {
    let (router, backend) = router_with_backend(|_| {}).await;
    let mut conn = Conn::open(router.http).await;
    let mut block = request_block(false, HOST, "/");
    literal(b"x-a", b"a\r\nx-injected: 1", &mut block);
    let _ = conn
        .send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    let frames = conn.collect(Duration::from_secs(2)).await;
    assert!(
        resets(&frames).contains(&(1, PROTOCOL_ERROR)) || goaway(&frames) == Some(PROTOCOL_ERROR),
        "a CRLF header value was not a protocol error: {frames:?}"
    );
    assert!(answered(&frames).is_empty());
    assert_eq!(backend.requests.load(Ordering::Relaxed), 0);
    assert_still_serves(router.http).await;
}

// ---- WebSocket ---------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_handshake_and_frames_split_byte_by_byte_arrive_intact() {
    let backend = ws_echo().await;
    let mut config = test_config();
    config.routes = vec![router::protocol::RegistryMessage {
        host: "127.0.0.1".into(),
        port: backend.port(),
        uris: vec!["ws.example.com".into()],
        ..Default::default()
    }];
    let router = TestRouter::start(config).await;
    let mut stream = TcpStream::connect(router.http).await.unwrap();
    stream.set_nodelay(true).unwrap();
    let handshake = b"GET /chat HTTP/1.1\r\nHost: ws.example.com\r\nConnection: Upgrade\r\n\
                      Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
                      Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    for byte in handshake {
        stream.write_all(&[*byte]).await.unwrap();
    }
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    for round in 0..20usize {
        let payload: Vec<u8> = (0..(1 + round * 37))
            .map(|i| (i * 7 + round) as u8)
            .collect();
        // A masked binary frame, written one byte per segment.
        let mask = [1u8, 2, 3, 4];
        let mut frame = vec![0x82];
        if payload.len() < 126 {
            frame.push(0x80 | payload.len() as u8);
        } else {
            frame.push(0x80 | 126);
            frame.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        for byte in &frame {
            stream.write_all(&[*byte]).await.unwrap();
        }
        // The echo comes back unmasked.
        let mut head = [0u8; 2];
        tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut head))
            .await
            .expect("no echo")
            .unwrap();
        let len = match head[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                stream.read_exact(&mut l).await.unwrap();
                usize::from(u16::from_be_bytes(l))
            }
            n => usize::from(n),
        };
        let mut echoed = vec![0u8; len];
        stream.read_exact(&mut echoed).await.unwrap();
        assert_eq!(echoed, payload, "round {round}");
    }
    assert_eq!(
        get(router.http, "ws.example.com", "/", &[]).await.status,
        // The echo server only speaks WebSocket: a plain GET fails at the app, but the
        // router still answers.
        502
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrade_in_http10_is_ignored() {
    let backend = ws_echo().await;
    let mut config = test_config();
    config.routes = vec![router::protocol::RegistryMessage {
        host: "127.0.0.1".into(),
        port: backend.port(),
        uris: vec!["ws.example.com".into()],
        ..Default::default()
    }];
    let router = TestRouter::start(config).await;
    // RFC 9110 7.8: Upgrade in an HTTP/1.0 request is ignored. Switching anyway would
    // turn the rest of the connection into a pipe that a front end in HTTP/1.0 terms
    // still reads as requests.
    let answer = until_closed(
        router.http,
        b"GET /chat HTTP/1.0\r\nHost: ws.example.com\r\nConnection: Upgrade\r\n\
          Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\nGET /next HTTP/1.1\r\n\r\n",
        Duration::from_secs(5),
    )
    .await;
    let status = statuses(&answer);
    assert!(!status.contains(&"101"), "{answer}");
    assert_eq!(status.len(), 1, "{answer}");
}

/// A WebSocket echo server.
async fn ws_echo() -> SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let Ok(mut ws) = tokio_tungstenite::accept_async(stream).await else {
                    return;
                };
                while let Some(Ok(msg)) = ws.next().await {
                    if msg.is_close() {
                        break;
                    }
                    if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}
