//! Tests for the job store, on real SQLite files in temporary dirs.
//!
//! Every test opens its own store. Times are made-up unix milliseconds. After changes,
//! [`assert_counts_match`] checks that the counts kept on each job row equal a fresh count
//! of its parts, so a drift in the incremental bookkeeping fails loudly.

use std::sync::Arc;

use super::*;
use crate::split::{self, RecipientsLayout};

pub(super) const ALICE: &str = "alice-fingerprint";
pub(super) const BOB: &str = "bob-fingerprint";
pub(super) const T0: i64 = 1_700_000_000_000;

pub(super) fn open() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open(&dir.path().join("data"), Synchronous::Full).expect("open");
    (dir, store)
}

/// What `schedule_retry` records, with nothing to reconcile.
fn retry(last_status: Option<u16>, last_error: Option<String>, next: i64, count: bool) -> Retry {
    Retry {
        last_status,
        last_error,
        next_attempt_at: next,
        count_attempt: count,
        reconcile_from: None,
        blind_resends: 0,
    }
}

pub(super) fn reopen(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("data"), Synchronous::Normal).expect("reopen")
}

pub(super) fn id(n: u32) -> String {
    format!("{n:032x}")
}

/// A single send: one part of the whole body.
pub(super) fn single(id: &str, owner: &str, now: i64) -> NewJob {
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
            ("x-empty".into(), Vec::new()),
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

/// A compact bulk body of `n` recipients and its layout.
fn bulk_body(n: usize) -> (Bytes, RecipientsLayout) {
    let mut body = br#"{"sender":"Sluice","text":"Hi","recipients":["#.to_vec();
    for i in 0..n {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(format!(r#"{{"phone":"+3897{i:07}","v":{{"n":{i}}}}}"#).as_bytes());
    }
    body.extend_from_slice(br#"],"channel":"sms"}"#);
    let layout = split::scan(&body, "/recipients", |_, _| {}).expect("scan");
    (Bytes::from(body), layout)
}

/// The part covering `layout.items[items]`.
fn part(layout: &RecipientsLayout, items: Range<usize>) -> NewPart {
    NewPart {
        bytes: layout.items[items.start].start as u64..layout.items[items.end - 1].end as u64,
        items: items.start as u64..items.end as u64,
    }
}

/// A bulk job of `n` recipients in parts of at most `max`.
pub(super) fn bulk(
    id: &str,
    owner: &str,
    n: usize,
    max: usize,
    now: i64,
) -> (NewJob, RecipientsLayout) {
    let (body, layout) = bulk_body(n);
    let job = NewJob {
        parts: split::chunks(n, max).map(|r| part(&layout, r)).collect(),
        array: Some(layout.array.start as u64..layout.array.end as u64),
        route: "bulk".into(),
        path: "/sms/bulk".into(),
        api_key: None,
        skipped: Some(r#"[{"index":3,"reason":"bad phone"}]"#.into()),
        body,
        ..single(id, owner, now)
    };
    (job, layout)
}

/// Reads the job's parts by item order, panicking if the job is not there.
async fn parts(store: &Store, job: &str, owner: &str) -> Vec<PartRecord> {
    store
        .job(job, owner)
        .await
        .expect("job")
        .expect("exists")
        .parts
}

/// Checks every job row's counts and state against a fresh count of its parts.
fn assert_counts_match(dir: &tempfile::TempDir) {
    let conn = rusqlite::Connection::open(dir.path().join("data").join(DB_FILE)).expect("open");
    let mut jobs = conn
        .prepare(
            "SELECT no, state, n_queued, n_in_flight, n_succeeded, n_failed, n_cancelled, attempts,
                 n_uncertain
             FROM jobs",
        )
        .expect("prepare");
    let rows = jobs
        .query_map([], |row| {
            Ok((
                row.get::<_, i64>(0)?,
                row.get::<_, JobState>(1)?,
                rows::counts(row, 2)?,
            ))
        })
        .expect("query");
    for row in rows {
        let (no, state, kept) = row.expect("row");
        let mut fresh = PartCounts::default();
        let mut parts = conn
            .prepare("SELECT state, attempts FROM parts WHERE job_no = ?1")
            .expect("prepare");
        let mut found = parts.query([no]).expect("query");
        while let Some(part) = found.next().expect("next") {
            *fresh.get_mut(part.get(0).expect("state")) += 1;
            fresh.attempts += part.get::<_, u32>(1).map(u64::from).expect("attempts");
        }
        assert_eq!(kept, fresh, "counts of job no {no}");
        assert_eq!(state, derive_state(&fresh), "state of job no {no}");
    }
    // The counters that metrics read agree with the rows.
    let mut counted = conn
        .prepare("SELECT kind, state, n FROM counters WHERE n != 0 ORDER BY kind, state")
        .expect("prepare");
    let counters: Vec<(String, String, i64)> = counted
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    let mut scanned = conn
        .prepare(
            "SELECT 'jobs', state, COUNT(*) FROM jobs GROUP BY state
             UNION ALL SELECT 'parts', state, COUNT(*) FROM parts GROUP BY state
             ORDER BY 1, 2",
        )
        .expect("prepare");
    let fresh: Vec<(String, String, i64)> = scanned
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(counters, fresh, "the counters");
}

// === derive_state ===

#[test]
fn derive_state_table() {
    let c = |queued, in_flight, succeeded, failed, cancelled, attempts| PartCounts {
        queued,
        in_flight,
        succeeded,
        failed,
        cancelled,
        attempts,
        uncertain: 0,
    };
    let u = |succeeded, failed, uncertain| PartCounts {
        succeeded,
        failed,
        uncertain,
        attempts: 1,
        ..PartCounts::default()
    };
    use JobState::*;
    let table = [
        (c(3, 0, 0, 0, 0, 0), Queued),
        (c(2, 1, 0, 0, 0, 1), InProgress),
        (c(2, 0, 0, 0, 0, 1), InProgress), // attempted, back in the queue
        (c(1, 0, 1, 0, 0, 0), InProgress), // something finished
        (c(1, 0, 0, 0, 1, 0), InProgress), // cancelled, one left (queued again by a retry)
        (c(0, 1, 0, 0, 2, 1), InProgress), // in flight when cancelled
        (c(0, 0, 3, 0, 0, 3), Succeeded),
        (c(0, 0, 0, 0, 3, 0), Cancelled),
        (c(0, 0, 0, 3, 0, 9), Failed),
        (c(0, 0, 0, 1, 2, 1), Failed), // failed and cancelled, none succeeded
        (c(0, 0, 2, 1, 0, 3), PartiallyFailed),
        (c(0, 0, 2, 0, 1, 2), PartiallyFailed),
        (c(0, 0, 1, 1, 1, 2), PartiallyFailed),
        (u(0, 0, 1), Uncertain),
        (u(2, 0, 1), Uncertain), // some accepted, the rest may have been
        (u(2, 1, 1), PartiallyFailed),
        (u(0, 1, 1), Failed),
    ];
    for (counts, want) in table {
        assert_eq!(derive_state(&counts), want, "{counts:?}");
    }
}

// === writes and reads ===

#[tokio::test]
async fn job_round_trips_with_its_parts() {
    let (dir, store) = open();
    let (job, _) = bulk(&id(1), ALICE, 10, 4, T0);
    let (body, expected_parts) = (job.body.clone(), job.parts.clone());
    store.insert_job(job).await.expect("insert");

    let got = store
        .job(&id(1), ALICE)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(got.id, id(1));
    assert_eq!(got.owner, ALICE);
    assert_eq!((got.route.as_str(), got.method.as_str()), ("bulk", "POST"));
    assert_eq!(got.path, "/sms/bulk");
    assert_eq!(got.state, JobState::Queued);
    assert_eq!(got.recipients, 10);
    assert_eq!((got.created_at, got.updated_at), (T0, T0));
    assert_eq!(
        got.skipped.as_deref(),
        Some(r#"[{"index":3,"reason":"bad phone"}]"#)
    );
    assert_eq!(got.counts.queued, 3);
    let seen: Vec<_> = got
        .parts
        .iter()
        .map(|p| (p.seq, p.items.clone(), p.bytes.clone()))
        .collect();
    let want: Vec<_> = (0u32..)
        .zip(&expected_parts)
        .map(|(s, p)| (s, p.items.clone(), p.bytes.clone()))
        .collect();
    assert_eq!(seen, want);
    for p in &got.parts {
        assert_eq!(p.state, PartState::Queued);
        assert_eq!(
            (p.attempts, p.last_status, p.next_attempt_at),
            (0, None, None)
        );
        assert!(p.last_error.is_none() && p.response.is_none());
    }

    // Headers and the key come back for the sender, byte for byte.
    let d = store
        .dispatchable(&id(1), &[2, 0])
        .await
        .expect("dispatchable");
    assert_eq!(d.iter().map(|d| d.seq).collect::<Vec<_>>(), [2, 0]);
    assert_eq!(d[0].headers, single("x", ALICE, T0).headers);
    assert_eq!(d[0].api_key, None);
    assert_eq!((d[0].items.clone(), d[0].created_at), (8..10, T0));
    let whole = store.part_body(&id(1), 0..0).await;
    assert!(matches!(whole, Err(StoreError::Invalid(_))), "{whole:?}");
    assert!(!body.is_empty());

    // A finished part keeps the upstream's answer.
    let answer = StoredResponse {
        status: 202,
        headers: vec![("x-request-id".into(), b"abc".to_vec())],
        body: br#"{"ok":true}"#.to_vec(),
    };
    store
        .mark_in_flight(&id(1), 1, T0 + 1)
        .await
        .expect("in flight");
    store
        .finish_part(
            &id(1),
            1,
            PartState::Succeeded,
            Some(answer.clone()),
            None,
            T0 + 2,
        )
        .await
        .expect("finish");
    let got = store
        .job(&id(1), ALICE)
        .await
        .expect("read")
        .expect("found");
    assert_eq!(got.parts[1].response.as_ref(), Some(&answer));
    assert_eq!(
        (got.parts[1].attempts, got.parts[1].last_status),
        (1, Some(202))
    );
    assert_eq!((got.state, got.updated_at), (JobState::InProgress, T0 + 2));
    assert_counts_match(&dir);
}

#[tokio::test]
async fn single_send_keeps_key_and_whole_body() {
    let (_dir, store) = open();
    let job = single(&id(7), "", T0);
    let body = job.body.clone();
    store.insert_job(job).await.expect("insert");
    assert_eq!(store.part_body(&id(7), 0..0).await.expect("body"), body);
    let d = store.unfinished().await.expect("unfinished");
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].api_key.as_deref(), Some(&b"client-key"[..]));
    assert_eq!(d[0].owner, "");
    assert_eq!(d[0].path, "/sms/send?x=1");
    let split = store.split_part(&id(7), 0, vec![], T0).await;
    assert!(matches!(split, Err(StoreError::Invalid(_))), "{split:?}");
}

#[tokio::test]
async fn malformed_jobs_are_refused_and_others_in_the_batch_kept() {
    let (_dir, store) = open();
    let (mut overlapping, layout) = bulk(&id(1), ALICE, 6, 3, T0);
    overlapping.parts[1] = part(&layout, 2..6);
    let (mut outside, _) = bulk(&id(2), ALICE, 6, 3, T0);
    outside.parts[0].bytes.start = 0;
    let mut no_parts = single(&id(3), ALICE, T0);
    no_parts.parts.clear();
    let (fine, _) = bulk(&id(4), ALICE, 6, 3, T0);
    let duplicate = single(&id(4), ALICE, T0);
    // Sent together so they share a transaction: each refusal stays its own.
    let results = tokio::join!(
        store.insert_job(overlapping),
        store.insert_job(outside),
        store.insert_job(no_parts),
        store.insert_job(fine),
        store.insert_job(duplicate),
    );
    assert!(
        matches!(results.0, Err(StoreError::Invalid(_))),
        "{:?}",
        results.0
    );
    assert!(
        matches!(results.1, Err(StoreError::Invalid(_))),
        "{:?}",
        results.1
    );
    assert!(
        matches!(results.2, Err(StoreError::Invalid(_))),
        "{:?}",
        results.2
    );
    results.3.expect("the valid job is stored");
    assert!(
        matches!(results.4, Err(StoreError::Sqlite(_))),
        "duplicate id: {:?}",
        results.4
    );
    let listed = store.list_jobs(ALICE, None, 10, None).await.expect("list");
    assert_eq!(
        listed.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [id(4)]
    );
    assert_eq!(listed[0].recipients, 6);
    assert!(store.is_writable());
}

#[tokio::test]
async fn other_owners_see_nothing() {
    let (dir, store) = open();
    let (job, _) = bulk(&id(1), ALICE, 4, 2, T0);
    store.insert_job(job).await.expect("insert");
    store
        .mark_in_flight(&id(1), 0, T0)
        .await
        .expect("in flight");
    store
        .finish_part(&id(1), 0, PartState::Failed, None, Some("bad".into()), T0)
        .await
        .expect("fail");

    assert_eq!(store.job(&id(1), BOB).await.expect("job"), None);
    assert_eq!(store.job(&id(1), "").await.expect("job"), None);
    assert!(store
        .list_jobs(BOB, None, 10, None)
        .await
        .expect("list")
        .is_empty());
    assert_eq!(
        store.cancel_job(&id(1), BOB, T0).await.expect("cancel"),
        None
    );
    assert_eq!(
        store
            .retry_failed(&id(1), BOB, None, T0)
            .await
            .expect("retry"),
        None
    );
    assert_eq!(
        store.cancel_job(&id(9), ALICE, T0).await.expect("cancel"),
        None
    );
    // Bob's attempts changed nothing.
    let p = parts(&store, &id(1), ALICE).await;
    assert_eq!(
        (p[0].state, p[1].state),
        (PartState::Failed, PartState::Queued)
    );
    assert_counts_match(&dir);
}

#[tokio::test]
async fn list_pages_newest_first_and_filters_by_state() {
    let (_dir, store) = open();
    // Jobs 0..7; jobs 2, 3 and 4 share a created_at, so paging must break ties by id.
    let created = |n: u32| match n {
        2..=4 => T0 + 2000,
        n => T0 + i64::from(n) * 1000,
    };
    for n in 0..7 {
        store
            .insert_job(single(&id(n), ALICE, created(n)))
            .await
            .expect("insert");
    }
    store
        .insert_job(single(&id(100), BOB, T0 + 99_999))
        .await
        .expect("insert");
    for n in [1, 3, 5] {
        store
            .mark_in_flight(&id(n), 0, T0)
            .await
            .expect("in flight");
        store
            .finish_part(&id(n), 0, PartState::Succeeded, None, None, T0)
            .await
            .expect("finish");
    }

    let mut pages = Vec::new();
    let mut before = None;
    loop {
        let page = store
            .list_jobs(ALICE, None, 3, before.clone())
            .await
            .expect("list");
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 3);
        // Listed as the single view reads them, parts included.
        for job in &page {
            let alone = store.job(&job.id, ALICE).await.expect("read");
            assert_eq!(Some(job), alone.as_ref());
            assert_eq!(job.parts.len(), 1);
        }
        before = page.last().map(|j| (j.created_at, j.id.clone()));
        pages.push(page.into_iter().map(|j| j.id).collect::<Vec<_>>());
    }
    let mut want: Vec<u32> = (0..7).collect();
    want.sort_by_key(|&n| std::cmp::Reverse((created(n), id(n))));
    assert_eq!(
        pages.concat(),
        want.iter().map(|&n| id(n)).collect::<Vec<_>>()
    );
    assert_eq!(pages.len(), 3);

    let done = store
        .list_jobs(ALICE, Some(JobState::Succeeded), 2, None)
        .await
        .expect("list");
    assert_eq!(
        done.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [id(5), id(3)]
    );
    let next = (done[1].created_at, done[1].id.clone());
    let rest = store
        .list_jobs(ALICE, Some(JobState::Succeeded), 2, Some(next))
        .await
        .expect("list");
    assert_eq!(
        rest.iter().map(|j| j.id.clone()).collect::<Vec<_>>(),
        [id(1)]
    );
    let queued = store
        .list_jobs(ALICE, Some(JobState::Queued), 10, None)
        .await
        .expect("list");
    assert_eq!(queued.len(), 4);
    assert!(queued
        .iter()
        .all(|j| j.state == JobState::Queued && j.owner == ALICE));
}

#[tokio::test]
async fn part_body_matches_split_write_part() {
    let (_dir, store) = open();
    let (job, layout) = bulk(&id(1), ALICE, 1000, 300, T0);
    let body = job.body.clone();
    store.insert_job(job).await.expect("insert");
    for items in [
        0..300,
        300..600,
        900..1000,
        0..1000,
        999..1000,
        0..1,
        417..418,
    ] {
        let mut want = Vec::new();
        split::write_part(&body, &layout, items.clone(), &mut want);
        let p = part(&layout, items.clone());
        let got = store.part_body(&id(1), p.bytes).await.expect("part body");
        assert_eq!(got.len(), want.len(), "length of {items:?}");
        assert!(got == want, "bytes of {items:?}");
    }
    let outside = store.part_body(&id(1), 0..body.len() as u64).await;
    assert!(
        matches!(outside, Err(StoreError::Invalid(_))),
        "{outside:?}"
    );
    assert!(matches!(
        store.part_body(&id(2), 0..1).await,
        Err(StoreError::NotFound)
    ));
}

#[tokio::test]
async fn part_body_of_a_spaced_body_is_the_same_json() {
    // With white space between elements, the part keeps it (write_part would drop it): the
    // bytes differ but the JSON is the same.
    let (_dir, store) = open();
    let body =
        b"{ \"text\" : \"x\",\n \"recipients\" : [ \"a\" ,\n  \"b\",\"c\" , 4 ] , \"z\": [1, 2] }";
    let layout = split::scan(body, "/recipients", |_, _| {}).expect("scan");
    let (job, _) = bulk(&id(1), ALICE, 1, 1, T0);
    let job = NewJob {
        body: Bytes::from_static(body),
        array: Some(layout.array.start as u64..layout.array.end as u64),
        parts: vec![part(&layout, 0..2), part(&layout, 2..4)],
        ..job
    };
    store.insert_job(job).await.expect("insert");
    for items in [0..2, 2..4, 1..3] {
        let mut want = Vec::new();
        split::write_part(body, &layout, items.clone(), &mut want);
        let got = store
            .part_body(&id(1), part(&layout, items.clone()).bytes)
            .await
            .expect("body");
        let got: serde_json::Value = serde_json::from_slice(&got).expect("part is JSON");
        let want: serde_json::Value = serde_json::from_slice(&want).expect("JSON");
        assert_eq!(got, want, "{items:?}");
    }
}

#[tokio::test]
async fn split_part_must_cover_the_part_exactly() {
    let (dir, store) = open();
    let (job, layout) = bulk(&id(1), ALICE, 10, 5, T0);
    store.insert_job(job).await.expect("insert");
    store
        .mark_in_flight(&id(1), 1, T0)
        .await
        .expect("in flight");
    store
        .mark_in_flight(&id(1), 1, T0)
        .await
        .expect("in flight again");

    let bad = [
        vec![part(&layout, 5..7), part(&layout, 8..10)], // gap
        vec![part(&layout, 5..8), part(&layout, 7..10)], // overlap
        vec![part(&layout, 5..7), part(&layout, 7..9)],  // short
        vec![part(&layout, 6..8), part(&layout, 8..10)], // late start
        vec![
            part(&layout, 5..10),
            NewPart {
                items: 10..10,
                bytes: 0..0,
            },
        ], // empty piece
        vec![part(&layout, 4..7), part(&layout, 7..10)], // outside
        vec![],
    ];
    for pieces in bad {
        let got = store.split_part(&id(1), 1, pieces.clone(), T0).await;
        assert!(
            matches!(got, Err(StoreError::Invalid(_))),
            "{pieces:?}: {got:?}"
        );
    }
    let mut wrong_bytes = vec![part(&layout, 5..7), part(&layout, 7..10)];
    wrong_bytes[1].bytes = wrong_bytes[0].bytes.clone();
    assert!(matches!(
        store.split_part(&id(1), 1, wrong_bytes, T0).await,
        Err(StoreError::Invalid(_))
    ));
    assert!(matches!(
        store.split_part(&id(1), 7, vec![], T0).await,
        Err(StoreError::NotFound)
    ));

    let seqs = store
        .split_part(
            &id(1),
            1,
            vec![
                part(&layout, 5..7),
                part(&layout, 7..8),
                part(&layout, 8..10),
            ],
            T0 + 5,
        )
        .await
        .expect("split");
    assert_eq!(seqs, [2, 3, 4]);
    let p = parts(&store, &id(1), ALICE).await;
    let shape: Vec<_> = p
        .iter()
        .map(|p| (p.seq, p.items.clone(), p.state, p.attempts))
        .collect();
    assert_eq!(
        shape,
        [
            (0, 0..5, PartState::Queued, 0),
            (2, 5..7, PartState::Queued, 2),
            (3, 7..8, PartState::Queued, 2),
            (4, 8..10, PartState::Queued, 2),
        ]
    );
    let d = store
        .dispatchable(&id(1), &seqs)
        .await
        .expect("dispatchable");
    assert_eq!(d.len(), 3);
    assert_eq!(d[1].bytes, part(&layout, 7..8).bytes);
    // A split's new numbers never reuse old ones; a finished part cannot be split.
    let again = store
        .split_part(
            &id(1),
            4,
            vec![part(&layout, 8..9), part(&layout, 9..10)],
            T0,
        )
        .await;
    assert_eq!(again.expect("split again"), [5, 6]);
    store
        .mark_in_flight(&id(1), 0, T0)
        .await
        .expect("in flight");
    store
        .finish_part(&id(1), 0, PartState::Succeeded, None, None, T0)
        .await
        .expect("finish");
    let done = store
        .split_part(&id(1), 0, vec![part(&layout, 0..5)], T0)
        .await;
    assert!(
        matches!(done, Err(StoreError::WrongState(PartState::Succeeded))),
        "{done:?}"
    );
    assert_counts_match(&dir);
}

#[tokio::test]
async fn a_429_does_not_count_as_an_attempt() {
    let (dir, store) = open();
    store
        .insert_job(single(&id(1), ALICE, T0))
        .await
        .expect("insert");
    let job = &id(1);
    // Two real attempts that failed with a 503, then a 429.
    for _ in 0..2 {
        store.mark_in_flight(job, 0, T0).await.expect("in flight");
        store
            .schedule_retry(
                job,
                0,
                retry(Some(503), Some("unavailable".into()), T0 + 10, true),
                T0,
            )
            .await
            .expect("retry");
    }
    assert_eq!(parts(&store, job, ALICE).await[0].attempts, 2);
    store.mark_in_flight(job, 0, T0).await.expect("in flight");
    assert_eq!(parts(&store, job, ALICE).await[0].attempts, 3);
    store
        .schedule_retry(job, 0, retry(Some(429), None, T0 + 20, false), T0 + 1)
        .await
        .expect("429");
    let p = &parts(&store, job, ALICE).await[0];
    assert_eq!((p.state, p.attempts), (PartState::Queued, 2));
    assert_eq!(
        (p.last_status, p.last_error.as_deref(), p.next_attempt_at),
        (Some(429), None, Some(T0 + 20))
    );
    // A job whose only sends were 429s is still Queued; one that really tried is InProgress.
    store
        .insert_job(single(&id(2), ALICE, T0))
        .await
        .expect("insert");
    store
        .mark_in_flight(&id(2), 0, T0)
        .await
        .expect("in flight");
    store
        .schedule_retry(&id(2), 0, retry(Some(429), None, T0, false), T0)
        .await
        .expect("429");
    let states = (
        store
            .job(job, ALICE)
            .await
            .expect("job")
            .expect("found")
            .state,
        store
            .job(&id(2), ALICE)
            .await
            .expect("job")
            .expect("found")
            .state,
    );
    assert_eq!(states, (JobState::InProgress, JobState::Queued));
    // Only an in-flight part can be rescheduled.
    let wrong = store
        .schedule_retry(job, 0, retry(None, None, T0, true), T0)
        .await;
    assert!(
        matches!(wrong, Err(StoreError::WrongState(PartState::Queued))),
        "{wrong:?}"
    );
    assert_counts_match(&dir);
}

#[tokio::test]
async fn cancel_stops_queued_parts_and_retries_of_parts_in_flight() {
    let (dir, store) = open();
    let (job, layout) = bulk(&id(1), ALICE, 9, 3, T0);
    store.insert_job(job).await.expect("insert");
    store
        .mark_in_flight(&id(1), 0, T0)
        .await
        .expect("in flight");
    store
        .mark_in_flight(&id(1), 1, T0)
        .await
        .expect("in flight");

    assert_eq!(
        store
            .cancel_job(&id(1), ALICE, T0 + 1)
            .await
            .expect("cancel")
            .map(|(recipients, _)| recipients),
        Some(3)
    );
    let after = store.job(&id(1), ALICE).await.expect("job").expect("found");
    assert_eq!(after.state, JobState::InProgress);
    assert_eq!(after.parts[2].state, PartState::Cancelled);
    // The sender must not send a cancelled part; parts in flight finish, but are not retried.
    let refused = store.mark_in_flight(&id(1), 2, T0).await;
    assert!(
        matches!(refused, Err(StoreError::WrongState(PartState::Cancelled))),
        "{refused:?}"
    );
    store
        .schedule_retry(&id(1), 0, retry(Some(500), None, T0 + 9, true), T0 + 2)
        .await
        .expect("retry");
    let pieces = store
        .split_part(
            &id(1),
            1,
            vec![part(&layout, 3..4), part(&layout, 4..6)],
            T0 + 3,
        )
        .await;
    assert_eq!(pieces.expect("split"), [3, 4]);
    assert!(store
        .dispatchable(&id(1), &[3, 4])
        .await
        .expect("dispatchable")
        .is_empty());
    let done = store.job(&id(1), ALICE).await.expect("job").expect("found");
    assert!(
        done.parts.iter().all(|p| p.state == PartState::Cancelled),
        "{:?}",
        done.parts
    );
    assert_eq!(done.state, JobState::Cancelled);
    assert_eq!(
        store
            .cancel_job(&id(1), ALICE, T0 + 4)
            .await
            .expect("cancel"),
        Some((0, 0))
    );
    assert!(store.unfinished().await.expect("unfinished").is_empty());
    assert_counts_match(&dir);
}

#[tokio::test]
async fn retry_failed_queues_failed_parts_again() {
    let (dir, store) = open();
    let (job, _) = bulk(&id(1), ALICE, 6, 2, T0);
    store.insert_job(job).await.expect("insert");
    for (seq, state) in [
        (0, PartState::Succeeded),
        (1, PartState::Failed),
        (2, PartState::Failed),
    ] {
        store
            .mark_in_flight(&id(1), seq, T0)
            .await
            .expect("in flight");
        store
            .mark_in_flight(&id(1), seq, T0)
            .await
            .expect("in flight");
        let answer = StoredResponse {
            status: 400,
            headers: vec![],
            body: b"no".to_vec(),
        };
        store
            .finish_part(&id(1), seq, state, Some(answer), None, T0)
            .await
            .expect("finish");
    }
    assert_eq!(
        store
            .job(&id(1), ALICE)
            .await
            .expect("job")
            .expect("found")
            .state,
        JobState::PartiallyFailed
    );
    let bad = store
        .finish_part(&id(1), 1, PartState::Cancelled, None, None, T0)
        .await;
    assert!(matches!(bad, Err(StoreError::Invalid(_))), "{bad:?}");

    assert_eq!(
        store
            .retry_failed(&id(1), ALICE, Some(b"client-key".to_vec()), T0 + 1)
            .await
            .expect("retry"),
        Some(vec![1, 2])
    );
    let job = store.job(&id(1), ALICE).await.expect("job").expect("found");
    assert_eq!(job.state, JobState::InProgress);
    let p = &job.parts;
    assert_eq!((p[0].state, p[0].attempts), (PartState::Succeeded, 2));
    for p in &p[1..] {
        assert_eq!(
            (p.state, p.attempts, p.next_attempt_at),
            (PartState::Queued, 0, None)
        );
        assert!(p.response.is_none());
    }
    assert_eq!(
        store
            .dispatchable(&id(1), &[0, 1, 2])
            .await
            .expect("dispatchable")
            .len(),
        2
    );
    assert_eq!(
        store
            .retry_failed(&id(1), ALICE, Some(b"client-key".to_vec()), T0 + 2)
            .await
            .expect("retry"),
        Some(vec![])
    );
    assert_counts_match(&dir);
}

#[tokio::test]
async fn unfinished_parts_survive_a_crash() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let store = Store::open(&dir.path().join("data"), Synchronous::Full).expect("open");
        let (job, _) = bulk(&id(1), ALICE, 8, 2, T0);
        store.insert_job(job).await.expect("insert");
        store
            .insert_job(single(&id(2), BOB, T0 + 1))
            .await
            .expect("insert");
        store
            .mark_in_flight(&id(1), 0, T0)
            .await
            .expect("in flight");
        store
            .mark_in_flight(&id(1), 1, T0)
            .await
            .expect("in flight");
        store
            .finish_part(&id(1), 1, PartState::Succeeded, None, None, T0)
            .await
            .expect("finish");
        store
            .mark_in_flight(&id(1), 2, T0)
            .await
            .expect("in flight");
        store
            .schedule_retry(&id(1), 2, retry(Some(503), None, T0 + 500, true), T0)
            .await
            .expect("retry");
        // Dropped here with part 0 in flight: as if the process had died.
    }
    let store = reopen(&dir);
    let left = store.unfinished().await.expect("unfinished");
    let shape: Vec<_> = left
        .iter()
        .map(|d| (d.job_id.clone(), d.seq, d.attempts, d.next_attempt_at))
        .collect();
    assert_eq!(
        shape,
        [
            (id(1), 0, 1, None),
            (id(1), 2, 1, Some(T0 + 500)),
            (id(1), 3, 0, None),
            (id(2), 0, 0, None),
        ]
    );
    // The part in flight at the crash is to be looked up from when it was sent; the
    // others have nothing to reconcile.
    let reconcile: Vec<_> = left.iter().map(|d| d.reconcile_from).collect();
    assert_eq!(reconcile, [Some(T0), None, None, None]);
    assert_eq!(left[3].api_key.as_deref(), Some(&b"client-key"[..]));
    assert_eq!(left[3].owner, BOB);
    // The part that was in flight is sent again: it can be marked in flight once more.
    store
        .mark_in_flight(&id(1), 0, T0 + 1000)
        .await
        .expect("resend");
    assert_eq!(parts(&store, &id(1), ALICE).await[0].attempts, 2);
    assert_counts_match(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_inserts_are_all_committed() {
    let (dir, store) = open();
    let store = Arc::new(store);
    let tasks: Vec<_> = (0..200)
        .map(|n| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                store
                    .insert_job(single(&id(n), ALICE, T0 + i64::from(n)))
                    .await
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("task").expect("insert");
    }
    let all = store
        .list_jobs(ALICE, None, 1000, None)
        .await
        .expect("list");
    assert_eq!(all.len(), 200);
    let conn = rusqlite::Connection::open(dir.path().join("data").join(DB_FILE)).expect("open");
    let parts: i64 = conn
        .query_row("SELECT COUNT(*) FROM parts", [], |r| r.get(0))
        .expect("count");
    let bodies: i64 = conn
        .query_row("SELECT COUNT(*) FROM bodies", [], |r| r.get(0))
        .expect("count");
    assert_eq!((parts, bodies), (200, 200));
}

#[test]
fn open_fails_loudly_where_it_cannot_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("a-file");
    std::fs::write(&file, "not a dir").expect("write");
    let err = Store::open(&file.join("data"), Synchronous::Full)
        .err()
        .expect("must fail");
    assert!(
        matches!(&err, StoreError::Open { path, .. } if path.starts_with(&file)),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("cannot create the data dir") && text.contains("a-file"),
        "{text}"
    );

    // A file that is not a database.
    let data = dir.path().join("data");
    std::fs::create_dir(&data).expect("mkdir");
    std::fs::write(data.join(DB_FILE), vec![b'x'; 8192]).expect("write");
    let err = Store::open(&data, Synchronous::Full)
        .err()
        .expect("must fail");
    assert!(matches!(err, StoreError::Open { .. }), "{err:?}");
}

#[test]
fn open_refuses_a_newer_schema_and_sets_private_modes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let data = dir.path().join("data");
    drop(Store::open(&data, Synchronous::Full).expect("open"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&data.join(DB_FILE)), 0o600);
    }
    drop(Store::open(&data, Synchronous::Full).expect("reopen"));
    let conn = rusqlite::Connection::open(data.join(DB_FILE)).expect("open");
    let opens: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'opens'", [], |r| {
            r.get(0)
        })
        .expect("opens");
    assert_eq!(opens, 2, "each open writes");
    conn.pragma_update(None, "user_version", 99).expect("bump");
    drop(conn);
    let err = Store::open(&data, Synchronous::Full)
        .err()
        .expect("must fail");
    assert!(err.to_string().contains("newer"), "{err}");
}

#[tokio::test]
async fn stats_count_jobs_parts_and_backlog() {
    let (_dir, store) = open();
    let (job, _) = bulk(&id(1), ALICE, 10, 4, T0); // parts of 4, 4, 2
    store.insert_job(job).await.expect("insert");
    store
        .insert_job(single(&id(2), BOB, T0 + 5_000))
        .await
        .expect("insert");
    store
        .insert_job(single(&id(3), BOB, T0 + 6_000))
        .await
        .expect("insert");
    store
        .mark_in_flight(&id(1), 0, T0)
        .await
        .expect("in flight");
    store
        .mark_in_flight(&id(1), 1, T0)
        .await
        .expect("in flight");
    store
        .finish_part(&id(1), 1, PartState::Succeeded, None, None, T0)
        .await
        .expect("finish");
    store
        .mark_in_flight(&id(2), 0, T0)
        .await
        .expect("in flight");
    store
        .finish_part(&id(2), 0, PartState::Failed, None, None, T0)
        .await
        .expect("finish");

    let stats = store.stats(T0 + 12_500).await.expect("stats");
    let get = |v: &[(JobState, u64)], s| v.iter().find(|(k, _)| *k == s).map(|(_, n)| *n);
    assert_eq!(stats.jobs.len(), 7);
    assert_eq!(get(&stats.jobs, JobState::InProgress), Some(1));
    assert_eq!(get(&stats.jobs, JobState::Failed), Some(1));
    assert_eq!(get(&stats.jobs, JobState::Queued), Some(1));
    assert_eq!(get(&stats.jobs, JobState::Succeeded), Some(0));
    let parts: Vec<u64> = stats.parts.iter().map(|(_, n)| *n).collect();
    assert_eq!(parts, [2, 1, 1, 1, 0, 0]); // queued, in flight, succeeded, failed, cancelled, uncertain
    assert_eq!(stats.recipients_queued, 4 + 2 + 1);
    assert_eq!(stats.oldest_queued_secs, Some(12.5));
    assert!(stats.db_bytes > 4096, "{}", stats.db_bytes);

    store.cancel_job(&id(1), ALICE, T0).await.expect("cancel");
    store.cancel_job(&id(3), BOB, T0).await.expect("cancel");
    store
        .finish_part(&id(1), 0, PartState::Succeeded, None, None, T0)
        .await
        .expect("finish");
    let stats = store.stats(T0).await.expect("stats");
    assert_eq!(
        (stats.recipients_queued, stats.oldest_queued_secs),
        (0, None)
    );
    assert_eq!(get(&stats.jobs, JobState::PartiallyFailed), Some(1));
    assert_eq!(get(&stats.jobs, JobState::Cancelled), Some(1));
}

#[tokio::test]
async fn unknown_jobs_and_parts_are_not_found() {
    let (_dir, store) = open();
    store
        .insert_job(single(&id(1), ALICE, T0))
        .await
        .expect("insert");
    assert!(matches!(
        store.mark_in_flight(&id(2), 0, T0).await,
        Err(StoreError::NotFound)
    ));
    assert!(matches!(
        store.mark_in_flight(&id(1), 1, T0).await,
        Err(StoreError::NotFound)
    ));
    let finish = store
        .finish_part(&id(2), 0, PartState::Failed, None, None, T0)
        .await;
    assert!(matches!(finish, Err(StoreError::NotFound)), "{finish:?}");
    assert!(store
        .dispatchable(&id(2), &[0])
        .await
        .expect("dispatchable")
        .is_empty());
}

#[tokio::test]
async fn a_corrupt_header_list_is_an_error_not_a_panic() {
    let (dir, store) = open();
    store
        .insert_job(single(&id(1), ALICE, T0))
        .await
        .expect("insert");
    let conn = rusqlite::Connection::open(dir.path().join("data").join(DB_FILE)).expect("open");
    conn.execute("UPDATE jobs SET headers = x'0500000061'", [])
        .expect("corrupt");
    let got = store.dispatchable(&id(1), &[0]).await;
    assert!(matches!(got, Err(StoreError::Sqlite(_))), "{got:?}");
}

#[tokio::test]
async fn a_full_disk_fails_writes_loudly_until_space_returns() {
    let (dir, store) = open();
    store
        .insert_job(single(&id(1), ALICE, T0))
        .await
        .expect("insert");
    // Cap the file at its current size: SQLite then fails as on a full disk.
    let pages: i64 = store
        .sqlite()
        .write(|c| {
            let pages: i64 = c.pragma_query_value(None, "page_count", |r| r.get(0))?;
            c.pragma_update(None, "max_page_count", pages)?;
            Ok(pages)
        })
        .await
        .expect("cap");
    let (mut big, _) = bulk(&id(2), ALICE, 2000, 500, T0);
    big.now_ms += 1;
    let failed = store.insert_job(big).await;
    assert!(matches!(&failed, Err(StoreError::Write(_))), "{failed:?}");
    assert!(failed.err().is_some_and(|e| e.to_string().contains("full")));
    assert!(!store.is_writable());
    assert_eq!(
        store.job(&id(2), ALICE).await.expect("read"),
        None,
        "nothing of it was saved"
    );

    store
        .sqlite()
        .write(move |c| Ok(c.pragma_update(None, "max_page_count", pages * 1000)?))
        .await
        .expect("uncap");
    let (big, _) = bulk(&id(2), ALICE, 2000, 500, T0);
    store
        .insert_job(big)
        .await
        .expect("insert once there is room");
    assert!(store.is_writable());
    assert_eq!(
        store
            .list_jobs(ALICE, None, 10, None)
            .await
            .expect("list")
            .len(),
        2
    );
    assert_counts_match(&dir);
}

// === reconciling lost answers, uncertain parts, learned keys ===

#[tokio::test]
async fn a_lost_answer_is_kept_for_the_lookup_until_settled() {
    let (dir, store) = open();
    let job = &id(1);
    store
        .insert_job(single(job, ALICE, T0))
        .await
        .expect("insert");
    store
        .mark_in_flight(job, 0, T0 + 5)
        .await
        .expect("in flight");
    // The answer was lost: back in the queue, to be looked up from T0 + 5.
    let lost = Retry {
        reconcile_from: Some(T0 + 5),
        ..retry(None, Some("no response within 2s".into()), T0 + 2000, true)
    };
    store
        .schedule_retry(job, 0, lost, T0 + 10)
        .await
        .expect("retry");
    let left = store.unfinished().await.expect("unfinished");
    assert_eq!(
        (left[0].reconcile_from, left[0].blind_resends),
        (Some(T0 + 5), 0)
    );
    assert_eq!(left[0].last_error.as_deref(), Some("no response within 2s"));
    // The lookup could not tell: one blind resend is recorded before it is sent.
    store
        .note_reconcile(job, 0, Some(T0 + 5), 1)
        .await
        .expect("note");
    // The API was unreachable for the lookup: postponed, nothing counted.
    store
        .postpone(job, 0, T0 + 9000, Some(T0 + 5), 1, T0 + 20)
        .await
        .expect("postpone");
    let left = store.unfinished().await.expect("unfinished");
    assert_eq!(
        (
            left[0].reconcile_from,
            left[0].blind_resends,
            left[0].attempts,
            left[0].next_attempt_at
        ),
        (Some(T0 + 5), 1, 1, Some(T0 + 9000))
    );
    // The resend's answer was lost too and the lookup still cannot tell: uncertain.
    store
        .finish_part(
            job,
            0,
            PartState::Uncertain,
            None,
            Some("lost twice".into()),
            T0 + 30,
        )
        .await
        .expect("uncertain");
    let record = store.job(job, ALICE).await.expect("read").expect("exists");
    assert_eq!(record.state, JobState::Uncertain);
    assert_eq!(record.counts.uncertain, 1);
    assert_eq!(record.parts[0].state, PartState::Uncertain);
    assert!(store.unfinished().await.expect("unfinished").is_empty());
    assert_counts_match(&dir);
    // Nothing more may happen to a final part.
    let wrong = store.postpone(job, 0, T0, None, 0, T0).await;
    assert!(
        matches!(wrong, Err(StoreError::WrongState(PartState::Uncertain))),
        "{wrong:?}"
    );
}

#[tokio::test]
async fn a_postponed_part_of_a_cancelled_job_is_cancelled() {
    let (dir, store) = open();
    let job = &id(1);
    store
        .insert_job(single(job, ALICE, T0))
        .await
        .expect("insert");
    store.mark_in_flight(job, 0, T0).await.expect("in flight");
    store.cancel_job(job, ALICE, T0 + 1).await.expect("cancel");
    store
        .postpone(job, 0, T0 + 5, None, 0, T0 + 2)
        .await
        .expect("postpone");
    assert_eq!(
        parts(&store, job, ALICE).await[0].state,
        PartState::Cancelled
    );
    assert_counts_match(&dir);
}

#[tokio::test]
async fn learned_key_state_round_trips_and_is_replaced() {
    let (dir, store) = open();
    assert!(store.keys().await.expect("keys").is_empty());
    let mut record = KeyRecord {
        key: "ab".repeat(32),
        cooling_until: Some(T0 + 30_000),
        max_allowed: Some(50_000),
        available: Some(1_500),
        last_429: Some(StoredResponse {
            status: 429,
            headers: vec![("retry-after".into(), b"30".to_vec())],
            body: br#"{"error":"Rate limit exceeded"}"#.to_vec(),
        }),
        updated_at: T0,
    };
    store.save_key(record.clone()).await.expect("save");
    drop(store);
    let store = reopen(&dir);
    assert_eq!(store.keys().await.expect("keys"), [record.clone()]);
    record.cooling_until = None;
    record.last_429 = None;
    record.updated_at = T0 + 1;
    store.save_key(record.clone()).await.expect("replace");
    assert_eq!(store.keys().await.expect("keys"), [record]);
}

/// Runs `script` on the store's file with a connection of its own (to take the schema
/// back to an older version), then opens the store again: the migration runs.
pub(super) fn downgraded(dir: &tempfile::TempDir, script: &str) -> Store {
    let conn = rusqlite::Connection::open(dir.path().join("data").join(DB_FILE)).expect("open");
    // Every caller goes below version 5: undo it first.
    conn.execute_batch(
        "DROP INDEX parts_due; ALTER TABLE parts DROP COLUMN owner_no;
         ALTER TABLE parts DROP COLUMN claimed_by; DROP TABLE owners;",
    )
    .expect("undo version 5");
    conn.execute_batch(script).expect("downgrade");
    drop(conn);
    Store::open(&dir.path().join("data"), Synchronous::Full).expect("migrate")
}

#[tokio::test]
async fn a_version_1_database_is_migrated_in_place() {
    let (dir, store) = open();
    store
        .insert_job(single(&id(1), ALICE, T0))
        .await
        .expect("insert");
    store
        .mark_in_flight(&id(1), 0, T0)
        .await
        .expect("in flight");
    drop(store);
    // Back to what version 1 had: no new columns, no key table.
    let store = downgraded(
        &dir,
        "ALTER TABLE parts DROP COLUMN sent_at;
         ALTER TABLE parts DROP COLUMN reconcile_from;
         ALTER TABLE parts DROP COLUMN blind_resends;
         ALTER TABLE jobs DROP COLUMN n_uncertain;
         DROP TABLE key_state;
         DROP TABLE idempotency;
         PRAGMA user_version = 1;",
    );
    let left = store.unfinished().await.expect("unfinished");
    // In flight before the upgrade, with no record of when: sent again as before.
    assert_eq!((left.len(), left[0].reconcile_from), (1, None));
    store
        .save_key(KeyRecord {
            key: "cd".repeat(32),
            cooling_until: None,
            max_allowed: None,
            available: None,
            last_429: None,
            updated_at: T0,
        })
        .await
        .expect("the key table exists");
}

// === retention ===

#[tokio::test]
async fn finished_jobs_are_purged_after_retention_and_keys_cleared_when_final() {
    let (dir, store) = open();
    for n in 1..=3 {
        store
            .insert_job(single(&id(n), ALICE, T0))
            .await
            .expect("insert");
    }
    let key_of = |n: u32| {
        let conn = rusqlite::Connection::open(dir.path().join("data").join(DB_FILE)).expect("open");
        conn.query_row("SELECT api_key FROM jobs WHERE id = ?1", [id(n)], |r| {
            r.get::<_, Option<Vec<u8>>>(0)
        })
        .expect("row")
    };
    // Jobs 1 and 2 finish (at T0 + 10 and T0 + 20); job 3 stays queued.
    for (n, at) in [(1, T0 + 10), (2, T0 + 20)] {
        store
            .mark_in_flight(&id(n), 0, at)
            .await
            .expect("in flight");
        store
            .finish_part(&id(n), 0, PartState::Succeeded, None, None, at)
            .await
            .expect("finish");
    }
    assert_eq!(key_of(1), None, "a finished job keeps no key");
    assert_eq!(key_of(3).as_deref(), Some(&b"client-key"[..]));
    assert_counts_match(&dir);
    // Retention: only what finished before the cut, at most `limit` at a time.
    assert_eq!(store.purge_finished(T0 + 15, 10).await.expect("purge"), 1);
    assert_eq!(store.job(&id(1), ALICE).await.expect("read"), None);
    assert!(store.job(&id(2), ALICE).await.expect("read").is_some());
    assert_eq!(store.purge_finished(T0 + 100, 10).await.expect("purge"), 1);
    assert_eq!(store.purge_finished(T0 + 100, 10).await.expect("purge"), 0);
    assert!(
        store.job(&id(3), ALICE).await.expect("read").is_some(),
        "unfinished stays"
    );
    assert_counts_match(&dir);
    let stats = store.stats(T0 + 100).await.expect("stats");
    let jobs: u64 = stats.jobs.iter().map(|(_, n)| n).sum();
    assert_eq!(jobs, 1);
}

#[tokio::test]
async fn a_version_3_database_gets_its_counters_and_drops_finished_keys() {
    let (dir, store) = open();
    for n in 1..=2 {
        store
            .insert_job(single(&id(n), ALICE, T0))
            .await
            .expect("insert");
    }
    store
        .mark_in_flight(&id(1), 0, T0)
        .await
        .expect("in flight");
    store
        .finish_part(&id(1), 0, PartState::Failed, None, None, T0)
        .await
        .expect("finish");
    drop(store);
    // Back to what version 3 had: no counters, and finished jobs kept their keys.
    let store = downgraded(
        &dir,
        "DROP TABLE counters; DROP INDEX jobs_state_updated; DROP INDEX jobs_state_created;
         UPDATE jobs SET api_key = X'6B';
         PRAGMA user_version = 3;",
    );
    assert_counts_match(&dir);
    let conn = rusqlite::Connection::open(dir.path().join("data").join(DB_FILE)).expect("open");
    let keys: Vec<Option<Vec<u8>>> = conn
        .prepare("SELECT api_key FROM jobs ORDER BY id")
        .expect("prepare")
        .query_map([], |r| r.get(0))
        .expect("query")
        .collect::<Result<_, _>>()
        .expect("rows");
    assert_eq!(keys, [None, Some(b"k".to_vec())]);
    drop(store);
}

// === paging: claims ===

#[tokio::test]
async fn parts_are_claimed_once_per_run_in_due_order_and_released_back() {
    let (dir, store) = open();
    for n in 1..=3 {
        store
            .insert_job(single(&id(n), ALICE, T0 + i64::from(n)))
            .await
            .expect("insert");
    }
    store
        .insert_job(single(&id(9), BOB, T0))
        .await
        .expect("insert");
    let owners = store.open_owners().await.expect("owners");
    let alice = owners.iter().find(|(_, k)| k == ALICE).expect("alice").0;
    let bob = owners.iter().find(|(_, k)| k == BOB).expect("bob").0;
    assert_eq!(store.owner_no(ALICE).await.expect("no"), Some(alice));

    // Alice's due parts, oldest first, at most the limit; Bob's are his own.
    let first = store.claim(alice, T0 + 10, 2).await.expect("claim");
    let jobs: Vec<_> = first.iter().map(|p| p.job_id.clone()).collect();
    assert_eq!(jobs, [id(1), id(2)]);
    assert!(first.iter().all(|p| p.owner_no == alice));
    // What this run holds is not taken again.
    let rest = store.claim(alice, T0 + 10, 10).await.expect("claim");
    assert_eq!(rest.len(), 1);
    assert!(store
        .claim(alice, T0 + 10, 10)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(store.next_due(alice).await.expect("due"), None);
    assert_eq!(store.claim(bob, T0 + 10, 10).await.expect("claim").len(), 1);

    // A part put back with a later due time is takeable again from then on.
    store
        .mark_in_flight(&id(1), 0, T0 + 11)
        .await
        .expect("in flight");
    store
        .schedule_retry(
            &id(1),
            0,
            retry(Some(429), None, T0 + 5_000, false),
            T0 + 12,
        )
        .await
        .expect("retry");
    assert_eq!(store.next_due(alice).await.expect("due"), Some(T0 + 5_000));
    assert!(store
        .claim(alice, T0 + 4_999, 10)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(
        store
            .claim(alice, T0 + 5_000, 10)
            .await
            .expect("claim")
            .len(),
        1
    );

    // A new run takes everything still open again; a part in flight at the stop is to be
    // looked up first.
    store
        .mark_in_flight(&id(2), 0, T0 + 20)
        .await
        .expect("in flight");
    drop(store);
    let store = reopen(&dir);
    let all = store.claim(alice, T0 + 10_000, 10).await.expect("claim");
    assert_eq!(all.len(), 3);
    let in_flight = all.iter().find(|p| p.job_id == id(2)).expect("job 2");
    assert_eq!(in_flight.reconcile_from, Some(T0 + 20));
    assert_eq!(store.backlog().await.expect("backlog").0, 4);
    assert_counts_match(&dir);
}
