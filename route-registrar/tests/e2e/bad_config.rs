//! Invalid configs: exit code 2 and the key named.

use crate::support::{NatsServer, RegistrarProcess, run_binary_to_exit};

const GOOD_ROUTE: &str =
    "  - {name: a, port: 8301, uris: [a.example.com], registration_interval: 10s}\n";

#[tokio::test]
async fn bad_configs_exit_2_naming_the_key() {
    let head = "message_bus_servers: [{host: \"127.0.0.1:4222\"}]\nhost: 127.0.0.1\n";
    let cases: Vec<(String, &str)> = vec![
        (
            format!("{head}routes:\n  - {{name: a, port: 8301, uris: [a.example.com]}}\n"),
            "routes[0].registration_interval: missing",
        ),
        (
            format!(
                "{head}routes:\n  - {{name: a, port: 8301, uris: [a.example.com], registration_interval: 10s, \
                 health_check: {{name: h, script_path: 'true', timeout: 10s}}}}\n"
            ),
            "routes[0].health_check.timeout: must be shorter than registration_interval",
        ),
        (
            format!("{head}routes:\n  - {{name: a, port: 8301, uris: [], registration_interval: 10s}}\n"),
            "routes[0].uris: empty",
        ),
        (
            format!("{head}routes:\n  - {{name: a, uris: [a.example.com], registration_interval: 10s}}\n"),
            "routes[0].port: missing",
        ),
        (
            format!("message_bus_servers: [{{host: \"127.0.0.1:4222\"}}]\nhost: \"bad host!\"\nroutes:\n{GOOD_ROUTE}"),
            "host: \"bad host!\" is not an IP address or a host name",
        ),
        (
            format!("host: 127.0.0.1\nroutes:\n{GOOD_ROUTE}"),
            "message_bus_servers: at least one server is required",
        ),
        (
            format!("{head}routes:\n  - {{name: a, port: 8301, uris: [a.example.com], registration_interval: soon}}\n"),
            "routes[0].registration_interval: ",
        ),
        (
            // JSON, as CF's BOSH job renders it.
            r#"{"message_bus_servers": [{"host": "127.0.0.1:4222"}], "host": "127.0.0.1",
                "routes": [{"name": "a", "port": "x", "uris": ["a.example.com"], "registration_interval": "10s"}]}"#
                .to_owned(),
            "routes[0].port: invalid type",
        ),
    ];
    for (config, key) in cases {
        let (status, stderr) = run_binary_to_exit(&config).await;
        assert_eq!(status.code(), Some(2), "{config}\n{stderr}");
        assert!(stderr.contains(key), "{key:?} not in:\n{stderr}");
    }
}

#[tokio::test]
async fn missing_config_file_exits_2() {
    let output = tokio::process::Command::new(RegistrarProcess::binary())
        .args(["--config", "/nonexistent/registrar.yml"])
        .output()
        .await
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("/nonexistent/registrar.yml"), "{stderr}");
}

#[tokio::test]
async fn json_config_is_accepted() {
    let nats = NatsServer::start().await;
    let mut watcher = nats.watch().await;
    let config = format!(
        r#"{{"message_bus_servers": [{{"host": "{}"}}], "host": "127.0.0.1",
            "routes": [{{"name": "j", "port": 8401, "uris": ["j.example.com"],
                         "registration_interval": "200ms", "tags": null}}]}}"#,
        nats.address()
    );
    let mut process = RegistrarProcess::spawn(&config);
    watcher.expect_register(8401).await;
    process.signal(rustix::process::Signal::TERM);
    assert_eq!(process.wait().await.code(), Some(0));
}

#[test]
fn the_example_config_in_the_repo_is_valid() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../examples/route-registrar.yml"
    );
    let config = route_registrar::config::Config::load(std::path::Path::new(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    assert_eq!(config.routes.len(), 3);
}
