//! A rough ingest throughput check (ignored by default; run it in release for real figures):
//! 64 connections post single-event deliveries for many customers as fast as they can.
//! `cargo nextest run --release --test it whatsapp_load --run-ignored only --no-capture`

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;

use crate::support::TestApp;
use crate::whatsapp::{quick, received};

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load check, not a test; prints deliveries per second"]
async fn whatsapp_ingest_throughput() {
    let app = TestApp::spawn_with(quick).await;
    // LOAD_PATH=/healthz gives the baseline of the same client and server.
    let path =
        std::env::var("LOAD_PATH").unwrap_or_else(|_| "/api/v1/channels/whatsapp/webhook".into());
    let url = app.url(&path);
    let done = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let run_for = Duration::from_secs(5);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..64 {
        let http = reqwest::Client::new();
        let url = url.clone();
        let done = done.clone();
        let failed = failed.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            let path = std::env::var("LOAD_PATH").unwrap_or_default();
            while start.elapsed() < run_for {
                i += 1;
                let from = format!("1425{:03}{:04}", c, i % 1000);
                let body = json!([received(
                    &format!("e-{c}-{i}"),
                    &format!("m-{c}-{i}"),
                    json!({"messageType": "text", "content": "hello", "from": from}),
                )])
                .to_string();
                match http
                    .request(
                        if path == "/healthz" {
                            reqwest::Method::GET
                        } else {
                            reqwest::Method::POST
                        },
                        &url,
                    )
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await
                {
                    Ok(r) if r.status() == 200 => done.fetch_add(1, Ordering::Relaxed),
                    _ => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let n = done.load(Ordering::Relaxed);
    println!(
        "whatsapp ingest: {n} deliveries in {secs:.1}s = {:.0}/s, {} failed",
        n as f64 / secs,
        failed.load(Ordering::Relaxed)
    );
    assert_eq!(failed.load(Ordering::Relaxed), 0);
}

#[tokio::test(flavor = "multi_thread")]
#[ignore = "load check, not a test; prints appends per second"]
async fn whatsapp_inbox_append_throughput() {
    use handoff::store::embedded::EmbeddedDb;
    use handoff::store::inbox::{EmbeddedInbox, Inbox, InboxEvent, NewEntry};
    let dir = tempfile::tempdir().unwrap();
    let inbox = Arc::new(
        EmbeddedInbox::new(EmbeddedDb::open(dir.path()).unwrap())
            .await
            .unwrap(),
    );
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..64 {
        let inbox = inbox.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = 0u64;
            while start.elapsed() < Duration::from_secs(3) {
                i += 1;
                let status = handoff::domain::StatusUpdate {
                    message_id: format!("m-{c}-{i}"),
                    status: handoff::domain::DeliveryStatus::Sent,
                    customer: None,
                    at: chrono::Utc::now(),
                    error_code: None,
                    pricing: None,
                    conversation: None,
                };
                inbox
                    .append(vec![NewEntry {
                        dedupe_keys: vec![format!("eg:{c}-{i}")],
                        partition: format!("p{c}"),
                        event: InboxEvent::Status(status),
                    }])
                    .await
                    .unwrap();
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let n = done.load(Ordering::Relaxed);
    println!(
        "inbox append: {n} in {:.1}s = {:.0}/s",
        start.elapsed().as_secs_f64(),
        n as f64 / start.elapsed().as_secs_f64()
    );
}
