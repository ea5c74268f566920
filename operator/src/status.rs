//! The status of an `ActorCluster`, computed from what was observed: a pure function of the
//! spec, the node Deployment, the member table and the outcome of this reconcile.
//!
//! ```text
//!  spec ───────────┐
//!  Deployment ─────┤
//!  member table ───┼──► compute ──► ActorClusterStatus ──(differs from stored?)──► patch
//!  problem ────────┤                     ▲
//!  previous status ┘ (keeps lastTransitionTime of unchanged conditions)
//! ```
//!
//! Conditions (all with a reason):
//!
//! | type | True when | reasons |
//! |---|---|---|
//! | Ready | every requested node pod is Ready | AllReplicasReady, ScaledToZero / ReplicasNotReady, Creating, InvalidSpec |
//! | Progressing | a rollout or scale is under way | Creating, RollingOut / RolloutComplete |
//! | Degraded | something needs a human | InvalidSpec, ApplyFailed, ProgressDeadlineExceeded, ReplicaFailure, StateStoreUnreachable / AsExpected |
//! | ScalingLimited | (autoscaling only) replicas at a bound | AtMaxReplicas, AtMinReplicas / WithinLimits |

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use troupe_contract::{MemberStatus, MemberTable, MemberTableError, coordination, labels};

use crate::build::deployment::desired_replicas;
use crate::crd::{ActorClusterSpec, ActorClusterStatus, MemberSummary};

/// What went wrong in this reconcile, if anything; shown as Degraded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Problem {
    /// The spec cannot be built (the message names the field).
    InvalidSpec(String),
    /// Applying a child failed.
    ApplyFailed(String),
}

/// Everything the status is computed from.
#[derive(Debug, Clone, Copy)]
pub struct Observed<'a> {
    /// The ActorCluster's name.
    pub name: &'a str,
    /// Its `metadata.generation`.
    pub generation: Option<i64>,
    /// Its spec.
    pub spec: &'a ActorClusterSpec,
    /// The node Deployment, if it exists.
    pub deployment: Option<&'a Deployment>,
    /// The member table the nodes publish (empty when absent or unreadable).
    pub members: &'a MemberTable,
    /// What went wrong in this reconcile.
    pub problem: Option<&'a Problem>,
    /// Node pods that report they cannot use the durable state store (`spec.state.store:
    /// postgres`), out of those that reported; `None` when unknown or in memory mode.
    pub store: Option<&'a StoreHealth>,
}

/// What the node pods say about their durable state store.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoreHealth {
    /// Pods that reported recently.
    pub reporting: usize,
    /// Those that cannot use the store, sorted.
    pub down: Vec<String>,
}

/// Reads the member table from the cluster's Lease. An absent Lease or annotation is an
/// empty table (the cluster has not formed yet); a malformed one is an error for the caller
/// to log, never a reason to fail the reconcile.
pub fn members_from_lease(lease: Option<&Lease>) -> Result<MemberTable, MemberTableError> {
    let annotation = lease
        .and_then(|l| l.metadata.annotations.as_ref())
        .and_then(|a| a.get(coordination::MEMBER_TABLE_ANNOTATION));
    match annotation {
        Some(json) => MemberTable::from_json(json),
        None => Ok(MemberTable::default()),
    }
}

/// The ActorCluster a member-table Lease belongs to (`<cluster>-members` → `<cluster>`).
pub fn cluster_of_lease(lease_name: &str) -> Option<&str> {
    let cluster = lease_name.strip_suffix("-members")?;
    (!cluster.is_empty() && coordination::lease_name(cluster) == lease_name).then_some(cluster)
}

/// Computes the status. `now` stamps conditions whose status changed.
pub fn compute(
    observed: &Observed<'_>,
    previous: Option<&ActorClusterStatus>,
    now: &Time,
) -> ActorClusterStatus {
    let desired = desired_replicas(observed.spec);
    let dep_status = observed.deployment.and_then(|d| d.status.as_ref());
    let replicas = dep_status.and_then(|s| s.replicas).unwrap_or(0);
    let ready = dep_status.and_then(|s| s.ready_replicas).unwrap_or(0);
    let up = observed.members.count(MemberStatus::Up);
    let up_members = i32::try_from(up).unwrap_or(i32::MAX);

    let mut conditions = vec![
        ready_condition(observed, ready, up),
        progressing_condition(observed),
        degraded_condition(observed),
    ];
    if let Some(a) = &observed.spec.autoscaling {
        conditions.push(if desired >= a.max_replicas {
            cond(
                "ScalingLimited",
                true,
                "AtMaxReplicas",
                format!(
                    "replicas are at spec.autoscaling.maxReplicas ({})",
                    a.max_replicas
                ),
            )
        } else if desired <= a.min_replicas {
            cond(
                "ScalingLimited",
                true,
                "AtMinReplicas",
                format!(
                    "replicas are at spec.autoscaling.minReplicas ({})",
                    a.min_replicas
                ),
            )
        } else {
            cond(
                "ScalingLimited",
                false,
                "WithinLimits",
                format!(
                    "replicas {desired} lie between {} and {}",
                    a.min_replicas, a.max_replicas
                ),
            )
        });
    }
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    for c in &mut conditions {
        c.observed_generation = observed.generation;
        c.last_transition_time = previous_conditions
            .iter()
            .find(|p| p.type_ == c.type_ && p.status == c.status)
            .map(|p| p.last_transition_time.clone())
            .unwrap_or_else(|| now.clone());
    }

    ActorClusterStatus {
        observed_generation: observed.generation,
        replicas,
        ready_replicas: ready,
        selector: labels::node_selector(observed.name),
        members: observed
            .members
            .members
            .iter()
            .map(|m| MemberSummary {
                pod: m.pod.clone(),
                status: m.status.to_string(),
            })
            .collect(),
        up_members,
        mailbox_depth: previous.and_then(|p| p.mailbox_depth),
        conditions,
    }
}

fn cond(type_: &str, status: bool, reason: &str, message: String) -> Condition {
    Condition {
        type_: type_.to_owned(),
        status: if status { "True" } else { "False" }.to_owned(),
        reason: reason.to_owned(),
        message,
        observed_generation: None,
        last_transition_time: Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    }
}

fn ready_condition(o: &Observed<'_>, ready: i32, up: usize) -> Condition {
    let desired = desired_replicas(o.spec);
    if let Some(Problem::InvalidSpec(m)) = o.problem {
        return cond("Ready", false, "InvalidSpec", m.clone());
    }
    if o.deployment.is_none() {
        return cond(
            "Ready",
            false,
            "Creating",
            "the node Deployment does not exist yet".into(),
        );
    }
    if desired == 0 {
        return cond(
            "Ready",
            true,
            "ScaledToZero",
            "no node pods are requested".into(),
        );
    }
    let message = format!("{ready} of {desired} node pods are ready, {up} members are up");
    if ready >= desired {
        cond("Ready", true, "AllReplicasReady", message)
    } else {
        cond("Ready", false, "ReplicasNotReady", message)
    }
}

fn progressing_condition(o: &Observed<'_>) -> Condition {
    let Some(d) = o.deployment else {
        return cond(
            "Progressing",
            true,
            "Creating",
            "creating the node Deployment".into(),
        );
    };
    let desired = desired_replicas(o.spec);
    let s = d.status.clone().unwrap_or_default();
    let seen = s.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0);
    let updated = s.updated_replicas.unwrap_or(0);
    let available = s.available_replicas.unwrap_or(0);
    let total = s.replicas.unwrap_or(0);
    let spec_replicas = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(desired);
    if seen
        && spec_replicas == desired
        && updated == desired
        && available == desired
        && total == desired
    {
        cond(
            "Progressing",
            false,
            "RolloutComplete",
            format!("{desired} node pods run the current template"),
        )
    } else {
        cond(
            "Progressing",
            true,
            "RollingOut",
            format!(
                "{updated} of {desired} node pods updated, {available} available, {total} in total"
            ),
        )
    }
}

fn degraded_condition(o: &Observed<'_>) -> Condition {
    match o.problem {
        Some(Problem::InvalidSpec(m)) => return cond("Degraded", true, "InvalidSpec", m.clone()),
        Some(Problem::ApplyFailed(m)) => return cond("Degraded", true, "ApplyFailed", m.clone()),
        None => {}
    }
    let dep_conditions = o
        .deployment
        .and_then(|d| d.status.as_ref())
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    for c in &dep_conditions {
        if c.type_ == "Progressing" && c.reason.as_deref() == Some("ProgressDeadlineExceeded") {
            return cond(
                "Degraded",
                true,
                "ProgressDeadlineExceeded",
                c.message
                    .clone()
                    .unwrap_or_else(|| "the node Deployment stopped progressing".into()),
            );
        }
        if c.type_ == "ReplicaFailure" && c.status == "True" {
            return cond(
                "Degraded",
                true,
                "ReplicaFailure",
                c.message
                    .clone()
                    .unwrap_or_else(|| "node pods cannot be created".into()),
            );
        }
    }
    if let Some(h) = o.store
        && !h.down.is_empty()
    {
        return cond(
            "Degraded",
            true,
            "StateStoreUnreachable",
            format!(
                "{} of {} node pods cannot use the PostgreSQL state store named by spec.state.postgres ({}); their actors answer 503 until it is back. The node logs say why (wrong credentials, database unreachable).",
                h.down.len(),
                h.reporting,
                h.down.join(", ")
            ),
        );
    }
    cond(
        "Degraded",
        false,
        "AsExpected",
        "nothing needs attention".into(),
    )
}

/// The condition of `type_` in `status`, if any.
pub fn condition<'a>(status: &'a ActorClusterStatus, type_: &str) -> Option<&'a Condition> {
    status.conditions.iter().find(|c| c.type_ == type_)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::AutoscalingSpec;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentSpec, DeploymentStatus};
    use std::collections::BTreeMap;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).expect("timestamp"))
    }

    fn deployment(desired: i32, ready: i32, updated: i32) -> Deployment {
        let mut d = Deployment {
            spec: Some(DeploymentSpec {
                replicas: Some(desired),
                ..Default::default()
            }),
            status: Some(DeploymentStatus {
                observed_generation: Some(1),
                replicas: Some(desired.max(updated)),
                ready_replicas: Some(ready),
                available_replicas: Some(ready),
                updated_replicas: Some(updated),
                ..Default::default()
            }),
            ..Default::default()
        };
        d.metadata.generation = Some(1);
        d
    }

    fn spec(replicas: i32) -> ActorClusterSpec {
        ActorClusterSpec {
            replicas,
            ..Default::default()
        }
    }

    fn observe<'a>(
        spec: &'a ActorClusterSpec,
        d: Option<&'a Deployment>,
        members: &'a MemberTable,
        problem: Option<&'a Problem>,
    ) -> Observed<'a> {
        Observed {
            name: "orders",
            generation: Some(4),
            spec,
            deployment: d,
            members,
            problem,
            store: None,
        }
    }

    fn status_of(s: &ActorClusterStatus, type_: &str) -> (String, String) {
        let c = condition(s, type_).expect(type_);
        (c.status.clone(), c.reason.clone())
    }

    /// Asserts each `(condition, status, reason)` of `expected`.
    fn assert_conditions(s: &ActorClusterStatus, expected: &[(&str, &str, &str)]) {
        for (type_, status, reason) in expected {
            assert_eq!(
                status_of(s, type_),
                ((*status).to_owned(), (*reason).to_owned()),
                "condition {type_}"
            );
        }
    }

    #[test]
    fn all_ready_is_ready_and_not_progressing() {
        let sp = spec(3);
        let d = deployment(3, 3, 3);
        let mut members = MemberTable::default();
        for p in ["a", "b", "c"] {
            members.join(p, "i", "10.0.0.1");
            members
                .transition(p, "i", MemberStatus::Up)
                .expect("promote");
        }
        let s = compute(&observe(&sp, Some(&d), &members, None), None, &t(100));
        assert_eq!(s.observed_generation, Some(4));
        assert_eq!((s.replicas, s.ready_replicas, s.up_members), (3, 3, 3));
        assert_eq!(s.members.len(), 3);
        assert_eq!(s.members[0].status, "Up");
        assert_eq!(
            s.selector,
            "app.kubernetes.io/name=troupe-node,app.kubernetes.io/instance=orders"
        );
        assert_conditions(
            &s,
            &[
                ("Ready", "True", "AllReplicasReady"),
                ("Progressing", "False", "RolloutComplete"),
                ("Degraded", "False", "AsExpected"),
            ],
        );
        assert!(condition(&s, "ScalingLimited").is_none());
        assert!(
            s.conditions
                .iter()
                .all(|c| c.observed_generation == Some(4))
        );
    }

    #[test]
    fn rollout_in_flight_is_progressing_and_not_ready() {
        let sp = spec(3);
        let d = deployment(3, 1, 1);
        let m = MemberTable::default();
        let s = compute(&observe(&sp, Some(&d), &m, None), None, &t(1));
        assert_eq!(
            status_of(&s, "Ready"),
            ("False".into(), "ReplicasNotReady".into())
        );
        assert_eq!(
            status_of(&s, "Progressing"),
            ("True".into(), "RollingOut".into())
        );
    }

    #[test]
    fn no_deployment_yet_is_creating() {
        let sp = spec(3);
        let m = MemberTable::default();
        let s = compute(&observe(&sp, None, &m, None), None, &t(1));
        assert_eq!(status_of(&s, "Ready"), ("False".into(), "Creating".into()));
        assert_eq!(
            status_of(&s, "Progressing"),
            ("True".into(), "Creating".into())
        );
        assert_eq!((s.replicas, s.ready_replicas), (0, 0));
    }

    #[test]
    fn scaled_to_zero_is_ready() {
        let sp = spec(0);
        let d = deployment(0, 0, 0);
        let m = MemberTable::default();
        let s = compute(&observe(&sp, Some(&d), &m, None), None, &t(1));
        assert_eq!(
            status_of(&s, "Ready"),
            ("True".into(), "ScaledToZero".into())
        );
    }

    #[test]
    fn problems_are_degraded_with_their_reason() {
        let sp = spec(3);
        let m = MemberTable::default();
        let invalid = Problem::InvalidSpec("spec.mailbox.capacity must be > 0".into());
        let s = compute(&observe(&sp, None, &m, Some(&invalid)), None, &t(1));
        assert_eq!(
            status_of(&s, "Degraded"),
            ("True".into(), "InvalidSpec".into())
        );
        assert_eq!(
            status_of(&s, "Ready"),
            ("False".into(), "InvalidSpec".into())
        );
        assert!(
            condition(&s, "Degraded")
                .expect("degraded")
                .message
                .contains("spec.mailbox.capacity")
        );
        let failed = Problem::ApplyFailed("forbidden".into());
        let s = compute(&observe(&sp, None, &m, Some(&failed)), None, &t(1));
        assert_eq!(
            status_of(&s, "Degraded"),
            ("True".into(), "ApplyFailed".into())
        );
    }

    #[test]
    fn pods_that_cannot_use_the_state_store_make_it_degraded() {
        let sp = spec(3);
        let m = MemberTable::default();
        let d = deployment(3, 3, 3);
        let degraded = |h: StoreHealth| {
            let mut o = observe(&sp, Some(&d), &m, None);
            o.store = Some(&h);
            let s = compute(&o, None, &t(1));
            (
                status_of(&s, "Degraded"),
                condition(&s, "Degraded").map(|c| c.message.clone()),
            )
        };
        let (st, msg) = degraded(StoreHealth {
            reporting: 3,
            down: vec!["orders-1".into()],
        });
        assert_eq!(st, ("True".into(), "StateStoreUnreachable".into()));
        assert!(msg.unwrap_or_default().contains("1 of 3 node pods"));
        let (st, _) = degraded(StoreHealth {
            reporting: 3,
            down: vec![],
        });
        assert_eq!(st, ("False".into(), "AsExpected".into()));
    }

    #[test]
    fn stuck_and_failing_deployments_are_degraded() {
        let sp = spec(3);
        let m = MemberTable::default();
        let mut d = deployment(3, 0, 3);
        if let Some(s) = d.status.as_mut() {
            s.conditions = Some(vec![DeploymentCondition {
                type_: "ReplicaFailure".into(),
                status: "True".into(),
                reason: Some("FailedCreate".into()),
                message: Some("exceeded quota".into()),
                ..Default::default()
            }]);
        }
        let s = compute(&observe(&sp, Some(&d), &m, None), None, &t(1));
        assert_eq!(
            status_of(&s, "Degraded"),
            ("True".into(), "ReplicaFailure".into())
        );
        if let Some(s) = d.status.as_mut() {
            s.conditions = Some(vec![DeploymentCondition {
                type_: "Progressing".into(),
                status: "False".into(),
                reason: Some("ProgressDeadlineExceeded".into()),
                ..Default::default()
            }]);
        }
        let s = compute(&observe(&sp, Some(&d), &m, None), None, &t(1));
        assert_eq!(
            status_of(&s, "Degraded"),
            ("True".into(), "ProgressDeadlineExceeded".into())
        );
    }

    #[test]
    fn transition_time_moves_only_when_the_status_flips() {
        let sp = spec(3);
        let m = MemberTable::default();
        let ready = deployment(3, 3, 3);
        let first = compute(&observe(&sp, Some(&ready), &m, None), None, &t(10));
        let again = compute(&observe(&sp, Some(&ready), &m, None), Some(&first), &t(20));
        assert_eq!(first, again, "a converged status is recomputed identically");
        let not_ready = deployment(3, 2, 3);
        let flipped = compute(
            &observe(&sp, Some(&not_ready), &m, None),
            Some(&again),
            &t(30),
        );
        let c = condition(&flipped, "Ready").expect("ready");
        assert_eq!(c.last_transition_time, t(30));
        let d = condition(&flipped, "Degraded").expect("degraded");
        assert_eq!(d.last_transition_time, t(10));
    }

    #[test]
    fn scaling_limits_show_with_autoscaling() {
        let mut sp = spec(10);
        sp.autoscaling = Some(AutoscalingSpec {
            min_replicas: 2,
            max_replicas: 10,
            target_mailbox_depth: 5,
            behavior: None,
        });
        let m = MemberTable::default();
        let s = compute(&observe(&sp, None, &m, None), None, &t(1));
        assert_eq!(
            status_of(&s, "ScalingLimited"),
            ("True".into(), "AtMaxReplicas".into())
        );
        sp.replicas = 2;
        let s = compute(&observe(&sp, None, &m, None), None, &t(1));
        assert_eq!(
            status_of(&s, "ScalingLimited"),
            ("True".into(), "AtMinReplicas".into())
        );
        sp.replicas = 5;
        let s = compute(&observe(&sp, None, &m, None), None, &t(1));
        assert_eq!(
            status_of(&s, "ScalingLimited"),
            ("False".into(), "WithinLimits".into())
        );
    }

    #[test]
    fn autoscaled_status_follows_the_clamped_replicas() {
        // The default spec.replicas (1) below minReplicas: the Deployment asks for 5.
        let mut sp = spec(1);
        sp.autoscaling = Some(AutoscalingSpec {
            min_replicas: 5,
            max_replicas: 10,
            target_mailbox_depth: 5,
            behavior: None,
        });
        let d = deployment(5, 5, 5);
        let m = MemberTable::default();
        let s = compute(&observe(&sp, Some(&d), &m, None), None, &t(1));
        assert_conditions(
            &s,
            &[
                ("Ready", "True", "AllReplicasReady"),
                ("Progressing", "False", "RolloutComplete"),
                ("ScalingLimited", "True", "AtMinReplicas"),
            ],
        );
        // Above maxReplicas: 10 pods are all that is asked for.
        sp.replicas = 50;
        let d = deployment(10, 10, 10);
        let s = compute(&observe(&sp, Some(&d), &m, None), None, &t(1));
        assert_eq!(
            status_of(&s, "Progressing"),
            ("False".into(), "RolloutComplete".into())
        );
        assert_eq!(
            status_of(&s, "ScalingLimited"),
            ("True".into(), "AtMaxReplicas".into())
        );
    }

    fn lease(annotation: Option<&str>) -> Lease {
        let mut l = Lease::default();
        l.metadata.name = Some("orders-members".into());
        l.metadata.annotations = annotation.map(|a| {
            BTreeMap::from([(
                coordination::MEMBER_TABLE_ANNOTATION.to_owned(),
                a.to_owned(),
            )])
        });
        l
    }

    #[test]
    fn member_table_is_read_from_the_lease_annotation() {
        let mut table = MemberTable::default();
        table.join("orders-0", "i0", "10.0.0.1");
        let l = lease(Some(&table.to_json()));
        assert_eq!(members_from_lease(Some(&l)), Ok(table));
    }

    #[test]
    fn absent_lease_or_annotation_is_an_empty_table_and_garbage_an_error() {
        assert_eq!(members_from_lease(None), Ok(MemberTable::default()));
        assert_eq!(
            members_from_lease(Some(&lease(None))),
            Ok(MemberTable::default())
        );
        assert!(members_from_lease(Some(&lease(Some("{not json")))).is_err());
    }

    #[test]
    fn lease_names_map_back_to_clusters() {
        assert_eq!(cluster_of_lease("orders-members"), Some("orders"));
        assert_eq!(cluster_of_lease("a-b-members"), Some("a-b"));
        assert_eq!(cluster_of_lease("-members"), None);
        assert_eq!(cluster_of_lease("troupe-operator-leader"), None);
    }
}
