//! A minimal, deterministic offline responder: greets, acknowledges what it heard or read, and
//! says a colleague will follow up. It exists so both channels run end to end before a real
//! agent is configured.

use futures::stream::{self, BoxStream, StreamExt};

use super::{Agent, AgentError, AgentEvent, AgentInput, AgentRequest};
use crate::domain::Channel;

#[derive(Debug, Default, Clone)]
pub struct BasicAgent;

impl Agent for BasicAgent {
    fn respond(&self, request: AgentRequest) -> BoxStream<'static, Result<AgentEvent, AgentError>> {
        let name = request.context.first_name().map(str::to_owned);
        let hello = match &name {
            Some(name) => format!("Hello {name}."),
            None => "Hello.".to_owned(),
        };
        let reply = match (&request.channel, &request.input) {
            (Channel::Voice, AgentInput::CallStarted) => {
                format!("{hello} Thanks for calling. How can I help you today?")
            }
            (_, AgentInput::Text { text }) => {
                let heard = text.trim();
                match request.channel {
                    Channel::Voice => format!("You said: {heard}. Let me look into that."),
                    Channel::Whatsapp => {
                        format!("Thanks for your message: \"{heard}\". We're on it.")
                    }
                }
            }
            (_, AgentInput::Dtmf { digits }) => format!("You pressed {digits}."),
            (_, AgentInput::Silence { .. }) => "Are you still there?".to_owned(),
            (_, AgentInput::Other { description }) => {
                format!("Thanks, we received your {description}.")
            }
            (Channel::Whatsapp, AgentInput::CallStarted) => hello,
        };
        // Stream word by word, as a real model would, so callers handle partial text.
        let words: Vec<Result<AgentEvent, AgentError>> = reply
            .split_inclusive(' ')
            .map(|w| Ok(AgentEvent::Text(w.to_owned())))
            .collect();
        stream::iter(words).boxed()
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::agent::collect;
    use crate::domain::{CustomerContext, CustomerId};

    #[tokio::test]
    async fn answers_each_channel_and_input() {
        let mut ctx =
            CustomerContext::new(CustomerId::parse_phone("+14255550123").unwrap(), Utc::now());
        ctx.display_name = Some("Ada Lovelace".into());
        let ask = |channel, input| AgentRequest::new(ctx.clone(), channel, input);
        let (text, tools) = collect(&BasicAgent, ask(Channel::Voice, AgentInput::CallStarted))
            .await
            .unwrap();
        assert_eq!(
            text,
            "Hello Ada. Thanks for calling. How can I help you today?"
        );
        assert!(tools.is_empty());
        let (text, _) = collect(
            &BasicAgent,
            ask(
                Channel::Whatsapp,
                AgentInput::Text {
                    text: " hi ".into(),
                },
            ),
        )
        .await
        .unwrap();
        assert_eq!(text, "Thanks for your message: \"hi\". We're on it.");
    }
}
