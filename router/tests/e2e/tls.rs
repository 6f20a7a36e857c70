//! TLS termination, client certificates, HTTP/2, gRPC trailers, and TLS to endpoints,
//! with certificates made in the test.

use std::io::{Read, Write};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use router::config::{ClientCertValidation, ForwardedClientCert};
use rustls::version::{TLS12, TLS13};

use crate::support::*;
use crate::tls_support::*;

async fn tls_router(config: router::Config) -> TestRouter {
    TestRouter::start(config).await
}

fn tls_config(ca: &TestCa, names: &[&[&str]]) -> router::Config {
    let mut config = test_config();
    config.enable_ssl = true;
    config.tls_pem = names.iter().map(|n| ca.leaf(n).tls_pem()).collect();
    config
}

async fn presented_cert(addr: std::net::SocketAddr, sni: &str, ca: &TestCa) -> Vec<u8> {
    let tls = tls_connect(addr, sni, client_config(&ca.pem(), &[], None, &[&TLS13]))
        .await
        .unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_the_certificate_exact_then_wildcard_then_default() {
    let ca = TestCa::new("sni ca");
    let certs = [
        ca.leaf(&["default.example.com"]),
        ca.leaf(&["a.example.com"]),
        ca.leaf(&["b.example.com"]),
        ca.leaf(&["c.example.com"]),
        ca.leaf(&["*.wild.example.com"]),
        ca.leaf(&["exact.wild.example.com"]),
    ];
    let mut config = test_config();
    config.enable_ssl = true;
    config.tls_pem = certs.iter().map(TestCert::tls_pem).collect();
    let r = tls_router(config).await;
    for (sni, index) in [
        ("a.example.com", 1),
        ("b.example.com", 2),
        ("C.Example.com", 3),
        ("x.wild.example.com", 4),
        ("exact.wild.example.com", 5),
        ("default.example.com", 0),
    ] {
        assert_eq!(
            presented_cert(r.tls, sni, &ca).await,
            certs[index].der().to_vec(),
            "SNI {sni}"
        );
    }
    // A name no certificate covers gets the first one (read with a non-verifying client).
    let addr = r.tls;
    let subject =
        tokio::task::spawn_blocking(move || openssl_presented_cert(addr, "unknown.example.com"))
            .await
            .unwrap();
    assert!(subject.contains("default.example.com"), "{subject}");
}

/// The subject of the certificate the router presents for `sni`, read with openssl.
fn openssl_presented_cert(addr: std::net::SocketAddr, sni: &str) -> String {
    let mut child = std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            sni,
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("openssl is needed: apt-get install -y openssl");
    drop(child.stdin.take());
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let _ = child.wait();
    out.lines()
        .find(|l| l.trim_start().starts_with("subject="))
        .unwrap_or_default()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_tls_versions_are_refused() {
    let ca = TestCa::new("version ca");
    let r = tls_router(tls_config(&ca, &[&["v.example.com"]])).await;
    // A hand-written TLS 1.1 ClientHello: the router answers with an alert.
    let addr = r.tls;
    let answer = tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut hello = vec![0x03, 0x02]; // client_version TLS 1.1
        hello.extend_from_slice(&[7u8; 32]); // random
        hello.push(0); // no session id
        hello.extend_from_slice(&[0x00, 0x02, 0x00, 0x2f]); // TLS_RSA_WITH_AES_128_CBC_SHA
        hello.extend_from_slice(&[0x01, 0x00]); // null compression
        let mut handshake = vec![0x01, 0x00, 0x00, hello.len() as u8];
        handshake.extend_from_slice(&hello);
        let mut record = vec![0x16, 0x03, 0x02, 0x00, handshake.len() as u8];
        record.extend_from_slice(&handshake);
        stream.write_all(&record).unwrap();
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).unwrap_or(0);
        buf[..n].to_vec()
    })
    .await
    .unwrap();
    assert_eq!(
        answer.first(),
        Some(&0x15),
        "expected a TLS alert, got {answer:?}"
    );

    // TLS 1.2 is accepted by default, and refused when the minimum is 1.3.
    let ok = https_get(
        r.tls,
        "v.example.com",
        "/",
        client_config(&ca.pem(), &[], None, &[&TLS12]),
        &[],
    )
    .await;
    assert_eq!(ok.status, 404);
    let mut config = tls_config(&ca, &[&["v.example.com"]]);
    config.min_tls_version = router::config::TlsVersion::Tls13;
    let strict = tls_router(config).await;
    let refused = tls_connect(
        strict.tls,
        "v.example.com",
        client_config(&ca.pem(), &[], None, &[&TLS12]),
    )
    .await;
    assert!(
        refused.is_err(),
        "TLS 1.2 accepted with min_tls_version TLSv1.3"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_requests_are_proxied_with_forwarded_proto_https() {
    let ca = TestCa::new("proxy ca");
    let backend = Backend::http("behind-tls").await;
    let mut config = tls_config(&ca, &[&["app.example.com"]]);
    config.routes = vec![backend.registration(&["app.example.com"])];
    let r = tls_router(config).await;
    let answer = https_get(
        r.tls,
        "app.example.com",
        "/x",
        client_config(&ca.pem(), &[b"http/1.1"], None, &[&TLS13]),
        &[],
    )
    .await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.json()["headers"]["x-forwarded-proto"][0], "https");
    // Plain HTTP still works beside it.
    assert_eq!(get(r.http, "app.example.com", "/", &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_and_each_xfcc_mode() {
    let ca = TestCa::new("server ca");
    let client_ca = TestCa::new("client ca");
    let client_cert = client_ca.leaf(&["client.example.com"]);
    let client_b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(client_cert.der())
    };
    let backend = Backend::http("xfcc").await;
    for (mode, with_cert, without_cert) in [
        (
            ForwardedClientCert::AlwaysForward,
            Some("spoofed"),
            Some("spoofed"),
        ),
        (ForwardedClientCert::Forward, Some("spoofed"), None),
        (
            ForwardedClientCert::SanitizeSet,
            Some(client_b64.as_str()),
            None,
        ),
    ] {
        let mut config = tls_config(&ca, &[&["m.example.com"]]);
        config.client_cert_validation = ClientCertValidation::Request;
        config.client_ca_certs = client_ca.pem();
        config.forwarded_client_cert = mode;
        config.routes = vec![backend.registration(&["m.example.com"])];
        let r = tls_router(config).await;
        let spoof = [("x-forwarded-client-cert", "spoofed")];
        let mutual = https_get(
            r.tls,
            "m.example.com",
            "/",
            client_config(&ca.pem(), &[], Some(&client_cert), &[&TLS13]),
            &spoof,
        )
        .await;
        let anonymous = https_get(
            r.tls,
            "m.example.com",
            "/",
            client_config(&ca.pem(), &[], None, &[&TLS13]),
            &spoof,
        )
        .await;
        let seen = |a: &Answer| {
            a.json()["headers"]["x-forwarded-client-cert"][0]
                .as_str()
                .map(str::to_owned)
        };
        assert_eq!(
            seen(&mutual).as_deref(),
            with_cert,
            "{mode:?} with a client cert"
        );
        assert_eq!(
            seen(&anonymous).as_deref(),
            without_cert,
            "{mode:?} without one"
        );
    }

    // `require`: no certificate, no connection; a certificate from another CA neither.
    let mut config = tls_config(&ca, &[&["m.example.com"]]);
    config.client_cert_validation = ClientCertValidation::Require;
    config.client_ca_certs = client_ca.pem();
    config.routes = vec![backend.registration(&["m.example.com"])];
    let r = tls_router(config).await;
    let ok = https_get(
        r.tls,
        "m.example.com",
        "/",
        client_config(&ca.pem(), &[], Some(&client_cert), &[&TLS13]),
        &[],
    )
    .await;
    assert_eq!(ok.status, 200);
    for cert in [None, Some(&self_signed(&["intruder"]))] {
        let refused = async {
            let tls = tls_connect(
                r.tls,
                "m.example.com",
                client_config(&ca.pem(), &[], cert, &[&TLS13]),
            )
            .await?;
            // TLS 1.3 reports a client-certificate refusal on the first read.
            let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
                .await
                .map_err(std::io::Error::other)?;
            tokio::spawn(conn);
            sender
                .send_request(
                    http::Request::get("/")
                        .header("host", "m.example.com")
                        .body(Full::new(Bytes::new()))
                        .unwrap(),
                )
                .await
                .map_err(std::io::Error::other)
        };
        assert!(
            refused.await.is_err(),
            "served without a valid client certificate"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_h2_tls_reaches_an_h2c_backend_with_trailers() {
    let ca = TestCa::new("grpc ca");
    let (backend, _stop) = grpc_backend().await;
    let mut config = tls_config(&ca, &[&["grpc.example.com"]]);
    config.routes = vec![router::protocol::RegistryMessage {
        host: "127.0.0.1".into(),
        port: backend.port(),
        uris: vec!["grpc.example.com".into()],
        protocol: "http2".into(),
        ..Default::default()
    }];
    let r = tls_router(config).await;
    let tls = tls_connect(
        r.tls,
        "grpc.example.com",
        client_config(&ca.pem(), &[b"h2"], None, &[&TLS13]),
    )
    .await
    .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let message = Bytes::from_static(b"\x00\x00\x00\x00\x05hello");
    let req = http::Request::post("https://grpc.example.com/echo.Echo/Say")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(message.clone()))
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), http::Version::HTTP_2);
    assert_eq!(resp.headers()["x-backend-version"], "HTTP/2.0");
    assert_eq!(
        resp.headers()["x-backend-saw"],
        "x-forwarded-for,x-forwarded-proto,x-request-start,x-vcap-request-id,\
         x-cf-applicationid,x-cf-instanceid"
    );
    let collected = resp.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("no trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(trailers["x-echo-bytes"], message.len().to_string());
    assert_eq!(collected.to_bytes(), message);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_endpoints_are_verified_against_their_san() {
    let ca = TestCa::new("backend ca");
    let good = TlsBackend::start(&ca.leaf(&["instance-1"])).await;
    let wrong_san = TlsBackend::start(&ca.leaf(&["instance-other"])).await;
    let untrusted = TlsBackend::start(&self_signed(&["instance-3"])).await;
    let plain = Backend::http("not-tls").await;
    let route = |host: &str, port: u16, san: &str| router::protocol::RegistryMessage {
        host: "127.0.0.1".into(),
        tls_port: port,
        uris: vec![host.into()],
        server_cert_domain_san: san.into(),
        private_instance_id: san.into(),
        ..Default::default()
    };
    let mut config = test_config();
    config.backends.ca_certs = ca.pem();
    config.backends.max_attempts = 1;
    config.routes = vec![
        route("good.example.com", good.addr.port(), "instance-1"),
        route("wrong.example.com", wrong_san.addr.port(), "instance-2"),
        route("untrusted.example.com", untrusted.addr.port(), "instance-3"),
        route("plain.example.com", plain.addr.port(), "instance-4"),
    ];
    let r = TestRouter::start(config).await;
    let ok = get(r.http, "good.example.com", "/", &[]).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.text(), "tls backend saw http");
    for (host, status) in [
        ("wrong.example.com", 503),
        ("untrusted.example.com", 526),
        ("plain.example.com", 525),
    ] {
        let answer = get(r.http, host, "/", &[]).await;
        assert_eq!(answer.status, status, "{host}: {}", answer.text());
        let reason = answer.header("x-cf-routererror").unwrap();
        assert!(
            reason.starts_with("endpoint_failure (tls 127.0.0.1:"),
            "{host}: {reason}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_sessions_resume_with_tickets() {
    let ca = TestCa::new("resume ca");
    let r = tls_router(tls_config(&ca, &[&["r.example.com"]])).await;
    for version in [&TLS12, &TLS13] {
        // One client config: its session store carries the ticket to the next connection.
        let client = client_config(&ca.pem(), &[], None, &[version]);
        let first = https_get(r.tls, "r.example.com", "/", client.clone(), &[]).await;
        assert_eq!(first.status, 404);
        let second = tls_connect(r.tls, "r.example.com", client).await.unwrap();
        assert_eq!(
            second.get_ref().1.handshake_kind(),
            Some(rustls::HandshakeKind::Resumed),
            "{version:?}"
        );
    }
}
