//! WhatsApp over ACS and Meta side by side (a migration), black box: customers write to
//! business numbers of either provider, each reply leaves through the provider (and number) they
//! wrote to, with the agent profile of that number; conversations we start go through the default
//! provider; the handoff template of a call goes out through the caller's provider and its
//! quick-reply payload brings the reply back to the handoff; inbound media and read receipts go
//! through the provider (and number) a message arrived on, and one Meta token's health covers
//! every Meta number. Plus the template registry synced from Meta's `message_templates`, every
//! page. Fakes at the wire: ACS (signed requests), the Graph API (`support::fake_graph`: method,
//! path, version, bearer token, body), and ACS Call Automation for the calls.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::stream::BoxStream;
use handoff::agent::scripted::{OFFER_QUESTION, ScriptedAgent};
use handoff::agent::{Agent, AgentError, AgentEvent, AgentRequest};
use handoff::app::Hooks;
use handoff::config::{AcsAuth, AcsSettings, BusinessNumber, Secret, Settings};
use handoff::domain::template::{TemplateError, TemplateStatus};
use handoff::domain::{Channel, CustomerId, Handoff, Milestone, Role, WhatsAppProvider};
use handoff::whatsapp::SendError;
use hmac::{Hmac, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::support::TestApp;
use crate::support::acs_socket::AcsSocket;
use crate::support::fake_graph::{FakeGraph, Route};
use crate::support::services::free_port;
use crate::support::{fake_acs, fake_calling};
use crate::voice::{incoming_event, ring, wait_context};
use crate::whatsapp::{CHANNEL, deliver, eventually, quick, received};

const APP_SECRET: &str = "meta-app-secret";
const TOKEN: &str = "EAAG-routing-token";
const META_NUMBER: &str = "106540352242922";
const SECOND_META_NUMBER: &str = "106540352242923";
const WABA: &str = "102290129340398";

fn sign(body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(APP_SECRET.as_bytes()).unwrap();
    mac.update(body);
    let tag = mac.finalize().into_bytes();
    format!(
        "sha256={}",
        tag.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

/// A Meta notification: one message from `wa_id` to the business number `phone_number_id`.
fn meta_message(phone_number_id: &str, wa_id: &str, id: &str, kind: &str, body: Value) -> Value {
    let mut message = json!({ "from": wa_id, "id": id, "type": kind,
        "timestamp": chrono::Utc::now().timestamp().to_string() });
    message[kind] = body;
    json!({ "object": "whatsapp_business_account", "entry": [{ "id": WABA, "changes": [{
        "field": "messages", "value": { "messaging_product": "whatsapp",
            "metadata": { "display_phone_number": "15550783881", "phone_number_id": phone_number_id },
            "contacts": [{ "profile": { "name": "Grace Hopper" }, "wa_id": wa_id }],
            "messages": [message] } }] }] })
}

async fn post_meta(app: &TestApp, notification: &Value) {
    let body = serde_json::to_vec(notification).unwrap();
    let status = app
        .http
        .post(app.url("/webhook/meta"))
        .header("content-type", "application/json")
        .header("x-hub-signature-256", sign(&body))
        .body(body)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
}

fn count(m: &[Value], direction: &str) -> usize {
    m.iter().filter(|r| r["direction"] == direction).count()
}

/// (customer, profile) of each WhatsApp answer asked for.
type Asked = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// The scripted agent, recording which profile each WhatsApp answer was asked for.
#[derive(Clone, Default)]
struct RecordingAgent {
    asked: Asked,
}

impl RecordingAgent {
    fn profile_for(&self, customer: &str) -> Vec<Option<String>> {
        self.asked
            .lock()
            .unwrap()
            .iter()
            .filter(|(c, _)| c == customer)
            .map(|(_, p)| p.clone())
            .collect()
    }
}

impl Agent for RecordingAgent {
    fn respond(&self, request: AgentRequest) -> BoxStream<'static, Result<AgentEvent, AgentError>> {
        if request.channel == Channel::Whatsapp {
            self.asked.lock().unwrap().push((
                request.context.customer_id.as_str().to_owned(),
                request.profile.clone(),
            ));
        }
        ScriptedAgent.respond(request)
    }
}

fn number(provider: WhatsAppProvider, id: &str, profile: &str) -> BusinessNumber {
    BusinessNumber {
        provider,
        id: id.into(),
        profile: Some(profile.into()),
    }
}

/// Meta configured next to ACS (`acs` = the ACS resource's endpoint and key).
fn both_providers(s: &mut Settings, acs_endpoint: String, acs_key: &[u8], graph: &FakeGraph) {
    quick(s);
    s.acs = Some(AcsSettings {
        endpoint: acs_endpoint,
        auth: AcsAuth::AccessKey(Secret::new(acs_key.to_vec())),
    });
    s.whatsapp.acs_channel_id = Some(CHANNEL.into());
    s.whatsapp.meta_access_token = Some(Secret::new(TOKEN.into()));
    s.whatsapp.meta_phone_number_id = Some(META_NUMBER.into());
    s.whatsapp.meta_graph_base_url = graph.base_url.clone();
    s.webhooks.meta_app_secret = Some(Secret::new(APP_SECRET.into()));
}

#[tokio::test]
async fn routing_each_reply_leaves_through_the_provider_and_profile_of_the_number_written_to() {
    let acs = fake_acs::FakeAcs::start().await;
    let graph = FakeGraph::start(TOKEN, &[META_NUMBER, SECOND_META_NUMBER]).await;
    let agent = RecordingAgent::default();
    let (endpoint, g) = (acs.endpoint(), graph.clone());
    let app = TestApp::spawn_hooked(
        move |s| {
            both_providers(s, endpoint, fake_acs::KEY, &g);
            s.whatsapp.numbers = vec![
                number(WhatsAppProvider::Acs, CHANNEL, "support"),
                number(WhatsAppProvider::Meta, META_NUMBER, "sales"),
                number(WhatsAppProvider::Meta, SECOND_META_NUMBER, "billing"),
            ];
        },
        Hooks {
            agent: Some(Arc::new(agent.clone())),
            ..Hooks::default()
        },
    )
    .await;
    // Both run; ACS is the default when both are configured and WHATSAPP_PROVIDER is unset.
    assert_eq!(app.state.whatsapp.provider(), WhatsAppProvider::Acs);

    // Three customers, three business numbers, two providers.
    let via_acs = "+14254360097";
    let via_meta = "+14255550111";
    let via_second = "+14255550122";
    deliver(
        &app,
        &json!([crate::whatsapp::text("eg-1", "acs-m1", "Hello from ACS")]),
    )
    .await;
    post_meta(
        &app,
        &meta_message(
            META_NUMBER,
            "14255550111",
            "wamid.a",
            "text",
            json!({"body": "hi"}),
        ),
    )
    .await;
    post_meta(
        &app,
        &meta_message(
            SECOND_META_NUMBER,
            "14255550122",
            "wamid.b",
            "text",
            json!({"body": "hi"}),
        ),
    )
    .await;
    for customer in [via_acs, via_meta, via_second] {
        eventually(&app, customer, "a reply", |m| count(m, "outbound") == 1).await;
    }

    let acs_sends = acs.sends();
    assert_eq!(acs_sends.len(), 1, "{acs_sends:#?}");
    assert!(acs_sends[0].signature_ok);
    assert_eq!(acs_sends[0].api_version().as_deref(), Some("2024-08-30"));
    let body = acs_sends[0].json();
    assert_eq!(body["channelRegistrationId"], CHANNEL);
    assert_eq!(body["to"], json!(["14254360097"]));
    assert_eq!(body["kind"], "text");

    let mut graph_sends: Vec<(String, Value)> = graph
        .sends()
        .into_iter()
        .map(|r| (r.path, r.body["to"].clone()))
        .collect();
    graph_sends.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        graph_sends,
        [
            (
                format!("/v23.0/{META_NUMBER}/messages"),
                json!("14255550111")
            ),
            (
                format!("/v23.0/{SECOND_META_NUMBER}/messages"),
                json!("14255550122")
            ),
        ]
    );

    // Each Meta message was marked read on the number it was written to; ACS has no receipts.
    let mut receipts: Vec<(Option<String>, Value)> = graph
        .on(Route::MarkRead)
        .into_iter()
        .map(|r| (r.number, r.body["message_id"].clone()))
        .collect();
    receipts.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        receipts,
        [
            (Some(META_NUMBER.to_owned()), json!("wamid.a")),
            (Some(SECOND_META_NUMBER.to_owned()), json!("wamid.b")),
        ]
    );

    // Each number's profile answered there.
    assert_eq!(agent.profile_for(via_acs), [Some("support".to_owned())]);
    assert_eq!(agent.profile_for(via_meta), [Some("sales".to_owned())]);
    assert_eq!(agent.profile_for(via_second), [Some("billing".to_owned())]);

    // The context remembers which provider the customer is on.
    let provider_of = |phone: &str| {
        let app = &app;
        let id = CustomerId::parse_phone(phone).unwrap();
        async move {
            let ctx = app.state.stores.contexts.get(&id).await.unwrap().unwrap();
            ctx.whatsapp.unwrap().provider
        }
    };
    assert_eq!(provider_of(via_acs).await, WhatsAppProvider::Acs);
    assert_eq!(provider_of(via_meta).await, WhatsAppProvider::Meta);

    // A conversation we start, with a customer who never wrote: the default provider.
    let newcomer = CustomerId::parse_phone("+14255550133").unwrap();
    app.state
        .whatsapp
        .send_template(
            &newcomer,
            "conversation_continuation",
            vec!["Ada".into(), "your bill".into()],
            Some("h-1".into()),
        )
        .await
        .unwrap();
    let template = acs.sends().pop().unwrap().json();
    assert_eq!(template["kind"], "template");
    assert_eq!(template["channelRegistrationId"], CHANNEL);
    assert_eq!(template["to"], json!(["14255550133"]));
    assert_eq!(graph.sends().len(), 2, "nothing more went to Meta");
}

#[tokio::test]
async fn routing_meta_templates_are_synced_from_every_page_and_a_failed_sync_keeps_them() {
    let graph = FakeGraph::start(TOKEN, &[META_NUMBER, SECOND_META_NUMBER]).await;
    graph.serve_templates(
        WABA,
        vec![
            json!({"name": "conversation_continuation", "language": "en_US", "status": "APPROVED",
                "category": "UTILITY", "id": "1", "components": [
                    {"type": "BODY", "text": "Hi {{1}}, {{2}}"},
                    {"type": "BUTTONS", "buttons": [{"type": "QUICK_REPLY", "text": "Continue"}]}]}),
            json!({"name": "promo", "language": "en_US", "status": "PAUSED",
                "category": "MARKETING", "id": "2",
                "components": [{"type": "BODY", "text": "Deal for {{1}}"}]}),
            json!({"name": "order_update", "language": "en_US", "status": "APPROVED",
                "category": "UTILITY", "id": "3", "components": [
                    {"type": "BODY", "text": "Order {{1}} shipped."},
                    {"type": "BUTTONS", "buttons": [{"type": "URL", "text": "Track",
                        "url": "https://example.com/{{1}}"}]}]}),
        ],
        2,
    );
    let base = graph.base_url.clone();
    let app = TestApp::spawn_with(move |s| {
        quick(s);
        s.whatsapp.meta_access_token = Some(Secret::new(TOKEN.into()));
        s.whatsapp.meta_phone_number_id = Some(META_NUMBER.into());
        s.whatsapp.meta_waba_id = Some(WABA.into());
        s.whatsapp.meta_graph_base_url = base;
    })
    .await;
    let wa = &app.state.whatsapp;
    let status_of = |name: &str| {
        wa.templates_of(WhatsAppProvider::Meta)
            .into_iter()
            .find(|t| t.name == name)
            .map(|t| t.status)
    };
    for _ in 0..250 {
        if status_of("order_update").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(status_of("order_update"), Some(TemplateStatus::Approved));
    assert_eq!(status_of("promo"), Some(TemplateStatus::Paused));
    assert_eq!(
        status_of("conversation_continuation"),
        Some(TemplateStatus::Approved)
    );
    let listings = graph.listings();
    assert_eq!(listings.len(), 2, "two pages: {listings:#?}");
    for l in &listings {
        assert_eq!(l.method, "GET");
        assert_eq!(l.path, format!("/v23.0/{WABA}/message_templates"));
        assert_eq!(l.param("limit").as_deref(), Some("100"));
        assert_eq!(
            l.param("fields").as_deref(),
            Some("name,language,status,category,components")
        );
        assert_eq!(l.param("access_token"), None, "the token rides the header");
    }
    assert_eq!(listings[0].param("after"), None);
    assert_eq!(listings[1].param("after").as_deref(), Some("cursor-1"));

    // The synced list is what sends are checked against: a paused template is refused before
    // any HTTP call, an approved one goes out with its parameter.
    let customer = CustomerId::parse_phone("+14255550144").unwrap();
    assert!(matches!(
        wa.send_template(&customer, "promo", vec!["Ada".into()], None)
            .await,
        Err(SendError::Template(TemplateError::NotApproved {
            status: TemplateStatus::Paused,
            ..
        }))
    ));
    assert!(graph.sends().is_empty());
    wa.send_template(&customer, "order_update", vec!["A-17".into()], None)
        .await
        .unwrap();
    let sent = graph.sends().pop().unwrap();
    assert_eq!(sent.path, format!("/v23.0/{META_NUMBER}/messages"));
    assert_eq!(sent.body["template"]["name"], "order_update");
    assert_eq!(
        sent.body["template"]["components"],
        json!([{"type": "body", "parameters": [{"type": "text", "text": "A-17"}]}])
    );

    // A sync that fails keeps what the last one learned.
    graph.fail_next_list(400, 100);
    wa.refresh_templates().await;
    assert_eq!(graph.listings().len(), 3);
    assert_eq!(status_of("order_update"), Some(TemplateStatus::Approved));
    assert_eq!(status_of("promo"), Some(TemplateStatus::Paused));
    // A sync that succeeds replaces the list: a template deleted at Meta is gone.
    graph.serve_templates(
        WABA,
        vec![
            json!({"name": "promo", "language": "en_US", "status": "APPROVED",
            "category": "MARKETING", "components": [{"type": "BODY", "text": "Deal for {{1}}"}]}),
        ],
        2,
    );
    wa.refresh_templates().await;
    assert_eq!(status_of("order_update"), None);
    assert_eq!(status_of("promo"), Some(TemplateStatus::Approved));
}

/// A call on ACS whose caller accepts WhatsApp, on an app where ACS and Meta both run.
struct Story {
    app: TestApp,
    calling: fake_calling::FakeAcs,
    graph: FakeGraph,
}

impl Story {
    async fn start() -> Self {
        let calling = fake_calling::FakeAcs::start().await;
        let graph = FakeGraph::start(TOKEN, &[META_NUMBER, SECOND_META_NUMBER]).await;
        let port = free_port();
        let (endpoint, g) = (calling.endpoint(), graph.clone());
        let app = TestApp::spawn_with(move |s| {
            s.port = port;
            s.public_base_url = format!("http://127.0.0.1:{port}");
            s.handoff.queue_wait_seconds = 600;
            both_providers(s, endpoint, fake_calling::ACCESS_KEY, &g);
        })
        .await;
        Self {
            app,
            calling,
            graph,
        }
    }

    /// Rings from `phone`, explains the problem, says yes to WhatsApp; returns the handoff
    /// once its template was sent.
    async fn accept_whatsapp(&self, phone: &str) -> Handoff {
        let id = CustomerId::parse_phone(phone).unwrap();
        self.app
            .state
            .stores
            .contexts
            .update(&id, |c| c.display_name = Some("Ada Lovelace".into()))
            .await
            .unwrap();
        let event = incoming_event(&format!("ev-{phone}"), &format!("corr-{phone}"), phone);
        assert_eq!(ring(&self.app, &event).await, 200);
        let call = self
            .calling
            .wait_for("the call answered", |f| f.call_for(&format!("ctx-{phone}")))
            .await;
        let mut socket = AcsSocket::connect(&call.media_url).await;
        wait_context(&self.app, phone, "the greeting", |c| {
            c.transcript
                .iter()
                .any(|t| t.role == Role::Agent && t.text.contains("How can I help"))
        })
        .await;
        socket
            .final_text("My power has been out since this morning", 10_000)
            .await;
        wait_context(&self.app, phone, "the offer", |c| {
            c.transcript
                .iter()
                .any(|t| t.role == Role::Agent && t.text.ends_with(OFFER_QUESTION))
        })
        .await;
        socket.final_text("Yes, that works for me", 20_000).await;
        self.handoff(phone, "template sent", |h| {
            h.reached(Milestone::TemplateSent)
        })
        .await
    }

    async fn handoff(&self, phone: &str, what: &str, ready: impl Fn(&Handoff) -> bool) -> Handoff {
        let id = CustomerId::parse_phone(phone).unwrap();
        let handoffs = &self.app.state.stores.handoffs;
        for _ in 0..500 {
            if let Some(h) = handoffs.for_customer(&id).await.unwrap().into_iter().next()
                && ready(&h)
            {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!(
            "handoff never showed: {what}: {:#?}",
            handoffs.for_customer(&id).await
        );
    }
}

#[tokio::test]
async fn routing_handoff_template_goes_out_through_meta_for_a_customer_on_a_meta_number() {
    let story = Story::start().await;
    let phone = "+14255550155";
    // The caller wrote to our Meta number before: their WhatsApp conversation lives there.
    post_meta(
        &story.app,
        &meta_message(
            META_NUMBER,
            "14255550155",
            "wamid.before",
            "text",
            json!({"body": "hello"}),
        ),
    )
    .await;
    eventually(&story.app, phone, "the reply", |m| {
        count(m, "outbound") == 1
    })
    .await;

    let handoff = story.accept_whatsapp(phone).await;
    let templates: Vec<_> = story
        .graph
        .sends()
        .into_iter()
        .filter(|r| r.body["type"] == "template")
        .collect();
    assert_eq!(templates.len(), 1, "{templates:#?}");
    let t = &templates[0];
    assert_eq!(t.path, format!("/v23.0/{META_NUMBER}/messages"));
    assert_eq!(t.body["to"], "14255550155");
    assert_eq!(t.body["template"]["name"], "conversation_continuation");
    let components = t.body["template"]["components"].as_array().unwrap();
    assert_eq!(components[0]["parameters"][0]["text"], "Ada");
    assert_eq!(
        components[1],
        json!({"type": "button", "sub_type": "quick_reply", "index": "0",
            "parameters": [{"type": "payload", "payload": handoff.id.as_str()}]})
    );
    assert!(
        story.calling.whatsapp_sends().is_empty(),
        "nothing went out through ACS messaging: {:#?}",
        story.calling.whatsapp_sends()
    );

    // The customer taps the button on Meta: the payload brings the reply back to the handoff.
    post_meta(
        &story.app,
        &meta_message(
            META_NUMBER,
            "14255550155",
            "wamid.tap",
            "button",
            json!({"payload": handoff.id.as_str(), "text": "Continue"}),
        ),
    )
    .await;
    let resumed = story
        .handoff(phone, "resumed", |h| h.reached(Milestone::Resumed))
        .await;
    assert_eq!(resumed.id, handoff.id);
}

#[tokio::test]
async fn routing_handoff_template_for_a_new_whatsapp_customer_goes_out_through_the_default_provider()
 {
    let story = Story::start().await;
    let phone = "+14254360097";
    let handoff = story.accept_whatsapp(phone).await;
    let sends = story.calling.whatsapp_sends();
    assert_eq!(sends.len(), 1, "{sends:#?}");
    assert_eq!(sends[0].query, "api-version=2024-08-30");
    let body = &sends[0].body;
    assert_eq!(body["kind"], "template");
    assert_eq!(body["channelRegistrationId"], CHANNEL);
    assert_eq!(body["to"], json!(["14254360097"]));
    assert!(
        body["template"]["values"].as_array().unwrap().contains(
            &json!({"kind": "quickAction", "name": "button1", "payload": handoff.id.as_str()})
        ),
        "{body:#}"
    );
    assert!(
        story.graph.sends().is_empty(),
        "nothing went out through Meta"
    );

    // The customer taps the button on ACS: the payload brings the reply back to the handoff.
    let tap = received(
        "eg-tap",
        "acs-tap",
        json!({"messageType": "button", "button": {"text": "Continue", "payload": handoff.id.as_str()}}),
    );
    assert_eq!(deliver(&story.app, &json!([tap])).await.status(), 200);
    let resumed = story
        .handoff(phone, "resumed", |h| h.reached(Milestone::Resumed))
        .await;
    assert_eq!(resumed.id, handoff.id);
}

/// Both providers run (Meta the default, two Meta numbers). Each inbound message's media is
/// fetched, and the message marked read, through the provider it arrived on: a Meta image on
/// the second Meta number through Graph (resolve + download; the read receipt on that number),
/// an ACS image through ACS (the signed stream download; ACS has no read receipt), even on an
/// ACS channel no setting lists, where the number alone would point at the default (Meta).
/// Every image is stored and recorded. Then one 190 on one Meta number fails readiness for
/// all of them (one token), and a success on the other number clears it.
#[tokio::test]
async fn routing_inbound_media_and_read_receipts_go_through_the_provider_the_message_arrived_on() {
    use handoff::domain::OutboundMessage;
    use handoff::whatsapp::{Initiation, SenderError};

    use crate::meta::{provider_check, readiness};
    use crate::support::fake_graph::graph_error;

    let acs = fake_acs::FakeAcs::start().await;
    let graph = FakeGraph::start(TOKEN, &[META_NUMBER, SECOND_META_NUMBER]).await;
    let meta_image = b"\xff\xd8 meta jpeg".as_slice();
    let acs_image = b"\x89PNG acs image".as_slice();
    let unlisted_image = b"\x89PNG from an unlisted channel".as_slice();
    graph.serve_media("4490709327384033", meta_image, "image/jpeg");
    acs.serve_media("acs-media-1", acs_image);
    acs.serve_media("acs-media-2", unlisted_image);
    let (endpoint, g) = (acs.endpoint(), graph.clone());
    let app = TestApp::spawn_with(move |s| {
        both_providers(s, endpoint, fake_acs::KEY, &g);
        s.whatsapp.provider = Some(WhatsAppProvider::Meta);
        s.whatsapp.numbers = vec![
            number(WhatsAppProvider::Acs, CHANNEL, "support"),
            number(WhatsAppProvider::Meta, META_NUMBER, "sales"),
            number(WhatsAppProvider::Meta, SECOND_META_NUMBER, "billing"),
        ];
    })
    .await;
    assert_eq!(app.state.whatsapp.provider(), WhatsAppProvider::Meta);
    // Meta runs: readiness reports the token (working).
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(
        provider_check(&body),
        json!({"name": "whatsapp_provider", "ok": true})
    );

    let on_meta = "+14255550122";
    let on_acs = "+14254360097";
    let on_unlisted = "+14255550166";
    post_meta(
        &app,
        &meta_message(
            SECOND_META_NUMBER,
            "14255550122",
            "wamid.img",
            "image",
            json!({"id": "4490709327384033", "mime_type": "image/jpeg"}),
        ),
    )
    .await;
    let acs_event = received(
        "eg-img",
        "acs-img",
        json!({"messageType": "image", "media": {"mimeType": "image/png", "id": "acs-media-1"}}),
    );
    let mut unlisted_event = received(
        "eg-img-2",
        "acs-img-2",
        json!({"messageType": "image", "from": "14255550166",
            "media": {"mimeType": "image/png", "id": "acs-media-2"}}),
    );
    unlisted_event["data"]["to"] = json!("chan-unlisted");
    assert_eq!(
        deliver(&app, &json!([acs_event, unlisted_event]))
            .await
            .status(),
        200
    );
    let replied = |m: &[Value]| count(m, "outbound") == 1;
    let meta_log = eventually(&app, on_meta, "the Meta reply", replied).await;
    let acs_log = eventually(&app, on_acs, "the ACS reply", replied).await;
    let unlisted_log = eventually(&app, on_unlisted, "the reply", replied).await;

    // Each image stored and recorded with what was downloaded.
    let sha256 = |b: &[u8]| -> String {
        <Sha256 as sha2::Digest>::digest(b)
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect()
    };
    for (log, id, bytes, mime) in [
        (&meta_log, "4490709327384033", meta_image, "image/jpeg"),
        (&acs_log, "acs-media-1", acs_image, "image/png"),
        (&unlisted_log, "acs-media-2", unlisted_image, "image/png"),
    ] {
        let inbound = log.iter().find(|r| r["direction"] == "inbound").unwrap();
        assert_eq!(
            inbound["media"],
            json!({"media_id": id, "available": true, "mime_type": mime,
                "size_bytes": bytes.len(), "sha256": sha256(bytes)}),
            "{id}"
        );
        let stored = app.state.whatsapp.stored_media(id).await.unwrap();
        assert_eq!(stored.as_deref(), Some(bytes), "{id}");
    }

    // The Meta image went through Graph only: resolved, then downloaded with the token.
    let resolves = graph.on(Route::Resolve);
    assert_eq!(resolves.len(), 1, "{:#?}", graph.requests());
    assert_eq!(resolves[0].path, "/v23.0/4490709327384033");
    let downloads = graph.on(Route::Download);
    assert_eq!(downloads.len(), 1, "{:#?}", graph.requests());
    for r in resolves.iter().chain(&downloads) {
        assert_eq!(r.method, "GET");
        assert_eq!(
            r.authorization.as_deref(),
            Some(&*format!("Bearer {TOKEN}"))
        );
    }
    assert!(
        graph.on(Route::Unexpected).is_empty(),
        "no ACS media id reached Graph: {:#?}",
        graph.requests()
    );
    // The ACS images went through ACS only, signed.
    let streams: Vec<_> = acs
        .requests()
        .into_iter()
        .filter(|r| r.path.starts_with("/messages/streams/"))
        .collect();
    let mut paths: Vec<&str> = streams.iter().map(|r| r.path.as_str()).collect();
    paths.sort_unstable();
    assert_eq!(
        paths,
        [
            "/messages/streams/acs-media-1",
            "/messages/streams/acs-media-2"
        ]
    );
    for r in &streams {
        assert_eq!(r.method, "GET");
        assert!(r.signature_ok);
        assert_eq!(r.api_version().as_deref(), Some("2024-08-30"));
    }

    // Read receipt (with typing) for the Meta message, on the number it was written to; none
    // for the ACS messages.
    let receipts = graph.on(Route::MarkRead);
    assert_eq!(receipts.len(), 1, "{receipts:#?}");
    assert_eq!(receipts[0].number.as_deref(), Some(SECOND_META_NUMBER));
    assert_eq!(
        receipts[0].body,
        json!({"messaging_product": "whatsapp", "status": "read", "message_id": "wamid.img",
            "typing_indicator": {"type": "text"}})
    );
    // Replies: the Meta customer from the second Meta number, the ACS customer through ACS.
    let meta_replies: Vec<_> = graph
        .sends()
        .into_iter()
        .filter(|r| r.body["to"] == "14255550122")
        .collect();
    assert_eq!(meta_replies.len(), 1);
    assert_eq!(meta_replies[0].number.as_deref(), Some(SECOND_META_NUMBER));
    assert!(
        acs.sends()
            .iter()
            .any(|s| s.json()["to"] == json!(["14254360097"])
                && s.json()["channelRegistrationId"] == CHANNEL)
    );

    // One token for every Meta number: 190 on the second number's send fails readiness...
    let customer = CustomerId::parse_phone(on_meta).unwrap();
    graph.fail_with(401, 190, None);
    let err = app
        .state
        .whatsapp
        .send(&customer, OutboundMessage::text("hi"), Initiation::Reply)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, SendError::Sender(SenderError::Rejected { code, .. }) if code == "190"),
        "{err:?}"
    );
    graph.script(Route::Probe, 401, graph_error(190));
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 503, "{body:#}");
    let reason = provider_check(&body)["error"].as_str().unwrap().to_owned();
    assert_eq!(
        reason.matches("Graph error 190").count(),
        1,
        "reported once for both Meta numbers: {reason}"
    );
    assert_eq!(graph.on(Route::Probe).len(), 1, "one probe for one token");
    // ...and a successful call from the first number clears it for all.
    let first = CustomerId::parse_phone("+14255550177").unwrap();
    app.state
        .whatsapp
        .send_template(
            &first,
            "conversation_continuation",
            vec!["Ada".into(), "your bill".into()],
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        graph.sends().last().unwrap().number.as_deref(),
        Some(META_NUMBER)
    );
    let (status, body) = readiness(&app).await;
    assert_eq!(status, 200, "{body:#}");
    assert_eq!(graph.on(Route::Probe).len(), 1);
}
