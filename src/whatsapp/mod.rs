//! WhatsApp: inbound events become durable inbox entries before they are acknowledged; a
//! worker drains the inbox (one customer at a time, in order, many customers in parallel),
//! updates the shared context and answers through the agent; every send goes through the
//! planner. Providers sit behind [`WhatsAppSender`] (send, inbound media download, read
//! receipts, readiness): ACS Advanced Messaging ([`acs`]), the Meta Cloud API ([`meta`]) or the
//! offline [`sandbox`]; ACS and Meta may run side by side, and the [`router`] sends each message
//! through the provider owning the customer's business number and fetches media and marks
//! messages read through the provider a message arrived on. Nothing after the webhook knows
//! which provider it is.
//!
//! The plain async API the rest of the service calls: [`WhatsApp::ingest`] (webhook),
//! [`WhatsApp::send`], [`WhatsApp::send_template`] (the handoff saga), [`WhatsApp::messages`].

pub mod acs;
pub mod meta;
mod pacing;
pub mod planner;
pub mod router;
pub mod sandbox;
mod worker;

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use crate::agent::Agent;
use crate::config::Settings;
use crate::domain::template::{
    CONVERSATION_CONTINUATION, TemplateButton, TemplateCatalog, TemplateRegistry, TemplateSpec,
    TemplateStatus,
};
use crate::domain::{
    CustomerId, InboundContent, InboundMedia, MessageRecord, OutboundMessage, StatusUpdate,
    WhatsAppProvider,
};
use crate::eventgrid::{self, Delivery, EnvelopeError};
use crate::store::inbox::{Appended, DEDUPE_TTL, Inbox, InboxEvent, NewEntry};
use crate::store::media::MediaStore;
use crate::store::messages::MessageLog;
use crate::store::{Claim, ClaimStore, Contexts, StoreError};

pub use planner::{Initiation, SendError, SendPlanner, SentMessage};
pub use router::{ProviderRouter, Route};

/// Who a message goes to, as the provider addresses them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// WhatsApp id (digits, no `+`) or business-scoped user id.
    pub address: String,
    /// The business number it leaves from (ACS channel registration id, Meta phone number id).
    pub business_number: Option<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SenderError {
    /// The provider refused the request for good (4xx): retrying the same request cannot help.
    #[error("provider rejected the message with {status} {code}: {message}")]
    Rejected {
        status: u16,
        code: String,
        message: String,
    },
    /// Still failing after the retries (429, 5xx, timeouts).
    #[error("provider unavailable: {0}")]
    Unavailable(String),
    #[error("{0} is not configured")]
    NotConfigured(&'static str),
}

/// An inbound media item, fetched from the provider.
#[derive(Debug, Clone)]
pub struct FetchedMedia {
    pub bytes: Bytes,
    /// What the provider says it is; else what the message said.
    pub mime_type: Option<String>,
}

/// A WhatsApp provider: what the service asks of it, whichever it is.
#[async_trait]
pub trait WhatsAppSender: Send + Sync + 'static {
    fn provider(&self) -> WhatsAppProvider;
    /// Sends one message; returns the provider's message id.
    async fn send(&self, to: &Recipient, message: &OutboundMessage) -> Result<String, SenderError>;
    /// Fetches an inbound media item now: provider links expire within minutes. `via` is where
    /// the message arrived (its provider and business number): the router picks the provider
    /// (and Meta number) by it; a provider's own sender is already that one. A provider that
    /// cannot fetch media (the sandbox) answers `NotConfigured`.
    async fn download_media(
        &self,
        _via: &Route,
        _media: &InboundMedia,
    ) -> Result<FetchedMedia, SenderError> {
        Err(SenderError::NotConfigured("inbound media download"))
    }
    /// Shows the customer that their message `message_id`, which arrived `via` a provider and
    /// business number, was read and an answer is being typed, where the provider can (Meta).
    /// Best effort: callers log a failure and carry on. Default: nothing.
    async fn mark_read(&self, _via: &Route, _message_id: &str) -> Result<(), SenderError> {
        Ok(())
    }
    /// The provider's own part of readiness (Meta: the access token works); `None` when it
    /// has nothing to report.
    async fn readiness(&self) -> Option<Result<(), String>> {
        None
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error(transparent)]
    Envelope(#[from] EnvelopeError),
    #[error(transparent)]
    Notification(#[from] meta::NotificationError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What a webhook delivery amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ingested {
    Validation {
        code: String,
    },
    Events {
        fresh: usize,
        duplicate: usize,
        ignored: usize,
    },
}

/// The ports the WhatsApp service is built from.
pub struct WhatsAppPorts {
    pub contexts: Contexts,
    pub inbox: Arc<dyn Inbox>,
    pub log: Arc<dyn MessageLog>,
    pub media: Arc<dyn MediaStore>,
    /// Cross-replica fast-path claims (Redis), when configured.
    pub fast_claims: Option<Arc<dyn ClaimStore>>,
    pub agent: Arc<dyn Agent>,
    /// ACS client, when ACS is configured; otherwise the sandbox provider is used.
    pub acs: Option<crate::acs::AcsClient>,
}

pub struct WhatsApp {
    settings: Arc<Settings>,
    contexts: Contexts,
    inbox: Arc<dyn Inbox>,
    log: Arc<dyn MessageLog>,
    media: Arc<dyn MediaStore>,
    fast_claims: Option<Arc<dyn ClaimStore>>,
    agent: Arc<dyn Agent>,
    planner: SendPlanner,
    provider: WhatsAppProvider,
    /// The router over the running providers (the planner sends through it too): inbound
    /// media, read receipts (through the provider a message arrived on), readiness (all).
    sender: Arc<ProviderRouter>,
    /// The Meta access token's health, shared by every Meta sender (one token for all Meta
    /// numbers); 190 in a webhook marks it expired as well.
    meta_token: Arc<meta::TokenHealth>,
    acs: Option<Arc<acs::AcsSender>>,
    /// Meta's template list, when `META_WABA_ID` and a token are configured.
    meta_templates: Option<meta::templates::MetaTemplates>,
    sandbox: Option<Arc<sandbox::SandboxSender>>,
    templates: RwLock<TemplateCatalog>,
    dispatcher: worker::Dispatcher,
    /// The agent's tools and the handoff saga; set once at start-up (the saga needs this
    /// service to send its template, so it is built after it).
    tools: std::sync::OnceLock<crate::handoff::tools::ToolServices>,
    sandbox_statuses: Mutex<Option<mpsc::UnboundedReceiver<StatusUpdate>>>,
    unknown_types: Mutex<HashMap<String, u64>>,
}

impl WhatsApp {
    pub fn new(settings: Arc<Settings>, ports: WhatsAppPorts) -> Arc<Self> {
        let wa = &settings.whatsapp;
        let (status_tx, status_rx) = mpsc::unbounded_channel();
        let Providers {
            router,
            acs,
            sandbox,
            meta_templates,
            meta_token,
        } = build_providers(&settings, ports.acs, status_tx);
        let provider = router.default_provider();
        let sender = Arc::new(router);
        let planner = SendPlanner::new(
            sender.clone(),
            ports.contexts.clone(),
            ports.log.clone(),
            planner::PlannerSettings {
                window_margin: wa.window_safety_margin,
                send_rate_per_sec: wa.send_rate_per_sec,
                recipient_min_interval: wa.recipient_min_interval,
            },
        );
        let templates = RwLock::new(TemplateCatalog::new(load_templates(&settings)));
        Arc::new(Self {
            contexts: ports.contexts,
            inbox: ports.inbox,
            log: ports.log,
            media: ports.media,
            fast_claims: ports.fast_claims,
            agent: ports.agent,
            planner,
            provider,
            sender,
            meta_token,
            acs,
            meta_templates,
            sandbox,
            templates,
            dispatcher: worker::Dispatcher::default(),
            tools: std::sync::OnceLock::new(),
            sandbox_statuses: Mutex::new(Some(status_rx)),
            unknown_types: Mutex::new(HashMap::new()),
            settings,
        })
    }

    /// The provider of conversations we start (`WHATSAPP_PROVIDER`, or the one configured).
    pub fn provider(&self) -> WhatsAppProvider {
        self.provider
    }

    /// Handles one webhook delivery body: validation handshake, or claim + record every event
    /// durably. `Ok` means everything is recorded (or a duplicate) and may be acknowledged.
    pub async fn ingest(&self, body: &[u8]) -> Result<Ingested, IngestError> {
        let events = match eventgrid::parse(body)? {
            Delivery::Validation { code } => return Ok(Ingested::Validation { code }),
            Delivery::Events(events) => events,
        };
        let mut entries = Vec::with_capacity(events.len());
        let mut ignored = 0;
        for event in &events {
            match acs::parse_event(event) {
                Ok(acs::AcsEvent::Received(m)) => entries.push(NewEntry {
                    // The message id alone: a redelivery repeats it with its event id, and one
                    // claim per message (not two) halves the random B-tree pages each durable
                    // batch dirties (docs/performance.md).
                    dedupe_keys: vec![format!("msg:{}", m.message_id)],
                    partition: m.customer.as_str().to_owned(),
                    event: InboxEvent::Message(m),
                }),
                Ok(acs::AcsEvent::Status(s)) => entries.push(NewEntry {
                    dedupe_keys: vec![format!("eg:{}", event.id)],
                    partition: status_partition(&s),
                    event: InboxEvent::Status(s),
                }),
                Ok(acs::AcsEvent::NoEffect) => ignored += 1,
                Ok(acs::AcsEvent::Unknown) => {
                    ignored += 1;
                    self.count_unknown(&event.event_type);
                }
                Err(err) => {
                    // It can never succeed: acknowledge (Event Grid would retry it for a day).
                    ignored += 1;
                    tracing::warn!(event_id = %event.id, event_type = %event.event_type, error = %err, "whatsapp event ignored");
                }
            }
        }
        self.record_delivery(entries, ignored).await
    }

    /// Handles one Meta webhook body whose signature the caller has verified: claim + record
    /// every message and status durably, exactly like [`Self::ingest`]. Messages dedupe on
    /// their wamid, statuses on (wamid, status).
    pub async fn ingest_meta(&self, body: &[u8]) -> Result<Ingested, IngestError> {
        let events = meta::parse_notification(body)?;
        let mut entries = Vec::with_capacity(events.len());
        let mut ignored = 0;
        for event in events {
            match event {
                meta::MetaEvent::Received(m) => {
                    if let InboundContent::Unknown { message_type, .. } = &m.content {
                        self.count_unknown(&format!("meta:{message_type}"));
                    }
                    entries.push(NewEntry {
                        dedupe_keys: vec![format!("msg:{}", m.message_id)],
                        partition: m.customer.as_str().to_owned(),
                        event: InboxEvent::Message(m),
                    });
                }
                meta::MetaEvent::Status(s) => {
                    if s.error_code.as_deref() == Some(meta::TOKEN_EXPIRED_CODE) {
                        self.meta_token.expired("a delivery status");
                    }
                    entries.push(NewEntry {
                        dedupe_keys: vec![format!(
                            "meta-status:{}:{}",
                            s.message_id,
                            s.status.as_str()
                        )],
                        partition: status_partition(&s),
                        event: InboxEvent::Status(s),
                    });
                }
                meta::MetaEvent::ProviderError { code, title } => {
                    // Nothing to record per message, but never silent: counted and logged.
                    ignored += 1;
                    let code = code.unwrap_or_else(|| "none".into());
                    metrics::counter!("handoff_whatsapp_meta_webhook_errors_total", "code" => code.clone())
                        .increment(1);
                    tracing::warn!(code = %code, title = title.as_deref().unwrap_or(""), "Meta webhook reports an error");
                    if code == meta::TOKEN_EXPIRED_CODE {
                        self.meta_token.expired("a webhook error");
                    }
                }
                meta::MetaEvent::Ignored(why) => {
                    // It can never succeed: acknowledge (Meta would retry it for days).
                    ignored += 1;
                    tracing::warn!(reason = why, "meta notification item ignored");
                }
            }
        }
        self.record_delivery(entries, ignored).await
    }

    /// The part every provider's webhook shares: record durably, then report what happened.
    async fn record_delivery(
        &self,
        entries: Vec<NewEntry>,
        ignored: usize,
    ) -> Result<Ingested, IngestError> {
        let _delivering = self.dispatcher.delivery_started();
        let (fresh, duplicate) = self.record(entries).await?;
        Ok(Ingested::Events {
            fresh,
            duplicate,
            ignored,
        })
    }

    /// Claims and appends entries, then hands the fresh ones to the worker.
    async fn record(&self, entries: Vec<NewEntry>) -> Result<(usize, usize), StoreError> {
        let mut entries = entries;
        let mut taken = Vec::new();
        let mut fast_duplicates = 0;
        if let Some(claims) = &self.fast_claims
            && !entries.is_empty()
        {
            // Redis `SET NX` on every dedupe key (Event Grid id, message id): the cross-replica
            // fast path. The durable insert-if-absent below stays the source of truth; Redis
            // down only costs the fast path.
            let keys: Vec<Vec<String>> = entries
                .iter()
                .map(|e| e.dedupe_keys.iter().map(|k| format!("wa:{k}")).collect())
                .collect();
            let outcomes = futures::future::join_all(keys.iter().map(|ks| {
                futures::future::join_all(ks.iter().map(|k| claims.claim(k, DEDUPE_TTL)))
            }))
            .await;
            let mut kept = Vec::with_capacity(entries.len());
            for ((entry, keys), outcomes) in entries.into_iter().zip(keys).zip(outcomes) {
                let mut duplicate = false;
                for (key, outcome) in keys.into_iter().zip(outcomes) {
                    match outcome {
                        Ok(Claim::Fresh) => taken.push(key),
                        Ok(Claim::Duplicate) => duplicate = true,
                        Err(_) => {}
                    }
                }
                if duplicate {
                    fast_duplicates += 1;
                } else {
                    kept.push(entry);
                }
            }
            entries = kept;
        }
        if entries.is_empty() {
            return Ok((0, fast_duplicates));
        }
        let appended = match self.inbox.append(entries).await {
            Ok(a) => a,
            Err(err) => {
                // Give the claims back so the redelivery is not mistaken for a duplicate.
                if let Some(claims) = &self.fast_claims {
                    for key in &taken {
                        let _ = claims.release(key).await;
                    }
                }
                return Err(err);
            }
        };
        let mut fresh = 0;
        let mut duplicate = fast_duplicates;
        for a in appended {
            match a {
                Appended::Fresh(entry) => {
                    fresh += 1;
                    self.dispatcher.submit(*entry);
                }
                Appended::Duplicate => duplicate += 1,
            }
        }
        Ok((fresh, duplicate))
    }

    fn count_unknown(&self, event_type: &str) {
        let mut seen = self.unknown_types.lock().unwrap_or_else(|p| p.into_inner());
        let count = seen.entry(event_type.to_owned()).or_insert(0);
        *count += 1;
        // Event types are a small set chosen by Azure, so they make a bounded label.
        metrics::counter!("handoff_whatsapp_unknown_events_total", "event_type" => event_type.to_owned())
            .increment(1);
        if *count == 1 {
            tracing::info!(
                event_type,
                "ignoring an event type the WhatsApp webhook does not handle (logged once)"
            );
        }
    }

    /// How many events of each unhandled type were acknowledged and ignored.
    pub fn unknown_event_counts(&self) -> HashMap<String, u64> {
        self.unknown_types
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Sends a message through the planner (window, limits, pacing, splitting).
    pub async fn send(
        &self,
        customer: &CustomerId,
        message: OutboundMessage,
        initiation: Initiation,
    ) -> Result<Vec<SentMessage>, SendError> {
        self.planner.send(customer, message, initiation).await
    }

    /// Sends an approved template, checked against the registry before any HTTP call.
    pub async fn send_template(
        &self,
        customer: &CustomerId,
        name: &str,
        params: Vec<String>,
        button_payload: Option<String>,
    ) -> Result<SentMessage, SendError> {
        self.send_template_once(customer, name, params, button_payload, None)
            .await
    }

    /// Like [`Self::send_template`], for a send that must happen at most once even when another
    /// process repeats it after a crash: providers that deduplicate (ACS repeatability) get the
    /// same request identity every time.
    pub async fn send_template_once(
        &self,
        customer: &CustomerId,
        name: &str,
        params: Vec<String>,
        button_payload: Option<String>,
        idempotency: Option<crate::domain::outbound::Idempotency>,
    ) -> Result<SentMessage, SendError> {
        // Checked against the templates of the provider this customer's messages leave through.
        let provider = self.planner.route_for(customer).await?.provider;
        let mut message = self.registry(provider).build(
            name,
            &self.settings.whatsapp.template_language,
            params,
            button_payload.into_iter().collect(),
        )?;
        message.idempotency = idempotency;
        let mut sent = self
            .planner
            .send(
                customer,
                OutboundMessage::Template(message),
                Initiation::Business,
            )
            .await?;
        sent.pop().ok_or(SendError::Sender(SenderError::Unavailable(
            "nothing sent".into(),
        )))
    }

    /// Gives the worker the agent's tools and the handoff saga (once, at start-up).
    pub fn set_tools(&self, tools: crate::handoff::tools::ToolServices) {
        let _ = self.tools.set(tools);
    }

    pub(crate) fn tools(&self) -> Option<&crate::handoff::tools::ToolServices> {
        self.tools.get()
    }

    /// The customer's conversation, both directions, in order.
    /// One message's record (status, error code), by provider message id.
    pub async fn message(&self, message_id: &str) -> Result<Option<MessageRecord>, StoreError> {
        self.log.get(message_id).await
    }

    pub async fn messages(&self, customer: &CustomerId) -> Result<Vec<MessageRecord>, StoreError> {
        self.log.list(customer).await
    }

    /// The bytes of an inbound media item that was downloaded and stored.
    pub async fn stored_media(&self, media_id: &str) -> Result<Option<Bytes>, StoreError> {
        self.media.get(media_id).await
    }

    /// Deletes stored media older than `MEDIA_RETENTION_DAYS`; returns how many items.
    pub async fn purge_expired_media(&self) -> Result<usize, StoreError> {
        match self.settings.whatsapp.media_retention {
            Some(retention) => {
                let cutoff = std::time::SystemTime::now()
                    .checked_sub(retention)
                    .unwrap_or(std::time::UNIX_EPOCH);
                self.media.purge_before(cutoff).await
            }
            None => Ok(0),
        }
    }

    /// The provider's part of readiness (Meta: the access token works); `None` when the provider
    /// has nothing to report.
    pub async fn provider_readiness(&self) -> Option<Result<(), String>> {
        self.sender.readiness().await
    }

    /// The inbox's part of readiness beyond its store's (embedded: its log takes a write).
    pub async fn inbox_readiness(&self) -> Option<Result<(), StoreError>> {
        self.inbox.check().await
    }

    /// How many inbox entries are recorded and not yet handled, counting up to `limit`.
    pub async fn backlog(&self, limit: usize) -> Result<usize, StoreError> {
        Ok(self.inbox.pending(limit).await?.len())
    }

    /// What the sandbox provider "sent" (`None` when a real provider is configured).
    pub fn sandbox_records(&self) -> Option<Vec<sandbox::SandboxRecord>> {
        self.sandbox.as_ref().map(|s| s.records())
    }

    /// How many quick-reply buttons the template `name` (in the configured language) has where
    /// messages to `customer` leave from; 0 when it is unknown there.
    pub async fn quick_reply_buttons(&self, customer: &CustomerId, name: &str) -> usize {
        let provider = match self.planner.route_for(customer).await {
            Ok(route) => route.provider,
            Err(_) => self.provider,
        };
        self.registry(provider)
            .get(name, &self.settings.whatsapp.template_language)
            .map(|spec| {
                spec.buttons
                    .iter()
                    .filter(|b| **b == TemplateButton::QuickReply)
                    .count()
            })
            .unwrap_or(0)
    }

    fn registry(&self, provider: WhatsAppProvider) -> TemplateRegistry {
        self.templates
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .for_provider(provider)
    }

    /// The templates of the default provider.
    pub fn templates(&self) -> Vec<TemplateSpec> {
        self.templates_of(self.provider)
    }

    /// The templates `provider` sends from: local ones overlaid by its synced list.
    pub fn templates_of(&self, provider: WhatsAppProvider) -> Vec<TemplateSpec> {
        self.registry(provider).all().cloned().collect()
    }

    /// Where messages to `customer` leave from and which agent profile answers them.
    pub async fn route(&self, customer: &CustomerId) -> Result<Route, SendError> {
        self.planner.route_for(customer).await
    }

    /// Where an inbound message arrived: the provider it came through and the business number
    /// it was written to (its media and read receipt go through that provider and number).
    pub fn route_of_message(&self, m: &crate::domain::InboundMessage) -> Route {
        self.sender
            .route_inbound(m.provider, m.business_number.as_deref())
    }

    /// Refreshes each provider's templates from its template list (ACS: the channel's list;
    /// Meta: the WhatsApp Business Account's `message_templates`) and checks that
    /// `conversation_continuation` exists and is approved for every running provider (warns
    /// when not). A list that cannot be read keeps what was known before.
    pub async fn refresh_templates(&self) {
        let acs_channel = self.settings.whatsapp.acs_channel_id.clone().or_else(|| {
            self.settings
                .whatsapp
                .numbers
                .iter()
                .find(|n| n.provider == WhatsAppProvider::Acs)
                .map(|n| n.id.clone())
        });
        let acs = async {
            match (&self.acs, &acs_channel) {
                (Some(acs), Some(channel)) => Some(acs.list_templates(channel).await),
                _ => None,
            }
        };
        let meta = async {
            match &self.meta_templates {
                Some(meta) => Some(meta.list().await),
                None => None,
            }
        };
        let (acs, meta) = futures::future::join(acs, meta).await;
        for (provider, listed) in [(WhatsAppProvider::Acs, acs), (WhatsAppProvider::Meta, meta)] {
            match listed {
                None => {}
                Some(Ok(specs)) => {
                    let n = specs.len();
                    self.templates
                        .write()
                        .unwrap_or_else(|p| p.into_inner())
                        .replace(provider, specs);
                    tracing::info!(templates = n, ?provider, "whatsapp templates refreshed");
                }
                Some(Err(err)) => {
                    tracing::warn!(?provider, error = %err, "cannot list whatsapp templates; keeping the ones known before")
                }
            }
        }
        let language = &self.settings.whatsapp.template_language;
        let real = |p: &WhatsAppProvider| *p != WhatsAppProvider::Sandbox;
        for provider in self.planner.router().providers().into_iter().filter(real) {
            match self
                .registry(provider)
                .get(CONVERSATION_CONTINUATION, language)
            {
                Some(t) if t.status == TemplateStatus::Approved => {}
                Some(t) if t.status == TemplateStatus::Unknown => {
                    tracing::warn!(language = %language, ?provider, "conversation_continuation is declared locally and not confirmed by the provider's template list")
                }
                Some(t) => {
                    tracing::warn!(language = %language, ?provider, status = ?t.status, "conversation_continuation is not approved")
                }
                None => {
                    tracing::warn!(language = %language, ?provider, "conversation_continuation does not exist")
                }
            }
        }
    }
}

/// The running providers and what the service keeps of them besides the router.
struct Providers {
    router: ProviderRouter,
    acs: Option<Arc<acs::AcsSender>>,
    sandbox: Option<Arc<sandbox::SandboxSender>>,
    meta_templates: Option<meta::templates::MetaTemplates>,
    /// The one health of the Meta token, shared by every Meta sender and the template list.
    meta_token: Arc<meta::TokenHealth>,
}

/// Builds a lane per running provider (a Meta lane per Meta phone number: the Graph API sends
/// from the number in its URL) and the router over them. ACS runs whenever its client is
/// configured, Meta with a token and a phone number id; `WHATSAPP_PROVIDER=sandbox` (or a
/// named provider that is not configured) runs the sandbox alone.
fn build_providers(
    settings: &Settings,
    acs_client: Option<crate::acs::AcsClient>,
    status_tx: mpsc::UnboundedSender<StatusUpdate>,
) -> Providers {
    let wa = &settings.whatsapp;
    let meta_numbers: Vec<String> = wa
        .meta_phone_number_id
        .iter()
        .cloned()
        .chain(
            wa.numbers
                .iter()
                .filter(|n| n.provider == WhatsAppProvider::Meta)
                .map(|n| n.id.clone()),
        )
        .fold(Vec::new(), |mut all, n| {
            if !all.contains(&n) {
                all.push(n);
            }
            all
        });
    let acs_numbers: Vec<String> = wa
        .acs_channel_id
        .iter()
        .cloned()
        .chain(
            wa.numbers
                .iter()
                .filter(|n| n.provider == WhatsAppProvider::Acs)
                .map(|n| n.id.clone()),
        )
        .collect();
    let meta_token = wa
        .meta_access_token
        .as_ref()
        .filter(|_| !meta_numbers.is_empty());
    let default = choose_provider(
        settings,
        acs_client.is_some(),
        !acs_numbers.is_empty(),
        meta_token.is_some(),
    );
    let mut lanes = Vec::new();
    let mut acs = None;
    let mut sandbox = None;
    let mut meta_templates = None;
    let token_health = Arc::new(meta::TokenHealth::default());
    if default == WhatsAppProvider::Sandbox {
        let s = Arc::new(sandbox::SandboxSender::new(status_tx));
        sandbox = Some(s.clone());
        lanes.push(router::Lane {
            provider: WhatsAppProvider::Sandbox,
            number: None,
            sender: s,
        });
    } else {
        if let Some(client) = acs_client {
            let s = Arc::new(acs::AcsSender::new(
                client,
                &wa.acs_api_version,
                &wa.acs_preview_api_version,
            ));
            acs = Some(s.clone());
            lanes.push(router::Lane {
                provider: WhatsAppProvider::Acs,
                number: None,
                sender: s,
            });
        }
        if let Some(token) = meta_token {
            for number in &meta_numbers {
                lanes.push(router::Lane {
                    provider: WhatsAppProvider::Meta,
                    number: Some(number.clone()),
                    sender: Arc::new(
                        meta::MetaSender::new(
                            &wa.meta_graph_base_url,
                            &wa.meta_graph_version,
                            number,
                            token.clone(),
                        )
                        .with_token_health(token_health.clone()),
                    ),
                });
            }
            meta_templates = wa.meta_waba_id.as_ref().map(|waba| {
                meta::templates::MetaTemplates::new(
                    &wa.meta_graph_base_url,
                    &wa.meta_graph_version,
                    waba,
                    token.clone(),
                )
                .with_token_health(token_health.clone())
            });
        }
    }
    let default_number = match default {
        WhatsAppProvider::Acs => acs_numbers.first().cloned(),
        WhatsAppProvider::Meta => meta_numbers.first().cloned(),
        WhatsAppProvider::Sandbox => wa.acs_channel_id.clone(),
    };
    let mut numbers: Vec<crate::config::BusinessNumber> = wa.numbers.clone();
    for (provider, implicit) in [
        (WhatsAppProvider::Acs, &wa.acs_channel_id),
        (WhatsAppProvider::Meta, &wa.meta_phone_number_id),
    ] {
        if let Some(id) = implicit
            && !numbers.iter().any(|n| &n.id == id)
        {
            numbers.push(crate::config::BusinessNumber {
                provider,
                id: id.clone(),
                profile: None,
            });
        }
    }
    if default == WhatsAppProvider::Sandbox {
        numbers.clear();
    }
    if lanes.iter().any(|l| l.provider == WhatsAppProvider::Acs)
        && lanes.iter().any(|l| l.provider == WhatsAppProvider::Meta)
    {
        tracing::info!(default = ?default, "ACS and Meta WhatsApp both run: replies leave through the provider of the customer's business number");
    }
    Providers {
        router: ProviderRouter::new(lanes, numbers, default, default_number),
        acs,
        sandbox,
        meta_templates,
        meta_token: token_health,
    }
}

/// The default provider: `WHATSAPP_PROVIDER` when set (the sandbox when it names one that is
/// not configured); otherwise the one configured (ACS counts with a client and a channel id,
/// or with a client alone when Meta is not configured), ACS when both are, the sandbox when
/// none is.
fn choose_provider(
    settings: &Settings,
    acs_client: bool,
    acs_number: bool,
    meta_configured: bool,
) -> WhatsAppProvider {
    let chosen = match settings.whatsapp.provider {
        Some(p) => p,
        None => match (acs_client, acs_number, meta_configured) {
            (true, true, _) | (true, false, false) => WhatsAppProvider::Acs,
            (_, _, true) => WhatsAppProvider::Meta,
            (false, _, false) => WhatsAppProvider::Sandbox,
        },
    };
    let usable = match chosen {
        WhatsAppProvider::Acs => acs_client,
        WhatsAppProvider::Meta => meta_configured,
        WhatsAppProvider::Sandbox => true,
    };
    if !usable {
        tracing::warn!(provider = ?chosen, "WHATSAPP_PROVIDER names a provider that is not configured; using the sandbox");
        return WhatsAppProvider::Sandbox;
    }
    chosen
}

fn status_partition(s: &StatusUpdate) -> String {
    s.customer.as_ref().map_or_else(
        || format!("msg:{}", s.message_id),
        |c| c.as_str().to_owned(),
    )
}

/// The built-in template plus `WHATSAPP_TEMPLATES_FILE` (a JSON array of template specs).
fn load_templates(settings: &Settings) -> TemplateRegistry {
    let mut registry = TemplateRegistry::with_builtin(&settings.whatsapp.template_language);
    if let Some(path) = &settings.whatsapp.templates_file {
        match std::fs::read(path)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                serde_json::from_slice::<Vec<TemplateSpec>>(&b).map_err(|e| e.to_string())
            }) {
            Ok(specs) => specs.into_iter().for_each(|s| registry.insert(s)),
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read WHATSAPP_TEMPLATES_FILE")
            }
        }
    }
    registry
}

impl std::fmt::Debug for WhatsApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WhatsApp")
            .field("provider", &self.provider)
            .finish_non_exhaustive()
    }
}

pub use worker::spawn_workers;
