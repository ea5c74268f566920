//! `troupe-state-postgres`: the PostgreSQL [`StateStore`] of a Troupe node.
//!
//! ```text
//!  activation turns ──write──► bounded queue ──► committers (`pipeline` of them)
//!   (one in flight per actor)   (full: 503)      each takes every queued write, up to
//!                                                `max_batch`, and commits them in ONE
//!                                                transaction (statements pipelined on one
//!                                                connection), then answers each writer
//!  activation ──load──► pool ──► SELECT (one row)
//!  supervisor: (re)connects, creates the schema, checks every 2 s; while the database is
//!  unreachable every call fails at once with `Unavailable` (503 + Retry-After), and it
//!  heals by itself when the database is back (no restart)
//! ```
//!
//! **Group commit.** A committer that finds writes waiting takes all of them (up to
//! `max_batch`) into one transaction: under load a batch holds every write that queued
//! during the previous commit, so one WAL flush serves many actors' turns, while an idle
//! store commits a lone write at once (no lingering). `pipeline` committers run side by
//! side on their own connections, so a new batch starts while the last one flushes. Each
//! write is fenced in SQL (`schema::INSERT`, `schema::UPDATE`: version and owner, exactly
//! `troupe_actors::store::fence`); a refused write is a [`StoreError::Conflict`] for its
//! writer only, the others of the batch commit. A failed transaction fails every write of
//! it with [`StoreError::Unavailable`]: nothing of it is acknowledged.
//!
//! **Connection.** A libpq connection string or URL, from a file (a Secret's key mounted
//! by the kubelet, read again on every reconnect) or given directly. Wrong credentials do
//! not stop the node: the store stays down with a reason that says what to fix, every
//! call answers 503 meanwhile, and the supervisor tries again. Plain TCP only (no TLS yet).
//!
//! Table layout: `schema`. Metrics: `troupe_state_store_up`, `troupe_state_commit_batch_size`,
//! `troupe_state_commit_seconds`, `troupe_state_queue_full_total`.

pub mod schema;

use std::{
    fmt,
    path::PathBuf,
    str::FromStr,
    sync::{Arc, RwLock, Weak},
    time::Duration,
};

use bytes::Bytes;
use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod, Runtime};
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, Registry};
use tokio::sync::{Mutex, Notify, mpsc, oneshot};
use tokio_postgres::{NoTls, error::SqlState};
use troupe_actors::{
    activation::Generation,
    store::{Conflict, StateStore, StateWrite, StoreError, StoreFuture, StoredState},
};

/// How long to wait before retrying after the store failed.
const RETRY_AFTER: Duration = Duration::from_secs(1);
/// How often the supervisor checks a store that is up.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// Where the connection string comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum Source {
    /// Given directly.
    Url(String),
    /// Read from this file (trailing whitespace trimmed) on every (re)connect.
    File(PathBuf),
}

impl fmt::Debug for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // Never print a password.
            Self::Url(_) => f.write_str("Url(..)"),
            Self::File(p) => f.debug_tuple("File").field(p).finish(),
        }
    }
}

/// Settings of a [`PostgresStore`].
#[derive(Clone, Debug)]
pub struct Settings {
    /// The connection string's source.
    pub source: Source,
    /// Whose actors these are (`<namespace>/<ActorCluster>`): rows are keyed by it, so
    /// several clusters may share one database.
    pub cluster: String,
    /// Largest state taken (bytes); larger ones are refused with [`StoreError::TooLarge`].
    pub max_state_bytes: usize,
    /// Most writes in one transaction.
    pub max_batch: usize,
    /// Transactions in flight at once (committers, each on its own connection).
    pub pipeline: usize,
    /// Most writes waiting for a committer; one more is refused (503).
    pub queue: usize,
    /// Longest wait for the database in one call (connect, pool, statement).
    pub timeout: Duration,
}

impl Settings {
    /// Defaults for the actors of `cluster`, connecting with `source`.
    pub fn new(cluster: impl Into<String>, source: Source) -> Self {
        Self {
            source,
            cluster: cluster.into(),
            max_state_bytes: 1 << 20,
            max_batch: 512,
            pipeline: 4,
            queue: 16 * 1024,
            // Below the runtime's 5 s ask timeout (a write waits at most twice this), so
            // a slow database answers 503, not 504.
            timeout: Duration::from_secs(2),
        }
    }

    /// The store settings from the node's environment (`troupe_contract::env`) for the
    /// actors of `cluster`: `None` in `memory` mode (unset or `memory`), settings for
    /// `postgres`.
    pub fn from_env(
        cluster: &str,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, ConfigError> {
        use troupe_contract::env;
        let mode = lookup(env::STATE_STORE).map(|m| m.trim().to_ascii_lowercase());
        match mode.as_deref() {
            None | Some("") | Some("memory") => return Ok(None),
            Some("postgres") => {}
            Some(other) => {
                return Err(ConfigError(format!(
                    "{} must be memory or postgres, got {other:?}",
                    env::STATE_STORE
                )));
            }
        }
        let source = match (
            lookup(env::STATE_POSTGRES_FILE).filter(|s| !s.trim().is_empty()),
            lookup(env::STATE_POSTGRES_URL).filter(|s| !s.trim().is_empty()),
        ) {
            (Some(f), _) => Source::File(PathBuf::from(f.trim())),
            (None, Some(u)) => Source::Url(u.trim().to_owned()),
            (None, None) => {
                return Err(ConfigError(format!(
                    "{}=postgres needs {} (a file holding the connection string) or {}",
                    env::STATE_STORE,
                    env::STATE_POSTGRES_FILE,
                    env::STATE_POSTGRES_URL
                )));
            }
        };
        let mut s = Self::new(cluster, source);
        if let Some(v) = lookup(env::STATE_MAX_BYTES) {
            s.max_state_bytes = v.trim().parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                ConfigError(format!(
                    "{} must be a positive number of bytes, got {v:?}",
                    env::STATE_MAX_BYTES
                ))
            })?;
        }
        Ok(Some(s))
    }
}

/// A setting of the store is invalid; the message names it.
#[derive(Debug, thiserror::Error)]
#[error("invalid state store configuration: {0}")]
pub struct ConfigError(String);

/// Whether the store can be used now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Status {
    /// Not connected yet.
    Connecting,
    /// Connected, schema ready.
    Up,
    /// Unreachable or refusing us; the reason says what to fix.
    Down(String),
}

/// Metrics of the store.
#[derive(Clone, Debug)]
struct StoreMetrics {
    up: IntGauge,
    batch_size: Histogram,
    commit_seconds: Histogram,
    queue_full: IntCounter,
}

impl StoreMetrics {
    fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let m = Self {
            up: IntGauge::new(
                troupe_contract::metrics::STATE_STORE_UP,
                "1 while the durable state store is reachable and its schema ready, 0 otherwise.",
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new(
                    "troupe_state_commit_batch_size",
                    "Writes committed together in one transaction (group commit).",
                )
                .buckets(vec![
                    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
                ]),
            )?,
            commit_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "troupe_state_commit_seconds",
                    "Time of one group-commit transaction, from taking the batch to COMMIT.",
                )
                .buckets(vec![
                    0.000_5, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.5, 1.0, 5.0,
                ]),
            )?,
            queue_full: IntCounter::new(
                "troupe_state_queue_full_total",
                "Writes refused (503) because the commit queue was full.",
            )?,
        };
        registry.register(Box::new(m.up.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.commit_seconds.clone()))?;
        registry.register(Box::new(m.queue_full.clone()))?;
        Ok(m)
    }
}

/// A write waiting for its commit.
struct Pending {
    write: StateWrite,
    done: oneshot::Sender<Result<(), StoreError>>,
}

/// The PostgreSQL state store. Cheap to clone.
#[derive(Clone)]
pub struct PostgresStore {
    shared: Arc<Shared>,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("settings", &self.shared.settings)
            .field("status", &self.status())
            .finish_non_exhaustive()
    }
}

struct Shared {
    settings: Settings,
    /// The pool for the connection string last read, and that string.
    pool: RwLock<Option<(String, Pool)>>,
    status: RwLock<Status>,
    /// Wakes the supervisor (a call failed).
    wake: Notify,
    queue: mpsc::Sender<Pending>,
    metrics: StoreMetrics,
}

fn unavailable(reason: impl Into<String>) -> StoreError {
    StoreError::Unavailable {
        reason: reason.into(),
        retry_after: RETRY_AFTER,
    }
}

fn read<T: Clone>(l: &RwLock<T>) -> T {
    l.read().unwrap_or_else(|p| p.into_inner()).clone()
}

fn set<T>(l: &RwLock<T>, v: T) {
    *l.write().unwrap_or_else(|p| p.into_inner()) = v;
}

impl PostgresStore {
    /// Starts the store: its supervisor connects in the background (check
    /// [`status`](Self::status)), its committers wait for writes. Metrics are registered
    /// in `registry`. Must be called inside a Tokio runtime.
    pub fn start(settings: Settings, registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = StoreMetrics::register(registry)?;
        let (tx, rx) = mpsc::channel(settings.queue.max(1));
        let shared = Arc::new(Shared {
            settings,
            pool: RwLock::new(None),
            status: RwLock::new(Status::Connecting),
            wake: Notify::new(),
            queue: tx,
            metrics,
        });
        let rx = Arc::new(Mutex::new(rx));
        for _ in 0..shared.settings.pipeline.max(1) {
            tokio::spawn(committer(Arc::downgrade(&shared), rx.clone()));
        }
        tokio::spawn(supervise(Arc::downgrade(&shared)));
        Ok(Self { shared })
    }

    /// Whether the store can be used now, and why not.
    pub fn status(&self) -> Status {
        read(&self.shared.status)
    }

    /// Waits until the store is up, at most `timeout`; returns its status then.
    pub async fn wait_up(&self, timeout: Duration) -> Status {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let s = self.status();
            if s == Status::Up || tokio::time::Instant::now() >= deadline {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Shared {
    /// The pool, when the store is up; the reason it cannot be used otherwise.
    fn usable(&self) -> Result<Pool, StoreError> {
        match read(&self.status) {
            Status::Up => {}
            Status::Connecting => return Err(unavailable("connecting to PostgreSQL")),
            Status::Down(reason) => return Err(unavailable(reason)),
        }
        read(&self.pool)
            .map(|(_, p)| p)
            .ok_or_else(|| unavailable("connecting to PostgreSQL"))
    }

    /// A call failed in a way that may mean the database is gone: check it now.
    fn failed(&self, e: &DbFailure) {
        if e.connection {
            set(&self.status, Status::Down(e.reason.clone()));
            self.metrics.up.set(0);
        }
        self.wake.notify_one();
    }
}

/// A database failure, described for the client and the log.
#[derive(Debug)]
struct DbFailure {
    reason: String,
    /// The connection (or credentials) failed, not one statement.
    connection: bool,
}

impl DbFailure {
    fn from_pg(e: &tokio_postgres::Error) -> Self {
        if let Some(db) = e.as_db_error() {
            let code = db.code();
            let auth = *code == SqlState::INVALID_PASSWORD
                || *code == SqlState::INVALID_AUTHORIZATION_SPECIFICATION;
            let reason = if auth {
                format!(
                    "PostgreSQL refused the credentials ({}: {}): check the connection string in the Secret named by spec.state.postgres.secretName",
                    code.code(),
                    db.message()
                )
            } else {
                format!("PostgreSQL error {}: {}", code.code(), db.message())
            };
            let connection = auth
                || *code == SqlState::ADMIN_SHUTDOWN
                || *code == SqlState::CRASH_SHUTDOWN
                || *code == SqlState::CANNOT_CONNECT_NOW
                || *code == SqlState::INVALID_CATALOG_NAME
                || *code == SqlState::TOO_MANY_CONNECTIONS;
            return Self { reason, connection };
        }
        let mut reason = format!("cannot reach PostgreSQL: {e}");
        let mut source = std::error::Error::source(e);
        while let Some(s) = source {
            reason.push_str(&format!(": {s}"));
            source = s.source();
        }
        Self {
            reason,
            connection: true,
        }
    }

    fn from_pool(e: &PoolError) -> Self {
        match e {
            PoolError::Backend(e) => Self::from_pg(e),
            PoolError::Timeout(t) => Self {
                reason: format!("PostgreSQL too slow: no connection in time ({t:?})"),
                connection: false,
            },
            other => Self {
                reason: format!("PostgreSQL connection pool: {other}"),
                connection: true,
            },
        }
    }

    fn timeout(what: &str, after: Duration) -> Self {
        Self {
            reason: format!("PostgreSQL too slow: {what} took more than {after:?}"),
            connection: false,
        }
    }
}

impl From<tokio_postgres::Error> for DbFailure {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::from_pg(&e)
    }
}

impl From<PoolError> for DbFailure {
    fn from(e: PoolError) -> Self {
        Self::from_pool(&e)
    }
}

/// The connection string from its source.
fn connection_string(source: &Source) -> Result<String, String> {
    match source {
        Source::Url(u) => Ok(u.clone()),
        Source::File(p) => std::fs::read_to_string(p)
            .map(|s| s.trim().to_owned())
            .map_err(|e| {
                format!(
                    "cannot read the PostgreSQL connection string from {}: {e} (is the Secret's key mounted there?)",
                    p.display()
                )
            }),
    }
}

/// Parses a connection string and applies the store's timeouts.
fn pg_config(s: &str, timeout: Duration) -> Result<tokio_postgres::Config, String> {
    let mut c = tokio_postgres::Config::from_str(s).map_err(|e| {
        format!("the PostgreSQL connection string is not valid ({e}); expected postgresql://user:password@host:port/database")
    })?;
    c.connect_timeout(timeout);
    c.application_name("troupe-node");
    // A slow database fails a statement instead of holding writers indefinitely.
    c.options(format!("-c statement_timeout={}", timeout.as_millis()));
    Ok(c)
}

fn pool_for(config: tokio_postgres::Config, settings: &Settings) -> Result<Pool, String> {
    let manager = Manager::from_config(
        config,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(settings.pipeline.max(1) + 4)
        .runtime(Runtime::Tokio1)
        .wait_timeout(Some(settings.timeout))
        .create_timeout(Some(settings.timeout))
        .recycle_timeout(Some(settings.timeout))
        .build()
        .map_err(|e| format!("cannot build the PostgreSQL connection pool: {e}"))
}

/// Connects (reading the connection string again), creates the schema, checks it.
async fn connect(shared: &Shared) -> Result<(), String> {
    let s = connection_string(&shared.settings.source)?;
    let pool = match read(&shared.pool) {
        Some((old, pool)) if old == s => pool,
        _ => {
            let pool = pool_for(pg_config(&s, shared.settings.timeout)?, &shared.settings)?;
            set(&shared.pool, Some((s, pool.clone())));
            pool
        }
    };
    let timeout = shared.settings.timeout;
    let check = async {
        let mut client = pool
            .get()
            .await
            .map_err(|e| DbFailure::from_pool(&e).reason)?;
        schema::ensure(&mut client).await.map_err(|e| match e {
            schema::SchemaError::Db(e) => DbFailure::from_pg(&e).reason,
            other => other.to_string(),
        })
    };
    tokio::time::timeout(timeout * 2, check)
        .await
        .map_err(|_| DbFailure::timeout("connecting and checking the schema", timeout * 2).reason)?
}

/// Keeps the store connected: connects, and checks every [`CHECK_EVERY`] (or at once when
/// a call failed); logs every change of status.
async fn supervise(shared: Weak<Shared>) {
    let mut backoff = Duration::from_millis(250);
    loop {
        let Some(s) = shared.upgrade() else { return };
        let was = read(&s.status);
        let now = match connect(&s).await {
            Ok(()) => Status::Up,
            Err(reason) => Status::Down(reason),
        };
        if now != was {
            match &now {
                Status::Up => tracing::info!("state store: PostgreSQL reachable, schema ready"),
                Status::Down(reason) => {
                    tracing::error!(reason = %reason, "state store: PostgreSQL cannot be used; actors answer 503 until it can")
                }
                Status::Connecting => {}
            }
        }
        s.metrics.up.set(i64::from(now == Status::Up));
        let up = now == Status::Up;
        set(&s.status, now);
        let wait = if up {
            backoff = Duration::from_millis(250);
            CHECK_EVERY
        } else {
            backoff = (backoff * 2).min(Duration::from_secs(2));
            backoff
        };
        // Holds the store for at most `wait`: it is freed that long after its last handle.
        let _ = tokio::time::timeout(wait, s.wake.notified()).await;
        drop(s);
        // Let a burst of failures settle into one check.
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Takes batches off the queue and commits them, until the store is dropped.
async fn committer(shared: Weak<Shared>, rx: Arc<Mutex<mpsc::Receiver<Pending>>>) {
    loop {
        let batch = {
            let mut rx = rx.lock().await;
            let Some(first) = rx.recv().await else { return };
            let max = shared.upgrade().map_or(1, |s| s.settings.max_batch.max(1));
            let mut batch = vec![first];
            while batch.len() < max {
                match rx.try_recv() {
                    Ok(p) => batch.push(p),
                    Err(_) => break,
                }
            }
            batch
        };
        let Some(s) = shared.upgrade() else { return };
        // A writer that gave up (timed out) has answered its client: skip its write.
        let batch: Vec<Pending> = batch.into_iter().filter(|p| !p.done.is_closed()).collect();
        if batch.is_empty() {
            continue;
        }
        commit(&s, batch).await;
    }
}

/// What one fenced write did inside its transaction.
enum Landed {
    Written,
    Refused(Conflict),
}

fn i(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

fn u(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

async fn commit(shared: &Shared, batch: Vec<Pending>) {
    let pool = match shared.usable() {
        Ok(p) => p,
        Err(e) => {
            for p in batch {
                let _ = p.done.send(Err(e.clone()));
            }
            return;
        }
    };
    let started = std::time::Instant::now();
    let timeout = shared.settings.timeout;
    let writes: Vec<&StateWrite> = batch.iter().map(|p| &p.write).collect();
    let result = tokio::time::timeout(timeout, run_batch(&pool, &shared.settings.cluster, &writes))
        .await
        .unwrap_or_else(|_| Err(DbFailure::timeout("a commit", timeout)));
    match result {
        Ok(landed) => {
            shared.metrics.batch_size.observe(batch.len() as f64);
            shared
                .metrics
                .commit_seconds
                .observe(started.elapsed().as_secs_f64());
            for (p, l) in batch.into_iter().zip(landed) {
                let _ = p.done.send(match l {
                    Landed::Written => Ok(()),
                    Landed::Refused(c) => Err(StoreError::Conflict(c)),
                });
            }
        }
        Err(f) => {
            tracing::warn!(writes = batch.len(), reason = %f.reason, "state store: a group commit failed; none of its writes is acknowledged");
            shared.failed(&f);
            let e = unavailable(f.reason);
            for p in batch {
                let _ = p.done.send(Err(e.clone()));
            }
        }
    }
}

/// One transaction for every write of the batch, its statements pipelined.
async fn run_batch(
    pool: &Pool,
    cluster: &str,
    writes: &[&StateWrite],
) -> Result<Vec<Landed>, DbFailure> {
    let mut client = pool.get().await?;
    let insert = client.prepare_cached(schema::INSERT).await?;
    let update = client.prepare_cached(schema::UPDATE).await?;
    let load = client.prepare_cached(schema::LOAD).await?;
    let tx = client.transaction().await?;
    let rows = futures::future::join_all(writes.iter().map(|w| {
        let (tx, insert, update) = (&tx, &insert, &update);
        async move {
            let (t, id): (&str, &str) = (&w.actor_type, &w.id);
            let state: &[u8] = &w.state;
            let (e, v, c) = (i(w.owner.epoch), i(w.owner.version), i(w.owner.counter));
            if w.expected == 0 {
                tx.execute(insert, &[&cluster, &t, &id, &e, &v, &c, &state])
                    .await
            } else {
                let expected = i(w.expected);
                tx.execute(update, &[&cluster, &t, &id, &expected, &e, &v, &c, &state])
                    .await
            }
        }
    }))
    .await;
    let mut landed = Vec::with_capacity(writes.len());
    for (w, r) in writes.iter().zip(rows) {
        if r? == 1 {
            landed.push(Landed::Written);
            continue;
        }
        let (t, id): (&str, &str) = (&w.actor_type, &w.id);
        let stored = tx.query_opt(&load, &[&cluster, &t, &id]).await?;
        landed.push(Landed::Refused(Conflict {
            stored_version: stored.as_ref().map_or(0, |r| u(r.get(0))),
            stored_owner: stored.as_ref().map(|r| Generation {
                epoch: u(r.get(1)),
                version: u(r.get(2)),
                counter: u(r.get(3)),
            }),
        }));
    }
    tx.commit().await?;
    Ok(landed)
}

async fn load_row(
    pool: Pool,
    cluster: String,
    actor_type: String,
    id: String,
) -> Result<Option<StoredState>, DbFailure> {
    let client = pool.get().await?;
    let load = client.prepare_cached(schema::LOAD).await?;
    let row = client
        .query_opt(&load, &[&cluster, &actor_type, &id])
        .await?;
    Ok(row.map(|r| StoredState {
        version: u(r.get(0)),
        owner: Generation {
            epoch: u(r.get(1)),
            version: u(r.get(2)),
            counter: u(r.get(3)),
        },
        state: Bytes::from(r.get::<_, Vec<u8>>(4)),
    }))
}

impl StateStore for PostgresStore {
    fn load(
        &self,
        actor_type: &str,
        id: &str,
    ) -> StoreFuture<Result<Option<StoredState>, StoreError>> {
        let shared = self.shared.clone();
        let (actor_type, id) = (actor_type.to_owned(), id.to_owned());
        Box::pin(async move {
            let pool = shared.usable()?;
            let timeout = shared.settings.timeout;
            let r = tokio::time::timeout(
                timeout,
                load_row(pool, shared.settings.cluster.clone(), actor_type, id),
            )
            .await
            .unwrap_or_else(|_| Err(DbFailure::timeout("a load", timeout)));
            r.map_err(|f| {
                shared.failed(&f);
                unavailable(f.reason)
            })
        })
    }

    fn write(&self, w: StateWrite) -> StoreFuture<Result<(), StoreError>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            let limit = shared.settings.max_state_bytes;
            if w.state.len() > limit {
                return Err(StoreError::TooLarge {
                    size: w.state.len(),
                    limit,
                });
            }
            shared.usable()?;
            let (done, rx) = oneshot::channel();
            if let Err(e) = shared.queue.try_send(Pending { write: w, done }) {
                return Err(match e {
                    mpsc::error::TrySendError::Full(_) => {
                        shared.metrics.queue_full.inc();
                        unavailable(format!(
                            "the state store's commit queue is full ({} writes waiting)",
                            shared.settings.queue
                        ))
                    }
                    mpsc::error::TrySendError::Closed(_) => unavailable("the state store stopped"),
                });
            }
            let wait = shared.settings.timeout * 2;
            drop(shared);
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(unavailable("the state store stopped")),
                Err(_) => Err(unavailable(format!(
                    "no commit within {wait:?}; the write may or may not have landed"
                ))),
            }
        })
    }

    fn delete(
        &self,
        actor_type: &str,
        id: &str,
        expected: u64,
        owner: Generation,
    ) -> StoreFuture<Result<(), StoreError>> {
        let shared = self.shared.clone();
        let (actor_type, id) = (actor_type.to_owned(), id.to_owned());
        Box::pin(async move {
            if expected == 0 {
                return Ok(());
            }
            let pool = shared.usable()?;
            let cluster = shared.settings.cluster.clone();
            let run = async {
                let client = pool.get().await?;
                let del = client.prepare_cached(schema::DELETE).await?;
                let (e, v, c, x) = (
                    i(owner.epoch),
                    i(owner.version),
                    i(owner.counter),
                    i(expected),
                );
                let n = client
                    .execute(&del, &[&cluster, &actor_type, &id, &x, &e, &v, &c])
                    .await?;
                if n == 1 {
                    return Ok(Ok(()));
                }
                let load = client.prepare_cached(schema::LOAD).await?;
                let stored = client
                    .query_opt(&load, &[&cluster, &actor_type, &id])
                    .await?;
                Ok::<_, DbFailure>(Err(StoreError::Conflict(Conflict {
                    stored_version: stored.as_ref().map_or(0, |r| u(r.get(0))),
                    stored_owner: stored.as_ref().map(|r| Generation {
                        epoch: u(r.get(1)),
                        version: u(r.get(2)),
                        counter: u(r.get(3)),
                    }),
                })))
            };
            let timeout = shared.settings.timeout;
            match tokio::time::timeout(timeout, run).await {
                Ok(Ok(r)) => r,
                Ok(Err(f)) => {
                    shared.failed(&f);
                    Err(unavailable(f.reason))
                }
                Err(_) => Err(unavailable(DbFailure::timeout("a delete", timeout).reason)),
            }
        })
    }

    fn max_state_bytes(&self) -> usize {
        self.shared.settings.max_state_bytes
    }

    fn kind(&self) -> &'static str {
        "postgres"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        move |k| m.get(k).cloned()
    }

    #[test]
    fn the_mode_comes_from_the_environment() {
        assert!(
            Settings::from_env("ns/orders", env(&[]))
                .expect("unset")
                .is_none()
        );
        assert!(
            Settings::from_env("ns/orders", env(&[("TROUPE_STATE_STORE", "memory")]))
                .expect("memory")
                .is_none()
        );
        let s = Settings::from_env(
            "ns/orders",
            env(&[
                ("TROUPE_STATE_STORE", "postgres"),
                ("TROUPE_STATE_POSTGRES_FILE", "/etc/troupe/postgres/url"),
                ("TROUPE_STATE_MAX_BYTES", "4096"),
            ]),
        )
        .expect("postgres")
        .expect("some");
        assert_eq!(s.source, Source::File("/etc/troupe/postgres/url".into()));
        assert_eq!(s.max_state_bytes, 4096);
        let e = Settings::from_env("ns/orders", env(&[("TROUPE_STATE_STORE", "postgres")]))
            .expect_err("no source");
        assert!(e.to_string().contains("TROUPE_STATE_POSTGRES_FILE"), "{e}");
        let e = Settings::from_env("ns/orders", env(&[("TROUPE_STATE_STORE", "redis")]))
            .expect_err("unknown");
        assert!(e.to_string().contains("memory or postgres"), "{e}");
        let e = Settings::from_env(
            "ns/orders",
            env(&[
                ("TROUPE_STATE_STORE", "postgres"),
                ("TROUPE_STATE_POSTGRES_URL", "postgresql://x@h/db"),
                ("TROUPE_STATE_MAX_BYTES", "0"),
            ]),
        )
        .expect_err("zero");
        assert!(e.to_string().contains("TROUPE_STATE_MAX_BYTES"), "{e}");
    }

    #[test]
    fn a_connection_string_never_shows_in_debug_output() {
        let s = Settings::new(
            "ns/orders",
            Source::Url("postgresql://u:secret@h/db".into()),
        );
        assert!(!format!("{s:?}").contains("secret"));
    }

    #[test]
    fn bad_connection_strings_and_missing_files_say_what_to_fix() {
        let e = pg_config("postgresql://u@h:notaport/db", Duration::from_secs(1)).expect_err("bad");
        assert!(
            e.contains("postgresql://user:password@host:port/database"),
            "{e}"
        );
        let e = connection_string(&Source::File("/nonexistent/troupe/url".into()))
            .expect_err("missing");
        assert!(e.contains("Secret"), "{e}");
    }
}
