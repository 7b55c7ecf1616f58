//! Voice over ACS Call Automation: answer incoming calls with media streaming and real-time
//! transcription pointed at our own WebSocket, hold the conversation, and close calls politely.
//!
//! - [`events`]: `IncomingCall` and callback CloudEvents (ACS JSON → [`events::CallEvent`]).
//! - [`client`]: the [`client::VoiceProvider`] port and its Call Automation REST adapter.
//! - [`sandbox`]: the offline provider that records actions and posts the callbacks a call would.
//! - [`registry`]: per-call secrets and event routing across replicas (in-process or Redis).
//! - [`media`]: the media/transcription WebSocket frames, sentence splitting, audio framing.
//! - [`session`]: the per-call conversation state machine (pure).
//! - [`call`]: the per-call task that drives it over the socket, the agent and the provider.
//! - [`audio`]: the outbound-audio path (text-to-speech port, paced frame writer, `StopAudio`).
//!
//! [`VoiceService`] holds the plain functions the HTTP handlers call.

pub mod audio;
pub mod call;
pub mod client;
pub mod events;
pub mod media;
pub mod registry;
pub mod sandbox;
pub mod session;
pub mod stats;

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;

use crate::agent::Agent;
use crate::config::Settings;
use crate::domain::{VoiceSession, VoiceSessionStatus};
use crate::eventgrid::{self, Delivery};
use crate::store::{Claim, ClaimStore, Contexts, StoreError};

use client::{AnswerCall, VoiceError, VoiceProvider};
use events::{CallEvent, CallEventKind, IncomingCall};
use registry::{CallRecord, CallRegistry, CallState, CallToken};
use session::CLOSING_PREFIX;
use stats::VoiceStats;

/// How long ingress claims are kept: longer than Event Grid's 24-hour retry horizon.
const CLAIM_TTL: Duration = Duration::from_secs(25 * 60 * 60);
pub const APOLOGY: &str = "Sorry, we are having technical trouble and cannot continue this call. Please call again later.";

#[derive(Debug, thiserror::Error)]
pub enum VoiceServiceError {
    #[error("missing or wrong secret")]
    Unauthorized,
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("voice provider unavailable: {0}")]
    ProviderUnavailable(VoiceError),
}

/// What an Event Grid delivery to `/calls/incoming` produced.
#[derive(Debug, PartialEq)]
pub enum IncomingOutcome {
    Validation(String),
    Handled {
        answered: usize,
        duplicates: usize,
        ignored: usize,
    },
}

/// Everything the voice routes and call sessions need. Cheap to share (`Arc`).
pub struct VoiceService {
    pub settings: Arc<Settings>,
    pub provider: Arc<dyn VoiceProvider>,
    pub registry: Arc<dyn CallRegistry>,
    pub claims: Arc<dyn ClaimStore>,
    pub contexts: Contexts,
    pub agent: Arc<dyn Agent>,
    pub stats: Arc<VoiceStats>,
    /// The sandbox provider when it is the one in use, for reading its recorded actions.
    pub sandbox: Option<Arc<sandbox::SandboxVoice>>,
    /// How sessions speak: Call Automation `:play` unless a text-to-speech port is set.
    pub speech: std::sync::Mutex<call::SpeechOutput>,
    /// The agent's tools (wait time, collected data, the handoff saga); set once at start-up,
    /// after the saga that needs this service's provider exists.
    pub tools: std::sync::OnceLock<crate::handoff::tools::ToolServices>,
    /// Where each call's conversation runs: a runtime of its own, apart from the media
    /// sockets' audio (`crate::runtime`).
    pub turns: tokio::runtime::Handle,
    /// Checks ACS's signed token on callbacks and media sockets (`ACS_RESOURCE_ID`).
    pub acs_tokens: Option<Arc<crate::acs::jwt::AcsTokenVerifier>>,
}

/// A public base URL as a WebSocket base: `wss` for `https`, `ws` for `http`.
pub fn ws_base(base: &str) -> String {
    let lower = base.to_ascii_lowercase();
    if lower.starts_with("https://") {
        format!("wss://{}", &base["https://".len()..])
    } else if lower.starts_with("http://") {
        format!("ws://{}", &base["http://".len()..])
    } else {
        base.to_owned()
    }
}

/// Builds the voice service from settings: ACS Call Automation when ACS is configured, the
/// sandbox otherwise; the call registry in Redis when configured, in-process otherwise.
impl VoiceService {
    /// A call that carried a handoff ended: the saga records it (once, whoever hung up).
    async fn handoff_call_ended(&self, customer: &crate::domain::CustomerId, call_id: &str) {
        let Some(tools) = self.tools.get() else {
            return;
        };
        let handoffs = match tools.handoff.store().for_customer(customer).await {
            Ok(handoffs) => handoffs,
            Err(err) => {
                tracing::warn!(call_connection_id = %call_id, error = %err, "cannot look up the call's handoff");
                return;
            }
        };
        for h in handoffs.into_iter().filter(|h| {
            h.call_connection_id.as_deref() == Some(call_id)
                && h.reached(crate::domain::Milestone::TemplateSent)
                && !h.reached(crate::domain::Milestone::CallEnded)
        }) {
            if let Err(err) = tools.handoff.call_ended(&h.id).await {
                tracing::warn!(handoff_id = %h.id, error = %err, "cannot record the end of the call");
            }
        }
    }
}

pub fn build(
    settings: Arc<Settings>,
    stores: &crate::store::Stores,
    http: reqwest::Client,
    agent: Arc<dyn Agent>,
    turns: tokio::runtime::Handle,
) -> Result<Arc<VoiceService>, String> {
    let acs_tokens = match (&settings.acs, &settings.voice.callback_audience) {
        (Some(_), Some(audience)) => Some(Arc::new(crate::acs::jwt::AcsTokenVerifier::new(
            &settings.voice.callback_token_issuer,
            audience,
            http.clone(),
        ))),
        (Some(_), None) => {
            tracing::warn!(
                "ACS_RESOURCE_ID is not set: Call Automation callbacks are checked by their per-call token only"
            );
            None
        }
        (None, Some(_)) => {
            tracing::warn!(
                "ACS_RESOURCE_ID is set without ACS: the sandbox's callbacks carry no ACS token and are not checked"
            );
            None
        }
        (None, None) => None,
    };
    let (provider, sandbox): (Arc<dyn VoiceProvider>, _) = match &settings.acs {
        Some(acs) => {
            if settings.voice.cognitive_services_endpoint.is_none() {
                tracing::warn!(
                    "COGNITIVE_SERVICES_ENDPOINT is not set: calls are answered without transcription or text-to-speech"
                );
            }
            if !settings.public_base_url.starts_with("https://") {
                tracing::warn!(
                    "PUBLIC_BASE_URL is not https: ACS cannot reach callbacks or the media WebSocket"
                );
            }
            let client = crate::acs::AcsClient::new(acs, http).map_err(|e| e.to_string())?;
            (
                Arc::new(client::AcsCallAutomation::new(
                    client,
                    settings.voice.clone(),
                )),
                None,
            )
        }
        None => {
            let sandbox = Arc::new(sandbox::SandboxVoice::new(http));
            (sandbox.clone() as Arc<dyn VoiceProvider>, Some(sandbox))
        }
    };
    let registry: Arc<dyn CallRegistry> = match &settings.redis_url {
        Some(url) => {
            let pool = crate::store::redis::RedisPool::new(url, &settings.redis_key_prefix)
                .map_err(|e| e.to_string())?;
            Arc::new(registry::RedisRegistry::new(pool, url).map_err(|e| e.to_string())?)
        }
        None => Arc::new(registry::InProcessRegistry::new()),
    };
    Ok(Arc::new(VoiceService {
        provider,
        registry,
        claims: stores.claims.clone(),
        contexts: stores.contexts.clone(),
        agent,
        stats: Arc::new(VoiceStats::default()),
        sandbox,
        speech: std::sync::Mutex::new(call::SpeechOutput::Play),
        tools: std::sync::OnceLock::new(),
        turns,
        acs_tokens,
        settings,
    }))
}

impl VoiceService {
    /// Switches how new calls speak (outbound audio frames through a text-to-speech port, or
    /// Call Automation `:play`). Calls already running keep theirs.
    pub fn set_speech_output(&self, output: call::SpeechOutput) {
        *self.speech.lock().expect("speech lock") = output;
    }

    pub fn speech_output(&self) -> call::SpeechOutput {
        self.speech.lock().expect("speech lock").clone()
    }

    /// `{PUBLIC_BASE_URL}` as a WebSocket base.
    pub fn ws_base(&self) -> String {
        ws_base(&self.settings.public_base_url)
    }

    /// `POST /api/v1/calls/incoming`: Event Grid deliveries of `IncomingCall`.
    pub async fn incoming(
        &self,
        code: Option<&str>,
        body: &[u8],
    ) -> Result<IncomingOutcome, VoiceServiceError> {
        if !eventgrid::authorised(self.settings.webhooks.event_grid_secret.as_ref(), code) {
            return Err(VoiceServiceError::Unauthorized);
        }
        let events = match eventgrid::parse(body)
            .map_err(|e| VoiceServiceError::BadRequest(e.to_string()))?
        {
            Delivery::Validation { code } => return Ok(IncomingOutcome::Validation(code)),
            Delivery::Events(events) => events,
        };
        let (mut answered, mut duplicates, mut ignored) = (0, 0, 0);
        for event in &events {
            match events::incoming_call(event) {
                None => ignored += 1,
                Some(Err(err)) => {
                    tracing::warn!(event_id = %event.id, error = %err, "IncomingCall ignored");
                    ignored += 1;
                }
                Some(Ok(call)) => {
                    if self.answer(&call).await? {
                        answered += 1;
                    } else {
                        duplicates += 1;
                    }
                }
            }
        }
        Ok(IncomingOutcome::Handled {
            answered,
            duplicates,
            ignored,
        })
    }

    /// Answers one call once, however often its event is delivered. `false` for a duplicate.
    async fn answer(&self, call: &IncomingCall) -> Result<bool, VoiceServiceError> {
        let mut keys = vec![format!("voice:incoming:event:{}", call.event_id)];
        if let Some(correlation) = &call.correlation_id {
            keys.push(format!("voice:incoming:call:{correlation}"));
        }
        let mut claimed = Vec::new();
        for key in &keys {
            match self.claims.claim(key, CLAIM_TTL).await {
                Ok(Claim::Fresh) => claimed.push(key.clone()),
                Ok(Claim::Duplicate) => {
                    self.release(&claimed).await;
                    tracing::info!(event_id = %call.event_id, "IncomingCall already answered");
                    return Ok(false);
                }
                Err(err) => {
                    self.release(&claimed).await;
                    return Err(err.into());
                }
            }
        }
        match self.answer_claimed(call).await {
            Ok(()) => Ok(true),
            Err(err) => {
                // Let the redelivery try again; a rejected answer is logged and dropped.
                self.release(&claimed).await;
                match err {
                    VoiceServiceError::ProviderUnavailable(e) if !e.is_transient() => {
                        tracing::warn!(event_id = %call.event_id, customer = %call.caller, error = %e, "answer rejected");
                        Ok(true)
                    }
                    other => Err(other),
                }
            }
        }
    }

    async fn answer_claimed(&self, call: &IncomingCall) -> Result<(), VoiceServiceError> {
        let started = std::time::Instant::now();
        let token = CallToken::generate();
        let mut record = CallRecord {
            customer_id: call.caller.clone(),
            call_connection_id: None,
            state: CallState::Answering,
            end_reason: None,
        };
        // Warm before answering (pitfall 11): load the caller's context (filling the shared
        // cache the WebSocket replica reads) and warm the agent while the call record is
        // written, so the greeting does not wait on cold paths. The record must exist before
        // ACS can call back.
        let (context, put, ()) = tokio::join!(
            self.contexts.get(&call.caller),
            self.registry.put(&token, &record),
            self.agent.warm()
        );
        put?;
        if let Err(err) = context {
            tracing::debug!(error = %err, "context warm-up failed; the session will retry");
        }
        let base = &self.settings.public_base_url;
        let answer = AnswerCall {
            incoming_call_context: call.incoming_call_context.clone(),
            callback_uri: format!("{base}/api/v1/calls/callbacks?token={}", token.expose()),
            media_url: format!(
                "{}/api/v1/media/ws?token={}",
                self.ws_base(),
                token.expose()
            ),
        };
        let answered = self
            .provider
            .answer(&answer)
            .await
            .map_err(VoiceServiceError::ProviderUnavailable)?;
        let call_id = answered.call_connection_id;
        // The call is answered now: whatever fails from here on is logged, never retried by
        // a redelivery (answering the same incomingCallContext twice cannot succeed).
        record.call_connection_id = Some(call_id.clone());
        if let Err(err) = self.registry.put(&token, &record).await {
            tracing::error!(call_connection_id = %call_id, error = %err, "call record not updated");
        }
        let display_name = call.caller_display_name.clone();
        let opened = self
            .contexts
            .update(&call.caller, |ctx| {
                if ctx.display_name.is_none() {
                    ctx.display_name = display_name.clone();
                }
                if ctx.voice_session_mut(&call_id).is_none() {
                    ctx.voice_sessions.push(VoiceSession {
                        call_connection_id: call_id.clone(),
                        started_at: Utc::now(),
                        ended_at: None,
                        status: VoiceSessionStatus::Connecting,
                        end_reason: None,
                    });
                }
            })
            .await;
        if let Err(err) = opened {
            tracing::error!(call_connection_id = %call_id, error = %err, "voice session not recorded");
        }
        self.stats.answered();
        tracing::info!(
            call_connection_id = %call_id,
            customer = %call.caller,
            answer_ms = started.elapsed().as_millis() as u64,
            "call answered"
        );
        Ok(())
    }

    async fn release(&self, keys: &[String]) {
        for key in keys {
            if let Err(err) = self.claims.release(key).await {
                tracing::warn!(error = %err, "claim not released");
            }
        }
    }

    /// `POST /api/v1/calls/callbacks?token=…`: Call Automation events for one call.
    pub async fn callbacks(
        &self,
        token: Option<&str>,
        body: &[u8],
    ) -> Result<usize, VoiceServiceError> {
        let token = token
            .and_then(CallToken::from_presented)
            .ok_or(VoiceServiceError::Unauthorized)?;
        let Some(mut record) = self.registry.get(&token).await? else {
            return Err(VoiceServiceError::Unauthorized);
        };
        let events = match eventgrid::parse(body)
            .map_err(|e| VoiceServiceError::BadRequest(e.to_string()))?
        {
            Delivery::Validation { .. } => {
                return Err(VoiceServiceError::BadRequest("not a callback".into()));
            }
            Delivery::Events(events) => events,
        };
        let mut applied = 0;
        for event in &events {
            let event = events::call_event(event);
            let key = format!("voice:callback:{}", event.id);
            match self.claims.claim(&key, CLAIM_TTL).await? {
                Claim::Duplicate => continue,
                Claim::Fresh => {}
            }
            if let Err(err) = self.apply(&token, &mut record, &event).await {
                self.release(std::slice::from_ref(&key)).await;
                return Err(err);
            }
            applied += 1;
        }
        Ok(applied)
    }

    async fn apply(
        &self,
        token: &CallToken,
        record: &mut CallRecord,
        event: &CallEvent,
    ) -> Result<(), VoiceServiceError> {
        let Some(call_id) = event
            .call_connection_id
            .clone()
            .or_else(|| record.call_connection_id.clone())
        else {
            tracing::warn!(event_id = %event.id, "callback without a call connection id ignored");
            return Ok(());
        };
        if record
            .call_connection_id
            .as_deref()
            .is_some_and(|known| known != call_id)
        {
            // A token is good for its own call only.
            tracing::warn!(event_id = %event.id, "callback for another call ignored");
            return Ok(());
        }
        let customer = record.customer_id.clone();
        let closing_op = event
            .operation_context
            .as_deref()
            .is_some_and(|op| op.starts_with(CLOSING_PREFIX));
        match &event.kind {
            CallEventKind::Connected => {
                if record.state == CallState::Answering {
                    record.state = CallState::Connected;
                    record.call_connection_id = Some(call_id.clone());
                    *record = self.registry.put(token, record).await?;
                }
                self.set_session(&customer, &call_id, |s| {
                    if s.status == VoiceSessionStatus::Connecting {
                        s.status = VoiceSessionStatus::Connected;
                    }
                })
                .await?;
                tracing::info!(call_connection_id = %call_id, "call connected");
            }
            CallEventKind::Disconnected => {
                record.state = CallState::Ended;
                *record = self.registry.put(token, record).await?;
                self.set_session(&customer, &call_id, |s| {
                    s.ended_at.get_or_insert_with(Utc::now);
                    if s.status != VoiceSessionStatus::Failed {
                        s.status = VoiceSessionStatus::Ended;
                    }
                })
                .await?;
                tracing::info!(call_connection_id = %call_id, "call disconnected");
                self.handoff_call_ended(&customer, &call_id).await;
            }
            CallEventKind::PlayCompleted | CallEventKind::PlayFailed { .. } if closing_op => {
                self.hang_up(&call_id).await;
            }
            CallEventKind::MediaFailed { what, reason } => {
                let end_reason = format!("{what}_failed: {reason}");
                self.stats.media_failed();
                tracing::warn!(call_connection_id = %call_id, reason = %end_reason, "media failed; ending the call");
                let already_closing = matches!(record.state, CallState::Closing | CallState::Ended);
                record.end_reason.get_or_insert(end_reason.clone());
                if !already_closing {
                    record.state = CallState::Closing;
                }
                *record = self.registry.put(token, record).await?;
                self.set_session(&customer, &call_id, |s| {
                    s.status = VoiceSessionStatus::Failed;
                    s.end_reason.get_or_insert(end_reason.clone());
                })
                .await?;
                if !already_closing {
                    let op = format!("{CLOSING_PREFIX}media_failed");
                    if let Err(err) = self.provider.play_text(&call_id, APOLOGY, &op).await {
                        tracing::warn!(call_connection_id = %call_id, error = %err, "apology not played; hanging up");
                        self.hang_up(&call_id).await;
                    }
                }
            }
            CallEventKind::ParticipantsUpdated { count } => {
                tracing::debug!(call_connection_id = %call_id, participants = count, "participants updated");
            }
            CallEventKind::Other { event_type } => {
                tracing::debug!(call_connection_id = %call_id, event_type, "callback ignored");
                return Ok(());
            }
            _ => {}
        }
        // The session holding the call's WebSocket (on whichever replica) drives the rest.
        self.registry.publish(token, event).await?;
        Ok(())
    }

    /// Ends a call politely: speaks `text`, then hangs up once its `PlayCompleted` (or
    /// `PlayFailed`) callback arrives, on whichever replica receives it. For the handoff saga's
    /// goodbye; if the play cannot even be requested, hangs up at once.
    pub async fn close_call(&self, call_id: &str, text: &str, reason: &str) {
        let op = format!("{CLOSING_PREFIX}{reason}");
        if let Err(err) = self.provider.play_text(call_id, text, &op).await {
            tracing::warn!(call_connection_id = %call_id, error = %err, "goodbye not played; hanging up");
            self.hang_up(call_id).await;
        }
    }

    pub async fn hang_up(&self, call_id: &str) {
        if let Err(err) = self.provider.hang_up(call_id).await {
            tracing::warn!(call_connection_id = %call_id, error = %err, "hang-up failed");
        }
    }

    async fn set_session(
        &self,
        customer: &crate::domain::CustomerId,
        call_id: &str,
        change: impl Fn(&mut VoiceSession) + Send + Sync,
    ) -> Result<(), StoreError> {
        self.contexts
            .update(customer, |ctx| {
                if let Some(session) = ctx.voice_session_mut(call_id) {
                    change(session);
                }
            })
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::ws_base;

    #[test]
    fn websocket_base_follows_the_public_scheme() {
        assert_eq!(
            ws_base("https://handoff.example.com"),
            "wss://handoff.example.com"
        );
        assert_eq!(ws_base("http://127.0.0.1:8080"), "ws://127.0.0.1:8080");
        assert_eq!(ws_base("HTTPS://x.example"), "wss://x.example");
    }
}
