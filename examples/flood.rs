//! A load client for the send queue's benchmarks (`bench/queue.sh`): sends `N` single
//! sends to a transactional campaign through sluice, `CONCURRENCY` at a time, each with
//! `Prefer: respond-async` (answered as soon as the job is on disk), and prints one line:
//! `flood sent=… accepted=… other=… seconds=… per_second=…`.
//!
//! `cargo run --release --example flood -- URL CAMPAIGN_ID N [CONCURRENCY] [FIRST]`
//! (`URL`: sluice's base, e.g. `http://127.0.0.1:28084`; key from `API_KEY`, default
//! `demo-key`; phone numbers `+3897` and 7 digits from `FIRST`, default 0).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: flood URL CAMPAIGN_ID N [CONCURRENCY] [FIRST]";
    let url = args.get(1).expect(usage).trim_end_matches('/').to_string();
    let campaign: u64 = args.get(2).and_then(|a| a.parse().ok()).expect(usage);
    let n: u64 = args.get(3).and_then(|a| a.parse().ok()).expect(usage);
    let concurrency: u64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(64);
    let first: u64 = args.get(5).and_then(|a| a.parse().ok()).unwrap_or(0);
    let key = std::env::var("API_KEY").unwrap_or_else(|_| "demo-key".into());
    let target = format!("{url}/api/v1/campaigns/{campaign}/messages/sms");
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let next = Arc::new(AtomicU64::new(0));
    let accepted = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let workers: Vec<_> = (0..concurrency)
        .map(|_| {
            let (client, target, key) = (client.clone(), target.clone(), key.clone());
            let (next, accepted, other) = (next.clone(), accepted.clone(), other.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return;
                    }
                    let body = format!(r#"{{"phoneNumber":"+3897{:07}"}}"#, first + i);
                    let request = http::Request::post(&target)
                        .header("x-api-key", &key)
                        .header("content-type", "application/json")
                        .header("prefer", "respond-async")
                        .body(Full::new(Bytes::from(body)))
                        .expect("a valid request");
                    match client.request(request).await {
                        Ok(resp) => {
                            let status = resp.status();
                            let _ = resp.into_body().collect().await;
                            if status == http::StatusCode::ACCEPTED {
                                accepted.fetch_add(1, Ordering::Relaxed);
                            } else {
                                other.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(_) => {
                            other.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let ok = accepted.load(Ordering::Relaxed);
    println!(
        "flood sent={n} accepted={ok} other={} seconds={seconds:.2} per_second={:.0}",
        other.load(Ordering::Relaxed),
        ok as f64 / seconds
    );
}
