//! What a language model is told, per channel: the system prompt, the customer context, the
//! recent transcript of both channels and the new input, as provider-neutral text. The OpenAI
//! adapter turns a [`Prompt`] into chat messages; nothing here knows a provider's JSON.
//!
//! The customer's own phone number never reaches the model: it is not part of the context
//! message, and it is masked wherever it appears in text taken from the context.

use super::{AgentInput, AgentRequest};
use crate::domain::{Channel, CustomerContext, Role};

/// How many recent transcript turns (both channels) the model sees; older turns live on in the
/// context summary, which is part of the context message.
pub const HISTORY_TURNS: usize = 20;

/// What replaces the customer's own number wherever it appears.
const NUMBER_MASK: &str = "[customer's number]";

const VOICE_PROMPT: &str = "\
You are the voice assistant of a customer service line. You are speaking with a caller on the phone; \
everything you write is read aloud by a text-to-speech voice.

How to speak:
- Short, natural spoken sentences; one or two at a time, then let the caller talk.
- Plain words only: no markdown, no emoji, no lists, no headings, no URLs.
- Never read out or ask for a phone number unless the caller offers a different WhatsApp number.

What to do:
- Greet the caller when the call starts and ask how you can help.
- When the caller has explained their issue, record the useful facts with update_collected_data and \
check the wait with check_wait_time.
- If the check_wait_time result says offer_allowed is true, tell the caller the wait, call \
offer_whatsapp_handoff and ask whether they would like to continue on WhatsApp instead. If it is \
false, tell them the wait and keep helping.
- Call handoff_to_whatsapp only after the caller explicitly says yes to WhatsApp, and put the caller's \
own words of agreement, verbatim, in consent_evidence. If they say no, carry on helping on the call.
- When the conversation is finished, say goodbye and call end_call.

Transcript lines from earlier are prefixed with [call] or [whatsapp] to show where they were said; \
never write such a prefix yourself.";

const WHATSAPP_PROMPT: &str = "\
You are the WhatsApp assistant of a customer service team, writing to a customer in a WhatsApp chat.

How to write:
- Concise, friendly messages. Line breaks are fine; keep every reply under 4096 characters.
- WhatsApp formatting only: *bold*, _italic_. No markdown headings, tables or links in brackets.
- Never write a phone number.

What to do:
- If the context has a call summary, the customer just moved here from a phone call: refer to the call \
and pick up where it left off, without asking them to repeat what they already told us.
- Record useful facts with update_collected_data. Use check_wait_time if they ask when a person will \
help them.

Transcript lines from earlier are prefixed with [call] or [whatsapp] to show where they were said; \
never write such a prefix yourself.";

const SUMMARY_PROMPT: &str = "\
You summarise a customer's phone call for a WhatsApp message that continues the conversation. \
Write 2 to 3 short sentences addressed to the customer (\"You called about ...\"): their issue, what \
was found or done, and what happens next. Plain text on one line: no line breaks, no lists, no \
markdown, no emoji, no phone numbers. Write only the summary.";

/// Who said a line of the transcript, as the model should see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Speaker {
    Customer,
    Agent,
    /// A note from the system (e.g. "call transferred"), shown as context.
    Note,
}

/// Everything the model is told for one request, before the tool rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Prompt {
    pub system: &'static str,
    /// The customer context: name, call summary, collected data, older conversation.
    pub context: String,
    /// The most recent turns of both channels, oldest first, each marked with its channel.
    pub history: Vec<(Speaker, String)>,
    /// The new input, as the customer's message.
    pub input: String,
}

/// Agent profiles by name (`AGENT_PROFILES_FILE`): what the model is told besides the channel's
/// prompt when it answers a business number that names the profile (`WHATSAPP_NUMBERS`), e.g.
/// `{"sales": "You answer for the sales team: …", "support": "…"}`.
pub type Profiles = std::collections::BTreeMap<String, String>;

/// Reads `AGENT_PROFILES_FILE`: a JSON object of profile name → instructions (non-empty).
pub fn load_profiles(path: &std::path::Path) -> Result<Profiles, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let profiles: Profiles = serde_json::from_slice(&raw).map_err(|e| {
        format!(
            "{}: not a JSON object of profile name to instructions: {e}",
            path.display()
        )
    })?;
    if let Some((name, _)) = profiles.iter().find(|(_, text)| text.trim().is_empty()) {
        return Err(format!(
            "{}: profile `{name}` has no instructions",
            path.display()
        ));
    }
    Ok(profiles)
}

/// The profile's instructions for this request, as a second system message; `None` when the
/// request names no profile or one that is not defined (the channel prompt alone then).
pub fn profile_instructions(profiles: &Profiles, request: &AgentRequest) -> Option<String> {
    let name = request.profile.as_deref()?;
    let text = profiles.get(name)?;
    Some(format!(
        "You answer for the \"{name}\" team on this WhatsApp number. Its instructions:\n{}",
        text.trim()
    ))
}

pub fn system_prompt(channel: Channel) -> &'static str {
    match channel {
        Channel::Voice => VOICE_PROMPT,
        Channel::Whatsapp => WHATSAPP_PROMPT,
    }
}

pub fn build(request: &AgentRequest) -> Prompt {
    let ctx = &request.context;
    let mut turns: Vec<_> = ctx.transcript.iter().collect();
    // The engine may already have recorded the new input as the last turn; say it once.
    if let (Some(last), AgentInput::Text { text }) = (turns.last(), &request.input)
        && last.role == Role::Customer
        && last.channel == request.channel
        && last.text.trim() == text.trim()
    {
        turns.pop();
    }
    let skip = turns.len().saturating_sub(HISTORY_TURNS);
    let history = turns[skip..]
        .iter()
        .map(|t| {
            let speaker = match t.role {
                Role::Customer => Speaker::Customer,
                Role::Agent => Speaker::Agent,
                Role::System => Speaker::Note,
            };
            let text = format!("{} {}", channel_mark(t.channel), mask_number(ctx, &t.text));
            (speaker, text)
        })
        .collect();
    Prompt {
        system: system_prompt(request.channel),
        context: context_message(ctx, request.channel),
        history,
        input: mask_number(ctx, &input_message(&request.input)),
    }
}

fn channel_mark(channel: Channel) -> &'static str {
    match channel {
        Channel::Voice => "[call]",
        Channel::Whatsapp => "[whatsapp]",
    }
}

/// The customer context as one message. Only what helps the conversation: no identifiers.
pub fn context_message(ctx: &CustomerContext, channel: Channel) -> String {
    let mut lines = vec![format!(
        "Customer context (you are on {}).",
        match channel {
            Channel::Voice => "the phone call",
            Channel::Whatsapp => "WhatsApp",
        }
    )];
    match ctx.first_name() {
        Some(name) => lines.push(format!("First name: {name}")),
        None => lines.push("First name: unknown".into()),
    }
    if let Some(summary) = ctx.call_summary.as_deref().filter(|s| !s.trim().is_empty()) {
        lines.push(format!(
            "Call summary (sent to the customer when the call moved to WhatsApp): {}",
            mask_number(ctx, summary)
        ));
    }
    if !ctx.collected_data.is_empty() {
        let data = serde_json::to_string(&ctx.collected_data).unwrap_or_default();
        lines.push(format!(
            "Collected data (JSON): {}",
            mask_number(ctx, &data)
        ));
    }
    if !ctx.summary.trim().is_empty() {
        lines.push(format!(
            "Earlier conversation:\n{}",
            mask_number(ctx, ctx.summary.trim())
        ));
    }
    lines.join("\n")
}

/// The new input as the customer's message; non-text inputs are described in brackets.
pub fn input_message(input: &AgentInput) -> String {
    match input {
        AgentInput::Text { text } => text.clone(),
        AgentInput::Dtmf { digits } => format!("[The caller pressed keypad digits: {digits}]"),
        AgentInput::Silence { count } => format!(
            "[The caller has said nothing for a while ({count} time{} in a row).]",
            if *count == 1 { "" } else { "s" }
        ),
        AgentInput::CallStarted => "[The call has just connected. Greet the caller.]".into(),
        AgentInput::Other { description } => {
            format!("[The customer sent something without readable text: {description}]")
        }
    }
}

/// The system prompt and the user message asking for a summary of the call.
pub fn summary_prompt(ctx: &CustomerContext) -> (&'static str, String) {
    let mut text = context_message(ctx, Channel::Voice);
    text.push_str("\nThe call:\n");
    for turn in ctx
        .transcript
        .iter()
        .filter(|t| t.channel == Channel::Voice)
    {
        let who = match turn.role {
            Role::Customer => "Customer",
            Role::Agent => "Agent",
            Role::System => "Note",
        };
        text.push_str(&format!("{who}: {}\n", mask_number(ctx, &turn.text)));
    }
    (SUMMARY_PROMPT, text)
}

/// Masks the customer's own number (with or without `+`) in `text`.
fn mask_number(ctx: &CustomerContext, text: &str) -> String {
    let mut out = text.to_owned();
    let whatsapp_id = ctx.whatsapp.as_ref().and_then(|w| w.wa_id.as_deref());
    for number in [ctx.customer_id.e164(), whatsapp_id].into_iter().flatten() {
        let digits = number.trim_start_matches('+');
        if digits.len() < 6 {
            continue;
        }
        out = out
            .replace(&format!("+{digits}"), NUMBER_MASK)
            .replace(digits, NUMBER_MASK);
    }
    out
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::domain::{CustomerId, Turn};

    fn ctx() -> CustomerContext {
        CustomerContext::new(CustomerId::parse_phone("+14255550123").unwrap(), Utc::now())
    }

    #[test]
    fn history_is_bounded_marked_with_its_channel_and_free_of_the_customer_number() {
        let mut c = ctx();
        let now = Utc::now();
        for i in 0..30 {
            let channel = if i % 2 == 0 {
                Channel::Voice
            } else {
                Channel::Whatsapp
            };
            c.push_turn(
                Turn::new(channel, Role::Customer, format!("turn {i}"), now),
                100,
            );
        }
        c.push_turn(
            Turn::new(
                Channel::Voice,
                Role::Customer,
                "call me on +14255550123",
                now,
            ),
            100,
        );
        c.collected_data
            .insert("phone".into(), json!("14255550123"));
        let prompt = build(&AgentRequest::new(
            c,
            Channel::Voice,
            AgentInput::Text {
                text: "hello".into(),
            },
        ));
        assert_eq!(prompt.history.len(), HISTORY_TURNS);
        assert_eq!(
            prompt.history[0],
            (Speaker::Customer, "[whatsapp] turn 11".into())
        );
        assert_eq!(
            prompt.history.last().unwrap().1,
            "[call] call me on [customer's number]"
        );
        assert!(!prompt.context.contains("4255550123"), "{}", prompt.context);
    }

    #[test]
    fn a_profile_adds_its_instructions_and_an_unknown_one_adds_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("profiles.json");
        std::fs::write(
            &path,
            r#"{"sales": "Offer the spring plan.", "support": "Fix outages first."}"#,
        )
        .unwrap();
        let profiles = load_profiles(&path).unwrap();
        let request = |profile: Option<&str>| {
            AgentRequest::new(
                ctx(),
                Channel::Whatsapp,
                AgentInput::Text { text: "hi".into() },
            )
            .with_profile(profile.map(str::to_owned))
        };
        let sales = profile_instructions(&profiles, &request(Some("sales"))).unwrap();
        assert!(sales.contains("\"sales\" team"), "{sales}");
        assert!(sales.ends_with("Offer the spring plan."), "{sales}");
        assert_eq!(
            profile_instructions(&profiles, &request(Some("billing"))),
            None
        );
        assert_eq!(profile_instructions(&profiles, &request(None)), None);

        for (content, problem) in [
            ("[1, 2]", "not a JSON object"),
            (r#"{"sales": "  "}"#, "profile `sales` has no instructions"),
        ] {
            std::fs::write(&path, content).unwrap();
            let err = load_profiles(&path).unwrap_err();
            assert!(err.contains(problem), "{err}");
        }
        assert!(load_profiles(&dir.path().join("missing.json")).is_err());
    }

    #[test]
    fn an_input_already_recorded_as_the_last_turn_is_said_once() {
        let mut c = ctx();
        c.push_turn(
            Turn::new(Channel::Whatsapp, Role::Customer, "Hi again", Utc::now()),
            10,
        );
        let prompt = build(&AgentRequest::new(
            c,
            Channel::Whatsapp,
            AgentInput::Text {
                text: "Hi again".into(),
            },
        ));
        assert!(prompt.history.is_empty());
        assert_eq!(prompt.input, "Hi again");
    }
}
