//! The inbox worker. Entries are grouped by partition (the customer): one task per active
//! customer handles that customer's entries strictly in order, while different customers run in
//! parallel. A customer's burst of messages is collected for a short, capped moment and answered
//! once. A periodic sweep re-picks entries left pending (by a crash, or a failed attempt).
//! Entries are completed (removed from the inbox) only after they were handled.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::{Initiation, SenderError, WhatsApp, WhatsAppSender};
use crate::agent::engine::{ToolHost, ToolOutcome, run_turn};
use crate::agent::tools::ToolRequest;
use crate::agent::{AgentInput, AgentRequest, ToolCall};
use crate::domain::{
    Channel, CustomerContext, Direction, InboundContent, InboundMedia, InboundMessage, MediaRecord,
    MessageRecord, OutboundMessage, Role, StatusUpdate, Turn, WhatsAppProvider, WhatsAppSession,
};
use crate::domain::{CustomerId, DeliveryStatus};
use crate::handoff::tools::ConversationTools;
use crate::store::StoreError;
use crate::store::inbox::{EntryKey, Inbox, InboxEntry, InboxEvent, NewEntry};

/// How often pending entries are swept (and at start-up).
const SWEEP_INTERVAL: Duration = Duration::from_secs(5);
/// How long a completed entry is remembered: longer than a sweep's read can be in flight.
const COMPLETED_MEMORY: Duration = SWEEP_INTERVAL.saturating_mul(3);
/// A burst is collected for at most this many waits.
const MAX_BURST_ROUNDS: u32 = 4;
/// Attempts at one entry before it is left for the sweep.
const ATTEMPTS: u32 = 3;
/// Customers handled at the same moment. Their runs mostly wait (on durable writes, and on the
/// agent's model), so many at once drain a backlog sooner and keep a slow model from capping
/// the answers a second; a task waiting out a burst holds no permit.
const CONCURRENCY: usize = 256;
/// During a flood of webhook deliveries the worker starts one piece of work (a run of a
/// customer's entries, or an answer) at most this often, however many are under way. The
/// backlog is durable, so it waits: the cores and the disk go to acknowledging, and a
/// customer's messages queue up and are then applied in one write instead of many. Pacing the
/// starts bounds the worker's writes during a flood (about 2 each) without capping how many
/// slow answers (a model's seconds) may be awaited at once; a cap of 2 customers at a time,
/// the eleventh session's rule, still cost acknowledgements a fifth (docs/performance.md,
/// twelfth session).
const FLOOD_PACE: Duration = Duration::from_millis(10);
/// Acknowledgements being recorded at once that mark a flood: the acknowledgement path has
/// work queued. Unreached at ordinary rates (a delivery is durable within a millisecond or
/// two), reached long before acknowledgements get slow: about 5,000 deliveries a second on the
/// embedded store here. With Cosmos DB, where an append is a network round trip (5–20 ms), a
/// replica reaches it at a few hundred a second.
const FLOOD_IN_FLIGHT: usize = 8;
/// A flood is over once no delivery has found one for this long.
const FLOOD_HOLD: Duration = Duration::from_millis(250);
/// How long a replica may hold a customer's cross-replica lease (Redis) before it lapses.
const LEASE_TTL: Duration = Duration::from_secs(60);

pub(super) struct Dispatcher {
    inner: Mutex<DispatchState>,
    wake: tokio::sync::Notify,
    /// [`CONCURRENCY`] permits.
    permits: tokio::sync::Semaphore,
    /// Notified every [`FLOOD_PACE`] while the webhook is flooded: one waiting piece of work
    /// goes ahead (tokio's `Notify` wakes waiters in the order they came).
    pace: tokio::sync::Notify,
    /// Whether the webhook is flooded; set by a delivery, cleared by
    /// [`Dispatcher::watch_flood`].
    flood: tokio::sync::watch::Sender<bool>,
    /// Webhook deliveries being recorded.
    in_flight: AtomicUsize,
    /// When a delivery last found a flood, in milliseconds after `started`.
    last_flood_ms: AtomicU64,
    started: Instant,
}

impl Default for Dispatcher {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            permits: tokio::sync::Semaphore::new(CONCURRENCY),
            pace: tokio::sync::Notify::new(),
            flood: tokio::sync::watch::Sender::new(false),
            in_flight: AtomicUsize::new(0),
            last_flood_ms: AtomicU64::new(0),
            started: Instant::now(),
        }
    }
}

#[derive(Default)]
struct DispatchState {
    /// Entries dispatched and not yet completed, by id. Not by `seq`: a seq orders a customer's
    /// entries but need not be unique (Cosmos DB's come from the clock, and two deliveries
    /// appended in the same microsecond, or on two replicas, share one); keyed by seq, the
    /// second entry was taken for the first and left pending.
    known: HashSet<String>,
    /// Completed recently: a sweep that read before the completion must not re-dispatch them.
    completed: HashMap<String, Instant>,
    /// The same completions in the order they happened, so that forgetting the old ones costs
    /// only what is forgotten. (A `retain` over the whole map on every completion scanned
    /// 15 s of completions under the lock that acknowledgements take to submit: 6% of the
    /// process's CPU in the ingest bench.)
    completed_order: VecDeque<(Instant, String)>,
    /// Queues of the partitions a task is working on.
    active: HashMap<String, VecDeque<InboxEntry>>,
    /// Partitions that need a task.
    ready: VecDeque<String>,
}

impl Dispatcher {
    /// A webhook delivery is being recorded (the worker's own sandbox statuses and the sweep
    /// do not count) until the guard is dropped. One that finds [`FLOOD_IN_FLIGHT`] being
    /// recorded, itself included, declares a flood: the worker starts work at the
    /// [`FLOOD_PACE`] until none has found one for [`FLOOD_HOLD`].
    pub(super) fn delivery_started(&self) -> Delivering<'_> {
        let in_flight = self.in_flight.fetch_add(1, Ordering::Relaxed) + 1;
        if in_flight >= FLOOD_IN_FLIGHT {
            let now = self.started.elapsed().as_millis() as u64;
            self.last_flood_ms.fetch_max(now, Ordering::Relaxed);
            // A look first: during a flood every delivery gets here, and sending takes the
            // watch's write lock.
            if !*self.flood.borrow()
                && self
                    .flood
                    .send_if_modified(|flood| !std::mem::replace(flood, true))
            {
                metrics::counter!("handoff_whatsapp_floods_total").increment(1);
                metrics::gauge!("handoff_whatsapp_flood").set(1.0);
                tracing::info!(
                    in_flight,
                    pace_ms = FLOOD_PACE.as_millis() as u64,
                    "webhook flood: the inbox worker steps aside until acknowledgements catch up"
                );
            }
        }
        Delivering(self)
    }

    /// Ends a flood once no delivery has found one for [`FLOOD_HOLD`]; runs until `cancel`.
    pub(super) async fn watch_flood(&self, cancel: &CancellationToken) {
        let mut flood = self.flood.subscribe();
        loop {
            // Until a delivery declares a flood.
            while !*flood.borrow_and_update() {
                tokio::select! {
                    () = cancel.cancelled() => return,
                    changed = flood.changed() => if changed.is_err() { return },
                }
            }
            let began = Instant::now();
            let mut next_start = began + FLOOD_PACE;
            loop {
                let last = Duration::from_millis(self.last_flood_ms.load(Ordering::Relaxed));
                let over_at = self.started + last + FLOOD_HOLD;
                if Instant::now() >= over_at {
                    break;
                }
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep_until(over_at.min(next_start)) => {}
                }
                if Instant::now() >= next_start {
                    // No waiter: the next to come goes ahead at once (one stored, at most).
                    self.pace.notify_one();
                    next_start = Instant::now() + FLOOD_PACE;
                }
            }
            self.flood.send_replace(false);
            // A delivery between the look at its time and the line above found the flood
            // declared already and left it so: look once more.
            let last = Duration::from_millis(self.last_flood_ms.load(Ordering::Relaxed));
            if Instant::now() < self.started + last + FLOOD_HOLD {
                self.flood.send_replace(true);
            } else {
                metrics::gauge!("handoff_whatsapp_flood").set(0.0);
                tracing::info!(
                    seconds = began.elapsed().as_secs_f64(),
                    "webhook flood over: the inbox worker is back to full speed"
                );
            }
        }
    }

    /// Tells `inbox` whenever a flood begins or ends, so that its upkeep waits for the end;
    /// runs until `cancel`.
    pub(super) async fn tell_inbox(&self, inbox: &dyn Inbox, cancel: &CancellationToken) {
        let mut flood = self.flood.subscribe();
        loop {
            inbox.set_flooded(*flood.borrow_and_update());
            tokio::select! {
                () = cancel.cancelled() => return,
                changed = flood.changed() => if changed.is_err() { return },
            }
        }
    }

    /// A permit for a piece of work on a customer, one of [`CONCURRENCY`]; during a flood,
    /// only once the [`FLOOD_PACE`] lets it go ahead. A waiter looks again whenever a flood
    /// starts or ends; a permit already held is kept until its work is done.
    async fn permit(&self) -> tokio::sync::SemaphorePermit<'_> {
        const OPEN: &str = "the worker's semaphore is never closed";
        let mut flood = self.flood.subscribe();
        loop {
            while *flood.borrow_and_update() {
                // A notification taken by a waiter dropped here is passed on to the next one.
                tokio::select! {
                    () = self.pace.notified() => break,
                    changed = flood.changed() => if changed.is_err() { break },
                }
            }
            tokio::select! {
                // First: a permit released after a flood began goes to the pace's turn, not to
                // a waiter queued before it.
                biased;
                changed = flood.changed() => if changed.is_err() {
                    return self.permits.acquire().await.expect(OPEN);
                },
                p = self.permits.acquire() => return p.expect(OPEN),
            }
        }
    }

    /// Queues an entry for its partition's task (called after the entry is durable).
    pub(super) fn submit(&self, entry: InboxEntry) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        if s.completed.contains_key(&entry.id) || !s.known.insert(entry.id.clone()) {
            return;
        }
        let partition = entry.partition.clone();
        match s.active.get_mut(&partition) {
            Some(queue) => queue.push_back(entry),
            None => {
                s.active.insert(partition.clone(), VecDeque::from([entry]));
                s.ready.push_back(partition);
                drop(s);
                self.wake.notify_one();
            }
        }
    }

    fn next_ready(&self) -> Option<String> {
        self.inner
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .ready
            .pop_front()
    }

    /// Takes everything queued for `partition`; when nothing is, the partition is released
    /// (atomically, so a concurrent submit starts a new task).
    fn take(&self, partition: &str) -> Vec<InboxEntry> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        match s.active.get_mut(partition) {
            Some(queue) if !queue.is_empty() => queue.drain(..).collect(),
            _ => {
                s.active.remove(partition);
                Vec::new()
            }
        }
    }

    fn done(&self, ids: &[&str]) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for id in ids {
            s.known.remove(*id);
            s.completed.insert((*id).to_owned(), now);
            s.completed_order.push_back((now, (*id).to_owned()));
        }
        while let Some((at, _)) = s.completed_order.front()
            && now.duration_since(*at) >= COMPLETED_MEMORY
        {
            let (at, id) = s.completed_order.pop_front().expect("front exists");
            // Completed again since (a re-dispatch after a sweep): the later time stands.
            if s.completed.get(&id) == Some(&at) {
                s.completed.remove(&id);
            }
        }
    }

    /// Forgets entries that failed, so the sweep picks them up again.
    fn abandon(&self, ids: &[&str]) {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for id in ids {
            s.known.remove(*id);
        }
    }
}

/// A webhook delivery being recorded ([`Dispatcher::delivery_started`]).
pub(super) struct Delivering<'a>(&'a Dispatcher);

impl Drop for Delivering<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts the WhatsApp workers on `app`.
pub fn spawn_workers(app: &crate::app::App, wa: Arc<WhatsApp>) {
    let w = wa.clone();
    let work = app.whatsapp_runtime().clone();
    app.spawn_worker("whatsapp-dispatcher", move |cancel| async move {
        let tasks = tokio_util::task::TaskTracker::new();
        loop {
            while let Some(partition) = w.dispatcher.next_ready() {
                let w = w.clone();
                tasks.spawn_on(async move { w.run_partition(partition).await }, &work);
            }
            tokio::select! {
                () = cancel.cancelled() => break,
                () = w.dispatcher.wake.notified() => {}
            }
        }
        tasks.close();
        let _ = tokio::time::timeout(Duration::from_secs(5), tasks.wait()).await;
    });
    let w = wa.clone();
    app.spawn_worker("whatsapp-flood", move |cancel| async move {
        tokio::join!(
            w.dispatcher.watch_flood(&cancel),
            w.dispatcher.tell_inbox(w.inbox.as_ref(), &cancel),
        );
    });
    let w = wa.clone();
    app.spawn_periodic("whatsapp-sweep", SWEEP_INTERVAL, move || {
        let w = w.clone();
        async move { w.sweep().await }
    });
    let statuses = wa
        .sandbox_statuses
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .take();
    if let Some(mut statuses) = statuses {
        let w = wa.clone();
        app.spawn_worker("whatsapp-sandbox-statuses", move |cancel| async move {
            loop {
                let update = tokio::select! {
                    () = cancel.cancelled() => break,
                    u = statuses.recv() => match u { Some(u) => u, None => break },
                };
                // Whatever else is waiting goes into the same inbox append.
                let mut updates = vec![update];
                while updates.len() < 256 {
                    match statuses.try_recv() {
                        Ok(u) => updates.push(u),
                        Err(_) => break,
                    }
                }
                w.record_sandbox_statuses(updates, &cancel).await;
            }
        });
    }
    let w = wa;
    app.spawn_worker("whatsapp-templates", move |cancel| async move {
        tokio::select! {
            () = cancel.cancelled() => {},
            () = w.refresh_templates() => {},
        }
    });
}

impl WhatsApp {
    async fn sweep(&self) {
        match self.inbox.pending(1000).await {
            Ok(entries) => {
                for entry in entries {
                    self.dispatcher.submit(entry);
                }
            }
            Err(err) => tracing::warn!(error = %err, "whatsapp inbox sweep failed"),
        }
        if let Err(err) = self.inbox.purge_expired().await {
            tracing::warn!(error = %err, "whatsapp dedupe key purge failed");
        }
    }

    /// The sandbox's statuses take the same path as a provider's: into the inbox, then the worker.
    async fn record_sandbox_statuses(
        &self,
        updates: Vec<StatusUpdate>,
        cancel: &CancellationToken,
    ) {
        let entries: Vec<NewEntry> = updates
            .into_iter()
            .map(|update| NewEntry {
                dedupe_keys: vec![format!("sandbox:{}:{:?}", update.message_id, update.status)],
                partition: super::status_partition(&update),
                event: InboxEvent::Status(update),
            })
            .collect();
        for _ in 0..ATTEMPTS {
            match self.record(entries.clone()).await {
                Ok(_) => return,
                Err(err) => {
                    tracing::warn!(error = %err, "cannot record a sandbox status; retrying");
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            }
        }
    }

    async fn run_partition(self: Arc<Self>, partition: String) {
        let leased = self.lease(&partition).await;
        loop {
            let batch = self.dispatcher.take(&partition);
            if batch.is_empty() {
                break;
            }
            self.handle_batch(&partition, batch).await;
        }
        if let (Some(key), Some(claims)) = (leased, &self.fast_claims) {
            let _ = claims.release(&key).await;
        }
    }

    /// With Redis, one replica at a time works on a customer: a `SET NX PX` lease, waited for.
    /// Redis down means no lease (context writes stay safe through compare-and-swap).
    async fn lease(&self, partition: &str) -> Option<String> {
        let claims = self.fast_claims.as_ref()?;
        let key = format!("wa:lease:{partition}");
        for _ in 0..(LEASE_TTL.as_millis() / 50) {
            match claims.claim(&key, LEASE_TTL).await {
                Ok(crate::store::Claim::Fresh) => return Some(key),
                Ok(crate::store::Claim::Duplicate) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Handles entries in order. Messages are applied as they come; the agent answers once,
    /// after the customer's burst has ended (or the cap is reached).
    async fn handle_batch(&self, partition: &str, batch: Vec<InboxEntry>) {
        let mut handled = Vec::new();
        let mut new_messages: Vec<Received> = Vec::new();
        let mut pending: VecDeque<InboxEntry> = batch.into();
        let mut rounds = 0;
        loop {
            while let Some(run) = take_run(&mut pending) {
                let first_seq = run.first().map(|e| e.seq);
                let keys: Vec<EntryKey> = run.iter().map(InboxEntry::key).collect();
                let permit = self.dispatcher.permit().await;
                let handled_run = self.handle_run(run, &mut new_messages).await;
                drop(permit);
                match handled_run {
                    Ok(()) => handled.extend(keys),
                    Err(err) => {
                        tracing::warn!(error = %err, seq = first_seq, "whatsapp inbox entries failed; left for the sweep");
                        // Keep order: these and everything after them wait for the sweep.
                        let more = self.dispatcher.take_more(partition);
                        let left: Vec<&str> = keys
                            .iter()
                            .map(|k| k.id.as_str())
                            .chain(pending.iter().map(|e| e.id.as_str()))
                            .chain(more.iter().map(|e| e.id.as_str()))
                            .collect();
                        self.dispatcher.abandon(&left);
                        self.finish(&handled).await;
                        return;
                    }
                }
            }
            let burst_wait = self.settings.whatsapp.burst_wait;
            if new_messages.is_empty() || burst_wait.is_zero() || rounds >= MAX_BURST_ROUNDS {
                break;
            }
            rounds += 1;
            tokio::time::sleep(burst_wait).await;
            let more = self.dispatcher.take_more(partition);
            if more.is_empty() {
                break;
            }
            pending.extend(more);
        }
        if !new_messages.is_empty() {
            let _permit = self.dispatcher.permit().await;
            self.answer(new_messages).await;
        }
        self.finish(&handled).await;
    }

    async fn finish(&self, handled: &[EntryKey]) {
        if handled.is_empty() {
            return;
        }
        let ids: Vec<&str> = handled.iter().map(|k| k.id.as_str()).collect();
        match self.inbox.complete(handled.to_vec()).await {
            Ok(()) => self.dispatcher.done(&ids),
            Err(err) => {
                tracing::warn!(error = %err, "cannot complete whatsapp inbox entries");
                self.dispatcher.abandon(&ids);
            }
        }
    }

    /// Handles a run from [`take_run`]: consecutive statuses, or consecutive messages of one
    /// customer.
    async fn handle_run(
        &self,
        run: Vec<InboxEntry>,
        new_messages: &mut Vec<Received>,
    ) -> Result<(), StoreError> {
        let mut messages = Vec::with_capacity(run.len());
        let mut statuses = Vec::new();
        for entry in run {
            match entry.event {
                InboxEvent::Message(m) => messages.push(m),
                InboxEvent::Status(s) => statuses.push(s),
            }
        }
        if !statuses.is_empty() {
            self.apply_statuses(statuses).await?;
        }
        if messages.is_empty() {
            return Ok(());
        }
        let outcomes = self.apply_inbound(&messages).await?;
        for (message, (fresh, media)) in messages.into_iter().zip(outcomes) {
            if fresh {
                new_messages.push(Received { message, media });
            }
        }
        Ok(())
    }

    /// Records inbound messages of one customer on the context and the message log, with
    /// their media fetched and stored first (or marked unavailable): one context write and one
    /// message-log write for the whole run, so a burst costs the durable writer two operations
    /// instead of two per message. Returns, per message, whether it was new (a redelivery after
    /// a crash is not answered twice) and what became of its media.
    async fn apply_inbound(
        &self,
        messages: &[InboundMessage],
    ) -> Result<Vec<(bool, Option<MediaRecord>)>, StoreError> {
        let Some(customer) = messages.first().map(|m| m.customer.clone()) else {
            return Ok(Vec::new());
        };
        let mut medias = Vec::with_capacity(messages.len());
        for m in messages {
            medias.push(match &m.content {
                InboundContent::Media(media) => Some(self.media_of(m, media).await?),
                _ => None,
            });
        }
        let texts: Vec<String> = messages
            .iter()
            .zip(&medias)
            .map(|(m, media)| m.content.transcript_text_for(media.as_ref()))
            .collect();
        let max_turns = self.settings.transcript_max_turns;
        // The context, then the log; not joined: issued together they usually share a group
        // commit and a run waits for one disk sync instead of two, but the worker then takes
        // more of the two cores while deliveries arrive, and in `bench ingest`
        // acknowledgements fell by 10-15% with messages handled per second no better
        // (docs/performance.md, tenth session).
        let (ctx, fresh) = self
            .contexts
            .update(&customer, |ctx| {
                messages
                    .iter()
                    .zip(&texts)
                    .map(|(m, text)| {
                        let provider = self.route_of_message(m).provider;
                        apply_to_context(ctx, m, text, provider, max_turns)
                    })
                    .collect::<Vec<bool>>()
            })
            .await?;
        let records = messages
            .iter()
            .zip(&medias)
            .map(|(m, media)| {
                let mut record = MessageRecord::new(
                    m.message_id.clone(),
                    Some(m.customer.clone()),
                    Direction::Inbound,
                    m.content.kind(),
                    m.received_at,
                );
                record.media.clone_from(media);
                record
            })
            .collect();
        self.log.record_many(records).await?;
        for (m, &fresh) in messages.iter().zip(&fresh) {
            tracing::info!(customer = %m.customer, message_id = %m.message_id, kind = m.content.kind(), new = fresh, "whatsapp message received");
            if fresh && let Some(tools) = self.tools() {
                // The first message after a handoff resumes it: by the quick-reply payload (the
                // handoff id) when there is one, by customer otherwise.
                let payload = match &m.content {
                    InboundContent::ButtonTap { payload, .. } => Some(payload.as_str()),
                    _ => None,
                };
                if let Err(err) = tools
                    .handoff
                    .on_customer_reply(&m.customer, payload, &ctx.handoff_ids)
                    .await
                {
                    tracing::warn!(customer = %m.customer, error = %err, "cannot record the handoff as resumed");
                }
            }
        }
        Ok(fresh.into_iter().zip(medias).collect())
    }

    /// The media of a message: what an earlier attempt recorded (a redelivery does not fetch
    /// again), else fetched from the provider now (links expire within minutes) and stored.
    /// A failure never costs the message: the media is recorded as unavailable.
    async fn media_of(
        &self,
        m: &InboundMessage,
        media: &InboundMedia,
    ) -> Result<MediaRecord, StoreError> {
        if let Some(done) = self.log.get(&m.message_id).await?.and_then(|r| r.media) {
            return Ok(done);
        }
        let mut record = MediaRecord {
            media_id: media.media_id.clone(),
            available: false,
            mime_type: media.mime_type.clone(),
            size_bytes: None,
            sha256: None,
        };
        let via = self.route_of_message(m);
        let fetched = match self.sender.download_media(&via, media).await {
            Ok(fetched) => fetched,
            Err(SenderError::NotConfigured(what)) => {
                tracing::info!(customer = %m.customer, message_id = %m.message_id, media_id = %media.media_id, "inbound media not downloaded: {what} is not available with this provider");
                return Ok(record);
            }
            Err(err) => {
                tracing::warn!(customer = %m.customer, message_id = %m.message_id, media_id = %media.media_id, error = %err, "inbound media could not be downloaded; the message is kept, its media marked unavailable");
                return Ok(record);
            }
        };
        let size = fetched.bytes.len() as u64;
        let digest = <sha2::Sha256 as sha2::Digest>::digest(&fetched.bytes);
        let sha256: String = digest.iter().map(|b| format!("{b:02x}")).collect();
        match self
            .media
            .put(&media.media_id, fetched.mime_type.as_deref(), fetched.bytes)
            .await
        {
            Ok(_) => {
                record.available = true;
                record.size_bytes = Some(size);
                record.sha256 = Some(sha256);
                if fetched.mime_type.is_some() {
                    record.mime_type = fetched.mime_type;
                }
            }
            Err(err) => {
                tracing::warn!(customer = %m.customer, message_id = %m.message_id, media_id = %media.media_id, error = %err, "inbound media could not be stored; the message is kept, its media marked unavailable");
            }
        }
        Ok(record)
    }

    /// Applies consecutive status reports in one message-log write, then what each one that
    /// moved a status means for handoffs and the service window, in order.
    async fn apply_statuses(&self, updates: Vec<StatusUpdate>) -> Result<(), StoreError> {
        let moved = self.log.apply_statuses(updates.clone()).await?;
        for (update, record) in updates.into_iter().zip(moved) {
            if let Some(record) = record {
                self.status_moved(update, record).await?;
            }
        }
        Ok(())
    }

    async fn status_moved(
        &self,
        update: StatusUpdate,
        record: MessageRecord,
    ) -> Result<(), StoreError> {
        let closes = update.closes_window();
        let at = update.at;
        let message_id = update.message_id;
        let status = update.status;
        let reported_customer = update.customer;
        tracing::info!(message_id = %message_id, status = ?status, error_code = ?record.error_code, "whatsapp delivery status");
        if let (Some(tools), Some(customer)) = (
            self.tools(),
            record.customer.as_ref().or(reported_customer.as_ref()),
        ) {
            let delivery = match record.status {
                Some(DeliveryStatus::Delivered) => Some(crate::handoff::Delivery::Delivered),
                Some(DeliveryStatus::Read) => Some(crate::handoff::Delivery::Read),
                Some(DeliveryStatus::Failed) => Some(crate::handoff::Delivery::Failed {
                    code: record.error_code.clone(),
                }),
                _ => None,
            };
            // A handoff's message is its continuation template.
            if let Some(delivery) = delivery
                && record.may_be_template()
                && let Some(h) = tools.handoff.by_message_id(customer, &message_id).await?
                && let Err(err) = tools.handoff.on_delivery(&h.id, delivery).await
            {
                tracing::warn!(handoff_id = %h.id, error = %err, "cannot apply the delivery status to the handoff");
            }
        }
        let reengage =
            closes && record.direction == Direction::Outbound && record.kind != "template";
        if closes && let Some(customer) = record.customer.or(reported_customer) {
            self.contexts
                .update(&customer, |ctx| {
                    if let Some(s) = ctx.whatsapp.as_mut() {
                        s.window_closed_at = Some(at);
                    }
                })
                .await?;
            tracing::warn!(customer = %customer, message_id = %message_id, "WhatsApp reports the service window closed (131047)");
            if reengage {
                self.reengage(&customer).await;
            }
        }
        Ok(())
    }

    /// A free-form message failed because the window had closed (pitfall 1): only a template
    /// can reach the customer now. Sends the configured re-engagement template, once per failed
    /// message (a status that changes nothing does not get here).
    async fn reengage(&self, customer: &CustomerId) {
        let Some(template) = self.settings.whatsapp.reengagement_template.clone() else {
            tracing::info!(customer = %customer, "no WHATSAPP_REENGAGEMENT_TEMPLATE: the failed reply waits for the customer's next message");
            return;
        };
        let name = match self.contexts.get(customer).await {
            Ok(Some(ctx)) => ctx.first_name().unwrap_or("there").to_owned(),
            _ => "there".to_owned(),
        };
        match self
            .send_template(customer, &template, vec![name], None)
            .await
        {
            Ok(sent) => {
                metrics::counter!("handoff_whatsapp_reengagements_total").increment(1);
                tracing::info!(customer = %customer, message_id = %sent.message_id, template = %template, "re-engagement template sent after 131047");
            }
            Err(err) => {
                tracing::warn!(customer = %customer, template = %template, error = %err, "re-engagement template not sent")
            }
        }
    }

    /// One agent answer to a burst of messages, sent through the planner. The customer sees
    /// their messages read and the answer being typed first, where the provider can show it.
    async fn answer(&self, received: Vec<Received>) {
        let Some(last) = received.last() else {
            return;
        };
        let customer = last.message.customer.clone();
        // Marking the latest message read marks the burst read. Best effort: one quick try.
        let via = self.route_of_message(&last.message);
        if let Err(err) = self.sender.mark_read(&via, &last.message.message_id).await {
            tracing::warn!(customer = %customer, message_id = %last.message.message_id, error = %err, "cannot mark the message read; answering anyway");
        }
        let texts: Vec<&str> = received
            .iter()
            .filter_map(|r| r.message.content.agent_text())
            .collect();
        let input = if texts.is_empty() {
            AgentInput::Other {
                description: received
                    .iter()
                    .map(|r| r.message.content.describe_for(r.media.as_ref()))
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        } else {
            AgentInput::Text {
                text: texts.join("\n"),
            }
        };
        let context = match self.contexts.get(&customer).await {
            Ok(Some(ctx)) => ctx,
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(customer = %customer, error = %err, "cannot load the context to answer");
                return;
            }
        };
        let reply = match opt_keyword(&last.message.content) {
            Some(OptKeyword::Stop) => OPTED_OUT_REPLY.to_owned(),
            Some(OptKeyword::Start) => OPTED_IN_REPLY.to_owned(),
            None => {
                let profile = self.planner.route(&context).profile;
                let request =
                    AgentRequest::new(context, Channel::Whatsapp, input).with_profile(profile);
                let turn = match self.tools() {
                    Some(services) => {
                        let tools = ConversationTools::new(
                            services.clone(),
                            Channel::Whatsapp,
                            customer.clone(),
                            None,
                        );
                        run_turn(self.agent.as_ref(), &tools, request, &mut |_| {}).await
                    }
                    None => run_turn(self.agent.as_ref(), &NoTools, request, &mut |_| {}).await,
                };
                match turn {
                    Ok(outcome) => outcome.text,
                    Err(err) => {
                        tracing::warn!(customer = %customer, error = %err, "agent failed to answer");
                        return;
                    }
                }
            }
        };
        if reply.trim().is_empty() {
            return;
        }
        match self
            .send(
                &customer,
                OutboundMessage::text(reply.clone()),
                Initiation::Reply,
            )
            .await
        {
            Ok(sent) => {
                let source = sent.first().map(|s| s.message_id.clone());
                let max_turns = self.settings.transcript_max_turns;
                let result = self
                    .contexts
                    .update(&customer, |ctx| {
                        let mut turn =
                            Turn::new(Channel::Whatsapp, Role::Agent, reply.clone(), Utc::now());
                        if let Some(id) = &source {
                            turn = turn.with_source_id(id.clone());
                        }
                        ctx.push_turn(turn, max_turns)
                    })
                    .await;
                if let Err(err) = result {
                    tracing::warn!(customer = %customer, error = %err, "cannot record the agent's reply turn");
                }
            }
            Err(err) => {
                tracing::warn!(customer = %customer, error = %err, "cannot send the agent's reply")
            }
        }
    }
}

impl Dispatcher {
    /// Takes entries queued for `partition` while it keeps its task (during a burst wait).
    fn take_more(&self, partition: &str) -> Vec<InboxEntry> {
        let mut s = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        s.active
            .get_mut(partition)
            .map(|q| q.drain(..).collect())
            .unwrap_or_default()
    }
}

/// A customer's message that is new, waiting for the burst's answer, with what became of its
/// media.
/// Most messages applied together in one context write.
const MAX_RUN: usize = 64;

/// Takes the next run off the front: up to [`MAX_RUN`] consecutive statuses (one message-log
/// write), or up to [`MAX_RUN`] consecutive messages from the same customer (applied together,
/// in order). A status never joins a run of messages, nor a message one of statuses, so the
/// partition's order is kept.
fn take_run(pending: &mut VecDeque<InboxEntry>) -> Option<Vec<InboxEntry>> {
    let first = pending.pop_front()?;
    let customer = match &first.event {
        InboxEvent::Message(m) => Some(m.customer.clone()),
        InboxEvent::Status(_) => None,
    };
    let mut run = vec![first];
    while run.len() < MAX_RUN
        && pending
            .front()
            .is_some_and(|next| match (&next.event, &customer) {
                (InboxEvent::Message(m), Some(customer)) => m.customer == *customer,
                (InboxEvent::Status(_), None) => true,
                _ => false,
            })
    {
        run.extend(pending.pop_front());
    }
    Some(run)
}

/// One inbound message's effect on the customer's context; whether it was new.
fn apply_to_context(
    ctx: &mut CustomerContext,
    m: &InboundMessage,
    transcript_text: &str,
    provider: WhatsAppProvider,
    max_turns: usize,
) -> bool {
    let session = ctx.whatsapp.get_or_insert(WhatsAppSession {
        provider,
        wa_id: None,
        bsuid: None,
        business_number: None,
        last_inbound_at: None,
        window_closed_at: None,
    });
    session.provider = provider;
    if m.wa_id.is_some() {
        session.wa_id.clone_from(&m.wa_id);
    }
    if m.bsuid.is_some() {
        session.bsuid.clone_from(&m.bsuid);
    }
    if m.business_number.is_some() {
        session.business_number.clone_from(&m.business_number);
    }
    if session.last_inbound_at.is_none_or(|t| t < m.received_at) {
        session.last_inbound_at = Some(m.received_at);
    }
    session.window_closed_at = None;
    if ctx.display_name.is_none() {
        ctx.display_name.clone_from(&m.display_name);
    }
    match opt_keyword(&m.content) {
        Some(OptKeyword::Stop) => ctx.opted_out = true,
        Some(OptKeyword::Start) => ctx.opted_out = false,
        None => {}
    }
    ctx.push_turn(
        Turn::new(
            Channel::Whatsapp,
            Role::Customer,
            transcript_text.to_owned(),
            m.received_at,
        )
        .with_source_id(m.message_id.clone()),
        max_turns,
    )
}

struct Received {
    message: InboundMessage,
    media: Option<MediaRecord>,
}

/// What a customer says to stop (or restart) business messages on WhatsApp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OptKeyword {
    Stop,
    Start,
}

const OPTED_OUT_REPLY: &str =
    "You won't receive further messages from us here. Reply START if you change your mind.";
const OPTED_IN_REPLY: &str = "Welcome back. We'll message you here again.";

/// A message that is exactly an opt-out or opt-in keyword (case, spaces and punctuation aside).
fn opt_keyword(content: &InboundContent) -> Option<OptKeyword> {
    let text = match content {
        InboundContent::Text { text } => text,
        InboundContent::ButtonTap { text, .. } => text,
        _ => return None,
    };
    let word: String = text
        .trim()
        .trim_matches(|c: char| !c.is_alphanumeric())
        .to_ascii_uppercase();
    match word.as_str() {
        "STOP" | "UNSUBSCRIBE" | "STOP ALL" | "OPT OUT" | "OPTOUT" | "CANCEL" => {
            Some(OptKeyword::Stop)
        }
        "START" | "SUBSCRIBE" | "UNSTOP" | "OPT IN" => Some(OptKeyword::Start),
        _ => None,
    }
}

/// Without the saga wired (never in the app; only if the worker runs alone), tools answer
/// that they are unavailable.
struct NoTools;

#[async_trait::async_trait]
impl ToolHost for NoTools {
    async fn run(&self, _request: ToolRequest, _call: &ToolCall) -> ToolOutcome {
        ToolOutcome::output(serde_json::json!({"error": "tools are not available"}))
    }
}

#[cfg(test)]
mod opt_tests {
    use super::*;

    #[test]
    fn stop_and_start_are_recognised_only_on_their_own() {
        let text = |t: &str| InboundContent::Text { text: t.into() };
        assert_eq!(opt_keyword(&text("STOP")), Some(OptKeyword::Stop));
        assert_eq!(opt_keyword(&text(" stop. ")), Some(OptKeyword::Stop));
        assert_eq!(opt_keyword(&text("Unsubscribe")), Some(OptKeyword::Stop));
        assert_eq!(opt_keyword(&text("start")), Some(OptKeyword::Start));
        assert_eq!(opt_keyword(&text("please don't stop the crew")), None);
        assert_eq!(
            opt_keyword(&InboundContent::Reaction {
                message_id: "m".into(),
                emoji: "🛑".into()
            }),
            None
        );
    }
}

#[cfg(test)]
mod dispatcher_tests {
    use super::*;
    use crate::domain::{DeliveryStatus, StatusUpdate};

    fn entry(id: &str, seq: u64) -> InboxEntry {
        InboxEntry {
            id: id.into(),
            seq,
            partition: "+14255550123".into(),
            event: InboxEvent::Status(StatusUpdate::new(
                id,
                DeliveryStatus::Sent,
                chrono::Utc::now(),
            )),
        }
    }

    fn message(id: &str, from: &str) -> InboxEntry {
        let customer = CustomerId::parse(from).unwrap();
        InboxEntry {
            id: id.into(),
            seq: 1,
            partition: customer.as_str().to_owned(),
            event: InboxEvent::Message(InboundMessage {
                message_id: id.into(),
                customer,
                wa_id: None,
                bsuid: None,
                business_number: None,
                provider: None,
                received_at: chrono::Utc::now(),
                content: InboundContent::Text { text: "hi".into() },
                display_name: None,
            }),
        }
    }

    type Waiter<'a> = std::pin::Pin<
        Box<dyn std::future::Future<Output = tokio::sync::SemaphorePermit<'a>> + Send + 'a>,
    >;

    /// Work waiting for its permit; `None` once granted.
    fn waiters(d: &Dispatcher, n: usize) -> Vec<Option<Waiter<'_>>> {
        (0..n)
            .map(|_| Some(Box::pin(d.permit()) as Waiter<'_>))
            .collect()
    }

    /// Lets the flood watcher run, then moves the permits granted since into `held`; returns
    /// how many were.
    async fn grant<'a>(
        waiting: &mut [Option<Waiter<'a>>],
        held: &mut Vec<tokio::sync::SemaphorePermit<'a>>,
    ) -> usize {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        let before = held.len();
        for slot in waiting.iter_mut() {
            if let Some(waiter) = slot
                // Unconstrained: tokio's budget would refuse the 129th acquire in one poll.
                && let Some(permit) =
                    futures::FutureExt::now_or_never(tokio::task::unconstrained(waiter.as_mut()))
            {
                held.push(permit);
                *slot = None;
            }
        }
        held.len() - before
    }

    #[tokio::test(start_paused = true)]
    async fn the_worker_paces_its_work_while_the_webhook_is_flooded() {
        let d = Arc::new(Dispatcher::default());
        let cancel = CancellationToken::new();
        let watcher = tokio::spawn({
            let (d, cancel) = (d.clone(), cancel.clone());
            async move { d.watch_flood(&cancel).await }
        });
        // Calm, with deliveries arriving one at a time: 256 pieces of work at once, no more.
        let mut held = Vec::new();
        let mut waiting = waiters(&d, CONCURRENCY + 1);
        drop(d.delivery_started());
        assert_eq!(grant(&mut waiting, &mut held).await, CONCURRENCY, "calm");
        // Deliveries recorded at once, but fewer than a flood's: still calm.
        let mut delivering: Vec<_> = (1..FLOOD_IN_FLIGHT).map(|_| d.delivery_started()).collect();
        held.pop();
        assert_eq!(
            grant(&mut waiting, &mut held).await,
            1,
            "calm: a freed permit is handed out at once"
        );

        // One more at once is a flood: permits held stay held, and new work waits for the
        // pace, one piece every 10 ms in the order it came, however many are under way.
        delivering.push(d.delivery_started());
        held.clear();
        let mut waiting = waiters(&d, 3);
        assert_eq!(grant(&mut waiting, &mut held).await, 0, "flood: work waits");
        for n in 1..=3 {
            tokio::time::advance(FLOOD_PACE).await;
            // Deliveries keep finding the flood.
            drop(d.delivery_started());
            assert_eq!(grant(&mut waiting, &mut held).await, 1, "one per pace");
            assert!(waiting[..n].iter().all(Option::is_none), "in order");
        }
        assert_eq!(held.len(), 3, "not capped: all three under way");
        // The flood goes on past the hold while deliveries find it.
        let mut waiting = waiters(&d, 100);
        let paces = (FLOOD_HOLD.as_millis() / FLOOD_PACE.as_millis()) as usize * 2;
        for _ in 0..paces {
            tokio::time::advance(FLOOD_PACE).await;
            drop(d.delivery_started());
            assert_eq!(grant(&mut waiting, &mut held).await, 1, "still paced");
        }
        // The acknowledgements catch up; deliveries one at a time do not prolong the flood,
        // which ends after the hold, when everything waiting goes ahead at once.
        delivering.clear();
        drop(d.delivery_started());
        let within_hold = (FLOOD_HOLD.as_millis() / FLOOD_PACE.as_millis()) as usize - 1;
        let mut paced = 0;
        for _ in 0..within_hold {
            tokio::time::advance(FLOOD_PACE).await;
            paced += grant(&mut waiting, &mut held).await;
        }
        assert_eq!(paced, within_hold, "paced until the hold is over");
        tokio::time::advance(FLOOD_PACE).await;
        assert_eq!(
            grant(&mut waiting, &mut held).await,
            100 - paces - paced,
            "calm again: the rest go ahead"
        );
        assert!(waiting.iter().all(Option::is_none));

        // Permits held when a flood begins stay held; a waiter already queued for a permit
        // waits for the pace.
        held.truncate(CONCURRENCY);
        let mut waiting = waiters(&d, CONCURRENCY - held.len() + 1);
        grant(&mut waiting, &mut held).await;
        assert_eq!(held.len(), CONCURRENCY);
        let _flood: Vec<_> = (0..FLOOD_IN_FLIGHT).map(|_| d.delivery_started()).collect();
        held.truncate(10);
        assert_eq!(
            grant(&mut waiting, &mut held).await,
            0,
            "flooded again: the queued waiter waits for the pace"
        );
        tokio::time::advance(FLOOD_PACE).await;
        assert_eq!(grant(&mut waiting, &mut held).await, 1);
        cancel.cancel();
        watcher.await.unwrap();
    }

    /// An inbox that only notes what it is told of floods.
    #[derive(Default)]
    struct FloodNotes(Mutex<Vec<bool>>);

    #[async_trait::async_trait]
    impl Inbox for FloodNotes {
        async fn append(
            &self,
            _: Vec<NewEntry>,
        ) -> Result<Vec<crate::store::inbox::Appended>, StoreError> {
            Err(StoreError::unavailable("test", "not an inbox"))
        }
        async fn pending(&self, _: usize) -> Result<Vec<InboxEntry>, StoreError> {
            Ok(Vec::new())
        }
        async fn complete(&self, _: Vec<EntryKey>) -> Result<(), StoreError> {
            Ok(())
        }
        fn set_flooded(&self, flooded: bool) {
            self.0.lock().unwrap().push(flooded);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_inbox_hears_when_a_flood_begins_and_ends() {
        let d = Arc::new(Dispatcher::default());
        let inbox = Arc::new(FloodNotes::default());
        let cancel = CancellationToken::new();
        let tasks = tokio::spawn({
            let (d, inbox, cancel) = (d.clone(), inbox.clone(), cancel.clone());
            async move {
                tokio::join!(
                    d.watch_flood(&cancel),
                    d.tell_inbox(inbox.as_ref(), &cancel)
                );
            }
        });
        tokio::task::yield_now().await;
        let flood: Vec<_> = (0..FLOOD_IN_FLIGHT).map(|_| d.delivery_started()).collect();
        tokio::task::yield_now().await;
        assert_eq!(*inbox.0.lock().unwrap(), vec![false, true]);
        drop(flood);
        tokio::time::sleep(FLOOD_HOLD * 2).await;
        assert_eq!(*inbox.0.lock().unwrap(), vec![false, true, false]);
        cancel.cancel();
        tasks.await.unwrap();
    }

    #[test]
    fn a_flood_is_counted_once_however_many_deliveries_find_it() {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::with_local_recorder(&recorder, || {
            let d = Dispatcher::default();
            let calm: Vec<_> = (1..FLOOD_IN_FLIGHT).map(|_| d.delivery_started()).collect();
            assert!(!*d.flood.borrow(), "below the threshold: calm");
            let flood: Vec<_> = (0..20).map(|_| d.delivery_started()).collect();
            assert!(*d.flood.borrow());
            drop((calm, flood));
            assert_eq!(
                d.in_flight.load(Ordering::Relaxed),
                0,
                "every guard counted out"
            );
        });
        let text = handle.render();
        assert!(text.contains("handoff_whatsapp_floods_total 1\n"), "{text}");
        assert!(text.contains("handoff_whatsapp_flood 1\n"), "{text}");
    }

    #[test]
    fn runs_are_consecutive_statuses_or_one_customers_consecutive_messages() {
        let mut pending: VecDeque<InboxEntry> = [
            entry("s1", 1),
            entry("s2", 2),
            message("m1", "+14255550123"),
            message("m2", "+14255550123"),
            message("m3", "+14255550124"),
            entry("s3", 3),
            message("m4", "+14255550124"),
        ]
        .into();
        let mut runs = Vec::new();
        while let Some(run) = take_run(&mut pending) {
            runs.push(run.into_iter().map(|e| e.id).collect::<Vec<_>>());
        }
        assert_eq!(
            runs,
            [
                vec!["s1", "s2"],
                vec!["m1", "m2"],
                vec!["m3"],
                vec!["s3"],
                vec!["m4"]
            ]
        );
        let mut many: VecDeque<InboxEntry> = (0..MAX_RUN as u64 + 1)
            .map(|i| entry(&format!("s{i}"), i))
            .collect();
        assert_eq!(take_run(&mut many).unwrap().len(), MAX_RUN);
        assert_eq!(take_run(&mut many).unwrap().len(), 1);
    }

    #[test]
    fn entries_that_share_a_seq_are_both_dispatched_and_completed_apart() {
        let d = Dispatcher::default();
        // Cosmos DB seqs come from the clock: two deliveries in one microsecond share one.
        d.submit(entry("a", 7));
        d.submit(entry("b", 7));
        // A sweep that read before anything was handled submits them again: no repeat.
        d.submit(entry("a", 7));
        let taken = d.take("+14255550123");
        let ids: Vec<&str> = taken.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);
        d.done(&["a"]);
        // A sweep that read before "a" was completed does not bring it back; "b", abandoned
        // after a failure, is dispatched again.
        d.abandon(&["b"]);
        d.submit(entry("a", 7));
        d.submit(entry("b", 7));
        let again: Vec<String> = d.take("+14255550123").into_iter().map(|e| e.id).collect();
        assert_eq!(again, ["b"]);
    }

    #[tokio::test(start_paused = true)]
    async fn completions_are_forgotten_after_a_while_oldest_first() {
        let d = Dispatcher::default();
        for id in ["a", "b"] {
            d.submit(entry(id, 1));
        }
        d.take("+14255550123");
        d.done(&["a"]);
        tokio::time::advance(COMPLETED_MEMORY / 2).await;
        d.done(&["b"]);
        tokio::time::advance(COMPLETED_MEMORY / 2).await;
        // The next completion forgets "a" (its time is up) and keeps "b".
        d.submit(entry("c", 2));
        d.take("+14255550123");
        d.done(&["c"]);
        {
            let s = d.inner.lock().unwrap();
            let remembered: HashSet<&str> = s.completed.keys().map(String::as_str).collect();
            assert_eq!(remembered, HashSet::from(["b", "c"]));
            assert_eq!(s.completed_order.len(), 2);
        }
        d.submit(entry("a", 1));
        d.submit(entry("b", 1));
        let ids: Vec<String> = d.take("+14255550123").into_iter().map(|e| e.id).collect();
        assert_eq!(
            ids,
            ["a"],
            "a forgotten completion may be dispatched again; a recent one not"
        );
    }
}
