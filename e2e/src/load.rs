//! Counter load for the fault tests: workers that increment `counter` actors and record
//! every outcome, and the final reckoning of acknowledged against counted increments.
//!
//! ```text
//!  worker w ── owns counters f-w-0 … f-w-(k-1), one request at a time, to one target
//!     │  POST /actors/counter/<id>/ask/add {"by":1}   (a fresh connection each time)
//!     ▼
//!  Event { at, target, counter, outcome }  ──►  Report: per target sent / 200 / by status,
//!                                               longest gap between 200s, per window;
//!  Reckoning: every counter read at the end ──► per counter acked ≤ value ≤ acked + unknown
//! ```
//!
//! Each counter belongs to exactly one worker, so its increments are sequential: every
//! acknowledged reply carries the counter's new value, and a reply not above the previous
//! one is a **reset** seen by the client (the actor started again without its state).
//!
//! An outcome is [`Outcome::Acked`] (200), [`Outcome::Refused`] (the increment was surely
//! not applied: the connection was refused, or the node answered 429, 4xx or
//! 503 "not accepting") or [`Outcome::Unknown`] (it may have been applied: no answer after
//! the request was sent, 504, 500, 503 unavailable or dropped). So a counter that lost
//! nothing and counted nothing twice ends with `acked ≤ value ≤ acked + unknown`; with no
//! unknown outcome that is `value == acked` exactly.
//!
//! Every worker is bounded in time and in requests and stops when told.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use serde_json::Value;

/// Where a worker sends its increments: a pod IP or a Service's ClusterIP, with a label.
#[derive(Debug, Clone)]
pub struct Target {
    /// A short name for reports, e.g. `service` or a pod name.
    pub label: String,
    /// `ip:port` of the client API.
    pub addr: String,
}

impl Target {
    /// A target named `label` at `addr`.
    pub fn new(label: impl Into<String>, addr: impl Into<String>) -> Self {
        Self {
            label: label.into(),
            addr: addr.into(),
        }
    }
}

/// What one increment came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered 200 with the counter's new value.
    Acked(i64),
    /// Surely not applied; the status (0: connection refused or not made).
    Refused(u16),
    /// Maybe applied; the status (0: no answer after the request was sent).
    Unknown(u16),
}

impl Outcome {
    /// A short name for reports: `200`, `503`, `refused-conn`, `no-answer`, …
    pub fn kind(&self) -> String {
        match self {
            Self::Acked(_) => "200".into(),
            Self::Refused(0) => "conn-refused".into(),
            Self::Unknown(0) => "no-answer".into(),
            Self::Refused(s) => format!("{s}"),
            Self::Unknown(s) => format!("{s}?"),
        }
    }
}

/// One recorded increment.
#[derive(Debug, Clone)]
pub struct Event {
    /// Seconds since the load started, when the request was sent.
    pub sent: f64,
    /// Seconds since the load started, when the outcome was known.
    pub at: f64,
    /// Index into the targets.
    pub target: usize,
    /// Index into the counters.
    pub counter: usize,
    /// What it came to.
    pub outcome: Outcome,
}

/// Load settings.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    /// Workers per target.
    pub workers_per_target: usize,
    /// Counters per worker.
    pub counters_per_worker: usize,
    /// Pause after every request (keeps two shared cores usable).
    pub pause: Duration,
    /// Hard bound on the load's duration; it stops by itself then.
    pub max_duration: Duration,
    /// Hard bound on each worker's requests.
    pub max_requests_per_worker: usize,
}

impl Default for LoadSpec {
    fn default() -> Self {
        Self {
            workers_per_target: 2,
            counters_per_worker: 4,
            pause: Duration::from_millis(5),
            max_duration: Duration::from_secs(30 * 60),
            max_requests_per_worker: 500_000,
        }
    }
}

/// A running load; [`CounterLoad::stop`] ends it and returns the events.
pub struct CounterLoad {
    started: Instant,
    targets: Vec<Target>,
    counters: Vec<String>,
    events: Arc<Mutex<Vec<Event>>>,
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for CounterLoad {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CounterLoad")
            .field("targets", &self.targets)
            .field("counters", &self.counters.len())
            .finish()
    }
}

impl CounterLoad {
    /// Starts `spec.workers_per_target` workers per target, each with its own counters
    /// (`<prefix>-<worker>-<i>`).
    pub fn start(prefix: &str, targets: Vec<Target>, spec: &LoadSpec) -> Self {
        let started = Instant::now();
        let events = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut counters = Vec::new();
        let mut workers = Vec::new();
        let mut w = 0;
        for (ti, target) in targets.iter().enumerate() {
            for _ in 0..spec.workers_per_target {
                let first = counters.len();
                for i in 0..spec.counters_per_worker {
                    counters.push(format!("{prefix}-{w}-{i}"));
                }
                let mine: Vec<(usize, String)> = (first..counters.len())
                    .map(|k| (k, counters[k].clone()))
                    .collect();
                let (events, stop, addr, spec) = (
                    events.clone(),
                    stop.clone(),
                    target.addr.clone(),
                    spec.clone(),
                );
                workers.push(tokio::spawn(async move {
                    let deadline = started + spec.max_duration;
                    for i in 0..spec.max_requests_per_worker {
                        if stop.load(Ordering::Relaxed) || Instant::now() >= deadline {
                            break;
                        }
                        let (k, id) = &mine[i % mine.len()];
                        let sent = started.elapsed().as_secs_f64();
                        let outcome = increment(&addr, id).await;
                        let at = started.elapsed().as_secs_f64();
                        if let Ok(mut ev) = events.lock() {
                            ev.push(Event {
                                sent,
                                at,
                                target: ti,
                                counter: *k,
                                outcome,
                            });
                        }
                        let pause = match outcome {
                            Outcome::Acked(_) => spec.pause,
                            // Back off a little instead of spinning on a node that refuses.
                            _ => spec.pause.max(Duration::from_millis(20)),
                        };
                        tokio::time::sleep(pause).await;
                    }
                }));
                w += 1;
            }
        }
        Self {
            started,
            targets,
            counters,
            events,
            stop,
            workers,
        }
    }

    /// When the load started (the time base of [`Event::at`]).
    pub fn started(&self) -> Instant {
        self.started
    }

    /// Seconds since the load started (the time base of [`Event::at`]).
    pub fn now(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// The events so far.
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }

    /// Stops every worker, waits for them (each finishes its request in hand, at most
    /// 5 s) and returns the record.
    pub async fn stop(self) -> anyhow::Result<Record> {
        self.stop.store(true, Ordering::Relaxed);
        let ended_at = self.started.elapsed().as_secs_f64();
        for w in self.workers {
            w.await.context("a load worker panicked")?;
        }
        let events = self.events.lock().map(|e| e.clone()).unwrap_or_default();
        Ok(Record {
            targets: self.targets,
            counters: self.counters,
            events,
            ended_at,
        })
    }
}

/// Everything a load did.
#[derive(Debug, Clone)]
pub struct Record {
    /// The targets, indexed by [`Event::target`].
    pub targets: Vec<Target>,
    /// The counter ids, indexed by [`Event::counter`].
    pub counters: Vec<String>,
    /// Every increment, in the order the outcomes were recorded.
    pub events: Vec<Event>,
    /// When the load was told to stop (seconds since it started).
    pub ended_at: f64,
}

/// Figures of a stretch of the load.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Window {
    /// Increments sent.
    pub sent: u64,
    /// Answered 200.
    pub acked: u64,
    /// Outcomes by [`Outcome::kind`].
    pub by_kind: BTreeMap<String, u64>,
    /// The longest stretch without a 200, in seconds (window edges count as 200s).
    pub longest_gap: f64,
    /// When that stretch ended (seconds since the load started).
    pub longest_gap_ends_at: f64,
}

impl Window {
    /// Answered 200, in percent of sent (100 when nothing was sent).
    pub fn availability(&self) -> f64 {
        if self.sent == 0 {
            100.0
        } else {
            100.0 * self.acked as f64 / self.sent as f64
        }
    }

    /// Outcomes of this kind, in percent of sent.
    pub fn percent(&self, kind: &str) -> f64 {
        if self.sent == 0 {
            0.0
        } else {
            100.0 * self.by_kind.get(kind).copied().unwrap_or(0) as f64 / self.sent as f64
        }
    }
}

impl std::fmt::Display for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests, {} answered 200 ({:.2} %), outcomes {:?}, longest gap without a 200 {:.2} s (ending at +{:.1} s)",
            self.sent,
            self.acked,
            self.availability(),
            self.by_kind,
            self.longest_gap,
            self.longest_gap_ends_at
        )
    }
}

impl Record {
    /// Figures of the events of the targets `pick` selects, between `from` and `to`
    /// seconds.
    pub fn window(&self, pick: impl Fn(&Target) -> bool, from: f64, to: f64) -> Window {
        self.window_of(|e| e.at >= from && pick(&self.targets[e.target]), from, to)
    }

    /// Figures of the requests *sent* at `from` or later and answered by `to`: what was
    /// asked of the cluster after some moment (answers to earlier requests excluded).
    pub fn sent_within(&self, from: f64, to: f64) -> Window {
        self.window_of(|e| e.sent >= from, from, to)
    }

    fn window_of(&self, keep: impl Fn(&Event) -> bool, from: f64, to: f64) -> Window {
        let mut w = Window::default();
        let mut last_ack = from;
        for e in &self.events {
            if e.at > to || !keep(e) {
                continue;
            }
            w.sent += 1;
            *w.by_kind.entry(e.outcome.kind()).or_default() += 1;
            if let Outcome::Acked(_) = e.outcome {
                w.acked += 1;
                if e.at - last_ack > w.longest_gap {
                    w.longest_gap = e.at - last_ack;
                    w.longest_gap_ends_at = e.at;
                }
                last_ack = e.at;
            }
        }
        if to - last_ack > w.longest_gap {
            w.longest_gap = to - last_ack;
            w.longest_gap_ends_at = to;
        }
        w
    }

    /// Figures of every event of every target.
    pub fn all(&self) -> Window {
        self.window(|_| true, 0.0, self.ended_at)
    }

    /// Figures of one target (by label) over the whole load.
    pub fn of(&self, label: &str) -> Window {
        self.window(|t| t.label == label, 0.0, self.ended_at)
    }

    /// Per counter: acknowledged, unknown, refused, and the resets the client saw (a 200
    /// whose value is not above the previous 200's) with their times.
    pub fn per_counter(&self) -> Vec<CounterFacts> {
        let mut out: Vec<CounterFacts> = self
            .counters
            .iter()
            .map(|id| CounterFacts {
                id: id.clone(),
                ..CounterFacts::default()
            })
            .collect();
        for e in &self.events {
            let c = &mut out[e.counter];
            c.sent += 1;
            match e.outcome {
                Outcome::Acked(v) => {
                    c.acked += 1;
                    if c.last_value.is_some_and(|last| v <= last) {
                        c.resets.push(e.at);
                    }
                    c.last_value = Some(v);
                }
                Outcome::Refused(_) => c.refused += 1,
                Outcome::Unknown(_) => c.unknown += 1,
            }
        }
        out
    }
}

/// What one counter saw.
#[derive(Debug, Clone, Default)]
pub struct CounterFacts {
    /// The counter's id.
    pub id: String,
    /// Increments sent.
    pub sent: u64,
    /// Answered 200.
    pub acked: u64,
    /// Maybe applied.
    pub unknown: u64,
    /// Surely not applied.
    pub refused: u64,
    /// The value of the last 200.
    pub last_value: Option<i64>,
    /// Times (seconds since the load started) of the resets the client saw.
    pub resets: Vec<f64>,
}

/// One counter at the end: what the client knows and what the cluster counted.
#[derive(Debug, Clone)]
pub struct Reckoned {
    /// What the client saw.
    pub facts: CounterFacts,
    /// The value read at the end.
    pub value: i64,
}

impl Reckoned {
    /// Fewer counted than acknowledged: acknowledged increments were lost.
    pub fn lost(&self) -> bool {
        self.value < i64::try_from(self.facts.acked).unwrap_or(i64::MAX)
    }

    /// More counted than acknowledged plus maybe-applied: something was counted twice, or
    /// a refused increment was applied.
    pub fn over(&self) -> bool {
        self.value > i64::try_from(self.facts.acked + self.facts.unknown).unwrap_or(i64::MAX)
    }

    /// Counted exactly the acknowledged increments.
    pub fn exact(&self) -> bool {
        self.value == i64::try_from(self.facts.acked).unwrap_or(i64::MAX)
    }
}

/// The end of a load: every counter read back.
#[derive(Debug, Clone)]
pub struct Reckoning {
    /// Per counter.
    pub counters: Vec<Reckoned>,
}

impl Reckoning {
    /// Nothing acknowledged lost, nothing counted beyond acknowledged + maybe-applied, and
    /// something acknowledged at all.
    pub fn ensure_exact(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.lost().is_empty(),
            "acknowledged increments lost on {} counters: {}",
            self.lost().len(),
            self.describe(Reckoned::lost)
        );
        anyhow::ensure!(
            self.over().is_empty(),
            "counters above acknowledged + maybe-applied (counted twice, or a refused increment applied) on {}: {}",
            self.over().len(),
            self.describe(Reckoned::over)
        );
        anyhow::ensure!(self.acked() > 0, "no increment was acknowledged at all");
        Ok(())
    }

    /// The counters that lost acknowledged increments.
    pub fn lost(&self) -> Vec<&Reckoned> {
        self.counters.iter().filter(|c| c.lost()).collect()
    }

    /// The counters above acknowledged plus maybe-applied.
    pub fn over(&self) -> Vec<&Reckoned> {
        self.counters.iter().filter(|c| c.over()).collect()
    }

    /// Total acknowledged increments.
    pub fn acked(&self) -> u64 {
        self.counters.iter().map(|c| c.facts.acked).sum()
    }

    /// Total maybe-applied increments.
    pub fn unknown(&self) -> u64 {
        self.counters.iter().map(|c| c.facts.unknown).sum()
    }

    /// Total counted.
    pub fn counted(&self) -> i64 {
        self.counters.iter().map(|c| c.value).sum()
    }

    /// Resets the client saw, over all counters.
    pub fn resets(&self) -> usize {
        self.counters.iter().map(|c| c.facts.resets.len()).sum()
    }

    /// One line: acknowledged vs counted, exact / lost / over counters.
    pub fn summary(&self) -> String {
        let exact = self.counters.iter().filter(|c| c.exact()).count();
        let lost = self.lost();
        let lost_increments: i64 = lost
            .iter()
            .map(|c| i64::try_from(c.facts.acked).unwrap_or(i64::MAX) - c.value)
            .sum();
        format!(
            "{} counters: acknowledged {} vs counted {} (maybe-applied {}); exact {} of {}; lost increments on {} counters ({} increments); above acknowledged+maybe on {}; resets seen by the client {}",
            self.counters.len(),
            self.acked(),
            self.counted(),
            self.unknown(),
            exact,
            self.counters.len(),
            lost.len(),
            lost_increments,
            self.over().len(),
            self.resets()
        )
    }

    /// Describes the first few counters `pick` selects, for a failure message.
    pub fn describe(&self, pick: impl Fn(&Reckoned) -> bool) -> String {
        self.counters
            .iter()
            .filter(|c| pick(c))
            .take(12)
            .map(|c| {
                format!(
                    "{}: acked {} unknown {} refused {} counted {} resets at {:?}",
                    c.facts.id,
                    c.facts.acked,
                    c.facts.unknown,
                    c.facts.refused,
                    c.value,
                    c.facts.resets
                )
            })
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// Reads every counter of `record` through `addr` (a Service's ClusterIP that serves) and
/// compares. Each read is retried for up to 30 s while the answer is not 200.
pub async fn reckon(addr: &str, record: &Record) -> anyhow::Result<Reckoning> {
    let mut counters = Vec::new();
    for facts in record.per_counter() {
        let value = read_counter(addr, &facts.id).await?;
        counters.push(Reckoned { facts, value });
    }
    Ok(Reckoning { counters })
}

/// The value of counter `id`, read through `addr`; retried while not answered 200 (30 s).
pub async fn read_counter(addr: &str, id: &str) -> anyhow::Result<i64> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let path = format!("/actors/counter/{id}/ask/get");
    loop {
        let last = match crate::http::request("POST", addr, &path, None).await {
            Ok(r) if r.status == 200 => {
                let v: Value = serde_json::from_str(&r.body)
                    .with_context(|| format!("get {id} answered {}", r.body))?;
                return v
                    .get("value")
                    .and_then(Value::as_i64)
                    .with_context(|| format!("get {id} answered {}", r.body));
            }
            Ok(r) => format!("answered {}: {}", r.status, r.body.trim()),
            Err(e) => format!("{e:#}"),
        };
        anyhow::ensure!(
            Instant::now() < deadline,
            "reading counter {id} through {addr}: not answered 200 within 30 s (last: {last})"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends one increment of counter `id` to `addr` and classifies the outcome.
pub async fn increment(addr: &str, id: &str) -> Outcome {
    let stream =
        match tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr))
            .await
        {
            Ok(Ok(s)) => s,
            // Not connected: the request never left.
            _ => return Outcome::Refused(0),
        };
    let path = format!("/actors/counter/{id}/ask/add");
    match tokio::time::timeout(Duration::from_secs(8), send(stream, addr, &path)).await {
        Ok(Ok((status, body))) => classify(status, &body),
        _ => Outcome::Unknown(0),
    }
}

async fn send(
    stream: tokio::net::TcpStream,
    addr: &str,
    path: &str,
) -> anyhow::Result<(u16, String)> {
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = Request::builder()
        .method("POST")
        .uri(path)
        .header("host", addr)
        .header("content-type", "application/json")
        .header("connection", "close")
        .body(Full::new(Bytes::from_static(br#"{"by":1}"#)))?;
    let resp = sender.send_request(req).await?;
    let status = resp.status().as_u16();
    let bytes = resp.into_body().collect().await?.to_bytes();
    Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
}

/// Classifies an answer (see the module docs).
pub fn classify(status: u16, body: &str) -> Outcome {
    match status {
        200 => serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v.get("value").and_then(Value::as_i64))
            .map_or(Outcome::Unknown(200), Outcome::Acked),
        400 | 404 | 413 | 429 => Outcome::Refused(status),
        503 if body.contains("not accepting") => Outcome::Refused(503),
        _ => Outcome::Unknown(status),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(events: &[(f64, usize, Outcome)]) -> Record {
        Record {
            targets: vec![Target::new("a", "x:1"), Target::new("b", "y:1")],
            counters: vec!["c0".into(), "c1".into()],
            events: events
                .iter()
                .map(|&(at, counter, outcome)| Event {
                    sent: at,
                    at,
                    target: counter,
                    counter,
                    outcome,
                })
                .collect(),
            ended_at: 10.0,
        }
    }

    #[test]
    fn answers_are_classified_by_what_they_say_about_the_increment() {
        assert_eq!(classify(200, r#"{"value":7}"#), Outcome::Acked(7));
        assert_eq!(classify(200, "garbage"), Outcome::Unknown(200));
        assert_eq!(
            classify(503, r#"{"error":"node is not accepting work"}"#),
            Outcome::Refused(503)
        );
        assert_eq!(
            classify(503, r#"{"error":"actor unavailable: x"}"#),
            Outcome::Unknown(503)
        );
        assert_eq!(classify(504, ""), Outcome::Unknown(504));
        assert_eq!(classify(429, ""), Outcome::Refused(429));
    }

    #[test]
    fn sent_within_leaves_out_answers_to_requests_sent_before() {
        let mut r = record(&[
            (3.0, 0, Outcome::Refused(503)),
            (4.0, 1, Outcome::Refused(503)),
        ]);
        // Sent at 1.0, before the moment, answered 200 late at 2.5: not counted.
        r.events.push(Event {
            sent: 1.0,
            at: 2.5,
            target: 0,
            counter: 0,
            outcome: Outcome::Acked(7),
        });
        let w = r.sent_within(2.0, 5.0);
        assert_eq!((w.sent, w.acked), (2, 0), "{w}");
        assert_eq!(r.window(|_| true, 2.0, 5.0).acked, 1);
    }

    #[test]
    fn windows_count_outcomes_and_the_longest_gap_including_the_edges() {
        let r = record(&[
            (1.0, 0, Outcome::Acked(1)),
            (2.0, 0, Outcome::Refused(503)),
            (5.0, 0, Outcome::Acked(2)),
            (6.0, 1, Outcome::Unknown(0)),
        ]);
        let a = r.of("a");
        assert_eq!((a.sent, a.acked), (3, 2));
        // 5.0 -> 10.0 (the end) is the longest stretch without a 200 for target a.
        assert!((a.longest_gap - 5.0).abs() < 1e-9, "{a}");
        let all = r.window(|_| true, 2.0, 6.0);
        assert_eq!(all.sent, 3);
        assert_eq!(all.by_kind.get("no-answer"), Some(&1));
        assert!((all.longest_gap - 3.0).abs() < 1e-9, "{all}");
        assert!((r.of("b").availability() - 0.0).abs() < 1e-9);
    }

    #[test]
    fn a_reply_not_above_the_previous_one_is_a_reset() {
        let r = record(&[
            (1.0, 0, Outcome::Acked(1)),
            (2.0, 0, Outcome::Acked(2)),
            (3.0, 0, Outcome::Acked(1)),
            (4.0, 0, Outcome::Unknown(0)),
            (5.0, 0, Outcome::Acked(3)),
        ]);
        let c = &r.per_counter()[0];
        assert_eq!((c.sent, c.acked, c.unknown), (5, 4, 1));
        assert_eq!(c.resets, vec![3.0]);
    }

    #[test]
    fn the_reckoning_tells_lost_exact_and_over() {
        let facts = |acked, unknown| CounterFacts {
            acked,
            unknown,
            ..CounterFacts::default()
        };
        let c = |acked, unknown, value| Reckoned {
            facts: facts(acked, unknown),
            value,
        };
        assert!(c(5, 0, 5).exact() && !c(5, 0, 5).lost() && !c(5, 0, 5).over());
        assert!(c(5, 0, 4).lost());
        assert!(!c(5, 2, 7).over() && c(5, 2, 8).over());
        let r = Reckoning {
            counters: vec![c(5, 0, 5), c(5, 1, 3)],
        };
        assert_eq!((r.acked(), r.counted(), r.unknown()), (10, 8, 1));
        assert_eq!(r.lost().len(), 1);
    }
}
