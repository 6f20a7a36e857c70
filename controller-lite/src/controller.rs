//! The controller: opens the store and the blob directory, keeps the admin token, serves
//! the API, and runs the convergence loop that turns desired state into agent
//! assignments.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use router::bus::{Bus, BusError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::blobs::{BlobError, Blobs};
use crate::health_manager::{DesiredApp, HealthManager};
use crate::logs::LogStore;
use crate::messages::{
    Assignment, DesiredInstance, Goodbye, Heartbeat, InstanceKey, LogBatch,
    SUBJECT_CONTROLLER_START, SUBJECT_GOODBYE, SUBJECT_HEARTBEAT, SUBJECT_LOGS, assignment_subject,
};
use crate::store::{AppState, Scope, Store, StoreError};
use crate::util::new_token;

/// How often the convergence loop runs when nothing wakes it.
const CONVERGE_INTERVAL: Duration = Duration::from_secs(1);
/// Unchanged assignments are re-sent this often, in case one was lost.
const RESEND_INTERVAL: Duration = Duration::from_secs(5);

/// Controller start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    #[error("data directory {path}: {source}")]
    DataDir {
        path: String,
        source: std::io::Error,
    },
    #[error("admin token file {path}: {source}")]
    Token {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Blobs(#[from] BlobError),
    #[error("bus: {0}")]
    Bus(#[from] BusError),
}

/// Shared controller state (the API's `State`).
#[derive(Debug)]
pub struct Controller {
    pub store: Store,
    pub blobs: Blobs,
    pub logs: LogStore,
    pub bus: Bus,
    pub admin_token_path: PathBuf,
    /// Cancelled when the API shuts down, so endless responses (log streams) end and
    /// graceful shutdown does not wait for them forever.
    pub closing: CancellationToken,
    health: Mutex<HealthManager>,
    wake: Notify,
}

impl Controller {
    /// Opens the data directory: `controller.db`, `blobs/`, `admin-token` (created with
    /// mode 0600 at first start).
    pub fn open(data_dir: &Path, bus: Bus) -> Result<Arc<Controller>, ControllerError> {
        std::fs::create_dir_all(data_dir).map_err(|source| ControllerError::DataDir {
            path: data_dir.display().to_string(),
            source,
        })?;
        let store = Store::open(&data_dir.join("controller.db"))?;
        let blobs = Blobs::open(&data_dir.join("blobs"))?;
        let admin_token_path = data_dir.join("admin-token");
        let token = admin_token(&admin_token_path)?;
        store.add_token(&token, Scope::Admin)?;
        Ok(Arc::new(Controller {
            store,
            blobs,
            logs: LogStore::new(),
            bus,
            admin_token_path,
            closing: CancellationToken::new(),
            health: Mutex::new(HealthManager::new()),
            wake: Notify::new(),
        }))
    }

    /// The health manager (stats read it; the loop writes it).
    pub fn health(&self) -> MutexGuard<'_, HealthManager> {
        self.health.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Desired state changed: converge now rather than at the next tick.
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// The started, staged apps with their effective command and routes.
    pub fn desired(&self) -> Result<Vec<DesiredApp>, StoreError> {
        let mut out = Vec::new();
        for app in self.store.list_apps()? {
            let Some(droplet_guid) = app.droplet_guid.clone() else {
                continue;
            };
            if app.state != AppState::Started {
                continue;
            }
            let droplet = match self.store.droplet(&droplet_guid) {
                Ok(d) => d,
                Err(StoreError::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let uris = self
                .store
                .app_routes(&app.guid)?
                .iter()
                .map(|r| r.url())
                .collect();
            out.push(DesiredApp {
                guid: app.guid.clone(),
                name: app.name.clone(),
                instances: app.instances,
                template: DesiredInstance {
                    key: InstanceKey {
                        app_guid: app.guid.clone(),
                        index: 0,
                    },
                    app_name: app.name.clone(),
                    version: app.version,
                    attempt: 0,
                    droplet_guid,
                    command: app.command.clone().unwrap_or(droplet.command),
                    memory_mb: app.memory_mb,
                    health_check_type: app.health_check_type.clone(),
                    health_check_endpoint: app.health_check_endpoint.clone(),
                    uris,
                },
            });
        }
        Ok(out)
    }

    /// Listens to agents and converges until `shutdown`.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), ControllerError> {
        let mut heartbeats = self.bus.subscribe(SUBJECT_HEARTBEAT).await?;
        let mut logs = self.bus.subscribe(SUBJECT_LOGS).await?;
        let mut goodbyes = self.bus.subscribe(SUBJECT_GOODBYE).await?;
        if let Err(e) = self
            .bus
            .publish(SUBJECT_CONTROLLER_START, Bytes::new())
            .await
        {
            tracing::warn!(error = %e, "cannot announce the controller");
        }
        let mut ticker = tokio::time::interval(CONVERGE_INTERVAL);
        let mut sent: BTreeMap<String, (Assignment, tokio::time::Instant)> = BTreeMap::new();
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return Ok(()),
                msg = heartbeats.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match serde_json::from_slice::<Heartbeat>(&msg.payload) {
                        Ok(hb) => self.health().heartbeat(hb, tokio::time::Instant::now()),
                        Err(e) => {
                            tracing::warn!(error = %e, "invalid heartbeat dropped");
                            continue;
                        }
                    }
                }
                msg = goodbyes.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match serde_json::from_slice::<Goodbye>(&msg.payload) {
                        Ok(bye) => self.health().forget_agent(&bye.agent_id),
                        Err(e) => {
                            tracing::warn!(error = %e, "invalid goodbye dropped");
                            continue;
                        }
                    }
                }
                msg = logs.next() => {
                    let Some(msg) = msg else { return Ok(()) };
                    match serde_json::from_slice::<LogBatch>(&msg.payload) {
                        Ok(batch) => batch.lines.into_iter().for_each(|l| self.logs.append(l)),
                        Err(e) => tracing::warn!(error = %e, "invalid log batch dropped"),
                    }
                    continue;
                }
                () = self.wake.notified() => {}
                _ = ticker.tick() => {}
            }
            self.converge(&mut sent).await;
        }
    }

    async fn converge(&self, sent: &mut BTreeMap<String, (Assignment, tokio::time::Instant)>) {
        let desired = match self.desired() {
            Ok(d) => d,
            Err(e) => {
                tracing::error!(error = %e, "cannot read desired state");
                return;
            }
        };
        let now = tokio::time::Instant::now();
        let assignments = self.health().converge(&desired, now);
        sent.retain(|agent, _| assignments.contains_key(agent));
        for (agent, assignment) in assignments {
            let fresh = sent.get(&agent).is_some_and(|(a, at)| {
                *a == assignment && now.duration_since(*at) < RESEND_INTERVAL
            });
            if fresh {
                continue;
            }
            match serde_json::to_vec(&assignment) {
                Ok(payload) => {
                    if let Err(e) = self
                        .bus
                        .publish(&assignment_subject(&agent), Bytes::from(payload))
                        .await
                    {
                        tracing::warn!(error = %e, agent, "cannot send assignment");
                        continue;
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "cannot encode assignment");
                    continue;
                }
            }
            sent.insert(agent, (assignment, now));
        }
    }
}

/// Reads the admin token, or creates it (mode 0600) at first start.
fn admin_token(path: &Path) -> Result<String, ControllerError> {
    let err = |source| ControllerError::Token {
        path: path.display().to_string(),
        source,
    };
    match std::fs::read_to_string(path) {
        Ok(text) if !text.trim().is_empty() => return Ok(text.trim().to_owned()),
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let token = new_token();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(err)?;
    writeln!(file, "{token}").map_err(err)?;
    Ok(token)
}
