//! WebSocket through the router: upgrade, then a byte pipe both ways.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::*;

/// A WebSocket echo server on 127.0.0.1.
async fn echo_server() -> std::net::SocketAddr {
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

fn message(i: usize) -> Message {
    // Mixed sizes: tiny, medium, and now and then large frames that span many reads.
    let len = match i % 10 {
        0 => 64 * 1024 + i % 1000,
        1..=3 => 1024 + i % 200,
        _ => 1 + i % 100,
    };
    let payload: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
    if i.is_multiple_of(2) {
        Message::binary(payload)
    } else {
        Message::text(String::from_utf8_lossy(&payload).into_owned())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_echo_of_10000_mixed_messages_arrives_intact() {
    let backend = echo_server().await;
    let mut config = test_config();
    config.routes = vec![router::protocol::RegistryMessage {
        host: "127.0.0.1".into(),
        port: backend.port(),
        uris: vec!["ws.example.com".into()],
        ..Default::default()
    }];
    let router = TestRouter::start(config).await;
    let mut request = format!("ws://{}/chat", router.http)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("host", "ws.example.com".parse().unwrap());
    let (ws, response) = tokio_tungstenite::connect_async(request).await.unwrap();
    assert_eq!(response.status(), 101);
    assert!(response.headers().contains_key("x-vcap-request-id"));
    let (mut sink, mut stream) = ws.split();
    const COUNT: usize = 10_000;
    let sender = tokio::spawn(async move {
        for i in 0..COUNT {
            sink.send(message(i)).await.unwrap();
        }
        sink
    });
    let receive = async {
        for i in 0..COUNT {
            let got = stream.next().await.unwrap().unwrap();
            assert_eq!(got, message(i), "message {i}");
        }
    };
    tokio::time::timeout(Duration::from_secs(120), receive)
        .await
        .expect("echo timed out");
    let mut sink = sender.await.unwrap();
    sink.send(Message::Close(None)).await.unwrap();

    let metrics = get(router.status, "x", "/metrics", &[]).await.text();
    assert!(
        metrics.lines().any(|l| l == "websocket_upgrades 1"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_upgrade_is_an_ordinary_response() {
    let backend = Backend::http("no-ws").await;
    let mut config = test_config();
    config.routes = vec![backend.registration(&["nows.example.com"])];
    let router = TestRouter::start(config).await;
    let answer = get(
        router.http,
        "nows.example.com",
        "/",
        &[("connection", "upgrade"), ("upgrade", "websocket")],
    )
    .await;
    assert_eq!(answer.status, 200);
    // The endpoint saw the upgrade request headers.
    assert_eq!(answer.json()["headers"]["upgrade"][0], "websocket");
    let metrics = get(router.status, "x", "/metrics", &[]).await.text();
    assert!(
        metrics.lines().any(|l| l == "websocket_failures 1"),
        "{metrics}"
    );
}
