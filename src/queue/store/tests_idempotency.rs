//! Tests for idempotency keys in the job store (claimed with their job, looked up,
//! expired, purged, kept across a reopen and a migration from version 2) and for what
//! the sender is told about a part being its job's only one.

use super::tests::{bulk, downgraded, id, open, reopen, single, ALICE, BOB, T0};
use super::*;

const HOUR: i64 = 3_600_000;

/// `job` carrying key `key` for a request hashing to `hash`, claims older than an hour
/// before `now` expired.
fn keyed(mut job: NewJob, key: &str, hash: u8) -> NewJob {
    job.idempotency = Some(NewIdempotency {
        key: key.into(),
        body_hash: vec![hash; 32],
        not_before: job.now_ms - HOUR,
    });
    job
}

fn record(job: &str, hash: u8, created_at: i64) -> IdempotencyRecord {
    IdempotencyRecord {
        job_id: job.into(),
        body_hash: vec![hash; 32],
        created_at,
    }
}

#[tokio::test]
async fn a_key_claims_one_job_per_owner_and_names_it_after() {
    let (_dir, store) = open();
    let first = store
        .insert_job(keyed(single(&id(1), ALICE, T0), "k", 1))
        .await
        .expect("insert");
    assert_eq!(first, Inserted::New);
    // The same key again, whatever the request: nothing is stored, the first job named.
    for hash in [1, 2] {
        let again = store
            .insert_job(keyed(single(&id(2), ALICE, T0 + 5), "k", hash))
            .await
            .expect("insert");
        assert_eq!(again, Inserted::Existing(record(&id(1), 1, T0)));
    }
    assert_eq!(store.job(&id(2), ALICE).await.expect("read"), None);
    assert_eq!(store.unfinished().await.expect("unfinished").len(), 1);
    let found = store
        .idempotent_job(ALICE, "k", T0 - HOUR)
        .await
        .expect("lookup");
    assert_eq!(found, Some(record(&id(1), 1, T0)));
    // Keys are per owner, and exact.
    assert_eq!(
        store.idempotent_job(BOB, "k", 0).await.expect("lookup"),
        None
    );
    assert_eq!(
        store.idempotent_job(ALICE, "K", 0).await.expect("lookup"),
        None
    );
    let bobs = store
        .insert_job(keyed(single(&id(3), BOB, T0), "k", 1))
        .await
        .expect("insert");
    assert_eq!(bobs, Inserted::New);
}

#[tokio::test]
async fn concurrent_first_sends_with_one_key_make_one_job() {
    let (_dir, store) = open();
    let (a, b) = tokio::join!(
        store.insert_job(keyed(single(&id(1), ALICE, T0), "k", 1)),
        store.insert_job(keyed(single(&id(2), ALICE, T0), "k", 1)),
    );
    let (a, b) = (a.expect("a"), b.expect("b"));
    let winner = match (&a, &b) {
        (Inserted::New, Inserted::Existing(r)) => {
            assert_eq!(r.job_id, id(1));
            id(1)
        }
        (Inserted::Existing(r), Inserted::New) => {
            assert_eq!(r.job_id, id(2));
            id(2)
        }
        other => panic!("exactly one must win: {other:?}"),
    };
    let jobs = store.list_jobs(ALICE, None, 10, None).await.expect("list");
    assert_eq!(jobs.iter().map(|j| &j.id).collect::<Vec<_>>(), [&winner]);
}

#[tokio::test]
async fn an_expired_key_is_ignored_and_claimed_anew() {
    let (_dir, store) = open();
    store
        .insert_job(keyed(single(&id(1), ALICE, T0), "k", 1))
        .await
        .expect("insert");
    assert_eq!(
        store
            .idempotent_job(ALICE, "k", T0 + 1)
            .await
            .expect("lookup"),
        None
    );
    let later = T0 + 2 * HOUR;
    let again = store
        .insert_job(keyed(single(&id(2), ALICE, later), "k", 2))
        .await
        .expect("insert");
    assert_eq!(again, Inserted::New);
    let found = store
        .idempotent_job(ALICE, "k", later - HOUR)
        .await
        .expect("lookup");
    assert_eq!(found, Some(record(&id(2), 2, later)));
    // Both jobs exist: the first is not touched by its key's expiry.
    assert!(store.job(&id(1), ALICE).await.expect("read").is_some());
}

#[tokio::test]
async fn a_job_refused_by_the_store_claims_no_key() {
    let (_dir, store) = open();
    store
        .insert_job(single(&id(1), ALICE, T0))
        .await
        .expect("insert");
    // A duplicate id fails the insert: the key claimed in its savepoint goes with it.
    let dup = store
        .insert_job(keyed(single(&id(1), ALICE, T0), "k", 1))
        .await;
    assert!(matches!(dup, Err(StoreError::Sqlite(_))), "{dup:?}");
    let mut no_parts = keyed(single(&id(2), ALICE, T0), "k", 1);
    no_parts.parts.clear();
    let refused = store.insert_job(no_parts).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    assert_eq!(
        store.idempotent_job(ALICE, "k", 0).await.expect("lookup"),
        None
    );
}

#[tokio::test]
async fn expired_keys_are_purged_oldest_first_in_bounded_batches() {
    let (_dir, store) = open();
    for n in 0..5 {
        let job = keyed(
            single(&id(n), ALICE, T0 + i64::from(n)),
            &format!("k{n}"),
            1,
        );
        store.insert_job(job).await.expect("insert");
    }
    assert_eq!(store.purge_idempotency(T0 + 3, 2).await.expect("purge"), 2);
    assert_eq!(store.purge_idempotency(T0 + 3, 2).await.expect("purge"), 1);
    assert_eq!(store.purge_idempotency(T0 + 3, 2).await.expect("purge"), 0);
    for n in 0..5 {
        let found = store
            .idempotent_job(ALICE, &format!("k{n}"), 0)
            .await
            .expect("lookup");
        assert_eq!(found.is_some(), n >= 3, "k{n}");
    }
    // Purging forgets keys, never jobs.
    assert_eq!(
        store
            .list_jobs(ALICE, None, 10, None)
            .await
            .expect("list")
            .len(),
        5
    );
}

#[tokio::test]
async fn keys_survive_a_reopen() {
    let (dir, store) = open();
    store
        .insert_job(keyed(single(&id(1), ALICE, T0), "k", 7))
        .await
        .expect("insert");
    drop(store);
    let store = reopen(&dir);
    let found = store.idempotent_job(ALICE, "k", 0).await.expect("lookup");
    assert_eq!(found, Some(record(&id(1), 7, T0)));
}

#[tokio::test]
async fn a_version_2_database_is_migrated_in_place() {
    let (dir, store) = open();
    store
        .insert_job(single(&id(1), ALICE, T0))
        .await
        .expect("insert");
    drop(store);
    // Back to what version 2 had: no idempotency table.
    let store = downgraded(
        &dir,
        "DROP TABLE idempotency; DROP INDEX IF EXISTS idempotency_created;
         PRAGMA user_version = 2;",
    );
    let kept = store.job(&id(1), ALICE).await.expect("read").map(|j| j.id);
    assert_eq!(kept, Some(id(1)));
    let keyed_job = store
        .insert_job(keyed(single(&id(2), ALICE, T0), "k", 1))
        .await
        .expect("the idempotency table exists");
    assert_eq!(keyed_job, Inserted::New);
    drop(store);
    let conn = rusqlite::Connection::open(dir.path().join("data").join(DB_FILE)).expect("open");
    let version: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .expect("version");
    assert_eq!(version, super::schema::VERSION);
    let indexed: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'idempotency_created'",
            [],
            |r| r.get(0),
        )
        .expect("index");
    assert_eq!(indexed, 1);
}

#[tokio::test]
async fn the_sender_knows_when_a_part_is_its_jobs_only_one() {
    let (_dir, store) = open();
    store
        .insert_job(single(&id(1), ALICE, T0))
        .await
        .expect("insert");
    let (three, _) = bulk(&id(2), ALICE, 9, 3, T0 + 1);
    store.insert_job(three).await.expect("insert");
    let (one, layout) = bulk(&id(3), ALICE, 4, 4, T0 + 2);
    store.insert_job(one).await.expect("insert");
    let sole = |parts: &[Dispatchable]| -> Vec<(String, bool)> {
        parts.iter().map(|p| (p.job_id.clone(), p.sole)).collect()
    };
    let all = store.unfinished().await.expect("unfinished");
    assert_eq!(
        sole(&all),
        [
            (id(1), true),
            (id(2), false),
            (id(2), false),
            (id(2), false),
            (id(3), true)
        ]
    );
    // Split, the pieces are parts of several.
    let piece = |r: Range<usize>| NewPart {
        bytes: layout.items[r.start].start as u64..layout.items[r.end - 1].end as u64,
        items: r.start as u64..r.end as u64,
    };
    let seqs = store
        .split_part(&id(3), 0, vec![piece(0..2), piece(2..4)], T0 + 3)
        .await
        .expect("split");
    let pieces = store.dispatchable(&id(3), &seqs).await.expect("read");
    assert_eq!(sole(&pieces), [(id(3), false), (id(3), false)]);
}
