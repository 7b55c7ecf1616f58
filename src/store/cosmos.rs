//! Azure Cosmos DB for NoSQL adapter (`azure_data_cosmos` 1.0): the context store and a claim
//! store, in one database (`COSMOS_DATABASE`) with two containers.
//!
//! # Documents
//!
//! Both containers are partitioned on `/customerId`.
//!
//! - `customers`: one document per customer.
//!   `{"id": <encoded id>, "customerId": <CustomerId::as_str()>, "context": <CustomerContext>}`.
//!   The context is nested under `context` rather than flattened, so that no context field can
//!   ever collide with Cosmos DB's own properties (`id`, `ttl`, `_etag`, `_ts`, ...). The
//!   document's `_etag` is the context's [`Version`]; replaces carry it in `If-Match`.
//! - `claims`: one document per claimed key, default TTL -1 (TTL on, items say when they go).
//!   `{"id": <encoded key>, "customerId": <key>, "ttl": <seconds>, "expiresAt": <unix millis>}`.
//!   The claim key is its own partition: claims of unrelated keys never contend.
//!
//! Ids are the canonical value with the four characters Cosmos DB forbids in ids (`/`, `\`,
//! `?`, `#`) and `%` percent-encoded ([`encode_id`]), so `+14255550123` and `bsuid:US.1349`
//! are stored as they are. The partition key (`customerId`) holds the value unencoded.
//!
//! # Start-up and failures
//!
//! [`CosmosStore::new`] does no I/O: building the SDK client already talks to the account, so
//! the client, the database and both containers are set up on first use (and again on the next
//! call if that failed). The service therefore starts while Cosmos DB is down and readiness
//! names it. The database and containers are created only when missing; with Entra ID auth the
//! data-plane role cannot create them, so infra must provision them (the error says so).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use azure_core::credentials::{Secret as AzureSecret, TokenCredential};
use azure_data_cosmos::clients::{ContainerClient, DatabaseClient};
use azure_data_cosmos::models::{ContainerProperties, ItemResponse, TimeToLive};
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, ItemWriteOptions, OperationOptionsBuilder,
    Precondition, ThrottlingRetryOptionsBuilder,
};
use azure_data_cosmos::{
    AccountEndpoint, AccountReference, CosmosClient, CosmosClientBuilder, CosmosError,
    CosmosRuntime, FeedScope, Query, RoutingStrategy,
};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::OnceCell;

use super::handoffs::HandoffStore;
use super::{Claim, ClaimStore, ContextStore, HealthCheck, StoreError};
use crate::config::CosmosSettings;
use crate::domain::{CustomerContext, CustomerId, Handoff, HandoffId, Version};

const BACKEND: &str = "cosmos";
pub const CUSTOMERS_CONTAINER: &str = "customers";
pub const CLAIMS_CONTAINER: &str = "claims";
pub const HANDOFFS_CONTAINER: &str = "handoffs";
const PARTITION_KEY_PATH: &str = "/customerId";

/// How long a TCP connect may take. The SDK's default (5 s) is longer than readiness's 3 s
/// deadline; a closed port is refused at once anyway, this bounds a black-holed one.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Bound on one metadata request (account, database, container reads) during set-up; the
/// SDK's default is 65 s.
const METADATA_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest the SDK may spend waiting out throttling (429, it honours `x-ms-retry-after-ms`)
/// before the request fails as unavailable; its default (30 s) outlasts the service's own
/// request timeout (25 s), and a webhook answered 503 is simply redelivered.
const THROTTLE_RETRY_WAIT: Duration = Duration::from_secs(10);
/// How often `claim` goes round create → read → replace when the key keeps changing under it.
const CLAIM_ATTEMPTS: u32 = 4;

/// Where this store's SDK objects live once set up.
struct Ready {
    database: DatabaseClient,
    customers: ContainerClient,
    claims: ContainerClient,
    handoffs: ContainerClient,
}

/// Cosmos DB context and claim store. Cheap to share behind an `Arc`; one SDK client each.
pub struct CosmosStore {
    endpoint: AccountEndpoint,
    database: String,
    auth: Auth,
    ready: OnceCell<Ready>,
    /// One set-up attempt at a time ...
    set_up_turn: tokio::sync::Mutex<()>,
    /// ... and callers who queued behind a failed attempt share its outcome instead of each
    /// trying again in turn (which would make the last of N callers wait N attempts).
    last_failure: std::sync::Mutex<Option<(Instant, StoreError)>>,
}

#[derive(Clone)]
enum Auth {
    Key(AzureSecret),
    Token(Arc<dyn TokenCredential>),
}

impl fmt::Debug for CosmosStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CosmosStore")
            .field("endpoint", &self.endpoint.url().as_str())
            .field("database", &self.database)
            .field(
                "auth",
                &match self.auth {
                    Auth::Key(_) => "key",
                    Auth::Token(_) => "entra-id",
                },
            )
            .finish_non_exhaustive()
    }
}

impl CosmosStore {
    /// Validates the settings and prepares the credential; no network I/O.
    pub fn new(settings: &CosmosSettings) -> Result<Self, StoreError> {
        let endpoint: AccountEndpoint = settings
            .endpoint
            .parse()
            .map_err(|e: CosmosError| StoreError::backend(BACKEND, describe(&e)))?;
        if settings.database.trim().is_empty() {
            return Err(StoreError::backend(BACKEND, "COSMOS_DATABASE is empty"));
        }
        let auth = match &settings.key {
            Some(key) => Auth::Key(AzureSecret::new(key.expose().clone())),
            None => Auth::Token(entra_id_credential(
                settings.managed_identity_client_id.as_deref(),
                &|name| std::env::var(name).ok(),
            )?),
        };
        Ok(Self {
            endpoint,
            database: settings.database.clone(),
            auth,
            ready: OnceCell::new(),
            set_up_turn: tokio::sync::Mutex::new(()),
            last_failure: std::sync::Mutex::new(None),
        })
    }

    /// The SDK objects, setting them up on first use. A failed set-up is tried again by the
    /// next call; calls that were already waiting for it get its error.
    async fn ready(&self) -> Result<&Ready, StoreError> {
        if let Some(ready) = self.ready.get() {
            return Ok(ready);
        }
        let asked = Instant::now();
        let _turn = self.set_up_turn.lock().await;
        if let Some(ready) = self.ready.get() {
            return Ok(ready);
        }
        if let Some((at, err)) = &*self.last_failure.lock().expect("not poisoned")
            && *at >= asked
        {
            return Err(err.clone());
        }
        match self.set_up().await {
            Ok(ready) => Ok(self.ready.get_or_init(|| async { ready }).await),
            Err(err) => {
                *self.last_failure.lock().expect("not poisoned") =
                    Some((Instant::now(), err.clone()));
                Err(err)
            }
        }
    }

    async fn set_up(&self) -> Result<Ready, StoreError> {
        let client = self.client().await?;
        let database = client.database_client(self.database.as_str());
        let customers = self
            .container(&client, &database, CUSTOMERS_CONTAINER, TimeToLive::Forever)
            .await?;
        // TTL on with no default: each claim carries its own `ttl`.
        let claims = self
            .container(&client, &database, CLAIMS_CONTAINER, TimeToLive::NoDefault)
            .await?;
        let handoffs = self
            .container(&client, &database, HANDOFFS_CONTAINER, TimeToLive::Forever)
            .await?;
        tracing::info!(database = %self.database, "cosmos containers ready");
        Ok(Ready {
            database,
            customers,
            claims,
            handoffs,
        })
    }

    async fn client(&self) -> Result<CosmosClient, StoreError> {
        let mut pool = ConnectionPoolOptions::builder()
            .with_max_connect_timeout(CONNECT_TIMEOUT)
            .with_max_metadata_request_timeout(METADATA_REQUEST_TIMEOUT);
        if self.endpoint.url().scheme() == "http" {
            // Plain HTTP is only accepted for emulator hosts (loopback). SDK quirk: it probes
            // HTTP/2 first and should fall back to HTTP/1.1, but against an HTTP/1.1-only
            // server the probe sometimes fails as 503/20011 (I/O) instead, failing set-up.
            pool = pool.with_is_http2_allowed(false);
        }
        let pool = pool.build().map_err(|e| map_error(&e))?;
        // One runtime per store rather than the SDK's process-wide one: the runtime owns
        // background tasks, which must not outlive the tokio runtime that spawned them.
        let runtime = CosmosRuntime::builder()
            .with_connection_pool(pool)
            .build()
            .await
            .map_err(|e| map_error(&e))?;
        let account = match &self.auth {
            Auth::Key(key) => {
                AccountReference::with_authentication_key(self.endpoint.clone(), key.clone())
            }
            Auth::Token(credential) => {
                AccountReference::with_credential(self.endpoint.clone(), credential.clone())
            }
        };
        let operation = OperationOptionsBuilder::new()
            .with_throttling_retry_options(
                ThrottlingRetryOptionsBuilder::new()
                    .with_max_retry_wait_time(THROTTLE_RETRY_WAIT)
                    .build(),
            )
            .build();
        CosmosClientBuilder::new()
            .with_runtime(runtime)
            .with_default_operation_options(operation)
            // SDK quirk: binary encoding is on by default and the item bodies it writes are
            // Cosmos binary JSON, which only the real service understands (every write to the
            // test server fails with a JSON parse error). Text JSON is always accepted.
            .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false))
            // The account's own region order: the service has no region setting of its own.
            .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
            .await
            .map_err(|e| map_error(&e))
    }

    /// Resolves a container, creating the database and the container when missing.
    async fn container(
        &self,
        client: &CosmosClient,
        database: &DatabaseClient,
        name: &'static str,
        ttl: TimeToLive,
    ) -> Result<ContainerClient, StoreError> {
        match database.container_client(name, None).await {
            Ok(container) => return Ok(container),
            Err(err) if err.status().status_code() == 404 => {}
            Err(err) => return Err(map_error(&err)),
        }
        tracing::info!(database = %self.database, container = name, "creating cosmos container");
        let missing_hint = |err: &CosmosError| {
            if matches!(self.auth, Auth::Token(_)) && is_forbidden(err) {
                StoreError::backend(
                    BACKEND,
                    format!(
                        "database `{}` or container `{name}` is missing and Entra ID data-plane \
                         roles cannot create them; provision them with infra ({})",
                        self.database,
                        describe(err)
                    ),
                )
            } else {
                map_error(err)
            }
        };
        match client.create_database(&self.database, None).await {
            Ok(_) => {}
            Err(err) if err.status().is_conflict() => {}
            Err(err) => return Err(missing_hint(&err)),
        }
        let properties =
            ContainerProperties::new(name, PARTITION_KEY_PATH.into()).with_default_ttl(ttl);
        match database.create_container(properties, None).await {
            Ok(_) => {}
            Err(err) if err.status().is_conflict() => {}
            Err(err) => return Err(missing_hint(&err)),
        }
        database
            .container_client(name, None)
            .await
            .map_err(|e| map_error(&e))
    }
}

impl CosmosStore {
    /// Another container of this database (partition key `/customerId`, TTL on with no default),
    /// created when missing; for adapters of further ports (the WhatsApp inbox and message log).
    pub(crate) async fn extra_container(
        &self,
        name: &'static str,
    ) -> Result<ContainerClient, StoreError> {
        let ready = self.ready().await?;
        match ready.database.container_client(name, None).await {
            Ok(container) => return Ok(container),
            Err(err) if err.status().status_code() == 404 => {}
            Err(err) => return Err(map_error(&err)),
        }
        let properties = ContainerProperties::new(name, PARTITION_KEY_PATH.into())
            .with_default_ttl(TimeToLive::NoDefault);
        match ready.database.create_container(properties, None).await {
            Ok(_) => {}
            Err(err) if err.status().is_conflict() => {}
            Err(err) => return Err(map_error(&err)),
        }
        ready
            .database
            .container_client(name, None)
            .await
            .map_err(|e| map_error(&e))
    }
}

fn is_forbidden(err: &CosmosError) -> bool {
    err.status().is_forbidden() || err.status().is_unauthorized()
}

// ---------------------------------------------------------------------------------------------
// Entra ID

/// Which Entra ID credential the service uses when no account key is configured.
#[derive(Debug, Clone, PartialEq, Eq)]
enum CredentialKind {
    /// Managed identity (Container Apps, App Service, VMs): user-assigned when a client id is
    /// configured (`AZURE_CLIENT_ID`), system-assigned otherwise. See [`crate::identity`].
    Managed,
    /// Azure CLI, then Azure Developer CLI: a developer's own login, for running against a real
    /// account from a laptop.
    DeveloperTools,
}

/// Picks the credential without probing anything (`azure_identity` 1.0 has no default chain,
/// and probing IMDS off Azure takes over a minute of retries). `AZURE_TOKEN_CREDENTIALS`
/// (the Azure SDKs' own switch: `ManagedIdentityCredential`/`prod` or
/// `DeveloperToolsCredential`/`dev`) decides when set. Otherwise: managed identity when a
/// client id is configured or the platform advertises a managed identity endpoint
/// (`IDENTITY_ENDPOINT`, `MSI_ENDPOINT`: Container Apps, App Service), else the developer's CLI
/// login. A VM with only a system-assigned identity sets `AZURE_TOKEN_CREDENTIALS=prod`.
fn credential_kind(
    client_id: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<CredentialKind, StoreError> {
    let var = |name: &str| env(name).filter(|v| !v.trim().is_empty());
    if let Some(choice) = var("AZURE_TOKEN_CREDENTIALS") {
        return match choice.trim().to_ascii_lowercase().as_str() {
            "managedidentitycredential" | "prod" => Ok(CredentialKind::Managed),
            "developertoolscredential" | "azureclicredential" | "dev" => {
                Ok(CredentialKind::DeveloperTools)
            }
            other => Err(StoreError::backend(
                BACKEND,
                format!(
                    "AZURE_TOKEN_CREDENTIALS: `{other}` is not one of ManagedIdentityCredential, \
                     DeveloperToolsCredential, prod, dev"
                ),
            )),
        };
    }
    let platform_identity = var("IDENTITY_ENDPOINT").is_some() || var("MSI_ENDPOINT").is_some();
    if client_id.is_some() || platform_identity {
        Ok(CredentialKind::Managed)
    } else {
        Ok(CredentialKind::DeveloperTools)
    }
}

/// Builds the credential (no I/O: tokens are fetched on the first request).
fn entra_id_credential(
    client_id: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Arc<dyn TokenCredential>, StoreError> {
    let kind = credential_kind(client_id, env)?;
    tracing::info!(credential = ?kind, user_assigned = client_id.is_some(), "cosmos uses Entra ID");
    let credential = match kind {
        CredentialKind::Managed => crate::identity::managed_identity(client_id),
        CredentialKind::DeveloperTools => azure_identity::DeveloperToolsCredential::new(None)
            .map(|c| c as Arc<dyn TokenCredential>),
    };
    credential.map_err(|e| StoreError::backend(BACKEND, format!("Entra ID credential: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Documents

/// Percent-encodes the characters Cosmos DB does not allow in an id (`/`, `\`, `?`, `#`) and
/// `%` itself, so that distinct keys always get distinct ids. Everything else (`+`, `:`, `.`)
/// is kept, so ids stay readable.
pub fn encode_id(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '/' | '\\' | '?' | '#' | '%' => out.push_str(&format!("%{:02X}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct CustomerDocOut<'a> {
    id: &'a str,
    customer_id: &'a str,
    context: &'a CustomerContext,
}

#[derive(Deserialize)]
struct CustomerDocIn {
    context: CustomerContext,
    #[serde(rename = "_etag")]
    etag: Option<String>,
}

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ClaimDoc {
    id: String,
    customer_id: String,
    /// Seconds; Cosmos DB deletes the item this long after its last write.
    ttl: u64,
    /// When the claim lapses, Unix millis. TTL deletion is lazy, so an item may outlive its
    /// `ttl` for a while: this is what decides.
    expires_at: u64,
    #[serde(rename = "_etag", default, skip_serializing)]
    etag: Option<String>,
}

impl ClaimDoc {
    fn new(key: &str, ttl: Duration, now_millis: u64) -> Self {
        Self {
            id: encode_id(key),
            customer_id: key.to_owned(),
            // Whole seconds, rounded up, at least 1 (0 would mean "use the default").
            ttl: ttl.as_millis().div_ceil(1000).max(1) as u64,
            expires_at: now_millis.saturating_add(ttl.as_millis() as u64),
            etag: None,
        }
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub(crate) fn etag_of(response: &ItemResponse) -> Option<String> {
    response.headers().etag().map(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Errors

/// What a Cosmos DB status means to this adapter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Outcome {
    NotFound,
    Conflict,
    PreconditionFailed,
    Transient,
    Permanent,
}

/// Classifies a status (HTTP code, sub-status). The SDK reports transport failures as
/// synthetic statuses: connection refused / DNS / I/O are 503 with sub-status 2001x, its own
/// timeouts 408, a failed token request 401/20402.
fn classify(status: u16, sub_status: Option<u16>) -> Outcome {
    match (status, sub_status.unwrap_or(0)) {
        (404, 0) => Outcome::NotFound,
        // 404/1002: read session not yet available on this replica; retrying helps.
        (404, 1002) => Outcome::Transient,
        (409, _) => Outcome::Conflict,
        (412, _) => Outcome::PreconditionFailed,
        (408 | 410 | 429 | 449 | 502 | 503 | 504, _) => Outcome::Transient,
        // Token acquisition failed (managed identity endpoint unreachable, ...).
        (401, 20402) => Outcome::Transient,
        // A service-side 500; the SDK's own 500s carry a sub-status (20xxx) and are bugs or
        // undecodable data, which retrying will not fix.
        (500, 0) => Outcome::Transient,
        _ => Outcome::Permanent,
    }
}

pub(crate) fn outcome(err: &CosmosError) -> Outcome {
    let status = err.status();
    classify(
        u16::from(status.status_code()),
        status.sub_status().map(|s| s.value()),
    )
}

/// The SDK's one-line rendering plus the innermost cause (e.g. "Connection refused"), which
/// the rendering leaves out.
pub(crate) fn describe(err: &CosmosError) -> String {
    use std::error::Error as _;
    let mut text = err.to_string();
    let mut cause = err.source();
    let mut innermost = None;
    while let Some(c) = cause {
        innermost = Some(c.to_string());
        cause = c.source();
    }
    if let Some(innermost) = innermost.filter(|c| !text.contains(c.as_str())) {
        text.push_str(": ");
        text.push_str(&innermost);
    }
    text
}

/// Maps an error that has no operation-specific meaning.
pub(crate) fn map_error(err: &CosmosError) -> StoreError {
    match outcome(err) {
        Outcome::Transient => StoreError::unavailable(BACKEND, describe(err)),
        _ => StoreError::backend(BACKEND, describe(err)),
    }
}

fn decode_error(err: impl fmt::Display) -> StoreError {
    StoreError::backend(BACKEND, format!("undecodable document: {err}"))
}

// ---------------------------------------------------------------------------------------------
// Ports

#[async_trait]
impl ContextStore for CosmosStore {
    async fn get(&self, id: &CustomerId) -> Result<Option<CustomerContext>, StoreError> {
        let ready = self.ready().await?;
        // SDK quirk: a `PartitionKey` built from a string must own it (`&'static str` or
        // `String`), hence the `to_owned()` on every partition key value.
        let response = match ready
            .customers
            .read_item(id.as_str().to_owned(), &encode_id(id.as_str()), None)
            .await
        {
            Ok(response) => response,
            Err(err) if outcome(&err) == Outcome::NotFound => return Ok(None),
            Err(err) => return Err(map_error(&err)),
        };
        let header_etag = etag_of(&response);
        let doc: CustomerDocIn = response
            .into_model()
            .map_err(|e| decode_error(describe(&e)))?;
        let etag = doc
            .etag
            .or(header_etag)
            .ok_or_else(|| StoreError::backend(BACKEND, "customer document without _etag"))?;
        let mut ctx = doc.context;
        ctx.version = Some(Version::new(etag));
        Ok(Some(ctx))
    }

    async fn create(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
        let ready = self.ready().await?;
        let key = ctx.customer_id.as_str();
        let id = encode_id(key);
        let doc = CustomerDocOut {
            id: &id,
            customer_id: key,
            context: ctx,
        };
        let response = ready
            .customers
            .create_item(key.to_owned(), &id, &doc, None)
            .await
            .map_err(|err| match outcome(&err) {
                Outcome::Conflict => StoreError::AlreadyExists,
                _ => map_error(&err),
            })?;
        stored(ctx, &response)
    }

    async fn replace(&self, ctx: &CustomerContext) -> Result<CustomerContext, StoreError> {
        // Without a version this would be a blind overwrite, which may lose an update.
        let Some(version) = &ctx.version else {
            return Err(StoreError::Conflict);
        };
        let ready = self.ready().await?;
        let key = ctx.customer_id.as_str();
        let id = encode_id(key);
        let doc = CustomerDocOut {
            id: &id,
            customer_id: key,
            context: ctx,
        };
        let options = ItemWriteOptions::default()
            .with_precondition(Precondition::if_match(version.as_str().to_owned()));
        let response = ready
            .customers
            .replace_item(key.to_owned(), &id, &doc, Some(options))
            .await
            .map_err(|err| match outcome(&err) {
                Outcome::PreconditionFailed => StoreError::Conflict,
                Outcome::NotFound => StoreError::NotFound,
                _ => map_error(&err),
            })?;
        stored(ctx, &response)
    }
}

/// The context as written, versioned with the new `_etag` from the write response. SDK quirk:
/// writes return no body by default (`content_response_on_write` off), so the `ETag` header
/// is the only place the new version appears.
fn stored(ctx: &CustomerContext, response: &ItemResponse) -> Result<CustomerContext, StoreError> {
    let etag = etag_of(response)
        .ok_or_else(|| StoreError::backend(BACKEND, "write response without an ETag"))?;
    let mut ctx = ctx.clone();
    ctx.version = Some(Version::new(etag));
    Ok(ctx)
}

#[async_trait]
impl ClaimStore for CosmosStore {
    async fn claim(&self, key: &str, ttl: Duration) -> Result<Claim, StoreError> {
        let ready = self.ready().await?;
        let id = encode_id(key);
        for _ in 0..CLAIM_ATTEMPTS {
            let doc = ClaimDoc::new(key, ttl, now_millis());
            match ready
                .claims
                .create_item(key.to_owned(), &id, &doc, None)
                .await
            {
                Ok(_) => return Ok(Claim::Fresh),
                Err(err) if outcome(&err) == Outcome::Conflict => {}
                Err(err) => return Err(map_error(&err)),
            }
            // Someone holds the key, or held it: TTL deletion is lazy (in Cosmos DB and in the
            // test server), so an expired claim can still be there. Its `expiresAt` decides.
            let existing: ClaimDoc = match ready.claims.read_item(key.to_owned(), &id, None).await {
                Ok(response) => {
                    let header_etag = etag_of(&response);
                    let mut doc: ClaimDoc = response
                        .into_model()
                        .map_err(|e| decode_error(describe(&e)))?;
                    doc.etag = doc.etag.or(header_etag);
                    doc
                }
                // Expired and deleted in between: try to create it again.
                Err(err) if outcome(&err) == Outcome::NotFound => continue,
                Err(err) => return Err(map_error(&err)),
            };
            if existing.expires_at > now_millis() {
                return Ok(Claim::Duplicate);
            }
            let Some(etag) = existing.etag else {
                return Err(StoreError::backend(BACKEND, "claim document without _etag"));
            };
            // Take over the lapsed claim, unless another claimer got there first.
            let doc = ClaimDoc::new(key, ttl, now_millis());
            let options =
                ItemWriteOptions::default().with_precondition(Precondition::if_match(etag));
            match ready
                .claims
                .replace_item(key.to_owned(), &id, &doc, Some(options))
                .await
            {
                Ok(_) => return Ok(Claim::Fresh),
                Err(err) if outcome(&err) == Outcome::PreconditionFailed => {
                    return Ok(Claim::Duplicate);
                }
                Err(err) if outcome(&err) == Outcome::NotFound => continue,
                Err(err) => return Err(map_error(&err)),
            }
        }
        Err(StoreError::unavailable(
            BACKEND,
            format!("claim kept changing during {CLAIM_ATTEMPTS} attempts"),
        ))
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let ready = self.ready().await?;
        match ready
            .claims
            .delete_item(key.to_owned(), &encode_id(key), None)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if outcome(&err) == Outcome::NotFound => Ok(()),
            Err(err) => Err(map_error(&err)),
        }
    }
}

#[async_trait]
impl HealthCheck for CosmosStore {
    fn name(&self) -> &'static str {
        BACKEND
    }

    async fn check(&self) -> Result<(), StoreError> {
        // Set-up (first time) plus a real round trip every time.
        let ready = self.ready().await?;
        ready
            .database
            .read(None)
            .await
            .map(drop)
            .map_err(|e| map_error(&e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_keep_phone_numbers_and_prefixes_readable() {
        assert_eq!(encode_id("+14255550123"), "+14255550123");
        assert_eq!(encode_id("bsuid:US.1349120865"), "bsuid:US.1349120865");
        assert_eq!(encode_id("acs:8:acs:abc-123_x"), "acs:8:acs:abc-123_x");
    }

    #[test]
    fn ids_encode_what_cosmos_forbids_and_stay_distinct() {
        assert_eq!(encode_id(r"a/b\c?d#e%f"), "a%2Fb%5Cc%3Fd%23e%25f");
        // `%` is encoded too, so an encoded-looking key cannot collide with an encoded one.
        assert_ne!(encode_id("a/b"), encode_id("a%2Fb"));
        for id in [encode_id("x/y"), encode_id("?#\\")] {
            assert!(!id.contains(['/', '\\', '?', '#']));
        }
    }

    #[test]
    fn statuses_map_to_store_outcomes() {
        assert_eq!(classify(404, None), Outcome::NotFound);
        assert_eq!(classify(404, Some(0)), Outcome::NotFound);
        assert_eq!(classify(409, None), Outcome::Conflict);
        assert_eq!(classify(412, None), Outcome::PreconditionFailed);
        // Throttling, timeouts, the SDK's synthetic transport failures (connection refused is
        // 503/20010), a failed token request, and a session not yet caught up: transient.
        for (status, sub) in [
            (429, None),
            (429, Some(3200)),
            (408, Some(20008)),
            (503, None),
            (503, Some(20010)),
            (503, Some(20003)),
            (410, Some(1002)),
            (449, None),
            (401, Some(20402)),
            (404, Some(1002)),
            (500, None),
        ] {
            assert_eq!(
                classify(status, sub),
                Outcome::Transient,
                "{status}/{sub:?}"
            );
        }
        // Refusals and the SDK's own failures (bad request body, undecodable response): for good.
        for (status, sub) in [
            (400, None),
            (401, None),
            (403, None),
            (403, Some(3)),
            (404, Some(1003)),
            (413, None),
            (500, Some(20020)),
        ] {
            assert_eq!(
                classify(status, sub),
                Outcome::Permanent,
                "{status}/{sub:?}"
            );
        }
    }

    #[test]
    fn claim_ttl_rounds_up_to_whole_seconds() {
        let doc = ClaimDoc::new("k", Duration::from_millis(1500), 1_000);
        assert_eq!(doc.ttl, 2);
        assert_eq!(doc.expires_at, 2_500);
        assert_eq!(ClaimDoc::new("k", Duration::ZERO, 0).ttl, 1);
        let json = serde_json::to_value(ClaimDoc::new("a/b", Duration::from_secs(60), 5)).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"id": "a%2Fb", "customerId": "a/b", "ttl": 60, "expiresAt": 60_005})
        );
    }

    #[test]
    fn customer_documents_nest_the_context_next_to_id_and_partition_key() {
        let id = CustomerId::parse_phone("+14255550123").unwrap();
        let ctx = CustomerContext::new(id, chrono::DateTime::from_timestamp(0, 0).unwrap());
        let doc = CustomerDocOut {
            id: &encode_id(ctx.customer_id.as_str()),
            customer_id: ctx.customer_id.as_str(),
            context: &ctx,
        };
        let json = serde_json::to_value(&doc).unwrap();
        assert_eq!(json["id"], "+14255550123");
        assert_eq!(json["customerId"], "+14255550123");
        assert_eq!(json["context"]["customer_id"], "+14255550123");
    }

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn credential_follows_the_environment() {
        use CredentialKind::{DeveloperTools, Managed};
        let kind = |client_id, vars| credential_kind(client_id, &env(vars)).unwrap();
        // A laptop: the developer's CLI login.
        assert_eq!(kind(None, &[]), DeveloperTools);
        // Container Apps / App Service advertise their identity endpoint.
        let platform = [("IDENTITY_ENDPOINT", "http://localhost:42356/msi/token")];
        assert_eq!(kind(None, &platform), Managed);
        // A configured user-assigned identity.
        assert_eq!(kind(Some("0f0e-client"), &[]), Managed);
        // The Azure SDKs' explicit switch wins.
        assert_eq!(kind(None, &[("AZURE_TOKEN_CREDENTIALS", "prod")]), Managed);
        let dev = [("AZURE_TOKEN_CREDENTIALS", "dev"), platform[0]];
        assert_eq!(kind(Some("c"), &dev), DeveloperTools);
        assert!(credential_kind(None, &env(&[("AZURE_TOKEN_CREDENTIALS", "magic")])).is_err());
    }

    #[test]
    fn new_does_no_io_and_rejects_a_bad_endpoint() {
        let settings = |endpoint: &str| CosmosSettings {
            endpoint: endpoint.into(),
            key: Some(crate::config::Secret::new("a2V5".into())),
            database: "handoff".into(),
            managed_identity_client_id: None,
        };
        // Port 9 (discard) on loopback: nothing listens, and nothing is contacted yet.
        assert!(CosmosStore::new(&settings("http://127.0.0.1:9")).is_ok());
        assert!(CosmosStore::new(&settings("not a url")).is_err());
    }
}

// ---------------------------------------------------------------------------------------------
// Handoffs: `{id, customerId, unfinished, createdAt, handoff}` in the `handoffs` container,
// partitioned by customer. `unfinished` is denormalised so the recovery sweep can ask for
// exactly the sagas it must drive. Cross-partition queries carry no ORDER BY (which would need
// the SDK's query-plan rewriting); results are sorted here.

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct HandoffDocOut<'a> {
    id: &'a str,
    customer_id: &'a str,
    unfinished: bool,
    created_at: i64,
    handoff: &'a Handoff,
}

#[derive(Deserialize)]
struct HandoffDocIn {
    handoff: Handoff,
    #[serde(rename = "_etag")]
    etag: Option<String>,
}

impl HandoffDocIn {
    fn into_handoff(self) -> Result<Handoff, StoreError> {
        let mut handoff = self.handoff;
        let etag = self
            .etag
            .ok_or_else(|| StoreError::backend(BACKEND, "handoff document without _etag"))?;
        handoff.version = Some(Version::new(etag));
        Ok(handoff)
    }
}

fn handoff_doc<'a>(id: &'a str, handoff: &'a Handoff) -> HandoffDocOut<'a> {
    HandoffDocOut {
        id,
        customer_id: handoff.customer_id.as_str(),
        unfinished: handoff.unfinished(),
        created_at: handoff.created_at.timestamp_millis(),
        handoff,
    }
}

impl CosmosStore {
    async fn query_handoffs(
        &self,
        query: &str,
        scope: FeedScope,
    ) -> Result<Vec<Handoff>, StoreError> {
        let ready = self.ready().await?;
        let docs: Vec<HandoffDocIn> = ready
            .handoffs
            .query_items::<HandoffDocIn>(query, scope, None)
            .await
            .map_err(|e| map_error(&e))?
            .try_collect()
            .await
            .map_err(|e| map_error(&e))?;
        let mut out = docs
            .into_iter()
            .map(HandoffDocIn::into_handoff)
            .collect::<Result<Vec<_>, _>>()?;
        out.sort_by_key(|h| std::cmp::Reverse(h.created_at));
        Ok(out)
    }
}

#[async_trait]
impl HandoffStore for CosmosStore {
    async fn get(&self, id: &HandoffId) -> Result<Option<Handoff>, StoreError> {
        // The id alone does not name the partition: ask across partitions for one item.
        let query = Query::from("SELECT * FROM c WHERE c.id = @id")
            .with_parameter("@id", encode_id(id.as_str()))
            .map_err(|e| map_error(&e))?;
        let ready = self.ready().await?;
        let docs: Vec<HandoffDocIn> = ready
            .handoffs
            .query_items::<HandoffDocIn>(query, FeedScope::full_container(), None)
            .await
            .map_err(|e| map_error(&e))?
            .try_collect()
            .await
            .map_err(|e| map_error(&e))?;
        docs.into_iter()
            .next()
            .map(HandoffDocIn::into_handoff)
            .transpose()
    }

    async fn create(&self, handoff: &Handoff) -> Result<Handoff, StoreError> {
        let ready = self.ready().await?;
        let id = encode_id(handoff.id.as_str());
        let response = ready
            .handoffs
            .create_item(
                handoff.customer_id.as_str().to_owned(),
                &id,
                &handoff_doc(&id, handoff),
                None,
            )
            .await
            .map_err(|err| match outcome(&err) {
                Outcome::Conflict => StoreError::AlreadyExists,
                _ => map_error(&err),
            })?;
        versioned_handoff(handoff, &response)
    }

    async fn replace(&self, handoff: &Handoff) -> Result<Handoff, StoreError> {
        let Some(version) = &handoff.version else {
            return Err(StoreError::Conflict);
        };
        let ready = self.ready().await?;
        let id = encode_id(handoff.id.as_str());
        let options = ItemWriteOptions::default()
            .with_precondition(Precondition::if_match(version.as_str().to_owned()));
        let response = ready
            .handoffs
            .replace_item(
                handoff.customer_id.as_str().to_owned(),
                &id,
                &handoff_doc(&id, handoff),
                Some(options),
            )
            .await
            .map_err(|err| match outcome(&err) {
                Outcome::PreconditionFailed => StoreError::Conflict,
                Outcome::NotFound => StoreError::NotFound,
                _ => map_error(&err),
            })?;
        versioned_handoff(handoff, &response)
    }

    async fn list(&self, limit: usize) -> Result<Vec<Handoff>, StoreError> {
        let mut all = self
            .query_handoffs("SELECT * FROM c", FeedScope::full_container())
            .await?;
        all.truncate(limit);
        Ok(all)
    }

    async fn for_customer(&self, customer: &CustomerId) -> Result<Vec<Handoff>, StoreError> {
        self.query_handoffs(
            "SELECT * FROM c",
            FeedScope::partition(customer.as_str().to_owned()),
        )
        .await
    }

    async fn unfinished(&self) -> Result<Vec<Handoff>, StoreError> {
        self.query_handoffs(
            "SELECT * FROM c WHERE c.unfinished = true",
            FeedScope::full_container(),
        )
        .await
    }
}

fn versioned_handoff(handoff: &Handoff, response: &ItemResponse) -> Result<Handoff, StoreError> {
    let etag = etag_of(response)
        .ok_or_else(|| StoreError::backend(BACKEND, "write response without an ETag"))?;
    let mut handoff = handoff.clone();
    handoff.version = Some(Version::new(etag));
    Ok(handoff)
}
