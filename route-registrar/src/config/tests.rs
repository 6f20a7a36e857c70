use super::*;

const MINIMAL: &str = r#"
message_bus_servers:
  - host: 127.0.0.1:4222
host: 10.0.0.5
routes:
  - name: api
    port: 8080
    uris: [api.example.com]
    registration_interval: 10s
"#;

fn problems(text: &str) -> Vec<String> {
    match Config::from_text(text) {
        Ok(_) => panic!("accepted:\n{text}"),
        Err(ConfigError::Invalid(problems)) => problems.iter().map(|p| p.to_string()).collect(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

fn assert_refused(text: &str, expected: &str) {
    let problems = problems(text);
    assert!(
        problems.iter().any(|p| p.starts_with(expected)),
        "{problems:?} does not start with {expected:?}"
    );
}

#[test]
fn minimal_config_loads_with_defaults() {
    let config = Config::from_text(MINIMAL).unwrap();
    assert_eq!(config.unregistration_message_limit, 5);
    assert!(!config.use_router_register_interval);
    let route = &config.routes[0];
    assert_eq!(route.name, "api");
    assert_eq!(route.registration_interval, Duration::from_secs(10));
    assert!(route.health_check.is_none());
    assert_eq!(route.message.host, "10.0.0.5");
    assert_eq!(route.message.port, 8080);
    assert_eq!(route.message.uris, ["api.example.com"]);
    assert!(!route.message.private_instance_id.is_empty());
}

#[test]
fn cf_json_config_loads() {
    let json = r#"{
      "message_bus_servers": [
        {"host": "10.0.0.1:4222", "user": "nats", "password": "secret"},
        {"host": "10.0.0.2:4222", "user": "nats", "password": "secret"}
      ],
      "host": "10.0.16.9",
      "availability_zone": "z1",
      "routes": [{
        "name": "uaa",
        "port": 8080,
        "tls_port": 8443,
        "server_cert_domain_san": "uaa.service.internal",
        "uris": ["uaa.sys.example.com", "*.uaa.sys.example.com"],
        "registration_interval": "1m30s",
        "tags": {"component": "uaa", "index": 0},
        "route_service_url": "https://rs.example.com",
        "protocol": "http2",
        "options": {"loadbalancing": "least-connection"},
        "health_check": {"name": "uaa-health", "script_path": "/bin/true", "timeout": "5s"}
      }]
    }"#;
    let config = Config::from_text(json).unwrap();
    let route = &config.routes[0];
    assert_eq!(route.registration_interval, Duration::from_secs(90));
    let check = route.health_check.as_ref().unwrap();
    assert_eq!(check.timeout, Duration::from_secs(5));
    assert_eq!(check.script_path, "/bin/true");
    let m = &route.message;
    assert_eq!(m.tls_port, 8443);
    assert_eq!(m.tags["component"], "uaa");
    assert_eq!(m.tags["index"], "0");
    assert_eq!(m.availability_zone, "z1");
    assert_eq!(m.options.loadbalancing, "least-connection");
    assert_eq!(m.protocol, "http2");
    let nats = config.nats_options();
    assert_eq!(nats.urls, ["nats://10.0.0.1:4222", "nats://10.0.0.2:4222"]);
    assert_eq!((nats.user.as_str(), nats.pass.as_str()), ("nats", "secret"));
}

#[test]
fn health_check_timeout_defaults_to_half_the_interval() {
    let text = MINIMAL.replace(
        "registration_interval: 10s",
        "registration_interval: 10s\n    health_check: {name: h, script_path: /bin/true}",
    );
    let config = Config::from_text(&text).unwrap();
    let check = config.routes[0].health_check.as_ref().unwrap();
    assert_eq!(check.timeout, Duration::from_secs(5));
}

#[test]
fn route_host_overrides_the_top_level_host() {
    let text = MINIMAL.replace("    port: 8080", "    port: 8080\n    host: db.internal");
    let config = Config::from_text(&text).unwrap();
    assert_eq!(config.routes[0].message.host, "db.internal");
}

#[test]
fn tcp_route_needs_no_uris_and_gets_a_default_name() {
    let text = r#"
message_bus_servers: [{host: "127.0.0.1:4222"}]
host: 127.0.0.1
routes:
  - port: 5432
    external_port: 40001
    registration_interval: 5s
"#;
    let config = Config::from_text(text).unwrap();
    let route = &config.routes[0];
    assert_eq!(route.name, "tcp-40001");
    assert_eq!(route.message.external_port, 40001);
    assert!(route.message.uris.is_empty());
}

#[test]
fn instance_ids_are_stable_and_distinct_per_route() {
    let text = MINIMAL.to_owned()
        + "  - name: other\n    port: 8081\n    uris: [b.example.com]\n    registration_interval: 10s\n";
    let a = Config::from_text(&text).unwrap();
    let b = Config::from_text(&text).unwrap();
    let ids = |c: &Config| -> Vec<String> {
        c.routes
            .iter()
            .map(|r| r.message.private_instance_id.clone())
            .collect()
    };
    assert_eq!(ids(&a), ids(&b));
    assert_ne!(ids(&a)[0], ids(&a)[1]);
    uuid::Uuid::parse_str(&ids(&a)[0]).unwrap();
}

#[test]
fn invalid_configs_name_the_key() {
    let cases: &[(&str, &str, &str)] = &[
        (
            "registration_interval: 10s\n",
            "",
            "routes[0].registration_interval: missing",
        ),
        (
            "registration_interval: 10s",
            "registration_interval: 0s",
            "routes[0].registration_interval: must be greater",
        ),
        (
            "registration_interval: 10s",
            "registration_interval: soon",
            "routes[0].registration_interval: ",
        ),
        (
            "registration_interval: 10s",
            "registration_interval: 10s\n    health_check: {name: h, script_path: x, timeout: 10s}",
            "routes[0].health_check.timeout: must be shorter than registration_interval (10s)",
        ),
        (
            "registration_interval: 10s",
            "registration_interval: 10s\n    health_check: {name: h}",
            "routes[0].health_check.script_path: missing",
        ),
        ("    uris: [api.example.com]\n", "", "routes[0].uris: empty"),
        (
            "uris: [api.example.com]",
            "uris: [\"a b\"]",
            "routes[0].uris[0]:",
        ),
        ("    port: 8080\n", "", "routes[0].port: missing"),
        ("port: 8080", "port: 0", "routes[0].port: must be greater"),
        ("port: 8080", "port: 70000", "routes[0].port"),
        (
            "port: 8080",
            "tls_port: 8443",
            "routes[0].server_cert_domain_san: missing",
        ),
        ("host: 10.0.0.5", "host: \"not a host\"", "host: "),
        ("host: 10.0.0.5\n", "", "routes[0].host: missing"),
        (
            "message_bus_servers:\n  - host: 127.0.0.1:4222\n",
            "",
            "message_bus_servers: at least one",
        ),
        (
            "127.0.0.1:4222",
            "127.0.0.1",
            "message_bus_servers[0].host: \"127.0.0.1\" is not host:port",
        ),
        ("name: api", "name: \"\"", "routes[0].name: missing"),
        (
            "uris: [api.example.com]",
            "uris: [api.example.com]\n    protocol: spdy",
            "routes[0].protocol:",
        ),
        (
            "uris: [api.example.com]",
            "uris: [api.example.com]\n    options: {loadbalancing: random}",
            "routes[0].options.loadbalancing:",
        ),
        (
            "uris: [api.example.com]",
            "uris: [api.example.com]\n    route_service_url: http://rs",
            "routes[0].route_service_url:",
        ),
        (
            "host: 10.0.0.5",
            "host: 10.0.0.5\nunregistration_message_limit: 0",
            "unregistration_message_limit: must be greater than 0",
        ),
        ("routes:", "routes: []\nold_routes:", "routes: at least one"),
    ];
    for (from, to, expected) in cases {
        assert!(MINIMAL.contains(from), "{from:?} not in the base config");
        assert_refused(&MINIMAL.replacen(from, to, 1), expected);
    }
}

#[test]
fn differing_bus_credentials_are_refused() {
    let text = MINIMAL.replace(
        "  - host: 127.0.0.1:4222\n",
        "  - {host: \"127.0.0.1:4222\", user: a, password: x}\n  - {host: \"127.0.0.1:4223\", user: b, password: x}\n",
    );
    assert_refused(&text, "message_bus_servers[1].user: credentials differ");
}

#[test]
fn every_problem_is_reported() {
    let text = r#"
message_bus_servers: []
routes:
  - name: a
    uris: [a.example.com]
"#;
    let problems = problems(text);
    for key in [
        "message_bus_servers:",
        "routes[0].host:",
        "routes[0].port:",
        "routes[0].registration_interval:",
    ] {
        assert!(
            problems.iter().any(|p| p.starts_with(key)),
            "{key} missing from {problems:?}"
        );
    }
}

#[test]
fn type_errors_name_the_key() {
    assert_refused(
        &MINIMAL.replace("port: 8080", "port: [1]"),
        "routes[0].port: invalid type",
    );
    assert_refused("routes: 3", "routes: invalid type");
    assert_refused("[1, 2]", "(document)");
}
