//! The Cloud Foundry access log: one line per request, written off the request path.
//!
//! Workers format the line and hand it to a writer thread through a bounded channel; when
//! the writer falls behind, lines are dropped and counted rather than stalling traffic.

use std::fs::OpenOptions;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderValue, Method, Version};
use tokio::sync::mpsc;

use crate::metrics::Metrics;
use crate::route_table::Endpoint;

/// Lines buffered between the workers and the writer thread.
const QUEUE_LINES: usize = 65_536;

/// Everything one access-log line says about a request.
#[derive(Debug, Clone)]
pub struct AccessRecord {
    pub received_at: SystemTime,
    pub host: Option<HeaderValue>,
    pub method: Method,
    pub target: String,
    pub version: Version,
    pub status: u16,
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub referer: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub client: SocketAddr,
    pub endpoint: Option<Arc<Endpoint>>,
    pub x_forwarded_for: Option<HeaderValue>,
    pub x_forwarded_proto: Option<HeaderValue>,
    pub request_id: HeaderValue,
    pub response_time: Duration,
    pub gorouter_time: Duration,
    pub router_error: Option<HeaderValue>,
}

impl AccessRecord {
    /// Appends the line (with its newline) to `out`, in gorouter's format: strings quoted
    /// Go-style, `-` for empty values.
    pub fn format(&self, out: &mut Vec<u8>) {
        let host = self.host.as_ref().map_or(&b"-"[..], HeaderValue::as_bytes);
        escape(out, if host.is_empty() { b"-" } else { host });
        out.extend_from_slice(b" - [");
        out.extend_from_slice(
            humantime::format_rfc3339_nanos(self.received_at)
                .to_string()
                .as_bytes(),
        );
        out.extend_from_slice(b"] \"");
        escape(out, self.method.as_str().as_bytes());
        out.push(b' ');
        escape(out, self.target.as_bytes());
        out.push(b' ');
        out.extend_from_slice(version_name(self.version).as_bytes());
        out.extend_from_slice(b"\" ");
        let _ = write!(
            out,
            "{} {} {} ",
            self.status, self.request_bytes, self.response_bytes
        );
        quoted(out, self.referer.as_ref().map(HeaderValue::as_bytes));
        out.push(b' ');
        quoted(out, self.user_agent.as_ref().map(HeaderValue::as_bytes));
        out.push(b' ');
        quoted(out, Some(self.client.to_string().as_bytes()));
        out.push(b' ');
        quoted(out, self.endpoint.as_ref().map(|e| e.key.as_bytes()));
        out.extend_from_slice(b" x_forwarded_for:");
        quoted(
            out,
            self.x_forwarded_for.as_ref().map(HeaderValue::as_bytes),
        );
        out.extend_from_slice(b" x_forwarded_proto:");
        quoted(
            out,
            self.x_forwarded_proto.as_ref().map(HeaderValue::as_bytes),
        );
        out.extend_from_slice(b" vcap_request_id:");
        quoted(out, Some(self.request_id.as_bytes()));
        let _ = write!(
            out,
            " response_time:{:.6} gorouter_time:{:.6}",
            self.response_time.as_secs_f64(),
            self.gorouter_time.as_secs_f64()
        );
        let endpoint_field = |f: fn(&Endpoint) -> &str| {
            self.endpoint
                .as_ref()
                .map(|e| f(e).as_bytes().to_vec())
                .unwrap_or_default()
        };
        out.extend_from_slice(b" app_id:");
        quoted(out, Some(&endpoint_field(|e| &e.data.app_id)));
        out.extend_from_slice(b" app_index:");
        quoted(out, Some(&endpoint_field(|e| &e.data.instance_index)));
        out.extend_from_slice(b" instance_id:");
        quoted(out, Some(&endpoint_field(|e| &e.data.instance_id)));
        out.extend_from_slice(b" x_cf_routererror:");
        quoted(out, self.router_error.as_ref().map(HeaderValue::as_bytes));
        out.push(b'\n');
    }
}

fn version_name(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2.0",
        Version::HTTP_3 => "HTTP/3.0",
        _ => "HTTP/1.1",
    }
}

/// `"value"`, or `"-"` when absent or empty.
fn quoted(out: &mut Vec<u8>, value: Option<&[u8]>) {
    out.push(b'"');
    match value {
        Some(v) if !v.is_empty() => escape(out, v),
        _ => out.push(b'-'),
    }
    out.push(b'"');
}

/// Go-style escaping, so a line stays one line and quotes stay balanced whatever the
/// client sent.
fn escape(out: &mut Vec<u8>, value: &[u8]) {
    for &b in value {
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x20..=0x7e => out.push(b),
            _ => {
                let _ = write!(out, "\\x{b:02x}");
            }
        }
    }
}

/// The sending side of the access log, cloned into every worker: lines to the log file,
/// and records to a tap for an embedding program (controller-lite adds them to the app's
/// logs as `RTR` lines).
#[derive(Debug, Clone)]
pub struct AccessLog {
    tx: Option<mpsc::Sender<Vec<u8>>>,
    tap: Option<mpsc::Sender<AccessRecord>>,
    metrics: Arc<Metrics>,
}

impl AccessLog {
    /// Opens `file` ("-" is stdout) and starts the writer thread.
    pub fn open(file: &str, metrics: Arc<Metrics>) -> io::Result<AccessLog> {
        let sink: Box<dyn Write + Send> = if file == "-" {
            Box::new(io::stdout())
        } else {
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(file)
                    .map_err(|e| {
                        io::Error::new(e.kind(), format!("access_log.file {file}: {e}"))
                    })?,
            )
        };
        let (tx, rx) = mpsc::channel(QUEUE_LINES);
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || write_lines(rx, sink))?;
        Ok(AccessLog {
            tx: Some(tx),
            tap: None,
            metrics,
        })
    }

    /// Records go to `tap` only (no file).
    pub fn tap_only(tap: mpsc::Sender<AccessRecord>, metrics: Arc<Metrics>) -> AccessLog {
        AccessLog {
            tx: None,
            tap: Some(tap),
            metrics,
        }
    }

    /// Records also go to `tap`.
    pub fn with_tap(mut self, tap: Option<mpsc::Sender<AccessRecord>>) -> AccessLog {
        self.tap = tap;
        self
    }

    /// Queues a record; never waits (a full queue drops and counts it).
    pub fn log(&self, record: &AccessRecord) {
        if let Some(tx) = &self.tx {
            let mut line = Vec::with_capacity(512);
            record.format(&mut line);
            if tx.try_send(line).is_err() {
                self.metrics.access_log_dropped();
            }
        }
        if let Some(tap) = &self.tap
            && tap.try_send(record.clone()).is_err()
        {
            self.metrics.access_log_dropped();
        }
    }
}

fn write_lines(mut rx: mpsc::Receiver<Vec<u8>>, sink: Box<dyn Write + Send>) {
    let mut out = BufWriter::with_capacity(256 * 1024, sink);
    while let Some(line) = rx.blocking_recv() {
        let mut result = out.write_all(&line);
        // Flush once the queue is empty: batches under load, prompt when quiet.
        while let Ok(line) = rx.try_recv() {
            result = result.and_then(|()| out.write_all(&line));
        }
        if let Err(err) = result.and_then(|()| out.flush()) {
            tracing::error!(error = %err, "cannot write the access log");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_has_gorouter_fields_and_escapes_client_input() {
        let record = AccessRecord {
            received_at: SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789),
            host: Some(HeaderValue::from_static("app.example.com")),
            method: Method::GET,
            target: "/a?b=\"c\"".into(),
            version: Version::HTTP_11,
            status: 200,
            request_bytes: 0,
            response_bytes: 12,
            referer: None,
            user_agent: Some(HeaderValue::from_static("curl/8")),
            client: "127.0.0.1:5555".parse().unwrap(),
            endpoint: None,
            x_forwarded_for: Some(HeaderValue::from_static("127.0.0.1")),
            x_forwarded_proto: Some(HeaderValue::from_static("http")),
            request_id: HeaderValue::from_static("id-1"),
            response_time: Duration::from_micros(1500),
            gorouter_time: Duration::from_micros(200),
            router_error: None,
        };
        let mut out = Vec::new();
        record.format(&mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "app.example.com - [2023-11-14T22:13:20.123456789Z] \"GET /a?b=\\\"c\\\" HTTP/1.1\" 200 0 12 \
             \"-\" \"curl/8\" \"127.0.0.1:5555\" \"-\" x_forwarded_for:\"127.0.0.1\" \
             x_forwarded_proto:\"http\" vcap_request_id:\"id-1\" response_time:0.001500 \
             gorouter_time:0.000200 app_id:\"-\" app_index:\"-\" instance_id:\"-\" \
             x_cf_routererror:\"-\"\n"
        );
    }
}
