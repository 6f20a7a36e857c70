//! `bench-load`: the load benchmark (router vs nginx vs HAProxy vs direct), its backend,
//! and its clients on their own. `scripts/bench` installs the tools, builds, and runs
//! `bench-load run`; see `benches/README.md`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use benches::peers::Target;
use benches::report::Results;
use benches::run::{self, Options};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(about = "Load benchmark of the router against nginx and HAProxy")]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the scenarios and scale figures; writes results.json, results.md, results.svg.
    Run(RunArgs),
    /// The backend: HTTP (small, /1m, WebSocket echo) and a TCP sink.
    Backend {
        #[arg(long, default_value = "127.0.0.1:21000")]
        http: SocketAddr,
        #[arg(long, default_value = "127.0.0.1:21001")]
        sink: SocketAddr,
    },
    /// Re-renders the table and chart of a results.json.
    Report {
        #[arg(long, default_value = "target/bench/results.json")]
        json: PathBuf,
    },
    /// WebSocket echo load on its own.
    WsLoad {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value = "bench.local")]
        host: String,
        #[arg(long, default_value_t = 50)]
        connections: usize,
        #[arg(long, default_value_t = 64)]
        size: usize,
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
    },
    /// TCP push to a sink (the backend's, directly or through a TCP route) on its own.
    TcpLoad {
        #[arg(long)]
        addr: SocketAddr,
        #[arg(long, default_value_t = 1)]
        connections: usize,
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
    },
    /// Route churn on its own: `router.register` messages for routes
    /// `<prefix>-<i>.<domain>` on `backend`, at `rate` per second.
    Churn {
        /// NATS URL (nats://127.0.0.1:4222).
        #[arg(long)]
        nats: String,
        /// The endpoint the routes point at.
        #[arg(long)]
        backend: SocketAddr,
        #[arg(long, default_value_t = 10_000)]
        rate: u64,
        #[arg(long, default_value = "bench.localhost")]
        domain: String,
        /// Route names are `<prefix>-<i>.<domain>`: a new prefix makes new routes.
        #[arg(long, default_value = "churn")]
        prefix: String,
        #[arg(long, default_value = "10s", value_parser = duration)]
        duration: Duration,
    },
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Output directory (results, generated configs, logs).
    #[arg(long, default_value = "target/bench")]
    out: PathBuf,
    /// Measured time of each run.
    #[arg(long, default_value = "10s", value_parser = duration)]
    duration: Duration,
    /// Unmeasured warm-up before each wrk/h2load run (0s: none).
    #[arg(long, default_value = "1s", value_parser = duration)]
    warmup: Duration,
    /// wrk connections for the small-response scenarios.
    #[arg(long, default_value_t = 50)]
    connections: usize,
    /// wrk connections for 1 MiB responses.
    #[arg(long, default_value_t = 10)]
    large_connections: usize,
    /// h2load connections.
    #[arg(long, default_value_t = 10)]
    h2_connections: usize,
    /// h2load concurrent streams per connection.
    #[arg(long, default_value_t = 10)]
    h2_streams: usize,
    /// WebSocket connections.
    #[arg(long, default_value_t = 50)]
    ws_connections: usize,
    /// WebSocket message size in bytes.
    #[arg(long, default_value_t = 64)]
    ws_message_bytes: usize,
    /// TCP connections pushing to the sink.
    #[arg(long, default_value_t = 1)]
    tcp_connections: usize,
    /// router.register messages per second during the churn run.
    #[arg(long, default_value_t = 10_000)]
    churn_rate: u64,
    /// Routes registered for the RSS figure.
    #[arg(long, default_value_t = 100_000)]
    routes: usize,
    /// Idle keep-alive connections for the per-connection RSS figure.
    #[arg(long, default_value_t = 10_000)]
    idle_connections: usize,
    /// Register-to-serving samples (at most; bounded by --duration).
    #[arg(long, default_value_t = 200)]
    latency_samples: usize,
    /// First port; the run uses base..base+40 on 127.0.0.1.
    #[arg(long, default_value_t = 21000)]
    port_base: u16,
    /// CPUs of the load generators and NATS (taskset -c).
    #[arg(long, default_value = "0")]
    load_cpus: String,
    /// CPUs of the proxy under test and the backend (taskset -c).
    #[arg(long, default_value = "1")]
    server_cpus: String,
    /// The router binary (release build).
    #[arg(long, default_value = "target/release/router")]
    router_bin: PathBuf,
    /// The router's worker_threads.
    #[arg(long, default_value_t = 1)]
    router_workers: usize,
    /// Rounds per scenario, targets interleaved; the median round is reported.
    #[arg(long, default_value_t = 1)]
    repeat: usize,
    /// nginx and HAProxy without the forwarding headers the router adds (X-Forwarded-*,
    /// request id): their stock proxy setup.
    #[arg(long)]
    no_peer_headers: bool,
    /// Only these scenarios / figures (comma-separated); all by default.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Targets (comma-separated from direct, router, nginx, haproxy).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "direct,router,nginx,haproxy"
    )]
    targets: Vec<String>,
}

fn duration(text: &str) -> Result<Duration, String> {
    router::config::parse_duration(text)
}

fn main() -> ExitCode {
    match real_main() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("bench-load: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main() -> anyhow::Result<()> {
    let args = Args::parse();
    match args.command {
        Command::Run(run_args) => run_command(run_args),
        Command::Backend { http, sink } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(benches::backend::serve(http, sink)),
        Command::Report { json } => {
            let text =
                std::fs::read_to_string(&json).with_context(|| json.display().to_string())?;
            let results: Results = serde_json::from_str(&text)?;
            let dir = json.parent().map(PathBuf::from).unwrap_or_default();
            write_outputs(&results, &dir)
        }
        Command::WsLoad {
            addr,
            host,
            connections,
            size,
            duration,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let mut r = rt.block_on(benches::clients::websocket_echo(
                addr,
                &host,
                connections,
                size,
                duration,
            ))?;
            println!(
                "{:.0} msg/s, p50 {:?} ms, p99 {:?} ms, {} errors",
                r.count as f64 / r.elapsed.as_secs_f64(),
                r.latencies.percentile_ms(50.0),
                r.latencies.percentile_ms(99.0),
                r.errors
            );
            Ok(())
        }
        Command::TcpLoad {
            addr,
            connections,
            duration,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let (bytes, elapsed) = rt.block_on(benches::clients::tcp_push(
                addr,
                connections,
                duration,
                64 << 30,
            ))?;
            println!(
                "{:.0} MiB/s ({bytes} bytes in {elapsed:?})",
                bytes as f64 / (1024.0 * 1024.0) / elapsed.as_secs_f64()
            );
            Ok(())
        }
        Command::Churn {
            nats,
            backend,
            rate,
            domain,
            prefix,
            duration,
        } => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            let sent = rt.block_on(benches::clients::churn(
                &nats, backend, rate, duration, &prefix, &domain,
            ))?;
            println!("{sent} router.register messages sent");
            Ok(())
        }
    }
}

fn run_command(a: RunArgs) -> anyhow::Result<()> {
    let targets = a
        .targets
        .iter()
        .map(|t| match t.as_str() {
            "direct" => Ok(Target::Direct),
            "router" => Ok(Target::Router),
            "nginx" => Ok(Target::Nginx),
            "haproxy" => Ok(Target::Haproxy),
            other => Err(anyhow::anyhow!(
                "unknown target {other:?} (direct, router, nginx, haproxy)"
            )),
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let command = std::env::var("BENCH_COMMAND")
        .unwrap_or_else(|_| std::env::args().collect::<Vec<_>>().join(" "));
    let opts = Options {
        out: a.out.clone(),
        duration: a.duration,
        warmup: a.warmup,
        connections: a.connections,
        large_connections: a.large_connections,
        h2_connections: a.h2_connections,
        h2_streams: a.h2_streams,
        ws_connections: a.ws_connections,
        ws_message_bytes: a.ws_message_bytes,
        tcp_connections: a.tcp_connections,
        churn_rate: a.churn_rate,
        routes: a.routes,
        idle_connections: a.idle_connections,
        latency_samples: a.latency_samples,
        port_base: a.port_base,
        load_cpus: a.load_cpus,
        server_cpus: a.server_cpus,
        router_bin: a.router_bin,
        router_workers: a.router_workers,
        repeat: a.repeat,
        peer_headers: !a.no_peer_headers,
        only: a.only,
        targets,
    };
    let results = run::run(opts, command)?;
    write_outputs(&results, &a.out)
}

fn write_outputs(results: &Results, dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    let table = results.table();
    println!("\n{table}");
    std::fs::write(
        dir.join("results.json"),
        serde_json::to_string_pretty(results)?,
    )?;
    std::fs::write(dir.join("results.md"), &table)?;
    std::fs::write(dir.join("results.svg"), results.svg())?;
    println!(
        "wrote {0}/results.json, {0}/results.md, {0}/results.svg",
        dir.display()
    );
    Ok(())
}
