//! The call registry port against both adapters, and a call whose WebSocket and callbacks reach
//! different replicas (shared Redis).

use std::sync::Arc;
use std::time::Duration;

use handoff::config::{AcsAuth, AcsSettings, Secret};
use handoff::domain::{CustomerId, Role};
use handoff::store::redis::RedisPool;
use handoff::voice::events::{CallEvent, CallEventKind};
use handoff::voice::registry::{
    CallRecord, CallRegistry, CallState, CallToken, InProcessRegistry, RedisRegistry,
};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::support::TestApp;
use crate::support::acs_socket::AcsSocket;
use crate::support::fake_calling::{ACCESS_KEY, FakeAcs};
use crate::support::services::{RedisServer, free_port};

fn record() -> CallRecord {
    CallRecord {
        customer_id: CustomerId::parse_phone("+14255550199").unwrap(),
        call_connection_id: Some("call-1".into()),
        state: CallState::Connected,
        end_reason: None,
    }
}

fn event(id: &str) -> CallEvent {
    CallEvent {
        id: id.into(),
        call_connection_id: Some("call-1".into()),
        operation_context: Some("t1:0".into()),
        kind: CallEventKind::PlayCompleted,
    }
}

fn redis_registry(redis: &RedisServer) -> Arc<RedisRegistry> {
    let url = Secret::new(redis.url());
    Arc::new(RedisRegistry::new(RedisPool::new(&url, "test:").unwrap(), &url).unwrap())
}

/// The contract both adapters keep: a record written by one handle is read by another, and an
/// event published anywhere reaches the attached session.
async fn contract(writer: Arc<dyn CallRegistry>, reader: Arc<dyn CallRegistry>) {
    let token = CallToken::generate();
    assert_eq!(reader.get(&token).await.unwrap(), None);
    assert_eq!(writer.put(&token, &record()).await.unwrap(), record());
    assert_eq!(reader.get(&token).await.unwrap(), Some(record()));

    // Writes merge onto what is stored: a replica that wrote from an older read (a late
    // CallConnected, the answer path recording the call id) never moves the call back, nor
    // loses its call id or the reason it ended.
    let merged = CallToken::generate();
    let answering = CallRecord {
        call_connection_id: None,
        state: CallState::Answering,
        ..record()
    };
    assert_eq!(writer.put(&merged, &answering).await.unwrap(), answering);
    let ended = CallRecord {
        state: CallState::Ended,
        end_reason: Some("media_failed: socket closed".into()),
        ..record()
    };
    assert_eq!(writer.put(&merged, &ended).await.unwrap(), ended);
    let late = CallRecord {
        call_connection_id: Some("call-other".into()),
        state: CallState::Connected,
        end_reason: Some("hung up".into()),
        ..record()
    };
    assert_eq!(writer.put(&merged, &late).await.unwrap(), ended);
    assert_eq!(reader.get(&merged).await.unwrap(), Some(ended.clone()));
    let answered = CallRecord {
        call_connection_id: None,
        state: CallState::Answering,
        end_reason: None,
        ..record()
    };
    assert_eq!(reader.put(&merged, &answered).await.unwrap(), ended);

    let mut attachment = reader.attach(&token);
    let other = CallToken::generate();
    let mut other_attachment = reader.attach(&other);
    // The subscriber may still be connecting: publish until the event arrives (bounded).
    let mut received = None;
    for i in 0..100 {
        writer
            .publish(&token, &event(&format!("e{i}")))
            .await
            .unwrap();
        if let Ok(Some(e)) =
            tokio::time::timeout(Duration::from_millis(50), attachment.events.recv()).await
        {
            received = Some(e);
            break;
        }
    }
    let received = received.expect("the event reached the attached session");
    assert_eq!(received.kind, CallEventKind::PlayCompleted);
    assert_eq!(received.operation_context.as_deref(), Some("t1:0"));
    assert!(
        other_attachment.events.try_recv().is_err(),
        "another call's session hears nothing"
    );
}

#[tokio::test]
async fn voice_registry_in_process_contract() {
    let registry: Arc<dyn CallRegistry> = Arc::new(InProcessRegistry::new());
    contract(registry.clone(), registry).await;
}

#[tokio::test]
async fn voice_registry_redis_contract_across_two_replicas() {
    let redis = RedisServer::start();
    let a = redis_registry(&redis);
    let b = redis_registry(&redis);
    let cancel = CancellationToken::new();
    for registry in [a.clone(), b.clone()] {
        let cancel = cancel.clone();
        tokio::spawn(async move { registry.run(cancel).await });
    }
    contract(a, b).await;
    cancel.cancel();
}

/// Replica A answers and receives every callback; ACS opens the media socket on replica B. The
/// session on B still hears its PlayCompleted events (routed through Redis), so the greeting is
/// remembered once it has been played, and the caller's turn is answered.
#[tokio::test]
async fn voice_callbacks_reach_the_replica_holding_the_socket() {
    let redis = RedisServer::start();
    let fake = FakeAcs::start().await;
    let spawn = |port: u16| {
        let endpoint = fake.endpoint();
        let url = redis.url();
        TestApp::spawn_echo(move |s| {
            s.port = port;
            s.public_base_url = format!("http://127.0.0.1:{port}");
            s.redis_url = Some(Secret::new(url));
            s.acs = Some(AcsSettings {
                endpoint,
                auth: AcsAuth::AccessKey(Secret::new(ACCESS_KEY.to_vec())),
            });
        })
    };
    let (port_a, port_b) = (free_port(), free_port());
    let a = spawn(port_a).await;
    let b = spawn(port_b).await;
    let phone = "+14255550198";
    let incoming = json!([{
        "id": "ev-x", "eventType": "Microsoft.Communication.IncomingCall",
        "data": {"from": {"kind":"phoneNumber","rawId":"4:+14255550198","phoneNumber":{"value":phone}},
                 "incomingCallContext": "ctx-x", "correlationId": "corr-x"}
    }]);
    let status = a
        .http
        .post(a.url("/api/v1/calls/incoming"))
        .json(&incoming)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    // The same delivery at replica B is a duplicate (claims are shared).
    let status = b
        .http
        .post(b.url("/api/v1/calls/incoming"))
        .json(&incoming)
        .send()
        .await
        .unwrap()
        .status();
    assert_eq!(status, 200);
    let call = fake.wait_for("answered", |f| f.call_for("ctx-x")).await;
    assert_eq!(fake.answers().len(), 1);
    assert!(
        fake.callback_uri(&call.call_id)
            .unwrap()
            .contains(&port_a.to_string())
    );

    let on_b = call
        .media_url
        .replace(&format!(":{port_a}/"), &format!(":{port_b}/"));
    let mut socket = AcsSocket::connect(&on_b).await;
    let id = CustomerId::parse_phone(phone).unwrap();
    let remembered = |want: usize| {
        let b = &b;
        let id = id.clone();
        async move {
            for _ in 0..500 {
                if let Ok(Some(ctx)) = b.state.stores.contexts.get(&id).await
                    && ctx.transcript.len() >= want
                {
                    return ctx;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("replica B never remembered {want} turns");
        }
    };
    let ctx = remembered(1).await;
    assert_eq!(ctx.transcript[0].role, Role::Agent);
    socket.final_text("over to replica b", 5).await;
    let ctx = remembered(3).await;
    assert_eq!(
        ctx.transcript[2].text,
        "You said: over to replica b. Let me look into that."
    );
}
