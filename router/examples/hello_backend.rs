//! A tiny HTTP backend for demos and load tests: answers every request with a short
//! greeting. `cargo run --release -p router --example hello_backend -- 127.0.0.1:9101`

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hyper::Response;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:9101".into());
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!("hello_backend listening on {addr}");
    let greeting = Bytes::from(format!("hello from {addr}\n"));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let greeting = greeting.clone();
        tokio::spawn(async move {
            let service = service_fn(move |_req| {
                let greeting = greeting.clone();
                async move { Ok::<_, Infallible>(Response::new(Full::new(greeting))) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
