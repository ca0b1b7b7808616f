//! The simulator over real sockets, in motion: a full send flow with statuses moving
//! over paused time, the stats endpoint, seeded failure injection, run-time knobs and
//! latency.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::sim::{assert_recent, bulk, bulk_body, call, campaign, phones, text, KEY};
use common::{json, send, Running};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sluice::simulator::{SimConfig, SimStats};

const MISSING_KEY: &str = r#"{"error":"Unauthorized","message":"Missing or invalid X-API-Key header. Please provide a valid API key."}"#;

/// The statuses of `phone`'s messages, oldest first.
async fn statuses(run: &Running, phone: &str) -> Vec<String> {
    let path = format!("/api/v1/messages?phoneNumber={}", phone.replace('+', "%2B"));
    let (status, _, body) = call(run, Method::GET, &path, Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    let list = json(&body);
    let list = list.as_array().expect("an array");
    list.iter()
        .map(|m| m["status"].as_str().expect("a status").to_owned())
        .collect()
}

/// Panics unless every name in `names` appears in `body` as a JSON key, in that order.
fn assert_fields_in_order(body: &str, names: &[&str]) {
    let at: Vec<usize> = names
        .iter()
        .map(|n| {
            body.find(&format!("\"{n}\":"))
                .unwrap_or_else(|| panic!("no {n} in {body}"))
        })
        .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "field order in {body}");
}

async fn counters(run: &Running, id: u64) -> Value {
    let path = format!("/api/v1/campaigns/{id}");
    let (status, _, body) = call(run, Method::GET, &path, Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK);
    json(&body)
}

// Paused time: nothing in the server or client arms a timer, so the clock moves only
// when the test advances it.
#[tokio::test(start_paused = true)]
async fn full_flow_statuses_move_from_pending_to_delivered() {
    let cfg = SimConfig {
        drain_rate: 10.0, // Sending window: the next 5 messages
        ..SimConfig::default()
    };
    let run = Running::start(cfg).await;
    let template = json!({"name": "promo", "templateContent": "Sale!", "channel": "Viber",
        "messageType": 1, "viberServiceId": 1, "smsFallbackEnabled": false});
    let (status, _, created) = call(
        &run,
        Method::POST,
        "/api/v1/templates",
        Some(KEY),
        template.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&created));
    let template_id = json(&created)["id"].clone();
    let body = json!({"name": "spring", "type": "Bulk", "channel": "Viber",
        "templateId": template_id});
    let (status, _, created) = call(
        &run,
        Method::POST,
        "/api/v1/campaigns",
        Some(KEY),
        body.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let created = json(&created);
    assert_eq!(created["status"], "Draft");
    let id = created["id"].as_u64().unwrap();
    let start = format!("/api/v1/campaigns/{id}/start");
    let (status, _, _) = call(&run, Method::POST, &start, Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK);

    // 20 recipients, 19 as objects ending in 1 and the 10th, a string, ending in 9: that
    // one is "not a Viber user".
    let numbers: Vec<String> = (0..19).map(|i| format!("3897{:07}", i * 10 + 1)).collect();
    let mut recipients: Vec<Value> = numbers
        .iter()
        .map(|p| json!({"phoneNumber": p, "variables": {"name": "Ana"}}))
        .collect();
    recipients.insert(9, json!("+38970000009"));
    let body = json!({ "recipients": recipients }).to_string();
    let (status, _, body) = bulk(&run, id, "viber", body).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert_eq!(json(&body), json!({"campaignId": id, "acceptedCount": 20}));

    let first = numbers[0].clone();
    assert_eq!(statuses(&run, &first).await, ["Sending"]);
    assert_eq!(statuses(&run, &numbers[5]).await, ["Pending"]);
    let c = counters(&run, id).await;
    assert_eq!(
        (c["sentCount"].as_u64(), c["deliveredCount"].as_u64()),
        (Some(5), Some(0))
    );

    tokio::time::advance(Duration::from_secs(1)).await; // 10 drained
    assert_eq!(statuses(&run, &first).await, ["Delivered"]);
    assert_eq!(statuses(&run, "+38970000009").await, ["Failed"]);
    assert_eq!(
        statuses(&run, &numbers[9]).await,
        ["Sending"],
        "11th message"
    );
    let c = counters(&run, id).await;
    assert_eq!(c["acceptedCount"], 20);
    assert_eq!(c["sentCount"], 15);
    assert_eq!(
        (c["deliveredCount"].as_u64(), c["failedCount"].as_u64()),
        (Some(9), Some(1))
    );

    tokio::time::advance(Duration::from_secs(5)).await;
    let c = counters(&run, id).await;
    assert_eq!(
        (c["deliveredCount"].as_u64(), c["failedCount"].as_u64()),
        (Some(19), Some(1))
    );
    assert_eq!(c["smsFallbackDeliveredCount"], 0);
    let path = "/api/v1/messages?phoneNumber=%2B38970000009";
    let (_, _, body) = call(&run, Method::GET, path, Some(KEY), "").await;
    assert_fields_in_order(
        text(&body),
        &[
            "messageId",
            "campaignId",
            "phoneNumber",
            "channel",
            "createdAt",
            "status",
            "details",
            "deliveredViaSmsFallback",
        ],
    );
    let failed = &json(&body)[0];
    assert_recent(&failed["createdAt"]);
    assert_eq!(
        failed["details"],
        json!({"code": 9, "error": "NOT_VIBER_USER"})
    );
    assert_eq!(failed["campaignId"], id);
    assert_eq!(failed["channel"], "Viber");

    // A transactional single send answers its message id, then the query finds it.
    let tx = campaign(&run, KEY, "Transactional", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{tx}/messages/sms");
    let body = json!({"phoneNumber": first, "variables": {"code": "1234"}}).to_string();
    let (status, _, body) = call(&run, Method::POST, &path, Some(KEY), body).await;
    assert_eq!(status, StatusCode::CREATED);
    let sent = json(&body);
    assert_eq!(sent["status"], "Pending");
    let query = format!("/api/v1/messages?phoneNumber={first}&campaignId={tx}");
    let (_, _, body) = call(&run, Method::GET, &query, Some(KEY), "").await;
    let listed = json(&body);
    assert_eq!(listed.as_array().map(Vec::len), Some(1));
    assert_eq!(listed[0]["messageId"], sent["messageId"]);
    assert_eq!(
        statuses(&run, &first).await.len(),
        2,
        "both campaigns' messages"
    );
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn stats_count_duplicates_batches_and_early_retries() {
    let cfg = SimConfig {
        max_pending: 100,
        drain_rate: 10.0,
        retry_after: 5,
        ..SimConfig::default()
    };
    let run = Running::start(cfg).await;
    let id = campaign(&run, KEY, "Bulk", "SMS", true).await;
    let mut first = phones(0, 60);
    first.push(first[0].clone()); // a duplicate inside one batch
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&first)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&phones(50, 30))).await; // 10 again
    assert_eq!(status, StatusCode::ACCEPTED);

    // 91 pending: 80 more is refused, and asking again at once is an early retry.
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&phones(100, 80))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&phones(100, 40))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // After the hint, 5 s × 10/s = 50 drained: 41 pending, 40 more fit.
    tokio::time::advance(Duration::from_secs(5)).await;
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&phones(100, 40))).await;
    assert_eq!(status, StatusCode::ACCEPTED);

    let (status, _, body) = send(Method::GET, &run.url("/_sim/stats"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let served: SimStats = serde_json::from_slice(&body).expect("SimStats JSON");
    let expected = SimStats {
        requests: 7, // campaign create + start + 5 sends; the stats call is not counted
        by_status: [(200, 1), (201, 1), (202, 3), (429, 2)]
            .into_iter()
            .collect(),
        sends: 5,
        accepted_sends: 3,
        rate_limited: 2,
        injected_failures: 0,
        recipients_accepted: 61 + 30 + 40,
        distinct_recipients: 60 + 20 + 40,
        duplicate_recipients: 1 + 10,
        max_batch_after_first_429: 40,
        early_retries: 1,
        largest_batch: 80,
        resets: 0,
        delayed_answers: 0,
        outages: 0,
        // 5 s × 10/s: the first 50 messages are done, every SMS delivered by default.
        delivered: 50,
        failed: 0,
        failed_by_code: BTreeMap::new(),
        sms_fallback_delivered: 0,
    };
    assert_eq!(served, expected);
    assert_eq!(run.sim.stats(), expected);
    run.stop().await;
}

/// The statuses of `n` authenticated requests against a fresh simulator.
async fn failure_pattern(seed: u64, n: usize) -> (Vec<StatusCode>, SimStats) {
    let cfg = SimConfig {
        fail_rate: 0.3,
        seed,
        ..SimConfig::default()
    };
    let run = Running::start(cfg).await;
    let mut seen = Vec::new();
    for _ in 0..n {
        let (status, _, body) =
            call(&run, Method::GET, "/api/v1/viber-services", Some(KEY), "").await;
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            let body = json(&body);
            assert_eq!(body["error"], "Internal Server Error");
            assert!(body["message"]
                .as_str()
                .is_some_and(|m| m.contains("Retry")));
        }
        seen.push(status);
    }
    let stats = run.sim.stats();
    run.stop().await;
    (seen, stats)
}

#[tokio::test]
async fn injected_failures_follow_the_seed() {
    let (a, stats) = failure_pattern(7, 60).await;
    let (b, _) = failure_pattern(7, 60).await;
    let (c, _) = failure_pattern(8, 60).await;
    assert_eq!(a, b, "one seed, one sequence");
    assert_ne!(a, c, "another seed, another sequence");
    let failures = a
        .iter()
        .filter(|s| **s == StatusCode::INTERNAL_SERVER_ERROR)
        .count();
    assert!(
        (6..=30).contains(&failures),
        "about 30% of 60, got {failures}"
    );
    assert!(a
        .iter()
        .all(|s| *s == StatusCode::OK || *s == StatusCode::INTERNAL_SERVER_ERROR));
    assert_eq!(stats.injected_failures, failures as u64);
    assert_eq!(stats.by_status.get(&500).copied(), Some(failures as u64));
}

#[tokio::test]
async fn an_injected_failure_accepts_nothing_and_follows_auth() {
    let run = Running::start(SimConfig::default()).await;
    let id = campaign(&run, KEY, "Bulk", "SMS", true).await;
    run.sim.set_fail_rate(1.0);
    let (status, _, body) = call(&run, Method::GET, "/api/v1/viber-services", None, "").await;
    assert_eq!(
        (status, text(&body)),
        (StatusCode::UNAUTHORIZED, MISSING_KEY)
    );
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&phones(0, 10))).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(run.sim.stats().recipients_accepted, 0);
    run.sim.set_fail_rate(0.0);
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&phones(0, 10))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let stats = run.sim.stats();
    assert_eq!(
        (
            stats.sends,
            stats.injected_failures,
            stats.recipients_accepted
        ),
        (2, 1, 10)
    );
    run.stop().await;
}

#[tokio::test]
async fn max_pending_can_change_at_run_time() {
    let cfg = SimConfig {
        drain_rate: 0.0,
        ..SimConfig::default()
    };
    let run = Running::start(cfg).await;
    let id = campaign(&run, KEY, "Bulk", "SMS", true).await;
    run.sim.set_max_pending(5);
    let (status, _, body) = bulk(&run, id, "sms", bulk_body(&phones(0, 6))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&body)["maxAllowed"], 5);
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&phones(0, 5))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    run.stop().await;
}

#[tokio::test(start_paused = true)]
async fn latency_is_added_before_answering() {
    let cfg = SimConfig {
        latency: Duration::from_secs(3),
        ..SimConfig::default()
    };
    let run = Running::start(cfg).await;
    let before = tokio::time::Instant::now();
    let (status, _, _) = call(&run, Method::GET, "/api/v1/viber-services", Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK);
    assert!(before.elapsed() >= Duration::from_secs(3));
    run.stop().await;
}
