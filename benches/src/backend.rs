//! The load benchmark's backend: one single-threaded process serving everything the
//! scenarios need, so every proxy and the direct runs hit the same code.
//!
//! - HTTP/1.1 (hyper, like `router/examples/hello_backend.rs`): `GET /1m` answers 1 MiB,
//!   a WebSocket upgrade becomes an echo of every message, anything else gets a short
//!   greeting.
//! - A TCP sink on a second port: reads until the client half-closes, then answers the
//!   byte count (8 bytes, big-endian) and closes; the TCP throughput client times that.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// Size of the large response (`GET /1m`).
pub const LARGE_BODY: usize = 1024 * 1024;

/// Serves HTTP on `http` and the TCP sink on `sink` until the process ends.
pub async fn serve(http: SocketAddr, sink: SocketAddr) -> anyhow::Result<()> {
    let http = TcpListener::bind(http).await?;
    let sink = TcpListener::bind(sink).await?;
    let greeting = Bytes::from(format!("hello from {}\n", http.local_addr()?));
    let large = Bytes::from(vec![b'x'; LARGE_BODY]);
    tokio::spawn(async move {
        while let Ok((stream, _)) = sink.accept().await {
            tokio::spawn(sink_connection(stream));
        }
    });
    loop {
        let (stream, _) = http.accept().await?;
        let _ = stream.set_nodelay(true);
        let (greeting, large) = (greeting.clone(), large.clone());
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let (greeting, large) = (greeting.clone(), large.clone());
                async move { Ok::<_, Infallible>(answer(req, greeting, large)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

fn answer(mut req: Request<Incoming>, greeting: Bytes, large: Bytes) -> Response<Full<Bytes>> {
    let websocket = req
        .headers()
        .get(header::UPGRADE)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"websocket"));
    if websocket {
        let Some(key) = req.headers().get(header::SEC_WEBSOCKET_KEY) else {
            return status(StatusCode::BAD_REQUEST);
        };
        let accept = derive_accept_key(key.as_bytes());
        let upgrade = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(upgraded) = upgrade.await {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                echo(ws).await;
            }
        });
        let mut resp = status(StatusCode::SWITCHING_PROTOCOLS);
        let headers = resp.headers_mut();
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        return resp;
    }
    let body = if req.uri().path() == "/1m" {
        large
    } else {
        greeting
    };
    Response::new(Full::new(body))
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = code;
    resp
}

async fn echo<S>(mut ws: WebSocketStream<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(Ok(msg)) = ws.next().await {
        if msg.is_close() {
            break;
        }
        if (msg.is_binary() || msg.is_text()) && ws.send(msg).await.is_err() {
            break;
        }
    }
}

async fn sink_connection(mut stream: TcpStream) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(_) => return,
        }
    }
    let _ = stream.write_all(&total.to_be_bytes()).await;
    let _ = stream.shutdown().await;
}
