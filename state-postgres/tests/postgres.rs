//! The PostgreSQL store against a real, throwaway PostgreSQL (no mock): schema on first
//! use, fenced writes in SQL, group commit of many writers, wrong credentials, the
//! database stopped and started again under a running store.

mod common;

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use common::{PASSWORD, TestPostgres};
use troupe_actors::{
    activation::Generation,
    store::{StateStore, StateWrite, StoreError},
};
use troupe_state_postgres::{PostgresStore, Settings, Source, Status};

fn g(version: u64, counter: u64) -> Generation {
    Generation {
        epoch: 0,
        version,
        counter,
    }
}

fn write(id: &str, expected: u64, owner: Generation, state: &str) -> StateWrite {
    StateWrite {
        actor_type: "counter".into(),
        id: id.into(),
        expected,
        owner,
        state: Bytes::copy_from_slice(state.as_bytes()),
    }
}

async fn store(url: String) -> PostgresStore {
    store_of("test/one", url).await
}

async fn store_of(cluster: &str, url: String) -> PostgresStore {
    let mut s = Settings::new(cluster, Source::Url(url));
    s.max_state_bytes = 1024;
    s.timeout = Duration::from_secs(2);
    PostgresStore::start(s, &prometheus::Registry::new()).expect("store")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fenced_writes_group_commit_and_recovery_on_a_real_database() {
    let pg = TestPostgres::start();

    // Wrong credentials: a clear reason, no panic, every call refused.
    let wrong = store(pg.url("not-the-password")).await;
    let status = wrong.wait_up(Duration::from_secs(5)).await;
    match &status {
        Status::Down(reason) => assert!(reason.contains("credentials"), "{reason}"),
        other => panic!("wrong credentials should leave the store down, got {other:?}"),
    }
    assert!(matches!(
        wrong.write(write("x", 0, g(1, 1), "1")).await,
        Err(StoreError::Unavailable { .. })
    ));
    drop(wrong);

    let s = store(pg.url(PASSWORD)).await;
    assert_eq!(
        s.wait_up(Duration::from_secs(10)).await,
        Status::Up,
        "schema created on first use"
    );
    assert_eq!(s.load("counter", "a").await, Ok(None));
    s.write(write("a", 0, g(1, 1), "one"))
        .await
        .expect("first write");
    // Two activations that both read version 1: the first lands, the second is refused.
    s.write(write("a", 1, g(1, 1), "two"))
        .await
        .expect("second write");
    assert!(matches!(
        s.write(write("a", 1, g(1, 2), "two'")).await,
        Err(StoreError::Conflict(c)) if c.stored_version == 2
    ));
    // A newer owner takes over; the older one cannot write after it.
    s.write(write("a", 2, g(2, 1), "three"))
        .await
        .expect("newer owner");
    assert!(matches!(
        s.write(write("a", 3, g(1, 1), "four'")).await,
        Err(StoreError::Conflict(_))
    ));
    // A first write on an actor that has a row is refused too.
    assert!(matches!(
        s.write(write("a", 0, g(3, 1), "zero'")).await,
        Err(StoreError::Conflict(_))
    ));
    let a = s.load("counter", "a").await.expect("load").expect("row");
    assert_eq!(
        (a.version, a.owner, &a.state[..]),
        (3, g(2, 1), &b"three"[..])
    );
    assert!(matches!(
        s.write(write("a", 3, g(2, 1), &"x".repeat(2000))).await,
        Err(StoreError::TooLarge { .. })
    ));

    // Many actors writing at once: every write lands once, in its actor's order.
    let s = Arc::new(s);
    let writers: Vec<_> = (0..64)
        .map(|n| {
            let s = s.clone();
            tokio::spawn(async move {
                for v in 0..20u64 {
                    s.write(write(&format!("w{n}"), v, g(1, 1), &(v + 1).to_string()))
                        .await
                        .expect("write");
                }
            })
        })
        .collect();
    for w in writers {
        w.await.expect("writer");
    }
    for n in 0..64 {
        let row = s
            .load("counter", &format!("w{n}"))
            .await
            .expect("load")
            .expect("row");
        assert_eq!((row.version, &row.state[..]), (20, &b"20"[..]));
    }

    // Another cluster on the same database has its own rows.
    let other = store_of("test/two", pg.url(PASSWORD)).await;
    assert_eq!(other.wait_up(Duration::from_secs(10)).await, Status::Up);
    assert_eq!(other.load("counter", "a").await, Ok(None));
    drop(other);

    // The database goes away: calls are refused (nothing acknowledged), and the same
    // store works again once it is back, without a restart.
    pg.stop();
    let refused = s.write(write("a", 3, g(2, 1), "four")).await;
    assert!(
        matches!(refused, Err(StoreError::Unavailable { .. })),
        "{refused:?}"
    );
    pg.restart();
    let mut healed = false;
    for _ in 0..100 {
        match s.write(write("a", 3, g(2, 1), "four")).await {
            Ok(()) => {
                healed = true;
                break;
            }
            Err(StoreError::Unavailable { .. }) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("unexpected {e}"),
        }
    }
    assert!(healed, "the store came back by itself: {:?}", s.status());
    let a = s.load("counter", "a").await.expect("load").expect("row");
    assert_eq!((a.version, &a.state[..]), (4, &b"four"[..]));
}
