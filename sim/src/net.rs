//! [`SimNet`] and [`SimProber`]: probes answered in-process from the target node's current
//! view (`troupe_node::http::ping_reply`, the same answer `GET /cluster/ping` gives), with
//! the faults the schedule injects: a node partitioned off, one-way cuts (probes from A to
//! B fail, B to A work), extra latency per node, random latency (reordering), and paused
//! or dead nodes that answer nothing. The actor runtime's transport links
//! ([`crate::transport`]) take the same legs ([`SimNet::leg`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use troupe_contract::Member;
use troupe_node::MembershipView;
use troupe_node::probe::{PingReply, ProbeError, Prober};

use crate::rng::Rng;
use crate::transport::Incoming;

/// Latency of every probe leg without faults.
const BASE_LATENCY: Duration = Duration::from_millis(1);

#[derive(Debug)]
struct Endpoint {
    view: watch::Receiver<MembershipView>,
    answering: bool,
}

#[derive(Debug)]
struct State {
    endpoints: BTreeMap<String, Endpoint>,
    isolated: BTreeSet<String>,
    one_way: BTreeSet<(String, String)>,
    delay: BTreeMap<String, Duration>,
    jitter: Duration,
    rng: Rng,
    /// The jitter of transport links (apart, so that actor traffic leaves the probes'
    /// draws as they were).
    link_rng: Rng,
    /// pod → (node process, host, where its transport accepts connections).
    listeners: BTreeMap<String, (u64, String, mpsc::UnboundedSender<Incoming>)>,
}

/// The simulated network between the nodes of one run.
#[derive(Clone, Debug)]
pub struct SimNet {
    state: Arc<Mutex<State>>,
}

impl SimNet {
    /// A network without faults; `rng` draws the jitter.
    pub fn new(rng: Rng) -> Self {
        Self {
            state: Arc::new(Mutex::new(State {
                endpoints: BTreeMap::new(),
                isolated: BTreeSet::new(),
                one_way: BTreeSet::new(),
                delay: BTreeMap::new(),
                jitter: Duration::ZERO,
                link_rng: Rng::new(rng.clone().next_u64() ^ 0x6c69_6e6b),
                rng,
                listeners: BTreeMap::new(),
            })),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `pod` now answers probes from `view` (a node started there).
    pub fn attach(&self, pod: &str, view: watch::Receiver<MembershipView>) {
        self.state().endpoints.insert(
            pod.to_owned(),
            Endpoint {
                view,
                answering: true,
            },
        );
    }

    /// Nothing answers at `pod` any more (the node died).
    pub fn detach(&self, pod: &str) {
        self.state().endpoints.remove(pod);
    }

    /// The node process `process` at `pod` (address `host`) accepts transport
    /// connections on `accept`.
    pub fn listen(
        &self,
        pod: &str,
        host: &str,
        process: u64,
        accept: mpsc::UnboundedSender<Incoming>,
    ) {
        self.state()
            .listeners
            .insert(pod.to_owned(), (process, host.to_owned(), accept));
    }

    /// The node process at `pod` is gone: connections to it are refused, its links die.
    pub fn unlisten(&self, pod: &str) {
        self.state().listeners.remove(pod);
    }

    /// The pod, process and acceptor of the node listening at `host`.
    pub(crate) fn listener_at(
        &self,
        host: &str,
    ) -> Option<(String, u64, mpsc::UnboundedSender<Incoming>)> {
        self.state()
            .listeners
            .iter()
            .find(|(_, (_, h, _))| h == host)
            .map(|(p, (n, _, tx))| (p.clone(), *n, tx.clone()))
    }

    /// Whether the node process `process` still runs at `pod`.
    pub(crate) fn process_alive(&self, pod: &str, process: u64) -> bool {
        self.state()
            .listeners
            .get(pod)
            .is_some_and(|(n, _, _)| *n == process)
    }

    /// The latency of one packet from `from` to `to`, or `None` while that leg is cut.
    pub fn leg(&self, from: &str, to: &str) -> Option<Duration> {
        let mut s = self.state();
        if s.isolated.contains(from)
            || s.isolated.contains(to)
            || s.one_way.contains(&(from.to_owned(), to.to_owned()))
        {
            return None;
        }
        let extra = s.delay.get(from).copied().unwrap_or_default()
            + s.delay.get(to).copied().unwrap_or_default();
        let jitter_ms = u64::try_from(s.jitter.as_millis()).unwrap_or(0);
        let j = s.link_rng.range(0, jitter_ms);
        Some(BASE_LATENCY + extra / 2 + Duration::from_millis(j))
    }

    /// The node at `pod` answers (`true`) or is paused.
    pub fn set_answering(&self, pod: &str, answering: bool) {
        if let Some(e) = self.state().endpoints.get_mut(pod) {
            e.answering = answering;
        }
    }

    /// Cuts `pod` off from every peer, or heals it.
    pub fn set_isolated(&self, pod: &str, isolated: bool) {
        let mut s = self.state();
        if isolated {
            s.isolated.insert(pod.to_owned());
        } else {
            s.isolated.remove(pod);
        }
    }

    /// Whether `pod` is cut off from every peer.
    pub fn is_isolated(&self, pod: &str) -> bool {
        self.state().isolated.contains(pod)
    }

    /// Probes from `from` to `to` fail (`true`) or work again.
    pub fn set_one_way(&self, from: &str, to: &str, cut: bool) {
        let key = (from.to_owned(), to.to_owned());
        let mut s = self.state();
        if cut {
            s.one_way.insert(key);
        } else {
            s.one_way.remove(&key);
        }
    }

    /// Extra latency on each leg to or from `pod`.
    pub fn set_delay(&self, pod: &str, delay: Duration) {
        let mut s = self.state();
        if delay.is_zero() {
            s.delay.remove(pod);
        } else {
            s.delay.insert(pod.to_owned(), delay);
        }
    }

    /// Random extra latency up to `jitter` on each leg.
    pub fn set_jitter(&self, jitter: Duration) {
        self.state().jitter = jitter;
    }

    /// Heals every network fault (pauses are the world's business).
    pub fn heal(&self) {
        let mut s = self.state();
        s.isolated.clear();
        s.one_way.clear();
        s.delay.clear();
        s.jitter = Duration::ZERO;
    }

    /// The latencies of a probe's two legs, or `None` when the probe is lost.
    fn route(&self, from: &str, to: &str) -> Option<(Duration, Duration)> {
        let mut s = self.state();
        if s.isolated.contains(from)
            || s.isolated.contains(to)
            || s.one_way.contains(&(from.to_owned(), to.to_owned()))
        {
            return None;
        }
        let extra = s.delay.get(from).copied().unwrap_or_default()
            + s.delay.get(to).copied().unwrap_or_default();
        let jitter_ms = u64::try_from(s.jitter.as_millis()).unwrap_or(0);
        let leg = |s: &mut State| {
            BASE_LATENCY + extra / 2 + Duration::from_millis(s.rng.range(0, jitter_ms))
        };
        let there = leg(&mut s);
        let back = leg(&mut s);
        Some((there, back))
    }

    /// What `pod` answers now, if anything answers there.
    fn answer(&self, pod: &str) -> Option<PingReply> {
        let s = self.state();
        let e = s.endpoints.get(pod).filter(|e| e.answering)?;
        let reply = troupe_node::http::ping_reply(&e.view.borrow(), troupe_node::seams::now());
        Some(reply)
    }
}

/// The [`Prober`] of the node at `me`.
#[derive(Clone, Debug)]
pub struct SimProber {
    net: SimNet,
    me: String,
    timeout: Duration,
}

impl SimProber {
    /// Probes from `me`, giving up after `timeout` (the node's probe timeout).
    pub fn new(net: &SimNet, me: &str, timeout: Duration) -> Self {
        Self {
            net: net.clone(),
            me: me.to_owned(),
            timeout,
        }
    }
}

fn no_answer(reason: &str) -> ProbeError {
    ProbeError::NoAnswer {
        addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        reason: reason.to_owned(),
    }
}

impl Prober for SimProber {
    async fn probe(&self, target: &Member) -> Result<PingReply, ProbeError> {
        let Some((there, back)) = self.net.route(&self.me, &target.pod) else {
            tokio::time::sleep(self.timeout).await;
            return Err(no_answer("simulated partition"));
        };
        if there + back > self.timeout {
            tokio::time::sleep(self.timeout).await;
            return Err(no_answer("simulated latency beyond the probe timeout"));
        }
        tokio::time::sleep(there).await;
        let Some(reply) = self.net.answer(&target.pod) else {
            tokio::time::sleep(self.timeout - there).await;
            return Err(no_answer("nothing answers there"));
        };
        tokio::time::sleep(back).await;
        Ok(reply)
    }
}
