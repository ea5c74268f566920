//! Sidecar mode end to end on loopback: the example Python application
//! (`examples/sidecar-app/app.py`) serves actor types for two runtimes, and an actor's state
//! follows it through `$deactivate` / `$activate` when it moves between nodes.

mod common;

use std::{process::Stdio, time::Duration};

use troupe_actors::{ActorError, DeliveryError, Message};
use troupe_contract::MemberStatus::{Leaving, Up};

use common::{TestNode, Tracker, table};

/// The example application on a free loopback port; panics (failing the test) when
/// python3 cannot start it.
async fn start_app() -> (tokio::process::Child, String) {
    try_start_app()
        .await
        .expect("python3 could not start the example sidecar app")
}

async fn try_start_app() -> Option<(tokio::process::Child, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let app = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/sidecar-app/app.py");
    let child = tokio::process::Command::new("python3")
        .arg(app)
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .ok()?;
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Some((child, format!("http://{addr}")));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    None
}

/// The example application's actor types, declared as the operator declares `spec.app.types`.
fn serve_app(c: &mut troupe_actors::RuntimeConfig, url: &str) {
    c.app_url = Some(url.to_owned());
    c.app_types = vec!["greeter".to_owned(), "cart".to_owned()];
}

#[tokio::test]
async fn a_sidecar_node_without_declared_types_refuses_to_start_saying_what_to_set() {
    let mut c = troupe_actors::RuntimeConfig::new("a", "a-1");
    c.app_url = Some("http://127.0.0.1:1".to_owned());
    let refused = troupe_actors::ActorRuntime::new(c, &prometheus::Registry::new())
        .err()
        .map(|e| e.to_string());
    assert!(
        refused
            .as_deref()
            .is_some_and(|e| e.contains("TROUPE_APP_TYPES")),
        "a sidecar node with no declared actor types started: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_type_the_application_does_not_declare_never_reaches_it() {
    let (_child, url) = start_app().await;
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |c| {
        c.app_url = Some(url.clone());
        c.app_types = vec!["greeter".to_owned()];
    })
    .await;
    a.rt.update_members(&table(1, &[("a", &a.addr, Up)]));
    let r =
        a.rt.ask("cart", "d1", Message::new("add", r#"{"item":"pear"}"#))
            .await;
    assert!(
        matches!(r, Err(troupe_actors::DeliveryError::UnknownType(_))),
        "an undeclared type reached the application: {r:?}"
    );
}

fn json(b: &bytes::Bytes) -> serde_json::Value {
    serde_json::from_slice(b).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_actors_answer_and_keep_their_state_across_a_move() {
    let (_child, url) = start_app().await;
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |c| serve_app(c, &url)).await;
    let b = TestNode::start("b", &tracker, |c| serve_app(c, &url)).await;
    let t1 = table(1, &[("a", &a.addr, Up), ("b", &b.addr, Up)]);
    a.rt.update_members(&t1);
    b.rt.update_members(&t1);

    let r =
        a.rt.ask(
            "greeter",
            "alice",
            Message::new("greet", r#"{"name":"Alice"}"#),
        )
        .await;
    let r = r.expect("greet");
    assert_eq!(json(&r)["greeting"], "hello Alice");
    assert_eq!(json(&r)["count"], 1);
    for i in 0..20 {
        let r =
            b.rt.ask(
                "cart",
                &format!("c{i}"),
                Message::new("add", r#"{"item":"apple","qty":2}"#),
            )
            .await;
        assert_eq!(json(&r.expect("add"))["items"]["apple"], 2);
    }
    // The application's 4xx is the client's fault.
    let bad = a.rt.ask("cart", "c0", Message::new("nope", "")).await;
    assert!(
        matches!(bad, Err(DeliveryError::Actor(ActorError::BadRequest(_)))),
        "{bad:?}"
    );

    // Every actor moves to a when b leaves; their state comes along.
    let t2 = table(2, &[("a", &a.addr, Up), ("b", &b.addr, Leaving)]);
    a.rt.update_members(&t2);
    b.rt.update_members(&t2);
    let report = b.rt.drain(Duration::from_secs(10)).await;
    assert!(report.complete, "{report:?}");
    for i in 0..20 {
        let r =
            a.rt.ask(
                "cart",
                &format!("c{i}"),
                Message::new("add", r#"{"item":"apple"}"#),
            )
            .await;
        assert_eq!(
            json(&r.expect("add"))["items"]["apple"],
            3,
            "cart c{i} kept its items"
        );
    }
    let r =
        a.rt.ask("greeter", "alice", Message::new("greet", ""))
            .await;
    assert_eq!(json(&r.expect("greet"))["count"], 2);
}

/// Lifecycle calls travel on `$` paths of the application; a client (or a forwarded
/// message) naming such a method would pop or overwrite the application's state behind the
/// node's back. Such methods are refused before the application sees them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_methods_starting_with_a_dollar_are_refused_and_the_state_stays() {
    let (_child, url) = start_app().await;
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |c| serve_app(c, &url)).await;
    a.rt.update_members(&table(1, &[("a", &a.addr, Up)]));
    let add = || {
        a.rt.ask(
            "cart",
            "d1",
            Message::new("add", r#"{"item":"pear","qty":2}"#),
        )
    };
    assert_eq!(json(&add().await.expect("add"))["items"]["pear"], 2);

    for method in ["$deactivate", "$activate", "$anything"] {
        let r = a.rt.ask("cart", "d1", Message::new(method, "{}")).await;
        match r {
            Err(DeliveryError::Actor(ActorError::BadRequest(why))) => {
                assert!(why.contains("reserved"), "{method}: {why}");
            }
            other => panic!("{method} was not refused: {other:?}"),
        }
    }
    assert_eq!(
        json(&add().await.expect("add"))["items"]["pear"],
        4,
        "the cart kept its items"
    );
}

/// With a durable store the state the application returns with each answer is written
/// before the reply: a new node process (the pod restarted after a crash, its application
/// too) starts the actor from it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_durable_store_the_state_an_answer_carries_is_stored_before_the_reply() {
    let (child, url) = start_app().await;
    let store = troupe_actors::InMemoryStore::new(1 << 20);
    let node = |pod: &str, version: u64, url: String| {
        let mut c = troupe_actors::RuntimeConfig::new(pod, format!("{pod}-1"));
        serve_app(&mut c, &url);
        c.state_store = Some(std::sync::Arc::new(store.clone()));
        let rt =
            troupe_actors::ActorRuntime::new(c, &prometheus::Registry::new()).expect("runtime");
        rt.update_members(&table(version, &[(pod, "127.0.0.1:1", Up)]));
        rt.set_accepting(true);
        rt
    };
    let a = node("a", 1, url);
    for qty in [2, 3] {
        let body = format!(r#"{{"item":"pear","qty":{qty}}}"#);
        a.ask("cart", "k", Message::new("add", body))
            .await
            .expect("add");
    }
    let stored = store.get("cart", "k").expect("stored before the reply");
    assert_eq!(stored.version, 2);
    assert_eq!(json(&stored.state)["items"]["pear"], 5);
    // The pod dies with its application: nothing survives but the store.
    drop(a);
    drop(child);
    let Some((_child, url)) = try_start_app().await else {
        panic!("python3 could not start the example sidecar app again");
    };
    let b = node("b", 2, url);
    let r = b
        .ask("cart", "k", Message::new("list", ""))
        .await
        .expect("list");
    assert_eq!(
        json(&r)["items"]["pear"],
        5,
        "the new application got the stored state"
    );
}
