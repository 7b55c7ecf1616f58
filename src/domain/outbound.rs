//! What we send on WhatsApp (`OutboundMessage`) and the platform rules every send must obey:
//! the 24-hour customer service window, the text length limit (long replies are split at
//! paragraph or sentence boundaries), and the interactive message limits. Pure; the send
//! planner applies these right before the provider call.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};

/// WhatsApp's text message limit, in characters.
pub const MAX_TEXT_CHARS: usize = 4096;
/// The customer service window opened by a customer's message.
pub const SERVICE_WINDOW: Duration = Duration::hours(24);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum OutboundMessage {
    Text {
        text: String,
        /// The customer's message this one answers (shown quoted). Meta sends it as
        /// `context.message_id`; ACS has no equivalent and ignores it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reply_to: Option<String>,
    },
    Image {
        url: String,
        caption: Option<String>,
    },
    Document {
        url: String,
        caption: Option<String>,
        file_name: Option<String>,
    },
    Video {
        url: String,
        caption: Option<String>,
    },
    Audio {
        url: String,
    },
    Sticker {
        url: String,
    },
    Template(TemplateMessage),
    Interactive(Interactive),
    Reaction {
        /// The message being reacted to.
        message_id: String,
        emoji: String,
    },
}

impl OutboundMessage {
    /// A text message that answers nothing in particular.
    pub fn text(text: impl Into<String>) -> Self {
        Self::Text {
            text: text.into(),
            reply_to: None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Text { .. } => "text",
            Self::Image { .. } => "image",
            Self::Document { .. } => "document",
            Self::Video { .. } => "video",
            Self::Audio { .. } => "audio",
            Self::Sticker { .. } => "sticker",
            Self::Template(_) => "template",
            Self::Interactive(_) => "interactive",
            Self::Reaction { .. } => "reaction",
        }
    }

    /// Templates are the only messages allowed outside the service window.
    pub fn is_free_form(&self) -> bool {
        !matches!(self, Self::Template(_))
    }
}

/// A template send, already checked against the registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateMessage {
    pub name: String,
    pub language: String,
    /// Body parameters in order: `{{1}}`, `{{2}}`, …
    pub body: Vec<String>,
    /// Quick-reply button payloads, in button order (the template's quick replies come first:
    /// payload `i` goes to button index `i`).
    pub quick_replies: Vec<String>,
    /// The header's parameter, for templates with a variable header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<TemplateHeader>,
    /// The dynamic suffixes of URL buttons, each at its button index in the template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub url_buttons: Vec<UrlButton>,
    /// Set for sends that must happen at most once even across crashes and replicas (the
    /// handoff's continuation): providers that deduplicate requests use it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotency: Option<Idempotency>,
}

/// A template header's parameter: text for `{{1}}` in a text header, or the media of a media
/// header (by public link).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TemplateHeader {
    Text {
        text: String,
    },
    Image {
        url: String,
    },
    Video {
        url: String,
    },
    Document {
        url: String,
        file_name: Option<String>,
    },
}

/// The variable part of a URL button's URL (`https://example.com/track/{{1}}`), at the
/// button's index among the template's buttons.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UrlButton {
    pub index: usize,
    pub text: String,
}

/// A logical send's identity: the same key and first-sent time on every attempt, by any replica.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Idempotency {
    pub key: String,
    pub first_sent: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Interactive {
    #[serde(default)]
    pub header: Option<String>,
    pub body: String,
    #[serde(default)]
    pub footer: Option<String>,
    pub action: InteractiveAction,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum InteractiveAction {
    Buttons {
        buttons: Vec<ReplyButton>,
    },
    List {
        title: String,
        sections: Vec<ListSection>,
    },
    Url {
        title: String,
        url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReplyButton {
    pub id: String,
    pub title: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListSection {
    pub title: String,
    pub rows: Vec<ListRow>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListRow {
    pub id: String,
    pub title: String,
    #[serde(default)]
    pub description: Option<String>,
}

/// Why an interactive message cannot be sent as built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InteractiveError {
    #[error("reply buttons: {0} given, 1 to 3 allowed")]
    ButtonCount(usize),
    #[error("list: {0} rows in total, 1 to 10 allowed")]
    RowCount(usize),
    #[error("list: {0} sections, 1 to 10 allowed")]
    SectionCount(usize),
    #[error("{field} is {len} characters, at most {max} allowed")]
    TooLong {
        field: &'static str,
        len: usize,
        max: usize,
    },
    #[error("{field} is empty")]
    Empty { field: &'static str },
    #[error("button id has leading or trailing spaces")]
    PaddedId,
}

fn check_len(field: &'static str, value: &str, max: usize) -> Result<(), InteractiveError> {
    let len = value.chars().count();
    if len == 0 {
        return Err(InteractiveError::Empty { field });
    }
    if len > max {
        return Err(InteractiveError::TooLong { field, len, max });
    }
    Ok(())
}

impl Interactive {
    /// WhatsApp's limits for interactive messages.
    pub fn validate(&self) -> Result<(), InteractiveError> {
        check_len("body", &self.body, 1024)?;
        if let Some(header) = &self.header {
            check_len("header", header, 60)?;
        }
        if let Some(footer) = &self.footer {
            check_len("footer", footer, 60)?;
        }
        match &self.action {
            InteractiveAction::Buttons { buttons } => {
                if !(1..=3).contains(&buttons.len()) {
                    return Err(InteractiveError::ButtonCount(buttons.len()));
                }
                for b in buttons {
                    check_len("button title", &b.title, 20)?;
                    check_len("button id", &b.id, 256)?;
                    if b.id.trim() != b.id {
                        return Err(InteractiveError::PaddedId);
                    }
                }
            }
            InteractiveAction::List { title, sections } => {
                check_len("list button", title, 20)?;
                if !(1..=10).contains(&sections.len()) {
                    return Err(InteractiveError::SectionCount(sections.len()));
                }
                let rows: usize = sections.iter().map(|s| s.rows.len()).sum();
                if !(1..=10).contains(&rows) {
                    return Err(InteractiveError::RowCount(rows));
                }
                for s in sections {
                    check_len("section title", &s.title, 24)?;
                    for r in &s.rows {
                        check_len("row title", &r.title, 24)?;
                        check_len("row id", &r.id, 200)?;
                        if let Some(d) = &r.description {
                            check_len("row description", d, 72)?;
                        }
                    }
                }
            }
            InteractiveAction::Url { title, url } => {
                check_len("url title", title, 20)?;
                check_len("url", url, 2000)?;
            }
        }
        Ok(())
    }
}

/// The free-form window as of `now`: open until 24 h after the last inbound message, minus the
/// safety margin, unless WhatsApp told us it closed after that message.
pub fn window_open(
    last_inbound_at: Option<DateTime<Utc>>,
    window_closed_at: Option<DateTime<Utc>>,
    margin: Duration,
    now: DateTime<Utc>,
) -> bool {
    let Some(last) = last_inbound_at else {
        return false;
    };
    if window_closed_at.is_some_and(|closed| closed >= last) {
        return false;
    }
    now < last + SERVICE_WINDOW - margin
}

/// Splits text longer than `max` characters into ordered parts, preferring paragraph breaks,
/// then line breaks, then sentence ends, then spaces; a hard cut only when a part has none.
pub fn split_text(text: &str, max: usize) -> Vec<String> {
    let max = max.max(1);
    let mut parts = Vec::new();
    let mut rest = text.trim();
    while rest.chars().count() > max {
        // Byte index of the char boundary after `max` chars.
        let limit = rest
            .char_indices()
            .nth(max)
            .map(|(i, _)| i)
            .unwrap_or(rest.len());
        let window = &rest[..limit];
        // (separator, bytes of it that stay with the head: a sentence keeps its full stop)
        let cut = [
            ("\n\n", 0),
            ("\n", 0),
            (". ", 1),
            ("! ", 1),
            ("? ", 1),
            (" ", 0),
        ]
        .iter()
        .find_map(|(sep, keep)| window.rfind(sep).filter(|&i| i > 0).map(|i| i + keep))
        .unwrap_or(limit);
        let (head, tail) = rest.split_at(cut);
        let head = head.trim();
        if !head.is_empty() {
            parts.push(head.to_owned());
        }
        rest = tail.trim_start();
    }
    if !rest.is_empty() {
        parts.push(rest.to_owned());
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(h: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap() + Duration::hours(h)
    }

    #[test]
    fn window_is_open_for_24_hours_minus_the_margin() {
        let m = Duration::seconds(120);
        assert!(window_open(Some(t(0)), None, m, t(1)));
        assert!(window_open(
            Some(t(0)),
            None,
            m,
            t(24) - Duration::seconds(121)
        ));
        // Inside the safety margin counts as closed.
        assert!(!window_open(
            Some(t(0)),
            None,
            m,
            t(24) - Duration::seconds(60)
        ));
        assert!(!window_open(Some(t(0)), None, m, t(25)));
        assert!(!window_open(None, None, m, t(0)));
    }

    #[test]
    fn a_reported_closure_wins_until_the_next_inbound_message() {
        let m = Duration::zero();
        assert!(!window_open(Some(t(0)), Some(t(1)), m, t(2)));
        assert!(window_open(Some(t(3)), Some(t(1)), m, t(4)));
    }

    #[test]
    fn long_text_splits_at_paragraphs_then_sentences() {
        let text = format!("{}\n\n{}", "a".repeat(30), "b".repeat(30));
        assert_eq!(split_text(&text, 40), vec!["a".repeat(30), "b".repeat(30)]);
        let text = "One sentence here. Another sentence there. A third one.";
        let parts = split_text(text, 25);
        assert_eq!(parts[0], "One sentence here.");
        assert!(parts.iter().all(|p| p.chars().count() <= 25), "{parts:?}");
        assert_eq!(parts.join(" "), text);
        let hard = "x".repeat(10);
        assert_eq!(split_text(&hard, 4), vec!["xxxx", "xxxx", "xx"]);
        assert_eq!(split_text("short", 4096), vec!["short"]);
    }

    #[test]
    fn split_respects_multibyte_characters() {
        let text = "é".repeat(9000);
        let parts = split_text(&text, MAX_TEXT_CHARS);
        assert_eq!(parts.len(), 3);
        assert!(parts.iter().all(|p| p.chars().count() <= MAX_TEXT_CHARS));
    }

    #[test]
    fn interactive_limits_are_typed_errors() {
        let buttons = |n: usize| Interactive {
            header: None,
            body: "Pick".into(),
            footer: None,
            action: InteractiveAction::Buttons {
                buttons: (0..n)
                    .map(|i| ReplyButton {
                        id: format!("b{i}"),
                        title: "Yes".into(),
                    })
                    .collect(),
            },
        };
        assert_eq!(buttons(3).validate(), Ok(()));
        assert_eq!(buttons(4).validate(), Err(InteractiveError::ButtonCount(4)));
        assert_eq!(buttons(0).validate(), Err(InteractiveError::ButtonCount(0)));
        let mut long = buttons(1);
        long.action = InteractiveAction::Buttons {
            buttons: vec![ReplyButton {
                id: "a".into(),
                title: "x".repeat(21),
            }],
        };
        assert!(matches!(
            long.validate(),
            Err(InteractiveError::TooLong {
                field: "button title",
                ..
            })
        ));
        let list = Interactive {
            header: Some("h".repeat(61)),
            body: "b".into(),
            footer: None,
            action: InteractiveAction::List {
                title: "Options".into(),
                sections: vec![],
            },
        };
        assert!(matches!(
            list.validate(),
            Err(InteractiveError::TooLong {
                field: "header",
                ..
            })
        ));
        let rows = |n: usize| Interactive {
            header: None,
            body: "b".into(),
            footer: None,
            action: InteractiveAction::List {
                title: "Options".into(),
                sections: vec![ListSection {
                    title: "S".into(),
                    rows: (0..n)
                        .map(|i| ListRow {
                            id: format!("r{i}"),
                            title: "Row".into(),
                            description: Some("d".repeat(72)),
                        })
                        .collect(),
                }],
            },
        };
        assert_eq!(rows(10).validate(), Ok(()));
        assert_eq!(rows(11).validate(), Err(InteractiveError::RowCount(11)));
    }
}
