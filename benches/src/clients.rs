//! Load clients for what wrk and h2load cannot drive: WebSocket echo, TCP throughput,
//! idle keep-alive connections, route churn on NATS and register-to-serving latency.
//! Every loop is bounded by a deadline and, where it counts things, by a count.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::fixtures;
use crate::http1;
use crate::stats::Samples;

/// What a closed-loop client measured.
#[derive(Debug, Default)]
pub struct LoadResult {
    /// Completed operations (messages echoed, requests answered).
    pub count: u64,
    pub elapsed: Duration,
    pub errors: u64,
    pub latencies: Samples,
}

/// `connections` WebSocket connections to `addr` (with `Host: host`), each sending a
/// `size`-byte binary message and waiting for its echo, until `duration` is over.
pub async fn websocket_echo(
    addr: SocketAddr,
    host: &str,
    connections: usize,
    size: usize,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let mut streams = Vec::with_capacity(connections);
    for _ in 0..connections {
        let mut request = format!("ws://{addr}/ws").into_client_request()?;
        request.headers_mut().insert("host", host.parse()?);
        let (ws, response) = tokio_tungstenite::connect_async(request)
            .await
            .with_context(|| format!("WebSocket handshake with {addr}"))?;
        if response.status() != 101 {
            bail!(
                "WebSocket handshake with {addr}: status {}",
                response.status()
            );
        }
        streams.push(ws);
    }
    let payload = Bytes::from(vec![0x5a; size]);
    let start = Instant::now();
    let deadline = start + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for mut ws in streams {
        let payload = payload.clone();
        tasks.spawn(async move {
            let mut result = LoadResult::default();
            while Instant::now() < deadline {
                let sent = Instant::now();
                if ws.send(Message::Binary(payload.clone())).await.is_err() {
                    result.errors += 1;
                    break;
                }
                match ws.next().await {
                    Some(Ok(Message::Binary(echo))) if echo.len() == payload.len() => {
                        result.latencies.record(sent.elapsed());
                        result.count += 1;
                    }
                    _ => {
                        result.errors += 1;
                        break;
                    }
                }
            }
            let _ = ws.close(None).await;
            result
        });
    }
    let mut total = LoadResult::default();
    while let Some(result) = tasks.join_next().await {
        let result = result?;
        total.count += result.count;
        total.errors += result.errors;
        total.latencies.merge(result.latencies);
    }
    total.elapsed = start.elapsed();
    Ok(total)
}

/// Pushes bytes to the backend's TCP sink through `addr` on `connections` connections
/// until `duration` is over (or `max_bytes` in all are sent), then half-closes and waits
/// for the sink's count. Returns the bytes the sink received and the time taken.
pub async fn tcp_push(
    addr: SocketAddr,
    connections: usize,
    duration: Duration,
    max_bytes: u64,
) -> anyhow::Result<(u64, Duration)> {
    let start = Instant::now();
    let deadline = start + duration;
    let per_connection = max_bytes / connections.max(1) as u64;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..connections {
        tasks.spawn(async move {
            let mut stream = TcpStream::connect(addr).await?;
            let chunk = vec![0xa5u8; 256 * 1024];
            let mut sent = 0u64;
            while Instant::now() < deadline && sent < per_connection {
                stream.write_all(&chunk).await?;
                sent += chunk.len() as u64;
            }
            stream.shutdown().await?;
            let mut count = [0u8; 8];
            stream.read_exact(&mut count).await?;
            let received = u64::from_be_bytes(count);
            if received != sent {
                bail!("the sink received {received} bytes of {sent}");
            }
            anyhow::Ok(received)
        });
    }
    let mut total = 0;
    while let Some(result) = tasks.join_next().await {
        total += result??;
    }
    Ok((total, start.elapsed()))
}

/// Opens `count` connections to `addr`, sends one request on each (`Host: host`) and
/// keeps them open, idle. At most `parallel` handshakes are in progress at once.
pub async fn open_idle_connections(
    addr: SocketAddr,
    host: &str,
    count: usize,
    parallel: usize,
) -> anyhow::Result<Vec<http1::Connection>> {
    let mut open = Vec::with_capacity(count);
    let mut tasks = tokio::task::JoinSet::new();
    let mut started = 0;
    while open.len() < count {
        while started < count && tasks.len() < parallel {
            let host = host.to_owned();
            tasks.spawn(async move {
                let mut conn = http1::Connection::connect(addr).await?;
                let status = conn.get(&host, "/").await?;
                if status != 200 {
                    bail!("status {status} from {addr}");
                }
                anyhow::Ok(conn)
            });
            started += 1;
        }
        match tasks.join_next().await {
            Some(conn) => open.push(conn??),
            None => break,
        }
    }
    Ok(open)
}

/// Publishes `router.register` messages for new routes (`<prefix>-<i>.<domain>` on
/// `backend`) at `rate` per second until `duration` is over. Returns the count sent.
pub async fn churn(
    nats_url: &str,
    backend: SocketAddr,
    rate: u64,
    duration: Duration,
    prefix: &str,
    domain: &str,
) -> anyhow::Result<u64> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connect to NATS at {nats_url}"))?;
    let ip = backend.ip().to_string();
    let start = Instant::now();
    let mut sent: u64 = 0;
    while start.elapsed() < duration {
        // Catch up to rate x elapsed, then sleep a millisecond: an even spread.
        let due = (start.elapsed().as_secs_f64() * rate as f64) as u64;
        while sent < due {
            let uri = format!("{prefix}-{sent}.{domain}");
            let msg = fixtures::registration(&uri, &ip, backend.port(), sent as usize);
            client
                .publish(
                    router::protocol::SUBJECT_REGISTER,
                    fixtures::payload(&msg).into(),
                )
                .await?;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    client.flush().await?;
    Ok(sent)
}

/// Publishes `router.register` for new routes `<prefix>-<k>.<domain>` on `backend`, one
/// at a time, and polls the router on `router_addr` until each answers 200: the time from
/// publish to serving. `samples` routes at most, `gap` apart, until `duration` is over.
/// Routes that do not serve within `timeout` count as errors.
#[allow(clippy::too_many_arguments)]
pub async fn register_to_serving(
    nats_url: &str,
    router_addr: SocketAddr,
    backend: SocketAddr,
    prefix: &str,
    domain: &str,
    samples: usize,
    gap: Duration,
    duration: Duration,
) -> anyhow::Result<LoadResult> {
    let timeout = Duration::from_secs(2);
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connect to NATS at {nats_url}"))?;
    let mut conn = http1::Connection::connect(router_addr).await?;
    let ip = backend.ip().to_string();
    let start = Instant::now();
    let mut result = LoadResult::default();
    for k in 0..samples {
        if start.elapsed() + timeout > duration {
            break;
        }
        let host = format!("{prefix}-{k}.{domain}");
        let msg = fixtures::registration(&host, &ip, backend.port(), k);
        let published = Instant::now();
        client
            .publish(
                router::protocol::SUBJECT_REGISTER,
                fixtures::payload(&msg).into(),
            )
            .await?;
        client.flush().await?;
        loop {
            let status = conn.get(&host, "/").await?;
            if status == 200 {
                result.latencies.record(published.elapsed());
                result.count += 1;
                break;
            }
            if published.elapsed() > timeout {
                result.errors += 1;
                break;
            }
        }
        tokio::time::sleep(gap).await;
    }
    result.elapsed = start.elapsed();
    Ok(result)
}

/// Publishes the registrations of `routes` routes of the fixture route set (realistic
/// messages, unreachable 10.x endpoints) at up to `rate` per second.
pub async fn publish_route_set(nats_url: &str, routes: usize, rate: u64) -> anyhow::Result<()> {
    let client = async_nats::connect(nats_url)
        .await
        .with_context(|| format!("connect to NATS at {nats_url}"))?;
    let start = Instant::now();
    let mut sent = 0usize;
    while sent < routes {
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as usize).min(routes);
        while sent < due {
            let msg = fixtures::route_registration(sent);
            client
                .publish(
                    router::protocol::SUBJECT_REGISTER,
                    fixtures::payload(&msg).into(),
                )
                .await?;
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    client.flush().await?;
    Ok(())
}
