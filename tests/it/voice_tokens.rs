//! ACS's signed token on Call Automation callbacks and the media socket (`ACS_RESOURCE_ID`),
//! against a fake issuer at the wire (its JWKS served over HTTP, RS256 tokens signed with its
//! key): a whole call runs with checking on, and every way a token can be wrong is refused
//! before the callback is applied.

use std::time::Duration;

use axum::http::header::AUTHORIZATION;
use futures::StreamExt;
use handoff::domain::VoiceSessionStatus;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::TestApp;
use crate::support::acs_tokens::{AUDIENCE, KEY_ID, Signer, TokenIssuer};
use crate::support::fake_calling::FakeAcs;
use crate::voice::{app_with, call_in, incoming_event, ring, wait_context, wait_for_play};

/// An app that checks ACS's tokens, a fake ACS that signs its callbacks with the issuer's key.
async fn checking_app(issuer: &TokenIssuer) -> (FakeAcs, TestApp) {
    let fake = FakeAcs::start().await;
    let signer = issuer.clone();
    fake.sign_callbacks(move || signer.token());
    let url = issuer.url.clone();
    let app = app_with(&fake, move |s| {
        s.voice.callback_audience = Some(AUDIENCE.into());
        s.voice.callback_token_issuer = url;
    })
    .await;
    (fake, app)
}

/// Posts `CallDisconnected` for `call_id` to its callback URI, with `bearer` if given.
async fn disconnect(app: &TestApp, uri: &str, call_id: &str, bearer: Option<String>) -> u16 {
    let body = json!([{
        "id": uuid::Uuid::new_v4().to_string(),
        "source": format!("calling/callConnections/{call_id}"),
        "type": "Microsoft.Communication.CallDisconnected",
        "specversion": "1.0",
        "time": "2026-01-01T00:00:00Z",
        "data": {"callConnectionId": call_id},
    }]);
    let mut request = app.http.post(uri).json(&body);
    if let Some(token) = bearer {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap().status().as_u16()
}

fn past(claims: &mut Value) {
    let hour_ago = chrono::Utc::now().timestamp() - 3600;
    claims["iat"] = json!(hour_ago - 300);
    claims["nbf"] = json!(hour_ago - 300);
    claims["exp"] = json!(hour_ago);
}

#[tokio::test]
async fn a_call_runs_on_signed_callbacks_and_unsigned_or_badly_signed_ones_are_refused() {
    let issuer = TokenIssuer::start().await;
    let (fake, app) = checking_app(&issuer).await;
    let phone = "+14255550161";
    let (call, mut socket) = call_in(&app, &fake, phone).await;
    let id = call.call_id.as_str();
    // The greeting is remembered once its (signed) PlayCompleted callbacks were applied.
    wait_for_play(&fake, id, "How can I help you today?").await;
    wait_context(&app, phone, "the greeting", |c| c.transcript.len() == 1).await;
    assert_eq!(issuer.fetches(), 1, "the keys are fetched once and kept");

    let uri = fake.callback_uri(id).unwrap();
    let refused = [
        ("no token", None),
        (
            "expired",
            Some(issuer.token_with(KEY_ID, Signer::Published, past)),
        ),
        (
            "for another ACS resource",
            Some(issuer.token_with(KEY_ID, Signer::Published, |c| {
                c["aud"] = json!("another-resource")
            })),
        ),
        (
            "from another issuer",
            Some(issuer.token_with(KEY_ID, Signer::Published, |c| {
                c["iss"] = json!("https://issuer.example.com")
            })),
        ),
        (
            "signed by a key the issuer never published",
            Some(issuer.token_with(KEY_ID, Signer::Forged, |_| {})),
        ),
        ("not a JWT", Some("not-a-jwt".to_owned())),
    ];
    for (what, token) in refused {
        assert_eq!(disconnect(&app, &uri, id, token).await, 401, "{what}");
    }
    // A key id the service does not hold is refused; within a minute of the last fetch it
    // fetches nothing (made-up key ids must not become a flood of fetches; when the keys may
    // be fetched again is unit-tested in `acs::jwt`).
    let unknown = issuer.token_with("rotated-2", Signer::Published, |_| {});
    assert_eq!(disconnect(&app, &uri, id, Some(unknown)).await, 401);
    assert_eq!(
        issuer.fetches(),
        1,
        "unknown keys fetch at most once a minute"
    );

    // None of those ended the call: the caller is still answered.
    socket
        .final_text("I need help with my order", 10_000_000)
        .await;
    wait_context(&app, phone, "a turn after the refusals", |c| {
        c.transcript.len() == 3
    })
    .await;
    // A signed one does.
    assert_eq!(disconnect(&app, &uri, id, Some(issuer.token())).await, 200);
    wait_context(&app, phone, "the call ended", |c| {
        c.voice_sessions
            .iter()
            .any(|s| s.call_connection_id == id && s.status == VoiceSessionStatus::Ended)
    })
    .await;
}

/// ACS presents a token on the media socket's upgrade with secure media streaming: a presented
/// token must be valid; the per-call token in the URL is checked either way.
#[tokio::test]
async fn a_media_socket_that_presents_a_token_must_present_a_valid_one() {
    let issuer = TokenIssuer::start().await;
    let (fake, app) = checking_app(&issuer).await;
    let phone = "+14255550162";
    assert_eq!(
        ring(&app, &incoming_event("ev-tok", "corr-tok", phone)).await,
        200
    );
    let call = fake
        .wait_for("the call answered", |f| f.call_for(&format!("ctx-{phone}")))
        .await;
    let upgrade = |token: String| {
        let mut request = call.media_url.as_str().into_client_request().unwrap();
        request
            .headers_mut()
            .insert(AUTHORIZATION, format!("Bearer {token}").parse().unwrap());
        tokio_tungstenite::connect_async(request)
    };
    // Refused as an unknown per-call token is: the socket is closed with 1008.
    let (mut refused, _) = upgrade(issuer.token_with(KEY_ID, Signer::Forged, |_| {}))
        .await
        .expect("the upgrade itself succeeds");
    let close = loop {
        match refused.next().await {
            Some(Ok(Message::Close(frame))) => break frame.map(|f| u16::from(f.code)),
            Some(Ok(_)) => continue,
            other => panic!("no close frame: {other:?}"),
        }
    };
    assert_eq!(close, Some(1008));
    // A valid one is let in: the call's session runs on it, so the greeting is played (the
    // refused socket above never started one). Sockets without a token are let in too: the
    // first test's call runs on one.
    let (_stream, _) = upgrade(issuer.token())
        .await
        .expect("a valid token is let in");
    wait_for_play(&fake, &call.call_id, "How can I help you today?").await;
}

#[tokio::test]
async fn callbacks_are_answered_503_while_the_signing_keys_cannot_be_fetched() {
    let issuer = TokenIssuer::start().await;
    issuer.set_down(true);
    let (fake, app) = checking_app(&issuer).await;
    let phone = "+14255550163";
    let (call, _socket) = call_in(&app, &fake, phone).await;
    let id = call.call_id.as_str();
    let uri = fake.callback_uri(id).unwrap();
    // Not 401: the token may be fine; ACS is to deliver it again.
    assert_eq!(disconnect(&app, &uri, id, Some(issuer.token())).await, 503);
    let fetches = issuer.fetches();
    assert_eq!(disconnect(&app, &uri, id, Some(issuer.token())).await, 503);
    assert_eq!(issuer.fetches(), fetches, "no fetch on every request");
    issuer.set_down(false);
    // Tried again within seconds (bounded wait, not a timing assertion).
    let mut status = 0;
    for _ in 0..100 {
        status = disconnect(&app, &uri, id, Some(issuer.token())).await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200);
}
