//! Reaching a Service through its ClusterIP: the one way a suite talks to a Service.
//!
//! The API says a Service exists and its pods are Ready a moment before the node can use
//! it: kube-proxy has to program the ClusterIP (until then a connection is refused, issue
//! 14), and after every change of the ready endpoints it has to catch up before traffic
//! goes only to them. [`until_serving`] waits for both, so a test starts on a Service
//! that answers and routes as the EndpointSlices say:
//!
//! ```text
//!   Service ClusterIP + port ──┐
//!   EndpointSlices (ready) ────┼─► CONSECUTIVE probes in a row, each on a fresh
//!                              │   connection, each answered as the Probe expects and,
//!                              │   when the answer names its pod, by a ready endpoint;
//!   EndpointSlices again ──────┘   the ready endpoints unchanged across the streak
//! ```
//!
//! The judgement of one answer ([`judge`]) and of a run of answers ([`Streak`]) are plain
//! functions, unit-tested here; [`until_serving`] is the thin driver.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::ListParams;

use crate::TestContext;
use crate::http::{self, Response};

/// Requests in a row a Service must answer well before a test uses it. With two ready
/// endpoints and one stale one still programmed, 20 in a row miss the stale one by
/// chance with probability (2/3)^20 < 0.001.
pub const CONSECUTIVE: usize = 20;

/// How long [`until_serving`] waits by default: kube-proxy syncs within a second or two,
/// so this is only reached when something is really wrong.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);

/// Names the pod that gave an answer, when the answer says (e.g. a `pod` field).
pub type AnsweredBy = fn(&Response) -> Option<String>;

/// One request a Service must answer, and what a good answer is.
#[derive(Debug, Clone)]
pub struct Probe {
    method: &'static str,
    path: String,
    body: Option<String>,
    status: u16,
    answered_by: Option<AnsweredBy>,
}

impl Probe {
    /// `GET path`, answered with `status`.
    pub fn get(path: &str, status: u16) -> Self {
        Self {
            method: "GET",
            path: path.to_owned(),
            body: None,
            status,
            answered_by: None,
        }
    }

    /// `POST path` with `body`, answered with `status`.
    pub fn post(path: &str, body: Option<String>, status: u16) -> Self {
        Self {
            method: "POST",
            path: path.to_owned(),
            body,
            status,
            answered_by: None,
        }
    }

    /// Good answers name the pod (its name or IP) that gave them, and it must be one of
    /// the Service's ready endpoints.
    pub fn answered_by(mut self, f: AnsweredBy) -> Self {
        self.answered_by = Some(f);
        self
    }
}

/// The ready endpoints of a Service, from its EndpointSlices.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadyEndpoints {
    /// Their IP addresses.
    pub addresses: BTreeSet<String>,
    /// The names of the pods behind them (`targetRef`).
    pub pods: BTreeSet<String>,
}

impl ReadyEndpoints {
    /// Collects the endpoints whose `ready` condition is true.
    pub fn from_slices(slices: &[EndpointSlice]) -> Self {
        let mut out = Self::default();
        for e in slices.iter().flat_map(|s| s.endpoints.iter()) {
            if e.conditions.as_ref().and_then(|c| c.ready) != Some(true) {
                continue;
            }
            out.addresses.extend(e.addresses.iter().cloned());
            if let Some(name) = e.target_ref.as_ref().and_then(|r| r.name.clone()) {
                out.pods.insert(name);
            }
        }
        out
    }

    /// Whether `who` (a pod name or an IP) is one of them.
    pub fn contains(&self, who: &str) -> bool {
        self.pods.contains(who) || self.addresses.contains(who)
    }

    /// Whether there is none.
    pub fn is_empty(&self) -> bool {
        self.addresses.is_empty()
    }
}

/// What one probe request showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Answered as expected, by a ready endpoint when the answer says who answered.
    Good,
    /// No answer: refused, reset or timed out (kube-proxy has not programmed the Service).
    NoAnswer(String),
    /// Answered with another status (e.g. a pod that is not Ready any more).
    WrongStatus { status: u16, body: String },
    /// Answered by a pod that is not among the ready endpoints.
    Stray { pod: String },
    /// The answer was expected to name its pod and did not.
    Anonymous { body: String },
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Good => write!(f, "answered as expected"),
            Self::NoAnswer(e) => write!(f, "no answer: {e}"),
            Self::WrongStatus { status, body } => write!(f, "answered {status}: {body}"),
            Self::Stray { pod } => write!(f, "answered by {pod}, not a ready endpoint"),
            Self::Anonymous { body } => write!(f, "answer does not name its pod: {body}"),
        }
    }
}

/// Judges one answer (or the error in its place) against the probe and the ready
/// endpoints.
pub fn judge(
    probe: &Probe,
    answer: Result<&Response, &anyhow::Error>,
    ready: &ReadyEndpoints,
) -> Outcome {
    let r = match answer {
        Ok(r) => r,
        Err(e) => return Outcome::NoAnswer(format!("{e:#}")),
    };
    if r.status != probe.status {
        return Outcome::WrongStatus {
            status: r.status,
            body: short(&r.body),
        };
    }
    match probe.answered_by.map(|f| f(r)) {
        None => Outcome::Good,
        Some(None) => Outcome::Anonymous {
            body: short(&r.body),
        },
        Some(Some(pod)) if ready.contains(&pod) => Outcome::Good,
        Some(Some(pod)) => Outcome::Stray { pod },
    }
}

fn short(body: &str) -> String {
    body.trim().chars().take(200).collect()
}

/// A run of probe outcomes: how many good ones in a row, and what broke the last run.
#[derive(Debug, Clone, Default)]
pub struct Streak {
    in_a_row: usize,
    bad: usize,
    first_bad: Option<Outcome>,
    last_bad: Option<Outcome>,
}

impl Streak {
    /// Records one outcome; true once `CONSECUTIVE` good ones came in a row.
    pub fn record(&mut self, o: Outcome) -> bool {
        if o == Outcome::Good {
            self.in_a_row += 1;
        } else {
            self.in_a_row = 0;
            self.bad += 1;
            if self.first_bad.is_none() {
                self.first_bad = Some(o.clone());
            }
            self.last_bad = Some(o);
        }
        self.done()
    }

    /// Starts the run over without forgetting the bad outcomes (the endpoints changed).
    pub fn restart(&mut self) {
        self.in_a_row = 0;
    }

    /// Whether `CONSECUTIVE` good outcomes came in a row.
    pub fn done(&self) -> bool {
        self.in_a_row >= CONSECUTIVE
    }

    /// Bad outcomes seen so far.
    pub fn bad(&self) -> usize {
        self.bad
    }

    /// The first bad outcome, if any.
    pub fn first_bad(&self) -> Option<&Outcome> {
        self.first_bad.as_ref()
    }

    /// The most recent bad outcome, if any.
    pub fn last_bad(&self) -> Option<&Outcome> {
        self.last_bad.as_ref()
    }
}

/// A Service that answers: its `ip:port` and the ready endpoints it was checked against.
#[derive(Debug, Clone)]
pub struct Serving {
    /// `clusterIP:port`, for [`http::request`].
    pub addr: String,
    /// The ready endpoints when the streak ended.
    pub endpoints: ReadyEndpoints,
}

/// The ready endpoints of Service `name` now.
pub async fn ready_endpoints(ctx: &TestContext, name: &str) -> anyhow::Result<ReadyEndpoints> {
    let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={name}"));
    let slices = ctx
        .api::<EndpointSlice>()
        .list(&lp)
        .await
        .with_context(|| format!("listing the EndpointSlices of Service {name}"))?;
    Ok(ReadyEndpoints::from_slices(&slices.items))
}

/// `clusterIP:port` of Service `name`, checking that it has a ClusterIP and that port.
pub async fn cluster_address(ctx: &TestContext, name: &str, port: u16) -> anyhow::Result<String> {
    let spec = ctx
        .api::<Service>()
        .get(name)
        .await
        .with_context(|| format!("reading Service {name}"))?
        .spec
        .with_context(|| format!("Service {name} has no spec"))?;
    let ip = spec
        .cluster_ip
        .filter(|ip| !ip.is_empty() && ip != "None")
        .with_context(|| format!("Service {name} has no ClusterIP (headless?)"))?;
    let ports: Vec<i32> = spec.ports.iter().flatten().map(|p| p.port).collect();
    anyhow::ensure!(
        ports.contains(&i32::from(port)),
        "Service {name} has no port {port} (it has {ports:?})"
    );
    Ok(format!("{ip}:{port}"))
}

/// Waits until Service `name` answers `probe` on `port` of its ClusterIP
/// [`CONSECUTIVE`] times in a row (see the module docs), at most `timeout`, and returns
/// its address. Every test reaches a Service through this before its first request, and
/// again after the Service's ready endpoints changed when it needs traffic to follow them.
pub async fn until_serving(
    ctx: &TestContext,
    name: &str,
    port: u16,
    probe: &Probe,
    timeout: Duration,
) -> anyhow::Result<Serving> {
    let started = Instant::now();
    let addr = cluster_address(ctx, name, port).await?;
    let mut streak = Streak::default();
    let mut requests = 0usize;
    let what = format!(
        "Service {name} ({addr}) to answer {} {} with {} {CONSECUTIVE} times in a row from its ready endpoints",
        probe.method, probe.path, probe.status
    );
    let deadline = started + timeout;
    let endpoints = loop {
        match streak_once(ctx, name, &addr, probe, &mut streak, &mut requests).await {
            Ok(endpoints) => break endpoints,
            Err(e) if Instant::now() >= deadline => {
                return Err(e.context(format!("timed out after {timeout:?} waiting for {what}")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    };
    tracing::info!(
        service = name,
        %addr,
        endpoints = ?endpoints.addresses,
        requests,
        bad = streak.bad(),
        first_bad = %streak.first_bad().map(ToString::to_string).unwrap_or_default(),
        elapsed_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        "Service serving"
    );
    if let Some(first) = streak.first_bad() {
        eprintln!(
            "[service] {name} at {addr}: {} of {requests} probe requests were not answered well before {CONSECUTIVE} in a row (first: {first}; last: {}) in {:.1}s",
            streak.bad(),
            streak
                .last_bad()
                .map(ToString::to_string)
                .unwrap_or_default(),
            started.elapsed().as_secs_f64()
        );
    }
    Ok(Serving { addr, endpoints })
}

/// One attempt: the ready endpoints, then requests until [`CONSECUTIVE`] good ones in a
/// row or the first bad one (an error saying what it was), then the ready endpoints again.
async fn streak_once(
    ctx: &TestContext,
    name: &str,
    addr: &str,
    probe: &Probe,
    streak: &mut Streak,
    requests: &mut usize,
) -> anyhow::Result<ReadyEndpoints> {
    let before = ready_endpoints(ctx, name).await?;
    anyhow::ensure!(!before.is_empty(), "Service {name} has no ready endpoints");
    streak.restart();
    while !streak.done() {
        *requests += 1;
        let answer = http::request(probe.method, addr, &probe.path, probe.body.clone()).await;
        let outcome = judge(probe, answer.as_ref(), &before);
        if outcome != Outcome::Good {
            let message = format!("request {requests}: {outcome}");
            streak.record(outcome);
            anyhow::bail!(message);
        }
        streak.record(outcome);
    }
    let after = ready_endpoints(ctx, name).await?;
    anyhow::ensure!(
        after == before,
        "the ready endpoints changed during the streak: {:?} -> {:?}",
        before.addresses,
        after.addresses
    );
    Ok(after)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ObjectReference;
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions};

    fn ready(ips: &[&str], pods: &[&str]) -> ReadyEndpoints {
        ReadyEndpoints {
            addresses: ips.iter().map(|s| (*s).to_owned()).collect(),
            pods: pods.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    fn answer(status: u16, body: &str) -> Response {
        Response {
            status,
            body: body.to_owned(),
        }
    }

    fn pod_field(r: &Response) -> Option<String> {
        serde_json::from_str::<serde_json::Value>(&r.body)
            .ok()?
            .get("pod")?
            .as_str()
            .map(str::to_owned)
    }

    #[test]
    fn a_refused_connection_is_no_answer() {
        let e = anyhow::anyhow!("Connection refused (os error 111)").context("connecting");
        let o = judge(
            &Probe::get("/ready", 200),
            Err(&e),
            &ready(&["10.0.0.1"], &[]),
        );
        assert!(
            matches!(o, Outcome::NoAnswer(ref m) if m.contains("refused")),
            "{o:?}"
        );
    }

    #[test]
    fn another_status_is_wrong() {
        let o = judge(
            &Probe::get("/ready", 200),
            Ok(&answer(503, "draining\n")),
            &ready(&["10.0.0.1"], &[]),
        );
        assert_eq!(
            o,
            Outcome::WrongStatus {
                status: 503,
                body: "draining".into()
            }
        );
    }

    #[test]
    fn an_answer_from_a_pod_outside_the_ready_endpoints_is_stray() {
        let probe = Probe::get("/who", 200).answered_by(pod_field);
        let eps = ready(&["10.0.0.1"], &["a"]);
        assert_eq!(
            judge(&probe, Ok(&answer(200, r#"{"pod":"a"}"#)), &eps),
            Outcome::Good
        );
        assert_eq!(
            judge(&probe, Ok(&answer(200, r#"{"pod":"b"}"#)), &eps),
            Outcome::Stray { pod: "b".into() }
        );
        assert!(matches!(
            judge(&probe, Ok(&answer(200, "{}")), &eps),
            Outcome::Anonymous { .. }
        ));
        // An IP names the pod as well as its name does.
        assert_eq!(
            judge(&probe, Ok(&answer(200, r#"{"pod":"10.0.0.1"}"#)), &eps),
            Outcome::Good
        );
    }

    #[test]
    fn a_streak_needs_consecutive_good_answers_and_remembers_what_broke_it() {
        let mut s = Streak::default();
        s.record(Outcome::NoAnswer("refused".into()));
        for _ in 0..CONSECUTIVE - 1 {
            assert!(!s.record(Outcome::Good));
        }
        assert!(!s.record(Outcome::WrongStatus {
            status: 503,
            body: String::new()
        }));
        for _ in 0..CONSECUTIVE - 1 {
            assert!(!s.record(Outcome::Good));
        }
        assert!(s.record(Outcome::Good));
        assert_eq!(s.bad(), 2);
        assert_eq!(s.first_bad(), Some(&Outcome::NoAnswer("refused".into())));
        assert!(matches!(s.last_bad(), Some(Outcome::WrongStatus { .. })));
        s.restart();
        assert!(!s.done());
    }

    #[test]
    fn only_ready_endpoints_count() {
        let ep = |ip: &str, pod: &str, is_ready: Option<bool>| Endpoint {
            addresses: vec![ip.to_owned()],
            conditions: Some(EndpointConditions {
                ready: is_ready,
                ..Default::default()
            }),
            target_ref: Some(ObjectReference {
                name: Some(pod.to_owned()),
                ..Default::default()
            }),
            ..Default::default()
        };
        let slice = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![
                ep("10.0.0.1", "a", Some(true)),
                ep("10.0.0.2", "b", Some(false)),
                ep("10.0.0.3", "c", None),
            ],
            ..Default::default()
        };
        assert_eq!(
            ReadyEndpoints::from_slices(&[slice]),
            ready(&["10.0.0.1"], &["a"])
        );
    }
}
