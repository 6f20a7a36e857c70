//! Crash and restart, crash-loop backoff, stop and start, delete.

use controller_lite::cli::{self, PushOptions};
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use serde_json::Value;

use crate::support::{Platform, WAIT, alive, eventually};

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
        name: "looper".to_owned(),
        path: dir.path().to_owned(),
        command: Some("python3 crash.py".to_owned()),
        instances: Some(1),
        memory_mb: Some(64),
        route: None,
        no_route: false,
        timeout: WAIT,
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
