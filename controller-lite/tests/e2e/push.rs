//! Push, reach every instance through the router, scale both ways.

use std::collections::BTreeSet;

use controller_lite::up::push_demo;
use serde_json::Value;

use crate::support::{Platform, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_app_is_reachable_on_all_three_instances_through_the_router() {
    let p = Platform::start().await;
    push_demo(&p.up, &p.data, &mut std::io::sink())
        .await
        .unwrap();
    p.wait_for_instances("hello.localhost", &[0, 1, 2]).await;
    // The host is matched case-insensitively, as gorouter does.
    let (status, _) = p.via_router("HELLO.localhost").await;
    assert_eq!(status, 200);
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_get_the_cf_runtime_environment() {
    let p = Platform::start().await;
    let summary = p.push_hello("envy", 2).await;
    let guid = summary["guid"].as_str().unwrap().to_owned();
    let stats = p.stats(&guid).await;
    let guids: BTreeSet<&str> = stats
        .iter()
        .map(|s| s["instance_guid"].as_str().unwrap())
        .collect();
    assert_eq!(guids.len(), 2, "each instance has its own CF_INSTANCE_GUID");
    for s in &stats {
        let pid = s["pid"].as_u64().unwrap();
        // The app runs under `sh`, next to the agent's watchdog (a forked `sh`, see
        // `agent::instance::LIFELINE`): the child that is not a shell is the Python
        // process with the environment.
        let child = crate::support::children(pid)
            .into_iter()
            .find(|c| {
                std::fs::read_to_string(format!("/proc/{c}/comm"))
                    .is_ok_and(|comm| comm.trim() != "sh")
            })
            .unwrap_or(pid);
        let env = std::fs::read(format!("/proc/{child}/environ")).unwrap();
        let env: Vec<String> = env
            .split(|b| *b == 0)
            .map(|v| String::from_utf8_lossy(v).into_owned())
            .collect();
        let get = |k: &str| {
            env.iter()
                .find_map(|e| e.strip_prefix(&format!("{k}=")))
                .map(str::to_owned)
        };
        assert_eq!(
            get("PORT").unwrap(),
            s["instance_ports"][0]["external"].to_string()
        );
        assert_eq!(get("CF_INSTANCE_INDEX").unwrap(), s["index"].to_string());
        assert_eq!(
            get("CF_INSTANCE_GUID").as_deref(),
            s["instance_guid"].as_str()
        );
        let vcap: Value = serde_json::from_str(&get("VCAP_APPLICATION").unwrap()).unwrap();
        assert_eq!(vcap["application_name"], "envy");
        assert_eq!(vcap["application_uris"][0], "envy.localhost");
        assert_eq!(vcap["limits"]["mem"], 128);
        assert!(get("CONTROLLER_LITE_TOKEN").is_none());
        assert_memory_limit(child, 128);
    }
    p.stop().await;
}

/// The app process is held to `mb`: by its own cgroup's `memory.max` where the agent
/// could create cgroups (v2, delegated), else by RLIMIT_AS (`agent::limits`).
fn assert_memory_limit(pid: u64, mb: u64) {
    let bytes = mb * 1024 * 1024;
    let cgroups = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let own = cgroups
        .lines()
        .filter_map(|l| l.strip_prefix("0::"))
        .find(|path| path.contains("/controller-lite-"));
    if let Some(path) = own {
        let max = std::fs::read_to_string(format!("/sys/fs/cgroup{path}/memory.max")).unwrap();
        assert_eq!(max.trim(), bytes.to_string(), "memory.max of {path}");
        return;
    }
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap();
    // `Max address space   SOFT   HARD   bytes`
    let soft = limits
        .lines()
        .find_map(|l| l.strip_prefix("Max address space"))
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap();
    assert_eq!(soft, bytes.to_string(), "RLIMIT_AS of the app:\n{limits}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scaling_up_and_down_is_followed_by_the_router() {
    let p = Platform::start().await;
    let summary = p.push_hello("scaly", 1).await;
    let guid = summary["guid"].as_str().unwrap().to_owned();
    p.wait_for_instances("scaly.localhost", &[0]).await;

    controller_lite::cli::scale(&p.client(), "scaly", Some(5), None)
        .await
        .unwrap();
    p.wait_for_instances("scaly.localhost", &[0, 1, 2, 3, 4])
        .await;
    let pids: Vec<u64> = p
        .stats(&guid)
        .await
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();

    controller_lite::cli::scale(&p.client(), "scaly", Some(1), None)
        .await
        .unwrap();
    p.wait_for_instances("scaly.localhost", &[0]).await;
    // The extra instances' processes are gone, not just unrouted.
    eventually("instances 1..4 stopped", || async {
        pids[1..]
            .iter()
            .all(|pid| !crate::support::alive(*pid))
            .then_some(())
    })
    .await;
    assert!(
        crate::support::alive(pids[0]),
        "instance 0 keeps running while scaling"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_binary_pushes_and_lists_apps() {
    let p = Platform::start().await;
    let bin = env!("CARGO_BIN_EXE_controller-lite");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .args(["--api", &p.api_url(), "--token", &p.up.admin_token])
            .args(args)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let hello = crate::support::hello_dir();
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(&[
            "push",
            "clie",
            "--path",
            hello.to_str().unwrap(),
            "-i",
            "2",
            "-m",
            "64",
            "--route",
            "cli.localhost/app",
        ])
    });
    assert!(ok, "push failed: {out}\n{err}");
    assert!(out.contains("2 of 2 instances running"), "{out}");
    assert!(
        out.contains("routes:            cli.localhost/app"),
        "{out}"
    );

    let (ok, out, _) = tokio::task::block_in_place(|| run(&["apps"]));
    assert!(ok);
    let row = out.lines().find(|l| l.starts_with("clie")).unwrap();
    assert!(
        row.contains("started") && row.contains("web:2/2") && row.contains("cli.localhost/app"),
        "{row}"
    );

    let (ok, out, _) = tokio::task::block_in_place(|| run(&["--json", "app", "clie"]));
    assert!(ok);
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["instances"], 2);
    assert_eq!(v["memory_in_mb"], 64);

    let (ok, _, err) = tokio::task::block_in_place(|| run(&["app", "nope"]));
    assert!(!ok);
    assert!(err.contains("App 'nope' not found"), "{err}");

    let (status, body) = crate::support::get_path(&p, "cli.localhost", "/app/x").await;
    assert_eq!(status, 200, "{body}");
    // The app logs each request; the line travels agent -> bus -> controller.
    let out = eventually("the request in the recent logs", || async {
        let (ok, out, _) = tokio::task::block_in_place(|| run(&["logs", "clie", "--recent"]));
        (ok && out.contains("GET /app/x")).then_some(out)
    })
    .await;
    assert!(out.contains("[APP/PROC/WEB/"), "{out}");
    assert!(out.contains("[CELL/0] OUT Creating container"), "{out}");
    // The router's access line for the request is in the app's logs too.
    let out = eventually("the router's access line in the recent logs", || async {
        let (ok, out, _) = tokio::task::block_in_place(|| run(&["logs", "clie", "--recent"]));
        (ok && out
            .lines()
            .any(|l| l.contains("[RTR/") && l.contains("\"GET /app/x HTTP/1.1\" 200")))
        .then_some(out)
    })
    .await;
    assert!(out.contains("cli.localhost - ["), "{out}");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_stream_follows_new_lines_of_the_app() {
    use http_body_util::BodyExt;

    let p = Platform::start().await;
    let guid = p.push_hello("chatty", 1).await["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    let resp = p
        .client()
        .send(
            http::Method::GET,
            &format!("/v3/apps/{guid}/logs/stream"),
            bytes::Bytes::new(),
            None,
        )
        .await
        .unwrap();
    assert_eq!(resp.headers()["content-type"], "application/x-ndjson");
    let mut body = resp.into_body();
    let (status, _) = crate::support::get_path(&p, "chatty.localhost", "/followed").await;
    assert_eq!(status, 200);
    let mut text = String::new();
    let line = tokio::time::timeout(crate::support::WAIT, async {
        loop {
            let frame = body.frame().await.unwrap().unwrap();
            text.push_str(&String::from_utf8_lossy(frame.data_ref().unwrap()));
            // The app's own line; the router's RTR line for the request comes too.
            if let Some(line) = text
                .lines()
                .find(|l| l.contains("GET /followed") && l.contains("\"APP/PROC/WEB\""))
            {
                return line.to_owned();
            }
        }
    })
    .await
    .expect("the request's log line is streamed");
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["source_type"], "APP/PROC/WEB");
    assert_eq!(v["instance_id"], "0");
    assert_eq!(v["type"], "OUT");
    p.stop().await;
}
