//! `handoff`: M complete handoffs with the scripted agent, as `tests/it/handoff_story.rs` drives
//! one: a call comes in, the caller states the issue, WhatsApp is offered, the caller says yes,
//! the template is accepted at the sandbox provider, the goodbye is played and the call hung up.
//! Each saga step is timed from the handoff's state history and the sandbox providers' records.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};

use super::{BenchArgs, BenchError, HandoffReport, Progress, Service, StepFigures};
use crate::agent::scripted::OFFER_QUESTION;
use crate::domain::{CustomerId, Handoff, HandoffState, Milestone};
use crate::simulate::{self, MediaSocket};
use crate::voice::sandbox::{SandboxVoice, VoiceAction};

const STEP_TIMEOUT: Duration = Duration::from_secs(30);
/// Polling only reads; the figures come from the service's own timestamps.
const POLL: Duration = Duration::from_millis(5);

/// One handoff's moments.
struct Timeline {
    yes_sent: DateTime<Utc>,
    handoff: Handoff,
    goodbye_requested: Option<DateTime<Utc>>,
    hung_up: Option<DateTime<Utc>>,
}

/// The steps reported, each a span between two moments of a timeline.
type Span = fn(&Timeline) -> Option<DateTime<Utc>>;
const STEPS: &[(&str, Span, Span)] = &[
    ("yes sent -> accepted (agent turn)", yes, accepted),
    ("accepted -> summarised", accepted, summarised),
    ("summarised -> template accepted", summarised, template_sent),
    (
        "accepted -> template accepted (no agent)",
        accepted,
        template_sent,
    ),
    ("yes sent -> template accepted", yes, template_sent),
    (
        "template accepted -> goodbye play requested",
        template_sent,
        goodbye,
    ),
    (
        "PlayCompleted -> hang-up requested",
        goodbye_played,
        hung_up,
    ),
    ("yes sent -> call ended", yes, call_ended),
];

fn yes(t: &Timeline) -> Option<DateTime<Utc>> {
    Some(t.yes_sent)
}
fn at(t: &Timeline, state: HandoffState) -> Option<DateTime<Utc>> {
    t.handoff
        .history
        .iter()
        .find(|c| c.state == state)
        .map(|c| c.at)
}
fn accepted(t: &Timeline) -> Option<DateTime<Utc>> {
    at(t, HandoffState::Accepted)
}
fn summarised(t: &Timeline) -> Option<DateTime<Utc>> {
    at(t, HandoffState::Summarised)
}
fn template_sent(t: &Timeline) -> Option<DateTime<Utc>> {
    at(t, HandoffState::TemplateSent)
}
fn goodbye_played(t: &Timeline) -> Option<DateTime<Utc>> {
    at(t, HandoffState::GoodbyePlayed)
}
fn call_ended(t: &Timeline) -> Option<DateTime<Utc>> {
    at(t, HandoffState::CallEnded)
}
fn goodbye(t: &Timeline) -> Option<DateTime<Utc>> {
    t.goodbye_requested
}
fn hung_up(t: &Timeline) -> Option<DateTime<Utc>> {
    t.hung_up
}

pub(super) async fn run(
    args: &BenchArgs,
    progress: &Progress,
) -> Result<HandoffReport, BenchError> {
    let service = Arc::new(
        Service::start(args, true, |s| {
            s.handoff.queue_wait_seconds = 540;
            s.whatsapp.burst_wait = Duration::from_millis(100);
            if let Some(rate) = args.whatsapp_send_rate {
                s.whatsapp.send_rate_per_sec = rate.max(1);
            }
        })
        .await?,
    );
    let sandbox = service
        .state
        .voice
        .sandbox
        .clone()
        .ok_or_else(|| BenchError::Failed("handoff needs the sandbox voice provider".into()))?;
    let m = args.handoffs.max(1);
    progress.say(format!(
        "handoff ({}): {m} handoffs, {} at a time",
        super::backend_name(args),
        args.handoff_concurrency.max(1)
    ));
    let run = uuid::Uuid::new_v4().simple().to_string();
    let gate = Arc::new(tokio::sync::Semaphore::new(args.handoff_concurrency.max(1)));
    let mut tasks = Vec::with_capacity(m);
    for i in 0..m {
        let gate = gate.clone();
        let service = service.clone();
        let sandbox = sandbox.clone();
        let run = run.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await.map_err(|e| e.to_string())?;
            one(&service, &sandbox, &run, i).await
        }));
    }
    let mut timelines = Vec::with_capacity(m);
    let mut failures = Vec::new();
    for (i, task) in tasks.into_iter().enumerate() {
        match task.await {
            Ok(Ok(t)) => timelines.push(t),
            Ok(Err(e)) => failures.push(e),
            Err(e) => failures.push(e.to_string()),
        }
        if (i + 1) % 10 == 0 {
            progress.say(format!("handoff: {} of {m} done", i + 1));
        }
    }
    if let Some(first) = failures.first() {
        progress.say(format!(
            "handoff: {} did not complete (first: {first})",
            failures.len()
        ));
    }
    let steps = STEPS
        .iter()
        .map(|(name, from, to)| {
            let mut ms: Vec<u64> = timelines
                .iter()
                .filter_map(|t| Some((to(t)? - from(t)?).num_microseconds()?.max(0) as u64))
                .collect();
            ms.sort_unstable();
            StepFigures {
                step: (*name).to_owned(),
                samples: ms.len(),
                p50_ms: super::percentile(&ms, 50.0) as f64 / 1000.0,
                p99_ms: super::percentile(&ms, 99.0) as f64 / 1000.0,
                max_ms: ms.last().copied().unwrap_or(0) as f64 / 1000.0,
            }
        })
        .collect();
    let completed = timelines
        .iter()
        .filter(|t| t.handoff.reached(Milestone::TemplateSent) && t.hung_up.is_some())
        .count();
    let whatsapp_send_rate = service.state.settings.whatsapp.send_rate_per_sec;
    if let Ok(service) = Arc::try_unwrap(service) {
        service.stop().await;
    }
    Ok(HandoffReport {
        whatsapp_send_rate,
        handoffs: m,
        completed,
        steps,
        complete: completed == m,
    })
}

/// Plays one handoff to its end.
async fn one(
    service: &Service,
    sandbox: &SandboxVoice,
    run: &str,
    i: usize,
) -> Result<Timeline, String> {
    let phone = format!("+1425800{:04}", i);
    let customer = CustomerId::parse_phone(&phone).map_err(|e| e.to_string())?;
    let state = &service.state;
    state
        .stores
        .contexts
        .update(&customer, |c| c.display_name = Some("Ada Lovelace".into()))
        .await
        .map_err(|e| e.to_string())?;
    let answered = state
        .http
        .post(format!("{}/api/v1/calls/incoming", service.base))
        .json(&simulate::incoming_call(
            &format!("bench-handoff-{run}-{i}"),
            &format!("corr-h-{run}-{i}"),
            &phone,
        ))
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !answered.status().is_success() {
        return Err(format!("IncomingCall answered {}", answered.status()));
    }
    let call_id = wait("the call is answered", || async {
        let ctx = state.stores.contexts.get(&customer).await.ok()??;
        ctx.voice_sessions
            .last()
            .map(|s| s.call_connection_id.clone())
    })
    .await?;
    let url = sandbox.media_url(&call_id).ok_or("no media url")?;
    let mut socket = MediaSocket::connect(&url, &phone)
        .await
        .map_err(|e| e.to_string())?;
    let played = |needle: &'static str| {
        sandbox
            .actions()
            .iter()
            .any(|a| {
                matches!(a, VoiceAction::Play { call_connection_id, text, .. }
                    if *call_connection_id == call_id && text.contains(needle))
            })
            .then_some(())
    };
    wait("the greeting", || async { played("How can I help") }).await?;
    socket
        .transcription(
            "My power has been out since this morning at 123 Oak Street.",
            true,
            10_000_000,
        )
        .await
        .map_err(|e| e.to_string())?;
    // The offer is in the transcript once it was spoken to the end (not barged in on).
    wait("the WhatsApp offer", || async {
        let ctx = state.stores.contexts.get(&customer).await.ok()??;
        ctx.transcript
            .iter()
            .any(|t| t.text.contains(OFFER_QUESTION))
            .then_some(())
    })
    .await?;
    let yes_sent = Utc::now();
    socket
        .transcription("Yes, WhatsApp is fine.", true, 60_000_000)
        .await
        .map_err(|e| e.to_string())?;
    let handoff = wait("the call ends after the template", || async {
        state
            .stores
            .handoffs
            .for_customer(&customer)
            .await
            .ok()?
            .into_iter()
            .find(|h| h.reached(Milestone::CallEnded))
    })
    .await?;
    socket.close().await;
    let actions: Vec<(DateTime<Utc>, VoiceAction)> = sandbox
        .timed_actions()
        .into_iter()
        .filter(|(_, a)| match a {
            VoiceAction::Answer { call_connection_id }
            | VoiceAction::Play {
                call_connection_id, ..
            }
            | VoiceAction::CancelMedia { call_connection_id }
            | VoiceAction::HangUp { call_connection_id }
            | VoiceAction::Terminate { call_connection_id } => *call_connection_id == call_id,
        })
        .collect();
    let template_at = handoff
        .history
        .iter()
        .find(|c| c.state == HandoffState::TemplateSent)
        .map(|c| c.at);
    let goodbye_requested = actions
        .iter()
        .find(|(at, a)| {
            matches!(a, VoiceAction::Play { .. }) && template_at.is_some_and(|t| *at >= t)
        })
        .map(|(at, _)| *at);
    let hung_up = actions
        .iter()
        .find(|(_, a)| {
            matches!(
                a,
                VoiceAction::HangUp { .. } | VoiceAction::Terminate { .. }
            )
        })
        .map(|(at, _)| *at);
    Ok(Timeline {
        yes_sent,
        handoff,
        goodbye_requested,
        hung_up,
    })
}

async fn wait<T, F: Future<Output = Option<T>>>(
    what: &str,
    mut ready: impl FnMut() -> F,
) -> Result<T, String> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        if let Some(v) = ready().await {
            return Ok(v);
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: not within {STEP_TIMEOUT:?}"));
        }
        tokio::time::sleep(POLL).await;
    }
}
