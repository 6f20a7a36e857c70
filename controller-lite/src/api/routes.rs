//! `/v3/routes` and their destinations. There are no domains in this lite API: a route's
//! `host` is the full host name (`hello.localhost`), plus an optional context `path`.
//! Mapping or unmapping changes the URIs the agents register, without restarts.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};

use super::{ApiError, Base, Ctl, ListQuery, body, filter, paginate};
use crate::controller::Controller;
use crate::store::{Destination, Route};

pub(super) fn routes() -> axum::Router<Arc<Controller>> {
    axum::Router::new()
        .route("/v3/routes", get(list).post(create))
        .route("/v3/routes/{guid}", get(show).delete(destroy))
        .route(
            "/v3/routes/{guid}/destinations",
            get(list_destinations).post(add_destinations),
        )
        .route(
            "/v3/routes/{guid}/destinations/{destination}",
            delete(remove_destination),
        )
        .route("/v3/apps/{guid}/routes", get(app_routes))
}

fn present_destination(d: &Destination) -> Value {
    json!({
        "guid": d.guid,
        "app": {"guid": d.app_guid, "process": {"type": "web"}},
        "weight": null,
        "port": 8080,
        "protocol": d.protocol,
    })
}

fn present(base: &Base, r: &Route, destinations: &[Destination]) -> Value {
    let mine: Vec<Value> = destinations
        .iter()
        .filter(|d| d.route_guid == r.guid)
        .map(present_destination)
        .collect();
    json!({
        "guid": r.guid,
        "protocol": "http",
        "host": r.host,
        "path": r.path,
        "port": null,
        "url": r.url(),
        "destinations": mine,
        "options": {},
        "created_at": r.created_at,
        "updated_at": r.updated_at,
        "relationships": {"space": {"data": {"guid": "default"}}, "domain": {"data": null}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": base.link(&format!("/v3/routes/{}", r.guid)),
            "destinations": base.link(&format!("/v3/routes/{}/destinations", r.guid)),
        },
    })
}

#[derive(Deserialize)]
struct CreateRoute {
    host: String,
    #[serde(default)]
    path: String,
}

/// Checks a route with the router's own URI rules, so every route we accept is one the
/// router will accept.
fn validate(host: &str, path: &str) -> Result<(), ApiError> {
    if host.is_empty() || host.contains('/') {
        return Err(ApiError::Unprocessable(
            "Host must be a non-empty host name".to_owned(),
        ));
    }
    if !path.is_empty() && (!path.starts_with('/') || path == "/" || path.contains('?')) {
        return Err(ApiError::Unprocessable(
            "Path must start with '/', not be '/' alone, and have no '?'".to_owned(),
        ));
    }
    router::protocol::validate_uri(&format!("{host}{path}"))
        .map_err(|e| ApiError::Unprocessable(format!("Route is invalid: {e}")))
}

async fn create(
    State(c): Ctl,
    base: Base,
    b: Result<Json<CreateRoute>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(b)?;
    validate(&req.host, &req.path)?;
    let route = c.store.create_route(&req.host, &req.path)?;
    Ok((StatusCode::CREATED, Json(present(&base, &route, &[]))))
}

async fn list(State(c): Ctl, base: Base, q: ListQuery) -> Result<Json<Value>, ApiError> {
    let hosts = filter(&q, "hosts");
    let paths = filter(&q, "paths");
    let apps = filter(&q, "app_guids");
    let destinations = c.store.destinations(None)?;
    let items = c
        .store
        .list_routes()?
        .iter()
        .filter(|r| {
            hosts
                .as_ref()
                .is_none_or(|h| h.iter().any(|h| h.eq_ignore_ascii_case(&r.host)))
        })
        .filter(|r| paths.as_ref().is_none_or(|p| p.contains(&r.path.as_str())))
        .filter(|r| {
            apps.as_ref().is_none_or(|a| {
                destinations
                    .iter()
                    .any(|d| d.route_guid == r.guid && a.contains(&d.app_guid.as_str()))
            })
        })
        .map(|r| present(&base, r, &destinations))
        .collect();
    Ok(Json(paginate(&base, "/v3/routes", &q, items)?))
}

async fn show(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let route = c.store.route(&guid)?;
    let destinations = c.store.destinations(Some(&guid))?;
    Ok(Json(present(&base, &route, &destinations)))
}

async fn destroy(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Response, ApiError> {
    c.store.delete_route(&guid)?;
    c.wake();
    let job = crate::util::new_guid();
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("{}/v3/jobs/{job}", base.0))],
    )
        .into_response())
}

async fn app_routes(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    c.store.app(&guid)?;
    let destinations = c.store.destinations(None)?;
    let items = c
        .store
        .app_routes(&guid)?
        .iter()
        .map(|r| present(&base, r, &destinations))
        .collect();
    Ok(Json(paginate(
        &base,
        &format!("/v3/apps/{guid}/routes"),
        &q,
        items,
    )?))
}

fn destinations_body(base: &Base, route_guid: &str, destinations: &[Destination]) -> Value {
    json!({
        "destinations": destinations.iter().map(present_destination).collect::<Vec<_>>(),
        "links": {
            "self": base.link(&format!("/v3/routes/{route_guid}/destinations")),
            "route": base.link(&format!("/v3/routes/{route_guid}")),
        },
    })
}

async fn list_destinations(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    c.store.route(&guid)?;
    Ok(Json(destinations_body(
        &base,
        &guid,
        &c.store.destinations(Some(&guid))?,
    )))
}

#[derive(Deserialize)]
struct NewDestinations {
    destinations: Vec<NewDestination>,
}

#[derive(Deserialize)]
struct NewDestination {
    app: DestinationApp,
    #[serde(default)]
    protocol: Option<String>,
}

#[derive(Deserialize)]
struct DestinationApp {
    guid: String,
}

/// `POST /v3/routes/:guid/destinations`: adds mappings (200 with the full list, as CC).
async fn add_destinations(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    b: Result<Json<NewDestinations>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(b)?;
    c.store.route(&guid)?;
    for d in &req.destinations {
        let protocol = d.protocol.as_deref().unwrap_or("http1");
        if !matches!(protocol, "http1" | "http2") {
            return Err(ApiError::Unprocessable(
                "Destinations protocol must be 'http1' or 'http2'".to_owned(),
            ));
        }
        c.store
            .add_destination(&guid, &d.app.guid, protocol)
            .map_err(|e| match e {
                crate::store::StoreError::NotFound { .. } => ApiError::Unprocessable(format!(
                    "App(s) with guid(s) \"{}\" do not exist.",
                    d.app.guid
                )),
                e => e.into(),
            })?;
    }
    c.wake();
    Ok(Json(destinations_body(
        &base,
        &guid,
        &c.store.destinations(Some(&guid))?,
    )))
}

async fn remove_destination(
    State(c): Ctl,
    Path((guid, destination)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    c.store.delete_destination(&guid, &destination)?;
    c.wake();
    Ok(StatusCode::NO_CONTENT)
}
