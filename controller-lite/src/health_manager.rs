//! The health manager: converges actual state (agent heartbeats) to desired state (the
//! store), as Diego's BBS convergence and auctioneer do, in one pure data structure.
//! Time is passed in, so the crash policy is tested without waiting.
//!
//! Each pass:
//! - agents silent for [`AGENT_TIMEOUT`] are dropped and their instances re-placed;
//! - missing instances are placed on the agent with the most room, spreading an app's
//!   instances over zones, then over agents;
//! - instances beyond the desired count, and of stopped or deleted apps, are left out of
//!   every assignment, so their agents stop them;
//! - crashed instances are restarted (a new `attempt`) per [`restart_delay`].

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::messages::{
    ActualInstance, Assignment, DesiredInstance, Heartbeat, InstanceKey, InstanceState,
};

/// An agent that has not heartbeated for this long is considered dead.
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(10);
/// A crash after running this long starts the crash count again (Diego's CrashResetTimeout).
pub const CRASH_RESET: Duration = Duration::from_secs(5 * 60);
/// After this many crashes an instance is left crashed (Diego's DefaultMaxRestarts).
pub const MAX_CRASHES: u32 = 200;

/// How long to wait before restarting after the `n`-th crash, counting from 0: the first
/// three restart at once, then 30 s x 2^(n-3), capped at 16 minutes (Diego, HM9000).
pub fn restart_delay(n: u32) -> Duration {
    if n < 3 {
        return Duration::ZERO;
    }
    let cap = Duration::from_secs(16 * 60);
    let exp = (n - 3).min(16);
    Duration::from_secs(30)
        .checked_mul(1u32 << exp)
        .map_or(cap, |d| d.min(cap))
}

/// A started app as the health manager needs it.
#[derive(Debug, Clone)]
pub struct DesiredApp {
    pub guid: String,
    pub name: String,
    pub instances: u32,
    pub template: DesiredInstance,
}

#[derive(Debug)]
struct AgentInfo {
    zone: String,
    memory_mb: u64,
    last_seen: Instant,
    instances: Vec<ActualInstance>,
}

#[derive(Debug, Default)]
struct Slot {
    agent: Option<String>,
    version: u64,
    attempt: u64,
    /// Crashes counted toward the backoff (0-based count of the next crash).
    crashes: u32,
    /// The attempt whose crash was already counted.
    crash_counted: Option<u64>,
    restart_at: Option<Instant>,
    running_since: Option<Instant>,
    placement_error: Option<String>,
}

/// One instance as `GET /v3/processes/:guid/stats` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceStat {
    pub index: u32,
    /// RUNNING, STARTING, CRASHED or DOWN.
    pub state: String,
    pub instance_guid: String,
    pub host: String,
    pub port: u16,
    pub since_ms: u64,
    pub uptime: u64,
    pub crash_count: u32,
    pub agent: String,
    pub pid: Option<u32>,
    pub details: Option<String>,
    pub routable: bool,
}

/// Desired-vs-actual bookkeeping.
#[derive(Debug, Default)]
pub struct HealthManager {
    agents: HashMap<String, AgentInfo>,
    slots: HashMap<InstanceKey, Slot>,
}

impl HealthManager {
    /// An empty health manager.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an agent's report.
    pub fn heartbeat(&mut self, hb: Heartbeat, now: Instant) {
        self.agents.insert(
            hb.agent_id,
            AgentInfo {
                zone: hb.zone,
                memory_mb: hb.memory_mb,
                last_seen: now,
                instances: hb.instances,
            },
        );
    }

    /// An agent left: its instances are placed elsewhere at the next pass.
    pub fn forget_agent(&mut self, agent_id: &str) {
        tracing::info!(agent = %agent_id, "agent left; re-placing its instances");
        self.agents.remove(agent_id);
    }

    /// The live agents' ids.
    pub fn agents(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.agents.keys().cloned().collect();
        ids.sort();
        ids
    }

    fn reported(&self, agent: &str, key: &InstanceKey) -> Option<&ActualInstance> {
        self.agents
            .get(agent)?
            .instances
            .iter()
            .find(|a| &a.key == key)
    }

    /// One convergence pass; returns the assignment of every live agent.
    pub fn converge(
        &mut self,
        desired: &[DesiredApp],
        now: Instant,
    ) -> BTreeMap<String, Assignment> {
        self.agents.retain(|id, a| {
            let alive = now.saturating_duration_since(a.last_seen) < AGENT_TIMEOUT;
            if !alive {
                tracing::warn!(agent = %id, "agent missed its heartbeats; re-placing its instances");
            }
            alive
        });
        let agents = &self.agents;
        for slot in self.slots.values_mut() {
            if slot.agent.as_ref().is_some_and(|a| !agents.contains_key(a)) {
                slot.agent = None;
            }
        }
        let wanted: HashMap<InstanceKey, &DesiredApp> = desired
            .iter()
            .flat_map(|app| {
                (0..app.instances).map(move |index| {
                    (
                        InstanceKey {
                            app_guid: app.guid.clone(),
                            index,
                        },
                        app,
                    )
                })
            })
            .collect();
        self.slots.retain(|key, _| wanted.contains_key(key));

        let mut out: BTreeMap<String, Assignment> = self
            .agents
            .keys()
            .map(|id| {
                (
                    id.clone(),
                    Assignment {
                        agent_id: id.clone(),
                        instances: Vec::new(),
                    },
                )
            })
            .collect();
        let mut used: HashMap<String, u64> = HashMap::new();
        let mut keys: Vec<&InstanceKey> = wanted.keys().collect();
        // Lower indices first, as the auctioneer: index 0 is placed before index 5.
        keys.sort_by(|a, b| (a.index, &a.app_guid).cmp(&(b.index, &b.app_guid)));
        for key in keys {
            let app = wanted[key];
            let mut slot = self.slots.remove(key).unwrap_or_default();
            self.track(key, app, &mut slot, now);
            if slot.agent.is_none() {
                self.place(key, app, &mut slot, &used);
            }
            if let Some(agent) = &slot.agent
                && let Some(assignment) = out.get_mut(agent)
            {
                *used.entry(agent.clone()).or_default() += u64::from(app.template.memory_mb);
                let mut d = app.template.clone();
                d.key = key.clone();
                d.attempt = slot.attempt;
                assignment.instances.push(d);
            }
            self.slots.insert(key.clone(), slot);
        }
        out
    }

    /// Follows one slot's actual state: counts crashes and schedules restarts.
    fn track(&self, key: &InstanceKey, app: &DesiredApp, slot: &mut Slot, now: Instant) {
        if slot.version != app.template.version {
            // A new version (restart, new droplet) forgives past crashes.
            slot.version = app.template.version;
            slot.crashes = 0;
            slot.crash_counted = None;
            slot.restart_at = None;
            slot.running_since = None;
        }
        if slot.agent.is_none() {
            // Adopt an instance an agent already runs (the controller restarted).
            if let Some((agent, actual)) = self.agents.iter().find_map(|(id, a)| {
                a.instances
                    .iter()
                    .find(|i| &i.key == key && i.version == slot.version)
                    .map(|i| (id.clone(), i))
            }) {
                slot.agent = Some(agent);
                slot.attempt = slot.attempt.max(actual.attempt);
            }
        }
        let Some(agent) = slot.agent.as_deref() else {
            return;
        };
        let Some(actual) = self.reported(agent, key) else {
            return;
        };
        if actual.version != slot.version || actual.attempt != slot.attempt {
            return;
        }
        match actual.state {
            InstanceState::Running => {
                slot.running_since.get_or_insert(now);
            }
            InstanceState::Crashed if slot.crash_counted != Some(slot.attempt) => {
                if slot
                    .running_since
                    .is_some_and(|since| now.saturating_duration_since(since) > CRASH_RESET)
                {
                    slot.crashes = 0;
                }
                slot.restart_at =
                    (slot.crashes < MAX_CRASHES).then(|| now + restart_delay(slot.crashes));
                slot.crashes += 1;
                slot.crash_counted = Some(slot.attempt);
                slot.running_since = None;
            }
            _ => {}
        }
        if slot.crash_counted == Some(slot.attempt)
            && let Some(at) = slot.restart_at
            && now >= at
        {
            slot.attempt += 1;
            slot.restart_at = None;
        }
    }

    /// Picks an agent: enough free memory, then the zone with the fewest instances of the
    /// app, then the agent with the fewest, then the least utilised.
    fn place(
        &self,
        key: &InstanceKey,
        app: &DesiredApp,
        slot: &mut Slot,
        used: &HashMap<String, u64>,
    ) {
        let mem = u64::from(app.template.memory_mb);
        let mut per_agent: HashMap<&str, u32> = HashMap::new();
        let mut per_zone: HashMap<&str, u32> = HashMap::new();
        for (k, s) in &self.slots {
            if k.app_guid == key.app_guid
                && let Some(agent) = s.agent.as_deref()
                && let Some(info) = self.agents.get(agent)
            {
                *per_agent.entry(agent).or_default() += 1;
                *per_zone.entry(info.zone.as_str()).or_default() += 1;
            }
        }
        let best = self
            .agents
            .iter()
            .filter_map(|(id, info)| {
                let used = used.get(id).copied().unwrap_or(0);
                let free = info.memory_mb.saturating_sub(used);
                (free >= mem).then(|| {
                    let utilisation = (used + mem) * 1000 / info.memory_mb.max(1);
                    let zone = per_zone.get(info.zone.as_str()).copied().unwrap_or(0);
                    let same = per_agent.get(id.as_str()).copied().unwrap_or(0);
                    ((zone, same, utilisation, id.clone()), id)
                })
            })
            .min_by(|a, b| a.0.cmp(&b.0))
            .map(|(_, id)| id.clone());
        slot.placement_error = match &best {
            Some(_) => None,
            None if self.agents.is_empty() => Some("no agent available".to_owned()),
            None => Some("insufficient resources: memory".to_owned()),
        };
        slot.agent = best;
    }

    /// Per-instance stats of an app that wants `instances` instances.
    pub fn stats(
        &self,
        app_guid: &str,
        instances: u32,
        version: u64,
        now: Instant,
        now_ms: u64,
    ) -> Vec<InstanceStat> {
        (0..instances)
            .map(|index| {
                let key = InstanceKey {
                    app_guid: app_guid.to_owned(),
                    index,
                };
                let mut stat = InstanceStat {
                    index,
                    state: "DOWN".to_owned(),
                    instance_guid: String::new(),
                    host: String::new(),
                    port: 0,
                    since_ms: now_ms,
                    uptime: 0,
                    crash_count: 0,
                    agent: String::new(),
                    pid: None,
                    details: None,
                    routable: false,
                };
                let Some(slot) = self.slots.get(&key) else {
                    return stat;
                };
                stat.crash_count = slot.crashes;
                stat.details = slot.placement_error.clone();
                let Some(agent) = slot.agent.as_deref() else {
                    return stat;
                };
                stat.agent = agent.to_owned();
                stat.state = "STARTING".to_owned();
                let Some(actual) = self.reported(agent, &key) else {
                    return stat;
                };
                if actual.version != version || actual.attempt != slot.attempt {
                    // Being replaced; the new instance has not been reported yet.
                    return stat;
                }
                stat.instance_guid = actual.instance_guid.clone();
                stat.host = actual.host.clone();
                stat.port = actual.port;
                stat.pid = actual.pid;
                stat.since_ms = actual.since_ms;
                match actual.state {
                    InstanceState::Running => {
                        stat.state = "RUNNING".to_owned();
                        stat.routable = true;
                        stat.uptime = now_ms.saturating_sub(actual.since_ms) / 1000;
                    }
                    InstanceState::Crashed => {
                        stat.state = "CRASHED".to_owned();
                        let wait = slot
                            .restart_at
                            .map(|at| at.saturating_duration_since(now).as_secs());
                        stat.details = Some(match wait {
                            Some(secs) => format!("{}; restart in {secs}s", actual.details),
                            None if slot.crashes >= MAX_CRASHES => {
                                format!(
                                    "{}; crashed {} times, not restarted",
                                    actual.details, slot.crashes
                                )
                            }
                            None => actual.details.clone(),
                        });
                    }
                    InstanceState::Starting | InstanceState::Stopping => {}
                }
                stat
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;
