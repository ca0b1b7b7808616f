//! The baseline of issue 6, target 4: a client that follows the provider's own advice.
//!
//! The provider's troubleshooting page suggests batching many recipients per request and
//! this retry loop (`sendWithRetry`, its JavaScript transcribed):
//!
//! ```js
//! for (let attempt = 0; attempt < maxRetries /* 3 */; attempt++) {
//!   const response = await fetch(url, request);
//!   if (response.status === 429) {
//!     const retryAfter = response.headers.get('Retry-After') || 60;
//!     await sleep(retryAfter * 1000);
//!     continue;
//!   }
//!   return response;
//! }
//! throw new Error('Max retries exceeded');
//! ```
//!
//! This client sends `RECIPIENTS` distinct numbers (`+3897` and 7 digits, from 0) to a
//! bulk campaign in batches of `BATCH` (the API allows 200,000), one batch after the other,
//! each through that loop (a third 429 also sleeps, then gives up, as the loop does). A
//! batch that gives up is lost and the client moves on to the next one. It prints one line:
//! `naive_client makespan_s=… requests=… rate_limited=… delivered=… not_delivered=…`.
//!
//! `cargo run --release --example naive_client -- URL CAMPAIGN_ID [RECIPIENTS] [BATCH]`
//! (`URL`: the API's base, e.g. `http://127.0.0.1:8081`; key from `API_KEY`, default
//! `demo-key`).

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

const MAX_RETRIES: u32 = 3;

/// A bulk body for recipients `first..first + n`.
fn batch_body(first: usize, n: usize) -> Bytes {
    let mut body = String::with_capacity(n * 16 + 64);
    body.push_str(r#"{"recipients":["#);
    for i in first..first + n {
        if i > first {
            body.push(',');
        }
        body.push_str(&format!("\"+3897{i:07}\""));
    }
    body.push_str("]}");
    Bytes::from(body)
}

#[derive(Default)]
struct Tally {
    requests: u64,
    rate_limited: u64,
    delivered: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [url, campaign, rest @ ..] = args.as_slice() else {
        return Err("usage: naive_client URL CAMPAIGN_ID [RECIPIENTS] [BATCH]".into());
    };
    let total: usize = rest.first().map_or(Ok(500_000), |s| s.parse())?;
    let batch: usize = rest.get(1).map_or(Ok(200_000), |s| s.parse())?;
    let key = std::env::var("API_KEY").unwrap_or_else(|_| "demo-key".into());
    let uri: hyper::Uri = format!("{url}/api/v1/campaigns/{campaign}/bulk/sms").parse()?;
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();

    let mut tally = Tally::default();
    let started = Instant::now();
    let mut first = 0;
    while first < total {
        let n = batch.min(total - first);
        let body = batch_body(first, n);
        // sendWithRetry(request)
        for _attempt in 0..MAX_RETRIES {
            let request = hyper::Request::post(uri.clone())
                .header("content-type", "application/json")
                .header("x-api-key", &key)
                .body(Full::new(body.clone()))?;
            let response = client.request(request).await?;
            tally.requests += 1;
            let status = response.status();
            let retry_after = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .unwrap_or(60);
            let answer = response.into_body().collect().await?.to_bytes();
            if status == 429 {
                tally.rate_limited += 1;
                tokio::time::sleep(Duration::from_secs(retry_after)).await;
                continue;
            }
            if status.is_success() {
                let value: serde_json::Value = serde_json::from_slice(&answer)?;
                tally.delivered += value["acceptedCount"].as_u64().unwrap_or(0);
            } else {
                eprintln!("batch at {first}: the API answered {status}");
            }
            break;
        }
        first += n;
    }
    println!(
        "naive_client makespan_s={:.2} requests={} rate_limited={} delivered={} not_delivered={}",
        started.elapsed().as_secs_f64(),
        tally.requests,
        tally.rate_limited,
        tally.delivered,
        total as u64 - tally.delivered
    );
    Ok(())
}
