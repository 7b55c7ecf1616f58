//! WhatsApp messages in the domain's own words: what a customer sent (`InboundMessage`), what we
//! send (`OutboundMessage`), and where a sent message is (`DeliveryStatus`, a monotonic state
//! machine). Provider adapters convert to and from these types once, at the boundary.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::{CustomerId, WhatsAppProvider};

/// A message a customer sent us on WhatsApp.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMessage {
    /// The provider's message id (ACS `messageId`): the dedupe key and the transcript source id.
    pub message_id: String,
    pub customer: CustomerId,
    /// The WhatsApp id (digits) the customer wrote from, when WhatsApp showed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wa_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bsuid: Option<String>,
    /// The business number the customer wrote to (ACS channel registration id, Meta phone
    /// number id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub business_number: Option<String>,
    /// The provider it arrived through (`None` in inbox entries recorded before this was kept:
    /// the owner of `business_number` is assumed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<WhatsAppProvider>,
    pub received_at: DateTime<Utc>,
    pub content: InboundContent,
    /// The customer's WhatsApp profile name, when the provider sent it (Meta `contacts[]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display_name: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MediaKind {
    Image,
    Document,
    Video,
    Audio,
    Sticker,
}

impl MediaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Image => "image",
            Self::Document => "document",
            Self::Video => "video",
            Self::Audio => "audio",
            Self::Sticker => "sticker",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InboundMedia {
    pub kind: MediaKind,
    /// Provider media id, valid for a limited time: download it when the message arrives.
    pub media_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caption: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InboundContent {
    Text {
        text: String,
    },
    Media(InboundMedia),
    /// A tap on a template's quick-reply button; `payload` is what we put in the template.
    ButtonTap {
        text: String,
        payload: String,
    },
    /// A tap on an interactive reply button.
    ButtonReply {
        id: String,
        title: String,
    },
    /// A choice from an interactive list.
    ListReply {
        id: String,
        title: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        description: Option<String>,
    },
    /// A reaction to one of our messages; an empty `emoji` removes an earlier reaction.
    Reaction {
        message_id: String,
        emoji: String,
    },
    /// A shared location pin.
    Location {
        latitude: f64,
        longitude: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        address: Option<String>,
    },
    /// A type we do not understand; kept (never dropped) so the agent and operators see it.
    Unknown {
        message_type: String,
        /// WhatsApp's error code when it could not deliver the content (`unsupported`: 131051).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        error_code: Option<String>,
    },
}

impl InboundContent {
    /// What the agent reads: the words, or a description of what arrived.
    pub fn agent_text(&self) -> Option<&str> {
        match self {
            Self::Text { text } => Some(text),
            Self::ButtonTap { text, .. } => Some(text),
            Self::ButtonReply { title, .. } | Self::ListReply { title, .. } => Some(title),
            Self::Media(m) => m.caption.as_deref(),
            _ => None,
        }
    }

    /// A short, body-free description (for transcripts of non-text content).
    pub fn describe(&self) -> String {
        match self {
            Self::Text { .. } => "text message".into(),
            Self::Media(m) => m.kind.as_str().to_owned(),
            Self::ButtonTap { .. } => "button tap".into(),
            Self::ButtonReply { .. } => "button reply".into(),
            Self::ListReply { .. } => "list choice".into(),
            Self::Reaction { emoji, .. } if emoji.is_empty() => "reaction removed".into(),
            Self::Reaction { emoji, .. } => format!("reaction {emoji}"),
            Self::Location { .. } => "location".into(),
            Self::Unknown { message_type, .. } => format!("unsupported message ({message_type})"),
        }
    }

    /// The transcript line for this message.
    pub fn transcript_text(&self) -> String {
        match (self, self.agent_text()) {
            (Self::Media(m), Some(caption)) => format!("[{}] {caption}", m.kind.as_str()),
            (_, Some(text)) => text.to_owned(),
            (_, None) => format!("[{}]", self.describe()),
        }
    }

    /// Like [`Self::describe`], saying so when the message's media could not be fetched.
    pub fn describe_for(&self, media: Option<&MediaRecord>) -> String {
        match (self, media) {
            (Self::Media(m), Some(r)) if !r.available => {
                format!("{} (could not be downloaded)", m.kind.as_str())
            }
            _ => self.describe(),
        }
    }

    /// Like [`Self::transcript_text`], saying so when the message's media could not be
    /// fetched: whoever reads the transcript (the agent) knows it is missing.
    pub fn transcript_text_for(&self, media: Option<&MediaRecord>) -> String {
        match (self, media) {
            (Self::Media(m), Some(r)) if !r.available => match self.agent_text() {
                Some(caption) => format!("[{}, not available] {caption}", m.kind.as_str()),
                None => format!("[{}, not available]", m.kind.as_str()),
            },
            _ => self.transcript_text(),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Media(m) => m.kind.as_str(),
            Self::ButtonTap { .. } => "button",
            Self::ButtonReply { .. } => "button_reply",
            Self::ListReply { .. } => "list_reply",
            Self::Reaction { .. } => "reaction",
            Self::Location { .. } => "location",
            Self::Unknown { .. } => "unknown",
        }
    }
}

/// Where a sent message is. Ordered: a status only ever moves to a higher rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryStatus {
    /// Accepted by the provider's API (not yet sent by WhatsApp).
    Accepted,
    Sent,
    Delivered,
    Read,
    /// Terminal.
    Failed,
}

impl DeliveryStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Accepted => "accepted",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Read => "read",
            Self::Failed => "failed",
        }
    }

    /// Parses a provider status case-insensitively; `None` for statuses without an effect
    /// (`warning`, `unknown`, anything new).
    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        [
            ("accepted", Self::Accepted),
            ("sent", Self::Sent),
            ("delivered", Self::Delivered),
            ("read", Self::Read),
            ("failed", Self::Failed),
        ]
        .into_iter()
        .find_map(|(name, status)| s.eq_ignore_ascii_case(name).then_some(status))
    }

    fn rank(self) -> u8 {
        match self {
            Self::Accepted => 0,
            Self::Sent => 1,
            Self::Delivered => 2,
            Self::Read => 3,
            Self::Failed => 4,
        }
    }

    /// The state machine: the status after `incoming` arrives in state `self`. Failed is
    /// terminal; otherwise only forward moves count, so duplicates and reordering change nothing.
    pub fn advance(self, incoming: Self) -> Option<Self> {
        if self == Self::Failed {
            return None;
        }
        (incoming.rank() > self.rank()).then_some(incoming)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Inbound,
    Outbound,
}

/// One status a message passed through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusChange {
    pub status: DeliveryStatus,
    pub at: DateTime<Utc>,
}

/// A provider's report on a sent message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub message_id: String,
    pub status: DeliveryStatus,
    /// The recipient, when the provider says who it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<CustomerId>,
    pub at: DateTime<Utc>,
    /// WhatsApp's error code (e.g. `131047`) of a failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// How WhatsApp bills the message, when the provider says (Meta `pricing`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// The conversation the message was billed in, when the provider says (Meta `conversation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationInfo>,
}

/// How WhatsApp bills a sent message (Meta `statuses[].pricing`). Every field is optional:
/// providers omit what does not apply, and a report without any of them is still kept.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Pricing {
    /// `marketing`, `utility`, `authentication`, `service`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub billable: Option<bool>,
    /// `PMP` (per message) or `CBP` (conversation based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing_model: Option<String>,
    /// `regular`, `free_customer_service`, `free_entry_point` (per-message pricing only).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

/// The WhatsApp conversation a message was billed in (Meta `statuses[].conversation`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ConversationInfo {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// What opened it: `service`, `utility`, `marketing`, `authentication`, `referral_conversion`, …
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
}

/// What became of an inbound message's media: kept in the media store, or not available (the
/// download failed; the message itself is kept either way).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MediaRecord {
    /// The provider's media id, which is also the media store key.
    pub media_id: String,
    pub available: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<u64>,
    /// Hex SHA-256 of the stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// WhatsApp's "re-engagement message" error: the 24-hour window was closed.
pub const WINDOW_CLOSED_CODE: &str = "131047";

impl StatusUpdate {
    /// A bare status of `message_id`: no customer, error, pricing or conversation.
    pub fn new(message_id: impl Into<String>, status: DeliveryStatus, at: DateTime<Utc>) -> Self {
        Self {
            message_id: message_id.into(),
            status,
            customer: None,
            at,
            error_code: None,
            pricing: None,
            conversation: None,
        }
    }

    pub fn closes_window(&self) -> bool {
        self.status == DeliveryStatus::Failed
            && self.error_code.as_deref() == Some(WINDOW_CLOSED_CODE)
    }
}

/// The kind of a [`MessageRecord::unsent`] record.
const UNSENT_KIND: &str = "unknown";

/// An entry of the message log: one message in either direction, without its body.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageRecord {
    /// Provider message id (inbound `messageId`, or the send receipt's id).
    pub message_id: String,
    /// `None` only for a status that arrived before we recorded its send.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub customer: Option<CustomerId>,
    pub direction: Direction,
    pub kind: String,
    pub at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<DeliveryStatus>,
    #[serde(default)]
    pub history: Vec<StatusChange>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    /// Outbound: how WhatsApp bills it (from its status reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pricing: Option<Pricing>,
    /// Outbound: the conversation it was billed in (from its status reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conversation: Option<ConversationInfo>,
    /// Inbound media: whether it was downloaded and stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media: Option<MediaRecord>,
}

impl MessageRecord {
    /// A record with only the fields every message has.
    pub fn new(
        message_id: impl Into<String>,
        customer: Option<CustomerId>,
        direction: Direction,
        kind: impl Into<String>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            message_id: message_id.into(),
            customer,
            direction,
            kind: kind.into(),
            at,
            status: None,
            history: Vec::new(),
            error_code: None,
            pricing: None,
            conversation: None,
            media: None,
        }
    }

    /// The record a status report makes when it arrives before its send was recorded: no
    /// customer, kind unknown until the send merges in.
    pub fn unsent(message_id: impl Into<String>, at: DateTime<Utc>) -> Self {
        Self::new(message_id, None, Direction::Outbound, UNSENT_KIND, at)
    }

    /// Whether this can be a template we sent (a handoff's continuation is one): it is, or
    /// its send is not recorded yet.
    pub fn may_be_template(&self) -> bool {
        self.kind == "template" || self.kind == UNSENT_KIND
    }

    /// Keeps the billing details a status report carries, whether or not its status moves the
    /// record (pricing comes on `sent` and on one of `delivered`/`read`, in any order). Returns
    /// whether anything was learned.
    pub fn merge_billing(&mut self, update: &StatusUpdate) -> bool {
        let mut changed = false;
        if let Some(p) = &update.pricing
            && self.pricing.as_ref() != Some(p)
        {
            self.pricing = Some(p.clone());
            changed = true;
        }
        if let Some(c) = &update.conversation
            && self.conversation.as_ref() != Some(c)
        {
            self.conversation = Some(c.clone());
            changed = true;
        }
        changed
    }

    /// Applies a status report's delivery status; returns whether the status changed (billing
    /// details are kept by [`Self::merge_billing`]).
    pub fn apply(&mut self, update: &StatusUpdate) -> bool {
        let current = self.status.unwrap_or(DeliveryStatus::Accepted);
        let next = if self.status.is_none() {
            Some(update.status)
        } else {
            current.advance(update.status)
        };
        let Some(next) = next else {
            return false;
        };
        self.status = Some(next);
        self.history.push(StatusChange {
            status: next,
            at: update.at,
        });
        if update.error_code.is_some() {
            self.error_code.clone_from(&update.error_code);
        }
        if self.customer.is_none() {
            self.customer.clone_from(&update.customer);
        }
        true
    }

    /// Merges what a send learned into a record a status report created first.
    pub fn merge_send(&mut self, sent: MessageRecord) {
        let early = std::mem::replace(self, sent);
        if self.pricing.is_none() {
            self.pricing = early.pricing;
        }
        if self.conversation.is_none() {
            self.conversation = early.conversation;
        }
        for change in early.history {
            let error_code = (change.status == DeliveryStatus::Failed)
                .then(|| early.error_code.clone())
                .flatten();
            self.apply(&StatusUpdate {
                message_id: self.message_id.clone(),
                status: change.status,
                customer: None,
                at: change.at,
                error_code,
                pricing: None,
                conversation: None,
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use DeliveryStatus::*;

    #[test]
    fn only_a_template_or_a_send_not_yet_recorded_may_be_a_template() {
        let at = chrono::Utc::now();
        let customer = CustomerId::parse_phone("+14255550123").unwrap();
        let text = MessageRecord::new(
            "m-1",
            Some(customer.clone()),
            Direction::Outbound,
            "text",
            at,
        );
        assert!(!text.may_be_template());
        let mut early = MessageRecord::unsent("m-2", at);
        assert!(early.may_be_template());
        early.merge_send(MessageRecord::new(
            "m-2",
            Some(customer),
            Direction::Outbound,
            "text",
            at,
        ));
        assert!(!early.may_be_template());
        assert!(
            MessageRecord::new("m-3", None, Direction::Outbound, "template", at).may_be_template()
        );
    }

    #[test]
    fn status_moves_only_forward_and_failed_is_terminal() {
        assert_eq!(Sent.advance(Delivered), Some(Delivered));
        assert_eq!(Delivered.advance(Sent), None);
        assert_eq!(Read.advance(Delivered), None);
        assert_eq!(Sent.advance(Read), Some(Read));
        assert_eq!(Read.advance(Read), None);
        assert_eq!(Delivered.advance(Failed), Some(Failed));
        assert_eq!(Failed.advance(Read), None);
        assert_eq!(Accepted.advance(Sent), Some(Sent));
    }

    #[test]
    fn statuses_parse_case_insensitively() {
        assert_eq!(DeliveryStatus::parse("Sent"), Some(Sent));
        assert_eq!(DeliveryStatus::parse("FAILED"), Some(Failed));
        assert_eq!(DeliveryStatus::parse("delivered"), Some(Delivered));
        assert_eq!(DeliveryStatus::parse("warning"), None);
    }

    fn update(status: DeliveryStatus, secs: i64) -> StatusUpdate {
        StatusUpdate::new(
            "m",
            status,
            DateTime::from_timestamp(1_700_000_000 + secs, 0).unwrap(),
        )
    }

    fn record() -> MessageRecord {
        let mut r = MessageRecord::new(
            "m",
            None,
            Direction::Outbound,
            "text",
            DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
        );
        r.status = Some(Accepted);
        r
    }

    #[test]
    fn reordered_and_duplicated_reports_end_in_the_highest_status() {
        let mut r = record();
        assert!(r.apply(&update(Read, 3)));
        assert!(!r.apply(&update(Delivered, 2)));
        assert!(!r.apply(&update(Sent, 1)));
        assert!(!r.apply(&update(Read, 3)));
        assert_eq!(r.status, Some(Read));
        assert_eq!(r.history.len(), 1);
    }

    #[test]
    fn a_status_that_came_before_the_send_survives_the_merge() {
        let mut early = record();
        early.status = None;
        assert!(early.apply(&update(Delivered, 2)));
        early.merge_send(record());
        assert_eq!(early.status, Some(Delivered));
    }

    fn priced(status: DeliveryStatus, secs: i64, category: &str) -> StatusUpdate {
        StatusUpdate {
            pricing: Some(Pricing {
                category: Some(category.into()),
                billable: Some(true),
                pricing_model: Some("PMP".into()),
                kind: None,
            }),
            conversation: Some(ConversationInfo {
                id: Some("conv-1".into()),
                origin: Some(category.into()),
                expires_at: None,
            }),
            ..update(status, secs)
        }
    }

    #[test]
    fn billing_is_kept_even_from_a_report_that_does_not_move_the_status() {
        let mut r = record();
        let read = update(Read, 3);
        assert!(r.apply(&read));
        assert!(!r.merge_billing(&read), "nothing to learn");
        // `sent` arrives late with the pricing: the status stays, the pricing is kept.
        let sent = priced(Sent, 1, "utility");
        assert!(!r.apply(&sent));
        assert!(r.merge_billing(&sent));
        assert_eq!(r.status, Some(Read));
        assert_eq!(
            r.pricing.as_ref().unwrap().category.as_deref(),
            Some("utility")
        );
        assert_eq!(
            r.conversation.as_ref().unwrap().id.as_deref(),
            Some("conv-1")
        );
        assert!(
            !r.merge_billing(&sent),
            "the same details again change nothing"
        );
    }

    #[test]
    fn billing_reported_before_the_send_survives_the_merge() {
        let mut early = record();
        early.status = None;
        let delivered = priced(Delivered, 2, "marketing");
        early.apply(&delivered);
        early.merge_billing(&delivered);
        early.merge_send(record());
        assert_eq!(early.status, Some(Delivered));
        assert_eq!(
            early.pricing.as_ref().unwrap().category.as_deref(),
            Some("marketing")
        );
    }

    #[test]
    fn records_written_before_billing_and_media_existed_still_read() {
        let old = r#"{"message_id":"m","direction":"outbound","kind":"text",
            "at":"2025-01-01T00:00:00Z","status":"read","history":[]}"#;
        let r: MessageRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.status, Some(Read));
        assert!(r.pricing.is_none() && r.conversation.is_none() && r.media.is_none());
        let again = serde_json::to_value(&r).unwrap();
        assert!(
            again.get("pricing").is_none(),
            "absent stays absent: {again}"
        );
    }

    #[test]
    fn content_is_described_without_bodies_for_non_text() {
        let c = InboundContent::Reaction {
            message_id: "x".into(),
            emoji: "👍".into(),
        };
        assert_eq!(c.transcript_text(), "[reaction 👍]");
        let m = InboundContent::Media(InboundMedia {
            kind: MediaKind::Image,
            media_id: "i".into(),
            mime_type: None,
            file_name: None,
            caption: Some("look".into()),
        });
        assert_eq!(m.transcript_text(), "[image] look");
        let mut media = MediaRecord {
            media_id: "i".into(),
            available: true,
            mime_type: None,
            size_bytes: None,
            sha256: None,
        };
        assert_eq!(m.transcript_text_for(Some(&media)), "[image] look");
        assert_eq!(m.describe_for(Some(&media)), "image");
        media.available = false;
        assert_eq!(
            m.transcript_text_for(Some(&media)),
            "[image, not available] look"
        );
        assert_eq!(
            m.describe_for(Some(&media)),
            "image (could not be downloaded)"
        );
        assert_eq!(c.transcript_text_for(Some(&media)), "[reaction 👍]");
    }
}
