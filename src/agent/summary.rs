//! Summarising a call for the WhatsApp continuation template.
//!
//! The summary becomes template parameter {{2}}, so whatever produced it (an LLM or the offline
//! extractive summariser) passes through [`fit_template_parameter`]: WhatsApp rejects
//! parameters with newlines, tabs or more than four consecutive spaces, and the whole body must
//! stay within 1024 characters.

use async_trait::async_trait;

use super::AgentError;
use crate::domain::{Channel, CustomerContext, Role};

/// Template body limit, placeholders included.
pub const TEMPLATE_BODY_LIMIT: usize = 1024;

#[async_trait]
pub trait Summariser: Send + Sync + 'static {
    /// A short summary of the conversation so far, for the customer to read on WhatsApp.
    async fn summarise(&self, context: &CustomerContext) -> Result<String, AgentError>;
}

/// Makes `text` a valid template parameter of at most `max_chars` characters: newlines and tabs
/// become spaces, runs of spaces collapse to one, and an over-long text is cut at a word
/// boundary with an ellipsis.
pub fn fit_template_parameter(text: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max_chars * 4));
    for word in text.split_whitespace() {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    if out.chars().count() <= max_chars {
        return out;
    }
    let budget = max_chars.saturating_sub(1);
    let mut cut: String = out.chars().take(budget).collect();
    if let Some(space) = cut.rfind(' ').filter(|&i| i > budget / 2) {
        cut.truncate(space);
    }
    let mut cut = cut.trim_end_matches([' ', ',', ';', ':', '.']).to_owned();
    cut.push('…');
    cut
}

/// The offline summariser: what the customer said on the call, in their words, plus the facts
/// collected. Deterministic, no network.
#[derive(Debug, Default, Clone)]
pub struct ExtractiveSummariser {
    /// Upper bound on the summary, leaving room for the rest of the template body.
    pub max_chars: usize,
}

impl ExtractiveSummariser {
    pub fn new(max_chars: usize) -> Self {
        Self { max_chars }
    }
}

#[async_trait]
impl Summariser for ExtractiveSummariser {
    async fn summarise(&self, context: &CustomerContext) -> Result<String, AgentError> {
        Ok(extractive_summary(context, self.max_chars))
    }
}

pub fn extractive_summary(context: &CustomerContext, max_chars: usize) -> String {
    let mut parts: Vec<String> = Vec::new();
    let said: Vec<&str> = context
        .transcript
        .iter()
        .filter(|t| t.channel == Channel::Voice && t.role == Role::Customer)
        .map(|t| t.text.trim())
        .filter(|t| !t.is_empty() && !is_small_talk(t))
        .collect();
    if !said.is_empty() {
        parts.push(format!("You told us: {}", said.join(" ")));
    }
    let facts: Vec<String> = context
        .collected_data
        .iter()
        .map(|(k, v)| {
            let value = match v {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            format!("{}: {value}", k.replace('_', " "))
        })
        .collect();
    if !facts.is_empty() {
        parts.push(format!("Noted: {}.", facts.join("; ")));
    }
    if parts.is_empty() {
        parts.push("You called us and asked to continue on WhatsApp.".into());
    }
    fit_template_parameter(&parts.join(" "), max_chars.max(16))
}

/// Greetings and yes/no answers carry nothing worth repeating back.
fn is_small_talk(text: &str) -> bool {
    let t = text
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_lowercase();
    matches!(
        t.as_str(),
        "hi" | "hello"
            | "hey"
            | "yes"
            | "yeah"
            | "yep"
            | "sure"
            | "no"
            | "ok"
            | "okay"
            | "thanks"
            | "thank you"
            | "yes please"
            | "sure thing"
    ) || super::scripted::is_yes(text)
}

#[cfg(test)]
mod tests {
    use chrono::Utc;
    use serde_json::json;

    use super::*;
    use crate::domain::{CustomerId, Turn};

    #[test]
    fn parameters_have_no_newlines_tabs_or_long_space_runs_and_fit() {
        let fitted = fit_template_parameter("line one\nline\ttwo     five spaces", 100);
        assert_eq!(fitted, "line one line two five spaces");
        let long = "word ".repeat(400);
        let fitted = fit_template_parameter(&long, 50);
        assert!(fitted.chars().count() <= 50, "{}", fitted.len());
        assert!(fitted.ends_with('…'));
        assert!(!fitted.contains("  "));
    }

    #[test]
    fn extractive_summary_keeps_what_the_caller_said_and_the_facts() {
        let mut ctx =
            CustomerContext::new(CustomerId::parse_phone("+14255550123").unwrap(), Utc::now());
        let now = Utc::now();
        for (role, text) in [
            (Role::Customer, "Hello"),
            (Role::Agent, "How can I help?"),
            (
                Role::Customer,
                "My power has been out since 6am at 123 Oak St.",
            ),
            (Role::Customer, "Yes, WhatsApp is fine"),
        ] {
            ctx.push_turn(Turn::new(Channel::Voice, role, text, now), 100);
        }
        ctx.collected_data
            .insert("issue_type".into(), json!("power outage"));
        let summary = extractive_summary(&ctx, 1000);
        assert_eq!(
            summary,
            "You told us: My power has been out since 6am at 123 Oak St. Noted: issue type: power outage."
        );
    }
}
