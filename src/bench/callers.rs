//! The callers of `calls`, in a process of their own (`handoff bench-callers`, started by the
//! bench): ACS's side of K media WebSockets, each streaming 20 ms audio frames at real time with
//! a `Final` every few seconds. In their own process, the service's CPU and resident memory can
//! be read without the callers' sockets, tasks and buffers in them.
//!
//! The parent writes a [`CallerPlan`] as one JSON document on the child's stdin and closes it.
//! The child connects every call, prints `{"connected":N}` on a line of its own, streams, and
//! prints a [`CallerOutcome`] as a last line. Times are wall-clock (`Utc`): both processes read
//! the same system clock, and the turn latency is matched against the play times the sandbox
//! voice provider records in the parent. The parent reads this process's CPU and memory from
//! /proc.

use std::io::{Read, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::simulate::MediaSocket;

/// Calls connected at once.
const DIALING: usize = 32;

/// What the callers' process is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CallerPlan {
    pub calls: Vec<PlannedCall>,
    /// How long every call streams audio.
    pub seconds: u64,
    /// Seconds between a call's `Final` transcriptions.
    pub turn_every: u64,
}

/// One call to dial: its media URL (with its token) and the caller's phone number.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PlannedCall {
    pub call_id: String,
    pub url: String,
    pub phone: String,
}

/// The first line the callers print: how many sockets are open and about to stream.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Connected {
    pub connected: usize,
}

/// The last line the callers print.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct CallerOutcome {
    pub connected: usize,
    pub frames: u64,
    /// Every `Final` sent: its call and when.
    pub finals: Vec<(String, DateTime<Utc>)>,
}

/// `handoff bench-callers`: reads the plan on stdin, runs it on a single-threaded runtime (one
/// core at most, leaving the other to the service), reports on stdout.
pub fn main() -> Result<(), String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the plan: {e}"))?;
    let plan: CallerPlan =
        serde_json::from_str(&input).map_err(|e| format!("malformed plan: {e}"))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let outcome = runtime.block_on(run(plan, |connected| {
        line(&Connected { connected });
    }));
    line(&outcome);
    Ok(())
}

fn line(value: &impl Serialize) {
    let mut out = std::io::stdout().lock();
    let _ = serde_json::to_writer(&mut out, value);
    let _ = out.write_all(b"\n");
    let _ = out.flush();
}

/// Connects every planned call, calls `connected` with how many sockets opened, streams for the
/// planned time and returns what was sent.
pub async fn run(plan: CallerPlan, connected: impl FnOnce(usize)) -> CallerOutcome {
    let gate = Arc::new(tokio::sync::Semaphore::new(DIALING));
    let dials: Vec<_> = plan
        .calls
        .into_iter()
        .map(|call| {
            let gate = gate.clone();
            tokio::spawn(async move {
                let _permit = gate.acquire().await.ok()?;
                let socket = MediaSocket::connect(&call.url, &call.phone).await.ok()?;
                Some((call.call_id, socket))
            })
        })
        .collect();
    let mut sockets = Vec::with_capacity(dials.len());
    for dial in dials {
        if let Ok(Some(s)) = dial.await {
            sockets.push(s);
        }
    }
    connected(sockets.len());

    // 640 bytes of 16 kHz PCM16 (20 ms) → 856 base64 characters, as ACS sends.
    let pcm: Vec<u8> = (0..640u32).map(|i| (i * 7 % 251) as u8).collect();
    let payload = base64::engine::general_purpose::STANDARD.encode(pcm);
    let frames = Arc::new(AtomicU64::new(0));
    let streaming = Duration::from_secs(plan.seconds.max(1));
    let turn_every = Duration::from_secs(plan.turn_every.max(1));
    let end = tokio::time::Instant::now() + streaming;
    let n = sockets.len().max(1);
    let count = sockets.len();
    let streams: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(i, (call_id, mut socket))| {
            let payload = payload.clone();
            let frames = frames.clone();
            tokio::spawn(async move {
                let frame = socket.audio_frame_text(&payload, false);
                let mut tick = tokio::time::interval(Duration::from_millis(20));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
                // Spread the calls' turns over the interval.
                let offset = turn_every.mul_f64(i as f64 / n as f64);
                let mut next_final = tokio::time::Instant::now() + offset;
                let mut utterance = 0u64;
                let mut sent = 0u64;
                let mut finals = Vec::new();
                loop {
                    let now = tick.tick().await;
                    if now >= end || socket.send_rendered(&frame).await.is_err() {
                        break;
                    }
                    sent += 1;
                    if now >= next_final {
                        utterance += 1;
                        let text =
                            format!("I am calling about my bill, question number {utterance}.");
                        let at = Utc::now();
                        if socket
                            .transcription(&text, true, utterance * 30_000_000)
                            .await
                            .is_err()
                        {
                            break;
                        }
                        finals.push((call_id.clone(), at));
                        next_final += turn_every;
                    }
                }
                frames.fetch_add(sent, Ordering::Relaxed);
                (socket, finals)
            })
        })
        .collect();
    let mut outcome = CallerOutcome {
        connected: count,
        ..CallerOutcome::default()
    };
    let mut open = Vec::with_capacity(streams.len());
    for stream in streams {
        if let Ok((socket, finals)) = stream.await {
            outcome.finals.extend(finals);
            open.push(socket);
        }
    }
    outcome.frames = frames.load(Ordering::Relaxed);
    // The last turns are answered before the sockets close (the parent waits for them).
    tokio::time::sleep(super::calls::SETTLE).await;
    for socket in open {
        socket.close().await;
    }
    outcome
}
