//! The agent (a "cell"): runs the instances the controller assigns to it, reports what
//! runs in heartbeats, forwards their output as logs, and keeps their routes registered.
//!
//! One loop owns all state: assignments and instance events come in, bus messages go out.
//! - [`instance`]: the life of one instance (child process, health check, stop).
//! - [`emitter`]: the routes registered with the router on behalf of healthy instances.
//! - [`limits`]: how memory limits are enforced.

pub mod emitter;
pub mod instance;
pub mod limits;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use router::bus::{Bus, BusError};
use router::protocol::{RouterStart, SUBJECT_GREET, SUBJECT_START};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::blobs::Blobs;
use crate::client::ApiClient;
use crate::messages::{
    ActualInstance, Assignment, DesiredInstance, Goodbye, Heartbeat, InstanceKey, InstanceState,
    LogBatch, LogLine, SUBJECT_CONTROLLER_START, SUBJECT_GOODBYE, SUBJECT_HEARTBEAT, SUBJECT_LOGS,
    assignment_subject,
};
use crate::util::{new_guid, now_ms};
use emitter::{Emitter, Outgoing};
use instance::{Event, InstanceEvent, InstanceHandle, LaunchSpec};
use limits::MemoryEnforcement;

/// Agent failures (fatal ones only; per-instance failures become crashes).
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("bus: {0}")]
    Bus(#[from] BusError),
    #[error("agent work directory {path}: {source}")]
    WorkDir {
        path: String,
        source: std::io::Error,
    },
}

/// Where an agent gets droplets from.
#[derive(Debug, Clone)]
pub enum DropletSource {
    /// The controller's blob directory, on the same machine (`up`).
    Local(Blobs),
    /// The controller's API (`GET /v3/droplets/:guid/download`), cached in `cache`.
    Api {
        client: Box<ApiClient>,
        cache: PathBuf,
    },
}

impl DropletSource {
    /// The local path of a droplet, downloading it first if needed.
    pub async fn fetch(&self, guid: &str) -> Result<PathBuf, String> {
        match self {
            DropletSource::Local(blobs) => Ok(blobs.droplet_path(guid)),
            DropletSource::Api { client, cache } => {
                let safe: String = guid
                    .chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                    .collect();
                let dest = cache.join(format!("{safe}.tgz"));
                if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
                    return Ok(dest);
                }
                let tmp = cache.join(format!("{safe}.{}.part", new_guid()));
                client
                    .download(&format!("/v3/droplets/{guid}/download"), &tmp)
                    .await
                    .map_err(|e| format!("droplet download failed: {e}"))?;
                tokio::fs::rename(&tmp, &dest)
                    .await
                    .map_err(|e| format!("droplet cache: {e}"))?;
                Ok(dest)
            }
        }
    }
}

/// Agent settings.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub id: String,
    pub zone: String,
    /// The address routers use to reach this agent's instances.
    pub host: String,
    /// Memory offered to instances.
    pub memory_mb: u64,
    /// Instance directories live here.
    pub work_dir: PathBuf,
    pub droplets: DropletSource,
    /// Time an instance has to pass its first health check.
    pub startup_timeout: Duration,
    pub heartbeat_interval: Duration,
}

struct Slot {
    desired: DesiredInstance,
    handle: InstanceHandle,
    actual: ActualInstance,
}

struct Agent {
    config: AgentConfig,
    bus: Bus,
    memory: MemoryEnforcement,
    emitter: Emitter,
    slots: HashMap<InstanceKey, Slot>,
    /// Instances being stopped, by instance GUID.
    retiring: HashMap<String, InstanceHandle>,
    events_tx: mpsc::UnboundedSender<InstanceEvent>,
    logs_tx: mpsc::UnboundedSender<LogLine>,
}

/// Runs an agent until `shutdown`, then stops its instances (unregistering their routes
/// first) and returns.
pub async fn run(
    config: AgentConfig,
    bus: Bus,
    shutdown: CancellationToken,
) -> Result<(), AgentError> {
    let instances_dir = config.work_dir.join("instances");
    // Instances do not survive their agent: whatever a previous run left is garbage.
    let _ = std::fs::remove_dir_all(&instances_dir);
    std::fs::create_dir_all(&instances_dir).map_err(|source| AgentError::WorkDir {
        path: instances_dir.display().to_string(),
        source,
    })?;
    if let DropletSource::Api { cache, .. } = &config.droplets {
        std::fs::create_dir_all(cache).map_err(|source| AgentError::WorkDir {
            path: cache.display().to_string(),
            source,
        })?;
    }
    let memory = MemoryEnforcement::detect(&config.id);
    tracing::info!(agent = %config.id, memory = %memory.describe(), "agent starting");

    let mut assignments = bus.subscribe(&assignment_subject(&config.id)).await?;
    let mut router_starts = bus.subscribe(SUBJECT_START).await?;
    let mut controller_starts = bus.subscribe(SUBJECT_CONTROLLER_START).await?;
    let (events_tx, mut events) = mpsc::unbounded_channel();
    let (logs_tx, logs_rx) = mpsc::unbounded_channel();
    let (greet_tx, mut greetings) = mpsc::channel(1);
    let stop_helpers = CancellationToken::new();
    tokio::spawn(forward_logs(bus.clone(), logs_rx));
    tokio::spawn(greet(bus.clone(), greet_tx, stop_helpers.clone()));

    let mut agent = Agent {
        emitter: Emitter::new(&config.host, &config.zone),
        config,
        bus,
        memory,
        slots: HashMap::new(),
        retiring: HashMap::new(),
        events_tx,
        logs_tx,
    };
    let mut heartbeat = tokio::time::interval(agent.config.heartbeat_interval);
    let mut refresh = tokio::time::interval(agent.emitter.interval);
    refresh.reset();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            msg = assignments.next() => {
                let Some(msg) = msg else { break };
                match serde_json::from_slice::<Assignment>(&msg.payload) {
                    Ok(a) => agent.apply(a).await,
                    Err(e) => tracing::warn!(error = %e, "invalid assignment dropped"),
                }
            }
            msg = router_starts.next() => {
                let Some(msg) = msg else { break };
                if let Ok(start) = serde_json::from_slice::<RouterStart>(&msg.payload) {
                    agent.set_interval(&start, &mut refresh);
                    // A router (re)started with an empty table: tell it everything now.
                    agent.publish_routes(agent.emitter.refresh()).await;
                }
            }
            msg = controller_starts.next() => {
                if msg.is_none() { break }
                agent.heartbeat().await;
            }
            Some(start) = greetings.recv() => agent.set_interval(&start, &mut refresh),
            Some(ev) = events.recv() => {
                if agent.on_event(ev).await {
                    agent.heartbeat().await;
                }
            }
            _ = heartbeat.tick() => agent.heartbeat().await,
            _ = refresh.tick() => agent.publish_routes(agent.emitter.refresh()).await,
        }
    }
    stop_helpers.cancel();
    agent.shutdown(&mut events).await;
    Ok(())
}

impl Agent {
    fn set_interval(&mut self, start: &RouterStart, refresh: &mut tokio::time::Interval) {
        let secs = start.minimum_register_interval_in_seconds.max(1);
        let interval = Duration::from_secs(secs);
        if interval != self.emitter.interval {
            tracing::info!(
                seconds = secs,
                "route register interval learned from the router"
            );
            self.emitter.interval = interval;
            *refresh = tokio::time::interval(interval);
            refresh.reset();
        }
    }

    /// Makes the running set match the assignment.
    async fn apply(&mut self, assignment: Assignment) {
        let mut wanted: HashMap<InstanceKey, DesiredInstance> = assignment
            .instances
            .into_iter()
            .map(|d| (d.key.clone(), d))
            .collect();
        let keys: Vec<InstanceKey> = self.slots.keys().cloned().collect();
        for key in keys {
            match wanted.remove(&key) {
                None => self.retire(&key).await,
                Some(d) => {
                    let replace = self
                        .slots
                        .get(&key)
                        .is_some_and(|s| s.desired.needs_replacement(&d));
                    if replace {
                        self.retire(&key).await;
                        self.start(d).await;
                    } else {
                        self.update_routes(&key, d).await;
                    }
                }
            }
        }
        for (_, d) in wanted {
            self.start(d).await;
        }
    }

    async fn start(&mut self, desired: DesiredInstance) {
        let instance_guid = new_guid();
        let spec = LaunchSpec {
            desired: desired.clone(),
            instance_guid: instance_guid.clone(),
            dir: self.config.work_dir.join("instances").join(&instance_guid),
            droplets: self.config.droplets.clone(),
            host: self.config.host.clone(),
            memory: self.memory.clone(),
            startup_timeout: self.config.startup_timeout,
        };
        let handle = instance::launch(spec, self.events_tx.clone(), self.logs_tx.clone());
        let actual = self.actual(
            &desired,
            &instance_guid,
            InstanceState::Starting,
            String::new(),
        );
        self.slots.insert(
            desired.key.clone(),
            Slot {
                desired,
                handle,
                actual,
            },
        );
    }

    fn actual(
        &self,
        d: &DesiredInstance,
        guid: &str,
        state: InstanceState,
        details: String,
    ) -> ActualInstance {
        ActualInstance {
            key: d.key.clone(),
            version: d.version,
            attempt: d.attempt,
            instance_guid: guid.to_owned(),
            state,
            since_ms: now_ms(),
            host: self.config.host.clone(),
            port: 0,
            pid: None,
            details,
        }
    }

    /// Unregisters routes first, then asks the process to stop.
    async fn retire(&mut self, key: &InstanceKey) {
        if let Some(out) = self.emitter.unregister(key) {
            self.publish_routes(vec![out]).await;
        }
        if let Some(slot) = self.slots.remove(key) {
            slot.handle.stop();
            self.retiring
                .insert(slot.handle.instance_guid.clone(), slot.handle);
        }
    }

    async fn update_routes(&mut self, key: &InstanceKey, desired: DesiredInstance) {
        let Some(slot) = self.slots.get_mut(key) else {
            return;
        };
        let changed = slot.desired.uris != desired.uris;
        slot.desired = desired;
        if changed && slot.actual.state == InstanceState::Running {
            let msg =
                self.emitter
                    .message(&slot.desired, &slot.actual.instance_guid, slot.actual.port);
            let out = self.emitter.register(key, msg);
            self.publish_routes(out).await;
        }
    }

    /// Applies an instance event; returns whether the controller should hear at once.
    async fn on_event(&mut self, ev: InstanceEvent) -> bool {
        if ev.event == Event::Stopped {
            self.retiring.remove(&ev.instance_guid);
            return false;
        }
        let Some(slot) = self.slots.get_mut(&ev.key) else {
            return false;
        };
        if slot.actual.instance_guid != ev.instance_guid {
            return false;
        }
        slot.actual.since_ms = now_ms();
        match ev.event {
            Event::Starting { port, pid } => {
                slot.actual.port = port;
                slot.actual.pid = pid;
                false
            }
            Event::Running => {
                slot.actual.state = InstanceState::Running;
                let msg = self.emitter.message(
                    &slot.desired,
                    &slot.actual.instance_guid,
                    slot.actual.port,
                );
                let out = self.emitter.register(&ev.key, msg);
                self.publish_routes(out).await;
                true
            }
            Event::Crashed { details } => {
                slot.actual.state = InstanceState::Crashed;
                slot.actual.details = details;
                slot.actual.pid = None;
                if let Some(out) = self.emitter.unregister(&ev.key) {
                    self.publish_routes(vec![out]).await;
                }
                true
            }
            Event::Stopped => false,
        }
    }

    async fn heartbeat(&self) {
        let hb = Heartbeat {
            agent_id: self.config.id.clone(),
            zone: self.config.zone.clone(),
            memory_mb: self.config.memory_mb,
            instances: self.slots.values().map(|s| s.actual.clone()).collect(),
        };
        publish_json(&self.bus, SUBJECT_HEARTBEAT, &hb).await;
    }

    async fn publish_routes(&self, messages: Vec<Outgoing>) {
        for (subject, msg) in messages {
            publish_json(&self.bus, subject, &msg).await;
        }
    }

    /// Stops everything, routes first, and waits for the processes to be gone.
    async fn shutdown(&mut self, events: &mut mpsc::UnboundedReceiver<InstanceEvent>) {
        let keys: Vec<InstanceKey> = self.slots.keys().cloned().collect();
        for key in keys {
            self.retire(&key).await;
        }
        let _ = self.bus.flush().await;
        let deadline =
            tokio::time::Instant::now() + instance::GRACE_PERIOD + Duration::from_secs(5);
        while !self.retiring.is_empty() {
            match tokio::time::timeout_at(deadline, events.recv()).await {
                Ok(Some(ev)) if ev.event == Event::Stopped => {
                    self.retiring.remove(&ev.instance_guid);
                }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => break,
            }
        }
        // Tell the controller at once that nothing runs here any more.
        let bye = Goodbye {
            agent_id: self.config.id.clone(),
        };
        publish_json(&self.bus, SUBJECT_GOODBYE, &bye).await;
        let _ = self.bus.flush().await;
    }
}

async fn publish_json<T: Serialize>(bus: &Bus, subject: &str, value: &T) {
    match serde_json::to_vec(value) {
        Ok(payload) => {
            if let Err(e) = bus.publish(subject, Bytes::from(payload)).await {
                tracing::warn!(error = %e, subject, "publish failed");
            }
        }
        Err(e) => tracing::error!(error = %e, subject, "cannot encode message"),
    }
}

/// Sends instance output to the controller in batches (at most every 100 ms).
async fn forward_logs(bus: Bus, mut rx: mpsc::UnboundedReceiver<LogLine>) {
    while let Some(first) = rx.recv().await {
        let mut batch = LogBatch { lines: vec![first] };
        let flush_at = tokio::time::Instant::now() + Duration::from_millis(100);
        while batch.lines.len() < 256 {
            match tokio::time::timeout_at(flush_at, rx.recv()).await {
                Ok(Some(line)) => batch.lines.push(line),
                Ok(None) | Err(_) => break,
            }
        }
        publish_json(&bus, SUBJECT_LOGS, &batch).await;
    }
}

/// Asks routers for their register interval once a second until one answers (as the
/// route-emitter does, but without giving up: `up` may start the router later).
async fn greet(bus: Bus, tx: mpsc::Sender<RouterStart>, stop: CancellationToken) {
    loop {
        let answer = tokio::select! {
            () = stop.cancelled() => return,
            a = bus.request(SUBJECT_GREET, Bytes::new(), Duration::from_secs(1)) => a,
        };
        match answer.map(|m| serde_json::from_slice::<RouterStart>(&m.payload)) {
            Ok(Ok(start)) => {
                let _ = tx.send(start).await;
                return;
            }
            Ok(Err(e)) => tracing::warn!(error = %e, "invalid router.greet answer"),
            Err(_) => {}
        }
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}
