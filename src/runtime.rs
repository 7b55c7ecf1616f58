//! Runtimes of their own for conversations, apart from the main runtime's sockets.
//!
//! tokio schedules tasks cooperatively: a task waits for whatever task holds its worker
//! thread. On one runtime, a voice turn (Final received → agent → play requested: three or
//! four task hops) queued at every hop behind the audio frames of every other call (50 a
//! second per call), and a webhook acknowledgement behind the WhatsApp work that earlier
//! deliveries created. Each kind of conversation work therefore runs on a runtime of its own,
//! whose threads sleep most of the time; the kernel gives a thread that wakes from sleep the
//! CPU ahead of threads that have been busy, which is the priority the work needs.
//! Measured in docs/performance.md (sixth session): at 1,000 calls the engine turn's p50
//! fell from 1.1–2.4 ms to 0.7–1.3 ms and its p99 was lower in five of six alternating pairs
//! (7–30 ms before, 9–17 ms after).

/// A multi-threaded tokio runtime owned by the app, one thread per core.
pub struct WorkRuntime(Option<tokio::runtime::Runtime>);

impl WorkRuntime {
    pub fn new(name: &'static str) -> std::io::Result<Self> {
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name(name)
            .enable_all()
            .build()
            .map(|rt| Self(Some(rt)))
    }

    pub fn handle(&self) -> &tokio::runtime::Handle {
        self.0.as_ref().expect("set until dropped").handle()
    }
}

impl Drop for WorkRuntime {
    /// The app may be dropped inside the main runtime, where blocking on a shutdown is not
    /// allowed; `App::run` has already given the work its grace period.
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_background();
        }
    }
}
