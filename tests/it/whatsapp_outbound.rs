//! WhatsApp outbound against a fake ACS at the wire: every kind's exact body, path, api-version
//! and signature; the 24-hour window; retries with one Repeatability-Request-ID; typed refusals
//! that make no HTTP call.

use std::time::Duration;

use chrono::Utc;
use handoff::config::{AcsAuth, AcsSettings, Secret};
use handoff::domain::outbound::{
    Interactive, InteractiveAction, ListRow, ListSection, ReplyButton,
};
use handoff::domain::template::TemplateError;
use handoff::domain::{CustomerId, OutboundMessage, WhatsAppProvider, WhatsAppSession};
use handoff::whatsapp::{Initiation, SendError, SenderError};
use serde_json::json;

use crate::support::TestApp;
use crate::support::fake_acs::{self, FakeAcs, Scripted, answer};
use crate::whatsapp::{CHANNEL, CUSTOMER, deliver, eventually, quick, received};

async fn app_with_acs(acs: &FakeAcs) -> TestApp {
    let endpoint = acs.endpoint();
    TestApp::spawn_with(move |s| {
        quick(s);
        s.acs = Some(AcsSettings {
            endpoint,
            auth: AcsAuth::AccessKey(Secret::new(fake_acs::KEY.to_vec())),
        });
        s.whatsapp.acs_channel_id = Some(CHANNEL.into());
    })
    .await
}

/// Gives the customer a WhatsApp session whose last message arrived `ago`.
async fn last_inbound(app: &TestApp, ago: chrono::Duration) -> CustomerId {
    let customer = CustomerId::parse(CUSTOMER).unwrap();
    app.state
        .stores
        .contexts
        .update(&customer, |ctx| {
            ctx.whatsapp = Some(WhatsAppSession {
                provider: WhatsAppProvider::Acs,
                wa_id: Some("14254360097".into()),
                bsuid: None,
                business_number: Some(CHANNEL.into()),
                last_inbound_at: Some(Utc::now() - ago),
                window_closed_at: None,
            });
        })
        .await
        .unwrap();
    customer
}

async fn send(
    app: &TestApp,
    customer: &CustomerId,
    message: OutboundMessage,
) -> Result<Vec<handoff::whatsapp::SentMessage>, SendError> {
    app.state
        .whatsapp
        .send(customer, message, Initiation::Reply)
        .await
}

#[tokio::test]
async fn whatsapp_every_kind_goes_out_signed_with_its_exact_body() {
    let acs = FakeAcs::start().await;
    let app = app_with_acs(&acs).await;
    let customer = last_inbound(&app, chrono::Duration::hours(1)).await;
    let interactive = |action| {
        OutboundMessage::Interactive(Interactive {
            header: Some("Header".into()),
            body: "Body".into(),
            footer: Some("Footer".into()),
            action,
        })
    };
    let base = json!({"channelRegistrationId": CHANNEL, "to": ["14254360097"]});
    let with = |extra: serde_json::Value| {
        let mut b = base.clone();
        for (k, v) in extra.as_object().unwrap() {
            b[k] = v.clone();
        }
        b
    };
    let header = json!({"kind": "text", "text": "Header"});
    let body = json!({"kind": "text", "text": "Body"});
    let footer = json!({"kind": "text", "text": "Footer"});
    let cases: Vec<(OutboundMessage, &str, serde_json::Value)> = vec![
        (
            OutboundMessage::text("Hello"),
            "2024-08-30",
            with(json!({"kind": "text", "content": "Hello"})),
        ),
        (
            OutboundMessage::Image {
                url: "https://x/a.png".into(),
                caption: Some("c".into()),
            },
            "2024-08-30",
            with(json!({"kind": "image", "mediaUri": "https://x/a.png", "caption": "c"})),
        ),
        (
            OutboundMessage::Document {
                url: "https://x/a.pdf".into(),
                caption: None,
                file_name: Some("a.pdf".into()),
            },
            "2024-08-30",
            with(json!({"kind": "document", "mediaUri": "https://x/a.pdf", "fileName": "a.pdf"})),
        ),
        (
            OutboundMessage::Video {
                url: "https://x/a.mp4".into(),
                caption: None,
            },
            "2024-08-30",
            with(json!({"kind": "video", "mediaUri": "https://x/a.mp4"})),
        ),
        (
            OutboundMessage::Audio {
                url: "https://x/a.mp3".into(),
            },
            "2024-08-30",
            with(json!({"kind": "audio", "mediaUri": "https://x/a.mp3"})),
        ),
        (
            OutboundMessage::Sticker {
                url: "https://x/s.webp".into(),
            },
            "2025-01-15-preview",
            with(json!({"kind": "sticker", "mediaUri": "https://x/s.webp"})),
        ),
        (
            OutboundMessage::Reaction {
                message_id: "m-1".into(),
                emoji: "👍".into(),
            },
            "2025-01-15-preview",
            with(json!({"kind": "reaction", "emoji": "👍", "messageId": "m-1"})),
        ),
        (
            interactive(InteractiveAction::Buttons {
                buttons: vec![
                    ReplyButton {
                        id: "cancel".into(),
                        title: "Cancel".into(),
                    },
                    ReplyButton {
                        id: "agree".into(),
                        title: "Agree".into(),
                    },
                ],
            }),
            "2025-01-15-preview",
            with(json!({"kind": "interactive", "interactiveMessage": {
                "header": header, "body": body, "footer": footer,
                "action": {"kind": "whatsAppButtonAction", "content": {"kind": "buttonSet",
                    "buttons": [{"id": "cancel", "title": "Cancel"}, {"id": "agree", "title": "Agree"}]}}}})),
        ),
        (
            interactive(InteractiveAction::List {
                title: "Shipping Options".into(),
                sections: vec![ListSection {
                    title: "I want it ASAP!".into(),
                    rows: vec![ListRow {
                        id: "priority_express".into(),
                        title: "Priority Mail Express".into(),
                        description: Some("Next Day to 2 Days".into()),
                    }],
                }],
            }),
            "2025-01-15-preview",
            with(json!({"kind": "interactive", "interactiveMessage": {
                "header": header, "body": body, "footer": footer,
                "action": {"kind": "whatsAppListAction", "content": {"kind": "group", "title": "Shipping Options",
                    "groups": [{"title": "I want it ASAP!", "items": [{"id": "priority_express",
                        "title": "Priority Mail Express", "description": "Next Day to 2 Days"}]}]}}}})),
        ),
        (
            interactive(InteractiveAction::Url {
                title: "Track".into(),
                url: "https://example.com".into(),
            }),
            "2025-01-15-preview",
            with(json!({"kind": "interactive", "interactiveMessage": {
                "header": header, "body": body, "footer": footer,
                "action": {"kind": "whatsAppUrlAction", "content": {"kind": "url", "title": "Track",
                    "url": "https://example.com"}}}})),
        ),
    ];
    let n = cases.len();
    for (message, version, expected) in cases {
        let kind = message.kind();
        let sent = send(&app, &customer, message).await.unwrap();
        assert_eq!(sent.len(), 1, "{kind}");
        let r = acs.sends().pop().unwrap();
        assert!(r.signature_ok, "{kind}: signature");
        assert_eq!(r.method, "POST");
        assert_eq!(r.api_version().as_deref(), Some(version), "{kind}");
        assert_eq!(r.json(), expected, "{kind}");
        assert!(r.header("repeatability-request-id").is_some(), "{kind}");
        assert!(r.header("repeatability-first-sent").is_some(), "{kind}");
        assert_eq!(r.header("content-type"), Some("application/json"));
    }

    let sent = app
        .state
        .whatsapp
        .send_template(
            &customer,
            "conversation_continuation",
            vec!["Ada".into(), "Your refund is approved".into()],
            Some("handoff-42".into()),
        )
        .await
        .unwrap();
    let r = acs.sends().pop().unwrap();
    assert!(r.signature_ok);
    assert_eq!(r.api_version().as_deref(), Some("2024-08-30"));
    assert_eq!(
        r.json(),
        with(
            json!({"kind": "template", "template": {"name": "conversation_continuation", "language": "en_US",
            "values": [{"kind": "text", "name": "body1", "text": "Ada"},
                       {"kind": "text", "name": "body2", "text": "Your refund is approved"},
                       {"kind": "quickAction", "name": "button1", "payload": "handoff-42"}],
            "bindings": {"kind": "whatsApp", "body": [{"refValue": "body1"}, {"refValue": "body2"}],
                         "buttons": [{"subType": "quickReply", "refValue": "button1"}]}}})
        )
    );

    // Every receipt is in the customer's message log.
    let log = app.state.whatsapp.messages(&customer).await.unwrap();
    assert_eq!(log.len(), n + 1);
    assert_eq!(log.last().unwrap().message_id, sent.message_id);
}

#[tokio::test]
async fn whatsapp_free_form_only_inside_the_window_minus_the_margin() {
    let acs = FakeAcs::start().await;
    let app = app_with_acs(&acs).await;
    let hi = || OutboundMessage::text("hi");

    let customer = last_inbound(&app, chrono::Duration::hours(23)).await;
    assert!(send(&app, &customer, hi()).await.is_ok());
    assert_eq!(acs.sends().len(), 1);

    // 60 s before the real end is inside the 120 s safety margin: closed.
    let customer = last_inbound(
        &app,
        chrono::Duration::hours(24) - chrono::Duration::seconds(60),
    )
    .await;
    assert!(matches!(
        send(&app, &customer, hi()).await,
        Err(SendError::WindowClosed)
    ));
    let customer = last_inbound(&app, chrono::Duration::hours(25)).await;
    assert!(matches!(
        send(&app, &customer, hi()).await,
        Err(SendError::WindowClosed)
    ));
    assert_eq!(acs.sends().len(), 1, "no HTTP call outside the window");

    // Templates are allowed outside the window.
    app.state
        .whatsapp
        .send_template(
            &customer,
            "conversation_continuation",
            vec!["Ada".into(), "Summary".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(acs.sends().len(), 2);

    // A customer never seen on WhatsApp has no window at all.
    let stranger = CustomerId::parse("+14255550199").unwrap();
    assert!(matches!(
        send(&app, &stranger, hi()).await,
        Err(SendError::WindowClosed)
    ));
}

#[tokio::test]
async fn whatsapp_long_text_is_split_into_ordered_messages() {
    let acs = FakeAcs::start().await;
    let app = app_with_acs(&acs).await;
    let customer = last_inbound(&app, chrono::Duration::minutes(5)).await;
    let first = format!("{}.", "a".repeat(3000));
    let second = format!("{}.", "b".repeat(3000));
    let sent = send(
        &app,
        &customer,
        OutboundMessage::text(format!("{first}\n\n{second}")),
    )
    .await
    .unwrap();
    assert_eq!(sent.len(), 2);
    let bodies: Vec<_> = acs
        .sends()
        .iter()
        .map(|r| r.json()["content"].clone())
        .collect();
    assert_eq!(bodies, [json!(first), json!(second)]);
}

#[tokio::test]
async fn whatsapp_429_then_202_is_one_message_with_one_repeatability_id() {
    let acs = FakeAcs::start().await;
    let app = app_with_acs(&acs).await;
    let customer = last_inbound(&app, chrono::Duration::minutes(5)).await;
    acs.script([Scripted {
        status: 429,
        headers: vec![("retry-after-ms", "10".into())],
        body: r#"{"error":{"code":"TooManyRequests","message":"slow down"}}"#.into(),
    }]);
    let sent = send(&app, &customer, OutboundMessage::text("hi"))
        .await
        .unwrap();
    assert_eq!(sent.len(), 1);
    let sends = acs.sends();
    assert_eq!(sends.len(), 2);
    assert_eq!(
        sends[0].header("repeatability-request-id"),
        sends[1].header("repeatability-request-id")
    );
    assert_eq!(
        sends[0].header("repeatability-first-sent"),
        sends[1].header("repeatability-first-sent")
    );
    assert!(sends.iter().all(|r| r.signature_ok));
    assert_eq!(
        app.state.whatsapp.messages(&customer).await.unwrap().len(),
        1
    );
}

#[tokio::test]
async fn whatsapp_400_is_a_typed_error_after_one_attempt() {
    let acs = FakeAcs::start().await;
    let app = app_with_acs(&acs).await;
    let customer = last_inbound(&app, chrono::Duration::minutes(5)).await;
    acs.script([answer(
        400,
        r#"{"error":{"code":"BadRequest","message":"invalid channel"}}"#,
    )]);
    let result = send(&app, &customer, OutboundMessage::text("hi")).await;
    match result {
        Err(SendError::Sender(SenderError::Rejected { status, code, .. })) => {
            assert_eq!(status, 400);
            assert_eq!(code, "BadRequest");
        }
        other => panic!("expected a rejection, got {other:?}"),
    }
    assert_eq!(acs.sends().len(), 1);
    assert!(
        app.state
            .whatsapp
            .messages(&customer)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn whatsapp_invalid_templates_and_interactives_make_no_http_call() {
    let acs = FakeAcs::start().await;
    let app = app_with_acs(&acs).await;
    let customer = last_inbound(&app, chrono::Duration::minutes(5)).await;
    let wa = &app.state.whatsapp;
    let r = wa
        .send_template(
            &customer,
            "conversation_continuation",
            vec!["Ada".into()],
            None,
        )
        .await;
    assert!(matches!(
        r,
        Err(SendError::Template(TemplateError::ParameterCount {
            expected: 2,
            given: 1,
            ..
        }))
    ));
    let r = wa
        .send_template(
            &customer,
            "conversation_continuation",
            vec!["Ada".into(), "two\nlines".into()],
            None,
        )
        .await;
    assert!(matches!(
        r,
        Err(SendError::Template(TemplateError::Parameter {
            index: 2,
            ..
        }))
    ));
    let r = wa
        .send_template(&customer, "no_such_template", vec![], None)
        .await;
    assert!(matches!(
        r,
        Err(SendError::Template(TemplateError::Unknown { .. }))
    ));
    let four = OutboundMessage::Interactive(Interactive {
        header: None,
        body: "Pick".into(),
        footer: None,
        action: InteractiveAction::Buttons {
            buttons: (0..4)
                .map(|i| ReplyButton {
                    id: format!("b{i}"),
                    title: "Yes".into(),
                })
                .collect(),
        },
    });
    assert!(matches!(
        send(&app, &customer, four).await,
        Err(SendError::Interactive(_))
    ));

    // Opted-out customers get no business-initiated message.
    app.state
        .stores
        .contexts
        .update(&customer, |ctx| ctx.opted_out = true)
        .await
        .unwrap();
    let r = wa
        .send_template(
            &customer,
            "conversation_continuation",
            vec!["Ada".into(), "x".into()],
            None,
        )
        .await;
    assert!(matches!(r, Err(SendError::OptedOut)));
    let only_template_listing = acs
        .requests()
        .iter()
        .all(|r| r.path.ends_with("/templates"));
    assert!(only_template_listing, "{:?}", acs.requests());
}

#[tokio::test]
async fn whatsapp_inbound_media_is_downloaded_and_the_reply_goes_to_acs() {
    let acs = FakeAcs::start().await;
    acs.serve_media("media-9", b"\x89PNG fake image");
    let app = app_with_acs(&acs).await;
    let event = received(
        "e1",
        "m1",
        json!({"messageType": "image", "media": {"mimeType": "image/png", "id": "media-9"}}),
    );
    assert_eq!(deliver(&app, &json!([event])).await.status(), 200);
    let m = eventually(&app, CUSTOMER, "the reply", |m| {
        m.iter().any(|r| r["direction"] == "outbound")
    })
    .await;
    assert_eq!(m.len(), 2);
    let download = acs
        .requests()
        .into_iter()
        .find(|r| r.path == "/messages/streams/media-9")
        .expect("media downloaded");
    assert!(download.signature_ok);
    assert_eq!(download.method, "GET");
    assert_eq!(download.api_version().as_deref(), Some("2024-08-30"));
    let stored = app.state.settings.data_dir.join("media").join("media-9");
    assert_eq!(std::fs::read(stored).unwrap(), b"\x89PNG fake image");
    // The same record as for Meta media (tests/it/meta.rs).
    let sha256: String = <sha2::Sha256 as sha2::Digest>::digest(b"\x89PNG fake image")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert_eq!(
        m[0]["media"],
        json!({"media_id": "media-9", "available": true, "mime_type": "image/png",
            "size_bytes": 15, "sha256": sha256})
    );
    let reply = acs.sends().pop().unwrap();
    assert_eq!(reply.json()["to"], json!(["14254360097"]));
    assert_eq!(reply.json()["channelRegistrationId"], CHANNEL);

    // The template list was read at start-up and conversation_continuation is approved.
    for _ in 0..100 {
        if acs
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/templates"))
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listing = acs
        .requests()
        .into_iter()
        .find(|r| r.path == format!("/messages/channels/{CHANNEL}/templates"))
        .expect("templates listed");
    assert!(listing.signature_ok);
}

#[tokio::test]
async fn whatsapp_templates_are_refreshed_from_every_page_of_the_acs_list() {
    let acs = FakeAcs::start().await;
    let app = app_with_acs(&acs).await;
    let approved = |name: &str| {
        app.state.whatsapp.templates().iter().any(|t| {
            t.name == name && t.status == handoff::domain::template::TemplateStatus::Approved
        })
    };
    for _ in 0..250 {
        if approved("order_update") && approved("conversation_continuation") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        approved("order_update"),
        "{:?}",
        app.state.whatsapp.templates()
    );
    assert!(approved("conversation_continuation"));
    let listings: Vec<_> = acs
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/templates"))
        .collect();
    assert_eq!(listings.len(), 2);
    assert!(listings.iter().all(|r| r.signature_ok));
    assert_eq!(
        listings[1].query,
        "api-version=2024-08-30&continuationToken=page2"
    );

    // A template learned from ACS is checked like the built-in one.
    let customer = last_inbound(&app, chrono::Duration::hours(30)).await;
    let wa = &app.state.whatsapp;
    assert!(matches!(
        wa.send_template(&customer, "order_update", vec![], None)
            .await,
        Err(SendError::Template(TemplateError::ParameterCount {
            expected: 1,
            given: 0,
            ..
        }))
    ));
    wa.send_template(&customer, "order_update", vec!["A-17".into()], None)
        .await
        .unwrap();
    assert_eq!(
        acs.sends().pop().unwrap().json()["template"]["values"],
        json!([{"kind": "text", "name": "body1", "text": "A-17"}])
    );
}
