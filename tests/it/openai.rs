//! The OpenAI agent and summariser against a chat-completions server faked at the wire: a small
//! axum server on port 0 that records each request (method, path, query, headers, JSON body)
//! and answers with scripted replies: real SSE chunks, error statuses, or nothing at all.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use futures::StreamExt;
use serde_json::{Value, json};
use tokio::sync::Notify;

use handoff::agent::openai::{Auth, Backend, OpenAiAgent, SUMMARY_MAX_CHARS, from_settings};
use handoff::agent::tools::{CHECK_WAIT_TIME, UPDATE_COLLECTED_DATA, tools_for};
use handoff::agent::{
    Agent, AgentError, AgentEvent, AgentInput, AgentRequest, ToolCall, ToolResult, collect,
};
use handoff::config::{AgentBackend, AgentSettings, Secret};
use handoff::domain::{Channel, CustomerContext, CustomerId, Role, Turn};

const PHONE: &str = "+14255550123";

/// One recorded request.
#[derive(Debug, Clone)]
struct Seen {
    method: Method,
    path: String,
    query: Option<String>,
    headers: HeaderMap,
    body: Value,
}

/// What the fake answers next.
enum Reply {
    /// SSE events (the JSON after `data: `), then `data: [DONE]`. With `gate`, the events after
    /// the first `gate` are held back until the test opens the gate.
    Sse {
        events: Vec<Value>,
        gate: Option<usize>,
    },
    Status {
        status: u16,
        headers: Vec<(&'static str, &'static str)>,
        body: Value,
    },
    /// A plain JSON 200 (non-streaming completion).
    Json(Value),
    /// Accepts the request and never answers.
    Hang,
}

#[derive(Clone)]
struct Fake {
    seen: Arc<Mutex<Vec<Seen>>>,
    replies: Arc<Mutex<VecDeque<Reply>>>,
    gate: Arc<Notify>,
}

impl Fake {
    async fn start(replies: Vec<Reply>) -> (Self, String) {
        let fake = Fake {
            seen: Arc::default(),
            replies: Arc::new(Mutex::new(replies.into())),
            gate: Arc::new(Notify::new()),
        };
        let app = Router::new().fallback(answer).with_state(fake.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        (fake, format!("http://{addr}"))
    }

    fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

async fn answer(State(fake): State<Fake>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.unwrap();
    fake.seen.lock().unwrap().push(Seen {
        method: parts.method,
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        headers: parts.headers,
        body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    });
    let reply = fake.replies.lock().unwrap().pop_front();
    match reply {
        None => (StatusCode::INTERNAL_SERVER_ERROR, "no reply scripted").into_response(),
        Some(Reply::Hang) => {
            std::future::pending::<()>().await;
            unreachable!()
        }
        Some(Reply::Json(body)) => axum::Json(body).into_response(),
        Some(Reply::Status {
            status,
            headers,
            body,
        }) => {
            let mut response =
                (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response();
            for (name, value) in headers {
                response.headers_mut().insert(name, value.parse().unwrap());
            }
            response
        }
        Some(Reply::Sse { events, gate }) => {
            let (tx, rx) = futures::channel::mpsc::unbounded::<Result<String, std::io::Error>>();
            let open = fake.gate.clone();
            tokio::spawn(async move {
                for (i, event) in events.iter().enumerate() {
                    if gate == Some(i) {
                        open.notified().await;
                    }
                    if tx.unbounded_send(Ok(format!("data: {event}\n\n"))).is_err() {
                        return;
                    }
                }
                let _ = tx.unbounded_send(Ok("data: [DONE]\n\n".into()));
            });
            Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(rx))
                .unwrap()
        }
    }
}

fn chunk(delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}]
    })
}

fn text(delta: &str) -> Value {
    chunk(json!({"content": delta}), None)
}

fn text_reply(parts: &[&str]) -> Reply {
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    events.extend(parts.iter().map(|p| text(p)));
    events.push(chunk(json!({}), Some("stop")));
    Reply::Sse { events, gate: None }
}

fn settings(backend: AgentBackend, timeout: Duration, max_attempts: u32) -> AgentSettings {
    AgentSettings {
        backend,
        profiles_file: None,
        request_timeout: timeout,
        max_attempts,
    }
}

fn compatible(base: &str) -> AgentBackend {
    AgentBackend::OpenAi {
        base_url: format!("{base}/v1"),
        api_key: Secret::new("sk-test".into()),
        model: "gpt-4o-mini".into(),
    }
}

fn agent(backend: AgentBackend, timeout: Duration, max_attempts: u32) -> Arc<dyn Agent> {
    from_settings(
        &settings(backend, timeout, max_attempts),
        reqwest::Client::new(),
    )
    .unwrap()
    .expect("an OpenAI backend")
    .0
}

fn context() -> CustomerContext {
    let mut ctx = CustomerContext::new(CustomerId::parse_phone(PHONE).unwrap(), Utc::now());
    ctx.display_name = Some("Ada Lovelace".into());
    ctx
}

fn said(text: &str) -> AgentInput {
    AgentInput::Text { text: text.into() }
}

/// The tools as OpenAI expects them: the exact schemas of `tools_for`.
fn expected_tools(channel: Channel) -> Value {
    tools_for(channel)
        .into_iter()
        .map(|t| {
            json!({
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.parameters}
            })
        })
        .collect()
}

fn messages(seen: &Seen) -> Vec<Value> {
    seen.body["messages"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), future)
        .await
        .expect("the test took far too long")
}

#[tokio::test]
async fn openai_streams_text_as_it_arrives_and_assembles_a_tool_call_split_over_chunks() {
    let events = vec![
        chunk(json!({"role": "assistant", "content": ""}), None),
        text("Let me "),
        text("check "),
        text("the wait."),
        chunk(
            json!({"tool_calls": [{"index": 0, "id": "call_wait", "type": "function",
                   "function": {"name": CHECK_WAIT_TIME, "arguments": ""}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "id": "call_data", "type": "function",
                   "function": {"name": UPDATE_COLLECTED_DATA, "arguments": "{\"data\": {\"iss"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "ue_type\": \"pow"}}]}),
            None,
        ),
        chunk(
            json!({"tool_calls": [{"index": 1, "function": {"arguments": "er outage\"}}"}}]}),
            None,
        ),
        chunk(json!({}), Some("tool_calls")),
    ];
    // Everything after the first words is held back until the agent has yielded them.
    let (fake, base) = Fake::start(vec![Reply::Sse {
        events,
        gate: Some(2),
    }])
    .await;
    let agent = agent(compatible(&base), Duration::from_secs(10), 3);

    let mut ctx = context();
    ctx.push_turn(
        Turn::new(Channel::Voice, Role::Agent, "How can I help?", Utc::now()),
        50,
    );
    let mut stream = agent.respond(AgentRequest::new(
        ctx,
        Channel::Voice,
        said("My power is out"),
    ));
    let first = within(stream.next()).await.unwrap().unwrap();
    assert_eq!(first, AgentEvent::Text("Let me ".into()));
    fake.gate.notify_one();
    let mut rest = Vec::new();
    while let Some(event) = within(stream.next()).await {
        rest.push(event.unwrap());
    }
    assert_eq!(
        rest,
        [
            AgentEvent::Text("check ".into()),
            AgentEvent::Text("the wait.".into()),
            AgentEvent::ToolCall(ToolCall {
                id: "call_wait".into(),
                name: CHECK_WAIT_TIME.into(),
                arguments: json!({}),
            }),
            AgentEvent::ToolCall(ToolCall {
                id: "call_data".into(),
                name: UPDATE_COLLECTED_DATA.into(),
                arguments: json!({"data": {"issue_type": "power outage"}}),
            }),
        ]
    );

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.method, Method::POST);
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.headers["authorization"], "Bearer sk-test");
    assert!(request.headers.get("api-key").is_none());
    assert_eq!(request.body["model"], "gpt-4o-mini");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["tools"], expected_tools(Channel::Voice));
    let messages = messages(request);
    assert_eq!(messages[0]["role"], "system");
    assert!(
        messages[0]["content"]
            .as_str()
            .unwrap()
            .contains("no markdown"),
        "voice prompt: {}",
        messages[0]
    );
    assert!(
        messages[1]["content"]
            .as_str()
            .unwrap()
            .contains("First name: Ada")
    );
    assert_eq!(
        messages[2],
        json!({"role": "assistant", "content": "[call] How can I help?"})
    );
    assert_eq!(
        messages.last().unwrap(),
        &json!({"role": "user", "content": "My power is out"})
    );
    let body = request.body.to_string();
    assert!(
        !body.contains("4255550123"),
        "the phone number leaked: {body}"
    );
}

#[tokio::test]
async fn azure_with_a_key_gets_the_whatsapp_context_and_tools() {
    let (fake, base) = Fake::start(vec![text_reply(&["Hi Ada, ", "about your call..."])]).await;
    let backend = AgentBackend::AzureOpenAi {
        endpoint: format!("{base}/"),
        deployment: "gpt4o".into(),
        api_version: "2024-10-21".into(),
        api_key: Some(Secret::new("azure-key".into())),
        managed_identity_client_id: None,
    };
    let agent = agent(backend, Duration::from_secs(10), 3);
    let mut ctx = context();
    ctx.call_summary = Some("You called about a power outage at 123 Oak St.".into());
    ctx.collected_data
        .insert("issue_type".into(), json!("power outage"));
    ctx.collected_data.insert("callback".into(), json!(PHONE));
    ctx.push_turn(
        Turn::new(
            Channel::Voice,
            Role::Customer,
            "My power is out",
            Utc::now(),
        ),
        50,
    );

    let (text, tools) = within(collect(
        agent.as_ref(),
        AgentRequest::new(ctx, Channel::Whatsapp, said("Any news?")),
    ))
    .await
    .unwrap();
    assert_eq!(text, "Hi Ada, about your call...");
    assert!(tools.is_empty());

    let seen = fake.seen();
    assert_eq!(seen.len(), 1);
    let request = &seen[0];
    assert_eq!(request.path, "/openai/deployments/gpt4o/chat/completions");
    assert_eq!(request.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(request.headers["api-key"], "azure-key");
    assert!(request.headers.get("authorization").is_none());
    assert_eq!(request.body["tools"], expected_tools(Channel::Whatsapp));
    let messages = messages(request);
    assert!(messages[0]["content"].as_str().unwrap().contains("*bold*"));
    let context = messages[1]["content"].as_str().unwrap();
    assert!(
        context.contains("You called about a power outage at 123 Oak St."),
        "{context}"
    );
    assert!(
        context.contains(r#""issue_type":"power outage""#),
        "{context}"
    );
    assert_eq!(
        messages[2],
        json!({"role": "user", "content": "[call] My power is out"})
    );
    let body = request.body.to_string();
    assert!(
        !body.contains("4255550123"),
        "the phone number leaked: {body}"
    );
}

#[tokio::test]
async fn a_numbers_agent_profile_adds_its_instructions_after_the_channel_prompt() {
    let (fake, base) = Fake::start(vec![text_reply(&["Hello"]), text_reply(&["Hello"])]).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("profiles.json");
    std::fs::write(
        &file,
        r#"{"sales": "Mention the spring offer.", "support": "Outages come first."}"#,
    )
    .unwrap();
    let mut settings = settings(compatible(&base), Duration::from_secs(10), 3);
    settings.profiles_file = Some(file);
    let agent = from_settings(&settings, reqwest::Client::new())
        .unwrap()
        .expect("an OpenAI backend")
        .0;
    let ask = |profile: Option<&str>| {
        AgentRequest::new(context(), Channel::Whatsapp, said("Hi"))
            .with_profile(profile.map(str::to_owned))
    };
    within(collect(agent.as_ref(), ask(Some("sales"))))
        .await
        .unwrap();
    within(collect(agent.as_ref(), ask(None))).await.unwrap();
    let seen = fake.seen();
    let with = messages(&seen[0]);
    let without = messages(&seen[1]);
    assert_eq!(with[0], without[0], "the channel prompt stays first");
    assert_eq!(with[1]["role"], "system");
    let instructions = with[1]["content"].as_str().unwrap();
    assert!(instructions.contains("\"sales\""), "{instructions}");
    assert!(instructions.ends_with("Mention the spring offer."));
    assert!(!seen[0].body.to_string().contains("Outages come first"));
    assert_eq!(with.len(), without.len() + 1);
    assert_eq!(
        with[2], without[1],
        "then the context, as without a profile"
    );
}

#[tokio::test]
async fn a_second_round_carries_the_tool_calls_and_their_results_with_matching_ids() {
    let (fake, base) = Fake::start(vec![text_reply(&["The wait is ", "20 minutes."])]).await;
    let agent = agent(compatible(&base), Duration::from_secs(10), 3);
    let mut request = AgentRequest::new(context(), Channel::Voice, said("My power is out"));
    request.tool_results = vec![
        ToolResult {
            call: ToolCall {
                id: "call_data".into(),
                name: UPDATE_COLLECTED_DATA.into(),
                arguments: json!({"data": {"issue_type": "outage"}}),
            },
            output: json!({"ok": true}),
        },
        ToolResult {
            call: ToolCall {
                id: "call_wait".into(),
                name: CHECK_WAIT_TIME.into(),
                arguments: json!({}),
            },
            output: json!({"wait_seconds": 1200, "offer_allowed": true}),
        },
    ];
    let (text, _) = within(collect(agent.as_ref(), request)).await.unwrap();
    assert_eq!(text, "The wait is 20 minutes.");

    let messages = messages(&fake.seen()[0]);
    let n = messages.len();
    assert_eq!(
        messages[n - 4]["content"],
        "My power is out",
        "the input comes before the tool round"
    );
    let assistant = &messages[n - 3];
    assert_eq!(assistant["role"], "assistant");
    let calls = assistant["tool_calls"].as_array().unwrap();
    assert_eq!(calls.len(), 2);
    assert_eq!(calls[0]["id"], "call_data");
    assert_eq!(calls[0]["type"], "function");
    assert_eq!(calls[0]["function"]["name"], UPDATE_COLLECTED_DATA);
    let arguments: Value =
        serde_json::from_str(calls[0]["function"]["arguments"].as_str().unwrap()).unwrap();
    assert_eq!(arguments, json!({"data": {"issue_type": "outage"}}));
    assert_eq!(calls[1]["id"], "call_wait");
    for (message, (id, output)) in messages[n - 2..].iter().zip([
        ("call_data", json!({"ok": true})),
        (
            "call_wait",
            json!({"wait_seconds": 1200, "offer_allowed": true}),
        ),
    ]) {
        assert_eq!(message["role"], "tool");
        assert_eq!(message["tool_call_id"], id);
        let content: Value = serde_json::from_str(message["content"].as_str().unwrap()).unwrap();
        assert_eq!(content, output);
    }
}

#[tokio::test]
async fn a_429_is_retried_after_its_retry_after_and_then_succeeds_once_without_repeats() {
    let (fake, base) = Fake::start(vec![
        Reply::Status {
            status: 429,
            headers: vec![("retry-after", "0")],
            body: json!({"error": {"message": "Rate limit reached", "type": "requests", "param": null, "code": "rate_limit_exceeded"}}),
        },
        // A 429 whose body is not an error object (async-openai cannot read its status).
        Reply::Status {
            status: 429,
            headers: vec![("retry-after-ms", "10")],
            body: json!("Too Many Requests"),
        },
        text_reply(&["Hello ", "there."]),
    ])
    .await;
    let agent = agent(compatible(&base), Duration::from_secs(10), 3);
    let events: Vec<_> = within(
        agent
            .respond(AgentRequest::new(
                context(),
                Channel::Voice,
                AgentInput::CallStarted,
            ))
            .collect::<Vec<_>>(),
    )
    .await;
    let events: Vec<_> = events.into_iter().map(Result::unwrap).collect();
    assert_eq!(
        events,
        [
            AgentEvent::Text("Hello ".into()),
            AgentEvent::Text("there.".into())
        ]
    );
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test]
async fn server_errors_are_retried_up_to_the_attempt_limit_then_unavailable() {
    let error = || Reply::Status {
        status: 503,
        headers: vec![("retry-after-ms", "10")],
        body: json!({"error": {"message": "busy"}}),
    };
    let (fake, base) = Fake::start(vec![error(), error(), error(), error()]).await;
    let agent = agent(compatible(&base), Duration::from_secs(10), 3);
    let result = within(collect(
        agent.as_ref(),
        AgentRequest::new(context(), Channel::Voice, said("hello")),
    ))
    .await;
    assert!(
        matches!(result, Err(AgentError::Unavailable(_))),
        "{result:?}"
    );
    assert_eq!(fake.seen().len(), 3);
}

#[tokio::test]
async fn a_server_that_refuses_connections_is_unavailable_after_the_attempts() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    };
    let agent = agent(
        compatible(&format!("http://127.0.0.1:{port}")),
        Duration::from_secs(10),
        2,
    );
    let result = within(collect(
        agent.as_ref(),
        AgentRequest::new(context(), Channel::Voice, said("hello")),
    ))
    .await;
    match result {
        Err(AgentError::Unavailable(message)) => {
            assert!(message.contains("cannot connect"), "{message}")
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn a_400_fails_for_good_after_one_attempt() {
    let (fake, base) = Fake::start(vec![
        Reply::Status {
            status: 400,
            headers: vec![],
            body: json!({"error": {"message": "Invalid schema for function", "type": "invalid_request_error", "param": "tools", "code": null}}),
        },
        text_reply(&["never"]),
    ])
    .await;
    let agent = agent(compatible(&base), Duration::from_secs(10), 3);
    let result = within(collect(
        agent.as_ref(),
        AgentRequest::new(context(), Channel::Voice, said("hello")),
    ))
    .await;
    match result {
        Err(AgentError::Failed(message)) => assert!(message.contains("400"), "{message}"),
        other => panic!("expected Failed, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out() {
    let (fake, base) = Fake::start(vec![Reply::Hang, Reply::Hang, Reply::Hang]).await;
    let agent = agent(compatible(&base), Duration::from_secs(1), 3);
    let result = within(collect(
        agent.as_ref(),
        AgentRequest::new(context(), Channel::Voice, said("hello")),
    ))
    .await;
    match result {
        Err(AgentError::Unavailable(message)) => {
            assert!(message.contains("timed out"), "{message}")
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn a_reply_that_stalls_after_text_times_out_without_repeating_the_text() {
    // The gate is never opened: the stream stalls after its first words.
    let (fake, base) = Fake::start(vec![
        Reply::Sse {
            events: vec![text("Let me "), text("check.")],
            gate: Some(1),
        },
        text_reply(&["Let me ", "check."]),
    ])
    .await;
    let agent = agent(compatible(&base), Duration::from_secs(1), 3);
    let events: Vec<_> = within(
        agent
            .respond(AgentRequest::new(context(), Channel::Voice, said("hello")))
            .collect::<Vec<_>>(),
    )
    .await;
    assert_eq!(events.len(), 2, "{events:?}");
    assert!(
        matches!(&events[0], Ok(AgentEvent::Text(t)) if t == "Let me "),
        "{events:?}"
    );
    assert!(
        matches!(&events[1], Err(AgentError::Unavailable(m)) if m.contains("timed out")),
        "{events:?}"
    );
    assert_eq!(fake.seen().len(), 1);
}

#[tokio::test]
async fn azure_without_a_key_sends_an_entra_token_for_cognitive_services() {
    #[derive(Debug)]
    struct FixedToken(Mutex<Vec<String>>);
    #[async_trait::async_trait]
    impl azure_core::credentials::TokenCredential for FixedToken {
        async fn get_token(
            &self,
            scopes: &[&str],
            _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
        ) -> azure_core::Result<azure_core::credentials::AccessToken> {
            self.0
                .lock()
                .unwrap()
                .extend(scopes.iter().map(|s| s.to_string()));
            Ok(azure_core::credentials::AccessToken::new(
                "entra-token",
                azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1),
            ))
        }
    }
    let (fake, base) = Fake::start(vec![text_reply(&["Hello."])]).await;
    let credential = Arc::new(FixedToken(Mutex::default()));
    let backend = Backend::azure(
        reqwest::Client::new(),
        &base,
        "gpt4o",
        "2024-10-21",
        Auth::Entra(credential.clone()),
        &settings(AgentBackend::Scripted, Duration::from_secs(10), 1),
    );
    let agent = OpenAiAgent::new(Arc::new(backend));
    let (text, _) = within(collect(
        &agent,
        AgentRequest::new(context(), Channel::Voice, AgentInput::CallStarted),
    ))
    .await
    .unwrap();
    assert_eq!(text, "Hello.");
    let seen = &fake.seen()[0];
    assert_eq!(seen.path, "/openai/deployments/gpt4o/chat/completions");
    assert_eq!(seen.headers["authorization"], "Bearer entra-token");
    assert!(seen.headers.get("api-key").is_none());
    assert_eq!(
        *credential.0.lock().unwrap(),
        ["https://cognitiveservices.azure.com/.default"]
    );
}

#[tokio::test]
async fn the_summary_is_one_line_that_fits_the_template_parameter() {
    let long = format!(
        "You called about a power outage at your home.\nWe checked the area.\n\n{}",
        "A crew is on the way and will restore power soon. ".repeat(30)
    );
    let (fake, base) = Fake::start(vec![Reply::Json(json!({
        "id": "chatcmpl-2",
        "object": "chat.completion",
        "created": 1_700_000_000,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "finish_reason": "stop", "logprobs": null,
                     "message": {"role": "assistant", "content": long, "refusal": null}}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
    }))])
    .await;
    let (_, summariser) = from_settings(
        &settings(compatible(&base), Duration::from_secs(10), 3),
        reqwest::Client::new(),
    )
    .unwrap()
    .unwrap();
    let mut ctx = context();
    ctx.push_turn(
        Turn::new(
            Channel::Voice,
            Role::Customer,
            "My power has been out since 6am",
            Utc::now(),
        ),
        50,
    );
    let summary = within(summariser.summarise(&ctx)).await.unwrap();
    assert!(!summary.contains('\n'), "{summary}");
    assert!(
        summary.chars().count() <= SUMMARY_MAX_CHARS,
        "{}",
        summary.len()
    );
    assert!(summary.starts_with("You called about a power outage at your home. We checked"));

    let request = &fake.seen()[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_ne!(request.body["stream"], true);
    let messages = messages(request);
    assert!(messages[0]["content"].as_str().unwrap().contains("2 to 3"));
    assert!(
        messages[1]["content"]
            .as_str()
            .unwrap()
            .contains("Customer: My power has been out since 6am")
    );
    assert!(!request.body.to_string().contains("4255550123"));
}

// ---------------------------------------------------------------------------------------------
// The whole app with the OpenAI agent: requests leave the running service for the fake.

fn tool_call_reply(id: &str, name: &str, arguments: &str, lead: &[&str]) -> Reply {
    let mut events = vec![chunk(json!({"role": "assistant", "content": ""}), None)];
    events.extend(lead.iter().map(|p| text(p)));
    events.push(chunk(
        json!({"tool_calls": [{"index": 0, "id": id, "type": "function",
               "function": {"name": name, "arguments": arguments}}]}),
        None,
    ));
    events.push(chunk(json!({}), Some("tool_calls")));
    Reply::Sse { events, gate: None }
}

async fn until_seen(fake: &Fake, n: usize) -> Vec<Seen> {
    for _ in 0..500 {
        let seen = fake.seen();
        if seen.len() >= n {
            return seen;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!(
        "the model was asked {} times, expected {n}",
        fake.seen().len()
    );
}

/// A WhatsApp reply after a call: the service asks the model with the WhatsApp tools and the
/// call's summary and collected data, and sends what the model streamed.
#[tokio::test]
async fn the_app_asks_the_model_with_the_call_in_mind_and_sends_its_whatsapp_answer() {
    let (fake, base) =
        Fake::start(vec![text_reply(&["Hi Ada! ", "The crew is on its way."])]).await;
    let app = crate::support::TestApp::spawn_with(|s| {
        s.agent.backend = compatible(&base);
        crate::whatsapp::quick(s);
    })
    .await;
    let id = CustomerId::parse_phone(crate::whatsapp::CUSTOMER).unwrap();
    app.state
        .stores
        .contexts
        .update(&id, |c| {
            c.display_name = Some("Ada Lovelace".into());
            c.call_summary = Some("Power out since 6am at 123 Oak St.".into());
            c.collected_data
                .insert("issue_type".into(), json!("power outage"));
            c.collected_data
                .insert("account_verified".into(), json!(true));
        })
        .await
        .unwrap();
    let delivered = crate::whatsapp::deliver(
        &app,
        &json!([crate::whatsapp::text(
            "eg-ai-1",
            "m-ai-1",
            "Any update on the crew?"
        )]),
    )
    .await;
    assert_eq!(delivered.status(), 200);
    let seen = until_seen(&fake, 1).await;
    let request = &seen[0];
    assert_eq!(request.path, "/v1/chat/completions");
    assert_eq!(request.body["stream"], true);
    assert_eq!(request.body["tools"], expected_tools(Channel::Whatsapp));
    let all = serde_json::to_string(&messages(request)).unwrap();
    assert!(all.contains("Power out since 6am at 123 Oak St."), "{all}");
    assert!(
        all.contains("power outage") && all.contains("account_verified"),
        "{all}"
    );
    assert!(all.contains("Any update on the crew?"), "{all}");
    assert!(
        !all.contains("14254360097"),
        "no phone number goes to the model"
    );
    crate::whatsapp::eventually(
        &app,
        crate::whatsapp::CUSTOMER,
        "the model's answer sent",
        |m| m.iter().any(|r| r["direction"] == "outbound"),
    )
    .await;
    let sent = app.state.whatsapp.sandbox_records().unwrap();
    assert!(sent.iter().any(|r| matches!(&r.message,
        handoff::domain::OutboundMessage::Text { text, .. } if text == "Hi Ada! The crew is on its way.")));
}

/// On a call, the model's streamed tool call runs in the service and the second request carries
/// its result; both rounds are spoken.
#[tokio::test]
async fn on_a_call_a_streamed_tool_call_runs_and_its_result_goes_back_to_the_model() {
    let (fake, base) = Fake::start(vec![
        text_reply(&["Hello Ada. ", "How can I help you today?"]),
        tool_call_reply(
            "call_w",
            CHECK_WAIT_TIME,
            "{}",
            &["Let me check the queue. "],
        ),
        text_reply(&["The wait is about nine minutes."]),
    ])
    .await;
    let port = crate::support::services::free_port();
    let app = crate::support::TestApp::spawn_with(move |s| {
        s.port = port;
        s.public_base_url = format!("http://127.0.0.1:{port}");
        s.agent.backend = compatible(&base);
        s.handoff.queue_wait_seconds = 540;
    })
    .await;
    let phone = "+14255550177";
    assert_eq!(
        crate::voice::ring(
            &app,
            &crate::voice::incoming_event("ev-ai", "corr-ai", phone)
        )
        .await,
        200
    );
    let ctx =
        crate::voice::wait_context(&app, phone, "a call", |c| !c.voice_sessions.is_empty()).await;
    let call_id = ctx.voice_sessions[0].call_connection_id.clone();
    let url = app
        .state
        .voice
        .sandbox
        .as_ref()
        .unwrap()
        .media_url(&call_id)
        .unwrap();
    let mut socket = crate::support::acs_socket::AcsSocket::connect(&url).await;
    crate::voice::wait_context(&app, phone, "the greeting", |c| c.transcript.len() == 1).await;
    socket
        .final_text("How long is the wait right now?", 5_000)
        .await;
    crate::voice::wait_context(&app, phone, "both rounds spoken", |c| {
        c.transcript.iter().any(|t| t.text.contains("nine minutes"))
    })
    .await;
    let seen = until_seen(&fake, 3).await;
    assert_eq!(seen[1].body["tools"], expected_tools(Channel::Voice));
    let second = messages(&seen[2]);
    let tool_message = second
        .iter()
        .find(|m| m["role"] == "tool")
        .expect("a tool message");
    assert_eq!(tool_message["tool_call_id"], "call_w");
    let output: Value = serde_json::from_str(tool_message["content"].as_str().unwrap()).unwrap();
    assert_eq!(output["wait_seconds"], 540);
    assert_eq!(output["offer_allowed"], true);
    let spoken = crate::voice::wait_context(&app, phone, "the agent turn", |c| {
        c.transcript.iter().any(|t| {
            t.text
                .contains("Let me check the queue. The wait is about nine minutes.")
        })
    })
    .await;
    assert_eq!(
        spoken
            .transcript
            .iter()
            .filter(|t| t.role == Role::Agent)
            .count(),
        2
    );
}
