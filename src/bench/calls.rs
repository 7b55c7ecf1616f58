//! `calls`: K concurrent calls, each answered through Event Grid and the sandbox Call
//! Automation, each streaming 20 ms audio frames at real time over its media WebSocket with a
//! `Final` transcription every few seconds. Measures the engine's turn latency (the `Final` sent
//! → the play requested at the voice provider), the process's CPU and its resident memory per
//! call.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use chrono::{DateTime, Utc};

use super::{BenchArgs, BenchError, CallsReport, Progress, Service, percentile, process_usage};
use crate::domain::CustomerId;
use crate::simulate::{self, MediaSocket};
use crate::voice::sandbox::VoiceAction;

/// Calls being set up at once (Event Grid delivery, answer, socket).
const RINGING: usize = 32;
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);
/// After the streams stop: time for the last turns to be answered.
const SETTLE: Duration = Duration::from_secs(1);

/// A `Final` transcription: the call and when it was sent.
type FinalSent = (String, DateTime<Utc>);

/// One call's socket, connected and waiting for the start.
struct Connected {
    call_id: String,
    socket: MediaSocket,
}

pub(super) async fn run(args: &BenchArgs, progress: &Progress) -> Result<CallsReport, BenchError> {
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
            let socket = MediaSocket::connect(&url, &phone).await.ok()?;
            Some(Connected { call_id, socket })
        }));
    }
    let mut connected = Vec::with_capacity(k);
    for (i, setup) in setups.into_iter().enumerate() {
        if let Ok(Some(c)) = setup.await {
            connected.push(c);
        }
        if (i + 1) % 100 == 0 {
            progress.say(format!("calls: {} of {k} set up", i + 1));
        }
    }
    progress.say(format!(
        "calls: {} connected; streaming {} s of audio each",
        connected.len(),
        args.call_seconds
    ));

    // 640 bytes of 16 kHz PCM16 (20 ms) → 856 base64 characters, as ACS sends.
    let pcm: Vec<u8> = (0..640u32).map(|i| (i * 7 % 251) as u8).collect();
    let payload = base64::engine::general_purpose::STANDARD.encode(pcm);
    let finals: Arc<Mutex<Vec<FinalSent>>> = Arc::default();
    let frames = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let streaming = Duration::from_secs(args.call_seconds.max(1));
    let turn_every = Duration::from_secs(args.turn_every.max(1));
    let (_, cpu_before) = process_usage();
    let started = Instant::now();
    let end = tokio::time::Instant::now() + streaming;
    let connected_calls = connected.len();
    let n = connected_calls.max(1);
    let mut streams = Vec::with_capacity(connected.len());
    for (i, mut call) in connected.into_iter().enumerate() {
        let payload = payload.clone();
        let finals = finals.clone();
        let frames = frames.clone();
        streams.push(tokio::spawn(async move {
            let frame = call.socket.audio_frame_text(&payload, false);
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
            // Spread the calls' turns over the interval.
            let offset = turn_every.mul_f64(i as f64 / n as f64);
            let mut next_final = tokio::time::Instant::now() + offset;
            let mut utterance = 0u64;
            let mut sent = 0u64;
            loop {
                let now = tick.tick().await;
                if now >= end {
                    break;
                }
                if call.socket.send_rendered(&frame).await.is_err() {
                    break;
                }
                sent += 1;
                if now >= next_final {
                    utterance += 1;
                    let text = format!("I am calling about my bill, question number {utterance}.");
                    let at = Utc::now();
                    if call
                        .socket
                        .transcription(&text, true, utterance * 30_000_000)
                        .await
                        .is_err()
                    {
                        break;
                    }
                    finals
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((call.call_id.clone(), at));
                    next_final += turn_every;
                }
            }
            frames.fetch_add(sent, std::sync::atomic::Ordering::Relaxed);
            call.socket
        }));
    }
    // Memory while every call streams (half way through).
    tokio::time::sleep(streaming / 2).await;
    let (rss_streaming, _) = process_usage();
    progress.say(format!(
        "calls: streaming; resident memory {rss_before} → {rss_streaming} kB"
    ));
    let mut sockets = Vec::with_capacity(streams.len());
    for s in streams {
        if let Ok(socket) = s.await {
            sockets.push(socket);
        }
    }
    let streamed = started.elapsed();
    let (_, cpu_after) = process_usage();
    tokio::time::sleep(SETTLE).await;
    for socket in sockets {
        socket.close().await;
    }

    // Match each Final with the first play requested on its call at or after it.
    let mut plays: HashMap<String, Vec<DateTime<Utc>>> = HashMap::new();
    for (at, action) in sandbox.timed_actions() {
        if let VoiceAction::Play {
            call_connection_id, ..
        } = action
        {
            plays.entry(call_connection_id).or_default().push(at);
        }
    }
    let finals = std::mem::take(&mut *finals.lock().unwrap_or_else(|p| p.into_inner()));
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
    let cpu = cpu_after.saturating_sub(cpu_before).as_secs_f64();
    let report = CallsReport {
        calls: k,
        connected: connected_calls,
        streamed_seconds: streamed.as_secs_f64(),
        audio_frames: frames.load(std::sync::atomic::Ordering::Relaxed),
        finals: finals.len(),
        turns_answered: latencies.len(),
        turn_p50_us: percentile(&latencies, 50.0),
        turn_p95_us: percentile(&latencies, 95.0),
        turn_p99_us: percentile(&latencies, 99.0),
        turn_max_us: latencies.last().copied().unwrap_or(0),
        cpu_seconds: cpu,
        cpu_cores_busy: cpu / streamed.as_secs_f64().max(1e-9),
        rss_before_kb: rss_before,
        rss_streaming_kb: rss_streaming,
        rss_per_call_kb: rss_streaming.saturating_sub(rss_before) as f64 / k as f64,
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
        && calls_that_spoke == k
        && report.turns_answered == report.finals
        && report.media_failures == 0
        && report.malformed_frames == 0;
    Ok(CallsReport { complete, ..report })
}
