//! Durable state through the in-memory store (same fencing as PostgreSQL, no I/O): what
//! was acknowledged is stored before the reply, a new process loads it, two activations
//! of one actor never both write on one version, a store outage answers 503 with
//! `Retry-After` and heals without a restart, a state over the limit is refused with 413.

mod common;

use std::{sync::Arc, time::Duration};

use axum::http::StatusCode;
use troupe_actors::{
    ActorRuntime, DeliveryError, InMemoryStore, Message, RuntimeConfig, StateStore,
};
use troupe_contract::MemberStatus;

use common::{post, table};

fn store() -> InMemoryStore {
    InMemoryStore::new(64)
}

/// A one-member cluster of `pod` under table `version`, writing through to `store`.
fn node(
    pod: &str,
    version: u64,
    store: &InMemoryStore,
    tune: impl FnOnce(&mut RuntimeConfig),
) -> ActorRuntime {
    let mut c = RuntimeConfig::new(pod, format!("{pod}-1"));
    c.state_store = Some(Arc::new(store.clone()) as Arc<dyn StateStore>);
    tune(&mut c);
    let rt = ActorRuntime::new(c, &prometheus::Registry::new()).expect("runtime");
    rt.update_members(&table(version, &[(pod, "127.0.0.1:1", MemberStatus::Up)]));
    rt.set_accepting(true);
    rt
}

fn stored_counter(store: &InMemoryStore, id: &str) -> Option<(u64, i64)> {
    store.get("counter", id).map(|s| {
        let v = <[u8; 8]>::try_from(&s.state[..])
            .map(i64::from_le_bytes)
            .unwrap_or(i64::MIN);
        (s.version, v)
    })
}

fn value(answer: &[u8]) -> i64 {
    serde_json::from_slice::<serde_json::Value>(answer)
        .ok()
        .and_then(|v| v["value"].as_i64())
        .unwrap_or(i64::MIN)
}

#[tokio::test]
async fn every_acknowledged_turn_is_stored_and_a_new_process_loads_it() {
    let store = store();
    let a = node("a", 1, &store, |_| {});
    for i in 1..=5 {
        let r = a
            .ask("counter", "c", Message::new("add", ""))
            .await
            .expect("add");
        assert_eq!(value(&r), i);
        assert_eq!(
            stored_counter(&store, "c"),
            Some((i as u64, i)),
            "stored before the reply"
        );
    }
    a.tell("counter", "c", Message::new("add", ""))
        .await
        .expect("tell");
    assert_eq!(
        stored_counter(&store, "c"),
        Some((6, 6)),
        "stored before the tell's acknowledgement"
    );
    // Reads write nothing.
    a.ask("counter", "c", Message::new("get", ""))
        .await
        .expect("get");
    assert_eq!(store.writes(), 6);
    drop(a);
    // Another process (the pod restarted after a SIGKILL) under a later table.
    let b = node("b", 2, &store, |_| {});
    let r = b
        .ask("counter", "c", Message::new("get", ""))
        .await
        .expect("get");
    assert_eq!(value(&r), 6);
}

#[tokio::test]
async fn two_activations_of_one_actor_never_lose_an_acknowledged_write() {
    // Both nodes believe they own the actor (two one-member tables): the worst case of
    // double activation. Every acknowledged add must be in the stored value.
    let store = store();
    let a = node("a", 1, &store, |_| {});
    let b = node("b", 1, &store, |_| {});
    let run = |rt: ActorRuntime| {
        tokio::spawn(async move {
            let (mut ok, mut refused) = (0i64, 0u64);
            for _ in 0..300 {
                match rt.ask("counter", "shared", Message::new("add", "")).await {
                    Ok(_) => ok += 1,
                    Err(DeliveryError::Unavailable(_)) => refused += 1,
                    Err(e) => panic!("unexpected answer {e}"),
                }
                tokio::task::yield_now().await;
            }
            (ok, refused)
        })
    };
    let (ra, rb) = (run(a.clone()), run(b.clone()));
    let (ra, rb) = (ra.await.expect("a"), rb.await.expect("b"));
    let (version, stored) = stored_counter(&store, "shared").expect("stored");
    assert_eq!(
        stored,
        ra.0 + rb.0,
        "acknowledged adds (a {ra:?}, b {rb:?}) == stored value"
    );
    assert_eq!(version, stored as u64, "one version per acknowledged add");
}

#[tokio::test]
async fn an_owner_behind_the_writers_table_cannot_write_after_it() {
    let store = store();
    let new = node("new", 5, &store, |_| {});
    new.ask("counter", "c", Message::new("add", ""))
        .await
        .expect("add");
    // A node whose table is older than the writer's (it missed the move): refused, 503.
    let stale = node("stale", 4, &store, |_| {});
    let refused = stale.ask("counter", "c", Message::new("add", "")).await;
    assert!(
        matches!(refused, Err(DeliveryError::Unavailable(_))),
        "{refused:?}"
    );
    assert_eq!(stored_counter(&store, "c"), Some((1, 1)));
}

#[tokio::test]
async fn a_store_outage_answers_503_with_retry_after_and_heals_without_a_restart() {
    let store = store();
    let rt = node("a", 1, &store, |_| {});
    let api = rt.client_router();
    let (s, _, body) = post(&api, "/actors/counter/c/ask/add", "").await;
    assert_eq!((s, value(body.as_bytes())), (StatusCode::OK, 1));
    store.set_available(false);
    for uri in [
        "/actors/counter/c/ask/add",
        "/actors/counter/c/tell/add",
        "/actors/counter/new/ask/add",
    ] {
        let (s, retry, body) = post(&api, uri, "").await;
        assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{uri}: {body}");
        assert!(retry.is_some(), "{uri}: 503 carries Retry-After");
    }
    assert_eq!(
        stored_counter(&store, "c"),
        Some((1, 1)),
        "nothing acknowledged, nothing written"
    );
    store.set_available(true);
    let (s, _, body) = post(&api, "/actors/counter/c/ask/add", "").await;
    assert_eq!(
        (s, value(body.as_bytes())),
        (StatusCode::OK, 2),
        "the unacknowledged adds are not in the state"
    );
    let (s, _, _) = post(&api, "/actors/counter/c/tell/add", "").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    assert_eq!(stored_counter(&store, "c"), Some((3, 3)));
}

#[tokio::test]
async fn a_state_over_the_store_limit_is_refused_with_413_and_rolled_back() {
    let store = store();
    let rt = node("a", 1, &store, |_| {});
    let api = rt.client_router();
    let (s, _, _) = post(&api, "/actors/kv/k/ask/put", r#"{"key":"a","value":1}"#).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = post(
        &api,
        "/actors/kv/k/ask/put",
        r#"{"key":"b","value":"a string long enough to go over the sixty-four bytes the store takes"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    let (s, _, body) = post(&api, "/actors/kv/k/ask/keys", "").await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::OK, r#"{"keys":["a"]}"#),
        "rolled back to the stored state"
    );
    let (s, _, _) = post(&api, "/actors/kv/k/ask/put", r#"{"key":"c","value":2}"#).await;
    assert_eq!(s, StatusCode::OK, "the actor goes on after a refusal");
    assert_eq!(store.get("kv", "k").map(|s| s.version), Some(2));
}

#[tokio::test]
async fn passivation_parks_nothing_with_a_store() {
    let store = store();
    let rt = node("a", 1, &store, |c| {
        c.passivate_after = Duration::from_millis(20)
    });
    rt.ask("counter", "c", Message::new("add", r#"{"by":7}"#))
        .await
        .expect("add");
    for _ in 0..200 {
        if rt.active_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rt.active_count(), 0, "passivated");
    assert!(
        rt.parked_states().is_empty(),
        "the store holds the state, not the node"
    );
    let r = rt
        .ask("counter", "c", Message::new("get", ""))
        .await
        .expect("get");
    assert_eq!(value(&r), 7, "loaded again from the store");
}

#[tokio::test]
async fn at_max_actors_a_new_activation_is_refused_until_passivation_frees_room() {
    let store = store();
    let rt = node("a", 1, &store, |c| {
        c.max_actors = 3;
        c.passivate_after = Duration::from_millis(50);
    });
    let api = rt.client_router();
    for id in ["c1", "c2", "c3"] {
        let (s, _, body) = post(&api, &format!("/actors/counter/{id}/ask/add"), "").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":1}"#));
    }
    let (s, retry, body) = post(&api, "/actors/counter/c4/ask/add", "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body.contains("limit of 3 actors"), "{body}");
    assert_eq!(stored_counter(&store, "c4"), None, "nothing ran");
    for _ in 0..1000 {
        if rt.active_count() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(rt.active_count(), 0, "passivated");
    // The store holds the states: passivation frees the room.
    for id in ["c4", "c1"] {
        let (s, _, body) = post(&api, &format!("/actors/counter/{id}/ask/add"), "").await;
        assert_eq!(s, StatusCode::OK, "{id}: {body}");
    }
    assert_eq!(stored_counter(&store, "c1").map(|(_, v)| v), Some(2));
    assert_eq!(stored_counter(&store, "c4").map(|(_, v)| v), Some(1));
}
