//! The bench report: what was measured, as JSON for machines and as a table for people.

use std::fmt::Write as _;

use serde::Serialize;

use super::BenchArgs;

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// `embedded`, `embedded+redis`, `cosmos`, `cosmos+redis`.
    pub backend: String,
    pub cores: usize,
    pub baseline: Option<LoadFigures>,
    pub ingest: Option<IngestReport>,
    pub calls: Option<CallsReport>,
    pub handoff: Option<HandoffReport>,
}

/// A closed-loop HTTP load: every connection sends its next request when the last was answered.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadFigures {
    pub connections: usize,
    pub requests: usize,
    /// Requests answered other than 2xx, or not answered.
    pub errors: usize,
    pub seconds: f64,
    pub per_sec: f64,
    pub p50_us: u64,
    pub p95_us: u64,
    pub p99_us: u64,
    pub max_us: u64,
}

impl LoadFigures {
    /// The load generator could not run at all (no thread, no runtime, a malformed URL): every
    /// request counts as an error, and why is said on stderr.
    pub(crate) fn failed(connections: usize, unsent: usize, why: &str) -> Self {
        eprintln!("bench: the load generator could not run: {why}");
        Self {
            connections,
            requests: 0,
            errors: unsent,
            seconds: 0.0,
            per_sec: 0.0,
            p50_us: 0,
            p95_us: 0,
            p99_us: 0,
            max_us: 0,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct IngestReport {
    /// Deliveries/s and acknowledgement latency (request sent → 200 received).
    pub load: LoadFigures,
    pub unique_messages: usize,
    pub duplicate_deliveries: usize,
    pub customers: usize,
    /// ingest deliveries/s ÷ baseline requests/s, when the baseline ran in the same run.
    pub share_of_baseline: Option<f64>,
    /// From the end of the load until the inbox was empty.
    pub drain_seconds: f64,
    /// Unique messages ÷ (load + drain seconds): how fast messages were not only acknowledged
    /// but handled (turn recorded, context written). The ack rate alone hides the worker, which
    /// may still be busy long after the last acknowledgement. `None` when the worker did not run.
    pub handled_per_sec: Option<f64>,
    /// The inbox worker did not run: `verification.backlog` must equal the unique messages
    /// (each recorded once, none handled).
    pub ack_only: bool,
    pub verification: Verification,
    /// What the process spent during the load (not the drain).
    pub during_load: LoadCost,
}

/// CPU and the durable writer's batches over a load window.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LoadCost {
    /// Process CPU time (user + system) ÷ wall time: cores busy, load generator included.
    pub cores_busy: f64,
    /// redb's group commits (the worker's writes, the inbox's checkpoints).
    pub store_writer: Batches,
    /// The embedded inbox log's synced batches (what acknowledgements wait for).
    pub inbox_log: Batches,
}

/// One serial stage's batches over a window: how many, the operations they carried, and the
/// share of wall time its thread spent inside one.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Batches {
    pub batches: u64,
    pub operations: u64,
    pub mean_batch: f64,
    pub busy: f64,
}

/// Read back from the service's own records, not from the load generator.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Verification {
    pub expected: usize,
    /// Unique messages that are exactly one customer turn in their customer's context.
    pub turns_once: usize,
    /// Unique messages with no turn.
    pub turns_missing: usize,
    /// Unique messages with more than one turn.
    pub turns_repeated: usize,
    /// Unique messages in the customer's message log (inbound).
    pub logged: usize,
    /// Inbox entries still pending when the check ran (with `ack_only`, all of them).
    pub backlog: usize,
    pub exactly_once: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct CallsReport {
    pub calls: usize,
    pub connected: usize,
    pub streamed_seconds: f64,
    pub audio_frames: u64,
    pub finals: usize,
    /// Finals followed by a play request on the same call.
    pub turns_answered: usize,
    /// End to end: `Final` sent by the caller's socket → play requested at the voice provider
    /// (includes the socket and the wait for the service's reader to be scheduled).
    pub turn_p50_us: u64,
    pub turn_p95_us: u64,
    pub turn_p99_us: u64,
    pub turn_max_us: u64,
    /// The engine's turn latency as the service measures it (`VoiceStats::turn_latency`):
    /// `Final` received from the socket → play requested. One per answered turn.
    pub engine_turns: usize,
    pub engine_p50_us: u64,
    pub engine_p95_us: u64,
    pub engine_p99_us: u64,
    pub engine_max_us: u64,
    /// The time slice the voice-turn threads asked the kernel for, in µs (0: the kernel's
    /// default; `VOICE_TURN_SLICE_US`, `--voice-turn-slice-us`).
    pub voice_turn_slice_us: u64,
    /// CPU (user + system) of the service's process while the calls streamed (the callers run
    /// in a process of their own).
    pub cpu_seconds: f64,
    pub cpu_cores_busy: f64,
    /// The service's resident memory before the calls and half way through streaming.
    pub rss_before_kb: u64,
    pub rss_streaming_kb: u64,
    /// `None` when another mode ran before in this process (see `calls::run`).
    pub rss_per_call_kb: Option<f64>,
    /// The callers' process: cores busy while streaming, resident memory half way through.
    pub callers_cpu_cores_busy: f64,
    pub callers_rss_kb: u64,
    /// Embedded group commits while streaming, and the operations they carried.
    pub durable_commits: u64,
    pub durable_operations: u64,
    pub media_failures: u64,
    pub malformed_frames: u64,
    /// Every call connected, streamed, and had every `Final` answered.
    pub complete: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct HandoffReport {
    /// The pacing the sends ran under: WhatsApp sends per second per business number.
    pub whatsapp_send_rate: u32,
    pub handoffs: usize,
    pub completed: usize,
    pub steps: Vec<StepFigures>,
    /// Every handoff reached `call_ended` after the template was accepted.
    pub complete: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct StepFigures {
    pub step: String,
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Report {
    pub(super) fn new(args: &BenchArgs) -> Self {
        Self {
            backend: super::backend_name(args),
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            baseline: None,
            ingest: None,
            calls: None,
            handoff: None,
        }
    }

    /// The summary table printed at the end of a run.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "handoff bench: backend {}, {} cores (HTTP load generator in the same process; the callers of `calls` in their own)",
            self.backend, self.cores
        );
        let load_row = |out: &mut String, name: &str, l: &LoadFigures| {
            let _ = writeln!(
                out,
                "  {name:<9} {:>9.0} req/s  p50 {:>6} µs  p95 {:>6} µs  p99 {:>6} µs  max {:>7} µs  ({} requests, {} connections, {} errors)",
                l.per_sec,
                l.p50_us,
                l.p95_us,
                l.p99_us,
                l.max_us,
                l.requests,
                l.connections,
                l.errors
            );
        };
        if let Some(b) = &self.baseline {
            load_row(&mut out, "baseline", b);
        }
        if let Some(i) = &self.ingest {
            load_row(&mut out, "ingest", &i.load);
            if let Some(share) = i.share_of_baseline {
                let _ = writeln!(out, "            {:.0}% of the baseline", share * 100.0);
            }
            let c = &i.during_load;
            let _ = writeln!(
                out,
                "            during the load: {:.2} cores busy; inbox log: {} syncs carrying {} operations (mean {:.1}), busy {:.0}%; store: {} commits carrying {} operations (mean {:.1}), busy {:.0}%",
                c.cores_busy,
                c.inbox_log.batches,
                c.inbox_log.operations,
                c.inbox_log.mean_batch,
                c.inbox_log.busy * 100.0,
                c.store_writer.batches,
                c.store_writer.operations,
                c.store_writer.mean_batch,
                c.store_writer.busy * 100.0
            );
            let v = &i.verification;
            if i.ack_only {
                let _ = writeln!(
                    out,
                    "            ack only (no inbox worker): {} unique messages, {} duplicate deliveries; inbox holds {} entries; exactly once: {}",
                    i.unique_messages,
                    i.duplicate_deliveries,
                    v.backlog,
                    if v.exactly_once { "yes" } else { "NO" }
                );
            } else {
                let _ = writeln!(
                    out,
                    "            {} unique messages, {} duplicate deliveries, {} customers; inbox drained {:.2} s after the load; {:.0} messages/s handled (load + drain)",
                    i.unique_messages,
                    i.duplicate_deliveries,
                    i.customers,
                    i.drain_seconds,
                    i.handled_per_sec.unwrap_or(0.0)
                );
                let _ = writeln!(
                    out,
                    "            exactly once: {} (turns once {}, missing {}, repeated {}; logged {}/{}; backlog {})",
                    if v.exactly_once { "yes" } else { "NO" },
                    v.turns_once,
                    v.turns_missing,
                    v.turns_repeated,
                    v.logged,
                    v.expected,
                    v.backlog
                );
            }
        }
        if let Some(c) = &self.calls {
            let _ = writeln!(
                out,
                "  calls     {}/{} connected, {:.1} s streamed, {} audio frames, {}/{} finals answered",
                c.connected,
                c.calls,
                c.streamed_seconds,
                c.audio_frames,
                c.turns_answered,
                c.finals
            );
            let _ = writeln!(
                out,
                "            engine turn (Final received → play requested) p50 {} µs  p95 {} µs  p99 {} µs  max {} µs  ({} turns; voice-turn slice {})",
                c.engine_p50_us,
                c.engine_p95_us,
                c.engine_p99_us,
                c.engine_max_us,
                c.engine_turns,
                match c.voice_turn_slice_us {
                    0 => "the kernel's default".to_owned(),
                    us => format!("{us} µs"),
                }
            );
            let _ = writeln!(
                out,
                "            end to end (Final sent → play requested) p50 {} µs  p95 {} µs  p99 {} µs  max {} µs",
                c.turn_p50_us, c.turn_p95_us, c.turn_p99_us, c.turn_max_us
            );
            let _ = writeln!(
                out,
                "            service: CPU {:.2} cores busy; RSS {} → {} kB = {}; callers' process: CPU {:.2} cores, RSS {} kB",
                c.cpu_cores_busy,
                c.rss_before_kb,
                c.rss_streaming_kb,
                match c.rss_per_call_kb {
                    Some(kb) => format!("{kb:.1} kB per call"),
                    None => "per call not read (another mode ran first in this process; run calls first or alone)".into(),
                },
                c.callers_cpu_cores_busy,
                c.callers_rss_kb
            );
            let _ = writeln!(
                out,
                "            {} durable commits carrying {} writes; media failures {}, malformed {}; complete: {}",
                c.durable_commits,
                c.durable_operations,
                c.media_failures,
                c.malformed_frames,
                if c.complete { "yes" } else { "NO" }
            );
        }
        if let Some(h) = &self.handoff {
            let _ = writeln!(
                out,
                "  handoff   {}/{} completed; complete: {}; WhatsApp pacing {} sends/s per number",
                h.completed,
                h.handoffs,
                if h.complete { "yes" } else { "NO" },
                h.whatsapp_send_rate
            );
            for s in &h.steps {
                let _ = writeln!(
                    out,
                    "            {:<42} p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms  (n={})",
                    s.step, s.p50_ms, s.p99_ms, s.max_ms, s.samples
                );
            }
        }
        out
    }
}
