//! One task per call: the media/transcription WebSocket in, the conversation state machine in
//! the middle, the agent and the voice provider out. Nothing here holds a lock across an await:
//! the state machine is owned by the task, and slow work (agent generation, provider calls,
//! context writes, audio pacing) runs in helper tasks that report back over channels.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::VoiceService;
use super::audio::{AudioCommand, RealTime, TextToSpeech, run_audio_out};
use super::events::{CallEvent, CallEventKind};
use super::media::{AudioFormat, MediaFrame, ResultStatus, parse_frame};
use super::registry::{CallRecord, CallState, CallToken};
use super::session::END_CALL_TOOL;
use super::session::{Conversation, Effect, Input, PlayOutcome};
use crate::agent::engine::{ToolHost, ToolOutcome, TurnAction, run_turn};
use crate::agent::tools::ToolRequest;
use crate::agent::{AgentRequest, ToolCall};
use crate::config::BargeIn;
use crate::domain::{Channel, CustomerContext, CustomerId, Turn};
use crate::handoff::tools::ConversationTools;
use crate::store::Contexts;

/// Per-call queues carry boxed items. tokio allocates a channel's first block, 32 slots of the
/// item's size, when the channel is made: a call's queues of 72–144-byte items took ≈ 17 kB
/// before anything was sent (a heap profile at 1,000 calls, docs/performance.md), boxed ≈ 2 kB.
/// What goes through them is a few items a turn, so the allocation per item costs nothing.
type Arrived = Box<(MediaFrame, Instant)>;

/// What the session's helper tasks (agent, plays, tools) report back to it.
#[derive(Clone)]
struct Feedback(mpsc::UnboundedSender<Box<Input>>);

impl Feedback {
    /// Dropped if the session has ended.
    fn send(&self, input: Input) {
        let _ = self.0.send(Box::new(input));
    }
}

/// Frames buffered between the socket reader and the session.
const FRAME_BUFFER: usize = 256;
/// Provider actions queued by one session.
const ACTION_BUFFER: usize = 64;
/// How long a closing play may take before the call is hung up anyway.
const CLOSING_DEADLINE: Duration = Duration::from_secs(20);
/// How long to wait for the answering replica to record the call connection id.
const CALL_ID_WAIT: Duration = Duration::from_secs(5);

/// How the session speaks.
#[derive(Clone)]
pub enum SpeechOutput {
    /// Call Automation `:play` with a text source (the default).
    Play,
    /// PCM frames on the media socket, through a text-to-speech port.
    Frames(Arc<dyn TextToSpeech>),
}

/// `GET /api/v1/media/ws?token=…` after the upgrade: runs the call until the socket closes or
/// the call ends. An unknown token closes the socket with 1008 (policy violation).
pub async fn serve_media_socket(
    service: Arc<VoiceService>,
    token: Option<String>,
    socket: WebSocket,
) {
    let token = token.as_deref().and_then(CallToken::from_presented);
    let record = match &token {
        Some(token) => service.registry.get(token).await,
        None => Ok(None),
    };
    let (token, record) = match (token, record) {
        (Some(token), Ok(Some(record))) => (token, record),
        (_, Err(err)) => {
            tracing::warn!(error = %err, "media socket refused: call registry unavailable");
            close(socket, 1011, "unavailable").await;
            return;
        }
        _ => {
            tracing::warn!("media socket refused: unknown token");
            close(socket, 1008, "unknown call").await;
            return;
        }
    };
    if record.state == CallState::Ended {
        close(socket, 1000, "call ended").await;
        return;
    }
    let Some((record, call_id)) = wait_for_call_id(&service, &token, record).await else {
        tracing::warn!("media socket refused: the call was never answered");
        close(socket, 1011, "call not answered").await;
        return;
    };
    let output = service.speech_output();
    run_call(service, token, record, call_id, socket, output).await;
}

/// Closes a socket with `code` (1008: policy violation, for a caller we do not let in).
pub async fn close(mut socket: WebSocket, code: u16, reason: &'static str) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn wait_for_call_id(
    service: &VoiceService,
    token: &CallToken,
    mut record: CallRecord,
) -> Option<(CallRecord, String)> {
    let deadline = Instant::now() + CALL_ID_WAIT;
    loop {
        if let Some(id) = record.call_connection_id.clone() {
            return Some((record, id));
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        record = service.registry.get(token).await.ok().flatten()?;
    }
}

enum Action {
    Play {
        op: String,
        text: String,
        epoch: u64,
        /// The first play of a turn: when the caller's input that began it was received.
        turn_started: Option<Instant>,
    },
    Close {
        op: String,
        text: String,
    },
}

/// Whether an audio frame is the caller talking over the agent: with barge-in on audio, any
/// frame that is not silence. Every other audio frame changes nothing in the conversation.
fn audio_barges_in(silent: bool, barge_in: BargeIn) -> bool {
    barge_in == BargeIn::Audio && !silent
}

/// Runs one call on an accepted socket.
pub async fn run_call(
    service: Arc<VoiceService>,
    token: CallToken,
    record: CallRecord,
    call_id: String,
    socket: WebSocket,
    output: SpeechOutput,
) {
    let span =
        tracing::info_span!("call", call_connection_id = %call_id, customer = %record.customer_id);
    let _enter = span.enter();
    drop(_enter);
    let stats = service.stats.clone();
    stats.session_started();
    let mut attachment = service.registry.attach(&token);
    let (mut sink, mut stream) = socket.split();

    // Socket writer: everything outbound (audio frames, StopAudio) goes through one queue.
    let (ws_tx, mut ws_rx) = mpsc::channel::<String>(FRAME_BUFFER);
    let writer = tokio::spawn(async move {
        while let Some(text) = ws_rx.recv().await {
            if sink.send(Message::Text(text.into())).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    });

    // Socket reader: parse frames; a malformed frame is logged and skipped.
    let (frame_tx, frame_rx) = mpsc::channel::<Arrived>(FRAME_BUFFER);
    let reader_stats = stats.clone();
    let barge_in = service.settings.voice.barge_in;
    let reader = tokio::spawn(async move {
        while let Some(message) = stream.next().await {
            let text = match message {
                Ok(Message::Text(text)) => text,
                Ok(Message::Binary(bytes)) => match String::from_utf8(bytes.to_vec()) {
                    Ok(text) => text.into(),
                    Err(_) => continue,
                },
                Ok(Message::Close(_)) | Err(_) => break,
                Ok(_) => continue,
            };
            match parse_frame(text.as_str()) {
                // 50 audio frames a second: those that cannot change the conversation (all of
                // them unless barge-in listens to audio) do not wake the session.
                Ok(MediaFrame::Audio { silent, .. }) if !audio_barges_in(silent, barge_in) => {}
                // Stamped on arrival: a turn's latency is measured from here.
                Ok(frame) => {
                    if frame_tx
                        .send(Box::new((frame, Instant::now())))
                        .await
                        .is_err()
                    {
                        break;
                    }
                }
                Err(err) => {
                    reader_stats.malformed_frame();
                    tracing::debug!(error = %err, "malformed media frame skipped");
                }
            }
        }
    });

    // The conversation runs on the voice runtime, apart from the sockets' audio (see
    // `crate::runtime`); this task only waits for it.
    let conversation = {
        let service = service.clone();
        let call_id = call_id.clone();
        async move {
            Driver::new(service, record, call_id, output, ws_tx)
                .run(frame_rx, &mut attachment.events)
                .instrument(span)
                .await;
        }
    };
    match service.turns.spawn(conversation).await {
        Err(err) if err.is_panic() => {
            tracing::error!(call_connection_id = %call_id, error = %err, "call session panicked");
        }
        // The runtime is shutting down with the app.
        Err(_) | Ok(()) => {}
    }
    reader.abort();
    let _ = writer.await;
    stats.session_ended();
    tracing::info!(call_connection_id = %call_id, "call session ended");
}

struct Driver {
    service: Arc<VoiceService>,
    call_id: String,
    context: CustomerContext,
    conversation: Conversation,
    output: SpeechOutput,
    ws: mpsc::Sender<String>,
    internal_tx: Feedback,
    internal_rx: mpsc::UnboundedReceiver<Box<Input>>,
    actions: mpsc::Sender<Box<Action>>,
    epoch: Arc<AtomicU64>,
    audio: Option<mpsc::Sender<AudioCommand>>,
    persist: mpsc::Sender<Box<Turn>>,
    workers: Vec<JoinHandle<()>>,
    agent_task: Option<JoinHandle<()>>,
    silence_deadline: Option<Instant>,
    closing_deadline: Option<Instant>,
    format: AudioFormat,
}

impl Driver {
    fn new(
        service: Arc<VoiceService>,
        record: CallRecord,
        call_id: String,
        output: SpeechOutput,
        ws: mpsc::Sender<String>,
    ) -> Self {
        let (internal_tx, internal_rx) = mpsc::unbounded_channel();
        let internal_tx = Feedback(internal_tx);
        let epoch = Arc::new(AtomicU64::new(0));
        let mut workers = Vec::new();

        // Provider actions, in order. Plays queued before a barge-in are skipped (epoch).
        let (actions, mut action_rx) = mpsc::channel::<Box<Action>>(ACTION_BUFFER);
        {
            let provider = service.provider.clone();
            let call_id = call_id.clone();
            let epoch = epoch.clone();
            let feedback = internal_tx.clone();
            let service = service.clone();
            workers.push(tokio::spawn(async move {
                while let Some(action) = action_rx.recv().await {
                    match *action {
                        Action::Play { op, text, epoch: at, turn_started } => {
                            if epoch.load(Ordering::SeqCst) != at {
                                feedback.send(Input::Played { op, outcome: PlayOutcome::Canceled });
                                continue;
                            }
                            if let Some(started) = turn_started {
                                service.stats.turn_latency(started.elapsed());
                            }
                            if let Err(err) = provider.play_text(&call_id, &text, &op).await {
                                tracing::warn!(call_connection_id = %call_id, error = %err, "play failed");
                                feedback.send(Input::Played { op, outcome: PlayOutcome::Failed });
                            }
                        }
                        Action::Close { op, text } => {
                            if let Err(err) = provider.play_text(&call_id, &text, &op).await {
                                tracing::warn!(call_connection_id = %call_id, error = %err, "goodbye not played; hanging up");
                                service.hang_up(&call_id).await;
                            }
                        }
                    }
                }
            }));
        }

        // Context writes, in order, off the session loop.
        let (persist, persist_rx) = mpsc::channel::<Box<Turn>>(ACTION_BUFFER);
        workers.push(tokio::spawn(persist_turns(
            service.contexts.clone(),
            record.customer_id.clone(),
            service.settings.transcript_max_turns,
            call_id.clone(),
            persist_rx,
        )));

        let format = AudioFormat::from_setting(&service.settings.voice.audio_format);
        let context = CustomerContext::new(record.customer_id.clone(), chrono::Utc::now());
        Self {
            conversation: Conversation::with_session(
                call_id.clone(),
                uuid::Uuid::new_v4().simple().to_string()[..8].to_owned(),
            ),
            service,
            call_id,
            context,
            output,
            ws,
            internal_tx,
            internal_rx,
            actions,
            epoch,
            audio: None,
            persist,
            workers,
            agent_task: None,
            silence_deadline: None,
            closing_deadline: None,
            format,
        }
    }

    async fn run(
        mut self,
        mut frames: mpsc::Receiver<Arrived>,
        events: &mut mpsc::Receiver<Box<CallEvent>>,
    ) {
        match self.service.contexts.get(&self.context.customer_id).await {
            Ok(Some(ctx)) => self.context = ctx,
            Ok(None) => {}
            Err(err) => {
                tracing::warn!(call_connection_id = %self.call_id, error = %err, "context not loaded; starting fresh")
            }
        }
        if let SpeechOutput::Frames(tts) = self.output.clone() {
            self.start_audio(tts);
        }
        // A reconnected socket of a call already under way does not greet again.
        let prefix = format!("{}:", self.call_id);
        let resumed = self.context.transcript.iter().any(|t| {
            t.channel == Channel::Voice
                && t.source_id
                    .as_deref()
                    .is_some_and(|s| s.starts_with(&prefix))
        });
        if resumed {
            tracing::info!(call_connection_id = %self.call_id, "media socket reconnected; resuming");
            self.conversation.resume();
        } else {
            let effects = self.conversation.start(Instant::now().into_std());
            self.apply(effects).await;
        }
        let silence = self.service.settings.voice.silence_timeout;
        let barge_in = self.service.settings.voice.barge_in;
        let mut frames_open = true;
        while !self.conversation.ended() {
            // What the caller said or keyed is handled as of when it arrived, so that a turn's
            // timings include its wait in the socket reader's queue.
            // Biased, in this order: what Call Automation already reported (a play started or
            // completed) and the session's own progress are applied before a caller's frame
            // waiting at the same moment. They arrive on different connections; a random pick
            // could take a sentence the caller heard to the end for one cut by a barge-in.
            let (input, at) = tokio::select! {
                biased;
                Some(event) = events.recv() => match event_input(&event) {
                    Some(input) => (input, Instant::now()),
                    None => continue,
                },
                Some(input) = self.internal_rx.recv() => (*input, Instant::now()),
                frame = frames.recv(), if frames_open => match frame.map(|arrived| *arrived) {
                    Some((frame, received)) => match self.frame_input(frame, barge_in) {
                        Some(input) => (input, received),
                        None => continue,
                    },
                    None => { frames_open = false; (Input::Disconnected, Instant::now()) }
                },
                () = sleep_until(self.silence_deadline) => { self.silence_deadline = None; (Input::SilenceTimeout, Instant::now()) }
                () = sleep_until(self.closing_deadline) => {
                    tracing::warn!(call_connection_id = %self.call_id, "closing play did not finish; hanging up");
                    self.closing_deadline = None;
                    self.service.hang_up(&self.call_id).await;
                    continue;
                }
            };
            let speech = matches!(
                input,
                Input::CallerFinal { .. } | Input::CallerSpeaking | Input::Dtmf { .. }
            );
            let effects = self.conversation.handle(input, at.into_std());
            self.apply(effects).await;
            if speech || !self.conversation.listening() {
                self.silence_deadline = None;
            }
            if self.conversation.listening() && self.silence_deadline.is_none() {
                self.silence_deadline = Some(Instant::now() + silence);
            }
        }
        if let Some(task) = self.agent_task.take() {
            task.abort();
        }
        // Flush: pending turns are written before the session returns.
        let Driver {
            persist,
            actions,
            audio,
            workers,
            ..
        } = self;
        drop((persist, actions, audio));
        for worker in workers {
            let _ = worker.await;
        }
    }

    fn start_audio(&mut self, tts: Arc<dyn TextToSpeech>) {
        let (tx, rx) = mpsc::channel(ACTION_BUFFER);
        let (outcome_tx, mut outcome_rx) = mpsc::unbounded_channel();
        let feedback = self.internal_tx.clone();
        self.workers.push(tokio::spawn(run_audio_out(
            tts,
            RealTime::default(),
            self.format,
            rx,
            self.ws.clone(),
            outcome_tx,
        )));
        self.workers.push(tokio::spawn(async move {
            while let Some((op, outcome)) = outcome_rx.recv().await {
                feedback.send(Input::Played { op, outcome });
            }
        }));
        self.audio = Some(tx);
    }

    fn frame_input(&mut self, frame: MediaFrame, barge_in: BargeIn) -> Option<Input> {
        match frame {
            MediaFrame::Transcription(t) => match t.status {
                ResultStatus::Final => {
                    let source_id = match t.offset {
                        Some(offset) => format!(
                            "{}:{}:{offset}",
                            self.call_id,
                            t.participant.as_deref().unwrap_or("")
                        ),
                        None => format!("{}:text:{}", self.call_id, t.text.trim()),
                    };
                    Some(Input::CallerFinal {
                        text: t.text,
                        source_id,
                    })
                }
                ResultStatus::Intermediate
                    if barge_in == BargeIn::Transcription && !t.text.trim().is_empty() =>
                {
                    Some(Input::CallerSpeaking)
                }
                ResultStatus::Intermediate => None,
            },
            MediaFrame::Audio { silent, .. } if audio_barges_in(silent, barge_in) => {
                Some(Input::CallerSpeaking)
            }
            MediaFrame::Audio { .. } => None,
            MediaFrame::Dtmf { digits, .. } => Some(Input::Dtmf { digits }),
            MediaFrame::AudioMetadata { sample_rate, .. } => {
                self.format = AudioFormat { sample_rate };
                None
            }
            MediaFrame::TranscriptionMetadata { .. } | MediaFrame::Other { .. } => None,
        }
    }

    async fn apply(&mut self, effects: Vec<Effect>) {
        // Set by a turn's timings, which come just before its first play.
        let mut turn_started: Option<Instant> = None;
        for effect in effects {
            match effect {
                Effect::AskAgent { turn, input } => {
                    if let Some(task) = self.agent_task.take() {
                        task.abort();
                    }
                    let request = AgentRequest::new(self.context.clone(), Channel::Voice, input);
                    let feedback = self.internal_tx.clone();
                    let agent = self.service.agent.clone();
                    let tools = VoiceTools {
                        inner: self.service.tools.get().cloned().map(|services| {
                            Arc::new(ConversationTools::new(
                                services,
                                Channel::Voice,
                                self.context.customer_id.clone(),
                                Some(self.call_id.clone()),
                            ))
                        }),
                        feedback: feedback.clone(),
                        turn,
                    };
                    self.agent_task = Some(tokio::spawn(async move {
                        let text_out = feedback.clone();
                        let mut on_text = move |delta: &str| {
                            text_out.send(Input::AgentText {
                                turn,
                                delta: delta.to_owned(),
                            });
                        };
                        match run_turn(agent.as_ref(), &tools, request, &mut on_text).await {
                            Ok(outcome) => {
                                for action in outcome.actions {
                                    if let TurnAction::EndCall { .. } = action {
                                        feedback.send(Input::AgentTool {
                                            turn,
                                            call: ToolCall {
                                                id: format!("end-{turn}"),
                                                name: END_CALL_TOOL.into(),
                                                arguments: serde_json::json!({}),
                                            },
                                        });
                                    }
                                }
                                feedback.send(Input::AgentDone { turn });
                            }
                            Err(err) => {
                                tracing::warn!(error = %err, "agent failed");
                                feedback.send(Input::AgentFailed { turn });
                            }
                        }
                    }));
                }
                Effect::AbortAgent => {
                    if let Some(task) = self.agent_task.take() {
                        task.abort();
                    }
                }
                Effect::Play { op, text } => match &self.audio {
                    Some(audio) => {
                        if let Some(started) = turn_started.take() {
                            self.service.stats.turn_latency(started.elapsed());
                        }
                        let _ = audio.send(AudioCommand::Say { op, text }).await;
                    }
                    None => {
                        let epoch = self.epoch.load(Ordering::SeqCst);
                        let play = Action::Play {
                            op,
                            text,
                            epoch,
                            turn_started: turn_started.take(),
                        };
                        let _ = self.actions.send(Box::new(play)).await;
                    }
                },
                Effect::CancelPlayback => {
                    tracing::info!(call_connection_id = %self.call_id, "barge-in: stopping playback");
                    match &self.audio {
                        Some(audio) => {
                            let _ = audio.send(AudioCommand::Stop).await;
                        }
                        None => {
                            // At once, not behind queued plays; those are skipped by epoch.
                            self.epoch.fetch_add(1, Ordering::SeqCst);
                            let provider = self.service.provider.clone();
                            let call_id = self.call_id.clone();
                            tokio::spawn(async move {
                                if let Err(err) = provider.cancel_media(&call_id).await {
                                    tracing::warn!(call_connection_id = %call_id, error = %err, "cancel failed");
                                }
                            });
                        }
                    }
                }
                Effect::Remember(turn) => {
                    self.context
                        .push_turn(turn.clone(), self.service.settings.transcript_max_turns);
                    let _ = self.persist.send(Box::new(turn)).await;
                }
                Effect::Timings {
                    turn,
                    timings,
                    started,
                } => {
                    turn_started = Some(Instant::from_std(started));
                    self.service
                        .stats
                        .turn(timings.agent_first_text_ms, timings.play_requested_ms);
                    tracing::info!(
                        call_connection_id = %self.call_id,
                        turn,
                        agent_first_text_ms = timings.agent_first_text_ms,
                        play_requested_ms = timings.play_requested_ms,
                        "turn timings"
                    );
                }
                Effect::Tool(call) => self.handle_tool(call),
                Effect::Close { op, text, reason } => {
                    tracing::info!(call_connection_id = %self.call_id, reason, "closing the call");
                    self.closing_deadline = Some(Instant::now() + CLOSING_DEADLINE);
                    // Closing plays always go through Call Automation: its PlayCompleted
                    // callback is what hangs up, on whichever replica receives it.
                    let _ = self
                        .actions
                        .send(Box::new(Action::Close { op, text }))
                        .await;
                }
                Effect::HangUp { handoff_id } => {
                    tracing::info!(call_connection_id = %self.call_id, handoff_id = %handoff_id, "handoff goodbye spoken; hanging up");
                    self.closing_deadline = Some(Instant::now() + CLOSING_DEADLINE);
                    let service = self.service.clone();
                    let call_id = self.call_id.clone();
                    tokio::spawn(async move {
                        let saga = service.tools.get().map(|t| t.handoff.clone());
                        if let Some(saga) = &saga
                            && let Err(err) = saga.goodbye_played(&handoff_id).await
                        {
                            tracing::warn!(handoff_id = %handoff_id, error = %err, "cannot record the goodbye");
                        }
                        match service.provider.hang_up(&call_id).await {
                            Ok(()) => {
                                if let Some(saga) = &saga
                                    && let Err(err) = saga.call_ended(&handoff_id).await
                                {
                                    tracing::warn!(handoff_id = %handoff_id, error = %err, "cannot record the hang-up");
                                }
                            }
                            Err(err) => {
                                tracing::warn!(call_connection_id = %call_id, error = %err, "hang-up failed; the recovery worker will retry")
                            }
                        }
                    });
                }
                Effect::End => {}
            }
        }
    }

    /// The hook for agent tools the session does not run itself (`end_call` is handled by the
    /// conversation). The handoff saga (a later issue) plugs in here.
    fn handle_tool(&mut self, call: ToolCall) {
        tracing::info!(call_connection_id = %self.call_id, tool = %call.name, "agent tool call not handled in voice yet");
    }
}

/// Writes a call's turns to the customer's context, in order. Turns that queued while a write
/// was in flight go into the next write together: one read and one write of the whole context,
/// not one per turn. On a quick store they rarely queue (an agent's turn is remembered once it
/// has been spoken); on a slow one (Cosmos DB under load) the writes no longer fall behind.
async fn persist_turns(
    contexts: Contexts,
    customer: CustomerId,
    max_turns: usize,
    call_id: String,
    mut turns: mpsc::Receiver<Box<Turn>>,
) {
    let mut batch = Vec::new();
    while turns.recv_many(&mut batch, ACTION_BUFFER).await > 0 {
        let written = contexts
            .update(&customer, |ctx| {
                for turn in &batch {
                    ctx.push_turn(Turn::clone(turn), max_turns);
                }
            })
            .await;
        if let Err(err) = written {
            tracing::warn!(call_connection_id = %call_id, error = %err, turns = batch.len(), "turns not persisted");
        }
        batch.clear();
    }
}

fn event_input(event: &CallEvent) -> Option<Input> {
    let op = event.operation_context.clone().unwrap_or_default();
    let played = |outcome| {
        Some(Input::Played {
            op: op.clone(),
            outcome,
        })
    };
    match &event.kind {
        CallEventKind::Disconnected => Some(Input::Disconnected),
        CallEventKind::MediaFailed { .. } => Some(Input::MediaFailed),
        CallEventKind::PlayStarted => played(PlayOutcome::Started),
        CallEventKind::PlayCompleted => played(PlayOutcome::Completed),
        CallEventKind::PlayFailed { .. } => played(PlayOutcome::Failed),
        CallEventKind::PlayCanceled => played(PlayOutcome::Canceled),
        _ => None,
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// The voice channel's tool host. Each tool runs in its own task, so a barge-in that aborts
/// the agent never cuts a saga step in half; a handoff that went through reaches the session
/// at once, even if the turn that asked for it was interrupted meanwhile.
struct VoiceTools {
    inner: Option<Arc<ConversationTools>>,
    feedback: Feedback,
    turn: u64,
}

#[async_trait::async_trait]
impl ToolHost for VoiceTools {
    async fn run(&self, request: ToolRequest, call: &ToolCall) -> ToolOutcome {
        let Some(inner) = self.inner.clone() else {
            return ToolOutcome::output(serde_json::json!({"error": "tools are not available"}));
        };
        let call = call.clone();
        let feedback = self.feedback.clone();
        let turn = self.turn;
        let task = tokio::spawn(async move {
            let outcome = inner.run(request, &call).await;
            if let Some(TurnAction::HandoffSent { handoff_id }) = &outcome.action {
                feedback.send(Input::HandoffSent {
                    turn,
                    handoff_id: handoff_id.clone(),
                });
            }
            outcome
        });
        task.await.unwrap_or_else(|_| {
            ToolOutcome::output(serde_json::json!({"error": "the tool failed"}))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use async_trait::async_trait;
    use chrono::Utc;

    use super::*;
    use crate::domain::Role;
    use crate::store::embedded::EmbeddedStore;
    use crate::store::{ContextStore, StoreError};

    /// The embedded store, counting the writes that reach it.
    struct CountingStore {
        inner: EmbeddedStore,
        writes: AtomicUsize,
    }

    #[async_trait]
    impl ContextStore for CountingStore {
        async fn get(&self, id: &CustomerId) -> Result<Option<CustomerContext>, StoreError> {
            self.inner.get(id).await
        }
        async fn create(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.create(ctx).await
        }
        async fn replace(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
            self.writes.fetch_add(1, Ordering::SeqCst);
            self.inner.replace(ctx).await
        }
    }

    #[tokio::test]
    async fn turns_queued_behind_a_write_share_the_next_one_and_keep_their_order() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(CountingStore {
            inner: EmbeddedStore::open(dir.path()).unwrap(),
            writes: AtomicUsize::new(0),
        });
        let contexts = Contexts::new(store.clone());
        let customer = CustomerId::parse_phone("+15551234567").unwrap();
        let (tx, rx) = mpsc::channel(ACTION_BUFFER);
        let turn = |role, text: &str| Box::new(Turn::new(Channel::Voice, role, text, Utc::now()));
        // The first turn is written alone; the next three arrive while that write is in
        // flight, queue, and are written together.
        tx.send(turn(Role::Customer, "one")).await.unwrap();
        let worker = tokio::spawn(persist_turns(
            contexts.clone(),
            customer.clone(),
            100,
            "call-1".into(),
            rx,
        ));
        tokio::task::yield_now().await;
        for text in ["two", "three", "four"] {
            tx.send(turn(Role::Agent, text)).await.unwrap();
        }
        drop(tx);
        worker.await.unwrap();

        let ctx = contexts.get(&customer).await.unwrap().unwrap();
        let texts: Vec<_> = ctx.transcript.iter().map(|t| t.text.as_str()).collect();
        assert_eq!(texts, ["one", "two", "three", "four"]);
        let writes = store.writes.load(Ordering::SeqCst);
        assert!(writes <= 2, "4 turns took {writes} writes");
    }
}
