//! The agent port: given the shared context, the channel and the new input, stream the reply
//! text and any tool calls. Both channels use it: the voice session speaks the text as it
//! streams (sentence by sentence); the WhatsApp worker sends it as messages.
//!
//! Adapters: [`basic::BasicAgent`] (a minimal offline responder), [`scripted::ScriptedAgent`]
//! (the offline default) and [`openai::OpenAiAgent`] (Azure OpenAI or any OpenAI-compatible
//! server), whose prompts live in [`prompts`].

pub mod basic;
pub mod engine;
pub mod openai;
pub mod prompts;
pub mod scripted;
pub mod summary;
pub mod tools;

use async_trait::async_trait;
use futures::stream::BoxStream;
use serde::{Deserialize, Serialize};

use crate::domain::{Channel, CustomerContext};

/// What the customer just did.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentInput {
    /// Words: a final transcription on a call, or a WhatsApp message's text.
    Text { text: String },
    /// Keypad digits pressed on a call.
    Dtmf { digits: String },
    /// The caller said nothing for a while; `count` is how many times in a row.
    Silence { count: u32 },
    /// The call just connected; the agent speaks first.
    CallStarted,
    /// A WhatsApp message with no text the agent can read (media, a reaction, an unknown type),
    /// described for the agent.
    Other { description: String },
}

/// A request to the agent. After the agent asked for tools, the engine calls it again with the
/// same input and the tools' results, until it answers without asking for more.
#[derive(Debug, Clone)]
pub struct AgentRequest {
    pub context: CustomerContext,
    pub channel: Channel,
    pub input: AgentInput,
    /// Results of the tool calls made earlier in this turn, in call order.
    pub tool_results: Vec<ToolResult>,
    /// The agent profile that answers (the business number's, from `WHATSAPP_NUMBERS`): a
    /// model agent adds that profile's instructions (`AGENT_PROFILES_FILE`) to its system
    /// prompt. `None`: the channel's prompt alone.
    pub profile: Option<String>,
}

impl AgentRequest {
    pub fn new(context: CustomerContext, channel: Channel, input: AgentInput) -> Self {
        Self {
            context,
            channel,
            input,
            tool_results: Vec::new(),
            profile: None,
        }
    }

    pub fn with_profile(mut self, profile: Option<String>) -> Self {
        self.profile = profile;
        self
    }
}

/// What a tool call produced, as the agent sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolResult {
    pub call: ToolCall,
    /// JSON the agent reads (e.g. `{"wait_seconds": 300}` or `{"error": "..."}`).
    pub output: serde_json::Value,
}

/// A tool the agent asks the engine to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: serde_json::Value,
}

/// One piece of a streamed reply.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent {
    /// More reply text, in order.
    Text(String),
    ToolCall(ToolCall),
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum AgentError {
    #[error("agent unavailable: {0}")]
    Unavailable(String),
    #[error("agent failed: {0}")]
    Failed(String),
}

#[async_trait]
pub trait Agent: Send + Sync + 'static {
    /// Streams the reply to `request`. The stream ends when the reply is complete.
    fn respond(&self, request: AgentRequest) -> BoxStream<'static, Result<AgentEvent, AgentError>>;

    /// Prepares for a conversation that is about to start (open connections, load prompts), so
    /// the first reply is not slowed by cold paths. Called before a call is answered.
    async fn warm(&self) {}
}

/// Collects a whole reply: its text and its tool calls.
pub async fn collect(
    agent: &dyn Agent,
    request: AgentRequest,
) -> Result<(String, Vec<ToolCall>), AgentError> {
    use futures::StreamExt;
    let mut stream = agent.respond(request);
    let mut text = String::new();
    let mut tools = Vec::new();
    while let Some(event) = stream.next().await {
        match event? {
            AgentEvent::Text(delta) => text.push_str(&delta),
            AgentEvent::ToolCall(call) => tools.push(call),
        }
    }
    Ok((text, tools))
}
