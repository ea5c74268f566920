//! The table layout and the statements, created by the node on first use.
//!
//! ```text
//!  troupe_actor_state                           one row per actor that has a state
//!   cluster              text    ┐ primary key; cluster is `<namespace>/<ActorCluster>`, so
//!   actor_type           text    │ several clusters may share one database
//!   actor_id             text    ┘
//!   version              bigint  writes so far (1 after the first): the fencing version
//!   owner_epoch          bigint  ┐ the Generation of the activation that wrote it:
//!   owner_table_version  bigint  │ member-table epoch and version it was activated
//!   owner_counter        bigint  ┘ under, then a counter (compared as a row)
//!   state                bytea   the actor's state (empty: none)
//!   updated_at           timestamptz
//!
//!  troupe_schema                                the layout version (one row)
//!   version              integer
//! ```
//!
//! Several nodes may start at once: creation runs under a transaction-scoped advisory
//! lock, so exactly one creates and the others find it. A later layout adds a version and
//! its migration here; a node refuses a database whose layout is newer than it knows.

/// The layout this code writes.
pub const LAYOUT_VERSION: i32 = 1;

/// Advisory lock key for schema creation ("troupe" in ASCII).
const SCHEMA_LOCK: i64 = 0x74_72_6f_75_70_65;

/// Creates the tables if they are missing; errors if the layout is newer than this code's.
pub async fn ensure(client: &mut tokio_postgres::Client) -> Result<(), SchemaError> {
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&SCHEMA_LOCK])
        .await?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS troupe_schema (version integer NOT NULL);
         CREATE TABLE IF NOT EXISTS troupe_actor_state (
             cluster text NOT NULL,
             actor_type text NOT NULL,
             actor_id text NOT NULL,
             version bigint NOT NULL,
             owner_epoch bigint NOT NULL,
             owner_table_version bigint NOT NULL,
             owner_counter bigint NOT NULL,
             state bytea NOT NULL,
             updated_at timestamptz NOT NULL DEFAULT now(),
             PRIMARY KEY (cluster, actor_type, actor_id)
         );",
    )
    .await?;
    let found: Option<i32> = tx
        .query_opt("SELECT max(version) FROM troupe_schema", &[])
        .await?
        .and_then(|r| r.get(0));
    match found {
        None => {
            tx.execute(
                "INSERT INTO troupe_schema (version) VALUES ($1)",
                &[&LAYOUT_VERSION],
            )
            .await?;
        }
        Some(v) if v > LAYOUT_VERSION => return Err(SchemaError::Newer(v)),
        Some(_) => {}
    }
    tx.commit().await?;
    Ok(())
}

/// Why the schema could not be made ready.
#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] tokio_postgres::Error),
    /// A newer node version migrated the database.
    #[error(
        "the database's troupe_schema is version {0}, newer than this node's {LAYOUT_VERSION}: run a node image at least as new as the one that migrated it"
    )]
    Newer(i32),
}

/// The stored row of one actor: `$1` cluster, `$2` type, `$3` id.
pub const LOAD: &str = "SELECT version, owner_epoch, owner_table_version, owner_counter, state \
     FROM troupe_actor_state WHERE cluster = $1 AND actor_type = $2 AND actor_id = $3";

/// A first write: lands only if nothing is stored (the fence's version 0). `$4..$6` the
/// owner, `$7` the state.
pub const INSERT: &str = "INSERT INTO troupe_actor_state \
     (cluster, actor_type, actor_id, version, owner_epoch, owner_table_version, owner_counter, state) \
     VALUES ($1, $2, $3, 1, $4, $5, $6, $7) ON CONFLICT (cluster, actor_type, actor_id) DO NOTHING";

/// A later write: lands only on the version read (`$4`), from an owner (`$5..$7`) not
/// older than the stored one (the fence, `troupe_actors::store::fence`); `$8` the state.
pub const UPDATE: &str = "UPDATE troupe_actor_state SET version = version + 1, \
     owner_epoch = $5, owner_table_version = $6, owner_counter = $7, state = $8, updated_at = now() \
     WHERE cluster = $1 AND actor_type = $2 AND actor_id = $3 AND version = $4 \
     AND (owner_epoch, owner_table_version, owner_counter) <= ($5, $6, $7)";

/// A fenced delete: version `$4`, owner `$5..$7`.
pub const DELETE: &str = "DELETE FROM troupe_actor_state \
     WHERE cluster = $1 AND actor_type = $2 AND actor_id = $3 AND version = $4 \
     AND (owner_epoch, owner_table_version, owner_counter) <= ($5, $6, $7)";
