//! Cosmos DB specifics beyond the store contract, against the patched test server
//! (`tests/cosmos/launcher.js`): lazy set-up, outages, id encoding, TTL, and the server patches
//! the adapter itself does not exercise (queries).

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use azure_data_cosmos::feed::FeedScope;
use azure_data_cosmos::options::{
    BinaryEncodingOptions, ConnectionPoolOptions, QueryOptions, QueryPlanMode,
};
use azure_data_cosmos::{
    AccountReference, CosmosClientBuilder, CosmosRuntime, Query, RoutingStrategy,
};
use futures::TryStreamExt;
use handoff::config::{CosmosSettings, Secret};
use handoff::domain::CustomerId;
use handoff::store::cosmos::CosmosStore;
use handoff::store::{Claim, ClaimStore, ContextStore, HealthCheck, StoreError};
use serde_json::{Value, json};

use crate::store_contract::{cosmos_settings, customer, populated};
use crate::support::services::{COSMOS_EMULATOR_KEY, CosmosServer, free_port};

/// How fast an unreachable Cosmos DB must be reported: readiness allows 3 s per backend.
const FAIL_FAST: Duration = Duration::from_secs(3);

fn settings_for_port(port: u16, database: &str) -> CosmosSettings {
    CosmosSettings {
        endpoint: format!("http://127.0.0.1:{port}"),
        key: Some(Secret::new(COSMOS_EMULATOR_KEY.to_owned())),
        database: database.to_owned(),
        managed_identity_client_id: None,
    }
}

/// The launcher on a port chosen before it starts (`CosmosServer` picks its own), killed on drop.
struct LateServer(Child);

impl LateServer {
    fn start_on(port: u16, env: &[(&str, &str)]) -> Self {
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cosmos");
        let child = Command::new("node")
            .arg("launcher.js")
            .args(["--port", &port.to_string()])
            .envs(env.iter().copied())
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node runs the Cosmos DB test server");
        let server = Self(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "test server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        server
    }
}

impl Drop for LateServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn assert_unavailable<T: std::fmt::Debug>(result: Result<T, StoreError>, started: Instant) {
    let elapsed = started.elapsed();
    match result {
        Err(StoreError::Unavailable { backend, .. }) => assert_eq!(backend, "cosmos"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(elapsed < FAIL_FAST, "took {elapsed:?}");
}

/// The test server checks no authentication, so plain HTTP can inspect what the adapter made.
async fn raw_get(server: &CosmosServer, path: &str) -> (u16, Value) {
    raw_get_in(server, path, None).await
}

/// A document read names its partition, as Cosmos DB requires.
async fn raw_get_in(server: &CosmosServer, path: &str, partition: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().get(format!("{}{path}", server.endpoint()));
    if let Some(partition) = partition {
        request = request.header(
            "x-ms-documentdb-partitionkey",
            json!([partition]).to_string(),
        );
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn new_does_no_io_and_a_closed_port_fails_fast_every_time() {
    let store = CosmosStore::new(&settings_for_port(free_port(), "handoff")).unwrap();
    for _ in 0..3 {
        let started = Instant::now();
        assert_unavailable(store.check().await, started);
    }
    let started = Instant::now();
    assert_unavailable(store.get(&customer(1)).await, started);
    let started = Instant::now();
    assert_unavailable(store.claim("k", Duration::from_secs(60)).await, started);

    // Many callers at once (webhooks during an outage) share one set-up attempt rather than
    // queueing for one each.
    let store = std::sync::Arc::new(store);
    let started = Instant::now();
    let calls: Vec<_> = (0..20)
        .map(|n| {
            let store = store.clone();
            tokio::spawn(async move { store.get(&customer(n)).await })
        })
        .collect();
    for call in calls {
        assert_unavailable(call.await.unwrap(), started);
    }
}

#[tokio::test]
async fn containers_are_created_on_first_use_in_a_fresh_database() {
    let server = CosmosServer::start();
    let store = CosmosStore::new(&cosmos_settings(&server, "fresh")).unwrap();
    assert_eq!(raw_get(&server, "/dbs/fresh").await.0, 404, "nothing yet");

    store.check().await.unwrap();

    let (status, customers) = raw_get(&server, "/dbs/fresh/colls/customers").await;
    assert_eq!(status, 200);
    assert_eq!(customers["partitionKey"]["paths"], json!(["/customerId"]));
    assert!(
        customers.get("defaultTtl").is_none_or(Value::is_null),
        "contexts never expire: {customers}"
    );
    let (status, claims) = raw_get(&server, "/dbs/fresh/colls/claims").await;
    assert_eq!(status, 200);
    assert_eq!(claims["partitionKey"]["paths"], json!(["/customerId"]));
    assert_eq!(claims["defaultTtl"], json!(-1), "TTL on, per item");

    // A second store (another replica) finds them and creates nothing.
    let other = CosmosStore::new(&cosmos_settings(&server, "fresh")).unwrap();
    other.check().await.unwrap();
}

#[tokio::test]
async fn a_store_built_while_the_server_is_down_works_once_it_is_up() {
    let port = free_port();
    let store = CosmosStore::new(&settings_for_port(port, "late")).unwrap();
    let started = Instant::now();
    assert_unavailable(store.create(&populated(customer(1))).await, started);

    let _server = LateServer::start_on(port, &[]);
    store.check().await.unwrap();
    let created = store.create(&populated(customer(1))).await.unwrap();
    let loaded = store.get(&customer(1)).await.unwrap().unwrap();
    assert_eq!(loaded.version, created.version);
    assert_eq!(
        store.claim("late", Duration::from_secs(60)).await.unwrap(),
        Claim::Fresh
    );
}

#[tokio::test]
async fn throttling_is_retried_by_the_sdk_and_then_reported_as_unavailable() {
    // The first 4 document reads/creates answer 429 with `x-ms-retry-after-ms: 20`.
    let port = free_port();
    let _server = LateServer::start_on(port, &[("COSMOS_LAUNCHER_THROTTLE", "4")]);
    let store = CosmosStore::new(&settings_for_port(port, "throttled")).unwrap();
    let created = store.create(&populated(customer(1))).await.unwrap();
    let loaded = store.get(&customer(1)).await.unwrap().unwrap();
    assert_eq!(loaded.version, created.version);

    // Throttled for good: bounded retries, then transient.
    let port = free_port();
    let _server = LateServer::start_on(port, &[("COSMOS_LAUNCHER_THROTTLE", "1000000")]);
    let store = CosmosStore::new(&settings_for_port(port, "throttled")).unwrap();
    store.check().await.unwrap();
    let started = Instant::now();
    let result = store.get(&customer(1)).await;
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "{:?}",
        started.elapsed()
    );
    assert!(
        matches!(result, Err(StoreError::Unavailable { .. })),
        "{result:?}"
    );
}

#[tokio::test]
async fn an_outage_after_start_is_reported_fast_as_unavailable() {
    let mut server = CosmosServer::start();
    let store = CosmosStore::new(&cosmos_settings(&server, "outage")).unwrap();
    let created = store.create(&populated(customer(1))).await.unwrap();

    server.kill();
    let started = Instant::now();
    assert_unavailable(store.get(&customer(1)).await, started);
    let started = Instant::now();
    assert_unavailable(store.replace(&created).await, started);
    let started = Instant::now();
    assert_unavailable(store.claim("k", Duration::from_secs(60)).await, started);
    let started = Instant::now();
    assert_unavailable(store.check().await, started);
}

#[tokio::test]
async fn ids_with_characters_cosmos_forbids_are_encoded() {
    let server = CosmosServer::start();
    let store = CosmosStore::new(&cosmos_settings(&server, "ids")).unwrap();
    // ACS raw ids are any printable ASCII; `/`, `\`, `?` and `#` are not allowed in Cosmos ids.
    let odd = CustomerId::from_acs_raw_id(r"8:acs:tenant/user?x#y\z%2F").unwrap();
    let plain = CustomerId::parse_phone("+14255550100").unwrap();
    for id in [&odd, &plain] {
        let created = store.create(&populated(id.clone())).await.unwrap();
        let loaded = store.get(id).await.unwrap().expect("stored");
        assert_eq!(loaded.customer_id, *id);
        assert_eq!(loaded.version, created.version);
    }
    // The phone number is stored as it is: readable in the portal, queryable by id.
    let (status, doc) = raw_get_in(
        &server,
        "/dbs/ids/colls/customers/docs/%2B14255550100",
        Some("+14255550100"),
    )
    .await;
    assert_eq!(status, 200, "{doc}");
    assert_eq!(doc["customerId"], "+14255550100");
    assert_eq!(doc["context"]["customer_id"], "+14255550100");

    let key = "wamid/HBg?#";
    assert_eq!(
        store.claim(key, Duration::from_secs(60)).await.unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        store.claim(key, Duration::from_secs(60)).await.unwrap(),
        Claim::Duplicate
    );
    store.release(key).await.unwrap();
    store.release(key).await.unwrap();
}

#[tokio::test]
async fn expired_claims_are_swept_and_a_lapsed_claim_is_taken_over() {
    let server = CosmosServer::start();
    let store = CosmosStore::new(&cosmos_settings(&server, "ttl")).unwrap();
    assert_eq!(
        store.claim("swept", Duration::from_secs(3)).await.unwrap(),
        Claim::Fresh
    );
    // A 3 s TTL: long enough that a loaded CI machine still sees the item before the sweep
    // (a 1 s TTL once lost that race), short enough to wait for.
    let path = "/dbs/ttl/colls/claims/docs/swept";
    assert_eq!(raw_get_in(&server, path, Some("swept")).await.0, 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    while raw_get_in(&server, path, Some("swept")).await.0 != 404 {
        assert!(
            Instant::now() < deadline,
            "the TTL sweeper never deleted it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // A claim whose `expiresAt` passed while the item still exists (TTL deletion is lazy) is
    // fresh again. Planted directly, with a long item TTL, so the sweeper cannot interfere.
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    let planted = reqwest::Client::new()
        .post(format!("{}/dbs/ttl/colls/claims/docs", server.endpoint()))
        .header("x-ms-documentdb-partitionkey", r#"["lapsed"]"#)
        .json(
            &json!({"id": "lapsed", "customerId": "lapsed", "ttl": 3600, "expiresAt": now_ms - 1}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(planted.status(), 201);
    assert_eq!(
        store
            .claim("lapsed", Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Fresh
    );
    assert_eq!(
        store
            .claim("lapsed", Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Duplicate
    );
}

/// The launcher's query patches (range-scoped and single-partition queries, the gateway query
/// plan), through the SDK itself.
#[tokio::test]
async fn the_test_server_answers_sdk_queries_like_cosmos() {
    let server = CosmosServer::start();
    let store = CosmosStore::new(&cosmos_settings(&server, "queries")).unwrap();
    for n in 1..=3 {
        store.create(&populated(customer(n))).await.unwrap();
    }
    let account = AccountReference::with_authentication_key(
        server.endpoint().parse().unwrap(),
        azure_core::credentials::Secret::new(COSMOS_EMULATOR_KEY),
    );
    // As in the adapter: HTTP/1.1 only (the server speaks nothing else, and the SDK's HTTP/2
    // probe sometimes fails with 503/20011 instead of falling back) and text JSON.
    let runtime = CosmosRuntime::builder()
        .with_connection_pool(
            ConnectionPoolOptions::builder()
                .with_is_http2_allowed(false)
                .build()
                .unwrap(),
        )
        .build()
        .await
        .unwrap();
    let client = CosmosClientBuilder::new()
        .with_runtime(runtime)
        .with_binary_encoding_options(BinaryEncodingOptions::new().with_enabled(false))
        .build(account, RoutingStrategy::PreferredRegions(Vec::new()))
        .await
        .unwrap();
    let container = client
        .database_client("queries")
        .container_client("customers", None)
        .await
        .unwrap();

    let one = customer(2).as_str().to_owned();
    let ids: Vec<Value> = container
        .query_items::<Value>(
            "SELECT VALUE c.customerId FROM c",
            FeedScope::partition(one.clone()),
            None,
        )
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    assert_eq!(ids, vec![json!(one)], "only the named partition");

    for mode in [QueryPlanMode::LocalPreferred, QueryPlanMode::GatewayOnly] {
        let counts: Vec<u64> = container
            .query_items::<u64>(
                Query::from("SELECT VALUE COUNT(1) FROM c"),
                FeedScope::full_container(),
                Some(QueryOptions::default().with_query_plan_mode(mode)),
            )
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        assert_eq!(counts, vec![3], "{mode:?}");
    }
}
