//! TLS with rustls: the downstream listener's config (certificate by SNI, ALPN, versions,
//! client certificates, session tickets) and the client config for TLS endpoints, whose
//! certificate must name the endpoint's `server_cert_domain_san`.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine;
use http::HeaderValue;
use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig, SupportedProtocolVersion};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{ClientCertValidation, Config, ConfigError, TlsVersion};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn versions(config: &Config) -> Vec<&'static SupportedProtocolVersion> {
    let mut versions = Vec::new();
    if config.min_tls_version <= TlsVersion::Tls12 {
        versions.push(&rustls::version::TLS12);
    }
    if config.max_tls_version >= TlsVersion::Tls13 {
        versions.push(&rustls::version::TLS13);
    }
    versions
}

/// Parses every certificate of a PEM bundle; an error if there is none.
pub fn parse_certs(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("invalid PEM certificate: {e}"))?;
    if certs.is_empty() {
        return Err("no PEM certificate found".to_owned());
    }
    Ok(certs)
}

fn parse_key(pem: &str) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("invalid PEM private key: {e}"))
}

fn roots(pem: &str, key: &str) -> Result<RootCertStore, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in parse_certs(pem).map_err(|reason| ConfigError::invalid(key, reason))? {
        roots
            .add(cert)
            .map_err(|e| ConfigError::invalid(key, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The DNS names a certificate is valid for (SANs, else the subject CN), lowercased.
fn certificate_names(cert: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref())
        .map_err(|e| format!("cannot parse certificate: {e}"))?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    if names.is_empty() {
        names.extend(
            parsed
                .subject()
                .iter_common_name()
                .filter_map(|cn| cn.as_str().ok())
                .map(str::to_ascii_lowercase),
        );
    }
    Ok(names)
}

/// Chooses the certificate for a handshake: the exact SNI name, then a wildcard for its
/// parent domain, then the first configured certificate.
#[derive(Debug)]
struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// `*.example.com` certificates keyed by `example.com`.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Arc<CertifiedKey>,
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = hello.server_name() else {
            return Some(self.default.clone());
        };
        let name = name.to_ascii_lowercase();
        let chosen = self.exact.get(&name).or_else(|| {
            name.split_once('.')
                .and_then(|(_, parent)| self.wildcard.get(parent))
        });
        Some(chosen.unwrap_or(&self.default).clone())
    }
}

fn sni_resolver(config: &Config, provider: &CryptoProvider) -> Result<SniResolver, ConfigError> {
    let mut exact = HashMap::new();
    let mut wildcard = HashMap::new();
    let mut first = None;
    for (i, pem) in config.tls_pem.iter().enumerate() {
        let key_name = |field: &str| format!("tls_pem[{i}].{field}");
        let chain = parse_certs(&pem.cert_chain)
            .map_err(|reason| ConfigError::invalid(key_name("cert_chain"), reason))?;
        let key = parse_key(&pem.private_key)
            .map_err(|reason| ConfigError::invalid(key_name("private_key"), reason))?;
        let names = certificate_names(&chain[0])
            .map_err(|reason| ConfigError::invalid(key_name("cert_chain"), reason))?;
        let signing_key = provider.key_provider.load_private_key(key).map_err(|e| {
            ConfigError::invalid(key_name("private_key"), format!("unusable key: {e}"))
        })?;
        let certified = CertifiedKey::new(chain, signing_key);
        certified.keys_match().map_err(|e| {
            ConfigError::invalid(
                key_name("private_key"),
                format!("does not match the certificate: {e}"),
            )
        })?;
        let certified = Arc::new(certified);
        for name in names {
            // The first certificate naming a host wins, as the list order says.
            match name.strip_prefix("*.") {
                Some(parent) => wildcard.entry(parent.to_owned()),
                None => exact.entry(name),
            }
            .or_insert_with(|| certified.clone());
        }
        first.get_or_insert(certified);
    }
    let default = first.ok_or_else(|| {
        ConfigError::invalid(
            "tls_pem",
            "enable_ssl is true but no certificate is configured",
        )
    })?;
    Ok(SniResolver {
        exact,
        wildcard,
        default,
    })
}

/// The TLS listener's config.
pub fn server_config(config: &Config) -> Result<Arc<ServerConfig>, ConfigError> {
    let provider = provider();
    let resolver = sni_resolver(config, &provider)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&versions(config))
        .map_err(|e| ConfigError::invalid("min_tls_version", e.to_string()))?;
    let builder = match config.client_cert_validation {
        ClientCertValidation::None => builder.with_no_client_auth(),
        mode => {
            let roots = Arc::new(roots(&config.client_ca_certs, "client_ca_certs")?);
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone());
            let verifier = if mode == ClientCertValidation::Request {
                verifier.allow_unauthenticated()
            } else {
                verifier
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| ConfigError::invalid("client_ca_certs", e.to_string()))?,
            )
        }
    };
    let mut server = builder.with_cert_resolver(Arc::new(resolver));
    server.alpn_protocols = if config.enable_http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    server.session_storage = rustls::server::ServerSessionMemoryCache::new(16_384);
    server.ticketer = rustls::crypto::ring::Ticketer::new().map_err(|e| {
        ConfigError::invalid("enable_ssl", format!("cannot make a session ticketer: {e}"))
    })?;
    Ok(Arc::new(server))
}

/// Checks the TLS keys of a config (certificates parse, keys match) without serving.
pub fn check_config(config: &Config) -> Result<(), ConfigError> {
    server_config(config).map(drop)
}

/// The client config for TLS endpoints, offering `alpn`.
pub fn client_config(config: &Config, alpn: &[&[u8]]) -> Result<Arc<ClientConfig>, ConfigError> {
    let roots = if config.backends.ca_certs.is_empty() {
        RootCertStore::empty()
    } else {
        roots(&config.backends.ca_certs, "backends.ca_certs")?
    };
    let mut client = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS12, &rustls::version::TLS13])
        .map_err(|e| ConfigError::invalid("backends", e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    client.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(client))
}

/// `X-Forwarded-Client-Cert` for a client certificate: its DER, base64 (gorouter's form).
pub fn client_cert_header(cert: &CertificateDer<'_>) -> Option<HeaderValue> {
    HeaderValue::from_str(&base64::engine::general_purpose::STANDARD.encode(cert.as_ref())).ok()
}

/// How a TLS connection to an endpoint failed, for gorouter's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// The handshake failed (the endpoint does not speak TLS, or no common parameters): 525.
    Handshake,
    /// The certificate is not signed by a trusted CA, expired, or otherwise invalid: 526.
    Untrusted,
    /// The certificate does not name `server_cert_domain_san`: 503.
    NameMismatch,
    /// The endpoint wanted a client certificate we do not have, or rejected ours: 496.
    ClientCertRejected,
}

impl TlsFailure {
    /// Classifies the error of a failed client handshake.
    pub fn classify(err: &std::io::Error) -> TlsFailure {
        use rustls::{AlertDescription, CertificateError, Error};
        match err.get_ref().and_then(|e| e.downcast_ref::<Error>()) {
            Some(Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => TlsFailure::NameMismatch,
            Some(Error::InvalidCertificate(_)) => TlsFailure::Untrusted,
            Some(Error::AlertReceived(
                AlertDescription::CertificateRequired
                | AlertDescription::BadCertificate
                | AlertDescription::UnknownCA,
            )) => TlsFailure::ClientCertRejected,
            _ => TlsFailure::Handshake,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::TlsPem;

    fn pem_for(names: &[&str]) -> TlsPem {
        let cert = rcgen::generate_simple_self_signed(
            names.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        )
        .unwrap();
        TlsPem {
            cert_chain: cert.cert.pem(),
            private_key: cert.signing_key.serialize_pem(),
        }
    }

    #[test]
    fn bad_entries_are_named() {
        let good = pem_for(&["a.example.com"]);
        let other = pem_for(&["b.example.com"]);
        let cases = [
            (
                TlsPem {
                    cert_chain: "garbage".into(),
                    private_key: good.private_key.clone(),
                },
                "tls_pem[1].cert_chain",
            ),
            (
                TlsPem {
                    cert_chain: good.cert_chain.clone(),
                    private_key: "garbage".into(),
                },
                "tls_pem[1].private_key",
            ),
            (
                TlsPem {
                    cert_chain: good.cert_chain.clone(),
                    private_key: other.private_key.clone(),
                },
                "tls_pem[1].private_key",
            ),
        ];
        for (bad, key) in cases {
            let config = Config {
                enable_ssl: true,
                tls_pem: vec![good.clone(), bad],
                ..Config::default()
            };
            let err = check_config(&config).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{key}: ")), "{err}");
        }
        let none = Config {
            enable_ssl: true,
            ..Config::default()
        };
        assert!(
            check_config(&none)
                .unwrap_err()
                .to_string()
                .starts_with("tls_pem: ")
        );
    }

    #[test]
    fn names_come_from_sans() {
        let pem = pem_for(&["A.example.com", "*.b.example.com"]);
        let chain = parse_certs(&pem.cert_chain).unwrap();
        assert_eq!(
            certificate_names(&chain[0]).unwrap(),
            ["a.example.com", "*.b.example.com"]
        );
    }
}
