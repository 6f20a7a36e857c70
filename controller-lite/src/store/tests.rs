use super::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("db")).unwrap();
    (dir, store)
}

#[test]
fn app_names_are_unique() {
    let (_d, s) = store();
    s.create_app("a").unwrap();
    assert!(matches!(s.create_app("a"), Err(StoreError::Conflict(_))));
}

#[test]
fn memory_change_replaces_instances_but_scaling_does_not() {
    let (_d, s) = store();
    let app = s.create_app("a").unwrap();
    let scaled = s
        .update_app(
            &app.guid,
            &AppUpdate {
                instances: Some(3),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!((scaled.instances, scaled.version), (3, app.version));
    let resized = s
        .update_app(
            &app.guid,
            &AppUpdate {
                memory_mb: Some(64),
                ..Default::default()
            },
        )
        .unwrap();
    assert_eq!(resized.version, app.version + 1);
}

#[test]
fn delete_app_removes_its_mappings_and_reports_blobs() {
    let (_d, s) = store();
    let app = s.create_app("a").unwrap();
    let pkg = s.create_package(&app.guid).unwrap();
    let route = s.create_route("A.example.com", "").unwrap();
    assert_eq!(route.host, "a.example.com");
    s.add_destination(&route.guid, &app.guid, "http1").unwrap();
    assert_eq!(s.app_routes(&app.guid).unwrap().len(), 1);
    let (packages, _) = s.delete_app(&app.guid).unwrap();
    assert_eq!(packages, vec![pkg.guid]);
    assert!(s.destinations(None).unwrap().is_empty());
    assert!(matches!(s.app(&app.guid), Err(StoreError::NotFound { .. })));
}

#[test]
fn state_survives_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let guid = {
        let s = Store::open(&dir.path().join("db")).unwrap();
        let app = s.create_app("a").unwrap();
        s.set_app_state(&app.guid, AppState::Started, false)
            .unwrap();
        app.guid
    };
    let s = Store::open(&dir.path().join("db")).unwrap();
    assert_eq!(s.app(&guid).unwrap().state, AppState::Started);
}
