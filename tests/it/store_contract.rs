//! One contract, every store adapter: the same checks run against the embedded store, Redis
//! cache-aside over it, and Cosmos DB (with and without Redis in front), each on a real server.

use std::any::Any;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use handoff::config::{CosmosSettings, Secret};
use handoff::domain::{
    Channel, ConsentRecord, CustomerContext, CustomerId, Role, Turn, VoiceSession,
    VoiceSessionStatus, WhatsAppProvider, WhatsAppSession,
};
use handoff::store::cached::CachedContextStore;
use handoff::store::cosmos::CosmosStore;
use handoff::store::embedded::EmbeddedStore;
use handoff::store::redis::{RedisClaims, RedisPool};
use handoff::store::{Claim, ClaimStore, ContextStore, Contexts, HealthCheck, StoreError};
use serde_json::json;

use crate::support::services::{COSMOS_EMULATOR_KEY, CosmosServer, RedisServer};

/// Two handles on one backend, as two replicas would have.
pub struct Fixture {
    pub writers: [Arc<dyn ContextStore>; 2],
    pub claimers: [Arc<dyn ClaimStore>; 2],
    _keep: Vec<Box<dyn Any + Send>>,
}

pub async fn embedded() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    Fixture {
        writers: [store.clone(), store.clone()],
        claimers: [store.clone(), store],
        _keep: vec![Box::new(dir)],
    }
}

pub fn redis_pool(redis: &RedisServer) -> RedisPool {
    RedisPool::new(&Secret::new(redis.url()), "test:").unwrap()
}

fn cached(durable: Arc<dyn ContextStore>, redis: &RedisServer) -> Arc<dyn ContextStore> {
    Arc::new(CachedContextStore::new(
        durable,
        redis_pool(redis),
        Duration::from_secs(60),
    ))
}

pub async fn redis_over_embedded() -> Fixture {
    let base = embedded().await;
    let redis = RedisServer::start();
    let durable = base.writers[0].clone();
    Fixture {
        writers: [cached(durable.clone(), &redis), cached(durable, &redis)],
        claimers: [
            Arc::new(RedisClaims::new(redis_pool(&redis))),
            Arc::new(RedisClaims::new(redis_pool(&redis))),
        ],
        _keep: vec![Box::new(base), Box::new(redis)],
    }
}

pub fn cosmos_settings(server: &CosmosServer, database: &str) -> CosmosSettings {
    CosmosSettings {
        endpoint: server.endpoint(),
        key: Some(Secret::new(COSMOS_EMULATOR_KEY.to_owned())),
        database: database.to_owned(),
        managed_identity_client_id: None,
    }
}

pub async fn cosmos() -> Fixture {
    let server = CosmosServer::start();
    let settings = cosmos_settings(&server, "contract");
    let a = Arc::new(CosmosStore::new(&settings).unwrap());
    let b = Arc::new(CosmosStore::new(&settings).unwrap());
    // Two replicas that are already running: the SDK client is set up on first use, which
    // takes a while in a debug build and would eat into the timing-based claim checks.
    // (`tests/it/cosmos.rs` covers the lazy set-up itself.)
    for store in [&a, &b] {
        HealthCheck::check(store.as_ref()).await.unwrap();
    }
    Fixture {
        writers: [a.clone(), b.clone()],
        claimers: [a, b],
        _keep: vec![Box::new(server)],
    }
}

pub async fn redis_over_cosmos() -> Fixture {
    let base = cosmos().await;
    let redis = RedisServer::start();
    Fixture {
        writers: [
            cached(base.writers[0].clone(), &redis),
            cached(base.writers[1].clone(), &redis),
        ],
        claimers: [
            Arc::new(RedisClaims::new(redis_pool(&redis))),
            Arc::new(RedisClaims::new(redis_pool(&redis))),
        ],
        _keep: vec![Box::new(base), Box::new(redis)],
    }
}

fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(1_760_000_000 + secs, 0).unwrap()
}

pub fn customer(n: u32) -> CustomerId {
    CustomerId::parse_phone(&format!("+1425555{n:04}")).unwrap()
}

/// A context with every field set, so a round trip proves nothing is dropped.
pub fn populated(id: CustomerId) -> CustomerContext {
    let mut ctx = CustomerContext::new(id, at(0));
    ctx.display_name = Some("Ada Lovelace".into());
    ctx.locale = Some("en-GB".into());
    ctx.collected_data = BTreeMap::from([
        ("account_verified".into(), json!(true)),
        (
            "issue".into(),
            json!({"type": "outage", "address": "123 Oak St"}),
        ),
    ]);
    ctx.summary = "Caller reported a power outage.".into();
    ctx.voice_sessions.push(VoiceSession {
        call_connection_id: "call-1".into(),
        started_at: at(10),
        ended_at: Some(at(300)),
        status: VoiceSessionStatus::Ended,
        end_reason: Some("handoff".into()),
    });
    ctx.whatsapp = Some(WhatsAppSession {
        provider: WhatsAppProvider::Acs,
        wa_id: Some("14255550001".into()),
        bsuid: Some("US.13491208655302741918".into()),
        business_number: Some("0f0eb78e-a576-1dfc-b414-0f0756de3338".into()),
        last_inbound_at: Some(at(400)),
        window_closed_at: None,
    });
    ctx.transcript.push(Turn::new(
        Channel::Voice,
        Role::Customer,
        "My power is out",
        at(20),
    ));
    ctx.transcript.push(
        Turn::new(
            Channel::Whatsapp,
            Role::Agent,
            "The crew is on its way 🚚",
            at(500),
        )
        .with_source_id("wamid.1"),
    );
    ctx.consents.push(ConsentRecord {
        scope: "whatsapp_handoff".into(),
        channel: Channel::Voice,
        at: at(250),
        evidence: "Yes, WhatsApp is fine".into(),
    });
    ctx.opted_out = true;
    ctx.handoff_ids.push("ho_1".into());
    ctx.updated_at = at(600);
    ctx
}

pub async fn round_trip(f: &Fixture) {
    let store = &f.writers[0];
    let original = populated(customer(1));
    assert!(store.get(&original.customer_id).await.unwrap().is_none());
    let created = store.create(&original).await.unwrap();
    assert!(
        created.version.is_some(),
        "create returns the stored version"
    );
    let loaded = store
        .get(&original.customer_id)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(loaded.version, created.version);
    let mut expected = original.clone();
    expected.version = loaded.version.clone();
    assert_eq!(loaded, expected);
    // And through the other replica's handle.
    let other = f.writers[1]
        .get(&original.customer_id)
        .await
        .unwrap()
        .expect("stored");
    assert_eq!(other, expected);
}

pub async fn stale_version_conflicts(f: &Fixture) {
    let store = &f.writers[0];
    let v1 = store.create(&populated(customer(2))).await.unwrap();
    assert!(matches!(
        store.create(&v1).await,
        Err(StoreError::AlreadyExists)
    ));
    let mut change = v1.clone();
    change.summary = "first change".into();
    let v2 = store.replace(&change).await.unwrap();
    assert_ne!(v2.version, v1.version, "every write gets a new version");

    let mut stale = v1.clone();
    stale.summary = "lost update".into();
    assert!(matches!(
        f.writers[1].replace(&stale).await,
        Err(StoreError::Conflict)
    ));
    let current = store.get(&v1.customer_id).await.unwrap().unwrap();
    assert_eq!(current.summary, "first change");
    assert_eq!(current.version, v2.version);

    let mut missing = populated(customer(3));
    missing.version = v2.version.clone();
    assert!(matches!(
        store.replace(&missing).await,
        Err(StoreError::NotFound | StoreError::Conflict)
    ));
}

pub async fn concurrent_updates_lose_nothing(f: &Fixture) {
    let id = customer(4);
    let mut tasks = Vec::new();
    for writer in &f.writers {
        // Each writer is a replica: its own handle, its own local serialisation.
        let replica = Contexts::new(writer.clone());
        for _ in 0..100 {
            let replica = replica.clone();
            let id = id.clone();
            tasks.push(tokio::spawn(async move {
                replica
                    .update(&id, |ctx| {
                        let n = ctx
                            .collected_data
                            .get("counter")
                            .and_then(|v| v.as_u64())
                            .unwrap_or(0);
                        ctx.collected_data.insert("counter".into(), json!(n + 1));
                    })
                    .await
                    .map(drop)
            }));
        }
    }
    for task in tasks {
        task.await.unwrap().expect("every update lands");
    }
    let ctx = f.writers[0].get(&id).await.unwrap().unwrap();
    assert_eq!(ctx.collected_data["counter"], json!(200));
}

pub async fn one_fresh_claim_among_many(f: &Fixture) {
    let mut tasks = Vec::new();
    for i in 0..50 {
        let claims = f.claimers[i % 2].clone();
        tasks.push(tokio::spawn(async move {
            claims.claim("event:abc", Duration::from_secs(60)).await
        }));
    }
    let mut fresh = 0;
    for task in tasks {
        if task.await.unwrap().unwrap() == Claim::Fresh {
            fresh += 1;
        }
    }
    assert_eq!(fresh, 1);
    assert_eq!(
        f.claimers[0]
            .claim("event:other", Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Fresh,
        "claims are per key"
    );
}

pub async fn claims_expire_and_can_be_released(f: &Fixture) {
    let c = &f.claimers[0];
    let ttl = Duration::from_millis(1500);
    assert_eq!(c.claim("k1", ttl).await.unwrap(), Claim::Fresh);
    assert_eq!(
        f.claimers[1].claim("k1", ttl).await.unwrap(),
        Claim::Duplicate
    );
    tokio::time::sleep(ttl + Duration::from_millis(1200)).await;
    assert_eq!(c.claim("k1", ttl).await.unwrap(), Claim::Fresh, "expired");

    assert_eq!(
        c.claim("k2", Duration::from_secs(60)).await.unwrap(),
        Claim::Fresh
    );
    c.release("k2").await.unwrap();
    assert_eq!(
        f.claimers[1]
            .claim("k2", Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Fresh
    );
}

macro_rules! contract_suite {
    ($name:ident, $fixture:path) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn round_trip_keeps_every_field() {
                super::round_trip(&$fixture().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn stale_version_is_a_conflict() {
                super::stale_version_conflicts(&$fixture().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_writers_times_100_updates_lose_nothing() {
                super::concurrent_updates_lose_nothing(&$fixture().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn fifty_claimers_one_fresh() {
                super::one_fresh_claim_among_many(&$fixture().await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn claims_expire_and_release() {
                super::claims_expire_and_can_be_released(&$fixture().await).await;
            }
        }
    };
}

contract_suite!(embedded_store, super::embedded);
contract_suite!(redis_over_embedded_store, super::redis_over_embedded);
contract_suite!(cosmos_store, super::cosmos);
contract_suite!(redis_over_cosmos_store, super::redis_over_cosmos);

/// Redis dies in the middle: reads and writes go to the durable store and never fail; when
/// Redis is back, what changed meanwhile is not served from a stale cached copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_dying_mid_test_costs_the_caller_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let durable: Arc<dyn ContextStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let mut redis = RedisServer::start();
    let contexts = Contexts::new(cached(durable.clone(), &redis));
    let id = customer(7);
    let bump = |ctx: &mut handoff::domain::CustomerContext| {
        let n = ctx
            .collected_data
            .get("n")
            .and_then(|v| v.as_u64())
            .unwrap_or(0);
        ctx.collected_data.insert("n".into(), json!(n + 1));
    };
    contexts.update(&id, bump).await.unwrap();
    assert_eq!(
        contexts.get(&id).await.unwrap().unwrap().collected_data["n"],
        json!(1),
        "cached"
    );

    redis.kill();
    for expected in 2..=4 {
        contexts
            .update(&id, bump)
            .await
            .expect("writes go on without redis");
        let ctx = contexts
            .get(&id)
            .await
            .expect("reads go on without redis")
            .unwrap();
        assert_eq!(ctx.collected_data["n"], json!(expected));
    }

    // Back, empty: the copy written before the outage is gone anyway; what matters is that the
    // next reads and writes are right and land in the cache again.
    redis.restart();
    let mut last = None;
    for _ in 0..50 {
        last = contexts.get(&id).await.ok().flatten();
        if last.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last.unwrap().collected_data["n"], json!(4));
    contexts.update(&id, bump).await.unwrap();
    assert_eq!(
        durable.get(&id).await.unwrap().unwrap().collected_data["n"],
        json!(5)
    );
    assert_eq!(
        contexts.get(&id).await.unwrap().unwrap().collected_data["n"],
        json!(5)
    );
}

/// A cached copy that outlived an outage (Redis kept its data, the durable store moved on) is
/// dropped when Redis accepts writes again, not served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_cached_before_an_outage_is_not_served_after_it() {
    let dir = tempfile::tempdir().unwrap();
    let durable: Arc<dyn ContextStore> = Arc::new(EmbeddedStore::open(dir.path()).unwrap());
    let redis = RedisServer::start();
    let pool = redis_pool(&redis);
    let contexts = Contexts::new(Arc::new(CachedContextStore::new(
        durable.clone(),
        pool.clone(),
        Duration::from_secs(60),
    )));
    let id = customer(8);
    contexts
        .update(&id, |c| c.summary = "before".into())
        .await
        .unwrap();
    assert_eq!(contexts.get(&id).await.unwrap().unwrap().summary, "before");

    // Redis refuses this replica's writes (a partial outage: it still answers reads with the
    // old copy); the durable store moves on meanwhile.
    let mut conn = pool.connection();
    let acl = |rule: &'static str| {
        redis::cmd("ACL")
            .arg("SETUSER")
            .arg("default")
            .arg(rule)
            .clone()
    };
    let _: () = acl("-@write").query_async(&mut conn).await.unwrap();
    contexts
        .update(&id, |c| c.summary = "during".into())
        .await
        .unwrap();
    let _: () = acl("+@write").query_async(&mut conn).await.unwrap();
    assert_eq!(contexts.get(&id).await.unwrap().unwrap().summary, "during");
}
