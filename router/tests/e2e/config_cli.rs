//! The binary's command line and config handling.

use std::process::Command;

#[test]
fn invalid_config_exits_2_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    for (yaml, key) in [
        ("status:\n  port: seventy\n", "status.port"),
        (
            "droplet_stale_threshold: forever\n",
            "droplet_stale_threshold",
        ),
        (
            "routes:\n  - {host: 127.0.0.1, port: 1, uris: []}\n",
            "routes[0]",
        ),
        ("balancing_algorithm: fastest\n", "balancing_algorithm"),
    ] {
        let path = dir.path().join("bad.yml");
        std::fs::write(&path, yaml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_router"))
            .arg("--config")
            .arg(&path)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{yaml}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(&format!("{key}: ")), "{yaml:?}: {stderr}");
    }
}

#[test]
fn missing_config_file_exits_2_with_its_name() {
    let out = Command::new(env!("CARGO_BIN_EXE_router"))
        .args(["--config", "/nonexistent/router.yml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/router.yml"));
}

#[test]
fn help_lists_the_flags() {
    let out = Command::new(env!("CARGO_BIN_EXE_router"))
        .arg("--help")
        .output()
        .unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--config", "--port", "--log-level"] {
        assert!(help.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn the_example_configs_in_the_repo_are_valid() {
    let examples = concat!(env!("CARGO_MANIFEST_DIR"), "/../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(examples).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        if name.starts_with("router") && name.ends_with(".yml") {
            router::Config::load(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
            checked += 1;
        }
    }
    assert!(checked > 0, "no examples/router*.yml found");
}
