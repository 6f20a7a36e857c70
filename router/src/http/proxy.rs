//! The hot path: one request, top to bottom.
//!
//! check limits -> find the route (one snapshot load) -> pick an endpoint (sticky
//! instance, `X-CF-App-Instance`, or the balancer) -> upstream connection -> send ->
//! stream the response back. Failures before the request reached an app are retried on
//! another endpoint, up to `backends.max_attempts`.

use std::cell::RefCell;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use http::header::{CONTENT_LENGTH, HOST, HeaderValue, REFERER, SET_COOKIE, USER_AGENT};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use tokio::time::Instant;

use super::body::{Completion, ProxyBody};
use super::errors::ProxyError;
use super::headers::{
    self, Downstream, X_CF_APP_INSTANCE, X_CF_ROUTER_ERROR, X_FORWARDED_PROTO, X_VCAP_REQUEST_ID,
};
use super::{sticky, w3c};
use crate::access_log::{AccessLog, AccessRecord};
use crate::balancer::{self, InFlight, Pick};
use crate::config::Config;
use crate::config::ForwardedClientCert;
use crate::deadline::LentTimer;
use crate::metrics::{Metrics, Outcome};
use crate::route_table::{Endpoint, Pool, RouteTable, TableReader};
use crate::upstream::{self, RequestBody, SendError, UpstreamSettings, UpstreamTls};
use crate::websocket;
use tokio_util::task::TaskTracker;

/// How long balancers skip an endpoint after a connection failure (gorouter: 30 s).
const FAILURE_MARK: Duration = Duration::from_secs(30);

/// What every request needs; one per worker thread (the metrics shard differs).
#[derive(Debug)]
pub struct ProxyContext {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub upstream: UpstreamSettings,
    pub max_conns: u32,
    pub max_attempts: u32,
    pub max_request_header_bytes: usize,
    pub sticky_cookie_names: Arc<[String]>,
    pub secure_cookies: bool,
    pub metrics: Arc<Metrics>,
    /// This worker's metrics shard.
    pub worker: usize,
    pub access_log: Option<AccessLog>,
    /// `Some(tenant)` when W3C trace context is on.
    pub w3c_tenant: Option<String>,
    pub forwarded_client_cert: ForwardedClientCert,
    /// This worker's upgraded (WebSocket) pipes, which a drain waits for.
    pub pipes: TaskTracker,
}

impl ProxyContext {
    /// The proxy settings of a router config for worker `worker`.
    pub fn new(
        config: &Config,
        table: Arc<ArcSwap<RouteTable>>,
        metrics: Arc<Metrics>,
        worker: usize,
        access_log: Option<AccessLog>,
        upstream_tls: Arc<UpstreamTls>,
    ) -> Self {
        ProxyContext {
            table,
            upstream: UpstreamSettings {
                dial_timeout: config.endpoint_dial_timeout,
                tls_handshake_timeout: config.tls_handshake_timeout,
                request_timeout: config.endpoint_timeout,
                max_idle_per_host: config.max_idle_conns_per_host,
                idle_timeout: Duration::from_secs(90),
                http2: config.enable_http2,
                tls: upstream_tls,
            },
            max_conns: config.backends.max_conns,
            max_attempts: config.backends.max_attempts.max(1),
            max_request_header_bytes: config.max_request_header_bytes,
            sticky_cookie_names: config.sticky_session_cookie_names.clone().into(),
            secure_cookies: config.secure_cookies,
            metrics,
            worker,
            access_log,
            w3c_tenant: config
                .tracing
                .enable_w3c
                .then(|| config.tracing.w3c_tenant_id.clone()),
            forwarded_client_cert: config.forwarded_client_cert,
            pipes: TaskTracker::new(),
        }
    }
}

/// What the proxy learned about a request, for the access log (filled only when it is on).
#[derive(Debug, Default)]
struct Exchange {
    endpoint: Option<Arc<Endpoint>>,
    backend_time: Duration,
    forwarded_for: Option<HeaderValue>,
    forwarded_proto: Option<HeaderValue>,
}

/// Serves one downstream request; never fails (errors become gorouter's error responses).
/// `timer`, when the connection lends one, keeps the request's deadline.
///
/// The stages of a request are plain functions returning an `async move` block rather
/// than `async fn`s: an `async fn` copies each argument into a local of its own at the
/// first poll, so its future holds the request twice (264 bytes each) and copies it once
/// more, at each of the nested stages.
#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice (see proxy::handle)"
)]
pub fn handle(
    req: Request<RequestBody>,
    downstream: &Downstream,
    ctx: &Arc<ProxyContext>,
    timer: Option<LentTimer<'_>>,
) -> impl Future<Output = Response<ProxyBody>> {
    async move {
        let started = Instant::now();
        let request_id = ctx
            .w3c_tenant
            .as_ref()
            .and_then(|_| w3c::request_id_from_trace(req.headers()))
            .unwrap_or_else(headers::new_request_id);
        let record = ctx
            .access_log
            .is_some()
            .then(|| begin_record(&req, downstream, &request_id));
        let mut exchange = Exchange::default();
        let result = proxy(
            req,
            downstream,
            ctx,
            &request_id,
            started,
            &mut exchange,
            timer,
        )
        .await;
        let (mut resp, outcome) = match result {
            Ok(resp) => (resp, Outcome::Routed),
            Err(err) => {
                match &err {
                    ProxyError::Endpoint(e) => {
                        tracing::warn!(error = %e, request_id = ?request_id, "endpoint failure")
                    }
                    other => tracing::debug!(error = %other, "request refused"),
                }
                let mut resp = err.to_response();
                // A routed answer got it from rewrite_response.
                resp.headers_mut()
                    .entry(X_VCAP_REQUEST_ID)
                    .or_insert_with(|| request_id.clone());
                (resp, err.outcome())
            }
        };
        let status = resp.status().as_u16();
        let record = record.map(|mut record| {
            record.status = status;
            record.endpoint = exchange.endpoint.take();
            record.router_error = resp.headers().get(X_CF_ROUTER_ERROR).cloned();
            record.x_forwarded_for = exchange.forwarded_for.take();
            record.x_forwarded_proto = exchange.forwarded_proto.take();
            record
        });
        resp.body_mut().on_complete(Completion {
            ctx: ctx.clone(),
            started,
            status,
            outcome,
            response_bytes: 0,
            backend_time: exchange.backend_time,
            record,
        });
        resp
    }
}

#[expect(
    clippy::manual_async_fn,
    reason = "an async fn holds its arguments twice (see proxy::handle)"
)]
fn proxy(
    mut req: Request<RequestBody>,
    downstream: &Downstream,
    ctx: &ProxyContext,
    request_id: &HeaderValue,
    started: Instant,
    exchange: &mut Exchange,
    mut timer: Option<LentTimer<'_>>,
) -> impl Future<Output = Result<Response<ProxyBody>, ProxyError>> {
    async move {
        let target = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
        if headers::request_header_size(req.method().as_str(), target, req.headers())
            >= ctx.max_request_header_bytes
        {
            return Err(ProxyError::HeaderTooLarge);
        }
        // RFC 9112 3.2: two Host lines are a 400, or the route and the app could each
        // believe a different one.
        if req.headers().get_all(HOST).iter().nth(1).is_some() {
            return Err(ProxyError::TooManyHosts);
        }
        let host = request_host(&req).ok_or(ProxyError::EmptyHost)?;
        let host_text = host.to_str().map_err(|_| ProxyError::EmptyHost)?;
        let mut pool = find_pool(ctx, host_text, req.uri().path())?;
        let instance = app_instance(&mut req, &pool, host_text)?;
        let sticky_target =
            sticky::requested_instance(req.headers(), &ctx.sticky_cookie_names).map(str::to_owned);

        let downstream_version = req.version();
        // Upgrade is HTTP/1.1's: ignored in an HTTP/1.0 request (RFC 9110 7.8), as hyper does.
        let upgrade = websocket::requested_upgrade(req.headers())
            .filter(|_| downstream_version == Version::HTTP_11);
        // hyper's server leaves the client's side of an upgrade in the request; the native
        // HTTP/1 server keeps the connection and pipes it itself.
        let downstream_upgrade = upgrade
            .as_ref()
            .and_then(|_| req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>());
        let added = prepare_request(&mut req, &host, downstream, request_id);
        headers::forward_client_cert(req.headers_mut(), downstream, ctx.forwarded_client_cert);
        if let Some(upgrade) = &upgrade {
            websocket::restore_upgrade_headers(req.headers_mut(), upgrade);
        }
        if let Some(tenant) = &ctx.w3c_tenant {
            w3c::rewrite(
                req.headers_mut(),
                request_id.to_str().unwrap_or_default(),
                tenant,
            );
        }
        if ctx.access_log.is_some() {
            exchange.forwarded_for = Some(added.forwarded_for.clone());
            exchange.forwarded_proto = added
                .forwarded_proto
                .clone()
                .or_else(|| req.headers().get(X_FORWARDED_PROTO).cloned());
        }
        let mut tried: Vec<Arc<str>> = Vec::new();
        let mut last_failure = None;
        loop {
            let (endpoint, in_flight) = choose_endpoint(
                ctx,
                &pool,
                instance.as_ref(),
                sticky_target.as_deref(),
                &tried,
            )
            .map_err(|err| last_failure.take().map_or(err, ProxyError::Endpoint))?;
            // Only the access log reports the endpoint and its time: without it, no
            // reference count and no clock reads here.
            let logged = ctx.access_log.is_some();
            if logged {
                exchange.endpoint = Some(endpoint.clone());
            }
            let sent_at = logged.then(Instant::now);
            let result = upstream::send(
                &endpoint,
                req,
                &added,
                &ctx.upstream,
                started,
                upgrade.is_some(),
                timer.as_mut().map(|t| t.as_mut()),
            )
            .await;
            if let Some(sent_at) = sent_at {
                exchange.backend_time = sent_at.elapsed();
            }
            match result {
                Ok(mut resp) => {
                    endpoint.stats.clear_failed();
                    headers::rewrite_response(resp.headers_mut(), request_id);
                    set_sticky_cookie(ctx, &pool, &endpoint, sticky_target.as_deref(), &mut resp);
                    // Answer in the client's protocol, whatever version the app spoke.
                    *resp.version_mut() = downstream_version;
                    if let Some(upgrade) = &upgrade {
                        let switching = resp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                        ctx.metrics.worker(ctx.worker).websocket(switching);
                        if let Some((io, read_ahead)) =
                            resp.body_mut().take_upgraded().filter(|_| switching)
                        {
                            websocket::restore_upgrade_headers(resp.headers_mut(), upgrade);
                            return Ok(match downstream_upgrade {
                                Some(downstream_upgrade) => {
                                    start_pipe(ctx, downstream_upgrade, io, read_ahead, in_flight);
                                    resp.map(|_| ProxyBody::empty())
                                }
                                None => {
                                    resp.map(|_| ProxyBody::upgraded(io, read_ahead, in_flight))
                                }
                            });
                        }
                    }
                    return Ok(resp.map(|body| ProxyBody::upstream(body, in_flight)));
                }
                Err(SendError::NotSent(err, unsent)) => {
                    endpoint.stats.mark_failed(FAILURE_MARK);
                    tried.push(endpoint.key.clone());
                    if instance.is_some() || tried.len() >= ctx.max_attempts as usize {
                        return Err(err.into());
                    }
                    tracing::info!(endpoint = %endpoint.key, error = %err, "retrying on another endpoint");
                    ctx.metrics.worker(ctx.worker).retry();
                    req = *unsent;
                    last_failure = Some(err);
                    // A new snapshot may hold endpoints registered since the first attempt.
                    if let Ok(fresh) = find_pool(ctx, host_text, req.uri().path()) {
                        pool = fresh;
                    }
                }
                Err(SendError::Failed(err)) => return Err(err.into()),
            }
        }
    }
}

/// Joins the client and the endpoint once both connections are handed over; the
/// endpoint's in-flight slot is held until the pipe ends.
fn start_pipe(
    ctx: &ProxyContext,
    downstream: hyper::upgrade::OnUpgrade,
    upstream: upstream::UpstreamIo,
    upstream_read_ahead: bytes::Bytes,
    in_flight: InFlight,
) {
    ctx.pipes.spawn(async move {
        match websocket::pipe_upgraded(downstream, upstream, upstream_read_ahead).await {
            Ok(stats) => tracing::debug!(?stats, "upgraded connection closed"),
            Err(err) => tracing::debug!(error = %err, "upgraded connection ended with an error"),
        }
        drop(in_flight);
    });
}

/// The endpoint for the next attempt: the `X-CF-App-Instance` target, else the sticky
/// instance while it exists and has room, else the balancer's pick.
fn choose_endpoint(
    ctx: &ProxyContext,
    pool: &Pool,
    instance: Option<&Arc<Endpoint>>,
    sticky_target: Option<&str>,
    tried: &[Arc<str>],
) -> Result<(Arc<Endpoint>, InFlight), ProxyError> {
    let limit = || ProxyError::ConnectionLimit {
        host: pool.route_name(),
    };
    if let Some(endpoint) = instance {
        let slot = InFlight::try_acquire(&endpoint.stats, ctx.max_conns).ok_or_else(limit)?;
        return Ok((endpoint.clone(), slot));
    }
    if let Some(endpoint) = sticky_target
        .and_then(|id| pool.endpoint_by_instance_id(id))
        .filter(|e| !tried.iter().any(|t| **t == *e.key) && !e.stats.is_failed_now())
        && let Some(slot) = InFlight::try_acquire(&endpoint.stats, ctx.max_conns)
    {
        return Ok((endpoint.clone(), slot));
    }
    match balancer::pick(pool, ctx.max_conns, tried) {
        Pick::Endpoint(endpoint, slot) => Ok((endpoint, slot)),
        Pick::AllOverloaded => Err(limit()),
        Pick::Exhausted => Err(ProxyError::NoEndpoints {
            host: pool.route_name(),
        }),
    }
}

/// Adds `__VCAP_ID__` when the app started a session, or when a sticky request had to
/// move to another instance (gorouter's rules), unless the app set it itself.
fn set_sticky_cookie<B>(
    ctx: &ProxyContext,
    pool: &Pool,
    endpoint: &Endpoint,
    requested: Option<&str>,
    resp: &mut Response<B>,
) {
    if endpoint.data.instance_id.is_empty() {
        return;
    }
    let moved = requested.is_some_and(|id| id != endpoint.data.instance_id);
    if !moved && !resp.headers().contains_key(SET_COOKIE) {
        return;
    }
    let cookies = sticky::response_cookies(resp.headers(), &ctx.sticky_cookie_names);
    if cookies.sets_vcap_id || (cookies.session.is_none() && !moved) {
        return;
    }
    if let Some(cookie) = sticky::vcap_id_cookie(
        &endpoint.data.instance_id,
        &pool.context_path,
        cookies.session.as_ref(),
        ctx.secure_cookies,
    ) {
        resp.headers_mut().append(SET_COOKIE, cookie);
    }
}

/// The request's host: the URI authority (HTTP/2, absolute-form) or the Host header.
fn request_host(req: &Request<RequestBody>) -> Option<HeaderValue> {
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    req.headers().get(HOST).filter(|h| !h.is_empty()).cloned()
}

thread_local! {
    /// This worker thread's reader of the route table.
    static TABLE_READER: RefCell<Option<TableReader>> = const { RefCell::new(None) };
}

fn find_pool(ctx: &ProxyContext, host: &str, path: &str) -> Result<Arc<Pool>, ProxyError> {
    let found = TABLE_READER.with_borrow_mut(|reader| {
        let reader = match reader {
            Some(reader) if reader.reads(&ctx.table) => reader,
            // First request on this thread, or a thread serving another router (tests).
            _ => reader.insert(TableReader::new(ctx.table.clone())),
        };
        reader.load().lookup(host, path).cloned()
    });
    let pool = found.ok_or_else(|| ProxyError::UnknownRoute {
        host: host.to_owned(),
    })?;
    if pool.endpoints.is_empty() {
        return Err(ProxyError::NoEndpoints {
            host: host.to_owned(),
        });
    }
    Ok(pool)
}

/// Honours `X-CF-App-Instance: APPGUID:INDEX` (then removes it): the request must go to
/// exactly that instance.
fn app_instance(
    req: &mut Request<RequestBody>,
    pool: &Pool,
    host: &str,
) -> Result<Option<Arc<Endpoint>>, ProxyError> {
    let Some(value) = req.headers_mut().remove(X_CF_APP_INSTANCE) else {
        return Ok(None);
    };
    let (guid, index) = parse_app_instance(value.as_bytes())?;
    pool.endpoints
        .iter()
        .find(|e| e.data.app_id == guid && e.data.instance_index == index)
        .cloned()
        .map(Some)
        .ok_or_else(|| ProxyError::UnknownInstance {
            guid: guid.to_owned(),
            index: index.to_owned(),
            host: host.to_owned(),
        })
}

/// Parses `APPGUID:INDEX` as gorouter does: a lowercase hex UUID, a colon, digits.
pub fn parse_app_instance(value: &[u8]) -> Result<(&str, &str), ProxyError> {
    let text = std::str::from_utf8(value).map_err(|_| ProxyError::InvalidAppInstanceHeader)?;
    let (guid, index) = text
        .split_once(':')
        .ok_or(ProxyError::InvalidAppInstanceHeader)?;
    let guid_ok = guid.len() == 36
        && guid.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_digit() || (b'a'..=b'f').contains(&b),
        });
    let index_ok = !index.is_empty() && index.bytes().all(|b| b.is_ascii_digit());
    if guid_ok && index_ok {
        Ok((guid, index))
    } else {
        Err(ProxyError::InvalidAppInstanceHeader)
    }
}

/// Makes the request fit to send upstream: HTTP/1.1, origin-form target, a Host header;
/// and the forwarding headers, set once whatever the attempts.
fn prepare_request(
    req: &mut Request<RequestBody>,
    host: &HeaderValue,
    downstream: &Downstream,
    request_id: &HeaderValue,
) -> headers::AddedHeaders {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        // The target's authority is the host (absolute form, HTTP/2): the app sees the
        // host the request was routed on, not a different Host line (RFC 9112 3.2.2).
        req.headers_mut().insert(HOST, host.clone());
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or(PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;
    // The client got its 100 Continue from us as the body was read; the endpoint gets
    // the body without waiting.
    req.headers_mut().remove(http::header::EXPECT);
    if !req.headers().contains_key(HOST) {
        req.headers_mut().insert(HOST, host.clone());
    }
    headers::rewrite_request(req.headers_mut(), downstream, request_id)
}

/// The access-log fields known when the request arrives.
fn begin_record(
    req: &Request<RequestBody>,
    downstream: &Downstream,
    request_id: &HeaderValue,
) -> Box<AccessRecord> {
    let header = |name| req.headers().get(name).cloned();
    Box::new(AccessRecord {
        received_at: SystemTime::now(),
        host: request_host(req),
        method: req.method().clone(),
        target: req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().to_string(), |p| p.as_str().to_owned()),
        version: req.version(),
        status: 0,
        request_bytes: req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .unwrap_or(0),
        response_bytes: 0,
        referer: header(REFERER),
        user_agent: header(USER_AGENT),
        client: downstream.peer,
        endpoint: None,
        x_forwarded_for: None,
        x_forwarded_proto: None,
        request_id: request_id.clone(),
        response_time: Duration::ZERO,
        gorouter_time: Duration::ZERO,
        router_error: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn app_instance_header_is_parsed_strictly() {
        let guid = "0123abcd-0000-4000-8000-00000000beef";
        assert_eq!(
            parse_app_instance(format!("{guid}:12").as_bytes()).unwrap(),
            (guid, "12")
        );
        for bad in [
            "nope",
            "0123abcd-0000-4000-8000-00000000beef",
            "0123abcd-0000-4000-8000-00000000beef:",
            "0123abcd-0000-4000-8000-00000000beef:x",
            "0123ABCD-0000-4000-8000-00000000beef:1",
            "0123abcd00000-4000-8000-00000000beef:1",
        ] {
            assert!(
                parse_app_instance(bad.as_bytes()).is_err(),
                "{bad} accepted"
            );
        }
    }
}
