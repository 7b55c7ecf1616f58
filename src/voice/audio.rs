//! The outbound-audio output path: speak by writing PCM frames on the media WebSocket instead of
//! asking Call Automation to `:play`. Text goes through a [`TextToSpeech`] port; the writer cuts
//! the audio into 20 ms frames, paces them at real time (so ACS buffers at most a frame or two
//! and a barge-in is heard at once), and on `Stop` drops what is queued and sends `StopAudio` so
//! ACS flushes what it buffered.

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::media::{AudioFormat, audio_frame_json, stop_audio_json};
use super::session::PlayOutcome;

#[derive(Debug, Clone, thiserror::Error)]
#[error("speech synthesis failed: {0}")]
pub struct TtsError(pub String);

/// Text to 16-bit mono PCM at the call's sample rate.
#[async_trait]
pub trait TextToSpeech: Send + Sync + 'static {
    async fn synthesize(&self, text: &str, format: AudioFormat) -> Result<Vec<u8>, TtsError>;
}

/// A deterministic synthesiser for tests and the demo: `ms_per_char` of a constant sample per
/// character, so the frames a text yields are known in advance.
#[derive(Debug, Clone)]
pub struct TestSynthesizer {
    pub ms_per_char: u32,
}

#[async_trait]
impl TextToSpeech for TestSynthesizer {
    async fn synthesize(&self, text: &str, format: AudioFormat) -> Result<Vec<u8>, TtsError> {
        let samples =
            format.sample_rate as usize * self.ms_per_char as usize / 1000 * text.chars().count();
        Ok([0x10u8, 0x00].repeat(samples))
    }
}

/// When frames leave: real time in production; tests record the schedule instead of sleeping.
#[async_trait]
pub trait Pacer: Send + 'static {
    /// Marks the start of an utterance.
    fn start(&mut self);
    /// Waits until `due` after the utterance started.
    async fn wait(&mut self, due: std::time::Duration);
}

/// Real-time pacing.
#[derive(Debug)]
pub struct RealTime(Instant);

impl Default for RealTime {
    fn default() -> Self {
        Self(Instant::now())
    }
}

#[async_trait]
impl Pacer for RealTime {
    fn start(&mut self) {
        self.0 = Instant::now();
    }
    async fn wait(&mut self, due: std::time::Duration) {
        tokio::time::sleep_until(self.0 + due).await;
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum AudioCommand {
    Say {
        op: String,
        text: String,
    },
    /// Barge-in: drop everything queued, flush ACS's buffer.
    Stop,
}

/// Runs one call's audio output until `commands` closes. Outcomes of each utterance
/// (completed, failed, canceled) are reported on `outcomes`; frames go to `socket`.
pub async fn run_audio_out(
    tts: Arc<dyn TextToSpeech>,
    mut pacer: impl Pacer,
    format: AudioFormat,
    mut commands: mpsc::Receiver<AudioCommand>,
    socket: mpsc::Sender<String>,
    outcomes: mpsc::UnboundedSender<(String, PlayOutcome)>,
) {
    let mut queue: VecDeque<(String, String)> = VecDeque::new();
    loop {
        let Some((op, text)) = queue.pop_front() else {
            match commands.recv().await {
                None => return,
                Some(AudioCommand::Say { op, text }) => queue.push_back((op, text)),
                Some(AudioCommand::Stop) => {
                    if socket.send(stop_audio_json()).await.is_err() {
                        return;
                    }
                }
            }
            continue;
        };
        let pcm = match tts.synthesize(&text, format).await {
            Ok(pcm) => pcm,
            Err(err) => {
                tracing::warn!(error = %err, "utterance not synthesised");
                let _ = outcomes.send((op, PlayOutcome::Failed));
                continue;
            }
        };
        let _ = outcomes.send((op.clone(), PlayOutcome::Started));
        let frames = format.frames(&pcm);
        pacer.start();
        let mut index = 0;
        let mut stopped = false;
        while index < frames.len() {
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    None => return,
                    Some(AudioCommand::Say { op, text }) => queue.push_back((op, text)),
                    Some(AudioCommand::Stop) => { stopped = true; break; }
                },
                () = pacer.wait(AudioFormat::due(index)) => {
                    if socket.send(audio_frame_json(&frames[index])).await.is_err() {
                        return;
                    }
                    index += 1;
                }
            }
        }
        if stopped {
            let _ = outcomes.send((op, PlayOutcome::Canceled));
            for (op, _) in queue.drain(..) {
                let _ = outcomes.send((op, PlayOutcome::Canceled));
            }
            if socket.send(stop_audio_json()).await.is_err() {
                return;
            }
        } else {
            let _ = outcomes.send((op, PlayOutcome::Completed));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use serde_json::Value;

    use super::*;

    /// Records the schedule; the first `free` frames go at once, then each waits for a permit,
    /// so a test can stop an utterance in the middle without depending on the clock.
    struct Scripted {
        schedule: Arc<Mutex<Vec<Duration>>>,
        permits: Arc<tokio::sync::Semaphore>,
    }

    #[async_trait]
    impl Pacer for Scripted {
        fn start(&mut self) {}
        async fn wait(&mut self, due: Duration) {
            if let Ok(permit) = self.permits.acquire().await {
                permit.forget();
            }
            self.schedule.lock().unwrap().push(due);
        }
    }

    struct Harness {
        commands: mpsc::Sender<AudioCommand>,
        socket: mpsc::Receiver<String>,
        outcomes: mpsc::UnboundedReceiver<(String, PlayOutcome)>,
        schedule: Arc<Mutex<Vec<Duration>>>,
        permits: Arc<tokio::sync::Semaphore>,
    }

    fn spawn(format: AudioFormat, permits: usize) -> Harness {
        let (cmd_tx, cmd_rx) = mpsc::channel(8);
        let (sock_tx, sock_rx) = mpsc::channel(1024);
        let (out_tx, out_rx) = mpsc::unbounded_channel();
        let schedule = Arc::new(Mutex::new(Vec::new()));
        let permits = Arc::new(tokio::sync::Semaphore::new(permits));
        tokio::spawn(run_audio_out(
            Arc::new(TestSynthesizer { ms_per_char: 20 }),
            Scripted {
                schedule: schedule.clone(),
                permits: permits.clone(),
            },
            format,
            cmd_rx,
            sock_tx,
            out_tx,
        ));
        Harness {
            commands: cmd_tx,
            socket: sock_rx,
            outcomes: out_rx,
            schedule,
            permits,
        }
    }

    #[tokio::test]
    async fn frames_are_full_sized_and_scheduled_at_real_time() {
        let mut h = spawn(
            AudioFormat {
                sample_rate: 24_000,
            },
            100,
        );
        h.commands
            .send(AudioCommand::Say {
                op: "t1:0".into(),
                text: "abcde".into(),
            })
            .await
            .unwrap();
        for _ in 0..5 {
            let frame: Value = serde_json::from_str(&h.socket.recv().await.unwrap()).unwrap();
            assert_eq!(frame["Kind"], "AudioData");
            let data = frame["AudioData"]["Data"].as_str().unwrap();
            assert_eq!(data.len(), 1280, "960 bytes of PCM per 20 ms at 24 kHz");
        }
        assert_eq!(
            h.outcomes.recv().await.unwrap(),
            ("t1:0".into(), PlayOutcome::Started)
        );
        assert_eq!(
            h.outcomes.recv().await.unwrap(),
            ("t1:0".into(), PlayOutcome::Completed)
        );
        assert_eq!(
            *h.schedule.lock().unwrap(),
            (0..5)
                .map(|i| Duration::from_millis(20 * i))
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test]
    async fn stop_drops_the_rest_and_flushes_acs() {
        let mut h = spawn(
            AudioFormat {
                sample_rate: 16_000,
            },
            3,
        );
        h.commands
            .send(AudioCommand::Say {
                op: "t1:0".into(),
                text: "a long sentence".into(),
            })
            .await
            .unwrap();
        h.commands
            .send(AudioCommand::Say {
                op: "t1:1".into(),
                text: "and more".into(),
            })
            .await
            .unwrap();
        for _ in 0..3 {
            let frame: Value = serde_json::from_str(&h.socket.recv().await.unwrap()).unwrap();
            assert_eq!(frame["AudioData"]["Data"].as_str().unwrap().len(), 856);
        }
        h.commands.send(AudioCommand::Stop).await.unwrap();
        let frame: Value = serde_json::from_str(&h.socket.recv().await.unwrap()).unwrap();
        assert_eq!(
            frame["Kind"], "StopAudio",
            "nothing more of the utterance was sent"
        );
        assert_eq!(h.outcomes.recv().await.unwrap().1, PlayOutcome::Started);
        assert_eq!(
            h.outcomes.recv().await.unwrap(),
            ("t1:0".into(), PlayOutcome::Canceled)
        );
        assert_eq!(
            h.outcomes.recv().await.unwrap(),
            ("t1:1".into(), PlayOutcome::Canceled)
        );
        // The next utterance plays normally.
        h.permits.add_permits(100);
        h.commands
            .send(AudioCommand::Say {
                op: "t2:0".into(),
                text: "ok".into(),
            })
            .await
            .unwrap();
        assert_eq!(
            h.outcomes.recv().await.unwrap(),
            ("t2:0".into(), PlayOutcome::Started)
        );
        assert_eq!(
            h.outcomes.recv().await.unwrap(),
            ("t2:0".into(), PlayOutcome::Completed)
        );
    }
}
