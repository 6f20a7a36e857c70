//! Per-app logs on the controller: the most recent lines of each app (in memory) and a
//! broadcast for followers. Agents send instance output here over the bus; the controller
//! adds its own `API`/`STG` lines.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::SystemTime;

use tokio::sync::broadcast;

use crate::messages::LogLine;
use crate::util::unix_nanos;

/// Lines kept per app, as Log Cache keeps a bounded window.
pub const RECENT_LINES: usize = 1000;

/// Adds a router access record to its app's logs as an `RTR` line (records of requests
/// that reached no app are not anyone's logs).
pub fn append_access_record(store: &LogStore, record: &router::access_log::AccessRecord) {
    let Some(endpoint) = &record.endpoint else {
        return;
    };
    if endpoint.data.app_id.is_empty() {
        return;
    }
    let mut line = Vec::with_capacity(512);
    record.format(&mut line);
    let message = String::from_utf8_lossy(&line).trim_end().to_owned();
    store.append(LogLine {
        app_guid: endpoint.data.app_id.clone(),
        timestamp_ns: unix_nanos(record.received_at),
        source_type: "RTR".to_owned(),
        instance: endpoint.data.instance_index.to_string(),
        stream: "OUT".to_owned(),
        message,
    });
}

/// The log store.
#[derive(Debug)]
pub struct LogStore {
    recent: Mutex<HashMap<String, VecDeque<LogLine>>>,
    tx: broadcast::Sender<LogLine>,
}

impl Default for LogStore {
    fn default() -> Self {
        Self::new()
    }
}

impl LogStore {
    /// An empty store.
    pub fn new() -> Self {
        LogStore {
            recent: Mutex::new(HashMap::new()),
            tx: broadcast::channel(4096).0,
        }
    }

    /// Adds a line and hands it to followers.
    pub fn append(&self, line: LogLine) {
        {
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            let lines = recent.entry(line.app_guid.clone()).or_default();
            if lines.len() == RECENT_LINES {
                lines.pop_front();
            }
            lines.push_back(line.clone());
        }
        // No follower is not an error.
        let _ = self.tx.send(line);
    }

    /// Adds a line written by the platform itself (`API`, `STG`, `CELL`).
    pub fn platform(&self, app_guid: &str, source_type: &str, message: impl Into<String>) {
        self.append(LogLine {
            app_guid: app_guid.to_owned(),
            timestamp_ns: unix_nanos(SystemTime::now()),
            source_type: source_type.to_owned(),
            instance: "0".to_owned(),
            stream: "OUT".to_owned(),
            message: message.into(),
        });
    }

    /// The last `limit` lines of an app, oldest first.
    pub fn recent(&self, app_guid: &str, limit: usize) -> Vec<LogLine> {
        let recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
        recent
            .get(app_guid)
            .map(|lines| {
                let skip = lines.len().saturating_sub(limit);
                lines.iter().skip(skip).cloned().collect()
            })
            .unwrap_or_default()
    }

    /// Every new line of every app, from now on.
    pub fn follow(&self) -> broadcast::Receiver<LogLine> {
        self.tx.subscribe()
    }

    /// Drops an app's lines (the app was deleted).
    pub fn forget(&self, app_guid: &str) {
        self.recent
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(app_guid);
    }
}

/// A line as `cf logs` prints it: `<time> [<source>/<instance>] <OUT|ERR> <message>`.
pub fn format_line(line: &LogLine) -> String {
    let secs = u64::try_from(line.timestamp_ns / 1_000_000_000).unwrap_or(0);
    let time = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(secs);
    let source = if line.source_type.starts_with("APP")
        || matches!(line.source_type.as_str(), "CELL" | "RTR")
    {
        format!("{}/{}", line.source_type, line.instance)
    } else {
        line.source_type.clone()
    };
    format!(
        "   {} [{}] {} {}",
        humantime::format_rfc3339_seconds(time),
        source,
        line.stream,
        line.message
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_a_bounded_window_per_app() {
        let store = LogStore::new();
        for i in 0..RECENT_LINES + 5 {
            store.platform("a", "API", format!("line {i}"));
        }
        store.platform("b", "API", "other");
        let lines = store.recent("a", usize::MAX);
        assert_eq!(lines.len(), RECENT_LINES);
        assert_eq!(lines[0].message, "line 5");
        assert_eq!(store.recent("a", 2).len(), 2);
        store.forget("a");
        assert!(store.recent("a", 10).is_empty());
        assert_eq!(store.recent("b", 10).len(), 1);
    }
}
