use super::*;

fn app(guid: &str, instances: u32, memory_mb: u32) -> DesiredApp {
    DesiredApp {
        guid: guid.to_owned(),
        name: guid.to_owned(),
        instances,
        template: DesiredInstance {
            key: InstanceKey {
                app_guid: guid.to_owned(),
                index: 0,
            },
            app_name: guid.to_owned(),
            version: 1,
            attempt: 0,
            droplet_guid: "d".to_owned(),
            command: "run".to_owned(),
            memory_mb,
            health_check_type: "port".to_owned(),
            health_check_endpoint: String::new(),
            uris: vec![],
        },
    }
}

fn hb(agent: &str, zone: &str, memory_mb: u64, instances: Vec<ActualInstance>) -> Heartbeat {
    Heartbeat {
        agent_id: agent.to_owned(),
        zone: zone.to_owned(),
        memory_mb,
        instances,
    }
}

/// What an agent would report after running its assignment, all in `state`.
fn report(a: &Assignment, state: InstanceState) -> Vec<ActualInstance> {
    a.instances
        .iter()
        .map(|d| ActualInstance {
            key: d.key.clone(),
            version: d.version,
            attempt: d.attempt,
            instance_guid: format!("{}-{}", d.key.index, d.attempt),
            state,
            since_ms: 0,
            host: "127.0.0.1".to_owned(),
            port: 1000,
            pid: None,
            details: "exited".to_owned(),
        })
        .collect()
}

#[test]
fn restart_delay_follows_cf_backoff() {
    let secs: Vec<u64> = (0..10).map(|n| restart_delay(n).as_secs()).collect();
    assert_eq!(secs, [0, 0, 0, 30, 60, 120, 240, 480, 960, 960]);
    assert_eq!(restart_delay(u32::MAX), Duration::from_secs(960));
}

#[test]
fn instances_spread_over_zones_then_agents() {
    let mut hm = HealthManager::new();
    let now = Instant::now();
    hm.heartbeat(hb("a1", "z1", 4096, vec![]), now);
    hm.heartbeat(hb("a2", "z1", 4096, vec![]), now);
    hm.heartbeat(hb("b1", "z2", 4096, vec![]), now);
    let out = hm.converge(&[app("x", 4, 256)], now);
    let counts: Vec<usize> = out.values().map(|a| a.instances.len()).collect();
    // 4 instances, two zones: 2 in z2 (one agent), 2 in z1 (spread over its two agents).
    assert_eq!(counts, [1, 1, 2]);
}

#[test]
fn placement_respects_free_memory() {
    let mut hm = HealthManager::new();
    let now = Instant::now();
    hm.heartbeat(hb("a", "", 1000, vec![]), now);
    let out = hm.converge(&[app("x", 3, 400)], now);
    assert_eq!(out["a"].instances.len(), 2);
    let stats = hm.stats("x", 3, 1, now, 0);
    assert_eq!(stats[2].state, "DOWN");
    assert_eq!(
        stats[2].details.as_deref(),
        Some("insufficient resources: memory")
    );
}

#[test]
fn extra_instances_are_dropped_from_assignments() {
    let mut hm = HealthManager::new();
    let now = Instant::now();
    hm.heartbeat(hb("a", "", 8192, vec![]), now);
    assert_eq!(hm.converge(&[app("x", 5, 64)], now)["a"].instances.len(), 5);
    assert_eq!(hm.converge(&[app("x", 1, 64)], now)["a"].instances.len(), 1);
    assert!(hm.converge(&[], now)["a"].instances.is_empty());
}

#[test]
fn crashed_instances_restart_three_times_then_back_off() {
    let mut hm = HealthManager::new();
    let mut now = Instant::now();
    hm.heartbeat(hb("a", "", 1024, vec![]), now);
    let desired = [app("x", 1, 64)];
    let mut out = hm.converge(&desired, now);
    for expected_attempt in 1..=3 {
        hm.heartbeat(
            hb("a", "", 1024, report(&out["a"], InstanceState::Crashed)),
            now,
        );
        out = hm.converge(&desired, now);
        assert_eq!(
            out["a"].instances[0].attempt, expected_attempt,
            "immediate restart"
        );
    }
    // The fourth crash waits 30 s.
    hm.heartbeat(
        hb("a", "", 1024, report(&out["a"], InstanceState::Crashed)),
        now,
    );
    out = hm.converge(&desired, now);
    assert_eq!(out["a"].instances[0].attempt, 3);
    let stat = &hm.stats("x", 1, 1, now, 0)[0];
    assert_eq!((stat.state.as_str(), stat.crash_count), ("CRASHED", 4));
    assert!(
        stat.details
            .as_deref()
            .unwrap_or_default()
            .contains("restart in 30s")
    );
    now += Duration::from_secs(29);
    hm.heartbeat(
        hb("a", "", 1024, report(&out["a"], InstanceState::Crashed)),
        now,
    );
    assert_eq!(hm.converge(&desired, now)["a"].instances[0].attempt, 3);
    now += Duration::from_secs(1);
    hm.heartbeat(
        hb("a", "", 1024, report(&out["a"], InstanceState::Crashed)),
        now,
    );
    out = hm.converge(&desired, now);
    assert_eq!(out["a"].instances[0].attempt, 4);
    // The fifth crash waits 60 s.
    hm.heartbeat(
        hb("a", "", 1024, report(&out["a"], InstanceState::Crashed)),
        now,
    );
    hm.converge(&desired, now);
    assert!(
        hm.stats("x", 1, 1, now, 0)[0]
            .details
            .as_deref()
            .unwrap_or_default()
            .contains("restart in 60s")
    );
}

#[test]
fn a_long_healthy_run_resets_the_crash_count() {
    let mut hm = HealthManager::new();
    let mut now = Instant::now();
    hm.heartbeat(hb("a", "", 1024, vec![]), now);
    let desired = [app("x", 1, 64)];
    let mut out = hm.converge(&desired, now);
    for _ in 0..3 {
        hm.heartbeat(
            hb("a", "", 1024, report(&out["a"], InstanceState::Crashed)),
            now,
        );
        out = hm.converge(&desired, now);
    }
    hm.heartbeat(
        hb("a", "", 1024, report(&out["a"], InstanceState::Running)),
        now,
    );
    hm.converge(&desired, now);
    now += CRASH_RESET + Duration::from_secs(1);
    hm.heartbeat(
        hb("a", "", 1024, report(&out["a"], InstanceState::Crashed)),
        now,
    );
    out = hm.converge(&desired, now);
    assert_eq!(out["a"].instances[0].attempt, 4, "restarted at once");
}

#[test]
fn instances_of_a_dead_agent_move_to_a_live_one() {
    let mut hm = HealthManager::new();
    let now = Instant::now();
    hm.heartbeat(hb("a", "", 1024, vec![]), now);
    hm.heartbeat(hb("b", "", 1024, vec![]), now);
    let desired = [app("x", 2, 64)];
    let out = hm.converge(&desired, now);
    assert_eq!((out["a"].instances.len(), out["b"].instances.len()), (1, 1));
    let later = now + AGENT_TIMEOUT;
    hm.heartbeat(
        hb("b", "", 1024, report(&out["b"], InstanceState::Running)),
        later,
    );
    let out = hm.converge(&desired, later);
    assert_eq!(out.len(), 1);
    assert_eq!(out["b"].instances.len(), 2);
}

#[test]
fn a_restarted_controller_adopts_running_instances() {
    let mut hm = HealthManager::new();
    let now = Instant::now();
    hm.heartbeat(hb("a", "", 4096, vec![]), now);
    hm.heartbeat(hb("b", "", 4096, vec![]), now);
    let desired = [app("x", 1, 64)];
    let before = hm.converge(&desired, now);
    let (agent, assignment) = before
        .iter()
        .find(|(_, a)| !a.instances.is_empty())
        .unwrap();
    let mut fresh = HealthManager::new();
    fresh.heartbeat(
        hb(agent, "", 4096, report(assignment, InstanceState::Running)),
        now,
    );
    let other = if agent == "a" { "b" } else { "a" };
    fresh.heartbeat(hb(other, "", 4096, vec![]), now);
    let after = fresh.converge(&desired, now);
    assert_eq!(after[agent.as_str()].instances.len(), 1);
    assert!(after[other].instances.is_empty());
}
