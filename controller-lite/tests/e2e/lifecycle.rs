//! Crash and restart, crash-loop backoff, stop and start, graceful stop, delete.

use controller_lite::cli::{self, PushOptions};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{Platform, WAIT, alive, eventually, hello_push};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_instance_is_restarted_and_routable_again() {
    let p = Platform::start().await;
    let guid = p.push_hello("phoenix", 2).await["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    p.wait_for_instances("phoenix.localhost", &[0, 1]).await;
    let before = p.stats(&guid).await[1].clone();
    let pid = before["pid"].as_u64().unwrap();
    killpg(Pid::from_raw(i32::try_from(pid).unwrap()), Signal::SIGKILL).unwrap();

    let after = eventually("instance 1 running again as a new instance", || async {
        let s = p.stats(&guid).await[1].clone();
        (s["state"] == "RUNNING" && s["instance_guid"] != before["instance_guid"]).then_some(s)
    })
    .await;
    assert_eq!(after["crash_count"], 1);
    assert!(!alive(pid));
    p.wait_for_instances("phoenix.localhost", &[0, 1]).await;
    let logs: Value = p
        .client()
        .get(&format!("/v3/apps/{guid}/logs"))
        .await
        .unwrap();
    let crashed = logs["resources"].as_array().unwrap().iter().any(|l| {
        l["source_type"] == "CELL"
            && l["message"]
                .as_str()
                .unwrap()
                .contains("Exited on signal 9")
    });
    assert!(crashed, "the crash is in the app's logs: {logs}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_looping_app_restarts_three_times_then_backs_off() {
    let p = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("crash.py"),
        "import sys\nprint('about to fail')\nsys.exit(3)\n",
    )
    .unwrap();
    let opts = PushOptions {
        path: dir.path().to_owned(),
        command: Some("python3 crash.py".to_owned()),
        memory_mb: Some(64),
        ..hello_push("looper", 1)
    };
    let err = cli::push(&p.client(), &opts, &mut std::io::sink())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("every instance crashed"), "{err}");
    assert!(err.to_string().contains("Exited with status 3"), "{err}");
    let guid = cli::find_app(&p.client(), "looper").await.unwrap().unwrap()["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    let s = p.stats(&guid).await[0].clone();
    assert_eq!(s["state"], "CRASHED");
    // Three immediate restarts, then the fourth crash waits 30 s.
    assert_eq!(s["crash_count"], 4, "{s}");
    let details = s["details"].as_str().unwrap();
    let wait: u64 = details
        .rsplit_once("restart in ")
        .and_then(|(_, w)| w.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no restart delay in {details:?}"));
    assert!((25..=30).contains(&wait), "{details}");
    let (status, _) = p.via_router("looper.localhost").await;
    assert_eq!(status, 404, "a crashed app has no route endpoints");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_removes_routes_start_brings_them_back_and_restart_replaces_instances() {
    let p = Platform::start().await;
    let guid = p.push_hello("pausy", 2).await["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    p.wait_for_instances("pausy.localhost", &[0, 1]).await;
    let pids: Vec<u64> = p
        .stats(&guid)
        .await
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();

    cli::action(&p.client(), "pausy", "stop").await.unwrap();
    eventually("router answers 404 for a stopped app", || async {
        let (status, body) = p.via_router("pausy.localhost").await;
        (status == 404).then_some(body)
    })
    .await;
    eventually("processes of the stopped app gone", || async {
        pids.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await;

    cli::action(&p.client(), "pausy", "start").await.unwrap();
    p.wait_for_instances("pausy.localhost", &[0, 1]).await;

    // Restart replaces every instance.
    let before: Vec<Value> = p
        .stats(&guid)
        .await
        .iter()
        .map(|s| s["instance_guid"].clone())
        .collect();
    cli::action(&p.client(), "pausy", "restart").await.unwrap();
    eventually("both instances replaced and running", || async {
        let s = p.stats(&guid).await;
        s.iter()
            .all(|i| i["state"] == "RUNNING" && !before.contains(&i["instance_guid"]))
            .then_some(())
    })
    .await;
    p.wait_for_instances("pausy.localhost", &[0, 1]).await;
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_removes_the_app_its_routes_processes_and_bits() {
    let p = Platform::start().await;
    let guid = p.push_hello("goner", 2).await["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    p.wait_for_instances("goner.localhost", &[0, 1]).await;
    let pids: Vec<u64> = p
        .stats(&guid)
        .await
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();

    cli::delete(&p.client(), "goner", true).await.unwrap();
    let err = p
        .client()
        .get::<Value>(&format!("/v3/apps/{guid}"))
        .await
        .unwrap_err();
    assert_eq!(err.cf_title(), Some("CF-ResourceNotFound"));
    let routes: Value = p.client().get("/v3/routes").await.unwrap();
    assert_eq!(routes["pagination"]["total_results"], 0);
    eventually("router answers 404 for a deleted app", || async {
        (p.via_router("goner.localhost").await.0 == 404).then_some(())
    })
    .await;
    eventually("processes of the deleted app gone", || async {
        pids.iter().all(|pid| !alive(*pid)).then_some(())
    })
    .await;
    for kind in ["packages", "droplets"] {
        let left = std::fs::read_dir(p.data.join("blobs").join(kind))
            .unwrap()
            .count();
        assert_eq!(left, 0, "{kind} blobs left behind");
    }
    eventually("instance directories removed", || async {
        let left = std::fs::read_dir(p.data.join("agent/instances"))
            .unwrap()
            .count();
        (left == 0).then_some(())
    })
    .await;
    p.stop().await;
}

/// An app whose `/slow` answers half its body, then the rest only once the app got
/// SIGTERM and worked on for another second: a request that takes a while to finish, the
/// case the grace period is for (one finished within a millisecond of the SIGTERM would
/// also beat an agent that SIGKILLs at once). `/ping` answers at once. Requests in
/// progress finish before it exits.
const SLOW_APP: &str = r#"
import os, signal, threading, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

terminated = threading.Event()

class Slow(BaseHTTPRequestHandler):
    def do_GET(self):
        first, rest = b"started\n", b"finished after SIGTERM\n"
        body = first + rest if self.path == "/ping" else first
        self.send_response(200)
        self.send_header("Content-Length", str(len(first) + len(rest)))
        self.end_headers()
        self.wfile.write(body)
        if self.path != "/ping":
            terminated.wait(60)
            time.sleep(1)
            self.wfile.write(rest)

class Server(ThreadingHTTPServer):
    daemon_threads = False
    timeout = 0.1

server = Server(("0.0.0.0", int(os.environ["PORT"])), Slow)
signal.signal(signal.SIGTERM, lambda *_: terminated.set())
while not terminated.is_set():
    server.handle_request()
server.server_close()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_in_progress_completes_when_its_instance_is_stopped() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let p = Platform::start().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("slow.py"), SLOW_APP).unwrap();
    let opts = PushOptions {
        path: dir.path().to_owned(),
        command: Some("python3 slow.py".to_owned()),
        memory_mb: Some(64),
        ..hello_push("slow", 1)
    };
    cli::push(&p.client(), &opts, &mut std::io::sink())
        .await
        .unwrap();
    eventually("the route of the app", || async {
        let (status, _) = crate::support::get_path(&p, "slow.localhost", "/ping").await;
        (status == 200).then_some(())
    })
    .await;

    // The response has begun (head and first half through the router) when the stop comes.
    let mut conn = tokio::net::TcpStream::connect(p.up.router_addr)
        .await
        .unwrap();
    conn.write_all(b"GET /slow HTTP/1.1\r\nHost: slow.localhost\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut response = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 1024];
        while !String::from_utf8_lossy(&response).contains("started\n") {
            let n = conn.read(&mut buf).await.unwrap();
            assert!(
                n > 0,
                "closed early: {}",
                String::from_utf8_lossy(&response)
            );
            response.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("the first half of the answer");

    // Unregister, SIGTERM: the app has its grace period to finish the answer, which
    // reaches the client whole.
    cli::action(&p.client(), "slow", "stop").await.unwrap();
    tokio::time::timeout(WAIT, conn.read_to_end(&mut response))
        .await
        .expect("the rest of the answer")
        .unwrap();
    let response = String::from_utf8_lossy(&response);
    assert!(response.starts_with("HTTP/1.1 200 "), "{response}");
    assert!(
        response.ends_with("\r\n\r\nstarted\nfinished after SIGTERM\n"),
        "the answer was cut: {response}"
    );
    p.stop().await;
}
