//! Signals on the real binary.

use std::time::Duration;

use rustix::process::Signal;
use tokio::time::Instant;

use crate::support::{NatsServer, RegistrarProcess};

fn two_routes(nats: &NatsServer, ports: (u16, u16)) -> String {
    nats.config_head()
        + &format!(
            "routes:
  - name: checked
    port: {}
    uris: [checked.example.com]
    registration_interval: 300ms
    health_check: {{name: ok, script_path: 'true'}}
  - {{name: plain, port: {}, uris: [plain.example.com], registration_interval: 300ms}}
",
            ports.0, ports.1
        )
}

#[tokio::test]
async fn sigterm_and_sigint_unregister_every_route_and_exit_zero() {
    let nats = NatsServer::start().await;
    for (signal, ports) in [(Signal::TERM, (8001, 8002)), (Signal::INT, (8003, 8004))] {
        let mut watcher = nats.watch().await;
        let mut process = RegistrarProcess::spawn(&two_routes(&nats, ports));
        watcher.expect_register(ports.0).await;
        watcher.expect_register(ports.1).await;

        process.signal(signal);
        watcher.expect_unregister(ports.0).await;
        watcher.expect_unregister(ports.1).await;
        let status = process.wait().await;
        assert_eq!(status.code(), Some(0), "{signal:?}: {status}");

        // Logs are JSON lines.
        let stderr = process.stderr();
        assert!(stderr.contains("shutting down"), "{stderr}");
        for line in stderr.lines().filter(|l| !l.trim().is_empty()) {
            serde_json::from_str::<serde_json::Value>(line)
                .unwrap_or_else(|e| panic!("not a JSON line ({e}): {line}"));
        }
    }
}

#[tokio::test]
async fn sigterm_during_a_hung_health_check_exits_at_once() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let config = nats.config_head()
        + "routes:
  - name: hung
    port: 8101
    uris: [hung.example.com]
    registration_interval: 60s
    health_check: {name: hangs, script_path: 'sleep 60', timeout: 50s}
  - {name: plain, port: 8102, uris: [plain.example.com], registration_interval: 300ms}
";
    let mut process = RegistrarProcess::spawn(&config);
    watcher.expect_register(8102).await;
    let signalled = Instant::now();
    process.signal(Signal::TERM);
    watcher.expect_unregister(8101).await;
    watcher.expect_unregister(8102).await;
    let status = process.wait().await;
    assert_eq!(status.code(), Some(0));
    let took = signalled.elapsed();
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[tokio::test]
async fn sigterm_while_nats_is_down_exits_zero_without_waiting() {
    let mut nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let config = nats.config_head()
        + "routes:\n  - {name: plain, port: 8501, uris: [plain.example.com], registration_interval: 300ms}\n";
    let mut process = RegistrarProcess::spawn(&config);
    watcher.expect_register(8501).await;
    nats.stop();
    process.signal(Signal::TERM);
    let status = process.wait().await;
    assert_eq!(status.code(), Some(0), "{}", process.stderr());
}
