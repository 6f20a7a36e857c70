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
