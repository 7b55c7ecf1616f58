//! The sandbox voice provider: the default when no ACS resource is configured. It records what
//! the engine asked (answer, play, cancel, hang-up) and plays Call Automation's part by POSTing
//! the callbacks a real call would (`CallConnected`, `PlayStarted/Completed/Canceled`,
//! `CallDisconnected`) to the call's callback URI over HTTP, so a call can be driven locally
//! through the same WebSocket and callback routes as production.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;
use serde_json::json;
use tokio::sync::{mpsc, watch};

use super::client::{AnswerCall, AnsweredCall, VoiceError, VoiceProvider};

/// What the engine asked of the sandbox, in order.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum VoiceAction {
    Answer {
        call_connection_id: String,
    },
    Play {
        call_connection_id: String,
        text: String,
        operation_context: String,
    },
    CancelMedia {
        call_connection_id: String,
    },
    HangUp {
        call_connection_id: String,
    },
    Terminate {
        call_connection_id: String,
    },
}

enum Command {
    Play {
        op: String,
        text: String,
        epoch: u64,
    },
    Disconnect,
}

struct SandboxCall {
    media_url: String,
    commands: mpsc::UnboundedSender<Command>,
    cancel: watch::Sender<u64>,
}

/// Actions kept, oldest dropped first, so a long-running sandbox does not grow without limit.
/// Enough for `bench calls` at 1,000 calls for a minute (an answer per call, two or three
/// plays per turn); a longer run finds some gone ([`SandboxVoice::actions_dropped`]) and says
/// it is incomplete.
const KEEP_ACTIONS: usize = 100_000;

pub struct SandboxVoice {
    http: reqwest::Client,
    /// Every action with the time it was asked for (the benchmark reads the times).
    actions: Mutex<Vec<(chrono::DateTime<chrono::Utc>, VoiceAction)>>,
    calls: Mutex<HashMap<String, SandboxCall>>,
    /// How long the sandbox "speaks" per character of text.
    per_char: Duration,
    /// Actions dropped from `actions` to keep it bounded.
    dropped: std::sync::atomic::AtomicUsize,
}

impl SandboxVoice {
    pub fn new(http: reqwest::Client) -> Self {
        Self {
            http,
            actions: Mutex::new(Vec::new()),
            calls: Mutex::new(HashMap::new()),
            per_char: Duration::from_millis(2),
            dropped: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// Everything recorded so far.
    pub fn actions(&self) -> Vec<VoiceAction> {
        self.actions
            .lock()
            .expect("actions lock")
            .iter()
            .map(|(_, a)| a.clone())
            .collect()
    }

    /// How many of the oldest actions were dropped to keep the record bounded.
    pub fn actions_dropped(&self) -> usize {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Everything recorded so far, with the time each action was asked for.
    pub fn timed_actions(&self) -> Vec<(chrono::DateTime<chrono::Utc>, VoiceAction)> {
        self.actions.lock().expect("actions lock").clone()
    }

    /// The media WebSocket URL a call was answered with, so a local driver (a test, the demo)
    /// can play ACS's side of the socket. Carries the call's secret: never log it.
    pub fn media_url(&self, call_connection_id: &str) -> Option<String> {
        self.calls
            .lock()
            .expect("calls lock")
            .get(call_connection_id)
            .map(|c| c.media_url.clone())
    }

    fn record(&self, action: VoiceAction) {
        let now = chrono::Utc::now();
        let mut actions = self.actions.lock().expect("actions lock");
        if actions.len() >= KEEP_ACTIONS {
            actions.drain(..KEEP_ACTIONS / 10);
            self.dropped
                .fetch_add(KEEP_ACTIONS / 10, std::sync::atomic::Ordering::Relaxed);
        }
        actions.push((now, action));
    }

    fn command(&self, call: &str, command: Command) {
        if let Some(c) = self.calls.lock().expect("calls lock").get(call) {
            let _ = c.commands.send(command);
        }
    }
}

/// One simulated call: connects, plays what it is asked in order, honours cancellation,
/// disconnects.
async fn run_call(
    http: reqwest::Client,
    callback_uri: String,
    call_id: String,
    per_char: Duration,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut cancel: watch::Receiver<u64>,
) {
    let post = |event: &'static str, op: Option<String>| {
        let http = http.clone();
        let uri = callback_uri.clone();
        let call_id = call_id.clone();
        async move {
            let body = json!([{
                "id": uuid::Uuid::new_v4().to_string(),
                "source": format!("calling/callConnections/{call_id}"),
                "type": format!("Microsoft.Communication.{event}"),
                "specversion": "1.0",
                "time": chrono::Utc::now().to_rfc3339(),
                "data": {
                    "callConnectionId": call_id,
                    "operationContext": op,
                    "resultInformation": { "code": 200, "subCode": 0, "message": "sandbox" },
                },
            }]);
            if let Err(err) = http.post(&uri).json(&body).send().await {
                tracing::debug!(error = %err.without_url(), event, "sandbox callback not delivered");
            }
        }
    };
    post("CallConnected", None).await;
    while let Some(command) = commands.recv().await {
        match command {
            Command::Play { op, text, epoch } => {
                if *cancel.borrow_and_update() != epoch {
                    post("PlayCanceled", Some(op)).await;
                    continue;
                }
                post("PlayStarted", Some(op.clone())).await;
                let speaking = per_char * text.chars().count().max(1) as u32;
                tokio::select! {
                    () = tokio::time::sleep(speaking) => post("PlayCompleted", Some(op)).await,
                    _ = cancel.changed() => post("PlayCanceled", Some(op)).await,
                }
            }
            Command::Disconnect => {
                post("CallDisconnected", None).await;
                break;
            }
        }
    }
}

#[async_trait]
impl VoiceProvider for SandboxVoice {
    async fn answer(&self, call: &AnswerCall) -> Result<AnsweredCall, VoiceError> {
        let call_connection_id = format!("sandbox-{}", uuid::Uuid::new_v4());
        let (commands, rx) = mpsc::unbounded_channel();
        let (cancel, cancel_rx) = watch::channel(0);
        self.calls.lock().expect("calls lock").insert(
            call_connection_id.clone(),
            SandboxCall {
                media_url: call.media_url.clone(),
                commands,
                cancel,
            },
        );
        self.record(VoiceAction::Answer {
            call_connection_id: call_connection_id.clone(),
        });
        tokio::spawn(run_call(
            self.http.clone(),
            call.callback_uri.clone(),
            call_connection_id.clone(),
            self.per_char,
            rx,
            cancel_rx,
        ));
        Ok(AnsweredCall { call_connection_id })
    }

    async fn play_text(
        &self,
        call_connection_id: &str,
        text: &str,
        operation_context: &str,
    ) -> Result<(), VoiceError> {
        self.record(VoiceAction::Play {
            call_connection_id: call_connection_id.into(),
            text: text.into(),
            operation_context: operation_context.into(),
        });
        let epoch = self
            .calls
            .lock()
            .expect("calls lock")
            .get(call_connection_id)
            .map(|c| *c.cancel.borrow());
        if let Some(epoch) = epoch {
            self.command(
                call_connection_id,
                Command::Play {
                    op: operation_context.into(),
                    text: text.into(),
                    epoch,
                },
            );
        }
        Ok(())
    }

    async fn cancel_media(&self, call_connection_id: &str) -> Result<(), VoiceError> {
        self.record(VoiceAction::CancelMedia {
            call_connection_id: call_connection_id.into(),
        });
        if let Some(c) = self
            .calls
            .lock()
            .expect("calls lock")
            .get(call_connection_id)
        {
            c.cancel.send_modify(|epoch| *epoch += 1);
        }
        Ok(())
    }

    async fn hang_up(&self, call_connection_id: &str) -> Result<(), VoiceError> {
        self.record(VoiceAction::HangUp {
            call_connection_id: call_connection_id.into(),
        });
        self.command(call_connection_id, Command::Disconnect);
        self.calls
            .lock()
            .expect("calls lock")
            .remove(call_connection_id);
        Ok(())
    }

    async fn terminate(&self, call_connection_id: &str) -> Result<(), VoiceError> {
        self.record(VoiceAction::Terminate {
            call_connection_id: call_connection_id.into(),
        });
        self.command(call_connection_id, Command::Disconnect);
        self.calls
            .lock()
            .expect("calls lock")
            .remove(call_connection_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_record_of_actions_is_bounded_and_says_what_it_dropped() {
        let sandbox = SandboxVoice::new(reqwest::Client::new());
        let answer = |i: usize| VoiceAction::Answer {
            call_connection_id: format!("call-{i}"),
        };
        for i in 0..KEEP_ACTIONS {
            sandbox.record(answer(i));
        }
        assert_eq!(sandbox.actions_dropped(), 0);
        assert_eq!(sandbox.actions().len(), KEEP_ACTIONS);
        sandbox.record(answer(KEEP_ACTIONS));
        assert_eq!(sandbox.actions_dropped(), KEEP_ACTIONS / 10);
        let actions = sandbox.actions();
        assert_eq!(actions.len(), KEEP_ACTIONS - KEEP_ACTIONS / 10 + 1);
        // The oldest went; the newest is kept.
        assert_eq!(actions.first(), Some(&answer(KEEP_ACTIONS / 10)));
        assert_eq!(actions.last(), Some(&answer(KEEP_ACTIONS)));
    }
}
