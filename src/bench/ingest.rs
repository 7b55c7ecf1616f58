//! `ingest` and `baseline`: Event Grid `AdvancedMessageReceived` deliveries at full speed.
//!
//! `ingest` measures acknowledgements (persist-then-ack) while the inbox worker runs as in
//! production; then waits for the inbox to drain and reads every customer's context and message
//! log back to check that each unique message became exactly one customer turn.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rand::Rng;

use super::{
    Batches, BenchArgs, BenchError, IngestReport, LoadCost, LoadFigures, Progress, Service,
    Verification,
};
use crate::domain::{Channel, CustomerId, Direction, Role};
use crate::store::embedded::WRITER_TOTALS;
use crate::store::inbox::INBOX_LOG_TOTALS;

const CHANNEL_ID: &str = "bench-channel";
/// How long the inbox may take to drain before the verification gives up.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(300);

/// The deliveries: unique messages spread over customers, with redeliveries of earlier ones.
struct Load {
    bodies: Vec<Bytes>,
    /// customer's WhatsApp digits → its unique message ids.
    messages: HashMap<String, Vec<String>>,
    unique: usize,
    duplicates: usize,
}

fn build_load(args: &BenchArgs) -> Load {
    let run = uuid::Uuid::new_v4().simple().to_string();
    let run = &run[..8];
    let share = args.duplicates.clamp(0.0, 0.9);
    let total = args.deliveries.max(1);
    let unique_target = ((total as f64) * (1.0 - share)).round().max(1.0) as usize;
    let customers = unique_target.div_ceil(args.messages_per_customer.max(1));
    let mut rng = rand::rng();
    let mut bodies: Vec<Bytes> = Vec::with_capacity(total);
    let mut firsts: Vec<Bytes> = Vec::with_capacity(unique_target);
    let mut messages: HashMap<String, Vec<String>> = HashMap::new();
    for i in 0..total {
        let remaining_unique = unique_target - firsts.len();
        let remaining = total - i;
        let redeliver = !firsts.is_empty() && remaining > remaining_unique;
        if redeliver {
            let j = rng.random_range(0..firsts.len());
            bodies.push(firsts[j].clone());
            continue;
        }
        let k = firsts.len();
        let from = format!("1425700{:04}", k % customers);
        let message_id = format!("bench-{run}-{k}");
        let body = crate::simulate::whatsapp_text(
            &format!("eg-{run}-{k}"),
            &message_id,
            &from,
            CHANNEL_ID,
            &format!("Message {k}: is there any news about my order?"),
        );
        let body = Bytes::from(body.to_string());
        messages.entry(from).or_default().push(message_id);
        firsts.push(body.clone());
        bodies.push(body);
    }
    Load {
        unique: firsts.len(),
        duplicates: total - firsts.len(),
        bodies,
        messages,
    }
}

/// The same deliveries against a bare axum handler.
pub(super) async fn baseline(
    args: &BenchArgs,
    progress: &Progress,
) -> Result<LoadFigures, BenchError> {
    let load = build_load(args);
    let (url, server) = super::load::bare_server()
        .await
        .map_err(|e| BenchError::Start(e.to_string()))?;
    progress.say(format!(
        "baseline: {} deliveries to a bare axum handler over {} connections",
        load.bodies.len(),
        args.connections
    ));
    let figures = super::load::drive(
        &url,
        Arc::new(load.bodies),
        args.connections,
        "baseline",
        progress,
    )
    .await;
    server.abort();
    Ok(figures)
}

pub(super) async fn run(args: &BenchArgs, progress: &Progress) -> Result<IngestReport, BenchError> {
    let load = build_load(args);
    let service = Service::start(args, !args.ack_only, |s| {
        // The sandbox provider has no Meta rate limits: pacing would only make the drain slow.
        s.whatsapp.send_rate_per_sec = 100_000;
        s.whatsapp.recipient_min_interval = Duration::ZERO;
        s.whatsapp.burst_wait = Duration::from_millis(200);
        s.transcript_max_turns = 100_000;
    })
    .await?;
    let url = format!("{}/api/v1/channels/whatsapp/webhook", service.base);
    progress.say(format!(
        "ingest ({}): {} deliveries ({} unique, {} duplicates, {} customers) over {} connections",
        super::backend_name(args),
        load.bodies.len(),
        load.unique,
        load.duplicates,
        load.messages.len(),
        args.connections
    ));
    let bodies = Arc::new(load.bodies);
    let before = Window::open();
    let figures = super::load::drive(&url, bodies, args.connections, "ingest", progress).await;
    let during_load = before.close();
    if args.ack_only {
        let backlog = service
            .state
            .whatsapp
            .backlog(load.unique + 1)
            .await
            .map_err(|e| BenchError::Failed(format!("reading the inbox: {e}")))?;
        let verification = Verification {
            expected: load.unique,
            backlog,
            exactly_once: backlog == load.unique && figures.errors == 0,
            ..Verification::default()
        };
        service.stop().await;
        return Ok(IngestReport {
            load: figures,
            unique_messages: load.unique,
            duplicate_deliveries: load.duplicates,
            customers: load.messages.len(),
            share_of_baseline: None,
            drain_seconds: 0.0,
            handled_per_sec: None,
            ack_only: true,
            verification,
            during_load,
        });
    }
    let drain_started = Instant::now();
    progress.say("ingest: waiting for the inbox to drain");
    let mut backlog = usize::MAX;
    while drain_started.elapsed() < DRAIN_TIMEOUT {
        backlog = service
            .state
            .whatsapp
            .backlog(1)
            .await
            .unwrap_or(usize::MAX);
        if backlog == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    progress.say(format!(
        "ingest: inbox drained in {drain_seconds:.2} s; verifying"
    ));
    let mut verification = verify(&service, &load.messages).await?;
    verification.backlog = service
        .state
        .whatsapp
        .backlog(1_000_000)
        .await
        .unwrap_or(backlog);
    verification.exactly_once = verification.backlog == 0
        && verification.turns_once == verification.expected
        && verification.logged == verification.expected
        && figures.errors == 0;
    service.stop().await;
    let handled_per_sec = load.unique as f64 / (figures.seconds + drain_seconds).max(1e-9);
    Ok(IngestReport {
        load: figures,
        unique_messages: load.unique,
        duplicate_deliveries: load.duplicates,
        customers: load.messages.len(),
        share_of_baseline: None,
        drain_seconds,
        handled_per_sec: Some(handled_per_sec),
        ack_only: false,
        verification,
        during_load,
    })
}

/// Process CPU and embedded-writer totals at the start of a load window.
struct Window {
    at: Instant,
    cpu: Duration,
    writer: (u64, u64, u64),
    log: (u64, u64, u64),
}

impl Window {
    fn open() -> Self {
        Self {
            at: Instant::now(),
            cpu: super::process_usage().1,
            writer: WRITER_TOTALS.snapshot(),
            log: INBOX_LOG_TOTALS.snapshot(),
        }
    }

    fn close(self) -> LoadCost {
        let wall = self.at.elapsed().as_secs_f64().max(1e-9);
        let cpu = super::process_usage().1.saturating_sub(self.cpu);
        let batches = |before: (u64, u64, u64), after: (u64, u64, u64)| {
            let count = after.0 - before.0;
            let operations = after.1 - before.1;
            Batches {
                batches: count,
                operations,
                mean_batch: operations as f64 / count.max(1) as f64,
                busy: (after.2 - before.2) as f64 / 1e6 / wall,
            }
        };
        LoadCost {
            cores_busy: cpu.as_secs_f64() / wall,
            store_writer: batches(self.writer, WRITER_TOTALS.snapshot()),
            inbox_log: batches(self.log, INBOX_LOG_TOTALS.snapshot()),
        }
    }
}

/// Reads every customer's context and message log back.
async fn verify(
    service: &Service,
    messages: &HashMap<String, Vec<String>>,
) -> Result<Verification, BenchError> {
    let mut v = Verification::default();
    for (from, ids) in messages {
        v.expected += ids.len();
        let customer = CustomerId::parse_phone(&format!("+{from}"))
            .map_err(|e| BenchError::Failed(format!("bench customer {from}: {e}")))?;
        let context = service
            .state
            .stores
            .contexts
            .get(&customer)
            .await
            .map_err(|e| BenchError::Failed(format!("reading a context: {e}")))?;
        let mut turns: HashMap<&str, usize> = HashMap::new();
        for turn in context.iter().flat_map(|c| &c.transcript) {
            if turn.channel == Channel::Whatsapp
                && turn.role == Role::Customer
                && let Some(id) = &turn.source_id
            {
                *turns.entry(id.as_str()).or_default() += 1;
            }
        }
        let logged: std::collections::HashSet<String> = service
            .state
            .whatsapp
            .messages(&customer)
            .await
            .map_err(|e| BenchError::Failed(format!("reading the message log: {e}")))?
            .into_iter()
            .filter(|r| r.direction == Direction::Inbound)
            .map(|r| r.message_id)
            .collect();
        for id in ids {
            match turns.get(id.as_str()).copied().unwrap_or(0) {
                0 => v.turns_missing += 1,
                1 => v.turns_once += 1,
                _ => v.turns_repeated += 1,
            }
            if logged.contains(id) {
                v.logged += 1;
            }
        }
    }
    Ok(v)
}
