//! The product's story end to end, over real HTTP and WebSocket, with the scripted agent and
//! both sandbox providers: a call comes in, the wait is long, WhatsApp is offered and accepted,
//! the continuation template goes out with the name and the summary, the call ends after the
//! goodbye, delivery statuses arrive, and the customer's WhatsApp reply is answered with the
//! call in mind. Plus the branches: template refused, opted out, outside business hours, and a
//! crash in the middle.

use std::time::Duration;

use chrono::Utc;
use handoff::agent::scripted::OFFER_QUESTION;
use handoff::config::{OutsideHours, Settings};
use handoff::domain::{
    BusinessHours, CustomerId, Handoff, HandoffState, Milestone, OutboundMessage, Role,
};
use handoff::store::embedded::EmbeddedStore;
use handoff::store::handoffs::HandoffStore;
use handoff::voice::sandbox::VoiceAction;
use serde_json::Value;

use crate::support::TestApp;
use crate::support::acs_socket::AcsSocket;
use crate::support::services::free_port;
use crate::voice::{incoming_event, ring, wait_context};
use crate::whatsapp::{CUSTOMER, deliver, quick, text};

pub(crate) fn story_settings(port: u16) -> impl FnOnce(&mut Settings) {
    move |s| {
        s.port = port;
        s.public_base_url = format!("http://127.0.0.1:{port}");
        s.handoff.queue_wait_seconds = 600;
        quick(s);
    }
}

pub(crate) async fn known_customer(app: &TestApp) -> CustomerId {
    let id = CustomerId::parse_phone(CUSTOMER).unwrap();
    app.state
        .stores
        .contexts
        .update(&id, |c| c.display_name = Some("Ada Lovelace".into()))
        .await
        .unwrap();
    id
}

/// Rings, connects ACS's side of the media socket, and waits for the greeting to be played.
pub(crate) async fn call(app: &TestApp, event_id: &str) -> (String, AcsSocket) {
    assert_eq!(
        ring(
            app,
            &incoming_event(event_id, &format!("corr-{event_id}"), CUSTOMER)
        )
        .await,
        200
    );
    let ctx = wait_context(app, CUSTOMER, "a connected call", |c| {
        !c.voice_sessions.is_empty()
    })
    .await;
    let call_id = ctx
        .voice_sessions
        .last()
        .unwrap()
        .call_connection_id
        .clone();
    let sandbox = app.state.voice.sandbox.clone().expect("sandbox voice");
    let url = sandbox.media_url(&call_id).expect("media url");
    let socket = AcsSocket::connect(&url).await;
    wait_context(app, CUSTOMER, "the greeting", |c| {
        c.transcript
            .iter()
            .any(|t| t.role == Role::Agent && t.text.contains("How can I help"))
    })
    .await;
    (call_id, socket)
}

fn played(app: &TestApp, call_id: &str) -> Vec<String> {
    app.state
        .voice
        .sandbox
        .as_ref()
        .unwrap()
        .actions()
        .into_iter()
        .filter_map(|a| match a {
            VoiceAction::Play {
                call_connection_id,
                text,
                ..
            } if call_connection_id == call_id => Some(text),
            _ => None,
        })
        .collect()
}

fn hang_ups(app: &TestApp, call_id: &str) -> usize {
    app.state
        .voice
        .sandbox
        .as_ref()
        .unwrap()
        .actions()
        .into_iter()
        .filter(|a| match a {
            VoiceAction::HangUp { call_connection_id }
            | VoiceAction::Terminate { call_connection_id } => call_connection_id == call_id,
            _ => false,
        })
        .count()
}

fn templates(app: &TestApp) -> Vec<(Vec<String>, String)> {
    app.state
        .whatsapp
        .sandbox_records()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|r| match r.message {
            OutboundMessage::Template(t) => Some((t.body.clone(), t.name.clone())),
            _ => None,
        })
        .collect()
}

pub(crate) async fn handoff_of(
    app: &TestApp,
    what: &str,
    ready: impl Fn(&Handoff) -> bool,
) -> Handoff {
    let id = CustomerId::parse_phone(CUSTOMER).unwrap();
    for _ in 0..500 {
        if let Some(h) = app
            .state
            .stores
            .handoffs
            .for_customer(&id)
            .await
            .unwrap()
            .into_iter()
            .next()
            && ready(&h)
        {
            return h;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let all = app.state.stores.handoffs.for_customer(&id).await.unwrap();
    panic!("handoff never showed: {what}; handoffs: {all:#?}");
}

async fn until(what: &str, mut ready: impl FnMut() -> bool) {
    for _ in 0..500 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("never happened: {what}");
}

#[tokio::test]
async fn the_whole_story_from_yes_on_the_phone_to_the_answer_on_whatsapp() {
    let port = free_port();
    let app = TestApp::spawn_with(story_settings(port)).await;
    let customer = known_customer(&app).await;
    let (call_id, mut socket) = call(&app, "ev-story").await;
    assert_eq!(played(&app, &call_id)[0], "Hello Ada.");

    // The caller explains; the agent checks the wait (600 s > 120 s) and offers WhatsApp.
    socket
        .final_text(
            "My power has been out since this morning at 123 Oak St",
            10_000,
        )
        .await;
    wait_context(&app, CUSTOMER, "the offer remembered", |c| {
        c.transcript
            .iter()
            .any(|t| t.role == Role::Agent && t.text.ends_with(OFFER_QUESTION))
    })
    .await;
    let offered = handoff_of(&app, "offered", |h| h.state == HandoffState::Offered).await;
    assert!(templates(&app).is_empty(), "an offer sends nothing");

    // A duplicate Final is one turn.
    socket.final_text("Yes, that works for me", 20_000).await;
    socket.final_text("Yes, that works for me", 20_000).await;

    let done = handoff_of(&app, "call ended", |h| h.reached(Milestone::CallEnded)).await;
    assert_eq!(
        done.id, offered.id,
        "the offered handoff is the one accepted"
    );
    assert_eq!(done.call_connection_id.as_deref(), Some(call_id.as_str()));
    assert_eq!(
        done.consent_evidence.as_deref(),
        Some("Yes, that works for me")
    );
    let sent = templates(&app);
    assert_eq!(sent.len(), 1, "one template: {sent:?}");
    assert_eq!(sent[0].1, "conversation_continuation");
    assert_eq!(sent[0].0[0], "Ada");
    assert!(
        sent[0].0[1].contains("My power has been out since this morning at 123 Oak St"),
        "{:?}",
        sent[0].0
    );
    assert!(!sent[0].0[1].contains('\n'));
    let quick_replies: Vec<Vec<String>> = app
        .state
        .whatsapp
        .sandbox_records()
        .unwrap()
        .into_iter()
        .filter_map(|r| match r.message {
            OutboundMessage::Template(t) => Some(t.quick_replies),
            _ => None,
        })
        .collect();
    assert_eq!(
        quick_replies,
        vec![vec![offered.id.as_str().to_owned()]],
        "the button carries the handoff id"
    );
    assert_eq!(hang_ups(&app, &call_id), 1);
    let plays = played(&app, &call_id);
    assert_eq!(
        plays
            .iter()
            .filter(|p| p.as_str() == OFFER_QUESTION)
            .count(),
        1,
        "the offer is made once: {plays:#?}"
    );
    assert!(
        plays.contains(&"Thanks, let me check how long the wait is.".to_owned()),
        "{plays:#?}"
    );
    let goodbye = plays
        .iter()
        .position(|p| p.contains("Goodbye") || p.contains("goodbye"))
        .expect("a goodbye");
    assert!(
        goodbye
            > plays
                .iter()
                .position(|p| p.contains("sending you a WhatsApp"))
                .unwrap()
    );

    // Saga order: every step persisted with a time, in the story's order.
    // (Delivery receipts may arrive before the goodbye is over: the two sides run apart.)
    let states: Vec<HandoffState> = done.history.iter().map(|c| c.state).collect();
    assert_eq!(
        &states[..4],
        &[
            HandoffState::Offered,
            HandoffState::Accepted,
            HandoffState::Summarised,
            HandoffState::TemplateSent
        ]
    );
    let at = |s: HandoffState| {
        states
            .iter()
            .position(|x| *x == s)
            .unwrap_or_else(|| panic!("{s:?} in {states:?}"))
    };
    assert!(at(HandoffState::GoodbyePlayed) < at(HandoffState::CallEnded));
    assert!(
        done.history.windows(2).all(|w| w[0].at <= w[1].at),
        "times never go backwards"
    );
    // The sandbox reports sent and delivered through the same status path as ACS.
    handoff_of(&app, "delivered", |h| h.reached(Milestone::Delivered)).await;
    let ctx = app.context(&customer).await;
    assert!(
        ctx.consents
            .iter()
            .any(|c| c.evidence == "Yes, that works for me")
    );
    assert!(ctx.call_summary.is_some());
    let customer_turns = ctx
        .transcript
        .iter()
        .filter(|t| t.role == Role::Customer && t.text == "Yes, that works for me")
        .count();
    assert_eq!(customer_turns, 1, "duplicate Final frames are one turn");

    // The customer replies on WhatsApp; the agent answers with the call in mind.
    assert_eq!(
        deliver(
            &app,
            &serde_json::json!([text("eg-reply", "m-reply", "Any update on the crew?")])
        )
        .await
        .status(),
        200
    );
    let resumed = handoff_of(&app, "resumed", |h| h.reached(Milestone::Resumed)).await;
    assert_eq!(resumed.state, HandoffState::Resumed);
    until("the WhatsApp answer", || {
        app.state
            .whatsapp
            .sandbox_records()
            .unwrap_or_default()
            .iter()
            .any(|r| matches!(r.message, OutboundMessage::Text { .. }))
    })
    .await;
    let answer = app
        .state
        .whatsapp
        .sandbox_records()
        .unwrap()
        .into_iter()
        .find_map(|r| match r.message {
            OutboundMessage::Text { text, .. } => Some(text),
            _ => None,
        })
        .unwrap();
    assert!(
        answer.starts_with(
            "Hi Ada, thanks for continuing here after your call about your power outage."
        ),
        "{answer}"
    );
    assert!(answer.contains("From the call: "), "{answer}");

    // Operators see the saga on /metrics.
    let metrics = app
        .http
        .get(app.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    for name in [
        "handoff_accepted_total",
        "handoff_template_sent_total",
        "handoff_resumed_total",
        "handoff_voice_turn_latency_seconds",
        "handoff_whatsapp_send_wait_seconds{limit=\"number\"",
    ] {
        assert!(metrics.contains(name), "{name} in {metrics}");
    }

    // The admin API shows the handoff's history.
    let body: Value = app
        .http
        .get(app.url(&format!("/api/v1/handoffs/{}", done.id)))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["state"], "resumed");
    assert_eq!(
        body["provider_message_id"],
        Value::String(done.provider_message_id.clone().unwrap())
    );
}

#[tokio::test]
async fn a_refused_template_keeps_the_caller_on_the_line() {
    let port = free_port();
    let app = TestApp::spawn_with(move |s| {
        story_settings(port)(s);
        // A template the registry does not have: refused before any HTTP call.
        s.handoff.template_name = "not_a_registered_template".into();
    })
    .await;
    known_customer(&app).await;
    let (call_id, mut socket) = call(&app, "ev-refused").await;
    socket
        .final_text("My internet connection keeps dropping every hour", 10_000)
        .await;
    wait_context(&app, CUSTOMER, "the offer", |c| {
        c.transcript
            .iter()
            .any(|t| t.text.ends_with(OFFER_QUESTION))
    })
    .await;
    socket.final_text("yes please", 20_000).await;
    let failed = handoff_of(&app, "failed", |h| h.state == HandoffState::Failed).await;
    assert_eq!(failed.failure.as_ref().unwrap().reason, "template_invalid");
    until("the caller is told", || {
        played(&app, &call_id)
            .iter()
            .any(|p| p.contains("couldn't send"))
    })
    .await;
    assert!(templates(&app).is_empty());
    assert_eq!(hang_ups(&app, &call_id), 0, "the call goes on");
    // And the conversation goes on.
    socket.final_text("ok thanks", 30_000).await;
    until("the next answer", || played(&app, &call_id).len() > 8).await;
    assert_eq!(hang_ups(&app, &call_id), 0);
}

#[tokio::test]
async fn an_opted_out_customer_gets_no_template() {
    let port = free_port();
    let app = TestApp::spawn_with(story_settings(port)).await;
    let id = known_customer(&app).await;
    app.state
        .stores
        .contexts
        .update(&id, |c| c.opted_out = true)
        .await
        .unwrap();
    let (call_id, mut socket) = call(&app, "ev-optout").await;
    socket
        .final_text("I have a question about my bill and a refund", 10_000)
        .await;
    wait_context(&app, CUSTOMER, "the offer", |c| {
        c.transcript
            .iter()
            .any(|t| t.text.ends_with(OFFER_QUESTION))
    })
    .await;
    socket.final_text("sure", 20_000).await;
    let failed = handoff_of(&app, "failed", |h| h.state == HandoffState::Failed).await;
    assert_eq!(failed.failure.as_ref().unwrap().reason, "opted_out");
    assert!(templates(&app).is_empty());
    until("the caller is told", || {
        played(&app, &call_id)
            .iter()
            .any(|p| p.contains("couldn't send"))
    })
    .await;
    assert_eq!(hang_ups(&app, &call_id), 0);
}

#[tokio::test]
async fn outside_business_hours_the_configured_behaviour_applies() {
    // A window that is never open now: Sunday 00:00-00:01 in a far time zone, checked on a
    // weekday run too, because only the minute after midnight on Sunday would be open.
    let never = BusinessHours::parse("Pacific/Kiritimati", "sun 00:00-00:01").unwrap();
    assert!(!never.is_open(Utc::now()) || Utc::now().timestamp() % 60 == 0);

    let port = free_port();
    let closed = never.clone();
    let app = TestApp::spawn_with(move |s| {
        story_settings(port)(s);
        s.handoff.business_hours = closed;
        s.handoff.outside_hours = OutsideHours::NoOffer;
    })
    .await;
    known_customer(&app).await;
    let (call_id, mut socket) = call(&app, "ev-closed").await;
    socket
        .final_text(
            "My order has not arrived yet and it was due yesterday",
            10_000,
        )
        .await;
    until("the closed notice", || {
        played(&app, &call_id).iter().any(|p| p.contains("closed"))
    })
    .await;
    assert!(
        !played(&app, &call_id)
            .iter()
            .any(|p| p.contains(OFFER_QUESTION)),
        "no offer"
    );

    let port = free_port();
    let app = TestApp::spawn_with(move |s| {
        story_settings(port)(s);
        s.handoff.business_hours = never;
        s.handoff.outside_hours = OutsideHours::OfferWithNotice;
    })
    .await;
    known_customer(&app).await;
    let (call_id, mut socket) = call(&app, "ev-closed-offer").await;
    socket
        .final_text(
            "My order has not arrived yet and it was due yesterday",
            10_000,
        )
        .await;
    until("the offer with notice", || {
        played(&app, &call_id)
            .iter()
            .any(|p| p.contains("will reply on WhatsApp from Sunday 00:00"))
    })
    .await;
}

/// A replica crashed right after the template was accepted: the handoff is `TemplateSent`, the
/// call still up. A new app on the same store ends the call exactly once and sends nothing.
#[tokio::test]
async fn after_a_crash_the_call_is_ended_once_and_no_second_template_is_sent() {
    let dir = tempfile::tempdir().unwrap();
    let customer = CustomerId::parse_phone(CUSTOMER).unwrap();
    let stuck = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let long_ago = Utc::now() - chrono::Duration::minutes(2);
        let mut h = Handoff::new(customer.clone(), Some("call-crashed".into()), long_ago);
        for m in [
            Milestone::Offered,
            Milestone::Accepted,
            Milestone::Summarised,
            Milestone::TemplateSent,
        ] {
            h.apply(m, long_ago, None).unwrap();
        }
        h.provider_message_id = Some("wamid-before-crash".into());
        store.create(&h).await.unwrap()
    };
    let start = |dir: std::path::PathBuf| async move {
        let mut settings = Settings::embedded(dir);
        settings.host = "127.0.0.1".parse().unwrap();
        settings.port = 0;
        settings.handoff.goodbye_timeout = Duration::from_secs(1);
        TestApp::start(settings).await
    };
    let app = start(dir.path().to_path_buf()).await;
    let ended = handoff_of(&app, "call ended by recovery", |h| {
        h.reached(Milestone::CallEnded)
    })
    .await;
    assert_eq!(ended.id, stuck.id);
    assert_eq!(hang_ups(&app, "call-crashed"), 1);
    assert!(templates(&app).is_empty(), "no second template");
    app.stop().await;

    // Another restart: nothing more happens.
    let app = start(dir.path().to_path_buf()).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hang_ups(&app, "call-crashed"), 0);
    assert!(templates(&app).is_empty());
    let h = app
        .state
        .stores
        .handoffs
        .get(&stuck.id)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        h.history
            .iter()
            .filter(|c| c.state == HandoffState::CallEnded)
            .count(),
        1
    );
}

/// Crashed between consent and the send: a new app sends the template once and ends the call.
#[tokio::test]
async fn a_saga_stopped_before_the_send_is_finished_by_another_replica() {
    finish_a_stopped_saga(&[Milestone::Accepted]).await;
}

/// Crashed after the summary was recorded on the handoff but before the context write: the
/// retry skips the summarising step, and the context still ends up naming the handoff (the
/// WhatsApp worker looks for a handoff to resume only when it does) with the call's summary.
#[tokio::test]
async fn a_saga_stopped_after_its_summary_still_names_the_handoff_on_the_context() {
    finish_a_stopped_saga(&[Milestone::Accepted, Milestone::Summarised]).await;
}

/// A handoff left at `reached` by a crash, written straight to the store (the context does not
/// name it): a new app sends the template once, ends the call, and the customer's first
/// WhatsApp message resumes it.
async fn finish_a_stopped_saga(reached: &[Milestone]) {
    let dir = tempfile::tempdir().unwrap();
    let customer = CustomerId::parse_phone(CUSTOMER).unwrap();
    let stopped = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let long_ago = Utc::now() - chrono::Duration::minutes(2);
        let mut h = Handoff::new(customer.clone(), Some("call-half".into()), long_ago);
        for &m in reached {
            h.apply(m, long_ago, None).unwrap();
        }
        if h.reached(Milestone::Summarised) {
            h.summary = Some("Order 1234 arrived damaged.".into());
        }
        handoff::store::update(&store, &customer, |c| {
            c.display_name = Some("Grace Hopper".into());
            c.whatsapp = None;
        })
        .await
        .unwrap();
        store.create(&h).await.unwrap()
    };
    let mut settings = Settings::embedded(dir.path());
    settings.host = "127.0.0.1".parse().unwrap();
    settings.port = 0;
    settings.handoff.goodbye_timeout = Duration::from_secs(1);
    let app = TestApp::start(settings).await;
    let done = handoff_of(&app, "sent and ended", |h| h.reached(Milestone::CallEnded)).await;
    assert_eq!(done.id, stopped.id);
    assert!(done.reached(Milestone::TemplateSent));
    let sent = templates(&app);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].0[0], "Grace");
    assert_eq!(hang_ups(&app, "call-half"), 1);
    let ctx = app.context(&customer).await;
    assert_eq!(ctx.handoff_ids, vec![stopped.id.as_str().to_owned()]);
    assert_eq!(ctx.call_summary, done.summary);

    let reply = text("eg-after-crash", "m-after-crash", "Hi, about my order");
    assert_eq!(
        deliver(&app, &serde_json::json!([reply])).await.status(),
        200
    );
    let resumed = handoff_of(&app, "resumed", |h| h.reached(Milestone::Resumed)).await;
    assert_eq!(resumed.id, stopped.id);
}

/// A tap on the template's button carries the handoff id: that handoff resumes, even when the
/// customer has a newer one (pitfall 10: correlate by handoff id first, then by number).
#[tokio::test]
async fn a_button_reply_resumes_the_handoff_it_carries() {
    let app = TestApp::spawn_with(quick).await;
    let customer = CustomerId::parse_phone(CUSTOMER).unwrap();
    let sent = |minutes: i64| {
        let at = Utc::now() - chrono::Duration::minutes(minutes);
        let mut h = Handoff::new(customer.clone(), Some(format!("call-{minutes}")), at);
        for m in [
            Milestone::Offered,
            Milestone::Accepted,
            Milestone::Summarised,
            Milestone::TemplateSent,
            Milestone::CallEnded,
        ] {
            h.apply(m, at, None).unwrap();
        }
        h
    };
    let older = app.state.stores.handoffs.create(&sent(30)).await.unwrap();
    let newer = app.state.stores.handoffs.create(&sent(5)).await.unwrap();
    let tap = crate::whatsapp::received(
        "eg-tap",
        "m-tap",
        serde_json::json!({"messageType": "button", "button": {"text": "Continue", "payload": older.id.as_str()}}),
    );
    assert_eq!(deliver(&app, &serde_json::json!([tap])).await.status(), 200);
    handoff_of(&app, "the older one resumed", |_| true).await;
    for _ in 0..200 {
        if app
            .state
            .stores
            .handoffs
            .get(&older.id)
            .await
            .unwrap()
            .unwrap()
            .reached(Milestone::Resumed)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        app.state
            .stores
            .handoffs
            .get(&older.id)
            .await
            .unwrap()
            .unwrap()
            .reached(Milestone::Resumed)
    );
    assert!(
        !app.state
            .stores
            .handoffs
            .get(&newer.id)
            .await
            .unwrap()
            .unwrap()
            .reached(Milestone::Resumed)
    );
}

/// A replica crashed after ACS accepted the template but before `TemplateSent` was recorded.
/// The replica that resumes the saga sends with the same `Repeatability-Request-ID` and
/// `Repeatability-First-Sent` (recorded before the first attempt), so ACS recognises the repeat
/// and the customer gets one template.
#[tokio::test]
async fn a_resumed_send_presents_acs_the_same_request_identity() {
    use crate::support::fake_acs::{FakeAcs, KEY};
    use handoff::config::{AcsAuth, AcsSettings, Secret};

    let dir = tempfile::tempdir().unwrap();
    let customer = CustomerId::parse_phone(CUSTOMER).unwrap();
    let first_attempt = Utc::now() - chrono::Duration::minutes(3);
    let first_attempt = first_attempt
        - chrono::Duration::nanoseconds(first_attempt.timestamp_subsec_nanos() as i64);
    let stuck = {
        let store = EmbeddedStore::open(dir.path()).unwrap();
        let mut h = Handoff::new(customer.clone(), Some("call-acs".into()), first_attempt);
        for m in [
            Milestone::Offered,
            Milestone::Accepted,
            Milestone::Summarised,
        ] {
            h.apply(m, first_attempt, None).unwrap();
        }
        h.summary = Some("You told us: the power is out.".into());
        h.send_started_at = Some(first_attempt);
        store.create(&h).await.unwrap()
    };
    let fake = FakeAcs::start().await;
    let mut settings = Settings::embedded(dir.path());
    settings.host = "127.0.0.1".parse().unwrap();
    settings.port = 0;
    settings.handoff.goodbye_timeout = Duration::from_secs(1);
    settings.acs = Some(AcsSettings {
        endpoint: fake.endpoint(),
        auth: AcsAuth::AccessKey(Secret::new(KEY.to_vec())),
    });
    settings.whatsapp.acs_channel_id = Some(crate::whatsapp::CHANNEL.into());
    let app = TestApp::start(settings).await;
    handoff_of(&app, "template sent", |h| {
        h.reached(Milestone::TemplateSent)
    })
    .await;
    let sends = fake.sends();
    assert_eq!(sends.len(), 1);
    assert!(sends[0].signature_ok);
    assert_eq!(sends[0].json()["kind"], "template");
    assert_eq!(
        sends[0].header("repeatability-request-id"),
        Some(handoff::acs::repeatability_id(stuck.id.as_str()).as_str())
    );
    assert_eq!(
        sends[0].header("repeatability-first-sent"),
        Some(handoff::acs::imf_date(first_attempt).as_str())
    );
}
