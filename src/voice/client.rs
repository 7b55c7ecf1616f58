//! The voice provider port and its ACS Call Automation adapter (REST over [`AcsClient`]).
//!
//! Answer and terminate carry repeatability headers and are retried on transient failures;
//! hang-up (DELETE) and cancel are idempotent by nature; `:play` is never retried (ACS has no
//! repeatability for it, and a retried play would speak twice).

use async_trait::async_trait;
use reqwest::Method;
use serde::Deserialize;
use serde_json::json;

use crate::acs::{AcsClient, AcsError, AcsRequest, Retry};
use crate::config::VoiceSettings;

/// What answering a call needs.
#[derive(Debug, Clone)]
pub struct AnswerCall {
    pub incoming_call_context: String,
    /// Carries the per-call secret in its query string: never log it.
    pub callback_uri: String,
    /// The media/transcription WebSocket URL (also carries the secret).
    pub media_url: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnsweredCall {
    pub call_connection_id: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum VoiceError {
    #[error(transparent)]
    Acs(#[from] AcsError),
    #[error("unexpected answer from the voice provider: {0}")]
    Protocol(String),
}

impl VoiceError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Acs(e) if e.is_transient())
    }
}

/// The engine's view of a telephony provider: what the session and the handoff saga may ask.
#[async_trait]
pub trait VoiceProvider: Send + Sync + 'static {
    async fn answer(&self, call: &AnswerCall) -> Result<AnsweredCall, VoiceError>;
    /// Speaks `text` to everyone on the call; `operation_context` comes back on the
    /// PlayStarted/Completed/Failed/Canceled callbacks.
    async fn play_text(
        &self,
        call_connection_id: &str,
        text: &str,
        operation_context: &str,
    ) -> Result<(), VoiceError>;
    /// Stops and drops every queued or playing media operation (barge-in).
    async fn cancel_media(&self, call_connection_id: &str) -> Result<(), VoiceError>;
    /// The bot leaves the call (the call ends when it was the only other party).
    async fn hang_up(&self, call_connection_id: &str) -> Result<(), VoiceError>;
    /// Ends the call for everyone.
    async fn terminate(&self, call_connection_id: &str) -> Result<(), VoiceError>;
}

/// ACS Call Automation REST.
pub struct AcsCallAutomation {
    client: AcsClient,
    settings: VoiceSettings,
}

impl AcsCallAutomation {
    pub fn new(client: AcsClient, settings: VoiceSettings) -> Self {
        Self { client, settings }
    }

    fn path(call_connection_id: &str, action: &str) -> String {
        let id: String = url_escape(call_connection_id);
        format!("/calling/callConnections/{id}{action}")
    }

    /// The answer request body (public for tests and the sandbox).
    pub fn answer_body(settings: &VoiceSettings, call: &AnswerCall) -> serde_json::Value {
        let mut body = json!({
            "incomingCallContext": call.incoming_call_context,
            "callbackUri": call.callback_uri,
            "mediaStreamingOptions": {
                "transportType": "websocket",
                "transportUrl": call.media_url,
                "contentType": "audio",
                "audioChannelType": "mixed",
                "startMediaStreaming": true,
                "enableBidirectional": true,
                "audioFormat": settings.audio_format,
                "enableDtmfTones": true,
            },
            "transcriptionOptions": {
                "transportType": "websocket",
                "transportUrl": call.media_url,
                "locale": settings.locale,
                "startTranscription": true,
                "enableIntermediateResults": true,
            },
        });
        if let Some(endpoint) = &settings.cognitive_services_endpoint {
            body["callIntelligenceOptions"] = json!({ "cognitiveServicesEndpoint": endpoint });
        }
        body
    }

    pub fn play_body(
        settings: &VoiceSettings,
        text: &str,
        operation_context: &str,
    ) -> serde_json::Value {
        json!({
            "playSources": [{
                "kind": "text",
                "text": { "text": text, "sourceLocale": settings.locale, "voiceName": settings.tts_voice },
            }],
            "playOptions": { "loop": false },
            "operationContext": operation_context,
        })
    }
}

fn url_escape(id: &str) -> String {
    id.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct CallConnectionProperties {
    call_connection_id: Option<String>,
}

#[async_trait]
impl VoiceProvider for AcsCallAutomation {
    async fn answer(&self, call: &AnswerCall) -> Result<AnsweredCall, VoiceError> {
        let request = AcsRequest::post_json(
            "/calling/callConnections:answer",
            &self.settings.call_automation_api_version,
            &Self::answer_body(&self.settings, call),
            Retry::Repeatable,
        );
        let response = self.client.send(&request).await?;
        let props: CallConnectionProperties = serde_json::from_slice(&response.body)
            .map_err(|e| VoiceError::Protocol(format!("answer response: {e}")))?;
        let call_connection_id = props
            .call_connection_id
            .filter(|id| !id.is_empty())
            .ok_or_else(|| {
                VoiceError::Protocol("answer response has no callConnectionId".into())
            })?;
        Ok(AnsweredCall { call_connection_id })
    }

    async fn play_text(
        &self,
        call_connection_id: &str,
        text: &str,
        operation_context: &str,
    ) -> Result<(), VoiceError> {
        let request = AcsRequest::post_json(
            Self::path(call_connection_id, ":play"),
            &self.settings.call_automation_api_version,
            &Self::play_body(&self.settings, text, operation_context),
            Retry::Never,
        );
        self.client.send(&request).await?;
        Ok(())
    }

    async fn cancel_media(&self, call_connection_id: &str) -> Result<(), VoiceError> {
        let request = AcsRequest {
            method: Method::POST,
            path: Self::path(call_connection_id, ":cancelAllMediaOperations"),
            api_version: self.settings.call_automation_api_version.clone(),
            body: Some(bytes::Bytes::from_static(b"{}")),
            retry: Retry::Idempotent,
            repeatability: None,
        };
        self.client.send(&request).await?;
        Ok(())
    }

    async fn hang_up(&self, call_connection_id: &str) -> Result<(), VoiceError> {
        let request = AcsRequest {
            method: Method::DELETE,
            path: Self::path(call_connection_id, ""),
            api_version: self.settings.call_automation_api_version.clone(),
            body: None,
            retry: Retry::Idempotent,
            repeatability: None,
        };
        match self.client.send(&request).await {
            // Already gone: the goal of hanging up is reached.
            Err(AcsError::Rejected { status: 404, .. }) => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    }

    async fn terminate(&self, call_connection_id: &str) -> Result<(), VoiceError> {
        let request = AcsRequest {
            method: Method::POST,
            path: Self::path(call_connection_id, ":terminate"),
            api_version: self.settings.call_automation_api_version.clone(),
            body: Some(bytes::Bytes::from_static(b"{}")),
            retry: Retry::Repeatable,
            repeatability: None,
        };
        match self.client.send(&request).await {
            Err(AcsError::Rejected { status: 404, .. }) => Ok(()),
            other => other.map(drop).map_err(Into::into),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    #[test]
    fn answer_body_carries_media_transcription_and_intelligence_options() {
        let mut settings = Settings::embedded("/tmp/x").voice;
        settings.cognitive_services_endpoint = Some("https://ai.example".into());
        let body = AcsCallAutomation::answer_body(
            &settings,
            &AnswerCall {
                incoming_call_context: "ctx".into(),
                callback_uri: "https://h/cb?token=t".into(),
                media_url: "wss://h/ws?token=t".into(),
            },
        );
        assert_eq!(
            body["mediaStreamingOptions"]["transportUrl"],
            "wss://h/ws?token=t"
        );
        assert_eq!(body["mediaStreamingOptions"]["audioFormat"], "pcm16KMono");
        assert_eq!(body["transcriptionOptions"]["locale"], "en-US");
        assert_eq!(
            body["callIntelligenceOptions"]["cognitiveServicesEndpoint"],
            "https://ai.example"
        );
        let play = AcsCallAutomation::play_body(&settings, "Hi.", "t1:0");
        assert_eq!(
            play["playSources"][0]["text"]["voiceName"],
            "en-US-NancyNeural"
        );
    }

    #[test]
    fn call_ids_are_escaped_in_paths() {
        assert_eq!(
            AcsCallAutomation::path("a/b c", ":play"),
            "/calling/callConnections/a%2Fb%20c:play"
        );
    }
}
