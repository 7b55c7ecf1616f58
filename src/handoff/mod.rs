//! The handoff saga: from the caller's "yes" to the customer's first WhatsApp reply.
//!
//! Each step is persisted before the next side effect, so any replica can resume a saga that
//! another one started (the recovery worker does so for sagas left unfinished by a crash):
//!
//! 1. Accepted: consent recorded with the caller's words (context + handoff).
//! 2. Summarised: the call summary, fitted to WhatsApp's template parameter rules.
//! 3. TemplateSent: `conversation_continuation` accepted by the provider. The send runs under a
//!    lease claim and an idempotency key derived from the handoff id, so a retried or resumed
//!    step never sends a second template.
//! 4. GoodbyePlayed / CallEnded: the voice session says goodbye and hangs up only after step 3
//!    (invariant 5); a hang-up claim makes sure it happens once.
//! 5. Delivered / Read from delivery statuses; Failed with the WhatsApp code when delivery
//!    fails; Resumed when the customer writes back.
//!
//! If the send is refused (window, template, opt-out, provider error after retries) the handoff
//! fails with the reason and the caller stays on the line.

pub mod adapters;
pub mod tools;
pub mod wait_time;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;

use crate::agent::engine::TurnAction;
use crate::agent::summary::{ExtractiveSummariser, Summariser, extractive_summary};
use crate::config::HandoffSettings;
use crate::domain::{
    Channel, ConsentRecord, CustomerContext, CustomerId, Handoff, HandoffFailure, HandoffId,
    Milestone,
};
use crate::store::handoffs::{HandoffStore, Handoffs};
use crate::store::{Claim, ClaimStore, Contexts, StoreError};

/// Room for the template's own words around {{1}} and {{2}} within WhatsApp's 1024 limit.
pub const SUMMARY_MAX_CHARS: usize = 700;

/// What the saga asks WhatsApp to send.
#[derive(Debug, Clone, PartialEq)]
pub struct ContinuationRequest {
    pub handoff_id: HandoffId,
    pub customer: CustomerId,
    pub template: String,
    /// Body parameters in order: {{1}} name, {{2}} summary.
    pub parameters: Vec<String>,
    /// Quick-reply payload (the handoff id), for templates that have a quick-reply button.
    pub button_payload: Option<String>,
    /// Stable across retries and replicas: the provider deduplicates on it.
    pub idempotency_key: String,
    /// When the first attempt to send began (persisted before it), for the same reason.
    pub first_sent: chrono::DateTime<Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendRefusal {
    #[error("the customer opted out of WhatsApp messages")]
    OptedOut,
    #[error("the template is not usable: {0}")]
    TemplateInvalid(String),
    #[error("no WhatsApp address for this customer")]
    NoAddress,
    #[error("the provider refused the message ({code}): {message}")]
    Rejected { code: String, message: String },
    #[error("the provider is unavailable: {0}")]
    Unavailable(String),
}

impl SendRefusal {
    pub fn reason(&self) -> &'static str {
        match self {
            Self::OptedOut => "opted_out",
            Self::TemplateInvalid(_) => "template_invalid",
            Self::NoAddress => "no_whatsapp_address",
            Self::Rejected { .. } => "provider_rejected",
            Self::Unavailable(_) => "provider_unavailable",
        }
    }

    fn code(&self) -> Option<String> {
        match self {
            Self::Rejected { code, .. } => Some(code.clone()),
            _ => None,
        }
    }
}

/// The WhatsApp side of the saga.
#[async_trait]
pub trait ContinuationSender: Send + Sync + 'static {
    /// Sends the template; `Ok(provider message id)` once the provider accepted it.
    async fn send_continuation(&self, request: &ContinuationRequest)
    -> Result<String, SendRefusal>;

    /// What is known so far about the delivery of a sent message. Statuses can arrive before
    /// the saga has recorded the message id (a fast provider), so the saga catches up here.
    async fn delivery(&self, message_id: &str) -> Option<Delivery>;
}

/// The voice side of the saga, for hang-ups the saga must do itself (after a crash).
#[async_trait]
pub trait CallControl: Send + Sync + 'static {
    /// Ends the call for everyone. A call that is already gone is not an error.
    async fn hang_up(&self, call_connection_id: &str) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum SagaError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("handoff {0} not found")]
    NotFound(HandoffId),
}

/// Delivery news about the continuation message, from either WhatsApp provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    Delivered,
    Read,
    Failed { code: Option<String> },
}

impl Delivery {
    /// The milestones a status stands for: a message read was delivered too.
    fn steps(self) -> Vec<Delivery> {
        match self {
            Self::Read => vec![Self::Delivered, Self::Read],
            other => vec![other],
        }
    }
}

pub struct HandoffService {
    handoffs: Handoffs,
    contexts: Contexts,
    claims: Arc<dyn ClaimStore>,
    summariser: Arc<dyn Summariser>,
    sender: Arc<dyn ContinuationSender>,
    calls: Arc<dyn CallControl>,
    settings: HandoffSettings,
}

/// How long one replica holds the right to send a handoff's template.
const SEND_LEASE: Duration = Duration::from_secs(120);
const HANG_UP_CLAIM: Duration = Duration::from_secs(24 * 3600);

impl HandoffService {
    pub fn new(
        handoffs: Arc<dyn HandoffStore>,
        contexts: Contexts,
        claims: Arc<dyn ClaimStore>,
        summariser: Arc<dyn Summariser>,
        sender: Arc<dyn ContinuationSender>,
        calls: Arc<dyn CallControl>,
        settings: HandoffSettings,
    ) -> Self {
        Self {
            handoffs: Handoffs::new(handoffs),
            contexts,
            claims,
            summariser,
            sender,
            calls,
            settings,
        }
    }

    pub fn store(&self) -> &dyn HandoffStore {
        self.handoffs.store()
    }

    pub fn settings(&self) -> &HandoffSettings {
        &self.settings
    }

    /// The open handoff of this call, if any (not failed, template not yet sent).
    async fn open_for_call(
        &self,
        customer: &CustomerId,
        call_id: Option<&str>,
    ) -> Result<Option<Handoff>, StoreError> {
        Ok(self
            .handoffs
            .store()
            .for_customer(customer)
            .await?
            .into_iter()
            .find(|h| {
                !h.is_failed()
                    && !h.reached(Milestone::TemplateSent)
                    && h.call_connection_id.as_deref() == call_id
            }))
    }

    /// The agent offered WhatsApp: record it (nothing is sent).
    pub async fn offer(
        &self,
        customer: &CustomerId,
        call_id: Option<&str>,
    ) -> Result<HandoffId, SagaError> {
        if let Some(open) = self.open_for_call(customer, call_id).await? {
            return Ok(open.id);
        }
        let mut handoff = Handoff::new(customer.clone(), call_id.map(str::to_owned), Utc::now());
        handoff
            .apply(Milestone::Offered, Utc::now(), None)
            .expect("offer is always allowed");
        let handoff = self.handoffs.store().create(&handoff).await?;
        let id = handoff.id.clone();
        self.contexts
            .update(customer, |ctx| list_handoff(ctx, &id))
            .await?;
        tracing::info!(handoff_id = %id, customer = %customer, "handoff offered");
        Ok(id)
    }

    /// The caller said yes: record consent, then summarise and send. Returns what the voice
    /// channel must do next.
    pub async fn accept(
        &self,
        customer: &CustomerId,
        call_id: Option<&str>,
        evidence: &str,
    ) -> Result<TurnAction, SagaError> {
        let id = match self.open_for_call(customer, call_id).await? {
            Some(open) => open.id,
            None => self.offer(customer, call_id).await?,
        };
        let now = Utc::now();
        let evidence_owned = evidence.to_owned();
        self.handoffs
            .update(&id, |h| {
                h.consent_evidence
                    .get_or_insert_with(|| evidence_owned.clone());
                h.apply(Milestone::Accepted, now, None).is_ok()
            })
            .await?;
        let id_str = id.as_str().to_owned();
        self.contexts
            .update(customer, |ctx| {
                let already = ctx
                    .consents
                    .iter()
                    .any(|c| c.scope == consent_scope(&id_str));
                if !already {
                    ctx.consents.push(ConsentRecord {
                        scope: consent_scope(&id_str),
                        channel: Channel::Voice,
                        at: now,
                        evidence: evidence.to_owned(),
                    });
                }
            })
            .await?;
        tracing::info!(handoff_id = %id, customer = %customer, "handoff accepted");
        metrics::counter!("handoff_accepted_total").increment(1);
        self.drive(&id).await
    }

    /// Runs the saga forward from wherever it stands, up to the template being sent. Safe to
    /// call again at any point, from any replica.
    pub async fn drive(&self, id: &HandoffId) -> Result<TurnAction, SagaError> {
        let handoff = self
            .handoffs
            .store()
            .get(id)
            .await?
            .ok_or_else(|| SagaError::NotFound(id.clone()))?;
        if let Some(failure) = &handoff.failure {
            return Ok(TurnAction::HandoffRefused {
                handoff_id: Some(id.clone()),
                reason: failure.reason.clone(),
            });
        }
        if handoff.reached(Milestone::TemplateSent) {
            return Ok(TurnAction::HandoffSent {
                handoff_id: id.clone(),
            });
        }
        let ctx = self
            .contexts
            .get(&handoff.customer_id)
            .await?
            .unwrap_or_else(|| CustomerContext::new(handoff.customer_id.clone(), Utc::now()));
        if ctx.opted_out {
            return self.refuse(id, SendRefusal::OptedOut).await;
        }
        let handoff = if handoff.reached(Milestone::Summarised) {
            // A retry after a failed context write (the step's below, or the offer's): the
            // context must still name the handoff, since the WhatsApp worker looks for a
            // handoff to resume only when it does, and carry the call's summary.
            if !ctx.handoff_ids.iter().any(|h| h == id.as_str())
                || (ctx.call_summary.is_none() && handoff.summary.is_some())
            {
                let summary = handoff.summary.clone();
                self.contexts
                    .update(&handoff.customer_id, |c| {
                        if c.call_summary.is_none() {
                            c.call_summary.clone_from(&summary);
                        }
                        list_handoff(c, id);
                    })
                    .await?;
            }
            handoff
        } else {
            let summary = match self.summariser.summarise(&ctx).await {
                Ok(s) => crate::agent::summary::fit_template_parameter(&s, SUMMARY_MAX_CHARS),
                Err(err) => {
                    tracing::warn!(handoff_id = %id, error = %err, "summariser failed; using the extractive summary");
                    extractive_summary(&ctx, SUMMARY_MAX_CHARS)
                }
            };
            let summary = if summary.is_empty() {
                ExtractiveSummariser::new(SUMMARY_MAX_CHARS)
                    .summarise(&ctx)
                    .await
                    .unwrap_or_default()
            } else {
                summary
            };
            let now = Utc::now();
            let stored = self
                .handoffs
                .update(id, |h| {
                    if h.summary.is_none() {
                        h.summary = Some(summary.clone());
                    }
                    h.apply(Milestone::Summarised, now, None).is_ok()
                })
                .await?;
            let for_ctx = stored.summary.clone();
            self.contexts
                .update(&stored.customer_id, |c| {
                    c.call_summary = for_ctx.clone();
                    list_handoff(c, id);
                })
                .await?;
            stored
        };
        // One sender at a time per handoff, across replicas; the idempotency key covers a
        // sender that crashed after the provider accepted but before we recorded it.
        let lease = format!("handoff-send:{id}");
        if self.claims.claim(&lease, SEND_LEASE).await? == Claim::Duplicate {
            tracing::info!(handoff_id = %id, "template send already in progress elsewhere");
            return Ok(TurnAction::HandoffRefused {
                handoff_id: Some(id.clone()),
                reason: "in_progress".into(),
            });
        }
        // The send's identity, persisted before it happens: whoever sends (this replica now, or
        // another after a crash) presents the same request, and a provider that deduplicates
        // (ACS repeatability) sends the template once.
        let now = Utc::now();
        let stamped = self
            .handoffs
            .update(id, |h| {
                if h.send_started_at.is_some() {
                    return false;
                }
                h.send_started_at = Some(now);
                true
            })
            .await?;
        let first_sent = stamped.send_started_at.unwrap_or(now);
        let request = ContinuationRequest {
            first_sent,
            handoff_id: id.clone(),
            customer: handoff.customer_id.clone(),
            template: self.settings.template_name.clone(),
            parameters: vec![
                ctx.first_name()
                    .map(str::to_owned)
                    .unwrap_or_else(|| "there".into()),
                handoff.summary.clone().unwrap_or_default(),
            ],
            // Used when the template has a quick-reply button (the sender knows).
            button_payload: Some(id.as_str().to_owned()),
            idempotency_key: id.as_str().to_owned(),
        };
        let sent = self.sender.send_continuation(&request).await;
        let _ = self.claims.release(&lease).await;
        match sent {
            Ok(message_id) => {
                let now = Utc::now();
                let template = self.settings.template_name.clone();
                self.handoffs
                    .update(id, |h| {
                        h.provider_message_id
                            .get_or_insert_with(|| message_id.clone());
                        h.template.get_or_insert_with(|| template.clone());
                        h.apply(Milestone::TemplateSent, now, Some(message_id.clone()))
                            .is_ok()
                    })
                    .await?;
                tracing::info!(handoff_id = %id, message_id = %message_id, "continuation template accepted");
                metrics::counter!("handoff_template_sent_total").increment(1);
                if let Some(delivery) = self.sender.delivery(&message_id).await {
                    for step in delivery.steps() {
                        self.on_delivery(id, step).await?;
                    }
                }
                Ok(TurnAction::HandoffSent {
                    handoff_id: id.clone(),
                })
            }
            Err(refusal) => self.refuse(id, refusal).await,
        }
    }

    async fn refuse(&self, id: &HandoffId, refusal: SendRefusal) -> Result<TurnAction, SagaError> {
        tracing::warn!(handoff_id = %id, reason = refusal.reason(), error = %refusal, "handoff refused");
        metrics::counter!("handoff_refused_total", "reason" => refusal.reason()).increment(1);
        let failure = HandoffFailure {
            reason: refusal.reason().to_owned(),
            code: refusal.code(),
            detail: Some(refusal.to_string()),
        };
        let now = Utc::now();
        self.handoffs
            .update(id, |h| {
                h.fail(failure.clone(), now) == crate::domain::Applied::Recorded
            })
            .await?;
        Ok(TurnAction::HandoffRefused {
            handoff_id: Some(id.clone()),
            reason: refusal.reason().to_owned(),
        })
    }

    pub async fn goodbye_played(&self, id: &HandoffId) -> Result<(), SagaError> {
        self.record(id, Milestone::GoodbyePlayed).await
    }

    /// Records that the call ended (the session hung up, or the caller did).
    pub async fn call_ended(&self, id: &HandoffId) -> Result<(), SagaError> {
        self.record(id, Milestone::CallEnded).await
    }

    /// Records a milestone now; nothing is written when it was already recorded.
    async fn record(&self, id: &HandoffId, milestone: Milestone) -> Result<(), SagaError> {
        let now = Utc::now();
        self.handoffs
            .update(id, |h| {
                h.apply(milestone, now, None) == Ok(crate::domain::Applied::Recorded)
            })
            .await?;
        Ok(())
    }

    /// Hangs the call up, once across replicas, and records it. For sagas whose session is gone.
    pub async fn hang_up(&self, id: &HandoffId) -> Result<(), SagaError> {
        let handoff = self
            .handoffs
            .store()
            .get(id)
            .await?
            .ok_or_else(|| SagaError::NotFound(id.clone()))?;
        if handoff.reached(Milestone::CallEnded) || !handoff.reached(Milestone::TemplateSent) {
            return Ok(());
        }
        if let Some(call) = &handoff.call_connection_id
            && self
                .claims
                .claim(&format!("handoff-hangup:{id}"), HANG_UP_CLAIM)
                .await?
                == Claim::Fresh
            && let Err(err) = self.calls.hang_up(call).await
        {
            let _ = self.claims.release(&format!("handoff-hangup:{id}")).await;
            tracing::warn!(handoff_id = %id, call_connection_id = %call, error = %err, "hang-up failed; will retry");
            return Ok(());
        }
        self.call_ended(id).await
    }

    /// A delivery status of the continuation message.
    pub async fn on_delivery(&self, id: &HandoffId, delivery: Delivery) -> Result<(), SagaError> {
        let now = Utc::now();
        self.handoffs
            .update(id, |h| match &delivery {
                Delivery::Delivered => {
                    h.apply(Milestone::Delivered, now, None) == Ok(crate::domain::Applied::Recorded)
                }
                Delivery::Read => {
                    h.apply(Milestone::Read, now, None) == Ok(crate::domain::Applied::Recorded)
                }
                Delivery::Failed { code } => {
                    let reason = match code.as_deref() {
                        Some("131047") => "window_closed",
                        Some("131026") => "undeliverable",
                        _ => "delivery_failed",
                    };
                    h.fail(
                        HandoffFailure {
                            reason: reason.into(),
                            code: code.clone(),
                            detail: None,
                        },
                        now,
                    ) == crate::domain::Applied::Recorded
                }
            })
            .await?;
        Ok(())
    }

    /// Finds the handoff a provider message id belongs to.
    pub async fn by_message_id(
        &self,
        customer: &CustomerId,
        message_id: &str,
    ) -> Result<Option<Handoff>, StoreError> {
        Ok(self
            .handoffs
            .store()
            .for_customer(customer)
            .await?
            .into_iter()
            .find(|h| h.provider_message_id.as_deref() == Some(message_id)))
    }

    /// The customer wrote on WhatsApp: the handoff it continues becomes `Resumed`. Correlates by
    /// the quick-reply payload (the handoff id) first, then by customer. `named` are the
    /// handoffs the customer's context names (`CustomerContext::handoff_ids`, listed before a
    /// template is sent): when it names none, no handoff is looked up by customer.
    pub async fn on_customer_reply(
        &self,
        customer: &CustomerId,
        button_payload: Option<&str>,
        named: &[String],
    ) -> Result<Option<HandoffId>, SagaError> {
        let by_payload = match button_payload.and_then(HandoffId::parse) {
            Some(id) => self.handoffs.store().get(&id).await?,
            None => None,
        };
        let target = match by_payload {
            Some(h) => Some(h),
            None if named.is_empty() => None,
            None => self
                .handoffs
                .store()
                .for_customer(customer)
                .await?
                .into_iter()
                .find(|h| h.reached(Milestone::TemplateSent) && !h.reached(Milestone::Resumed)),
        };
        let Some(handoff) = target else {
            return Ok(None);
        };
        self.record(&handoff.id, Milestone::Resumed).await?;
        tracing::info!(handoff_id = %handoff.id, customer = %customer, "handoff resumed on WhatsApp");
        metrics::counter!("handoff_resumed_total").increment(1);
        Ok(Some(handoff.id))
    }

    /// Picks up sagas a crashed replica left behind: sends what was not sent, hangs up what was
    /// not hung up. Only touches sagas idle for longer than `idle`, so live sessions keep theirs.
    pub async fn recover(&self, idle: Duration) -> Result<usize, SagaError> {
        let cutoff = Utc::now() - chrono::Duration::from_std(idle).unwrap_or_default();
        let mut driven = 0;
        for handoff in self.handoffs.store().unfinished().await? {
            if handoff.updated_at > cutoff {
                continue;
            }
            driven += 1;
            if handoff.reached(Milestone::TemplateSent) {
                self.hang_up(&handoff.id).await?;
            } else {
                // The caller hears nothing of this: the call is most likely gone with its replica.
                let outcome = self.drive(&handoff.id).await?;
                if let TurnAction::HandoffSent { handoff_id } = outcome {
                    self.hang_up(&handoff_id).await?;
                }
            }
        }
        Ok(driven)
    }
}

/// Names the handoff on the customer's context (once).
fn list_handoff(ctx: &mut CustomerContext, id: &HandoffId) {
    if !ctx.handoff_ids.iter().any(|h| h == id.as_str()) {
        ctx.handoff_ids.push(id.as_str().to_owned());
    }
}

fn consent_scope(handoff_id: &str) -> String {
    format!("whatsapp_handoff:{handoff_id}")
}
