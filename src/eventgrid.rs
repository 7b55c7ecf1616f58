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
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::config::Secret;

pub const VALIDATION_EVENT: &str = "Microsoft.EventGrid.SubscriptionValidationEvent";

/// One event of a delivery, whichever schema it came in.
#[derive(Debug, Clone, PartialEq)]
pub struct GridEvent {
    pub id: String,
    pub event_type: String,
    pub subject: Option<String>,
    pub time: Option<DateTime<Utc>>,
    pub data: Value,
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

/// Parses a delivery body.
pub fn parse(body: &[u8]) -> Result<Delivery, EnvelopeError> {
    let value: Value =
        serde_json::from_slice(body).map_err(|e| EnvelopeError::Json(e.to_string()))?;
    let items = match value {
        Value::Array(items) => items,
        object @ Value::Object(_) => vec![object],
        _ => return Err(EnvelopeError::NotEvents),
    };
    let mut events = Vec::with_capacity(items.len());
    for (index, item) in items.into_iter().enumerate() {
        let Value::Object(mut fields) = item else {
            return Err(EnvelopeError::NotEvents);
        };
        // Event Grid schema says `eventType`/`eventTime`; CloudEvents say `type`/`time`.
        let event_type =
            take_str(&mut fields, &["eventType", "type"]).ok_or(EnvelopeError::MissingField {
                index,
                field: "eventType",
            })?;
        let id = take_str(&mut fields, &["id"])
            .ok_or(EnvelopeError::MissingField { index, field: "id" })?;
        let time = take_str(&mut fields, &["eventTime", "time"])
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| t.with_timezone(&Utc));
        let subject = take_str(&mut fields, &["subject"]);
        let data = fields.remove("data").unwrap_or(Value::Null);
        if event_type.eq_ignore_ascii_case(VALIDATION_EVENT) {
            let code = data.get("validationCode").and_then(Value::as_str).ok_or(
                EnvelopeError::MissingField {
                    index,
                    field: "data.validationCode",
                },
            )?;
            return Ok(Delivery::Validation {
                code: code.to_owned(),
            });
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

fn take_str(fields: &mut serde_json::Map<String, Value>, names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| match fields.remove(*name) {
        Some(Value::String(s)) if !s.is_empty() => Some(s),
        _ => None,
    })
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
        assert_eq!(events[0].data["content"], "Hello");
        assert_eq!(
            events[0].subject.as_deref(),
            Some("advancedMessage/sender/1/recipient/c")
        );
        assert!(events[0].time.is_some());
        assert_eq!(events[1].data["status"], "Sent");
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
        assert_eq!(events[0].data["callConnectionId"], "abc");
        let many = br#"[{"id":"c1","type":"A","specVersion":"1.0"},{"id":"c2","type":"B"}]"#;
        let Delivery::Events(events) = parse(many).unwrap() else {
            panic!("events")
        };
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].data, Value::Null);
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
