//! Status listeners: `/health`, `/metrics` (Prometheus text) and `/varz` (JSON, basic
//! auth) on `status.port`; `/routes` (JSON, basic auth) on `status.routes.port`, which is
//! bound to 127.0.0.1 only.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use base64::Engine;
use bytes::Bytes;
use http::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue, WWW_AUTHENTICATE};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::route_table::{Registry, Tags, UpstreamProtocol};

/// The router's life cycle as `/health` reports it.
#[derive(Debug, Default)]
pub struct Health(AtomicU8);

const STARTING: u8 = 0;
const HEALTHY: u8 = 1;
const DRAINING: u8 = 2;

impl Health {
    /// Ready to take traffic.
    pub fn set_healthy(&self) {
        // Never leave draining: a late warm-up timer must not undo a drain.
        let _ = self
            .0
            .compare_exchange(STARTING, HEALTHY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Draining: `/health` answers 503 from now on.
    pub fn set_draining(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// Whether `/health` answers 200.
    pub fn is_healthy(&self) -> bool {
        self.0.load(Ordering::Acquire) == HEALTHY
    }

    /// Whether a drain has started.
    pub fn is_draining(&self) -> bool {
        self.0.load(Ordering::Acquire) == DRAINING
    }
}

/// Basic-auth credentials guarding `/routes`; none configured means open (127.0.0.1 only).
#[derive(Debug, Clone, Default)]
pub struct Credentials {
    pub user: String,
    pub pass: String,
}

impl Credentials {
    fn allows(&self, req: &Request<Incoming>) -> bool {
        if self.user.is_empty() && self.pass.is_empty() {
            return true;
        }
        let Some(value) = req
            .headers()
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
        else {
            return false;
        };
        let Some(encoded) = value.strip_prefix("Basic ") else {
            return false;
        };
        let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(encoded.trim()) else {
            return false;
        };
        let expected = format!("{}:{}", self.user, self.pass);
        // Length first, then every byte: no early exit on the first differing byte.
        decoded.len() == expected.len()
            && decoded
                .iter()
                .zip(expected.as_bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// What the status listeners read.
#[derive(Debug)]
pub struct StatusState {
    pub health: Arc<Health>,
    pub registry: Arc<Registry>,
    pub metrics: Arc<Metrics>,
    pub credentials: Credentials,
}

/// Which endpoints a listener serves.
#[derive(Debug, Clone, Copy)]
pub enum StatusListener {
    /// `/health` (and the metrics pages).
    Status,
    /// `/routes`.
    Routes,
}

/// Serves a status listener until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    kind: StatusListener,
    state: Arc<StatusState>,
    shutdown: CancellationToken,
) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(err) => {
                    tracing::warn!(error = %err, "status accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        let state = state.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(kind, &req, &state)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(std::time::Duration::from_secs(10))
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

fn route(
    kind: StatusListener,
    req: &Request<Incoming>,
    state: &StatusState,
) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let needs_auth = matches!(
        (kind, path),
        (StatusListener::Routes, "/routes") | (StatusListener::Status, "/varz")
    );
    if needs_auth && !state.credentials.allows(req) {
        let mut resp = text(StatusCode::UNAUTHORIZED, "401 Unauthorized\n");
        resp.headers_mut().insert(
            WWW_AUTHENTICATE,
            HeaderValue::from_static("Basic realm=\"router\""),
        );
        return resp;
    }
    match (kind, path) {
        (StatusListener::Status, "/health") => health(state),
        (StatusListener::Status, "/metrics") => {
            let table = state.registry.table().load_full();
            let mut resp = text(StatusCode::OK, &state.metrics.prometheus(&table));
            resp.headers_mut().insert(
                CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        (StatusListener::Status, "/varz") => {
            let table = state.registry.table().load_full();
            json_response(&state.metrics.varz(&table))
        }
        (StatusListener::Routes, "/routes") => routes(state),
        _ => text(StatusCode::NOT_FOUND, "404 Not Found\n"),
    }
}

fn health(state: &StatusState) -> Response<Full<Bytes>> {
    let mut resp = if state.health.is_healthy() {
        text(StatusCode::OK, "ok\n")
    } else {
        text(StatusCode::SERVICE_UNAVAILABLE, "503 Service Unavailable\n")
    };
    resp.headers_mut().insert(
        CACHE_CONTROL,
        HeaderValue::from_static("private, max-age=0"),
    );
    resp.headers_mut()
        .insert("expires", HeaderValue::from_static("0"));
    resp
}

/// One endpoint in the `/routes` dump (gorouter's field names).
#[derive(Serialize)]
struct RouteEndpoint<'a> {
    address: &'a str,
    availability_zone: &'a str,
    protocol: &'static str,
    tls: bool,
    /// Seconds left before the endpoint is pruned; -1 for static routes.
    ttl: i64,
    tags: &'a Tags,
    app: &'a str,
    private_instance_id: &'a str,
    private_instance_index: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    server_cert_domain_san: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    route_service_url: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    isolation_segment: &'a str,
}

fn routes(state: &StatusState) -> Response<Full<Bytes>> {
    let dump = state.registry.dump(Instant::now());
    let json: BTreeMap<&str, Vec<RouteEndpoint<'_>>> = dump
        .iter()
        .map(|(route, endpoints)| {
            let endpoints = endpoints
                .iter()
                .map(|(e, ttl)| RouteEndpoint {
                    address: &e.key,
                    availability_zone: &e.data.availability_zone,
                    protocol: match e.data.protocol {
                        UpstreamProtocol::Http1 => "http1",
                        UpstreamProtocol::Http2 => "http2",
                    },
                    tls: e.data.tls,
                    ttl: if *ttl == std::time::Duration::MAX {
                        -1
                    } else {
                        ttl.as_secs() as i64
                    },
                    tags: &e.data.tags,
                    app: &e.data.app_id,
                    private_instance_id: &e.data.instance_id,
                    private_instance_index: &e.data.instance_index,
                    server_cert_domain_san: &e.data.server_cert_domain_san,
                    route_service_url: &e.data.route_service_url,
                    isolation_segment: &e.data.isolation_segment,
                })
                .collect();
            (route.as_str(), endpoints)
        })
        .collect();
    json_response(&json)
}

fn json_response(value: &impl Serialize) -> Response<Full<Bytes>> {
    match serde_json::to_vec(value) {
        Ok(body) => {
            let mut resp = Response::new(Full::new(Bytes::from(body)));
            resp.headers_mut()
                .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
            resp
        }
        Err(err) => text(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("cannot encode JSON: {err}\n"),
        ),
    }
}

fn text(status: StatusCode, body: &str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
