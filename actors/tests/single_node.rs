//! One runtime, no network: the client API's status codes, mailbox policies end to end,
//! supervision and passivation.

mod common;

use std::time::Duration;

use axum::http::StatusCode;
use troupe_actors::{
    ActorError, BuiltinType, DeliveryError, MailboxConfig, Message, OverflowPolicy, RuntimeConfig,
};

use common::{TrackedType, Tracker, int, post, single_node};

fn config(tune: impl FnOnce(&mut RuntimeConfig)) -> RuntimeConfig {
    let mut c = RuntimeConfig::new("solo", "solo-1");
    c.actor_types.push(std::sync::Arc::new(TrackedType {
        node: "solo".into(),
        tracker: Tracker::default(),
    }));
    tune(&mut c);
    c
}

#[tokio::test]
async fn client_api_answers_with_the_documented_status_codes() {
    let rt = single_node(config(|c| {
        c.max_body_bytes = 1024;
        c.builtin_types = BuiltinType::ALL.to_vec();
    }));
    let api = rt.client_router();

    let (s, _, body) = post(&api, "/actors/counter/c1/ask/add", r#"{"by":5}"#).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":5}"#));
    let (s, _, _) = post(&api, "/actors/counter/c1/tell/add", "").await;
    assert_eq!(s, StatusCode::ACCEPTED);
    let (s, _, body) = post(&api, "/actors/counter/c1/ask", "").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":6}"#));
    let (s, _, body) = post(&api, "/actors/echo/e/ask/anything", "hello").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, "hello"));
    let (s, _, _) = post(&api, "/actors/kv/k/ask/put", r#"{"key":"a","value":1}"#).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _, body) = post(&api, "/actors/kv/k/ask/get", r#"{"key":"a"}"#).await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":1}"#));
    let (s, _, body) = post(&api, "/actors/load/l/ask", r#"{"spin_us":10}"#).await;
    assert_eq!(s, StatusCode::OK, "{body}");

    let (s, _, _) = post(&api, "/actors/nope/x/ask", "").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _, _) = post(&api, "/actors/counter/c1/ask/add", "not json").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _, _) = post(&api, "/actors/counter/c1/ask/add", vec![b' '; 2048]).await;
    assert_eq!(s, StatusCode::PAYLOAD_TOO_LARGE);

    rt.set_accepting(false);
    let (s, retry, _) = post(&api, "/actors/counter/c1/ask", "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry.as_deref(), Some("1"));
}

#[tokio::test]
async fn a_full_reject_mailbox_answers_429_with_retry_after() {
    let rt = single_node(config(|c| {
        c.mailbox_overrides.insert(
            "tracked".into(),
            MailboxConfig {
                capacity: 2,
                overflow: OverflowPolicy::Reject,
                ..MailboxConfig::default()
            },
        );
    }));
    let api = rt.client_router();
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (s, retry, _) = post(&api, "/actors/tracked/t/tell/sleep", "").await;
        if s == StatusCode::TOO_MANY_REQUESTS {
            assert!(retry.is_some(), "429 carries Retry-After");
        }
        statuses.push(s);
    }
    assert!(statuses.contains(&StatusCode::ACCEPTED));
    assert!(
        statuses.contains(&StatusCode::TOO_MANY_REQUESTS),
        "{statuses:?}"
    );
}

#[tokio::test]
async fn backpressure_waits_then_refuses_with_503() {
    let rt = single_node(config(|c| {
        c.mailbox_overrides.insert(
            "tracked".into(),
            MailboxConfig {
                capacity: 1,
                overflow: OverflowPolicy::Backpressure,
                backpressure_timeout: Duration::from_millis(5),
            },
        );
    }));
    let mut results = Vec::new();
    for _ in 0..6 {
        results.push(rt.tell("tracked", "t", Message::new("sleep", "")).await);
    }
    assert!(results[0].is_ok());
    let refused = results
        .iter()
        .filter(
            |r| matches!(r, Err(e @ DeliveryError::MailboxFull { .. }) if e.http_status() == 429),
        )
        .count();
    assert!(refused > 0, "{results:?}");
    // After the sleeps drain, the mailbox takes messages again.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        rt.tell("tracked", "t", Message::new("get", ""))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn drop_oldest_and_drop_newest_answer_the_dropped_asks() {
    for policy in [OverflowPolicy::DropOldest, OverflowPolicy::DropNewest] {
        let rt = single_node(config(|c| {
            c.mailbox_overrides.insert(
                "tracked".into(),
                MailboxConfig {
                    capacity: 1,
                    overflow: policy,
                    ..MailboxConfig::default()
                },
            );
        }));
        // Occupy the actor, fill its mailbox, then overflow it.
        let busy = tokio::spawn({
            let rt = rt.clone();
            async move { rt.ask("tracked", "t", Message::new("sleep", "")).await }
        });
        tokio::time::sleep(Duration::from_millis(5)).await;
        let first = tokio::spawn({
            let rt = rt.clone();
            async move { rt.ask("tracked", "t", Message::new("get", "")).await }
        });
        tokio::time::sleep(Duration::from_millis(2)).await;
        let second = rt.ask("tracked", "t", Message::new("handled", "")).await;
        let first = first.await.expect("join");
        assert!(busy.await.expect("join").is_ok());
        match policy {
            OverflowPolicy::DropOldest => {
                assert!(matches!(first, Err(DeliveryError::Dropped(_))), "{first:?}");
                assert!(second.is_ok(), "{second:?}");
            }
            _ => {
                assert!(first.is_ok(), "{first:?}");
                assert!(
                    matches!(second, Err(DeliveryError::Dropped(_))),
                    "{second:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn a_panicking_handler_is_answered_with_an_error_and_the_actor_restarts() {
    let rt = single_node(config(|_| {}));
    for _ in 0..3 {
        assert!(
            rt.ask("tracked", "p", Message::new("add", ""))
                .await
                .is_ok()
        );
    }
    let failed = rt.ask("tracked", "p", Message::new("panic", "")).await;
    assert!(
        matches!(&failed, Err(DeliveryError::Actor(ActorError::Failed(m))) if m.contains("panicked")),
        "{failed:?}"
    );
    assert_eq!(failed.as_ref().err().map(|e| e.http_status()), Some(500));
    // Restarted (fresh handled count), state kept.
    let handled = rt.ask("tracked", "p", Message::new("handled", "")).await;
    assert_eq!(handled.as_ref().map(int).ok(), Some(1));
    let value = rt.ask("tracked", "p", Message::new("get", "")).await;
    assert_eq!(value.as_ref().map(int).ok(), Some(3));
    // A second panic in a row waits for the backoff, and still answers.
    assert!(
        rt.ask("tracked", "p", Message::new("panic", ""))
            .await
            .is_err()
    );
    assert!(
        rt.ask("tracked", "p", Message::new("get", ""))
            .await
            .is_ok()
    );
}

#[tokio::test]
async fn idle_actors_passivate_and_come_back_with_their_state() {
    let rt = single_node(config(|c| c.passivate_after = Duration::from_millis(100)));
    for _ in 0..3 {
        assert!(
            rt.ask("counter", "c", Message::new("add", ""))
                .await
                .is_ok()
        );
    }
    assert_eq!(rt.active_ids("counter"), vec!["c".to_owned()]);
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(rt.active_ids("counter").is_empty(), "passivated");
    let v = rt.ask("counter", "c", Message::new("get", "")).await;
    assert_eq!(v.ok().as_deref(), Some(&br#"{"value":3}"#[..]));
}

#[tokio::test]
async fn mailbox_depth_is_exported_per_type_and_in_total() {
    let registry = prometheus::Registry::new();
    let mut c = config(|_| {});
    c.pod = "m".into();
    let rt = troupe_actors::ActorRuntime::new(c, &registry).expect("runtime");
    rt.set_accepting(true);
    rt.update_members(&common::table(
        1,
        &[("m", "127.0.0.1:1", troupe_contract::MemberStatus::Up)],
    ));
    for _ in 0..5 {
        let _ = rt.tell("tracked", "d", Message::new("sleep", "")).await;
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_default();
    assert!(
        text.contains("troupe_mailbox_depth{actor_type=\"tracked\"}"),
        "{text}"
    );
    // The per-node total under its v1 name, and (deprecated, until v1) the old one.
    assert!(text.contains("\ntroupe_node_mailbox_depth "), "{text}");
    assert!(text.contains("\ntroupe_mailbox_depth_total "), "{text}");
    assert!(rt.mailbox_depth() >= 3, "depth {}", rt.mailbox_depth());
    assert!(text.contains("troupe_active_actors{actor_type=\"tracked\"} 1"));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rt.mailbox_depth(), 0);
}

/// Waits until no activation is left (each idle one passivates), at most 10 s.
async fn until_all_passivated(rt: &troupe_actors::ActorRuntime) {
    for _ in 0..1000 {
        if rt.active_count() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("still active: {:?}", rt.activations());
}

#[tokio::test]
async fn a_node_holds_at_most_max_actors_and_refuses_more_with_a_clear_503() {
    let registry = prometheus::Registry::new();
    let mut c = config(|c| {
        c.max_actors = 3;
        c.passivate_after = Duration::from_millis(50);
    });
    c.pod = "m".into();
    let rt = troupe_actors::ActorRuntime::new(c, &registry).expect("runtime");
    rt.update_members(&common::table(
        1,
        &[("m", "127.0.0.1:1", troupe_contract::MemberStatus::Up)],
    ));
    rt.set_accepting(true);
    let api = rt.client_router();
    for id in ["c1", "c2"] {
        let (s, _, body) = post(&api, &format!("/actors/counter/{id}/ask/add"), "").await;
        assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":1}"#));
    }
    // A stateless actor: it keeps no state when it passivates, so it frees its room.
    let (s, _, _) = post(&api, "/actors/echo/e1/ask", "hi").await;
    assert_eq!(s, StatusCode::OK);

    let (s, retry, body) = post(&api, "/actors/counter/c3/ask/add", "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert_eq!(retry.as_deref(), Some("1"));
    assert!(body.contains("limit of 3 actors"), "{body}");
    assert!(body.contains("TROUPE_MAX_ACTORS"), "{body}");
    assert_eq!(rt.active_count(), 3, "the refused actor was not activated");
    // Messages to the actors it holds still go through.
    let (s, _, body) = post(&api, "/actors/counter/c1/ask/add", "").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":2}"#));

    // Passivation: c1 and c2 keep their states here (never dropped in memory mode: they
    // still count), e1 keeps none and frees its room.
    until_all_passivated(&rt).await;
    assert_eq!(rt.parked_states().len(), 2);
    let (s, _, body) = post(&api, "/actors/counter/c3/ask/add", "").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":1}"#));
    let (s, _, body) = post(&api, "/actors/counter/c4/ask/add", "").await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    // A kept state is its actor's room: c1 and c2 come back with their values.
    let (s, _, body) = post(&api, "/actors/counter/c1/ask/get", "").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":2}"#));
    let (s, _, body) = post(&api, "/actors/counter/c2/ask/get", "").await;
    assert_eq!((s, body.as_str()), (StatusCode::OK, r#"{"value":1}"#));

    let text = prometheus::TextEncoder::new()
        .encode_to_string(&registry.gather())
        .unwrap_or_default();
    assert!(
        text.contains("troupe_activations_refused_total{actor_type=\"counter\"} 2"),
        "{text}"
    );
    assert!(text.contains("troupe_max_actors 3"), "{text}");
    assert!(
        text.contains("troupe_parked_actor_states{actor_type=\"counter\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn the_load_type_is_served_only_when_enabled() {
    let rt = single_node(config(|_| {}));
    let api = rt.client_router();
    let (s, _, body) = post(&api, "/actors/load/l/ask", r#"{"spin_us":10}"#).await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{body}");
    assert!(body.contains("unknown actor type"), "{body}");
    assert!(!rt.actor_types().contains(&"load".to_owned()));
    for t in ["counter", "kv", "echo"] {
        assert!(
            rt.actor_types().contains(&t.to_owned()),
            "{t} is on by default"
        );
    }

    let rt = single_node(config(|c| {
        c.builtin_types = vec![BuiltinType::Counter, BuiltinType::Load];
    }));
    let api = rt.client_router();
    let (s, _, body) = post(&api, "/actors/load/l/ask", r#"{"spin_us":10,"sleep_us":5}"#).await;
    assert_eq!(
        (s, body.as_str()),
        (StatusCode::OK, r#"{"slept_us":5,"spun_us":10}"#)
    );
    let (s, _, _) = post(&api, "/actors/echo/e/ask", "hi").await;
    assert_eq!(s, StatusCode::NOT_FOUND, "echo was left out");
}

/// The test runs on a current-thread runtime: if `load` spun on it, nothing else could
/// run until the spin ended. Ordering only: the other work (100 yields) has to finish
/// before a half-second spin does.
#[tokio::test]
async fn a_spinning_load_actor_leaves_the_runtime_thread_free() {
    let rt = single_node(config(|c| c.builtin_types = vec![BuiltinType::Load]));
    for payload in [
        r#"{"spin_us":500000}"#,
        r#"{"spin_us":500000,"sleep_us":1}"#,
    ] {
        let load = rt.ask("load", "busy", Message::new("default", payload));
        tokio::pin!(load);
        let others = async {
            for _ in 0..100 {
                tokio::task::yield_now().await;
            }
        };
        let first = tokio::select! {
            biased;
            r = &mut load => Err(r),
            () = others => Ok(()),
        };
        assert!(
            first.is_ok(),
            "{payload}: the load actor held the runtime thread until it answered: {first:?}"
        );
        let reply = load.await.expect("load answers");
        let v: serde_json::Value = serde_json::from_slice(&reply).expect("json");
        assert_eq!(v["spun_us"], 500000, "{v}");
    }
}
