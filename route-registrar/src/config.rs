//! The config file: Cloud Foundry route-registrar's keys (YAML or JSON; JSON is YAML)
//! -> serde structs -> `validate` -> a typed [`Config`] whose routes carry the message
//! they publish.
//!
//! Unknown keys are ignored, so a CF config with `routing_api`, `nats_mtls_config` or
//! `dynamic_config_globs` loads; every key this registrar acts on is checked, and each
//! problem names its key (`routes[0].registration_interval: missing`). All problems are
//! reported at once, as CF's registrar does.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use router::bus::NatsOptions;
use router::config::{Algorithm, parse_duration};
use router::protocol::{RegistryMessage, RouteOptions, validate_uri};
use serde::{Deserialize, Deserializer};

/// CF's default for `unregistration_message_limit`.
const DEFAULT_UNREGISTRATION_MESSAGE_LIMIT: u32 = 5;

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{}", Problems(.0))]
    Invalid(Vec<Problem>),
}

/// One invalid key: `key` is its dotted path (`routes[1].health_check.timeout`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.reason)
    }
}

struct Problems<'a>(&'a [Problem]);

impl fmt::Display for Problems<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, problem) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{problem}")?;
        }
        Ok(())
    }
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub message_bus_servers: Vec<MessageBusServer>,
    pub routes: Vec<Route>,
    /// Consecutive `router.unregister` messages sent for an unhealthy route before it
    /// goes quiet until it is healthy again.
    pub unregistration_message_limit: u32,
    /// Whether a route whose `registration_interval` is longer than the router's
    /// `minimumRegisterIntervalInSeconds` adopts the router's (shorter) interval.
    pub use_router_register_interval: bool,
}

/// One NATS server, `host` being `ip:port` (or `name:port`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MessageBusServer {
    pub host: String,
    pub user: String,
    pub password: String,
}

/// One route to keep registered.
#[derive(Debug, Clone)]
pub struct Route {
    pub name: String,
    pub registration_interval: Duration,
    pub health_check: Option<HealthCheck>,
    /// What is published for this route; `stale_threshold_in_seconds` is set at publish
    /// time from the interval in force.
    pub message: RegistryMessage,
}

/// A route's health check: `/bin/sh -c script_path`, exit 0 is healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub name: String,
    pub script_path: String,
    /// Always shorter than the route's `registration_interval`.
    pub timeout: Duration,
}

impl Config {
    /// Reads and validates a config file (YAML or JSON).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_text(&text)
    }

    /// Parses and validates YAML or JSON text.
    pub fn from_text(text: &str) -> Result<Self, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let raw: RawConfig = serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let reason = e.into_inner().to_string();
            // serde_yaml_ng puts the path in its message too: say it once.
            let reason = reason
                .strip_prefix(&format!("{path}: "))
                .map(str::to_owned)
                .unwrap_or(reason);
            let key = if path == "." {
                "(document)".to_owned()
            } else {
                path
            };
            ConfigError::Invalid(vec![Problem { key, reason }])
        })?;
        raw.validate()
    }

    /// Options for [`router::bus::Bus::connect_nats`]: every server, one set of
    /// credentials (validation made sure the servers agree on it).
    pub fn nats_options(&self) -> NatsOptions {
        let credentials = self
            .message_bus_servers
            .iter()
            .find(|s| !s.user.is_empty() || !s.password.is_empty());
        NatsOptions {
            urls: self
                .message_bus_servers
                .iter()
                .map(|s| format!("nats://{}", s.host))
                .collect(),
            user: credentials.map(|s| s.user.clone()).unwrap_or_default(),
            pass: credentials.map(|s| s.password.clone()).unwrap_or_default(),
            name: "route-registrar".to_owned(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawConfig {
    #[serde(deserialize_with = "null_as_default")]
    message_bus_servers: Vec<RawBusServer>,
    #[serde(deserialize_with = "null_as_default")]
    host: String,
    #[serde(deserialize_with = "null_as_default")]
    availability_zone: String,
    #[serde(deserialize_with = "null_as_default")]
    routes: Vec<RawRoute>,
    unregistration_message_limit: Option<u32>,
    use_router_register_interval: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawBusServer {
    #[serde(deserialize_with = "null_as_default")]
    host: String,
    #[serde(deserialize_with = "null_as_default")]
    user: String,
    #[serde(deserialize_with = "null_as_default")]
    password: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawRoute {
    #[serde(deserialize_with = "null_as_default")]
    name: String,
    #[serde(rename = "type", deserialize_with = "null_as_default")]
    kind: String,
    #[serde(deserialize_with = "null_as_default")]
    host: String,
    port: Option<u16>,
    tls_port: Option<u16>,
    #[serde(deserialize_with = "null_as_default")]
    uris: Vec<String>,
    #[serde(deserialize_with = "optional_duration")]
    registration_interval: Option<Duration>,
    health_check: Option<RawHealthCheck>,
    #[serde(deserialize_with = "null_as_default")]
    tags: BTreeMap<String, TagValue>,
    #[serde(deserialize_with = "null_as_default")]
    route_service_url: String,
    #[serde(deserialize_with = "null_as_default")]
    server_cert_domain_san: String,
    #[serde(deserialize_with = "null_as_default")]
    protocol: String,
    #[serde(deserialize_with = "null_as_default")]
    options: RawOptions,
    external_port: Option<u16>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawOptions {
    #[serde(deserialize_with = "null_as_default")]
    loadbalancing: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct RawHealthCheck {
    #[serde(deserialize_with = "null_as_default")]
    name: String,
    #[serde(deserialize_with = "null_as_default")]
    script_path: String,
    #[serde(deserialize_with = "optional_duration")]
    timeout: Option<Duration>,
}

/// Collects problems while the config is checked.
#[derive(Default)]
struct Checker {
    problems: Vec<Problem>,
}

impl Checker {
    fn fail(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }
}

impl RawConfig {
    fn validate(self) -> Result<Config, ConfigError> {
        let mut check = Checker::default();

        if self.message_bus_servers.is_empty() {
            check.fail("message_bus_servers", "at least one server is required");
        }
        let mut credentials: Option<(usize, &str, &str)> = None;
        for (i, server) in self.message_bus_servers.iter().enumerate() {
            let key = format!("message_bus_servers[{i}]");
            if let Err(reason) = check_host_port(&server.host) {
                check.fail(format!("{key}.host"), reason);
            }
            if server.user.is_empty() && server.password.is_empty() {
                continue;
            }
            match credentials {
                None => credentials = Some((i, &server.user, &server.password)),
                Some((first, user, password))
                    if user != server.user || password != server.password =>
                {
                    check.fail(
                        format!("{key}.user"),
                        format!(
                            "credentials differ from message_bus_servers[{first}]'s; \
                             one user/password is used for every server"
                        ),
                    );
                }
                Some(_) => {}
            }
        }
        if !self.host.is_empty()
            && let Err(reason) = check_host(&self.host)
        {
            check.fail("host", reason);
        }
        let unregistration_message_limit = match self.unregistration_message_limit {
            None => DEFAULT_UNREGISTRATION_MESSAGE_LIMIT,
            Some(0) => {
                check.fail("unregistration_message_limit", "must be greater than 0");
                DEFAULT_UNREGISTRATION_MESSAGE_LIMIT
            }
            Some(n) => n,
        };
        if self.routes.is_empty() {
            check.fail("routes", "at least one route is required");
        }
        let routes: Vec<Route> = self
            .routes
            .iter()
            .enumerate()
            .filter_map(|(i, route)| {
                route.validate(
                    &format!("routes[{i}]"),
                    &self.host,
                    &self.availability_zone,
                    &mut check,
                )
            })
            .collect();

        if !check.problems.is_empty() {
            return Err(ConfigError::Invalid(check.problems));
        }
        Ok(Config {
            message_bus_servers: self
                .message_bus_servers
                .into_iter()
                .map(|s| MessageBusServer {
                    host: s.host,
                    user: s.user,
                    password: s.password,
                })
                .collect(),
            routes,
            unregistration_message_limit,
            use_router_register_interval: self.use_router_register_interval,
        })
    }
}

impl RawRoute {
    /// Checks one route; `None` when it has problems (recorded in `check`).
    fn validate(
        &self,
        key: &str,
        default_host: &str,
        availability_zone: &str,
        check: &mut Checker,
    ) -> Option<Route> {
        let before = check.problems.len();

        let tcp = match self.kind.as_str() {
            "" | "http" => false,
            "tcp" => true,
            "sni" => {
                check.fail(
                    format!("{key}.type"),
                    "sni routes are not supported (use tcp with external_port)",
                );
                false
            }
            other => {
                check.fail(
                    format!("{key}.type"),
                    format!("must be http or tcp, not {other:?}"),
                );
                false
            }
        };
        let external_port = match self.external_port {
            Some(0) => {
                check.fail(format!("{key}.external_port"), "must be greater than 0");
                0
            }
            Some(port) => port,
            None => {
                if tcp {
                    check.fail(
                        format!("{key}.external_port"),
                        "missing (required for a tcp route)",
                    );
                }
                0
            }
        };
        let name = if !self.name.is_empty() {
            self.name.clone()
        } else if external_port != 0 {
            format!("tcp-{external_port}")
        } else {
            check.fail(format!("{key}.name"), "missing");
            String::new()
        };

        let host = if self.host.is_empty() {
            default_host
        } else {
            &self.host
        };
        if host.is_empty() {
            check.fail(
                format!("{key}.host"),
                "missing (set the top-level host or the route's)",
            );
        } else if !self.host.is_empty()
            && let Err(reason) = check_host(&self.host)
        {
            check.fail(format!("{key}.host"), reason);
        }

        for (field, value) in [("port", self.port), ("tls_port", self.tls_port)] {
            if value == Some(0) {
                check.fail(format!("{key}.{field}"), "must be greater than 0");
            }
        }
        if self.port.is_none() && self.tls_port.is_none() {
            check.fail(
                format!("{key}.port"),
                "missing (set port, tls_port or both)",
            );
        }
        let tls_port = self.tls_port.unwrap_or(0);
        if tls_port != 0 && self.server_cert_domain_san.is_empty() {
            check.fail(
                format!("{key}.server_cert_domain_san"),
                "missing (required with tls_port: the router verifies the backend's certificate against it)",
            );
        }

        if self.uris.is_empty() && external_port == 0 {
            check.fail(
                format!("{key}.uris"),
                "empty (give at least one uri, or an external_port for a TCP route)",
            );
        }
        for (j, uri) in self.uris.iter().enumerate() {
            if let Err(e) = validate_uri(uri) {
                check.fail(format!("{key}.uris[{j}]"), e.to_string());
            }
        }

        let registration_interval = match self.registration_interval {
            None => {
                check.fail(format!("{key}.registration_interval"), "missing");
                None
            }
            Some(d) if d.is_zero() => {
                check.fail(
                    format!("{key}.registration_interval"),
                    "must be greater than 0s",
                );
                None
            }
            Some(d) => Some(d),
        };

        let health_check = self.health_check.as_ref().and_then(|hc| {
            let key = format!("{key}.health_check");
            if hc.name.is_empty() {
                check.fail(format!("{key}.name"), "missing");
            }
            if hc.script_path.is_empty() {
                check.fail(format!("{key}.script_path"), "missing");
            }
            let interval = registration_interval?;
            let timeout = match hc.timeout {
                None => interval / 2,
                Some(t) if t.is_zero() => {
                    check.fail(format!("{key}.timeout"), "must be greater than 0s");
                    return None;
                }
                Some(t) if t >= interval => {
                    check.fail(
                        format!("{key}.timeout"),
                        format!(
                            "must be shorter than registration_interval ({})",
                            format_duration(interval)
                        ),
                    );
                    return None;
                }
                Some(t) => t,
            };
            Some(HealthCheck {
                name: hc.name.clone(),
                script_path: hc.script_path.clone(),
                timeout,
            })
        });

        if !self.route_service_url.is_empty()
            && !self
                .route_service_url
                .strip_prefix("https://")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains(char::is_whitespace))
        {
            check.fail(
                format!("{key}.route_service_url"),
                "must be an https:// URL",
            );
        }
        if !matches!(self.protocol.as_str(), "" | "http1" | "http2") {
            check.fail(
                format!("{key}.protocol"),
                format!("must be http1 or http2, not {:?}", self.protocol),
            );
        }
        if !self.options.loadbalancing.is_empty()
            && Algorithm::from_name(&self.options.loadbalancing).is_none()
        {
            check.fail(
                format!("{key}.options.loadbalancing"),
                format!(
                    "must be round-robin or least-connection, not {:?}",
                    self.options.loadbalancing
                ),
            );
        }

        if check.problems.len() > before {
            return None;
        }
        let registration_interval = registration_interval?;
        let port = self.port.unwrap_or(0);
        let message = RegistryMessage {
            host: host.to_owned(),
            port,
            tls_port,
            uris: self.uris.clone(),
            private_instance_id: instance_id(&name, host, port, tls_port, external_port),
            server_cert_domain_san: self.server_cert_domain_san.clone(),
            route_service_url: self.route_service_url.clone(),
            tags: self
                .tags
                .iter()
                .map(|(k, v)| (k.clone(), v.0.clone()))
                .collect(),
            protocol: self.protocol.clone(),
            availability_zone: availability_zone.to_owned(),
            options: RouteOptions {
                loadbalancing: self.options.loadbalancing.clone(),
            },
            external_port,
            ..RegistryMessage::default()
        };
        // The router would drop a message its own checks refuse: catch that here, at start.
        if let Err(e) = message.validate() {
            check.fail(key.to_owned(), e.to_string());
            return None;
        }
        Some(Route {
            name,
            registration_interval,
            health_check,
            message,
        })
    }
}

/// A stable `private_instance_id` for a route: the same config gives the same id after
/// a restart, so the router's sticky sessions (`__VCAP_ID__`) survive it. FNV-1a over
/// what makes the route an endpoint, shown as a UUID.
fn instance_id(name: &str, host: &str, port: u16, tls_port: u16, external_port: u16) -> String {
    const OFFSET: u128 = 0x6c62272e07bb014262b821756295c58d;
    const PRIME: u128 = 0x0000000001000000000000000000013b;
    let mut hash = OFFSET;
    let ports = format!("{port}\0{tls_port}\0{external_port}");
    for part in ["route-registrar", name, host, &ports] {
        for byte in part.bytes().chain([0xff]) {
            hash ^= u128::from(byte);
            hash = hash.wrapping_mul(PRIME);
        }
    }
    uuid::Uuid::from_u128(hash).to_string()
}

/// `ip:port`, `name:port` or `[v6]:port`, port > 0.
fn check_host_port(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("missing".to_owned());
    }
    let bad = || format!("{text:?} is not host:port");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    match port.parse::<u16>() {
        Ok(p) if p > 0 => {}
        _ => return Err(bad()),
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    check_host(host).map_err(|_| bad())
}

/// An IP address or a DNS name.
fn check_host(text: &str) -> Result<(), String> {
    if text.parse::<IpAddr>().is_ok() {
        return Ok(());
    }
    let valid_name = !text.is_empty()
        && text.len() <= 253
        && text.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid_name {
        Ok(())
    } else {
        Err(format!("{text:?} is not an IP address or a host name"))
    }
}

/// `1m30s`-style text for messages.
pub(crate) fn format_duration(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}ms", d.as_millis())
    }
}

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

/// A Go duration string (`20s`, `1m30s`, `500ms`) or a whole number of seconds.
fn optional_duration<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Option<Duration>, D::Error> {
    struct Visitor;
    impl<'de> serde::de::Visitor<'de> for Visitor {
        type Value = Option<Duration>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a duration like 10s, 1m30s or 500ms")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_duration(v).map(Some).map_err(E::custom)
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Self::Value, E> {
            Ok(Some(Duration::from_secs(v)))
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Self::Value, E> {
            u64::try_from(v)
                .map(|v| Some(Duration::from_secs(v)))
                .map_err(|_| E::custom(format!("{v} is negative")))
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_none<E: serde::de::Error>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
    }
    deserializer.deserialize_any(Visitor)
}

/// A tag value: CF's tags are strings, but YAML writes `index: 1` as a number.
#[derive(Debug, Default)]
struct TagValue(String);

impl<'de> Deserialize<'de> for TagValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = TagValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string, a number or a boolean")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<TagValue, E> {
                Ok(TagValue(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<TagValue, E> {
                Ok(TagValue(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<TagValue, E> {
                Ok(TagValue(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<TagValue, E> {
                Ok(TagValue(v.to_string()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<TagValue, E> {
                Ok(TagValue(v.to_string()))
            }
        }
        deserializer.deserialize_any(Visitor)
    }
}

#[cfg(test)]
mod tests;
