//! `controller-lite`: the platform (`up`, `controller`, `agent`) and its client commands.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use controller_lite::agent::{self, AgentConfig, DropletSource};
use controller_lite::cli::{self, PushOptions};
use controller_lite::client::ApiClient;
use controller_lite::controller::Controller;
use controller_lite::up::{self, Up, UpOptions};
use router::bus::{Bus, NatsOptions};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "controller-lite",
    version,
    about = "A small Cloud-Foundry-like platform around the router"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Args)]
struct Global {
    /// API URL for client commands.
    #[arg(long, global = true, default_value = "http://127.0.0.1:9022")]
    api: String,
    /// Bearer token (else $CONTROLLER_LITE_TOKEN, else ./data/admin-token).
    #[arg(long, global = true)]
    token: Option<String>,
    /// JSON output for scripts.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Subcommand)]
enum Command {
    /// Controller, agent and router in one process.
    Up {
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        #[arg(long)]
        nats: Option<String>,
        #[arg(long, default_value_t = 9022)]
        api_port: u16,
        #[arg(long, default_value_t = 8081)]
        router_port: u16,
        /// Also push the example app `hello` (3 instances, hello.localhost).
        #[arg(long)]
        demo: bool,
    },
    /// The controller alone (API, store, health manager), on NATS.
    Controller {
        #[arg(long, default_value = "./data")]
        data: PathBuf,
        #[arg(long)]
        nats: String,
        #[arg(long, default_value_t = 9022)]
        api_port: u16,
    },
    /// An agent alone, on NATS; droplets come from the controller's API.
    Agent {
        #[arg(long)]
        nats: String,
        /// Unique agent id.
        #[arg(long)]
        id: String,
        #[arg(long, default_value = "")]
        zone: String,
        /// Address routers use to reach this machine's instances.
        #[arg(long, default_value = "127.0.0.1")]
        host: String,
        #[arg(long, default_value_t = 4096)]
        memory_mb: u64,
        #[arg(long, default_value = "./agent-data")]
        work_dir: PathBuf,
    },
    /// Push an app: upload, stage, start, wait until running.
    Push {
        name: String,
        #[arg(long, short = 'p')]
        path: PathBuf,
        #[arg(long, short = 'c')]
        command: Option<String>,
        #[arg(short = 'i')]
        instances: Option<u32>,
        #[arg(short = 'm')]
        memory_mb: Option<u32>,
        /// Route `HOST[/PATH]` (default NAME.localhost).
        #[arg(long)]
        route: Option<String>,
        #[arg(long)]
        no_route: bool,
        /// Seconds to wait for every instance to run.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
    },
    /// List apps.
    Apps,
    /// Show one app and its instances.
    App {
        name: String,
    },
    /// Change the instance count (and memory, which restarts).
    Scale {
        name: String,
        #[arg(short = 'i')]
        instances: Option<u32>,
        #[arg(short = 'm')]
        memory_mb: Option<u32>,
    },
    Start {
        name: String,
    },
    Stop {
        name: String,
    },
    Restart {
        name: String,
    },
    /// Delete an app (-r: and its routes).
    Delete {
        name: String,
        #[arg(short = 'r')]
        routes: bool,
    },
    /// Map HOST[/PATH] to an app.
    MapRoute {
        name: String,
        route: String,
    },
    /// Show logs (follow, or --recent).
    Logs {
        name: String,
        #[arg(long)]
        recent: bool,
    },
    /// Create an API token (read-only unless --admin).
    CreateToken {
        #[arg(long)]
        admin: bool,
    },
}

fn token(global: &Global) -> Result<Option<String>> {
    if let Some(t) = &global.token {
        return Ok(Some(t.clone()));
    }
    if let Ok(t) = std::env::var("CONTROLLER_LITE_TOKEN") {
        return Ok(Some(t));
    }
    match std::fs::read_to_string("./data/admin-token") {
        Ok(t) => Ok(Some(t.trim().to_owned())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).context("reading ./data/admin-token"),
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> std::process::ExitCode {
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(Cli::parse())) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain of contexts, without a backtrace: these are user-facing errors.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    let out = &mut std::io::stdout();
    match cli.command {
        Command::Up {
            data,
            nats,
            api_port,
            router_port,
            demo,
        } => {
            init_logging();
            let mut opts = UpOptions::new(&data);
            opts.nats = nats;
            opts.api_port = api_port;
            opts.router_port = router_port;
            let up = Up::start(&opts).await.context("starting controller-lite")?;
            writeln!(out, "API:         http://{}", up.api_addr)?;
            writeln!(out, "router:      http://{}", up.router_addr)?;
            writeln!(out, "admin token: {}", up.admin_token_path.display())?;
            if demo {
                up::push_demo(&up, &data, out)
                    .await
                    .context("pushing the demo app")?;
                writeln!(out, "\nThe demo app runs 3 instances; try:")?;
                writeln!(
                    out,
                    "  curl -H 'Host: hello.localhost' http://127.0.0.1:{}/",
                    up.router_addr.port()
                )?;
            }
            out.flush()?;
            up.run_until_signalled().await;
        }
        Command::Controller {
            data,
            nats,
            api_port,
        } => {
            init_logging();
            let bus = connect(&nats, "controller-lite-controller").await?;
            let controller = Controller::open(&data, bus).context("opening the data directory")?;
            let listener = tokio::net::TcpListener::bind(("0.0.0.0", api_port))
                .await
                .with_context(|| format!("listening on port {api_port}"))?;
            writeln!(
                out,
                "API: http://127.0.0.1:{api_port}\nadmin token: {}",
                controller.admin_token_path.display()
            )?;
            let shutdown = CancellationToken::new();
            let api = tokio::spawn(controller_lite::api::serve(
                controller.clone(),
                listener,
                shutdown.clone(),
            ));
            let converge = tokio::spawn(controller.run(shutdown.clone()));
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            api.await.context("API task")?.context("API server")?;
            converge
                .await
                .context("controller task")?
                .context("controller loop")?;
        }
        Command::Agent {
            nats,
            id,
            zone,
            host,
            memory_mb,
            work_dir,
        } => {
            init_logging();
            let bus = connect(&nats, &format!("controller-lite-agent-{id}")).await?;
            let client = Box::new(ApiClient::new(&cli.global.api, token(&cli.global)?));
            let config = AgentConfig {
                droplets: DropletSource::Api {
                    client,
                    cache: work_dir.join("droplets"),
                },
                id,
                zone,
                host,
                memory_mb,
                work_dir,
                startup_timeout: Duration::from_secs(60),
                heartbeat_interval: Duration::from_secs(2),
            };
            let shutdown = CancellationToken::new();
            let agent = tokio::spawn(agent::run(config, bus, shutdown.clone()));
            let _ = tokio::signal::ctrl_c().await;
            shutdown.cancel();
            agent.await.context("agent task")?.context("agent")?;
        }
        command => client_command(command, &cli.global, out).await?,
    }
    Ok(())
}

async fn connect(url: &str, name: &str) -> Result<Bus> {
    Bus::connect_nats(&NatsOptions {
        urls: vec![url.to_owned()],
        name: name.to_owned(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("connecting to NATS at {url}"))
}

async fn client_command(command: Command, global: &Global, out: &mut dyn Write) -> Result<()> {
    let client = ApiClient::new(&global.api, token(global)?);
    let json = global.json;
    let print_json = |v: &Value, out: &mut dyn Write| -> Result<()> {
        writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
        Ok(())
    };
    match command {
        Command::Push {
            name,
            path,
            command,
            instances,
            memory_mb,
            route,
            no_route,
            timeout,
        } => {
            let opts = PushOptions {
                name: name.clone(),
                path,
                command,
                instances,
                memory_mb,
                route,
                no_route,
                timeout: Duration::from_secs(timeout),
            };
            let mut sink = std::io::sink();
            let progress: &mut dyn Write = if json { &mut sink } else { out };
            let summary = cli::push(&client, &opts, progress)
                .await
                .with_context(|| format!("pushing {name}"))?;
            if json {
                print_json(&summary, out)?;
            } else {
                writeln!(out)?;
                cli::print_summary(&summary, out)?;
            }
        }
        Command::Apps => {
            let rows = cli::apps(&client).await.context("listing apps")?;
            if json {
                print_json(&Value::Array(rows), out)?;
            } else {
                cli::print_apps(&rows, out)?;
            }
        }
        Command::App { name } => {
            let summary = cli::app(&client, &name)
                .await
                .with_context(|| format!("showing {name}"))?;
            if json {
                print_json(&summary, out)?;
            } else {
                cli::print_summary(&summary, out)?;
            }
        }
        Command::Scale {
            name,
            instances,
            memory_mb,
        } => {
            let process = cli::scale(&client, &name, instances, memory_mb)
                .await
                .with_context(|| format!("scaling {name}"))?;
            if json {
                print_json(&process, out)?;
            } else {
                writeln!(
                    out,
                    "Scaled {name}: {} instances, {} MB",
                    process["instances"], process["memory_in_mb"]
                )?;
            }
        }
        Command::Start { name } => act(&client, &name, "start", json, out).await?,
        Command::Stop { name } => act(&client, &name, "stop", json, out).await?,
        Command::Restart { name } => act(&client, &name, "restart", json, out).await?,
        Command::Delete { name, routes } => {
            cli::delete(&client, &name, routes)
                .await
                .with_context(|| format!("deleting {name}"))?;
            writeln!(out, "Deleted {name}")?;
        }
        Command::MapRoute { name, route } => {
            let app = cli::find_app(&client, &name)
                .await?
                .with_context(|| format!("app {name} not found"))?;
            let guid = app["guid"].as_str().unwrap_or_default().to_owned();
            let r = cli::map_route(&client, &guid, &route)
                .await
                .with_context(|| format!("mapping {route} to {name}"))?;
            if json {
                print_json(&r, out)?;
            } else {
                writeln!(
                    out,
                    "Mapped {} to {name}",
                    r["url"].as_str().unwrap_or(&route)
                )?;
            }
        }
        Command::Logs { name, recent } => {
            cli::logs(&client, &name, recent, json, out)
                .await
                .with_context(|| format!("logs of {name}"))?;
        }
        Command::CreateToken { admin } => {
            let scope = if admin { "admin" } else { "read" };
            let t: Value = client
                .post("/v3/tokens", &serde_json::json!({"scope": scope}))
                .await
                .context("creating a token")?;
            if json {
                print_json(&t, out)?;
            } else {
                writeln!(out, "{}", t["token"].as_str().unwrap_or_default())?;
            }
        }
        Command::Up { .. } | Command::Controller { .. } | Command::Agent { .. } => {}
    }
    Ok(())
}

async fn act(
    client: &ApiClient,
    name: &str,
    action: &str,
    json: bool,
    out: &mut dyn Write,
) -> Result<()> {
    let app = cli::action(client, name, action)
        .await
        .with_context(|| format!("{action} {name}"))?;
    if json {
        writeln!(out, "{}", serde_json::to_string_pretty(&app)?)?;
    } else {
        writeln!(
            out,
            "{name}: {}",
            app["state"].as_str().unwrap_or_default().to_lowercase()
        )?;
    }
    Ok(())
}
