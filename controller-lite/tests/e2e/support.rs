//! Shared helpers: a platform per test on free ports, polling with a deadline, requests
//! through the router.

use std::collections::BTreeSet;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use controller_lite::cli::{self, PushOptions};
use controller_lite::client::{ApiClient, get_with_host};
use controller_lite::up::{Up, UpOptions};
use http::StatusCode;
use serde_json::Value;

/// Generous bound for anything involving process starts on a loaded 2-core machine.
pub const WAIT: Duration = Duration::from_secs(30);

/// A running platform with its own data directory.
pub struct Platform {
    pub up: Up,
    pub data: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

fn require_python() {
    let ok = std::process::Command::new("python3")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "python3 is needed to run the example app: install it (apt-get install python3)"
    );
}

pub fn options(data: &Path) -> UpOptions {
    let mut opts = UpOptions::new(data);
    opts.api_port = 0;
    opts.router_port = 0;
    opts.loopback_only = true;
    opts.router_workers = 1;
    opts.agent_memory_mb = 16 * 1024;
    opts.startup_timeout = Duration::from_secs(20);
    opts
}

impl Platform {
    /// A fresh platform in a temporary directory.
    pub async fn start() -> Platform {
        require_python();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let up = Up::start(&options(&data)).await.unwrap();
        Platform {
            up,
            data,
            _dir: Some(dir),
        }
    }

    /// A platform on an existing data directory (the caller keeps the directory).
    pub async fn start_in(data: &Path) -> Platform {
        require_python();
        let up = Up::start(&options(data)).await.unwrap();
        Platform {
            up,
            data: data.to_owned(),
            _dir: None,
        }
    }

    pub fn client(&self) -> ApiClient {
        self.up.client()
    }

    pub fn api_url(&self) -> String {
        format!("http://{}", self.up.api_addr)
    }

    /// GET `/` on the router with `Host: host`.
    pub async fn via_router(&self, host: &str) -> (StatusCode, String) {
        get_with_host(&format!("http://{}/", self.up.router_addr), host)
            .await
            .unwrap()
    }

    /// Pushes the example app.
    pub async fn push_hello(&self, name: &str, instances: u32) -> Value {
        let opts = hello_push(name, instances);
        cli::push(&self.client(), &opts, &mut std::io::sink())
            .await
            .unwrap()
    }

    /// Requests through the router until exactly `expected` distinct answers were seen
    /// and only those (the route follows the app's instances).
    pub async fn wait_for_instances(&self, host: &str, expected: &[u32]) {
        let want: BTreeSet<String> = expected
            .iter()
            .map(|i| format!("hello from instance {i}\n"))
            .collect();
        eventually(
            &format!("{host} served by exactly instances {expected:?}"),
            || async {
                let mut seen = BTreeSet::new();
                // Round-robin: 3 rounds over the expected pool shows every member, and any
                // stray endpoint.
                for _ in 0..(expected.len() * 3).max(6) {
                    let (status, body) = self.via_router(host).await;
                    if status != StatusCode::OK {
                        return None;
                    }
                    seen.insert(body);
                }
                (seen == want).then_some(())
            },
        )
        .await;
    }

    /// Stats of an app's instances.
    pub async fn stats(&self, guid: &str) -> Vec<Value> {
        let v: Value = self
            .client()
            .get(&format!("/v3/processes/{guid}/stats"))
            .await
            .unwrap();
        v["resources"].as_array().cloned().unwrap_or_default()
    }

    pub async fn stop(self) {
        self.up.stop().await;
    }
}

/// The example app shipped in the repository.
pub fn hello_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/hello")
}

/// Push options of the example app as `name` with `instances` instances (128 MB, route
/// `NAME.localhost`); other apps override the fields they change.
pub fn hello_push(name: &str, instances: u32) -> PushOptions {
    PushOptions {
        name: name.to_owned(),
        path: hello_dir(),
        command: None,
        instances: Some(instances),
        memory_mb: Some(128),
        route: None,
        no_route: false,
        timeout: WAIT,
    }
}

/// Polls `check` every 100 ms until it yields a value; panics naming `what` after
/// [`WAIT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {WAIT:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Whether a process (group leader) still exists.
pub fn alive(pid: u64) -> bool {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap());
    nix::sys::signal::kill(pid, None).is_ok()
}

/// GET `path` on the router with `Host: host`.
pub async fn get_path(p: &Platform, host: &str, path: &str) -> (StatusCode, String) {
    get_with_host(&format!("http://{}{path}", p.up.router_addr), host)
        .await
        .unwrap()
}

/// Child pids of a process (scanning /proc: `children` files need a kernel option).
pub fn children(pid: u64) -> Vec<u64> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // `pid (comm) state ppid ...`; comm may hold spaces, so split after the last ')'.
        let Some((_, rest)) = stat.rsplit_once(')') else {
            continue;
        };
        let ppid: u64 = rest
            .split_whitespace()
            .nth(1)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        if ppid == pid
            && let Ok(child) = entry.file_name().to_string_lossy().parse()
        {
            out.push(child);
        }
    }
    out
}
