//! The ACS Advanced Messaging adapter: the only module that knows its JSON. Converts
//! `AdvancedMessageReceived` / `AdvancedMessageDeliveryStatusUpdated` event data into domain
//! types, builds `notifications:send` bodies for every outbound kind, downloads inbound media,
//! and lists the channel's templates.

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};

use super::{FetchedMedia, Recipient, Route, SenderError, WhatsAppSender};
use crate::acs::{AcsClient, AcsError, AcsRequest, Retry};
use crate::domain::outbound::{InteractiveAction, TemplateHeader};
use crate::domain::template::{TemplateCategory, TemplateSpec, TemplateStatus};
use crate::domain::{
    CustomerId, DeliveryStatus, InboundContent, InboundMedia, InboundMessage, MediaKind,
    OutboundMessage, StatusUpdate, WhatsAppProvider,
};
use crate::eventgrid::GridEvent;

pub const RECEIVED: &str = "Microsoft.Communication.AdvancedMessageReceived";
pub const STATUS_UPDATED: &str = "Microsoft.Communication.AdvancedMessageDeliveryStatusUpdated";

/// What an Event Grid event means for WhatsApp.
#[derive(Debug, Clone, PartialEq)]
pub enum AcsEvent {
    Received(InboundMessage),
    Status(StatusUpdate),
    /// A status without an effect (`warning`, `unknown`).
    NoEffect,
    /// An event type this adapter does not handle.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    #[error("event data is not the expected shape: {0}")]
    Shape(String),
    #[error("event has no usable sender (neither `from` nor `fromBSUID`)")]
    NoCustomer,
    #[error("event has no messageId")]
    NoMessageId,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReceivedData {
    #[serde(default)]
    from: Option<String>,
    #[serde(default, rename = "fromBSUID", alias = "fromBsuid")]
    from_bsuid: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default, alias = "receivedTimeStamp")]
    received_timestamp: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    message_type: Option<String>,
    #[serde(default)]
    content: Option<String>,
    #[serde(default)]
    media: Option<MediaData>,
    #[serde(default)]
    button: Option<ButtonData>,
    #[serde(default)]
    interactive: Option<InteractiveData>,
    #[serde(default)]
    reaction: Option<ReactionData>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct MediaData {
    #[serde(default)]
    mime_type: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    file_name: Option<String>,
    #[serde(default)]
    caption: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct ButtonData {
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    payload: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct InteractiveData {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default)]
    button_reply: Option<ReplyData>,
    #[serde(default)]
    list_reply: Option<ReplyData>,
}

#[derive(Debug, Default, Deserialize)]
struct ReplyData {
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    description: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ReactionData {
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    emoji: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StatusData {
    #[serde(default)]
    message_id: Option<String>,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    to: Option<String>,
    #[serde(default, rename = "toBSUID", alias = "toBsuid")]
    to_bsuid: Option<String>,
    #[serde(default, alias = "receivedTimeStamp")]
    received_timestamp: Option<String>,
    #[serde(default)]
    error: Option<ErrorData>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ErrorData {
    #[serde(default)]
    channel_code: Option<Value>,
}

fn non_empty(s: Option<String>) -> Option<String> {
    s.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty())
}

fn timestamp(raw: Option<&str>, fallback: Option<DateTime<Utc>>) -> DateTime<Utc> {
    raw.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc))
        .or(fallback)
        .unwrap_or_else(Utc::now)
}

fn customer(phone: Option<&str>, bsuid: Option<&str>) -> Result<CustomerId, EventError> {
    if let Some(phone) = phone
        && let Ok(id) = CustomerId::parse_phone(phone)
    {
        return Ok(id);
    }
    bsuid
        .and_then(|b| CustomerId::from_bsuid(b).ok())
        .ok_or(EventError::NoCustomer)
}

/// Converts one Event Grid event.
pub fn parse_event(event: &GridEvent) -> Result<AcsEvent, EventError> {
    if event.event_type.eq_ignore_ascii_case(RECEIVED) {
        parse_received(event).map(AcsEvent::Received)
    } else if event.event_type.eq_ignore_ascii_case(STATUS_UPDATED) {
        Ok(parse_status(event)?.map_or(AcsEvent::NoEffect, AcsEvent::Status))
    } else {
        Ok(AcsEvent::Unknown)
    }
}

fn parse_received(event: &GridEvent) -> Result<InboundMessage, EventError> {
    let d = event
        .data_as::<ReceivedData>()
        .map_err(|e| EventError::Shape(e.to_string()))?;
    let from = non_empty(d.from);
    let bsuid = non_empty(d.from_bsuid);
    let customer = customer(from.as_deref(), bsuid.as_deref())?;
    // Learn's examples omit `messageId`; the event id is then the best stable id we have.
    let message_id = non_empty(d.message_id).unwrap_or_else(|| event.id.clone());
    let message_type = non_empty(d.message_type).unwrap_or_else(|| "unknown".into());
    let media = |kind: MediaKind| {
        let m = d.media.as_ref();
        m.and_then(|m| m.id.clone()).map(|media_id| {
            InboundContent::Media(InboundMedia {
                kind,
                media_id,
                mime_type: m.and_then(|m| m.mime_type.clone()),
                file_name: m.and_then(|m| m.file_name.clone()),
                caption: m.and_then(|m| m.caption.clone()),
            })
        })
    };
    let unknown = || InboundContent::Unknown {
        message_type: message_type.clone(),
        error_code: None,
    };
    let content = match message_type.to_ascii_lowercase().as_str() {
        "text" => d.content.clone().map(|text| InboundContent::Text { text }),
        "image" => media(MediaKind::Image),
        "document" => media(MediaKind::Document),
        "video" => media(MediaKind::Video),
        "audio" => media(MediaKind::Audio),
        "sticker" => media(MediaKind::Sticker),
        "button" => d.button.as_ref().map(|b| InboundContent::ButtonTap {
            text: b.text.clone().unwrap_or_default(),
            payload: b.payload.clone().unwrap_or_default(),
        }),
        "interactive" => d.interactive.as_ref().and_then(|i| {
            let kind = i.kind.as_deref().unwrap_or_default();
            if kind.eq_ignore_ascii_case("buttonReply") {
                i.button_reply
                    .as_ref()
                    .map(|r| InboundContent::ButtonReply {
                        id: r.id.clone().unwrap_or_default(),
                        title: r.title.clone().unwrap_or_default(),
                    })
            } else if kind.eq_ignore_ascii_case("listReply") {
                i.list_reply.as_ref().map(|r| InboundContent::ListReply {
                    id: r.id.clone().unwrap_or_default(),
                    title: r.title.clone().unwrap_or_default(),
                    description: r.description.clone(),
                })
            } else {
                None
            }
        }),
        "reaction" => d.reaction.as_ref().map(|r| InboundContent::Reaction {
            message_id: r.message_id.clone().unwrap_or_default(),
            emoji: r.emoji.clone().unwrap_or_default(),
        }),
        _ => None,
    }
    .unwrap_or_else(unknown);
    Ok(InboundMessage {
        message_id,
        customer,
        wa_id: from,
        bsuid,
        business_number: non_empty(d.to),
        provider: Some(WhatsAppProvider::Acs),
        received_at: timestamp(d.received_timestamp.as_deref(), event.time),
        content,
        display_name: None,
    })
}

fn parse_status(event: &GridEvent) -> Result<Option<StatusUpdate>, EventError> {
    let d = event
        .data_as::<StatusData>()
        .map_err(|e| EventError::Shape(e.to_string()))?;
    let message_id = non_empty(d.message_id).ok_or(EventError::NoMessageId)?;
    let Some(status) = d.status.as_deref().and_then(DeliveryStatus::parse) else {
        return Ok(None);
    };
    let to = non_empty(d.to);
    let bsuid = non_empty(d.to_bsuid);
    let error_code = d.error.and_then(|e| e.channel_code).and_then(|c| match c {
        Value::String(s) if !s.is_empty() => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    });
    Ok(Some(StatusUpdate {
        message_id,
        status,
        customer: customer(to.as_deref(), bsuid.as_deref()).ok(),
        at: timestamp(d.received_timestamp.as_deref(), event.time),
        error_code,
        // ACS delivery reports carry no billing details.
        pricing: None,
        conversation: None,
    }))
}

/// The `notifications:send` body for `message`, and whether it needs the preview api-version.
pub fn send_body(channel_id: &str, to: &str, message: &OutboundMessage) -> (Value, bool) {
    let mut body = json!({ "channelRegistrationId": channel_id, "to": [to] });
    let obj = body.as_object_mut().expect("an object");
    let mut put = |k: &str, v: Value| {
        obj.insert(k.to_owned(), v);
    };
    let mut preview = false;
    put("kind", json!(message.kind()));
    match message {
        // ACS has no reply context on sends: `reply_to` is dropped (the text still goes out).
        OutboundMessage::Text { text, .. } => put("content", json!(text)),
        OutboundMessage::Image { url, caption } | OutboundMessage::Video { url, caption } => {
            put("mediaUri", json!(url));
            if let Some(c) = caption {
                put("caption", json!(c));
            }
        }
        OutboundMessage::Document {
            url,
            caption,
            file_name,
        } => {
            put("mediaUri", json!(url));
            if let Some(c) = caption {
                put("caption", json!(c));
            }
            if let Some(f) = file_name {
                put("fileName", json!(f));
            }
        }
        OutboundMessage::Audio { url } => put("mediaUri", json!(url)),
        OutboundMessage::Sticker { url } => {
            preview = true;
            put("mediaUri", json!(url));
        }
        OutboundMessage::Reaction { message_id, emoji } => {
            preview = true;
            put("emoji", json!(emoji));
            put("messageId", json!(message_id));
        }
        OutboundMessage::Template(t) => {
            // Values are named and bound by name: body[i] fills {{i+1}}.
            let mut values = Vec::new();
            let mut header_refs = Vec::new();
            let mut body_refs = Vec::new();
            if let Some(header) = &t.header {
                let mut value = match header {
                    TemplateHeader::Text { text } => json!({ "kind": "text", "text": text }),
                    TemplateHeader::Image { url } => json!({ "kind": "image", "url": url }),
                    TemplateHeader::Video { url } => json!({ "kind": "video", "url": url }),
                    TemplateHeader::Document { url, file_name } => {
                        let mut d = json!({ "kind": "document", "url": url });
                        if let Some(f) = file_name {
                            d["fileName"] = json!(f);
                        }
                        d
                    }
                };
                value["name"] = json!("header1");
                values.push(value);
                header_refs.push(json!({ "refValue": "header1" }));
            }
            for (i, text) in t.body.iter().enumerate() {
                let name = format!("body{}", i + 1);
                values.push(json!({ "kind": "text", "name": name, "text": text }));
                body_refs.push(json!({ "refValue": name }));
            }
            // Button bindings are positional, in the template's button order: quick replies at
            // their implicit indexes, URL buttons at theirs.
            let mut indexed: Vec<(usize, Value)> = Vec::new();
            for (i, payload) in t.quick_replies.iter().enumerate() {
                let name = format!("button{}", i + 1);
                values.push(json!({ "kind": "quickAction", "name": name, "payload": payload }));
                indexed.push((i, json!({ "subType": "quickReply", "refValue": name })));
            }
            for button in &t.url_buttons {
                let name = format!("url{}", button.index + 1);
                values.push(json!({ "kind": "text", "name": name, "text": button.text }));
                indexed.push((button.index, json!({ "subType": "url", "refValue": name })));
            }
            indexed.sort_by_key(|(i, _)| *i);
            let buttons: Vec<Value> = indexed.into_iter().map(|(_, b)| b).collect();
            let mut template = json!({ "name": t.name, "language": t.language });
            if !values.is_empty() {
                let mut bindings = json!({ "kind": "whatsApp" });
                if !header_refs.is_empty() {
                    bindings["header"] = json!(header_refs);
                }
                if !body_refs.is_empty() {
                    bindings["body"] = json!(body_refs);
                }
                if !buttons.is_empty() {
                    bindings["buttons"] = json!(buttons);
                }
                template["values"] = json!(values);
                template["bindings"] = bindings;
            }
            put("template", template);
        }
        OutboundMessage::Interactive(i) => {
            preview = true;
            let text = |t: &str| json!({ "kind": "text", "text": t });
            let action = match &i.action {
                InteractiveAction::Buttons { buttons } => json!({
                    "kind": "whatsAppButtonAction",
                    "content": { "kind": "buttonSet", "buttons": buttons.iter()
                        .map(|b| json!({ "id": b.id, "title": b.title })).collect::<Vec<_>>() }
                }),
                InteractiveAction::List { title, sections } => json!({
                    "kind": "whatsAppListAction",
                    "content": { "kind": "group", "title": title, "groups": sections.iter().map(|s| json!({
                        "title": s.title,
                        "items": s.rows.iter().map(|r| {
                            let mut item = json!({ "id": r.id, "title": r.title });
                            if let Some(d) = &r.description { item["description"] = json!(d); }
                            item
                        }).collect::<Vec<_>>()
                    })).collect::<Vec<_>>() }
                }),
                InteractiveAction::Url { title, url } => json!({
                    "kind": "whatsAppUrlAction",
                    "content": { "kind": "url", "title": title, "url": url }
                }),
            };
            let mut im = json!({ "body": text(&i.body), "action": action });
            if let Some(h) = &i.header {
                im["header"] = text(h);
            }
            if let Some(f) = &i.footer {
                im["footer"] = text(f);
            }
            put("interactiveMessage", im);
        }
    }
    (body, preview)
}

#[derive(Debug, Deserialize)]
struct SendResult {
    #[serde(default)]
    receipts: Vec<Receipt>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Receipt {
    message_id: String,
}

impl From<AcsError> for SenderError {
    fn from(e: AcsError) -> Self {
        match e {
            AcsError::Rejected {
                status,
                code,
                message,
            } => SenderError::Rejected {
                status,
                code,
                message,
            },
            other => SenderError::Unavailable(other.to_string()),
        }
    }
}

/// Sends through ACS Advanced Messaging.
pub struct AcsSender {
    client: AcsClient,
    api_version: String,
    preview_api_version: String,
}

impl AcsSender {
    pub fn new(client: AcsClient, api_version: &str, preview_api_version: &str) -> Self {
        Self {
            client,
            api_version: api_version.into(),
            preview_api_version: preview_api_version.into(),
        }
    }

    /// Downloads an inbound media item (`GET /messages/streams/{id}`).
    pub async fn download_stream(&self, media_id: &str) -> Result<Bytes, SenderError> {
        let request = AcsRequest {
            method: Method::GET,
            path: format!("/messages/streams/{media_id}"),
            api_version: self.api_version.clone(),
            body: None,
            retry: Retry::Idempotent,
            repeatability: None,
        };
        Ok(self.client.send(&request).await?.body)
    }

    /// Lists the channel's templates, following `nextLink`.
    pub async fn list_templates(&self, channel_id: &str) -> Result<Vec<TemplateSpec>, SenderError> {
        let mut out = Vec::new();
        let mut path = format!("/messages/channels/{channel_id}/templates");
        let mut query = self.api_version.clone();
        for _page in 0..100 {
            let request = AcsRequest {
                method: Method::GET,
                path: path.clone(),
                // `AcsRequest` appends `?api-version=`; the rest of a nextLink query rides along.
                api_version: query.clone(),
                body: None,
                retry: Retry::Idempotent,
                repeatability: None,
            };
            let response = self.client.send(&request).await?;
            let page: TemplatePage = serde_json::from_slice(&response.body)
                .map_err(|e| SenderError::Unavailable(format!("template list: {e}")))?;
            out.extend(page.value.into_iter().filter_map(template_spec));
            let Some(next) = page.next_link.filter(|l| !l.is_empty()) else {
                break;
            };
            let Ok(url) = reqwest::Url::parse(&next) else {
                break;
            };
            path = url.path().to_owned();
            let rest: Vec<String> = url
                .query_pairs()
                .filter(|(k, _)| k != "api-version")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            query = std::iter::once(self.api_version.clone())
                .chain(rest)
                .collect::<Vec<_>>()
                .join("&");
        }
        Ok(out)
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct TemplatePage {
    #[serde(default)]
    value: Vec<TemplateItem>,
    #[serde(default)]
    next_link: Option<String>,
}

#[derive(Debug, Deserialize)]
struct TemplateItem {
    name: String,
    language: String,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    content: Value,
}

fn template_spec(item: TemplateItem) -> Option<TemplateSpec> {
    // ACS returns WhatsApp's own `components` array: the same reading as Meta's list.
    let components = item
        .content
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (body_parameters, buttons) = super::meta::templates::components_shape(components);
    let status = match item
        .status
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("approved") => TemplateStatus::Approved,
        Some("pending") => TemplateStatus::Pending,
        Some("rejected") => TemplateStatus::Rejected,
        Some("paused") => TemplateStatus::Paused,
        _ => TemplateStatus::Unknown,
    };
    Some(TemplateSpec {
        name: item.name,
        language: item.language,
        // The list does not carry the category; utility is what this service sends.
        category: TemplateCategory::Utility,
        body_parameters,
        buttons,
        status,
    })
}

#[async_trait]
impl WhatsAppSender for AcsSender {
    fn provider(&self) -> WhatsAppProvider {
        WhatsAppProvider::Acs
    }

    async fn send(&self, to: &Recipient, message: &OutboundMessage) -> Result<String, SenderError> {
        let channel = to
            .business_number
            .as_deref()
            .ok_or(SenderError::NotConfigured("ACS_WHATSAPP_CHANNEL_ID"))?;
        let (body, preview) = send_body(channel, &to.address, message);
        let version = if preview {
            &self.preview_api_version
        } else {
            &self.api_version
        };
        let mut request = AcsRequest::post_json(
            "/messages/notifications:send",
            version,
            &body,
            Retry::Repeatable,
        );
        if let OutboundMessage::Template(t) = message
            && let Some(once) = &t.idempotency
        {
            request.repeatability = Some((
                crate::acs::repeatability_id(&once.key),
                crate::acs::imf_date(once.first_sent),
            ));
        }
        let response = self.client.send(&request).await?;
        let result: SendResult = serde_json::from_slice(&response.body)
            .map_err(|e| SenderError::Unavailable(format!("unreadable send result: {e}")))?;
        result
            .receipts
            .into_iter()
            .next()
            .map(|r| r.message_id)
            .ok_or_else(|| SenderError::Unavailable("send result has no receipt".into()))
    }

    /// One more try after 401/404: the stream may not be ready yet (transient failures are
    /// already retried by the client).
    async fn download_media(
        &self,
        _via: &Route,
        media: &InboundMedia,
    ) -> Result<FetchedMedia, SenderError> {
        // The id comes from outside and becomes a signed request path.
        let id = media.media_id.trim();
        if id.is_empty()
            || !id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(SenderError::Unavailable(
                "media id is not an ACS stream id".into(),
            ));
        }
        let bytes = match self.download_stream(id).await {
            Err(SenderError::Rejected {
                status: 401 | 404, ..
            }) => self.download_stream(id).await?,
            other => other?,
        };
        Ok(FetchedMedia {
            bytes,
            mime_type: media.mime_type.clone(),
        })
    }

    // `mark_read`: ACS has read receipts only in a preview api-version (wire-formats 3.4.5);
    // the default (nothing) stands until that is GA.
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::template::TemplateButton;

    fn event(event_type: &str, data: Value) -> GridEvent {
        GridEvent::new("ev-1", event_type, &data)
    }

    #[test]
    fn received_text_with_either_timestamp_spelling() {
        for field in ["receivedTimestamp", "receivedTimeStamp"] {
            let e = event(
                RECEIVED,
                json!({"content":"Hello","channelType":"whatsapp","messageType":"text","messageId":"m1",
                       "from":"14254360097","to":"chan-1", field:"2023-07-06T18:30:19+00:00"}),
            );
            let AcsEvent::Received(m) = parse_event(&e).unwrap() else {
                panic!("received")
            };
            assert_eq!(m.customer.as_str(), "+14254360097");
            assert_eq!(m.business_number.as_deref(), Some("chan-1"));
            assert_eq!(m.received_at.to_rfc3339(), "2023-07-06T18:30:19+00:00");
            assert_eq!(
                m.content,
                InboundContent::Text {
                    text: "Hello".into()
                }
            );
        }
    }

    #[test]
    fn hidden_number_uses_the_bsuid() {
        let e = event(
            RECEIVED,
            json!({"messageType":"text","content":"hi","from":"","fromBSUID":"US.13491208655302741918","to":"c"}),
        );
        let AcsEvent::Received(m) = parse_event(&e).unwrap() else {
            panic!()
        };
        assert_eq!(m.customer.bsuid(), Some("US.13491208655302741918"));
        assert_eq!(m.message_id, "ev-1");
    }

    #[test]
    fn every_received_kind_and_unknown_is_kept() {
        let cases = [
            (
                json!({"messageType":"image","media":{"mimeType":"image/jpeg","id":"g1","caption":"c"}}),
                "image",
            ),
            (
                json!({"messageType":"document","media":{"mimeType":"application/pdf","id":"g2","fileName":"x.pdf"}}),
                "document",
            ),
            (
                json!({"messageType":"button","button":{"text":"Yes","payload":"p"}}),
                "button",
            ),
            (
                json!({"messageType":"interactive","interactive":{"type":"listReply","listReply":{"id":"a","title":"A","description":"d"}}}),
                "list_reply",
            ),
            (
                json!({"messageType":"interactive","interactive":{"type":"buttonReply","buttonReply":{"id":"a","title":"A"}}}),
                "button_reply",
            ),
            (
                json!({"messageType":"reaction","reaction":{"messageId":"x","emoji":"👍"}}),
                "reaction",
            ),
            (json!({"messageType":"location"}), "unknown"),
        ];
        for (mut data, kind) in cases {
            data["from"] = json!("14254360097");
            let AcsEvent::Received(m) = parse_event(&event(RECEIVED, data)).unwrap() else {
                panic!()
            };
            assert_eq!(m.content.kind(), kind);
        }
    }

    #[test]
    fn status_with_error_code_and_any_casing() {
        let e = event(
            STATUS_UPDATED,
            json!({"messageId":"m9","status":"Failed","to":"14254360097","receivedTimestamp":"2023-07-06T18:42:28+00:00",
                   "error":{"channelCode":"131047","channelMessage":"Re-engagement"}}),
        );
        let AcsEvent::Status(s) = parse_event(&e).unwrap() else {
            panic!()
        };
        assert_eq!(s.status, DeliveryStatus::Failed);
        assert!(s.closes_window());
        assert_eq!(s.customer.unwrap().as_str(), "+14254360097");
        let warn = event(STATUS_UPDATED, json!({"messageId":"m9","status":"warning"}));
        assert_eq!(parse_event(&warn).unwrap(), AcsEvent::NoEffect);
        assert_eq!(
            parse_event(&event("Other.Type", json!({}))).unwrap(),
            AcsEvent::Unknown
        );
    }

    #[test]
    fn template_header_and_url_button_bind_in_button_order() {
        let msg = OutboundMessage::Template(crate::domain::TemplateMessage {
            name: "order_update".into(),
            language: "en_US".into(),
            body: vec!["Ada".into()],
            quick_replies: vec!["yes".into()],
            header: Some(TemplateHeader::Document {
                url: "https://example.com/i.pdf".into(),
                file_name: Some("invoice.pdf".into()),
            }),
            url_buttons: vec![crate::domain::UrlButton {
                index: 1,
                text: "A12345".into(),
            }],
            idempotency: None,
        });
        let (body, _) = send_body("chan", "14250000000", &msg);
        assert_eq!(
            body["template"],
            json!({"name":"order_update","language":"en_US",
                "values":[{"kind":"document","url":"https://example.com/i.pdf","fileName":"invoice.pdf","name":"header1"},
                          {"kind":"text","name":"body1","text":"Ada"},
                          {"kind":"quickAction","name":"button1","payload":"yes"},
                          {"kind":"text","name":"url2","text":"A12345"}],
                "bindings":{"kind":"whatsApp","header":[{"refValue":"header1"}],"body":[{"refValue":"body1"}],
                            "buttons":[{"subType":"quickReply","refValue":"button1"},{"subType":"url","refValue":"url2"}]}})
        );
    }

    #[test]
    fn template_body_binds_values_by_name() {
        let msg = OutboundMessage::Template(crate::domain::TemplateMessage {
            name: "conversation_continuation".into(),
            language: "en_US".into(),
            body: vec!["Ada".into(), "Billing".into()],
            quick_replies: vec!["h-1".into()],
            header: None,
            url_buttons: Vec::new(),
            idempotency: None,
        });
        let (body, preview) = send_body("chan", "14250000000", &msg);
        assert!(!preview);
        assert_eq!(
            body,
            json!({"channelRegistrationId":"chan","to":["14250000000"],"kind":"template",
              "template":{"name":"conversation_continuation","language":"en_US",
                "values":[{"kind":"text","name":"body1","text":"Ada"},{"kind":"text","name":"body2","text":"Billing"},
                          {"kind":"quickAction","name":"button1","payload":"h-1"}],
                "bindings":{"kind":"whatsApp","body":[{"refValue":"body1"},{"refValue":"body2"}],
                            "buttons":[{"subType":"quickReply","refValue":"button1"}]}}})
        );
    }

    #[test]
    fn template_list_items_become_specs() {
        let item: TemplateItem = serde_json::from_value(json!({"name":"conversation_continuation","language":"en_US","status":"approved","kind":"whatsApp",
            "content":[{"type":"BODY","text":"Hi {{1}}, about {{2}}"},{"type":"BUTTONS","buttons":[{"type":"QUICK_REPLY","text":"Continue"}]}]})).unwrap();
        let spec = template_spec(item).unwrap();
        assert_eq!(spec.body_parameters, 2);
        assert_eq!(spec.buttons, vec![TemplateButton::QuickReply]);
        assert_eq!(spec.status, TemplateStatus::Approved);
    }

    #[test]
    fn a_text_reply_context_is_not_sent_to_acs() {
        let reply = OutboundMessage::Text {
            text: "Yes".into(),
            reply_to: Some("wamid.in".into()),
        };
        let (with, _) = send_body("channel", "14254360097", &reply);
        let (without, _) = send_body("channel", "14254360097", &OutboundMessage::text("Yes"));
        assert_eq!(with, without, "ACS has no reply context: {with}");
        assert_eq!(with["content"], "Yes");
    }
}
