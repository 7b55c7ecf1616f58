//! `CustomerContext`: everything both channels know about one customer, in one document.
//!
//! The voice session and the WhatsApp agent read and write the same context, so a customer who
//! moves from the phone to WhatsApp is answered with the whole call in mind.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::CustomerId;

/// The store's concurrency token for a document (a Cosmos DB ETag, or the embedded store's
/// revision counter). Writes carry the version they read; a mismatch is a conflict.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Version(String);

impl Version {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    Voice,
    Whatsapp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Customer,
    Agent,
    System,
}

/// One utterance or message in the shared transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub channel: Channel,
    pub role: Role,
    pub text: String,
    pub at: DateTime<Utc>,
    /// The provider's id for what produced this turn (a WhatsApp message id, a transcription
    /// offset), so that a redelivered input never becomes a second turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_id: Option<String>,
    /// How long the agent took to answer this turn on a call (voice agent turns only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timings: Option<TurnTimings>,
}

/// Stage timings of one spoken agent turn, from the caller's final transcript.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TurnTimings {
    /// Final transcript received → the agent's first text.
    pub agent_first_text_ms: u64,
    /// Final transcript received → the first sentence's play requested.
    pub play_requested_ms: u64,
}

impl Turn {
    pub fn new(channel: Channel, role: Role, text: impl Into<String>, at: DateTime<Utc>) -> Self {
        Self {
            channel,
            role,
            text: text.into(),
            at,
            source_id: None,
            timings: None,
        }
    }

    pub fn with_source_id(mut self, source_id: impl Into<String>) -> Self {
        self.source_id = Some(source_id.into());
        self
    }

    /// A one-line rendering used when a turn is folded into the summary.
    fn fold_line(&self) -> String {
        let who = match self.role {
            Role::Customer => "customer",
            Role::Agent => "agent",
            Role::System => "system",
        };
        let channel = match self.channel {
            Channel::Voice => "call",
            Channel::Whatsapp => "whatsapp",
        };
        format!(
            "[{} {channel}] {who}: {}",
            self.at.format("%Y-%m-%d %H:%M"),
            self.text.replace(['\n', '\r'], " ")
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoiceSessionStatus {
    Connecting,
    Connected,
    Ended,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VoiceSession {
    pub call_connection_id: String,
    pub started_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    pub status: VoiceSessionStatus,
    /// Why the call ended when it did not end normally (media streaming failed, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WhatsAppProvider {
    Acs,
    Meta,
    Sandbox,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WhatsAppSession {
    pub provider: WhatsAppProvider,
    /// The WhatsApp id (digits) the customer writes from; not always the dialled number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    /// Business-scoped user id, when WhatsApp gave one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bsuid: Option<String>,
    /// Which business number the customer wrote to (ACS channel registration id or Meta phone
    /// number id), so replies leave from the same number.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_number: Option<String>,
    /// When we received the customer's last message: the 24-hour service window runs from here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_inbound_at: Option<DateTime<Utc>>,
    /// Set when WhatsApp told us the window is closed (error 131047) although our clock said
    /// otherwise; cleared by the next inbound message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_closed_at: Option<DateTime<Utc>>,
}

/// What the customer agreed to, when, and the words that show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsentRecord {
    pub scope: String,
    pub channel: Channel,
    pub at: DateTime<Utc>,
    pub evidence: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CustomerContext {
    pub customer_id: CustomerId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locale: Option<String>,
    /// Facts learned on any channel (account verified, issue type, address, …).
    #[serde(default)]
    pub collected_data: BTreeMap<String, serde_json::Value>,
    /// The conversation summary. Transcript turns that fall off the bounded transcript are
    /// appended here, so nothing the customer said is silently lost.
    #[serde(default)]
    pub summary: String,
    /// The summary of the most recent call that moved to WhatsApp (template parameter {{2}});
    /// the WhatsApp agent opens with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub call_summary: Option<String>,
    #[serde(default)]
    pub voice_sessions: Vec<VoiceSession>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whatsapp: Option<WhatsAppSession>,
    #[serde(default)]
    pub transcript: Vec<Turn>,
    #[serde(default)]
    pub consents: Vec<ConsentRecord>,
    #[serde(default)]
    pub opted_out: bool,
    #[serde(default)]
    pub handoff_ids: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The store's version of this document; `None` for a context that was never stored.
    #[serde(skip)]
    pub version: Option<Version>,
}

impl CustomerContext {
    pub fn new(customer_id: CustomerId, now: DateTime<Utc>) -> Self {
        Self {
            customer_id,
            display_name: None,
            locale: None,
            collected_data: BTreeMap::new(),
            summary: String::new(),
            call_summary: None,
            voice_sessions: Vec::new(),
            whatsapp: None,
            transcript: Vec::new(),
            consents: Vec::new(),
            opted_out: false,
            handoff_ids: Vec::new(),
            created_at: now,
            updated_at: now,
            version: None,
        }
    }

    /// Appends a turn, keeping at most `max_turns`. Older turns are folded into the summary.
    /// A turn whose `source_id` is already present is ignored: returns `false`.
    pub fn push_turn(&mut self, turn: Turn, max_turns: usize) -> bool {
        if let Some(source_id) = &turn.source_id
            && self
                .transcript
                .iter()
                .any(|t| t.channel == turn.channel && t.source_id.as_ref() == Some(source_id))
        {
            return false;
        }
        self.transcript.push(turn);
        let max_turns = max_turns.max(1);
        if self.transcript.len() > max_turns {
            let overflow = self.transcript.len() - max_turns;
            for folded in self.transcript.drain(..overflow) {
                if !self.summary.is_empty() {
                    self.summary.push('\n');
                }
                self.summary.push_str(&folded.fold_line());
            }
        }
        true
    }

    /// The voice session for a call, if the context has one.
    pub fn voice_session_mut(&mut self, call_connection_id: &str) -> Option<&mut VoiceSession> {
        self.voice_sessions
            .iter_mut()
            .find(|s| s.call_connection_id == call_connection_id)
    }

    pub fn first_name(&self) -> Option<&str> {
        self.display_name
            .as_deref()
            .and_then(|n| n.split_whitespace().next())
            .filter(|n| !n.is_empty())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> CustomerContext {
        CustomerContext::new(
            CustomerId::parse_phone("+14255550123").unwrap(),
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        )
    }

    fn turn(text: &str) -> Turn {
        Turn::new(
            Channel::Voice,
            Role::Customer,
            text,
            DateTime::from_timestamp(1_700_000_100, 0).unwrap(),
        )
    }

    #[test]
    fn turns_beyond_the_bound_are_folded_into_the_summary_in_order() {
        let mut c = ctx();
        for i in 0..5 {
            c.push_turn(turn(&format!("turn {i}\nwith a newline")), 3);
        }
        assert_eq!(c.transcript.len(), 3);
        assert_eq!(c.transcript[0].text, "turn 2\nwith a newline");
        let lines: Vec<_> = c.summary.lines().collect();
        assert_eq!(lines.len(), 2);
        assert!(
            lines[0].ends_with("customer: turn 0 with a newline"),
            "{}",
            lines[0]
        );
        assert!(lines[1].contains("turn 1"));
        assert!(
            lines[0].starts_with("[2023-11-14 22:15 call]"),
            "{}",
            lines[0]
        );
    }

    #[test]
    fn a_turn_with_a_known_source_id_is_not_added_twice() {
        let mut c = ctx();
        assert!(c.push_turn(turn("hello").with_source_id("m1"), 10));
        assert!(!c.push_turn(turn("hello").with_source_id("m1"), 10));
        assert!(c.push_turn(turn("hello again").with_source_id("m2"), 10));
        assert_eq!(c.transcript.len(), 2);
    }

    #[test]
    fn version_is_not_part_of_the_document() {
        let mut c = ctx();
        c.version = Some(Version::new("7"));
        let json = serde_json::to_value(&c).unwrap();
        assert!(json.get("version").is_none());
        let back: CustomerContext = serde_json::from_value(json).unwrap();
        assert_eq!(back.version, None);
    }

    #[test]
    fn first_name_comes_from_the_display_name() {
        let mut c = ctx();
        assert_eq!(c.first_name(), None);
        c.display_name = Some("  Ada Lovelace".into());
        assert_eq!(c.first_name(), Some("Ada"));
    }
}
