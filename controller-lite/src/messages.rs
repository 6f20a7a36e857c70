//! What the controller and its agents say to each other on the bus. The same subjects
//! and JSON payloads travel over NATS (several machines) and the in-process bus (`up`).
//!
//! The controller is the only writer of desired state: it sends each agent its complete
//! list of instances (an [`Assignment`]) whenever it changes and every few seconds, so a
//! lost message heals itself. Agents answer with [`Heartbeat`]s: what actually runs.
//! An instance is named by `(app_guid, index)`; `version` changes when it must be
//! replaced (restart, new droplet), `attempt` when the health manager allows a crashed
//! instance to start again.

use serde::{Deserialize, Serialize};

/// Agents publish their [`Heartbeat`] here.
pub const SUBJECT_HEARTBEAT: &str = "controller-lite.agent.heartbeat";
/// An agent that stops says so here (payload: [`Goodbye`]), so its instances are placed
/// elsewhere at once rather than after its heartbeats time out.
pub const SUBJECT_GOODBYE: &str = "controller-lite.agent.goodbye";
/// Agents publish [`LogBatch`]es here.
pub const SUBJECT_LOGS: &str = "controller-lite.logs";
/// The controller announces itself here at start, so agents heartbeat at once.
pub const SUBJECT_CONTROLLER_START: &str = "controller-lite.controller.start";

/// The subject on which one agent receives its [`Assignment`].
pub fn assignment_subject(agent_id: &str) -> String {
    format!("controller-lite.agent.{agent_id}.assign")
}

/// Identifies an instance slot: one index of one app.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct InstanceKey {
    pub app_guid: String,
    pub index: u32,
}

/// Everything an agent should run, replacing the previous assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub agent_id: String,
    pub instances: Vec<DesiredInstance>,
}

/// One instance an agent should run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredInstance {
    pub key: InstanceKey,
    pub app_name: String,
    pub version: u64,
    pub attempt: u64,
    pub droplet_guid: String,
    pub command: String,
    pub memory_mb: u32,
    /// `port`, `http` or `process`.
    pub health_check_type: String,
    pub health_check_endpoint: String,
    /// Route URIs (`host[/path]`) to register while the instance is healthy.
    pub uris: Vec<String>,
}

impl DesiredInstance {
    /// Whether a running instance made from `self` must be replaced to satisfy `other`
    /// (route changes alone are applied in place).
    pub fn needs_replacement(&self, other: &DesiredInstance) -> bool {
        self.version != other.version
            || self.attempt != other.attempt
            || self.droplet_guid != other.droplet_guid
            || self.command != other.command
            || self.memory_mb != other.memory_mb
    }
}

/// An instance's state, as CC's process stats name them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum InstanceState {
    /// Started, not yet healthy.
    Starting,
    /// Healthy and routable.
    Running,
    /// Exited, or failed its health check.
    Crashed,
    /// Being stopped.
    Stopping,
}

/// What an agent reports about one instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActualInstance {
    pub key: InstanceKey,
    pub version: u64,
    pub attempt: u64,
    pub instance_guid: String,
    pub state: InstanceState,
    /// When the state was entered, ms since the Unix epoch.
    pub since_ms: u64,
    pub host: String,
    pub port: u16,
    pub pid: Option<u32>,
    /// Why it crashed (exit status, failed health check).
    pub details: String,
}

/// An agent's periodic report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent_id: String,
    pub zone: String,
    /// Memory this agent offers to instances.
    pub memory_mb: u64,
    pub instances: Vec<ActualInstance>,
}

/// One log line of an app.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub app_guid: String,
    /// ns since the Unix epoch.
    pub timestamp_ns: i64,
    /// `APP/PROC/WEB`, `CELL`, `STG`, `API` or `RTR` (as Loggregator).
    pub source_type: String,
    /// The instance index for app lines.
    pub instance: String,
    /// `OUT` or `ERR`.
    pub stream: String,
    pub message: String,
}

/// Log lines are sent in batches so a chatty app cannot flood the bus message by message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogBatch {
    pub lines: Vec<LogLine>,
}

/// An agent leaving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Goodbye {
    pub agent_id: String,
}
