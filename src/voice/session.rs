//! The per-call conversation state machine, free of I/O: inputs in (caller speech, agent text,
//! play outcomes, timers), effects out (ask the agent, play a sentence, cancel playback,
//! remember a turn, close the call). The driver in `voice::call` executes the effects.
//!
//! - A caller `Final` becomes one customer turn (a repeated `Final` of the same utterance is
//!   ignored) and a new agent turn.
//! - The agent's streamed text is cut into sentences; each complete sentence is played at once,
//!   so the first is spoken before the rest exists.
//! - Caller speech while the agent is speaking cancels playback (barge-in); the remembered agent
//!   turn is what was actually played (sentences whose `PlayCompleted` arrived).
//! - Silence while listening prompts the agent once, then the call is closed politely.

use std::collections::HashSet;
use std::time::Instant;

use chrono::Utc;

use super::media::SentenceSplitter;
use crate::agent::{AgentInput, ToolCall};
use crate::domain::{Channel, HandoffId, Role, Turn, TurnTimings};

/// Operation contexts of closing plays start with this; after their play ends, the call is
/// hung up (by whichever replica receives the callback).
pub const CLOSING_PREFIX: &str = "close:";
pub const GOODBYE: &str = "Thank you for calling. Goodbye.";
pub const HANDOFF_GOODBYE: &str =
    "I've sent you a WhatsApp message with a summary of our call. Thank you for calling. Goodbye.";
/// The tool name a (later) agent uses to end the call.
pub const END_CALL_TOOL: &str = "end_call";

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// A final transcription of the caller; `source_id` identifies the utterance.
    CallerFinal {
        text: String,
        source_id: String,
    },
    /// The caller is speaking (an intermediate result, or non-silent audio).
    CallerSpeaking,
    Dtmf {
        digits: String,
    },
    AgentText {
        turn: u64,
        delta: String,
    },
    AgentTool {
        turn: u64,
        call: ToolCall,
    },
    AgentDone {
        turn: u64,
    },
    /// The continuation template was accepted: once this turn's goodbye has been spoken, the
    /// call ends (invariant 5: never before the template was accepted).
    HandoffSent {
        turn: u64,
        handoff_id: HandoffId,
    },
    AgentFailed {
        turn: u64,
    },
    Played {
        op: String,
        outcome: PlayOutcome,
    },
    SilenceTimeout,
    /// Media streaming or transcription failed: the call is being closed elsewhere.
    MediaFailed,
    Disconnected,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlayOutcome {
    Started,
    Completed,
    Failed,
    Canceled,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    AskAgent {
        turn: u64,
        input: AgentInput,
    },
    /// Stop generating the current agent turn.
    AbortAgent,
    Play {
        op: String,
        text: String,
    },
    /// Barge-in: stop everything ACS is playing or has queued.
    CancelPlayback,
    Remember(Turn),
    /// First play of a turn requested: per-turn stage timings. `started` is when the input
    /// that began the turn arrived (the `now` it was handled with).
    Timings {
        turn: u64,
        timings: TurnTimings,
        started: Instant,
    },
    /// A tool call the session does not handle itself (the hook for later tools).
    Tool(ToolCall),
    /// Say `text` with a closing operation context; the call is hung up after it.
    Close {
        op: String,
        text: String,
        reason: &'static str,
    },
    /// Hang up now: the handoff's goodbye has been spoken (its `PlayCompleted` arrived).
    HangUp {
        handoff_id: HandoffId,
    },
    /// The session is over.
    End,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Listening,
    /// The agent is producing a turn (and maybe already speaking its first sentences).
    Responding,
    Closing,
    Ended,
}

#[derive(Debug)]
struct Sentence {
    text: String,
    done: bool,
    played: bool,
}

#[derive(Debug)]
struct AgentTurn {
    id: u64,
    splitter: SentenceSplitter,
    sentences: Vec<Sentence>,
    agent_done: bool,
    started: Option<Instant>,
    first_text_ms: Option<u64>,
    timings: Option<TurnTimings>,
    close_after: bool,
    handoff: Option<HandoffId>,
}

#[derive(Debug)]
pub struct Conversation {
    call_connection_id: String,
    /// Distinguishes this socket's session from an earlier one of the same call (ACS may
    /// reconnect the media socket), so remembered agent turns never collide.
    session: String,
    phase: Phase,
    next_turn: u64,
    current: Option<AgentTurn>,
    seen_finals: HashSet<String>,
    silences: u32,
}

impl Conversation {
    pub fn new(call_connection_id: impl Into<String>) -> Self {
        Self::with_session(call_connection_id, "s")
    }

    pub fn with_session(call_connection_id: impl Into<String>, session: impl Into<String>) -> Self {
        Self {
            call_connection_id: call_connection_id.into(),
            session: session.into(),
            phase: Phase::Listening,
            next_turn: 1,
            current: None,
            seen_finals: HashSet::new(),
            silences: 0,
        }
    }

    /// The call connected: the agent speaks first.
    pub fn start(&mut self, now: Instant) -> Vec<Effect> {
        let _ = now;
        let mut effects = Vec::new();
        self.begin_turn(AgentInput::CallStarted, None, &mut effects);
        effects
    }

    /// A reconnected media socket of a call already under way: no second greeting, listen.
    pub fn resume(&mut self) {
        self.phase = Phase::Listening;
    }

    /// Whether the session waits for the caller (the silence timer runs only then).
    pub fn listening(&self) -> bool {
        self.phase == Phase::Listening
    }

    pub fn ended(&self) -> bool {
        self.phase == Phase::Ended
    }

    /// Whether any sentence of the current turn is requested and not yet finished.
    pub fn speaking(&self) -> bool {
        self.current
            .as_ref()
            .is_some_and(|t| t.sentences.iter().any(|s| !s.done))
    }

    pub fn handle(&mut self, input: Input, now: Instant) -> Vec<Effect> {
        let mut effects = Vec::new();
        if matches!(self.phase, Phase::Ended) {
            return effects;
        }
        match input {
            Input::Disconnected | Input::MediaFailed => {
                self.interrupt(&mut effects, false);
                self.phase = Phase::Ended;
                effects.push(Effect::End);
            }
            _ if self.phase == Phase::Closing => {}
            // The template went out: the goodbye is spoken to the end, whatever the caller says.
            Input::CallerSpeaking
            | Input::CallerFinal { .. }
            | Input::Dtmf { .. }
            | Input::SilenceTimeout
                if self.current.as_ref().is_some_and(|t| t.handoff.is_some()) => {}
            Input::CallerSpeaking => {
                self.silences = 0;
                if self.speaking() {
                    self.interrupt(&mut effects, true);
                    self.phase = Phase::Listening;
                }
            }
            Input::CallerFinal { text, source_id } => {
                let text = text.trim().to_owned();
                if text.is_empty() || !self.seen_finals.insert(source_id.clone()) {
                    return effects;
                }
                self.silences = 0;
                if self.current.is_some() {
                    self.interrupt(&mut effects, true);
                }
                effects.push(Effect::Remember(
                    Turn::new(Channel::Voice, Role::Customer, text.clone(), Utc::now())
                        .with_source_id(source_id),
                ));
                self.begin_turn(AgentInput::Text { text }, Some(now), &mut effects);
            }
            Input::Dtmf { digits } => {
                self.silences = 0;
                if self.current.is_some() {
                    self.interrupt(&mut effects, true);
                }
                self.begin_turn(AgentInput::Dtmf { digits }, Some(now), &mut effects);
            }
            Input::SilenceTimeout => {
                if self.phase != Phase::Listening {
                    return effects;
                }
                self.silences += 1;
                if self.silences == 1 {
                    self.begin_turn(AgentInput::Silence { count: 1 }, None, &mut effects);
                } else {
                    self.close(GOODBYE, "silence", &mut effects);
                }
            }
            Input::AgentText { turn, delta } => {
                let call = self.call_connection_id.clone();
                let Some(current) = self.current.as_mut().filter(|t| t.id == turn) else {
                    return effects;
                };
                if current.first_text_ms.is_none()
                    && let Some(started) = current.started
                {
                    current.first_text_ms = Some(millis(now - started));
                }
                for sentence in current.splitter.push(&delta) {
                    Self::play_sentence(&call, current, sentence, now, &mut effects);
                }
            }
            Input::AgentTool { turn, call } => {
                let Some(current) = self.current.as_mut().filter(|t| t.id == turn) else {
                    return effects;
                };
                if call.name == END_CALL_TOOL {
                    current.close_after = true;
                } else {
                    effects.push(Effect::Tool(call));
                }
            }
            Input::HandoffSent { turn, handoff_id } => {
                match self.current.as_mut().filter(|t| t.id == turn) {
                    Some(current) => current.handoff = Some(handoff_id),
                    None => {
                        // The caller talked over the turn that sent the template; the call must
                        // still end now that WhatsApp has it.
                        self.interrupt(&mut effects, true);
                        self.close(HANDOFF_GOODBYE, "handoff", &mut effects);
                    }
                }
            }
            Input::AgentDone { turn } | Input::AgentFailed { turn } => {
                let call = self.call_connection_id.clone();
                let Some(current) = self.current.as_mut().filter(|t| t.id == turn) else {
                    return effects;
                };
                current.agent_done = true;
                if let Some(rest) = current.splitter.finish() {
                    Self::play_sentence(&call, current, rest, now, &mut effects);
                }
                self.finish_if_spoken(&mut effects);
            }
            Input::Played { op, outcome } => {
                let Some((turn, index)) = parse_op(&op) else {
                    return effects;
                };
                let Some(current) = self.current.as_mut().filter(|t| t.id == turn) else {
                    return effects;
                };
                let Some(sentence) = current.sentences.get_mut(index) else {
                    return effects;
                };
                match outcome {
                    PlayOutcome::Started => {}
                    PlayOutcome::Completed => {
                        sentence.done = true;
                        sentence.played = true;
                    }
                    PlayOutcome::Failed | PlayOutcome::Canceled => sentence.done = true,
                }
                self.finish_if_spoken(&mut effects);
            }
        }
        effects
    }

    fn begin_turn(
        &mut self,
        input: AgentInput,
        started: Option<Instant>,
        effects: &mut Vec<Effect>,
    ) {
        let id = self.next_turn;
        self.next_turn += 1;
        self.current = Some(AgentTurn {
            id,
            splitter: SentenceSplitter::default(),
            sentences: Vec::new(),
            agent_done: false,
            started,
            first_text_ms: None,
            timings: None,
            close_after: false,
            handoff: None,
        });
        self.phase = Phase::Responding;
        effects.push(Effect::AskAgent { turn: id, input });
    }

    fn play_sentence(
        call: &str,
        turn: &mut AgentTurn,
        text: String,
        now: Instant,
        effects: &mut Vec<Effect>,
    ) {
        let index = turn.sentences.len();
        turn.sentences.push(Sentence {
            text: text.clone(),
            done: false,
            played: false,
        });
        if index == 0
            && let Some(started) = turn.started
        {
            let timings = TurnTimings {
                agent_first_text_ms: turn.first_text_ms.unwrap_or_default(),
                play_requested_ms: millis(now - started),
            };
            turn.timings = Some(timings);
            effects.push(Effect::Timings {
                turn: turn.id,
                timings,
                started,
            });
        }
        let _ = call;
        effects.push(Effect::Play {
            op: format!("t{}:{index}", turn.id),
            text,
        });
    }

    /// The turn is over when the agent is done and every sentence has finished playing.
    fn finish_if_spoken(&mut self, effects: &mut Vec<Effect>) {
        let Some(current) = &self.current else { return };
        if !current.agent_done || current.sentences.iter().any(|s| !s.done) {
            return;
        }
        let Some(current) = self.current.take() else {
            return;
        };
        let close_after = current.close_after;
        let handoff = current.handoff.clone();
        let spoke = current.sentences.iter().any(|s| s.played);
        self.remember_agent(current, effects);
        if let Some(handoff_id) = handoff {
            if spoke {
                self.phase = Phase::Closing;
                effects.push(Effect::HangUp { handoff_id });
            } else {
                // Nothing was said after the template went out: say goodbye, then hang up.
                self.close(HANDOFF_GOODBYE, "handoff", effects);
            }
        } else if close_after {
            self.close(GOODBYE, "agent_ended_call", effects);
        } else {
            self.phase = Phase::Listening;
        }
    }

    /// Stops the current agent turn: abort generation, cancel playback if anything is playing,
    /// remember only what was played.
    fn interrupt(&mut self, effects: &mut Vec<Effect>, barge_in: bool) {
        let Some(current) = self.current.take() else {
            return;
        };
        if !current.agent_done {
            effects.push(Effect::AbortAgent);
        }
        if barge_in && current.sentences.iter().any(|s| !s.done) {
            effects.push(Effect::CancelPlayback);
        }
        self.remember_agent(current, effects);
    }

    fn remember_agent(&mut self, turn: AgentTurn, effects: &mut Vec<Effect>) {
        let spoken: Vec<&str> = turn
            .sentences
            .iter()
            .filter(|s| s.played)
            .map(|s| s.text.as_str())
            .collect();
        if spoken.is_empty() {
            return;
        }
        let mut remembered = Turn::new(Channel::Voice, Role::Agent, spoken.join(" "), Utc::now())
            .with_source_id(format!(
                "{}:agent:{}:{}",
                self.call_connection_id, self.session, turn.id
            ));
        remembered.timings = turn.timings;
        effects.push(Effect::Remember(remembered));
    }

    fn close(&mut self, text: &str, reason: &'static str, effects: &mut Vec<Effect>) {
        self.phase = Phase::Closing;
        effects.push(Effect::Close {
            op: format!("{CLOSING_PREFIX}{reason}"),
            text: text.to_owned(),
            reason,
        });
    }
}

fn parse_op(op: &str) -> Option<(u64, usize)> {
    let (turn, index) = op.strip_prefix('t')?.split_once(':')?;
    Some((turn.parse().ok()?, index.parse().ok()?))
}

fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn plays(effects: &[Effect]) -> Vec<(String, String)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Play { op, text } => Some((op.clone(), text.clone())),
                _ => None,
            })
            .collect()
    }

    fn remembered(effects: &[Effect]) -> Vec<(Role, String)> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Remember(t) => Some((t.role, t.text.clone())),
                _ => None,
            })
            .collect()
    }

    fn played(c: &mut Conversation, op: &str, now: Instant) -> Vec<Effect> {
        c.handle(
            Input::Played {
                op: op.into(),
                outcome: PlayOutcome::Completed,
            },
            now,
        )
    }

    #[test]
    fn greeting_then_a_turn_spoken_sentence_by_sentence() {
        let t0 = Instant::now();
        let mut c = Conversation::new("c1");
        let e = c.start(t0);
        assert_eq!(
            e,
            vec![Effect::AskAgent {
                turn: 1,
                input: AgentInput::CallStarted
            }]
        );
        let e = c.handle(
            Input::AgentText {
                turn: 1,
                delta: "Hello. How can".into(),
            },
            t0,
        );
        assert_eq!(plays(&e), vec![("t1:0".into(), "Hello.".into())]);
        assert!(c.speaking());
        let e = c.handle(
            Input::AgentText {
                turn: 1,
                delta: " I help?".into(),
            },
            t0,
        );
        assert!(plays(&e).is_empty());
        let e = c.handle(Input::AgentDone { turn: 1 }, t0);
        assert_eq!(plays(&e), vec![("t1:1".into(), "How can I help?".into())]);
        assert!(played(&mut c, "t1:0", t0).is_empty());
        assert!(!c.listening());
        let e = played(&mut c, "t1:1", t0);
        assert_eq!(
            remembered(&e),
            vec![(Role::Agent, "Hello. How can I help?".into())]
        );
        assert!(c.listening());

        // A caller turn, with timings measured from the final transcript.
        let e = c.handle(
            Input::CallerFinal {
                text: "My order is late.".into(),
                source_id: "c1:100".into(),
            },
            t0,
        );
        assert_eq!(
            remembered(&e),
            vec![(Role::Customer, "My order is late.".into())]
        );
        assert!(e.contains(&Effect::AskAgent {
            turn: 2,
            input: AgentInput::Text {
                text: "My order is late.".into()
            }
        }));
        c.handle(
            Input::AgentText {
                turn: 2,
                delta: "Sorry".into(),
            },
            t0 + Duration::from_millis(300),
        );
        let e = c.handle(
            Input::AgentText {
                turn: 2,
                delta: " about that. ".into(),
            },
            t0 + Duration::from_millis(450),
        );
        assert!(e.contains(&Effect::Timings {
            turn: 2,
            timings: TurnTimings {
                agent_first_text_ms: 300,
                play_requested_ms: 450
            },
            started: t0,
        }));
        assert_eq!(plays(&e), vec![("t2:0".into(), "Sorry about that.".into())]);
    }

    #[test]
    fn a_repeated_final_is_one_turn() {
        let t0 = Instant::now();
        let mut c = Conversation::new("c1");
        let final_ = || Input::CallerFinal {
            text: "Hi".into(),
            source_id: "c1:5".into(),
        };
        assert!(!c.handle(final_(), t0).is_empty());
        assert!(c.handle(final_(), t0).is_empty());
    }

    #[test]
    fn barge_in_cancels_playback_and_keeps_only_what_was_played() {
        let t0 = Instant::now();
        let mut c = Conversation::new("c1");
        c.start(t0);
        c.handle(
            Input::AgentText {
                turn: 1,
                delta: "One. Two. Three".into(),
            },
            t0,
        );
        played(&mut c, "t1:0", t0);
        let e = c.handle(Input::CallerSpeaking, t0);
        assert!(e.contains(&Effect::CancelPlayback));
        assert!(e.contains(&Effect::AbortAgent));
        assert_eq!(remembered(&e), vec![(Role::Agent, "One.".into())]);
        assert!(c.listening());
        // Late outcomes of the cancelled turn change nothing.
        assert!(played(&mut c, "t1:1", t0).is_empty());
        // Speech while not speaking is no barge-in.
        assert!(c.handle(Input::CallerSpeaking, t0).is_empty());
    }

    #[test]
    fn silence_prompts_once_then_closes_politely() {
        let t0 = Instant::now();
        let mut c = Conversation::new("c1");
        c.start(t0);
        c.handle(Input::AgentDone { turn: 1 }, t0);
        assert!(c.listening());
        let e = c.handle(Input::SilenceTimeout, t0);
        assert_eq!(
            e,
            vec![Effect::AskAgent {
                turn: 2,
                input: AgentInput::Silence { count: 1 }
            }]
        );
        c.handle(
            Input::AgentText {
                turn: 2,
                delta: "Still there?".into(),
            },
            t0,
        );
        c.handle(Input::AgentDone { turn: 2 }, t0);
        played(&mut c, "t2:0", t0);
        let e = c.handle(Input::SilenceTimeout, t0);
        assert_eq!(
            e,
            vec![Effect::Close {
                op: "close:silence".into(),
                text: GOODBYE.into(),
                reason: "silence"
            }]
        );
        assert!(
            c.handle(Input::CallerSpeaking, t0).is_empty(),
            "closing ignores input"
        );
        assert_eq!(c.handle(Input::Disconnected, t0), vec![Effect::End]);
        assert!(c.ended());
    }

    #[test]
    fn dtmf_reaches_the_agent_and_end_call_closes_after_the_turn() {
        let t0 = Instant::now();
        let mut c = Conversation::new("c1");
        let e = c.handle(
            Input::Dtmf {
                digits: "42".into(),
            },
            t0,
        );
        assert_eq!(
            e,
            vec![Effect::AskAgent {
                turn: 1,
                input: AgentInput::Dtmf {
                    digits: "42".into()
                }
            }]
        );
        c.handle(
            Input::AgentTool {
                turn: 1,
                call: ToolCall {
                    id: "x".into(),
                    name: END_CALL_TOOL.into(),
                    arguments: serde_json::json!({}),
                },
            },
            t0,
        );
        let other = ToolCall {
            id: "y".into(),
            name: "handoff_to_whatsapp".into(),
            arguments: serde_json::json!({}),
        };
        let e = c.handle(
            Input::AgentTool {
                turn: 1,
                call: other.clone(),
            },
            t0,
        );
        assert_eq!(e, vec![Effect::Tool(other)]);
        let e = c.handle(Input::AgentDone { turn: 1 }, t0);
        assert!(matches!(
            e.last(),
            Some(Effect::Close {
                reason: "agent_ended_call",
                ..
            })
        ));
    }

    #[test]
    fn media_failure_ends_the_session() {
        let t0 = Instant::now();
        let mut c = Conversation::new("c1");
        c.start(t0);
        let e = c.handle(Input::MediaFailed, t0);
        assert_eq!(e, vec![Effect::AbortAgent, Effect::End]);
    }
}
