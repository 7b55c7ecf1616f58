//! The deployment and the app agree: every route the infrastructure points at (Event Grid
//! subscriptions, probes) exists in the app's router, and every setting the app reads is known
//! to the infrastructure's settings list (set by the Container App or documented as optional)
//! and to the README.

use std::collections::BTreeSet;
use std::path::PathBuf;

use handoff::config::SETTINGS;
use serde_json::Value;

use crate::support::TestApp;

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn infra_settings() -> Vec<Value> {
    let raw =
        std::fs::read_to_string(repo("infra/app-settings.json")).expect("infra/app-settings.json");
    let json: Value = serde_json::from_str(&raw).expect("valid JSON");
    json["settings"].as_array().expect("settings array").clone()
}

#[test]
fn every_setting_the_app_reads_is_known_to_infra_and_the_readme() {
    let readme = std::fs::read_to_string(repo("README.md")).unwrap();
    let infra: BTreeSet<String> = infra_settings()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    let mut missing_infra = Vec::new();
    let mut missing_readme = Vec::new();
    for (name, _) in SETTINGS {
        if !infra.contains(*name) {
            missing_infra.push(*name);
        }
        if !readme.contains(&format!("`{name}`")) {
            missing_readme.push(*name);
        }
    }
    assert!(
        missing_infra.is_empty(),
        "not in infra/app-settings.json: {missing_infra:?}"
    );
    assert!(
        missing_readme.is_empty(),
        "not in README's configuration table: {missing_readme:?}"
    );
}

#[test]
fn infra_sets_nothing_the_app_does_not_read_unless_it_says_so() {
    let app: BTreeSet<&str> = SETTINGS.iter().map(|(n, _)| *n).collect();
    for setting in infra_settings() {
        let name = setting["name"].as_str().unwrap();
        // `read_by_app: false` marks settings provisioned ahead of the code that reads them.
        let read_by_app = setting
            .get("read_by_app")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        assert_eq!(
            app.contains(name),
            read_by_app,
            "{name}: infra says read_by_app={read_by_app}, the app {} it",
            if app.contains(name) {
                "reads"
            } else {
                "does not read"
            }
        );
    }
}

/// Paths in the Terraform: `..._path = "/..."` locals and probe paths.
fn infra_paths() -> BTreeSet<String> {
    let mut paths = BTreeSet::new();
    for entry in std::fs::read_dir(repo("infra")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("tf") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for piece in text.split('"').skip(1).step_by(2) {
            let route = piece.split('?').next().unwrap_or_default();
            if route.starts_with("/api/") || route == "/healthz" || route == "/readyz" {
                paths.insert(route.to_owned());
            }
        }
    }
    paths
}

#[tokio::test]
async fn every_route_infra_points_at_exists() {
    let paths = infra_paths();
    for expected in [
        "/api/v1/channels/whatsapp/webhook",
        "/api/v1/calls/incoming",
        "/healthz",
        "/readyz",
    ] {
        assert!(
            paths.contains(expected),
            "infra no longer mentions {expected}: {paths:?}"
        );
    }
    let app = TestApp::spawn().await;
    for path in paths {
        let webhook = path.starts_with("/api/");
        let request = if webhook {
            // An Event Grid validation handshake: what Event Grid sends first to any webhook.
            app.http.post(app.url(&path)).json(&serde_json::json!([{
                "id": "1", "eventType": "Microsoft.EventGrid.SubscriptionValidationEvent",
                "data": {"validationCode": "abc"}, "eventTime": "2026-01-01T00:00:00Z",
                "subject": "", "dataVersion": "1", "metadataVersion": "1", "topic": "/x"
            }]))
        } else {
            app.http.get(app.url(&path))
        };
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        if webhook {
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["validationResponse"], "abc", "{path}");
        }
    }
}
