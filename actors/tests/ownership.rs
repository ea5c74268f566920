//! The ownership protocol under faults, on loopback runtimes: claims that follow an actor
//! across skipped table versions, downed owners that stop at once and never bring a stale
//! state back, the serving deadline, and states too large for one frame.

mod common;

use std::time::{Duration, Instant};

use troupe_actors::{ActorError, DeliveryError, Message};
use troupe_contract::MemberStatus::{self, Down, Joining, Leaving, Up};

use common::{Proxy, TestNode, Tracker, int, table};

/// The table at `version` with `(node, address, status)`.
fn at(version: u64, members: &[(&TestNode, &str, MemberStatus)]) -> troupe_contract::MemberTable {
    let spec: Vec<(&str, &str, MemberStatus)> = members
        .iter()
        .map(|(n, addr, s)| (n.pod.as_str(), *addr, *s))
        .collect();
    table(version, &spec)
}

fn metric(node: &TestNode, series: &str) -> i64 {
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&node.registry.gather())
        .unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until `id` is no longer active on `node`.
async fn wait_passivated(node: &TestNode, id: &str) {
    for _ in 0..150 {
        if !node.rt.active_ids("tracked").contains(&id.to_owned()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn add(node: &TestNode, id: &str) -> i64 {
    let r = node.rt.ask("tracked", id, Message::new("add", "")).await;
    r.as_ref()
        .map(int)
        .unwrap_or_else(|e| panic!("add via {}: {e}", node.pod))
}

/// H2: X moves A → B → C; B sees V, V+1 and C sees V, V+2 (V+1 skipped). C's claim must
/// reach B (A says where X went), so X never runs on both and B's increments survive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_follows_the_actor_when_a_table_version_was_skipped() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |_| {}).await;
    let c = TestNode::start("c", &tracker, |_| {}).await;
    let v = at(
        1,
        &[
            (&a, &a.addr, Up),
            (&b, &b.addr, Joining),
            (&c, &c.addr, Joining),
        ],
    );
    let v1 = at(
        2,
        &[
            (&a, &a.addr, Leaving),
            (&b, &b.addr, Up),
            (&c, &c.addr, Joining),
        ],
    );
    let v2 = at(
        3,
        &[
            (&a, &a.addr, Leaving),
            (&b, &b.addr, Leaving),
            (&c, &c.addr, Up),
        ],
    );
    for n in [&a, &b, &c] {
        n.rt.update_members(&v);
    }
    for _ in 0..5 {
        add(&a, "x").await;
    }
    a.rt.update_members(&v1);
    b.rt.update_members(&v1);
    for _ in 0..3 {
        add(&b, "x").await;
    }
    assert_eq!(b.rt.active_ids("tracked"), vec!["x".to_owned()]);
    c.rt.update_members(&v2); // V+1 skipped
    let at_c = c.rt.ask("tracked", "x", Message::new("get", "")).await;
    let on_b = b.rt.active_ids("tracked").contains(&"x".to_owned());
    let on_c = c.rt.active_ids("tracked").contains(&"x".to_owned());
    assert!(!(on_b && on_c), "x is active on both B and C");
    assert_eq!(
        at_c.as_ref().map(int).ok(),
        Some(8),
        "C lost B's increments: {at_c:?}"
    );
    assert_eq!(
        tracker.violations.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// H3: A is downed while alive and cut off; B activates X without A's state (after the
/// grace period) and moves on. When A comes back and learns it is Down, its old state of X
/// must not overwrite B's newer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_downed_owner_that_comes_back_never_overwrites_newer_state() {
    let tracker = Tracker::default();
    let passivate = |c: &mut troupe_actors::RuntimeConfig| {
        c.passivate_after = Duration::from_millis(100);
    };
    let a = TestNode::start("a", &tracker, passivate).await;
    let b = TestNode::start("b", &tracker, passivate).await;
    let to_a = Proxy::start(&a.addr).await;
    let v1 = at(1, &[(&a, &to_a.addr, Up), (&b, &b.addr, Joining)]);
    let v2 = at(2, &[(&a, &to_a.addr, Down), (&b, &b.addr, Up)]);
    a.rt.update_members(&v1);
    b.rt.update_members(&v1);
    // Three activations of X on A (generation above 1), value 9.
    for _ in 0..3 {
        for _ in 0..3 {
            add(&a, "x").await;
        }
        wait_passivated(&a, "x").await;
    }
    assert!(a.rt.active_ids("tracked").is_empty(), "x passivated on A");
    to_a.blackhole();
    b.rt.update_members(&v2);
    for _ in 0..3 {
        add(&b, "x").await;
    }
    wait_passivated(&b, "x").await;
    assert!(b.rt.active_ids("tracked").is_empty(), "x passivated on B");
    // A comes back and learns it is Down; whatever it still keeps must not win.
    a.rt.update_members(&v2);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v = b.rt.ask("tracked", "x", Message::new("get", "")).await;
    assert_eq!(
        v.as_ref().map(int).ok(),
        Some(3),
        "B's state was overwritten: {v:?}"
    );
}

/// H3: a node that learns it is Down stops at once: it does not finish its mailbox. The
/// queued ask answers 503, the queued tells are counted as aborted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_learns_it_is_down_stops_processing_at_once() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |_| {}).await;
    a.rt.update_members(&at(1, &[(&a, &a.addr, Up), (&b, &b.addr, Joining)]));
    // 40 tells of 20 ms each: 800 ms of work, then an ask behind them.
    for _ in 0..40 {
        a.rt.tell("tracked", "x", Message::new("sleep", ""))
            .await
            .expect("tell accepted");
    }
    let ask = tokio::spawn({
        let rt = a.rt.clone();
        async move { rt.ask("tracked", "x", Message::new("handled", "")).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    a.rt.update_members(&at(2, &[(&a, &a.addr, Down), (&b, &b.addr, Up)]));
    let answer = ask.await.expect("ask task");
    assert!(
        matches!(answer, Err(DeliveryError::Unavailable(_))),
        "the queued ask was handled after the node learned it is Down: {answer:?}"
    );
    let aborted = metric(
        &a,
        "troupe_dead_letters_total{actor_type=\"tracked\",reason=\"aborted\"}",
    );
    assert!(aborted > 0, "queued tells were finished, not aborted");
    for _ in 0..50 {
        if a.rt.active_ids("tracked").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.rt.active_ids("tracked").is_empty());
}

/// M1: a `kv` map may not grow above the frame limit (the put is refused with 413), and
/// every acknowledged put is still there after the map moves to another owner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_states_are_refused_at_the_source_and_survive_an_ownership_move() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |_| {}).await;
    let v1 = at(1, &[(&a, &a.addr, Up), (&b, &b.addr, Joining)]);
    let v2 = at(2, &[(&a, &a.addr, Leaving), (&b, &b.addr, Up)]);
    a.rt.update_members(&v1);
    b.rt.update_members(&v1);
    let mib = "v".repeat(1 << 20);
    let mut acked = Vec::new();
    let mut refused = 0;
    for i in 0..9 {
        let body = format!(r#"{{"key":"k{i}","value":"{mib}"}}"#);
        match a.rt.ask("kv", "big", Message::new("put", body)).await {
            Ok(_) => acked.push(format!("k{i}")),
            Err(DeliveryError::Actor(ActorError::TooLarge(_))) => refused += 1,
            Err(e) => panic!("put k{i}: {e}"),
        }
    }
    a.rt.update_members(&v2);
    b.rt.update_members(&v2);
    let keys = b.rt.ask("kv", "big", Message::new("keys", "")).await;
    let keys: Vec<String> = keys
        .ok()
        .and_then(|k| serde_json::from_slice::<serde_json::Value>(&k).ok())
        .and_then(|v| serde_json::from_value(v["keys"].clone()).ok())
        .unwrap_or_default();
    assert_eq!(
        keys, acked,
        "acknowledged puts lost in the move ({refused} refused)"
    );
    assert!(refused > 0, "a put beyond the frame limit was acknowledged");
}

/// M3: the serving deadline gates every delivery path at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_passed_serving_deadline_refuses_clients_and_peers_at_once() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |_| {}).await;
    let v = at(1, &[(&a, &a.addr, Up), (&b, &b.addr, Joining)]);
    a.rt.update_members(&v);
    b.rt.update_members(&v);
    add(&a, "x").await;
    let past = Instant::now()
        .checked_sub(Duration::from_millis(10))
        .unwrap_or_else(Instant::now);
    a.rt.set_serving_until(Some(past));
    // In-process and client API: 503 at once.
    let r = a.rt.ask("tracked", "x", Message::new("get", "")).await;
    assert_eq!(r, Err(DeliveryError::NotAccepting));
    let api = a.rt.client_router();
    let req = axum::http::Request::post("/actors/tracked/x/ask/get")
        .body(axum::body::Body::empty())
        .expect("request");
    let resp = tower::ServiceExt::oneshot(api, req)
        .await
        .expect("response");
    assert_eq!(resp.status().as_u16(), 503);
    // A forward from a peer (b owns nothing, so it forwards to a): refused.
    let r = b.rt.ask("tracked", "x", Message::new("get", "")).await;
    assert_eq!(
        r,
        Err(DeliveryError::NotAccepting),
        "a peer's Deliver was served"
    );
    let mut r = a.rt.actor_ref("tracked", "x").expect("ref");
    assert_eq!(
        r.ask(Message::new("get", "")).await,
        Err(DeliveryError::NotAccepting)
    );
}

/// H2, the history-independent part: a node whose very first table already makes it the
/// owner (the Joining table was coalesced away) still claims from the member before it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_first_table_makes_it_the_owner_still_claims() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let c = TestNode::start("c", &tracker, |_| {}).await;
    let v1 = at(1, &[(&a, &a.addr, Up), (&c, &c.addr, Joining)]);
    let v2 = at(2, &[(&a, &a.addr, Up), (&c, &c.addr, Up)]);
    let placed = troupe_actors::placement::Placement::from_table(&v2, str::to_owned);
    let id = (0..1000)
        .map(|i| format!("x{i}"))
        .find(|id| placed.owner("tracked", id).is_some_and(|o| &*o.pod == "c"))
        .expect("an id that c owns");
    a.rt.update_members(&v1);
    for _ in 0..4 {
        add(&a, &id).await;
    }
    c.rt.update_members(&v2); // c never saw v1
    let v = c.rt.ask("tracked", &id, Message::new("get", "")).await;
    assert_eq!(
        v.as_ref().map(int).ok(),
        Some(4),
        "c started without a's state: {v:?}"
    );
    assert_eq!(
        tracker.violations.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// M10: the pooled link to a peer goes silent (packets dropped, e.g. a flushed conntrack
/// entry) while new connections work. Forwards must recover on a new link.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_recover_when_the_pooled_link_is_wedged() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |c| {
        c.ask_timeout = Duration::from_millis(500)
    })
    .await;
    let to_a = Proxy::start(&a.addr).await;
    let v = at(1, &[(&a, &to_a.addr, Up), (&b, &b.addr, Joining)]);
    a.rt.update_members(&v);
    b.rt.update_members(&v);
    assert_eq!(add(&b, "x").await, 1, "b forwards to a through the proxy");
    to_a.wedge();
    let mut answers = Vec::new();
    // Bounded: each attempt ends within the forward timeout.
    for _ in 0..8 {
        let r = b.rt.ask("tracked", "x", Message::new("get", "")).await;
        let ok = r.is_ok();
        answers.push(r);
        if ok {
            break;
        }
    }
    assert!(
        answers.last().is_some_and(|r| r.is_ok()),
        "forwards never recovered: {answers:?}"
    );
}

fn member(
    pod: &str,
    incarnation: &str,
    address: &str,
    status: MemberStatus,
) -> troupe_contract::Member {
    troupe_contract::Member {
        pod: pod.to_owned(),
        incarnation: incarnation.to_owned(),
        address: address.to_owned(),
        status,
        since_version: 1,
    }
}

fn lost(nodes: &[&TestNode]) -> i64 {
    nodes
        .iter()
        .map(|n| metric(n, "troupe_actor_states_lost_total{actor_type=\"tracked\"}"))
        .sum()
}

/// Item 7: a node holding K counters with state is killed and restarts with the same pod
/// name (placement brings its actors back to it). When they are used again, exactly K
/// lost states are counted, and none for the actors of the nodes that lived.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_lost_with_a_killed_node_are_counted_exactly_once() {
    killed_node_loses_k_states(false).await;
}

/// Item 7, the other common case: the killed pod is downed, removed, and replaced by a pod
/// with another name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_lost_with_a_replaced_node_are_counted_exactly_once() {
    killed_node_loses_k_states(true).await;
}

async fn killed_node_loses_k_states(replaced: bool) {
    let tracker = Tracker::default();
    let quick = |c: &mut troupe_actors::RuntimeConfig| {
        c.passivate_after = Duration::from_millis(150);
    };
    let p = TestNode::start("p", &tracker, quick).await;
    let t = TestNode::start("t", &tracker, quick).await;
    let w = TestNode::start("w", &tracker, quick).await;
    let to_p = Proxy::start(&p.addr).await;
    let table = |version, members| troupe_contract::MemberTable {
        cluster: "test".into(),
        first_epoch: 0,
        epoch: 0,
        version,
        members,
    };
    let v1 = table(
        1,
        vec![
            member("p", "p-1", &to_p.addr, Up),
            member("t", "t-1", &t.addr, Up),
            member("w", "w-1", &w.addr, Up),
        ],
    );
    for n in [&p, &t, &w] {
        n.rt.update_members(&v1);
    }
    let placed = troupe_actors::placement::Placement::from_table(&v1, str::to_owned);
    let ids: Vec<String> = (0..60).map(|i| format!("n{i}")).collect();
    let on_p: Vec<&String> = ids
        .iter()
        .filter(|id| placed.owner("tracked", id).is_some_and(|o| &*o.pod == "p"))
        .take(5)
        .collect();
    let elsewhere: Vec<&String> = ids
        .iter()
        .filter(|id| placed.owner("tracked", id).is_some_and(|o| &*o.pod != "p"))
        .take(5)
        .collect();
    let k = on_p.len() as i64;
    assert_eq!(k, 5);
    for id in on_p.iter().chain(&elsewhere) {
        for _ in 0..3 {
            add(&w, id).await;
        }
    }
    // Everything passivates (states parked where they ran), then p dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    to_p.blackhole();
    let (pod, incarnation) = if replaced { ("q", "q-1") } else { ("p", "p-2") };
    let p2 = TestNode::start_as(pod, incarnation, &tracker, quick).await;
    let mut tables = Vec::new();
    if replaced {
        let mut down = v1.clone();
        down.version = 2;
        down.members[0].status = Down;
        tables.push(down);
        tables.push(table(
            3,
            vec![
                member("t", "t-1", &t.addr, Up),
                member("w", "w-1", &w.addr, Up),
            ],
        ));
    }
    let mut joining = table(
        4,
        vec![
            member(pod, incarnation, &p2.addr, Joining),
            member("t", "t-1", &t.addr, Up),
            member("w", "w-1", &w.addr, Up),
        ],
    );
    joining.members.sort_by(|a, b| a.pod.cmp(&b.pod));
    let mut up = joining.clone();
    up.version = 5;
    for m in &mut up.members {
        m.status = Up;
    }
    tables.push(joining);
    tables.push(up);
    for n in [&p2, &t, &w] {
        for v in &tables {
            n.rt.update_members(v);
        }
    }
    let alive = [&p2, &t, &w];
    assert_eq!(
        lost(&alive),
        0,
        "nothing counted before the actors are used again"
    );
    for id in &elsewhere {
        let v = w.rt.ask("tracked", id, Message::new("get", "")).await;
        assert_eq!(v.as_ref().map(int).ok(), Some(3), "{id} kept its state");
    }
    for id in &on_p {
        let v = w.rt.ask("tracked", id, Message::new("get", "")).await;
        assert_eq!(v.as_ref().map(int).ok(), Some(0), "{id} died with p");
    }
    // The count is taken right after activation; wait for it (bounded), then check that
    // it stays exact.
    for _ in 0..100 {
        if lost(&alive) >= k {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lost(&alive), k, "lost states counted");
    // Used again (after passivating on p2): nothing more is counted.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in on_p.iter().chain(&elsewhere) {
        add(&w, id).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lost(&alive), k, "a lost state is counted once");
}

/// Epochs: a restored table (epoch + 1) is newer than every version of the epoch before; a
/// higher version of the old epoch is older; a table of another cluster id replaces the
/// history and evicts what ran under the old one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_are_ordered_by_epoch_and_another_cluster_replaces_the_history() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let mut t = at(40, &[(&a, &a.addr, Up)]);
    a.rt.update_members(&t);
    for _ in 0..3 {
        add(&a, "x").await;
    }
    t.epoch = 1;
    t.version = 1;
    a.rt.update_members(&t);
    assert_eq!(a.rt.members_version(), 1, "the restored table was ignored");
    t.epoch = 0;
    t.version = 41;
    a.rt.update_members(&t);
    assert_eq!(
        a.rt.members_version(),
        1,
        "an older epoch's table was taken"
    );
    assert_eq!(add(&a, "x").await, 4, "a restored table keeps the actors");
    t.cluster = "another".into();
    t.version = 2;
    a.rt.update_members(&t);
    assert_eq!(
        a.rt.members_version(),
        2,
        "another cluster's table was ignored"
    );
    assert_eq!(
        add(&a, "x").await,
        1,
        "state kept under the old cluster came back in another"
    );
}

/// M3: when the serving deadline passes, running activations stop at once (no finishing
/// the mailbox) and keep their state for when the node serves again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn activations_stop_at_once_when_serving_lapses_and_keep_their_state() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    a.rt.update_members(&at(1, &[(&a, &a.addr, Up)]));
    a.rt.set_serving_until(Some(Instant::now() + Duration::from_secs(1)));
    for _ in 0..3 {
        add(&a, "x").await;
    }
    // 150 × 20 ms: far more work than fits before the deadline.
    for _ in 0..150 {
        a.rt.tell("tracked", "x", Message::new("sleep", ""))
            .await
            .expect("tell accepted");
    }
    let ask = tokio::spawn({
        let rt = a.rt.clone();
        async move { rt.ask("tracked", "x", Message::new("get", "")).await }
    });
    let answer = ask.await.expect("ask task");
    assert!(
        matches!(answer, Err(DeliveryError::Unavailable(_))),
        "the mailbox was finished after serving lapsed: {answer:?}"
    );
    for _ in 0..50 {
        if a.rt.active_ids("tracked").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(a.rt.active_ids("tracked").is_empty());
    a.rt.set_accepting(true);
    let v = a.rt.ask("tracked", "x", Message::new("get", "")).await;
    assert_eq!(v.as_ref().map(int).ok(), Some(3), "state kept: {v:?}");
}

/// H2: A answered C "X went to B", and C cannot reach B (B Leaving, silent). C must keep
/// failing closed on every retry: A keeps pointing at B instead of at C.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claimant_that_cannot_reach_the_holder_never_activates_without_it() {
    let tracker = Tracker::default();
    let short = |c: &mut troupe_actors::RuntimeConfig| c.ask_timeout = Duration::from_millis(300);
    let a = TestNode::start("a", &tracker, short).await;
    let b = TestNode::start("b", &tracker, short).await;
    let c = TestNode::start("c", &tracker, short).await;
    let to_b = Proxy::start(&b.addr).await;
    let v = at(
        1,
        &[
            (&a, &a.addr, Up),
            (&b, &to_b.addr, Joining),
            (&c, &c.addr, Joining),
        ],
    );
    let v1 = at(
        2,
        &[
            (&a, &a.addr, Leaving),
            (&b, &to_b.addr, Up),
            (&c, &c.addr, Joining),
        ],
    );
    let v2 = at(
        3,
        &[
            (&a, &a.addr, Leaving),
            (&b, &to_b.addr, Leaving),
            (&c, &c.addr, Up),
        ],
    );
    for n in [&a, &b, &c] {
        n.rt.update_members(&v);
    }
    add(&a, "x").await;
    a.rt.update_members(&v1);
    b.rt.update_members(&v1);
    add(&b, "x").await;
    to_b.blackhole();
    c.rt.update_members(&v2);
    let r = c.rt.ask("tracked", "x", Message::new("get", "")).await;
    assert!(r.is_err(), "c answered without b's state: {r:?}");
    // Let c retry its claim a few times (each gives up after 2 × 300 ms).
    tokio::time::sleep(Duration::from_millis(2000)).await;
    // (c keeps a pending activation that is still claiming; it never runs.)
    assert_eq!(
        tracker.violations.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "x ran on both b and c"
    );
}

/// The table of cluster "test" at `(epoch, version)`, every member with `incarnation(pod)`.
fn restored(
    epoch: u64,
    version: u64,
    members: &[(&TestNode, MemberStatus)],
    incarnation: impl Fn(&str) -> String,
) -> troupe_contract::MemberTable {
    let mut t = at(
        version,
        &members
            .iter()
            .map(|(n, s)| (*n, n.addr.as_str(), *s))
            .collect::<Vec<_>>(),
    );
    t.epoch = epoch;
    for m in &mut t.members {
        m.incarnation = incarnation(&m.pod);
    }
    t
}

/// A restore (the Lease deleted or stripped) starts a later epoch whose only member is the
/// restorer as a new incarnation; every other member rejoins it anew. Nobody was downed:
/// no node may drop its states, they follow the owners of the restored epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_epoch_keeps_every_state() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |_| {}).await;
    let c = TestNode::start("c", &tracker, |_| {}).await;
    let nodes = [&a, &b, &c];
    let first = |p: &str| format!("{p}-1");
    let second = |p: &str| format!("{p}-2");
    let v1 = restored(0, 1, &[(&a, Up), (&b, Up), (&c, Up)], first);
    for n in nodes {
        n.rt.update_members(&v1);
    }
    let ids: Vec<String> = (0..30).map(|i| format!("x{i}")).collect();
    for (i, id) in ids.iter().enumerate() {
        for _ in 0..=i {
            add(nodes[i % 3], id).await;
        }
    }
    let held = |n: &TestNode| n.rt.active_ids("tracked").len();
    assert!(
        nodes.iter().all(|n| held(n) > 0),
        "every node holds some counters before the restore: {:?}",
        nodes.map(held)
    );
    // The restore: epoch 1 with only `a`, a new incarnation; then b and c join it anew.
    let e1 = restored(1, 2, &[(&a, Up)], second);
    for n in nodes {
        n.rt.update_members(&e1);
    }
    // b and c close what they held and push the states to a (bounded wait); a restorer
    // serves its epoch only `isolation_timeout` later, which this stands for.
    for _ in 0..250 {
        if held(&b) + held(&c) == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(held(&b) + held(&c), 0, "b and c closed what they held");
    tokio::time::sleep(Duration::from_millis(300)).await;
    for (i, id) in ids.iter().enumerate() {
        let got = a.rt.ask("tracked", id, Message::new("get", "")).await;
        assert_eq!(
            got.as_ref().map(int).ok(),
            Some(i as i64 + 1),
            "{id} after the restore: {got:?}"
        );
    }
    let e1v3 = restored(1, 3, &[(&a, Up), (&b, Up), (&c, Up)], second);
    for n in nodes {
        n.rt.update_members(&e1v3);
    }
    for (i, id) in ids.iter().enumerate() {
        let node = nodes[(i + 1) % 3];
        let got = node.rt.ask("tracked", id, Message::new("get", "")).await;
        assert_eq!(
            got.as_ref().map(int).ok(),
            Some(i as i64 + 1),
            "{id} after the members rejoined: {got:?}"
        );
    }
    assert_eq!(lost(&nodes), 0, "no state was lost, none may be counted");
    assert_eq!(
        tracker.violations.load(std::sync::atomic::Ordering::SeqCst),
        0
    );
}

/// Item 4, kills one after another (what SIGKILL chaos does): the witness of p's actors
/// (t) is killed and restarts first, then p. The markers t kept died with it, so the
/// holders must tell the new witness again; every state lost with p is counted once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_lost_after_their_witness_restarted_are_counted() {
    let tracker = Tracker::default();
    let p = TestNode::start("p", &tracker, |_| {}).await;
    let t = TestNode::start("t", &tracker, |_| {}).await;
    let w = TestNode::start("w", &tracker, |_| {}).await;
    let to_p = Proxy::start(&p.addr).await;
    let table = |version, members| troupe_contract::MemberTable {
        cluster: "test".into(),
        first_epoch: 0,
        epoch: 0,
        version,
        members,
    };
    let v1 = table(
        1,
        vec![
            member("p", "p-1", &to_p.addr, Up),
            member("t", "t-1", &t.addr, Up),
            member("w", "w-1", &w.addr, Up),
        ],
    );
    for n in [&p, &t, &w] {
        n.rt.update_members(&v1);
    }
    let placed = troupe_actors::placement::Placement::from_table(&v1, str::to_owned);
    let on_p: Vec<String> = (0..200)
        .map(|i| format!("n{i}"))
        .filter(|id| {
            placed.owner("tracked", id).is_some_and(|o| &*o.pod == "p")
                && placed
                    .witness("tracked", id, "p")
                    .is_some_and(|o| &*o.pod == "t")
        })
        .take(4)
        .collect();
    assert_eq!(on_p.len(), 4);
    for id in &on_p {
        for _ in 0..3 {
            add(&w, id).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // t is killed and restarts as t-2 (it comes back Joining, then Up).
    t.stop();
    let t2 = TestNode::start_as("t", "t-2", &tracker, |_| {}).await;
    let with_t2 = |version, t_status| {
        table(
            version,
            vec![
                member("p", "p-1", &to_p.addr, Up),
                member("t", "t-2", &t2.addr, t_status),
                member("w", "w-1", &w.addr, Up),
            ],
        )
    };
    for v in [with_t2(2, Joining), with_t2(3, Up)] {
        for n in [&p, &t2, &w] {
            n.rt.update_members(&v);
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    for id in &on_p {
        assert_eq!(
            add(&w, id).await,
            4,
            "{id} kept its state while t restarted"
        );
    }
    // Then p is killed and restarts as p-2.
    to_p.blackhole();
    let p2 = TestNode::start_as("p", "p-2", &tracker, |_| {}).await;
    let with_p2 = |version, p_status| {
        table(
            version,
            vec![
                member("p", "p-2", &p2.addr, p_status),
                member("t", "t-2", &t2.addr, Up),
                member("w", "w-1", &w.addr, Up),
            ],
        )
    };
    for v in [with_p2(4, Joining), with_p2(5, Up)] {
        for n in [&p2, &t2, &w] {
            n.rt.update_members(&v);
        }
    }
    for id in &on_p {
        let v = w.rt.ask("tracked", id, Message::new("get", "")).await;
        assert_eq!(v.as_ref().map(int).ok(), Some(0), "{id} died with p");
    }
    let alive = [&p2, &t2, &w];
    for _ in 0..100 {
        if lost(&alive) >= 4 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(lost(&alive), 4, "every state lost with p is counted once");
}
