//! The call registry: which per-call secret belongs to which call, shared by every replica, and
//! the routing of callback events to the replica that holds the call's WebSocket.
//!
//! ACS may deliver a callback or open the media WebSocket at any replica, not necessarily the
//! one that answered. So the token → call record map lives in shared storage (Redis when
//! configured), and callback events are published on a per-call channel; the replica whose
//! session is attached to that call forwards them to it. In-process adapter: a map and direct
//! delivery (one replica). Redis adapter: `SET PX` records and pub/sub (`PSUBSCRIBE`).
//!
//! Tokens are never stored or published as such: keys and channels use a SHA-256 digest, so a
//! Redis dump does not hand out working callback URLs.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::events::CallEvent;
use crate::config::Secret;
use crate::domain::CustomerId;
use crate::store::StoreError;
use crate::store::redis::RedisPool;

/// How long a call's record is kept: longer than any call.
pub const CALL_TTL: Duration = Duration::from_secs(6 * 60 * 60);
/// Events buffered for one session before new ones are dropped (and logged).
const SESSION_EVENT_BUFFER: usize = 64;

/// A per-call secret. Its `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct CallToken(String);

impl CallToken {
    pub fn generate() -> Self {
        let bytes: [u8; 32] = rand::random();
        Self(URL_SAFE_NO_PAD.encode(bytes))
    }

    pub fn from_presented(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty() && token.len() <= 128).then(|| Self(token.to_owned()))
    }

    /// For the one place that puts it in a URL.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The id the token is stored and routed under.
    pub fn route_id(&self) -> String {
        URL_SAFE_NO_PAD.encode(Sha256::digest(self.0.as_bytes()))
    }
}

impl std::fmt::Debug for CallToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CallToken(***)")
    }
}

/// In the order a call goes through them (`Ord`): a record never moves back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CallState {
    Answering,
    Connected,
    /// A closing play (goodbye, apology) is under way; the call is hung up when it ends.
    Closing,
    Ended,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallRecord {
    pub customer_id: CustomerId,
    #[serde(default)]
    pub call_connection_id: Option<String>,
    pub state: CallState,
    #[serde(default)]
    pub end_reason: Option<String>,
}

impl CallRecord {
    /// What a write leaves stored when `stored` is already there. Replicas write a call's
    /// record without reading it again first (the answer path, and each callback, perhaps on
    /// different replicas), so a write merges instead of replacing: the state only moves
    /// forward, and the call connection id and the end reason, once known, stay.
    pub fn merged_onto(&self, stored: &CallRecord) -> CallRecord {
        CallRecord {
            customer_id: stored.customer_id.clone(),
            call_connection_id: stored
                .call_connection_id
                .clone()
                .or_else(|| self.call_connection_id.clone()),
            state: self.state.max(stored.state),
            end_reason: stored
                .end_reason
                .clone()
                .or_else(|| self.end_reason.clone()),
        }
    }
}

/// Shared call records and event routing.
#[async_trait]
pub trait CallRegistry: Send + Sync + 'static {
    /// Writes `record`, merged onto the one stored ([`CallRecord::merged_onto`]) in one atomic
    /// step, and returns what is stored now.
    async fn put(&self, token: &CallToken, record: &CallRecord) -> Result<CallRecord, StoreError>;
    async fn get(&self, token: &CallToken) -> Result<Option<CallRecord>, StoreError>;
    /// Routes `event` to the session attached to the call, on whichever replica it is.
    async fn publish(&self, token: &CallToken, event: &CallEvent) -> Result<(), StoreError>;
    /// Attaches this replica's session to the call; events arrive on the returned receiver
    /// until it is dropped.
    fn attach(&self, token: &CallToken) -> Attachment;
    /// Background delivery (the Redis subscriber); returns when `cancel` fires.
    async fn run(&self, cancel: CancellationToken) {
        cancel.cancelled().await;
    }
}

/// A session's event queue. Events are boxed, as the session's other queues' items are
/// (`super::call`): a queue's first block of 32 slots is allocated when it is made.
type EventSender = mpsc::Sender<Box<CallEvent>>;

/// This replica's attached sessions.
#[derive(Default)]
pub struct LocalRoutes {
    routes: Mutex<HashMap<String, (u64, EventSender)>>,
    next: std::sync::atomic::AtomicU64,
}

impl LocalRoutes {
    fn attach(self: &Arc<Self>, route_id: String) -> Attachment {
        let (tx, rx) = mpsc::channel(SESSION_EVENT_BUFFER);
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.routes
            .lock()
            .expect("routes lock")
            .insert(route_id.clone(), (id, tx));
        Attachment {
            events: rx,
            id,
            route_id,
            routes: self.clone(),
        }
    }

    /// Delivers to a local session if one is attached; `true` if it was.
    pub fn deliver(&self, route_id: &str, event: CallEvent) -> bool {
        let sender = self
            .routes
            .lock()
            .expect("routes lock")
            .get(route_id)
            .map(|(_, tx)| tx.clone());
        match sender {
            Some(tx) => match tx.try_send(Box::new(event)) {
                Ok(()) => true,
                Err(err) => {
                    tracing::warn!(error = %err, "call event dropped: session is not keeping up");
                    false
                }
            },
            None => false,
        }
    }

    pub fn attached(&self) -> usize {
        self.routes.lock().expect("routes lock").len()
    }
}

/// A session's subscription to its call's events; detaches on drop.
pub struct Attachment {
    pub events: mpsc::Receiver<Box<CallEvent>>,
    id: u64,
    route_id: String,
    routes: Arc<LocalRoutes>,
}

impl Drop for Attachment {
    fn drop(&mut self) {
        if let Ok(mut routes) = self.routes.routes.lock()
            // Only our own entry: a newer attachment to the same call may have replaced it.
            && routes.get(&self.route_id).is_some_and(|(id, _)| *id == self.id)
        {
            routes.remove(&self.route_id);
        }
    }
}

/// One replica, no shared storage.
#[derive(Default)]
pub struct InProcessRegistry {
    records: Mutex<Records>,
    routes: Arc<LocalRoutes>,
}

/// How often a `put` drops the records older than [`CALL_TTL`]: a sweep visits every record,
/// so doing it on every `put` made answering N calls O(N²). `get` never returns an expired
/// record, so the sweep only bounds memory.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

#[derive(Default)]
struct Records {
    by_route: HashMap<String, (CallRecord, Instant)>,
    next_sweep: Option<Instant>,
}

impl InProcessRegistry {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl CallRegistry for InProcessRegistry {
    async fn put(&self, token: &CallToken, record: &CallRecord) -> Result<CallRecord, StoreError> {
        let mut records = self.records.lock().expect("records lock");
        let now = Instant::now();
        if records.next_sweep.is_none_or(|at| now >= at) {
            records
                .by_route
                .retain(|_, (_, at)| now.duration_since(*at) < CALL_TTL);
            records.next_sweep = Some(now + SWEEP_EVERY);
        }
        let stored = match records.by_route.get(&token.route_id()) {
            Some((stored, at)) if now.duration_since(*at) < CALL_TTL => record.merged_onto(stored),
            _ => record.clone(),
        };
        records
            .by_route
            .insert(token.route_id(), (stored.clone(), now));
        Ok(stored)
    }

    async fn get(&self, token: &CallToken) -> Result<Option<CallRecord>, StoreError> {
        Ok(self
            .records
            .lock()
            .expect("records lock")
            .by_route
            .get(&token.route_id())
            .filter(|(_, at)| at.elapsed() < CALL_TTL)
            .map(|(r, _)| r.clone()))
    }

    async fn publish(&self, token: &CallToken, event: &CallEvent) -> Result<(), StoreError> {
        self.routes.deliver(&token.route_id(), event.clone());
        Ok(())
    }

    fn attach(&self, token: &CallToken) -> Attachment {
        self.routes.attach(token.route_id())
    }
}

/// Records in Redis, events over Redis pub/sub to every replica; each forwards to its own
/// attached sessions.
pub struct RedisRegistry {
    pool: RedisPool,
    client: redis::Client,
    routes: Arc<LocalRoutes>,
    channel_prefix: String,
}

impl RedisRegistry {
    pub fn new(pool: RedisPool, url: &Secret<String>) -> Result<Self, StoreError> {
        let client = redis::Client::open(url.expose().as_str())
            .map_err(|e| StoreError::backend("redis", format!("invalid REDIS_URL: {e}")))?;
        let channel_prefix = pool.key("call-events:");
        Ok(Self {
            pool,
            client,
            routes: Arc::new(LocalRoutes::default()),
            channel_prefix,
        })
    }

    fn record_key(&self, token: &CallToken) -> String {
        self.pool.key(&format!("call:{}", token.route_id()))
    }

    async fn subscribe_once(&self, cancel: &CancellationToken) -> Result<(), redis::RedisError> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub
            .psubscribe(format!("{}*", self.channel_prefix))
            .await?;
        tracing::debug!("call event subscriber connected");
        let mut messages = pubsub.into_on_message();
        loop {
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                message = messages.next() => {
                    let Some(message) = message else {
                        return Err(redis::RedisError::from((redis::ErrorKind::Io, "subscription closed")));
                    };
                    let channel = message.get_channel_name();
                    let Some(route_id) = channel.strip_prefix(&self.channel_prefix) else { continue };
                    let payload: String = match message.get_payload() {
                        Ok(p) => p,
                        Err(_) => continue,
                    };
                    match serde_json::from_str::<CallEvent>(&payload) {
                        Ok(event) => { self.routes.deliver(route_id, event); }
                        Err(err) => tracing::warn!(error = %err, "undecodable call event on the bus"),
                    }
                }
            }
        }
    }
}

/// [`CallRecord::merged_onto`] inside Redis, so that the read and the write are one step:
/// KEYS[1] the record, ARGV[1] the record written (JSON), ARGV[2] its TTL in ms; returns what is
/// stored. A stored value that does not decode is replaced.
static MERGE_RECORD: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"
local rank = {answering = 0, connected = 1, closing = 2, ended = 3}
local record = cjson.decode(ARGV[1])
local raw = redis.call('GET', KEYS[1])
if raw then
  local ok, stored = pcall(cjson.decode, raw)
  if ok and type(stored) == 'table' then
    if type(stored.customer_id) == 'string' then record.customer_id = stored.customer_id end
    if type(stored.call_connection_id) == 'string' then
      record.call_connection_id = stored.call_connection_id
    end
    if (rank[stored.state] or -1) > (rank[record.state] or -1) then record.state = stored.state end
    if type(stored.end_reason) == 'string' then record.end_reason = stored.end_reason end
  end
end
local merged = cjson.encode(record)
redis.call('SET', KEYS[1], merged, 'PX', ARGV[2])
return merged
",
    )
});

#[async_trait]
impl CallRegistry for RedisRegistry {
    async fn put(&self, token: &CallToken, record: &CallRecord) -> Result<CallRecord, StoreError> {
        let json = serde_json::to_string(record).map_err(|e| StoreError::backend("redis", e))?;
        let mut conn = self.pool.connection();
        let stored: redis::RedisResult<String> = MERGE_RECORD
            .key(self.record_key(token))
            .arg(json)
            .arg(CALL_TTL.as_millis() as u64)
            .invoke_async(&mut conn)
            .await;
        serde_json::from_str(&self.pool.observe(stored)?)
            .map_err(|e| StoreError::backend("redis", e))
    }

    async fn get(&self, token: &CallToken) -> Result<Option<CallRecord>, StoreError> {
        let mut conn = self.pool.connection();
        let got: redis::RedisResult<Option<String>> = redis::cmd("GET")
            .arg(self.record_key(token))
            .query_async(&mut conn)
            .await;
        match self.pool.observe(got)? {
            None => Ok(None),
            Some(json) => serde_json::from_str(&json)
                .map(Some)
                .map_err(|e| StoreError::backend("redis", e)),
        }
    }

    async fn publish(&self, token: &CallToken, event: &CallEvent) -> Result<(), StoreError> {
        let json = serde_json::to_string(event).map_err(|e| StoreError::backend("redis", e))?;
        let mut conn = self.pool.connection();
        let published: redis::RedisResult<i64> = redis::cmd("PUBLISH")
            .arg(format!("{}{}", self.channel_prefix, token.route_id()))
            .arg(json)
            .query_async(&mut conn)
            .await;
        self.pool.observe(published).map(drop)
    }

    fn attach(&self, token: &CallToken) -> Attachment {
        self.routes.attach(token.route_id())
    }

    async fn run(&self, cancel: CancellationToken) {
        let mut failures = 0u32;
        while !cancel.is_cancelled() {
            match self.subscribe_once(&cancel).await {
                Ok(()) => return,
                Err(err) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(error = %err, "call event subscriber lost redis; reconnecting");
                    }
                    let pause = Duration::from_millis(100 * u64::from(failures.min(20)));
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(pause) => {}
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::voice::events::CallEventKind;

    #[test]
    fn a_write_merges_forward_onto_the_stored_record() {
        let customer = CustomerId::parse_phone("+14255550199").unwrap();
        let record = |id: Option<&str>, state, reason: Option<&str>| CallRecord {
            customer_id: customer.clone(),
            call_connection_id: id.map(str::to_owned),
            state,
            end_reason: reason.map(str::to_owned),
        };
        let stored = record(None, CallState::Connected, None);
        // Forward, and what the write knows that the stored record does not, is taken.
        assert_eq!(
            record(Some("c1"), CallState::Closing, Some("why")).merged_onto(&stored),
            record(Some("c1"), CallState::Closing, Some("why"))
        );
        // Backward is not; what the stored record knows stays.
        let stored = record(Some("c1"), CallState::Ended, Some("first"));
        assert_eq!(
            record(Some("c2"), CallState::Answering, Some("second")).merged_onto(&stored),
            stored
        );
        assert!(CallState::Answering < CallState::Connected);
        assert!(CallState::Connected < CallState::Closing);
        assert!(CallState::Closing < CallState::Ended);
    }

    fn event(id: &str) -> CallEvent {
        CallEvent {
            id: id.into(),
            call_connection_id: Some("c1".into()),
            operation_context: None,
            kind: CallEventKind::PlayCompleted,
        }
    }

    #[test]
    fn tokens_are_random_and_never_printed() {
        let a = CallToken::generate();
        let b = CallToken::generate();
        assert_ne!(a, b);
        assert_eq!(a.expose().len(), 43);
        assert_eq!(format!("{a:?}"), "CallToken(***)");
        assert_ne!(a.route_id(), a.expose());
        assert_eq!(CallToken::from_presented(""), None);
    }

    #[tokio::test]
    async fn in_process_records_and_routing() {
        let registry = InProcessRegistry::new();
        let token = CallToken::generate();
        let record = CallRecord {
            customer_id: CustomerId::parse_phone("+14255550123").unwrap(),
            call_connection_id: Some("c1".into()),
            state: CallState::Connected,
            end_reason: None,
        };
        registry.put(&token, &record).await.unwrap();
        assert_eq!(registry.get(&token).await.unwrap(), Some(record));
        assert_eq!(registry.get(&CallToken::generate()).await.unwrap(), None);

        // Nobody attached: the event goes nowhere, without error.
        registry.publish(&token, &event("e0")).await.unwrap();
        let mut attachment = registry.attach(&token);
        registry.publish(&token, &event("e1")).await.unwrap();
        assert_eq!(attachment.events.recv().await.unwrap().id, "e1");
        drop(attachment);
        assert_eq!(registry.routes.attached(), 0);
    }
}
