//! The service as an operator starts it.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::TestApp;
use crate::support::services::free_port;

/// `handoff serve` with no environment but a port: healthz and readyz answer 200.
#[tokio::test]
async fn the_binary_serves_health_and_readiness_with_no_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .arg("serve")
        .env_clear()
        .env("PORT", "0")
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let line = tokio::task::spawn_blocking(move || {
        let mut lines = BufReader::new(stdout).lines();
        lines.next().unwrap().unwrap()
    })
    .await
    .unwrap();
    let port = line
        .rsplit(':')
        .next()
        .and_then(|p| p.trim().parse::<u16>().ok())
        .unwrap_or_else(|| panic!("unexpected first line: {line}"));
    let http = reqwest::Client::new();
    let health = http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    let ready = http
        .get(format!("http://127.0.0.1:{port}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["backends"][0]["name"], "embedded");
    assert_eq!(body["backends"][1]["name"], "inbox_log");
    assert_eq!(body["backends"][1]["ok"], true);
    assert!(
        dir.path().join("data/handoff.redb").exists(),
        "default data dir is ./data"
    );

    // SIGTERM: a graceful stop with exit code 0.
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let status = tokio::task::spawn_blocking(move || child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "graceful shutdown exits 0, got {status}");
}

#[tokio::test]
async fn an_invalid_setting_stops_start_up_with_one_clear_line() {
    let output = Command::new(env!("CARGO_BIN_EXE_handoff"))
        .arg("serve")
        .env_clear()
        .env("PORT", "eighty")
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.trim(),
        "handoff: invalid configuration: PORT: `eighty` is not a port number 0-65535"
    );
}

#[tokio::test]
async fn readiness_names_cosmos_when_it_cannot_be_reached() {
    let closed = free_port();
    let app = TestApp::spawn_with(|s| {
        s.cosmos = Some(handoff::config::CosmosSettings {
            endpoint: format!("http://127.0.0.1:{closed}"),
            key: Some(handoff::config::Secret::new(
                crate::support::services::COSMOS_EMULATOR_KEY.into(),
            )),
            database: "handoff".into(),
            managed_identity_client_id: None,
        });
    })
    .await;
    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200, "alive even when a backend is down");
    let ready = tokio::time::timeout(
        Duration::from_secs(10),
        app.http.get(app.url("/readyz")).send(),
    )
    .await
    .expect("readiness answers promptly")
    .unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["failing"], serde_json::json!(["cosmos"]));
    assert_eq!(body["status"], "unavailable");
}

#[tokio::test]
async fn readiness_names_redis_when_it_is_down_and_recovers() {
    let mut redis = crate::support::services::RedisServer::start();
    let url = redis.url();
    let app = TestApp::spawn_with(|s| s.redis_url = Some(handoff::config::Secret::new(url))).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    redis.kill();
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["failing"], serde_json::json!(["redis"]));
    redis.restart();
    let mut status = 0;
    for _ in 0..50 {
        status = app
            .http
            .get(app.url("/readyz"))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "ready again once redis is back");
}

#[tokio::test]
async fn unknown_routes_get_our_json_error() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/nope")).send().await.unwrap();
    assert_eq!(response.status(), 404);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "not_found");
    app.stop().await;
}

/// A stopped app lets go of its store: the same data directory opens again at once (no
/// reference cycle or stray task keeps it).
#[tokio::test]
async fn a_stopped_app_releases_its_embedded_store() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = handoff::config::Settings::embedded(dir.path());
    settings.host = "127.0.0.1".parse().unwrap();
    settings.port = 0;
    let app = TestApp::start(settings).await;
    let ready = app.http.get(app.url("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    app.stop().await;
    handoff::store::embedded::EmbeddedStore::open(dir.path()).expect("released");
}

/// `handoff demo` plays the whole story and exits 0 only when every step happened.
#[tokio::test]
async fn the_demo_tells_the_whole_story() {
    let output = tokio::task::spawn_blocking(|| {
        Command::new(env!("CARGO_BIN_EXE_handoff"))
            .arg("demo")
            .env_remove("RUST_LOG")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "demo failed:\n{stdout}\n{stderr}");
    for expected in [
        "Microsoft.Communication.IncomingCall",
        "Would you like to continue on WhatsApp instead?",
        "caller    Yes, WhatsApp is fine.",
        "template conversation_continuation {{1}}=\"Ada\" {{2}}=\"You told us: My power has been out",
        "hung up",
        "whatsapp  agent     Hi Ada, thanks for continuing here after your call",
        "template_sent",
        "call_ended",
        "resumed",
        "Every step of the story happened.",
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected:?} in:\n{stdout}"
        );
    }
    assert!(
        !stdout.contains("+14255550123"),
        "the demo prints masked numbers only"
    );
}
