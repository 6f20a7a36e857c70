//! Health checks decide between register and unregister.

use std::time::Duration;

use tokio::time::Instant;

use crate::support::{DEADLINE, InProcessRegistrar, NatsServer, eventually};

#[tokio::test]
async fn failing_health_check_unregisters_within_one_interval_and_registers_again_when_it_passes() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let dir = tempfile::tempdir().unwrap();
    let healthy = dir.path().join("healthy");
    std::fs::write(&healthy, "").unwrap();
    let interval = Duration::from_millis(300);
    let config = nats.config_head()
        + &format!(
            "routes:
  - name: svc
    port: 7401
    uris: [svc.example.com]
    registration_interval: 300ms
    health_check: {{name: file-check, script_path: 'test -f {}'}}
",
            healthy.display()
        );
    let registrar = InProcessRegistrar::start(&config).await;
    watcher.expect_register(7401).await;

    watcher.clear_pending();
    std::fs::remove_file(&healthy).unwrap();
    let failed_at = Instant::now();
    let seen = watcher.expect_unregister(7401).await;
    // One interval, plus slack for a loaded machine.
    let took = seen.at - failed_at;
    assert!(took < interval + Duration::from_secs(1), "took {took:?}");

    watcher.clear_pending();
    std::fs::write(&healthy, "").unwrap();
    let fixed_at = Instant::now();
    let seen = watcher.expect_register(7401).await;
    let took = seen.at - fixed_at;
    assert!(took < interval + Duration::from_secs(1), "took {took:?}");
    registrar.stop().await;
}

#[tokio::test]
async fn unregisters_stop_after_the_limit_until_healthy_again() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let dir = tempfile::tempdir().unwrap();
    let healthy = dir.path().join("healthy");
    let config = nats.config_head()
        + &format!(
            "unregistration_message_limit: 2
routes:
  - name: sick
    port: 7501
    uris: [sick.example.com]
    registration_interval: 100ms
    health_check: {{name: file-check, script_path: 'test -f {}'}}
  - {{name: clock, port: 7502, uris: [clock.example.com], registration_interval: 100ms}}
",
            healthy.display()
        );
    let registrar = InProcessRegistrar::start(&config).await;

    // The healthy route is the clock: 10 of its registrations span ~10 intervals.
    let count = |watcher: &crate::support::Watcher,
                 pred: &dyn Fn(&crate::support::Seen) -> bool| {
        watcher.seen.iter().filter(|s| pred(s)).count()
    };
    for _ in 0..10 {
        watcher.expect_register(7502).await;
    }
    assert_eq!(count(&watcher, &|s| s.is_unregister(7501)), 2);

    std::fs::write(&healthy, "").unwrap();
    watcher.expect_register(7501).await;
    watcher.clear_pending();
    let from = watcher.seen.len();
    std::fs::remove_file(&healthy).unwrap();
    watcher.expect_unregister(7501).await;
    for _ in 0..10 {
        watcher.expect_register(7502).await;
    }
    let again = watcher.seen[from..]
        .iter()
        .filter(|s| s.is_unregister(7501))
        .count();
    assert_eq!(again, 2, "the limit starts over once the route was healthy");
    registrar.stop().await;
}

#[tokio::test]
async fn hung_health_check_is_killed_at_its_timeout() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let dir = tempfile::tempdir().unwrap();
    let pid_file = dir.path().join("sleep.pid");
    let config = nats.config_head()
        + &format!(
            "routes:
  - name: hung
    port: 7601
    uris: [hung.example.com]
    registration_interval: 1s
    health_check: {{name: hangs, script_path: 'sleep 60 & echo $! > {}; wait', timeout: 300ms}}
",
            pid_file.display()
        );
    let started = Instant::now();
    let registrar = InProcessRegistrar::start(&config).await;
    watcher.expect_unregister(7601).await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "unregistered only after {took:?}"
    );

    // The script's `sleep 60` was killed with its process group.
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    let stat = format!("/proc/{}/stat", pid.trim());
    eventually("the script's sleep to die", DEADLINE, || {
        let stat = std::fs::read_to_string(&stat);
        async move {
            match stat {
                Err(_) => true,
                // A zombie waits for its new parent to reap it: dead all the same.
                Ok(s) => s
                    .split(") ")
                    .nth(1)
                    .is_some_and(|rest| rest.starts_with('Z')),
            }
        }
    })
    .await;
    registrar.stop().await;
}

#[tokio::test]
async fn slow_health_check_does_not_delay_other_routes() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let config = nats.config_head()
        + "routes:
  - name: slow
    port: 7701
    uris: [slow.example.com]
    registration_interval: 5s
    health_check: {name: slow, script_path: 'sleep 2', timeout: 4s}
  - {name: quick, port: 7702, uris: [quick.example.com], registration_interval: 200ms}
";
    let registrar = InProcessRegistrar::start(&config).await;
    let first = watcher.expect_register(7702).await;
    for _ in 0..4 {
        watcher.expect_register(7702).await;
    }
    let quick_took = watcher.seen.last().unwrap().at - first.at;
    // The slow route's check is still running: nothing from it yet.
    assert!(
        !watcher.seen.iter().any(|s| s.message.port == 7701),
        "slow route registered after {quick_took:?}"
    );
    assert!(quick_took < Duration::from_millis(1800), "{quick_took:?}");
    watcher.expect_register(7701).await;
    registrar.stop().await;
}
