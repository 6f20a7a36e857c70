//! The hot path: one request, top to bottom.
//!
//! check limits -> find the route (one snapshot load) -> pick an endpoint -> get an
//! upstream connection -> send -> stream the response back. Failures before the request
//! reached an app are retried on another endpoint, up to `backends.max_attempts`.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::header::{HOST, HeaderValue};
use http::uri::{PathAndQuery, Uri};
use http::{Request, Response, Version};
use hyper::body::Incoming;
use tokio::time::Instant;

use super::body::ProxyBody;
use super::errors::ProxyError;
use super::headers::{self, Downstream, X_CF_APP_INSTANCE, X_VCAP_REQUEST_ID};
use crate::balancer::{self, Pick};
use crate::config::Config;
use crate::route_table::{Endpoint, Pool, RouteTable};
use crate::upstream::{self, SendError, UpstreamSettings};

/// How long balancers skip an endpoint after a connection failure (gorouter: 30 s).
const FAILURE_MARK: Duration = Duration::from_secs(30);

/// What every request needs, shared by all connections of all workers.
#[derive(Debug)]
pub struct ProxyContext {
    pub table: Arc<ArcSwap<RouteTable>>,
    pub upstream: UpstreamSettings,
    pub max_conns: u32,
    pub max_attempts: u32,
    pub max_request_header_bytes: usize,
}

impl ProxyContext {
    /// The proxy settings of a router config, reading routes from `table`.
    pub fn new(config: &Config, table: Arc<ArcSwap<RouteTable>>) -> Self {
        ProxyContext {
            table,
            upstream: UpstreamSettings {
                dial_timeout: config.endpoint_dial_timeout,
                request_timeout: config.endpoint_timeout,
                max_idle_per_host: config.max_idle_conns_per_host,
                idle_timeout: Duration::from_secs(90),
            },
            max_conns: config.backends.max_conns,
            max_attempts: config.backends.max_attempts.max(1),
            max_request_header_bytes: config.max_request_header_bytes,
        }
    }
}

/// Serves one downstream request; never fails (errors become gorouter's error responses).
pub async fn handle(
    req: Request<Incoming>,
    downstream: &Downstream,
    ctx: &ProxyContext,
) -> Response<ProxyBody> {
    let started = Instant::now();
    let request_id = headers::new_request_id();
    let mut resp = match proxy(req, downstream, ctx, &request_id, started).await {
        Ok(resp) => resp,
        Err(err) => {
            match &err {
                ProxyError::Endpoint(e) => {
                    tracing::warn!(error = %e, request_id = ?request_id, "endpoint failure")
                }
                other => tracing::debug!(error = %other, "request refused"),
            }
            err.to_response()
        }
    };
    resp.headers_mut()
        .entry(X_VCAP_REQUEST_ID)
        .or_insert(request_id);
    resp
}

async fn proxy(
    mut req: Request<Incoming>,
    downstream: &Downstream,
    ctx: &ProxyContext,
    request_id: &HeaderValue,
    started: Instant,
) -> Result<Response<ProxyBody>, ProxyError> {
    let target = req.uri().path_and_query().map_or("/", PathAndQuery::as_str);
    if headers::request_header_size(req.method().as_str(), target, req.headers())
        >= ctx.max_request_header_bytes
    {
        return Err(ProxyError::HeaderTooLarge);
    }
    let host = request_host(&req).ok_or(ProxyError::EmptyHost)?;
    let host_text = host.to_str().map_err(|_| ProxyError::EmptyHost)?;
    let pool = find_pool(ctx, host_text, req.uri().path())?;
    let instance = app_instance(&mut req, &pool, host_text)?;

    let downstream_version = req.version();
    prepare_request(&mut req, &host, downstream, request_id);
    let mut tried: Vec<Arc<str>> = Vec::new();
    let mut last_failure = None;
    let mut pool = pool;
    loop {
        let (endpoint, in_flight) = match &instance {
            Some(endpoint) => {
                let slot = balancer::InFlight::try_acquire(&endpoint.stats, ctx.max_conns)
                    .ok_or_else(|| ProxyError::ConnectionLimit {
                        host: host_text.to_owned(),
                    })?;
                (endpoint.clone(), slot)
            }
            None => match balancer::pick(&pool, ctx.max_conns, &tried) {
                Pick::Endpoint(endpoint, slot) => (endpoint, slot),
                Pick::AllOverloaded => {
                    return Err(ProxyError::ConnectionLimit {
                        host: host_text.to_owned(),
                    });
                }
                // Every endpoint was tried: the last failure is the answer.
                Pick::Exhausted => {
                    return Err(last_failure.map_or_else(
                        || ProxyError::NoEndpoints {
                            host: host_text.to_owned(),
                        },
                        ProxyError::Endpoint,
                    ));
                }
            },
        };
        headers::set_endpoint_headers(req.headers_mut(), &endpoint);
        match upstream::send(&endpoint, req, &ctx.upstream, started).await {
            Ok(mut resp) => {
                endpoint.stats.clear_failed();
                headers::rewrite_response(resp.headers_mut(), request_id);
                // Answer in the client's protocol, whatever version the app spoke.
                *resp.version_mut() = downstream_version;
                return Ok(resp.map(|body| ProxyBody::Upstream(body, Some(in_flight))));
            }
            Err(SendError::NotSent(err, unsent)) => {
                endpoint.stats.mark_failed(FAILURE_MARK);
                tracing::info!(endpoint = %endpoint.key, error = %err, "retrying on another endpoint");
                tried.push(endpoint.key.clone());
                if instance.is_some() || tried.len() >= ctx.max_attempts as usize {
                    return Err(err.into());
                }
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

/// The request's host: the URI authority (HTTP/2, absolute-form) or the Host header.
fn request_host(req: &Request<Incoming>) -> Option<HeaderValue> {
    if let Some(authority) = req.uri().authority() {
        return HeaderValue::from_str(authority.as_str()).ok();
    }
    req.headers().get(HOST).filter(|h| !h.is_empty()).cloned()
}

fn find_pool(ctx: &ProxyContext, host: &str, path: &str) -> Result<Arc<Pool>, ProxyError> {
    let table = ctx.table.load();
    let pool = table
        .lookup(host, path)
        .ok_or_else(|| ProxyError::UnknownRoute {
            host: host.to_owned(),
        })?;
    if pool.endpoints.is_empty() {
        return Err(ProxyError::NoEndpoints {
            host: host.to_owned(),
        });
    }
    Ok(pool.clone())
}

/// Honours `X-CF-App-Instance: APPGUID:INDEX` (then removes it): the request must go to
/// exactly that instance.
fn app_instance(
    req: &mut Request<Incoming>,
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

/// Makes the request fit to send upstream: HTTP/1.1, origin-form target, a Host header,
/// and the endpoint-independent forwarding headers (set once, whatever the attempts).
fn prepare_request(
    req: &mut Request<Incoming>,
    host: &HeaderValue,
    downstream: &Downstream,
    request_id: &HeaderValue,
) {
    if req.uri().scheme().is_some() || req.uri().authority().is_some() {
        let path = req
            .uri()
            .path_and_query()
            .cloned()
            .unwrap_or(PathAndQuery::from_static("/"));
        *req.uri_mut() = Uri::from(path);
    }
    *req.version_mut() = Version::HTTP_11;
    if !req.headers().contains_key(HOST) {
        req.headers_mut().insert(HOST, host.clone());
    }
    headers::rewrite_request(req.headers_mut(), downstream, request_id);
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
