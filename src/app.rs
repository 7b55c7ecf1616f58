//! Wiring: build every port from settings, assemble the router, run the workers, and shut down
//! gracefully (stop accepting, drain in-flight requests and workers) on SIGTERM/SIGINT.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::serve::ListenerExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::acs::AcsClient;
use crate::agent::Agent;
use crate::agent::scripted::ScriptedAgent;
use crate::agent::summary::ExtractiveSummariser;
use crate::config::Settings;
use crate::handoff::adapters::{ProviderCallControl, WhatsAppContinuation};
use crate::handoff::tools::ToolServices;
use crate::handoff::wait_time::{FixedWait, HttpWait, WaitTimeSource};
use crate::handoff::{HandoffService, SUMMARY_MAX_CHARS};
use crate::runtime::WorkRuntime;
use crate::store::cached::CachedContextStore;
use crate::store::cosmos::CosmosStore;
use crate::store::cosmos_whatsapp::{CosmosInbox, CosmosMessageLog};
use crate::store::embedded::EmbeddedDb;
use crate::store::embedded::EmbeddedStore;
use crate::store::handoffs::HandoffStore;
use crate::store::inbox::{EmbeddedInbox, Inbox};
use crate::store::media::FileMediaStore;
use crate::store::messages::{EmbeddedMessageLog, MessageLog};
use crate::store::redis::{RedisClaims, RedisPool};
use crate::store::{ClaimStore, ContextStore, Contexts, HealthCheck, StoreError, Stores};
use crate::whatsapp::{WhatsApp, WhatsAppPorts};

/// What every handler and worker can reach: one shared [`Services`], so the clone axum makes
/// for every request is one reference count (a field-by-field clone showed up in the
/// acknowledgement path's profile: the stores' list of health checks alone allocates).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

pub struct Services {
    pub settings: Arc<Settings>,
    pub stores: Stores,
    /// One pooled HTTP client for every outbound call (ACS, Meta, OpenAI, media downloads).
    pub http: reqwest::Client,
    pub agent: Arc<dyn Agent>,
    pub whatsapp: Arc<crate::whatsapp::WhatsApp>,
    pub voice: Arc<crate::voice::VoiceService>,
    pub handoff: Arc<HandoffService>,
}

/// Replaces the inbox port with a wrapper around it.
pub type WrapInbox = Box<dyn FnOnce(Arc<dyn Inbox>) -> Arc<dyn Inbox> + Send>;

/// Test seams: replace a port after it is built (e.g. a store that fails on demand).
#[derive(Default)]
pub struct Hooks {
    pub wrap_inbox: Option<WrapInbox>,
    /// Replaces the configured agent (e.g. the echoing `BasicAgent` for channel mechanics).
    pub agent: Option<Arc<dyn Agent>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartupError {
    #[error("cannot open a store: {0}")]
    Store(#[from] StoreError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("cannot start a work runtime: {0}")]
    Runtime(std::io::Error),
    #[error("server error: {0}")]
    Serve(std::io::Error),
    #[error("cannot set up the agent: {0}")]
    Agent(String),
    #[error("cannot build the HTTP client: {0}")]
    HttpClient(reqwest::Error),
    #[error("cannot set up ACS: {0}")]
    Acs(#[from] crate::acs::AcsError),
    #[error("cannot set up voice: {0}")]
    Voice(String),
}

/// A built service, bound to its port, not yet serving.
pub struct App {
    state: AppState,
    listener: TcpListener,
    workers: TaskTracker,
    cancel: CancellationToken,
    runtimes: Runtimes,
}

/// The runtimes conversations run on (see `crate::runtime`): voice turns and the WhatsApp
/// inbox's work, each apart from the main runtime's sockets and from each other.
struct Runtimes {
    voice: WorkRuntime,
    whatsapp: WorkRuntime,
}

impl App {
    pub async fn build(settings: Settings) -> Result<Self, StartupError> {
        Self::build_with(settings, Hooks::default()).await
    }

    pub async fn build_with(settings: Settings, mut hooks: Hooks) -> Result<Self, StartupError> {
        let stores = build_stores(&settings)?;
        crate::telemetry::metrics();
        let runtimes = Runtimes {
            voice: WorkRuntime::new("voice-turns", settings.voice.turn_slice)
                .map_err(StartupError::Runtime)?,
            whatsapp: WorkRuntime::new("whatsapp-work", None).map_err(StartupError::Runtime)?,
        };
        if settings.webhooks.event_grid_secret.is_none() {
            tracing::warn!(
                "EVENT_GRID_SECRET is not set: Event Grid webhooks accept unauthenticated requests"
            );
        }
        if settings.webhooks.meta_app_secret.is_none() {
            tracing::warn!("META_APP_SECRET is not set: POST /webhook/meta refuses every request");
        }
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(30))
            .pool_idle_timeout(Duration::from_secs(60))
            .build()
            .map_err(StartupError::HttpClient)?;
        let (agent, summariser) = build_agent(&settings, &http, hooks.agent.take())?;
        let addr = SocketAddr::new(settings.host, settings.port);
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartupError::Bind { addr, source })?;
        let settings = Arc::new(settings);
        let whatsapp = build_whatsapp(&settings, &stores, &http, agent.clone(), hooks).await?;
        let voice = crate::voice::build(
            settings.clone(),
            &stores,
            http.clone(),
            agent.clone(),
            runtimes.voice.handle().clone(),
        )
        .map_err(StartupError::Voice)?;
        let handoff = Arc::new(HandoffService::new(
            stores.handoffs.clone(),
            stores.contexts.clone(),
            stores.claims.clone(),
            summariser,
            Arc::new(WhatsAppContinuation(Arc::downgrade(&whatsapp))),
            Arc::new(ProviderCallControl(voice.provider.clone())),
            settings.handoff.clone(),
        ));
        let wait: Arc<dyn WaitTimeSource> = match &settings.handoff.queue_wait_url {
            Some(url) => Arc::new(HttpWait::new(http.clone(), url.clone())),
            None => Arc::new(FixedWait(settings.handoff.queue_wait_seconds)),
        };
        let tools = ToolServices {
            contexts: stores.contexts.clone(),
            wait,
            handoff: handoff.clone(),
            settings: Arc::new(settings.handoff.clone()),
        };
        let _ = voice.tools.set(tools.clone());
        whatsapp.set_tools(tools);
        let state = AppState(Arc::new(Services {
            settings,
            stores,
            http,
            agent,
            whatsapp,
            voice,
            handoff,
        }));
        let app = Self {
            state,
            listener,
            workers: TaskTracker::new(),
            cancel: CancellationToken::new(),
            runtimes,
        };
        Ok(app)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.listener
            .local_addr()
            .expect("a bound listener has an address")
    }

    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Where the WhatsApp inbox's work runs (`crate::runtime`).
    pub(crate) fn whatsapp_runtime(&self) -> &tokio::runtime::Handle {
        self.runtimes.whatsapp.handle()
    }

    /// Starts a long-running worker that runs until the app shuts down. The future receives a
    /// token that is cancelled at shutdown and must return promptly once it is.
    pub fn spawn_worker<F, Fut>(&self, name: &'static str, worker: F)
    where
        F: FnOnce(CancellationToken) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let fut = worker(self.cancel.child_token());
        self.workers.spawn(async move {
            fut.await;
            tracing::debug!(worker = name, "worker stopped");
        });
    }

    /// Starts a worker that runs `job` every `period` (the first time at once) until the app
    /// shuts down; a run that overruns its period delays the next instead of bunching them.
    pub fn spawn_periodic<F, Fut>(&self, name: &'static str, period: Duration, job: F)
    where
        F: Fn() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        self.spawn_worker(name, move |cancel| async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    () = cancel.cancelled() => break,
                    _ = tick.tick() => job().await,
                }
            }
        });
    }

    /// Serves until `shutdown` resolves, then drains requests and workers.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), StartupError> {
        let grace = self.state.settings.shutdown_grace;
        let addr = self.local_addr();
        let router = crate::http::router(self.state.clone());
        let cancel = self.cancel.clone();
        tracing::info!(%addr, "listening");
        // Replies and media frames go out as written: Nagle would hold a 20 ms audio frame or
        // a small response until the peer acknowledged the previous one.
        let listener = self.listener.tap_io(|tcp| {
            if let Err(err) = tcp.set_nodelay(true) {
                tracing::debug!(error = %err, "cannot set TCP_NODELAY");
            }
        });
        let server = axum::serve(
            listener,
            router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.await;
            tracing::info!("shutting down: draining requests and workers");
            cancel.cancel();
        });
        let served = server.await.map_err(StartupError::Serve);
        self.cancel.cancel();
        self.workers.close();
        if tokio::time::timeout(grace, self.workers.wait())
            .await
            .is_err()
        {
            tracing::warn!(?grace, "workers did not stop within the grace period");
        }
        tracing::info!("stopped");
        served
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// Builds the storage ports: Cosmos DB or the embedded file for durable data, Redis in front
/// when configured (cache-aside contexts, claims).
pub fn build_stores(settings: &Settings) -> Result<Stores, StoreError> {
    let mut health: Vec<Arc<dyn HealthCheck>> = Vec::new();
    let mut embedded = None;
    type Durable = (
        Arc<dyn ContextStore>,
        Arc<dyn ClaimStore>,
        Arc<dyn HandoffStore>,
    );
    let (durable, durable_claims, handoffs): Durable = match &settings.cosmos {
        Some(cosmos) => {
            let store = Arc::new(CosmosStore::new(cosmos)?);
            health.push(store.clone());
            (store.clone(), store.clone(), store)
        }
        None => {
            let store = Arc::new(EmbeddedStore::open(&settings.data_dir)?);
            health.push(store.clone());
            embedded = Some(store.db().clone());
            (store.clone(), store.clone(), store)
        }
    };
    let (contexts, claims): (Arc<dyn ContextStore>, Arc<dyn ClaimStore>) = match &settings.redis_url
    {
        Some(url) => {
            let pool = RedisPool::new(url, &settings.redis_key_prefix)?;
            health.push(Arc::new(pool.clone()));
            (
                Arc::new(CachedContextStore::new(
                    durable,
                    pool.clone(),
                    settings.context_cache_ttl,
                )),
                Arc::new(RedisClaims::new(pool)),
            )
        }
        None => (durable, durable_claims),
    };
    // The embedded file is this process's alone (redb locks it), so what it wrote last is
    // what is stored.
    let contexts = match embedded {
        Some(_) => Contexts::sole_writer(contexts, settings.context_memory_entries),
        None => Contexts::new(contexts),
    };
    Ok(Stores {
        contexts,
        handoffs,
        claims,
        health,
        embedded,
    })
}

/// Builds the WhatsApp service: inbox and message log in Cosmos DB when it is configured,
/// otherwise in the embedded database.
async fn build_whatsapp(
    settings: &Arc<Settings>,
    stores: &Stores,
    http: &reqwest::Client,
    agent: Arc<dyn Agent>,
    hooks: Hooks,
) -> Result<Arc<WhatsApp>, StartupError> {
    let (mut inbox, log): (Arc<dyn Inbox>, Arc<dyn MessageLog>) =
        match (&settings.cosmos, &stores.embedded) {
            (Some(cosmos), _) => {
                let store = Arc::new(CosmosStore::new(cosmos)?);
                (
                    Arc::new(CosmosInbox::new(store.clone())),
                    Arc::new(CosmosMessageLog::new(store)),
                )
            }
            (None, Some(db)) => (
                Arc::new(EmbeddedInbox::new(db.clone()).await?),
                Arc::new(EmbeddedMessageLog::new(db.clone()).await?),
            ),
            (None, None) => {
                let db = EmbeddedDb::open(&settings.data_dir)?;
                (
                    Arc::new(EmbeddedInbox::new(db.clone()).await?),
                    Arc::new(EmbeddedMessageLog::new(db).await?),
                )
            }
        };
    if let Some(wrap) = hooks.wrap_inbox {
        inbox = wrap(inbox);
    }
    let acs = settings
        .acs
        .as_ref()
        .map(|acs| AcsClient::new(acs, http.clone()))
        .transpose()?;
    Ok(WhatsApp::new(
        settings.clone(),
        WhatsAppPorts {
            contexts: stores.contexts.clone(),
            inbox,
            log,
            media: Arc::new(FileMediaStore::new(settings.data_dir.join("media"))),
            fast_claims: settings.redis_url.is_some().then(|| stores.claims.clone()),
            agent,
            acs,
        },
    ))
}

/// How often expired embedded claims are purged.
pub const MAINTENANCE_INTERVAL: Duration = Duration::from_secs(60);
/// How often stored media past `MEDIA_RETENTION_DAYS` is looked for.
const MEDIA_PURGE_INTERVAL: Duration = Duration::from_secs(60 * 60);

/// The agent and summariser: a model when one is configured, the scripted agent otherwise.
fn build_agent(
    settings: &Settings,
    http: &reqwest::Client,
    replacement: Option<Arc<dyn Agent>>,
) -> Result<crate::agent::openai::ModelPorts, StartupError> {
    // Read even for the scripted agent, so a broken file is found before a model is switched on.
    let profiles = match &settings.agent.profiles_file {
        Some(path) => crate::agent::prompts::load_profiles(path)
            .map_err(|e| StartupError::Agent(format!("AGENT_PROFILES_FILE: {e}")))?,
        None => crate::agent::prompts::Profiles::new(),
    };
    let model = !matches!(
        settings.agent.backend,
        crate::config::AgentBackend::Scripted
    );
    for number in &settings.whatsapp.numbers {
        if let Some(profile) = &number.profile
            && model
            && !profiles.contains_key(profile)
        {
            tracing::warn!(business_number = %number.id, profile = %profile, "WHATSAPP_NUMBERS names an agent profile that AGENT_PROFILES_FILE does not define: the channel prompt alone answers there");
        }
    }
    let model =
        crate::agent::openai::from_settings_with_profiles(&settings.agent, http.clone(), profiles)
            .map_err(|e| StartupError::Agent(e.to_string()))?;
    let (agent, summariser): crate::agent::openai::ModelPorts = match model {
        Some(ports) => ports,
        None => (
            Arc::new(ScriptedAgent),
            Arc::new(ExtractiveSummariser::new(SUMMARY_MAX_CHARS)),
        ),
    };
    Ok((replacement.unwrap_or(agent), summariser))
}

/// How often the recovery worker looks for sagas a crashed replica left unfinished, and how
/// long a saga must have been idle before it is taken over.
pub const RECOVERY_INTERVAL: Duration = Duration::from_secs(5);

/// Starts the workers every deployment runs.
pub fn spawn_standard_workers(app: &App) {
    crate::whatsapp::spawn_workers(app, app.state().whatsapp.clone());
    let registry = app.state().voice.registry.clone();
    app.spawn_worker("call-events", move |cancel| async move {
        registry.run(cancel).await;
    });
    let handoff = app.state().handoff.clone();
    let idle = app.state().settings.handoff.goodbye_timeout * 2;
    app.spawn_periodic("handoff-recovery", RECOVERY_INTERVAL, move || {
        let handoff = handoff.clone();
        async move {
            match handoff.recover(idle).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(sagas = n, "resumed unfinished handoffs"),
                Err(err) => tracing::warn!(error = %err, "handoff recovery failed"),
            }
        }
    });
    let claims = app.state().stores.claims.clone();
    app.spawn_periodic("maintenance", MAINTENANCE_INTERVAL, move || {
        let claims = claims.clone();
        async move {
            match claims.purge_expired().await {
                Ok(0) => {}
                Ok(n) => tracing::debug!(purged = n, "expired claims purged"),
                Err(err) => tracing::warn!(error = %err, "claim purge failed"),
            }
        }
    });
    if app.state().settings.whatsapp.media_retention.is_some() {
        let whatsapp = app.state().whatsapp.clone();
        // Retention is counted in days: a directory scan an hour is plenty.
        app.spawn_periodic("media-retention", MEDIA_PURGE_INTERVAL, move || {
            let whatsapp = whatsapp.clone();
            async move {
                match whatsapp.purge_expired_media().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(purged = n, "media past MEDIA_RETENTION_DAYS deleted"),
                    Err(err) => tracing::warn!(error = %err, "media purge failed"),
                }
            }
        });
    }
}
