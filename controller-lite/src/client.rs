//! A small HTTP/1.1 client for the controller's API (the CLI, remote agents and tests),
//! built on hyper-util's pooled client. CF error bodies become [`ClientError::Api`].

use std::path::Path;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use tokio::io::AsyncWriteExt;

/// One entry of CF's error list.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct CfError {
    pub code: u64,
    pub title: String,
    pub detail: String,
}

/// Client failures.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("invalid request to {url}: {reason}")]
    Request { url: String, reason: String },
    #[error("cannot reach {url}: {reason}")]
    Connect { url: String, reason: String },
    #[error("{status}: {}", describe(.errors))]
    Api {
        status: StatusCode,
        errors: Vec<CfError>,
    },
    #[error("unexpected response from {url} ({status}): {body}")]
    Unexpected {
        url: String,
        status: StatusCode,
        body: String,
    },
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
}

fn describe(errors: &[CfError]) -> String {
    errors
        .iter()
        .map(|e| format!("{} ({}): {}", e.title, e.code, e.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ClientError {
    /// The first CF error title, if the API answered with one.
    pub fn cf_title(&self) -> Option<&str> {
        match self {
            ClientError::Api { errors, .. } => errors.first().map(|e| e.title.as_str()),
            _ => None,
        }
    }
}

/// A client for one API endpoint.
#[derive(Debug, Clone)]
pub struct ApiClient {
    base: String,
    token: Option<String>,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// A response whose body is read by the caller (log streams).
pub type Streaming = http::Response<Incoming>;

impl ApiClient {
    /// A client for `base` (e.g. `http://127.0.0.1:9022`), sending `token` as bearer.
    pub fn new(base: &str, token: Option<String>) -> Self {
        ApiClient {
            base: base.trim_end_matches('/').to_owned(),
            token,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The API's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request and returns the response with its body unread.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
        content_type: Option<&str>,
    ) -> Result<Streaming, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = Request::builder().method(method).uri(&url);
        if let Some(token) = &self.token {
            req = req.header(header::AUTHORIZATION, format!("bearer {token}"));
        }
        if let Some(ct) = content_type {
            req = req.header(header::CONTENT_TYPE, ct);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| ClientError::Request {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let resp = self
            .http
            .request(req)
            .await
            .map_err(|e| ClientError::Connect {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
        if resp.status().is_success() {
            return Ok(resp);
        }
        let status = resp.status();
        let body = read_body(resp.into_body(), &url).await?;
        #[derive(Deserialize)]
        struct Errors {
            errors: Vec<CfError>,
        }
        match serde_json::from_slice::<Errors>(&body) {
            Ok(e) => Err(ClientError::Api {
                status,
                errors: e.errors,
            }),
            Err(_) => Err(ClientError::Unexpected {
                url,
                status,
                body: String::from_utf8_lossy(&body).into_owned(),
            }),
        }
    }

    /// Sends JSON (or nothing) and decodes the JSON answer; an empty body decodes as null.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<T, ClientError> {
        let (bytes, ct) = match body {
            Some(v) => (Bytes::from(v.to_string()), Some("application/json")),
            None => (Bytes::new(), None),
        };
        let url = format!("{}{}", self.base, path);
        let resp = self.send(method, path, bytes, ct).await?;
        let status = resp.status();
        let body = read_body(resp.into_body(), &url).await?;
        let body: &[u8] = if body.is_empty() { b"null" } else { &body };
        serde_json::from_slice(body).map_err(|e| ClientError::Unexpected {
            url,
            status,
            body: format!("{e}: {}", String::from_utf8_lossy(body)),
        })
    }

    /// GET and decode.
    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.json(Method::GET, path, None).await
    }

    /// POST JSON and decode.
    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        self.json(Method::POST, path, Some(body)).await
    }

    /// PATCH JSON and decode.
    pub async fn patch<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &Value,
    ) -> Result<T, ClientError> {
        self.json(Method::PATCH, path, Some(body)).await
    }

    /// DELETE, ignoring any body.
    pub async fn delete(&self, path: &str) -> Result<(), ClientError> {
        let url = format!("{}{}", self.base, path);
        let resp = self.send(Method::DELETE, path, Bytes::new(), None).await?;
        read_body(resp.into_body(), &url).await?;
        Ok(())
    }

    /// Downloads a body into a file.
    pub async fn download(&self, path: &str, dest: &Path) -> Result<(), ClientError> {
        let url = format!("{}{}", self.base, path);
        let resp = self.send(Method::GET, path, Bytes::new(), None).await?;
        let mut body = resp.into_body();
        let mut file = tokio::fs::File::create(dest).await?;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ClientError::Connect {
                url: url.clone(),
                reason: error_chain(&e),
            })?;
            if let Some(data) = frame.data_ref() {
                file.write_all(data).await?;
            }
        }
        file.flush().await?;
        Ok(())
    }
}

/// Reads a whole body.
pub async fn read_body(body: Incoming, url: &str) -> Result<Bytes, ClientError> {
    body.collect()
        .await
        .map(|c| c.to_bytes())
        .map_err(|e| ClientError::Connect {
            url: url.to_owned(),
            reason: error_chain(&e),
        })
}

/// A plain GET with an explicit `Host` header (reaching apps through the router).
pub async fn get_with_host(url: &str, host: &str) -> Result<(StatusCode, String), ClientError> {
    let http: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let host_value = HeaderValue::from_str(host).map_err(|e| ClientError::Request {
        url: url.to_owned(),
        reason: e.to_string(),
    })?;
    let req = Request::get(url)
        .header(header::HOST, host_value)
        .body(Full::new(Bytes::new()))
        .map_err(|e| ClientError::Request {
            url: url.to_owned(),
            reason: e.to_string(),
        })?;
    let resp = http.request(req).await.map_err(|e| ClientError::Connect {
        url: url.to_owned(),
        reason: error_chain(&e),
    })?;
    let status = resp.status();
    let body = read_body(resp.into_body(), url).await?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
