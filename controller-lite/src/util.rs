//! Small helpers shared by the controller and the agent.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Now as CC's ISO 8601 timestamp (`2016-03-18T23:26:46Z`).
pub fn timestamp() -> String {
    format_time(SystemTime::now())
}

/// A time as CC's ISO 8601 timestamp.
pub fn format_time(t: SystemTime) -> String {
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_secs()
}

/// Nanoseconds since the Unix epoch, as gorouter's `endpoint_updated_at_ns`.
pub fn unix_nanos(t: SystemTime) -> i64 {
    i64::try_from(
        t.duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_nanos(),
    )
    .unwrap_or(i64::MAX)
}

/// A new GUID as CC prints them.
pub fn new_guid() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A random bearer token: 244 random bits (two v4 UUIDs, which come from the OS RNG).
pub fn new_token() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    u64::try_from(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO)
            .as_millis(),
    )
    .unwrap_or(u64::MAX)
}
