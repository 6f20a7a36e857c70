//! The multi-machine shape on a real NATS server: controller, two agents (droplets over
//! the API) and the router, each with its own NATS connection. The agents run in-process
//! (stopped gracefully) or as `controller-lite agent` processes (killed with SIGKILL).

use std::collections::{BTreeMap, BTreeSet};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use controller_lite::agent::{self, AgentConfig, DropletSource};
use controller_lite::cli;
use controller_lite::client::{ApiClient, get_with_host};
use controller_lite::controller::Controller;
use controller_lite::health_manager::AGENT_TIMEOUT;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use router::bus::{Bus, NatsOptions};
use router::config::NatsHost;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use crate::support::{WAIT, eventually, hello_push};

/// A real `nats-server` on a free port, killed on drop.
struct NatsServer {
    child: Child,
    port: u16,
}

impl NatsServer {
    async fn start() -> NatsServer {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is needed for this test: apt-get install nats-server");
        let server = NatsServer { child, port };
        eventually("nats-server accepting connections", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    async fn bus(&self, name: &str) -> Bus {
        let bus = Bus::connect_nats(&NatsOptions {
            urls: vec![self.url()],
            name: name.to_owned(),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut state = bus.state();
        tokio::time::timeout(WAIT, state.wait_for(|s| s.connected))
            .await
            .unwrap()
            .unwrap();
        bus
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The controller side of a multi-machine platform: the controller (in-process: store,
/// API on a free port, convergence loop) and a router, both on `nats`.
struct Cluster {
    controller: Arc<Controller>,
    api: ApiClient,
    api_url: String,
    token: String,
    router: router::RouterHandle,
    router_addr: SocketAddr,
    shutdown: CancellationToken,
    dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the controller and a router with `router_config` (its NATS set to `nats`).
    async fn start(nats: &NatsServer, mut router_config: router::Config) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let shutdown = CancellationToken::new();
        let controller: Arc<Controller> =
            Controller::open(&dir.path().join("controller"), nats.bus("controller").await).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api_url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(controller_lite::api::serve(
            controller.clone(),
            listener,
            shutdown.clone(),
        ));
        tokio::spawn(controller.clone().run(shutdown.clone()));
        let token = std::fs::read_to_string(&controller.admin_token_path)
            .unwrap()
            .trim()
            .to_owned();
        let api = ApiClient::new(&api_url, Some(token.clone()));

        router_config.worker_threads = 1;
        router_config.nats = router::config::NatsConfig {
            hosts: vec![NatsHost {
                hostname: "127.0.0.1".to_owned(),
                port: nats.port,
            }],
            ..Default::default()
        };
        let listeners = router::Listeners::bind_ephemeral().unwrap();
        let router_addr = listeners.http_addr().unwrap();
        let router = router::server::start(router_config, listeners, None)
            .await
            .unwrap();
        Cluster {
            controller,
            api,
            api_url,
            token,
            router,
            router_addr,
            shutdown,
            dir,
        }
    }

    async fn wait_for_agents(&self, ids: &[&str]) {
        eventually(&format!("exactly agents {ids:?} known"), || async {
            (self.controller.health().agents() == ids).then_some(())
        })
        .await;
    }

    /// Pushes the example app as `name` with `instances` instances (route
    /// `NAME.localhost`); returns its GUID.
    async fn push_hello(&self, name: &str, instances: u32) -> String {
        let opts = hello_push(name, instances);
        cli::push(&self.api, &opts, &mut std::io::sink())
            .await
            .unwrap()["guid"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    async fn stats(&self, guid: &str) -> Vec<Value> {
        let v: Value = self
            .api
            .get(&format!("/v3/processes/{guid}/stats"))
            .await
            .unwrap();
        v["resources"].as_array().cloned().unwrap_or_default()
    }

    /// `(instance GUID, availability zone)` of every endpoint the router has for `host`.
    fn endpoints(&self, host: &str) -> BTreeSet<(String, String)> {
        self.router
            .registry()
            .dump(tokio::time::Instant::now())
            .iter()
            .filter(|(route, _)| route.split('/').next() == Some(host))
            .flat_map(|(_, endpoints)| endpoints.iter())
            .map(|(e, _)| {
                (
                    e.data.instance_id.clone(),
                    e.data.availability_zone.to_string(),
                )
            })
            .collect()
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.router.shutdown();
        self.router.wait().await.unwrap();
    }
}

async fn start_agent(
    nats: &NatsServer,
    id: &str,
    zone: &str,
    api: &ApiClient,
    dir: &Path,
) -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let config = AgentConfig {
        id: id.to_owned(),
        zone: zone.to_owned(),
        host: "127.0.0.1".to_owned(),
        memory_mb: 4096,
        work_dir: dir.join(id),
        droplets: DropletSource::Api {
            client: Box::new(api.clone()),
            cache: dir.join(id).join("droplets"),
        },
        startup_timeout: Duration::from_secs(20),
        heartbeat_interval: Duration::from_secs(1),
    };
    let bus = nats.bus(id).await;
    let stop = CancellationToken::new();
    let s = stop.clone();
    let task = tokio::spawn(async move { agent::run(config, bus, s).await.unwrap() });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_spread_over_two_agents_on_nats_and_survive_one_stopping() {
    let nats = NatsServer::start().await;
    let cluster = Cluster::start(&nats, router::Config::default()).await;
    let api = cluster.api.clone();
    let router_addr = cluster.router_addr;

    let (stop_a, task_a) = start_agent(&nats, "agent-a", "z1", &api, cluster.dir.path()).await;
    let (stop_b, task_b) = start_agent(&nats, "agent-b", "z2", &api, cluster.dir.path()).await;
    cluster.wait_for_agents(&["agent-a", "agent-b"]).await;

    let guid = cluster.push_hello("spread", 4).await;
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for s in cluster.stats(&guid).await {
        *per_agent
            .entry(s["agent"].as_str().unwrap().to_owned())
            .or_default() += 1;
    }
    assert_eq!(
        per_agent.values().copied().collect::<Vec<_>>(),
        [2, 2],
        "{per_agent:?}"
    );

    let reach_all = || async {
        eventually("all 4 instances through the router", || async {
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..12 {
                let (status, body) =
                    get_with_host(&format!("http://{router_addr}/"), "spread.localhost")
                        .await
                        .unwrap();
                if status != 200 {
                    return None;
                }
                seen.insert(body);
            }
            (seen.len() == 4).then_some(())
        })
        .await;
    };
    reach_all().await;

    // One agent goes away: its instances move to the other once it is declared dead.
    stop_a.cancel();
    task_a.await.unwrap();
    eventually("all instances running on agent-b", || async {
        let s = cluster.stats(&guid).await;
        s.iter()
            .all(|i| i["state"] == "RUNNING" && i["agent"] == "agent-b")
            .then_some(())
    })
    .await;
    reach_all().await;

    stop_b.cancel();
    task_b.await.unwrap();
    cluster.stop().await;
}

/// The agent binary's heartbeat interval (`controller-lite agent`, in `main.rs`).
const BINARY_HEARTBEAT: Duration = Duration::from_secs(2);

/// A `controller-lite agent` process, as on its own machine. Killed with SIGKILL on
/// drop, and so are any of its instances that outlive it (they should not), so a failing
/// test leaves nothing behind; its log is printed then, for the diagnosis.
struct AgentProcess {
    id: String,
    child: Child,
    work_dir: PathBuf,
    log: PathBuf,
}

impl AgentProcess {
    fn spawn(nats: &NatsServer, cluster: &Cluster, id: &str, zone: &str) -> AgentProcess {
        let work_dir = cluster.dir.path().join(id);
        std::fs::create_dir_all(&work_dir).unwrap();
        let log = work_dir.join("agent.log");
        let child = Command::new(env!("CARGO_BIN_EXE_controller-lite"))
            .args(["--api", &cluster.api_url, "agent", "--nats", &nats.url()])
            .args(["--id", id, "--zone", zone, "--host", "127.0.0.1"])
            .arg("--work-dir")
            .arg(&work_dir)
            // The environment rather than `--token`: not visible in `ps`, and the agent
            // keeps it from its instances.
            .env("CONTROLLER_LITE_TOKEN", &cluster.token)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        AgentProcess {
            id: id.to_owned(),
            child,
            work_dir,
            log,
        }
    }

    /// SIGKILL, as a machine that dies: no goodbye, no clean-up of its own.
    fn kill(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// Ctrl-C (SIGINT): the agent stops its instances and says goodbye.
    async fn interrupt(&mut self) {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).unwrap());
        kill(pid, Signal::SIGINT).unwrap();
        let what = format!("{} exiting after SIGINT", self.id);
        let child = &mut self.child;
        let status = eventually(&what, || std::future::ready(child.try_wait().unwrap())).await;
        assert!(status.success(), "{}: {status}", self.id);
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            eprintln!("--- log of {} ---\n{log}--- end of log ---", self.id);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Instances run in directories under the agent's work directory, which is unique
        // to this test: only they are signalled, never a recorded pid that may be reused.
        for pid in processes_under(&self.work_dir) {
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
    }
}

/// Live processes whose working directory lies under `dir`.
fn processes_under(dir: &Path) -> Vec<i32> {
    live_processes()
        .filter(|(_, proc_dir)| {
            std::fs::read_link(proc_dir.join("cwd")).is_ok_and(|cwd| cwd.starts_with(dir))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// Every process but zombies (an orphan's zombie lingers until an init that reaps it
/// does), with its `/proc` directory.
fn live_processes() -> impl Iterator<Item = (i32, PathBuf)> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| {
            let pid = entry.file_name().to_string_lossy().parse::<i32>().ok()?;
            // Processes come and go while we scan: unreadable means gone.
            let stat = std::fs::read_to_string(entry.path().join("stat")).ok()?;
            let (_, rest) = stat.rsplit_once(") ")?;
            (!rest.starts_with('Z')).then(|| (pid, entry.path()))
        })
}

/// Live processes whose environment holds `CF_INSTANCE_GUID=guid`: an instance's shell,
/// its watchdog and the app, wherever they were reparented.
fn instance_processes(guid: &str) -> Vec<i32> {
    let needle = format!("CF_INSTANCE_GUID={guid}");
    live_processes()
        .filter(|(_, proc_dir)| {
            std::fs::read(proc_dir.join("environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == needle.as_bytes()))
        })
        .map(|(pid, _)| pid)
        .collect()
}

/// GET `/` through the router with `Host: host`: the status, the body and the
/// answering instance's GUID (the example app's `X-Instance-Guid` header).
async fn get_instance(router: SocketAddr, host: &str) -> (StatusCode, String, String) {
    let client: Client<_, Full<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
    let req = http::Request::get(format!("http://{router}/"))
        .header(http::header::HOST, host)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    let status = resp.status();
    let guid = resp
        .headers()
        .get("x-instance-guid")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned(), guid)
}

/// Issue #6 with real machines in mind: the agents are separate processes, and one dies
/// abruptly (SIGKILL). Its instances die with it, as containers with a Diego cell; the
/// controller notices the missed heartbeats and re-places them on the survivor; the
/// router forgets the dead endpoints once their registrations are no longer refreshed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_move_off_an_agent_process_killed_with_sigkill() {
    let nats = NatsServer::start().await;
    // Agents refresh registrations every second (learned from the router's greeting) and
    // the router drops endpoints not refreshed for 5 s, checking every second: the dead
    // agent's routes go within seconds rather than gorouter's default 2 minutes.
    let router_config = router::Config {
        start_response_delay_interval: Duration::from_secs(1),
        droplet_stale_threshold: Duration::from_secs(5),
        prune_stale_droplets_interval: Duration::from_secs(1),
        ..router::Config::default()
    };
    let cluster = Cluster::start(&nats, router_config).await;
    let host = "survivor.localhost";

    let mut agent_a = AgentProcess::spawn(&nats, &cluster, "agent-a", "z1");
    let mut agent_b = AgentProcess::spawn(&nats, &cluster, "agent-b", "z2");
    cluster.wait_for_agents(&["agent-a", "agent-b"]).await;

    // Spread: two instances per agent, each registered in its agent's zone.
    let guid = cluster.push_hello("survivor", 4).await;
    let before = cluster.stats(&guid).await;
    let on = |agent: &str| -> BTreeSet<String> {
        before
            .iter()
            .filter(|s| s["agent"] == agent)
            .map(|s| s["instance_guid"].as_str().unwrap().to_owned())
            .collect()
    };
    let (doomed, spared) = (on("agent-a"), on("agent-b"));
    assert_eq!((doomed.len(), spared.len()), (2, 2), "{before:#?}");
    for guid in &doomed {
        assert!(
            !instance_processes(guid).is_empty(),
            "instance {guid} has processes"
        );
    }
    let zoned = |guids: &BTreeSet<String>, zone: &str| -> BTreeSet<(String, String)> {
        guids.iter().map(|g| (g.clone(), zone.to_owned())).collect()
    };
    let mut expected = zoned(&doomed, "z1");
    expected.extend(zoned(&spared, "z2"));
    eventually("the router has the 4 endpoints in their zones", || async {
        (cluster.endpoints(host) == expected).then_some(())
    })
    .await;
    let all: BTreeSet<String> = doomed.union(&spared).cloned().collect();
    eventually("every instance answers through the router", || async {
        let mut seen = BTreeSet::new();
        for _ in 0..12 {
            let (status, _, guid) = get_instance(cluster.router_addr, host).await;
            if status != StatusCode::OK {
                return None;
            }
            seen.insert(guid);
        }
        (seen == all).then_some(())
    })
    .await;

    agent_a.kill();
    let killed_at = tokio::time::Instant::now();

    // Its instances die with it: nothing left to answer on stale routes, nor to leak.
    eventually("agent-a's instance processes gone", || async {
        doomed
            .iter()
            .all(|g| instance_processes(g).is_empty())
            .then_some(())
    })
    .await;
    // Nothing refreshes their registrations any more: the router prunes them.
    eventually("the router forgot agent-a's endpoints", || async {
        let left = cluster.endpoints(host);
        left.iter().all(|(g, _)| !doomed.contains(g)).then_some(())
    })
    .await;

    // SIGKILL leaves no goodbye: only the heartbeat timeout can tell the controller.
    cluster.wait_for_agents(&["agent-b"]).await;
    let noticed_after = killed_at.elapsed();
    assert!(
        noticed_after + BINARY_HEARTBEAT >= AGENT_TIMEOUT,
        "agent-a dropped after {noticed_after:?}: sooner than its heartbeats could lapse"
    );

    // Re-placed on the survivor: 4 RUNNING, the 2 untouched ones among them.
    let after = eventually("4 instances RUNNING on agent-b", || async {
        let s = cluster.stats(&guid).await;
        (s.len() == 4
            && s.iter()
                .all(|i| i["state"] == "RUNNING" && i["agent"] == "agent-b"))
        .then_some(s)
    })
    .await;
    let live: BTreeSet<String> = after
        .iter()
        .map(|s| s["instance_guid"].as_str().unwrap().to_owned())
        .collect();
    assert!(live.is_superset(&spared), "{live:?} keeps {spared:?}");
    assert!(live.is_disjoint(&doomed), "{live:?} after {doomed:?} died");

    eventually(
        "the router has exactly the 4 live endpoints, in z2",
        || async { (cluster.endpoints(host) == zoned(&live, "z2")).then_some(()) },
    )
    .await;
    // Every request answers 200, from a live instance, and all 4 indices answer.
    eventually("20 requests in a row served by live instances", || async {
        let mut bodies = BTreeSet::new();
        for _ in 0..20 {
            let (status, body, guid) = get_instance(cluster.router_addr, host).await;
            if status != StatusCode::OK || !live.contains(&guid) {
                return None;
            }
            bodies.insert(body);
        }
        (bodies.len() == 4).then_some(())
    })
    .await;

    // A graceful stop of the survivor takes its instances down too.
    agent_b.interrupt().await;
    for guid in &live {
        assert!(
            instance_processes(guid).is_empty(),
            "instance {guid} outlived agent-b's graceful stop"
        );
    }
    cluster.stop().await;
}
