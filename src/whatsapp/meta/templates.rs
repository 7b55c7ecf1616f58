//! Meta's template list: `GET /{version}/{waba_id}/message_templates` with the bearer token,
//! every page, turned into the same [`TemplateSpec`]s the ACS list gives. Only `APPROVED`
//! templates are usable; every other status is kept so a send is refused with the reason.

use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::acs::RetryPolicy;
use crate::config::Secret;
use crate::domain::template::{TemplateButton, TemplateCategory, TemplateSpec, TemplateStatus};
use crate::whatsapp::SenderError;

/// A WhatsApp Business Account never has this many pages of templates (Meta allows a few
/// thousand templates, 100 per page); the bound only stops a misbehaving server.
const MAX_PAGES: usize = 100;
const FIELDS: &str = "name,language,status,category,components";

/// Lists the templates of one WhatsApp Business Account.
pub struct MetaTemplates {
    http: reqwest::Client,
    base_url: String,
    version: String,
    waba_id: String,
    token: Secret<String>,
    retry: RetryPolicy,
    /// The token's health shared with the Meta senders: 190 here counts as there.
    health: Arc<super::TokenHealth>,
}

#[derive(Debug, Default, Deserialize)]
struct Page {
    /// Kept as raw values: one odd template must not cost the rest of the list.
    #[serde(default)]
    data: Vec<Value>,
    #[serde(default)]
    paging: Option<Paging>,
}

#[derive(Debug, Default, Deserialize)]
struct Paging {
    #[serde(default)]
    cursors: Option<Cursors>,
    #[serde(default)]
    next: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
struct Cursors {
    #[serde(default)]
    after: Option<String>,
}

/// Where the next page is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// Our own list URL with `after=<cursor>`.
    After(String),
    /// Meta's `paging.next` URL, used only when it has no cursor and points at our Graph host.
    Url(String),
}

impl MetaTemplates {
    pub fn new(base_url: &str, version: &str, waba_id: &str, token: Secret<String>) -> Self {
        Self {
            http: super::graph_client(),
            base_url: base_url.trim_end_matches('/').to_owned(),
            version: version.to_owned(),
            waba_id: waba_id.to_owned(),
            token,
            retry: RetryPolicy::default(),
            health: Arc::default(),
        }
    }

    /// Shares the token's health with the Meta senders (the same `META_ACCESS_TOKEN`): a 190
    /// from the template list fails readiness like one from a send, a success clears it.
    pub fn with_token_health(mut self, health: Arc<super::TokenHealth>) -> Self {
        self.health = health;
        self
    }

    fn list_url(&self) -> String {
        format!(
            "{}/{}/{}/message_templates",
            self.base_url, self.version, self.waba_id
        )
    }

    /// Every template of the account, following `paging` to the last page (the one without
    /// `paging.next`). Any page failing fails the whole list, so a partial list never replaces
    /// a complete one.
    pub async fn list(&self) -> Result<Vec<TemplateSpec>, SenderError> {
        let mut specs = Vec::new();
        let mut next: Option<Next> = None;
        let mut seen = Vec::new();
        for _ in 0..MAX_PAGES {
            let request = match &next {
                None => self
                    .http
                    .get(self.list_url())
                    .query(&[("fields", FIELDS), ("limit", "100")]),
                Some(Next::After(cursor)) => self.http.get(self.list_url()).query(&[
                    ("fields", FIELDS),
                    ("limit", "100"),
                    ("after", cursor.as_str()),
                ]),
                Some(Next::Url(url)) => self.http.get(url),
            };
            let page = self.fetch(request).await?;
            specs.extend(page.data.iter().filter_map(template_spec));
            match next_page(page.paging.as_ref(), &self.base_url) {
                None => return Ok(specs),
                Some(n) if seen.contains(&n) => {
                    return Err(SenderError::Unavailable(
                        "template list: the same page was offered twice".into(),
                    ));
                }
                Some(n) => {
                    seen.push(n.clone());
                    next = Some(n);
                }
            }
        }
        Err(SenderError::Unavailable(format!(
            "template list: more than {MAX_PAGES} pages"
        )))
    }

    /// One page, retrying transient failures (429, 5xx, transport) with bounded backoff.
    async fn fetch(&self, request: reqwest::RequestBuilder) -> Result<Page, SenderError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let Some(this) = request.try_clone() else {
                return Err(SenderError::Unavailable("template list request".into()));
            };
            let (failure, retry_after) = match this.bearer_auth(self.token.expose()).send().await {
                Ok(r) if r.status().is_success() => {
                    self.health.works();
                    // Without the URL: a `next` URL may carry a token in its query.
                    let body = r.bytes().await.map_err(|e| {
                        SenderError::Unavailable(format!("template list: {}", e.without_url()))
                    })?;
                    return serde_json::from_slice(&body)
                        .map_err(|e| SenderError::Unavailable(format!("template list: {e}")));
                }
                Ok(r) => {
                    let status = r.status().as_u16();
                    let retry_after = crate::acs::retry_after(r.headers());
                    let error = r
                        .json::<super::GraphErrorBody>()
                        .await
                        .map(|b| b.error)
                        .unwrap_or_default();
                    let code = error.code.map(|c| c.to_string()).unwrap_or_default();
                    if error.code.map(super::classify) == Some(super::GraphErrorClass::TokenExpired)
                    {
                        self.health.expired("template list");
                    }
                    let transient = status == 429
                        || status >= 500
                        || error.code.map(super::classify)
                            == Some(super::GraphErrorClass::Transient);
                    if !transient {
                        return Err(SenderError::Rejected {
                            status,
                            code,
                            message: error.message.unwrap_or_default(),
                        });
                    }
                    (format!("{status} {code}"), retry_after)
                }
                Err(err) if err.is_timeout() => ("timed out".to_owned(), None),
                Err(_) => ("connection failed".to_owned(), None),
            };
            if attempt >= self.retry.max_attempts {
                return Err(SenderError::Unavailable(format!(
                    "template list: {failure}"
                )));
            }
            tokio::time::sleep(self.retry.delay(attempt, retry_after)).await;
        }
    }
}

/// The page after this one: none when `paging.next` is absent (the last page). Otherwise the
/// `after` cursor on our own URL; a bare `next` URL only when it points at `base_url`'s host,
/// so the token never goes anywhere else.
fn next_page(paging: Option<&Paging>, base_url: &str) -> Option<Next> {
    let paging = paging?;
    let next = paging
        .next
        .as_deref()
        .map(str::trim)
        .filter(|n| !n.is_empty())?;
    if let Some(after) = paging
        .cursors
        .as_ref()
        .and_then(|c| c.after.as_deref())
        .map(str::trim)
        .filter(|a| !a.is_empty())
    {
        return Some(Next::After(after.to_owned()));
    }
    let same_origin = match (reqwest::Url::parse(next), reqwest::Url::parse(base_url)) {
        (Ok(next), Ok(base)) => next.origin() == base.origin(),
        _ => false,
    };
    if same_origin {
        Some(Next::Url(next.to_owned()))
    } else {
        tracing::warn!("Meta template list: a next page on another host was not followed");
        None
    }
}

/// One `data[]` item as a spec; `None` without a name or language.
fn template_spec(item: &Value) -> Option<TemplateSpec> {
    let text = |v: &Value, key: &str| {
        v.get(key)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
    };
    let name = text(item, "name")?;
    let language = text(item, "language")?;
    let components = item
        .get("components")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (body_parameters, buttons) = components_shape(components);
    let status = match text(item, "status")
        .map(|s| s.to_ascii_uppercase())
        .as_deref()
    {
        Some("APPROVED") => TemplateStatus::Approved,
        Some("PENDING") | Some("IN_APPEAL") => TemplateStatus::Pending,
        Some("REJECTED") => TemplateStatus::Rejected,
        Some("PAUSED") => TemplateStatus::Paused,
        // DISABLED, PENDING_DELETION, DELETED, ARCHIVED, LIMIT_EXCEEDED, anything new: not
        // approved, so not usable.
        _ => TemplateStatus::Disabled,
    };
    let category = match text(item, "category")
        .map(|s| s.to_ascii_uppercase())
        .as_deref()
    {
        Some("MARKETING") => TemplateCategory::Marketing,
        Some("AUTHENTICATION") => TemplateCategory::Authentication,
        _ => TemplateCategory::Utility,
    };
    Some(TemplateSpec {
        name,
        language,
        category,
        body_parameters,
        buttons,
        status,
    })
}

/// What a sender must supply for a template, from WhatsApp's `components` array (the shape
/// both Meta's list and ACS's list return): distinct body placeholders, and the buttons in order.
pub(crate) fn components_shape(components: &[Value]) -> (usize, Vec<TemplateButton>) {
    let kind_is = |c: &Value, k: &str| {
        c.get("type")
            .and_then(Value::as_str)
            .is_some_and(|t| t.eq_ignore_ascii_case(k))
    };
    let body_parameters = components
        .iter()
        .find(|c| kind_is(c, "BODY"))
        .and_then(|c| c.get("text").and_then(Value::as_str))
        .map(placeholders)
        .unwrap_or(0);
    let buttons = components
        .iter()
        .filter(|c| kind_is(c, "BUTTONS"))
        .filter_map(|c| c.get("buttons").and_then(Value::as_array))
        .flatten()
        .map(|b| {
            if kind_is(b, "QUICK_REPLY") {
                TemplateButton::QuickReply
            } else if kind_is(b, "URL") {
                TemplateButton::Url
            } else {
                TemplateButton::Other
            }
        })
        .collect();
    (body_parameters, buttons)
}

/// Distinct `{{…}}` placeholders in a body text: `{{1}}` twice is one parameter; named
/// placeholders (`{{order_id}}`) count like positional ones.
fn placeholders(text: &str) -> usize {
    let mut names: Vec<&str> = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("{{") {
        let after = &rest[start + 2..];
        let Some(end) = after.find("}}") else {
            break;
        };
        let name = after[..end].trim();
        if !name.is_empty() && !names.contains(&name) {
            names.push(name);
        }
        rest = &after[end + 2..];
    }
    names.len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paging(v: Value) -> Paging {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn paging_follows_the_after_cursor_until_a_page_has_no_next() {
        let base = "https://graph.facebook.com";
        let middle = paging(json!({"cursors": {"before": "b1", "after": "a1"},
            "next": "https://graph.facebook.com/v23.0/1/message_templates?after=a1&access_token=x"}));
        assert_eq!(
            next_page(Some(&middle), base),
            Some(Next::After("a1".into()))
        );
        // The last page still has cursors, but no `next`.
        let last = paging(json!({"cursors": {"before": "b2", "after": "a2"}}));
        assert_eq!(next_page(Some(&last), base), None);
        assert_eq!(next_page(None, base), None);
        assert_eq!(next_page(Some(&paging(json!({"next": ""}))), base), None);
    }

    #[test]
    fn paging_without_a_cursor_follows_next_only_on_the_graph_host() {
        let base = "http://127.0.0.1:4000";
        let own = paging(json!({"next": "http://127.0.0.1:4000/v23.0/1/message_templates?page=2"}));
        assert_eq!(
            next_page(Some(&own), base),
            Some(Next::Url(
                "http://127.0.0.1:4000/v23.0/1/message_templates?page=2".into()
            ))
        );
        for elsewhere in [
            "http://127.0.0.1:4001/v23.0/1/message_templates?page=2",
            "https://evil.example.com/steal",
            "not a url",
        ] {
            let p = paging(json!({ "next": elsewhere }));
            assert_eq!(next_page(Some(&p), base), None, "{elsewhere}");
        }
    }

    #[test]
    fn templates_map_to_specs_with_status_category_parameters_and_buttons() {
        let item = json!({"name": "conversation_continuation", "language": "en_US",
            "status": "APPROVED", "category": "UTILITY", "id": "1", "parameter_format": "POSITIONAL",
            "components": [
                {"type": "HEADER", "format": "TEXT", "text": "Hello"},
                {"type": "BODY", "text": "Hi {{1}}, about {{2}}. Again: {{1}}.",
                 "example": {"body_text": [["Ada", "your bill"]]}},
                {"type": "BUTTONS", "buttons": [
                    {"type": "QUICK_REPLY", "text": "Continue"},
                    {"type": "URL", "text": "Open", "url": "https://example.com/{{1}}"},
                    {"type": "PHONE_NUMBER", "text": "Call", "phone_number": "+15550000000"}]}]});
        let spec = template_spec(&item).unwrap();
        assert_eq!(spec.name, "conversation_continuation");
        assert_eq!(spec.language, "en_US");
        assert_eq!(spec.status, TemplateStatus::Approved);
        assert_eq!(spec.category, TemplateCategory::Utility);
        assert_eq!(spec.body_parameters, 2);
        assert_eq!(
            spec.buttons,
            [
                TemplateButton::QuickReply,
                TemplateButton::Url,
                TemplateButton::Other
            ]
        );
        let named = json!({"name": "promo", "language": "de", "status": "paused",
            "category": "marketing",
            "components": [{"type": "body", "text": "Hallo {{first_name}}, {{ code }}"}]});
        let spec = template_spec(&named).unwrap();
        assert_eq!(spec.status, TemplateStatus::Paused);
        assert_eq!(spec.category, TemplateCategory::Marketing);
        assert_eq!(spec.body_parameters, 2);
        assert!(spec.buttons.is_empty());
        for status in ["DISABLED", "PENDING_DELETION", "ARCHIVED", "SOMETHING_NEW"] {
            let item = json!({"name": "t", "language": "en", "status": status});
            assert_eq!(
                template_spec(&item).unwrap().status,
                TemplateStatus::Disabled,
                "{status}"
            );
        }
        assert_eq!(
            template_spec(&json!({"name": "t", "language": "en", "status": "IN_APPEAL"}))
                .unwrap()
                .status,
            TemplateStatus::Pending
        );
        assert!(template_spec(&json!({"language": "en"})).is_none());
        assert!(template_spec(&json!({"name": "t", "language": 5})).is_none());
        assert!(template_spec(&json!("not an object")).is_none());
    }

    #[test]
    fn placeholders_are_counted_once_each() {
        assert_eq!(placeholders("no parameters"), 0);
        assert_eq!(placeholders("{{1}} and {{2}} and {{1}}"), 2);
        assert_eq!(placeholders("{{}} unclosed {{3"), 0);
        assert_eq!(placeholders("{{a}}{{b}}{{c}}"), 3);
    }
}
