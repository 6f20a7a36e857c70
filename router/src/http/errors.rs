//! Proxy errors: which side failed, whether a retry is allowed, and the one mapping from
//! an error to gorouter's status code, `X-Cf-Routererror` value and body.

use std::borrow::Cow;

use http::header::{CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use http::{Response, StatusCode};

use super::body::ProxyBody;
use super::headers::X_CF_ROUTER_ERROR;
use crate::metrics::Outcome;
use crate::tls::TlsFailure;
use crate::upstream::UpstreamError;

/// The reason phrase, including Cloudflare-style codes gorouter uses.
fn reason_phrase(status: StatusCode) -> &'static str {
    match status.as_u16() {
        496 => "SSL Certificate Required",
        525 => "SSL Handshake Failed",
        526 => "Invalid SSL Certificate",
        _ => status.canonical_reason().unwrap_or(""),
    }
}

/// A status code outside the standard set (gorouter's 496, 525, 526).
fn status(code: u16) -> StatusCode {
    StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_GATEWAY)
}

/// The side of the proxy an error comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Downstream,
    Upstream,
}

/// Everything that ends a request with a response written by the router.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request had empty Host header")]
    EmptyHost,
    #[error("request has more than one Host header")]
    TooManyHosts,
    #[error("route {host} does not exist")]
    UnknownRoute { host: String },
    #[error("route {host} has no endpoints")]
    NoEndpoints { host: String },
    #[error("route {host} reached the connection limit")]
    ConnectionLimit { host: String },
    #[error("invalid X-CF-App-Instance header")]
    InvalidAppInstanceHeader,
    #[error("instance {index} of app {guid} is not on route {host}")]
    UnknownInstance {
        guid: String,
        index: String,
        host: String,
    },
    #[error("request headers exceed max_request_header_bytes")]
    HeaderTooLarge,
    #[error("endpoint failure: {0}")]
    Endpoint(#[from] UpstreamError),
}

impl ProxyError {
    /// Which side caused it.
    pub fn side(&self) -> Side {
        match self {
            ProxyError::Endpoint(_) => Side::Upstream,
            _ => Side::Downstream,
        }
    }

    /// Whether another endpoint may be tried (nothing reached the app yet).
    pub fn is_retriable(&self) -> bool {
        match self {
            ProxyError::Endpoint(e) => e.is_before_request(),
            _ => false,
        }
    }

    /// How the metrics count it.
    pub fn outcome(&self) -> Outcome {
        match self {
            ProxyError::Endpoint(_) => Outcome::BadGateway,
            ProxyError::ConnectionLimit { .. } => Outcome::ConnectionLimit,
            ProxyError::NoEndpoints { .. } => Outcome::Other,
            _ => Outcome::Rejected,
        }
    }

    /// The HTTP status gorouter answers with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::EmptyHost
            | ProxyError::TooManyHosts
            | ProxyError::InvalidAppInstanceHeader
            | ProxyError::UnknownInstance { .. } => StatusCode::BAD_REQUEST,
            ProxyError::UnknownRoute { .. } => StatusCode::NOT_FOUND,
            ProxyError::NoEndpoints { .. } | ProxyError::ConnectionLimit { .. } => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::Endpoint(UpstreamError::Tls { failure, .. }) => match failure {
                TlsFailure::Handshake => status(525),
                TlsFailure::Untrusted => status(526),
                TlsFailure::NameMismatch => StatusCode::SERVICE_UNAVAILABLE,
                TlsFailure::ClientCertRejected => status(496),
            },
            ProxyError::Endpoint(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The `X-Cf-Routererror` value.
    pub fn router_error(&self) -> Cow<'static, str> {
        match self {
            ProxyError::EmptyHost => "empty_host".into(),
            ProxyError::TooManyHosts => "too_many_host_headers".into(),
            ProxyError::UnknownRoute { .. } | ProxyError::UnknownInstance { .. } => {
                "unknown_route".into()
            }
            ProxyError::NoEndpoints { .. } => "no_endpoints".into(),
            ProxyError::ConnectionLimit { .. } => "Connection Limit Reached".into(),
            ProxyError::InvalidAppInstanceHeader => "invalid_cf_app_instance_header".into(),
            ProxyError::HeaderTooLarge => "max-request-size-exceeded".into(),
            ProxyError::Endpoint(e) => format!("endpoint_failure ({e})").into(),
        }
    }

    /// The message after `"<code> <Status Text>: "` in the body (gorouter's wording).
    fn message(&self) -> Cow<'static, str> {
        match self {
            ProxyError::EmptyHost => "Request had empty Host header".into(),
            // Go's own wording: gorouter's HTTP server refuses these before routing.
            ProxyError::TooManyHosts => "too many Host headers".into(),
            ProxyError::UnknownRoute { host } => {
                format!("Requested route ('{host}') does not exist.").into()
            }
            ProxyError::NoEndpoints { host } => {
                format!("Requested route ('{host}') has no available endpoints.").into()
            }
            ProxyError::ConnectionLimit { host } => {
                format!("Requested route ('{host}') has reached the connection limit.").into()
            }
            ProxyError::InvalidAppInstanceHeader => "Invalid X-CF-App-Instance Header".into(),
            ProxyError::UnknownInstance { guid, index, host } => format!(
                "Requested instance ('{index}') with guid ('{guid}') does not exist for route ('{host}')"
            )
            .into(),
            ProxyError::HeaderTooLarge => "".into(),
            ProxyError::Endpoint(UpstreamError::Tls { failure, .. }) => match failure {
                TlsFailure::Handshake => "SSL Handshake Failed".into(),
                TlsFailure::Untrusted => "Invalid SSL Certificate".into(),
                TlsFailure::NameMismatch => {
                    "The endpoint's certificate does not match the instance it was registered as.".into()
                }
                TlsFailure::ClientCertRejected => "SSL Certificate Required".into(),
            },
            ProxyError::Endpoint(_) => "Registered endpoint failed to handle the request.".into(),
        }
    }

    /// The response the client gets.
    pub fn to_response(&self) -> Response<ProxyBody> {
        let status = self.status();
        let body = if let ProxyError::HeaderTooLarge = self {
            ProxyBody::empty()
        } else {
            ProxyBody::full(format!(
                "{} {}: {}\n",
                status.as_u16(),
                reason_phrase(status),
                self.message()
            ))
        };
        let mut resp = Response::new(body);
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        let router_error = self.router_error();
        headers.insert(
            X_CF_ROUTER_ERROR,
            HeaderValue::from_str(&router_error)
                .unwrap_or(HeaderValue::from_static("endpoint_failure")),
        );
        headers.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        headers.insert(
            "x-content-type-options",
            HeaderValue::from_static("nosniff"),
        );
        let cache = match self {
            ProxyError::UnknownRoute { .. } => Some("no-cache, no-store"),
            ProxyError::NoEndpoints { .. } | ProxyError::EmptyHost => Some("public,max-age=2"),
            _ => None,
        };
        if let Some(cache) = cache {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static(cache));
        }
        resp
    }
}
