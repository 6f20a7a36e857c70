//! `up` restarted on the same data directory recovers every app.

use controller_lite::cli;

use crate::support::{Platform, alive, eventually};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restarted_up_recovers_apps_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Platform::start_in(&data).await;
    let guid = first.push_hello("keeper", 2).await["guid"]
        .as_str()
        .unwrap()
        .to_owned();
    first.push_hello("sleeper", 1).await;
    cli::action(&first.client(), "sleeper", "stop")
        .await
        .unwrap();
    first.wait_for_instances("keeper.localhost", &[0, 1]).await;
    let pids: Vec<u64> = first
        .stats(&guid)
        .await
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect();
    let token = first.up.admin_token.clone();
    first.stop().await;
    assert!(
        pids.iter().all(|pid| !alive(*pid)),
        "stopping `up` stops its instances"
    );

    let second = Platform::start_in(&data).await;
    assert_eq!(second.up.admin_token, token, "the admin token is kept");
    second.wait_for_instances("keeper.localhost", &[0, 1]).await;
    let sleeper = cli::app(&second.client(), "sleeper").await.unwrap();
    assert_eq!(sleeper["state"], "STOPPED", "a stopped app stays stopped");
    let stats = eventually("keeper's stats show both running", || async {
        let s = second.stats(&guid).await;
        s.iter().all(|i| i["state"] == "RUNNING").then_some(s)
    })
    .await;
    assert_eq!(stats.len(), 2);
    second.stop().await;
}
