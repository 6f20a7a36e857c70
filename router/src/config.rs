//! Router configuration: gorouter's YAML keys -> serde struct with defaults -> `validate()`.
//!
//! Unknown keys are ignored so that an existing gorouter config loads; every key this
//! router implements is checked, and an error names the key (`status.port: ...`).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize};

use crate::protocol::RegistryMessage;

pub mod duration;

pub use duration::parse_duration;

/// Why a config could not be loaded; `key` is the dotted path of the offending key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{key}: {reason}")]
    Invalid { key: String, reason: String },
}

impl ConfigError {
    /// An invalid value at `key`.
    pub fn invalid(key: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            reason: reason.into(),
        }
    }
}

/// Load-balancing algorithm of a pool.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Algorithm {
    #[default]
    RoundRobin,
    LeastConnection,
}

impl Algorithm {
    /// Parses gorouter's names; `None` for anything else.
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "round-robin" => Some(Algorithm::RoundRobin),
            "least-connection" => Some(Algorithm::LeastConnection),
            _ => None,
        }
    }

    /// gorouter's name of the algorithm.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::RoundRobin => "round-robin",
            Algorithm::LeastConnection => "least-connection",
        }
    }
}

/// The whole router configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Config {
    pub port: u16,
    pub enable_ssl: bool,
    pub ssl_port: u16,
    /// Certificates for the TLS listener, chosen by SNI.
    pub tls_pem: Vec<TlsPem>,
    #[serde(deserialize_with = "tls_version")]
    pub min_tls_version: TlsVersion,
    #[serde(deserialize_with = "tls_version")]
    pub max_tls_version: TlsVersion,
    pub client_cert_validation: ClientCertValidation,
    /// PEM bundle of CAs trusted for client certificates.
    pub client_ca_certs: String,
    pub forwarded_client_cert: ForwardedClientCert,
    /// Serve HTTP/2 downstream (ALPN on TLS, prior knowledge on plain) and to endpoints
    /// registered with `protocol: http2`.
    pub enable_http2: bool,
    pub http2: Http2Config,
    /// Time allowed for a TLS handshake, downstream and upstream.
    #[serde(deserialize_with = "duration::deserialize")]
    pub tls_handshake_timeout: Duration,
    pub status: StatusConfig,
    pub nats: NatsConfig,
    pub routes: Vec<RegistryMessage>,
    #[serde(deserialize_with = "duration::deserialize")]
    pub droplet_stale_threshold: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub prune_stale_droplets_interval: Duration,
    pub suspend_pruning_if_nats_unavailable: bool,
    #[serde(deserialize_with = "duration::deserialize")]
    pub start_response_delay_interval: Duration,
    /// How long a route whose last endpoint went away keeps answering 503 `no_endpoints`
    /// instead of 404 (gorouter's `empty_pool_timeout`; 0 removes it at once).
    #[serde(deserialize_with = "duration::deserialize")]
    pub empty_pool_timeout: Duration,
    pub balancing_algorithm: Algorithm,
    pub backends: BackendsConfig,
    #[serde(deserialize_with = "duration::deserialize")]
    pub endpoint_timeout: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub endpoint_dial_timeout: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub frontend_idle_timeout: Duration,
    /// Longest time a client may take to send a request's headers (0: no limit).
    #[serde(deserialize_with = "duration::deserialize")]
    pub read_header_timeout: Duration,
    pub max_idle_conns_per_host: usize,
    pub max_request_header_bytes: usize,
    pub sticky_session_cookie_names: Vec<String>,
    /// Mark `__VCAP_ID__` Secure even when the app's session cookie is not.
    pub secure_cookies: bool,
    #[serde(deserialize_with = "duration::deserialize")]
    pub drain_wait: Duration,
    #[serde(deserialize_with = "duration::deserialize")]
    pub drain_timeout: Duration,
    pub access_log: AccessLogConfig,
    pub logging: LoggingConfig,
    #[serde(deserialize_with = "port_range")]
    pub tcp_port_range: (u16, u16),
    /// Address the TCP route listeners bind.
    pub tcp_listen_host: IpAddr,
    pub zone: String,
    pub tracing: TracingConfig,
    /// Which HTTP/1 server serves downstream connections: `native` (this project's, on
    /// httparse, the fast path) or `hyper`.
    pub http1_server: Http1Server,
    /// Proxy worker threads, each with its own single-threaded runtime (0: one per CPU).
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            port: 8081,
            enable_ssl: false,
            ssl_port: 8443,
            tls_pem: Vec::new(),
            min_tls_version: TlsVersion::Tls12,
            max_tls_version: TlsVersion::Tls13,
            client_cert_validation: ClientCertValidation::None,
            client_ca_certs: String::new(),
            forwarded_client_cert: ForwardedClientCert::AlwaysForward,
            enable_http2: true,
            http2: Http2Config::default(),
            tls_handshake_timeout: Duration::from_secs(10),
            status: StatusConfig::default(),
            nats: NatsConfig::default(),
            routes: Vec::new(),
            droplet_stale_threshold: Duration::from_secs(120),
            prune_stale_droplets_interval: Duration::from_secs(30),
            suspend_pruning_if_nats_unavailable: true,
            start_response_delay_interval: Duration::from_secs(5),
            empty_pool_timeout: Duration::ZERO,
            balancing_algorithm: Algorithm::RoundRobin,
            backends: BackendsConfig::default(),
            endpoint_timeout: Duration::from_secs(900),
            endpoint_dial_timeout: Duration::from_secs(5),
            frontend_idle_timeout: Duration::from_secs(900),
            read_header_timeout: Duration::from_secs(60),
            max_idle_conns_per_host: 100,
            max_request_header_bytes: 1024 * 1024,
            sticky_session_cookie_names: vec!["JSESSIONID".to_owned()],
            secure_cookies: false,
            drain_wait: Duration::ZERO,
            drain_timeout: Duration::from_secs(900),
            access_log: AccessLogConfig::default(),
            logging: LoggingConfig::default(),
            tcp_port_range: (1024, 65535),
            tcp_listen_host: IpAddr::from([0, 0, 0, 0]),
            zone: String::new(),
            worker_threads: 0,
            http1_server: Http1Server::Native,
            tracing: TracingConfig::default(),
        }
    }
}

/// One `tls_pem` entry: a PEM certificate chain (leaf first) and its PEM private key.
#[derive(Debug, Clone, Deserialize)]
pub struct TlsPem {
    pub cert_chain: String,
    pub private_key: String,
}

/// A TLS protocol version as gorouter names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TlsVersion {
    Tls12,
    Tls13,
}

fn tls_version<'de, D: Deserializer<'de>>(deserializer: D) -> Result<TlsVersion, D::Error> {
    match String::deserialize(deserializer)?.as_str() {
        "TLSv1.2" => Ok(TlsVersion::Tls12),
        "TLSv1.3" => Ok(TlsVersion::Tls13),
        "TLSv1.0" | "TLSv1.1" => Err(serde::de::Error::custom(
            "TLS 1.0 and 1.1 are insecure and not supported; use TLSv1.2 or TLSv1.3",
        )),
        other => Err(serde::de::Error::custom(format!(
            "{other:?} is not TLSv1.2 or TLSv1.3"
        ))),
    }
}

/// Whether the TLS listener asks clients for certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientCertValidation {
    None,
    Request,
    Require,
}

/// What happens to `X-Forwarded-Client-Cert` on the way to the app.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ForwardedClientCert {
    /// Pass the client's header through untouched.
    AlwaysForward,
    /// Pass it through only on mutual-TLS connections; remove it otherwise.
    Forward,
    /// Remove it; on mutual-TLS connections set it to the client certificate.
    SanitizeSet,
}

/// `http2.*`: limits of downstream HTTP/2 connections.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct Http2Config {
    pub max_concurrent_streams: u32,
    pub initial_stream_window_size: u32,
    pub initial_connection_window_size: u32,
    pub max_frame_size: u32,
    /// Streams a client may reset before the connection is closed (rapid-reset guard).
    pub max_pending_accept_reset_streams: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Http2Config {
            max_concurrent_streams: 250,
            initial_stream_window_size: 1024 * 1024,
            initial_connection_window_size: 4 * 1024 * 1024,
            max_frame_size: 16 * 1024,
            max_pending_accept_reset_streams: 20,
        }
    }
}

/// `status.*`: the health, metrics and routes listeners.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StatusConfig {
    pub host: IpAddr,
    pub port: u16,
    pub user: String,
    pub pass: String,
    pub routes: StatusRoutesConfig,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            host: IpAddr::from([0, 0, 0, 0]),
            port: 8080,
            user: String::new(),
            pass: String::new(),
            routes: StatusRoutesConfig::default(),
        }
    }
}

/// `status.routes.*`: the `/routes` listener, always on 127.0.0.1.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct StatusRoutesConfig {
    pub port: u16,
}

impl Default for StatusRoutesConfig {
    fn default() -> Self {
        StatusRoutesConfig { port: 8082 }
    }
}

/// `nats.*`: the message bus; no hosts means no NATS (static routes only).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct NatsConfig {
    pub hosts: Vec<NatsHost>,
    pub user: String,
    pub pass: String,
}

/// One NATS server.
#[derive(Debug, Clone, Deserialize)]
pub struct NatsHost {
    pub hostname: String,
    pub port: u16,
}

impl NatsConfig {
    /// `nats://host:port` URLs of the configured servers (credentials go apart).
    pub fn urls(&self) -> Vec<String> {
        self.hosts
            .iter()
            .map(|h| format!("nats://{}:{}", h.hostname, h.port))
            .collect()
    }
}

/// `backends.*`: limits on upstream endpoints and how to reach TLS ones.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct BackendsConfig {
    /// PEM bundle of CAs that sign endpoints' certificates (`tls_port` endpoints).
    pub ca_certs: String,
    /// In-flight requests per endpoint; 0 is unlimited.
    pub max_conns: u32,
    /// Attempts on retriable failures, each on another endpoint (at least 1).
    pub max_attempts: u32,
}

impl Default for BackendsConfig {
    fn default() -> Self {
        BackendsConfig {
            ca_certs: String::new(),
            max_conns: 0,
            max_attempts: 3,
        }
    }
}

/// The downstream HTTP/1 implementation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Http1Server {
    Native,
    Hyper,
}

/// `tracing.*`: trace-context headers.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct TracingConfig {
    /// Continue or start W3C `traceparent` / `tracestate` on every request.
    pub enable_w3c: bool,
    /// Tenant prefix of this router's `tracestate` entry (`tenant@gorouter`).
    pub w3c_tenant_id: String,
}

/// `access_log.*`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct AccessLogConfig {
    /// "" is off, "-" is stdout, anything else a file appended to.
    pub file: String,
}

/// `logging.*`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default)]
pub struct LoggingConfig {
    pub level: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig {
            level: "info".to_owned(),
        }
    }
}

const MAX_REQUEST_HEADER_BYTES_CAP: usize = 1024 * 1024;

impl Config {
    /// Reads and validates a YAML config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text)
    }

    /// Parses and validates YAML text; an empty document is the default config.
    pub fn from_yaml(text: &str) -> Result<Self, ConfigError> {
        let config: Config = if text.trim().is_empty() {
            Config::default()
        } else {
            let de = serde_yaml_ng::Deserializer::from_str(text);
            serde_path_to_error::deserialize(de).map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." {
                    "(document)".to_owned()
                } else {
                    key
                };
                // serde_yaml_ng may already prefix its message with the path.
                let reason = e.into_inner().to_string();
                let reason = match reason.strip_prefix(&format!("{key}: ")) {
                    Some(rest) => rest.to_owned(),
                    None => reason,
                };
                ConfigError::invalid(key, reason)
            })?
        };
        config.validate()?;
        Ok(config)
    }

    /// Checks values serde cannot: ranges, relations between keys, static routes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.max_request_header_bytes == 0
            || self.max_request_header_bytes > MAX_REQUEST_HEADER_BYTES_CAP
        {
            return Err(ConfigError::invalid(
                "max_request_header_bytes",
                format!("must be between 1 and {MAX_REQUEST_HEADER_BYTES_CAP}"),
            ));
        }
        if self.backends.max_attempts == 0 {
            return Err(ConfigError::invalid(
                "backends.max_attempts",
                "must be at least 1",
            ));
        }
        if self.prune_stale_droplets_interval.is_zero() {
            return Err(ConfigError::invalid(
                "prune_stale_droplets_interval",
                "must be greater than 0s",
            ));
        }
        if self.droplet_stale_threshold.is_zero() {
            return Err(ConfigError::invalid(
                "droplet_stale_threshold",
                "must be greater than 0s",
            ));
        }
        if self.endpoint_dial_timeout.is_zero() {
            return Err(ConfigError::invalid(
                "endpoint_dial_timeout",
                "must be greater than 0s",
            ));
        }
        for (i, host) in self.nats.hosts.iter().enumerate() {
            if host.hostname.is_empty() {
                return Err(ConfigError::invalid(
                    format!("nats.hosts[{i}].hostname"),
                    "is empty",
                ));
            }
            if host.port == 0 {
                return Err(ConfigError::invalid(
                    format!("nats.hosts[{i}].port"),
                    "must not be 0",
                ));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            route
                .validate()
                .map_err(|e| ConfigError::invalid(format!("routes[{i}]"), e.to_string()))?;
            if route.external_port != 0 {
                let (lo, hi) = self.tcp_port_range;
                if route.external_port < lo || route.external_port > hi {
                    return Err(ConfigError::invalid(
                        format!("routes[{i}].external_port"),
                        format!(
                            "{} is outside tcp_port_range {lo}-{hi}",
                            route.external_port
                        ),
                    ));
                }
            }
        }
        for (i, name) in self.sticky_session_cookie_names.iter().enumerate() {
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic() && b != b'=') {
                return Err(ConfigError::invalid(
                    format!("sticky_session_cookie_names[{i}]"),
                    "is not a valid cookie name",
                ));
            }
        }
        if self.min_tls_version > self.max_tls_version {
            return Err(ConfigError::invalid(
                "min_tls_version",
                "is above max_tls_version",
            ));
        }
        if self.enable_ssl {
            crate::tls::check_config(self)?;
        }
        if !self.backends.ca_certs.is_empty() {
            crate::tls::parse_certs(&self.backends.ca_certs)
                .map_err(|reason| ConfigError::invalid("backends.ca_certs", reason))?;
        }
        let h2 = &self.http2;
        if h2.max_concurrent_streams == 0 {
            return Err(ConfigError::invalid(
                "http2.max_concurrent_streams",
                "must be at least 1",
            ));
        }
        if !(16_384..=16_777_215).contains(&h2.max_frame_size) {
            return Err(ConfigError::invalid(
                "http2.max_frame_size",
                "must be between 16384 and 16777215",
            ));
        }
        if h2.initial_stream_window_size == 0 || h2.initial_stream_window_size > i32::MAX as u32 {
            return Err(ConfigError::invalid(
                "http2.initial_stream_window_size",
                "must be between 1 and 2^31-1",
            ));
        }
        if h2.initial_connection_window_size == 0
            || h2.initial_connection_window_size > i32::MAX as u32
        {
            return Err(ConfigError::invalid(
                "http2.initial_connection_window_size",
                "must be between 1 and 2^31-1",
            ));
        }
        if !matches!(
            self.logging.level.as_str(),
            "trace" | "debug" | "info" | "warn" | "error"
        ) {
            return Err(ConfigError::invalid(
                "logging.level",
                "must be one of trace, debug, info, warn, error",
            ));
        }
        Ok(())
    }

    /// The TTL of an endpoint: its own `stale_threshold_in_seconds` may only shorten
    /// `droplet_stale_threshold` (gorouter clamps 0 and larger values to the default).
    pub fn endpoint_ttl(&self, stale_threshold_in_seconds: u64) -> Duration {
        endpoint_ttl(self.droplet_stale_threshold, stale_threshold_in_seconds)
    }

    /// Number of proxy worker threads to run.
    pub fn effective_worker_threads(&self) -> usize {
        if self.worker_threads > 0 {
            self.worker_threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }
}

/// An endpoint's TTL: its `stale_threshold_in_seconds` may only shorten `threshold`.
pub fn endpoint_ttl(threshold: Duration, stale_threshold_in_seconds: u64) -> Duration {
    let own = Duration::from_secs(stale_threshold_in_seconds);
    if own.is_zero() || own > threshold {
        threshold
    } else {
        own
    }
}

fn port_range<'de, D: Deserializer<'de>>(deserializer: D) -> Result<(u16, u16), D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_port_range(&text).map_err(serde::de::Error::custom)
}

/// Parses `LOW-HIGH` (inclusive, 1..=65535, LOW <= HIGH).
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let err = || format!("{text:?} is not a port range like 1024-65535");
    let (lo, hi) = text.trim().split_once('-').ok_or_else(err)?;
    let lo: u16 = lo.trim().parse().map_err(|_| err())?;
    let hi: u16 = hi.trim().parse().map_err(|_| err())?;
    if lo == 0 || lo > hi {
        return Err(err());
    }
    Ok((lo, hi))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_gorouter_defaults() {
        let c = Config::from_yaml("").unwrap();
        assert_eq!(c.port, 8081);
        assert_eq!(c.status.port, 8080);
        assert_eq!(c.status.routes.port, 8082);
        assert_eq!(c.droplet_stale_threshold, Duration::from_secs(120));
        assert_eq!(c.backends.max_attempts, 3);
        assert_eq!(c.sticky_session_cookie_names, ["JSESSIONID"]);
        assert_eq!(c.tcp_port_range, (1024, 65535));
    }

    #[test]
    fn gorouter_keys_and_durations_are_read() {
        let c = Config::from_yaml(
            "port: 9000\nstatus: {port: 9001, user: u, pass: p, routes: {port: 9002}}\n\
             nats: {hosts: [{hostname: 127.0.0.1, port: 4222}], user: n, pass: s}\n\
             droplet_stale_threshold: 1m30s\nendpoint_timeout: 250ms\n\
             balancing_algorithm: least-connection\ntcp_port_range: 2000-3000\n\
             some_gorouter_key_we_ignore: 1\n",
        )
        .unwrap();
        assert_eq!(c.port, 9000);
        assert_eq!(c.status.routes.port, 9002);
        assert_eq!(c.nats.urls(), ["nats://127.0.0.1:4222"]);
        assert_eq!(c.droplet_stale_threshold, Duration::from_secs(90));
        assert_eq!(c.endpoint_timeout, Duration::from_millis(250));
        assert_eq!(c.balancing_algorithm, Algorithm::LeastConnection);
        assert_eq!(c.tcp_port_range, (2000, 3000));
    }

    #[test]
    fn errors_name_the_key() {
        let cases = [
            ("port: http", "port"),
            ("status: {port: -1}", "status.port"),
            ("droplet_stale_threshold: soon", "droplet_stale_threshold"),
            ("balancing_algorithm: random", "balancing_algorithm"),
            ("backends: {max_attempts: 0}", "backends.max_attempts"),
            (
                "max_request_header_bytes: 2000000",
                "max_request_header_bytes",
            ),
            ("routes: [{host: h, port: 1}]", "routes[0]"),
            ("tcp_port_range: 9-1", "tcp_port_range"),
            ("logging: {level: loud}", "logging.level"),
            (
                "nats: {hosts: [{hostname: '', port: 4222}]}",
                "nats.hosts[0].hostname",
            ),
        ];
        for (yaml, key) in cases {
            let err = Config::from_yaml(yaml).unwrap_err().to_string();
            assert!(
                err.starts_with(&format!("{key}: ")),
                "{yaml:?} gave {err:?}"
            );
        }
    }

    #[test]
    fn endpoint_ttl_can_only_shorten_the_threshold() {
        let c = Config::default();
        assert_eq!(c.endpoint_ttl(0), Duration::from_secs(120));
        assert_eq!(c.endpoint_ttl(10), Duration::from_secs(10));
        assert_eq!(c.endpoint_ttl(500), Duration::from_secs(120));
    }
}
