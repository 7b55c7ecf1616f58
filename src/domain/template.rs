//! The template registry: which approved WhatsApp templates exist, in which language, with how
//! many body parameters and buttons, and the rules a parameter must obey. Every template send is
//! checked here first, so a mismatch is our typed error and never a provider error (132000).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::WhatsAppProvider;
use super::outbound::TemplateMessage;

/// The template the handoff sends: {{1}} the customer's name, {{2}} the call summary.
pub const CONVERSATION_CONTINUATION: &str = "conversation_continuation";
/// WhatsApp's limit on one template parameter.
pub const MAX_PARAM_CHARS: usize = 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TemplateCategory {
    #[serde(alias = "utility")]
    Utility,
    #[serde(alias = "marketing")]
    Marketing,
    #[serde(alias = "authentication")]
    Authentication,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateStatus {
    Approved,
    Pending,
    Rejected,
    Paused,
    /// Disabled, deleted, archived, or any other state the provider does not send in.
    Disabled,
    /// Declared locally and not (yet) confirmed by the provider.
    Unknown,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TemplateButton {
    QuickReply,
    Url,
    /// Any other kind (phone number, copy code, flow, …): it takes no quick-reply payload but
    /// keeps its position among the buttons.
    Other,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemplateSpec {
    pub name: String,
    pub language: String,
    pub category: TemplateCategory,
    pub body_parameters: usize,
    #[serde(default)]
    pub buttons: Vec<TemplateButton>,
    #[serde(default = "unknown_status")]
    pub status: TemplateStatus,
}

fn unknown_status() -> TemplateStatus {
    TemplateStatus::Unknown
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    #[error("template `{name}` ({language}) is not registered")]
    Unknown { name: String, language: String },
    #[error("template `{name}` is {status:?}, not approved")]
    NotApproved {
        name: String,
        status: TemplateStatus,
    },
    #[error("template `{name}` takes {expected} body parameter(s), {given} given")]
    ParameterCount {
        name: String,
        expected: usize,
        given: usize,
    },
    #[error("parameter {{{{{index}}}}}: {problem}")]
    Parameter { index: usize, problem: &'static str },
    #[error("template `{name}` has {buttons} quick-reply button(s), {given} payload(s) given")]
    ButtonCount {
        name: String,
        buttons: usize,
        given: usize,
    },
}

/// WhatsApp's rules for a text parameter: not empty, at most 1024 characters, no newlines or
/// tabs, no more than four consecutive spaces.
pub fn check_parameter(index: usize, value: &str) -> Result<(), TemplateError> {
    let problem = if value.trim().is_empty() {
        Some("is empty")
    } else if value.chars().count() > MAX_PARAM_CHARS {
        Some("is longer than 1024 characters")
    } else if value.contains(['\n', '\r', '\t']) {
        Some("contains a newline or tab")
    } else if value.contains("     ") {
        Some("contains more than four consecutive spaces")
    } else {
        None
    };
    problem.map_or(Ok(()), |problem| {
        Err(TemplateError::Parameter { index, problem })
    })
}

/// Templates by (name, language).
#[derive(Debug, Clone, Default)]
pub struct TemplateRegistry {
    templates: BTreeMap<(String, String), TemplateSpec>,
}

impl TemplateRegistry {
    /// The built-in `conversation_continuation` in `language`, with one quick-reply button.
    pub fn with_builtin(language: &str) -> Self {
        let mut registry = Self::default();
        registry.insert(TemplateSpec {
            name: CONVERSATION_CONTINUATION.into(),
            language: language.into(),
            category: TemplateCategory::Utility,
            body_parameters: 2,
            buttons: vec![TemplateButton::QuickReply],
            status: TemplateStatus::Unknown,
        });
        registry
    }

    pub fn insert(&mut self, spec: TemplateSpec) {
        self.templates
            .insert((spec.name.clone(), spec.language.clone()), spec);
    }

    pub fn get(&self, name: &str, language: &str) -> Option<&TemplateSpec> {
        self.templates.get(&(name.to_owned(), language.to_owned()))
    }

    pub fn all(&self) -> impl Iterator<Item = &TemplateSpec> {
        self.templates.values()
    }

    /// Builds a checked template message. Quick-reply payloads may be fewer than the template's
    /// buttons only when none are given (WhatsApp then sends the button without a payload).
    pub fn build(
        &self,
        name: &str,
        language: &str,
        body: Vec<String>,
        quick_replies: Vec<String>,
    ) -> Result<TemplateMessage, TemplateError> {
        let spec = self
            .get(name, language)
            .ok_or_else(|| TemplateError::Unknown {
                name: name.into(),
                language: language.into(),
            })?;
        if matches!(
            spec.status,
            TemplateStatus::Rejected
                | TemplateStatus::Paused
                | TemplateStatus::Pending
                | TemplateStatus::Disabled
        ) {
            return Err(TemplateError::NotApproved {
                name: name.into(),
                status: spec.status,
            });
        }
        if body.len() != spec.body_parameters {
            return Err(TemplateError::ParameterCount {
                name: name.into(),
                expected: spec.body_parameters,
                given: body.len(),
            });
        }
        for (i, value) in body.iter().enumerate() {
            check_parameter(i + 1, value)?;
        }
        let buttons = spec
            .buttons
            .iter()
            .filter(|b| **b == TemplateButton::QuickReply)
            .count();
        if quick_replies.len() > buttons {
            return Err(TemplateError::ButtonCount {
                name: name.into(),
                buttons,
                given: quick_replies.len(),
            });
        }
        Ok(TemplateMessage {
            name: spec.name.clone(),
            language: spec.language.clone(),
            body,
            quick_replies,
            header: None,
            url_buttons: Vec::new(),
            idempotency: None,
        })
    }
}

/// The templates the service sends from: those declared locally (built-in and
/// `WHATSAPP_TEMPLATES_FILE`), overlaid per provider by that provider's own template list, so
/// that during a migration each provider is checked against what it really has.
#[derive(Debug, Clone, Default)]
pub struct TemplateCatalog {
    local: TemplateRegistry,
    synced: BTreeMap<WhatsAppProvider, TemplateRegistry>,
}

impl TemplateCatalog {
    pub fn new(local: TemplateRegistry) -> Self {
        Self {
            local,
            synced: BTreeMap::new(),
        }
    }

    /// What `provider`'s template list said, in full: replaces its previous list (a template
    /// deleted at the provider disappears). A failed sync does not call this.
    pub fn replace(&mut self, provider: WhatsAppProvider, specs: Vec<TemplateSpec>) {
        let mut registry = TemplateRegistry::default();
        specs.into_iter().for_each(|s| registry.insert(s));
        self.synced.insert(provider, registry);
    }

    /// The registry `provider` sends from: local templates, overlaid by its synced ones.
    pub fn for_provider(&self, provider: WhatsAppProvider) -> TemplateRegistry {
        let mut view = self.local.clone();
        if let Some(synced) = self.synced.get(&provider) {
            synced.all().cloned().for_each(|s| view.insert(s));
        }
        view
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameter_rules() {
        assert!(check_parameter(1, "Ada").is_ok());
        assert!(check_parameter(1, "four    spaces").is_ok());
        assert!(check_parameter(1, "five     spaces").is_err());
        assert!(check_parameter(2, "a\nb").is_err());
        assert!(check_parameter(2, "a\tb").is_err());
        assert!(check_parameter(2, "").is_err());
        assert!(check_parameter(2, &"x".repeat(1025)).is_err());
        assert!(check_parameter(2, &"x".repeat(1024)).is_ok());
    }

    #[test]
    fn builds_only_what_the_registry_allows() {
        let r = TemplateRegistry::with_builtin("en_US");
        let ok = r
            .build(
                CONVERSATION_CONTINUATION,
                "en_US",
                vec!["Ada".into(), "Billing question".into()],
                vec!["handoff-1".into()],
            )
            .unwrap();
        assert_eq!(ok.body.len(), 2);
        assert!(matches!(
            r.build(
                CONVERSATION_CONTINUATION,
                "en_US",
                vec!["Ada".into()],
                vec![]
            ),
            Err(TemplateError::ParameterCount {
                expected: 2,
                given: 1,
                ..
            })
        ));
        assert!(matches!(
            r.build(CONVERSATION_CONTINUATION, "de_DE", vec![], vec![]),
            Err(TemplateError::Unknown { .. })
        ));
        assert!(matches!(
            r.build(
                CONVERSATION_CONTINUATION,
                "en_US",
                vec!["Ada".into(), "x".into()],
                vec!["a".into(), "b".into()]
            ),
            Err(TemplateError::ButtonCount { .. })
        ));
    }

    #[test]
    fn each_provider_sends_from_its_own_synced_list_over_the_local_one() {
        let spec = |name: &str, status| TemplateSpec {
            name: name.into(),
            language: "en_US".into(),
            category: TemplateCategory::Utility,
            body_parameters: 1,
            buttons: vec![],
            status,
        };
        let mut catalog = TemplateCatalog::new(TemplateRegistry::with_builtin("en_US"));
        catalog.replace(
            WhatsAppProvider::Meta,
            vec![
                spec(CONVERSATION_CONTINUATION, TemplateStatus::Disabled),
                spec("order_update", TemplateStatus::Approved),
            ],
        );
        let meta = catalog.for_provider(WhatsAppProvider::Meta);
        assert!(matches!(
            meta.build(CONVERSATION_CONTINUATION, "en_US", vec!["a".into()], vec![]),
            Err(TemplateError::NotApproved {
                status: TemplateStatus::Disabled,
                ..
            })
        ));
        assert!(
            meta.build("order_update", "en_US", vec!["a".into()], vec![])
                .is_ok()
        );
        // ACS has not synced: the local declaration stands, and Meta's list is not its own.
        let acs = catalog.for_provider(WhatsAppProvider::Acs);
        assert_eq!(
            acs.get(CONVERSATION_CONTINUATION, "en_US").unwrap().status,
            TemplateStatus::Unknown
        );
        assert!(acs.get("order_update", "en_US").is_none());
        // A later list replaces the earlier one.
        catalog.replace(WhatsAppProvider::Meta, vec![]);
        assert!(
            catalog
                .for_provider(WhatsAppProvider::Meta)
                .get("order_update", "en_US")
                .is_none()
        );
    }

    #[test]
    fn templates_file_entries_parse() {
        let spec: TemplateSpec = serde_json::from_str(
            r#"{"name":"order_update","language":"en_US","category":"utility","body_parameters":1,"buttons":["quick_reply"]}"#,
        )
        .unwrap();
        assert_eq!(spec.category, TemplateCategory::Utility);
        assert_eq!(spec.status, TemplateStatus::Unknown);
    }
}
