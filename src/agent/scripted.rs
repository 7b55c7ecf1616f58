//! The scripted agent: offline, deterministic, and able to reach every branch of the handoff
//! story. It greets, learns the issue, checks the wait, offers WhatsApp when the wait is long
//! (the engine's `check_wait_time` result says whether it is, and whether the team is open),
//! understands yes and no in plain words (or 1 / 2 on the keypad), and asks for the handoff.
//! On WhatsApp it greets the customer by name and picks up from the call summary.
//!
//! It is driven exactly like a model: it asks for tools, and is called again with their results.

use futures::stream::{self, BoxStream, StreamExt};
use serde_json::{Value, json};

use super::tools::{
    CHECK_WAIT_TIME, END_CALL, HANDOFF_TO_WHATSAPP, OFFER_WHATSAPP_HANDOFF, UPDATE_COLLECTED_DATA,
};
use super::{Agent, AgentError, AgentEvent, AgentInput, AgentRequest, ToolCall};
use crate::domain::{Channel, CustomerContext, Role};

/// The question that ends an offer; the agent recognises a pending offer by it.
pub const OFFER_QUESTION: &str = "Would you like to continue on WhatsApp instead?";

#[derive(Debug, Default, Clone)]
pub struct ScriptedAgent;

impl Agent for ScriptedAgent {
    fn respond(&self, request: AgentRequest) -> BoxStream<'static, Result<AgentEvent, AgentError>> {
        let reply = match request.channel {
            Channel::Voice => voice(&request),
            Channel::Whatsapp => whatsapp(&request),
        };
        let mut events: Vec<Result<AgentEvent, AgentError>> = reply
            .text
            .split_inclusive(' ')
            .map(|w| Ok(AgentEvent::Text(w.to_owned())))
            .collect();
        events.extend(
            reply
                .tools
                .into_iter()
                .enumerate()
                .map(|(i, (name, arguments))| {
                    Ok(AgentEvent::ToolCall(ToolCall {
                        id: format!("call_{}_{i}", request.tool_results.len()),
                        name: name.to_owned(),
                        arguments,
                    }))
                }),
        );
        stream::iter(events).boxed()
    }
}

struct Reply {
    text: String,
    tools: Vec<(&'static str, Value)>,
}

fn say(text: impl Into<String>) -> Reply {
    Reply {
        text: text.into(),
        tools: Vec::new(),
    }
}

impl Reply {
    fn with(mut self, tool: &'static str, args: Value) -> Self {
        self.tools.push((tool, args));
        self
    }
}

/// The results of the tools asked for in the previous round only: earlier rounds were already
/// answered. Calls are numbered `call_{round}_{i}` when the agent emits them.
fn latest_results(request: &AgentRequest) -> Vec<&super::ToolResult> {
    // Ids not in that form (another agent's, a test's) count as one round each.
    let round_of = |id: &str| {
        Some(
            id.rsplit_once('_')
                .map_or(id, |(round, _)| round)
                .to_owned(),
        )
    };
    let Some(latest) = request
        .tool_results
        .last()
        .and_then(|r| round_of(&r.call.id))
    else {
        return Vec::new();
    };
    request
        .tool_results
        .iter()
        .filter(|r| round_of(&r.call.id).as_deref() == Some(latest.as_str()))
        .collect()
}

fn voice(request: &AgentRequest) -> Reply {
    let ctx = &request.context;
    let latest = latest_results(request);
    // Second round of a turn: the wait time is known.
    if let Some(result) = latest.iter().find(|r| r.call.name == CHECK_WAIT_TIME) {
        return wait_answer(&result.output);
    }
    if let Some(out) = latest.iter().find(|r| r.call.name == HANDOFF_TO_WHATSAPP) {
        // The engine reported the outcome of the handoff; speak it.
        let ok = out.output.get("status").and_then(Value::as_str) == Some("sent");
        return if ok {
            say(
                "Done. You'll find our WhatsApp message on your phone. Thanks for calling, goodbye.",
            )
        } else {
            say(
                "I'm sorry, I couldn't send the WhatsApp message. Please stay on the line and a colleague will be with you.",
            )
        };
    }
    if !request.tool_results.is_empty() {
        // Tools that need no words (the offer was already spoken with the call): nothing to add.
        return say("");
    }
    let offer_pending = last_agent_voice_turn(ctx).is_some_and(|t| t.ends_with(OFFER_QUESTION));
    match &request.input {
        AgentInput::CallStarted => {
            let hello = ctx
                .first_name()
                .map_or("Hello.".to_owned(), |n| format!("Hello {n}."));
            say(format!(
                "{hello} Thanks for calling. How can I help you today?"
            ))
        }
        AgentInput::Silence { count } if *count <= 1 => say("Are you still there?"),
        AgentInput::Silence { .. } => {
            say("I haven't heard anything, so I'll end the call now. Goodbye.")
                .with(END_CALL, json!({"reason": "silence"}))
        }
        AgentInput::Dtmf { digits } if offer_pending && digits.starts_with('1') => {
            accept(&format!("pressed {digits}"))
        }
        AgentInput::Dtmf { digits } if offer_pending && digits.starts_with('2') => decline(),
        AgentInput::Dtmf { digits } => say(format!("You pressed {digits}.")),
        AgentInput::Other { .. } => say("Sorry, I didn't catch that. Could you say it again?"),
        AgentInput::Text { text } => {
            if offer_pending && is_yes(text) {
                accept(text)
            } else if offer_pending && is_no(text) {
                decline()
            } else if is_goodbye(text) {
                say("Thanks for calling. Goodbye.")
                    .with(END_CALL, json!({"reason": "caller finished"}))
            } else if mentions_whatsapp(text) {
                offer("Sure, we can continue on WhatsApp.")
            } else if let Some(issue) = issue_type(text) {
                say("Thanks, let me check how long the wait is.")
                    .with(
                        UPDATE_COLLECTED_DATA,
                        json!({"data": {"issue_type": issue}}),
                    )
                    .with(CHECK_WAIT_TIME, json!({}))
            } else {
                say("I see. Could you tell me a bit more about the problem?")
            }
        }
    }
}

fn wait_answer(output: &Value) -> Reply {
    let seconds = output
        .get("wait_seconds")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let minutes = seconds.div_ceil(60).max(1);
    let over = output
        .get("over_threshold")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let open = output
        .get("within_business_hours")
        .and_then(Value::as_bool)
        .unwrap_or(true);
    let offer_allowed = output
        .get("offer_allowed")
        .and_then(Value::as_bool)
        .unwrap_or(over);
    if !offer_allowed {
        if open {
            return say(format!(
                "A colleague will be with you in about {minutes} minute{}. Please stay on the line.",
                if minutes == 1 { "" } else { "s" }
            ));
        }
        return say(
            "Our team is closed right now, so the wait is long. Please call back during opening hours.",
        );
    }
    let lead = format!("All our colleagues are busy; the wait is about {minutes} minutes.");
    match output.get("replies_from").and_then(Value::as_str) {
        Some(when) if !open => offer(&format!(
            "{lead} Our team is closed now and will reply on WhatsApp from {when}."
        )),
        _ => offer(&lead),
    }
}

fn offer(lead: &str) -> Reply {
    say(format!(
        "{lead} We can send you a WhatsApp message with a summary of this call and continue there. {OFFER_QUESTION}"
    ))
    .with(OFFER_WHATSAPP_HANDOFF, json!({"reason": "long wait"}))
}

fn accept(evidence: &str) -> Reply {
    say("Great, I'm sending you a WhatsApp message now.").with(
        HANDOFF_TO_WHATSAPP,
        json!({"consent_evidence": evidence.trim()}),
    )
}

fn decline() -> Reply {
    say("No problem. Please stay on the line and a colleague will be with you as soon as possible.")
}

fn whatsapp(request: &AgentRequest) -> Reply {
    let ctx = &request.context;
    if !request.tool_results.is_empty() {
        return say("");
    }
    let name = ctx
        .first_name()
        .map(|n| format!(" {n}"))
        .unwrap_or_default();
    let text = match &request.input {
        AgentInput::Text { text } => text.as_str(),
        AgentInput::Other { description } => {
            return say(format!(
                "Thanks{name}, we received your {description}. A colleague will take a look."
            ));
        }
        _ => "",
    };
    let first_reply_after_call = ctx.call_summary.is_some()
        && !ctx
            .transcript
            .iter()
            .any(|t| t.channel == Channel::Whatsapp && t.role == Role::Agent);
    if first_reply_after_call {
        let summary = ctx.call_summary.as_deref().unwrap_or_default();
        let issue = ctx
            .collected_data
            .get("issue_type")
            .and_then(Value::as_str)
            .map(|i| format!(" about your {i}"))
            .unwrap_or_default();
        return say(format!(
            "Hi{name}, thanks for continuing here after your call{issue}.\nFrom the call: {summary}\nA colleague has your details and will follow up in this chat. Is there anything you'd like to add?"
        ));
    }
    if is_goodbye(text) || is_thanks(text) {
        return say(format!(
            "You're welcome{name}. We'll message you here with any update."
        ));
    }
    say(format!(
        "Thanks{name}, noted. A colleague will reply here shortly."
    ))
}

fn last_agent_voice_turn(ctx: &CustomerContext) -> Option<&str> {
    ctx.transcript
        .iter()
        .rev()
        .find(|t| t.channel == Channel::Voice && t.role == Role::Agent)
        .map(|t| t.text.trim())
}

fn words(text: &str) -> Vec<String> {
    text.to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '\'')
        .filter(|w| !w.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Plain-words yes: "yes", "yeah, that works", "sure, go ahead", "please do".
pub fn is_yes(text: &str) -> bool {
    let w = words(text);
    let has = |x: &str| w.iter().any(|y| y == x);
    if is_no(text) {
        return false;
    }
    [
        "yes",
        "yeah",
        "yep",
        "yup",
        "sure",
        "ok",
        "okay",
        "absolutely",
        "definitely",
        "please",
        "fine",
        "alright",
    ]
    .iter()
    .any(|x| has(x))
        || text.to_lowercase().contains("go ahead")
        || text.to_lowercase().contains("sounds good")
        || text.to_lowercase().contains("that works")
}

/// Plain-words no: "no", "no thanks", "I'd rather wait", "don't".
pub fn is_no(text: &str) -> bool {
    let w = words(text);
    let has = |x: &str| w.iter().any(|y| y == x);
    ["no", "nope", "nah", "don't", "dont", "not"]
        .iter()
        .any(|x| has(x))
        || text.to_lowercase().contains("rather wait")
        || text.to_lowercase().contains("i'll wait")
        || text.to_lowercase().contains("stay on")
}

fn is_goodbye(text: &str) -> bool {
    let w = words(text);
    w.iter().any(|x| x == "bye" || x == "goodbye") || text.to_lowercase().contains("that's all")
}

fn is_thanks(text: &str) -> bool {
    let t = text.to_lowercase();
    t.contains("thank") || t.contains("thx")
}

fn mentions_whatsapp(text: &str) -> bool {
    text.to_lowercase().contains("whatsapp")
}

/// A coarse intent from the caller's words; `None` when nothing is recognisable.
fn issue_type(text: &str) -> Option<&'static str> {
    let t = text.to_lowercase();
    let any = |keys: &[&str]| keys.iter().any(|k| t.contains(k));
    if any(&["power", "outage", "electric", "lights"]) {
        Some("power outage")
    } else if any(&["bill", "charge", "invoice", "payment", "refund"]) {
        Some("billing question")
    } else if any(&["internet", "wifi", "connection", "router"]) {
        Some("connection problem")
    } else if any(&["order", "delivery", "package", "parcel"]) {
        Some("order")
    } else if any(&["account", "password", "login", "log in"]) {
        Some("account access")
    } else if t.split_whitespace().count() >= 6 {
        Some("general enquiry")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use chrono::Utc;

    use super::*;
    use crate::agent::{ToolResult, collect};
    use crate::domain::{CustomerId, Turn};

    fn ctx() -> CustomerContext {
        let mut c =
            CustomerContext::new(CustomerId::parse_phone("+14255550123").unwrap(), Utc::now());
        c.display_name = Some("Ada Lovelace".into());
        c
    }

    async fn ask(
        ctx: &CustomerContext,
        channel: Channel,
        input: AgentInput,
        results: Vec<ToolResult>,
    ) -> (String, Vec<ToolCall>) {
        let mut req = AgentRequest::new(ctx.clone(), channel, input);
        req.tool_results = results;
        collect(&ScriptedAgent, req).await.unwrap()
    }

    fn text(t: &str) -> AgentInput {
        AgentInput::Text { text: t.into() }
    }

    #[tokio::test]
    async fn the_whole_voice_script_up_to_the_handoff() {
        let mut c = ctx();
        let (greeting, _) = ask(&c, Channel::Voice, AgentInput::CallStarted, vec![]).await;
        assert_eq!(
            greeting,
            "Hello Ada. Thanks for calling. How can I help you today?"
        );

        let (t, tools) = ask(
            &c,
            Channel::Voice,
            text("My power is out since this morning"),
            vec![],
        )
        .await;
        assert_eq!(t, "Thanks, let me check how long the wait is.");
        let names: Vec<_> = tools.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, [UPDATE_COLLECTED_DATA, CHECK_WAIT_TIME]);
        assert_eq!(tools[0].arguments["data"]["issue_type"], "power outage");

        let wait = ToolResult {
            call: tools[1].clone(),
            output: json!({"wait_seconds": 600, "over_threshold": true, "within_business_hours": true, "offer_allowed": true}),
        };
        let (offer_text, tools) = ask(
            &c,
            Channel::Voice,
            text("My power is out since this morning"),
            vec![wait],
        )
        .await;
        assert!(offer_text.contains("about 10 minutes"), "{offer_text}");
        assert!(offer_text.ends_with(OFFER_QUESTION));
        assert_eq!(tools[0].name, OFFER_WHATSAPP_HANDOFF);

        c.push_turn(
            Turn::new(Channel::Voice, Role::Agent, offer_text, Utc::now()),
            100,
        );
        let (t, tools) = ask(&c, Channel::Voice, text("Yes, that works for me"), vec![]).await;
        assert_eq!(t, "Great, I'm sending you a WhatsApp message now.");
        assert_eq!(tools[0].name, HANDOFF_TO_WHATSAPP);
        assert_eq!(
            tools[0].arguments["consent_evidence"],
            "Yes, that works for me"
        );

        let (t, tools) = ask(&c, Channel::Voice, text("No, I'd rather wait"), vec![]).await;
        assert!(t.starts_with("No problem."), "{t}");
        assert!(tools.is_empty());

        let (_, tools) = ask(
            &c,
            Channel::Voice,
            AgentInput::Dtmf { digits: "1".into() },
            vec![],
        )
        .await;
        assert_eq!(tools[0].name, HANDOFF_TO_WHATSAPP);
    }

    #[tokio::test]
    async fn short_waits_and_closed_hours_take_their_branches() {
        let c = ctx();
        let call = ToolCall {
            id: "c".into(),
            name: CHECK_WAIT_TIME.into(),
            arguments: json!({}),
        };
        let short = ToolResult {
            call: call.clone(),
            output: json!({"wait_seconds": 60, "over_threshold": false, "within_business_hours": true, "offer_allowed": false}),
        };
        let (t, tools) = ask(&c, Channel::Voice, text("billing problem"), vec![short]).await;
        assert_eq!(
            t,
            "A colleague will be with you in about 1 minute. Please stay on the line."
        );
        assert!(tools.is_empty());
        let closed_no_offer = ToolResult {
            call: call.clone(),
            output: json!({"wait_seconds": 9000, "over_threshold": true, "within_business_hours": false, "offer_allowed": false}),
        };
        let (t, tools) = ask(
            &c,
            Channel::Voice,
            text("billing problem"),
            vec![closed_no_offer],
        )
        .await;
        assert!(t.contains("closed"), "{t}");
        assert!(tools.is_empty());
        let closed_offer = ToolResult {
            call,
            output: json!({"wait_seconds": 9000, "over_threshold": true, "within_business_hours": false, "offer_allowed": true, "replies_from": "Monday 09:00"}),
        };
        let (t, tools) = ask(
            &c,
            Channel::Voice,
            text("billing problem"),
            vec![closed_offer],
        )
        .await;
        assert!(
            t.contains("will reply on WhatsApp from Monday 09:00"),
            "{t}"
        );
        assert_eq!(tools[0].name, OFFER_WHATSAPP_HANDOFF);
    }

    #[tokio::test]
    async fn silence_prompts_once_then_ends_the_call() {
        let c = ctx();
        let (t, tools) = ask(&c, Channel::Voice, AgentInput::Silence { count: 1 }, vec![]).await;
        assert_eq!(t, "Are you still there?");
        assert!(tools.is_empty());
        let (_, tools) = ask(&c, Channel::Voice, AgentInput::Silence { count: 2 }, vec![]).await;
        assert_eq!(tools[0].name, END_CALL);
    }

    #[tokio::test]
    async fn whatsapp_first_reply_refers_to_the_call() {
        let mut c = ctx();
        c.call_summary = Some("You told us: My power is out.".into());
        c.collected_data
            .insert("issue_type".into(), json!("power outage"));
        let (t, _) = ask(
            &c,
            Channel::Whatsapp,
            text("Any update on the crew?"),
            vec![],
        )
        .await;
        assert!(
            t.starts_with(
                "Hi Ada, thanks for continuing here after your call about your power outage."
            ),
            "{t}"
        );
        assert!(
            t.contains("From the call: You told us: My power is out."),
            "{t}"
        );
        c.push_turn(
            Turn::new(Channel::Whatsapp, Role::Agent, t, Utc::now()),
            100,
        );
        let (t, _) = ask(&c, Channel::Whatsapp, text("ok"), vec![]).await;
        assert_eq!(t, "Thanks Ada, noted. A colleague will reply here shortly.");
    }

    #[test]
    fn yes_and_no_in_plain_words() {
        for yes in [
            "yes",
            "Yeah sure",
            "OK, go ahead",
            "please do",
            "that works",
            "Sounds good!",
        ] {
            assert!(is_yes(yes), "{yes}");
            assert!(!is_no(yes), "{yes}");
        }
        for no in [
            "no",
            "No thanks",
            "I'd rather wait",
            "nope",
            "don't",
            "I'll stay on the line",
        ] {
            assert!(is_no(no), "{no}");
            assert!(!is_yes(no), "{no}");
        }
        assert!(!is_yes("my power is out"));
    }
}
