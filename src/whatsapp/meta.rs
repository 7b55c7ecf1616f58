//! The Meta WhatsApp Cloud API adapter: the only module that knows Meta's JSON. Verifies
//! `X-Hub-Signature-256` over the raw webhook body, converts every `entry[].changes[].value`
//! (`messages[]`, `statuses[]` with their pricing, `contacts[]`, `errors[]`) into domain types,
//! and talks to the Graph API (`MetaSender`: sends, inbound media, read receipts) with its error
//! codes classified in one table. An expired token (190) is tracked in [`TokenHealth`] until a
//! Graph call succeeds again.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{FetchedMedia, Recipient, Route, SenderError, WhatsAppSender};
use crate::acs::RetryPolicy;
use crate::config::Secret;
use crate::domain::outbound::{InteractiveAction, TemplateHeader};
use crate::domain::{
    ConversationInfo, CustomerId, DeliveryStatus, InboundContent, InboundMedia, InboundMessage,
    MediaKind, OutboundMessage, Pricing, StatusUpdate, WhatsAppProvider,
};

pub mod templates;

/// What one Meta notification item means for WhatsApp.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaEvent {
    Received(InboundMessage),
    Status(StatusUpdate),
    /// A `value.errors[]` item: Meta reporting a problem with the business account or app
    /// rather than with one message (190: the token expired).
    ProviderError {
        code: Option<String>,
        title: Option<String>,
    },
    /// An item that can never be used (no sender, no id); acknowledged and counted.
    Ignored(&'static str),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Meta notification is not the expected shape: {0}")]
pub struct NotificationError(String);

/// Checks `X-Hub-Signature-256: sha256=<hex>` against HMAC-SHA256 of the exact bytes received,
/// in constant time. A missing, malformed or wrong signature is `false`.
pub fn signature_valid(app_secret: &[u8], header: Option<&str>, body: &[u8]) -> bool {
    let Some(hex) = header.and_then(|h| h.trim().strip_prefix("sha256=")) else {
        return false;
    };
    let Some(given) = decode_hex(hex) else {
        return false;
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(app_secret) else {
        return false;
    };
    mac.update(body);
    let expected = mac.finalize().into_bytes();
    given.len() == expected.len() && bool::from(expected.as_slice().ct_eq(&given))
}

/// The `GET` subscription handshake: `hub.mode=subscribe` and the configured verify token.
/// No token configured refuses every handshake.
pub fn subscription_valid(
    verify_token: Option<&str>,
    mode: Option<&str>,
    token: Option<&str>,
) -> bool {
    let (Some(expected), Some(given)) = (verify_token, token) else {
        return false;
    };
    mode == Some("subscribe") && bool::from(expected.as_bytes().ct_eq(given.as_bytes()))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[derive(Debug, Default, Deserialize)]
struct Notification {
    #[serde(default)]
    entry: Vec<Entry>,
}

#[derive(Debug, Default, Deserialize)]
struct Entry {
    #[serde(default)]
    changes: Vec<Change>,
}

#[derive(Debug, Default, Deserialize)]
struct Change {
    #[serde(default)]
    value: ChangeValue,
}

#[derive(Debug, Default, Deserialize)]
struct ChangeValue {
    #[serde(default)]
    metadata: Option<Metadata>,
    #[serde(default)]
    contacts: Vec<Contact>,
    /// Kept as raw values: one odd message must not cost the rest of the batch.
    #[serde(default)]
    messages: Vec<Value>,
    #[serde(default)]
    statuses: Vec<Value>,
    /// A `value` may carry only `errors[]` (no messages, no statuses).
    #[serde(default)]
    errors: Vec<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Metadata {
    #[serde(default)]
    phone_number_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Contact {
    #[serde(default)]
    profile: Option<Profile>,
    #[serde(default)]
    wa_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Profile {
    #[serde(default)]
    name: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Message {
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    from_user_id: Option<String>,
    #[serde(default)]
    user_id: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    text: Option<TextBody>,
    #[serde(default)]
    interactive: Option<Interactive>,
    #[serde(default)]
    button: Option<Button>,
    #[serde(default)]
    reaction: Option<Reaction>,
    #[serde(default)]
    location: Option<Location>,
    #[serde(default)]
    errors: Vec<ErrorItem>,
}

#[derive(Debug, Default, Deserialize)]
struct TextBody {
    #[serde(default)]
    body: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Media {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    caption: Option<String>,
    #[serde(default)]
    filename: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Interactive {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    button_reply: Option<Reply>,
    #[serde(default)]
    list_reply: Option<Reply>,
}

#[derive(Debug, Default, Deserialize)]
struct Reply {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Button {
    #[serde(default)]
    payload: Option<String>,
    #[serde(default)]
    text: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Reaction {
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    emoji: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Location {
    #[serde(default)]
    latitude: Option<f64>,
    #[serde(default)]
    longitude: Option<f64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    address: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ErrorItem {
    #[serde(default)]
    code: Option<Value>,
    #[serde(default)]
    title: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
struct Status {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    timestamp: Option<Value>,
    #[serde(default)]
    recipient_id: Option<String>,
    #[serde(default)]
    recipient_user_id: Option<String>,
    #[serde(default)]
    errors: Vec<ErrorItem>,
    /// Kept raw and read field by field: an odd pricing block must not cost the status.
    #[serde(default)]
    pricing: Option<Value>,
    #[serde(default)]
    conversation: Option<Value>,
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

/// Meta timestamps are Unix seconds, as a string (a number is accepted too).
fn unix_seconds(raw: Option<&Value>) -> DateTime<Utc> {
    raw.and_then(|v| match v {
        Value::String(s) => s.trim().parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    })
    .and_then(|s| DateTime::from_timestamp(s, 0))
    .unwrap_or_else(Utc::now)
}

fn error_code(errors: &[ErrorItem]) -> Option<String> {
    errors.iter().find_map(|e| code_text(e.code.as_ref()))
}

fn code_text(code: Option<&Value>) -> Option<String> {
    match code {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) if !s.trim().is_empty() => Some(s.trim().to_owned()),
        _ => None,
    }
}

/// A string field, or a number/bool written as one.
fn text_field(v: &Value, key: &str) -> Option<String> {
    match v.get(key)? {
        Value::String(s) => non_empty(Some(s)),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// `pricing { billable, pricing_model, category, type }`, each field optional; `billable` may
/// come as a bool or as `"true"`/`"false"`. Nothing usable: `None`.
fn pricing(raw: Option<&Value>) -> Option<Pricing> {
    let raw = raw.filter(|v| v.is_object())?;
    let billable = match raw.get("billable") {
        Some(Value::Bool(b)) => Some(*b),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("true") => Some(true),
        Some(Value::String(s)) if s.trim().eq_ignore_ascii_case("false") => Some(false),
        _ => None,
    };
    let p = Pricing {
        category: text_field(raw, "category"),
        billable,
        pricing_model: text_field(raw, "pricing_model"),
        kind: text_field(raw, "type"),
    };
    (p != Pricing::default()).then_some(p)
}

/// `conversation { id, expiration_timestamp, origin { type } }`, each field optional.
fn conversation(raw: Option<&Value>) -> Option<ConversationInfo> {
    let raw = raw.filter(|v| v.is_object())?;
    let expires_at = raw
        .get("expiration_timestamp")
        .and_then(|v| match v {
            Value::String(s) => s.trim().parse::<i64>().ok(),
            Value::Number(n) => n.as_i64(),
            _ => None,
        })
        .and_then(|s| DateTime::from_timestamp(s, 0));
    let c = ConversationInfo {
        id: text_field(raw, "id"),
        origin: raw.get("origin").and_then(|o| text_field(o, "type")),
        expires_at,
    };
    (c != ConversationInfo::default()).then_some(c)
}

fn customer(phone: Option<&str>, bsuid: Option<&str>) -> Option<CustomerId> {
    phone
        .and_then(|p| CustomerId::parse_phone(p).ok())
        .or_else(|| bsuid.and_then(|b| CustomerId::from_bsuid(b).ok()))
}

/// Converts a webhook body (already authenticated) into events, in the order Meta sent them.
pub fn parse_notification(body: &[u8]) -> Result<Vec<MetaEvent>, NotificationError> {
    let n: Notification =
        serde_json::from_slice(body).map_err(|e| NotificationError(e.to_string()))?;
    let mut events = Vec::new();
    for value in n.entry.into_iter().flat_map(|e| e.changes).map(|c| c.value) {
        let business_number = value
            .metadata
            .as_ref()
            .and_then(|m| non_empty(m.phone_number_id.as_deref()));
        for raw in &value.messages {
            events.push(parse_message(
                raw,
                &value.contacts,
                business_number.as_ref(),
            ));
        }
        for raw in &value.statuses {
            events.push(parse_status(raw));
        }
        for raw in &value.errors {
            events.push(match ErrorItem::deserialize(raw) {
                Ok(e) => MetaEvent::ProviderError {
                    code: code_text(e.code.as_ref()),
                    title: match e.title {
                        Some(Value::String(t)) => non_empty(Some(&t)),
                        _ => None,
                    },
                },
                Err(_) => MetaEvent::ProviderError {
                    code: None,
                    title: None,
                },
            });
        }
    }
    Ok(events)
}

fn parse_message(raw: &Value, contacts: &[Contact], business_number: Option<&String>) -> MetaEvent {
    let Ok(m) = Message::deserialize(raw) else {
        return MetaEvent::Ignored("message shape");
    };
    let Some(message_id) = non_empty(m.id.as_deref()) else {
        return MetaEvent::Ignored("message without id");
    };
    let from = non_empty(m.from.as_deref());
    // The contact that sent it: same wa_id, else the only contact of the change.
    let contact = contacts
        .iter()
        .find(|c| from.is_some() && c.wa_id.as_deref() == from.as_deref())
        .or_else(|| (contacts.len() == 1).then(|| &contacts[0]));
    let wa_id = from
        .clone()
        .or_else(|| contact.and_then(|c| non_empty(c.wa_id.as_deref())));
    let bsuid = non_empty(m.from_user_id.as_deref().or(m.user_id.as_deref()))
        .or_else(|| contact.and_then(|c| non_empty(c.user_id.as_deref())));
    let Some(customer) = customer(wa_id.as_deref(), bsuid.as_deref()) else {
        return MetaEvent::Ignored("message without a usable sender");
    };
    let message_type = non_empty(m.kind.as_deref()).unwrap_or_else(|| "unknown".into());
    let content = content(raw, &m, &message_type).unwrap_or_else(|| InboundContent::Unknown {
        message_type: message_type.clone(),
        error_code: error_code(&m.errors),
    });
    MetaEvent::Received(InboundMessage {
        message_id,
        customer,
        wa_id,
        bsuid,
        business_number: business_number.cloned(),
        provider: Some(WhatsAppProvider::Meta),
        received_at: unix_seconds(m.timestamp.as_ref()),
        content,
        display_name: contact
            .and_then(|c| c.profile.as_ref())
            .and_then(|p| non_empty(p.name.as_deref())),
    })
}

fn content(raw: &Value, m: &Message, message_type: &str) -> Option<InboundContent> {
    let media = |kind: MediaKind| {
        let media = Media::deserialize(raw.get(message_type)?).ok()?;
        Some(InboundContent::Media(InboundMedia {
            kind,
            media_id: non_empty(media.id.as_deref())?,
            mime_type: media.mime_type,
            file_name: media.filename,
            caption: media.caption,
        }))
    };
    match message_type {
        "text" => m
            .text
            .as_ref()
            .and_then(|t| t.body.clone())
            .map(|text| InboundContent::Text { text }),
        "image" => media(MediaKind::Image),
        "video" => media(MediaKind::Video),
        "audio" | "voice" => media(MediaKind::Audio),
        "document" => media(MediaKind::Document),
        "sticker" => media(MediaKind::Sticker),
        "button" => m.button.as_ref().map(|b| InboundContent::ButtonTap {
            text: b.text.clone().unwrap_or_default(),
            payload: b.payload.clone().unwrap_or_default(),
        }),
        "interactive" => {
            let i = m.interactive.as_ref()?;
            match i.kind.as_deref()? {
                "button_reply" => i
                    .button_reply
                    .as_ref()
                    .map(|r| InboundContent::ButtonReply {
                        id: r.id.clone().unwrap_or_default(),
                        title: r.title.clone().unwrap_or_default(),
                    }),
                "list_reply" => i.list_reply.as_ref().map(|r| InboundContent::ListReply {
                    id: r.id.clone().unwrap_or_default(),
                    title: r.title.clone().unwrap_or_default(),
                    description: r.description.clone(),
                }),
                _ => None,
            }
        }
        // `emoji` is omitted when the customer removes their reaction.
        "reaction" => m.reaction.as_ref().map(|r| InboundContent::Reaction {
            message_id: r.message_id.clone().unwrap_or_default(),
            emoji: r.emoji.clone().unwrap_or_default(),
        }),
        "location" => {
            let l = m.location.as_ref()?;
            Some(InboundContent::Location {
                latitude: l.latitude?,
                longitude: l.longitude?,
                name: l.name.clone(),
                address: l.address.clone(),
            })
        }
        // contacts, system (user_changed_number), unsupported, order, referral, …: kept as
        // Unknown with their type (and error code, for `unsupported`).
        _ => None,
    }
}

fn parse_status(raw: &Value) -> MetaEvent {
    let Ok(s) = Status::deserialize(raw) else {
        return MetaEvent::Ignored("status shape");
    };
    let Some(message_id) = non_empty(s.id.as_deref()) else {
        return MetaEvent::Ignored("status without id");
    };
    let status = match s.status.as_deref().map(str::trim) {
        // A voice message was played: nothing beyond read.
        Some(p) if p.eq_ignore_ascii_case("played") => DeliveryStatus::Read,
        Some(other) => match DeliveryStatus::parse(other) {
            Some(status) => status,
            None => return MetaEvent::Ignored("status without effect"),
        },
        None => return MetaEvent::Ignored("status without effect"),
    };
    MetaEvent::Status(StatusUpdate {
        message_id,
        status,
        customer: customer(s.recipient_id.as_deref(), s.recipient_user_id.as_deref()),
        at: unix_seconds(s.timestamp.as_ref()),
        error_code: error_code(&s.errors),
        pricing: pricing(s.pricing.as_ref()),
        conversation: conversation(s.conversation.as_ref()),
    })
}

/// What a Graph API `error.code` means for us: one table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GraphErrorClass {
    /// 131047: more than 24 h since the customer's last message; only templates.
    WindowClosed,
    /// 131026: not on WhatsApp, old app, terms not accepted; do not retry blindly.
    Undeliverable,
    /// 130429 (throughput), 131056 (pair rate), 80007 / 4 (API rate): retried with backoff.
    Transient,
    /// 131048: spam rate limit; never retried automatically.
    NoRetry,
    /// 132000 / 132001: parameter count mismatch, template missing.
    Template,
    /// 190: the access token expired or was revoked (alert: nothing sends until it is replaced).
    TokenExpired,
    Other,
}

/// Graph's "access token expired or revoked".
pub const TOKEN_EXPIRED_CODE: &str = "190";

pub fn classify(code: i64) -> GraphErrorClass {
    match code {
        131047 => GraphErrorClass::WindowClosed,
        131026 => GraphErrorClass::Undeliverable,
        130429 | 131056 | 80007 | 4 => GraphErrorClass::Transient,
        131048 => GraphErrorClass::NoRetry,
        132000 | 132001 => GraphErrorClass::Template,
        190 => GraphErrorClass::TokenExpired,
        _ => GraphErrorClass::Other,
    }
}

/// The Graph `/{phone_number_id}/messages` body for `message`.
pub fn send_body(to: &str, message: &OutboundMessage) -> Value {
    // A URL is sent as `link`; anything else is an uploaded media id.
    let media = |url: &str| {
        if url.starts_with("https://") || url.starts_with("http://") {
            json!({ "link": url })
        } else {
            json!({ "id": url })
        }
    };
    let with_caption = |mut m: Value, caption: &Option<String>| {
        if let Some(c) = caption {
            m["caption"] = json!(c);
        }
        m
    };
    let (kind, payload) = match message {
        OutboundMessage::Text { text, .. } => (
            "text",
            json!({ "preview_url": text.contains("https://"), "body": text }),
        ),
        OutboundMessage::Image { url, caption } => ("image", with_caption(media(url), caption)),
        OutboundMessage::Video { url, caption } => ("video", with_caption(media(url), caption)),
        OutboundMessage::Document {
            url,
            caption,
            file_name,
        } => {
            let mut d = with_caption(media(url), caption);
            if let Some(f) = file_name {
                d["filename"] = json!(f);
            }
            ("document", d)
        }
        OutboundMessage::Audio { url } => ("audio", media(url)),
        OutboundMessage::Sticker { url } => ("sticker", media(url)),
        OutboundMessage::Reaction { message_id, emoji } => (
            "reaction",
            json!({ "message_id": message_id, "emoji": emoji }),
        ),
        OutboundMessage::Template(t) => {
            let mut components = Vec::new();
            if let Some(header) = &t.header {
                let parameter = match header {
                    TemplateHeader::Text { text } => json!({ "type": "text", "text": text }),
                    TemplateHeader::Image { url } => {
                        json!({ "type": "image", "image": { "link": url } })
                    }
                    TemplateHeader::Video { url } => {
                        json!({ "type": "video", "video": { "link": url } })
                    }
                    TemplateHeader::Document { url, file_name } => {
                        let mut d = json!({ "link": url });
                        if let Some(f) = file_name {
                            d["filename"] = json!(f);
                        }
                        json!({ "type": "document", "document": d })
                    }
                };
                components.push(json!({ "type": "header", "parameters": [parameter] }));
            }
            if !t.body.is_empty() {
                components.push(json!({ "type": "body", "parameters": t.body.iter()
                    .map(|text| json!({ "type": "text", "text": text })).collect::<Vec<_>>() }));
            }
            for (i, payload) in t.quick_replies.iter().enumerate() {
                components.push(json!({ "type": "button", "sub_type": "quick_reply",
                    "index": i.to_string(), "parameters": [{ "type": "payload", "payload": payload }] }));
            }
            for button in &t.url_buttons {
                components.push(json!({ "type": "button", "sub_type": "url",
                    "index": button.index.to_string(), "parameters": [{ "type": "text", "text": button.text }] }));
            }
            let mut template = json!({ "name": t.name, "language": { "code": t.language } });
            if !components.is_empty() {
                template["components"] = json!(components);
            }
            ("template", template)
        }
        OutboundMessage::Interactive(i) => {
            let (kind, action) = match &i.action {
                InteractiveAction::Buttons { buttons } => (
                    "button",
                    json!({ "buttons": buttons.iter().map(|b| json!({
                        "type": "reply", "reply": { "id": b.id, "title": b.title } })).collect::<Vec<_>>() }),
                ),
                InteractiveAction::List { title, sections } => (
                    "list",
                    json!({ "button": title, "sections": sections.iter().map(|s| json!({
                        "title": s.title,
                        "rows": s.rows.iter().map(|r| {
                            let mut row = json!({ "id": r.id, "title": r.title });
                            if let Some(d) = &r.description { row["description"] = json!(d); }
                            row
                        }).collect::<Vec<_>>() })).collect::<Vec<_>>() }),
                ),
                InteractiveAction::Url { title, url } => (
                    "cta_url",
                    json!({ "name": "cta_url", "parameters": { "display_text": title, "url": url } }),
                ),
            };
            let mut im = json!({ "type": kind, "body": { "text": i.body }, "action": action });
            if let Some(h) = &i.header {
                im["header"] = json!({ "type": "text", "text": h });
            }
            if let Some(f) = &i.footer {
                im["footer"] = json!({ "text": f });
            }
            ("interactive", im)
        }
    };
    let mut body = json!({ "messaging_product": "whatsapp", "recipient_type": "individual",
        "to": to, "type": kind });
    if let OutboundMessage::Text {
        reply_to: Some(id), ..
    } = message
        && !id.trim().is_empty()
    {
        body["context"] = json!({ "message_id": id });
    }
    body[kind] = payload;
    body
}

/// The read receipt with the typing indicator for an inbound message.
pub fn mark_read_body(message_id: &str) -> Value {
    json!({ "messaging_product": "whatsapp", "status": "read",
        "message_id": message_id, "typing_indicator": { "type": "text" } })
}

#[derive(Debug, Deserialize)]
struct SendAnswer {
    #[serde(default)]
    messages: Vec<SentId>,
}

#[derive(Debug, Deserialize)]
struct SentId {
    id: String,
}

#[derive(Debug, Default, Deserialize)]
struct GraphErrorBody {
    #[serde(default)]
    error: GraphError,
}

#[derive(Debug, Default, Deserialize)]
struct GraphError {
    #[serde(default)]
    code: Option<i64>,
    #[serde(default)]
    message: Option<String>,
}

/// `GET /{version}/{media-id}`: where the media can be downloaded for the next few minutes.
#[derive(Debug, Default, Deserialize)]
struct MediaInfo {
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    sha256: Option<String>,
    /// A number, or a number in a string.
    #[serde(default)]
    file_size: Option<Value>,
}

/// The largest inbound media item we download (WhatsApp documents: 100 MB).
pub const MAX_MEDIA_BYTES: u64 = 100 * 1024 * 1024;
/// A read receipt is worth one quick try, never a delay to the reply.
const MARK_READ_TIMEOUT: Duration = Duration::from_secs(3);
/// A media download may be large (documents up to 100 MB).
const DOWNLOAD_TIMEOUT: Duration = Duration::from_secs(120);
/// While the token is known to be expired, readiness re-checks it at most this often.
const TOKEN_PROBE_INTERVAL: Duration = Duration::from_secs(30);
const TOKEN_PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// Whether the Meta access token works, as far as the last Graph answers tell: 190 (from any
/// Graph call, or in a webhook) marks it expired, logged once as an alert; any later successful
/// Graph call marks it working again. Readiness reports it.
#[derive(Debug, Default)]
pub struct TokenHealth {
    expired: Mutex<Option<TokenExpired>>,
}

#[derive(Debug, Clone)]
struct TokenExpired {
    since: DateTime<Utc>,
    /// Which Graph call (or webhook part) reported it.
    seen_in: &'static str,
    last_probe: Option<tokio::time::Instant>,
}

impl TokenHealth {
    /// A 190 was seen in `seen_in`. The first one after a working token is logged as an alert.
    pub fn expired(&self, seen_in: &'static str) {
        let mut state = self.expired.lock().unwrap_or_else(|p| p.into_inner());
        if state.is_some() {
            return;
        }
        *state = Some(TokenExpired {
            since: Utc::now(),
            seen_in,
            last_probe: None,
        });
        metrics::counter!("handoff_meta_token_expired_total").increment(1);
        tracing::error!(
            alert = "meta_token_expired",
            seen_in,
            "Meta access token expired or revoked (Graph error 190): WhatsApp sends, media downloads and read receipts fail until META_ACCESS_TOKEN is replaced"
        );
    }

    /// A Graph call succeeded with the token.
    pub fn works(&self) {
        let was = self
            .expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(was) = was {
            tracing::info!(
                alert = "meta_token_expired",
                since = %was.since,
                "Meta access token works again"
            );
        }
    }

    /// Why the token is not usable, when it is not.
    pub fn problem(&self) -> Option<String> {
        self.expired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .map(|e| {
                format!(
                    "Meta access token expired or revoked (Graph error 190 in {} since {}); replace META_ACCESS_TOKEN",
                    e.seen_in,
                    e.since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
                )
            })
    }

    /// Whether a probe of the token is due (the first at once, then every
    /// [`TOKEN_PROBE_INTERVAL`]); marks it taken.
    fn take_probe(&self) -> bool {
        let mut state = self.expired.lock().unwrap_or_else(|p| p.into_inner());
        let Some(e) = state.as_mut() else {
            return false;
        };
        let now = tokio::time::Instant::now();
        if e.last_probe
            .is_some_and(|at| now.duration_since(at) < TOKEN_PROBE_INTERVAL)
        {
            return false;
        }
        e.last_probe = Some(now);
        true
    }
}

/// Graph media ids are digits; anything that could change the request path is refused (the
/// id comes from outside and the request carries our token).
fn graph_media_id(id: &str) -> Option<&str> {
    let id = id.trim();
    (!id.is_empty()
        && id.len() <= 128
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-'))
    .then_some(id)
}

/// Compares Meta's `sha256` (hex or base64) with the bytes. `None` when the declared value is
/// in neither form (nothing to check against).
fn sha256_matches(declared: &str, bytes: &[u8]) -> Option<bool> {
    use base64::Engine;
    let actual = <Sha256 as sha2::Digest>::digest(bytes);
    let declared = declared.trim();
    let expected = if declared.len() == 64 {
        decode_hex(declared)
    } else {
        base64::engine::general_purpose::STANDARD
            .decode(declared)
            .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(declared))
            .ok()
    }?;
    (expected.len() == 32).then(|| expected.as_slice() == actual.as_slice())
}

/// How many times a Graph call is tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Attempts {
    /// Transient answers (rate limits, 5xx, transport) are retried with backoff.
    Retried,
    /// One try: the caller would rather give up than wait.
    Once,
}

/// Talks to the Meta Cloud API: sends (`POST /{version}/{phone_number_id}/messages`), inbound
/// media (`GET /{version}/{media-id}`, then the short-lived `url`), read receipts.
pub struct MetaSender {
    http: reqwest::Client,
    base_url: String,
    version: String,
    phone_number_id: String,
    token: Secret<String>,
    retry: RetryPolicy,
    health: Arc<TokenHealth>,
    /// Recipients Graph answered 131056 for (pair rate): every send to them waits.
    pair_rate: PairRate,
}

/// Graph's pair-rate error: too many messages to one recipient in a short time.
const PAIR_RATE: i64 = 131056;

/// Per-recipient holds after 131056 ("too many messages from this business number to this
/// user"): the backoff applies to the pair, so every send to that recipient waits it out,
/// not only the one that was refused, while sends to other recipients go on.
#[derive(Debug, Default)]
struct PairRate {
    until: Mutex<std::collections::HashMap<String, tokio::time::Instant>>,
}

impl PairRate {
    /// Holds `recipient` until `until` (a later hold wins); forgets holds that have passed.
    fn hold(&self, recipient: &str, until: tokio::time::Instant) {
        let mut map = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let now = tokio::time::Instant::now();
        map.retain(|_, t| *t > now);
        let entry = map.entry(recipient.to_owned()).or_insert(until);
        *entry = (*entry).max(until);
    }

    /// How long a send to `recipient` must still wait, if at all.
    fn wait(&self, recipient: &str, now: tokio::time::Instant) -> Option<Duration> {
        let map = self
            .until
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.get(recipient)
            .filter(|t| **t > now)
            .map(|t| t.duration_since(now))
    }
}

/// The HTTP client for Graph API calls: bounded connect and request time.
pub(crate) fn graph_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap_or_default()
}

impl MetaSender {
    pub fn new(
        base_url: &str,
        version: &str,
        phone_number_id: &str,
        token: Secret<String>,
    ) -> Self {
        Self {
            http: graph_client(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            version: version.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            token,
            retry: RetryPolicy::default(),
            health: Arc::new(TokenHealth::default()),
            pair_rate: PairRate::default(),
        }
    }

    /// Shares `health` with this sender: every Meta number runs on the one `META_ACCESS_TOKEN`,
    /// so one sender's 190 (or success) is every sender's, and the webhook's.
    pub fn with_token_health(mut self, health: Arc<TokenHealth>) -> Self {
        self.health = health;
        self
    }

    /// The token's state, shared with the webhook (190 in `statuses[].errors`) and readiness.
    pub fn token_health(&self) -> Arc<TokenHealth> {
        self.health.clone()
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/{}/{}/messages",
            self.base_url, self.version, self.phone_number_id
        )
    }

    /// Marks an inbound message read (blue ticks) and shows the typing indicator: one quick
    /// try, since it must never hold up the reply.
    pub async fn mark_read(&self, message_id: &str) -> Result<(), SenderError> {
        self.call(
            "mark_read",
            self.http
                .post(self.messages_url())
                .json(&mark_read_body(message_id))
                .timeout(MARK_READ_TIMEOUT),
            Attempts::Once,
        )
        .await
        .map(|_| ())
    }

    /// Resolves a media id to its short-lived download URL.
    async fn resolve_media(&self, media_id: &str) -> Result<MediaInfo, SenderError> {
        let url = format!("{}/{}/{}", self.base_url, self.version, media_id);
        let response = self
            .call("media", self.http.get(url), Attempts::Retried)
            .await?;
        let body = response
            .bytes()
            .await
            .map_err(|e| SenderError::Unavailable(format!("reading the media answer: {e}")))?;
        serde_json::from_slice(&body)
            .map_err(|e| SenderError::Unavailable(format!("media answer: {e}")))
    }

    /// Downloads from a resolved media URL, with the bearer token, within [`MAX_MEDIA_BYTES`].
    async fn fetch_media(&self, info: &MediaInfo) -> Result<bytes::Bytes, SenderError> {
        let url = info
            .url
            .as_deref()
            .and_then(|u| reqwest::Url::parse(u.trim()).ok())
            .filter(|u| matches!(u.scheme(), "https" | "http"))
            .ok_or_else(|| SenderError::Unavailable("media answer without a usable url".into()))?;
        let declared = info.file_size.as_ref().and_then(|v| match v {
            Value::Number(n) => n.as_u64(),
            Value::String(s) => s.trim().parse().ok(),
            _ => None,
        });
        if declared.is_some_and(|n| n > MAX_MEDIA_BYTES) {
            return Err(SenderError::Unavailable(format!(
                "media is larger than {MAX_MEDIA_BYTES} bytes"
            )));
        }
        let mut response = self
            .call(
                "media download",
                self.http.get(url).timeout(DOWNLOAD_TIMEOUT),
                Attempts::Retried,
            )
            .await?;
        let too_large =
            || SenderError::Unavailable(format!("media is larger than {MAX_MEDIA_BYTES} bytes"));
        if response
            .content_length()
            .is_some_and(|n| n > MAX_MEDIA_BYTES)
        {
            return Err(too_large());
        }
        let mut bytes = bytes::BytesMut::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| SenderError::Unavailable(format!("reading the media: {e}")))?
        {
            if (bytes.len() + chunk.len()) as u64 > MAX_MEDIA_BYTES {
                return Err(too_large());
            }
            bytes.extend_from_slice(&chunk);
        }
        let bytes = bytes.freeze();
        if let Some(declared) = info.sha256.as_deref()
            && sha256_matches(declared, &bytes) == Some(false)
        {
            return Err(SenderError::Unavailable(
                "downloaded media does not match its sha256".into(),
            ));
        }
        Ok(bytes)
    }

    /// Checks the token with a cheap Graph read (the phone number's id), once.
    async fn probe_token(&self) {
        let url = format!(
            "{}/{}/{}?fields=id",
            self.base_url, self.version, self.phone_number_id
        );
        let _ = self
            .call(
                "token probe",
                self.http.get(url).timeout(TOKEN_PROBE_TIMEOUT),
                Attempts::Once,
            )
            .await;
    }

    /// Sends one Graph request with the bearer token and returns the successful response.
    /// Failures become typed errors (the Graph `error.code` classified); transient ones are
    /// retried with bounded backoff honouring `Retry-After` when `attempts` allows. Every answer
    /// updates the token's health: 190 marks it expired, success marks it working.
    async fn call(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
        attempts: Attempts,
    ) -> Result<reqwest::Response, SenderError> {
        self.call_for(what, request, attempts, None).await
    }

    /// [`Self::call`] for a message to `recipient`: waits out a pair-rate hold on it first, and
    /// a 131056 answer holds every send to that recipient for the backoff.
    async fn call_for(
        &self,
        what: &'static str,
        request: reqwest::RequestBuilder,
        attempts: Attempts,
        recipient: Option<&str>,
    ) -> Result<reqwest::Response, SenderError> {
        let request = request.bearer_auth(self.token.expose());
        let mut attempt = 0;
        loop {
            attempt += 1;
            if let Some(wait) =
                recipient.and_then(|r| self.pair_rate.wait(r, tokio::time::Instant::now()))
            {
                tokio::time::sleep(wait).await;
            }
            let sent = match request.try_clone() {
                Some(r) => r.send().await,
                None => return Err(SenderError::Unavailable("request not repeatable".into())),
            };
            let (failure, retry_after) = match sent {
                Ok(response) if response.status().is_success() => {
                    self.health.works();
                    return Ok(response);
                }
                Ok(response) => {
                    let status = response.status().as_u16();
                    let retry_after = crate::acs::retry_after(response.headers());
                    let answer = response.bytes().await.unwrap_or_default();
                    let error = serde_json::from_slice::<GraphErrorBody>(&answer)
                        .map(|b| b.error)
                        .unwrap_or_default();
                    let class = error.code.map_or(GraphErrorClass::Other, classify);
                    let code = error.code.map(|c| c.to_string()).unwrap_or_default();
                    let message = error.message.unwrap_or_default();
                    if class == GraphErrorClass::TokenExpired {
                        self.health.expired(what);
                    }
                    if error.code == Some(PAIR_RATE)
                        && let Some(r) = recipient
                    {
                        let delay = self.retry.delay(attempt, retry_after);
                        self.pair_rate.hold(r, tokio::time::Instant::now() + delay);
                    }
                    let transient = class == GraphErrorClass::Transient
                        || (status >= 500 && class == GraphErrorClass::Other)
                        || (status == 429 && class == GraphErrorClass::Other);
                    if !transient {
                        return Err(SenderError::Rejected {
                            status,
                            code,
                            message,
                        });
                    }
                    (format!("{status} {code}: {message}"), retry_after)
                }
                Err(err) => (
                    if err.is_timeout() {
                        "timed out".to_owned()
                    } else {
                        "connection failed".to_owned()
                    },
                    None,
                ),
            };
            if attempts == Attempts::Once || attempt >= self.retry.max_attempts {
                return Err(SenderError::Unavailable(failure));
            }
            tokio::time::sleep(self.retry.delay(attempt, retry_after)).await;
        }
    }
}

/// Whether a failed media download is worth a fresh URL: Meta's URLs expire in about five
/// minutes, which shows as 401 or 404.
fn url_expired(err: &SenderError) -> bool {
    matches!(
        err,
        SenderError::Rejected {
            status: 401 | 404,
            ..
        }
    )
}

#[async_trait]
impl WhatsAppSender for MetaSender {
    fn provider(&self) -> WhatsAppProvider {
        WhatsAppProvider::Meta
    }

    async fn send(&self, to: &Recipient, message: &OutboundMessage) -> Result<String, SenderError> {
        let body = send_body(to.address.trim_start_matches('+'), message);
        let response = self
            .call_for(
                "send",
                self.http.post(self.messages_url()).json(&body),
                Attempts::Retried,
                Some(to.address.as_str()),
            )
            .await?;
        let answer = response
            .bytes()
            .await
            .map_err(|e| SenderError::Unavailable(format!("reading the answer: {e}")))?;
        let answer: SendAnswer = serde_json::from_slice(&answer)
            .map_err(|e| SenderError::Unavailable(format!("send answer: {e}")))?;
        answer
            .messages
            .into_iter()
            .next()
            .map(|m| m.id)
            .ok_or_else(|| SenderError::Unavailable("send answer without a message id".into()))
    }

    /// Resolves the media id, downloads the URL at once; on 401/404 (the URL expired or is
    /// not ready) resolves once more and downloads once more.
    async fn download_media(
        &self,
        _via: &Route,
        media: &InboundMedia,
    ) -> Result<FetchedMedia, SenderError> {
        let id = graph_media_id(&media.media_id)
            .ok_or_else(|| SenderError::Unavailable("media id is not a Graph id".into()))?;
        let mut info = self.resolve_media(id).await?;
        let bytes = match self.fetch_media(&info).await {
            Err(err) if url_expired(&err) => {
                tracing::info!(media_id = %id, error = %err, "media URL expired; resolving it again");
                info = self.resolve_media(id).await?;
                self.fetch_media(&info).await?
            }
            other => other?,
        };
        Ok(FetchedMedia {
            bytes,
            mime_type: non_empty(info.mime_type.as_deref()).or_else(|| media.mime_type.clone()),
        })
    }

    async fn mark_read(&self, _via: &Route, message_id: &str) -> Result<(), SenderError> {
        MetaSender::mark_read(self, message_id).await
    }

    /// Not ready while the token is known to be expired; re-checked with a cheap Graph read
    /// (at once, then at most every 30 s) so a replaced or restored token is noticed even when
    /// no traffic reaches this replica.
    async fn readiness(&self) -> Option<Result<(), String>> {
        if self.health.take_probe() {
            self.probe_token().await;
        }
        Some(self.health.problem().map_or(Ok(()), Err))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_header_body_quick_reply_and_url_button_components() {
        let msg = OutboundMessage::Template(crate::domain::TemplateMessage {
            name: "order_update_v1".into(),
            language: "en_US".into(),
            body: vec!["Alex".into()],
            quick_replies: vec!["YES".into()],
            header: Some(TemplateHeader::Image {
                url: "https://example.com/h.jpg".into(),
            }),
            url_buttons: vec![crate::domain::UrlButton {
                index: 1,
                text: "A12345".into(),
            }],
            idempotency: None,
        });
        assert_eq!(
            send_body("16505551234", &msg),
            json!({"messaging_product":"whatsapp","recipient_type":"individual","to":"16505551234","type":"template",
              "template":{"name":"order_update_v1","language":{"code":"en_US"},"components":[
                {"type":"header","parameters":[{"type":"image","image":{"link":"https://example.com/h.jpg"}}]},
                {"type":"body","parameters":[{"type":"text","text":"Alex"}]},
                {"type":"button","sub_type":"quick_reply","index":"0","parameters":[{"type":"payload","payload":"YES"}]},
                {"type":"button","sub_type":"url","index":"1","parameters":[{"type":"text","text":"A12345"}]}]}})
        );
    }

    #[test]
    fn a_pair_rate_hold_delays_that_recipient_only_and_a_later_hold_wins() {
        let rate = PairRate::default();
        let now = tokio::time::Instant::now();
        rate.hold("+447700900001", now + Duration::from_secs(2));
        rate.hold("+447700900001", now + Duration::from_secs(1));
        assert_eq!(
            rate.wait("+447700900001", now),
            Some(Duration::from_secs(2))
        );
        assert_eq!(rate.wait("+447700900002", now), None);
        assert_eq!(
            rate.wait("+447700900001", now + Duration::from_secs(3)),
            None
        );
    }
    use serde_json::json;

    fn sign(secret: &[u8], body: &[u8]) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret).unwrap();
        mac.update(body);
        let tag = mac.finalize().into_bytes();
        format!(
            "sha256={}",
            tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
        )
    }

    #[test]
    fn whatsapp_meta_signature_is_checked_over_the_raw_bytes() {
        let body = br#"{"object":"whatsapp_business_account","entry":[]}"#;
        let good = sign(b"secret", body);
        assert!(signature_valid(b"secret", Some(&good), body));
        assert!(signature_valid(
            b"secret",
            Some(&good.to_uppercase().replace("SHA256=", "sha256=")),
            body
        ));
        assert!(!signature_valid(b"other", Some(&good), body));
        assert!(!signature_valid(b"secret", None, body));
        assert!(!signature_valid(b"secret", Some("sha256=zz"), body));
        assert!(!signature_valid(b"secret", Some(&good[..20]), body));
        let reserialised = br#"{ "object": "whatsapp_business_account", "entry": [] }"#;
        assert!(!signature_valid(b"secret", Some(&good), reserialised));
    }

    #[test]
    fn whatsapp_meta_messages_statuses_and_contacts_become_domain_events() {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp",
            "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
            "contacts": [{"profile": {"name": "Sheena Nelson"}, "wa_id": "16505551234", "user_id": "US.13491208655302741918"}],
            "messages": [
                {"from": "16505551234", "id": "wamid.1", "timestamp": "1749416383", "type": "text", "text": {"body": "hi"}},
                {"from": "16505551234", "id": "wamid.2", "timestamp": "1749416384", "type": "reaction", "reaction": {"message_id": "wamid.out"}},
                {"from": "16505551234", "id": "wamid.3", "timestamp": "1749416385", "type": "location", "location": {"latitude": 1.5, "longitude": -2.0}},
                {"from": "16505551234", "id": "wamid.4", "timestamp": "1749416386", "type": "unsupported", "errors": [{"code": 131051, "title": "Message type unknown"}]},
                {"from": "16505551234", "id": "wamid.5", "timestamp": "1749416387", "type": "audio", "audio": {"id": "m1", "mime_type": "audio/ogg", "voice": true}}
            ],
            "statuses": [{"id": "wamid.out", "status": "played", "timestamp": "1750857384", "recipient_id": "16505551234"}]
        }}]}]});
        let events = parse_notification(body.to_string().as_bytes()).unwrap();
        assert_eq!(events.len(), 6);
        let MetaEvent::Received(first) = &events[0] else {
            panic!("{events:?}")
        };
        assert_eq!(first.customer.as_str(), "+16505551234");
        assert_eq!(first.business_number.as_deref(), Some("106540352242922"));
        assert_eq!(first.display_name.as_deref(), Some("Sheena Nelson"));
        assert_eq!(first.bsuid.as_deref(), Some("US.13491208655302741918"));
        assert_eq!(first.received_at.timestamp(), 1_749_416_383);
        let contents: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                MetaEvent::Received(m) => Some(m.content.kind()),
                _ => None,
            })
            .collect();
        assert_eq!(
            contents,
            ["text", "reaction", "location", "unknown", "audio"]
        );
        let MetaEvent::Received(unsupported) = &events[3] else {
            panic!()
        };
        assert_eq!(
            unsupported.content,
            InboundContent::Unknown {
                message_type: "unsupported".into(),
                error_code: Some("131051".into())
            }
        );
        let MetaEvent::Status(played) = &events[5] else {
            panic!()
        };
        assert_eq!(played.status, DeliveryStatus::Read);
    }

    fn statuses(statuses: Value) -> Vec<MetaEvent> {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{"field": "messages", "value": {
            "messaging_product": "whatsapp", "statuses": statuses }}]}]});
        parse_notification(body.to_string().as_bytes()).unwrap()
    }

    #[test]
    fn whatsapp_meta_status_pricing_and_conversation_are_read_leniently() {
        let events = statuses(json!([
            {"id": "wamid.a", "status": "sent", "timestamp": "1750857384", "recipient_id": "16505551234",
             "conversation": {"id": "conv-9", "expiration_timestamp": "1750943820", "origin": {"type": "utility"}},
             "pricing": {"billable": true, "pricing_model": "PMP", "type": "regular", "category": "utility"}},
            // Odd shapes: billable as a string, category a number, origin without type.
            {"id": "wamid.b", "status": "delivered", "timestamp": 1750857385,
             "conversation": {"origin": {}}, "pricing": {"billable": "false", "category": 7}},
            // Pricing of the wrong type, conversation null: the status still counts.
            {"id": "wamid.c", "status": "read", "pricing": "free", "conversation": null},
            {"id": "wamid.d", "status": "read", "pricing": {}}
        ]));
        let updates: Vec<&StatusUpdate> = events
            .iter()
            .map(|e| match e {
                MetaEvent::Status(s) => s,
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(
            updates[0].pricing,
            Some(Pricing {
                category: Some("utility".into()),
                billable: Some(true),
                pricing_model: Some("PMP".into()),
                kind: Some("regular".into()),
            })
        );
        let conversation = updates[0].conversation.as_ref().unwrap();
        assert_eq!(conversation.id.as_deref(), Some("conv-9"));
        assert_eq!(conversation.origin.as_deref(), Some("utility"));
        assert_eq!(conversation.expires_at.unwrap().timestamp(), 1_750_943_820);
        assert_eq!(
            updates[1].pricing,
            Some(Pricing {
                category: Some("7".into()),
                billable: Some(false),
                pricing_model: None,
                kind: None,
            })
        );
        assert_eq!(updates[1].conversation, None, "nothing usable in it");
        assert_eq!(updates[1].at.timestamp(), 1_750_857_385);
        assert_eq!(updates[2].status, DeliveryStatus::Read);
        assert_eq!(updates[2].pricing, None);
        assert_eq!(updates[2].conversation, None);
        assert_eq!(updates[3].pricing, None);
    }

    #[test]
    fn whatsapp_meta_value_with_only_errors_is_reported_not_dropped() {
        let body = json!({"object": "whatsapp_business_account", "entry": [{"id": "waba", "changes": [{"field": "messages", "value": {
        "messaging_product": "whatsapp",
        "metadata": {"display_phone_number": "15550783881", "phone_number_id": "106540352242922"},
        "errors": [
            {"code": 190, "title": "Access token has expired", "message": "…", "error_data": {"details": "…"}},
            {"code": "131000", "title": 5},
            "not an object"
        ]}}]}]});
        let events = parse_notification(body.to_string().as_bytes()).unwrap();
        assert_eq!(
            events,
            [
                MetaEvent::ProviderError {
                    code: Some("190".into()),
                    title: Some("Access token has expired".into())
                },
                MetaEvent::ProviderError {
                    code: Some("131000".into()),
                    title: None
                },
                MetaEvent::ProviderError {
                    code: None,
                    title: None
                },
            ]
        );
        let failed =
            statuses(json!([{"id": "wamid.x", "status": "failed", "errors": [{"code": 190}]}]));
        let [MetaEvent::Status(failed)] = failed.as_slice() else {
            panic!("{failed:?}")
        };
        assert_eq!(failed.status, DeliveryStatus::Failed);
        assert_eq!(failed.error_code.as_deref(), Some(TOKEN_EXPIRED_CODE));
    }

    #[test]
    fn whatsapp_meta_text_reply_carries_the_context_and_mark_read_the_typing_indicator() {
        let reply = OutboundMessage::Text {
            text: "Yes".into(),
            reply_to: Some("wamid.in".into()),
        };
        assert_eq!(
            send_body("16505551234", &reply),
            json!({"messaging_product": "whatsapp", "recipient_type": "individual",
                "to": "16505551234", "type": "text", "context": {"message_id": "wamid.in"},
                "text": {"preview_url": false, "body": "Yes"}})
        );
        let plain = send_body("16505551234", &OutboundMessage::text("Yes"));
        assert!(plain.get("context").is_none(), "{plain}");
        assert_eq!(
            mark_read_body("wamid.in"),
            json!({"messaging_product": "whatsapp", "status": "read",
                "message_id": "wamid.in", "typing_indicator": {"type": "text"}})
        );
    }

    #[test]
    fn whatsapp_meta_media_ids_that_could_change_the_path_are_refused() {
        assert_eq!(graph_media_id(" 1234567890 "), Some("1234567890"));
        for bad in ["", "..", "12/messages", "1?fields=x", "a#b", "1%2F2"] {
            assert_eq!(graph_media_id(bad), None, "{bad}");
        }
    }

    #[test]
    fn whatsapp_meta_media_sha256_is_checked_in_hex_or_base64() {
        use base64::Engine;
        let bytes = b"voice note";
        let digest = <Sha256 as sha2::Digest>::digest(bytes);
        let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        assert_eq!(sha256_matches(&hex, bytes), Some(true));
        assert_eq!(sha256_matches(&hex.to_uppercase(), bytes), Some(true));
        assert_eq!(sha256_matches(&b64, bytes), Some(true));
        assert_eq!(sha256_matches(&b64, b"other"), Some(false));
        assert_eq!(sha256_matches(&hex, b"other"), Some(false));
        assert_eq!(
            sha256_matches("x", bytes),
            None,
            "not a digest: nothing to check"
        );
    }

    #[test]
    fn whatsapp_meta_token_health_logs_once_and_recovers_on_success() {
        let health = TokenHealth::default();
        assert!(health.problem().is_none());
        assert!(!health.take_probe(), "nothing to probe while it works");
        health.expired("send");
        health.expired("media");
        let problem = health.problem().unwrap();
        assert!(
            problem.contains("190") && problem.contains("in send"),
            "{problem}"
        );
        assert!(health.take_probe(), "the first probe is due at once");
        assert!(!health.take_probe(), "then not again right away");
        health.works();
        assert!(health.problem().is_none());
    }
}
