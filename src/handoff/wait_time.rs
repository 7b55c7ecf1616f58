//! Where the estimated wait comes from: a configured figure, or an HTTP endpoint that answers
//! the current wait in seconds (plain number, or JSON `{"wait_seconds": n}` / `{"seconds": n}`).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::config::{HandoffSettings, OutsideHours};

#[async_trait]
pub trait WaitTimeSource: Send + Sync + 'static {
    async fn wait_seconds(&self) -> Result<u64, String>;
}

pub struct FixedWait(pub u64);

#[async_trait]
impl WaitTimeSource for FixedWait {
    async fn wait_seconds(&self) -> Result<u64, String> {
        Ok(self.0)
    }
}

pub struct HttpWait {
    http: reqwest::Client,
    url: String,
}

impl HttpWait {
    pub fn new(http: reqwest::Client, url: String) -> Self {
        Self { http, url }
    }
}

#[async_trait]
impl WaitTimeSource for HttpWait {
    async fn wait_seconds(&self) -> Result<u64, String> {
        let response = self
            .http
            .get(&self.url)
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| format!("wait-time endpoint unreachable: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("wait-time endpoint answered {}", response.status()));
        }
        let body = response.text().await.map_err(|e| e.to_string())?;
        parse_wait(&body)
            .ok_or_else(|| "wait-time endpoint answered no number of seconds".to_owned())
    }
}

fn parse_wait(body: &str) -> Option<u64> {
    if let Ok(n) = body.trim().parse::<f64>() {
        return (n >= 0.0).then_some(n.round() as u64);
    }
    let value: Value = serde_json::from_str(body).ok()?;
    ["wait_seconds", "waitSeconds", "seconds", "wait"]
        .iter()
        .find_map(|k| value.get(*k).and_then(Value::as_f64))
        .filter(|n| *n >= 0.0)
        .map(|n| n.round() as u64)
}

/// The answer to the `check_wait_time` tool: the wait, and what the business rules allow.
pub async fn check_wait_time(
    source: &dyn WaitTimeSource,
    settings: &HandoffSettings,
    now: DateTime<Utc>,
) -> Value {
    let wait = match source.wait_seconds().await {
        Ok(wait) => wait,
        Err(err) => {
            tracing::warn!(error = %err, "wait time unavailable");
            return json!({"error": "wait time unavailable", "offer_allowed": false});
        }
    };
    let over = wait > settings.wait_threshold.as_secs();
    let open = settings.business_hours.is_open(now);
    let offer_allowed = over && (open || settings.outside_hours == OutsideHours::OfferWithNotice);
    let mut out = json!({
        "wait_seconds": wait,
        "over_threshold": over,
        "within_business_hours": open,
        "offer_allowed": offer_allowed,
    });
    if !open && let Some(when) = settings.business_hours.describe_next_opening(now) {
        out["replies_from"] = json!(when);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wait_bodies_in_the_shapes_endpoints_use() {
        assert_eq!(parse_wait("300"), Some(300));
        assert_eq!(parse_wait(" 12.6\n"), Some(13));
        assert_eq!(parse_wait(r#"{"wait_seconds": 90}"#), Some(90));
        assert_eq!(parse_wait(r#"{"seconds": 5}"#), Some(5));
        assert_eq!(parse_wait("soon"), None);
        assert_eq!(parse_wait("-4"), None);
    }

    fn settings(hours: &str, outside: OutsideHours) -> HandoffSettings {
        let mut s = crate::config::Settings::from_lookup(|_| None)
            .unwrap()
            .handoff;
        s.business_hours = crate::domain::BusinessHours::parse("UTC", hours).unwrap();
        s.outside_hours = outside;
        s
    }

    #[tokio::test]
    async fn the_offer_follows_threshold_hours_and_policy() {
        // 2026-11-23 is a Monday.
        let monday_noon = DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let sunday = DateTime::parse_from_rfc3339("2026-11-22T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let s = settings("mon-fri 09:00-17:00", OutsideHours::OfferWithNotice);
        let r = check_wait_time(&FixedWait(600), &s, monday_noon).await;
        assert_eq!(r["offer_allowed"], true);
        assert!(r.get("replies_from").is_none());
        let r = check_wait_time(&FixedWait(60), &s, monday_noon).await;
        assert_eq!(r["offer_allowed"], false);
        let r = check_wait_time(&FixedWait(600), &s, sunday).await;
        assert_eq!(r["offer_allowed"], true);
        assert_eq!(r["replies_from"], "Monday 09:00");
        let s = settings("mon-fri 09:00-17:00", OutsideHours::NoOffer);
        let r = check_wait_time(&FixedWait(600), &s, sunday).await;
        assert_eq!(r["offer_allowed"], false);
        assert_eq!(r["within_business_hours"], false);
    }
}
