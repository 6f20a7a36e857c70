//! Packages (uploaded bits), builds (staging) and droplets.
//!
//! Lifecycle, as `cf push` drives it:
//! `POST /v3/packages` (AWAITING_UPLOAD) -> `POST /v3/packages/:guid/upload` (READY, or 422
//! and FAILED for bits that are not a readable tar.gz/zip) -> `POST /v3/builds` (STAGING,
//! staged in the background) -> `GET /v3/builds/:guid` until STAGED or FAILED ->
//! `PATCH /v3/apps/:guid/relationships/current_droplet` -> start or restart the app.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Path, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use futures_util::StreamExt;
use http::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use super::{ApiError, Base, Ctl, ListQuery, body, filter, paginate};
use crate::controller::Controller;
use crate::staging;
use crate::store::{Build, Droplet, Package};
use crate::util::{new_guid, timestamp};

/// Largest accepted upload.
const MAX_UPLOAD: usize = 1024 * 1024 * 1024;

pub(super) fn routes() -> axum::Router<Arc<Controller>> {
    axum::Router::new()
        .route("/v3/packages", get(list).post(create))
        .route("/v3/packages/{guid}", get(show))
        .route(
            "/v3/packages/{guid}/upload",
            post(upload).layer(DefaultBodyLimit::max(MAX_UPLOAD)),
        )
        .route("/v3/apps/{guid}/packages", get(list_for_app))
        .route("/v3/builds", post(create_build))
        .route("/v3/builds/{guid}", get(show_build))
        .route("/v3/droplets/{guid}", get(show_droplet))
        .route("/v3/droplets/{guid}/download", get(download_droplet))
        .route("/v3/apps/{guid}/droplets/current", get(current_droplet))
        .route(
            "/v3/apps/{guid}/relationships/current_droplet",
            patch(set_current_droplet),
        )
}

fn present(base: &Base, p: &Package) -> Value {
    json!({
        "guid": p.guid,
        "type": "bits",
        "data": {"checksum": {"type": "sha256", "value": null}, "error": null},
        "state": p.state,
        "created_at": p.created_at,
        "updated_at": p.updated_at,
        "relationships": {"app": {"data": {"guid": p.app_guid}}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": base.link(&format!("/v3/packages/{}", p.guid)),
            "upload": {"href": format!("{}/v3/packages/{}/upload", base.0, p.guid), "method": "POST"},
            "app": base.link(&format!("/v3/apps/{}", p.app_guid)),
        },
    })
}

fn present_build(base: &Base, b: &Build) -> Value {
    json!({
        "guid": b.guid,
        "state": b.state,
        "error": b.error,
        "lifecycle": {"type": "buildpack", "data": {"buildpacks": [], "stack": "lite"}},
        "package": {"guid": b.package_guid},
        "droplet": b.droplet_guid.as_ref().map(|d| json!({"guid": d})),
        "relationships": {"app": {"data": {"guid": b.app_guid}}},
        "created_at": b.created_at,
        "updated_at": b.updated_at,
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": base.link(&format!("/v3/builds/{}", b.guid)),
            "app": base.link(&format!("/v3/apps/{}", b.app_guid)),
        },
    })
}

fn present_droplet(base: &Base, d: &Droplet) -> Value {
    json!({
        "guid": d.guid,
        "state": "STAGED",
        "error": null,
        "lifecycle": {"type": "buildpack", "data": {}},
        "execution_metadata": "",
        "process_types": {"web": d.command},
        "checksum": null,
        "buildpacks": [],
        "stack": "lite",
        "image": null,
        "created_at": d.created_at,
        "updated_at": d.created_at,
        "relationships": {"app": {"data": {"guid": d.app_guid}}},
        "metadata": {"labels": {}, "annotations": {}},
        "links": {
            "self": base.link(&format!("/v3/droplets/{}", d.guid)),
            "package": base.link(&format!("/v3/packages/{}", d.package_guid)),
            "app": base.link(&format!("/v3/apps/{}", d.app_guid)),
            "download": base.link(&format!("/v3/droplets/{}/download", d.guid)),
        },
    })
}

#[derive(Deserialize)]
struct Relationship {
    data: Guid,
}

#[derive(Deserialize)]
struct Guid {
    guid: String,
}

#[derive(Deserialize)]
struct AppRelationship {
    app: Relationship,
}

#[derive(Deserialize)]
struct CreatePackage {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    relationships: AppRelationship,
}

async fn create(
    State(c): Ctl,
    base: Base,
    b: Result<Json<CreatePackage>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(b)?;
    if req.kind.as_deref().is_some_and(|k| k != "bits") {
        return Err(ApiError::Unprocessable(
            "Only packages of type 'bits' are supported".to_owned(),
        ));
    }
    let app_guid = &req.relationships.app.data.guid;
    let package = c.store.create_package(app_guid).map_err(|e| match e {
        crate::store::StoreError::NotFound { .. } => ApiError::Unprocessable(
            "App is invalid. Ensure it exists and you have access to it.".to_owned(),
        ),
        e => e.into(),
    })?;
    Ok((StatusCode::CREATED, Json(present(&base, &package))))
}

async fn list(State(c): Ctl, base: Base, q: ListQuery) -> Result<Json<Value>, ApiError> {
    let apps = filter(&q, "app_guids");
    let items = c
        .store
        .list_packages(None)?
        .iter()
        .filter(|p| {
            apps.as_ref()
                .is_none_or(|a| a.contains(&p.app_guid.as_str()))
        })
        .map(|p| present(&base, p))
        .collect();
    Ok(Json(paginate(&base, "/v3/packages", &q, items)?))
}

async fn list_for_app(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    q: ListQuery,
) -> Result<Json<Value>, ApiError> {
    c.store.app(&guid)?;
    let items = c
        .store
        .list_packages(Some(&guid))?
        .iter()
        .map(|p| present(&base, p))
        .collect();
    Ok(Json(paginate(
        &base,
        &format!("/v3/apps/{guid}/packages"),
        &q,
        items,
    )?))
}

async fn show(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(present(&base, &c.store.package(&guid)?)))
}

/// Receives the bits: a multipart form with a `bits` file (as the cf CLI sends), or the
/// archive as the raw body. The bits are streamed to disk, then checked in full.
async fn upload(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    req: Request,
) -> Result<Json<Value>, ApiError> {
    let package = c.store.package(&guid)?;
    if package.state == "READY" {
        return Err(ApiError::Unprocessable(
            "Bits may be uploaded only once. Create a new package to upload different bits."
                .to_owned(),
        ));
    }
    let temp = c.blobs.temp_path();
    let written = receive(req, &temp).await;
    let outcome = match written {
        Ok(()) => {
            let path = temp.clone();
            tokio::task::spawn_blocking(move || staging::validate(&path))
                .await
                .map_err(|e| ApiError::Internal(e.to_string()))?
                .map_err(|e| ApiError::Unprocessable(format!("The uploaded bits are invalid: {e}")))
        }
        Err(e) => Err(e),
    };
    if let Err(e) = outcome {
        let _ = tokio::fs::remove_file(&temp).await;
        c.store.set_package_state(&guid, "FAILED")?;
        return Err(e);
    }
    c.blobs.commit(&temp, &c.blobs.package_path(&guid))?;
    let package = c.store.set_package_state(&guid, "READY")?;
    Ok(Json(present(&base, &package)))
}

async fn receive(req: Request, dest: &std::path::Path) -> Result<(), ApiError> {
    let is_multipart = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with("multipart/form-data"));
    let io = |e: std::io::Error| ApiError::Internal(format!("writing the upload: {e}"));
    let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
    let bad = |e: &dyn std::fmt::Display| {
        ApiError::Unprocessable(format!("The uploaded bits are invalid: {e}"))
    };
    if is_multipart {
        let mut form = Multipart::from_request(req, &())
            .await
            .map_err(|e| bad(&e))?;
        let mut found = false;
        while let Some(mut field) = form.next_field().await.map_err(|e| bad(&e))? {
            if field.name() != Some("bits") {
                continue;
            }
            found = true;
            while let Some(chunk) = field.chunk().await.map_err(|e| bad(&e))? {
                file.write_all(&chunk).await.map_err(io)?;
            }
        }
        if !found {
            return Err(ApiError::Unprocessable(
                "The upload has no 'bits' field".to_owned(),
            ));
        }
    } else {
        let mut stream = req.into_body().into_data_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|e| bad(&e))?;
            file.write_all(&chunk).await.map_err(io)?;
        }
    }
    file.flush().await.map_err(io)?;
    Ok(())
}

#[derive(Deserialize)]
struct CreateBuild {
    package: Guid,
}

/// Starts staging; the build is STAGING until the background task finishes.
async fn create_build(
    State(c): Ctl,
    base: Base,
    b: Result<Json<CreateBuild>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = body(b)?;
    let package = c.store.package(&req.package.guid).map_err(|e| match e {
        crate::store::StoreError::NotFound { .. } => ApiError::Unprocessable(
            "Unable to use package. Ensure that the package exists and you have access to it."
                .to_owned(),
        ),
        e => e.into(),
    })?;
    if package.state != "READY" {
        return Err(ApiError::Unprocessable(format!(
            "Package must be READY to stage, not {}",
            package.state
        )));
    }
    let app = c.store.app(&package.app_guid)?;
    let build = c.store.create_build(&package)?;
    c.logs.platform(
        &app.guid,
        "STG",
        format!("Staging package {}", package.guid),
    );
    tokio::spawn(stage(c.clone(), build.clone(), app.command.clone()));
    Ok((StatusCode::CREATED, Json(present_build(&base, &build))))
}

async fn stage(c: Arc<Controller>, build: Build, command: Option<String>) {
    let droplet_guid = new_guid();
    let package_path = c.blobs.package_path(&build.package_guid);
    let droplet_tmp = c.blobs.temp_path();
    let work = c.blobs.temp_path();
    let tmp = droplet_tmp.clone();
    let staged = tokio::task::spawn_blocking(move || {
        staging::stage(&package_path, &tmp, &work, command.as_deref())
    })
    .await;
    let outcome = match staged {
        Ok(Ok(cmd)) => c
            .blobs
            .commit(&droplet_tmp, &c.blobs.droplet_path(&droplet_guid))
            .map(|()| cmd)
            .map_err(|e| e.to_string()),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("staging task failed: {e}")),
    };
    let outcome = outcome.map(|command| Droplet {
        guid: droplet_guid,
        app_guid: build.app_guid.clone(),
        package_guid: build.package_guid.clone(),
        command,
        created_at: timestamp(),
    });
    match &outcome {
        Ok(d) => c.logs.platform(
            &build.app_guid,
            "STG",
            format!("Staged droplet {} (start command: {})", d.guid, d.command),
        ),
        Err(e) => {
            let _ = std::fs::remove_file(&droplet_tmp);
            c.logs
                .platform(&build.app_guid, "STG", format!("Staging failed: {e}"));
        }
    }
    if let Err(e) = c.store.finish_build(
        &build.guid,
        outcome.map_err(|e| format!("StagingError - {e}")),
    ) {
        tracing::error!(error = %e, build = %build.guid, "cannot record the staging result");
    }
}

async fn show_build(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(present_build(&base, &c.store.build(&guid)?)))
}

async fn show_droplet(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(present_droplet(&base, &c.store.droplet(&guid)?)))
}

/// The droplet's bits, for agents on other machines.
async fn download_droplet(State(c): Ctl, Path(guid): Path<String>) -> Result<Response, ApiError> {
    c.store.droplet(&guid)?;
    let file = tokio::fs::File::open(c.blobs.droplet_path(&guid))
        .await
        .map_err(|e| ApiError::Internal(format!("droplet blob: {e}")))?;
    let body = Body::from_stream(tokio_util::io::ReaderStream::new(file));
    Ok(([(header::CONTENT_TYPE, "application/gzip")], body).into_response())
}

async fn current_droplet(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let app = c.store.app(&guid)?;
    let droplet = app
        .droplet_guid
        .ok_or_else(|| ApiError::NotFound("Droplet".to_owned()))?;
    Ok(Json(present_droplet(&base, &c.store.droplet(&droplet)?)))
}

#[derive(Deserialize)]
struct SetDroplet {
    data: Guid,
}

async fn set_current_droplet(
    State(c): Ctl,
    base: Base,
    Path(guid): Path<String>,
    b: Result<Json<SetDroplet>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let req = body(b)?;
    c.store.app(&guid)?;
    let app = c.store.set_current_droplet(&guid, &req.data.guid).map_err(|e| match e {
        crate::store::StoreError::NotFound { .. } | crate::store::StoreError::Conflict(_) => ApiError::Unprocessable(
            "Unable to assign current droplet. Ensure the droplet exists and belongs to this app.".to_owned(),
        ),
        e => e.into(),
    })?;
    c.wake();
    Ok(Json(json!({
        "data": {"guid": app.droplet_guid},
        "links": {
            "self": base.link(&format!("/v3/apps/{guid}/relationships/current_droplet")),
            "related": base.link(&format!("/v3/apps/{guid}/droplets/current")),
        },
    })))
}
