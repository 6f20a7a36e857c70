//! The multi-machine shape on a real NATS server: controller, two agents (droplets over
//! the API) and the router, each with its own NATS connection.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use controller_lite::agent::{self, AgentConfig, DropletSource};
use controller_lite::cli::{self, PushOptions};
use controller_lite::client::{ApiClient, get_with_host};
use controller_lite::controller::Controller;
use router::bus::{Bus, NatsOptions};
use router::config::NatsHost;
use tokio_util::sync::CancellationToken;

use crate::support::{WAIT, eventually, hello_dir};

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

async fn start_agent(
    nats: &NatsServer,
    id: &str,
    zone: &str,
    api: &ApiClient,
    dir: &std::path::Path,
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
    let api = ApiClient::new(&api_url, Some(token));

    let router_config = router::Config {
        worker_threads: 1,
        nats: router::config::NatsConfig {
            hosts: vec![NatsHost {
                hostname: "127.0.0.1".to_owned(),
                port: nats.port,
            }],
            ..Default::default()
        },
        ..router::Config::default()
    };
    let listeners = router::Listeners::bind_ephemeral().unwrap();
    let router_addr = listeners.http_addr().unwrap();
    let router = router::server::start(router_config, listeners, None)
        .await
        .unwrap();

    let (stop_a, task_a) = start_agent(&nats, "agent-a", "z1", &api, dir.path()).await;
    let (_stop_b, _task_b) = start_agent(&nats, "agent-b", "z2", &api, dir.path()).await;
    eventually("both agents known to the controller", || async {
        (controller.health().agents().len() == 2).then_some(())
    })
    .await;

    let opts = PushOptions {
        name: "spread".to_owned(),
        path: hello_dir(),
        command: None,
        instances: Some(4),
        memory_mb: Some(128),
        route: None,
        no_route: false,
        timeout: WAIT,
    };
    let guid = cli::push(&api, &opts, &mut std::io::sink()).await.unwrap()["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    let stats = |api: ApiClient, guid: String| async move {
        let v: serde_json::Value = api
            .get(&format!("/v3/processes/{guid}/stats"))
            .await
            .unwrap();
        v["resources"].as_array().cloned().unwrap_or_default()
    };
    let mut per_agent: BTreeMap<String, usize> = BTreeMap::new();
    for s in stats(api.clone(), guid.clone()).await {
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
        let s = stats(api.clone(), guid.clone()).await;
        s.iter()
            .all(|i| i["state"] == "RUNNING" && i["agent"] == "agent-b")
            .then_some(())
    })
    .await;
    reach_all().await;

    shutdown.cancel();
    _stop_b.cancel();
    _task_b.await.unwrap();
    router.shutdown();
    router.wait().await.unwrap();
}
