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

impl TurnOutcome {
    /// Without the space that ended a round before tools when no words followed them.
    fn trimmed(mut self) -> Self {
        self.text.truncate(self.text.trim_end().len());
        self
    }
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
            return Ok(outcome.trimmed());
        }
        // The round's text is final: a sentence it ends ("Let me check the wait.") is complete
        // now, so it may be spoken while the tools run. A sentence splitter waits for the
        // whitespace after a terminator, which would otherwise come only with the next round's
        // first word, after the tools (a durable write, a remote call).
        if round_started && !outcome.text.ends_with(char::is_whitespace) {
            on_text(" ");
            outcome.text.push(' ');
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
    Ok(outcome.trimmed())
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

    /// A caller's first words on a voice call: the scripted agent answers in three tool rounds.
    fn power_out() -> AgentRequest {
        let ctx =
            CustomerContext::new(CustomerId::parse_phone("+14255550123").unwrap(), Utc::now());
        AgentRequest::new(
            ctx,
            Channel::Voice,
            AgentInput::Text {
                text: "My power is out since this morning".into(),
            },
        )
    }

    #[tokio::test]
    async fn a_turn_with_tools_speaks_each_round_once_and_apart() {
        let request = power_out();
        let mut streamed = String::new();
        let outcome = run_turn(&ScriptedAgent, &Host, request, &mut |d| {
            streamed.push_str(d)
        })
        .await
        .unwrap();
        assert_eq!(streamed.trim_end(), outcome.text);
        assert_eq!(
            outcome.text.matches(OFFER_QUESTION).count(),
            1,
            "{}",
            outcome.text
        );
        assert_checks_the_wait_then_answers(&outcome.text);
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

    /// The first round's sentence, one space, then the second round's answer.
    fn assert_checks_the_wait_then_answers(text: &str) {
        assert!(
            text.starts_with("Thanks, let me check how long the wait is. All our colleagues"),
            "{text}"
        );
    }

    /// Records what had been streamed when each tool ran.
    struct Witness(
        std::sync::Arc<std::sync::Mutex<String>>,
        std::sync::Mutex<Vec<String>>,
    );

    #[async_trait]
    impl ToolHost for Witness {
        async fn run(&self, request: ToolRequest, call: &ToolCall) -> ToolOutcome {
            let so_far = self.0.lock().unwrap().clone();
            self.1.lock().unwrap().push(so_far);
            Host.run(request, call).await
        }
    }

    #[tokio::test]
    async fn a_sentence_that_ends_a_round_is_complete_before_the_tools_run() {
        let request = power_out();
        let streamed = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let host = Witness(streamed.clone(), Default::default());
        let sink = streamed.clone();
        let outcome = run_turn(&ScriptedAgent, &host, request, &mut |d| {
            sink.lock().unwrap().push_str(d)
        })
        .await
        .unwrap();
        let seen = host.1.lock().unwrap().clone();
        // The first tool ran after "…the wait is. " was streamed: with the space, a sentence
        // splitter has the sentence and it is played while the tools run.
        assert_eq!(seen[0], "Thanks, let me check how long the wait is. ");
        let mut splitter = crate::voice::media::SentenceSplitter::default();
        assert_eq!(
            splitter.push(&seen[0]),
            ["Thanks, let me check how long the wait is."]
        );
        // The words are the same as before: one space between rounds, none at the end.
        assert_checks_the_wait_then_answers(&outcome.text);
        assert!(!outcome.text.ends_with(' '), "{:?}", outcome.text);
    }
}
