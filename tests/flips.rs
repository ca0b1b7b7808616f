//! A 429 storm measured: the key's capacity flips between full and free while synchronous
//! clients send. Alone in its own test binary, so that no other test's load skews the
//! throughput it compares.

mod common;

use std::time::Duration;

use http::{Method, StatusCode};
use sluice::simulator::{HintMode, SimConfig};
use tokio::time::Instant;

use common::queue::{proxy, url};
use common::sim::{campaign, phones, KEY};
use common::{send, Running};

fn sim_config(max_pending: u64, drain_rate: f64) -> SimConfig {
    SimConfig {
        max_pending,
        drain_rate,
        retry_after: 1,
        hint: HintMode::Both,
        ..SimConfig::default()
    }
}

/// A single send's body to `n`'s phone number.
fn single_body(n: u64) -> String {
    format!(r#"{{"phoneNumber":"{}"}}"#, phones(n, 1)[0])
}

/// Sends every client makes in `window` (each one at a time, waiting for its answer):
/// (completions per second, their median latency, any answer that was not a 201).
async fn sync_clients(
    p: &sluice::app::Running,
    path: &str,
    clients: u64,
    window: Duration,
    phones_from: u64,
) -> (f64, Duration, Vec<String>) {
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|c| {
            let url = url(p, path);
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut wrong = Vec::new();
                let mut n = 0;
                while start.elapsed() < window {
                    let sent = Instant::now();
                    let body = single_body(phones_from + 100_000 * c + n);
                    n += 1;
                    let headers = [("X-API-Key", KEY), ("Content-Type", "application/json")];
                    let (status, _, answer) = send(Method::POST, &url, &headers, body).await;
                    if status == StatusCode::CREATED {
                        done.push(sent.elapsed());
                    } else {
                        wrong.push(format!("{status} {}", String::from_utf8_lossy(&answer)));
                    }
                }
                (done, wrong)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    let mut wrong = Vec::new();
    for t in tasks {
        let (done, bad) = t.await.unwrap();
        latencies.extend(done);
        wrong.extend(bad);
    }
    let elapsed = start.elapsed().as_secs_f64();
    latencies.sort();
    let p50 = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    (latencies.len() as f64 / elapsed, p50, wrong)
}

/// The key's capacity flips between full and free every 3 s under 32 synchronous
/// clients: a 429 costs one cooldown, not a minute, so throughput stays at least 0.35×
/// the steady rate (capacity is open half the time), the median client waits at most
/// 2 s, and every client gets the API's own 201.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_flips_cost_a_cooldown_each_not_a_minute() {
    let sim = Running::start(sim_config(10_000_000, 1_000_000.0)).await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |_| {}).await;
    let path = format!("/api/v1/campaigns/{single_campaign}/messages/sms");

    let (steady, steady_p50, wrong) = sync_clients(&p, &path, 32, Duration::from_secs(6), 0).await;
    assert!(wrong.is_empty(), "{wrong:?}");
    sim.sim.set_capacity_flip(Some(Duration::from_secs(3)));
    let (flipping, p50, wrong) =
        sync_clients(&p, &path, 32, Duration::from_secs(12), 5_000_000).await;
    sim.sim.set_capacity_flip(None);
    assert!(
        wrong.is_empty(),
        "every client gets the API's 201: {wrong:?}"
    );
    let stats = sim.sim.stats();
    println!("steady {steady:.0}/s (p50 {steady_p50:?}), flipping {flipping:.0}/s (p50 {p50:?}), {stats:?}");
    assert!(
        stats.rate_limited > 0,
        "the capacity was full at times: {stats:?}"
    );
    assert!(
        flipping >= 0.35 * steady,
        "{flipping:.0}/s against {steady:.0}/s steady"
    );
    assert!(p50 <= Duration::from_secs(2), "median wait {p50:?}");
    assert_eq!(stats.duplicate_recipients, 0, "{stats:?}");
    // Each flip to full costs the sends already in flight (at most queue.concurrency, 16)
    // and one probe per hint (1 s) while it lasts (3 s): two full periods in 12 s.
    assert!(stats.rate_limited <= 2 * (16 + 4), "{stats:?}");
}
