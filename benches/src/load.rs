//! Drives wrk and h2load and reads their results.
//!
//! wrk reports through a Lua `done` hook that prints one JSON line (requests, duration,
//! latency percentiles, errors), so nothing depends on its human-readable output. h2load
//! has no such hook and no percentiles: its summary lines are parsed, and only the mean
//! latency is known.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Deserialize;

use crate::procs::pinned;

/// The Lua script that makes wrk print its results as JSON.
const WRK_REPORT_LUA: &str = r#"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%.0f,"p50_us":%d,"p99_us":%d,' ..
    '"mean_us":%f,"max_us":%d,"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d}\n',
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(99), latency.mean, latency.max,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"#;

/// One load generator run's figures.
#[derive(Debug, Clone, Default)]
pub struct LoadFigures {
    pub requests: u64,
    pub elapsed: Duration,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
    pub mean_ms: Option<f64>,
    /// Failed requests (socket errors, non-2xx/3xx answers, timeouts).
    pub errors: u64,
}

impl LoadFigures {
    /// Completed requests per second.
    pub fn rate(&self) -> f64 {
        let secs = self.elapsed.as_secs_f64();
        if secs > 0.0 {
            self.requests as f64 / secs
        } else {
            0.0
        }
    }
}

#[derive(Debug, Deserialize)]
struct WrkReport {
    requests: u64,
    duration_us: u64,
    p50_us: u64,
    p99_us: u64,
    mean_us: f64,
    connect: u64,
    read: u64,
    write: u64,
    status: u64,
    timeout: u64,
}

/// A wrk run: `threads` threads, `connections` connections, for `duration`.
#[derive(Debug, Clone)]
pub struct Wrk<'a> {
    pub url: String,
    pub host: &'a str,
    pub connections: usize,
    pub duration: Duration,
    /// Extra request headers (`Name: value`).
    pub headers: Vec<String>,
    pub cpus: &'a str,
}

impl Wrk<'_> {
    /// Runs wrk to completion (bounded by `duration` plus wrk's own 2 s timeout).
    pub fn run(&self, scratch: &Path) -> anyhow::Result<LoadFigures> {
        let script = scratch.join("wrk-report.lua");
        std::fs::write(&script, WRK_REPORT_LUA)?;
        let mut cmd = pinned(self.cpus, "wrk");
        cmd.arg("-t1")
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.duration.as_secs().max(1)))
            .arg("--timeout")
            .arg("5s")
            .arg("-s")
            .arg(&script)
            .arg("-H")
            .arg(format!("Host: {}", self.host));
        for header in &self.headers {
            cmd.arg("-H").arg(header);
        }
        cmd.arg(&self.url);
        let output = run_captured(&mut cmd)?;
        let line = output
            .lines()
            .find_map(|l| l.strip_prefix("BENCH_RESULT "))
            .with_context(|| format!("wrk printed no result:\n{output}"))?;
        let report: WrkReport = serde_json::from_str(line)
            .with_context(|| format!("cannot read wrk's result line {line:?}"))?;
        Ok(LoadFigures {
            requests: report.requests,
            elapsed: Duration::from_micros(report.duration_us),
            p50_ms: Some(report.p50_us as f64 / 1000.0),
            p99_ms: Some(report.p99_us as f64 / 1000.0),
            mean_ms: Some(report.mean_us / 1000.0),
            errors: report.connect + report.read + report.write + report.status + report.timeout,
        })
    }
}

/// An h2load run over TLS (ALPN h2): `connections` connections with `streams` concurrent
/// streams each, for `duration`.
#[derive(Debug, Clone)]
pub struct H2load<'a> {
    pub url: String,
    pub host: &'a str,
    pub connections: usize,
    pub streams: usize,
    pub duration: Duration,
    pub cpus: &'a str,
}

impl H2load<'_> {
    /// Runs h2load to completion.
    pub fn run(&self) -> anyhow::Result<LoadFigures> {
        let mut cmd = pinned(self.cpus, "h2load");
        cmd.arg("-t1")
            .arg(format!("-c{}", self.connections))
            .arg(format!("-m{}", self.streams))
            .arg("-D")
            .arg(self.duration.as_secs().max(1).to_string())
            .arg("-H")
            .arg(format!(":authority: {}", self.host))
            .arg(&self.url);
        let output = run_captured(&mut cmd)?;
        parse_h2load(&output).with_context(|| format!("cannot read h2load's output:\n{output}"))
    }
}

fn run_captured(cmd: &mut Command) -> anyhow::Result<String> {
    let output = cmd
        .output()
        .with_context(|| format!("cannot run {cmd:?}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    if !output.status.success() {
        bail!("{cmd:?} failed ({}):\n{text}", output.status);
    }
    Ok(text)
}

/// Reads h2load's summary: `finished in 10.00s, 1234.5 req/s, ...`, the `requests:` and
/// `status codes:` lines, and the mean of `time for request:`.
fn parse_h2load(text: &str) -> anyhow::Result<LoadFigures> {
    let finished = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("finished in "))
        .context("no `finished in` line")?;
    let secs = parse_duration_text(finished.split(',').next().unwrap_or_default())?;
    let numbers = |prefix: &str| -> anyhow::Result<Vec<u64>> {
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix(prefix))
            .with_context(|| format!("no `{prefix}` line"))?;
        Ok(line
            .split(',')
            .filter_map(|part| part.split_whitespace().next()?.parse().ok())
            .collect())
    };
    // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
    let requests = numbers("requests:")?;
    // status codes: N 2xx, N 3xx, N 4xx, N 5xx
    let statuses = numbers("status codes:")?;
    let ok = statuses.first().copied().unwrap_or(0) + statuses.get(1).copied().unwrap_or(0);
    let done = requests.get(2).copied().unwrap_or(0);
    let mean_ms = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("time for request:"))
        .and_then(|rest| rest.split_whitespace().nth(2))
        .and_then(|mean| parse_duration_text(mean).ok())
        .map(|d| d * 1000.0);
    Ok(LoadFigures {
        requests: ok,
        elapsed: Duration::from_secs_f64(secs),
        p50_ms: None,
        p99_ms: None,
        mean_ms,
        errors: done.saturating_sub(ok) + requests.get(4).copied().unwrap_or(0),
    })
}

/// `12.34ms`, `1.2s`, `850us` -> seconds.
fn parse_duration_text(text: &str) -> anyhow::Result<f64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: f64 = number
        .parse()
        .with_context(|| format!("not a duration: {text:?}"))?;
    let scale = match unit {
        "s" => 1.0,
        "ms" => 1e-3,
        "us" => 1e-6,
        "ns" => 1e-9,
        other => bail!("unknown unit {other:?} in {text:?}"),
    };
    Ok(number * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2load_summary_is_read() {
        let text = "\
starting benchmark...
finished in 3.00s, 45678.33 req/s, 2.10MB/s
requests: 137035 total, 137535 started, 137035 done, 137035 succeeded, 0 failed, 0 errored, 0 timeout
status codes: 137035 2xx, 0 3xx, 0 4xx, 0 5xx
traffic: 6.30MB (6606000) total, 1.00MB (1048576) headers (space savings 90.00%), 3.00MB (3145728) data
                     min         max         mean         sd        +/- sd
time for request:      123us     12.34ms      1.05ms       200us    70.00%
";
        let f = parse_h2load(text).unwrap();
        assert_eq!(f.requests, 137035);
        assert_eq!(f.errors, 0);
        assert!((f.rate() - 45678.33).abs() < 1.0);
        assert!((f.mean_ms.unwrap() - 1.05).abs() < 1e-9);
    }
}
