//! Call Automation wire formats for what ACS tells us: the `IncomingCall` Event Grid event and
//! the callback CloudEvents. Only this module (and `client`) knows their JSON; the rest of the
//! service sees [`IncomingCall`] and [`CallEvent`].

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::CustomerId;
use crate::eventgrid::GridEvent;

pub const INCOMING_CALL: &str = "Microsoft.Communication.IncomingCall";

/// An incoming call, as much of it as the engine needs.
#[derive(Debug, Clone)]
pub struct IncomingCall {
    pub event_id: String,
    pub correlation_id: Option<String>,
    pub incoming_call_context: String,
    pub caller: CustomerId,
    pub caller_display_name: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IncomingCallError {
    #[error("IncomingCall event {0} has no incomingCallContext")]
    NoContext(String),
    #[error("IncomingCall event {0} has no usable caller identity")]
    NoCaller(String),
}

/// Reads an `IncomingCall` event; `None` for any other event type.
pub fn incoming_call(event: &GridEvent) -> Option<Result<IncomingCall, IncomingCallError>> {
    if !event.event_type.eq_ignore_ascii_case(INCOMING_CALL) {
        return None;
    }
    let data = &event.data_value();
    let Some(context) = data
        .get("incomingCallContext")
        .and_then(Value::as_str)
        .filter(|c| !c.is_empty())
    else {
        return Some(Err(IncomingCallError::NoContext(event.id.clone())));
    };
    let from = data.get("from");
    let phone = from
        .and_then(|f| f.get("phoneNumber"))
        .and_then(|p| p.get("value"))
        .and_then(Value::as_str)
        .and_then(|p| CustomerId::parse_phone(p).ok());
    let caller = phone.or_else(|| {
        from.and_then(|f| f.get("rawId"))
            .and_then(Value::as_str)
            .and_then(|raw| CustomerId::from_acs_raw_id(raw).ok())
    });
    let Some(caller) = caller else {
        return Some(Err(IncomingCallError::NoCaller(event.id.clone())));
    };
    Some(Ok(IncomingCall {
        event_id: event.id.clone(),
        correlation_id: data
            .get("correlationId")
            .and_then(Value::as_str)
            .filter(|c| !c.is_empty())
            .map(str::to_owned),
        incoming_call_context: context.to_owned(),
        caller,
        caller_display_name: data
            .get("callerDisplayName")
            .and_then(Value::as_str)
            .filter(|n| !n.trim().is_empty())
            .map(str::to_owned),
    }))
}

/// A Call Automation callback, in the engine's terms. Serialisable so that it can be routed to
/// the replica holding the call's WebSocket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    pub id: String,
    pub call_connection_id: Option<String>,
    pub operation_context: Option<String>,
    pub kind: CallEventKind,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CallEventKind {
    Connected,
    Disconnected,
    PlayStarted,
    PlayCompleted,
    PlayFailed {
        reason: String,
    },
    PlayCanceled,
    /// Media streaming or transcription failed; `what` says which, `reason` the details.
    MediaFailed {
        what: String,
        reason: String,
    },
    ParticipantsUpdated {
        count: usize,
    },
    Other {
        event_type: String,
    },
}

/// Reads a callback event (CloudEvents envelope already parsed).
pub fn call_event(event: &GridEvent) -> CallEvent {
    let data = &event.data_value();
    let field = |name: &str| {
        data.get(name)
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let short = event
        .event_type
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    let result = || {
        let info = data.get("resultInformation");
        let code = info.and_then(|i| i.get("code")).and_then(Value::as_i64);
        let sub = info.and_then(|i| i.get("subCode")).and_then(Value::as_i64);
        let message = info
            .and_then(|i| i.get("message"))
            .and_then(Value::as_str)
            .unwrap_or_default();
        format!(
            "{}/{} {}",
            code.map(|c| c.to_string()).unwrap_or_default(),
            sub.map(|c| c.to_string()).unwrap_or_default(),
            message
        )
        .trim()
        .to_owned()
    };
    let kind = match short.as_str() {
        "callconnected" => CallEventKind::Connected,
        "calldisconnected" => CallEventKind::Disconnected,
        "playstarted" => CallEventKind::PlayStarted,
        "playcompleted" => CallEventKind::PlayCompleted,
        "playfailed" => CallEventKind::PlayFailed { reason: result() },
        "playcanceled" | "playcancelled" => CallEventKind::PlayCanceled,
        "mediastreamingfailed" => CallEventKind::MediaFailed {
            what: "media_streaming".into(),
            reason: update_details(data, "mediaStreamingUpdate", "mediaStreamingStatusDetails")
                .unwrap_or_else(result),
        },
        "transcriptionfailed" => CallEventKind::MediaFailed {
            what: "transcription".into(),
            reason: update_details(data, "transcriptionUpdate", "transcriptionStatusDetails")
                .unwrap_or_else(result),
        },
        "participantsupdated" => CallEventKind::ParticipantsUpdated {
            count: data
                .get("participants")
                .and_then(Value::as_array)
                .map_or(0, Vec::len),
        },
        _ => CallEventKind::Other {
            event_type: event.event_type.clone(),
        },
    };
    CallEvent {
        id: event.id.clone(),
        call_connection_id: field("callConnectionId"),
        operation_context: field("operationContext"),
        kind,
    }
}

fn update_details(data: &Value, update: &str, details: &str) -> Option<String> {
    data.get(update)
        .and_then(|u| u.get(details))
        .and_then(Value::as_str)
        .map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eventgrid::{Delivery, parse};

    fn events(body: &str) -> Vec<GridEvent> {
        match parse(body.as_bytes()).unwrap() {
            Delivery::Events(e) => e,
            Delivery::Validation { .. } => panic!("events"),
        }
    }

    #[test]
    fn incoming_call_from_a_phone_and_from_an_acs_user() {
        let e = events(
            r#"[{"id":"d554","topic":"/x","subject":"/caller/4:+16041234567/recipient/4:+18331234567",
            "data":{"to":{"kind":"phoneNumber","rawId":"4:+18331234567","phoneNumber":{"value":"+18331234567"}},
            "from":{"kind":"PhoneNumber","rawId":"4:+16041234567","phoneNumber":{"value":"+16041234567"}},
            "serverCallId":"aHR0","callerDisplayName":"","incomingCallContext":"eyJhbGciOi.eyJjYyI6","correlationId":"corr-1"},
            "eventType":"Microsoft.Communication.IncomingCall","dataVersion":"1.0","metadataVersion":"1","eventTime":"2023-04-04T17:18:42.5542219Z"}]"#,
        );
        let call = incoming_call(&e[0]).unwrap().unwrap();
        assert_eq!(call.caller.e164(), Some("+16041234567"));
        assert_eq!(call.correlation_id.as_deref(), Some("corr-1"));
        assert_eq!(call.incoming_call_context, "eyJhbGciOi.eyJjYyI6");
        assert_eq!(call.caller_display_name, None);

        let e = events(
            r#"[{"id":"u1","eventType":"Microsoft.Communication.IncomingCall",
            "data":{"from":{"kind":"communicationUser","rawId":"8:acs:abc_123","communicationUser":{"id":"8:acs:abc_123"}},
            "incomingCallContext":"ctx"}}]"#,
        );
        let call = incoming_call(&e[0]).unwrap().unwrap();
        assert!(call.caller.as_str().contains("8:acs:abc_123"));
        let e = events(
            r#"[{"id":"n","eventType":"Microsoft.Communication.IncomingCall","data":{"from":{}}}]"#,
        );
        assert_eq!(
            incoming_call(&e[0]).unwrap().unwrap_err(),
            IncomingCallError::NoContext("n".into())
        );
        let e = events(r#"[{"id":"o","eventType":"Microsoft.Communication.CallEnded","data":{}}]"#);
        assert!(incoming_call(&e[0]).is_none());
    }

    #[test]
    fn callback_events() {
        let e = events(
            r#"[{"id":"1","source":"calling/callConnections/c1","type":"Microsoft.Communication.CallConnected",
                 "data":{"callConnectionId":"c1","resultInformation":{"code":200,"subCode":0}},"specversion":"1.0"},
                {"id":"2","type":"Microsoft.Communication.PlayCompleted","data":{"callConnectionId":"c1","operationContext":"t1:0"}},
                {"id":"3","type":"Microsoft.Communication.PlayFailed","data":{"callConnectionId":"c1","resultInformation":{"code":400,"subCode":8535,"message":"bad"}}},
                {"id":"4","type":"Microsoft.Communication.MediaStreamingFailed","data":{"callConnectionId":"c1",
                   "mediaStreamingUpdate":{"contentType":"Audio","mediaStreamingStatus":"mediaStreamingFailed","mediaStreamingStatusDetails":"initialWebSocketConnectionFailed"}}},
                {"id":"5","type":"Microsoft.Communication.TranscriptionFailed","data":{"callConnectionId":"c1","resultInformation":{"code":500,"subCode":8581,"message":"x"}}},
                {"id":"6","type":"Microsoft.Communication.ParticipantsUpdated","data":{"participants":[{},{}]}},
                {"id":"7","type":"Microsoft.Communication.RecordingStateChanged","data":{}}]"#,
        );
        let kinds: Vec<_> = e.iter().map(|e| call_event(e).kind).collect();
        assert_eq!(kinds[0], CallEventKind::Connected);
        assert_eq!(kinds[1], CallEventKind::PlayCompleted);
        assert_eq!(call_event(&e[1]).operation_context.as_deref(), Some("t1:0"));
        assert_eq!(call_event(&e[0]).call_connection_id.as_deref(), Some("c1"));
        assert_eq!(
            kinds[2],
            CallEventKind::PlayFailed {
                reason: "400/8535 bad".into()
            }
        );
        assert_eq!(
            kinds[3],
            CallEventKind::MediaFailed {
                what: "media_streaming".into(),
                reason: "initialWebSocketConnectionFailed".into()
            }
        );
        assert_eq!(
            kinds[4],
            CallEventKind::MediaFailed {
                what: "transcription".into(),
                reason: "500/8581 x".into()
            }
        );
        assert_eq!(kinds[5], CallEventKind::ParticipantsUpdated { count: 2 });
        assert!(matches!(kinds[6], CallEventKind::Other { .. }));
    }
}
