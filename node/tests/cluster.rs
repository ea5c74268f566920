//! Multi-node tests on loopback: several nodes in one process, each with its own management
//! server on 127.0.0.1, sharing an in-memory member store (same CAS semantics as the Lease)
//! and a pod list fed by the test. Timings are printed, never asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use prometheus::Registry;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use troupe_contract::{MemberStatus, MemberTable};
use troupe_node::memory::{MemoryStore, NetProber, Network};
use troupe_node::probe::HttpProber;
use troupe_node::store::{ChangeStream, Found, LeaseRecord, MemberStore, StoreError, Stored};
use troupe_node::{Identity, Node, PodSet, Timing};

struct TestNode {
    pod: String,
    node: Option<Node>,
    server: JoinHandle<()>,
    store: MemoryStore,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl TestNode {
    fn serving(&self) -> bool {
        self.node
            .as_ref()
            .is_some_and(|n| n.view().borrow().serving)
    }
    fn ready(&self) -> bool {
        self.node.as_ref().is_some_and(|n| n.health().is_ready())
    }
    fn incarnation(&self) -> Option<String> {
        self.node
            .as_ref()
            .map(|n| n.view().borrow().me.incarnation.clone())
    }
}

struct TestCluster {
    store: MemoryStore,
    network: Network,
    pods: watch::Sender<PodSet>,
    nodes: Vec<TestNode>,
    timing: Timing,
}

impl TestCluster {
    fn new() -> Self {
        Self::with_timing(Timing::fast())
    }

    fn with_timing(timing: Timing) -> Self {
        Self {
            store: MemoryStore::new(),
            network: Network::default(),
            pods: watch::Sender::new(PodSet {
                synced: true,
                ..PodSet::default()
            }),
            nodes: Vec::new(),
            timing,
        }
    }

    async fn start(&mut self, pod: &str) -> anyhow::Result<()> {
        self.start_on(pod, |s| s).await
    }

    /// Starts `pod` on the store that `wrap` makes of its handle (a slow store, ...).
    async fn start_on<S: MemberStore>(
        &mut self,
        pod: &str,
        wrap: impl FnOnce(MemoryStore) -> S,
    ) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        self.pods.send_modify(|p| {
            p.pods.insert(
                pod.to_owned(),
                troupe_node::discovery::PodInfo::running_since(
                    address.clone(),
                    troupe_node::seams::system_ms(),
                ),
            );
        });
        let store = self.store.handle();
        let prober = NetProber::new(
            HttpProber::new(0, self.timing.probe_timeout),
            pod,
            self.network.clone(),
        );
        let node = Node::start(
            Identity {
                pod: pod.to_owned(),
                address: address.clone(),
            },
            self.timing,
            wrap(store.clone()),
            prober,
            self.pods.subscribe(),
            Registry::new(),
        )?;
        let router = node.router();
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        self.nodes.push(TestNode {
            pod: pod.to_owned(),
            node: Some(node),
            server,
            store,
        });
        Ok(())
    }

    fn get(&self, pod: &str) -> Option<&TestNode> {
        self.nodes.iter().find(|n| n.pod == pod)
    }

    /// Stops a node without leaving: what SIGKILL does. `pod_gone` also removes it from
    /// the pod list (the pod was deleted), otherwise the pod stays (the container died).
    fn kill(&mut self, pod: &str, pod_gone: bool) {
        if let Some(n) = self.nodes.iter_mut().find(|n| n.pod == pod) {
            n.node = None;
            n.server.abort();
        }
        if pod_gone {
            self.pods.send_modify(|p| {
                p.pods.remove(pod);
            });
        }
    }

    async fn leave(&mut self, pod: &str) -> anyhow::Result<troupe_node::LeaveReport> {
        let n = self
            .nodes
            .iter_mut()
            .find(|n| n.pod == pod)
            .ok_or_else(|| anyhow::anyhow!("no node {pod}"))?;
        let node = n
            .node
            .take()
            .ok_or_else(|| anyhow::anyhow!("{pod} is not running"))?;
        let report = node.leave(async {}, Duration::from_secs(5)).await?;
        n.server.abort();
        self.pods.send_modify(|p| {
            p.pods.remove(pod);
        });
        Ok(report)
    }

    fn table(&self) -> MemberTable {
        self.store
            .snapshot()
            .map(|s| s.record.table)
            .unwrap_or_default()
    }

    /// Every running node serves, and the store's table is exactly those nodes, all Up.
    fn all_up(&self, pods: &[&str]) -> bool {
        let t = self.table();
        t.members.len() == pods.len()
            && pods.iter().all(|p| {
                t.get(p).is_some_and(|m| m.status == MemberStatus::Up)
                    && self.get(p).is_some_and(|n| n.ready())
            })
    }

    /// The safety invariants: every node that serves follows one table history — one
    /// `(cluster, epoch)` — and is Up, with its current incarnation, in the one table of
    /// the store, of the same cluster. The views are read before the table (the table only
    /// moves forward), so a node that just formed the cluster is not a false alarm. While
    /// the store holds no table (the Lease was deleted or stripped) there is nothing to
    /// compare with but the first invariant still holds. Nor is there while the store
    /// holds a later epoch of the node's cluster than the one it serves: a restore is
    /// under way, nobody serves the restored epoch yet (the first invariant), and the node
    /// serves out a read sent before the loss.
    fn check_no_serving_outside_the_table(&self) -> Result<(), String> {
        let now = Instant::now();
        let serving: Vec<(String, String, MemberTable)> = self
            .nodes
            .iter()
            .filter_map(|n| {
                let node = n.node.as_ref()?;
                let v = node.view().borrow().clone();
                v.serving_at(now)
                    .then(|| (n.pod.clone(), v.me.incarnation, v.table))
            })
            .collect();
        if let Some((first, _, t0)) = serving.first() {
            for (pod, _, t) in &serving {
                if (&t.cluster, t.epoch) != (&t0.cluster, t0.epoch) {
                    return Err(format!(
                        "two table histories serve: {first} follows cluster {:?} epoch {} (v{}), {pod} follows cluster {:?} epoch {} (v{})",
                        t0.cluster, t0.epoch, t0.version, t.cluster, t.epoch, t.version
                    ));
                }
            }
        }
        let Some(t) = self.store.table() else {
            return Ok(());
        };
        for (pod, inc, mine) in serving {
            let restoring = mine.cluster == t.cluster && mine.epoch < t.epoch;
            let ok = restoring
                || mine.cluster == t.cluster
                    && t.members.iter().any(|m| {
                        m.pod == pod && m.incarnation == inc && m.status == MemberStatus::Up
                    });
            if !ok {
                return Err(format!(
                    "{pod}/{inc} serves on {mine:?} but is not Up in the store's table {t:?}"
                ));
            }
        }
        Ok(())
    }
}

/// Polls `cond` every 2 ms until it holds or `timeout` passes; returns the time it took.
/// Checks the safety invariant on every poll when `watch` is given.
async fn until(
    what: &str,
    timeout: Duration,
    cluster: &TestCluster,
    mut cond: impl FnMut(&TestCluster) -> bool,
) -> anyhow::Result<Duration> {
    let start = Instant::now();
    loop {
        if let Err(e) = cluster.check_no_serving_outside_the_table() {
            anyhow::bail!("while waiting for {what}: {e}");
        }
        if cond(cluster) {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            anyhow::bail!(
                "timed out after {timeout:?} waiting for {what}; table: {:?}",
                cluster.table()
            );
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len() / 2).copied().unwrap_or_default()
}

const FIVE: [&str; 5] = ["node-a", "node-b", "node-c", "node-d", "node-e"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_started_at_once_form_exactly_one_cluster_every_time() -> anyhow::Result<()> {
    let rounds = 20;
    let mut times = Vec::new();
    for round in 0..rounds {
        let mut c = TestCluster::new();
        // Start in a different order every round.
        let mut order: Vec<&str> = FIVE.to_vec();
        order.rotate_left(round % 5);
        if round % 2 == 1 {
            order.reverse();
        }
        for p in &order {
            c.start(p).await?;
        }
        let took = until("5 Up and Ready", Duration::from_secs(10), &c, |c| {
            c.all_up(&FIVE)
        })
        .await?;
        times.push(took);
        let t = c.table();
        assert_eq!(t.count(MemberStatus::Up), 5, "round {round}: {t:?}");
        // Every node follows the same table.
        until(
            "every node has the store's table",
            Duration::from_secs(5),
            &c,
            |c| {
                let t = c.table();
                c.nodes.iter().all(|n| {
                    n.node
                        .as_ref()
                        .is_some_and(|node| *node.members().borrow() == t)
                })
            },
        )
        .await?;
        let coordinators = c
            .nodes
            .iter()
            .filter(|n| {
                n.node
                    .as_ref()
                    .is_some_and(|x| x.view().borrow().coordinator)
            })
            .count();
        assert!(
            coordinators <= 1,
            "round {round}: {coordinators} coordinators"
        );
    }
    println!(
        "[membership] 5 nodes started at once, {rounds} rounds: formation median {:?}, max {:?}",
        median(times.clone()),
        times.iter().max().copied().unwrap_or_default()
    );
    Ok(())
}

async fn formed(pods: &[&str]) -> anyhow::Result<TestCluster> {
    let mut c = TestCluster::new();
    for p in pods {
        c.start(p).await?;
    }
    until("cluster formed", Duration::from_secs(10), &c, |c| {
        c.all_up(pods)
    })
    .await?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_joins_a_running_cluster() -> anyhow::Result<()> {
    let mut c = formed(&FIVE[..3]).await?;
    c.start("node-x").await?;
    let took = until("node-x Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&["node-a", "node-b", "node-c", "node-x"])
    })
    .await?;
    println!("[membership] join of a 4th node: {took:?} from start to Ready");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_leave_removes_the_node_and_others_stay() -> anyhow::Result<()> {
    let mut c = formed(&FIVE).await?;
    // Leave the coordinator, the hardest case: the lease must move.
    let coordinator = c
        .nodes
        .iter()
        .find(|n| {
            n.node
                .as_ref()
                .is_some_and(|x| x.view().borrow().coordinator)
        })
        .map(|n| n.pod.clone())
        .ok_or_else(|| anyhow::anyhow!("no coordinator"))?;
    let draining_first = {
        let n = c.get(&coordinator).and_then(|n| n.node.as_ref());
        let Some(n) = n else { anyhow::bail!("gone") };
        let health = n.health().clone();
        let ready_during_leave = Arc::new(AtomicBool::new(true));
        let flag = Arc::clone(&ready_during_leave);
        let h2 = health.clone();
        let handover = async move {
            // The handover runs after the node stopped being Ready.
            flag.store(h2.is_ready(), Ordering::SeqCst);
        };
        let node = c
            .nodes
            .iter_mut()
            .find(|n| n.pod == coordinator)
            .and_then(|n| n.node.take());
        let Some(node) = node else {
            anyhow::bail!("gone")
        };
        let start = Instant::now();
        let report = node.leave(handover, Duration::from_secs(5)).await?;
        println!(
            "[membership] graceful leave of the coordinator: {:?} (report {report:?})",
            start.elapsed()
        );
        assert!(report.marked_leaving && report.removed, "{report:?}");
        ready_during_leave.load(Ordering::SeqCst)
    };
    assert!(
        !draining_first,
        "the node was still Ready during its handover"
    );
    c.kill(&coordinator, true);
    let rest: Vec<&str> = FIVE.iter().copied().filter(|p| *p != coordinator).collect();
    let took = until(
        "the 4 others Up with a new coordinator",
        Duration::from_secs(10),
        &c,
        |c| {
            c.all_up(&rest)
                && c.store
                    .snapshot()
                    .is_some_and(|s| s.record.holder.is_some())
        },
    )
    .await?;
    println!("[membership] after the coordinator left: new coordinator in {took:?}");
    // A plain member leaves too.
    let report = c.leave(rest[0]).await?;
    assert!(report.removed);
    until("3 Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&rest[1..])
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_downed_within_the_detector_timeout() -> anyhow::Result<()> {
    let mut c = formed(&FIVE).await?;
    // Container dies, pod stays: only the failure detector can tell.
    let victim = c
        .nodes
        .iter()
        .find(|n| {
            !n.node
                .as_ref()
                .is_some_and(|x| x.view().borrow().coordinator)
        })
        .map(|n| n.pod.clone())
        .ok_or_else(|| anyhow::anyhow!("no member"))?;
    c.kill(&victim, false);
    let took = until(
        "victim out of the table",
        Duration::from_secs(10),
        &c,
        |c| {
            c.table()
                .get(&victim)
                .is_none_or(|m| m.status == MemberStatus::Down)
        },
    )
    .await?;
    println!(
        "[membership] killed member (pod stays) downed in {took:?} (detect timeout {:?})",
        c.timing.detect_timeout
    );
    // The pod is deleted with the container: the pod watch tells at once.
    let rest: Vec<String> = FIVE
        .iter()
        .map(|p| p.to_string())
        .filter(|p| *p != victim)
        .collect();
    let victim2 = rest
        .iter()
        .find(|p| {
            !c.get(p)
                .and_then(|n| n.node.as_ref())
                .is_some_and(|x| x.view().borrow().coordinator)
        })
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("no member"))?;
    c.kill(&victim2, true);
    let took = until(
        "victim2 out of the table",
        Duration::from_secs(10),
        &c,
        |c| {
            c.table()
                .get(&victim2)
                .is_none_or(|m| m.status == MemberStatus::Down)
        },
    )
    .await?;
    println!("[membership] killed member whose pod was deleted downed in {took:?}");
    let left: Vec<&str> = rest
        .iter()
        .map(String::as_str)
        .filter(|p| *p != victim2)
        .collect();
    until("3 left, all Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&left)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_coordinator_is_replaced_and_downed() -> anyhow::Result<()> {
    let mut c = formed(&FIVE).await?;
    let coordinator = c
        .nodes
        .iter()
        .find(|n| {
            n.node
                .as_ref()
                .is_some_and(|x| x.view().borrow().coordinator)
        })
        .map(|n| n.pod.clone())
        .ok_or_else(|| anyhow::anyhow!("no coordinator"))?;
    c.kill(&coordinator, false);
    let took = until(
        "coordinator out of the table",
        Duration::from_secs(10),
        &c,
        |c| c.table().get(&coordinator).is_none(),
    )
    .await?;
    println!(
        "[membership] killed coordinator removed in {took:?} (lease {:?})",
        c.timing.lease_duration
    );
    let rest: Vec<&str> = FIVE.iter().copied().filter(|p| *p != coordinator).collect();
    until("4 Up", Duration::from_secs(10), &c, |c| c.all_up(&rest)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_node_stops_serving_before_it_is_downed_and_comes_back() -> anyhow::Result<()>
{
    let c = formed(&FIVE).await?;
    let victim = c
        .nodes
        .iter()
        .find(|n| {
            !n.node
                .as_ref()
                .is_some_and(|x| x.view().borrow().coordinator)
        })
        .map(|n| n.pod.clone())
        .ok_or_else(|| anyhow::anyhow!("no member"))?;
    let old_incarnation = c.get(&victim).and_then(TestNode::incarnation);
    // Cut it off from the store and from every peer.
    c.network.set_cut(&victim, true);
    if let Some(n) = c.get(&victim) {
        n.store.set_cut(true);
    }
    let cut_at = Instant::now();
    let stopped = until("victim stops serving", Duration::from_secs(10), &c, |c| {
        c.get(&victim).is_some_and(|n| !n.serving())
    })
    .await?;
    let downed = until("victim downed", Duration::from_secs(10), &c, |c| {
        c.table()
            .get(&victim)
            .is_none_or(|m| m.status == MemberStatus::Down)
    })
    .await?;
    println!(
        "[membership] partitioned node: stopped serving after {stopped:?}, downed after {:?}",
        cut_at.elapsed()
    );
    // `until` checked on every poll that the victim never served while not Up in the
    // store's table; and it stopped serving before it was downed:
    assert!(downed > Duration::ZERO);
    // While cut off, it never serves again and nothing else changes its mind.
    let rest: Vec<&str> = FIVE.iter().copied().filter(|p| *p != victim).collect();
    until(
        "4 Up without the victim",
        Duration::from_secs(10),
        &c,
        |c| {
            c.table().get(&victim).is_none()
                && rest.iter().all(|p| c.get(p).is_some_and(|n| n.ready()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.check_no_serving_outside_the_table()
        .map_err(anyhow::Error::msg)?;
    assert!(!c.get(&victim).is_some_and(TestNode::serving));
    // Heal: it rejoins as a new incarnation.
    c.network.set_cut(&victim, false);
    if let Some(n) = c.get(&victim) {
        n.store.set_cut(false);
    }
    let took = until("victim back", Duration::from_secs(10), &c, |c| {
        c.all_up(&FIVE)
    })
    .await?;
    let new_incarnation = c.get(&victim).and_then(TestNode::incarnation);
    assert_ne!(old_incarnation, new_incarnation);
    println!("[membership] partitioned node back Up {took:?} after the heal");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_minority_coordinator_cannot_down_the_majority() -> anyhow::Result<()> {
    let c = formed(&FIVE).await?;
    let coordinator = c
        .nodes
        .iter()
        .find(|n| {
            n.node
                .as_ref()
                .is_some_and(|x| x.view().borrow().coordinator)
        })
        .map(|n| n.pod.clone())
        .ok_or_else(|| anyhow::anyhow!("no coordinator"))?;
    let others: Vec<String> = FIVE
        .iter()
        .map(|p| p.to_string())
        .filter(|p| *p != coordinator)
        .collect();
    // The coordinator and one member keep the store; three members lose store and
    // reach only each other... which the Network cannot express per pair, so cut the
    // three from the coordinator side instead: the coordinator and one peer are cut off
    // from the network, the three others from the store.
    let minority = [coordinator.clone(), others[0].clone()];
    let majority = &others[1..];
    for p in &minority {
        c.network.set_cut(p, true);
    }
    for p in majority {
        if let Some(n) = c.get(p) {
            n.store.set_cut(true);
        }
    }
    let version = c.table().version;
    tokio::time::sleep(c.timing.detect_timeout * 3).await;
    // The coordinator kept its lease (it still reaches the store) but downed nobody.
    let t = c.table();
    assert_eq!(
        t.count(MemberStatus::Up),
        5,
        "the table changed: {t:?} (was v{version})"
    );
    c.check_no_serving_outside_the_table()
        .map_err(anyhow::Error::msg)?;
    for p in &minority {
        c.network.set_cut(p, false);
    }
    for p in majority {
        if let Some(n) = c.get(p) {
            n.store.set_cut(false);
        }
    }
    until("all Up after the heal", Duration::from_secs(10), &c, |c| {
        c.all_up(&FIVE)
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_store_is_down_for_everybody_nodes_keep_serving() -> anyhow::Result<()> {
    let c = formed(&FIVE).await?;
    for n in &c.nodes {
        n.store.set_cut(true);
    }
    tokio::time::sleep(c.timing.detect_timeout * 3).await;
    for n in &c.nodes {
        assert!(
            n.ready(),
            "{} stopped being Ready while only the store was down",
            n.pod
        );
    }
    for n in &c.nodes {
        n.store.set_cut(false);
    }
    until("all Up", Duration::from_secs(10), &c, |c| c.all_up(&FIVE)).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_container_rejoins_as_a_new_incarnation() -> anyhow::Result<()> {
    let mut c = formed(&FIVE[..3]).await?;
    let victim = "node-b";
    let old = c.get(victim).and_then(TestNode::incarnation);
    c.kill(victim, false);
    c.nodes.retain(|n| n.pod != victim);
    c.start(victim).await?;
    until("restarted node Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&FIVE[..3])
    })
    .await?;
    let t = c.table();
    let m = t.get(victim).map(|m| m.incarnation.clone());
    assert_ne!(m, old);
    assert_eq!(t.members.len(), 3);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_deleted_at_once_and_restarted_forms_one_cluster_again() -> anyhow::Result<()> {
    let mut c = formed(&FIVE).await?;
    for round in 0..3 {
        for p in FIVE {
            c.kill(p, true);
        }
        c.nodes.clear();
        let start = Instant::now();
        for p in FIVE {
            c.start(p).await?;
        }
        until("5 new incarnations Up", Duration::from_secs(15), &c, |c| {
            c.all_up(&FIVE)
        })
        .await?;
        println!(
            "[membership] all 5 killed, round {round}: new cluster of 5 in {:?}",
            start.elapsed()
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_pod_force_deleted_and_replaced_by_new_pods_forms_one_cluster() -> anyhow::Result<()>
{
    // Deployment semantics: the replacements have new names, the dead members stay in the
    // table until the pod watch (and the lease expiry) let a new coordinator down them.
    let mut c = formed(&FIVE).await?;
    let mut names: Vec<String> = FIVE.iter().map(|p| p.to_string()).collect();
    for round in 0..3 {
        for p in &names {
            c.kill(p, true);
        }
        c.nodes.clear();
        names = (0..5).map(|i| format!("r{round}-pod-{i}")).collect();
        let start = Instant::now();
        for p in &names {
            c.start(p).await?;
        }
        let refs: Vec<&str> = names.iter().map(String::as_str).collect();
        until(
            "5 new pods Up, the dead ones out",
            Duration::from_secs(20),
            &c,
            |c| c.all_up(&refs),
        )
        .await?;
        println!(
            "[membership] 5 pods force-deleted, round {round}: replacements formed one cluster of 5 in {:?} (lease {:?}, discovery grace {:?})",
            start.elapsed(),
            c.timing.lease_duration,
            c.timing.discovery_grace
        );
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_the_store_only_keeps_serving_and_follows_through_its_peers()
-> anyhow::Result<()> {
    let mut c = formed(&FIVE[..3]).await?;
    let victim = "node-b";
    if let Some(n) = c.get(victim) {
        n.store.set_cut(true);
    }
    // Peers answer and relay the store: no reason to stop serving or to be downed.
    tokio::time::sleep(c.timing.detect_timeout * 2).await;
    anyhow::ensure!(
        c.get(victim).is_some_and(TestNode::ready),
        "{victim} stopped serving although its peers answer"
    );
    anyhow::ensure!(c.all_up(&FIVE[..3]), "table changed: {:?}", c.table());
    // A join it cannot read from the store reaches it through the probes' gossip.
    c.start("node-x").await?;
    let took = until(
        "the cut-off node sees the new member",
        Duration::from_secs(10),
        &c,
        |c| {
            c.all_up(&["node-a", "node-b", "node-c", "node-x"])
                && c.get(victim)
                    .and_then(|n| n.node.as_ref())
                    .is_some_and(|n| {
                        n.members()
                            .borrow()
                            .get("node-x")
                            .is_some_and(|m| m.status == MemberStatus::Up)
                    })
        },
    )
    .await?;
    println!("[membership] node cut from the store learned a join through its peers in {took:?}");
    if let Some(n) = c.get(victim) {
        n.store.set_cut(false);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn formation_with_the_production_timing() -> anyhow::Result<()> {
    // Formation is driven by store events and immediate probes of new members, not by the
    // timers: the production timing forms as fast as the test timing.
    let rounds = 5;
    let mut times = Vec::new();
    for _ in 0..rounds {
        let mut c = TestCluster::with_timing(Timing::default());
        for p in FIVE {
            c.start(p).await?;
        }
        times.push(
            until("5 Up and Ready", Duration::from_secs(20), &c, |c| {
                c.all_up(&FIVE)
            })
            .await?,
        );
    }
    println!(
        "[membership] 5 nodes at once with the production timing, {rounds} rounds: formation median {:?}, max {:?}",
        median(times.clone()),
        times.iter().max().copied().unwrap_or_default()
    );
    Ok(())
}

/// The incarnation of every running node, by pod.
fn incarnations(c: &TestCluster) -> Vec<(String, Option<String>)> {
    c.nodes
        .iter()
        .map(|n| (n.pod.clone(), n.incarnation()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_while_a_new_node_starts_stays_one_cluster() -> anyhow::Result<()> {
    // H1 scenario A: a, b, c run; the Lease is deleted; a new pod d starts at that moment.
    let mut c = formed(&FIVE[..3]).await?;
    // d's node starts clearly after the others' (as a restart or a scale-up does).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = c.table();
    c.store.delete();
    c.start("node-d").await?;
    let all = ["node-a", "node-b", "node-c", "node-d"];
    let took = until(
        "a, b, c and d Up in one table",
        Duration::from_secs(15),
        &c,
        |c| c.all_up(&all),
    )
    .await?;
    let t = c.table();
    assert_eq!(t.cluster, before.cluster, "a second cluster formed: {t:?}");
    assert!(t.epoch > before.epoch, "the table was not restored: {t:?}");
    println!("[membership] Lease deleted while a node started: one cluster of 4 in {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_lease_is_restored_and_every_member_rejoins_as_a_new_incarnation()
-> anyhow::Result<()> {
    // H1 scenario B: every node at the same version; the Lease is deleted.
    let c = formed(&FIVE[..3]).await?;
    until("all follow the store", Duration::from_secs(5), &c, |c| {
        let t = c.table();
        c.nodes
            .iter()
            .all(|n| n.node.as_ref().is_some_and(|x| *x.members().borrow() == t))
    })
    .await?;
    let before = c.table();
    let incs = incarnations(&c);
    c.store.delete();
    let took = until(
        "the table restored, all Up",
        Duration::from_secs(10),
        &c,
        |c| c.store.table().is_some() && c.all_up(&FIVE[..3]),
    )
    .await?;
    let t = c.table();
    assert_eq!(
        t.cluster, before.cluster,
        "a fresh cluster replaced the old one: {t:?}"
    );
    assert_eq!(t.epoch, before.epoch + 1, "{t:?}");
    // No incarnation is Up in two epochs (a Down lost with the old Lease must not come
    // back): every member of the restored epoch joined it anew.
    let now = incarnations(&c);
    assert_eq!(now.len(), incs.len(), "{t:?}");
    for (old, new) in incs.iter().zip(&now) {
        assert_ne!(
            old, new,
            "an incarnation of the earlier epoch is Up again: {t:?}"
        );
    }
    println!("[membership] deleted Lease restored, all 3 Up again in {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stripped_lease_is_restored_and_every_member_rejoins_as_a_new_incarnation()
-> anyhow::Result<()> {
    // H1 scenario C: the annotation is removed, the Lease stays.
    let mut c = formed(&FIVE[..3]).await?;
    let before = c.table();
    let incs = incarnations(&c);
    c.store.strip();
    let took = until(
        "the table restored, all Up",
        Duration::from_secs(10),
        &c,
        |c| c.store.table().is_some() && c.all_up(&FIVE[..3]),
    )
    .await?;
    let t = c.table();
    assert_eq!(
        t.cluster, before.cluster,
        "a fresh cluster replaced the old one: {t:?}"
    );
    assert_eq!(t.epoch, before.epoch + 1, "{t:?}");
    // No incarnation is Up in two epochs (a Down lost with the old Lease must not come
    // back): every member of the restored epoch joined it anew.
    let now = incarnations(&c);
    assert_eq!(now.len(), incs.len(), "{t:?}");
    for (old, new) in incs.iter().zip(&now) {
        assert_ne!(
            old, new,
            "an incarnation of the earlier epoch is Up again: {t:?}"
        );
    }
    println!("[membership] stripped Lease restored, all 3 Up again in {took:?}");
    // A new node joins the restored table, not a parallel one.
    c.start("node-x").await?;
    until("node-x Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&["node-a", "node-b", "node-c", "node-x"])
    })
    .await?;
    assert_eq!(c.table().cluster, before.cluster);
    Ok(())
}

/// A store whose reads and watch events arrive `delay` after the store answered them,
/// while `lag` is on: a lagging API server (or a slow GET). Writes are not delayed.
#[derive(Clone)]
struct Lagging {
    inner: MemoryStore,
    delay: Duration,
    lag: Arc<AtomicBool>,
}

impl Lagging {
    async fn lag(&self) {
        if self.lag.load(Ordering::SeqCst) {
            tokio::time::sleep(self.delay).await;
        }
    }
}

impl MemberStore for Lagging {
    async fn read(&self) -> Result<Found, StoreError> {
        let r = self.inner.read().await;
        self.lag().await;
        r
    }

    async fn create(&self, record: &LeaseRecord) -> Result<Stored, StoreError> {
        self.inner.create(record).await
    }

    async fn replace(
        &self,
        resource_version: &str,
        record: &LeaseRecord,
    ) -> Result<Stored, StoreError> {
        self.inner.replace(resource_version, record).await
    }

    fn changes(&self) -> ChangeStream {
        use futures::StreamExt;
        let me = self.clone();
        self.inner
            .changes()
            .then(move |ev| {
                let me = me.clone();
                async move {
                    me.lag().await;
                    ev
                }
            })
            .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_store_does_not_extend_serving_past_the_down() -> anyhow::Result<()> {
    // M2: node-d's store answers 1.2 s late (store timeout 1.5 s). It is then cut off from
    // store and peers; its last answers still arrive and must not count as fresh.
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        ..Timing::fast()
    };
    let mut c = TestCluster::with_timing(timing);
    for p in &FIVE[..3] {
        c.start(p).await?;
    }
    until("cluster formed", Duration::from_secs(10), &c, |c| {
        c.all_up(&FIVE[..3])
    })
    .await?;
    let lag = Arc::new(AtomicBool::new(false));
    let delay = Duration::from_millis(1200);
    let flag = Arc::clone(&lag);
    c.start_on("node-d", move |inner| Lagging {
        inner,
        delay,
        lag: flag,
    })
    .await?;
    until("node-d Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&["node-a", "node-b", "node-c", "node-d"])
    })
    .await?;
    // The store starts lagging for node-d (it only follows: the others write).
    lag.store(true, Ordering::SeqCst);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        c.check_no_serving_outside_the_table()
            .map_err(anyhow::Error::msg)?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    c.network.set_cut("node-d", true);
    if let Some(n) = c.get("node-d") {
        n.store.set_cut(true);
    }
    let took = until("node-d downed", Duration::from_secs(10), &c, |c| {
        c.table()
            .get("node-d")
            .is_none_or(|m| m.status == MemberStatus::Down)
    })
    .await?;
    println!(
        "[membership] lagging, then isolated node downed after {took:?}, never serving past it"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_coordinator_cut_from_its_peers_lets_the_majority_promote_a_joiner() -> anyhow::Result<()>
{
    // M5: the coordinator reaches the store but none of its peers.
    let mut c = formed(&FIVE[..3]).await?;
    let coordinator = c
        .nodes
        .iter()
        .find(|n| {
            n.node
                .as_ref()
                .is_some_and(|x| x.view().borrow().coordinator)
        })
        .map(|n| n.pod.clone())
        .ok_or_else(|| anyhow::anyhow!("no coordinator"))?;
    c.network.set_cut(&coordinator, true);
    c.start("node-x").await?;
    let took = until(
        "the majority promotes node-x",
        Duration::from_secs(15),
        &c,
        |c| {
            c.table()
                .get("node-x")
                .is_some_and(|m| m.status == MemberStatus::Up)
        },
    )
    .await?;
    let holder = c.store.snapshot().and_then(|s| s.record.holder);
    assert!(
        !holder.is_some_and(|h| h.starts_with(&format!("{coordinator}_"))),
        "the cut-off coordinator still holds the lease"
    );
    println!(
        "[membership] coordinator cut from its peers: a joiner promoted by the majority after {took:?} (lease {:?})",
        c.timing.lease_duration
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_leaving_together_follow_the_table_during_their_handover() -> anyhow::Result<()> {
    // M4: two of four nodes leave at once; while they hand over, each must see the other
    // leave (the table the runtime places over stays current).
    let mut c = formed(&FIVE[..4]).await?;
    let (release, released) = watch::channel(false);
    let mut leaving = Vec::new();
    let mut views = Vec::new();
    for pod in ["node-a", "node-b"] {
        let node = c
            .nodes
            .iter_mut()
            .find(|n| n.pod == pod)
            .and_then(|n| n.node.take())
            .ok_or_else(|| anyhow::anyhow!("{pod} not running"))?;
        views.push((pod, node.view()));
        let mut released = released.clone();
        let handover = async move {
            let _ = released.wait_for(|r| *r).await;
        };
        leaving.push(tokio::spawn(node.leave(handover, Duration::from_secs(10))));
    }
    until(
        "both Leaving in the store",
        Duration::from_secs(10),
        &c,
        |c| {
            let t = c.table();
            ["node-a", "node-b"]
                .iter()
                .all(|p| t.get(p).is_some_and(|m| m.status == MemberStatus::Leaving))
        },
    )
    .await?;
    let start = Instant::now();
    let mut caught_up = false;
    while start.elapsed() < Duration::from_secs(5) {
        let t = c.table();
        if views.iter().all(|(_, v)| v.borrow().table == t) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let seen: Vec<String> = views
        .iter()
        .map(|(p, v)| format!("{p} at v{}", v.borrow().table.version))
        .collect();
    assert!(
        caught_up,
        "a draining node stopped following the table (store at v{}): {seen:?}",
        c.table().version
    );
    let _ = release.send(true);
    for l in leaving {
        let report = l.await??;
        assert!(report.removed, "{report:?}");
    }
    for pod in ["node-a", "node-b"] {
        c.kill(pod, true);
    }
    until("c and d Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&["node-c", "node-d"])
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_clusters_table_in_the_lease_is_joined_as_new_nodes() -> anyhow::Result<()> {
    // H1: the Lease is replaced by another life of it (another cluster id). The followers
    // never compare versions across ids: they stop serving and join it as new nodes.
    let c = formed(&FIVE[..3]).await?;
    let incs = incarnations(&c);
    let mut other = MemberTable {
        cluster: "another-life".into(),
        first_epoch: 0,
        epoch: 0,
        version: 0,
        members: Vec::new(),
    };
    other.join("ghost", "g1", "127.0.0.1:9");
    other.transition("ghost", "g1", MemberStatus::Up)?;
    let record = LeaseRecord {
        holder: None,
        renew_ms: 1,
        lease_duration_s: 1,
        table: other,
    };
    let mut replaced = false;
    for _ in 0..20 {
        let Some(s) = c.store.snapshot() else { break };
        if c.store.replace(&s.resource_version, &record).await.is_ok() {
            replaced = true;
            break;
        }
    }
    anyhow::ensure!(replaced, "could not replace the record");
    // Nobody can stop serving before it hears of the replacement; it must stop as soon as
    // it does. Then the invariants hold again, every moment.
    let start = Instant::now();
    while c.nodes.iter().any(|n| {
        n.node.as_ref().is_some_and(|x| {
            let v = x.view().borrow().clone();
            v.serving && v.table.cluster != "another-life"
        })
    }) {
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(2),
            "a node still serves the old cluster"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let took = until(
        "a, b, c Up in the other cluster",
        Duration::from_secs(15),
        &c,
        |c| c.all_up(&FIVE[..3]) && c.table().cluster == "another-life",
    )
    .await?;
    let now = incarnations(&c);
    for ((pod, before), (_, after)) in incs.iter().zip(&now) {
        assert_ne!(before, after, "{pod} kept its incarnation across clusters");
    }
    println!("[membership] Lease replaced by another cluster: all joined it in {took:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_nodes_on_a_stripped_lease_form_a_cluster() -> anyhow::Result<()> {
    // Cold start over a Lease whose annotation was removed while nothing ran.
    let mut c = formed(&FIVE[..3]).await?;
    for p in &FIVE[..3] {
        c.kill(p, true);
    }
    c.nodes.clear();
    c.store.strip();
    for p in &FIVE[..3] {
        c.start(p).await?;
    }
    until("3 Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&FIVE[..3])
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_node_does_not_form_beside_followers_cut_from_the_store() -> anyhow::Result<()> {
    // H1, the restore grace's blind spot: the Lease is deleted while its followers cannot
    // reach the store (they keep serving on their peers' answers). A node started later
    // must not form a second cluster beside them.
    let mut c = formed(&FIVE[..3]).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = c.table();
    for p in &FIVE[..3] {
        if let Some(n) = c.get(p) {
            n.store.set_cut(true);
        }
    }
    c.store.delete();
    c.start("node-d").await?;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(3) {
        c.check_no_serving_outside_the_table()
            .map_err(anyhow::Error::msg)?;
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    for p in &FIVE[..3] {
        if let Some(n) = c.get(p) {
            n.store.set_cut(false);
        }
    }
    until(
        "a, b, c, d Up in one table",
        Duration::from_secs(15),
        &c,
        |c| c.all_up(&["node-a", "node-b", "node-c", "node-d"]),
    )
    .await?;
    assert_eq!(c.table().cluster, before.cluster, "{:?}", c.table());
    Ok(())
}

/// A store that, while `hang` is on, answers nothing: every call (and every watch event)
/// waits until it is off again — an API server that accepts connections but never
/// replies. The node's own store timeout ends each call.
#[derive(Clone)]
struct Hanging {
    inner: MemoryStore,
    hang: Arc<AtomicBool>,
}

impl Hanging {
    async fn gate(&self) {
        while self.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl MemberStore for Hanging {
    async fn read(&self) -> Result<Found, StoreError> {
        self.gate().await;
        self.inner.read().await
    }

    async fn create(&self, record: &LeaseRecord) -> Result<Stored, StoreError> {
        self.gate().await;
        self.inner.create(record).await
    }

    async fn replace(
        &self,
        resource_version: &str,
        record: &LeaseRecord,
    ) -> Result<Stored, StoreError> {
        self.gate().await;
        self.inner.replace(resource_version, record).await
    }

    fn changes(&self) -> ChangeStream {
        use futures::StreamExt;
        let me = self.clone();
        self.inner
            .changes()
            .then(move |ev| {
                let me = me.clone();
                async move {
                    me.gate().await;
                    ev
                }
            })
            .boxed()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_store_does_not_make_ready_flap() -> anyhow::Result<()> {
    // The API server hangs for a long stretch: every store call runs into the store
    // timeout. The members keep serving on each other's answers, and must stay Ready
    // throughout — the loop waiting on the store must not let those answers go stale.
    let hang = Arc::new(AtomicBool::new(false));
    let mut c = TestCluster::new();
    for p in &FIVE[..3] {
        let hang = hang.clone();
        c.start_on(p, move |inner| Hanging { inner, hang }).await?;
    }
    until("cluster formed", Duration::from_secs(10), &c, |c| {
        c.all_up(&FIVE[..3])
    })
    .await?;
    hang.store(true, Ordering::SeqCst);
    let start = Instant::now();
    let stretch = c.timing.detect_timeout * 4;
    let mut samples = 0u64;
    while start.elapsed() < stretch {
        for n in &c.nodes {
            assert!(
                n.ready(),
                "{} stopped being Ready {:?} into the store hang (sample {samples})",
                n.pod,
                start.elapsed()
            );
        }
        samples += 1;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    hang.store(false, Ordering::SeqCst);
    until("all Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&FIVE[..3])
    })
    .await?;
    println!("[membership] store hung for {stretch:?}: 3 nodes Ready at all {samples} samples");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_cut_from_the_store_learn_a_restore_from_the_restorers_answers()
-> anyhow::Result<()> {
    // Seeds 366, 1706, ... of `make simulate`: node-a and node-b cannot reach the store
    // when the Lease is deleted; node-c restores it, as a new incarnation alone in the
    // restored epoch. node-a and node-b, a majority of the old table, serve it on each
    // other's word; they must learn the restored epoch from node-c's answers (another
    // incarnation now) before node-c serves it, not stay beside it.
    let c = formed(&FIVE[..3]).await?;
    let before = c.table();
    for n in &c.nodes[..2] {
        n.store.set_cut(true);
    }
    c.store.delete();
    until(
        "node-a and node-b follow the restored epoch",
        Duration::from_secs(10),
        &c,
        |c| {
            c.nodes[..2].iter().all(|n| {
                n.node
                    .as_ref()
                    .is_some_and(|x| x.view().borrow().table.epoch == before.epoch + 1)
            })
        },
    )
    .await?;
    for n in &c.nodes[..2] {
        n.store.set_cut(false);
    }
    until("all Up", Duration::from_secs(10), &c, |c| {
        c.all_up(&FIVE[..3])
    })
    .await?;
    assert_eq!(c.table().cluster, before.cluster);
    Ok(())
}
