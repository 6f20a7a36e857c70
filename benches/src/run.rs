//! One run of the load benchmark: starts the backend, NATS, the router, nginx and
//! HAProxy, drives each scenario at each target in turn, then measures the scale
//! figures on fresh processes, and returns the results.
//!
//! Placement: load generators (wrk, h2load, the clients in [`crate::clients`], which run
//! in this process) and nats-server on `load_cpus`; the proxy under test and the backend
//! on `server_cpus`. All proxies run for the whole comparison phase but only one is
//! loaded at a time.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::json;

use crate::clients;
use crate::load::{H2load, LoadFigures, Wrk};
use crate::peers::{Files, Ports, ROUTE_HOST, Setup, Target};
use crate::procs::{CpuTime, Proc, thread_cpu_time, tree_cpu_time};
use crate::report::{
    CpuPerOp, IdleConnections, RegisterLatency, Results, RoutesRss, Row, Scenario,
};

/// Every scenario and scale figure, in the order they run.
pub const ALL: [&str; 12] = [
    "http1-keepalive",
    "http1-close",
    "tls-keepalive",
    "tls-handshake",
    "h2-tls",
    "large-1mib",
    "websocket-echo",
    "tcp-throughput",
    "route-churn",
    "register-latency",
    "routes-rss",
    "idle-connections",
];

/// Settings of a run (the `bench-load run` flags).
#[derive(Debug, Clone)]
pub struct Options {
    pub out: PathBuf,
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: usize,
    pub large_connections: usize,
    pub h2_connections: usize,
    pub h2_streams: usize,
    pub ws_connections: usize,
    pub ws_message_bytes: usize,
    pub tcp_connections: usize,
    pub churn_rate: u64,
    pub routes: usize,
    pub idle_connections: usize,
    pub latency_samples: usize,
    pub port_base: u16,
    pub load_cpus: String,
    pub server_cpus: String,
    pub router_bin: PathBuf,
    pub router_workers: usize,
    /// Rounds per scenario (targets interleaved); the median round is reported.
    pub repeat: usize,
    /// Give nginx and HAProxy the forwarding headers the router adds.
    pub peer_headers: bool,
    pub only: Vec<String>,
    pub targets: Vec<Target>,
}

impl Options {
    fn wants(&self, name: &str) -> bool {
        self.only.is_empty() || self.only.iter().any(|o| o == name)
    }

    fn settings_json(&self) -> serde_json::Value {
        json!({
            "duration_s": self.duration.as_secs_f64(),
            "warmup_s": self.warmup.as_secs_f64(),
            "connections": self.connections,
            "large_connections": self.large_connections,
            "h2_connections": self.h2_connections,
            "h2_streams": self.h2_streams,
            "ws_connections": self.ws_connections,
            "ws_message_bytes": self.ws_message_bytes,
            "tcp_connections": self.tcp_connections,
            "churn_rate": self.churn_rate,
            "routes": self.routes,
            "idle_connections": self.idle_connections,
            "latency_samples": self.latency_samples,
            "port_base": self.port_base,
            "load_cpus": self.load_cpus,
            "server_cpus": self.server_cpus,
            "router_workers": self.router_workers,
            "repeat": self.repeat,
            "peer_headers": self.peer_headers,
            "targets": self.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
        })
    }
}

/// Raises this process's open-file limit as far as allowed (children inherit it) and
/// returns the soft limit in force.
fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let wanted = 65_536;
    if setrlimit(Resource::RLIMIT_NOFILE, wanted, wanted).is_ok() {
        return wanted;
    }
    if let Ok((_, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(1024, |(soft, _)| soft)
}

/// The round with the median throughput (the upper one of an even count), with the
/// median round's CPU figures taken on their own (ranked by the proxy's CPU per
/// operation, or the backend's for `direct`).
fn median_row(mut rows: Vec<Row>) -> Option<Row> {
    if rows.is_empty() {
        return None;
    }
    let rounds: Vec<f64> = rows.iter().map(|r| r.throughput).collect();
    let mut cpus: Vec<CpuPerOp> = rows.iter().filter_map(|r| r.cpu).collect();
    let cpu_rank = |c: &CpuPerOp| c.proxy_us().unwrap_or(c.backend_us);
    cpus.sort_by(|a, b| cpu_rank(a).total_cmp(&cpu_rank(b)));
    rows.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
    let mid = rows.len() / 2;
    let mut row = rows.swap_remove(mid);
    row.rounds = rounds;
    row.cpu = cpus.get(cpus.len() / 2).copied();
    Some(row)
}

/// CPU per operation from the CPU time used in a window of `ops` operations.
fn cpu_per_op(proxy: Option<CpuTime>, backend: CpuTime, ops: f64) -> Option<CpuPerOp> {
    if ops <= 0.0 {
        return None;
    }
    let us = |seconds: f64| seconds * 1e6 / ops;
    Some(CpuPerOp {
        proxy_user_us: proxy.map(|p| us(p.user)),
        proxy_system_us: proxy.map(|p| us(p.system)),
        backend_us: us(backend.total()),
    })
}

/// Parses a taskset-style CPU list: `0`, `0,2`, `0-3`.
pub fn parse_cpu_list(text: &str) -> anyhow::Result<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((lo, hi)) => {
                let (lo, hi): (usize, usize) = (lo.parse()?, hi.parse()?);
                if lo > hi {
                    bail!("bad CPU range {part:?}");
                }
                cpus.extend(lo..=hi);
            }
            None => cpus.push(part.parse()?),
        }
    }
    if cpus.is_empty() {
        bail!("empty CPU list {text:?}");
    }
    Ok(cpus)
}

/// Pins this process (and so the load clients it runs) to `cpus`.
fn pin_self(cpus: &str) -> anyhow::Result<()> {
    use nix::sched::{CpuSet, sched_setaffinity};
    let mut set = CpuSet::new();
    for cpu in parse_cpu_list(cpus).with_context(|| format!("--load-cpus {cpus}"))? {
        set.set(cpu)?;
    }
    sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
        .with_context(|| format!("cannot pin bench-load to CPUs {cpus}"))?;
    Ok(())
}

struct Runner {
    opts: Options,
    setup: Setup,
    rt: tokio::runtime::Runtime,
    results: Results,
    nofile: u64,
    /// Process ids whose CPU time the scenarios read: the backend, and each proxy.
    backend_pid: u32,
    proxy_pids: Vec<(Target, u32)>,
    /// nats-server's, when it runs: it shares the load CPU in `route-churn`.
    nats_pid: Option<u32>,
}

/// Runs the benchmark; `command` is recorded with the results.
pub fn run(opts: Options, command: String) -> anyhow::Result<Results> {
    for name in &opts.only {
        if !ALL.contains(&name.as_str()) {
            bail!("unknown scenario {name:?}; known: {}", ALL.join(", "));
        }
    }
    if !opts.router_bin.exists() {
        bail!(
            "{} does not exist: build it with `cargo build --release -p router`",
            opts.router_bin.display()
        );
    }
    parse_cpu_list(&opts.server_cpus)
        .with_context(|| format!("--server-cpus {}", opts.server_cpus))?;
    pin_self(&opts.load_cpus)?;
    let files = Files::new(&opts.out)?;
    files.generate_certificate()?;
    let nofile = raise_nofile();
    let setup = Setup {
        ports: Ports {
            base: opts.port_base,
        },
        files,
        server_cpus: opts.server_cpus.clone(),
        load_cpus: opts.load_cpus.clone(),
        router_bin: opts.router_bin.clone(),
        router_workers: opts.router_workers,
        peer_headers: opts.peer_headers,
        nofile,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut runner = Runner {
        results: Results {
            started: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            command,
            settings: opts.settings_json(),
            ..Default::default()
        },
        opts,
        setup,
        rt,
        nofile,
        backend_pid: 0,
        proxy_pids: Vec::new(),
        nats_pid: None,
    };
    runner.run_all()?;
    Ok(runner.results)
}

impl Runner {
    fn note(&mut self, note: String) {
        eprintln!("note: {note}");
        self.results.notes.push(note);
    }

    fn run_all(&mut self) -> anyhow::Result<()> {
        let _backend = self.setup.start_backend()?;
        self.backend_pid = _backend.pid();
        let nats_wanted = ["route-churn", "register-latency", "routes-rss"]
            .iter()
            .any(|n| self.opts.wants(n));
        let _nats = if nats_wanted {
            match self.setup.start_nats() {
                Ok(nats) => Some(nats),
                Err(err) => {
                    self.note(format!(
                        "no NATS (apt-get install nats-server): churn, register latency and route RSS skipped: {err:#}"
                    ));
                    None
                }
            }
        } else {
            None
        };
        let nats = _nats.is_some();
        self.nats_pid = _nats.as_ref().map(Proc::pid);
        self.comparison(nats)?;
        if nats && self.opts.wants("routes-rss") {
            self.routes_rss()?;
        }
        if self.opts.wants("idle-connections") {
            self.idle_connections()?;
        }
        Ok(())
    }

    /// The scenarios, then churn and register latency, with all proxies up.
    fn comparison(&mut self, nats: bool) -> anyhow::Result<()> {
        let comparison: Vec<&str> = ALL[..10]
            .iter()
            .copied()
            .filter(|n| self.opts.wants(n))
            .collect();
        if comparison.is_empty() {
            return Ok(());
        }
        let targets = self.opts.targets.clone();
        let mut procs: Vec<Proc> = Vec::new();
        for target in &targets {
            let proc = match target {
                Target::Direct => continue,
                Target::Router => self.setup.start_router(nats)?,
                Target::Nginx => self.setup.start_nginx(self.nofile)?,
                Target::Haproxy => self
                    .setup
                    .start_haproxy(self.nofile.saturating_sub(256) / 2)?,
            };
            self.proxy_pids.push((*target, proc.pid()));
            procs.push(proc);
        }
        for target in &targets {
            self.wait_serving(target.http(&self.setup.ports))
                .with_context(|| format!("{} does not serve {ROUTE_HOST}", target.name()))?;
        }
        for name in comparison {
            match name {
                "route-churn" | "register-latency" if !nats => continue,
                "route-churn" | "register-latency" if !targets.contains(&Target::Router) => {
                    continue;
                }
                "route-churn" => self.route_churn()?,
                "register-latency" => self.register_latency()?,
                _ => self.scenario(name, &targets)?,
            }
            for proc in &mut procs {
                proc.check_running()?;
            }
        }
        Ok(())
    }

    fn wait_serving(&self, addr: SocketAddr) -> anyhow::Result<()> {
        self.rt.block_on(async {
            let deadline = Instant::now() + Duration::from_secs(15);
            loop {
                let status = async {
                    let mut conn = crate::http1::Connection::connect(addr).await?;
                    conn.get(ROUTE_HOST, "/").await
                }
                .await;
                match status {
                    Ok(200) => return Ok(()),
                    other if Instant::now() > deadline => {
                        bail!("{addr}: no 200 after 15 s (last: {other:?})")
                    }
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    }

    fn wrk(
        &self,
        url: String,
        connections: usize,
        headers: &[&str],
        duration: Duration,
    ) -> Wrk<'_> {
        Wrk {
            url,
            host: ROUTE_HOST,
            connections,
            duration,
            headers: headers.iter().map(|h| (*h).to_owned()).collect(),
            cpus: &self.opts.load_cpus,
        }
    }

    fn scenario(&mut self, name: &str, targets: &[Target]) -> anyhow::Result<()> {
        let o = &self.opts;
        let (description, unit) = match name {
            "http1-keepalive" => (
                format!(
                    "HTTP/1.1 keep-alive, small response, wrk -t1 -c{}",
                    o.connections
                ),
                "req/s",
            ),
            "http1-close" => (
                format!(
                    "HTTP/1.1, a new connection per request (Connection: close), wrk -t1 -c{}",
                    o.connections
                ),
                "req/s",
            ),
            "tls-keepalive" => (
                format!(
                    "HTTPS keep-alive, small response, wrk -t1 -c{}",
                    o.connections
                ),
                "req/s",
            ),
            "tls-handshake" => (
                format!(
                    "HTTPS, a full TLS handshake per request (Connection: close), wrk -t1 -c{}",
                    o.connections
                ),
                "req/s",
            ),
            "h2-tls" => (
                format!(
                    "HTTP/2 over TLS, h2load -t1 -c{} -m{}",
                    o.h2_connections, o.h2_streams
                ),
                "req/s",
            ),
            "large-1mib" => (
                format!(
                    "HTTP/1.1 keep-alive, 1 MiB responses, wrk -t1 -c{} (req/s = MiB/s)",
                    o.large_connections
                ),
                "req/s",
            ),
            "websocket-echo" => (
                format!(
                    "WebSocket echo, {} connections, {}-byte binary messages, one in flight each",
                    o.ws_connections, o.ws_message_bytes
                ),
                "msg/s",
            ),
            "tcp-throughput" => (
                format!(
                    "TCP pass-through to a sink, {} connection(s) pushing 256 KiB writes",
                    o.tcp_connections
                ),
                "MiB/s",
            ),
            other => bail!("unknown scenario {other}"),
        };
        let mut scenario = Scenario {
            name: name.to_owned(),
            description,
            unit: unit.to_owned(),
            rows: Vec::new(),
        };
        // Rounds go over every target in turn, so a disturbance of the machine hits all
        // targets alike; each target's median round is kept.
        let mut rounds: Vec<(Target, Vec<Row>)> =
            targets.iter().map(|&t| (t, Vec::new())).collect();
        for round in 0..self.opts.repeat.max(1) {
            for (target, rows) in &mut rounds {
                let target = *target;
                let row = match self.measure(name, target) {
                    Ok(Some(row)) => row,
                    Ok(None) => continue,
                    Err(err) => {
                        self.note(format!(
                            "{name} on {} (round {}): {err:#}",
                            target.name(),
                            round + 1
                        ));
                        continue;
                    }
                };
                eprintln!(
                    "{name:>16} {:>8}: {:>10.0} {unit}  p50 {}  p99 {}  errors {}",
                    target.name(),
                    row.throughput,
                    row.p50_ms.map_or("-".into(), |v| format!("{v:.2} ms")),
                    row.p99_ms.map_or("-".into(), |v| format!("{v:.2} ms")),
                    row.errors
                );
                if row.errors > 0 {
                    self.note(format!(
                        "{name} on {} (round {}): {} errors out of {}",
                        target.name(),
                        round + 1,
                        row.errors,
                        row.count + row.errors
                    ));
                }
                rows.push(row);
            }
        }
        for (_, rows) in rounds {
            if let Some(row) = median_row(rows) {
                scenario.rows.push(row);
            }
        }
        self.results.scenarios.push(scenario);
        Ok(())
    }

    /// One scenario at one target after a warm-up of the same shape, with the CPU time
    /// the proxy and the backend spent in the measured window; `None` when the scenario
    /// does not apply (TLS to the backend).
    fn measure(&self, name: &str, target: Target) -> anyhow::Result<Option<Row>> {
        if !self.opts.warmup.is_zero() && self.load(name, target, self.opts.warmup)?.is_none() {
            return Ok(None);
        }
        let proxy_pid = self
            .proxy_pids
            .iter()
            .find(|(t, _)| *t == target)
            .map(|&(_, pid)| pid);
        let proxy_before = proxy_pid.map(tree_cpu_time);
        let backend_before = tree_cpu_time(self.backend_pid);
        let Some(mut row) = self.load(name, target, self.opts.duration)? else {
            return Ok(None);
        };
        let proxy = proxy_pid
            .zip(proxy_before)
            .map(|(pid, before)| tree_cpu_time(pid) - before);
        let backend = tree_cpu_time(self.backend_pid) - backend_before;
        // TCP counts bytes; its CPU is per MiB, like its throughput.
        let ops = if name == "tcp-throughput" {
            row.count as f64 / (1024.0 * 1024.0)
        } else {
            row.count as f64
        };
        row.cpu = cpu_per_op(proxy, backend, ops);
        Ok(Some(row))
    }

    /// One load of `name` on `target` for `duration`.
    fn load(&self, name: &str, target: Target, duration: Duration) -> anyhow::Result<Option<Row>> {
        let ports = &self.setup.ports;
        let http = target.http(ports);
        let o = &self.opts;
        let dir = &self.setup.files.dir;
        let figures = match name {
            "http1-keepalive" => self
                .wrk(format!("http://{http}/"), o.connections, &[], duration)
                .run(dir)?,
            "http1-close" => self
                .wrk(
                    format!("http://{http}/"),
                    o.connections,
                    &["Connection: close"],
                    duration,
                )
                .run(dir)?,
            "tls-keepalive" | "tls-handshake" | "h2-tls" => {
                let Some(tls) = target.tls(ports) else {
                    return Ok(None);
                };
                let url = format!("https://{tls}/");
                match name {
                    "tls-keepalive" => self.wrk(url, o.connections, &[], duration).run(dir)?,
                    "tls-handshake" => self
                        .wrk(url, o.connections, &["Connection: close"], duration)
                        .run(dir)?,
                    _ => H2load {
                        url,
                        host: ROUTE_HOST,
                        connections: o.h2_connections,
                        streams: o.h2_streams,
                        duration,
                        cpus: &o.load_cpus,
                    }
                    .run()?,
                }
            }
            "large-1mib" => self
                .wrk(
                    format!("http://{http}/1m"),
                    o.large_connections,
                    &[],
                    duration,
                )
                .run(dir)?,
            "websocket-echo" => {
                let r = self.rt.block_on(clients::websocket_echo(
                    http,
                    ROUTE_HOST,
                    o.ws_connections,
                    o.ws_message_bytes,
                    duration,
                ))?;
                let mut latencies = r.latencies;
                return Ok(Some(Row {
                    target: target.name().to_owned(),
                    throughput: r.count as f64 / r.elapsed.as_secs_f64(),
                    p50_ms: latencies.percentile_ms(50.0),
                    p99_ms: latencies.percentile_ms(99.0),
                    mean_ms: None,
                    count: r.count,
                    errors: r.errors,
                    ..Default::default()
                }));
            }
            "tcp-throughput" => {
                if target == Target::Nginx && !self.setup.nginx_has_stream() {
                    bail!("nginx has no stream module (apt-get install libnginx-mod-stream)");
                }
                let (bytes, elapsed) = self.rt.block_on(clients::tcp_push(
                    target.tcp(ports),
                    o.tcp_connections,
                    duration,
                    64 << 30,
                ))?;
                return Ok(Some(Row {
                    target: target.name().to_owned(),
                    throughput: bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64(),
                    count: bytes,
                    ..Default::default()
                }));
            }
            other => bail!("unknown scenario {other}"),
        };
        Ok(Some(Row {
            target: target.name().to_owned(),
            throughput: figures.rate(),
            p50_ms: figures.p50_ms,
            p99_ms: figures.p99_ms,
            mean_ms: figures.mean_ms,
            count: figures.requests,
            errors: figures.errors,
            ..Default::default()
        }))
    }

    /// The keep-alive load on the router, quiet and then with `churn_rate` registrations
    /// per second of new routes on NATS, with where the CPU went in each window.
    fn route_churn(&mut self) -> anyhow::Result<()> {
        let o = self.opts.clone();
        let url = format!("http://{}/", self.setup.ports.router_http());
        let nats_url = format!("nats://{}", self.setup.ports.nats());
        let backend = self.setup.ports.backend_http();
        let scratch = self.setup.files.dir.clone();
        let router_pid = self
            .proxy_pids
            .iter()
            .find(|(t, _)| *t == Target::Router)
            .map(|&(_, pid)| pid)
            .context("route-churn needs the router running")?;
        let reading = |runner: &Runner| ChurnReading {
            router: tree_cpu_time(router_pid),
            control: thread_cpu_time(router_pid, router_pid),
            backend: tree_cpu_time(runner.backend_pid),
            nats: runner.nats_pid.map(tree_cpu_time).unwrap_or_default(),
        };
        let mut quiet_rows = Vec::new();
        let mut busy_rows = Vec::new();
        let mut sent_total = 0;
        for round in 0..o.repeat.max(1) {
            if !o.warmup.is_zero() {
                self.wrk(url.clone(), o.connections, &[], o.warmup)
                    .run(&scratch)?;
            }
            let before_quiet = reading(self);
            let quiet = self
                .wrk(url.clone(), o.connections, &[], o.duration)
                .run(&scratch)?;
            let after_quiet = reading(self);
            let wrk = self.wrk(url.clone(), o.connections, &[], o.duration);
            let prefix = format!("churn{round}");
            let before_busy = reading(self);
            let (busy, sent) = std::thread::scope(|s| {
                let load = s.spawn(|| wrk.run(&scratch));
                let sent = self.rt.block_on(clients::churn(
                    &nats_url,
                    backend,
                    o.churn_rate,
                    o.duration,
                    &prefix,
                    ROUTE_HOST,
                ));
                let busy = load
                    .join()
                    .map_err(|_| anyhow::anyhow!("the wrk thread panicked"));
                (busy, sent)
            });
            let after_busy = reading(self);
            let (busy, sent) = (busy??, sent?);
            sent_total += sent;
            let quiet_cpu = after_quiet.since(&before_quiet);
            let busy_cpu = after_busy.since(&before_busy);
            self.note(churn_cpu_note(
                round + 1,
                (&quiet, &quiet_cpu),
                (&busy, &busy_cpu),
                sent,
            ));
            // The last route published must serve: the router kept up (or caught up).
            let last = format!("{prefix}-{}.{ROUTE_HOST}", sent.saturating_sub(1));
            match self.time_until_serving(self.setup.ports.router_http(), &last) {
                Ok(after) => self.note(format!(
                    "route-churn round {}: {sent} routes sent at {}/s; the last served {:.1} ms after the churn ended; p99 churn/quiet = {:.2}",
                    round + 1,
                    o.churn_rate,
                    after.as_secs_f64() * 1000.0,
                    busy.p99_ms.unwrap_or_default() / quiet.p99_ms.unwrap_or(f64::NAN)
                )),
                Err(err) => self.note(format!(
                    "route-churn round {}: the router did not catch up: {err:#}",
                    round + 1
                )),
            }
            for (target, f, cpu, rows) in [
                ("router-quiet", &quiet, &quiet_cpu, &mut quiet_rows),
                ("router+churn", &busy, &busy_cpu, &mut busy_rows),
            ] {
                eprintln!(
                    "     route-churn {target:>12}: {:>10.0} req/s  p50 {:.2} ms  p99 {:.2} ms",
                    f.rate(),
                    f.p50_ms.unwrap_or_default(),
                    f.p99_ms.unwrap_or_default()
                );
                rows.push(Row {
                    target: target.to_owned(),
                    throughput: f.rate(),
                    p50_ms: f.p50_ms,
                    p99_ms: f.p99_ms,
                    mean_ms: f.mean_ms,
                    count: f.requests,
                    errors: f.errors,
                    cpu: cpu_per_op(Some(cpu.router), cpu.backend, f.requests as f64),
                    ..Default::default()
                });
            }
        }
        let mut scenario = Scenario {
            name: "route-churn".to_owned(),
            description: format!(
                "HTTP/1.1 keep-alive (wrk -t1 -c{}) on the router, quiet vs {} router.register/s of new routes on NATS ({} sent in all)",
                o.connections, o.churn_rate, sent_total
            ),
            unit: "req/s".to_owned(),
            rows: Vec::new(),
        };
        scenario.rows.extend(median_row(quiet_rows));
        scenario.rows.extend(median_row(busy_rows));
        self.results.scenarios.push(scenario);
        Ok(())
    }

    /// Polls `host` on `addr` until it answers 200 (10 s at most): one request after
    /// another on one keep-alive connection, so the figure is as precise as a round trip
    /// (a sleep between polls would round it up to the timer's millisecond ticks).
    fn time_until_serving(&self, addr: SocketAddr, host: &str) -> anyhow::Result<Duration> {
        self.rt.block_on(async {
            let start = Instant::now();
            let mut conn = crate::http1::Connection::connect(addr).await?;
            loop {
                if conn.get(host, "/").await? == 200 {
                    return Ok(start.elapsed());
                }
                if start.elapsed() > Duration::from_secs(10) {
                    bail!("{host} does not serve after 10 s");
                }
            }
        })
    }

    /// Register-to-serving latency while wrk loads the router.
    fn register_latency(&mut self) -> anyhow::Result<()> {
        let o = self.opts.clone();
        let router = self.setup.ports.router_http();
        let url = format!("http://{router}/");
        let nats_url = format!("nats://{}", self.setup.ports.nats());
        let backend = self.setup.ports.backend_http();
        // First without load: what the router itself takes (NATS, apply, publish) plus
        // one request, for comparison with the figure under load below, where every
        // poll waits behind wrk's requests. A first route makes sure the router's
        // subscription is up (it may have just started).
        self.rt.block_on(clients::register_to_serving(
            &nats_url,
            router,
            backend,
            "latency-ready",
            ROUTE_HOST,
            1,
            Duration::ZERO,
            Duration::from_secs(5),
        ))?;
        let mut idle = self.rt.block_on(clients::register_to_serving(
            &nats_url,
            router,
            backend,
            "latency-idle",
            ROUTE_HOST,
            o.latency_samples.min(50),
            Duration::from_millis(20),
            Duration::from_secs(4),
        ))?;
        self.note(format!(
            "register-to-serving without load: p50 {:.2} ms, p99 {:.2} ms ({} samples, {} timed out)",
            idle.latencies.percentile_ms(50.0).unwrap_or(f64::NAN),
            idle.latencies.percentile_ms(99.0).unwrap_or(f64::NAN),
            idle.count,
            idle.errors
        ));
        let wrk = self.wrk(url, o.connections, &[], o.duration);
        let scratch = self.setup.files.dir.clone();
        let (load, result) = std::thread::scope(|s| {
            let load = s.spawn(|| wrk.run(&scratch));
            let result = self.rt.block_on(async {
                // Let wrk ramp up first.
                tokio::time::sleep(Duration::from_millis(300)).await;
                clients::register_to_serving(
                    &nats_url,
                    router,
                    backend,
                    "latency",
                    ROUTE_HOST,
                    o.latency_samples,
                    Duration::from_millis(20),
                    o.duration.saturating_sub(Duration::from_millis(500)),
                )
                .await
            });
            (load.join(), result)
        });
        let load = load.map_err(|_| anyhow::anyhow!("the wrk thread panicked"))??;
        let mut result = result?;
        let latency = RegisterLatency {
            samples: result.count,
            errors: result.errors,
            p50_ms: result.latencies.percentile_ms(50.0),
            p99_ms: result.latencies.percentile_ms(99.0),
            background: format!(
                "router under wrk -t1 -c{} keep-alive at {:.0} req/s, request p50 {:.2} ms, p99 {:.2} ms",
                o.connections,
                load.rate(),
                load.p50_ms.unwrap_or(f64::NAN),
                load.p99_ms.unwrap_or(f64::NAN)
            ),
        };
        eprintln!(
            "register-to-serving: p50 {:?} ms p99 {:?} ms ({} samples, {} timed out)",
            latency.p50_ms, latency.p99_ms, latency.samples, latency.errors
        );
        self.results.scale.register_to_serving = Some(latency);
        Ok(())
    }

    /// RSS of a fresh router before and after `routes` registrations over NATS.
    fn routes_rss(&mut self) -> anyhow::Result<()> {
        let routes = self.opts.routes;
        let router = self.setup.start_router(true)?;
        let addr = self.setup.ports.router_http();
        self.wait_serving(addr)?;
        std::thread::sleep(Duration::from_millis(300));
        let baseline_kib = router.tree_rss_kib();
        let nats_url = format!("nats://{}", self.setup.ports.nats());
        let status = self.setup.ports.router_status();
        let start = Instant::now();
        // Paced so that neither NATS nor the router's subscription drops messages.
        self.rt
            .block_on(clients::publish_route_set(&nats_url, routes, 50_000))?;
        // The fixture routes point at unreachable 10.x addresses, so they are never
        // requested: the route count in /varz tells when all are in the table.
        let want = routes + 1;
        let loaded = self.rt.block_on(async {
            let mut conn = crate::http1::Connection::connect(status).await?;
            loop {
                let (code, body) = conn.get_with_body("127.0.0.1", "/varz").await?;
                if code == 200 {
                    let varz: serde_json::Value = serde_json::from_slice(&body)?;
                    let urls = varz["urls"].as_u64().unwrap_or(0) as usize;
                    if urls >= want {
                        return anyhow::Ok(start.elapsed());
                    }
                    if start.elapsed() > Duration::from_secs(120) {
                        bail!("only {urls} of {want} routes after 120 s");
                    }
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })?;
        std::thread::sleep(Duration::from_millis(500));
        let loaded_kib = router.tree_rss_kib();
        let r = RoutesRss {
            routes,
            baseline_kib,
            loaded_kib,
            load_seconds: loaded.as_secs_f64(),
        };
        eprintln!(
            "routes-rss: {} routes: {:.1} MiB -> {:.1} MiB in {:.1} s",
            routes,
            baseline_kib as f64 / 1024.0,
            loaded_kib as f64 / 1024.0,
            r.load_seconds
        );
        self.results.scale.routes_rss = Some(r);
        Ok(())
    }

    /// RSS per idle keep-alive connection on a fresh router, nginx and HAProxy.
    fn idle_connections(&mut self) -> anyhow::Result<()> {
        // One descriptor per connection in each proxy (their upstream connections go
        // back to a bounded pool), and the client's own, under the open-file limit.
        let cap = self.nofile.saturating_sub(1024) as usize;
        let count = self.opts.idle_connections.min(cap);
        if count < self.opts.idle_connections {
            self.note(format!(
                "idle-connections: {count} connections instead of {} (open-file limit {} here; ulimit -n cannot go higher)",
                self.opts.idle_connections, self.nofile
            ));
        }
        // HAProxy sizes its own descriptor table as two per connection (client and
        // server side) and refuses connections past `maxconn`.
        let haproxy_maxconn = self.nofile.saturating_sub(256) / 2;
        for target in self.opts.targets.clone() {
            let mut count = count;
            let proc = match target {
                Target::Direct => continue,
                Target::Router => self.setup.start_router(false)?,
                Target::Nginx => self.setup.start_nginx(self.nofile)?,
                Target::Haproxy => {
                    let cap = (haproxy_maxconn as usize).saturating_sub(100);
                    if count > cap {
                        self.note(format!(
                            "idle-connections: haproxy measured with {cap} connections (maxconn {haproxy_maxconn} under the open-file limit {})",
                            self.nofile
                        ));
                        count = cap;
                    }
                    self.setup.start_haproxy(haproxy_maxconn)?
                }
            };
            let addr = target.http(&self.setup.ports);
            self.wait_serving(addr)?;
            // Warm up allocator and buffers with a few connections first.
            drop(
                self.rt
                    .block_on(clients::open_idle_connections(addr, ROUTE_HOST, 200, 50))?,
            );
            std::thread::sleep(Duration::from_millis(300));
            let before_kib = proc.tree_rss_kib();
            let conns = self
                .rt
                .block_on(async {
                    tokio::time::timeout(
                        Duration::from_secs(120),
                        clients::open_idle_connections(addr, ROUTE_HOST, count, 200),
                    )
                    .await
                    .map_err(|_| anyhow::anyhow!("not all open after 120 s"))?
                })
                .with_context(|| format!("opening {count} connections to {}", target.name()))?;
            std::thread::sleep(Duration::from_secs(1));
            let after_kib = proc.tree_rss_kib();
            drop(conns);
            let idle = IdleConnections {
                target: target.name().to_owned(),
                connections: count,
                before_kib,
                after_kib,
            };
            eprintln!(
                "idle-connections {:>8}: {:.0} bytes per connection ({count} connections)",
                target.name(),
                idle.per_connection_bytes()
            );
            self.results.scale.idle_connections.push(idle);
            drop(proc);
            // Let the kernel release the ports of the closed connections' listeners.
            std::thread::sleep(Duration::from_millis(300));
        }
        Ok(())
    }
}

/// CPU time used so far (or in a window) by what runs during route churn.
#[derive(Debug, Clone, Copy, Default)]
struct ChurnReading {
    /// The router, all threads.
    router: CpuTime,
    /// The router's first thread: its control loop (the NATS client, applying
    /// registrations, publishing snapshots) and its status listeners; no requests.
    control: CpuTime,
    backend: CpuTime,
    nats: CpuTime,
}

impl ChurnReading {
    /// What was used between `earlier` and this reading.
    fn since(&self, earlier: &ChurnReading) -> ChurnReading {
        ChurnReading {
            router: self.router - earlier.router,
            control: self.control - earlier.control,
            backend: self.backend - earlier.backend,
            nats: self.nats - earlier.nats,
        }
    }
}

/// Where the CPU went in one round of route churn: the router's per request, quiet and
/// under churn, and what each register message cost the router's control thread and
/// nats-server.
fn churn_cpu_note(
    round: usize,
    (quiet, quiet_cpu): (&LoadFigures, &ChurnReading),
    (busy, busy_cpu): (&LoadFigures, &ChurnReading),
    sent: u64,
) -> String {
    let per = |seconds: f64, count: u64| seconds * 1e6 / count.max(1) as f64;
    let workers = |c: &ChurnReading| c.router.total() - c.control.total();
    let seconds = busy.elapsed.as_secs_f64().max(1e-9);
    format!(
        "route-churn round {round}: router CPU per request quiet {:.1} µs (workers {:.1}), under churn {:.1} µs (workers {:.1}); per register message the router's control thread spent {:.1} µs ({:.0}% of a CPU) and nats-server {:.1} µs",
        per(quiet_cpu.router.total(), quiet.requests),
        per(workers(quiet_cpu), quiet.requests),
        per(busy_cpu.router.total(), busy.requests),
        per(workers(busy_cpu), busy.requests),
        per(
            busy_cpu.control.total()
                - quiet_cpu.control.total() * seconds / quiet.elapsed.as_secs_f64().max(1e-9),
            sent
        ),
        100.0 * busy_cpu.control.total() / seconds,
        per(busy_cpu.nats.total(), sent),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_parse_like_taskset() {
        assert_eq!(parse_cpu_list("0").unwrap(), [0]);
        assert_eq!(parse_cpu_list("0,2").unwrap(), [0, 2]);
        assert_eq!(parse_cpu_list("1-3").unwrap(), [1, 2, 3]);
        assert!(parse_cpu_list("3-1").is_err());
        assert!(parse_cpu_list("").is_err());
    }
}
