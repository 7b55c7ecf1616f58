//! The Meta WhatsApp Cloud API adapter: the only module that knows Meta's JSON. Verifies
//! `X-Hub-Signature-256` over the raw webhook body, converts every `entry[].changes[].value`
//! (`messages[]`, `statuses[]`, `contacts[]`) into domain types, and sends through the Graph
//! API (`MetaSender`) with its error codes classified in one table.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use super::{Recipient, SenderError, WhatsAppSender};
use crate::acs::RetryPolicy;
use crate::config::Secret;
use crate::domain::outbound::InteractiveAction;
use crate::domain::{
    CustomerId, DeliveryStatus, InboundContent, InboundMedia, InboundMessage, MediaKind,
    OutboundMessage, StatusUpdate, WhatsAppProvider,
};

pub mod templates;

/// What one Meta notification item means for WhatsApp.
#[derive(Debug, Clone, PartialEq)]
pub enum MetaEvent {
    Received(InboundMessage),
    Status(StatusUpdate),
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
    errors.iter().find_map(|e| match &e.code {
        Some(Value::Number(n)) => Some(n.to_string()),
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        _ => None,
    })
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
        OutboundMessage::Text { text } => (
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
            if !t.body.is_empty() {
                components.push(json!({ "type": "body", "parameters": t.body.iter()
                    .map(|text| json!({ "type": "text", "text": text })).collect::<Vec<_>>() }));
            }
            for (i, payload) in t.quick_replies.iter().enumerate() {
                components.push(json!({ "type": "button", "sub_type": "quick_reply",
                    "index": i.to_string(), "parameters": [{ "type": "payload", "payload": payload }] }));
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
    body[kind] = payload;
    body
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

/// Sends through the Meta Cloud API (`POST /{version}/{phone_number_id}/messages`).
pub struct MetaSender {
    http: reqwest::Client,
    base_url: String,
    version: String,
    phone_number_id: String,
    token: Secret<String>,
    retry: RetryPolicy,
}

impl MetaSender {
    pub fn new(
        base_url: &str,
        version: &str,
        phone_number_id: &str,
        token: Secret<String>,
    ) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap_or_default();
        Self {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            version: version.to_owned(),
            phone_number_id: phone_number_id.to_owned(),
            token,
            retry: RetryPolicy::default(),
        }
    }

    fn messages_url(&self) -> String {
        format!(
            "{}/{}/{}/messages",
            self.base_url, self.version, self.phone_number_id
        )
    }

    /// Marks an inbound message read (blue ticks) and shows the typing indicator.
    pub async fn mark_read(&self, message_id: &str) -> Result<(), SenderError> {
        let body = json!({ "messaging_product": "whatsapp", "status": "read",
            "message_id": message_id, "typing_indicator": { "type": "text" } });
        self.post(&body).await.map(|_| ())
    }

    /// Posts `body`, retrying transient answers (rate limits, 5xx, transport) with bounded
    /// backoff honouring `Retry-After`.
    async fn post(&self, body: &Value) -> Result<bytes::Bytes, SenderError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let sent = self
                .http
                .post(self.messages_url())
                .bearer_auth(self.token.expose())
                .json(body)
                .send()
                .await;
            let (failure, retry_after) = match sent {
                Ok(response) if response.status().is_success() => {
                    return response
                        .bytes()
                        .await
                        .map_err(|e| SenderError::Unavailable(format!("reading the answer: {e}")));
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
                        tracing::error!(code = %code, "Meta access token expired or revoked (190): WhatsApp sends fail until it is replaced");
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
            if attempt >= self.retry.max_attempts {
                return Err(SenderError::Unavailable(failure));
            }
            tokio::time::sleep(self.retry.delay(attempt, retry_after)).await;
        }
    }
}

#[async_trait]
impl WhatsAppSender for MetaSender {
    fn provider(&self) -> WhatsAppProvider {
        WhatsAppProvider::Meta
    }

    async fn send(&self, to: &Recipient, message: &OutboundMessage) -> Result<String, SenderError> {
        let body = send_body(to.address.trim_start_matches('+'), message);
        let answer = self.post(&body).await?;
        let answer: SendAnswer = serde_json::from_slice(&answer)
            .map_err(|e| SenderError::Unavailable(format!("send answer: {e}")))?;
        answer
            .messages
            .into_iter()
            .next()
            .map(|m| m.id)
            .ok_or_else(|| SenderError::Unavailable("send answer without a message id".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
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
}
