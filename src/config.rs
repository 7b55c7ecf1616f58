//! Settings: read once from the environment at start-up, typed, validated.
//!
//! Every backend is optional; an unset variable means the embedded default, never a crash. An
//! invalid value stops start-up with one line naming the variable and what is wrong with it.
//! Secrets are wrapped in [`Secret`], whose `Debug` never prints the value.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// A value that must never reach a log line.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret<T>(T);

impl<T> Secret<T> {
    pub fn new(value: T) -> Self {
        Self(value)
    }
    /// The secret itself, for the one place that must send it somewhere.
    pub fn expose(&self) -> &T {
        &self.0
    }
}

impl<T> fmt::Debug for Secret<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

/// One invalid setting: which variable, and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {var}: {problem}")]
pub struct ConfigError {
    pub var: &'static str,
    pub problem: String,
}

impl ConfigError {
    fn new(var: &'static str, problem: impl Into<String>) -> Self {
        Self {
            var,
            problem: problem.into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Debug, Clone)]
pub struct CosmosSettings {
    pub endpoint: String,
    /// Account key; when absent the service authenticates with Entra ID (managed identity).
    pub key: Option<Secret<String>>,
    pub database: String,
    /// Client id of the user-assigned managed identity used when there is no key.
    pub managed_identity_client_id: Option<String>,
}

/// How the service authenticates to Azure Communication Services.
#[derive(Debug, Clone)]
pub enum AcsAuth {
    /// HMAC-SHA256 request signing with the resource's access key (`ACS_CONNECTION_STRING`).
    AccessKey(Secret<Vec<u8>>),
    /// Entra ID bearer tokens from the managed identity (`ACS_ENDPOINT` alone).
    ManagedIdentity { client_id: Option<String> },
}

#[derive(Debug, Clone)]
pub struct AcsSettings {
    /// `https://<resource>.communication.azure.com`, no trailing slash.
    pub endpoint: String,
    pub auth: AcsAuth,
}

/// Inbound webhook protection shared by every Event Grid route.
#[derive(Debug, Clone)]
pub struct WebhookSettings {
    /// `?code=` every Event Grid delivery must carry; `None` leaves webhooks unauthenticated.
    pub event_grid_secret: Option<Secret<String>>,
    pub max_body_bytes: usize,
    /// Meta's `hub.verify_token` for the `GET /webhook/meta` subscription handshake.
    pub meta_verify_token: Option<Secret<String>>,
    /// Meta app secret: the HMAC key of `X-Hub-Signature-256`. `None` refuses Meta POSTs.
    pub meta_app_secret: Option<Secret<String>>,
}

#[derive(Debug, Clone)]
pub struct WhatsAppSettings {
    /// ACS channel registration id of the business number (`ACS_WHATSAPP_CHANNEL_ID`).
    pub acs_channel_id: Option<String>,
    pub acs_api_version: String,
    /// api-version for kinds only previews support (interactive, reaction, sticker).
    pub acs_preview_api_version: String,
    /// The 24-hour window is treated as closed this long before it really closes.
    pub window_safety_margin: Duration,
    /// Messages per second per business number.
    pub send_rate_per_sec: u32,
    /// Minimum gap between two messages to one recipient (WhatsApp pair rate limit).
    pub recipient_min_interval: Duration,
    /// How long to wait for a burst of customer messages to end before answering once.
    pub burst_wait: Duration,
    /// How long downloaded inbound media is kept (`None`: for ever).
    pub media_retention: Option<Duration>,
    /// Extra templates (JSON file) besides the built-in `conversation_continuation`.
    pub templates_file: Option<PathBuf>,
    /// Language of the built-in `conversation_continuation` template.
    pub template_language: String,
    /// Template sent when WhatsApp reports a free-form reply failed because the 24-hour window
    /// had closed (131047); `{{1}}` is the customer's first name. Unset: no fallback.
    pub reengagement_template: Option<String>,
    /// `WHATSAPP_PROVIDER`; `None` = the one provider configured (sandbox when none or both).
    pub provider: Option<crate::domain::WhatsAppProvider>,
    /// Meta Cloud API system-user token (`Authorization: Bearer`).
    pub meta_access_token: Option<Secret<String>>,
    /// Meta phone number id messages leave from.
    pub meta_phone_number_id: Option<String>,
    /// Graph API base URL, no trailing slash (tests point it at a local fake).
    pub meta_graph_base_url: String,
    /// Graph API version, e.g. `v23.0`.
    pub meta_graph_version: String,
    /// WhatsApp Business Account whose templates are synced from Meta (`META_WABA_ID`).
    pub meta_waba_id: Option<String>,
    /// Business numbers by provider, each with the agent profile that answers it
    /// (`WHATSAPP_NUMBERS`), besides `ACS_WHATSAPP_CHANNEL_ID` and `META_PHONE_NUMBER_ID`.
    pub numbers: Vec<BusinessNumber>,
}

/// One business number from `WHATSAPP_NUMBERS`: which provider owns it, and which agent
/// profile answers the customers who write to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusinessNumber {
    pub provider: crate::domain::WhatsAppProvider,
    /// ACS channel registration id or Meta phone number id.
    pub id: String,
    pub profile: Option<String>,
}

#[derive(Debug, Clone)]
pub struct VoiceSettings {
    pub call_automation_api_version: String,
    /// Azure AI services endpoint Call Automation uses for transcription and text-to-speech.
    pub cognitive_services_endpoint: Option<String>,
    pub locale: String,
    pub tts_voice: String,
    /// `pcm16KMono` or `pcm24KMono`.
    pub audio_format: String,
    /// Silence before the caller is prompted once; the same again ends the call politely.
    pub silence_timeout: Duration,
    /// Barge-in on `transcription` (intermediate results) or `audio` (non-silent frames).
    pub barge_in: BargeIn,
    /// The CPU time slice the voice-turn threads ask the kernel for (`crate::runtime`);
    /// `None` keeps the kernel's default.
    pub turn_slice: Option<Duration>,
    /// The ACS resource's immutable id: Call Automation callbacks must then carry ACS's signed
    /// token for it (`crate::acs::jwt`). `None` checks their per-call token only.
    pub callback_audience: Option<String>,
    /// Who signs those tokens; the keys are at `{issuer}/calling/keys`.
    pub callback_token_issuer: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BargeIn {
    Transcription,
    Audio,
}

/// Which model answers, and how to reach it.
#[derive(Debug, Clone)]
pub enum AgentBackend {
    /// The offline, deterministic scripted agent (the default).
    Scripted,
    /// Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`,
    /// with `api-key` when a key is set, otherwise an Entra token (managed identity).
    AzureOpenAi {
        endpoint: String,
        deployment: String,
        api_version: String,
        api_key: Option<Secret<String>>,
        managed_identity_client_id: Option<String>,
    },
    /// Any OpenAI-compatible server (`OPENAI_BASE_URL`, default https://api.openai.com/v1).
    OpenAi {
        base_url: String,
        api_key: Secret<String>,
        model: String,
    },
}

#[derive(Debug, Clone)]
pub struct AgentSettings {
    pub backend: AgentBackend,
    /// JSON object of agent profile name → instructions (`AGENT_PROFILES_FILE`), read at
    /// start-up by the model agent.
    pub profiles_file: Option<PathBuf>,
    /// Upper bound on one model request (first token to last).
    pub request_timeout: Duration,
    /// Attempts for a model request that fails transiently.
    pub max_attempts: u32,
}

/// What the agent does when a long wait falls outside business hours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutsideHours {
    /// Offer WhatsApp and say when replies will come.
    OfferWithNotice,
    /// Do not offer.
    NoOffer,
}

#[derive(Debug, Clone)]
pub struct HandoffSettings {
    /// A fixed wait estimate (`QUEUE_WAIT_SECONDS`), used when no URL is set.
    pub queue_wait_seconds: u64,
    /// An HTTP endpoint answering the current wait in seconds (`QUEUE_WAIT_URL`).
    pub queue_wait_url: Option<String>,
    /// Offer WhatsApp when the wait is over this.
    pub wait_threshold: Duration,
    pub business_hours: crate::domain::BusinessHours,
    pub outside_hours: OutsideHours,
    /// How long to wait for `PlayCompleted` of the goodbye before hanging up anyway.
    pub goodbye_timeout: Duration,
    /// The template that continues the conversation. When the registered template has a
    /// quick-reply button, its payload carries the handoff id.
    pub template_name: String,
}

#[derive(Debug, Clone)]
pub struct Settings {
    /// Address to bind; `0.0.0.0` by default so that the container is reachable.
    pub host: IpAddr,
    pub port: u16,
    pub data_dir: PathBuf,
    pub log_format: LogFormat,
    pub cosmos: Option<CosmosSettings>,
    pub redis_url: Option<Secret<String>>,
    /// Prefix of every Redis key, so several deployments can share one Redis.
    pub redis_key_prefix: String,
    pub context_cache_ttl: Duration,
    /// With the embedded store, how many recently written contexts stay decoded in memory.
    pub context_memory_entries: usize,
    /// How many transcript turns a context keeps before older ones fold into the summary.
    pub transcript_max_turns: usize,
    /// Upper bound on any one HTTP request's handling time.
    pub request_timeout: Duration,
    /// How long a graceful shutdown waits for in-flight work before giving up.
    pub shutdown_grace: Duration,
    /// The service's public URL, as ACS and Event Grid reach it (callbacks, media WebSocket).
    pub public_base_url: String,
    pub acs: Option<AcsSettings>,
    pub webhooks: WebhookSettings,
    pub whatsapp: WhatsAppSettings,
    pub voice: VoiceSettings,
    pub agent: AgentSettings,
    pub handoff: HandoffSettings,
    /// Key for the admin API (`x-api-key` or `Authorization: Bearer`). Unset: admin routes
    /// answer only requests from loopback.
    pub admin_api_key: Option<Secret<String>>,
}

/// Every variable the service reads, with whether it is optional. Kept next to the code that
/// reads them so that docs and infra checks compare against one list.
pub const SETTINGS: &[(&str, &str)] = &[
    ("HOST", "address to bind (default 0.0.0.0)"),
    ("PORT", "HTTP port (default 8080)"),
    (
        "HANDOFF_DATA_DIR",
        "directory of the embedded store (default ./data)",
    ),
    ("LOG_FORMAT", "`human` (default) or `json`"),
    (
        "RUST_LOG",
        "log filter, e.g. `info,handoff=debug` (default info)",
    ),
    (
        "COSMOS_ENDPOINT",
        "Cosmos DB account endpoint; unset = embedded store",
    ),
    (
        "COSMOS_KEY",
        "Cosmos DB account key; unset = Entra ID (managed identity)",
    ),
    ("COSMOS_DATABASE", "Cosmos DB database (default handoff)"),
    (
        "AZURE_CLIENT_ID",
        "client id of the user-assigned managed identity (Entra ID auth)",
    ),
    (
        "REDIS_URL",
        "redis:// or rediss:// URL; unset = in-process cache and embedded claims",
    ),
    (
        "REDIS_KEY_PREFIX",
        "prefix of every Redis key (default handoff:)",
    ),
    (
        "CONTEXT_CACHE_TTL_SECS",
        "how long Redis keeps a cached context (default 300)",
    ),
    (
        "CONTEXT_MEMORY_ENTRIES",
        "embedded store only: recently written contexts kept decoded in memory, so reads and changes skip the file (default 1024; 0 = off)",
    ),
    (
        "TRANSCRIPT_MAX_TURNS",
        "turns kept per context before older ones fold into the summary (default 200)",
    ),
    (
        "REQUEST_TIMEOUT_SECS",
        "upper bound on handling one HTTP request (default 25)",
    ),
    (
        "SHUTDOWN_GRACE_SECS",
        "how long shutdown drains in-flight work (default 20)",
    ),
    (
        "PUBLIC_BASE_URL",
        "public https URL of the service (default http://localhost:PORT)",
    ),
    (
        "ACS_CONNECTION_STRING",
        "ACS connection string (HMAC auth); unset with no ACS_ENDPOINT = sandbox providers",
    ),
    (
        "ACS_ENDPOINT",
        "ACS endpoint for Entra ID (managed identity) auth",
    ),
    (
        "EVENT_GRID_SECRET",
        "the `?code=` Event Grid deliveries must carry; `old,new` accepts both while rotating (unset = unauthenticated, warned)",
    ),
    (
        "WEBHOOK_MAX_BODY_BYTES",
        "largest webhook body accepted (default 1048576)",
    ),
    (
        "WEBHOOK_VERIFY_TOKEN",
        "Meta webhook `hub.verify_token` answered on `GET /webhook/meta` (unset = verification refused)",
    ),
    (
        "META_APP_SECRET",
        "Meta app secret: key of the `X-Hub-Signature-256` HMAC on `POST /webhook/meta` (unset = Meta POSTs refused, warned)",
    ),
    (
        "ACS_WHATSAPP_CHANNEL_ID",
        "ACS WhatsApp channel registration id",
    ),
    (
        "ACS_MESSAGES_API_VERSION",
        "Advanced Messaging api-version (default 2024-08-30)",
    ),
    (
        "ACS_MESSAGES_PREVIEW_API_VERSION",
        "api-version for interactive/reaction/sticker (default 2025-01-15-preview)",
    ),
    (
        "WHATSAPP_WINDOW_SAFETY_SECS",
        "24-hour window safety margin (default 120)",
    ),
    (
        "WHATSAPP_SEND_RATE_PER_SEC",
        "most messages per business number in any one second (default 80, Meta's standard throughput); a burst within it leaves at once",
    ),
    (
        "WHATSAPP_RECIPIENT_MIN_INTERVAL_MS",
        "minimum gap between messages to one recipient (default 1000)",
    ),
    (
        "WHATSAPP_BURST_WAIT_MS",
        "wait for a customer's burst to end before answering (default 1500)",
    ),
    (
        "MEDIA_RETENTION_DAYS",
        "days downloaded inbound WhatsApp media (images, documents, audio) is kept before it is deleted (default 30; 0 = kept for ever)",
    ),
    (
        "WHATSAPP_TEMPLATES_FILE",
        "JSON file of extra templates (name, language, category, parameters, buttons)",
    ),
    (
        "WHATSAPP_TEMPLATE_LANGUAGE",
        "language of conversation_continuation (default en_US)",
    ),
    (
        "WHATSAPP_REENGAGEMENT_TEMPLATE",
        "template ({{1}} = first name) sent when a reply failed because the window had closed (131047); unset = none",
    ),
    (
        "WHATSAPP_PROVIDER",
        "`acs`, `meta` or `sandbox`: the provider of conversations we start; unset = the one configured (ACS: connection + channel id; Meta: token + phone number id; ACS when both), sandbox otherwise. With both configured both run, routed by business number",
    ),
    (
        "META_ACCESS_TOKEN",
        "Meta Cloud API system-user access token (Bearer)",
    ),
    (
        "META_PHONE_NUMBER_ID",
        "Meta phone number id WhatsApp messages leave from",
    ),
    (
        "META_GRAPH_BASE_URL",
        "Graph API base URL (default https://graph.facebook.com)",
    ),
    ("META_GRAPH_VERSION", "Graph API version (default v23.0)"),
    (
        "META_WABA_ID",
        "WhatsApp Business Account id: with META_ACCESS_TOKEN, the template registry is synced from its `message_templates` at start-up",
    ),
    (
        "WHATSAPP_NUMBERS",
        "business numbers and who answers them, e.g. `acs:<channel id>=support, meta:<phone number id>=sales` (`provider:number[=agent profile]`, comma-separated); replies leave through the provider owning the number the customer wrote to. ACS_WHATSAPP_CHANNEL_ID and META_PHONE_NUMBER_ID count as listed",
    ),
    (
        "ACS_CALL_AUTOMATION_API_VERSION",
        "Call Automation api-version (default 2025-05-15)",
    ),
    (
        "COGNITIVE_SERVICES_ENDPOINT",
        "Azure AI services endpoint for transcription and text-to-speech",
    ),
    ("TRANSCRIPTION_LOCALE", "speech locale (default en-US)"),
    (
        "TTS_VOICE_NAME",
        "text-to-speech voice (default en-US-NancyNeural)",
    ),
    ("MEDIA_AUDIO_FORMAT", "pcm16KMono (default) or pcm24KMono"),
    (
        "SILENCE_TIMEOUT_SECS",
        "caller silence before a prompt, then before hang-up (default 20)",
    ),
    (
        "BARGE_IN",
        "`transcription` (default) or `audio`: what interrupts the agent",
    ),
    (
        "ACS_RESOURCE_ID",
        "the ACS resource's immutable resource id (portal: Properties; `az communication show --query immutableResourceId`): Call Automation callbacks must then carry ACS's signed token (RS256) for it, and a media socket that presents one must present a valid one; unset = the per-call token in their URL is the only check",
    ),
    (
        "ACS_CALLBACK_TOKEN_ISSUER",
        "issuer of those tokens, whose signing keys are at `{issuer}/calling/keys` (default https://acscallautomation.communication.azure.com)",
    ),
    (
        "VOICE_TURN_SLICE_US",
        "CPU time slice in microseconds the voice-turn threads ask the kernel for, so that a turn preempts busy threads when it wakes (Linux 6.12+; default 300, 0 = the kernel's default)",
    ),
    (
        "AZURE_OPENAI_ENDPOINT",
        "Azure OpenAI endpoint; unset = scripted agent (or OPENAI_API_KEY)",
    ),
    (
        "AZURE_OPENAI_DEPLOYMENT",
        "Azure OpenAI chat deployment (required with the endpoint)",
    ),
    (
        "AZURE_OPENAI_API_VERSION",
        "Azure OpenAI api-version (default 2024-10-21)",
    ),
    (
        "AZURE_OPENAI_API_KEY",
        "Azure OpenAI key; unset = Entra ID (managed identity)",
    ),
    (
        "OPENAI_API_KEY",
        "key for OpenAI or an OpenAI-compatible server",
    ),
    (
        "OPENAI_BASE_URL",
        "OpenAI-compatible base URL (default https://api.openai.com/v1)",
    ),
    (
        "OPENAI_MODEL",
        "model for OpenAI-compatible servers (default gpt-4o-mini)",
    ),
    (
        "AGENT_TIMEOUT_SECS",
        "upper bound on one model request (default 20)",
    ),
    (
        "AGENT_MAX_ATTEMPTS",
        "attempts for a transiently failing model request (default 3)",
    ),
    (
        "AGENT_PROFILES_FILE",
        "JSON object `{\"profile\": \"instructions\"}`: the model agent adds a number's profile instructions (WHATSAPP_NUMBERS) to its system prompt",
    ),
    (
        "QUEUE_WAIT_SECONDS",
        "fixed estimated wait in seconds (default 300)",
    ),
    (
        "QUEUE_WAIT_URL",
        "HTTP endpoint answering the current wait in seconds",
    ),
    (
        "HANDOFF_WAIT_THRESHOLD_SECS",
        "offer WhatsApp when the wait is over this (default 120)",
    ),
    (
        "BUSINESS_HOURS",
        "opening hours, e.g. `mon-fri 09:00-17:00; sat 10:00-14:00` (default always open)",
    ),
    (
        "BUSINESS_HOURS_TZ",
        "time zone of BUSINESS_HOURS, e.g. Europe/London (default UTC)",
    ),
    (
        "OUTSIDE_HOURS",
        "`offer` (default: offer and say when replies come) or `no_offer`",
    ),
    (
        "GOODBYE_HANGUP_TIMEOUT_SECS",
        "hang up this long after the goodbye if PlayCompleted never comes (default 10)",
    ),
    (
        "HANDOFF_TEMPLATE_NAME",
        "the continuation template (default conversation_continuation)",
    ),
    (
        "ADMIN_API_KEY",
        "admin API key; unset = admin routes answer loopback only",
    ),
];

impl Settings {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can pass a map instead of the environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env(&lookup);
        let cosmos = match env.string("COSMOS_ENDPOINT") {
            None => None,
            Some(endpoint) => Some(CosmosSettings {
                endpoint: parse_url("COSMOS_ENDPOINT", &endpoint, &["http", "https"])?,
                key: env.string("COSMOS_KEY").map(Secret::new),
                database: env
                    .string("COSMOS_DATABASE")
                    .unwrap_or_else(|| "handoff".into()),
                managed_identity_client_id: env.string("AZURE_CLIENT_ID"),
            }),
        };
        let redis_url = match env.string("REDIS_URL") {
            None => None,
            Some(url) => {
                parse_url("REDIS_URL", &url, &["redis", "rediss"])?;
                Some(Secret::new(url))
            }
        };
        let port: u16 = env.parse("PORT", "a port number 0-65535", Some(8080))?;
        let public_base_url = match env.string("PUBLIC_BASE_URL") {
            Some(url) => parse_url("PUBLIC_BASE_URL", &url, &["http", "https"])?,
            None => format!("http://localhost:{port}"),
        };
        let acs = acs_settings(&env)?;
        let agent = agent_settings(&env)?;
        let handoff = handoff_settings(&env)?;
        Ok(Self {
            host: env.parse("HOST", "an IP address", "0.0.0.0".parse().ok())?,
            port,
            data_dir: env
                .string("HANDOFF_DATA_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("./data")),
            log_format: match env.string("LOG_FORMAT").as_deref() {
                None | Some("human") | Some("text") | Some("pretty") => LogFormat::Human,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError::new(
                        "LOG_FORMAT",
                        format!("`{other}` is not `human` or `json`"),
                    ));
                }
            },
            cosmos,
            redis_url,
            redis_key_prefix: env
                .string("REDIS_KEY_PREFIX")
                .unwrap_or_else(|| "handoff:".into()),
            context_cache_ttl: env.seconds("CONTEXT_CACHE_TTL_SECS", 300, 1)?,
            context_memory_entries: env.parse_min("CONTEXT_MEMORY_ENTRIES", 1024, 0)?,
            transcript_max_turns: env.parse_min("TRANSCRIPT_MAX_TURNS", 200, 1)?,
            request_timeout: env.seconds("REQUEST_TIMEOUT_SECS", 25, 1)?,
            shutdown_grace: env.seconds("SHUTDOWN_GRACE_SECS", 20, 0)?,
            public_base_url,
            acs,
            webhooks: WebhookSettings {
                event_grid_secret: env.string("EVENT_GRID_SECRET").map(Secret::new),
                max_body_bytes: env.parse_min("WEBHOOK_MAX_BODY_BYTES", 1024 * 1024, 1024)?,
                meta_verify_token: env.string("WEBHOOK_VERIFY_TOKEN").map(Secret::new),
                meta_app_secret: env.string("META_APP_SECRET").map(Secret::new),
            },
            whatsapp: WhatsAppSettings {
                acs_channel_id: env.string("ACS_WHATSAPP_CHANNEL_ID"),
                acs_api_version: env
                    .string("ACS_MESSAGES_API_VERSION")
                    .unwrap_or_else(|| "2024-08-30".into()),
                acs_preview_api_version: env
                    .string("ACS_MESSAGES_PREVIEW_API_VERSION")
                    .unwrap_or_else(|| "2025-01-15-preview".into()),
                window_safety_margin: env.seconds("WHATSAPP_WINDOW_SAFETY_SECS", 120, 0)?,
                send_rate_per_sec: env.parse_min("WHATSAPP_SEND_RATE_PER_SEC", 80, 1)?,
                recipient_min_interval: env.millis("WHATSAPP_RECIPIENT_MIN_INTERVAL_MS", 1000)?,
                burst_wait: env.millis("WHATSAPP_BURST_WAIT_MS", 1500)?,
                media_retention: Some(env.parse_min::<u64>("MEDIA_RETENTION_DAYS", 30, 0)?)
                    .filter(|&days| days > 0)
                    .map(|days| Duration::from_secs(days.saturating_mul(24 * 60 * 60))),
                templates_file: env.string("WHATSAPP_TEMPLATES_FILE").map(PathBuf::from),
                template_language: env
                    .string("WHATSAPP_TEMPLATE_LANGUAGE")
                    .unwrap_or_else(|| "en_US".into()),
                reengagement_template: env.string("WHATSAPP_REENGAGEMENT_TEMPLATE"),
                provider: match env
                    .string("WHATSAPP_PROVIDER")
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .as_deref()
                {
                    None => None,
                    Some("acs") => Some(crate::domain::WhatsAppProvider::Acs),
                    Some("meta") => Some(crate::domain::WhatsAppProvider::Meta),
                    Some("sandbox") => Some(crate::domain::WhatsAppProvider::Sandbox),
                    Some(other) => {
                        return Err(ConfigError::new(
                            "WHATSAPP_PROVIDER",
                            format!("`{other}` is not one of acs, meta, sandbox"),
                        ));
                    }
                },
                meta_access_token: env.string("META_ACCESS_TOKEN").map(Secret::new),
                meta_phone_number_id: env.string("META_PHONE_NUMBER_ID"),
                meta_graph_base_url: env
                    .string("META_GRAPH_BASE_URL")
                    .map(|u| parse_url("META_GRAPH_BASE_URL", &u, &["https", "http"]))
                    .transpose()?
                    .unwrap_or_else(|| "https://graph.facebook.com".into())
                    .trim_end_matches('/')
                    .to_owned(),
                meta_graph_version: env
                    .string("META_GRAPH_VERSION")
                    .unwrap_or_else(|| "v23.0".into()),
                meta_waba_id: env
                    .string("META_WABA_ID")
                    .map(|id| digits("META_WABA_ID", id))
                    .transpose()?,
                numbers: business_numbers(&env)?,
            },
            voice: VoiceSettings {
                call_automation_api_version: env
                    .string("ACS_CALL_AUTOMATION_API_VERSION")
                    .unwrap_or_else(|| "2025-05-15".into()),
                cognitive_services_endpoint: env
                    .string("COGNITIVE_SERVICES_ENDPOINT")
                    .map(|url| parse_url("COGNITIVE_SERVICES_ENDPOINT", &url, &["https", "http"]))
                    .transpose()?,
                locale: env
                    .string("TRANSCRIPTION_LOCALE")
                    .unwrap_or_else(|| "en-US".into()),
                tts_voice: env
                    .string("TTS_VOICE_NAME")
                    .unwrap_or_else(|| "en-US-NancyNeural".into()),
                audio_format: match env.string("MEDIA_AUDIO_FORMAT").as_deref() {
                    None => "pcm16KMono".into(),
                    Some(f) if f.eq_ignore_ascii_case("pcm16KMono") => "pcm16KMono".into(),
                    Some(f) if f.eq_ignore_ascii_case("pcm24KMono") => "pcm24KMono".into(),
                    Some(other) => {
                        return Err(ConfigError::new(
                            "MEDIA_AUDIO_FORMAT",
                            format!("`{other}` is not pcm16KMono or pcm24KMono"),
                        ));
                    }
                },
                silence_timeout: env.seconds("SILENCE_TIMEOUT_SECS", 20, 1)?,
                barge_in: match env.string("BARGE_IN").as_deref() {
                    None | Some("transcription") => BargeIn::Transcription,
                    Some("audio") => BargeIn::Audio,
                    Some(other) => {
                        return Err(ConfigError::new(
                            "BARGE_IN",
                            format!("`{other}` is not `transcription` or `audio`"),
                        ));
                    }
                },
                turn_slice: Some(env.parse_min("VOICE_TURN_SLICE_US", 300, 0)?)
                    .filter(|&us| us > 0)
                    .map(Duration::from_micros),
                callback_audience: env.string("ACS_RESOURCE_ID"),
                callback_token_issuer: match env.string("ACS_CALLBACK_TOKEN_ISSUER") {
                    Some(url) => parse_url("ACS_CALLBACK_TOKEN_ISSUER", &url, &["https", "http"])?,
                    None => crate::acs::jwt::ACS_CALL_AUTOMATION_ISSUER.to_owned(),
                },
            },
            agent,
            handoff,
            admin_api_key: env.string("ADMIN_API_KEY").map(Secret::new),
        })
    }

    /// Defaults only: what `handoff serve` uses with an empty environment.
    pub fn embedded(data_dir: impl Into<PathBuf>) -> Self {
        let mut settings = Self::from_lookup(|_| None).expect("defaults are valid");
        settings.data_dir = data_dir.into();
        settings
    }
}

struct Env<'a>(&'a dyn Fn(&str) -> Option<String>);

impl Env<'_> {
    /// The value, trimmed; empty counts as unset (a common way to "unset" in deploy tooling).
    fn string(&self, var: &str) -> Option<String> {
        (self.0)(var)
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    }

    fn parse<T: std::str::FromStr>(
        &self,
        var: &'static str,
        expected: &str,
        default: Option<T>,
    ) -> Result<T, ConfigError> {
        match self.string(var) {
            Some(raw) => raw
                .parse()
                .map_err(|_| ConfigError::new(var, format!("`{raw}` is not {expected}"))),
            None => default.ok_or_else(|| ConfigError::new(var, "is required")),
        }
    }

    fn parse_min<T>(&self, var: &'static str, default: T, min: T) -> Result<T, ConfigError>
    where
        T: std::str::FromStr + PartialOrd + fmt::Display + Copy,
    {
        let value: T = self.parse(var, "a whole number", Some(default))?;
        if value < min {
            return Err(ConfigError::new(var, format!("must be at least {min}")));
        }
        Ok(value)
    }

    fn seconds(&self, var: &'static str, default: u64, min: u64) -> Result<Duration, ConfigError> {
        self.parse_min(var, default, min).map(Duration::from_secs)
    }

    fn millis(&self, var: &'static str, default: u64) -> Result<Duration, ConfigError> {
        self.parse_min(var, default, 0).map(Duration::from_millis)
    }
}

fn agent_settings(env: &Env) -> Result<AgentSettings, ConfigError> {
    let backend = if let Some(endpoint) = env.string("AZURE_OPENAI_ENDPOINT") {
        AgentBackend::AzureOpenAi {
            endpoint: parse_url("AZURE_OPENAI_ENDPOINT", &endpoint, &["https", "http"])?,
            deployment: env.string("AZURE_OPENAI_DEPLOYMENT").ok_or_else(|| {
                ConfigError::new(
                    "AZURE_OPENAI_DEPLOYMENT",
                    "is required when AZURE_OPENAI_ENDPOINT is set",
                )
            })?,
            api_version: env
                .string("AZURE_OPENAI_API_VERSION")
                .unwrap_or_else(|| "2024-10-21".into()),
            api_key: env
                .string("AZURE_OPENAI_API_KEY")
                .or_else(|| env.string("OPENAI_API_KEY"))
                .map(Secret::new),
            managed_identity_client_id: env.string("AZURE_CLIENT_ID"),
        }
    } else if let Some(api_key) = env.string("OPENAI_API_KEY") {
        let base_url = match env.string("OPENAI_BASE_URL") {
            Some(url) => parse_url("OPENAI_BASE_URL", &url, &["https", "http"])?,
            None => "https://api.openai.com/v1".into(),
        };
        AgentBackend::OpenAi {
            base_url,
            api_key: Secret::new(api_key),
            model: env
                .string("OPENAI_MODEL")
                .unwrap_or_else(|| "gpt-4o-mini".into()),
        }
    } else {
        AgentBackend::Scripted
    };
    Ok(AgentSettings {
        backend,
        profiles_file: env.string("AGENT_PROFILES_FILE").map(PathBuf::from),
        request_timeout: env.seconds("AGENT_TIMEOUT_SECS", 20, 1)?,
        max_attempts: env.parse_min("AGENT_MAX_ATTEMPTS", 3, 1)?,
    })
}

fn handoff_settings(env: &Env) -> Result<HandoffSettings, ConfigError> {
    let business_hours = match (
        env.string("BUSINESS_HOURS"),
        env.string("BUSINESS_HOURS_TZ"),
    ) {
        (None, _) => crate::domain::BusinessHours::always_open(),
        (Some(spec), tz) => {
            crate::domain::BusinessHours::parse(tz.as_deref().unwrap_or("UTC"), &spec).map_err(
                |e| {
                    let var = if matches!(e, crate::domain::BusinessHoursError::TimeZone(_)) {
                        "BUSINESS_HOURS_TZ"
                    } else {
                        "BUSINESS_HOURS"
                    };
                    ConfigError::new(var, e.to_string())
                },
            )?
        }
    };
    Ok(HandoffSettings {
        queue_wait_seconds: env.parse(
            "QUEUE_WAIT_SECONDS",
            "a whole number of seconds",
            Some(300),
        )?,
        queue_wait_url: env
            .string("QUEUE_WAIT_URL")
            .map(|u| parse_url("QUEUE_WAIT_URL", &u, &["http", "https"]))
            .transpose()?,
        wait_threshold: env.seconds("HANDOFF_WAIT_THRESHOLD_SECS", 120, 0)?,
        business_hours,
        outside_hours: match env.string("OUTSIDE_HOURS").as_deref() {
            None | Some("offer") => OutsideHours::OfferWithNotice,
            Some("no_offer") | Some("none") => OutsideHours::NoOffer,
            Some(other) => {
                return Err(ConfigError::new(
                    "OUTSIDE_HOURS",
                    format!("`{other}` is not `offer` or `no_offer`"),
                ));
            }
        },
        goodbye_timeout: env.seconds("GOODBYE_HANGUP_TIMEOUT_SECS", 10, 1)?,
        template_name: env
            .string("HANDOFF_TEMPLATE_NAME")
            .unwrap_or_else(|| "conversation_continuation".into()),
    })
}

/// `ACS_CONNECTION_STRING` (HMAC) wins over `ACS_ENDPOINT` (managed identity).
fn acs_settings(env: &Env) -> Result<Option<AcsSettings>, ConfigError> {
    if let Some(raw) = env.string("ACS_CONNECTION_STRING") {
        let mut endpoint = None;
        let mut key = None;
        for part in raw.split(';').filter(|p| !p.trim().is_empty()) {
            let Some((name, value)) = part.split_once('=') else {
                return Err(ConfigError::new(
                    "ACS_CONNECTION_STRING",
                    "is not of the form endpoint=https://…;accesskey=…",
                ));
            };
            match name.trim().to_ascii_lowercase().as_str() {
                "endpoint" => endpoint = Some(value.trim().to_owned()),
                "accesskey" => key = Some(value.trim().to_owned()),
                _ => {}
            }
        }
        let endpoint = endpoint
            .ok_or_else(|| ConfigError::new("ACS_CONNECTION_STRING", "has no endpoint="))?;
        let endpoint = parse_url("ACS_CONNECTION_STRING", &endpoint, &["https", "http"])?;
        // The access key is base64 and itself may end in `=`; `split_once` kept it whole.
        let key =
            key.ok_or_else(|| ConfigError::new("ACS_CONNECTION_STRING", "has no accesskey="))?;
        use base64::Engine;
        let key = base64::engine::general_purpose::STANDARD
            .decode(key.as_bytes())
            .map_err(|_| ConfigError::new("ACS_CONNECTION_STRING", "accesskey is not base64"))?;
        return Ok(Some(AcsSettings {
            endpoint,
            auth: AcsAuth::AccessKey(Secret::new(key)),
        }));
    }
    match env.string("ACS_ENDPOINT") {
        None => Ok(None),
        Some(endpoint) => Ok(Some(AcsSettings {
            endpoint: parse_url("ACS_ENDPOINT", &endpoint, &["https", "http"])?,
            auth: AcsAuth::ManagedIdentity {
                client_id: env.string("AZURE_CLIENT_ID"),
            },
        })),
    }
}

/// Meta ids (phone number, business account) are digits.
fn digits(var: &'static str, raw: String) -> Result<String, ConfigError> {
    if raw.bytes().all(|b| b.is_ascii_digit()) {
        Ok(raw)
    } else {
        Err(ConfigError::new(var, format!("`{raw}` is not digits")))
    }
}

/// `WHATSAPP_NUMBERS`: comma-separated `provider:number[=profile]` entries, e.g.
/// `acs:0f0eb78e-…=support, meta:106540352242922=sales`. Provider names are case-insensitive;
/// spaces around entries and parts are ignored, as is an empty entry (a trailing comma).
/// `ACS_WHATSAPP_CHANNEL_ID` and `META_PHONE_NUMBER_ID` may be listed too (to give them a
/// profile), under their own provider.
fn business_numbers(env: &Env) -> Result<Vec<BusinessNumber>, ConfigError> {
    use crate::domain::WhatsAppProvider;
    const VAR: &str = "WHATSAPP_NUMBERS";
    let Some(raw) = env.string(VAR) else {
        return Ok(Vec::new());
    };
    let mut numbers: Vec<BusinessNumber> = Vec::new();
    for (i, entry) in raw
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .enumerate()
    {
        let bad =
            |problem: &str| ConfigError::new(VAR, format!("entry {} `{entry}`: {problem}", i + 1));
        let (route, profile) = match entry.split_once('=') {
            Some((route, profile)) => (route.trim(), Some(profile.trim())),
            None => (entry, None),
        };
        let (provider, id) = route
            .split_once(':')
            .map(|(p, n)| (p.trim(), n.trim()))
            .ok_or_else(|| bad("is not provider:number[=profile]"))?;
        let provider = match provider.to_ascii_lowercase().as_str() {
            "acs" => WhatsAppProvider::Acs,
            "meta" => WhatsAppProvider::Meta,
            _ => return Err(bad(&format!("provider `{provider}` is not acs or meta"))),
        };
        if id.is_empty() {
            return Err(bad("has no number"));
        }
        if !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(bad(
                "the number may only have letters, digits, `-`, `_` and `.`",
            ));
        }
        if provider == WhatsAppProvider::Meta && !id.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad("a Meta phone number id is digits"));
        }
        let profile = match profile {
            None => None,
            Some("") => return Err(bad("has `=` but no profile")),
            Some(p)
                if p.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_') =>
            {
                Some(p.to_owned())
            }
            Some(_) => {
                return Err(bad(
                    "the profile may only have letters, digits, `-` and `_`",
                ));
            }
        };
        if numbers.iter().any(|n| n.id == id) {
            return Err(bad("the number is listed twice"));
        }
        let own = |var: &'static str, owner: WhatsAppProvider| match env.string(var) {
            Some(configured) if configured == id && provider != owner => Err(bad(&format!(
                "the number is {var}, which belongs to {}",
                if owner == WhatsAppProvider::Acs {
                    "acs"
                } else {
                    "meta"
                }
            ))),
            _ => Ok(()),
        };
        own("ACS_WHATSAPP_CHANNEL_ID", WhatsAppProvider::Acs)?;
        own("META_PHONE_NUMBER_ID", WhatsAppProvider::Meta)?;
        numbers.push(BusinessNumber {
            provider,
            id: id.to_owned(),
            profile,
        });
    }
    Ok(numbers)
}

/// Checks that `raw` is an absolute URL with one of `schemes`; returns it without a trailing `/`.
fn parse_url(var: &'static str, raw: &str, schemes: &[&str]) -> Result<String, ConfigError> {
    let (scheme, rest) = raw
        .split_once("://")
        .ok_or_else(|| ConfigError::new(var, "is not an absolute URL (scheme://host…)"))?;
    if !schemes.iter().any(|s| s.eq_ignore_ascii_case(scheme)) {
        return Err(ConfigError::new(
            var,
            format!("scheme `{scheme}` is not one of {}", schemes.join(", ")),
        ));
    }
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host = host.rsplit('@').next().unwrap_or_default();
    if host.is_empty() {
        return Err(ConfigError::new(var, "has no host"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn from(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Settings::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn empty_environment_means_embedded_defaults() {
        let s = from(&[]).unwrap();
        assert_eq!(s.port, 8080);
        assert_eq!(s.data_dir, PathBuf::from("./data"));
        assert!(s.cosmos.is_none());
        assert!(s.redis_url.is_none());
        assert_eq!(s.log_format, LogFormat::Human);
        assert_eq!(s.context_cache_ttl, Duration::from_secs(300));
        assert_eq!(s.context_memory_entries, 1024);
    }

    #[test]
    fn cosmos_and_redis_are_read_with_their_defaults() {
        let s = from(&[
            ("COSMOS_ENDPOINT", "https://acct.documents.azure.com:443/"),
            ("COSMOS_KEY", "c2VjcmV0"),
            ("REDIS_URL", "rediss://:pw@cache:6380"),
            ("LOG_FORMAT", "json"),
        ])
        .unwrap();
        let cosmos = s.cosmos.unwrap();
        assert_eq!(cosmos.endpoint, "https://acct.documents.azure.com:443");
        assert_eq!(cosmos.database, "handoff");
        assert_eq!(cosmos.key.unwrap().expose(), "c2VjcmV0");
        assert_eq!(s.log_format, LogFormat::Json);
    }

    #[test]
    fn invalid_values_name_the_variable_and_the_problem() {
        let cases: &[(&str, &str, &str)] = &[
            ("PORT", "eighty", "`eighty` is not a port number 0-65535"),
            ("PORT", "70000", "`70000` is not a port number 0-65535"),
            (
                "COSMOS_ENDPOINT",
                "acct.documents.azure.com",
                "is not an absolute URL",
            ),
            (
                "REDIS_URL",
                "http://cache:6379",
                "scheme `http` is not one of redis, rediss",
            ),
            ("LOG_FORMAT", "xml", "`xml` is not `human` or `json`"),
            ("TRANSCRIPT_MAX_TURNS", "0", "must be at least 1"),
            ("CONTEXT_CACHE_TTL_SECS", "-3", "`-3` is not a whole number"),
            (
                "CONTEXT_MEMORY_ENTRIES",
                "lots",
                "`lots` is not a whole number",
            ),
        ];
        for (var, value, problem) in cases {
            let err = from(&[(var, value)]).unwrap_err();
            assert_eq!(err.var, *var);
            assert!(
                err.problem.contains(problem),
                "{var}={value}: {}",
                err.problem
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("invalid configuration: {var}: "))
            );
        }
    }

    #[test]
    fn acs_connection_string_gives_endpoint_and_key() {
        let s = from(&[(
            "ACS_CONNECTION_STRING",
            "endpoint=https://res.communication.azure.com/;accesskey=c2VjcmV0LWtleQ==",
        )])
        .unwrap();
        let acs = s.acs.unwrap();
        assert_eq!(acs.endpoint, "https://res.communication.azure.com");
        match acs.auth {
            AcsAuth::AccessKey(key) => assert_eq!(key.expose().as_slice(), b"secret-key"),
            other => panic!("expected an access key, got {other:?}"),
        }
        let s = from(&[
            ("ACS_ENDPOINT", "https://res.communication.azure.com"),
            ("AZURE_CLIENT_ID", "client-1"),
        ])
        .unwrap();
        assert!(matches!(
            s.acs.unwrap().auth,
            AcsAuth::ManagedIdentity { client_id: Some(ref id) } if id == "client-1"
        ));
        let err =
            from(&[("ACS_CONNECTION_STRING", "endpoint=https://x;accesskey=%%%")]).unwrap_err();
        assert_eq!(err.var, "ACS_CONNECTION_STRING");
        assert!(err.problem.contains("base64"));
        let debug = format!(
            "{:?}",
            from(&[(
                "ACS_CONNECTION_STRING",
                "endpoint=https://res.communication.azure.com/;accesskey=c2VjcmV0LWtleQ==",
            )])
            .unwrap()
        );
        assert!(!debug.contains("c2VjcmV0") && !debug.contains("115, 101"));
    }

    #[test]
    fn public_base_url_defaults_to_localhost_on_the_port() {
        let s = from(&[("PORT", "9000")]).unwrap();
        assert_eq!(s.public_base_url, "http://localhost:9000");
        let s = from(&[("PUBLIC_BASE_URL", "https://handoff.example.com/")]).unwrap();
        assert_eq!(s.public_base_url, "https://handoff.example.com");
    }

    #[test]
    fn empty_values_count_as_unset() {
        let s = from(&[("COSMOS_ENDPOINT", "  "), ("PORT", "")]).unwrap();
        assert!(s.cosmos.is_none());
        assert_eq!(s.port, 8080);
    }

    #[test]
    fn acs_callback_tokens_are_checked_for_the_resource_named() {
        let s = from(&[]).unwrap();
        assert_eq!(s.voice.callback_audience, None);
        assert_eq!(
            s.voice.callback_token_issuer,
            "https://acscallautomation.communication.azure.com"
        );
        let s = from(&[
            ("ACS_RESOURCE_ID", " 0f5d7a2c-1b7e-4f38-9d5e-3c1a9e7b2f10 "),
            ("ACS_CALLBACK_TOKEN_ISSUER", "https://issuer.example.com/"),
        ])
        .unwrap();
        assert_eq!(
            s.voice.callback_audience.as_deref(),
            Some("0f5d7a2c-1b7e-4f38-9d5e-3c1a9e7b2f10")
        );
        assert!(
            s.voice
                .callback_token_issuer
                .starts_with("https://issuer.example.com")
        );
        let err = from(&[("ACS_CALLBACK_TOKEN_ISSUER", "issuer")]).unwrap_err();
        assert!(
            err.to_string().contains("ACS_CALLBACK_TOKEN_ISSUER"),
            "{err}"
        );
    }

    #[test]
    fn media_is_kept_thirty_days_unless_told_otherwise() {
        let retention = |env: &[(&str, &str)]| from(env).unwrap().whatsapp.media_retention;
        let day = Duration::from_secs(24 * 60 * 60);
        assert_eq!(retention(&[]), Some(30 * day));
        assert_eq!(retention(&[("MEDIA_RETENTION_DAYS", "7")]), Some(7 * day));
        assert_eq!(retention(&[("MEDIA_RETENTION_DAYS", "0")]), None);
        assert!(retention(&[("MEDIA_RETENTION_DAYS", "18446744073709551615")]).is_some());
        let err = from(&[("MEDIA_RETENTION_DAYS", "-1")]).unwrap_err();
        assert!(err.to_string().contains("MEDIA_RETENTION_DAYS"), "{err}");
    }

    #[test]
    fn voice_turn_threads_ask_for_a_short_slice_unless_told_not_to() {
        let slice = |env: &[(&str, &str)]| from(env).unwrap().voice.turn_slice;
        assert_eq!(slice(&[]), Some(Duration::from_micros(300)));
        assert_eq!(
            slice(&[("VOICE_TURN_SLICE_US", "1000")]),
            Some(Duration::from_millis(1))
        );
        assert_eq!(slice(&[("VOICE_TURN_SLICE_US", "0")]), None);
        let err = from(&[("VOICE_TURN_SLICE_US", "fast")]).unwrap_err();
        assert!(err.to_string().contains("VOICE_TURN_SLICE_US"), "{err}");
    }

    #[test]
    fn whatsapp_numbers_give_each_number_its_provider_and_profile() {
        use crate::domain::WhatsAppProvider::{Acs, Meta};
        let s = from(&[
            (
                "WHATSAPP_NUMBERS",
                " acs:0f0eb78e-a576-1dfc-b414-0f0756de3338 = support ,META:106540352242922=sales,meta:555,",
            ),
            ("META_WABA_ID", "102290129340398"),
        ])
        .unwrap();
        let number = |provider, id: &str, profile: Option<&str>| BusinessNumber {
            provider,
            id: id.into(),
            profile: profile.map(str::to_owned),
        };
        assert_eq!(
            s.whatsapp.numbers,
            [
                number(Acs, "0f0eb78e-a576-1dfc-b414-0f0756de3338", Some("support")),
                number(Meta, "106540352242922", Some("sales")),
                number(Meta, "555", None),
            ]
        );
        assert_eq!(s.whatsapp.meta_waba_id.as_deref(), Some("102290129340398"));
        assert!(from(&[]).unwrap().whatsapp.numbers.is_empty());
        // The configured numbers may be listed under their own provider, for a profile.
        let s = from(&[
            ("META_PHONE_NUMBER_ID", "106540352242922"),
            ("WHATSAPP_NUMBERS", "meta:106540352242922=sales"),
        ])
        .unwrap();
        assert_eq!(s.whatsapp.numbers.len(), 1);
    }

    #[test]
    fn whatsapp_numbers_errors_are_one_line_naming_the_variable_and_the_entry() {
        let cases: &[(&[(&str, &str)], &str)] = &[
            (
                &[("WHATSAPP_NUMBERS", "acs:c1, 106540352242922")],
                "entry 2 `106540352242922`: is not provider:number[=profile]",
            ),
            (
                &[("WHATSAPP_NUMBERS", "twilio:1")],
                "entry 1 `twilio:1`: provider `twilio` is not acs or meta",
            ),
            (&[("WHATSAPP_NUMBERS", "meta:")], "has no number"),
            (
                &[("WHATSAPP_NUMBERS", "meta:12a4")],
                "a Meta phone number id is digits",
            ),
            (
                &[("WHATSAPP_NUMBERS", "acs:c 1")],
                "the number may only have",
            ),
            (&[("WHATSAPP_NUMBERS", "acs:c1=")], "has `=` but no profile"),
            (
                &[("WHATSAPP_NUMBERS", "acs:c1=sales team")],
                "the profile may only have",
            ),
            (
                &[("WHATSAPP_NUMBERS", "acs:c1=a, acs:c1=b")],
                "entry 2 `acs:c1=b`: the number is listed twice",
            ),
            (
                &[
                    ("META_PHONE_NUMBER_ID", "123"),
                    ("WHATSAPP_NUMBERS", "acs:123"),
                ],
                "the number is META_PHONE_NUMBER_ID, which belongs to meta",
            ),
        ];
        for (env, problem) in cases {
            let err = from(env).unwrap_err();
            assert_eq!(err.var, "WHATSAPP_NUMBERS", "{env:?}");
            assert!(err.problem.contains(problem), "{env:?}: {}", err.problem);
            assert!(!err.to_string().contains('\n'));
        }
        let err = from(&[("META_WABA_ID", "waba-1")]).unwrap_err();
        assert_eq!(err.var, "META_WABA_ID");
        assert!(err.problem.contains("is not digits"));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let s = from(&[
            ("COSMOS_ENDPOINT", "https://acct.documents.azure.com"),
            ("COSMOS_KEY", "super-secret-key"),
            ("REDIS_URL", "redis://:hunter2@cache:6379"),
        ])
        .unwrap();
        let debug = format!("{s:?}");
        assert!(!debug.contains("super-secret-key"));
        assert!(!debug.contains("hunter2"));
        assert!(debug.contains("Secret(***)"));
    }
}
