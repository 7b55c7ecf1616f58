//! The HTTP load generator: C tasks, each with its own keep-alive connection, sending the next
//! body as soon as the last was answered (closed loop), recording each acknowledgement's latency.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{LoadFigures, Progress, percentile};

/// Posts every body once to `url` over `connections` connections.
pub(crate) async fn drive(
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    label: &str,
    progress: &Progress,
) -> LoadFigures {
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections.max(1) {
        let bodies = bodies.clone();
        let next = next.clone();
        let done = done.clone();
        let url = url.to_owned();
        tasks.push(tokio::spawn(async move {
            // One client per task with one idle connection: the task's own keep-alive socket.
            let client = match reqwest::Client::builder()
                .http1_only()
                .pool_max_idle_per_host(1)
                .timeout(Duration::from_secs(30))
                .build()
            {
                Ok(c) => c,
                Err(_) => return (Vec::new(), 0usize),
            };
            let mut latencies = Vec::with_capacity(bodies.len() / 8 + 1);
            let mut errors = 0;
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(body) = bodies.get(i) else { break };
                let sent = Instant::now();
                let answered = client
                    .post(&url)
                    .header("content-type", "application/json")
                    .body(body.clone())
                    .send()
                    .await;
                let ok = match answered {
                    Ok(response) => {
                        let ok = response.status().is_success();
                        // Read the (small) body so the connection is reused.
                        let _ = response.bytes().await;
                        ok
                    }
                    Err(_) => false,
                };
                latencies.push(sent.elapsed().as_micros() as u64);
                if !ok {
                    errors += 1;
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
            (latencies, errors)
        }));
    }
    let total = bodies.len();
    let reporter = {
        let done = done.clone();
        let label = label.to_owned();
        let quiet = progress.quiet;
        tokio::spawn(async move {
            let mut last = 0;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.tick().await;
            loop {
                tick.tick().await;
                let now = done.load(Ordering::Relaxed);
                if !quiet {
                    eprintln!("bench: {label}: {now}/{total} ({} req/s)", now - last);
                }
                last = now;
            }
        })
    };
    let mut latencies = Vec::with_capacity(total);
    let mut errors = 0;
    for task in tasks {
        if let Ok((l, e)) = task.await {
            latencies.extend(l);
            errors += e;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    reporter.abort();
    latencies.sort_unstable();
    LoadFigures {
        connections,
        requests: latencies.len(),
        errors,
        seconds,
        per_sec: latencies.len() as f64 / seconds.max(1e-9),
        p50_us: percentile(&latencies, 50.0),
        p95_us: percentile(&latencies, 95.0),
        p99_us: percentile(&latencies, 99.0),
        max_us: latencies.last().copied().unwrap_or(0),
    }
}

/// A bare axum server answering 200 to any POST as soon as its body is read, on a free
/// loopback port.
pub(crate) async fn bare_server() -> std::io::Result<(String, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let router = axum::Router::new().route(
        "/",
        axum::routing::post(|_body: Bytes| async { axum::http::StatusCode::OK }),
    );
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    Ok((format!("http://{addr}/"), server))
}
