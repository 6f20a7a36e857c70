//! `/v3/apps`, the web process (`/v3/processes/:guid`, whose GUID is the app's, as in
//! CC), instance stats, and logs (recent, and a follow stream of JSON lines).

use std::convert::Infallible;
use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::broadcast;

use super::{ApiError, Base, Ctl, ListQuery, body, filter, paginate};
use crate::controller::Controller;
use crate::store::{App, AppState, AppUpdate};
use crate::util::{format_time, now_ms};

pub(super) fn routes() -> axum::Router<Arc<Controller>> {
    axum::Router::new()
        .route("/v3/apps", get(list).post(create))
        .route("/v3/apps/{guid}", get(show).patch(update).delete(destroy))
        .route("/v3/apps/{guid}/actions/start", post(start))
        .route("/v3/apps/{guid}/actions/stop", post(stop))
        .route("/v3/apps/{guid}/actions/restart", post(restart))
        .route("/v3/apps/{guid}/processes", get(app_processes))
        .route("/v3/apps/{guid}/processes/web", get(show_process))
        .route("/v3/apps/{guid}/processes/web/stats", get(stats))
        .route("/v3/apps/{guid}/logs", get(recent_logs))
        .route("/v3/apps/{guid}/logs/stream", get(stream_logs))
        .route("/v3/processes", get(list_processes))
        .route(
            "/v3/processes/{guid}",
            get(show_process).patch(update_process),
        )
        .route("/v3/processes/{guid}/actions/scale", post(scale))
        .route("/v3/processes/{guid}/stats", get(stats))
}

/// The app as CC presents it.
pub fn present(base: &Base, app: &App) -> Value {
    let g = &app.guid;
    json!({
        "guid": g,
        "name": app.name,
        "state": app.state,
        "created_at": app.created_at,
        "updated_at": app.updated_at,
        "lifecycle": {"type": "buildpack", "data": {"buildpacks": [], "stack": "lite"}},
        "relationships": {
            "space": {"data": {"guid": "default"}},
            "current_droplet": {"data": app.droplet_guid.as_ref().map(|d| json!({"guid": d}))},
        },
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": base.link(&format!("/v3/apps/{g}")),
            "processes": base.link(&format!("/v3/apps/{g}/processes")),
            "packages": base.link(&format!("/v3/apps/{g}/packages")),
            "routes": base.link(&format!("/v3/apps/{g}/routes")),
            "current_droplet": base.link(&format!("/v3/apps/{g}/droplets/current")),
            "start": {"href": format!("{}/v3/apps/{g}/actions/start", base.0), "method": "POST"},
            "stop": {"href": format!("{}/v3/apps/{g}/actions/stop", base.0), "method": "POST"},
        },
    })
}

/// The app's web process as CC presents it.
pub fn present_process(base: &Base, app: &App) -> Value {
    let g = &app.guid;
    let endpoint = (!app.health_check_endpoint.is_empty()).then_some(&app.health_check_endpoint);
    json!({
        "guid": g,
        "type": "web",
        "command": app.command,
        "instances": app.instances,
        "memory_in_mb": app.memory_mb,
        "disk_in_mb": 1024,
        "log_rate_limit_in_bytes_per_second": -1,
        "health_check": {"type": app.health_check_type, "data": {"timeout": null, "invocation_timeout": null, "endpoint": endpoint}},
        "relationships": {"app": {"data": {"guid": g}}, "revision": null},
        "metadata": {"labels": {}, "annotations": {}},
        "version": app.version.to_string(),
        "created_at": app.created_at,
        "updated_at": app.updated_at,
        "links": {
            "self": base.link(&format!("/v3/processes/{g}")),
            "scale": {"href": format!("{}/v3/processes/{g}/actions/scale", base.0), "method": "POST"},
            "app": base.link(&format!("/v3/apps/{g}")),
            "stats": base.link(&format!("/v3/processes/{g}/stats")),
        },
    })
}

async fn list(State(c): Ctl, base: Base, q: ListQuery) -> Result<Json<Value>, ApiError> {
    let names = filter(&q, "names");
    let guids = filter(&q, "guids");
    let apps: Vec<Value> = c
        .store
        .list_apps()?
        .iter()
        .filter(|a| names.as_ref().is_none_or(|n| n.contains(&a.name.as_str())))
        .filter(|a| guids.as_ref().is_none_or(|g| g.contains(&a.guid.as_str())))
        .map(|a| present(&base, a))
        .collect();
    Ok(Json(paginate(&base, "/v3/apps", &q, apps)?))
}

#[derive(Deserialize)]
struct CreateApp {
    name: String,
}

/// Names become hostnames and directory names: keep them simple.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn create(
    State(c): Ctl,
    base: Base,
    b: Result<Json<CreateApp>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(b)?;
    if !valid_name(&req.name) {
        return Err(ApiError::Unprocessable(
            "Name must be 1-63 characters of letters, digits, '-' and '_'".to_owned(),
        ));
    }
    let app = c.store.create_app(&req.name)?;
    c.logs.platform(
        &app.guid,
        "API",
        format!("Created app with guid {}", app.guid),
    );
    Ok((StatusCode::CREATED, Json(present(&base, &app))))
}

async fn show(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(present(&base, &c.store.app(&guid)?)))
}

#[derive(Deserialize)]
struct UpdateApp {
    name: Option<String>,
}

async fn update(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    b: Result<Json<UpdateApp>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(b)?;
    if let Some(name) = &req.name
        && !valid_name(name)
    {
        return Err(ApiError::Unprocessable(
            "Name must be 1-63 characters of letters, digits, '-' and '_'".to_owned(),
        ));
    }
    let app = c.store.update_app(
        &guid,
        &AppUpdate {
            name: req.name,
            ..Default::default()
        },
    )?;
    c.wake();
    Ok(Json(present(&base, &app)))
}

/// Deletes the app with its bits, droplets and route mappings; its instances are stopped
/// by the next convergence. CC answers 202 with a job; ours is complete already.
async fn destroy(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Response, ApiError> {
    let (packages, droplets) = c.store.delete_app(&guid)?;
    for p in packages {
        c.blobs.remove(&c.blobs.package_path(&p))?;
    }
    for d in droplets {
        c.blobs.remove(&c.blobs.droplet_path(&d))?;
    }
    c.logs.forget(&guid);
    c.wake();
    let job = crate::util::new_guid();
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("{}/v3/jobs/{job}", base.0))],
    )
        .into_response())
}

async fn start(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = c.store.app(&guid)?;
    if app.droplet_guid.is_none() {
        return Err(ApiError::Unprocessable(
            "Assign a droplet before starting this app.".to_owned(),
        ));
    }
    let app = c.store.set_app_state(&guid, AppState::Started, false)?;
    c.logs.platform(&guid, "API", "Updated app: state STARTED");
    c.wake();
    Ok(Json(present(&base, &app)))
}

async fn stop(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = c.store.set_app_state(&guid, AppState::Stopped, false)?;
    c.logs.platform(&guid, "API", "Updated app: state STOPPED");
    c.wake();
    Ok(Json(present(&base, &app)))
}

async fn restart(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = c.store.app(&guid)?;
    if app.droplet_guid.is_none() {
        return Err(ApiError::Unprocessable(
            "Assign a droplet before starting this app.".to_owned(),
        ));
    }
    // A new version replaces every instance (CC: stop, then start).
    let app = c.store.set_app_state(&guid, AppState::Started, true)?;
    c.logs.platform(&guid, "API", "Restarted app");
    c.wake();
    Ok(Json(present(&base, &app)))
}

async fn app_processes(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    let app = c.store.app(&guid)?;
    let path = format!("/v3/apps/{guid}/processes");
    Ok(Json(paginate(
        &base,
        &path,
        &q,
        vec![present_process(&base, &app)],
    )?))
}

async fn list_processes(State(c): Ctl, base: Base, q: ListQuery) -> Result<Json<Value>, ApiError> {
    let apps = filter(&q, "app_guids");
    let items = c
        .store
        .list_apps()?
        .iter()
        .filter(|a| apps.as_ref().is_none_or(|g| g.contains(&a.guid.as_str())))
        .map(|a| present_process(&base, a))
        .collect();
    Ok(Json(paginate(&base, "/v3/processes", &q, items)?))
}

async fn show_process(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = c
        .store
        .app(&guid)
        .map_err(|_| ApiError::NotFound("Process".to_owned()))?;
    Ok(Json(present_process(&base, &app)))
}

#[derive(Deserialize)]
struct HealthCheck {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    data: Option<HealthCheckData>,
}

#[derive(Deserialize)]
struct HealthCheckData {
    endpoint: Option<String>,
}

#[derive(Deserialize)]
struct UpdateProcess {
    #[serde(default, deserialize_with = "explicit_null")]
    command: Option<Option<String>>,
    health_check: Option<HealthCheck>,
}

/// Tells `"command": null` (reset to the droplet's) from an absent key.
fn explicit_null<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<Option<String>>, D::Error> {
    Ok(Some(Option::deserialize(d)?))
}

async fn update_process(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    b: Result<Json<UpdateProcess>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(b)?;
    let mut update = AppUpdate {
        command: req.command.map(|c| c.filter(|c| !c.trim().is_empty())),
        ..Default::default()
    };
    if let Some(hc) = req.health_check {
        if !matches!(hc.kind.as_str(), "port" | "http" | "process") {
            return Err(ApiError::Unprocessable(
                "Health check type must be port, http or process".to_owned(),
            ));
        }
        update.health_check_type = Some(hc.kind);
        update.health_check_endpoint = Some(hc.data.and_then(|d| d.endpoint).unwrap_or_default());
    }
    let app = c.store.update_app(&guid, &update).map_err(|e| match e {
        crate::store::StoreError::NotFound { .. } => ApiError::NotFound("Process".to_owned()),
        e => e.into(),
    })?;
    c.wake();
    Ok(Json(present_process(&base, &app)))
}

#[derive(Deserialize)]
struct Scale {
    instances: Option<i64>,
    memory_in_mb: Option<i64>,
}

async fn scale(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    b: Result<Json<Scale>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(b)?;
    let instances = req
        .instances
        .map(|n| u32::try_from(n).ok().filter(|n| *n <= 1000))
        .map(|n| {
            n.ok_or_else(|| {
                ApiError::Unprocessable("Instances must be between 0 and 1000".to_owned())
            })
        })
        .transpose()?;
    let memory_mb = req
        .memory_in_mb
        .map(|n| {
            u32::try_from(n)
                .ok()
                .filter(|n| (1..=1_048_576).contains(n))
        })
        .map(|n| {
            n.ok_or_else(|| {
                ApiError::Unprocessable("Memory in mb must be greater than 0".to_owned())
            })
        })
        .transpose()?;
    let app = c
        .store
        .update_app(
            &guid,
            &AppUpdate {
                instances,
                memory_mb,
                ..Default::default()
            },
        )
        .map_err(|e| match e {
            crate::store::StoreError::NotFound { .. } => ApiError::NotFound("Process".to_owned()),
            e => e.into(),
        })?;
    c.logs.platform(
        &guid,
        "API",
        format!(
            "Scaled app: instances {}, memory {} MB",
            app.instances, app.memory_mb
        ),
    );
    c.wake();
    Ok((StatusCode::ACCEPTED, Json(present_process(&base, &app))))
}

/// `GET /v3/processes/:guid/stats`: no pagination block, as in CC. Beyond CC's fields:
/// `since`, `crash_count`, `agent` and `pid`.
async fn stats(State(c): Ctl, Path(guid): Path<String>) -> Result<Json<Value>, ApiError> {
    let app = c
        .store
        .app(&guid)
        .map_err(|_| ApiError::NotFound("Process".to_owned()))?;
    let instances = if app.state == AppState::Started {
        app.instances
    } else {
        0
    };
    let stats = c.health().stats(
        &guid,
        instances,
        app.version,
        tokio::time::Instant::now(),
        now_ms(),
    );
    let mem_quota = u64::from(app.memory_mb) * 1024 * 1024;
    let resources: Vec<Value> = stats
        .into_iter()
        .map(|s| {
            let since = std::time::UNIX_EPOCH + std::time::Duration::from_millis(s.since_ms);
            json!({
                "type": "web",
                "index": s.index,
                "state": s.state,
                "routable": s.routable,
                "instance_guid": s.instance_guid,
                "host": s.host,
                "instance_internal_ip": s.host,
                "instance_ports": if s.port == 0 { json!([]) } else { json!([{"external": s.port, "internal": s.port}]) },
                "uptime": s.uptime,
                "since": format_time(since),
                "mem_quota": mem_quota,
                "disk_quota": 1024u64 * 1024 * 1024,
                "log_rate_limit": -1,
                "fds_quota": 16384,
                "isolation_segment": null,
                "usage": {},
                "details": s.details,
                "crash_count": s.crash_count,
                "agent": s.agent,
                "pid": s.pid,
            })
        })
        .collect();
    Ok(Json(json!({ "resources": resources })))
}

fn log_json(line: &crate::messages::LogLine) -> Value {
    json!({
        "timestamp": line.timestamp_ns.to_string(),
        "source_type": line.source_type,
        "instance_id": line.instance,
        "type": line.stream,
        "message": line.message,
    })
}

/// `GET /v3/apps/:guid/logs?limit=N`: the most recent lines, oldest first.
async fn recent_logs(
    State(c): Ctl,
    Path(guid): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    c.store.app(&guid)?;
    let limit = match q.get("limit") {
        None => 1000,
        Some(v) => v
            .parse::<usize>()
            .ok()
            .filter(|n| (1..=crate::logs::RECENT_LINES).contains(n))
            .ok_or_else(|| ApiError::BadQuery("limit must be between 1 and 1000".to_owned()))?,
    };
    let lines: Vec<Value> = c.logs.recent(&guid, limit).iter().map(log_json).collect();
    Ok(Json(json!({ "resources": lines })))
}

/// `GET /v3/apps/:guid/logs/stream`: new lines as they come, one JSON object per line.
async fn stream_logs(State(c): Ctl, Path(guid): Path<String>) -> Result<Response, ApiError> {
    c.store.app(&guid)?;
    let rx = c.logs.follow();
    let closing = c.closing.clone();
    let stream =
        futures_util::stream::unfold((rx, guid, closing), |(mut rx, guid, closing)| async move {
            loop {
                let next = tokio::select! {
                    () = closing.cancelled() => return None,
                    next = rx.recv() => next,
                };
                match next {
                    Ok(line) if line.app_guid == guid => {
                        let mut text = log_json(&line).to_string();
                        text.push('\n');
                        return Some((
                            Ok::<Bytes, Infallible>(Bytes::from(text)),
                            (rx, guid, closing),
                        ));
                    }
                    Ok(_) => continue,
                    // A slow follower misses lines rather than slowing everyone down.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
    Ok((
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(stream),
    )
        .into_response())
}
