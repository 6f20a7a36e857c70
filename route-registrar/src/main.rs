//! `route-registrar --config FILE`: loads the config (exit 2 if it is invalid), connects
//! to NATS and runs the registrar until SIGTERM, SIGINT or SIGQUIT.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::Parser;
use route_registrar::Config;
use router::bus::Bus;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

/// Registers host services with the router over NATS, health-checked.
#[derive(Debug, Parser)]
#[command(name = "route-registrar", version)]
struct Cli {
    /// Config file, YAML or JSON, with Cloud Foundry route-registrar keys.
    #[arg(long, value_name = "FILE")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    let config = match Config::load(&cli.config) {
        Ok(config) => config,
        Err(e) => {
            eprintln!(
                "route-registrar: invalid config {}:\n{e}",
                cli.config.display()
            );
            return ExitCode::from(2);
        }
    };
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")
        .and_then(|runtime| runtime.block_on(serve(config)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "route-registrar failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let shutdown = CancellationToken::new();
    let mut signals = Vec::new();
    for (kind, name) in [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::quit(), "SIGQUIT"),
    ] {
        let mut stream = signal(kind).with_context(|| format!("listening for {name}"))?;
        let shutdown = shutdown.clone();
        signals.push(tokio::spawn(async move {
            if stream.recv().await.is_some() {
                tracing::info!(signal = name, "shutting down");
                shutdown.cancel();
            }
        }));
    }
    let nats = config.nats_options();
    tracing::info!(servers = ?nats.urls, "connecting to NATS");
    // Returns at once; the client keeps (re)connecting in the background forever.
    let bus = Bus::connect_nats(&nats)
        .await
        .with_context(|| format!("connecting to NATS at {}", nats.urls.join(", ")))?;
    route_registrar::run(config, bus, shutdown)
        .await
        .context("running the registrar")?;
    for task in signals {
        task.abort();
    }
    Ok(())
}

/// JSON lines on stderr; `RUST_LOG` overrides the default level (info).
fn init_logging() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(filter)
        .init();
}
