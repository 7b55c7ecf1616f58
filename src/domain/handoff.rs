//! The handoff: one caller's move from the phone to WhatsApp, as a durable state machine.
//!
//! Milestones, each recorded once with its time: `Offered → Accepted → Summarised →
//! TemplateSent → GoodbyePlayed → CallEnded → Delivered → Read → Resumed`, or `Failed(reason)`.
//! After `TemplateSent` the call side (goodbye, hang-up) and the WhatsApp side (delivered,
//! read, resumed) progress independently and in any order, so the handoff records milestones
//! rather than one cursor; its `state` is the furthest milestone reached. Applying a milestone
//! twice changes nothing, which is what makes every saga step safe to retry.

use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CustomerId, Version};

#[derive(Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct HandoffId(String);

impl HandoffId {
    pub fn generate() -> Self {
        Self(format!("ho_{}", uuid::Uuid::new_v4().simple()))
    }

    /// Parses an id that came from outside (a button payload, an API path).
    pub fn parse(raw: &str) -> Option<Self> {
        let raw = raw.trim();
        let body = raw.strip_prefix("ho_")?;
        (body.len() == 32 && body.chars().all(|c| c.is_ascii_hexdigit()))
            .then(|| Self(raw.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for HandoffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for HandoffId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Milestones in the order the story tells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Milestone {
    Offered,
    Accepted,
    Summarised,
    TemplateSent,
    GoodbyePlayed,
    CallEnded,
    Delivered,
    Read,
    Resumed,
}

impl Milestone {
    /// What must have happened before this milestone can.
    fn requires(self) -> Option<Milestone> {
        match self {
            Self::Offered | Self::Accepted => None,
            Self::Summarised => Some(Self::Accepted),
            Self::TemplateSent => Some(Self::Summarised),
            Self::GoodbyePlayed
            | Self::CallEnded
            | Self::Delivered
            | Self::Read
            | Self::Resumed => Some(Self::TemplateSent),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HandoffState {
    Offered,
    Accepted,
    Summarised,
    TemplateSent,
    GoodbyePlayed,
    CallEnded,
    Delivered,
    Read,
    Resumed,
    Failed,
}

impl From<Milestone> for HandoffState {
    fn from(m: Milestone) -> Self {
        match m {
            Milestone::Offered => Self::Offered,
            Milestone::Accepted => Self::Accepted,
            Milestone::Summarised => Self::Summarised,
            Milestone::TemplateSent => Self::TemplateSent,
            Milestone::GoodbyePlayed => Self::GoodbyePlayed,
            Milestone::CallEnded => Self::CallEnded,
            Milestone::Delivered => Self::Delivered,
            Milestone::Read => Self::Read,
            Milestone::Resumed => Self::Resumed,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StateChange {
    pub state: HandoffState,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HandoffFailure {
    /// Machine-readable reason: `window_closed`, `opted_out`, `template_invalid`,
    /// `provider_error`, `undeliverable`, …
    pub reason: String,
    /// The WhatsApp error code, when WhatsApp gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The milestone is new and was recorded.
    Recorded,
    /// It was already recorded: nothing changed (a retried or duplicated step).
    AlreadyRecorded,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    #[error("handoff already failed")]
    AlreadyFailed,
    #[error("{milestone:?} needs {needs:?} first")]
    OutOfOrder {
        milestone: Milestone,
        needs: Milestone,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Handoff {
    pub id: HandoffId,
    pub customer_id: CustomerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_connection_id: Option<String>,
    pub state: HandoffState,
    pub history: Vec<StateChange>,
    /// The caller's words agreeing to the move.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_evidence: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// The provider's id of the continuation template message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<HandoffFailure>,
    /// When the first attempt to send the template began: recorded before the send, so a
    /// replica that resumes after a crash presents the provider with the same request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_started_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    #[serde(skip)]
    pub version: Option<Version>,
}

impl Handoff {
    pub fn new(
        customer_id: CustomerId,
        call_connection_id: Option<String>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id: HandoffId::generate(),
            customer_id,
            call_connection_id,
            state: HandoffState::Offered,
            history: Vec::new(),
            consent_evidence: None,
            summary: None,
            template: None,
            provider_message_id: None,
            failure: None,
            send_started_at: None,
            created_at: now,
            updated_at: now,
            version: None,
        }
    }

    pub fn reached(&self, milestone: Milestone) -> bool {
        let state = HandoffState::from(milestone);
        self.history.iter().any(|c| c.state == state)
    }

    pub fn is_failed(&self) -> bool {
        self.state == HandoffState::Failed
    }

    /// The call side is finished: no more goodbye or hang-up to do.
    pub fn call_finished(&self) -> bool {
        self.reached(Milestone::CallEnded) || self.is_failed()
    }

    /// Records `milestone` at `at`. Idempotent; refuses what the story does not allow.
    pub fn apply(
        &mut self,
        milestone: Milestone,
        at: DateTime<Utc>,
        detail: Option<String>,
    ) -> Result<Applied, TransitionError> {
        if self.reached(milestone) {
            return Ok(Applied::AlreadyRecorded);
        }
        // Delivery receipts and the customer's reply are facts about WhatsApp, and the hang-up a
        // fact about the call: they are recorded even after a failure elsewhere, for the record.
        let recordable_after_failure = matches!(
            milestone,
            Milestone::Delivered | Milestone::Read | Milestone::Resumed | Milestone::CallEnded
        );
        if self.is_failed() && !recordable_after_failure {
            return Err(TransitionError::AlreadyFailed);
        }
        if let Some(needs) = milestone.requires()
            && !self.reached(needs)
        {
            return Err(TransitionError::OutOfOrder { milestone, needs });
        }
        self.history.push(StateChange {
            state: milestone.into(),
            at,
            detail,
        });
        if !self.is_failed() {
            let furthest = self
                .history
                .iter()
                .map(|c| c.state)
                .filter(|s| *s != HandoffState::Failed)
                .max_by_key(|s| state_rank(*s))
                .unwrap_or(HandoffState::Offered);
            self.state = furthest;
        }
        self.updated_at = at;
        Ok(Applied::Recorded)
    }

    /// Marks the handoff failed. The first failure wins; later ones change nothing.
    pub fn fail(&mut self, failure: HandoffFailure, at: DateTime<Utc>) -> Applied {
        if self.is_failed() {
            return Applied::AlreadyRecorded;
        }
        self.history.push(StateChange {
            state: HandoffState::Failed,
            at,
            detail: Some(failure.reason.clone()),
        });
        self.failure = Some(failure);
        self.state = HandoffState::Failed;
        self.updated_at = at;
        Applied::Recorded
    }

    /// Whether a worker still has saga work to do: the template is not yet decided, or the
    /// template went out and the call has not been ended.
    pub fn unfinished(&self) -> bool {
        if self.is_failed() {
            return false;
        }
        self.reached(Milestone::Accepted) && !self.reached(Milestone::CallEnded)
    }
}

fn state_rank(state: HandoffState) -> u8 {
    match state {
        HandoffState::Offered => 0,
        HandoffState::Accepted => 1,
        HandoffState::Summarised => 2,
        HandoffState::TemplateSent => 3,
        HandoffState::GoodbyePlayed => 4,
        HandoffState::CallEnded => 5,
        HandoffState::Delivered => 6,
        HandoffState::Read => 7,
        HandoffState::Resumed => 8,
        HandoffState::Failed => 9,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_760_000_000 + s, 0).unwrap()
    }

    fn handoff() -> Handoff {
        Handoff::new(
            CustomerId::parse_phone("+14255550123").unwrap(),
            Some("call-1".into()),
            t(0),
        )
    }

    #[test]
    fn the_happy_path_in_order_records_each_step_once() {
        let mut h = handoff();
        for (i, m) in [
            Milestone::Offered,
            Milestone::Accepted,
            Milestone::Summarised,
            Milestone::TemplateSent,
            Milestone::GoodbyePlayed,
            Milestone::CallEnded,
            Milestone::Delivered,
            Milestone::Read,
            Milestone::Resumed,
        ]
        .into_iter()
        .enumerate()
        {
            assert_eq!(
                h.apply(m, t(i as i64), None),
                Ok(Applied::Recorded),
                "{m:?}"
            );
            assert_eq!(h.state, HandoffState::from(m));
            assert_eq!(
                h.apply(m, t(100), None),
                Ok(Applied::AlreadyRecorded),
                "{m:?} twice"
            );
        }
        assert_eq!(h.history.len(), 9);
        assert_eq!(h.history[3].at, t(3), "a retried step keeps its first time");
    }

    #[test]
    fn delivery_may_overtake_the_hang_up_and_the_state_is_the_furthest_milestone() {
        let mut h = handoff();
        h.apply(Milestone::Accepted, t(1), None).unwrap();
        h.apply(Milestone::Summarised, t(2), None).unwrap();
        h.apply(Milestone::TemplateSent, t(3), None).unwrap();
        h.apply(Milestone::Read, t(4), None).unwrap();
        assert_eq!(h.state, HandoffState::Read);
        h.apply(Milestone::CallEnded, t(5), None).unwrap();
        assert_eq!(h.state, HandoffState::Read, "never goes backwards");
        assert!(h.call_finished());
    }

    #[test]
    fn steps_out_of_order_are_refused() {
        let mut h = handoff();
        assert_eq!(
            h.apply(Milestone::TemplateSent, t(1), None),
            Err(TransitionError::OutOfOrder {
                milestone: Milestone::TemplateSent,
                needs: Milestone::Summarised
            })
        );
        assert_eq!(
            h.apply(Milestone::CallEnded, t(1), None),
            Err(TransitionError::OutOfOrder {
                milestone: Milestone::CallEnded,
                needs: Milestone::TemplateSent
            })
        );
    }

    #[test]
    fn failure_is_terminal_for_the_saga_but_facts_are_still_recorded() {
        let mut h = handoff();
        h.apply(Milestone::Accepted, t(1), None).unwrap();
        h.apply(Milestone::Summarised, t(2), None).unwrap();
        h.apply(Milestone::TemplateSent, t(3), None).unwrap();
        let failure = HandoffFailure {
            reason: "undeliverable".into(),
            code: Some("131026".into()),
            detail: None,
        };
        assert_eq!(h.fail(failure.clone(), t(4)), Applied::Recorded);
        assert_eq!(h.fail(failure, t(5)), Applied::AlreadyRecorded);
        assert_eq!(h.state, HandoffState::Failed);
        assert_eq!(
            h.apply(Milestone::GoodbyePlayed, t(6), None),
            Err(TransitionError::AlreadyFailed)
        );
        assert_eq!(
            h.apply(Milestone::CallEnded, t(6), None),
            Ok(Applied::Recorded)
        );
        assert_eq!(h.state, HandoffState::Failed);
        assert!(!h.unfinished());
    }

    #[test]
    fn unfinished_means_accepted_and_the_call_not_yet_ended() {
        let mut h = handoff();
        assert!(!h.unfinished(), "an offer alone is no saga");
        h.apply(Milestone::Accepted, t(1), None).unwrap();
        assert!(h.unfinished());
        h.apply(Milestone::Summarised, t(2), None).unwrap();
        h.apply(Milestone::TemplateSent, t(3), None).unwrap();
        assert!(h.unfinished());
        h.apply(Milestone::CallEnded, t(4), None).unwrap();
        assert!(!h.unfinished());
    }

    #[test]
    fn ids_parse_only_in_their_own_shape() {
        let id = HandoffId::generate();
        assert_eq!(HandoffId::parse(id.as_str()), Some(id.clone()));
        assert_eq!(HandoffId::parse("ho_xyz"), None);
        assert_eq!(HandoffId::parse("Kat said yes"), None);
        let json = serde_json::to_value(handoff()).unwrap();
        assert_eq!(json["state"], "offered");
        assert!(json.get("version").is_none());
    }
}
