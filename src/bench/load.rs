//! The HTTP load generator: C connections, each sending the next body as soon as the last was
//! answered (closed loop), recording each acknowledgement's latency.
//!
//! It is deliberately lean, because it shares the machine with the server it measures: hyper's
//! HTTP/1.1 connection API directly (no pool, no URL parsing, no redirect or proxy layers per
//! request, unlike a full client), on its own single-threaded runtime and OS thread, so its
//! tasks never queue behind the service's on the service's worker threads.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;

use super::{LoadFigures, Progress, percentile};

/// Posts every body once to `url` over `connections` connections.
pub(crate) async fn drive(
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    label: &str,
    progress: &Progress,
) -> LoadFigures {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let total = bodies.len();
    let url = url.to_owned();
    let label = label.to_owned();
    let quiet = progress.quiet;
    let spawned = std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || {
            let figures = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt.block_on(run(&url, bodies, connections, &label, quiet)),
                Err(e) => LoadFigures::failed(connections, total, &format!("no runtime: {e}")),
            };
            let _ = tx.send(figures);
        });
    if let Err(e) = spawned {
        return LoadFigures::failed(connections, total, &format!("no thread: {e}"));
    }
    rx.await
        .unwrap_or_else(|_| LoadFigures::failed(connections, total, "the generator thread ended"))
}

async fn run(
    url: &str,
    bodies: Arc<Vec<Bytes>>,
    connections: usize,
    label: &str,
    quiet: bool,
) -> LoadFigures {
    let connections = connections.max(1);
    let Some((authority, path)) = split_url(url) else {
        return LoadFigures::failed(
            connections,
            bodies.len(),
            &format!("not a loopback http URL: {url}"),
        );
    };
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for _ in 0..connections {
        let (bodies, next, done) = (bodies.clone(), next.clone(), done.clone());
        let (authority, path) = (authority.clone(), path.clone());
        tasks.push(tokio::spawn(async move {
            connection(&authority, &path, &bodies, &next, &done).await
        }));
    }
    let total = bodies.len();
    let reporter = {
        let done = done.clone();
        let label = label.to_owned();
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

/// One keep-alive connection posting bodies until none are left. A connection that breaks is
/// opened again; every body it could not post counts as an error.
async fn connection(
    authority: &str,
    path: &str,
    bodies: &[Bytes],
    next: &AtomicUsize,
    done: &AtomicUsize,
) -> (Vec<u64>, usize) {
    let mut latencies = Vec::with_capacity(bodies.len() / 8 + 1);
    let mut errors = 0;
    let mut sender = None;
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        let Some(body) = bodies.get(i) else { break };
        let sent = Instant::now();
        if sender.is_none() {
            sender = open(authority).await;
        }
        let ok = match sender.as_mut() {
            Some(s) => post(s, authority, path, body.clone()).await,
            None => false,
        };
        latencies.push(sent.elapsed().as_micros() as u64);
        if !ok {
            errors += 1;
            sender = None;
        }
        done.fetch_add(1, Ordering::Relaxed);
    }
    (latencies, errors)
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

async fn open(authority: &str) -> Option<Sender> {
    let stream = tokio::net::TcpStream::connect(authority).await.ok()?;
    let _ = stream.set_nodelay(true);
    let (sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .ok()?;
    tokio::spawn(conn);
    Some(sender)
}

async fn post(sender: &mut Sender, authority: &str, path: &str, body: Bytes) -> bool {
    if sender.ready().await.is_err() {
        return false;
    }
    let Ok(request) = Request::post(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
    else {
        return false;
    };
    match tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await {
        Ok(Ok(response)) => {
            let ok = response.status().is_success();
            // Read the (small) body so the connection can carry the next request.
            ok && response.into_body().collect().await.is_ok()
        }
        _ => false,
    }
}

/// `http://host:port/path?query` → (`host:port`, `/path?query`); loopback HTTP only.
fn split_url(url: &str) -> Option<(String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    Some((authority.to_owned(), path.to_owned()))
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
