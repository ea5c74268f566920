//! The reconciler: the only module that reads from and writes to the API server on behalf
//! of an ActorCluster.
//!
//! ```text
//!  watches ──► reflector stores (children by label, member Leases by label; managedFields dropped)
//!     │                     │
//!     ▼                     ▼ (reads only)
//!  reconcile ─ validate ─ build ─ for each child: converged? ── yes ──► skip (no write)
//!                                     │ no
//!                                     ▼
//!                          server-side apply (field manager `troupe-operator`, force)
//!            └─ status::compute ── differs from stored? ──► apply /status ─► Events
//! ```
//!
//! **Zero writes on a converged resync.** A child is written only when
//! [`drift::converged`] says the stored object lacks a field we set, or differs in one.
//! When the API server normalises a value in a way [`drift`] does not know, the apply memo
//! (desired hash + the `resourceVersion` the apply returned) recognises the object as the
//! one we wrote. The status is written only when the computed status differs from the
//! stored one. Every write call increments `troupe_operator_api_writes_total{kind,verb}`,
//! which is how writes are counted.
//!
//! **No reconcile per renewal.** Only member Leases are watched (by label), and only an
//! event that changes the member table, creates a Lease anew or deletes one reconciles
//! ([`member_leases`]); a coordinator's renewal every second does not.
//!
//! Errors requeue the object with its own exponential backoff (2 s doubling to 5 min),
//! reset by its next success.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::fmt::Debug;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Secret, Service, ServiceAccount};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use troupe_contract::{coordination, labels};

use crate::build::credential::{self, CredentialError};
use crate::build::{BuildError, Children, Owner, Site, desired_children};
use crate::crd::{ActorCluster, ActorClusterStatus, StateStoreKind};
use crate::custom_metrics::cache::DepthCache;
use crate::drift;
use crate::member_leases;
use crate::metrics::Metrics;
use crate::status::{self, Observed, Problem, StoreHealth};
use crate::validate::validate;
use crate::watches;

/// The one field manager of every write the operator makes.
pub const FIELD_MANAGER: &str = "troupe-operator";

/// Why a reconcile failed. Every variant says what to look at.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The ActorCluster cannot own children (it lacks stored metadata).
    #[error(transparent)]
    Build(#[from] BuildError),
    /// A server-side apply of a child was refused.
    #[error(
        "applying {kind} {name} failed (check the operator's ClusterRole and quotas): {source}"
    )]
    Apply {
        /// Kind of the child.
        kind: String,
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Deleting a child that is no longer wanted failed.
    #[error("deleting {kind} {name} failed: {source}")]
    Delete {
        /// Kind of the child.
        kind: String,
        /// Name of the child.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// Writing the status failed.
    #[error("writing the status of ActorCluster {name} failed: {source}")]
    Status {
        /// Name of the ActorCluster.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// The transport credential cannot be issued.
    #[error(transparent)]
    Credential(#[from] CredentialError),
    /// Reading a stored credential Secret failed.
    #[error("reading Secret {name} failed (check the operator's ClusterRole): {source}")]
    ReadSecret {
        /// Name of the Secret.
        name: String,
        /// What the API server said.
        #[source]
        source: kube::Error,
    },
    /// The watch caches were dropped: the controller is shutting down.
    #[error("the watch caches are gone; the operator is shutting down")]
    CachesGone,
}

impl Error {
    /// The `kind` label of `troupe_operator_reconcile_errors_total`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Build(_) => "build",
            Self::Apply { .. } => "apply",
            Self::Delete { .. } => "delete",
            Self::Status { .. } => "status",
            Self::Credential(_) => "credential",
            Self::ReadSecret { .. } => "read_secret",
            Self::CachesGone => "caches",
        }
    }
}

/// Settings of the reconciler.
#[derive(Debug, Clone)]
pub struct Config {
    /// The node image when `spec.image` is absent.
    pub default_image: String,
    /// How long after its last successful reconcile an ActorCluster is reconciled again
    /// without a change (each object keeps its own timer, so resyncs are spread out).
    pub resync: Duration,
    /// How many ActorClusters are reconciled at once.
    pub concurrency: u16,
    /// Name of this replica, for Events.
    pub instance: Option<String>,
    /// What the node pods' `/metrics` say (filled by the scraper of `custom_metrics`): read
    /// for the state store's health of `postgres` clusters. `None`: not known.
    pub scraped: Option<Arc<std::sync::RwLock<DepthCache>>>,
    /// The operator's namespace: its pods may scrape the nodes' management port.
    pub namespace: String,
    /// The chart's node ClusterRole, which the operator binds (`bind` verb) to each
    /// cluster's node ServiceAccount.
    pub node_cluster_role: String,
}

/// How old a node's report about its state store may be to count.
const STORE_REPORT_MAX_AGE: Duration = Duration::from_secs(30);
/// How often a `postgres` cluster is reconciled again, to follow its store's health.
const STORE_RECHECK: Duration = Duration::from_secs(10);

/// What the node pods of `ac` say about their state store (postgres clusters only).
fn store_health(config: &Config, ac: &ActorCluster, owner: &Owner) -> Option<StoreHealth> {
    let postgres = ac
        .spec
        .state
        .as_ref()
        .is_some_and(|s| s.store == StateStoreKind::Postgres);
    if !postgres {
        return None;
    }
    let cache = config.scraped.as_ref()?.read().ok()?;
    let r = cache.store_report(
        &owner.namespace,
        &owner.name,
        std::time::SystemTime::now(),
        STORE_REPORT_MAX_AGE,
    );
    Some(StoreHealth {
        reporting: r.reporting,
        down: r.down,
    })
}

/// The watch caches the reconciler reads instead of the API server.
#[derive(Debug, Clone)]
pub struct Stores {
    deployments: Store<Deployment>,
    services: Store<Service>,
    service_accounts: Store<ServiceAccount>,
    role_bindings: Store<RoleBinding>,
    pdbs: Store<PodDisruptionBudget>,
    hpas: Store<HorizontalPodAutoscaler>,
    leases: Store<Lease>,
    secrets: Store<Secret>,
    network_policies: Store<NetworkPolicy>,
}

impl Stores {
    /// Waits until every cache holds its first full list. Must be awaited by ONE task only:
    /// `Store::wait_until_ready` wakes a single waiter (it wraps a oneshot receiver), so
    /// concurrent reconciles wait on [`Context::caches_ready`] instead.
    async fn ready(&self) -> Result<(), Error> {
        let results = futures::join!(
            self.deployments.wait_until_ready(),
            self.services.wait_until_ready(),
            self.service_accounts.wait_until_ready(),
            self.role_bindings.wait_until_ready(),
            self.pdbs.wait_until_ready(),
            self.hpas.wait_until_ready(),
            self.leases.wait_until_ready(),
            self.secrets.wait_until_ready(),
            self.network_policies.wait_until_ready(),
        );
        let (a, b, c, e, f, g, h, i, j) = results;
        a.and(b)
            .and(i)
            .and(j)
            .and(c)
            .and(e)
            .and(f)
            .and(g)
            .and(h)
            .map_err(|_| Error::CachesGone)
    }
}

type MemoKey = (String, String, String);

/// What every reconcile shares.
pub struct Context {
    client: Client,
    config: Config,
    stores: Stores,
    metrics: Metrics,
    recorder: Recorder,
    /// (kind, namespace, name) → (hash of the applied object, resourceVersion after apply).
    memo: Mutex<HashMap<MemoKey, (u64, String)>>,
    /// Consecutive failures per ActorCluster, for the backoff.
    failures: Mutex<HashMap<ObjectRef<ActorCluster>, u32>>,
    /// Becomes `true` once every watch cache is filled (see [`Stores::ready`]).
    caches_ready: tokio::sync::watch::Receiver<bool>,
}

impl Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The delay before retrying after the `failures`-th consecutive error.
pub fn backoff(failures: u32) -> Duration {
    let secs = 2u64.saturating_pow(failures.clamp(1, 16)).min(300);
    Duration::from_secs(secs)
}

/// Passes objects on and drops watch errors after logging them. Each watch retries on its
/// own backoff ([`watches::WatchBackoff`]); an error that reached the controller would make
/// it pause EVERY trigger stream on its own backoff (up to a minute), which is what kept a
/// change made after an API-server outage unapplied for minutes.
fn watch_errors_logged<K>(
    kind: &'static str,
    r: Result<K, watcher::Error>,
) -> Option<Result<K, watcher::Error>> {
    match r {
        Ok(obj) => Some(Ok(obj)),
        Err(e) => {
            tracing::debug!(kind, error = %e, "watch failed; retrying");
            None
        }
    }
}

/// A per-kind salt for the watch backoff's jitter.
fn salt(kind: &str) -> u64 {
    kind.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn strip<K: Resource>(obj: &mut K) {
    obj.meta_mut().managed_fields = None;
}

/// Runs the controller until `shutdown` resolves; then finishes the reconciles in flight.
pub async fn run(
    client: Client,
    config: Config,
    metrics: Metrics,
    watch_health: watches::WatchHealth,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let owned = watcher::Config::default().labels(&format!(
        "{}={}",
        labels::MANAGED_BY,
        labels::MANAGED_BY_VALUE
    ));

    macro_rules! cache {
        ($kind:ty, $cfg:expr) => {{
            let (store, writer) = reflector::store::<$kind>();
            let health = watch_health.clone();
            let stream = watcher(
                Api::<$kind>::all(client.clone()),
                watches::list_config($cfg),
            )
            .backoff(watches::WatchBackoff::new(salt(stringify!($kind))))
            .inspect(move |r| health.record(stringify!($kind), r.is_ok(), Instant::now()))
            .modify(strip::<$kind>)
            .reflect(writer)
            .touched_objects()
            .filter_map(|r| std::future::ready(watch_errors_logged(stringify!($kind), r)));
            (store, stream)
        }};
    }
    let (deployments, deployment_stream) = cache!(Deployment, owned.clone());
    let (services, service_stream) = cache!(Service, owned.clone());
    let (service_accounts, sa_stream) = cache!(ServiceAccount, owned.clone());
    let (role_bindings, rb_stream) = cache!(RoleBinding, owned.clone());
    let (pdbs, pdb_stream) = cache!(PodDisruptionBudget, owned.clone());
    let (hpas, hpa_stream) = cache!(HorizontalPodAutoscaler, owned.clone());
    let (leases, lease_stream) = cache!(
        Lease,
        watcher::Config::default().labels(&member_leases::selector())
    );
    // Only a changed member table, a new Lease or a deletion reconciles (not the
    // coordinator's renewal every second).
    let lease_stream = {
        let store = leases.clone();
        let mut changes = member_leases::LeaseChanges::default();
        lease_stream.filter(move |event| {
            std::future::ready(match event {
                Ok(lease) => {
                    let present = store.get(&ObjectRef::from_obj(lease)).is_some();
                    changes.worth_a_reconcile(lease, present)
                }
                Err(_) => true,
            })
        })
    };
    let (secrets, secret_stream) = cache!(Secret, owned.clone());
    let (network_policies, np_stream) = cache!(NetworkPolicy, owned.clone());

    let recorder = Recorder::new(
        client.clone(),
        Reporter {
            controller: FIELD_MANAGER.to_owned(),
            instance: config.instance.clone(),
        },
    );
    let concurrency = config.concurrency;
    let stores = Stores {
        deployments,
        services,
        service_accounts,
        role_bindings,
        pdbs,
        hpas,
        leases,
        secrets,
        network_policies,
    };
    let (ready_tx, caches_ready) = tokio::sync::watch::channel(false);
    let waiter = stores.clone();
    let readiness = tokio::spawn(async move {
        if waiter.ready().await.is_ok() {
            tracing::info!("watch caches filled");
            let _ = ready_tx.send(true);
        }
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        config,
        stores,
        metrics,
        recorder,
        memo: Mutex::new(HashMap::new()),
        failures: Mutex::new(HashMap::new()),
        caches_ready,
    });

    // The ActorClusters themselves, also without managedFields (they are most of an
    // object's size once a user applies and the operator writes status).
    let (clusters, cluster_writer) = reflector::store::<ActorCluster>();
    let cluster_stream = watcher(
        Api::<ActorCluster>::all(client),
        watches::list_config(watcher::Config::default()),
    )
    .backoff(watches::WatchBackoff::new(salt("ActorCluster")))
    .inspect(move |r| watch_health.record("ActorCluster", r.is_ok(), Instant::now()))
    .modify(strip::<ActorCluster>)
    .reflect(cluster_writer)
    .applied_objects()
    .filter_map(|r| std::future::ready(watch_errors_logged("ActorCluster", r)));

    Controller::for_stream(cluster_stream, clusters)
        .with_config(controller::Config::default().concurrency(concurrency))
        .owns_stream(deployment_stream)
        .owns_stream(service_stream)
        .owns_stream(sa_stream)
        .owns_stream(rb_stream)
        .owns_stream(pdb_stream)
        .owns_stream(hpa_stream)
        .owns_stream(secret_stream)
        .owns_stream(np_stream)
        .watches_stream(lease_stream, |lease: Lease| {
            let namespace = lease.namespace();
            let name = lease.name_any();
            status::cluster_of_lease(&name)
                .zip(namespace)
                .map(|(cluster, ns)| ObjectRef::new(cluster).within(&ns))
        })
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|result| async move {
            if let Err(e) = result {
                tracing::debug!(error = %e, "controller event");
            }
        })
        .await;
    readiness.abort();
}

/// Retries a failed ActorCluster after its own exponential backoff.
fn error_policy(ac: Arc<ActorCluster>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics
        .errors
        .with_label_values(&[error.metric_label()])
        .inc();
    let key = ObjectRef::from_obj(ac.as_ref());
    let failures = match ctx.failures.lock() {
        Ok(mut map) => {
            let n = map.entry(key).or_insert(0);
            *n = n.saturating_add(1);
            *n
        }
        Err(_) => 1,
    };
    let delay = backoff(failures);
    tracing::warn!(
        actorcluster = %ac.name_any(),
        namespace = ac.namespace().unwrap_or_default(),
        error = %error,
        failures,
        retry_in_s = delay.as_secs(),
        "reconcile failed"
    );
    Action::requeue(delay)
}

/// Reconciles one ActorCluster.
pub async fn reconcile(ac: Arc<ActorCluster>, ctx: Arc<Context>) -> Result<Action, Error> {
    let timer = ctx.metrics.reconcile_duration.start_timer();
    let result = reconcile_inner(&ac, &ctx).await;
    timer.observe_duration();
    let outcome = if result.is_ok() { "ok" } else { "error" };
    ctx.metrics.reconciles.with_label_values(&[outcome]).inc();
    if result.is_ok()
        && let Ok(mut map) = ctx.failures.lock()
    {
        map.remove(&ObjectRef::from_obj(ac.as_ref()));
    }
    result
}

#[tracing::instrument(skip_all, fields(actorcluster = %ac.name_any(), namespace = ac.namespace().unwrap_or_default()))]
async fn reconcile_inner(ac: &ActorCluster, ctx: &Context) -> Result<Action, Error> {
    if ac.metadata.deletion_timestamp.is_some() {
        // Being deleted: the garbage collector removes the children; re-creating them
        // would only race it.
        return Ok(Action::await_change());
    }
    let mut caches_ready = ctx.caches_ready.clone();
    caches_ready
        .wait_for(|ready| *ready)
        .await
        .map_err(|_| Error::CachesGone)?;
    let owner = Owner::of(ac)?;

    let mut problem = None;
    let mut failure = None;
    let mut applied = Vec::new();
    match validate(&ac.spec, &ctx.config.default_image) {
        Err(invalid) => problem = Some(Problem::InvalidSpec(invalid.0)),
        Ok(valid) => {
            let site = Site {
                operator_namespace: &ctx.config.namespace,
                node_cluster_role: &ctx.config.node_cluster_role,
            };
            let children = desired_children(&owner, &valid, site);
            if let Err(e) = apply_children(ctx, &owner, &children, &mut applied).await {
                problem = Some(Problem::ApplyFailed(e.to_string()));
                failure = Some(e);
            }
        }
    }
    if !applied.is_empty() {
        tracing::info!(applied = ?applied, "children applied");
        publish(
            ctx,
            ac,
            EventType::Normal,
            "Applied",
            "Apply",
            format!("applied {}", applied.join(", ")),
        )
        .await;
    }

    let deployment = ctx
        .stores
        .deployments
        .get(&ObjectRef::new(&owner.name).within(&owner.namespace));
    let lease = ctx
        .stores
        .leases
        .get(&ObjectRef::new(&coordination::lease_name(&owner.name)).within(&owner.namespace));
    let members = status::members_from_lease(lease.as_deref()).unwrap_or_else(|e| {
        tracing::warn!(error = %e, "member table unreadable; reporting no members");
        Default::default()
    });
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    let store = store_health(&ctx.config, ac, &owner);
    let new_status = status::compute(
        &Observed {
            name: &owner.name,
            generation: ac.metadata.generation,
            spec: &ac.spec,
            deployment: deployment.as_deref(),
            members: &members,
            problem: problem.as_ref(),
            store: store.as_ref(),
        },
        ac.status.as_ref(),
        &now,
    );
    if ac.status.as_ref() != Some(&new_status) {
        write_status(ctx, &owner, &new_status).await?;
        announce_transitions(ctx, ac, ac.status.as_ref(), &new_status).await;
    }

    if let Some(e) = failure {
        return Err(e);
    }
    Ok(match problem {
        // Nothing to retry until the spec changes.
        Some(Problem::InvalidSpec(_)) => Action::await_change(),
        // Follow the store's health (reconciling a converged cluster writes nothing).
        _ if store.is_some() => Action::requeue(ctx.config.resync.min(STORE_RECHECK)),
        _ => Action::requeue(ctx.config.resync),
    })
}

async fn apply_children(
    ctx: &Context,
    owner: &Owner,
    c: &Children,
    applied: &mut Vec<String>,
) -> Result<(), Error> {
    let s = &ctx.stores;
    ensure(ctx, &s.service_accounts, &c.service_account, applied).await?;
    rebind_if_the_role_changed(ctx, owner, &c.role_binding, applied).await?;
    ensure(ctx, &s.role_bindings, &c.role_binding, applied).await?;
    ensure(ctx, &s.services, &c.peer_service, applied).await?;
    ensure(ctx, &s.services, &c.client_service, applied).await?;
    ensure_credential(ctx, owner, applied).await?;
    ensure(ctx, &s.deployments, &c.deployment, applied).await?;
    ensure(ctx, &s.pdbs, &c.pdb, applied).await?;
    match &c.hpa {
        Some(hpa) => ensure(ctx, &s.hpas, hpa, applied).await?,
        None => remove_owned(ctx, &s.hpas, owner, &owner.name, applied).await?,
    }
    match &c.network_policy {
        Some(np) => ensure(ctx, &s.network_policies, np, applied).await?,
        None => remove_owned(ctx, &s.network_policies, owner, &owner.name, applied).await?,
    }
    Ok(())
}

/// A RoleBinding's `roleRef` cannot be changed: a binding that names another role (the
/// per-cluster Role of releases before the chart's node ClusterRole, or a renamed
/// ClusterRole) is deleted so that [`ensure`] creates it anew. The old Role, bound by
/// nothing, stays until the ActorCluster's deletion collects it.
async fn rebind_if_the_role_changed(
    ctx: &Context,
    owner: &Owner,
    desired: &RoleBinding,
    applied: &mut Vec<String>,
) -> Result<(), Error> {
    let name = desired.name_any();
    let observed = ctx
        .stores
        .role_bindings
        .get(&ObjectRef::new(&name).within(&owner.namespace));
    match observed {
        Some(o) if o.role_ref != desired.role_ref => {
            remove_owned(ctx, &ctx.stores.role_bindings, owner, &name, applied).await
        }
        _ => Ok(()),
    }
}

/// Issues, reissues or rotates the transport credential ([`credential::plan`]). The plan is
/// made from the caches; one that wants a write is made again from the API server, since
/// the cache may not show the operator's own last write yet (and a CA made twice would
/// make nodes distrust each other for a moment).
async fn ensure_credential(
    ctx: &Context,
    owner: &Owner,
    applied: &mut Vec<String>,
) -> Result<(), Error> {
    let names = [
        troupe_contract::tls::ca_secret_name(&owner.name),
        troupe_contract::tls::secret_name(&owner.name),
    ];
    let cached = names.clone().map(|n| {
        ctx.stores
            .secrets
            .get(&ObjectRef::new(&n).within(&owner.namespace))
    });
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0);
    let plan = credential::plan(owner, cached[0].as_deref(), cached[1].as_deref(), now)?;
    if plan == credential::Plan::default() {
        return Ok(());
    }
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let mut fresh = Vec::new();
    for name in &names {
        fresh.push(
            api.get_opt(name)
                .await
                .map_err(|source| Error::ReadSecret {
                    name: name.clone(),
                    source,
                })?,
        );
    }
    let plan = credential::plan(owner, fresh[0].as_ref(), fresh[1].as_ref(), now)?;
    let params = PatchParams::apply(FIELD_MANAGER).force();
    for secret in [plan.ca, plan.node].into_iter().flatten() {
        let name = secret.name_any();
        ctx.metrics.write("Secret", "apply", &owner.namespace);
        api.patch(&name, &params, &Patch::Apply(&secret))
            .await
            .map_err(|source| Error::Apply {
                kind: "Secret".into(),
                name: name.clone(),
                source,
            })?;
        tracing::info!(secret = %name, "transport credential written");
        applied.push(format!("Secret {name}"));
    }
    Ok(())
}

fn hash_of(json: &str) -> u64 {
    let mut h = DefaultHasher::new();
    json.hash(&mut h);
    h.finish()
}

/// Applies `desired` unless the cached object already converged. Returns whether it wrote.
async fn ensure<K>(
    ctx: &Context,
    store: &Store<K>,
    desired: &K,
    applied: &mut Vec<String>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let kind = K::kind(&()).to_string();
    let name = desired.name_any();
    let namespace = desired.namespace().unwrap_or_default();
    let observed = store.get(&ObjectRef::new(&name).within(&namespace));
    let hash = serde_json::to_string(desired)
        .map(|j| hash_of(&j))
        .unwrap_or_default();
    let key = (kind.clone(), namespace.clone(), name.clone());
    if let Some(o) = &observed {
        if drift::converged(desired, o.as_ref()) {
            ctx.metrics.skipped_applies.inc();
            return Ok(());
        }
        let remembered = ctx.memo.lock().ok().and_then(|m| m.get(&key).cloned());
        if let (Some((h, rv)), Some(orv)) = (remembered, o.resource_version())
            && h == hash
            && rv == orv
        {
            ctx.metrics.skipped_applies.inc();
            return Ok(());
        }
        tracing::debug!(%kind, %name, "drift detected");
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams::apply(FIELD_MANAGER).force();
    ctx.metrics.write(&kind, "apply", &namespace);
    let result = api
        .patch(&name, &params, &Patch::Apply(desired))
        .await
        .map_err(|source| Error::Apply {
            kind: kind.clone(),
            name: name.clone(),
            source,
        })?;
    // Remember only what the drift check cannot recognise (a value the API server
    // normalised); everything else is found converged without a memo entry.
    if let Ok(mut memo) = ctx.memo.lock() {
        match result.resource_version() {
            Some(rv) if !drift::converged(desired, &result) => {
                memo.insert(key, (hash, rv));
            }
            _ => {
                memo.remove(&key);
            }
        }
    }
    applied.push(format!("{kind} {name}"));
    Ok(())
}

/// Deletes the child `name` of kind `K` if it exists and `owner` controls it.
async fn remove_owned<K>(
    ctx: &Context,
    store: &Store<K>,
    owner: &Owner,
    name: &str,
    applied: &mut Vec<String>,
) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + Debug
        + Serialize
        + DeserializeOwned,
{
    let Some(existing) = store.get(&ObjectRef::new(name).within(&owner.namespace)) else {
        return Ok(());
    };
    let ours = existing
        .owner_references()
        .iter()
        .any(|r| r.uid == owner.reference.uid);
    if !ours {
        return Ok(());
    }
    let kind = K::kind(&()).to_string();
    ctx.metrics.write(&kind, "delete", &owner.namespace);
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    match api.delete(name, &DeleteParams::background()).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => {}
        Err(source) => {
            return Err(Error::Delete {
                kind,
                name: name.to_owned(),
                source,
            });
        }
    }
    applied.push(format!("deleted {kind} {name}"));
    Ok(())
}

async fn write_status(
    ctx: &Context,
    owner: &Owner,
    status: &ActorClusterStatus,
) -> Result<(), Error> {
    let api: Api<ActorCluster> = Api::namespaced(ctx.client.clone(), &owner.namespace);
    let body = serde_json::json!({
        "apiVersion": ActorCluster::api_version(&()),
        "kind": ActorCluster::kind(&()),
        "status": status,
    });
    ctx.metrics
        .write("ActorCluster", "status", &owner.namespace);
    api.patch_status(
        &owner.name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|source| Error::Status {
        name: owner.name.clone(),
        source,
    })?;
    Ok(())
}

/// Events for conditions that changed: Ready flipping, Degraded with a new reason.
async fn announce_transitions(
    ctx: &Context,
    ac: &ActorCluster,
    old: Option<&ActorClusterStatus>,
    new: &ActorClusterStatus,
) {
    let before = |t: &str| old.and_then(|o| status::condition(o, t)).cloned();
    if let Some(ready) = status::condition(new, "Ready") {
        let was = before("Ready");
        if was.as_ref().map(|c| &c.status) != Some(&ready.status) {
            let (kind, reason) = if ready.status == "True" {
                (EventType::Normal, "Ready")
            } else {
                (EventType::Normal, "NotReady")
            };
            publish(ctx, ac, kind, reason, "Reconcile", ready.message.clone()).await;
        }
    }
    if let Some(degraded) = status::condition(new, "Degraded") {
        let was = before("Degraded");
        let changed = was
            .as_ref()
            .map(|c| (&c.status, &c.reason) != (&degraded.status, &degraded.reason))
            .unwrap_or(true);
        if degraded.status == "True" && changed {
            publish(
                ctx,
                ac,
                EventType::Warning,
                &degraded.reason,
                "Reconcile",
                degraded.message.clone(),
            )
            .await;
        }
    }
}

async fn publish(
    ctx: &Context,
    ac: &ActorCluster,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let note = event_note(note);
    ctx.metrics
        .write("Event", "create", &ac.namespace().unwrap_or_default());
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &ac.object_ref(&())).await {
        tracing::warn!(error = %e, reason, "cannot publish event");
    }
}

/// Longest Event note, in bytes (the API server refuses notes over 1 KiB).
const MAX_NOTE_BYTES: usize = 1000;

/// `note` cut to [`MAX_NOTE_BYTES`]. Notes echo API-server text (apply errors, Deployment
/// conditions) that may hold any UTF-8, so the cut falls on a character boundary.
fn event_note(mut note: String) -> String {
    if note.len() > MAX_NOTE_BYTES {
        let cut = (0..=MAX_NOTE_BYTES)
            .rev()
            .find(|&i| note.is_char_boundary(i))
            .unwrap_or(0);
        note.truncate(cut);
    }
    note
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_notes_are_cut_on_a_character_boundary() {
        // 999 ASCII bytes, then a 3-byte character straddling the 1000-byte limit.
        let note = format!("{}{}", "a".repeat(999), "€ and more");
        let cut = event_note(note);
        assert_eq!(cut.len(), 999);
        assert!(cut.chars().all(|c| c == 'a'));
        let short = event_note("Deployment progress deadline exceeded: ünïcode".into());
        assert_eq!(short, "Deployment progress deadline exceeded: ünïcode");
    }

    #[test]
    fn backoff_doubles_from_two_seconds_up_to_five_minutes() {
        assert_eq!(backoff(0), Duration::from_secs(2));
        assert_eq!(backoff(1), Duration::from_secs(2));
        assert_eq!(backoff(2), Duration::from_secs(4));
        assert_eq!(backoff(5), Duration::from_secs(32));
        assert_eq!(backoff(9), Duration::from_secs(300));
        assert_eq!(backoff(u32::MAX), Duration::from_secs(300));
    }

    #[test]
    fn error_kinds_have_stable_labels() {
        let e = Error::Build(BuildError::MissingMetadata("uid"));
        assert_eq!(e.metric_label(), "build");
        assert_eq!(Error::CachesGone.metric_label(), "caches");
    }
}
