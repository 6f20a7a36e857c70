//! Access-log line formatting: `AccessRecord::format` of a routed request (endpoint with
//! app id, index and instance id; forwarding headers; user agent) into a reused buffer,
//! as each worker does before handing the line to the writer thread.
//!
//! Run: `cargo bench -p benches --bench access_log`
//!
//! Last figures (2026-11-21, 2-core VM shared with other builds, pinned to CPU 1,
//! `--warm-up-time 1 --measurement-time 3`; criterion's estimate): format 1.28 us per line.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::{Duration, SystemTime};

use benches::fixtures;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{HeaderValue, Method, Version};
use router::access_log::AccessRecord;

fn access_log(c: &mut Criterion) {
    let registry = fixtures::registry_with_routes(10);
    let (host, path) = fixtures::request_for(3);
    let endpoint = registry
        .table()
        .load()
        .lookup(&host, &path)
        .unwrap()
        .endpoints[0]
        .clone();
    let record = AccessRecord {
        received_at: SystemTime::now(),
        host: Some(HeaderValue::from_static("app-3.apps.bench.internal")),
        method: Method::GET,
        target: "/api/v1/orders?page=2&sort=desc".to_owned(),
        version: Version::HTTP_11,
        status: 200,
        request_bytes: 0,
        response_bytes: 5120,
        referer: Some(HeaderValue::from_static(
            "https://app-3.apps.bench.internal/",
        )),
        user_agent: Some(HeaderValue::from_static(
            "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0",
        )),
        client: "203.0.113.7:51234".parse().unwrap(),
        endpoint: Some(endpoint),
        x_forwarded_for: Some(HeaderValue::from_static("203.0.113.7")),
        x_forwarded_proto: Some(HeaderValue::from_static("https")),
        request_id: HeaderValue::from_static("7c9e6679-7425-40de-944b-e07fc1f90ae7"),
        response_time: Duration::from_micros(1234),
        gorouter_time: Duration::from_micros(87),
        router_error: None,
    };
    let mut line = Vec::with_capacity(1024);
    record.format(&mut line);
    let mut group = c.benchmark_group("access_log");
    group.throughput(Throughput::Bytes(line.len() as u64));
    group.bench_function("format", |b| {
        b.iter(|| {
            line.clear();
            black_box(&record).format(&mut line);
            black_box(line.len())
        })
    });
    group.finish();
}

criterion_group!(benches, access_log);
criterion_main!(benches);
