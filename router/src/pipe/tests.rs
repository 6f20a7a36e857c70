//! Pipes over real loopback sockets: client_a <-> [a | pipe | b] <-> client_b.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

use super::*;

/// Which implementation moves the bytes.
#[derive(Debug, Clone, Copy)]
enum Mode {
    Splice,
    /// The generic copy (for TLS streams).
    Buffered,
    /// The per-direction buffer alone, as when splice is unsupported.
    BufferedOneWay,
}

async fn connected_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (server, _) = listener.accept().await.unwrap();
    (client, server)
}

/// Two client ends whose bytes pass through a pipe, and the pipe's task.
async fn piped(mode: Mode) -> (TcpStream, TcpStream, JoinHandle<io::Result<PipeStats>>) {
    let (client_a, a) = connected_pair().await;
    let (b, client_b) = connected_pair().await;
    let task = tokio::spawn(async move {
        match mode {
            Mode::Splice => pipe_bidirectional(a, b).await,
            Mode::Buffered => copy_bidirectional_buffered(a, b).await,
            Mode::BufferedOneWay => {
                let (a_to_b, b_to_a) = tokio::try_join!(
                    one_way(&a, &b, Splice::Never),
                    one_way(&b, &a, Splice::Never)
                )?;
                Ok(PipeStats {
                    a_to_b: a_to_b.moved,
                    b_to_a: b_to_a.moved,
                    spliced: a_to_b.spliced + b_to_a.spliced,
                })
            }
        }
    });
    (client_a, client_b, task)
}

/// Deterministic pseudo-random bytes (xorshift64), distinct per seed.
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

async fn finish(task: JoinHandle<io::Result<PipeStats>>) -> io::Result<PipeStats> {
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the pipe did not end")
        .unwrap()
}

async fn bytes_arrive_intact_both_ways(mode: Mode) {
    const LEN: usize = 16 * 1024 * 1024;
    let (x, y, task) = piped(mode).await;
    let (sent_x, sent_y) = (random_bytes(LEN, 1), random_bytes(LEN, 2));
    let (x_read, x_write) = x.into_split();
    let (y_read, y_write) = y.into_split();
    let send = |mut w: tokio::net::tcp::OwnedWriteHalf, data: Vec<u8>| async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let receive = |mut r: tokio::net::tcp::OwnedReadHalf| async move {
        let mut got = Vec::with_capacity(LEN);
        r.read_to_end(&mut got).await.unwrap();
        got
    };
    let ((), (), got_y, got_x) = tokio::join!(
        send(x_write, sent_x.clone()),
        send(y_write, sent_y.clone()),
        receive(y_read),
        receive(x_read),
    );
    // assert! rather than assert_eq!: a diff of 16 MiB helps nobody.
    assert!(
        got_y == sent_x,
        "x -> y: {} bytes arrived altered",
        got_y.len()
    );
    assert!(
        got_x == sent_y,
        "y -> x: {} bytes arrived altered",
        got_x.len()
    );
    let stats = finish(task).await.unwrap();
    assert_eq!((stats.a_to_b, stats.b_to_a), (LEN as u64, LEN as u64));
    match mode {
        // Bulk both ways: after the first full buffer, splice takes over.
        Mode::Splice => assert!(
            stats.spliced > LEN as u64,
            "{} of {} bytes spliced",
            stats.spliced,
            2 * LEN
        ),
        Mode::Buffered | Mode::BufferedOneWay => assert_eq!(stats.spliced, 0),
    }
}

async fn half_close_propagates_and_the_other_way_goes_on(mode: Mode) {
    let (mut x, mut y, task) = piped(mode).await;
    x.write_all(b"ping").await.unwrap();
    x.shutdown().await.unwrap();
    let mut got = Vec::new();
    y.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"ping", "y sees x's bytes, then EOF");
    // x only closed its sending side: y's answer must still reach it.
    y.write_all(b"pong after half-close").await.unwrap();
    y.shutdown().await.unwrap();
    let mut got = Vec::new();
    x.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"pong after half-close");
    let stats = finish(task).await.unwrap();
    assert_eq!(
        stats,
        PipeStats {
            a_to_b: 4,
            b_to_a: 21,
            // A few bytes each way are not worth a splice.
            spliced: 0,
        }
    );
}

#[tokio::test]
async fn splice_moves_bytes_intact_both_ways() {
    bytes_arrive_intact_both_ways(Mode::Splice).await;
}

#[tokio::test]
async fn buffered_copy_moves_bytes_intact_both_ways() {
    bytes_arrive_intact_both_ways(Mode::Buffered).await;
}

#[tokio::test]
async fn one_way_fallback_moves_bytes_intact_both_ways() {
    bytes_arrive_intact_both_ways(Mode::BufferedOneWay).await;
}

#[tokio::test]
async fn splice_half_close_propagates() {
    half_close_propagates_and_the_other_way_goes_on(Mode::Splice).await;
}

#[tokio::test]
async fn buffered_half_close_propagates() {
    half_close_propagates_and_the_other_way_goes_on(Mode::Buffered).await;
}

#[tokio::test]
async fn one_way_fallback_half_close_propagates() {
    half_close_propagates_and_the_other_way_goes_on(Mode::BufferedOneWay).await;
}

#[tokio::test]
async fn peer_reset_ends_the_pipe_with_an_error() {
    let (x, y, task) = piped(Mode::Splice).await;
    // SO_LINGER 0: close sends RST instead of FIN.
    socket2::SockRef::from(&x)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(x);
    let result = finish(task).await;
    assert!(result.is_err(), "a reset must be an error, got {result:?}");
    drop(y);
}

#[tokio::test]
async fn reset_while_the_pipe_is_writing_ends_it_with_an_error() {
    let (x, mut y, task) = piped(Mode::Splice).await;
    let (_x_read, mut x_write) = x.into_split();
    // x keeps sending; y reads a little, then resets with the rest still in flight.
    let writer = tokio::spawn(async move {
        let chunk = vec![7u8; 64 * 1024];
        while x_write.write_all(&chunk).await.is_ok() {}
    });
    y.read_exact(&mut [0u8; 64 * 1024]).await.unwrap();
    socket2::SockRef::from(&y)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop(y);
    let result = finish(task).await;
    assert!(result.is_err(), "a reset must be an error, got {result:?}");
    writer.abort();
}

#[tokio::test]
async fn small_messages_go_through_the_buffer_and_none_waits() {
    // Echo round trips of 64 bytes, one in flight at a time: every read is short, so the
    // pipe drops the socket's readiness after each without a read that says EAGAIN. A
    // wake-up lost that way would leave a message waiting, and the bounded wait fails.
    const ROUNDS: usize = 2_000;
    let (mut x, mut y, task) = piped(Mode::Splice).await;
    let exchange = async {
        let mut got = [0u8; 64];
        for round in 0..ROUNDS {
            let message = random_bytes(64, round as u64);
            x.write_all(&message).await.unwrap();
            y.read_exact(&mut got).await.unwrap();
            assert_eq!(got[..], message[..], "x -> y, round {round}");
            y.write_all(&got).await.unwrap();
            x.read_exact(&mut got).await.unwrap();
            assert_eq!(got[..], message[..], "y -> x, round {round}");
        }
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("a message was left waiting");
    x.shutdown().await.unwrap();
    y.shutdown().await.unwrap();
    let stats = finish(task).await.unwrap();
    let each_way = (ROUNDS * 64) as u64;
    assert_eq!(
        stats,
        PipeStats {
            a_to_b: each_way,
            b_to_a: each_way,
            spliced: 0,
        }
    );
}

#[test]
fn a_long_transfer_gets_a_larger_pipe() {
    let mut pipe = KernelPipe::new().unwrap();
    let default = pipe.capacity;
    pipe.grow(LONG_TRANSFER_PIPE);
    let max = std::fs::read_to_string("/proc/sys/fs/pipe-max-size")
        .ok()
        .and_then(|max| max.trim().parse::<usize>().ok())
        .unwrap_or(default);
    if LONG_TRANSFER_PIPE <= max {
        assert_eq!(pipe.capacity, LONG_TRANSFER_PIPE);
    } else {
        // Refused (unprivileged, above the limit): the pipe is as it was.
        assert!(pipe.capacity == default || pipe.capacity == LONG_TRANSFER_PIPE);
    }
    // The capacity is what the kernel reports, so splices ask for what fits.
    assert_eq!(
        rustix::pipe::fcntl_getpipe_size(&pipe.read).unwrap(),
        pipe.capacity
    );
}
