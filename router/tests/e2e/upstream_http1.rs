//! The HTTP/1 client side against hand-written endpoints: interim responses, early
//! answers, ambiguous framing.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

use crate::support::*;

/// An endpoint that reads one request head, then runs `script` on the connection.
async fn scripted_endpoint<F, Fut>(script: F) -> std::net::SocketAddr
where
    F: Fn(BufReader<tokio::net::TcpStream>) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let script = std::sync::Arc::new(script);
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let script = script.clone();
            tokio::spawn(async move {
                let mut reader = BufReader::new(stream);
                let mut line = String::new();
                loop {
                    line.clear();
                    if reader.read_line(&mut line).await.unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                }
                script(reader).await;
            });
        }
    });
    addr
}

fn route_to(addr: std::net::SocketAddr, host: &str) -> router::Config {
    let mut config = test_config();
    config.routes = vec![router::protocol::RegistryMessage {
        host: "127.0.0.1".into(),
        port: addr.port(),
        uris: vec![host.into()],
        ..Default::default()
    }];
    config
}

async fn post(router: std::net::SocketAddr, host: &str, body: Vec<u8>) -> (u16, String) {
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let req = http::Request::post(format!("http://{router}/"))
        .header("host", host)
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .expect("no answer in time")
        .unwrap();
    let status = resp.status().as_u16();
    use http_body_util::BodyExt;
    let body = resp
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interim_100_continue_from_the_endpoint_is_absorbed() {
    let endpoint = scripted_endpoint(|mut conn| async move {
        conn.get_mut()
            .write_all(b"HTTP/1.1 100 Continue\r\n\r\n")
            .await
            .unwrap();
        let mut body = [0u8; 5];
        conn.read_exact(&mut body).await.unwrap();
        let answer = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n{}",
            String::from_utf8_lossy(&body)
        );
        conn.get_mut().write_all(answer.as_bytes()).await.unwrap();
    })
    .await;
    let router = TestRouter::start(route_to(endpoint, "interim.example.com")).await;
    assert_eq!(
        post(router.http, "interim.example.com", b"hello".to_vec()).await,
        (200, "hello".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_early_answer_stops_the_upload_and_reaches_the_client() {
    // The endpoint refuses the upload without reading it and keeps the connection open.
    let endpoint = scripted_endpoint(|mut conn| async move {
        conn.get_mut()
            .write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 8\r\n\r\ntoo big!")
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_secs(30)).await;
    })
    .await;
    let router = TestRouter::start(route_to(endpoint, "early.example.com")).await;
    let (status, body) = post(
        router.http,
        "early.example.com",
        vec![b'x'; 32 * 1024 * 1024],
    )
    .await;
    assert_eq!((status, body.as_str()), (413, "too big!"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_response_with_both_framings_is_read_as_chunked_and_not_reused() {
    let endpoint = scripted_endpoint(|mut conn| async move {
        conn.get_mut()
            .write_all(
                b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n\
                  5\r\nhello\r\n0\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled",
            )
            .await
            .unwrap();
        let mut rest = Vec::new();
        let _ = conn.read_to_end(&mut rest).await;
    })
    .await;
    let router = TestRouter::start(route_to(endpoint, "both.example.com")).await;
    for _ in 0..3 {
        let answer = get(router.http, "both.example.com", "/", &[]).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.text(), "hello", "the smuggled response leaked");
    }
}
