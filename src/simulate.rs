//! The providers' side of the wire, for the demo and the benchmark harness: Event Grid
//! deliveries as ACS sends them, and ACS's side of the media/transcription WebSocket. What these
//! send is what the reference captures show ACS sending; the service under test cannot tell the
//! difference.

use chrono::Utc;
use futures::SinkExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

/// An Event Grid delivery of one `Microsoft.Communication.IncomingCall` from `phone` (E.164).
pub fn incoming_call(event_id: &str, correlation_id: &str, phone: &str) -> Value {
    json!([{
        "id": event_id,
        "topic": "/subscriptions/demo/resourcegroups/demo/providers/microsoft.communication/communicationservices/demo",
        "subject": format!("/caller/4:{phone}/recipient/4:+18005550100"),
        "data": {
            "to": {"kind": "phoneNumber", "rawId": "4:+18005550100", "phoneNumber": {"value": "+18005550100"}},
            "from": {"kind": "phoneNumber", "rawId": format!("4:{phone}"), "phoneNumber": {"value": phone}},
            "serverCallId": format!("server-{correlation_id}"),
            "callerDisplayName": "",
            "customContext": {"sipHeaders": {}, "voipHeaders": {}},
            "incomingCallContext": format!("context-{correlation_id}"),
            "correlationId": correlation_id
        },
        "eventType": "Microsoft.Communication.IncomingCall",
        "dataVersion": "1.0",
        "metadataVersion": "1",
        "eventTime": Utc::now().to_rfc3339()
    }])
}

/// An Event Grid delivery of one `AdvancedMessageReceived` text from `from` (WhatsApp digits)
/// to the business number `channel_id`.
pub fn whatsapp_text(
    event_id: &str,
    message_id: &str,
    from: &str,
    channel_id: &str,
    text: &str,
) -> Value {
    json!([{
        "id": event_id,
        "topic": "/subscriptions/demo/resourcegroups/demo/providers/microsoft.communication/communicationservices/demo",
        "subject": format!("advancedMessage/sender/{from}/recipient/{channel_id}"),
        "eventType": "Microsoft.Communication.AdvancedMessageReceived",
        "eventTime": Utc::now().to_rfc3339(),
        "data": {
            "channelType": "whatsapp",
            "messageType": "text",
            "messageId": message_id,
            "content": text,
            "from": from,
            "to": channel_id,
            "receivedTimestamp": Utc::now().to_rfc3339()
        },
        "dataVersion": "1.0",
        "metadataVersion": "1"
    }])
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// ACS's side of a call's media and transcription WebSocket.
pub struct MediaSocket {
    ws: Ws,
    participant: String,
}

impl MediaSocket {
    /// Connects to the transport URL the engine gave when answering and sends the metadata
    /// frames ACS sends first.
    pub async fn connect(
        url: &str,
        caller_phone: &str,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(url).await?;
        let mut socket = Self {
            ws,
            participant: format!("4:{caller_phone}"),
        };
        socket
            .send(json!({"kind": "AudioMetadata", "audioMetadata": {"subscriptionId": "demo", "encoding": "PCM", "sampleRate": 16000, "channels": 1, "length": 640}}))
            .await?;
        socket
            .send(json!({"kind": "TranscriptionMetadata", "transcriptionMetadata": {"subscriptionId": "demo", "locale": "en-US", "callConnectionId": "", "correlationId": ""}}))
            .await?;
        Ok(socket)
    }

    async fn send(&mut self, frame: Value) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::Text(frame.to_string().into())).await
    }

    /// Sends a frame rendered earlier (see [`MediaSocket::audio_frame_text`]): a load generator
    /// streaming many calls renders each call's frame once and spends its CPU on sending.
    pub async fn send_rendered(
        &mut self,
        frame: &Utf8Bytes,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        self.ws.send(Message::Text(frame.clone())).await
    }

    /// A transcription result; `offset` (100-ns ticks) identifies the utterance.
    pub async fn transcription(
        &mut self,
        text: &str,
        final_result: bool,
        offset: u64,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let words: Vec<Value> = text
            .split_whitespace()
            .map(|w| json!({"text": w, "offset": offset, "duration": 2_000_000}))
            .collect();
        let frame = json!({"kind": "TranscriptionData", "transcriptionData": {
            "text": text, "format": "display", "confidence": 0.95, "offset": offset,
            "duration": 2_000_000u64 * words.len().max(1) as u64, "words": words,
            "participantRawID": self.participant,
            "resultStatus": if final_result { "Final" } else { "Intermediate" }
        }});
        self.send(frame).await
    }

    /// One 20 ms frame of 16 kHz PCM16 audio (640 bytes, base64), silent or not.
    pub async fn audio_frame(
        &mut self,
        payload_base64: &str,
        silent: bool,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        let frame = self.audio_frame_text(payload_base64, silent);
        self.send_rendered(&frame).await
    }

    /// The `AudioData` frame [`MediaSocket::audio_frame`] sends, rendered now.
    pub fn audio_frame_text(&self, payload_base64: &str, silent: bool) -> Utf8Bytes {
        json!({"kind": "AudioData", "audioData": {
            "timestamp": Utc::now().to_rfc3339(), "participantRawID": self.participant,
            "data": payload_base64, "silent": silent
        }})
        .to_string()
        .into()
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
