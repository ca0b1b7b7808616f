//! The simulator over real sockets: the seed's exact error bodies, the 429 in every hint
//! mode, a full send flow with statuses moving over (paused) time, the stats endpoint
//! and seeded failure injection.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::{json, send, Running};
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use sluice::simulator::{HintMode, SimConfig, SimStats};

const KEY: &str = "demo-key";

const MISSING_KEY: &str = r#"{"error":"Unauthorized","message":"Missing or invalid X-API-Key header. Please provide a valid API key."}"#;
const INVALID_KEY: &str = r#"{"error":"Unauthorized","message":"Invalid or revoked API key. Please check your credentials."}"#;
const TEMPLATE_NOT_FOUND: &str =
    r#"{"error":"Not Found","message":"Template not found or access denied"}"#;
const CAMPAIGN_NOT_FOUND: &str = r#"{"error":"Not Found","message":"Campaign not found"}"#;
const INVALID_PHONE: &str = r#"{"error":"Bad Request","message":"Invalid phone number format","validationErrors":{"phoneNumber":"Phone number must be 10-15 digits"}}"#;
const TOO_MANY: &str =
    r#"{"error":"Bad Request","message":"Maximum 200000 recipients allowed per request"}"#;
const IMAGE_URL: &str = r#"{"error":"Bad Request","message":"Image URL is not accessible","validationErrors":{"imageUrl":"URL must be HTTPS and publicly accessible"}}"#;
const NOT_ACTIVE: &str = r#"{"error":"Campaign is not active","message":"Campaign status is Draft. Messages can only be added to InProgress campaigns."}"#;
const BULK_CAMPAIGN: &str =
    r#"{"error":"Bad Request","message":"Cannot add messages to bulk campaign"}"#;
const NOT_SMS: &str = r#"{"error":"Bad Request","message":"Campaign is not an SMS campaign"}"#;
const NOT_VIBER: &str = r#"{"error":"Bad Request","message":"Campaign is not a Viber campaign"}"#;
const SEED_429: &str = r#"{"error":"Rate limit exceeded","message":"Too many pending messages. You have 48500 pending messages and requested 5000 more. Maximum allowed: 50000. Available capacity: 1500.","currentPending":48500,"requestedCount":5000,"maxAllowed":50000,"availableCapacity":1500,"retryAfterSeconds":30}"#;
const SEED_429_WITHOUT_HINT: &str = r#"{"error":"Rate limit exceeded","message":"Too many pending messages. You have 48500 pending messages and requested 5000 more. Maximum allowed: 50000. Available capacity: 1500.","currentPending":48500,"requestedCount":5000,"maxAllowed":50000,"availableCapacity":1500}"#;

/// One API call with `key` (no header when `None`).
async fn call(
    run: &Running,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    send(method, &run.url(path), &headers, body).await
}

fn text(body: &Bytes) -> &str {
    std::str::from_utf8(body).expect("a UTF-8 body")
}

/// Creates a campaign (started unless `start` is false) for `key`; returns its id.
async fn campaign(run: &Running, key: &str, kind: &str, channel: &str, start: bool) -> u64 {
    let body = json!({"name": "c", "type": kind, "channel": channel}).to_string();
    let (status, _, created) = call(run, Method::POST, "/api/v1/campaigns", Some(key), body).await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&created));
    let id = json(&created)["id"].as_u64().expect("an id");
    if start {
        let path = format!("/api/v1/campaigns/{id}/start");
        let (status, _, started) = call(run, Method::POST, &path, Some(key), "").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(json(&started)["status"], "InProgress");
    }
    id
}

/// `n` distinct valid phone numbers, starting at `first`.
fn phones(first: u64, n: u64) -> Vec<String> {
    (first..first + n).map(|i| format!("3897{i:07}")).collect()
}

fn bulk_body(phones: &[String]) -> String {
    json!({ "recipients": phones }).to_string()
}

async fn bulk(
    run: &Running,
    id: u64,
    channel: &str,
    body: String,
) -> (StatusCode, HeaderMap, Bytes) {
    let path = format!("/api/v1/campaigns/{id}/bulk/{channel}");
    call(run, Method::POST, &path, Some(KEY), body).await
}

#[tokio::test]
async fn authentication_errors_are_the_seeds() {
    let run = Running::start(SimConfig::default()).await;
    let path = "/api/v1/viber-services";
    // HTTP/1 parsing strips a header value's surrounding whitespace before any handler
    // sees it, so "   " arrives blank; keys with whitespace around them are refused in
    // the handlers' unit tests.
    for (key, expected) in [
        (None, MISSING_KEY),
        (Some(""), MISSING_KEY),
        (Some("   "), MISSING_KEY),
        (Some("wrong-key"), INVALID_KEY),
        (Some("demo-key2"), INVALID_KEY),
    ] {
        let (status, _, body) = call(&run, Method::GET, path, key, "").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "key {key:?}");
        assert_eq!(text(&body), expected, "key {key:?}");
    }
    let (status, _, body) = call(&run, Method::GET, path, Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body).as_array().map(Vec::len), Some(2));
    run.stop().await;
}

#[tokio::test]
async fn not_found_errors_are_the_seeds() {
    let cfg = SimConfig {
        api_keys: vec![KEY.into(), "other-key".into()],
        ..SimConfig::default()
    };
    let run = Running::start(cfg).await;
    let body = json!({"name": "welcome", "templateContent": "Hi"}).to_string();
    let (status, _, created) = call(
        &run,
        Method::POST,
        "/api/v1/templates",
        Some("other-key"),
        body,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let path = format!("/api/v1/templates/{}", json(&created)["id"]);

    // Another company's template, then a missing one, then a missing campaign.
    let (status, _, body) = call(&run, Method::GET, &path, Some(KEY), "").await;
    assert_eq!(
        (status, text(&body)),
        (StatusCode::NOT_FOUND, TEMPLATE_NOT_FOUND)
    );
    let (status, _, body) = call(&run, Method::DELETE, &path, Some(KEY), "").await;
    assert_eq!(
        (status, text(&body)),
        (StatusCode::NOT_FOUND, TEMPLATE_NOT_FOUND)
    );
    let (status, _, body) = call(&run, Method::GET, "/api/v1/templates/abc", Some(KEY), "").await;
    assert_eq!(
        (status, text(&body)),
        (StatusCode::NOT_FOUND, TEMPLATE_NOT_FOUND)
    );
    let (status, _, body) = call(&run, Method::GET, "/api/v1/campaigns/999", Some(KEY), "").await;
    assert_eq!(
        (status, text(&body)),
        (StatusCode::NOT_FOUND, CAMPAIGN_NOT_FOUND)
    );
    let (status, _, body) = bulk(&run, 999, "sms", bulk_body(&phones(0, 1))).await;
    assert_eq!(
        (status, text(&body)),
        (StatusCode::NOT_FOUND, CAMPAIGN_NOT_FOUND)
    );

    // The owner can read and delete it; then it is gone for the owner too.
    let (status, _, _) = call(&run, Method::GET, &path, Some("other-key"), "").await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, body) = call(&run, Method::DELETE, &path, Some("other-key"), "").await;
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    let (status, _, _) = call(&run, Method::GET, &path, Some("other-key"), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // Unknown paths and wrong methods answer JSON too.
    let (status, _, body) = call(&run, Method::GET, "/api/v2/nothing", Some(KEY), "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(json(&body)["error"], "Not Found");
    let (status, _, body) = call(&run, Method::PUT, "/api/v1/campaigns", Some(KEY), "").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(json(&body)["message"].is_string());
    run.stop().await;
}

#[tokio::test]
async fn template_validation_errors_are_the_seeds() {
    let run = Running::start(SimConfig::default()).await;
    let path = "/api/v1/templates";
    let first = json!({"name": "welcome", "templateContent": "Hi"}).to_string();
    let (status, _, created) = call(&run, Method::POST, path, Some(KEY), first).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(json(&created)["name"], "welcome");

    let again = json!({"name": "welcome"}).to_string();
    let (status, _, body) = call(&run, Method::POST, path, Some(KEY), again).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let seed = json!({"error": "Bad Request", "message": "Template validation failed",
        "validationErrors": {"templateContent": "Template content is required",
                             "name": "Template name must be unique"}});
    assert_eq!(json(&body), seed);

    let image = json!({"name": "img", "templateContent": "Hi",
        "imageUrl": "http://cdn.example/a.png"});
    let (status, _, body) = call(&run, Method::POST, path, Some(KEY), image.to_string()).await;
    assert_eq!((status, text(&body)), (StatusCode::BAD_REQUEST, IMAGE_URL));

    let (status, _, body) = call(&run, Method::POST, path, Some(KEY), "{not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&body)["error"], "Bad Request");
    run.stop().await;
}

#[tokio::test]
async fn send_errors_are_the_seeds_in_check_order() {
    let run = Running::start(SimConfig::default()).await;
    let one = bulk_body(&phones(0, 1));
    let draft = campaign(&run, KEY, "Bulk", "SMS", false).await;
    let (status, _, body) = bulk(&run, draft, "sms", one.clone()).await;
    assert_eq!((status, text(&body)), (StatusCode::BAD_REQUEST, NOT_ACTIVE));

    let sms_bulk = campaign(&run, KEY, "Bulk", "SMS", true).await;
    let single = format!("/api/v1/campaigns/{sms_bulk}/messages/sms");
    let phone = json!({"phoneNumber": "38970123456"}).to_string();
    let (status, _, body) = call(&run, Method::POST, &single, Some(KEY), phone).await;
    assert_eq!(
        (status, text(&body)),
        (StatusCode::BAD_REQUEST, BULK_CAMPAIGN)
    );
    let (status, _, body) = bulk(&run, sms_bulk, "viber", one.clone()).await;
    assert_eq!((status, text(&body)), (StatusCode::BAD_REQUEST, NOT_VIBER));
    let viber_bulk = campaign(&run, KEY, "Bulk", "Viber", true).await;
    let (status, _, body) = bulk(&run, viber_bulk, "sms", one.clone()).await;
    assert_eq!((status, text(&body)), (StatusCode::BAD_REQUEST, NOT_SMS));
    let transactional = campaign(&run, KEY, "Transactional", "SMS", true).await;
    let (status, _, body) = bulk(&run, transactional, "sms", one).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&body)["error"], "Bad Request");

    // Too many recipients is checked before the numbers themselves.
    let mut many = vec!["bad".to_string(); 200_001];
    many[0] = "38970123456".into();
    let (status, _, body) = bulk(&run, sms_bulk, "sms", bulk_body(&many)).await;
    assert_eq!((status, text(&body)), (StatusCode::BAD_REQUEST, TOO_MANY));
    for bad in [
        "389701234",
        "+389 70123456",
        "38970123456x",
        "++38970123456",
    ] {
        let body = json!({"recipients": ["38970123456", {"phoneNumber": bad}]});
        let (status, _, body) = bulk(&run, sms_bulk, "sms", body.to_string()).await;
        assert_eq!(
            (status, text(&body)),
            (StatusCode::BAD_REQUEST, INVALID_PHONE),
            "{bad}"
        );
    }
    for malformed in ["", "[]", r#"{"recipients": 5}"#, r#"{"recipients": [7]}"#] {
        let (status, _, body) = bulk(&run, sms_bulk, "sms", malformed.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{malformed:?}");
        assert_eq!(json(&body)["error"], "Bad Request", "{malformed:?}");
    }
    assert_eq!(
        run.sim.stats().recipients_accepted,
        0,
        "no refused send accepted anything"
    );
    run.stop().await;
}

/// Fills the company to 48500 pending (nothing drains), then asks for 5000 more: the
/// seed's example exactly.
async fn seed_429(hint: HintMode) -> (StatusCode, HeaderMap, Bytes) {
    let cfg = SimConfig {
        drain_rate: 0.0,
        hint,
        ..SimConfig::default()
    };
    let run = Running::start(cfg).await;
    let id = campaign(&run, KEY, "Bulk", "SMS", true).await;
    let (status, _, body) = bulk(&run, id, "sms", bulk_body(&phones(0, 48_500))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", text(&body));
    assert_eq!(
        json(&body),
        json!({"campaignId": id, "acceptedCount": 48500})
    );
    let refused = bulk(&run, id, "sms", bulk_body(&phones(48_500, 5_000))).await;
    // A part that fits the available capacity is accepted at once.
    let (status, _, _) = bulk(&run, id, "sms", bulk_body(&phones(48_500, 1_500))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    run.stop().await;
    refused
}

#[tokio::test]
async fn the_429_gives_the_hint_as_each_mode_says() {
    let (status, headers, body) = seed_429(HintMode::Both).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(text(&body), SEED_429);

    let (status, headers, body) = seed_429(HintMode::Header).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "30");
    assert_eq!(text(&body), SEED_429_WITHOUT_HINT);

    let (status, headers, body) = seed_429(HintMode::Date).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    let date = headers["retry-after"].to_str().unwrap();
    let at = httpdate::parse_http_date(date).expect("an HTTP-date");
    let wait = at
        .duration_since(SystemTime::now())
        .expect("a date in the future");
    assert!(
        (Duration::from_secs(28)..=Duration::from_secs(31)).contains(&wait),
        "{wait:?}"
    );
    assert_eq!(text(&body), SEED_429_WITHOUT_HINT);

    let (status, headers, body) = seed_429(HintMode::Body).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!headers.contains_key("retry-after"));
    assert_eq!(text(&body), SEED_429);

    let (status, headers, body) = seed_429(HintMode::None).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert!(!headers.contains_key("retry-after"));
    assert_eq!(text(&body), SEED_429_WITHOUT_HINT);
}

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
    let failed = &json(&body)[0];
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
