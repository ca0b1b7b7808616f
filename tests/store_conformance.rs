//! The job store's contract, run against both backends: a SQLite file in a temp dir and a
//! real PostgreSQL (Debian's, started by the test in a temp dir). Each scenario gets a
//! fresh store (a fresh dir, or a fresh database); a scenario that fails names itself and
//! the backend.
//!
//! Beyond the shared contract, the PostgreSQL-only tests check what a cluster adds:
//! instances claiming concurrently never take a part twice, an expired lease is taken over,
//! the cluster probe of a key goes to one instance, and a database outage fails calls
//! loudly and heals when the database returns.

mod common;

use std::ops::Range;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::pg::PgCluster;
use sluice::queue::store::pg::PgOptions;
use sluice::queue::store::{
    Dispatchable, Inserted, JobState, KeyRecord, NewIdempotency, NewJob, NewPart, PartState, Retry,
    Store, StoreError, StoredResponse, Synchronous,
};
use sluice::split;

const ALICE: &str = "alice-fingerprint";
const BOB: &str = "bob-fingerprint";
const T0: i64 = 1_700_000_000_000;
/// The PostgreSQL lease in these tests.
const LEASE_MS: i64 = 30_000;

/// Where a scenario's store lives.
enum Bed {
    Sqlite(tempfile::TempDir),
    Postgres(String),
}

impl Bed {
    async fn open(&self) -> Store {
        match self {
            Bed::Sqlite(dir) => Store::open(&dir.path().join("data"), Synchronous::Full)
                .expect("the SQLite store opens"),
            Bed::Postgres(url) => Store::open_postgres(&pg_options(url))
                .await
                .expect("the PostgreSQL store opens"),
        }
    }
}

fn pg_options(url: &str) -> PgOptions {
    PgOptions {
        url: url.to_owned(),
        pool_size: 8,
        lease: Duration::from_millis(LEASE_MS as u64),
    }
}

fn id(n: u32) -> String {
    format!("{n:032x}")
}

fn single(id: &str, owner: &str, now: i64) -> NewJob {
    let body = Bytes::from(format!(r#"{{"to":"+38970000001","text":"job {id}"}}"#));
    NewJob {
        id: id.to_owned(),
        owner: owner.to_owned(),
        api_key: Some(b"client-key".to_vec()),
        route: "sms".into(),
        method: "POST".into(),
        path: "/sms/send?x=1".into(),
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            ("x-custom".into(), vec![0, 255, b'a']),
        ],
        parts: vec![NewPart {
            items: 0..1,
            bytes: 0..body.len() as u64,
        }],
        body,
        array: None,
        skipped: None,
        idempotency: None,
        now_ms: now,
    }
}

/// A bulk job of `n` recipients in parts of at most `max`, and each recipient's JSON.
fn bulk(id: &str, owner: &str, n: usize, max: usize, now: i64) -> (NewJob, Vec<String>) {
    let mut body = br#"{"sender":"Sluice","text":"Hi","recipients":["#.to_vec();
    let mut items = Vec::new();
    for i in 0..n {
        if i > 0 {
            body.extend_from_slice(b", ");
        }
        let item = format!(r#"{{"phone":"+3897{i:07}"}}"#);
        body.extend_from_slice(item.as_bytes());
        items.push(item);
    }
    body.extend_from_slice(br#"],"channel":"sms"}"#);
    let layout = split::scan(&body, "/recipients", |_, _| {}).expect("scan");
    let part = |r: Range<usize>| NewPart {
        bytes: layout.items[r.start].start as u64..layout.items[r.end - 1].end as u64,
        items: r.start as u64..r.end as u64,
    };
    let job = NewJob {
        parts: split::chunks(n, max).map(part).collect(),
        array: Some(layout.array.start as u64..layout.array.end as u64),
        route: "bulk".into(),
        path: "/sms/bulk".into(),
        api_key: None,
        body: Bytes::from(body),
        ..single(id, owner, now)
    };
    (job, items)
}

fn retry(status: Option<u16>, next: i64, count: bool) -> Retry {
    Retry {
        last_status: status,
        last_error: status.map(|s| format!("upstream answered {s}")),
        next_attempt_at: next,
        count_attempt: count,
        reconcile_from: None,
        blind_resends: 0,
    }
}

fn ok_response() -> StoredResponse {
    StoredResponse {
        status: 200,
        headers: vec![("content-type".into(), b"application/json".to_vec())],
        body: br#"{"id":"m-1"}"#.to_vec(),
    }
}

async fn owner_no(store: &Store, owner: &str) -> i64 {
    store
        .owner_no(owner)
        .await
        .expect("owner_no")
        .expect("the owner has jobs")
}

async fn part_states(store: &Store, job: &str, owner: &str) -> Vec<PartState> {
    let job = store.job(job, owner).await.expect("job").expect("exists");
    job.parts.iter().map(|p| p.state).collect()
}

/// The job counts of `stats` equal a fresh count of every job the owners have.
async fn assert_stats_match(store: &Store, owners: &[&str]) {
    let mut by_state = std::collections::HashMap::<JobState, u64>::new();
    for owner in owners {
        for job in store
            .list_jobs(owner, None, 10_000, None)
            .await
            .expect("list")
        {
            *by_state.entry(job.state).or_default() += 1;
        }
    }
    let stats = store.stats(T0).await.expect("stats");
    for (state, n) in &stats.jobs {
        assert_eq!(
            by_state.get(state).copied().unwrap_or(0),
            *n,
            "stats count of {state:?} jobs"
        );
    }
}

// --- the scenarios ------------------------------------------------------------------

/// A bulk job round-trips: its parts, counts, bodies; other owners see nothing.
async fn round_trip(bed: &Bed) {
    let store = bed.open().await;
    let (job, items) = bulk(&id(1), ALICE, 10, 4, T0);
    assert_eq!(store.insert_job(job).await.expect("insert"), Inserted::New);
    let record = store.job(&id(1), ALICE).await.unwrap().expect("the job");
    assert_eq!(record.state, JobState::Queued);
    assert_eq!(record.recipients, 10);
    assert_eq!(record.counts.queued, 3);
    let ranges: Vec<_> = record.parts.iter().map(|p| p.items.clone()).collect();
    assert_eq!(ranges, vec![0..4, 4..8, 8..10]);
    let second = &record.parts[1];
    let body = store.part_body(&id(1), second.bytes.clone()).await.unwrap();
    let expected = format!(
        r#"{{"sender":"Sluice","text":"Hi","recipients":[{}],"channel":"sms"}}"#,
        items[4..8].join(", ")
    );
    assert_eq!(String::from_utf8_lossy(&body), expected);
    assert!(
        store.job(&id(1), BOB).await.unwrap().is_none(),
        "Bob sees Alice's job"
    );
    assert!(store
        .list_jobs(BOB, None, 10, None)
        .await
        .unwrap()
        .is_empty());

    let single_job = single(&id(2), ALICE, T0 + 1);
    let whole = single_job.body.clone();
    store.insert_job(single_job).await.unwrap();
    assert_eq!(store.part_body(&id(2), 0..0).await.unwrap(), whole);
    let page = store.list_jobs(ALICE, None, 1, None).await.unwrap();
    assert_eq!(page[0].id, id(2), "newest first");
    let rest = store
        .list_jobs(
            ALICE,
            None,
            10,
            Some((page[0].created_at, page[0].id.clone())),
        )
        .await
        .unwrap();
    assert_eq!(
        rest.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        vec![id(1)]
    );
    let dup = store.insert_job(single(&id(2), ALICE, T0)).await;
    assert!(dup.is_err(), "a duplicate job id is refused: {dup:?}");
    assert_stats_match(&store, &[ALICE, BOB]).await;
}

/// Parts go through their states; a 429 does not count as an attempt; the job's state
/// follows; the client's key is kept while the job is open.
async fn part_life(bed: &Bed) {
    let store = bed.open().await;
    let (job, _) = bulk(&id(1), ALICE, 6, 2, T0);
    store.insert_job(job).await.unwrap();
    let owner = owner_no(&store, ALICE).await;
    let claimed = store.claim(owner, T0, 10).await.unwrap();
    assert_eq!(
        claimed.iter().map(|d| d.seq).collect::<Vec<_>>(),
        vec![0, 1, 2]
    );
    for d in &claimed {
        store
            .mark_in_flight(&d.job_id, d.seq, T0 + 1)
            .await
            .unwrap();
    }
    // 0: a 429, then success; 1: a 500 (counted) then failure; 2: success.
    let state = store
        .schedule_retry(&id(1), 0, retry(Some(429), T0 + 5_000, false), T0 + 2)
        .await
        .unwrap();
    assert_eq!(state, PartState::Queued);
    store
        .schedule_retry(&id(1), 1, retry(Some(500), T0 + 1_000, true), T0 + 2)
        .await
        .unwrap();
    store
        .finish_part(
            &id(1),
            2,
            PartState::Succeeded,
            Some(ok_response()),
            None,
            T0 + 3,
        )
        .await
        .unwrap();
    let job = store.job(&id(1), ALICE).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::InProgress);
    assert_eq!(job.parts[0].attempts, 0, "a 429 is not an attempt");
    assert_eq!(job.parts[1].attempts, 1);
    assert_eq!(job.parts[0].next_attempt_at, Some(T0 + 5_000));
    assert_eq!(job.parts[2].response, Some(ok_response()));

    // Not due yet: nothing to claim; due: claimed again.
    assert!(store.claim(owner, T0 + 500, 10).await.unwrap().is_empty());
    assert_eq!(store.next_due(owner).await.unwrap(), Some(T0 + 1_000));
    let again = store.claim(owner, T0 + 6_000, 10).await.unwrap();
    assert_eq!(again.iter().map(|d| d.seq).collect::<Vec<_>>(), vec![1, 0]);
    store
        .finish_part(
            &id(1),
            0,
            PartState::Succeeded,
            Some(ok_response()),
            None,
            T0 + 7,
        )
        .await
        .unwrap();
    store
        .finish_part(
            &id(1),
            1,
            PartState::Failed,
            None,
            Some("gave up".into()),
            T0 + 7,
        )
        .await
        .unwrap();
    let job = store.job(&id(1), ALICE).await.unwrap().unwrap();
    assert_eq!(job.state, JobState::PartiallyFailed);
    assert_eq!(job.counts.succeeded, 2);
    assert_eq!(job.counts.failed, 1);
    let wrong = store
        .finish_part(&id(1), 1, PartState::Succeeded, None, None, T0 + 8)
        .await;
    assert!(
        matches!(wrong, Err(StoreError::WrongState(PartState::Failed))),
        "a final part does not change: {wrong:?}"
    );
    assert!(matches!(
        store.mark_in_flight(&id(9), 0, T0).await,
        Err(StoreError::NotFound)
    ));
    assert_eq!(store.backlog().await.unwrap(), (0, 0));
    assert_stats_match(&store, &[ALICE]).await;
}

/// A split replaces a part by pieces that cover it; anything else is refused.
async fn split(bed: &Bed) {
    let store = bed.open().await;
    let (job, items) = bulk(&id(1), ALICE, 8, 8, T0);
    let whole = job.parts[0].clone();
    store.insert_job(job).await.unwrap();
    let record = store.job(&id(1), ALICE).await.unwrap().unwrap();
    let bytes_of = |r: Range<u64>| -> Range<u64> {
        // The byte ranges of the elements, found in the part body of the whole.
        let first = record.parts[0].bytes.start;
        let offsets: Vec<u64> = items
            .iter()
            .scan(first, |at, item| {
                let start = *at;
                *at += item.len() as u64 + 2;
                Some(start)
            })
            .collect();
        offsets[r.start as usize]
            ..offsets[r.end as usize - 1] + items[r.end as usize - 1].len() as u64
    };
    let gap = vec![
        NewPart {
            items: 0..3,
            bytes: bytes_of(0..3),
        },
        NewPart {
            items: 4..8,
            bytes: bytes_of(4..8),
        },
    ];
    let refused = store.split_part(&id(1), 0, gap, T0 + 1).await;
    assert!(
        matches!(refused, Err(StoreError::Invalid(_))),
        "{refused:?}"
    );
    let pieces = vec![
        NewPart {
            items: 0..5,
            bytes: bytes_of(0..5),
        },
        NewPart {
            items: 5..8,
            bytes: bytes_of(5..8),
        },
    ];
    assert_eq!(pieces[0].bytes.start, whole.bytes.start);
    assert_eq!(pieces[1].bytes.end, whole.bytes.end);
    let seqs = store.split_part(&id(1), 0, pieces, T0 + 1).await.unwrap();
    assert_eq!(seqs.len(), 2);
    let job = store.job(&id(1), ALICE).await.unwrap().unwrap();
    assert_eq!(job.parts.len(), 2);
    assert_eq!(job.parts[0].items, 0..5);
    let body = store
        .part_body(&id(1), job.parts[1].bytes.clone())
        .await
        .unwrap();
    assert!(String::from_utf8_lossy(&body).contains(&items[7]));
    let ready = store.dispatchable(&id(1), &seqs).await.unwrap();
    assert_eq!(
        ready.iter().map(|d| d.items.clone()).collect::<Vec<_>>(),
        vec![0..5, 5..8]
    );
    assert_stats_match(&store, &[ALICE]).await;
}

/// Cancel stops queued parts; retry_failed queues failed parts again.
async fn cancel_and_retry(bed: &Bed) {
    let store = bed.open().await;
    let (job, _) = bulk(&id(1), ALICE, 4, 1, T0);
    store.insert_job(job).await.unwrap();
    store.mark_in_flight(&id(1), 0, T0).await.unwrap();
    assert!(
        store.cancel_job(&id(1), BOB, T0).await.unwrap().is_none(),
        "not Bob's"
    );
    let (recipients, _) = store
        .cancel_job(&id(1), ALICE, T0 + 1)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(recipients, 3);
    assert_eq!(
        part_states(&store, &id(1), ALICE).await,
        vec![
            PartState::InFlight,
            PartState::Cancelled,
            PartState::Cancelled,
            PartState::Cancelled
        ]
    );
    store
        .finish_part(
            &id(1),
            0,
            PartState::Succeeded,
            Some(ok_response()),
            None,
            T0 + 2,
        )
        .await
        .unwrap();
    assert_eq!(
        store.job(&id(1), ALICE).await.unwrap().unwrap().state,
        JobState::PartiallyFailed
    );

    let (job, _) = bulk(&id(2), ALICE, 3, 1, T0);
    store.insert_job(job).await.unwrap();
    for seq in 0..3 {
        store.mark_in_flight(&id(2), seq, T0).await.unwrap();
    }
    store
        .finish_part(
            &id(2),
            0,
            PartState::Failed,
            None,
            Some("400".into()),
            T0 + 1,
        )
        .await
        .unwrap();
    store
        .finish_part(
            &id(2),
            1,
            PartState::Succeeded,
            Some(ok_response()),
            None,
            T0 + 1,
        )
        .await
        .unwrap();
    store
        .finish_part(
            &id(2),
            2,
            PartState::Failed,
            None,
            Some("400".into()),
            T0 + 1,
        )
        .await
        .unwrap();
    let seqs = store
        .retry_failed(&id(2), ALICE, Some(b"new-key".to_vec()), T0 + 2)
        .await
        .unwrap()
        .expect("Alice's job");
    assert_eq!(seqs, vec![0, 2]);
    let ready = store.dispatchable(&id(2), &seqs).await.unwrap();
    assert!(ready
        .iter()
        .all(|d| d.api_key.as_deref() == Some(&b"new-key"[..])));
    assert_eq!(
        store.job(&id(2), ALICE).await.unwrap().unwrap().state,
        JobState::InProgress
    );
    assert_stats_match(&store, &[ALICE]).await;
}

/// Of many concurrent sends with one idempotency key, exactly one makes a job.
async fn idempotency(bed: &Bed) {
    let store = Arc::new(bed.open().await);
    let mut tasks = Vec::new();
    for n in 0..12 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut job = single(&id(100 + n), ALICE, T0);
            job.idempotency = Some(NewIdempotency {
                key: "order-17".into(),
                body_hash: vec![7; 32],
                not_before: T0 - 1_000,
            });
            store.insert_job(job).await.expect("insert")
        }));
    }
    let mut new = 0;
    let mut named = std::collections::HashSet::new();
    for t in tasks {
        match t.await.unwrap() {
            Inserted::New => new += 1,
            Inserted::Existing(record) => {
                named.insert(record.job_id);
            }
        }
    }
    assert_eq!(new, 1, "exactly one job is made");
    assert_eq!(named.len(), 1, "the others all name that job");
    assert_eq!(
        store.list_jobs(ALICE, None, 100, None).await.unwrap().len(),
        1
    );
    let found = store
        .idempotent_job(ALICE, "order-17", T0 - 1_000)
        .await
        .unwrap()
        .expect("claimed");
    assert!(named.contains(&found.job_id));
    assert!(store
        .idempotent_job(BOB, "order-17", T0 - 1_000)
        .await
        .unwrap()
        .is_none());
    // An expired claim is replaced.
    let mut later = single(&id(200), ALICE, T0 + 100_000);
    later.idempotency = Some(NewIdempotency {
        key: "order-17".into(),
        body_hash: vec![8; 32],
        not_before: T0 + 50_000,
    });
    assert_eq!(store.insert_job(later).await.unwrap(), Inserted::New);
    assert_eq!(store.purge_idempotency(T0 + 200_000, 100).await.unwrap(), 1);
}

/// What was learned about a key survives a restart and is replaced, not added to.
async fn key_state(bed: &Bed) {
    let record = KeyRecord {
        key: ALICE.into(),
        cooling_until: Some(T0 + 60_000),
        max_allowed: Some(1000),
        available: Some(0),
        last_429: Some(StoredResponse {
            status: 429,
            headers: vec![("retry-after".into(), b"60".to_vec())],
            body: br#"{"retryAfterSeconds":60}"#.to_vec(),
        }),
        updated_at: T0,
    };
    {
        let store = bed.open().await;
        store.save_key(record.clone()).await.unwrap();
        store
            .save_key(KeyRecord {
                cooling_until: Some(T0 + 90_000),
                updated_at: T0 + 1,
                ..record.clone()
            })
            .await
            .unwrap();
    }
    let store = bed.open().await;
    let keys = store.keys().await.unwrap();
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].cooling_until, Some(T0 + 90_000));
    assert_eq!(keys[0].last_429, record.last_429);
}

/// What was open at a crash is there after it; a part in flight is found in flight, and
/// claimable by the next run (SQLite) or once its lease expired (PostgreSQL).
async fn crash_and_reopen(bed: &Bed) {
    {
        let store = bed.open().await;
        let (job, _) = bulk(&id(1), ALICE, 3, 1, T0);
        store.insert_job(job).await.unwrap();
        let owner = owner_no(&store, ALICE).await;
        let claimed = store.claim(owner, T0, 10).await.unwrap();
        assert_eq!(claimed.len(), 3);
        store.mark_in_flight(&id(1), 0, T0 + 1).await.unwrap();
        store
            .postpone(&id(1), 1, T0 + 2_000, Some(T0 - 5), 1, T0 + 1)
            .await
            .unwrap();
        // Dropped without finishing anything: a crash, as far as the store can tell.
    }
    let store = bed.open().await;
    let open: Vec<Dispatchable> = store.unfinished().await.unwrap();
    assert_eq!(open.len(), 3);
    let postponed = open.iter().find(|d| d.seq == 1).unwrap();
    assert_eq!(postponed.reconcile_from, Some(T0 - 5));
    assert_eq!(postponed.blind_resends, 1);
    assert_eq!(store.backlog().await.unwrap().0, 3);
    let owner = owner_no(&store, ALICE).await;
    let later = T0 + LEASE_MS + 1;
    let claimed = store.claim(owner, later, 10).await.unwrap();
    let mut seqs: Vec<u32> = claimed.iter().map(|d| d.seq).collect();
    seqs.sort();
    assert_eq!(seqs, vec![0, 1, 2], "everything open is taken again");
    let in_flight = claimed.iter().find(|d| d.seq == 0).unwrap();
    let job = store.job(&id(1), ALICE).await.unwrap().unwrap();
    assert_eq!(job.parts[0].state, PartState::InFlight, "{in_flight:?}");
    assert!(
        store.claim(owner, later, 10).await.unwrap().is_empty(),
        "taken once"
    );
}

/// Finished jobs are purged after retention; open ones never are.
async fn purge(bed: &Bed) {
    let store = bed.open().await;
    store.insert_job(single(&id(1), ALICE, T0)).await.unwrap();
    store.insert_job(single(&id(2), ALICE, T0)).await.unwrap();
    store.mark_in_flight(&id(1), 0, T0).await.unwrap();
    store
        .finish_part(
            &id(1),
            0,
            PartState::Succeeded,
            Some(ok_response()),
            None,
            T0 + 1,
        )
        .await
        .unwrap();
    assert_eq!(store.purge_finished(T0 + 10, 100).await.unwrap(), 1);
    assert!(store.job(&id(1), ALICE).await.unwrap().is_none());
    assert!(store.job(&id(2), ALICE).await.unwrap().is_some());
    assert_eq!(store.purge_finished(T0 + 10, 100).await.unwrap(), 0);
    assert_stats_match(&store, &[ALICE]).await;
}

macro_rules! scenarios {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), |bed| Box::pin($name(bed)))),*]
    };
}

type Scenario = (
    &'static str,
    for<'a> fn(&'a Bed) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + 'a>>,
);

const SCENARIOS: &[Scenario] = scenarios![
    round_trip,
    part_life,
    split,
    cancel_and_retry,
    idempotency,
    key_state,
    crash_and_reopen,
    purge,
];

/// Runs `scenario` on a fresh bed, naming it when it fails.
async fn run(backend: &str, name: &str, bed: Bed, scenario: &Scenario) {
    eprintln!("--- {backend}: {name}");
    (scenario.1)(&bed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sqlite_store_keeps_the_contract() {
    for scenario in SCENARIOS {
        let bed = Bed::Sqlite(tempfile::tempdir().unwrap());
        run("sqlite", scenario.0, bed, scenario).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_postgres_store_keeps_the_contract() {
    let cluster = PgCluster::start();
    for scenario in SCENARIOS {
        let bed = Bed::Postgres(cluster.database());
        run("postgres", scenario.0, bed, scenario).await;
    }
}

// --- what a cluster adds (PostgreSQL only) ------------------------------------------

/// Two instances claiming one owner's parts at once, from several tasks each, never take
/// a part twice, and between them take them all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_never_claim_a_part_twice() {
    let cluster = PgCluster::start();
    let url = cluster.database();
    let a = Arc::new(Store::open_postgres(&pg_options(&url)).await.unwrap());
    let b = Arc::new(Store::open_postgres(&pg_options(&url)).await.unwrap());
    assert_ne!(a.run(), b.run(), "each instance has its own number");
    for n in 0..20 {
        let (job, _) = bulk(&id(n), ALICE, 50, 1, T0 + i64::from(n));
        a.insert_job(job).await.unwrap();
    }
    let owner = owner_no(&a, ALICE).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let store = if i % 2 == 0 { a.clone() } else { b.clone() };
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            loop {
                let got = store.claim(owner, T0 + 100, 7).await.expect("claim");
                if got.is_empty() {
                    return mine;
                }
                mine.extend(got.into_iter().map(|d| (d.job_id, d.seq)));
            }
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let total = all.len();
    all.sort();
    all.dedup();
    assert_eq!(total, all.len(), "a part was claimed twice");
    assert_eq!(total, 20 * 50, "every part was claimed");
    assert_eq!(a.cluster().unwrap().takeovers(), 0);
}

/// A part leased by an instance that died is taken over once the lease expires, and
/// counted; a live instance keeps its parts by renewing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_lease_is_taken_over_and_a_renewed_one_is_not() {
    let cluster = PgCluster::start();
    let url = cluster.database();
    let a = Store::open_postgres(&pg_options(&url)).await.unwrap();
    let b = Store::open_postgres(&pg_options(&url)).await.unwrap();
    let (job, _) = bulk(&id(1), ALICE, 2, 1, T0);
    a.insert_job(job).await.unwrap();
    let owner = owner_no(&a, ALICE).await;
    assert_eq!(a.claim(owner, T0, 1).await.unwrap().len(), 1);
    assert_eq!(b.claim(owner, T0, 1).await.unwrap().len(), 1);
    // `a` renews (its lease now runs to T0 + 20 s + LEASE); `b` does not.
    assert_eq!(
        a.cluster()
            .unwrap()
            .renew_leases(T0 + 20_000)
            .await
            .unwrap(),
        1
    );
    let c = Store::open_postgres(&pg_options(&url)).await.unwrap();
    let taken = c.claim(owner, T0 + LEASE_MS + 1, 10).await.unwrap();
    assert_eq!(
        taken.len(),
        1,
        "only the part of the instance that stopped renewing"
    );
    assert_eq!(c.cluster().unwrap().takeovers(), 1);
}

/// After a cooldown, one instance of the cluster sends the probe; when it got through,
/// the cooldown is over for all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_instance_probes_a_key_for_the_cluster() {
    let cluster = PgCluster::start();
    let url = cluster.database();
    let a = Store::open_postgres(&pg_options(&url)).await.unwrap();
    let b = Store::open_postgres(&pg_options(&url)).await.unwrap();
    a.save_key(KeyRecord {
        key: ALICE.into(),
        cooling_until: Some(T0 + 1_000),
        max_allowed: Some(10),
        available: Some(0),
        last_429: None,
        updated_at: T0,
    })
    .await
    .unwrap();
    let (pa, pb) = (a.cluster().unwrap(), b.cluster().unwrap());
    assert!(pa.take_probe(ALICE, T0 + 1_000, T0 + 11_000).await.unwrap());
    assert!(
        !pb.take_probe(ALICE, T0 + 1_001, T0 + 11_001).await.unwrap(),
        "a probe is out"
    );
    assert!(
        pa.take_probe(ALICE, T0 + 1_002, T0 + 11_002).await.unwrap(),
        "still a's"
    );
    // A probe whose instance vanished expires.
    assert!(pb
        .take_probe(ALICE, T0 + 12_000, T0 + 22_000)
        .await
        .unwrap());
    pb.probe_done(ALICE).await.unwrap();
    let keys = a.keys().await.unwrap();
    assert_eq!(
        keys[0].cooling_until, None,
        "the cooldown is over for everyone"
    );
}

/// With the database gone, calls fail with a database error and the store says it is not
/// writable; once it is back, the same store works again without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_fails_loudly_and_heals() {
    let mut cluster = PgCluster::start();
    let url = cluster.database();
    let store = Store::open_postgres(&pg_options(&url)).await.unwrap();
    store.insert_job(single(&id(1), ALICE, T0)).await.unwrap();
    assert!(store.is_writable());
    cluster.kill();
    let failed = store.insert_job(single(&id(2), ALICE, T0)).await;
    assert!(matches!(failed, Err(StoreError::Database(_))), "{failed:?}");
    assert!(!store.is_writable());
    assert!(!store.cluster().unwrap().ping().await);
    cluster.restart();
    let start = std::time::Instant::now();
    while !store.cluster().unwrap().ping().await {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the store did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(store.is_writable());
    store.insert_job(single(&id(2), ALICE, T0)).await.unwrap();
    assert_eq!(
        store.list_jobs(ALICE, None, 10, None).await.unwrap().len(),
        2
    );
}

/// Notifications reach every instance: new work, a finished part, what was learned about
/// a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_hear_each_others_news() {
    use sluice::queue::store::pg::Notice;
    let cluster = PgCluster::start();
    let url = cluster.database();
    let a = Store::open_postgres(&pg_options(&url)).await.unwrap();
    let b = Store::open_postgres(&pg_options(&url)).await.unwrap();
    let mut news = b.cluster().unwrap().listen();
    // The listener connects in the background: send until the first notice arrives.
    let mut n = 0;
    let first = loop {
        n += 1;
        a.insert_job(single(&id(n), ALICE, T0)).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(200), news.recv()).await {
            Ok(Some(notice)) => break notice,
            Ok(None) => panic!("the listener stopped"),
            Err(_) => assert!(n < 100, "no notice within 100 inserts"),
        }
    };
    assert_eq!(first, Notice::Work(ALICE.into()));
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), news.recv()).await {}
    a.mark_in_flight(&id(1), 0, T0).await.unwrap();
    a.finish_part(
        &id(1),
        0,
        PartState::Succeeded,
        Some(ok_response()),
        None,
        T0,
    )
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), news.recv()).await;
    assert_eq!(next.unwrap(), Some(Notice::Job(id(1))));
    a.save_key(KeyRecord {
        key: BOB.into(),
        cooling_until: Some(T0),
        max_allowed: None,
        available: None,
        last_429: None,
        updated_at: T0,
    })
    .await
    .unwrap();
    let next = tokio::time::timeout(Duration::from_secs(10), news.recv()).await;
    assert_eq!(next.unwrap(), Some(Notice::Key(BOB.into())));
}
