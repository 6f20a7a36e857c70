//! The REST API: a subset of Cloud Controller v3. JSON in and out, CF's error body,
//! pagination on lists, and bearer tokens: the admin token may do anything, read-only
//! tokens only GET (`cloud_controller.read`). As CC: no token is 401
//! CF-NotAuthenticated, an unknown one 401 CF-InvalidAuthToken, a write with a read-only
//! token 403 CF-NotAuthorized.
//!
//! - [`apps`]: apps, their actions, the web process (scale, stats), logs.
//! - [`packages`]: packages and bits upload, builds (staging), droplets.
//! - [`routes`]: routes and their destinations.
//! - [`error`]: the CF error body.

pub mod apps;
pub mod error;
pub mod packages;
pub mod routes;

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::extract::{FromRequestParts, Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Json, extract::Query};
use http::request::Parts;
use http::{Method, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::controller::Controller;
use crate::store::Scope;
use crate::util::new_token;
pub use error::ApiError;

/// The handlers' shared state.
pub type Ctl = State<Arc<Controller>>;

/// Builds the API router.
pub fn router(controller: Arc<Controller>) -> Router {
    Router::new()
        .route("/", get(root))
        .route("/v3", get(v3_root))
        .route("/v3/info", get(info))
        .route("/v3/tokens", post(create_token))
        .route("/v3/jobs/{guid}", get(job))
        .merge(apps::routes())
        .merge(packages::routes())
        .merge(routes::routes())
        .fallback(|| async { ApiError::UnknownRequest })
        .layer(middleware::from_fn_with_state(
            controller.clone(),
            authenticate,
        ))
        .with_state(controller)
}

/// Serves the API on `listener` until `shutdown`.
pub async fn serve(
    controller: Arc<Controller>,
    listener: tokio::net::TcpListener,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let closing = controller.closing.clone();
    axum::serve(listener, router(controller))
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            closing.cancel();
        })
        .await
}

async fn authenticate(State(c): Ctl, req: Request, next: Next) -> Result<Response, ApiError> {
    // Discovery is public, as in CC.
    if matches!(req.uri().path(), "/" | "/v3/info") {
        return Ok(next.run(req).await);
    }
    let value = req
        .headers()
        .get(header::AUTHORIZATION)
        .ok_or(ApiError::NotAuthenticated)?;
    let value = value.to_str().map_err(|_| ApiError::InvalidAuthToken)?;
    let token = match value.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(ApiError::InvalidAuthToken),
    };
    let scope = c
        .store
        .token_scope(token)?
        .ok_or(ApiError::InvalidAuthToken)?;
    if scope == Scope::Read && !matches!(*req.method(), Method::GET | Method::HEAD) {
        return Err(ApiError::NotAuthorized);
    }
    Ok(next.run(req).await)
}

/// The URL clients used to reach us, for `links` (from the `Host` header).
#[derive(Debug, Clone)]
pub struct Base(pub String);

impl<S: Send + Sync> FromRequestParts<S> for Base {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let host = parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or("localhost");
        Ok(Base(format!("http://{host}")))
    }
}

impl Base {
    /// An absolute link object.
    pub fn link(&self, path: &str) -> Value {
        json!({"href": format!("{}{}", self.0, path)})
    }
}

/// A list query's parameters.
pub type ListQuery = Query<HashMap<String, String>>;

/// Comma-separated filter values of `key`, if given.
pub fn filter<'a>(q: &'a HashMap<String, String>, key: &str) -> Option<Vec<&'a str>> {
    q.get(key)
        .map(|v| v.split(',').filter(|s| !s.is_empty()).collect())
}

/// CC's pagination block around one page of `items`.
pub fn paginate(
    base: &Base,
    path: &str,
    q: &HashMap<String, String>,
    items: Vec<Value>,
) -> Result<Value, ApiError> {
    let number = |key: &str, default: usize, max: usize| -> Result<usize, ApiError> {
        match q.get(key) {
            None => Ok(default),
            Some(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=max).contains(n))
                .ok_or_else(|| {
                    ApiError::BadQuery(format!(
                        "The query parameter is invalid: {key} must be between 1 and {max}"
                    ))
                }),
        }
    };
    let per_page = number("per_page", 50, 5000)?;
    let page = number("page", 1, usize::MAX)?;
    let total = items.len();
    let pages = total.div_ceil(per_page).max(1);
    let href = |p: usize| {
        let mut params: Vec<String> = q
            .iter()
            .filter(|(k, _)| *k != "page" && *k != "per_page")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        params.sort();
        params.push(format!("page={p}"));
        params.push(format!("per_page={per_page}"));
        base.link(&format!("{path}?{}", params.join("&")))
    };
    let resources: Vec<Value> = items
        .into_iter()
        .skip((page - 1).saturating_mul(per_page))
        .take(per_page)
        .collect();
    Ok(json!({
        "pagination": {
            "total_results": total,
            "total_pages": pages,
            "first": href(1),
            "last": href(pages),
            "next": if page < pages { href(page + 1) } else { Value::Null },
            "previous": if page > 1 { href(page - 1) } else { Value::Null },
        },
        "resources": resources,
    }))
}

/// Parses a JSON body, mapping failures to CF-MessageParseError.
pub fn body<T>(b: Result<Json<T>, axum::extract::rejection::JsonRejection>) -> Result<T, ApiError> {
    Ok(b?.0)
}

async fn root(base: Base) -> Json<Value> {
    Json(json!({"links": {
        "self": base.link(""),
        "cloud_controller_v3": {"href": format!("{}/v3", base.0), "meta": {"version": "3.160.0"}},
        "cloud_controller_v2": null, "login": null, "uaa": null, "logging": null, "log_cache": null,
        "routing": null, "app_ssh": null, "credhub": null, "network_policy_v0": null, "network_policy_v1": null,
    }}))
}

async fn v3_root(base: Base) -> Json<Value> {
    let mut links = serde_json::Map::new();
    links.insert("self".to_owned(), base.link("/v3"));
    for name in [
        "apps",
        "packages",
        "builds",
        "droplets",
        "processes",
        "routes",
    ] {
        links.insert(name.to_owned(), base.link(&format!("/v3/{name}")));
    }
    Json(json!({ "links": links }))
}

async fn info(base: Base) -> Json<Value> {
    Json(json!({
        "build": env!("CARGO_PKG_VERSION"),
        "cli_version": {"minimum": null, "recommended": null},
        "custom": {},
        "description": "controller-lite: a small Cloud-Foundry-like platform",
        "name": "controller-lite",
        "version": 3,
        "links": {"self": base.link("/v3/info")},
    }))
}

#[derive(Deserialize)]
struct TokenRequest {
    #[serde(default)]
    scope: Option<String>,
}

/// `POST /v3/tokens {"scope":"read"|"admin"}` (not in CC, which delegates to UAA): the
/// admin mints tokens, e.g. read-only ones for dashboards.
async fn create_token(
    State(c): Ctl,
    b: Result<Json<TokenRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(b)?;
    let scope = match req.scope.as_deref() {
        None | Some("read") => Scope::Read,
        Some("admin") => Scope::Admin,
        Some(other) => {
            return Err(ApiError::Unprocessable(format!(
                "Unknown scope '{other}': use read or admin"
            )));
        }
    };
    let token = new_token();
    c.store.add_token(&token, scope)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"token": token, "scope": scope})),
    ))
}

/// Deletes complete before they answer, so every job is COMPLETE.
async fn job(base: Base, axum::extract::Path(guid): axum::extract::Path<String>) -> Json<Value> {
    Json(json!({
        "guid": guid, "operation": "delete", "state": "COMPLETE", "errors": [], "warnings": [],
        "links": {"self": base.link(&format!("/v3/jobs/{guid}"))},
    }))
}
