//! The tools an agent may call, their JSON schemas (what an LLM is shown), and their parsing
//! into typed requests (what the engine runs). The schemas are the contract with the model;
//! parsing is lenient about extra fields and strict about what the engine needs.

use serde::Deserialize;
use serde_json::{Value, json};

use super::ToolCall;

pub const CHECK_WAIT_TIME: &str = "check_wait_time";
pub const OFFER_WHATSAPP_HANDOFF: &str = "offer_whatsapp_handoff";
pub const HANDOFF_TO_WHATSAPP: &str = "handoff_to_whatsapp";
pub const UPDATE_COLLECTED_DATA: &str = "update_collected_data";
pub const END_CALL: &str = "end_call";

/// A tool as the model sees it: name, what it is for, JSON schema of its arguments.
#[derive(Debug, Clone, PartialEq)]
pub struct ToolSpec {
    pub name: &'static str,
    pub description: &'static str,
    pub parameters: Value,
}

/// The tools offered on each channel. WhatsApp has no call to end or hand off.
pub fn tools_for(channel: crate::domain::Channel) -> Vec<ToolSpec> {
    let mut tools = vec![
        ToolSpec {
            name: CHECK_WAIT_TIME,
            description: "Get the current estimated wait, in seconds, before a human agent is free.",
            parameters: json!({"type": "object", "properties": {}, "additionalProperties": false}),
        },
        ToolSpec {
            name: UPDATE_COLLECTED_DATA,
            description: "Record facts learned about the customer or their issue (account verified, issue type, address, ...). Values replace earlier ones with the same key.",
            parameters: json!({
                "type": "object",
                "properties": {
                    "data": {
                        "type": "object",
                        "description": "Facts by name, e.g. {\"issue_type\": \"power outage\", \"address\": \"123 Oak St\"}",
                        "additionalProperties": true
                    }
                },
                "required": ["data"],
                "additionalProperties": false
            }),
        },
    ];
    if channel == crate::domain::Channel::Voice {
        tools.extend([
            ToolSpec {
                name: OFFER_WHATSAPP_HANDOFF,
                description: "Record that you offered to continue the conversation on WhatsApp. Nothing is sent; ask the caller and wait for an explicit yes.",
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "reason": {"type": "string", "description": "Why the offer is made, e.g. long wait."}
                    },
                    "additionalProperties": false
                }),
            },
            ToolSpec {
                name: HANDOFF_TO_WHATSAPP,
                description: "Move the conversation to WhatsApp. Call ONLY after the caller explicitly said yes to continuing on WhatsApp. Sends them a WhatsApp message with a summary of this call, then the call ends.",
                parameters: json!({
                    "type": "object",
                    "properties": {
                        "consent_evidence": {"type": "string", "description": "The caller's own words agreeing, verbatim."},
                        "phone_number": {"type": "string", "description": "WhatsApp number in E.164, only if the caller gave one different from the number they call from."}
                    },
                    "required": ["consent_evidence"],
                    "additionalProperties": false
                }),
            },
            ToolSpec {
                name: END_CALL,
                description: "End the call after saying goodbye.",
                parameters: json!({
                    "type": "object",
                    "properties": {"reason": {"type": "string"}},
                    "additionalProperties": false
                }),
            },
        ]);
    }
    tools
}

/// A tool call, parsed.
#[derive(Debug, Clone, PartialEq)]
pub enum ToolRequest {
    CheckWaitTime,
    OfferWhatsAppHandoff {
        reason: Option<String>,
    },
    HandoffToWhatsApp {
        consent_evidence: String,
        phone_number: Option<String>,
    },
    UpdateCollectedData {
        data: serde_json::Map<String, Value>,
    },
    EndCall {
        reason: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ToolParseError {
    #[error("unknown tool `{0}`")]
    Unknown(String),
    #[error("bad arguments for `{tool}`: {problem}")]
    BadArguments { tool: String, problem: String },
}

impl ToolRequest {
    pub fn parse(call: &ToolCall) -> Result<Self, ToolParseError> {
        // Models sometimes send arguments as a JSON string rather than an object.
        let args = match &call.arguments {
            Value::String(raw) => serde_json::from_str(raw).unwrap_or(Value::Null),
            other => other.clone(),
        };
        let args = if args.is_null() { json!({}) } else { args };
        let bad = |problem: String| ToolParseError::BadArguments {
            tool: call.name.clone(),
            problem,
        };
        #[derive(Deserialize)]
        struct Reason {
            reason: Option<String>,
        }
        #[derive(Deserialize)]
        struct Handoff {
            consent_evidence: Option<String>,
            phone_number: Option<String>,
        }
        #[derive(Deserialize)]
        struct Collected {
            data: serde_json::Map<String, Value>,
        }
        match call.name.as_str() {
            CHECK_WAIT_TIME => Ok(Self::CheckWaitTime),
            OFFER_WHATSAPP_HANDOFF => {
                let r: Reason = serde_json::from_value(args).map_err(|e| bad(e.to_string()))?;
                Ok(Self::OfferWhatsAppHandoff { reason: r.reason })
            }
            HANDOFF_TO_WHATSAPP => {
                let h: Handoff = serde_json::from_value(args).map_err(|e| bad(e.to_string()))?;
                let consent_evidence = h
                    .consent_evidence
                    .map(|e| e.trim().to_owned())
                    .filter(|e| !e.is_empty())
                    .ok_or_else(|| bad("consent_evidence is required".into()))?;
                Ok(Self::HandoffToWhatsApp {
                    consent_evidence,
                    phone_number: h.phone_number.filter(|p| !p.trim().is_empty()),
                })
            }
            UPDATE_COLLECTED_DATA => {
                let c: Collected = serde_json::from_value(args).map_err(|e| bad(e.to_string()))?;
                Ok(Self::UpdateCollectedData { data: c.data })
            }
            END_CALL => {
                let r: Reason = serde_json::from_value(args).map_err(|e| bad(e.to_string()))?;
                Ok(Self::EndCall { reason: r.reason })
            }
            other => Err(ToolParseError::Unknown(other.to_owned())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Channel;

    fn call(name: &str, arguments: Value) -> ToolCall {
        ToolCall {
            id: "c1".into(),
            name: name.into(),
            arguments,
        }
    }

    #[test]
    fn voice_has_every_tool_and_whatsapp_only_the_channel_neutral_ones() {
        let voice: Vec<_> = tools_for(Channel::Voice).iter().map(|t| t.name).collect();
        assert_eq!(
            voice,
            [
                CHECK_WAIT_TIME,
                UPDATE_COLLECTED_DATA,
                OFFER_WHATSAPP_HANDOFF,
                HANDOFF_TO_WHATSAPP,
                END_CALL
            ]
        );
        let whatsapp: Vec<_> = tools_for(Channel::Whatsapp)
            .iter()
            .map(|t| t.name)
            .collect();
        assert_eq!(whatsapp, [CHECK_WAIT_TIME, UPDATE_COLLECTED_DATA]);
        for tool in tools_for(Channel::Voice) {
            assert_eq!(tool.parameters["type"], "object", "{}", tool.name);
        }
    }

    #[test]
    fn parses_each_tool() {
        assert_eq!(
            ToolRequest::parse(&call(CHECK_WAIT_TIME, Value::Null)),
            Ok(ToolRequest::CheckWaitTime)
        );
        assert_eq!(
            ToolRequest::parse(&call(
                HANDOFF_TO_WHATSAPP,
                json!({"consent_evidence": " Yes please "})
            )),
            Ok(ToolRequest::HandoffToWhatsApp {
                consent_evidence: "Yes please".into(),
                phone_number: None
            })
        );
        assert_eq!(
            ToolRequest::parse(&call(
                UPDATE_COLLECTED_DATA,
                json!("{\"data\": {\"issue\": \"outage\"}}")
            )),
            Ok(ToolRequest::UpdateCollectedData {
                data: serde_json::from_value(json!({"issue": "outage"})).unwrap()
            })
        );
        assert_eq!(
            ToolRequest::parse(&call(END_CALL, json!({"reason": "done"}))),
            Ok(ToolRequest::EndCall {
                reason: Some("done".into())
            })
        );
    }

    #[test]
    fn handoff_without_consent_and_unknown_tools_are_errors() {
        assert!(matches!(
            ToolRequest::parse(&call(HANDOFF_TO_WHATSAPP, json!({}))),
            Err(ToolParseError::BadArguments { .. })
        ));
        assert!(matches!(
            ToolRequest::parse(&call(UPDATE_COLLECTED_DATA, json!({"data": 3}))),
            Err(ToolParseError::BadArguments { .. })
        ));
        assert_eq!(
            ToolRequest::parse(&call("launch_rockets", json!({}))),
            Err(ToolParseError::Unknown("launch_rockets".into()))
        );
    }
}
