//! The simulator over real sockets, against the seed: every error body byte for byte
//! and the 429 in every hint mode.

mod common;

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::sim::{bulk, bulk_body, call, campaign, phones, text, KEY};
use common::{json, Running};
use http::{HeaderMap, Method, StatusCode};
use serde_json::json;
use sluice::simulator::{HintMode, SimConfig};

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
