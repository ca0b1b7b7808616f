//! Throwaway throughput check for `sluice::queue::store` (not a test, not a benchmark
//! harness).
//!
//! Run with `cargo run --release --example store_speed [seconds] [dir]`. For each of
//! `synchronous=FULL` and `NORMAL`, opens a fresh store in a temporary dir (under `dir`, by
//! default the system's temp dir: put it on the disk you care about, not a tmpfs), then
//! lets 64 tasks insert small single-message jobs as fast as the store accepts them for
//! `seconds` (default 5), and prints jobs/s and the latency of `insert_job` (p50, p99,
//! max). Group commit is what makes this fast: while one transaction is being fsynced, the
//! next one collects every job that arrives meanwhile.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use sluice::queue::store::{NewJob, NewPart, Store, Synchronous};

const TASKS: u64 = 64;

fn job(task: u64, n: u64) -> NewJob {
    let body = Bytes::from(format!(
        r#"{{"sender":"Sluice","to":"+3897{:07}","text":"Your code is {:06}","channel":"sms"}}"#,
        n % 10_000_000,
        (task * 7919 + n) % 1_000_000
    ));
    NewJob {
        id: format!("{task:08x}{n:024x}"),
        owner: "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into(),
        api_key: Some(b"client-key-0123456789abcdef0123456789".to_vec()),
        route: "sms".into(),
        method: "POST".into(),
        path: "/v1/sms/send".into(),
        headers: vec![
            ("content-type".into(), b"application/json".to_vec()),
            (
                "x-request-id".into(),
                format!("req-{task}-{n}").into_bytes(),
            ),
        ],
        parts: vec![NewPart {
            items: 0..1,
            bytes: 0..body.len() as u64,
        }],
        body,
        array: None,
        skipped: None,
        now_ms: 1_700_000_000_000 + n as i64,
    }
}

async fn measure(sync: Synchronous, seconds: u64, base: &std::path::Path) {
    let dir = tempfile::Builder::new()
        .prefix("sluice-store-speed")
        .tempdir_in(base)
        .expect("temp dir");
    let store = Arc::new(Store::open(dir.path(), sync).expect("open store"));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(seconds);
    let tasks: Vec<_> = (0..TASKS)
        .map(|task| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = 0;
                while Instant::now() < deadline {
                    let t = Instant::now();
                    store.insert_job(job(task, n)).await.expect("insert");
                    latencies.push(t.elapsed());
                    n += 1;
                }
                latencies
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("task"));
    }
    let elapsed = start.elapsed();
    latencies.sort_unstable();
    let at = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    let stats = store.stats(0).await.expect("stats");
    println!(
        "synchronous={sync:?}: {} jobs in {:.2}s = {:.0} jobs/s; latency p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; db+wal {:.1} MB",
        latencies.len(),
        elapsed.as_secs_f64(),
        latencies.len() as f64 / elapsed.as_secs_f64(),
        at(0.50).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3,
        stats.db_bytes as f64 / 1e6,
    );
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let mut args = std::env::args().skip(1);
    let seconds = args.next().map_or(5, |s| s.parse().expect("seconds"));
    let base = args.next().map_or_else(std::env::temp_dir, Into::into);
    println!(
        "{TASKS} tasks inserting single-message jobs for {seconds}s each, under {}",
        base.display()
    );
    for sync in [Synchronous::Full, Synchronous::Normal] {
        measure(sync, seconds, &base).await;
    }
}
