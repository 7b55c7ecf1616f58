//! Voice counters for operators: calls answered, live sessions, media failures, turn latency.
//! Read by `GET /api/v1/voice/stats` (JSON) and rendered in Prometheus text format.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use serde::Serialize;

#[derive(Debug, Default)]
pub struct VoiceStats {
    answered: AtomicU64,
    active: AtomicU64,
    media_failures: AtomicU64,
    malformed_frames: AtomicU64,
    turns: AtomicU64,
    play_requested_ms_total: AtomicU64,
    agent_first_text_ms_total: AtomicU64,
    /// The latest turn latencies, oldest first (at most [`RECENT_TURNS`]).
    recent_turns: Mutex<VecDeque<Duration>>,
}

/// How many turn latencies [`VoiceStats::recent_turn_latencies`] keeps: a few minutes of
/// turns at a thousand calls, 16 bytes each.
pub const RECENT_TURNS: usize = 65_536;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VoiceStatsSnapshot {
    pub calls_answered: u64,
    pub active_sessions: u64,
    pub media_failures: u64,
    pub malformed_frames: u64,
    pub turns: u64,
    pub play_requested_ms_total: u64,
    pub agent_first_text_ms_total: u64,
}

impl VoiceStats {
    pub fn answered(&self) {
        self.answered.fetch_add(1, Relaxed);
    }
    pub fn session_started(&self) {
        self.active.fetch_add(1, Relaxed);
    }
    pub fn session_ended(&self) {
        self.active.fetch_sub(1, Relaxed);
    }
    pub fn media_failed(&self) {
        self.media_failures.fetch_add(1, Relaxed);
    }
    pub fn malformed_frame(&self) {
        self.malformed_frames.fetch_add(1, Relaxed);
    }
    pub fn turn(&self, agent_first_text_ms: u64, play_requested_ms: u64) {
        self.turns.fetch_add(1, Relaxed);
        self.agent_first_text_ms_total
            .fetch_add(agent_first_text_ms, Relaxed);
        self.play_requested_ms_total
            .fetch_add(play_requested_ms, Relaxed);
    }

    /// A turn's engine latency: the caller's input (a `Final` transcription, DTMF) received
    /// from the media socket → the turn's first play requested from the voice provider.
    /// Exported as the `handoff_voice_turn_latency_seconds` histogram.
    pub fn turn_latency(&self, latency: Duration) {
        metrics::histogram!("handoff_voice_turn_latency_seconds").record(latency.as_secs_f64());
        let mut recent = self
            .recent_turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT_TURNS {
            recent.pop_front();
        }
        recent.push_back(latency);
    }

    /// The latest turn latencies recorded by [`VoiceStats::turn_latency`], oldest first.
    pub fn recent_turn_latencies(&self) -> Vec<Duration> {
        let recent = self
            .recent_turns
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        recent.iter().copied().collect()
    }

    pub fn snapshot(&self) -> VoiceStatsSnapshot {
        VoiceStatsSnapshot {
            calls_answered: self.answered.load(Relaxed),
            active_sessions: self.active.load(Relaxed),
            media_failures: self.media_failures.load(Relaxed),
            malformed_frames: self.malformed_frames.load(Relaxed),
            turns: self.turns.load(Relaxed),
            play_requested_ms_total: self.play_requested_ms_total.load(Relaxed),
            agent_first_text_ms_total: self.agent_first_text_ms_total.load(Relaxed),
        }
    }

    /// Prometheus text exposition, for whichever `/metrics` route serves it.
    pub fn prometheus(&self) -> String {
        let s = self.snapshot();
        format!(
            "# TYPE handoff_voice_calls_answered_total counter\nhandoff_voice_calls_answered_total {}\n\
             # TYPE handoff_voice_active_sessions gauge\nhandoff_voice_active_sessions {}\n\
             # TYPE handoff_voice_media_failures_total counter\nhandoff_voice_media_failures_total {}\n\
             # TYPE handoff_voice_malformed_frames_total counter\nhandoff_voice_malformed_frames_total {}\n\
             # TYPE handoff_voice_turn_play_requested_ms summary\nhandoff_voice_turn_play_requested_ms_sum {}\nhandoff_voice_turn_play_requested_ms_count {}\n\
             # TYPE handoff_voice_turn_agent_first_text_ms summary\nhandoff_voice_turn_agent_first_text_ms_sum {}\nhandoff_voice_turn_agent_first_text_ms_count {}\n",
            s.calls_answered,
            s.active_sessions,
            s.media_failures,
            s.malformed_frames,
            s.play_requested_ms_total,
            s.turns,
            s.agent_first_text_ms_total,
            s.turns,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn turn_latencies_keep_the_latest_in_order_and_stay_bounded() {
        let stats = VoiceStats::default();
        for micros in 0..(RECENT_TURNS as u64 + 3) {
            stats.turn_latency(Duration::from_micros(micros));
        }
        let recent = stats.recent_turn_latencies();
        assert_eq!(recent.len(), RECENT_TURNS);
        assert_eq!(recent[0], Duration::from_micros(3));
        assert_eq!(
            recent.last(),
            Some(&Duration::from_micros(RECENT_TURNS as u64 + 2))
        );
    }
}
