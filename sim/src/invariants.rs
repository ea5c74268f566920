//! The invariants of membership, as pure functions of what the nodes show and what the
//! store held. [`crate::world`] evaluates them after every step; the reasoning behind each
//! is in the crate docs of [`crate::world`].

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use troupe_contract::{MemberStatus, MemberTable};
use troupe_node::MembershipView;

use crate::store::{Incarnation, short};

/// A broken invariant: which, and what broke it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Broken {
    /// The invariant's name.
    pub invariant: &'static str,
    /// The nodes involved.
    pub what: String,
}

fn broken(invariant: &'static str, what: String) -> Option<Broken> {
    Some(Broken { invariant, what })
}

/// Invariant 1: at most one `(cluster, epoch)` serves.
pub const ONE_EPOCH: &str = "1: at most one (cluster, epoch) serves";
/// Invariant 2a: a serving node is Up in its own table.
pub const SERVING_IS_UP: &str = "2: serving means admitted (Up in its own table)";
/// Invariant 2b: no serving incarnation was downed or removed by the store `W` before.
pub const SERVING_NOT_EVICTED: &str =
    "2: serving means admitted (not downed/removed in the store W ago)";
/// Invariant 3: liveness after healing.
pub const LIVENESS: &str = "3: liveness (every live node serving, Up, in the store's cluster)";

/// Invariants 1 and 2 at one instant. `views` are the live nodes' views by pod, `now` the
/// instant (for `serving_at`), `sim_now` the simulated time, `w` the grace
/// (`isolation_timeout + probe_interval`), `evicted_at` when the store first downed or
/// removed an incarnation.
pub fn safety(
    views: &[(&str, &MembershipView)],
    now: Instant,
    sim_now: Duration,
    w: Duration,
    evicted_at: impl Fn(&Incarnation) -> Option<Duration>,
) -> Option<Broken> {
    let mut epochs: BTreeMap<(&str, u64), Vec<&str>> = BTreeMap::new();
    for (pod, v) in views {
        if !v.serving_at(now) {
            continue;
        }
        let up_in_own = v.status == Some(MemberStatus::Up)
            && v.table
                .members
                .iter()
                .any(|m| v.me.is(m) && m.status == MemberStatus::Up);
        if !up_in_own {
            return broken(
                SERVING_IS_UP,
                format!("{pod} serves but is not Up in its own table"),
            );
        }
        let key = (
            v.table.cluster.clone(),
            v.me.pod.clone(),
            v.me.incarnation.clone(),
        );
        if let Some(at) = evicted_at(&key)
            && sim_now >= at + w
        {
            return broken(
                SERVING_NOT_EVICTED,
                format!(
                    "{pod}/{} serves, but the store downed or removed it at {:.3}s (W = {} ms)",
                    short(&key.2),
                    at.as_secs_f64(),
                    w.as_millis()
                ),
            );
        }
        epochs
            .entry((v.table.cluster.as_str(), v.table.epoch))
            .or_default()
            .push(pod);
    }
    if epochs.len() > 1 {
        let list: Vec<String> = epochs
            .iter()
            .map(|((c, e), pods)| format!("cluster={} epoch={e}: {}", short(c), pods.join(",")))
            .collect();
        return broken(ONE_EPOCH, format!("serving at once: {}", list.join(" | ")));
    }
    None
}

/// Invariant 3, once everything healed and settled: every live node serves, is Up, and
/// follows the store's `(cluster, epoch)`, in whose table it is Up.
pub fn liveness(
    views: &[(&str, &MembershipView)],
    now: Instant,
    stored: Option<&MemberTable>,
) -> Option<Broken> {
    let Some(table) = stored else {
        return broken(LIVENESS, "the store holds no record".into());
    };
    let mut problems = Vec::new();
    for (pod, v) in views {
        if !v.serving_at(now) {
            problems.push(format!("{pod} is not serving"));
        }
        if v.status != Some(MemberStatus::Up) {
            problems.push(format!("{pod} is {:?} in its table", v.status));
        }
        if (v.table.cluster.as_str(), v.table.epoch) != (table.cluster.as_str(), table.epoch) {
            problems.push(format!(
                "{pod} follows another cluster/epoch than the store"
            ));
        }
        if !table
            .members
            .iter()
            .any(|m| v.me.is(m) && m.status == MemberStatus::Up)
        {
            problems.push(format!("{pod} is not Up in the store's table"));
        }
    }
    if problems.is_empty() {
        None
    } else {
        broken(LIVENESS, problems.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use troupe_node::MemberKey;

    const W: Duration = Duration::from_millis(2_500);

    fn table(cluster: &str, epoch: u64, up: &[&str]) -> MemberTable {
        let mut t = MemberTable {
            cluster: cluster.into(),
            epoch,
            ..MemberTable::default()
        };
        for p in up {
            t.join(p, "i", "addr");
            t.transition(p, "i", MemberStatus::Up).ok();
        }
        t
    }

    fn view(pod: &str, t: &MemberTable, serving_until: Option<Instant>) -> MembershipView {
        let mut v = MembershipView::starting(MemberKey::new(pod, "i"), 0);
        v.table = t.clone();
        v.status = t.members.iter().find(|m| m.pod == pod).map(|m| m.status);
        v.serving = serving_until.is_some();
        v.serving_until = serving_until;
        v
    }

    #[test]
    fn two_clusters_or_two_epochs_serving_at_once_break_invariant_1() {
        let now = Instant::now();
        let later = Some(now + Duration::from_secs(1));
        let c = table("c", 0, &["a", "b"]);
        let d = table("d", 0, &["b"]);
        let c1 = table("c", 1, &["a", "b"]);
        let (a, b) = (view("a", &c, later), view("b", &d, later));
        let found = safety(&[("a", &a), ("b", &b)], now, Duration::ZERO, W, |_| None);
        assert_eq!(found.map(|b| b.invariant), Some(ONE_EPOCH));
        let b1 = view("b", &c1, later);
        let found = safety(&[("a", &a), ("b", &b1)], now, Duration::ZERO, W, |_| None);
        assert_eq!(found.map(|b| b.invariant), Some(ONE_EPOCH));
        let same = view("b", &c, later);
        assert_eq!(
            safety(&[("a", &a), ("b", &same)], now, Duration::ZERO, W, |_| None),
            None
        );
        // A node whose readiness lapsed does not count.
        let lapsed = view("b", &d, Some(now - Duration::from_millis(1)));
        assert_eq!(
            safety(&[("a", &a), ("b", &lapsed)], now, Duration::ZERO, W, |_| {
                None
            }),
            None
        );
    }

    #[test]
    fn serving_while_not_up_or_long_after_eviction_breaks_invariant_2() {
        let now = Instant::now();
        let later = Some(now + Duration::from_secs(1));
        let mut joining = table("c", 0, &["b"]);
        joining.join("a", "i", "addr");
        let a = view("a", &joining, later);
        let found = safety(&[("a", &a)], now, Duration::ZERO, W, |_| None);
        assert_eq!(found.map(|b| b.invariant), Some(SERVING_IS_UP));

        let up = view("a", &table("c", 0, &["a", "b"]), later);
        let evicted = |k: &Incarnation| (k.1 == "a").then_some(Duration::from_secs(10));
        let at = |s: u64| Duration::from_millis(s);
        assert_eq!(safety(&[("a", &up)], now, at(12_499), W, evicted), None);
        let found = safety(&[("a", &up)], now, at(12_500), W, evicted);
        assert_eq!(found.map(|b| b.invariant), Some(SERVING_NOT_EVICTED));
    }

    #[test]
    fn liveness_wants_every_node_serving_up_in_the_stores_table() {
        let now = Instant::now();
        let later = Some(now + Duration::from_secs(1));
        let c = table("c", 0, &["a", "b"]);
        let (a, b) = (view("a", &c, later), view("b", &c, later));
        assert_eq!(liveness(&[("a", &a), ("b", &b)], now, Some(&c)), None);
        let idle = view("b", &c, None);
        assert!(liveness(&[("a", &a), ("b", &idle)], now, Some(&c)).is_some());
        let only_a = table("c", 0, &["a"]);
        assert!(liveness(&[("a", &a), ("b", &b)], now, Some(&only_a)).is_some());
        assert!(liveness(&[("a", &a)], now, None).is_some());
        assert!(liveness(&[("a", &a)], now, Some(&table("c", 1, &["a"]))).is_some());
    }
}
