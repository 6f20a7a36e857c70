//! Bodies stream through the router: 100 MB each way without the router holding them.

use std::time::Duration;

use bytes::Bytes;
use futures_util::stream;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::support::*;

const HUNDRED_MB: usize = 100 * 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_megabytes_stream_both_ways_without_growing_router_memory() {
    let backend = Backend::http("bulk").await;
    let router = RouterProcess::start(&format!(
        "routes:\n  - {{host: 127.0.0.1, port: {}, uris: [bulk.example.com]}}\n",
        backend.addr.port()
    ));
    let client = Client::builder(TokioExecutor::new()).build_http();

    // Warm up (first connections, pools, allocator arenas), then take the baseline.
    let warm = get(router.http, "bulk.example.com", "/bytes/1000000", &[]).await;
    assert_eq!(warm.body.len(), 1_000_000);
    let baseline_kib = router.peak_rss_kib();

    // Upload: a chunked body produced lazily, 64 KiB at a time.
    let chunk = Bytes::from(vec![b'u'; 64 * 1024]);
    let chunks = HUNDRED_MB / chunk.len();
    let body =
        StreamBody::new(stream::iter((0..chunks).map(move |_| {
            Ok::<_, std::convert::Infallible>(Frame::data(chunk.clone()))
        })));
    let req = http::Request::post(format!("http://{}/count", router.http))
        .header("host", "bulk.example.com")
        .body(body)
        .unwrap();
    let resp = tokio::time::timeout(Duration::from_secs(120), client.request(req))
        .await
        .expect("upload timed out")
        .unwrap();
    assert_eq!(resp.status(), 200);
    let counted = resp.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(counted, HUNDRED_MB.to_string());

    // Download: read frame by frame, counting, never holding the whole body.
    let resp = get_streaming(&router, &format!("/bytes/{HUNDRED_MB}")).await;
    assert_eq!(resp, HUNDRED_MB);

    let growth_kib = router.peak_rss_kib().saturating_sub(baseline_kib);
    assert!(
        growth_kib < 32 * 1024,
        "router peak RSS grew by {growth_kib} KiB while streaming 200 MB"
    );
}

async fn get_streaming(router: &RouterProcess, path: &str) -> usize {
    let client: Client<_, http_body_util::Empty<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{}{path}", router.http))
        .header("host", "bulk.example.com")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut total = 0;
    let read = async {
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.unwrap().into_data() {
                total += data.len();
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(120), read)
        .await
        .expect("download timed out");
    total
}

/// Opens `count` keep-alive connections, each makes one GET and reads its whole answer,
/// then stays open and idle.
async fn idle_after_one_request(
    router: std::net::SocketAddr,
    count: usize,
) -> Vec<tokio::net::TcpStream> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut conns = Vec::with_capacity(count);
    for _ in 0..count {
        let mut stream = tokio::net::TcpStream::connect(router).await.unwrap();
        stream
            .write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: bulk.example.com\r\n\r\n")
            .await
            .unwrap();
        // The app streams its 10 bytes: the answer is chunked and ends with the last chunk.
        let mut answer = Vec::new();
        let mut buf = [0u8; 1024];
        while !(answer.starts_with(b"HTTP/1.1 200")
            && answer.ends_with(b"\r\nxxxxxxxxxx\r\n0\r\n\r\n"))
        {
            let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
                .await
                .expect("no answer within 5 s")
                .unwrap();
            assert!(n > 0, "closed: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&buf[..n]);
        }
        conns.push(stream);
    }
    conns
}

/// Between requests a keep-alive connection gives its read and write buffers back and
/// waits for readiness: idle connections cost the task and the socket, not buffers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keep_alive_connections_hold_no_buffers() {
    let backend = Backend::http("bulk").await;
    let router = RouterProcess::start(&format!(
        "routes:\n  - {{host: 127.0.0.1, port: {}, uris: [bulk.example.com]}}\n",
        backend.addr.port()
    ));
    // Warm up: pools, the allocator's arenas, the runtime's slabs.
    let _warm = idle_after_one_request(router.http, 200).await;
    let before_kib = router.rss_kib();
    const COUNT: usize = 2000;
    let _idle = idle_after_one_request(router.http, COUNT).await;
    let per_connection = (router.rss_kib().saturating_sub(before_kib) * 1024) as usize / COUNT;
    eprintln!("{per_connection} bytes of router RSS per idle keep-alive connection");
    // With its 12 KiB of buffers kept, an idle connection cost ~17 KB (release build).
    assert!(
        per_connection < 10 * 1024,
        "{per_connection} bytes of router RSS per idle keep-alive connection"
    );
}
