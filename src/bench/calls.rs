//! `calls`: K concurrent calls, each answered through Event Grid and the sandbox Call
//! Automation, each streaming 20 ms audio frames at real time over its media WebSocket with a
//! `Final` transcription every few seconds. Measures each turn's latency twice: as the engine
//! sees it (the `Final` received from the socket → the play requested, recorded by the service)
//! and end to end (the `Final` sent by the caller → the play recorded by the sandbox voice
//! provider); and the service's CPU and its resident memory per call. The calls are answered
//! here; their media sockets are played by the callers' process ([`super::callers`]), so that
//! the service's process holds only the service.

use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::callers::{CallerOutcome, CallerPlan, Connected, PlannedCall};
use super::{
    BenchArgs, BenchError, CallsReport, Progress, Service, percentile, process_usage,
    process_usage_of,
};
use crate::domain::CustomerId;
use crate::simulate;
use crate::store::embedded::WRITER_TOTALS;
use crate::voice::sandbox::VoiceAction;

/// Calls being answered at once (Event Grid delivery, answer, call connection id).
const RINGING: usize = 32;
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// After the streams stop: time for the last turns to be answered.
pub(super) const SETTLE: Duration = Duration::from_secs(1);

/// `first`: no other mode has run in this process yet. After one, the process's resident
/// memory includes what that mode's service left in the allocator, and the allocator may give
/// it back while the calls stream (a full `bench` once read 130 MB before the calls and 65 MB
/// during them), so no figure per call is read then.
pub(super) async fn run(
    args: &BenchArgs,
    progress: &Progress,
    first: bool,
) -> Result<CallsReport, BenchError> {
    let service = Service::start(args, true, |s| {
        // A short wait: the agent answers turns and never offers WhatsApp (that is `handoff`).
        s.handoff.queue_wait_seconds = 0;
        s.voice.silence_timeout = Duration::from_secs(600);
    })
    .await?;
    let sandbox = service
        .state
        .voice
        .sandbox
        .clone()
        .ok_or_else(|| BenchError::Failed("calls needs the sandbox voice provider".into()))?;
    let k = args.calls.max(1);
    let (rss_before, _) = process_usage();
    progress.say(format!(
        "calls ({}): setting up {k} calls",
        super::backend_name(args)
    ));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let gate = Arc::new(tokio::sync::Semaphore::new(RINGING));
    let mut setups = Vec::with_capacity(k);
    // One client for every set-up: a client per call would count its pool and TLS roots as
    // the service's memory per call.
    let http = reqwest::Client::new();
    for i in 0..k {
        let http = http.clone();
        let gate = gate.clone();
        let state = service.state.clone();
        let sandbox = sandbox.clone();
        let base = service.base.clone();
        let run = run.clone();
        setups.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.ok()?;
            let phone = format!("+1425600{:04}", i);
            let event = simulate::incoming_call(
                &format!("bench-call-{run}-{i}"),
                &format!("corr-{run}-{i}"),
                &phone,
            );
            let answered = http
                .post(format!("{base}/api/v1/calls/incoming"))
                .json(&event)
                .send()
                .await
                .ok()?;
            if !answered.status().is_success() {
                return None;
            }
            let customer = CustomerId::parse_phone(&phone).ok()?;
            let deadline = Instant::now() + SETUP_TIMEOUT;
            let call_id = loop {
                if let Ok(Some(ctx)) = state.stores.contexts.get(&customer).await
                    && let Some(session) = ctx.voice_sessions.last()
                {
                    break session.call_connection_id.clone();
                }
                if Instant::now() > deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            let url = sandbox.media_url(&call_id)?;
            Some(PlannedCall {
                call_id,
                url,
                phone,
            })
        }));
    }
    let mut planned = Vec::with_capacity(k);
    for (i, setup) in setups.into_iter().enumerate() {
        if let Ok(Some(c)) = setup.await {
            planned.push(c);
        }
        if (i + 1) % 100 == 0 {
            progress.say(format!("calls: {} of {k} answered", i + 1));
        }
    }
    let streaming = Duration::from_secs(args.call_seconds.max(1));
    let mut callers = Callers::start(
        args,
        &CallerPlan {
            calls: planned,
            seconds: args.call_seconds,
            turn_every: args.turn_every,
        },
    )
    .await?;
    let connected_calls = callers.connected(SETUP_TIMEOUT).await?;
    let (_, cpu_before) = process_usage();
    let writer_before = WRITER_TOTALS.snapshot();
    let callers_before = callers.usage();
    let started = Instant::now();
    progress.say(format!(
        "calls: {connected_calls} connected (callers in process {}); streaming {} s of audio each",
        callers.pid, args.call_seconds
    ));
    // Memory while every call streams (half way through).
    tokio::time::sleep(streaming / 2).await;
    let (rss_streaming, _) = process_usage();
    let (callers_rss, _) = callers.usage();
    progress.say(format!(
        "calls: streaming; the service's resident memory {rss_before} → {rss_streaming} kB"
    ));
    tokio::time::sleep(streaming.saturating_sub(started.elapsed())).await;
    let streamed = started.elapsed();
    let (_, cpu_after) = process_usage();
    let writer_after = WRITER_TOTALS.snapshot();
    let callers_after = callers.usage();
    let outcome = callers.outcome(streaming + SETUP_TIMEOUT).await?;
    let frames = outcome.frames;
    let finals = outcome.finals;

    // Match each Final with the first play requested on its call at or after it.
    let mut plays: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    let actions_dropped = sandbox.actions_dropped();
    if actions_dropped > 0 {
        // A `Final` whose play is gone would be matched with a later one: not a figure.
        progress.say(format!(
            "calls: the sandbox dropped its {actions_dropped} oldest actions (it keeps a bounded record); the run is incomplete"
        ));
    }
    for (at, action) in sandbox.timed_actions() {
        if let VoiceAction::Play {
            call_connection_id, ..
        } = action
        {
            plays.entry(call_connection_id).or_default().push(at);
        }
    }
    let mut latencies = Vec::with_capacity(finals.len());
    for (call_id, sent) in &finals {
        if let Some(at) = plays
            .get(call_id)
            .and_then(|p| p.iter().find(|at| *at >= sent))
        {
            latencies.push((*at - *sent).num_microseconds().unwrap_or(i64::MAX) as u64);
        }
    }
    latencies.sort_unstable();
    let stats = service.state.voice.stats.snapshot();
    let mut engine: Vec<u64> = service
        .state
        .voice
        .stats
        .recent_turn_latencies()
        .into_iter()
        .map(|d| d.as_micros() as u64)
        .collect();
    engine.sort_unstable();
    let cpu = cpu_after.saturating_sub(cpu_before).as_secs_f64();
    let report = CallsReport {
        calls: k,
        connected: connected_calls,
        streamed_seconds: streamed.as_secs_f64(),
        audio_frames: frames,
        finals: finals.len(),
        turns_answered: latencies.len(),
        turn_p50_us: percentile(&latencies, 50.0),
        turn_p95_us: percentile(&latencies, 95.0),
        turn_p99_us: percentile(&latencies, 99.0),
        turn_max_us: latencies.last().copied().unwrap_or(0),
        engine_turns: engine.len(),
        engine_p50_us: percentile(&engine, 50.0),
        engine_p95_us: percentile(&engine, 95.0),
        engine_p99_us: percentile(&engine, 99.0),
        engine_max_us: engine.last().copied().unwrap_or(0),
        voice_turn_slice_us: service
            .state
            .settings
            .voice
            .turn_slice
            .map_or(0, |slice| slice.as_micros() as u64),
        cpu_seconds: cpu,
        cpu_cores_busy: cpu / streamed.as_secs_f64().max(1e-9),
        rss_before_kb: rss_before,
        rss_streaming_kb: rss_streaming,
        rss_per_call_kb: first.then(|| rss_streaming.saturating_sub(rss_before) as f64 / k as f64),
        callers_cpu_cores_busy: callers_after
            .1
            .saturating_sub(callers_before.1)
            .as_secs_f64()
            / streamed.as_secs_f64().max(1e-9),
        callers_rss_kb: callers_rss,
        durable_commits: writer_after.0 - writer_before.0,
        durable_operations: writer_after.1 - writer_before.1,
        media_failures: stats.media_failures,
        malformed_frames: stats.malformed_frames,
        complete: false,
    };
    service.stop().await;
    let calls_that_spoke = finals
        .iter()
        .map(|(c, _)| c.as_str())
        .collect::<std::collections::HashSet<_>>()
        .len();
    let complete = report.connected == k
        && actions_dropped == 0
        && calls_that_spoke == k
        && report.turns_answered == report.finals
        && report.media_failures == 0
        && report.malformed_frames == 0;
    Ok(CallsReport { complete, ..report })
}

/// The callers' process (`handoff bench-callers`, see [`super::callers`]).
struct Callers {
    child: tokio::process::Child,
    pid: u32,
    lines: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl Callers {
    /// Starts the callers' process and hands it the plan.
    async fn start(args: &BenchArgs, plan: &CallerPlan) -> Result<Self, BenchError> {
        let failed = |what: &str, e: &dyn std::fmt::Display| {
            BenchError::Failed(format!("the callers' process: {what}: {e}"))
        };
        let exe = match &args.callers_exe {
            Some(exe) => exe.clone(),
            None => std::env::current_exe().map_err(|e| failed("no executable", &e))?,
        };
        let mut child = tokio::process::Command::new(&exe)
            .arg("bench-callers")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| failed(&format!("cannot start {}", exe.display()), &e))?;
        let pid = child.id().unwrap_or_default();
        let (Some(mut stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err(BenchError::Failed(
                "the callers' process has no pipes".into(),
            ));
        };
        let body = serde_json::to_vec(plan).map_err(|e| failed("plan", &e))?;
        stdin
            .write_all(&body)
            .await
            .map_err(|e| failed("cannot send the plan", &e))?;
        drop(stdin);
        Ok(Self {
            child,
            pid,
            lines: BufReader::new(stdout).lines(),
        })
    }

    /// Waits for every socket to be connected; how many are.
    async fn connected(&mut self, within: Duration) -> Result<usize, BenchError> {
        let line: Connected = self.next(within, "their connections").await?;
        Ok(line.connected)
    }

    /// The callers' resident memory (kB) and CPU time.
    fn usage(&self) -> (u64, Duration) {
        process_usage_of(&self.pid.to_string())
    }

    /// Waits for the callers' report and their exit.
    async fn outcome(mut self, within: Duration) -> Result<CallerOutcome, BenchError> {
        let outcome = self.next(within, "what they sent").await?;
        let _ = self.child.wait().await;
        Ok(outcome)
    }

    async fn next<T: DeserializeOwned>(
        &mut self,
        within: Duration,
        what: &str,
    ) -> Result<T, BenchError> {
        let line = match tokio::time::timeout(within, self.lines.next_line()).await {
            Err(_) => format!("did not report {what} within {within:?}"),
            Ok(Err(e)) => format!("cannot read {what}: {e}"),
            Ok(Ok(None)) => format!("ended without reporting {what}"),
            Ok(Ok(Some(line))) => {
                return serde_json::from_str(&line).map_err(|e| {
                    BenchError::Failed(format!(
                        "the callers' process reported {what} as {line:?}: {e}"
                    ))
                });
            }
        };
        Err(BenchError::Failed(format!("the callers' process {line}")))
    }
}
