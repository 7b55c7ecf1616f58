//! `handoff demo`: the whole story, live, on this machine.
//!
//! Starts the service in-process on a free loopback port with embedded defaults (scripted agent,
//! sandbox voice and WhatsApp providers, a throwaway data directory) and plays the outside world
//! over real HTTP and WebSocket: Event Grid delivers an `IncomingCall`, ACS's side of the media
//! socket sends the caller's words, the caller accepts WhatsApp, the continuation template goes
//! out, the call ends, delivery statuses arrive, and the customer's WhatsApp reply is answered.
//! Prints a timed transcript of both channels and the handoff's history; fails if a step does
//! not happen.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use crate::agent::scripted::OFFER_QUESTION;
use crate::app::{App, AppState};
use crate::config::Settings;
use crate::domain::{CustomerId, Handoff, Milestone, OutboundMessage};
use crate::simulate::{self, MediaSocket};
use crate::voice::sandbox::VoiceAction;

const CALLER: &str = "+14255550123";
const STEP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("cannot start the service: {0}")]
    Start(String),
    #[error("step did not happen within {STEP_TIMEOUT:?}: {0}")]
    Missing(&'static str),
    #[error("{0}")]
    Io(String),
}

/// Prints what happens, stamped with the time since the demo started.
struct Narrator {
    started: Instant,
    plays_seen: usize,
    whatsapp_seen: HashSet<String>,
}

impl Narrator {
    fn say(&self, channel: &str, who: &str, text: &str) {
        let t = self.started.elapsed().as_secs_f64();
        println!("[{t:6.2}s] {channel:<9} {who:<9} {text}");
    }

    /// Prints what the providers did since last time: plays and hang-ups on the call, messages
    /// on WhatsApp.
    fn catch_up(&mut self, state: &AppState) {
        if let Some(voice) = &state.voice.sandbox {
            let actions = voice.actions();
            for action in actions.iter().skip(self.plays_seen) {
                match action {
                    VoiceAction::Answer { .. } => self.say(
                        "call",
                        "system",
                        "answered (media streaming + transcription)",
                    ),
                    VoiceAction::Play { text, .. } => self.say("call", "agent", text),
                    VoiceAction::CancelMedia { .. } => {
                        self.say("call", "system", "playback cancelled (barge-in)")
                    }
                    VoiceAction::HangUp { .. } | VoiceAction::Terminate { .. } => {
                        self.say("call", "system", "hung up")
                    }
                }
            }
            self.plays_seen = actions.len();
        }
        for record in state.whatsapp.sandbox_records().unwrap_or_default() {
            if !self.whatsapp_seen.insert(record.message_id.clone()) {
                continue;
            }
            match &record.message {
                OutboundMessage::Template(t) => self.say(
                    "whatsapp",
                    "business",
                    &format!(
                        "template {} {{{{1}}}}={:?} {{{{2}}}}={:?}",
                        t.name,
                        t.body.first().map(String::as_str).unwrap_or(""),
                        t.body.get(1).map(String::as_str).unwrap_or("")
                    ),
                ),
                OutboundMessage::Text { text, .. } => {
                    for (i, line) in text.lines().enumerate() {
                        self.say("whatsapp", if i == 0 { "agent" } else { "" }, line);
                    }
                }
                other => self.say("whatsapp", "agent", &format!("{other:?}")),
            }
        }
    }
}

/// Waits for `ready` while narrating, up to the step timeout.
async fn step<T>(
    narrator: &mut Narrator,
    state: &AppState,
    what: &'static str,
    mut ready: impl AsyncFnMut() -> Option<T>,
) -> Result<T, DemoError> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        narrator.catch_up(state);
        if let Some(value) = ready().await {
            narrator.catch_up(state);
            return Ok(value);
        }
        if Instant::now() > deadline {
            return Err(DemoError::Missing(what));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn handoff(state: &AppState, customer: &CustomerId) -> Option<Handoff> {
    state
        .stores
        .handoffs
        .for_customer(customer)
        .await
        .ok()?
        .into_iter()
        .next()
}

/// Runs the demo; `Ok` when every step of the story happened.
pub async fn run() -> Result<(), DemoError> {
    let data = tempfile_dir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| DemoError::Start(e.to_string()))?
        .port();
    let mut settings = Settings::embedded(data.path());
    settings.host = "127.0.0.1".parse().expect("loopback");
    settings.port = port;
    settings.public_base_url = format!("http://127.0.0.1:{port}");
    settings.handoff.queue_wait_seconds = 540;
    settings.whatsapp.burst_wait = Duration::from_millis(300);
    let base = settings.public_base_url.clone();

    let app = App::build(settings)
        .await
        .map_err(|e| DemoError::Start(e.to_string()))?;
    crate::app::spawn_standard_workers(&app);
    let state = app.state().clone();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run(async {
        let _ = stopped.await;
    }));
    let result = story(&state, &base).await;
    let _ = stop.send(());
    let _ = server.await;
    drop(data);
    result
}

async fn story(state: &AppState, base: &str) -> Result<(), DemoError> {
    let http = reqwest::Client::new();
    let mut n = Narrator {
        started: Instant::now(),
        plays_seen: 0,
        whatsapp_seen: HashSet::new(),
    };
    let customer = CustomerId::parse_phone(CALLER).expect("valid number");
    println!(
        "handoff demo: the service is listening on {base} (embedded store, scripted agent, sandbox ACS)"
    );
    println!(
        "Ada Lovelace ({}) is a known customer. The queue is 9 minutes long.\n",
        customer
    );
    state
        .stores
        .contexts
        .update(&customer, |c| c.display_name = Some("Ada Lovelace".into()))
        .await
        .map_err(|e| DemoError::Start(e.to_string()))?;

    n.say("eventgrid", "acs", "Microsoft.Communication.IncomingCall");
    let delivered = http
        .post(format!("{base}/api/v1/calls/incoming"))
        .json(&simulate::incoming_call(
            "demo-event-1",
            "demo-call-1",
            CALLER,
        ))
        .send()
        .await
        .map_err(|e| DemoError::Io(e.to_string()))?;
    if !delivered.status().is_success() {
        return Err(DemoError::Io(format!(
            "IncomingCall answered {}",
            delivered.status()
        )));
    }
    let call_id = step(&mut n, state, "the call is answered", async || {
        let ctx = state.stores.contexts.get(&customer).await.ok()??;
        ctx.voice_sessions
            .last()
            .map(|s| s.call_connection_id.clone())
    })
    .await?;
    let media_url = state
        .voice
        .sandbox
        .as_ref()
        .and_then(|s| s.media_url(&call_id))
        .ok_or(DemoError::Missing("the media socket address"))?;
    let mut socket = MediaSocket::connect(&media_url, CALLER)
        .await
        .map_err(|e| DemoError::Io(format!("media socket: {e}")))?;
    n.say(
        "call",
        "system",
        "ACS opened the media and transcription WebSocket",
    );

    let spoke = |needle: &'static str| {
        let state = state.clone();
        async move || {
            let ctx = state
                .stores
                .contexts
                .get(&CustomerId::parse_phone(CALLER).ok()?)
                .await
                .ok()??;
            ctx.transcript
                .iter()
                .any(|t| t.text.contains(needle))
                .then_some(())
        }
    };
    step(&mut n, state, "the greeting", spoke("How can I help")).await?;

    let words = "My power has been out since this morning at 123 Oak Street.";
    n.say("call", "caller", words);
    socket
        .transcription("my power has", false, 10_000_000)
        .await
        .map_err(io)?;
    socket
        .transcription(words, true, 10_000_000)
        .await
        .map_err(io)?;
    step(&mut n, state, "the WhatsApp offer", spoke(OFFER_QUESTION)).await?;

    let yes = "Yes, WhatsApp is fine.";
    n.say("call", "caller", yes);
    socket
        .transcription(yes, true, 60_000_000)
        .await
        .map_err(io)?;
    step(
        &mut n,
        state,
        "the template is accepted and the call ends",
        async || {
            handoff(state, &customer)
                .await
                .filter(|h| h.reached(Milestone::CallEnded))
                .map(drop)
        },
    )
    .await?;
    socket.close().await;
    step(
        &mut n,
        state,
        "WhatsApp reports the template delivered",
        async || {
            handoff(state, &customer)
                .await
                .filter(|h| h.reached(Milestone::Delivered))
                .map(drop)
        },
    )
    .await?;
    n.say("whatsapp", "system", "template delivered to Ada's phone");

    let reply = "Hi! Any update on the repair crew?";
    n.say(
        "eventgrid",
        "acs",
        "Microsoft.Communication.AdvancedMessageReceived",
    );
    n.say("whatsapp", "customer", reply);
    let from = customer.whatsapp_address().unwrap_or_default().to_owned();
    let delivered = http
        .post(format!("{base}/api/v1/channels/whatsapp/webhook"))
        .json(&simulate::whatsapp_text(
            "demo-event-2",
            "demo-message-1",
            &from,
            "demo-channel",
            reply,
        ))
        .send()
        .await
        .map_err(|e| DemoError::Io(e.to_string()))?;
    if !delivered.status().is_success() {
        return Err(DemoError::Io(format!(
            "AdvancedMessageReceived answered {}",
            delivered.status()
        )));
    }
    step(
        &mut n,
        state,
        "the agent answers on WhatsApp with the call in mind",
        async || {
            let answered = state
                .whatsapp
                .sandbox_records()?
                .iter()
                .any(|r| match &r.message {
                    OutboundMessage::Text { text, .. } => text.contains("From the call"),
                    _ => false,
                });
            answered.then_some(())
        },
    )
    .await?;
    let done = step(&mut n, state, "the handoff is resumed", async || {
        handoff(state, &customer)
            .await
            .filter(|h| h.reached(Milestone::Resumed))
    })
    .await?;

    println!(
        "\nhandoff {} ({}):",
        done.id,
        serde_json::to_value(done.state)
            .unwrap_or_default()
            .as_str()
            .unwrap_or("")
    );
    let start = done
        .history
        .first()
        .map(|c| c.at)
        .unwrap_or(done.created_at);
    for change in &done.history {
        let t = (change.at - start).num_milliseconds() as f64 / 1000.0;
        let state = serde_json::to_value(change.state).unwrap_or_default();
        println!("  +{t:6.3}s  {}", state.as_str().unwrap_or(""));
    }
    println!("\nEvery step of the story happened.");
    Ok(())
}

fn io(e: tokio_tungstenite::tungstenite::Error) -> DemoError {
    DemoError::Io(format!("media socket: {e}"))
}

/// A private data directory that is removed afterwards.
pub(crate) struct TempDir(std::path::PathBuf);

impl TempDir {
    pub(crate) fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub(crate) fn tempfile_dir() -> Result<TempDir, DemoError> {
    let dir = std::env::temp_dir().join(format!("handoff-demo-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| DemoError::Start(format!("{}: {e}", dir.display())))?;
    Ok(TempDir(dir))
}
