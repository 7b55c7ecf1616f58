//! Voice over ACS Call Automation, black-box: the real app on a loopback port, ACS faked at the
//! wire (signatures recomputed), and ACS's side of the media WebSocket played by a client.

use std::time::Duration;

use handoff::config::{AcsAuth, AcsSettings, Secret, Settings};
use handoff::domain::{CustomerContext, CustomerId, Role, VoiceSessionStatus};
use serde_json::{Value, json};

use crate::support::TestApp;
use crate::support::acs_socket::AcsSocket;
use crate::support::fake_calling::{ACCESS_KEY, FakeAcs, FakeCall};
use crate::support::services::free_port;

const GRID_SECRET: &str = "grid-secret";

pub(crate) async fn app_with(fake: &FakeAcs, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let port = free_port();
    let endpoint = fake.endpoint();
    TestApp::spawn_echo(move |s| {
        s.port = port;
        s.public_base_url = format!("http://127.0.0.1:{port}");
        s.acs = Some(AcsSettings {
            endpoint,
            auth: AcsAuth::AccessKey(Secret::new(ACCESS_KEY.to_vec())),
        });
        s.webhooks.event_grid_secret = Some(Secret::new(GRID_SECRET.into()));
        s.voice.cognitive_services_endpoint = Some("https://ai.example.com".into());
        tweak(s);
    })
    .await
}

pub fn incoming_event(event_id: &str, correlation: &str, phone: &str) -> Value {
    json!([{
        "id": event_id,
        "topic": "/subscriptions/x/resourcegroups/rg/providers/microsoft.communication/communicationservices/acs",
        "subject": format!("/caller/4:{phone}/recipient/4:+18331234567"),
        "data": {
            "to": {"kind":"phoneNumber","rawId":"4:+18331234567","phoneNumber":{"value":"+18331234567"}},
            "from": {"kind":"phoneNumber","rawId": format!("4:{phone}"),"phoneNumber":{"value": phone}},
            "serverCallId": "aHR0cHM6Ly9", "callerDisplayName": "",
            "customContext": {"sipHeaders":{}, "voipHeaders":{}},
            "incomingCallContext": format!("ctx-{phone}"),
            "correlationId": correlation
        },
        "eventType": "Microsoft.Communication.IncomingCall",
        "dataVersion": "1.0", "metadataVersion": "1", "eventTime": "2026-01-01T00:00:00Z"
    }])
}

pub async fn ring(app: &TestApp, event: &Value) -> u16 {
    app.http
        .post(app.url(&format!("/api/v1/calls/incoming?code={GRID_SECRET}")))
        .json(event)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A caller rings; returns the answered call and ACS's media socket.
pub(crate) async fn call_in(app: &TestApp, fake: &FakeAcs, phone: &str) -> (FakeCall, AcsSocket) {
    let status = ring(
        app,
        &incoming_event(&format!("ev-{phone}"), &format!("corr-{phone}"), phone),
    )
    .await;
    assert_eq!(status, 200);
    let call = fake
        .wait_for("the call answered", |f| f.call_for(&format!("ctx-{phone}")))
        .await;
    let socket = AcsSocket::connect(&call.media_url).await;
    (call, socket)
}

pub(crate) fn plays(fake: &FakeAcs, call_id: &str) -> Vec<String> {
    fake.plays_for(call_id)
        .iter()
        .filter_map(|p| p.play_text().map(str::to_owned))
        .collect()
}

pub(crate) async fn wait_for_play(fake: &FakeAcs, call_id: &str, text: &str) {
    fake.wait_for(&format!("play {text:?} on {call_id}"), |f| {
        plays(f, call_id).iter().any(|p| p == text).then_some(())
    })
    .await;
}

pub async fn wait_context(
    app: &TestApp,
    phone: &str,
    what: &str,
    ready: impl Fn(&CustomerContext) -> bool,
) -> CustomerContext {
    let id = CustomerId::parse_phone(phone).unwrap();
    for _ in 0..500 {
        if let Ok(Some(ctx)) = app.state.stores.contexts.get(&id).await
            && ready(&ctx)
        {
            return ctx;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("context never showed: {what}");
}

#[tokio::test]
async fn voice_full_call_with_several_turns() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let phone = "+14255550101";
    let (call, mut socket) = call_in(&app, &fake, phone).await;
    let id = call.call_id.as_str();

    // The greeting is spoken sentence by sentence.
    wait_for_play(&fake, id, "How can I help you today?").await;
    assert_eq!(
        plays(&fake, id),
        vec!["Hello.", "Thanks for calling.", "How can I help you today?"]
    );

    // The caller speaks once the greeting has been heard (the agent turn is remembered when its
    // last PlayCompleted arrives).
    wait_context(&app, phone, "the greeting", |c| c.transcript.len() == 1).await;
    // Turn 1, with a duplicate Final of the same utterance.
    socket
        .final_text("I need help with my order", 10_000_000)
        .await;
    socket
        .final_text("I need help with my order", 10_000_000)
        .await;
    wait_context(&app, phone, "turn 1", |c| c.transcript.len() == 3).await;
    // Turn 2.
    socket.final_text("It is order 42", 90_000_000).await;
    let ctx = wait_context(&app, phone, "turn 2", |c| c.transcript.len() == 5).await;
    let turns: Vec<(Role, &str)> = ctx
        .transcript
        .iter()
        .map(|t| (t.role, t.text.as_str()))
        .collect();
    assert_eq!(
        turns,
        vec![
            (
                Role::Agent,
                "Hello. Thanks for calling. How can I help you today?"
            ),
            (Role::Customer, "I need help with my order"),
            (
                Role::Agent,
                "You said: I need help with my order. Let me look into that."
            ),
            (Role::Customer, "It is order 42"),
            (
                Role::Agent,
                "You said: It is order 42. Let me look into that."
            ),
        ]
    );
    assert_eq!(
        plays(&fake, id)
            .iter()
            .filter(|p| p.contains("I need help with my order"))
            .count(),
        1,
        "a repeated Final is one turn"
    );
    assert!(
        ctx.transcript[2].timings.is_some(),
        "agent turns carry stage timings"
    );
    assert_eq!(ctx.voice_sessions.len(), 1);
    assert_eq!(ctx.voice_sessions[0].call_connection_id, id);

    // The caller hangs up.
    assert_eq!(fake.callback(id, "CallDisconnected", json!({})).await, 200);
    let ctx = wait_context(&app, phone, "session ended", |c| {
        c.voice_sessions[0].status == VoiceSessionStatus::Ended
    })
    .await;
    assert!(ctx.voice_sessions[0].ended_at.is_some());
    assert_eq!(socket.close_code().await.unwrap_or(1000), 1000);
    assert_eq!(fake.bad_signatures(), 0);
}

#[tokio::test]
async fn voice_answer_request_carries_media_transcription_and_a_per_call_secret() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |s| s.voice.audio_format = "pcm24KMono".into()).await;
    let (call, socket) = call_in(&app, &fake, "+14255550102").await;
    let answer = fake.answers().into_iter().next().unwrap();
    let body = &answer.body;
    let base = app.state.settings.public_base_url.clone();
    assert_eq!(body["incomingCallContext"], "ctx-+14255550102");
    let callback = body["callbackUri"].as_str().unwrap();
    let token = callback
        .strip_prefix(&format!("{base}/api/v1/calls/callbacks?token="))
        .expect("callback URI on the public base URL");
    assert!(token.len() >= 32, "a long random per-call secret");
    let ws_base = base.replacen("http://", "ws://", 1);
    let media = &body["mediaStreamingOptions"];
    assert_eq!(media["transportType"], "websocket");
    assert_eq!(
        media["transportUrl"],
        format!("{ws_base}/api/v1/media/ws?token={token}")
    );
    assert_eq!(media["contentType"], "audio");
    assert_eq!(media["audioChannelType"], "mixed");
    assert_eq!(media["startMediaStreaming"], true);
    assert_eq!(media["enableBidirectional"], true);
    assert_eq!(media["audioFormat"], "pcm24KMono");
    let transcription = &body["transcriptionOptions"];
    assert_eq!(transcription["transportType"], "websocket");
    assert_eq!(transcription["transportUrl"], media["transportUrl"]);
    assert_eq!(transcription["locale"], "en-US");
    assert_eq!(transcription["startTranscription"], true);
    assert_eq!(transcription["enableIntermediateResults"], true);
    assert_eq!(
        body["callIntelligenceOptions"]["cognitiveServicesEndpoint"],
        "https://ai.example.com"
    );
    assert!(answer.repeatability_id.is_some(), "answer is repeatable");
    assert_eq!(answer.query, "api-version=2025-05-15");
    assert_eq!(fake.bad_signatures(), 0);

    // Each call gets its own secret.
    let (_, _other) = call_in(&app, &fake, "+14255550103").await;
    let tokens: Vec<String> = fake
        .answers()
        .iter()
        .map(|a| a.body["callbackUri"].as_str().unwrap().to_owned())
        .collect();
    assert_ne!(tokens[0], tokens[1]);
    drop((call, socket));
}

#[tokio::test]
async fn voice_duplicate_incoming_call_is_answered_once() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let event = incoming_event("ev-dup", "corr-dup", "+14255550104");
    let (a, b) = tokio::join!(ring(&app, &event), ring(&app, &event));
    assert_eq!((a, b), (200, 200));
    // Redelivered with a new event id but the same call (correlation id).
    assert_eq!(
        ring(
            &app,
            &incoming_event("ev-dup-2", "corr-dup", "+14255550104")
        )
        .await,
        200
    );
    assert_eq!(ring(&app, &event).await, 200);
    assert_eq!(fake.answers().len(), 1);

    // Unauthenticated deliveries are refused; the validation handshake is answered.
    let refused = app
        .http
        .post(app.url("/api/v1/calls/incoming?code=wrong"))
        .json(&event)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let validation = app
        .http
        .post(app.url(&format!("/api/v1/calls/incoming?code={GRID_SECRET}")))
        .json(&json!([{"id":"v","eventType":"Microsoft.EventGrid.SubscriptionValidationEvent","data":{"validationCode":"abc"}}]))
        .send()
        .await
        .unwrap();
    assert_eq!(validation.status(), 200);
    assert_eq!(
        validation.json::<Value>().await.unwrap()["validationResponse"],
        "abc"
    );
    assert_eq!(fake.answers().len(), 1);
}

#[tokio::test]
async fn voice_bad_tokens_are_rejected_on_callbacks_and_socket() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let body = json!([{"id":"x","type":"Microsoft.Communication.CallConnected","specversion":"1.0","data":{"callConnectionId":"c"}}]);
    for path in [
        "/api/v1/calls/callbacks?token=nope",
        "/api/v1/calls/callbacks",
    ] {
        let response = app
            .http
            .post(app.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401, "{path}");
    }
    let ws = format!("ws://{}/api/v1/media/ws?token=nope", app.addr);
    let mut socket = AcsSocket::connect(&ws).await;
    assert_eq!(socket.close_code().await, Some(1008));
    let ws = format!("ws://{}/api/v1/media/ws", app.addr);
    let mut socket = AcsSocket::connect(&ws).await;
    assert_eq!(socket.close_code().await, Some(1008));
}

#[tokio::test]
async fn voice_barge_in_cancels_playback_and_keeps_what_was_played() {
    let fake = FakeAcs::start().await;
    fake.auto_complete_plays(false);
    let app = app_with(&fake, |_| {}).await;
    let phone = "+14255550105";
    let (call, mut socket) = call_in(&app, &fake, phone).await;
    let id = call.call_id.as_str();
    wait_for_play(&fake, id, "How can I help you today?").await;
    let first = fake.plays_for(id)[0]
        .operation_context()
        .unwrap()
        .to_owned();
    fake.callback(id, "PlayStarted", json!({"operationContext": first}))
        .await;
    fake.callback(id, "PlayCompleted", json!({"operationContext": first}))
        .await;

    // The caller talks over the second sentence.
    socket.intermediate("wait", 5_000_000).await;
    fake.wait_for("cancelAllMediaOperations", |f| {
        f.actions_for(id)
            .iter()
            .any(|a| a.action() == "cancelAllMediaOperations")
            .then_some(())
    })
    .await;
    let ctx = wait_context(&app, phone, "the cut agent turn", |c| {
        !c.transcript.is_empty()
    })
    .await;
    assert_eq!(ctx.transcript[0].role, Role::Agent);
    assert_eq!(
        ctx.transcript[0].text, "Hello.",
        "only what was played is remembered"
    );

    // The caller's words become the next turn.
    socket.final_text("wait a moment", 5_000_000).await;
    wait_for_play(&fake, id, "You said: wait a moment.").await;
    let cancels = fake
        .actions_for(id)
        .iter()
        .filter(|a| a.action() == "cancelAllMediaOperations")
        .count();
    assert_eq!(cancels, 1);
}

#[tokio::test]
async fn voice_dtmf_reaches_the_agent() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let (call, mut socket) = call_in(&app, &fake, "+14255550106").await;
    wait_for_play(&fake, &call.call_id, "How can I help you today?").await;
    socket.dtmf("7").await;
    wait_for_play(&fake, &call.call_id, "You pressed 7.").await;
}

#[tokio::test]
async fn voice_media_streaming_failed_ends_the_call_politely() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let phone = "+14255550107";
    let (call, _socket) = call_in(&app, &fake, phone).await;
    let id = call.call_id.as_str();
    let failed = json!({"mediaStreamingUpdate": {"contentType":"Audio","mediaStreamingStatus":"mediaStreamingFailed",
        "mediaStreamingStatusDetails":"initialWebSocketConnectionFailed"}});
    assert_eq!(
        fake.callback_with_id(id, "MediaStreamingFailed", failed.clone(), "msf-1")
            .await,
        200
    );
    // Redelivered: one apology.
    assert_eq!(
        fake.callback_with_id(id, "MediaStreamingFailed", failed, "msf-1")
            .await,
        200
    );
    fake.wait_for("the call hung up", |f| {
        f.actions_for(id)
            .iter()
            .any(|a| a.action() == "hangup")
            .then_some(())
    })
    .await;
    let apologies: Vec<_> = fake
        .plays_for(id)
        .into_iter()
        .filter(|p| p.operation_context() == Some("close:media_failed"))
        .collect();
    assert_eq!(apologies.len(), 1);
    let ctx = wait_context(&app, phone, "failed session", |c| {
        c.voice_sessions[0].ended_at.is_some()
    })
    .await;
    let session = &ctx.voice_sessions[0];
    assert_eq!(session.status, VoiceSessionStatus::Failed);
    assert_eq!(
        session.end_reason.as_deref(),
        Some("media_streaming_failed: initialWebSocketConnectionFailed")
    );
    let stats: Value = app
        .http
        .get(app.url("/api/v1/voice/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["media_failures"], 1);
    let ready: Value = app
        .http
        .get(app.url("/readyz"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        ready["status"], "ready",
        "a failed call does not take the replica out"
    );
    assert_eq!(ready["voice"]["media_failures"], 1);
}

#[tokio::test]
async fn voice_malformed_frames_are_skipped() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let (call, mut socket) = call_in(&app, &fake, "+14255550108").await;
    for junk in [
        "{not json",
        "[]",
        r#"{"kind":"AudioData"}"#,
        r#"{"kind":"AudioData","audioData":{"data":"%%%"}}"#,
        r#"{"kind":"TranscriptionData","transcriptionData":{"text":"x","resultStatus":"perhaps"}}"#,
    ] {
        socket.send_raw(junk).await;
    }
    socket
        .send_raw(r#"{"Kind":"TRANSCRIPTIONDATA","TranscriptionData":{"Text":"still here","ResultStatus":"final","Offset":7}}"#)
        .await;
    wait_for_play(&fake, &call.call_id, "You said: still here.").await;
    let stats: Value = app
        .http
        .get(app.url("/api/v1/voice/stats"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(stats["malformed_frames"], 5);
}

#[tokio::test]
async fn voice_a_frame_larger_than_the_socket_read_buffer_arrives_whole() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let phone = "+14255550118";
    let (_call, mut socket) = call_in(&app, &fake, phone).await;
    // The media socket reads into an 8 KiB buffer; a 20 KB transcription must still arrive.
    let long = "word ".repeat(4_000) + "end";
    socket.final_text(&long, 5_000_000).await;
    let ctx = wait_context(&app, phone, "the long turn", |c| {
        c.transcript.iter().any(|t| t.role == Role::Customer)
    })
    .await;
    let turn = ctx
        .transcript
        .iter()
        .find(|t| t.role == Role::Customer)
        .unwrap();
    assert_eq!(turn.text, long);
}

#[tokio::test]
async fn voice_silence_prompts_once_then_says_goodbye_and_hangs_up() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |s| s.voice.silence_timeout = Duration::from_secs(1)).await;
    let (call, _socket) = call_in(&app, &fake, "+14255550109").await;
    let id = call.call_id.as_str();
    wait_for_play(&fake, id, "Are you still there?").await;
    fake.wait_for("goodbye then hang-up", |f| {
        f.actions_for(id)
            .iter()
            .any(|a| a.action() == "hangup")
            .then_some(())
    })
    .await;
    let actions = fake.actions_for(id);
    let goodbye = actions
        .iter()
        .position(|a| a.operation_context() == Some("close:silence"))
        .expect("a goodbye was played");
    let hangup = actions.iter().position(|a| a.action() == "hangup").unwrap();
    assert!(goodbye < hangup);
    assert_eq!(
        plays(&fake, id)
            .iter()
            .filter(|p| *p == "Are you still there?")
            .count(),
        1
    );
}

#[tokio::test]
async fn voice_fifty_concurrent_calls_each_get_their_own_replies() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let calls = (0..50).map(|i| {
        let app = &app;
        let fake = &fake;
        async move {
            let phone = format!("+1425556{i:04}");
            let (call, mut socket) = call_in(app, fake, &phone).await;
            socket
                .final_text(&format!("caller number {i}"), 1_000)
                .await;
            wait_for_play(
                fake,
                &call.call_id,
                &format!("You said: caller number {i}."),
            )
            .await;
            (call.call_id, i, socket)
        }
    });
    let done = futures::future::join_all(calls).await;
    for (call_id, i, _socket) in &done {
        let mine = format!("caller number {i}");
        for text in plays(&fake, call_id) {
            if text.contains("caller number") {
                assert!(
                    text.contains(&mine),
                    "{call_id} heard another caller's reply: {text}"
                );
            }
        }
    }
    assert_eq!(fake.answers().len(), 50);
    assert_eq!(fake.bad_signatures(), 0);
}

#[tokio::test]
async fn voice_sandbox_drives_a_call_locally() {
    let port = free_port();
    let app = TestApp::spawn_echo(|s| {
        s.port = port;
        s.public_base_url = format!("http://127.0.0.1:{port}");
    })
    .await;
    let phone = "+14255550110";
    assert_eq!(
        ring(&app, &incoming_event("ev-sb", "corr-sb", phone)).await,
        200
    );
    let sandbox = app
        .state
        .voice
        .sandbox
        .clone()
        .expect("sandbox provider by default");
    let ctx = wait_context(&app, phone, "a connected voice session", |c| {
        c.voice_sessions
            .first()
            .is_some_and(|s| s.status == VoiceSessionStatus::Connected)
    })
    .await;
    let call_id = ctx.voice_sessions[0].call_connection_id.clone();
    let media_url = sandbox
        .media_url(&call_id)
        .expect("the sandbox knows the media URL");
    let mut socket = AcsSocket::connect(&media_url).await;
    wait_context(&app, phone, "the greeting", |c| c.transcript.len() == 1).await;
    socket.final_text("hello sandbox", 1_000).await;
    // The sandbox completes each play with a PlayCompleted callback, so turns are remembered.
    let ctx = wait_context(&app, phone, "the reply remembered", |c| {
        c.transcript
            .iter()
            .any(|t| t.text == "You said: hello sandbox. Let me look into that.")
    })
    .await;
    assert_eq!(
        ctx.transcript[0].text,
        "Hello. Thanks for calling. How can I help you today?"
    );
    let actions = serde_json::to_value(sandbox.actions()).unwrap();
    let actions = actions.as_array().unwrap();
    assert_eq!(actions[0]["action"], "answer");
    assert!(
        actions
            .iter()
            .any(|a| a["action"] == "play" && a["text"] == "Let me look into that.")
    );
    // Hanging up (what the saga will do) disconnects the call through the callback route.
    app.state.voice.hang_up(&call_id).await;
    wait_context(&app, phone, "ended", |c| {
        c.voice_sessions[0].status == VoiceSessionStatus::Ended
    })
    .await;
}

#[tokio::test]
async fn voice_client_retries_only_what_is_safe_to_repeat() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    // A transient failure of answer is retried with the same repeatability id: one call.
    fake.fail_next(1);
    let (call, _socket) = call_in(&app, &fake, "+14255550111").await;
    let answers = fake.answers();
    assert_eq!(answers.len(), 2, "the 503 was retried");
    assert!(answers[0].repeatability_id.is_some());
    assert_eq!(answers[0].repeatability_id, answers[1].repeatability_id);
    let id = call.call_id.as_str();
    wait_for_play(&fake, id, "How can I help you today?").await;

    // Play is never retried: a repeat would speak twice.
    let provider = app.state.voice.provider.clone();
    let before = fake.plays_for(id).len();
    fake.fail_next(1);
    assert!(provider.play_text(id, "Once.", "t9:0").await.is_err());
    assert_eq!(fake.plays_for(id).len(), before + 1);

    // Terminate is repeatable; hang-up (DELETE) is idempotent and retried.
    fake.fail_next(1);
    provider.terminate(id).await.unwrap();
    let terminates: Vec<_> = fake
        .actions_for(id)
        .into_iter()
        .filter(|a| a.action() == "terminate")
        .collect();
    assert_eq!(terminates.len(), 2);
    assert!(terminates[0].repeatability_id.is_some());
    assert_eq!(
        terminates[0].repeatability_id,
        terminates[1].repeatability_id
    );
    fake.fail_next(1);
    provider.hang_up(id).await.unwrap();
    let hangups = fake
        .actions_for(id)
        .into_iter()
        .filter(|a| a.action() == "hangup")
        .count();
    assert_eq!(hangups, 2);
    assert_eq!(fake.bad_signatures(), 0);
}

#[tokio::test]
async fn voice_audio_barge_in_cancels_on_non_silent_audio_only() {
    let fake = FakeAcs::start().await;
    fake.auto_complete_plays(false);
    let app = app_with(&fake, |s| {
        s.voice.barge_in = handoff::config::BargeIn::Audio
    })
    .await;
    let (call, mut socket) = call_in(&app, &fake, "+14255550112").await;
    let id = call.call_id.as_str();
    wait_for_play(&fake, id, "How can I help you today?").await;
    let cancels = |f: &FakeAcs| {
        f.actions_for(id)
            .iter()
            .filter(|a| a.action() == "cancelAllMediaOperations")
            .count()
    };
    // Silence and transcription do not interrupt in audio mode; the caller's voice does.
    socket.audio(true).await;
    socket.intermediate("hm", 3).await;
    socket.audio(false).await;
    fake.wait_for("a cancel", |f| (cancels(f) > 0).then_some(()))
        .await;
    assert_eq!(cancels(&fake), 1);
}

#[tokio::test]
async fn voice_outbound_audio_frames_and_stop_audio_on_barge_in() {
    use handoff::voice::audio::TestSynthesizer;
    use handoff::voice::call::SpeechOutput;
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    app.state
        .voice
        .set_speech_output(SpeechOutput::Frames(std::sync::Arc::new(TestSynthesizer {
            ms_per_char: 40,
        })));
    let (call, mut socket) = call_in(&app, &fake, "+14255550113").await;
    // The greeting arrives as 20 ms PCM frames on the socket, not as :play requests.
    for _ in 0..3 {
        let frame = socket.next_text().await.expect("an audio frame");
        assert_eq!(frame["Kind"], "AudioData");
        assert_eq!(frame["AudioData"]["Data"].as_str().unwrap().len(), 856);
        assert!(frame["StopAudio"].is_null());
    }
    socket.intermediate("excuse me", 3).await;
    loop {
        let frame = socket
            .next_text()
            .await
            .expect("StopAudio before the socket closes");
        if frame["Kind"] == "StopAudio" {
            assert!(frame["AudioData"].is_null());
            break;
        }
    }
    assert!(
        plays(&fake, &call.call_id).is_empty(),
        "nothing went through :play"
    );
}

#[tokio::test]
async fn voice_close_call_hangs_up_after_the_goodbye_completes() {
    let fake = FakeAcs::start().await;
    fake.auto_complete_plays(false);
    let app = app_with(&fake, |_| {}).await;
    let phone = "+14255550114";
    let (call, _socket) = call_in(&app, &fake, phone).await;
    let id = call.call_id.as_str();
    app.state
        .voice
        .close_call(
            id,
            "You will get a WhatsApp message now. Goodbye.",
            "handoff",
        )
        .await;
    let goodbye = fake
        .wait_for("the goodbye", |f| {
            f.plays_for(id)
                .into_iter()
                .find(|p| p.operation_context() == Some("close:handoff"))
        })
        .await;
    assert_eq!(
        goodbye.play_text(),
        Some("You will get a WhatsApp message now. Goodbye.")
    );
    let hung_up = |f: &FakeAcs| f.actions_for(id).iter().any(|a| a.action() == "hangup");
    assert!(!hung_up(&fake), "not before the goodbye was played");
    fake.callback(
        id,
        "PlayCompleted",
        json!({"operationContext": "close:handoff"}),
    )
    .await;
    fake.wait_for("hang-up", |f| hung_up(f).then_some(())).await;
    wait_context(&app, phone, "ended", |c| {
        c.voice_sessions[0].status == VoiceSessionStatus::Ended
    })
    .await;
}

#[tokio::test]
async fn voice_reconnected_media_socket_resumes_without_a_second_greeting() {
    let fake = FakeAcs::start().await;
    let app = app_with(&fake, |_| {}).await;
    let phone = "+14255550115";
    let (call, socket) = call_in(&app, &fake, phone).await;
    let id = call.call_id.as_str();
    wait_context(&app, phone, "the greeting", |c| c.transcript.len() == 1).await;
    socket.close().await;
    let mut socket = AcsSocket::connect(&call.media_url).await;
    socket.final_text("back again", 77).await;
    let ctx = wait_context(&app, phone, "the reply", |c| c.transcript.len() == 3).await;
    assert_eq!(
        ctx.transcript[2].text,
        "You said: back again. Let me look into that."
    );
    assert_eq!(
        plays(&fake, id).iter().filter(|p| *p == "Hello.").count(),
        1
    );

    // Another call's events cannot be posted with this call's token.
    let uri = fake.callback_uri(id).unwrap();
    let foreign = json!([{"id":"f1","type":"Microsoft.Communication.CallDisconnected","specversion":"1.0",
        "data":{"callConnectionId":"someone-else"}}]);
    assert_eq!(
        app.http
            .post(&uri)
            .json(&foreign)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let ctx = wait_context(&app, phone, "still live", |_| true).await;
    assert_eq!(ctx.voice_sessions[0].status, VoiceSessionStatus::Connected);
}
