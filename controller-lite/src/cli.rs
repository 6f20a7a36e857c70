//! The client commands (`push`, `apps`, `app`, `scale`, `start`, `stop`, `restart`,
//! `delete`, `map-route`, `logs`, `create-token`): the calls `cf` makes, against the
//! controller's API, with `cf`-like tables or `--json` for scripts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http::Method;
use http_body_util::BodyExt;
use serde_json::{Value, json};

use crate::client::{ApiClient, ClientError};
use crate::logs::format_line;
use crate::messages::LogLine;
use crate::staging;

/// Client command failures.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{0}")]
    Failed(String),
    #[error("packing {path}: {reason}")]
    Pack { path: String, reason: String },
    #[error("output: {0}")]
    Io(#[from] std::io::Error),
}

/// What `push` does.
#[derive(Debug, Clone)]
pub struct PushOptions {
    pub name: String,
    pub path: PathBuf,
    pub command: Option<String>,
    pub instances: Option<u32>,
    pub memory_mb: Option<u32>,
    /// `host[/path]`; `None` is `NAME.localhost`.
    pub route: Option<String>,
    pub no_route: bool,
    /// How long to wait for every instance to run.
    pub timeout: Duration,
}

fn field<'a>(v: &'a Value, path: &[&str]) -> &'a Value {
    path.iter().fold(v, |v, k| &v[*k])
}

fn text(v: &Value, path: &[&str]) -> String {
    match field(v, path) {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// The app named `name`, if it exists.
pub async fn find_app(client: &ApiClient, name: &str) -> Result<Option<Value>, CliError> {
    let list: Value = client.get(&format!("/v3/apps?names={name}")).await?;
    Ok(list["resources"]
        .as_array()
        .and_then(|r| r.first())
        .cloned())
}

async fn app_guid(client: &ApiClient, name: &str) -> Result<String, CliError> {
    match find_app(client, name).await? {
        Some(app) => Ok(text(&app, &["guid"])),
        None => Err(CliError::Failed(format!("App '{name}' not found"))),
    }
}

/// Splits `host[/path]`.
pub fn split_route(route: &str) -> (String, String) {
    match route.split_once('/') {
        Some((host, path)) => (host.to_owned(), format!("/{path}")),
        None => (route.to_owned(), String::new()),
    }
}

/// Finds or creates a route and maps it to the app.
pub async fn map_route(client: &ApiClient, app_guid: &str, route: &str) -> Result<Value, CliError> {
    let (host, path) = split_route(route);
    let found: Value = client.get(&format!("/v3/routes?hosts={host}")).await?;
    let existing = found["resources"]
        .as_array()
        .and_then(|r| r.iter().find(|r| text(r, &["path"]) == path))
        .cloned();
    let route = match existing {
        Some(r) => r,
        None => {
            client
                .post("/v3/routes", &json!({"host": host, "path": path}))
                .await?
        }
    };
    let guid = text(&route, &["guid"]);
    client
        .post::<Value>(
            &format!("/v3/routes/{guid}/destinations"),
            &json!({"destinations": [{"app": {"guid": app_guid}}]}),
        )
        .await?;
    Ok(route)
}

/// `push`: create the app if needed, upload, stage, map the route, restart, and wait
/// until every instance runs. Progress goes to `out`; returns the app summary.
pub async fn push(
    client: &ApiClient,
    opts: &PushOptions,
    out: &mut dyn Write,
) -> Result<Value, CliError> {
    let app = match find_app(client, &opts.name).await? {
        Some(app) => app,
        None => {
            writeln!(out, "Creating app {}...", opts.name)?;
            client.post("/v3/apps", &json!({"name": opts.name})).await?
        }
    };
    let guid = text(&app, &["guid"]);
    let mut scale = serde_json::Map::new();
    if let Some(n) = opts.instances {
        scale.insert("instances".to_owned(), json!(n));
    }
    if let Some(m) = opts.memory_mb {
        scale.insert("memory_in_mb".to_owned(), json!(m));
    }
    if !scale.is_empty() {
        client
            .post::<Value>(
                &format!("/v3/processes/{guid}/actions/scale"),
                &Value::Object(scale),
            )
            .await?;
    }
    if let Some(command) = &opts.command {
        client
            .patch::<Value>(
                &format!("/v3/processes/{guid}"),
                &json!({"command": command}),
            )
            .await?;
    }

    writeln!(out, "Packing files from {}...", opts.path.display())?;
    let bits = pack(&opts.path).await?;
    let package: Value = client
        .post(
            "/v3/packages",
            &json!({"type": "bits", "relationships": {"app": {"data": {"guid": guid}}}}),
        )
        .await?;
    let package_guid = text(&package, &["guid"]);
    writeln!(out, "Uploading {} KiB...", bits.len().div_ceil(1024))?;
    client
        .send(
            Method::POST,
            &format!("/v3/packages/{package_guid}/upload"),
            bits,
            Some("application/gzip"),
        )
        .await?;

    writeln!(out, "Staging app...")?;
    let build: Value = client
        .post("/v3/builds", &json!({"package": {"guid": package_guid}}))
        .await?;
    let build_guid = text(&build, &["guid"]);
    let build = poll(Duration::from_secs(15 * 60), || async {
        let b: Value = client.get(&format!("/v3/builds/{build_guid}")).await?;
        Ok((text(&b, &["state"]) != "STAGING").then_some(b))
    })
    .await?
    .ok_or_else(|| CliError::Failed("staging did not finish within 15 minutes".to_owned()))?;
    if text(&build, &["state"]) != "STAGED" {
        return Err(CliError::Failed(format!(
            "Staging failed: {}",
            text(&build, &["error"])
        )));
    }
    let droplet = text(&build, &["droplet", "guid"]);
    client
        .patch::<Value>(
            &format!("/v3/apps/{guid}/relationships/current_droplet"),
            &json!({"data": {"guid": droplet}}),
        )
        .await?;

    if !opts.no_route {
        let route = opts
            .route
            .clone()
            .unwrap_or_else(|| format!("{}.localhost", opts.name));
        writeln!(out, "Mapping route {route}...")?;
        map_route(client, &guid, &route).await?;
    }

    writeln!(out, "Starting app {}...", opts.name)?;
    client
        .post::<Value>(&format!("/v3/apps/{guid}/actions/restart"), &json!({}))
        .await?;
    wait_running(client, &guid, opts.timeout, out).await?;
    summary(client, &guid).await
}

async fn pack(dir: &Path) -> Result<Bytes, CliError> {
    let path = dir.to_owned();
    let err = |reason: String| CliError::Pack {
        path: dir.display().to_string(),
        reason,
    };
    if !path.is_dir() {
        return Err(err("not a directory".to_owned()));
    }
    tokio::task::spawn_blocking(move || {
        let mut buf = Vec::new();
        staging::pack_dir(&path, &mut buf).map(|()| Bytes::from(buf))
    })
    .await
    .map_err(|e| err(e.to_string()))?
    .map_err(|e| err(e.to_string()))
}

/// Polls `f` every 250 ms until it yields a value or `timeout` passes.
async fn poll<T, F, Fut>(timeout: Duration, mut f: F) -> Result<Option<T>, CliError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>, CliError>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await? {
            return Ok(Some(v));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Waits until every instance is RUNNING, printing progress when it changes. Fails early
/// when every instance is crashed and backing off (the app cannot start).
pub async fn wait_running(
    client: &ApiClient,
    guid: &str,
    timeout: Duration,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let deadline = tokio::time::Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let stats: Value = client.get(&format!("/v3/processes/{guid}/stats")).await?;
        let stats = stats["resources"].as_array().cloned().unwrap_or_default();
        let count = |state: &str| stats.iter().filter(|s| s["state"] == state).count();
        let (running, crashed) = (count("RUNNING"), count("CRASHED"));
        let progress = format!(
            "   {running} of {} instances running, {} starting, {crashed} crashed",
            stats.len(),
            count("STARTING") + count("DOWN")
        );
        if progress != last {
            writeln!(out, "{progress}")?;
            last = progress;
        }
        if running == stats.len() {
            return Ok(());
        }
        let hopeless = stats
            .iter()
            .all(|s| s["state"] == "CRASHED" && s["crash_count"].as_u64().unwrap_or(0) > 3);
        if hopeless {
            return Err(CliError::Failed(format!(
                "Start unsuccessful: every instance crashed ({})",
                text(&stats[0], &["details"])
            )));
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(CliError::Failed(format!(
                "Start timed out after {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The app, its process, routes and instance stats in one object (`app --json`).
pub async fn summary(client: &ApiClient, guid: &str) -> Result<Value, CliError> {
    let app: Value = client.get(&format!("/v3/apps/{guid}")).await?;
    let process: Value = client.get(&format!("/v3/processes/{guid}")).await?;
    let routes: Value = client.get(&format!("/v3/apps/{guid}/routes")).await?;
    let stats: Value = client.get(&format!("/v3/processes/{guid}/stats")).await?;
    let urls: Vec<Value> = routes["resources"]
        .as_array()
        .map(|r| r.iter().map(|r| r["url"].clone()).collect())
        .unwrap_or_default();
    Ok(json!({
        "guid": guid,
        "name": app["name"],
        "state": app["state"],
        "instances": process["instances"],
        "memory_in_mb": process["memory_in_mb"],
        "command": process["command"],
        "routes": urls,
        "stats": stats["resources"],
    }))
}

/// Prints an app summary as `cf app` does.
pub fn print_summary(s: &Value, out: &mut dyn Write) -> std::io::Result<()> {
    let stats = s["stats"].as_array().cloned().unwrap_or_default();
    let running = stats.iter().filter(|i| i["state"] == "RUNNING").count();
    let routes: Vec<String> = s["routes"]
        .as_array()
        .map(|r| {
            r.iter()
                .filter_map(|u| u.as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    writeln!(out, "name:              {}", text(s, &["name"]))?;
    writeln!(
        out,
        "requested state:   {}",
        text(s, &["state"]).to_lowercase()
    )?;
    writeln!(out, "routes:            {}", routes.join(", "))?;
    writeln!(out)?;
    writeln!(out, "type:           web")?;
    writeln!(out, "instances:      {running}/{}", stats.len())?;
    writeln!(out, "memory:         {}M", text(s, &["memory_in_mb"]))?;
    writeln!(out)?;
    writeln!(
        out,
        "     {:<10} {:<22} {:<8} details",
        "state", "since", "port"
    )?;
    for i in &stats {
        let port = i["instance_ports"][0]["external"]
            .as_u64()
            .map(|p| p.to_string())
            .unwrap_or_default();
        writeln!(
            out,
            "#{:<3} {:<10} {:<22} {:<8} {}",
            text(i, &["index"]),
            text(i, &["state"]).to_lowercase(),
            text(i, &["since"]),
            port,
            text(i, &["details"])
        )?;
    }
    Ok(())
}

/// `apps`: one row per app, as `cf apps`.
pub async fn apps(client: &ApiClient) -> Result<Vec<Value>, CliError> {
    let list: Value = client.get("/v3/apps?per_page=5000").await?;
    let mut rows = Vec::new();
    for app in list["resources"].as_array().cloned().unwrap_or_default() {
        rows.push(summary(client, &text(&app, &["guid"])).await?);
    }
    Ok(rows)
}

/// Prints the `apps` table.
pub fn print_apps(rows: &[Value], out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "{:<24} {:<16} {:<14} routes",
        "name", "requested state", "processes"
    )?;
    for r in rows {
        let stats = r["stats"].as_array().cloned().unwrap_or_default();
        let running = stats.iter().filter(|i| i["state"] == "RUNNING").count();
        let routes: Vec<String> = r["routes"]
            .as_array()
            .map(|r| {
                r.iter()
                    .filter_map(|u| u.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        writeln!(
            out,
            "{:<24} {:<16} {:<14} {}",
            text(r, &["name"]),
            text(r, &["state"]).to_lowercase(),
            format!("web:{running}/{}", text(r, &["instances"])),
            routes.join(", ")
        )?;
    }
    Ok(())
}

/// `app NAME`.
pub async fn app(client: &ApiClient, name: &str) -> Result<Value, CliError> {
    summary(client, &app_guid(client, name).await?).await
}

/// `scale NAME -i N [-m MB]`.
pub async fn scale(
    client: &ApiClient,
    name: &str,
    instances: Option<u32>,
    memory_mb: Option<u32>,
) -> Result<Value, CliError> {
    let guid = app_guid(client, name).await?;
    let mut body = serde_json::Map::new();
    if let Some(n) = instances {
        body.insert("instances".to_owned(), json!(n));
    }
    if let Some(m) = memory_mb {
        body.insert("memory_in_mb".to_owned(), json!(m));
    }
    Ok(client
        .post(
            &format!("/v3/processes/{guid}/actions/scale"),
            &Value::Object(body),
        )
        .await?)
}

/// `start|stop|restart NAME`.
pub async fn action(client: &ApiClient, name: &str, action: &str) -> Result<Value, CliError> {
    let guid = app_guid(client, name).await?;
    Ok(client
        .post(&format!("/v3/apps/{guid}/actions/{action}"), &json!({}))
        .await?)
}

/// `delete NAME [-r]`: with `delete_routes`, routes mapped only to this app go too.
pub async fn delete(client: &ApiClient, name: &str, delete_routes: bool) -> Result<(), CliError> {
    let guid = app_guid(client, name).await?;
    if delete_routes {
        let routes: Value = client.get(&format!("/v3/apps/{guid}/routes")).await?;
        for r in routes["resources"].as_array().cloned().unwrap_or_default() {
            let only_ours = r["destinations"]
                .as_array()
                .is_some_and(|d| d.iter().all(|d| d["app"]["guid"] == guid.as_str()));
            if only_ours {
                client
                    .delete(&format!("/v3/routes/{}", text(&r, &["guid"])))
                    .await?;
            }
        }
    }
    client.delete(&format!("/v3/apps/{guid}")).await?;
    Ok(())
}

fn log_line(v: &Value) -> LogLine {
    LogLine {
        app_guid: String::new(),
        timestamp_ns: text(v, &["timestamp"]).parse().unwrap_or(0),
        source_type: text(v, &["source_type"]),
        instance: text(v, &["instance_id"]),
        stream: text(v, &["type"]),
        message: text(v, &["message"]),
    }
}

/// `logs NAME [--recent]`: recent lines, or follow until the stream ends.
pub async fn logs(
    client: &ApiClient,
    name: &str,
    recent: bool,
    as_json: bool,
    out: &mut dyn Write,
) -> Result<(), CliError> {
    let guid = app_guid(client, name).await?;
    let print = |v: &Value, out: &mut dyn Write| -> std::io::Result<()> {
        if as_json {
            writeln!(out, "{v}")
        } else {
            writeln!(out, "{}", format_line(&log_line(v)))
        }
    };
    if recent {
        let lines: Value = client.get(&format!("/v3/apps/{guid}/logs")).await?;
        for l in lines["resources"].as_array().cloned().unwrap_or_default() {
            print(&l, out)?;
        }
        return Ok(());
    }
    let resp = client
        .send(
            Method::GET,
            &format!("/v3/apps/{guid}/logs/stream"),
            Bytes::new(),
            None,
        )
        .await?;
    let mut body = resp.into_body();
    let mut pending = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| CliError::Failed(format!("log stream: {e}")))?;
        let Some(data) = frame.data_ref() else {
            continue;
        };
        pending.extend_from_slice(data);
        while let Some(pos) = pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            if let Ok(v) = serde_json::from_slice::<Value>(&line) {
                print(&v, out)?;
                out.flush()?;
            }
        }
    }
    Ok(())
}
