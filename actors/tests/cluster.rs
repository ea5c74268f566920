//! Several runtimes in one process with real transports on 127.0.0.1: forwarding, and
//! membership changes under load (join, graceful leaves) that must never run one actor on
//! two nodes nor lose an acknowledged message.

mod common;

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use troupe_actors::{ActorRuntime, DeliveryError, Message};
use troupe_contract::MemberStatus::{self, Joining, Leaving, Up};

use common::{TestNode, Tracker, int, table};

fn feed(nodes: &[&TestNode], version: u64, members: &[(&TestNode, MemberStatus)]) {
    let spec: Vec<(&str, &str, MemberStatus)> = members
        .iter()
        .map(|(n, s)| (n.pod.as_str(), n.addr.as_str(), *s))
        .collect();
    let t = table(version, &spec);
    for n in nodes {
        n.rt.update_members(&t);
    }
}

/// Feeds the table to one node after the other, 30 ms apart, in a rotating order, so
/// that nodes disagree for a while, as they do in a real cluster.
async fn feed_staggered(nodes: &[&TestNode], version: u64, members: &[(&TestNode, MemberStatus)]) {
    let spec: Vec<(&str, &str, MemberStatus)> = members
        .iter()
        .map(|(n, s)| (n.pod.as_str(), n.addr.as_str(), *s))
        .collect();
    let t = table(version, &spec);
    let k = version as usize % nodes.len();
    for i in 0..nodes.len() {
        nodes[(i + k) % nodes.len()].rt.update_members(&t);
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_are_forwarded_to_the_single_owner() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |_| {}).await;
    let c = TestNode::start("c", &tracker, |_| {}).await;
    let all = [&a, &b, &c];
    feed(&all, 1, &[(&a, Up), (&b, Up), (&c, Up)]);

    for i in 0..30 {
        let id = format!("f{i}");
        for (n, node) in all.iter().enumerate() {
            let r = node.rt.ask("tracked", &id, Message::new("add", "")).await;
            assert_eq!(
                r.as_ref().map(int).ok(),
                Some(n as i64 + 1),
                "{id} via {}: {r:?}",
                node.pod
            );
        }
        // A tell through another node is accepted and then counted.
        assert!(
            b.rt.tell("tracked", &id, Message::new("add", ""))
                .await
                .is_ok()
        );
    }
    let mut per_node = Vec::new();
    for i in 0..30 {
        let id = format!("f{i}");
        let holders: Vec<&str> = all
            .iter()
            .filter(|n| n.rt.active_ids("tracked").contains(&id))
            .map(|n| n.pod.as_str())
            .collect();
        assert_eq!(holders.len(), 1, "{id} is active on {holders:?}");
        per_node.push(holders[0].to_owned());
        let v = c.rt.ask("tracked", &id, Message::new("get", "")).await;
        assert_eq!(v.as_ref().map(int).ok(), Some(4));
    }
    for n in all {
        assert!(per_node.contains(&n.pod), "every node owns some actors");
    }
    assert_eq!(tracker.violations.load(Ordering::SeqCst), 0);
    let forwarded = prometheus::TextEncoder::new()
        .encode_to_string(&a.registry.gather())
        .unwrap_or_default();
    assert!(forwarded.contains("troupe_forwarded_total"), "{forwarded}");
}

struct Books {
    acked: HashMap<String, i64>,
    uncertain: HashMap<String, i64>,
    refused: u64,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes_under_load_keep_one_activation_and_every_acked_increment() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |_| {}).await;
    let c = TestNode::start("c", &tracker, |_| {}).await;
    let d = TestNode::start("d", &tracker, |_| {}).await;
    let all = [&a, &b, &c, &d];
    feed(&all, 1, &[(&a, Up), (&b, Up), (&c, Up), (&d, Joining)]);

    let entries: Arc<RwLock<Vec<ActorRuntime>>> =
        Arc::new(RwLock::new(vec![a.rt.clone(), b.rt.clone(), c.rt.clone()]));
    let books = Arc::new(Mutex::new(Books {
        acked: HashMap::new(),
        uncertain: HashMap::new(),
        refused: 0,
    }));
    let stop = Arc::new(AtomicBool::new(false));
    let ids: Vec<String> = (0..40).map(|i| format!("k{i}")).collect();

    let mut clients = Vec::new();
    for seed in 1..=4u64 {
        let (entries, books, stop, ids) =
            (entries.clone(), books.clone(), stop.clone(), ids.clone());
        clients.push(tokio::spawn(async move {
            let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15);
            // Bounded: at most 20k requests per client, stopped by the test well before.
            for _ in 0..20_000 {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let id = &ids[(x % ids.len() as u64) as usize];
                let rt = {
                    let e = entries.read().unwrap_or_else(|p| p.into_inner());
                    e[(x >> 32) as usize % e.len()].clone()
                };
                let r = rt.ask("tracked", id, Message::new("add", "")).await;
                let mut b = books.lock().unwrap_or_else(|p| p.into_inner());
                match r {
                    Ok(_) => *b.acked.entry(id.clone()).or_default() += 1,
                    Err(DeliveryError::MailboxFull { .. } | DeliveryError::UnknownType(_)) => {
                        b.refused += 1
                    }
                    Err(e) => {
                        eprintln!("uncertain: {e}");
                        *b.uncertain.entry(id.clone()).or_default() += 1
                    }
                }
            }
        }));
    }

    let pause = || tokio::time::sleep(Duration::from_millis(400));
    pause().await;
    // d joins.
    feed_staggered(&all, 2, &[(&a, Up), (&b, Up), (&c, Up), (&d, Up)]).await;
    entries
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .push(d.rt.clone());
    pause().await;
    // c leaves gracefully: not Ready (out of the entry set), Leaving, drain, removed.
    {
        let mut e = entries.write().unwrap_or_else(|p| p.into_inner());
        *e = vec![a.rt.clone(), b.rt.clone(), d.rt.clone()];
    }
    c.rt.set_accepting(false);
    feed_staggered(&all, 3, &[(&a, Up), (&b, Up), (&c, Leaving), (&d, Up)]).await;
    let report = c.rt.drain(Duration::from_secs(10)).await;
    assert!(report.complete, "{report:?}");
    feed_staggered(&all, 4, &[(&a, Up), (&b, Up), (&d, Up)]).await;
    c.stop();
    pause().await;
    // b leaves too: 3 → 4 → 2.
    {
        let mut e = entries.write().unwrap_or_else(|p| p.into_inner());
        *e = vec![a.rt.clone(), d.rt.clone()];
    }
    b.rt.set_accepting(false);
    feed_staggered(&all, 5, &[(&a, Up), (&b, Leaving), (&d, Up)]).await;
    let report = b.rt.drain(Duration::from_secs(10)).await;
    assert!(report.complete, "{report:?}");
    feed_staggered(&all, 6, &[(&a, Up), (&d, Up)]).await;
    b.stop();
    pause().await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        let _ = c.await;
    }

    assert_eq!(
        tracker.violations.load(Ordering::SeqCst),
        0,
        "an actor ran on two nodes"
    );
    assert!(b.rt.active_ids("tracked").is_empty() && c.rt.active_ids("tracked").is_empty());
    let books = {
        let b = books.lock().unwrap_or_else(|p| p.into_inner());
        Books {
            acked: b.acked.clone(),
            uncertain: b.uncertain.clone(),
            refused: b.refused,
        }
    };
    let total_acked: i64 = books.acked.values().sum();
    assert!(total_acked > 500, "the load ran: {total_acked} acked");
    for id in &ids {
        let v = a.rt.ask("tracked", id, Message::new("get", "")).await;
        let value = v.as_ref().map(int).unwrap_or(-1);
        let acked = books.acked.get(id).copied().unwrap_or(0);
        let uncertain = books.uncertain.get(id).copied().unwrap_or(0);
        assert!(
            value >= acked && value <= acked + uncertain,
            "{id}: value {value}, acked {acked}, uncertain {uncertain}"
        );
    }
    // Graceful changes lose no state, and none is counted as lost.
    let lost: i64 = all
        .iter()
        .map(|n| {
            prometheus::TextEncoder::new()
                .encode_to_string(&n.registry.gather())
                .unwrap_or_default()
                .lines()
                .filter(|l| l.starts_with("troupe_actor_states_lost_total"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<i64>().ok())
                .sum::<i64>()
        })
        .sum();
    assert_eq!(
        lost, 0,
        "states counted as lost in graceful membership changes"
    );
    eprintln!(
        "acked {total_acked}, uncertain {}, refused {}, activations {}",
        books.uncertain.values().sum::<i64>(),
        books.refused,
        tracker.activations.load(Ordering::SeqCst)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversize_frames_close_the_connection_but_not_the_node() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |c| c.max_frame_bytes = 4096).await;
    let b = TestNode::start("b", &tracker, |_| {}).await;
    feed(&[&a, &b], 1, &[(&a, Up), (&b, Up)]);

    let garbage: [&[u8]; 4] = [
        &[0, 0, 0, 5, 0x55, 1, 2, 3, 4],                       // unknown kind
        &[0, 0, 0, 3, 0x01, 0, 0],                             // truncated body
        &[0x7f, 0xff, 0xff, 0xff],                             // announces 2 GiB
        &[0, 0, 0, 12, 0x81, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 9], // a response sent to a server
    ];
    for bytes in garbage {
        let mut s = tokio::net::TcpStream::connect(&a.addr)
            .await
            .expect("connect");
        let _ = s.write_all(bytes).await;
        let mut buf = [0u8; 16];
        // The node closes the connection (EOF) instead of crashing or hanging.
        let n = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(matches!(n, Ok(Ok(0)) | Ok(Err(_))), "{n:?}");
    }
    // And it still serves: b forwards to a, a answers.
    for i in 0..20 {
        let r =
            b.rt.ask("echo", &format!("e{i}"), Message::new("x", "still here"))
                .await;
        assert_eq!(r.ok().as_deref(), Some(&b"still here"[..]));
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&a.registry.gather())
        .unwrap_or_default();
    assert!(
        text.contains("troupe_transport_errors_total{kind=\"malformed_frame\"}"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn states_handed_over_are_taken_above_the_actor_bound_and_none_is_lost() {
    let tracker = Tracker::default();
    let a = TestNode::start("a", &tracker, |_| {}).await;
    let b = TestNode::start("b", &tracker, |c| c.max_actors = 1).await;
    let all = [&a, &b];
    feed(&all, 1, &[(&a, Up)]);
    let ids: Vec<String> = (0..20).map(|i| format!("h{i}")).collect();
    for (n, id) in ids.iter().enumerate() {
        let by = format!(r#"{{"by":{}}}"#, n + 1);
        let r = a.rt.ask("counter", id, Message::new("add", by)).await;
        assert!(r.is_ok(), "{id}: {r:?}");
    }
    // b joins: a closes what b owns now and hands the states over, all of them above
    // b's bound of one.
    feed(&all, 2, &[(&a, Up), (&b, Up)]);
    for _ in 0..1000 {
        // a pushes once every actor it closed has parked its state.
        if !b.rt.parked_states().is_empty() && a.rt.parked_states().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let handed = b.rt.parked_states().len();
    assert!(handed > 1, "b took {handed} states");
    assert_eq!(a.rt.active_ids("counter").len() + handed, ids.len());
    assert_eq!(b.rt.held_count(), handed, "each one counted");
    // Each actor comes back with its state, whatever node is asked.
    for (n, id) in ids.iter().enumerate() {
        let via = if n % 2 == 0 { &a } else { &b };
        let r = via.rt.ask("counter", id, Message::new("get", "")).await;
        let want = format!(r#"{{"value":{}}}"#, n + 1);
        assert_eq!(
            r.as_deref().ok(),
            Some(want.as_bytes()),
            "{id} via {}: {r:?}",
            via.pod
        );
    }
    // A new actor that b owns is refused: b holds more than its bound.
    let mut refused = 0;
    for i in 0..20 {
        match b
            .rt
            .ask("counter", &format!("new{i}"), Message::new("add", ""))
            .await
        {
            Err(DeliveryError::AtCapacity { limit: 1, .. }) => refused += 1,
            Ok(_) => {}
            other => panic!("new{i}: {other:?}"),
        }
    }
    assert!(refused > 0, "b refused none");
    assert_eq!(b.rt.held_count(), handed);
}
