//! `handoff bench`: the load and performance harness. Starts the service in-process on a free
//! loopback port (embedded defaults, or Redis and Cosmos DB when given) and drives it over real
//! HTTP and WebSocket with the providers' side from [`crate::simulate`]:
//!
//! - `baseline`: the ingest load against a bare axum handler answering 200 at once, so that the
//!   ingest figure reads as a share of what this machine can do at all;
//! - `ingest`: Event Grid `AdvancedMessageReceived` deliveries at full speed (with duplicates),
//!   then a check, from the customers' contexts and the message log, that every unique message
//!   was handled exactly once;
//! - `calls`: concurrent calls streaming real-time audio with a `Final` every few seconds;
//! - `handoff`: complete handoffs with the scripted agent, step by step.
//!
//! The HTTP load generator runs in the same process, on the same cores, as the service (on a
//! runtime thread of its own); the callers of `calls` run in a process of their own
//! ([`callers`]), so that the service's CPU and memory per call can be read alone.

pub mod callers;
mod calls;
mod ingest;
mod load;
mod report;
mod scenario;

use std::time::Duration;

use clap::{Args, ValueEnum};

pub use report::{
    Batches, CallsReport, HandoffReport, IngestReport, LoadCost, LoadFigures, Report, StepFigures,
    Verification,
};

/// What `handoff bench` runs and how hard.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Modes to run, in this order (default: all four, `calls` first: its memory per call is
    /// read only in a process no other mode has used yet).
    #[arg(value_enum)]
    pub modes: Vec<Mode>,
    /// Concurrent keep-alive connections of the ingest and baseline load.
    #[arg(long, default_value_t = 64)]
    pub connections: usize,
    /// Event Grid deliveries sent by `ingest` and `baseline`.
    #[arg(long, default_value_t = 40_000)]
    pub deliveries: usize,
    /// Share of the deliveries that redeliver an earlier event (0.0 to 0.9).
    #[arg(long, default_value_t = 0.2)]
    pub duplicates: f64,
    /// Unique WhatsApp messages per simulated customer in `ingest`.
    #[arg(long, default_value_t = 40)]
    pub messages_per_customer: usize,
    /// Concurrent calls of `calls`.
    #[arg(long, default_value_t = 200)]
    pub calls: usize,
    /// How long every call streams audio, in seconds.
    #[arg(long, default_value_t = 20)]
    pub call_seconds: u64,
    /// Seconds between a call's `Final` transcriptions.
    #[arg(long, default_value_t = 3)]
    pub turn_every: u64,
    /// Complete handoffs of `handoff`.
    #[arg(long, default_value_t = 50)]
    pub handoffs: usize,
    /// Handoffs in flight at once.
    #[arg(long, default_value_t = 4)]
    pub handoff_concurrency: usize,
    /// WhatsApp sends per second per business number in `handoff` (the service's pacing,
    /// `WHATSAPP_SEND_RATE_PER_SEC`; unset: the service's default, Meta's standard
    /// throughput). Sends beyond it in any one second wait for the window; a high value shows
    /// the saga without any pacing.
    #[arg(long)]
    pub whatsapp_send_rate: Option<u32>,
    /// The time slice in microseconds the service's voice-turn threads ask the kernel for
    /// (`VOICE_TURN_SLICE_US`; unset: the service's default; 0: the kernel's default), to
    /// compare `calls` with and without it.
    #[arg(long)]
    pub voice_turn_slice_us: Option<u64>,
    /// `ingest` without the inbox worker: measures acknowledgements alone, then checks that
    /// every unique message is in the inbox exactly once (nothing is handled).
    #[arg(long)]
    pub ack_only: bool,
    /// Redis URL: claims and the context cache in Redis (default: in-process, embedded).
    #[arg(long)]
    pub redis_url: Option<String>,
    /// Cosmos DB (or the Cosmos-compatible test server) endpoint for the durable context store.
    #[arg(long, requires = "cosmos_key")]
    pub cosmos_endpoint: Option<String>,
    /// Cosmos DB account key.
    #[arg(long)]
    pub cosmos_key: Option<String>,
    /// The `handoff` executable that runs the callers of `calls` in a process of their own
    /// (default: this executable).
    #[arg(long, hide = true)]
    pub callers_exe: Option<std::path::PathBuf>,
    /// Print the report as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// No progress lines on stderr.
    #[arg(long)]
    pub quiet: bool,
}

impl Default for BenchArgs {
    fn default() -> Self {
        Self {
            modes: Vec::new(),
            connections: 64,
            deliveries: 40_000,
            duplicates: 0.2,
            messages_per_customer: 40,
            calls: 200,
            call_seconds: 20,
            turn_every: 3,
            handoffs: 50,
            handoff_concurrency: 4,
            whatsapp_send_rate: None,
            voice_turn_slice_us: None,
            ack_only: false,
            redis_url: None,
            cosmos_endpoint: None,
            cosmos_key: None,
            callers_exe: None,
            json: false,
            quiet: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    Baseline,
    Ingest,
    Calls,
    Handoff,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start the service: {0}")]
    Start(String),
    #[error("{0}")]
    Failed(String),
}

/// Runs the chosen modes (all when none is chosen) and returns the report.
pub async fn run(args: &BenchArgs) -> Result<Report, BenchError> {
    let modes = if args.modes.is_empty() {
        vec![Mode::Calls, Mode::Baseline, Mode::Ingest, Mode::Handoff]
    } else {
        args.modes.clone()
    };
    let progress = Progress { quiet: args.quiet };
    let mut report = Report::new(args);
    for (i, mode) in modes.into_iter().enumerate() {
        match mode {
            Mode::Baseline => report.baseline = Some(ingest::baseline(args, &progress).await?),
            Mode::Ingest => {
                let mut figures = ingest::run(args, &progress).await?;
                if let Some(base) = &report.baseline
                    && base.per_sec > 0.0
                {
                    figures.share_of_baseline = Some(figures.load.per_sec / base.per_sec);
                }
                report.ingest = Some(figures);
            }
            Mode::Calls => report.calls = Some(calls::run(args, &progress, i == 0).await?),
            Mode::Handoff => report.handoff = Some(scenario::run(args, &progress).await?),
        }
    }
    Ok(report)
}

/// Progress lines on stderr while a mode runs.
pub(crate) struct Progress {
    quiet: bool,
}

impl Progress {
    pub(crate) fn say(&self, line: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("bench: {}", line.as_ref());
        }
    }
}

/// The service, running in-process for one mode.
pub(crate) struct Service {
    pub state: crate::app::AppState,
    pub base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<Result<(), crate::app::StartupError>>,
    _data: crate::demo::TempDir,
}

impl Service {
    /// Builds and serves the app on a free loopback port with the bench's backends; `tune`
    /// adjusts the settings for the mode.
    pub(crate) async fn start(
        args: &BenchArgs,
        workers: bool,
        tune: impl FnOnce(&mut crate::config::Settings),
    ) -> Result<Self, BenchError> {
        let data = crate::demo::tempfile_dir().map_err(|e| BenchError::Start(e.to_string()))?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| BenchError::Start(e.to_string()))?
            .port();
        let mut settings = crate::config::Settings::embedded(data.path());
        settings.host = std::net::IpAddr::from([127, 0, 0, 1]);
        settings.port = port;
        settings.public_base_url = format!("http://127.0.0.1:{port}");
        settings.shutdown_grace = Duration::from_secs(5);
        if let Some(url) = &args.redis_url {
            settings.redis_url = Some(crate::config::Secret::new(url.clone()));
            // A private prefix per run: claims of an earlier run must not read as duplicates.
            settings.redis_key_prefix = format!("bench-{}:", uuid::Uuid::new_v4().simple());
        }
        if let (Some(endpoint), Some(key)) = (&args.cosmos_endpoint, &args.cosmos_key) {
            settings.cosmos = Some(crate::config::CosmosSettings {
                endpoint: endpoint.clone(),
                key: Some(crate::config::Secret::new(key.clone())),
                database: format!("bench{}", uuid::Uuid::new_v4().simple()),
                managed_identity_client_id: None,
            });
        }
        if let Some(us) = args.voice_turn_slice_us {
            settings.voice.turn_slice = (us > 0).then(|| Duration::from_micros(us));
        }
        tune(&mut settings);
        let base = settings.public_base_url.clone();
        let app = crate::app::App::build(settings)
            .await
            .map_err(|e| BenchError::Start(e.to_string()))?;
        if workers {
            crate::app::spawn_standard_workers(&app);
        }
        let state = app.state().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(app.run(async {
            let _ = stopped.await;
        }));
        Ok(Self {
            state,
            base,
            stop,
            server,
            _data: data,
        })
    }

    pub(crate) async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

/// What the backends are, for the report.
pub(crate) fn backend_name(args: &BenchArgs) -> String {
    let durable = if args.cosmos_endpoint.is_some() {
        "cosmos"
    } else {
        "embedded"
    };
    match args.redis_url {
        Some(_) => format!("{durable}+redis"),
        None => durable.to_owned(),
    }
}

/// Sorted-sample percentiles.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// This process's resident memory (kB) and CPU time (user + system), from /proc.
pub(crate) fn process_usage() -> (u64, Duration) {
    process_usage_of("self")
}

/// A process's resident memory (kB) and CPU time (user + system), from /proc/`pid` (zero when
/// it cannot be read, e.g. the process has ended).
pub(crate) fn process_usage_of(pid: &str) -> (u64, Duration) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    let cpu = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name (which may hold spaces) start after the last ')'.
            let rest = s.rsplit_once(')')?.1;
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let utime: u64 = fields.get(11)?.parse().ok()?;
            let stime: u64 = fields.get(12)?.parse().ok()?;
            Some(utime + stime)
        })
        .unwrap_or(0);
    // USER_HZ is 100 on Linux.
    (rss, Duration::from_millis(cpu * 10))
}
