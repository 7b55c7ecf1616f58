//! `handoff bench` at a tiny size, so that every mode keeps working: the library entry point
//! runs each mode and the report must show exactly-once ingest and complete calls and handoffs.
//! No timing assertions: CI machines vary.

use handoff::bench::{BenchArgs, Mode, run};

use crate::support::services::{COSMOS_EMULATOR_KEY, CosmosServer, RedisServer};

fn tiny(modes: Vec<Mode>) -> BenchArgs {
    BenchArgs {
        modes,
        connections: 8,
        deliveries: 200,
        messages_per_customer: 20,
        calls: 5,
        call_seconds: 3,
        turn_every: 1,
        handoffs: 3,
        handoff_concurrency: 2,
        quiet: true,
        // The callers of `calls` run in a process of their own: this test binary is not
        // `handoff`.
        callers_exe: Some(env!("CARGO_BIN_EXE_handoff").into()),
        ..BenchArgs::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baseline_and_ingest_handle_every_unique_message_exactly_once() {
    let report = run(&tiny(vec![Mode::Baseline, Mode::Ingest]))
        .await
        .unwrap();
    let baseline = report.baseline.expect("baseline ran");
    assert_eq!((baseline.requests, baseline.errors), (200, 0));
    let ingest = report.ingest.expect("ingest ran");
    assert_eq!((ingest.load.requests, ingest.load.errors), (200, 0));
    assert_eq!(ingest.unique_messages + ingest.duplicate_deliveries, 200);
    assert_eq!(ingest.unique_messages, 160, "20% duplicates");
    let v = &ingest.verification;
    assert_eq!(v.expected, 160);
    assert_eq!(
        (v.turns_once, v.turns_missing, v.turns_repeated),
        (160, 0, 0)
    );
    assert_eq!((v.logged, v.backlog), (160, 0));
    assert!(v.exactly_once);
    assert!(ingest.share_of_baseline.is_some());
    let handled = ingest.handled_per_sec.expect("the worker ran");
    // Never faster than the acknowledgements: handling includes the load itself.
    assert!(
        handled > 0.0 && handled <= ingest.load.per_sec * 1.001,
        "{ingest:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_stream_audio_and_every_final_is_answered() {
    let args = BenchArgs {
        voice_turn_slice_us: Some(500),
        ..tiny(vec![Mode::Calls])
    };
    let report = run(&args).await.unwrap();
    let calls = report.calls.expect("calls ran");
    assert_eq!(calls.voice_turn_slice_us, 500, "the slice the run used");
    assert!(
        calls.rss_per_call_kb.is_some(),
        "the first mode in the process reads memory per call"
    );
    assert_eq!(calls.connected, 5);
    assert!(calls.audio_frames > 5 * 50, "{calls:?}");
    assert!(calls.finals >= 5, "{calls:?}");
    assert_eq!(calls.turns_answered, calls.finals, "{calls:?}");
    assert_eq!(calls.engine_turns, calls.finals, "{calls:?}");
    assert!(calls.complete, "{calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handoffs_complete_and_every_step_is_timed() {
    let args = BenchArgs {
        whatsapp_send_rate: Some(1000),
        ..tiny(vec![Mode::Handoff])
    };
    let report = run(&args).await.unwrap();
    let handoff = report.handoff.clone().expect("handoff ran");
    assert_eq!((handoff.handoffs, handoff.completed), (3, 3));
    assert_eq!(handoff.whatsapp_send_rate, 1000, "the pacing the run used");
    assert!(handoff.complete);
    for step in &handoff.steps {
        assert_eq!(step.samples, 3, "{step:?}");
    }
    let json = serde_json::to_value(&report.handoff).unwrap();
    assert!(json["steps"].as_array().is_some_and(|s| !s.is_empty()));
}

/// The same harness against Redis and the Cosmos DB-compatible server (real processes), so
/// that the backends' path of the bench cannot rot either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_and_handoffs_run_against_redis_and_the_cosmos_compatible_server() {
    let redis = RedisServer::start();
    let cosmos = CosmosServer::start();
    let args = BenchArgs {
        deliveries: 100,
        whatsapp_send_rate: Some(1000),
        redis_url: Some(redis.url()),
        cosmos_endpoint: Some(cosmos.endpoint()),
        cosmos_key: Some(COSMOS_EMULATOR_KEY.into()),
        ..tiny(vec![Mode::Ingest, Mode::Handoff])
    };
    let report = run(&args).await.unwrap();
    assert_eq!(report.backend, "cosmos+redis");
    let ingest = report.ingest.expect("ingest ran");
    assert_eq!((ingest.load.requests, ingest.load.errors), (100, 0));
    assert_eq!(ingest.unique_messages, 80, "20% duplicates");
    let v = &ingest.verification;
    assert_eq!(
        (v.turns_once, v.turns_missing, v.turns_repeated),
        (80, 0, 0)
    );
    assert_eq!((v.logged, v.backlog), (80, 0));
    assert!(v.exactly_once);
    let handoff = report.handoff.expect("handoff ran");
    assert_eq!((handoff.handoffs, handoff.completed), (3, 3));
    assert!(handoff.complete);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_after_another_mode_read_no_memory_per_call() {
    let report = run(&tiny(vec![Mode::Baseline, Mode::Calls])).await.unwrap();
    let calls = report.calls.as_ref().expect("calls ran");
    assert!(calls.complete, "{calls:?}");
    assert_eq!(calls.rss_per_call_kb, None, "{calls:?}");
    let table = report.table();
    assert!(
        table.contains("per call not read (another mode ran first in this process"),
        "{table}"
    );
    let json = serde_json::to_value(&report).unwrap();
    assert!(json["calls"]["rss_per_call_kb"].is_null(), "{json}");
}
