//! Event Grid webhook deliveries: the envelope shared by every Event Grid route.
//!
//! Accepts the Event Grid schema (always a JSON array) and CloudEvents 1.0 (one object or an
//! array), leniently: unknown fields are ignored and envelope names are matched the way the
//! services actually spell them. What is inside `data` is left to the adapter that knows the
//! event type. Also: the subscription validation handshake, the CloudEvents `OPTIONS`
//! abuse-protection handshake, and the `?code=` shared-secret check (constant time).

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use std::borrow::Cow;

use serde_json::Value;
use serde_json::value::RawValue;
use subtle::ConstantTimeEq;

use crate::config::Secret;

pub const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

/// One event of a delivery, whichever schema it came in.
#[derive(Debug, Clone)]
pub struct GridEvent {
    pub id: String,
    pub event_type: String,
    pub subject: Option<String>,
    pub time: Option<DateTime<Utc>>,
    /// `data` as it came (`null` when absent), read by the adapter that knows the event type:
    /// [`Self::data_as`] straight into its typed struct, or [`Self::data_value`].
    pub data: Box<RawValue>,
}

impl GridEvent {
    /// An event with the given `data` (for tests and simulators).
    pub fn new(id: &str, event_type: &str, data: &Value) -> Self {
        Self {
            id: id.to_owned(),
            event_type: event_type.to_owned(),
            subject: None,
            time: None,
            data: serde_json::value::to_raw_value(data).expect("a Value always serialises"),
        }
    }

    /// `data` read into `T`, without building a `Value` tree first.
    pub fn data_as<'a, T: serde::Deserialize<'a>>(&'a self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.data.get())
    }

    /// `data` as a `Value`, for readers that look fields up by name.
    pub fn data_value(&self) -> Value {
        self.data_as().unwrap_or(Value::Null)
    }
}

impl PartialEq for GridEvent {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.event_type == other.event_type
            && self.subject == other.subject
            && self.time == other.time
            && self.data.get() == other.data.get()
    }
}

/// What a delivery asks of us.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Answer 200 `{"validationResponse": code}`.
    Validation {
        code: String,
    },
    Events(Vec<GridEvent>),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvelopeError {
    #[error("body is not valid JSON: {0}")]
    Json(String),
    #[error("body is neither an Event Grid event array nor a CloudEvent")]
    NotEvents,
    #[error("event {index} has no {field}")]
    MissingField { index: usize, field: &'static str },
}

/// The envelope's fields as they came, borrowed from the body: a field of the wrong JSON type
/// reads as absent, like a missing one. `data` is kept as raw JSON for the adapter that knows
/// its shape, so a delivery is parsed once, into typed fields, and never into a `Value` tree
/// (at thousands of deliveries a second the tree and its copies were most of the parse).
#[derive(serde::Deserialize)]
struct Envelope<'a> {
    #[serde(default, borrow, rename = "eventType")]
    event_type: Option<&'a RawValue>,
    /// CloudEvents' name for `eventType`.
    #[serde(default, borrow, rename = "type")]
    kind: Option<&'a RawValue>,
    #[serde(default, borrow)]
    id: Option<&'a RawValue>,
    #[serde(default, borrow, rename = "eventTime")]
    event_time: Option<&'a RawValue>,
    /// CloudEvents' name for `eventTime`.
    #[serde(default, borrow)]
    time: Option<&'a RawValue>,
    #[serde(default, borrow)]
    subject: Option<&'a RawValue>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
}

/// A non-empty JSON string's text; `None` for anything else.
fn text(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?.get();
    if !raw.starts_with('"') {
        return None;
    }
    serde_json::from_str::<Cow<'_, str>>(raw)
        .ok()
        .filter(|s| !s.is_empty())
        .map(Cow::into_owned)
}

/// Parses a delivery body.
pub fn parse(body: &[u8]) -> Result<Delivery, EnvelopeError> {
    let json = |e: serde_json::Error| EnvelopeError::Json(e.to_string());
    let items: Vec<&RawValue> = match body.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'[') => serde_json::from_slice(body).map_err(json)?,
        Some(b'{') => vec![serde_json::from_slice(body).map_err(json)?],
        // Anything else is either not JSON or not events: let the parser say which.
        _ => {
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(json)?;
            return Err(EnvelopeError::NotEvents);
        }
    };
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        if !item.get().starts_with('{') {
            return Err(EnvelopeError::NotEvents);
        }
        let fields: Envelope = serde_json::from_str(item.get()).map_err(json)?;
        // Event Grid schema says `eventType`/`eventTime`; CloudEvents say `type`/`time`.
        let event_type = text(fields.event_type)
            .or_else(|| text(fields.kind))
            .ok_or(EnvelopeError::MissingField {
                index,
                field: "eventType",
            })?;
        let id = text(fields.id).ok_or(EnvelopeError::MissingField { index, field: "id" })?;
        let time = text(fields.event_time)
            .or_else(|| text(fields.time))
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc));
        let subject = text(fields.subject);
        let data = fields.data.map_or_else(
            || RawValue::from_string("null".to_owned()).expect("null is JSON"),
            RawValue::to_owned,
        );
        if event_type.eq_ignore_ascii_case(VALIDATION_EVENT) {
            #[derive(serde::Deserialize)]
            struct Validation {
                #[serde(rename = "validationCode")]
                code: Option<String>,
            }
            // A code that is missing or not a string: the whole read fails, which is the same.
            let code = serde_json::from_str::<Validation>(data.get())
                .ok()
                .and_then(|v| v.code)
                .ok_or(EnvelopeError::MissingField {
                    index,
                    field: "data.validationCode",
                })?;
            return Ok(Delivery::Validation { code });
        }
        events.push(GridEvent {
            id,
            event_type,
            subject,
            time,
            data,
        });
    }
    Ok(Delivery::Events(events))
}

/// The validation handshake answer.
pub fn validation_response(code: &str) -> Response {
    (
        StatusCode::OK,
        axum::Json(serde_json::json!({ "validationResponse": code })),
    )
        .into_response()
}

/// The CloudEvents abuse-protection handshake (`OPTIONS` with `WebHook-Request-Origin`).
pub fn options_response(headers: &HeaderMap) -> Response {
    let origin = headers
        .get("webhook-request-origin")
        .cloned()
        .unwrap_or_else(|| HeaderValue::from_static("*"));
    let mut response = StatusCode::OK.into_response();
    let h = response.headers_mut();
    h.insert("webhook-allowed-origin", origin);
    h.insert("webhook-allowed-rate", HeaderValue::from_static("*"));
    h.insert(header::ALLOW, HeaderValue::from_static("POST, OPTIONS"));
    response
}

/// Checks the `?code=` secret in constant time. The setting may hold two secrets separated by
/// a comma while one is rotated (Event Grid drops deliveries answered 401, so the old one must
/// keep working until every subscription has the new one). With no secret configured,
/// everything passes (the service warns about it at start-up).
pub fn authorised(expected: Option<&Secret<String>>, presented: Option<&str>) -> bool {
    let Some(secret) = expected else {
        return true;
    };
    let Some(code) = presented else {
        return false;
    };
    let code = code.as_bytes();
    // Every candidate is compared, so the time taken does not tell which one matched.
    secret
        .expose()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .fold(false, |found, candidate| {
            let candidate = candidate.as_bytes();
            found | (candidate.len() == code.len() && bool::from(candidate.ct_eq(code)))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_grid_array_with_several_events() {
        let body = br#"[
          {"id":"e1","topic":"/subscriptions/x","subject":"advancedMessage/sender/1/recipient/c",
           "eventType":"Microsoft.Communication.AdvancedMessageReceived","eventTime":"2024-12-04T23:53:29.3079089Z",
           "data":{"content":"Hello"},"dataVersion":"1.0","metadataVersion":"1"},
          {"id":"e2","eventType":"Microsoft.Communication.AdvancedMessageDeliveryStatusUpdated",
           "eventTime":"2024-12-04T23:53:30Z","data":{"status":"Sent"},"extra":true}
        ]"#;
        let Delivery::Events(events) = parse(body).unwrap() else {
            panic!("events")
        };
        assert_eq!(events.len(), 2);
        assert_eq!(events[0].id, "e1");
        assert_eq!(
            events[0].event_type,
            "Microsoft.Communication.AdvancedMessageReceived"
        );
        assert_eq!(events[0].data_value()["content"], "Hello");
        assert_eq!(
            events[0].subject.as_deref(),
            Some("advancedMessage/sender/1/recipient/c")
        );
        assert!(events[0].time.is_some());
        assert_eq!(events[1].data_value()["status"], "Sent");
    }

    #[test]
    fn cloud_events_single_object_and_array() {
        let one = br#"{"id":"c1","source":"/x","type":"Microsoft.Communication.CallConnected","specversion":"1.0",
                       "time":"2022-08-12T03:13:25.0252763+00:00","data":{"callConnectionId":"abc"}}"#;
        let Delivery::Events(events) = parse(one).unwrap() else {
            panic!("events")
        };
        assert_eq!(
            events[0].event_type,
            "Microsoft.Communication.CallConnected"
        );
        assert_eq!(events[0].data_value()["callConnectionId"], "abc");
        let many = br#"[{"id":"c1","type":"A","specVersion":"1.0"},{"id":"c2","type":"B"}]"#;
        let Delivery::Events(events) = parse(many).unwrap() else {
            panic!("events")
        };
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data_value(), Value::Null);
    }

    #[test]
    fn validation_handshake() {
        let body = br#"[{"id":"2d17","topic":"/subscriptions/x","subject":"",
          "data":{"validationCode":"512d38b6-c7b8-40c8-89fe-f46f9e9622b6","validationUrl":"https://rp/validate"},
          "eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","eventTime":"2018-01-25T22:12:19.4556811Z",
          "metadataVersion":"1","dataVersion":"1"}]"#;
        assert_eq!(
            parse(body).unwrap(),
            Delivery::Validation {
                code: "512d38b6-c7b8-40c8-89fe-f46f9e9622b6".into()
            }
        );
    }

    #[test]
    fn malformed_bodies_are_errors() {
        assert!(matches!(parse(b"{not json"), Err(EnvelopeError::Json(_))));
        assert_eq!(parse(b"42"), Err(EnvelopeError::NotEvents));
        assert_eq!(parse(b"[1]"), Err(EnvelopeError::NotEvents));
        assert_eq!(
            parse(br#"[{"eventType":"X"}]"#),
            Err(EnvelopeError::MissingField {
                index: 0,
                field: "id"
            })
        );
        assert_eq!(
            parse(br#"[{"id":"1","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{}}]"#),
            Err(EnvelopeError::MissingField { index: 0, field: "data.validationCode" })
        );
        assert_eq!(parse(b"[]"), Ok(Delivery::Events(vec![])));
        assert!(matches!(parse(b"[] trailing"), Err(EnvelopeError::Json(_))));
        assert!(matches!(parse(b"  "), Err(EnvelopeError::Json(_))));
        // A key twice in one envelope is ambiguous: refused rather than guessed at.
        assert!(matches!(
            parse(br#"{"id":"1","id":"2","eventType":"X"}"#),
            Err(EnvelopeError::Json(_))
        ));
    }

    #[test]
    fn fields_of_the_wrong_type_read_as_absent() {
        let body = br#" [{"id":"e1","eventType":7,"type":"B","subject":{"a":1},"eventTime":"soon",
            "time":"2025-01-01T00:00:00Z","extra":[1,2],"data":[1,"x"]}]"#;
        let Delivery::Events(events) = parse(body).unwrap() else {
            panic!("events")
        };
        let event = &events[0];
        assert_eq!(event.event_type, "B");
        assert_eq!(event.subject, None);
        // `eventTime` is a string but not a time: read as absent, like a missing one; the
        // CloudEvents `time` is not consulted for it.
        assert_eq!(event.time, None);
        assert_eq!(event.data_value(), serde_json::json!([1, "x"]));
        assert_eq!(
            parse(br#"[{"id":"","eventType":"X"}]"#),
            Err(EnvelopeError::MissingField {
                index: 0,
                field: "id"
            })
        );
    }

    #[test]
    fn secret_check() {
        let secret = Secret::new("s3cret".to_string());
        assert!(authorised(Some(&secret), Some("s3cret")));
        assert!(!authorised(Some(&secret), Some("s3cre")));
        assert!(!authorised(Some(&secret), Some("s3cret!")));
        assert!(!authorised(Some(&secret), None));
        assert!(authorised(None, None));
        let rotating = Secret::new("old-one, new-one".to_string());
        assert!(authorised(Some(&rotating), Some("old-one")));
        assert!(authorised(Some(&rotating), Some("new-one")));
        assert!(!authorised(Some(&rotating), Some("old-one, new-one")));
        assert!(!authorised(Some(&rotating), Some("")));
    }

    #[test]
    fn options_handshake_echoes_the_origin() {
        let mut headers = HeaderMap::new();
        headers.insert(
            "webhook-request-origin",
            HeaderValue::from_static("eventgrid.azure.net"),
        );
        let r = options_response(&headers);
        assert_eq!(r.status(), 200);
        assert_eq!(r.headers()["webhook-allowed-origin"], "eventgrid.azure.net");
        assert_eq!(r.headers()["webhook-allowed-rate"], "*");
    }
}
