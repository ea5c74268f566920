//! The in-memory mailbox-depth cache: which node pods exist (from the pod watch) and the
//! latest depth sample scraped from each (and whether each reaches its durable state
//! store, for the Degraded condition: [`DepthCache::store_report`]). Pure data; [`super::scrape`] fills it and
//! [`super::server`] and [`super::reporter`] read it.
//!
//! A pod without a sample, or whose sample is older than the caller's `max_age`, is simply
//! absent from every answer: it is never reported as 0 by guess (the HPA treats missing
//! pods conservatively, a made-up 0 would scale a busy cluster down).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, SystemTime};

use super::selector::Selector;

/// A node pod the scraper should read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    /// Namespace of the pod.
    pub namespace: String,
    /// Name of the pod.
    pub name: String,
    /// The pod's IP.
    pub ip: String,
    /// The ActorCluster the pod belongs to (its `app.kubernetes.io/instance` label).
    pub cluster: String,
    /// The pod's labels, for `labelSelector`.
    pub labels: BTreeMap<String, String>,
    /// The pod's current `controller.kubernetes.io/pod-deletion-cost`, if set.
    pub deletion_cost: Option<String>,
}

/// One depth reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DepthSample {
    /// Messages waiting on the node.
    pub value: f64,
    /// When it was read.
    pub at: SystemTime,
}

#[derive(Debug, Clone)]
struct Entry {
    target: PodTarget,
    sample: Option<DepthSample>,
    /// `troupe_state_store_up` of its last scrape, and when (absent in memory mode).
    store_up: Option<(bool, SystemTime)>,
}

/// What the node pods of one ActorCluster say about their state store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreReport {
    /// Pods that reported recently.
    pub reporting: usize,
    /// Those of them that cannot use the store, sorted.
    pub down: Vec<String>,
}

/// A pod and its fresh sample, as answered by [`DepthCache::query`].
#[derive(Debug, Clone, PartialEq)]
pub struct PodDepth {
    /// The pod.
    pub pod: PodTarget,
    /// Its latest sample.
    pub sample: DepthSample,
}

/// Node pods and their latest depth, keyed by (namespace, name).
#[derive(Debug, Clone, Default)]
pub struct DepthCache {
    pods: HashMap<(String, String), Entry>,
}

impl DepthCache {
    /// Replaces the set of pods; samples of pods that remain (same IP) are kept, pods that
    /// are gone are forgotten.
    pub fn set_pods(&mut self, targets: Vec<PodTarget>) {
        let mut next = HashMap::with_capacity(targets.len());
        for target in targets {
            let key = (target.namespace.clone(), target.name.clone());
            let sample = self
                .pods
                .get(&key)
                .filter(|e| e.target.ip == target.ip)
                .and_then(|e| e.sample);
            let store_up = self
                .pods
                .get(&key)
                .filter(|e| e.target.ip == target.ip)
                .and_then(|e| e.store_up);
            next.insert(
                key,
                Entry {
                    target,
                    sample,
                    store_up,
                },
            );
        }
        self.pods = next;
    }

    /// The pods to scrape.
    pub fn targets(&self) -> Vec<PodTarget> {
        self.pods.values().map(|e| e.target.clone()).collect()
    }

    /// Records a sample for a known pod (a pod that vanished meanwhile is ignored).
    pub fn record(&mut self, namespace: &str, name: &str, sample: DepthSample) {
        if let Some(e) = self.pods.get_mut(&(namespace.to_owned(), name.to_owned())) {
            e.sample = Some(sample);
        }
    }

    /// Records whether a known pod reaches its state store.
    pub fn record_store(&mut self, namespace: &str, name: &str, up: bool, at: SystemTime) {
        if let Some(e) = self.pods.get_mut(&(namespace.to_owned(), name.to_owned())) {
            e.store_up = Some((up, at));
        }
    }

    /// What the pods of `cluster` in `namespace` reported about their state store at most
    /// `max_age` ago.
    pub fn store_report(
        &self,
        namespace: &str,
        cluster: &str,
        now: SystemTime,
        max_age: Duration,
    ) -> StoreReport {
        let mut r = StoreReport::default();
        for e in self.pods.values() {
            if e.target.namespace != namespace || e.target.cluster != cluster {
                continue;
            }
            let Some((up, at)) = e.store_up else { continue };
            let sample = DepthSample { value: 0.0, at };
            if !fresh(&sample, now, max_age) {
                continue;
            }
            r.reporting += 1;
            if !up {
                r.down.push(e.target.name.clone());
            }
        }
        r.down.sort();
        r
    }

    /// Pods in `namespace` (only `name` when given) matching `selector` whose sample is at
    /// most `max_age` old at `now`, sorted by name.
    pub fn query(
        &self,
        namespace: &str,
        name: Option<&str>,
        selector: &Selector,
        now: SystemTime,
        max_age: Duration,
    ) -> Vec<PodDepth> {
        let mut out: Vec<PodDepth> = self
            .pods
            .values()
            .filter(|e| e.target.namespace == namespace)
            .filter(|e| name.is_none_or(|n| e.target.name == n))
            .filter(|e| selector.matches(&e.target.labels))
            .filter_map(|e| {
                let sample = e.sample.filter(|s| fresh(s, now, max_age))?;
                Some(PodDepth {
                    pod: e.target.clone(),
                    sample,
                })
            })
            .collect();
        out.sort_by(|a, b| a.pod.name.cmp(&b.pod.name));
        out
    }

    /// Every pod with a fresh sample, in all namespaces.
    pub fn fresh(&self, now: SystemTime, max_age: Duration) -> Vec<PodDepth> {
        self.pods
            .values()
            .filter_map(|e| {
                let sample = e.sample.filter(|s| fresh(s, now, max_age))?;
                Some(PodDepth {
                    pod: e.target.clone(),
                    sample,
                })
            })
            .collect()
    }

    /// The total depth of each ActorCluster, keyed by (namespace, cluster), over its pods
    /// with a fresh sample. Clusters none of whose pods has a fresh sample are absent.
    pub fn cluster_totals(
        &self,
        now: SystemTime,
        max_age: Duration,
    ) -> BTreeMap<(String, String), i64> {
        let mut totals = BTreeMap::new();
        for d in self.fresh(now, max_age) {
            // `as` saturates each sample; the sum saturates too (hostile pages).
            let total = totals
                .entry((d.pod.namespace.clone(), d.pod.cluster.clone()))
                .or_insert(0i64);
            *total = total.saturating_add(d.sample.value.max(0.0).round() as i64);
        }
        totals
    }
}

fn fresh(s: &DepthSample, now: SystemTime, max_age: Duration) -> bool {
    // A sample from the future (clock step) counts as fresh.
    now.duration_since(s.at).map_or(true, |age| age <= max_age)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn target(ns: &str, name: &str, cluster: &str) -> PodTarget {
        PodTarget {
            namespace: ns.into(),
            name: name.into(),
            ip: format!("10.0.0.{}", name.len()),
            cluster: cluster.into(),
            labels: troupe_contract::labels::node_selector_pairs(cluster)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v))
                .collect(),
            deletion_cost: None,
        }
    }

    fn at(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn the_store_report_counts_fresh_reports_of_the_clusters_pods() {
        let mut c = DepthCache::default();
        c.set_pods(vec![
            target("ns", "a", "orders"),
            target("ns", "b", "orders"),
            target("ns", "cc", "orders"),
            target("ns", "d", "other"),
        ]);
        c.record_store("ns", "a", true, at(100));
        c.record_store("ns", "b", false, at(100));
        c.record_store("ns", "cc", false, at(50));
        c.record_store("ns", "d", false, at(100));
        let r = c.store_report("ns", "orders", at(101), Duration::from_secs(10));
        assert_eq!(
            r,
            StoreReport {
                reporting: 2,
                down: vec!["b".into()]
            },
            "cc is stale, d is another cluster's"
        );
        // A pod replaced (new IP) starts without a report.
        let mut moved = target("ns", "b", "orders");
        moved.ip = "10.9.9.9".into();
        c.set_pods(vec![target("ns", "a", "orders"), moved]);
        assert_eq!(
            c.store_report("ns", "orders", at(101), Duration::from_secs(10))
                .reporting,
            1
        );
    }

    #[test]
    fn pods_without_a_fresh_sample_are_absent_never_zero() {
        let mut c = DepthCache::default();
        c.set_pods(vec![
            target("ns", "a", "orders"),
            target("ns", "b", "orders"),
            target("ns", "c", "orders"),
        ]);
        c.record(
            "ns",
            "a",
            DepthSample {
                value: 7.0,
                at: at(100),
            },
        );
        c.record(
            "ns",
            "b",
            DepthSample {
                value: 1.0,
                at: at(80),
            },
        );
        let all = Selector::default();
        let got = c.query("ns", None, &all, at(101), Duration::from_secs(10));
        assert_eq!(got.len(), 1, "b is stale, c has no sample");
        assert_eq!(got[0].pod.name, "a");
        assert_eq!(got[0].sample.value, 7.0);
        assert!(
            c.query("ns", Some("c"), &all, at(101), Duration::from_secs(10))
                .is_empty()
        );
        assert!(
            c.query("other", None, &all, at(101), Duration::from_secs(10))
                .is_empty()
        );
    }

    #[test]
    fn selector_and_name_filter_and_gone_pods_are_forgotten() {
        let mut c = DepthCache::default();
        c.set_pods(vec![
            target("ns", "a", "orders"),
            target("ns", "b", "billing"),
        ]);
        c.record(
            "ns",
            "a",
            DepthSample {
                value: 2.0,
                at: at(1),
            },
        );
        c.record(
            "ns",
            "b",
            DepthSample {
                value: 3.0,
                at: at(1),
            },
        );
        let orders = Selector::parse(&troupe_contract::labels::node_selector("orders")).expect("s");
        let got = c.query("ns", None, &orders, at(1), Duration::from_secs(5));
        assert_eq!(
            got.iter().map(|d| d.pod.name.as_str()).collect::<Vec<_>>(),
            ["a"]
        );
        assert_eq!(
            c.query(
                "ns",
                Some("b"),
                &Selector::default(),
                at(1),
                Duration::from_secs(5)
            )
            .len(),
            1
        );

        c.set_pods(vec![target("ns", "b", "billing")]);
        c.record(
            "ns",
            "a",
            DepthSample {
                value: 9.0,
                at: at(2),
            },
        );
        assert_eq!(c.targets().len(), 1);
        let got = c.query(
            "ns",
            None,
            &Selector::default(),
            at(2),
            Duration::from_secs(5),
        );
        assert_eq!(got.len(), 1);
        assert_eq!(
            got[0].sample.value, 3.0,
            "b keeps its sample across set_pods"
        );
    }

    #[test]
    fn a_new_ip_drops_the_old_sample() {
        let mut c = DepthCache::default();
        let mut t = target("ns", "a", "orders");
        c.set_pods(vec![t.clone()]);
        c.record(
            "ns",
            "a",
            DepthSample {
                value: 2.0,
                at: at(1),
            },
        );
        t.ip = "10.9.9.9".into();
        c.set_pods(vec![t]);
        assert!(c.fresh(at(1), Duration::from_secs(5)).is_empty());
    }

    #[test]
    fn cluster_totals_saturate_on_hostile_samples() {
        let mut c = DepthCache::default();
        c.set_pods(vec![
            target("ns", "a", "orders"),
            target("ns", "bb", "orders"),
        ]);
        for pod in ["a", "bb"] {
            c.record(
                "ns",
                pod,
                DepthSample {
                    value: f64::MAX,
                    at: at(10),
                },
            );
        }
        let totals = c.cluster_totals(at(11), Duration::from_secs(5));
        assert_eq!(totals.get(&("ns".into(), "orders".into())), Some(&i64::MAX));
    }

    #[test]
    fn cluster_totals_sum_fresh_pods() {
        let mut c = DepthCache::default();
        c.set_pods(vec![
            target("ns", "a", "orders"),
            target("ns", "bb", "orders"),
            target("ns", "ccc", "billing"),
        ]);
        c.record(
            "ns",
            "a",
            DepthSample {
                value: 2.0,
                at: at(10),
            },
        );
        c.record(
            "ns",
            "bb",
            DepthSample {
                value: 5.0,
                at: at(10),
            },
        );
        let totals = c.cluster_totals(at(11), Duration::from_secs(5));
        assert_eq!(totals.get(&("ns".into(), "orders".into())), Some(&7));
        assert_eq!(totals.get(&("ns".into(), "billing".into())), None);
    }
}
