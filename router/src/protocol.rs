//! The gorouter message protocol: subjects and JSON payloads shared by the router, the
//! route-registrar and controller-lite's route emitter (one definition, no copies).
//!
//! Parsing is lenient where gorouter is (unknown fields ignored, every field optional) and
//! strict where a wrong value would route traffic to the wrong place (`validate`).

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize};

/// Subject on which endpoints are added or refreshed.
pub const SUBJECT_REGISTER: &str = "router.register";
/// Subject on which endpoints are removed.
pub const SUBJECT_UNREGISTER: &str = "router.unregister";
/// Subject the router publishes at start and after every reconnect.
pub const SUBJECT_START: &str = "router.start";
/// Request subject answered with the same payload as `router.start`.
pub const SUBJECT_GREET: &str = "router.greet";

/// A `router.register` / `router.unregister` payload.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RegistryMessage {
    pub host: String,
    #[serde(skip_serializing_if = "is_zero")]
    pub port: u16,
    #[serde(skip_serializing_if = "is_zero")]
    pub tls_port: u16,
    pub uris: Vec<String>,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub app: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub private_instance_id: String,
    #[serde(
        deserialize_with = "string_or_number",
        skip_serializing_if = "String::is_empty"
    )]
    pub private_instance_index: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub server_cert_domain_san: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub route_service_url: String,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "is_zero_u64")]
    pub stale_threshold_in_seconds: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub isolation_segment: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub protocol: String,
    #[serde(skip_serializing_if = "is_zero_i64")]
    pub endpoint_updated_at_ns: i64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub availability_zone: String,
    #[serde(skip_serializing_if = "RouteOptions::is_empty")]
    pub options: RouteOptions,
    /// This project's extension: a TCP route on the router's port `external_port`.
    #[serde(skip_serializing_if = "is_zero")]
    pub external_port: u16,
}

/// Per-route options carried by a registration.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct RouteOptions {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub loadbalancing: String,
}

impl RouteOptions {
    fn is_empty(&self) -> bool {
        self.loadbalancing.is_empty()
    }
}

/// The `router.start` / `router.greet` payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RouterStart {
    pub id: String,
    pub hosts: Vec<String>,
    #[serde(rename = "minimumRegisterIntervalInSeconds")]
    pub minimum_register_interval_in_seconds: u64,
    #[serde(rename = "pruneThresholdInSeconds")]
    pub prune_threshold_in_seconds: u64,
}

/// Why a registry message was refused; the message is dropped and this is logged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MessageError {
    #[error("invalid JSON: {0}")]
    Json(String),
    #[error("field `host` is empty")]
    EmptyHost,
    #[error("field `host` ({0:?}) contains characters not allowed in a host")]
    BadHost(String),
    #[error("neither `port` nor `tls_port` is set")]
    NoPort,
    #[error("field `uris` is empty and no `external_port` is set")]
    NoUris,
    #[error("uri {uri:?} is invalid: {reason}")]
    BadUri { uri: String, reason: &'static str },
    #[error("field `route_service_url` must start with https: {0:?}")]
    BadRouteServiceUrl(String),
    #[error("field `protocol` must be \"http1\" or \"http2\", not {0:?}")]
    BadProtocol(String),
    #[error("field `{field}` contains characters not allowed in an HTTP header")]
    NotHeaderSafe { field: &'static str },
}

impl RegistryMessage {
    /// Parses a payload from the bus; never panics, whatever the bytes.
    pub fn parse(payload: &[u8]) -> Result<Self, MessageError> {
        // UTF-8 checked once for the whole payload: `from_slice` checks each string on
        // its own, a tenth of the parse.
        let text = std::str::from_utf8(payload)
            .map_err(|e| MessageError::Json(format!("not UTF-8 after byte {}", e.valid_up_to())))?;
        serde_json::from_str(text).map_err(|e| MessageError::Json(e.to_string()))
    }

    /// Checks what the router relies on. Unknown `options.loadbalancing` values are not
    /// an error: gorouter logs them and keeps the pool's algorithm, and so do we.
    pub fn validate(&self) -> Result<(), MessageError> {
        if self.host.is_empty() {
            return Err(MessageError::EmptyHost);
        }
        if !self
            .host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
        {
            return Err(MessageError::BadHost(self.host.clone()));
        }
        if self.port == 0 && self.tls_port == 0 {
            return Err(MessageError::NoPort);
        }
        if self.uris.is_empty() && self.external_port == 0 {
            return Err(MessageError::NoUris);
        }
        for uri in &self.uris {
            validate_uri(uri)?;
        }
        if !self.route_service_url.is_empty() && !self.route_service_url.starts_with("https") {
            return Err(MessageError::BadRouteServiceUrl(
                self.route_service_url.clone(),
            ));
        }
        if !matches!(self.protocol.as_str(), "" | "http1" | "http2") {
            return Err(MessageError::BadProtocol(self.protocol.clone()));
        }
        for (field, value) in [
            ("app", &self.app),
            ("private_instance_id", &self.private_instance_id),
            ("private_instance_index", &self.private_instance_index),
        ] {
            if !value
                .bytes()
                .all(|b| b == b'\t' || (b' '..=b'~').contains(&b))
            {
                return Err(MessageError::NotHeaderSafe { field });
            }
        }
        Ok(())
    }

    /// The port the endpoint is reached on: `tls_port` wins when set, as in gorouter.
    pub fn endpoint_port(&self) -> u16 {
        if self.tls_port != 0 {
            self.tls_port
        } else {
            self.port
        }
    }
}

/// Checks one `host[/path]` route URI.
pub fn validate_uri(uri: &str) -> Result<(), MessageError> {
    let bad = |reason| MessageError::BadUri {
        uri: uri.to_owned(),
        reason,
    };
    let host = uri.split(['/', '?']).next().unwrap_or_default();
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    if host.len() > 253 {
        return Err(bad("host longer than 253 bytes"));
    }
    let labels = host.strip_prefix("*.").unwrap_or(host);
    if labels.is_empty() || labels.contains('*') {
        return Err(bad("`*` is only allowed as a whole leading label"));
    }
    if !labels
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_' | b':'))
    {
        return Err(bad("host has characters outside [A-Za-z0-9._-:]"));
    }
    if uri
        .bytes()
        .any(|b| b.is_ascii_control() || b == b' ' || b >= 0x80)
    {
        return Err(bad(
            "contains a control character, a space or a non-ASCII byte",
        ));
    }
    Ok(())
}

fn string_or_number<'de, D: Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    struct Visitor;
    impl serde::de::Visitor<'_> for Visitor {
        type Value = String;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a string or an integer")
        }
        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<String, E> {
            Ok(v.to_owned())
        }
        fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<String, E> {
            Ok(v.to_string())
        }
        fn visit_unit<E: serde::de::Error>(self) -> Result<String, E> {
            Ok(String::new())
        }
    }
    deserializer.deserialize_any(Visitor)
}

fn is_zero(v: &u16) -> bool {
    *v == 0
}
fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}
fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_route_emitter_message_and_ignores_unknown_fields() {
        let msg = RegistryMessage::parse(
            br#"{"host":"10.0.0.1","port":61001,"uris":["a.example.com"],"app":"guid",
                "private_instance_id":"iid","private_instance_index":"2","tags":{"component":"route-emitter"},
                "endpoint_updated_at_ns":1,"something_new":[1,2]}"#,
        )
        .unwrap();
        assert_eq!(msg.port, 61001);
        assert_eq!(msg.private_instance_index, "2");
        assert_eq!(msg.tags["component"], "route-emitter");
        msg.validate().unwrap();
    }

    #[test]
    fn numeric_instance_index_is_accepted() {
        let msg = RegistryMessage::parse(
            br#"{"host":"h","port":1,"uris":["a"],"private_instance_index":3}"#,
        )
        .unwrap();
        assert_eq!(msg.private_instance_index, "3");
    }

    #[test]
    fn invalid_messages_name_the_reason() {
        let cases: [(&[u8], &str); 7] = [
            (b"{", "invalid JSON"),
            (b"{\"host\":\"h\xff\"}", "not UTF-8 after byte 10"),
            (br#"{"port":1,"uris":["a"]}"#, "`host` is empty"),
            (br#"{"host":"h","uris":["a"]}"#, "neither `port`"),
            (br#"{"host":"h","port":1}"#, "`uris` is empty"),
            (br#"{"host":"h","port":1,"uris":["a*.b"]}"#, "`*` is only"),
            (
                br#"{"host":"h","port":1,"uris":["a"],"protocol":"spdy"}"#,
                "`protocol`",
            ),
        ];
        for (payload, reason) in cases {
            let err = RegistryMessage::parse(payload)
                .and_then(|m| m.validate())
                .unwrap_err();
            assert!(err.to_string().contains(reason), "{err} lacks {reason}");
        }
    }

    #[test]
    fn serialisation_round_trips_and_omits_empty_fields() {
        let msg = RegistryMessage {
            host: "127.0.0.1".into(),
            port: 8080,
            uris: vec!["a.b".into()],
            ..Default::default()
        };
        let json = serde_json::to_string(&msg).unwrap();
        assert_eq!(json, r#"{"host":"127.0.0.1","port":8080,"uris":["a.b"]}"#);
        assert_eq!(RegistryMessage::parse(json.as_bytes()).unwrap(), msg);
    }
}
