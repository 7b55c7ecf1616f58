//! ACS's side of the media/transcription WebSocket: connects to the transport URL the engine
//! gave when answering and sends frames the way ACS does.

use base64::Engine;
use futures::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

pub struct AcsSocket {
    ws: Ws,
}

impl AcsSocket {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("media socket connects");
        let mut socket = Self { ws };
        socket
            .send_raw(&json!({"kind":"AudioMetadata","audioMetadata":{"subscriptionId":"s","encoding":"PCM","sampleRate":16000,"channels":1,"length":640}}).to_string())
            .await;
        socket
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("frame sent");
    }

    pub async fn final_text(&mut self, text: &str, offset: u64) {
        self.transcription(text, "Final", offset).await;
    }

    pub async fn intermediate(&mut self, text: &str, offset: u64) {
        self.transcription(text, "Intermediate", offset).await;
    }

    async fn transcription(&mut self, text: &str, status: &str, offset: u64) {
        let frame = json!({"kind":"TranscriptionData","transcriptionData":{
            "text": text, "format":"display", "confidence":0.93, "offset": offset, "duration": 1000000,
            "words":[{"text": text, "offset": offset, "duration": 1000000}],
            "participantRawID":"4:+14255550123", "resultStatus": status}});
        self.send_raw(&frame.to_string()).await;
    }

    pub async fn dtmf(&mut self, digits: &str) {
        self.send_raw(&json!({"kind":"DtmfData","dtmfData":{"data":digits,"timestamp":"2026-01-01T00:00:00Z","participantRawID":"4:+14255550123"}}).to_string()).await;
    }

    pub async fn audio(&mut self, silent: bool) {
        let data = base64::engine::general_purpose::STANDARD.encode(vec![1u8; 640]);
        self.send_raw(&json!({"kind":"AudioData","audioData":{"data":data,"timestamp":"2026-01-01T00:00:00Z","silent":silent}}).to_string()).await;
    }

    /// The next text frame the engine sent (outbound audio, StopAudio); `None` once closed.
    pub async fn next_text(&mut self) -> Option<serde_json::Value> {
        while let Some(message) = self.ws.next().await {
            match message {
                Ok(Message::Text(text)) => return serde_json::from_str(text.as_str()).ok(),
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
        None
    }

    /// The close code the server sent, if it closed the socket.
    pub async fn close_code(&mut self) -> Option<u16> {
        while let Some(message) = self.ws.next().await {
            match message {
                Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}
