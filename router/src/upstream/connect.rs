//! Dialing an endpoint: TCP with the dial timeout, then TLS when the endpoint registered
//! a `tls_port`, verified against its `server_cert_domain_san`.

use rustls_pki_types::ServerName;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_util::either::Either;

use super::{UpstreamError, UpstreamSettings};
use crate::config::{Config, ConfigError};
use crate::route_table::Endpoint;
use crate::tls::TlsFailure;

/// A connection to an endpoint, plain or TLS.
/// (The TLS state is large: boxed, so that a plain connection stays small.)
pub type UpstreamIo = Either<TcpStream, Box<tokio_rustls::client::TlsStream<TcpStream>>>;

/// TLS client configs for endpoints, one per ALPN offer.
#[derive(Clone)]
pub struct UpstreamTls {
    http1: TlsConnector,
    http2: TlsConnector,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UpstreamTls")
    }
}

impl UpstreamTls {
    /// Client configs trusting `backends.ca_certs`.
    pub fn new(config: &Config) -> Result<Self, ConfigError> {
        Ok(UpstreamTls {
            http1: TlsConnector::from(crate::tls::client_config(config, &[b"http/1.1"])?),
            http2: TlsConnector::from(crate::tls::client_config(config, &[b"h2"])?),
        })
    }
}

/// Which protocol to offer by ALPN.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alpn {
    Http1,
    Http2,
}

/// Connects to `endpoint`: TCP, then TLS if the endpoint is a TLS one.
pub async fn dial(
    endpoint: &Endpoint,
    settings: &UpstreamSettings,
    alpn: Alpn,
) -> Result<UpstreamIo, UpstreamError> {
    let addr_text = || endpoint.key.to_string();
    let connect = async {
        match endpoint.socket_addr {
            Some(addr) => TcpStream::connect(addr).await,
            None => TcpStream::connect((endpoint.data.host.as_str(), endpoint.data.port)).await,
        }
    };
    let stream = match tokio::time::timeout(settings.dial_timeout, connect).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(source)) => {
            return Err(UpstreamError::Dial {
                addr: addr_text(),
                source,
            });
        }
        Err(_) => return Err(UpstreamError::DialTimeout(addr_text())),
    };
    // Small requests and responses must not wait for Nagle.
    let _ = stream.set_nodelay(true);
    if !endpoint.data.tls {
        return Ok(Either::Left(stream));
    }
    let name = if endpoint.data.server_cert_domain_san.is_empty() {
        &endpoint.data.host
    } else {
        &endpoint.data.server_cert_domain_san
    };
    let tls_error = |failure, reason: String| UpstreamError::Tls {
        addr: addr_text(),
        failure,
        reason,
    };
    let server_name = ServerName::try_from(name.clone()).map_err(|e| {
        tls_error(
            TlsFailure::NameMismatch,
            format!("invalid name {name:?}: {e}"),
        )
    })?;
    let connector = match alpn {
        Alpn::Http1 => &settings.tls.http1,
        Alpn::Http2 => &settings.tls.http2,
    };
    let handshake = connector.connect(server_name, stream);
    match tokio::time::timeout(settings.tls_handshake_timeout, handshake).await {
        Ok(Ok(tls)) => Ok(Either::Right(Box::new(tls))),
        Ok(Err(err)) => Err(tls_error(TlsFailure::classify(&err), err.to_string())),
        Err(_) => Err(tls_error(
            TlsFailure::Handshake,
            "handshake timeout".to_owned(),
        )),
    }
}
