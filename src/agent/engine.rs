//! One conversational turn: ask the agent, run the tools it asks for, ask again with their
//! results, until it answers without tools (bounded). Text streams out as it arrives, so the
//! voice channel can speak the first sentence while the model is still writing the rest.

use async_trait::async_trait;
use futures::StreamExt;
use serde_json::{Value, json};

use super::tools::ToolRequest;
use super::{Agent, AgentError, AgentEvent, AgentRequest, ToolCall, ToolResult};
use crate::domain::HandoffId;

/// At most this many agent calls per turn: a model that keeps asking for tools is cut off.
const MAX_ROUNDS: usize = 5;

/// What a turn asks the channel to do once the words are out.
#[derive(Debug, Clone, PartialEq)]
pub enum TurnAction {
    /// Say goodbye (the turn's text) and end the call.
    EndCall { reason: Option<String> },
    /// The continuation template was accepted by WhatsApp: say goodbye, hang up after it.
    HandoffSent { handoff_id: HandoffId },
    /// The handoff could not go ahead; the caller stays on the line.
    HandoffRefused {
        handoff_id: Option<HandoffId>,
        reason: String,
    },
}

#[derive(Debug, Clone)]
pub struct ToolOutcome {
    /// What the agent reads as the tool's result.
    pub output: Value,
    pub action: Option<TurnAction>,
}

impl ToolOutcome {
    pub fn output(output: Value) -> Self {
        Self {
            output,
            action: None,
        }
    }
}

/// Runs tools for one conversation (one call, or one customer's WhatsApp thread).
#[async_trait]
pub trait ToolHost: Send + Sync {
    async fn run(&self, request: ToolRequest, call: &ToolCall) -> ToolOutcome;
}

#[derive(Debug, Clone, Default)]
pub struct TurnOutcome {
    pub text: String,
    pub actions: Vec<TurnAction>,
    pub tool_results: Vec<ToolResult>,
}

/// Runs one turn. `on_text` receives each piece of reply text in order.
pub async fn run_turn(
    agent: &dyn Agent,
    tools: &dyn ToolHost,
    mut request: AgentRequest,
    on_text: &mut (dyn FnMut(&str) + Send),
) -> Result<TurnOutcome, AgentError> {
    let mut outcome = TurnOutcome::default();
    for _ in 0..MAX_ROUNDS {
        let mut stream = agent.respond(request.clone());
        let mut calls = Vec::new();
        // Each round's text continues the reply: keep the rounds apart by a space, or the
        // last sentence of one and the first of the next would run together.
        let mut round_started = false;
        while let Some(event) = stream.next().await {
            match event? {
                AgentEvent::Text(delta) => {
                    if !delta.is_empty() {
                        if !round_started
                            && !outcome.text.is_empty()
                            && !outcome.text.ends_with(char::is_whitespace)
                            && !delta.starts_with(char::is_whitespace)
                        {
                            on_text(" ");
                            outcome.text.push(' ');
                        }
                        round_started = true;
                        on_text(&delta);
                        outcome.text.push_str(&delta);
                    }
                }
                AgentEvent::ToolCall(call) => calls.push(call),
            }
        }
        if calls.is_empty() {
            return Ok(outcome);
        }
        for call in calls {
            let result = match ToolRequest::parse(&call) {
                Ok(parsed) => {
                    let done = tools.run(parsed, &call).await;
                    outcome.actions.extend(done.action);
                    done.output
                }
                Err(err) => {
                    tracing::warn!(tool = %call.name, error = %err, "agent asked for a tool it cannot have");
                    json!({"error": err.to_string()})
                }
            };
            let result = ToolResult {
                call,
                output: result,
            };
            outcome.tool_results.push(result.clone());
            request.tool_results.push(result);
        }
    }
    tracing::warn!(
        rounds = MAX_ROUNDS,
        "agent kept asking for tools; turn cut off"
    );
    Ok(outcome)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::agent::scripted::{OFFER_QUESTION, ScriptedAgent};
    use crate::agent::{AgentInput, AgentRequest};
    use crate::domain::{Channel, CustomerContext, CustomerId};

    struct Host;

    #[async_trait]
    impl ToolHost for Host {
        async fn run(&self, request: ToolRequest, _call: &ToolCall) -> ToolOutcome {
            match request {
                ToolRequest::CheckWaitTime => ToolOutcome::output(
                    json!({"wait_seconds": 540, "over_threshold": true, "within_business_hours": true, "offer_allowed": true}),
                ),
                _ => ToolOutcome::output(json!({"status": "ok"})),
            }
        }
    }

    #[tokio::test]
    async fn a_turn_with_tools_speaks_each_round_once_and_apart() {
        let ctx =
            CustomerContext::new(CustomerId::parse_phone("+14255550123").unwrap(), Utc::now());
        let request = AgentRequest::new(
            ctx,
            Channel::Voice,
            AgentInput::Text {
                text: "My power is out since this morning".into(),
            },
        );
        let mut streamed = String::new();
        let outcome = run_turn(&ScriptedAgent, &Host, request, &mut |d| {
            streamed.push_str(d)
        })
        .await
        .unwrap();
        assert_eq!(streamed, outcome.text);
        assert_eq!(
            outcome.text.matches(OFFER_QUESTION).count(),
            1,
            "{}",
            outcome.text
        );
        assert!(
            outcome
                .text
                .starts_with("Thanks, let me check how long the wait is. All our colleagues"),
            "{}",
            outcome.text
        );
        let names: Vec<_> = outcome
            .tool_results
            .iter()
            .map(|r| r.call.name.as_str())
            .collect();
        assert_eq!(
            names,
            [
                "update_collected_data",
                "check_wait_time",
                "offer_whatsapp_handoff"
            ]
        );
    }
}
