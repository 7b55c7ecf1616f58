//! Logging: human-readable by default, JSON with `LOG_FORMAT=json`, filtered by `RUST_LOG`.
//!
//! Log lines carry ids (call connection, message, handoff) and masked phone numbers
//! (`CustomerId`'s `Display` masks), never secrets or message bodies.

use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::format::FmtSpan;

use crate::config::LogFormat;

/// Installs the global subscriber. Safe to call more than once (later calls are ignored), so
/// tests and the demo can share it.
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_span_events(FmtSpan::NONE)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Human => builder.with_target(false).try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
}

/// The process-wide Prometheus recorder behind `GET /metrics`, installed on first use. Code
/// records with the `metrics` macros (`metrics::counter!`, `metrics::histogram!`).
pub fn metrics() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        // Fails only if another recorder was installed first; then ours renders nothing, which
        // is visible at once on /metrics rather than a crash.
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}
