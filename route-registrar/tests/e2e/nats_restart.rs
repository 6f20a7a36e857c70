//! Surviving a NATS restart.

use crate::support::{NatsServer, RegistrarProcess};

#[tokio::test]
async fn registrations_resume_after_a_nats_restart() {
    let mut nats = NatsServer::start().await;
    let config = nats.config_head()
        + "routes:\n  - {name: svc, port: 8201, uris: [svc.example.com], registration_interval: 200ms}\n";
    let mut process = RegistrarProcess::spawn(&config);
    {
        let mut watcher = nats.watch().await;
        watcher.expect_register(8201).await;
    }

    nats.restart().await;
    // A fresh client sees registrations coming from the registrar's new connection.
    let mut watcher = nats.watch().await;
    watcher.expect_register(8201).await;
    watcher.expect_register(8201).await;

    // The same process: its client reconnected by itself.
    assert!(process.is_running());
}
