//! The service itself, in-process on a loopback port 0, for black-box tests over HTTP.

use std::net::SocketAddr;

use handoff::app::{App, AppState, Hooks};
use handoff::config::Settings;
use handoff::domain::{CustomerContext, CustomerId};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct TestApp {
    pub addr: SocketAddr,
    pub http: reqwest::Client,
    /// The running app's ports, for tests that inspect what a request stored.
    #[allow(dead_code)]
    pub state: AppState,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<()>>,
    _data_dir: Option<tempfile::TempDir>,
}

impl TestApp {
    /// Embedded defaults in a fresh data directory.
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Embedded defaults, then `configure` may change anything.
    pub async fn spawn_with(configure: impl FnOnce(&mut Settings)) -> Self {
        Self::spawn_hooked(configure, Hooks::default()).await
    }

    /// Like `spawn_with`, and `hooks` may replace ports (e.g. a store that fails on demand).
    pub async fn spawn_hooked(configure: impl FnOnce(&mut Settings), hooks: Hooks) -> Self {
        let data_dir = tempfile::tempdir().expect("temp dir");
        let mut settings = Settings::embedded(data_dir.path());
        settings.host = "127.0.0.1".parse().unwrap();
        settings.port = 0;
        configure(&mut settings);
        let mut app = Self::start_hooked(settings, hooks).await;
        app._data_dir = Some(data_dir);
        app
    }

    /// Embedded defaults with the echoing `BasicAgent` instead of the scripted agent: for tests
    /// of channel mechanics, where replies must echo what the caller said.
    pub async fn spawn_echo(configure: impl FnOnce(&mut Settings)) -> Self {
        let hooks = Hooks {
            agent: Some(std::sync::Arc::new(handoff::agent::basic::BasicAgent)),
            ..Hooks::default()
        };
        Self::spawn_hooked(configure, hooks).await
    }

    /// Exactly these settings (e.g. a second app on the same data directory).
    #[allow(dead_code)]
    pub async fn start(settings: Settings) -> Self {
        Self::start_hooked(settings, Hooks::default()).await
    }

    async fn start_hooked(settings: Settings, hooks: Hooks) -> Self {
        let app = App::build_with(settings, hooks).await.expect("app builds");
        handoff::app::spawn_standard_workers(&app);
        let addr = app.local_addr();
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            app.run(async {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        Self {
            addr,
            http: reqwest::Client::new(),
            state,
            shutdown: Some(tx),
            server: Some(server),
            _data_dir: None,
        }
    }

    /// The customer's stored context (panics when there is none).
    pub async fn context(&self, customer: &CustomerId) -> CustomerContext {
        self.state
            .stores
            .contexts
            .get(customer)
            .await
            .expect("the context store answers")
            .expect("the customer has a context")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Graceful shutdown, waiting until the server and its workers have stopped.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            let _ = server.await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}
