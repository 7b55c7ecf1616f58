//! The OpenAI adapter of the agent and summariser ports, through `async-openai`: Azure OpenAI
//! (`api-key` or an Entra token) or any OpenAI-compatible server, chat completions with tool
//! calling, streamed.
//!
//! Two things are done here rather than by async-openai's defaults, on purpose:
//! - Endpoint and auth are our own [`Config`] ([`Endpoint`]): `OpenAIConfig::new()` quietly
//!   reads `OPENAI_ORG_ID`/`OPENAI_PROJECT_ID`/`OPENAI_BASE_URL` from the environment, and
//!   `AzureConfig` always sends an `api-key` header (empty without a key), which does not mix
//!   with Entra tokens. Entra tokens change, so they are added per request as a header.
//! - Retries are ours. The default async-openai client hides a retry layer (3 retries, not
//!   configurable) behind every call; we install the plain reqwest transport with
//!   `with_http_service` and retry here, bounded by `AGENT_MAX_ATTEMPTS`, inside the request
//!   deadline, and only before the reply has started streaming, so no text is ever repeated.
//!   The transport records the status and `Retry-After` of each response, which async-openai's
//!   error type does not carry.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_openai::Client;
use async_openai::config::Config;
use async_openai::error::OpenAIError;
use async_openai::middleware::{HttpRequestFactory, ReqwestService};
use async_openai::traits::RequestOptionsBuilder;
use async_openai::types::chat::{
    ChatCompletionMessageToolCall, ChatCompletionMessageToolCalls,
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage,
    ChatCompletionRequestSystemMessage, ChatCompletionRequestSystemMessageContent,
    ChatCompletionRequestToolMessage, ChatCompletionRequestToolMessageContent,
    ChatCompletionRequestUserMessage, ChatCompletionRequestUserMessageContent,
    ChatCompletionResponseStream, ChatCompletionTool, ChatCompletionTools,
    CreateChatCompletionRequest, CreateChatCompletionStreamResponse, FinishReason, FunctionCall,
    FunctionObject,
};
use async_trait::async_trait;
use azure_core::credentials::TokenCredential;
use futures::stream::{self, BoxStream, StreamExt};
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderName, HeaderValue, RETRY_AFTER};
use secrecy::SecretString;
use tokio::time::{Instant, sleep, timeout_at};

use super::prompts::{self, Speaker};
use super::summary::{Summariser, fit_template_parameter};
use super::tools::tools_for;
use super::{Agent, AgentError, AgentEvent, AgentRequest, ToolCall};
use crate::config::{AgentBackend, AgentSettings};
use crate::domain::CustomerContext;

/// Entra ID scope of Azure OpenAI.
pub const AZURE_OPENAI_SCOPE: &str = "https://cognitiveservices.azure.com/.default";

/// Upper bound on the call summary (template parameter {{2}}), leaving room in the 1024-character
/// template body for the rest of the template.
pub const SUMMARY_MAX_CHARS: usize = 600;

#[derive(Debug, thiserror::Error)]
pub enum OpenAiSetupError {
    #[error("invalid OpenAI API key: not a valid header value")]
    InvalidKey,
    #[error("managed identity for Azure OpenAI: {0}")]
    Identity(String),
    #[error("AGENT_PROFILES_FILE: {0}")]
    Profiles(String),
}

/// The two ports an OpenAI backend provides.
pub type ModelPorts = (Arc<dyn Agent>, Arc<dyn Summariser>);

/// Builds the agent and summariser for an OpenAI backend; `None` for the scripted agent. The
/// profiles of `AGENT_PROFILES_FILE` are read here.
pub fn from_settings(
    settings: &AgentSettings,
    http: reqwest::Client,
) -> Result<Option<ModelPorts>, OpenAiSetupError> {
    let profiles = match &settings.profiles_file {
        Some(path) => prompts::load_profiles(path).map_err(OpenAiSetupError::Profiles)?,
        None => prompts::Profiles::new(),
    };
    from_settings_with_profiles(settings, http, profiles)
}

/// [`from_settings`] with the profiles already read.
pub fn from_settings_with_profiles(
    settings: &AgentSettings,
    http: reqwest::Client,
    profiles: prompts::Profiles,
) -> Result<Option<ModelPorts>, OpenAiSetupError> {
    let backend = match &settings.backend {
        AgentBackend::Scripted => return Ok(None),
        AgentBackend::AzureOpenAi {
            endpoint,
            deployment,
            api_version,
            api_key,
            managed_identity_client_id,
        } => {
            let auth = match api_key {
                Some(key) => {
                    Auth::Header(HeaderName::from_static("api-key"), key_value(key.expose())?)
                }
                None => Auth::Entra(
                    crate::identity::managed_identity(managed_identity_client_id.as_deref())
                        .map_err(|e| OpenAiSetupError::Identity(e.to_string()))?,
                ),
            };
            Backend::azure(http, endpoint, deployment, api_version, auth, settings)
        }
        AgentBackend::OpenAi {
            base_url,
            api_key,
            model,
        } => {
            let value = key_value(&format!("Bearer {}", api_key.expose()))?;
            Backend::compatible(
                http,
                base_url,
                model,
                Auth::Header(AUTHORIZATION, value),
                settings,
            )
        }
    };
    let backend = Arc::new(backend);
    Ok(Some((
        Arc::new(OpenAiAgent::new(backend.clone()).with_profiles(profiles)),
        Arc::new(OpenAiSummariser {
            backend,
            max_chars: SUMMARY_MAX_CHARS,
        }),
    )))
}

fn key_value(value: &str) -> Result<HeaderValue, OpenAiSetupError> {
    let mut value = HeaderValue::from_str(value).map_err(|_| OpenAiSetupError::InvalidKey)?;
    value.set_sensitive(true);
    Ok(value)
}

/// How requests are authenticated.
#[derive(Clone)]
pub enum Auth {
    /// A fixed header: `api-key: <key>` (Azure) or `Authorization: Bearer <key>`.
    Header(HeaderName, HeaderValue),
    /// An Entra token for [`AZURE_OPENAI_SCOPE`], fetched (and cached by the credential) per request.
    Entra(Arc<dyn TokenCredential>),
}

/// Where requests go: our [`Config`] for async-openai.
#[derive(Clone)]
struct Endpoint {
    /// Everything before `/chat/completions`.
    base: String,
    query: Vec<(String, String)>,
    headers: HeaderMap,
    /// async-openai's `Config` wants one; the real credential is in `headers`.
    unused_key: SecretString,
}

impl Config for Endpoint {
    fn headers(&self) -> HeaderMap {
        self.headers.clone()
    }
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
    fn query(&self) -> Vec<(&str, &str)> {
        self.query
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect()
    }
    fn api_base(&self) -> &str {
        &self.base
    }
    fn api_key(&self) -> &SecretString {
        &self.unused_key
    }
}

/// What the agent and the summariser share: the client, the model, the limits.
pub struct Backend {
    client: Client<Endpoint>,
    http: reqwest::Client,
    entra: Option<Arc<dyn TokenCredential>>,
    model: String,
    timeout: Duration,
    max_attempts: u32,
}

impl Backend {
    /// Azure OpenAI: `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`.
    pub fn azure(
        http: reqwest::Client,
        endpoint: &str,
        deployment: &str,
        api_version: &str,
        auth: Auth,
        settings: &AgentSettings,
    ) -> Self {
        let base = format!(
            "{}/openai/deployments/{deployment}",
            endpoint.trim_end_matches('/')
        );
        let query = vec![("api-version".to_owned(), api_version.to_owned())];
        Self::new(http, base, query, deployment, auth, settings)
    }

    /// Any OpenAI-compatible server: `{base_url}/chat/completions` with a bearer key.
    pub fn compatible(
        http: reqwest::Client,
        base_url: &str,
        model: &str,
        auth: Auth,
        settings: &AgentSettings,
    ) -> Self {
        let base = base_url.trim_end_matches('/').to_owned();
        Self::new(http, base, Vec::new(), model, auth, settings)
    }

    fn new(
        http: reqwest::Client,
        base: String,
        query: Vec<(String, String)>,
        model: &str,
        auth: Auth,
        settings: &AgentSettings,
    ) -> Self {
        let mut headers = HeaderMap::new();
        let entra = match auth {
            Auth::Header(name, value) => {
                headers.insert(name, value);
                None
            }
            Auth::Entra(credential) => Some(credential),
        };
        let endpoint = Endpoint {
            base,
            query,
            headers,
            unused_key: SecretString::from(String::new()),
        };
        Self {
            client: Client::build(http.clone(), endpoint),
            http,
            entra,
            model: model.to_owned(),
            timeout: settings.request_timeout,
            max_attempts: settings.max_attempts.max(1),
        }
    }

    /// A client for one attempt, whose transport records what the server answered.
    async fn attempt_client(
        &self,
        probe: &Probe,
    ) -> Result<(Client<Endpoint>, Option<HeaderValue>), Attempt> {
        let client = self.client.clone().with_http_service(ProbedTransport {
            inner: ReqwestService::new(self.http.clone()),
            probe: probe.clone(),
        });
        let bearer = match &self.entra {
            None => None,
            Some(credential) => {
                let token = credential
                    .get_token(&[AZURE_OPENAI_SCOPE], None)
                    .await
                    .map_err(|e| Attempt::Token(e.to_string()))?;
                let mut value = HeaderValue::from_str(&format!("Bearer {}", token.token.secret()))
                    .map_err(|_| Attempt::Token("token is not a valid header value".into()))?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        Ok((client, bearer))
    }

    async fn open_stream(
        &self,
        body: &CreateChatCompletionRequest,
        probe: &Probe,
    ) -> Result<ChatCompletionResponseStream, Attempt> {
        let (client, bearer) = self.attempt_client(probe).await?;
        let mut chat = client.chat();
        if let Some(bearer) = bearer {
            chat = chat.headers(HeaderMap::from_iter([(AUTHORIZATION, bearer)]));
        }
        chat.create_stream(body.clone()).await.map_err(Attempt::Api)
    }

    async fn complete(
        &self,
        body: &CreateChatCompletionRequest,
        probe: &Probe,
    ) -> Result<String, Attempt> {
        let (client, bearer) = self.attempt_client(probe).await?;
        let mut chat = client.chat();
        if let Some(bearer) = bearer {
            chat = chat.headers(HeaderMap::from_iter([(AUTHORIZATION, bearer)]));
        }
        let response = chat.create(body.clone()).await.map_err(Attempt::Api)?;
        Ok(response
            .choices
            .into_iter()
            .next()
            .and_then(|c| c.message.content)
            .unwrap_or_default())
    }

    /// Runs `attempt` until it succeeds, fails for good, runs out of attempts or of time.
    async fn with_retries<T, F, Fut>(&self, deadline: Instant, attempt: F) -> Result<T, AgentError>
    where
        F: Fn(Probe) -> Fut,
        Fut: Future<Output = Result<T, Attempt>>,
    {
        let mut number = 1;
        loop {
            let probe = Probe::default();
            let error = match timeout_at(deadline, attempt(probe.clone())).await {
                Err(_) => return Err(self.timed_out()),
                Ok(Ok(value)) => return Ok(value),
                Ok(Err(error)) => error,
            };
            let verdict = classify(&error, probe.seen());
            tracing::warn!(attempt = number, error = %verdict.message, "model request failed");
            match verdict.kind {
                Kind::Retry(hint) if number < self.max_attempts => {
                    let delay = hint.unwrap_or_else(|| backoff(number));
                    if Instant::now() + delay >= deadline {
                        return Err(AgentError::Unavailable(verdict.message));
                    }
                    sleep(delay).await;
                    number += 1;
                }
                Kind::Retry(_) | Kind::Unavailable => {
                    return Err(AgentError::Unavailable(verdict.message));
                }
                Kind::Failed => return Err(AgentError::Failed(verdict.message)),
            }
        }
    }

    fn timed_out(&self) -> AgentError {
        AgentError::Unavailable(format!(
            "model request timed out after {}s",
            self.timeout.as_secs_f32()
        ))
    }
}

fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(250)
        .saturating_mul(2u32.saturating_pow(attempt.saturating_sub(1)))
        .min(Duration::from_secs(4))
}

/// Why one attempt failed.
#[derive(Debug)]
enum Attempt {
    Api(OpenAIError),
    Token(String),
}

/// What the server answered to an attempt, as far as the transport saw it.
#[derive(Debug, Clone, Copy)]
struct Seen {
    status: StatusCode,
    retry_after: Option<Duration>,
}

#[derive(Debug, Clone, Default)]
struct Probe(Arc<Mutex<Option<Seen>>>);

impl Probe {
    fn record(&self, seen: Seen) {
        if let Ok(mut slot) = self.0.lock() {
            *slot = Some(seen);
        }
    }
    fn seen(&self) -> Option<Seen> {
        self.0.lock().ok().and_then(|slot| *slot)
    }
}

/// The plain reqwest transport of async-openai, recording each response's status and
/// `Retry-After` (seconds) or Azure's `retry-after-ms`.
#[derive(Clone)]
struct ProbedTransport {
    inner: ReqwestService,
    probe: Probe,
}

type TransportFuture =
    Pin<Box<dyn Future<Output = Result<reqwest::Response, OpenAIError>> + Send + 'static>>;

impl tower::Service<HttpRequestFactory> for ProbedTransport {
    type Response = reqwest::Response;
    type Error = OpenAIError;
    type Future = TransportFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequestFactory) -> Self::Future {
        let response = self.inner.call(request);
        let probe = self.probe.clone();
        Box::pin(async move {
            let response = response.await?;
            probe.record(Seen {
                status: response.status(),
                retry_after: retry_after(response.headers()),
            });
            Ok(response)
        })
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    header("retry-after-ms")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_millis)
        .or_else(|| {
            header(RETRY_AFTER.as_str())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(Duration::from_secs)
        })
}

enum Kind {
    /// Transient; worth another attempt, after the server's hint if it gave one.
    Retry(Option<Duration>),
    /// Transient, but not worth repeating now.
    Unavailable,
    Failed,
}

struct Verdict {
    kind: Kind,
    message: String,
}

/// Is this failure transient? One function over the typed errors.
fn classify(error: &Attempt, seen: Option<Seen>) -> Verdict {
    let verdict = |kind, message: String| Verdict {
        kind,
        message: message.chars().take(300).collect(),
    };
    let error = match error {
        Attempt::Token(problem) => {
            return verdict(Kind::Unavailable, format!("no Entra token: {problem}"));
        }
        Attempt::Api(error) => error,
    };
    let retry_hint = seen.and_then(|s| s.retry_after);
    let by_status = |status: StatusCode, detail: &str, quota: bool| {
        let message = format!("model server answered {status}: {detail}");
        if status == StatusCode::TOO_MANY_REQUESTS && quota {
            verdict(Kind::Failed, message)
        } else if status == StatusCode::TOO_MANY_REQUESTS
            || status == StatusCode::REQUEST_TIMEOUT
            || status.is_server_error()
        {
            verdict(Kind::Retry(retry_hint), message)
        } else {
            verdict(Kind::Failed, message)
        }
    };
    match error {
        OpenAIError::ApiError(api) => {
            let quota = api.api_error.r#type.as_deref() == Some("insufficient_quota")
                || api.api_error.code.as_deref() == Some("insufficient_quota");
            by_status(api.status_code, &api.api_error.message, quota)
        }
        // An error status whose body was not the usual JSON error object.
        OpenAIError::JSONDeserialize(_, _) if seen.is_some_and(|s| !s.status.is_success()) => {
            let status = seen.map(|s| s.status).unwrap_or_default();
            by_status(status, "unreadable error body", false)
        }
        OpenAIError::Reqwest(e) if e.is_connect() => verdict(
            Kind::Retry(None),
            format!("cannot connect to the model server: {e}"),
        ),
        OpenAIError::Reqwest(e) => verdict(Kind::Unavailable, format!("model request failed: {e}")),
        OpenAIError::StreamError(e) => {
            verdict(Kind::Unavailable, format!("reply stream broke: {e}"))
        }
        other => verdict(Kind::Failed, format!("model request failed: {other}")),
    }
}

/// The agent port on a chat-completions model.
#[derive(Clone)]
pub struct OpenAiAgent {
    backend: Arc<Backend>,
    profiles: Arc<prompts::Profiles>,
}

impl OpenAiAgent {
    pub fn new(backend: Arc<Backend>) -> Self {
        Self {
            backend,
            profiles: Arc::default(),
        }
    }

    /// The agent profiles whose instructions join the system prompt of a request naming one.
    pub fn with_profiles(mut self, profiles: prompts::Profiles) -> Self {
        self.profiles = Arc::new(profiles);
        self
    }
}

impl Agent for OpenAiAgent {
    fn respond(&self, request: AgentRequest) -> BoxStream<'static, Result<AgentEvent, AgentError>> {
        let turn = Turn {
            deadline: Instant::now() + self.backend.timeout,
            body: chat_request(&self.backend.model, &self.profiles, &request),
            backend: self.backend.clone(),
            phase: Phase::Connect,
        };
        stream::unfold(turn, |mut turn| async move {
            let item = turn.next().await?;
            Some((item, turn))
        })
        .boxed()
    }
}

/// One streamed reply, step by step.
struct Turn {
    backend: Arc<Backend>,
    body: CreateChatCompletionRequest,
    deadline: Instant,
    phase: Phase,
}

enum Phase {
    Connect,
    Streaming(ChatCompletionResponseStream, ToolCallAssembler),
    /// The reply is complete; its tool calls are handed out one by one.
    Calls(std::vec::IntoIter<ToolCall>),
    Done,
}

impl Turn {
    async fn next(&mut self) -> Option<Result<AgentEvent, AgentError>> {
        loop {
            match &mut self.phase {
                Phase::Connect => {
                    let backend = self.backend.clone();
                    let body = &self.body;
                    let opened = backend
                        .with_retries(self.deadline, |probe| {
                            let backend = backend.clone();
                            async move { backend.open_stream(body, &probe).await }
                        })
                        .await;
                    match opened {
                        Ok(stream) => {
                            self.phase = Phase::Streaming(stream, ToolCallAssembler::default());
                        }
                        Err(e) => return self.fail(e),
                    }
                }
                Phase::Streaming(stream, calls) => {
                    let chunk = match timeout_at(self.deadline, stream.next()).await {
                        Err(_) => {
                            let error = self.backend.timed_out();
                            return self.fail(error);
                        }
                        Ok(None) => {
                            let finished = std::mem::take(calls).finish();
                            match finished {
                                Ok(calls) => self.phase = Phase::Calls(calls.into_iter()),
                                Err(e) => return self.fail(e),
                            }
                            continue;
                        }
                        Ok(Some(Err(e))) => {
                            let verdict = classify(&Attempt::Api(e), None);
                            let error = match verdict.kind {
                                Kind::Failed => AgentError::Failed(verdict.message),
                                _ => AgentError::Unavailable(verdict.message),
                            };
                            return self.fail(error);
                        }
                        Ok(Some(Ok(chunk))) => chunk,
                    };
                    match calls.push(chunk) {
                        Err(e) => return self.fail(e),
                        Ok(Some(text)) => return Some(Ok(AgentEvent::Text(text))),
                        Ok(None) => {}
                    }
                }
                Phase::Calls(calls) => match calls.next() {
                    Some(call) => return Some(Ok(AgentEvent::ToolCall(call))),
                    None => self.phase = Phase::Done,
                },
                Phase::Done => return None,
            }
        }
    }

    fn fail(&mut self, error: AgentError) -> Option<Result<AgentEvent, AgentError>> {
        self.phase = Phase::Done;
        Some(Err(error))
    }
}

/// Collects the streamed fragments of the first choice: tool calls by index (id and name come
/// once, arguments in pieces), and how the reply finished.
#[derive(Default)]
struct ToolCallAssembler {
    calls: std::collections::BTreeMap<u32, PartialCall>,
    finish: Option<FinishReason>,
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

impl ToolCallAssembler {
    /// Takes in one chunk; returns its text, if any.
    fn push(
        &mut self,
        chunk: CreateChatCompletionStreamResponse,
    ) -> Result<Option<String>, AgentError> {
        let Some(choice) = chunk.choices.into_iter().find(|c| c.index == 0) else {
            // Azure sends a first chunk with no choices, only content-filter results.
            return Ok(None);
        };
        if let Some(reason) = choice.finish_reason {
            self.finish = Some(reason);
        }
        for fragment in choice.delta.tool_calls.unwrap_or_default() {
            let call = self.calls.entry(fragment.index).or_default();
            if let Some(id) = fragment.id.filter(|id| !id.is_empty()) {
                call.id = id;
            }
            if let Some(function) = fragment.function {
                if let Some(name) = function.name {
                    call.name.push_str(&name);
                }
                if let Some(arguments) = function.arguments {
                    call.arguments.push_str(&arguments);
                }
            }
        }
        if choice.finish_reason == Some(FinishReason::ContentFilter) {
            return Err(AgentError::Failed(
                "the model's reply was stopped by the content filter".into(),
            ));
        }
        Ok(choice.delta.content.filter(|text| !text.is_empty()))
    }

    fn finish(self) -> Result<Vec<ToolCall>, AgentError> {
        if self.finish.is_none() {
            // A stream that ends without saying why was cut off; its tool calls may be partial.
            return Err(AgentError::Unavailable(
                "the reply stream ended before the reply was complete".into(),
            ));
        }
        Ok(self
            .calls
            .into_iter()
            .filter(|(_, call)| !call.name.is_empty())
            .map(|(index, call)| {
                let arguments = if call.arguments.trim().is_empty() {
                    serde_json::json!({})
                } else {
                    // Kept as a string when it is not JSON: the engine reports bad arguments
                    // back to the model.
                    serde_json::from_str(&call.arguments)
                        .unwrap_or(serde_json::Value::String(call.arguments))
                };
                ToolCall {
                    id: if call.id.is_empty() {
                        format!("call_{index}")
                    } else {
                        call.id
                    },
                    name: call.name,
                    arguments,
                }
            })
            .collect())
    }
}

fn system(text: impl Into<String>) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::System(ChatCompletionRequestSystemMessage {
        content: ChatCompletionRequestSystemMessageContent::Text(text.into()),
        name: None,
    })
}

fn user(text: impl Into<String>) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::User(ChatCompletionRequestUserMessage {
        content: ChatCompletionRequestUserMessageContent::Text(text.into()),
        name: None,
    })
}

fn assistant(text: impl Into<String>) -> ChatCompletionRequestMessage {
    ChatCompletionRequestMessage::Assistant(ChatCompletionRequestAssistantMessage {
        content: Some(
            async_openai::types::chat::ChatCompletionRequestAssistantMessageContent::Text(
                text.into(),
            ),
        ),
        ..Default::default()
    })
}

/// The chat request for an agent turn: prompt (with the profile's instructions), context,
/// history, input, then the tool rounds.
fn chat_request(
    model: &str,
    profiles: &prompts::Profiles,
    request: &AgentRequest,
) -> CreateChatCompletionRequest {
    let prompt = prompts::build(request);
    let mut messages = vec![system(prompt.system)];
    if let Some(instructions) = prompts::profile_instructions(profiles, request) {
        messages.push(system(instructions));
    }
    messages.push(system(prompt.context));
    for (speaker, text) in prompt.history {
        messages.push(match speaker {
            Speaker::Customer => user(text),
            Speaker::Agent => assistant(text),
            Speaker::Note => system(text),
        });
    }
    messages.push(user(prompt.input));
    if !request.tool_results.is_empty() {
        let calls = request
            .tool_results
            .iter()
            .map(|r| {
                ChatCompletionMessageToolCalls::Function(ChatCompletionMessageToolCall {
                    id: r.call.id.clone(),
                    function: FunctionCall {
                        name: r.call.name.clone(),
                        arguments: match &r.call.arguments {
                            serde_json::Value::String(raw) => raw.clone(),
                            other => other.to_string(),
                        },
                    },
                })
            })
            .collect();
        messages.push(ChatCompletionRequestMessage::Assistant(
            ChatCompletionRequestAssistantMessage {
                tool_calls: Some(calls),
                ..Default::default()
            },
        ));
        for result in &request.tool_results {
            messages.push(ChatCompletionRequestMessage::Tool(
                ChatCompletionRequestToolMessage {
                    content: ChatCompletionRequestToolMessageContent::Text(
                        result.output.to_string(),
                    ),
                    tool_call_id: result.call.id.clone(),
                },
            ));
        }
    }
    let tools = tools_for(request.channel)
        .into_iter()
        .map(|tool| {
            ChatCompletionTools::Function(ChatCompletionTool {
                function: FunctionObject {
                    name: tool.name.to_owned(),
                    description: Some(tool.description.to_owned()),
                    parameters: Some(tool.parameters),
                    strict: None,
                },
            })
        })
        .collect();
    CreateChatCompletionRequest {
        model: model.to_owned(),
        messages,
        tools: Some(tools),
        stream: Some(true),
        ..Default::default()
    }
}

/// The summariser port on a chat-completions model: a short summary of the call, addressed to
/// the customer, fitted to the template parameter rules.
#[derive(Clone)]
pub struct OpenAiSummariser {
    backend: Arc<Backend>,
    max_chars: usize,
}

impl OpenAiSummariser {
    pub fn new(backend: Arc<Backend>, max_chars: usize) -> Self {
        Self { backend, max_chars }
    }
}

#[async_trait]
impl Summariser for OpenAiSummariser {
    async fn summarise(&self, context: &CustomerContext) -> Result<String, AgentError> {
        let (instructions, call) = prompts::summary_prompt(context);
        let body = CreateChatCompletionRequest {
            model: self.backend.model.clone(),
            messages: vec![system(instructions), user(call)],
            ..Default::default()
        };
        let deadline = Instant::now() + self.backend.timeout;
        let backend = &self.backend;
        let body = &body;
        let text = backend
            .with_retries(deadline, |probe| async move {
                backend.complete(body, &probe).await
            })
            .await?;
        let summary = fit_template_parameter(&text, self.max_chars.max(16));
        if summary.is_empty() {
            return Err(AgentError::Failed(
                "the model returned an empty summary".into(),
            ));
        }
        Ok(summary)
    }
}
