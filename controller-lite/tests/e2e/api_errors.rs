//! CF-style errors: authentication, authorisation, unknown resources, bad uploads and
//! staging failures; pagination.

use bytes::Bytes;
use controller_lite::client::{ApiClient, ClientError};
use http::{Method, StatusCode};
use serde_json::{Value, json};

use crate::support::Platform;

fn cf_error(e: &ClientError) -> (StatusCode, &str, u64) {
    match e {
        ClientError::Api { status, errors } => (*status, errors[0].title.as_str(), errors[0].code),
        other => panic!("not a CF error: {other}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_required_and_read_only_tokens_cannot_write() {
    let p = Platform::start().await;
    let url = p.api_url();
    let anonymous = ApiClient::new(&url, None);
    let e = anonymous.get::<Value>("/v3/apps").await.unwrap_err();
    assert_eq!(
        cf_error(&e),
        (StatusCode::UNAUTHORIZED, "CF-NotAuthenticated", 10002)
    );
    let forged = ApiClient::new(&url, Some("not-a-token".to_owned()));
    let e = forged.get::<Value>("/v3/apps").await.unwrap_err();
    assert_eq!(
        cf_error(&e),
        (StatusCode::UNAUTHORIZED, "CF-InvalidAuthToken", 1000)
    );
    // Discovery needs no token, as in CC.
    let root: Value = anonymous.get("/").await.unwrap();
    assert!(
        root["links"]["cloud_controller_v3"]["href"]
            .as_str()
            .unwrap()
            .ends_with("/v3")
    );

    let token: Value = p
        .client()
        .post("/v3/tokens", &json!({"scope": "read"}))
        .await
        .unwrap();
    let reader = ApiClient::new(&url, Some(token["token"].as_str().unwrap().to_owned()));
    let apps: Value = reader.get("/v3/apps").await.unwrap();
    assert_eq!(apps["pagination"]["total_results"], 0);
    let e = reader
        .post::<Value>("/v3/apps", &json!({"name": "x"}))
        .await
        .unwrap_err();
    assert_eq!(
        cf_error(&e),
        (StatusCode::FORBIDDEN, "CF-NotAuthorized", 10003)
    );
    let e = reader
        .post::<Value>("/v3/tokens", &json!({"scope": "admin"}))
        .await
        .unwrap_err();
    assert_eq!(cf_error(&e).0, StatusCode::FORBIDDEN);

    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(&p.up.admin_token_path)
            .unwrap()
            .permissions(),
    );
    assert_eq!(mode & 0o777, 0o600, "the admin token is private");
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_resources_and_bad_requests_get_cf_errors() {
    let p = Platform::start().await;
    let c = p.client();
    for path in [
        "/v3/apps/nope",
        "/v3/processes/nope/stats",
        "/v3/routes/nope",
        "/v3/builds/nope",
    ] {
        let e = c.get::<Value>(path).await.unwrap_err();
        assert_eq!(
            cf_error(&e),
            (StatusCode::NOT_FOUND, "CF-ResourceNotFound", 10010),
            "{path}"
        );
    }
    let e = c.get::<Value>("/v3/nothing-here").await.unwrap_err();
    assert_eq!(cf_error(&e), (StatusCode::NOT_FOUND, "CF-NotFound", 10000));
    let e = c
        .post::<Value>("/v3/apps/nope/actions/start", &json!({}))
        .await
        .unwrap_err();
    assert_eq!(cf_error(&e).1, "CF-ResourceNotFound");

    c.post::<Value>("/v3/apps", &json!({"name": "dup"}))
        .await
        .unwrap();
    let e = c
        .post::<Value>("/v3/apps", &json!({"name": "dup"}))
        .await
        .unwrap_err();
    assert_eq!(
        cf_error(&e),
        (
            StatusCode::UNPROCESSABLE_ENTITY,
            "CF-UniquenessError",
            10016
        )
    );
    let e = c
        .post::<Value>("/v3/apps", &json!({"name": "bad name!"}))
        .await
        .unwrap_err();
    assert_eq!(cf_error(&e).1, "CF-UnprocessableEntity");
    let e = c
        .send(
            Method::POST,
            "/v3/apps",
            Bytes::from_static(b"{not json"),
            Some("application/json"),
        )
        .await
        .unwrap_err();
    assert_eq!(cf_error(&e).0, StatusCode::BAD_REQUEST);
    let e = c
        .post::<Value>("/v3/routes", &json!({"host": "a b"}))
        .await
        .unwrap_err();
    assert_eq!(cf_error(&e).1, "CF-UnprocessableEntity");
    let e = c.get::<Value>("/v3/apps?per_page=0").await.unwrap_err();
    assert_eq!(
        cf_error(&e),
        (StatusCode::BAD_REQUEST, "CF-BadQueryParameter", 10005)
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_uploads_fail_the_package_and_commandless_bits_fail_staging() {
    let p = Platform::start().await;
    let c = p.client();
    let app: Value = c.post("/v3/apps", &json!({"name": "bits"})).await.unwrap();
    let guid = app["guid"].as_str().unwrap();
    let new_package = || async {
        let pkg: Value = c
            .post(
                "/v3/packages",
                &json!({"type": "bits", "relationships": {"app": {"data": {"guid": guid}}}}),
            )
            .await
            .unwrap();
        pkg["guid"].as_str().unwrap().to_owned()
    };

    let pkg = new_package().await;
    let e = c
        .send(
            Method::POST,
            &format!("/v3/packages/{pkg}/upload"),
            Bytes::from_static(b"this is not an archive"),
            Some("application/octet-stream"),
        )
        .await
        .unwrap_err();
    assert_eq!(cf_error(&e).0, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(
        e.to_string()
            .contains("neither a gzip-compressed tar nor a zip"),
        "{e}"
    );
    let state: Value = c.get(&format!("/v3/packages/{pkg}")).await.unwrap();
    assert_eq!(state["state"], "FAILED");
    let e = c
        .post::<Value>("/v3/builds", &json!({"package": {"guid": pkg}}))
        .await
        .unwrap_err();
    assert_eq!(cf_error(&e).1, "CF-UnprocessableEntity");

    // A truncated gzip stream is caught at upload, not at staging.
    let mut tgz = Vec::new();
    controller_lite::staging::pack_dir(&crate::support::hello_dir(), &mut tgz).unwrap();
    let pkg = new_package().await;
    let e = c
        .send(
            Method::POST,
            &format!("/v3/packages/{pkg}/upload"),
            Bytes::copy_from_slice(&tgz[..tgz.len() / 2]),
            Some("application/gzip"),
        )
        .await
        .unwrap_err();
    assert!(e.to_string().contains("corrupt"), "{e}");

    // Valid bits without a Procfile or command: staging fails with a clear reason.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("index.html"), "hi").unwrap();
    let mut tgz = Vec::new();
    controller_lite::staging::pack_dir(dir.path(), &mut tgz).unwrap();
    let pkg = new_package().await;
    c.send(
        Method::POST,
        &format!("/v3/packages/{pkg}/upload"),
        Bytes::from(tgz),
        Some("application/gzip"),
    )
    .await
    .unwrap();
    let build: Value = c
        .post("/v3/builds", &json!({"package": {"guid": pkg}}))
        .await
        .unwrap();
    let build_guid = build["guid"].as_str().unwrap().to_owned();
    let failed = crate::support::eventually("the build to finish", || async {
        let b: Value = c.get(&format!("/v3/builds/{build_guid}")).await.unwrap();
        (b["state"] != "STAGING").then_some(b)
    })
    .await;
    assert_eq!(failed["state"], "FAILED");
    assert!(
        failed["error"].as_str().unwrap().contains("Procfile"),
        "{failed}"
    );
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lists_are_paginated() {
    let p = Platform::start().await;
    let c = p.client();
    for name in ["a1", "a2", "a3"] {
        c.post::<Value>("/v3/apps", &json!({"name": name}))
            .await
            .unwrap();
    }
    let page1: Value = c.get("/v3/apps?per_page=2").await.unwrap();
    assert_eq!(page1["pagination"]["total_results"], 3);
    assert_eq!(page1["pagination"]["total_pages"], 2);
    assert_eq!(page1["resources"].as_array().unwrap().len(), 2);
    assert!(page1["pagination"]["previous"].is_null());
    let next = page1["pagination"]["next"]["href"].as_str().unwrap();
    let path = &next[next.find("/v3/").unwrap()..];
    let page2: Value = c.get(path).await.unwrap();
    assert_eq!(page2["resources"].as_array().unwrap().len(), 1);
    assert!(page2["pagination"]["next"].is_null());
    let filtered: Value = c.get("/v3/apps?names=a2,a3").await.unwrap();
    assert_eq!(filtered["pagination"]["total_results"], 2);
    p.stop().await;
}
