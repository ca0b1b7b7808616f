//! Pre-flight validation end to end: the simulator and the proxy on loopback sockets.
//!
//! For every rule of the provider's error page, a bad request gets the seed's exact JSON
//! from the proxy and nothing reaches the simulator; malformed input is a 400 (413 when
//! too large), never a 500; `skip` sends the good recipients and lists the bad ones;
//! `warn` and `off` send anyway. Property tests check the pure rules the proxy and the
//! simulator share.

mod common;

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use proptest::prelude::*;
use serde_json::{json, Value};
use sluice::api::Envelope;
use sluice::config::Config;
use sluice::simulator::SimConfig;
use sluice::validate::{self, InvalidRecipients, Mode};

use common::sim::{campaign, phones, KEY};
use common::{proxy_config, proxy_url, send, start_proxy, Running, TestProxy};

/// The seed's "Invalid Phone Number" body, byte for byte.
const PHONE_SEED: &str = r#"{"error":"Bad Request","message":"Invalid phone number format","validationErrors":{"phoneNumber":"Phone number must be 10-15 digits"}}"#;
/// The seed's "Media URL Not Accessible" body, byte for byte.
const MEDIA_SEED: &str = r#"{"error":"Bad Request","message":"Image URL is not accessible","validationErrors":{"imageUrl":"URL must be HTTPS and publicly accessible"}}"#;
const PHONE_RULE: &str = "Phone number must be 10-15 digits";
const MEDIA_RULE: &str = "URL must be HTTPS and publicly accessible";

/// A simulator and a proxy with the default routes in front of it; `tweak` adjusts the
/// proxy's configuration.
async fn setup(tweak: impl FnOnce(&mut Config)) -> (Running, TestProxy) {
    let sim = Running::start(SimConfig::default()).await;
    let config = proxy_config(&sim.url(""), |c| {
        c.routes = None;
        tweak(c);
    });
    let proxy = start_proxy(&config, None).await;
    (sim, proxy)
}

/// Sets the validation settings of the default route `name`.
fn route_mode(c: &mut Config, name: &str, mode: Mode, invalid: InvalidRecipients) {
    let mut routes = c.routes();
    let route = routes
        .iter_mut()
        .find(|r| r.name == name)
        .expect("a default route");
    route.validation = mode;
    route.invalid_recipients = invalid;
    c.routes = Some(routes);
}

async fn post(
    proxy: &TestProxy,
    path: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut all = vec![("X-API-Key", KEY)];
    all.extend_from_slice(headers);
    send(Method::POST, &proxy_url(proxy, path), &all, body).await
}

async fn post_json(proxy: &TestProxy, path: &str, body: impl Into<Bytes>) -> (StatusCode, Bytes) {
    let (status, _, body) = post(proxy, path, &[("Content-Type", "application/json")], body).await;
    (status, body)
}

fn text(body: &Bytes) -> &str {
    std::str::from_utf8(body).expect("a UTF-8 body")
}

fn rejections(proxy: &TestProxy, route: &str, field: &str) -> u64 {
    proxy
        .metrics
        .validation_rejections
        .with_label_values(&[route, field])
        .get()
}

fn warnings(proxy: &TestProxy, route: &str, field: &str) -> u64 {
    proxy
        .metrics
        .validation_warnings
        .with_label_values(&[route, field])
        .get()
}

/// A bulk body of `recipients`, each a JSON value.
fn bulk_of(recipients: &[Value]) -> String {
    json!({ "recipients": recipients }).to_string()
}

// === one table per seed rule ===

#[tokio::test]
async fn phone_rule_single_sends_get_the_seeds_exact_json() {
    let (sim, proxy) = setup(|_| {}).await;
    let id = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/messages/sms");
    let before = sim.sim.stats();
    let bad = [
        "",
        "123",
        "389701234",
        "3897012345678901",
        "+38970-123-456",
        "389 70 123 456",
        "++38970123456",
        "38970123456+",
        "(389)70123456",
        "3897O123456",
        "３８９７０１２３４５６",
    ];
    for number in bad {
        let body = json!({"phoneNumber": number, "variables": {"name": "Ana"}}).to_string();
        let (status, answer) = post_json(&proxy, &path, body).await;
        assert_eq!(
            (status, text(&answer)),
            (StatusCode::BAD_REQUEST, PHONE_SEED),
            "{number:?}"
        );
    }
    assert_eq!(sim.sim.stats(), before, "the simulator received nothing");
    assert_eq!(
        rejections(&proxy, "single", "phoneNumber"),
        bad.len() as u64
    );
    assert_eq!(
        proxy
            .metrics
            .jobs_accepted
            .with_label_values(&["single"])
            .get(),
        0
    );

    // A good one goes through to the API as before.
    let body = json!({"phoneNumber": "+38970123456"}).to_string();
    let (status, answer) = post_json(&proxy, &path, body).await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&answer));
}

#[tokio::test]
async fn phone_rule_bulk_sends_list_offenders_by_index() {
    let (sim, proxy) = setup(|_| {}).await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let before = sim.sim.stats();

    let mut recipients: Vec<Value> = phones(0, 10).into_iter().map(Value::from).collect();
    recipients[2] = json!("12345");
    recipients[7] = json!({"phoneNumber": "+389 70 123 457", "variables": {"n": 1}});
    recipients[9] = json!("38970123456789012");
    let (status, answer) = post_json(&proxy, &path, bulk_of(&recipients)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        common::json(&answer),
        json!({"error": "Bad Request", "message": "Invalid phone number format",
            "validationErrors": {"recipients[2]": PHONE_RULE, "recipients[7]": PHONE_RULE,
                                 "recipients[9]": PHONE_RULE}})
    );

    // At most the first 100 offenders are listed.
    let recipients: Vec<Value> = (0..250)
        .map(|i| {
            if i % 2 == 0 {
                json!(format!("{i}"))
            } else {
                json!(format!("3897{i:07}"))
            }
        })
        .collect();
    let (status, answer) = post_json(&proxy, &path, bulk_of(&recipients)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let listed = common::json(&answer)["validationErrors"]
        .as_object()
        .expect("validationErrors")
        .clone();
    let mut indices: Vec<usize> = listed
        .keys()
        .map(|k| k["recipients[".len()..k.len() - 1].parse().unwrap())
        .collect();
    indices.sort_unstable();
    assert_eq!(indices, (0..200).step_by(2).collect::<Vec<_>>());
    assert!(listed.values().all(|v| v == PHONE_RULE));

    assert_eq!(sim.sim.stats(), before, "the simulator received nothing");
    assert_eq!(rejections(&proxy, "bulk", "phoneNumber"), 2);
}

#[tokio::test]
async fn media_rule_gets_the_seeds_exact_json() {
    let (sim, proxy) = setup(|_| {}).await;
    let single = campaign(&sim, KEY, "Transactional", "Viber", true).await;
    let bulk = campaign(&sim, KEY, "Bulk", "Viber", true).await;
    let single = format!("/api/v1/campaigns/{single}/messages/viber");
    let bulk = format!("/api/v1/campaigns/{bulk}/bulk/viber");
    let before = sim.sim.stats();
    let bad_urls = [
        "http://cdn.example.com/a.png",
        "ftp://cdn.example.com/a.png",
        "//cdn.example.com/a.png",
        "https://",
        "https://cdn.example.com/a b.png",
        "https://user:secret@cdn.example.com/a.png",
        "https://localhost/a.png",
        "https://media.localhost/a.png",
        "https://printer.local/a.png",
        "https://127.0.0.1/a.png",
        "https://127.1/a.png",
        "https://10.0.0.8/a.png",
        "https://172.20.1.1/a.png",
        "https://192.168.0.10/a.png",
        "https://169.254.169.254/latest/meta-data",
        "https://0.0.0.0/a.png",
        "https://[::1]/a.png",
        "https://[fd00::1]/a.png",
        "https://[fe80::1]/a.png",
        "https://[::ffff:192.168.0.1]/a.png",
        "https://intranet/a.png",
    ];
    for url in bad_urls {
        let body = json!({"phoneNumber": "38970123456", "imageUrl": url}).to_string();
        let (status, answer) = post_json(&proxy, &single, body).await;
        assert_eq!(
            (status, text(&answer)),
            (StatusCode::BAD_REQUEST, MEDIA_SEED),
            "single {url}"
        );
        let body = json!({"imageUrl": url, "recipients": phones(0, 3)}).to_string();
        let (status, answer) = post_json(&proxy, &bulk, body).await;
        assert_eq!(
            (status, text(&answer)),
            (StatusCode::BAD_REQUEST, MEDIA_SEED),
            "bulk {url}"
        );
    }
    // Other media fields are named by their own key, with the same message and rule.
    for field in ["videoUrl", "fileUrl", "thumbnailUrl", "mediaUrl"] {
        let body = json!({"phoneNumber": "38970123456", field: "http://cdn.example.com/x"});
        let (status, answer) = post_json(&proxy, &single, body.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(
            common::json(&answer),
            json!({"error": "Bad Request", "message": "Image URL is not accessible",
                "validationErrors": {field: MEDIA_RULE}})
        );
    }
    // Not a string where a URL belongs.
    let body = json!({"phoneNumber": "38970123456", "imageUrl": 42}).to_string();
    let (status, answer) = post_json(&proxy, &single, body).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, MEDIA_SEED)
    );

    assert_eq!(sim.sim.stats(), before, "the simulator received nothing");
    assert_eq!(
        rejections(&proxy, "single", "imageUrl"),
        bad_urls.len() as u64 + 1
    );
    assert_eq!(
        rejections(&proxy, "bulk", "imageUrl"),
        bad_urls.len() as u64
    );

    // Public HTTPS URLs pass, and the API takes the send.
    let body = json!({"phoneNumber": "38970123456",
        "imageUrl": "https://cdn.example.com/a.png?v=2#x"});
    let (status, answer) = post_json(&proxy, &single, body.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&answer));
}

#[tokio::test]
async fn template_rules_answer_as_the_simulator_does_without_reaching_it() {
    let (sim, proxy) = setup(|_| {}).await;
    let cyrillic_86 = "ж".repeat(86);
    let emoji_86 = "😀".repeat(86);
    let cases: Vec<(Value, Value)> = vec![
        (
            json!({"name": "t1"}),
            json!({"templateContent": "Template content is required"}),
        ),
        (
            json!({"name": "t2", "templateContent": "  "}),
            json!({"templateContent": "Template content is required"}),
        ),
        (
            json!({"name": "t3", "templateContent": 42}),
            json!({"templateContent": "Template content is required"}),
        ),
        (
            json!({"name": "t4", "templateContent": "x", "channel": "Viber"}),
            json!({"messageType": "Message type must be 1-8 for Viber"}),
        ),
        (
            json!({"name": "t5", "templateContent": "x", "channel": "Viber", "messageType": 9}),
            json!({"messageType": "Message type must be 1-8 for Viber"}),
        ),
        (
            json!({"name": "t6", "templateContent": "x", "channel": "Viber", "messageType": "6"}),
            json!({"messageType": "Message type must be 1-8 for Viber"}),
        ),
        (
            json!({"name": "t7", "templateContent": "x", "channel": "Viber", "messageType": 6}),
            json!({"survey": "Survey with a question and 2-5 options is required for message type 6"}),
        ),
        (
            json!({"name": "t8", "templateContent": "x", "channel": "Viber", "messageType": 6,
                "survey": {"question": cyrillic_86, "options": ["Да"]}}),
            json!({"survey.question": "Survey question is required and must be at most 85 characters",
                "survey.options": "Survey must have 2-5 options, each a string"}),
        ),
        (
            json!({"name": "t9", "templateContent": "x", "channel": "Viber", "messageType": 6,
                "survey": {"question": emoji_86, "options": ["a", "b", "c", "d", "e", "f"]}}),
            json!({"survey.question": "Survey question is required and must be at most 85 characters",
                "survey.options": "Survey must have 2-5 options, each a string"}),
        ),
        (
            json!({"name": "t10", "templateContent": "x", "channel": "Viber", "messageType": 7,
                "carousel": {"title": "Ж", "items": [{}, {}, {}, {}, {}, {}]}}),
            json!({"carousel.title": "Carousel title must be 2-38 characters",
                "carousel.items": "Carousel must have 2-5 items"}),
        ),
        (
            json!({"name": "t11", "templateContent": "x", "channel": "Viber", "messageType": 7,
                "carousel": {"title": "😀".repeat(39), "items": [{}]}}),
            json!({"carousel.title": "Carousel title must be 2-38 characters",
                "carousel.items": "Carousel must have 2-5 items"}),
        ),
        (
            json!({"name": "t12", "templateContent": "x", "channel": "Viber", "messageType": 7,
                "carousel": {"title": "Deals", "items": [
                    {"imageUrl": "https://cdn.example.com/1.png"},
                    {"imageUrl": "https://10.1.1.1/2.png"}]}}),
            json!({"carousel.items[1].imageUrl": MEDIA_RULE}),
        ),
        (
            json!({"name": "t13", "templateContent": "x", "imageUrl": "http://cdn.example.com/a.png",
                "channel": "Viber"}),
            json!({"imageUrl": MEDIA_RULE,
                "messageType": "Message type must be 1-8 for Viber"}),
        ),
    ];
    let mut expected_bodies = Vec::new();
    for (template, errors) in &cases {
        let (status, answer) = post_json(&proxy, "/api/v1/templates", template.to_string()).await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{template}: {}",
            text(&answer)
        );
        let message = if errors
            .as_object()
            .unwrap()
            .values()
            .all(|v| v == MEDIA_RULE)
        {
            "Image URL is not accessible"
        } else {
            "Template validation failed"
        };
        let expected =
            json!({"error": "Bad Request", "message": message, "validationErrors": errors});
        assert_eq!(common::json(&answer), expected, "{template}");
        expected_bodies.push(expected);
    }
    // The seed's own example, byte for byte.
    let image = json!({"name": "img", "templateContent": "Hi",
        "imageUrl": "http://cdn.example.com/a.png"});
    let (status, answer) = post_json(&proxy, "/api/v1/templates", image.to_string()).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, MEDIA_SEED)
    );
    assert_eq!(
        sim.sim.stats().requests,
        0,
        "the simulator received nothing"
    );
    assert_eq!(rejections(&proxy, "templates", "templateContent"), 3);
    assert_eq!(rejections(&proxy, "templates", "survey.question"), 2);
    assert_eq!(
        rejections(&proxy, "templates", "carousel.items.imageUrl"),
        1
    );

    // The simulator, asked directly, gives the very same answers.
    for ((template, _), expected) in cases.iter().zip(&expected_bodies) {
        let (status, _, answer) = common::sim::call(
            &sim,
            Method::POST,
            "/api/v1/templates",
            Some(KEY),
            template.to_string(),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(&common::json(&answer), expected, "simulator: {template}");
    }

    // Exactly 85 characters, Cyrillic or emoji, pass and reach the API, unchanged.
    for (name, question) in [("cyr", "ж".repeat(85)), ("emoji", "😀".repeat(85))] {
        let body = json!({"name": name, "templateContent": "Pick", "channel": "Viber",
            "messageType": 6, "survey": {"question": question, "options": ["a", "b"]}});
        let (status, answer) = post_json(&proxy, "/api/v1/templates", body.to_string()).await;
        assert_eq!(status, StatusCode::CREATED, "{}", text(&answer));
        assert_eq!(
            common::json(&answer)["survey"]["question"],
            question.as_str()
        );
    }
}

// === malformed input ===

#[tokio::test]
async fn malformed_input_is_a_400_envelope_never_a_500() {
    let (sim, proxy) = setup(|c| c.server.max_body_bytes = 64 * 1024).await;
    let bulk_id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let single_id = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let bulk_path = format!("/api/v1/campaigns/{bulk_id}/bulk/sms");
    let single_path = format!("/api/v1/campaigns/{single_id}/messages/sms");
    let (bulk, single) = (bulk_path.as_str(), single_path.as_str());
    let templates = "/api/v1/templates";
    let before = sim.sim.stats();

    let deep = |inner: &str| format!("{}{inner}{}", "[".repeat(200), "]".repeat(200));
    let json_type = "application/json";
    let cases: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        // (path, content type, body, what the message must mention)
        (bulk, json_type, b"hello".to_vec(), "not valid JSON"),
        (single, json_type, b"hello".to_vec(), "not valid JSON"),
        (
            templates,
            json_type,
            b"{\"name\":".to_vec(),
            "not valid JSON",
        ),
        (
            bulk,
            json_type,
            b"{\"recipients\":[\"38970123456\",]}".to_vec(),
            "not valid JSON",
        ),
        (
            bulk,
            json_type,
            b"{\"recipients\":[\"\xff\"]}".to_vec(),
            "UTF-8",
        ),
        (
            single,
            json_type,
            b"{\"phoneNumber\":\"\xff\"}".to_vec(),
            "not valid JSON",
        ),
        (
            bulk,
            "multipart/form-data; boundary=x",
            bulk_of(&[json!("38970123456")]).into_bytes(),
            "Content-Type",
        ),
        // A lenient Content-Type lets a JSON body through, not a form.
        (
            single,
            "application/x-www-form-urlencoded",
            b"phoneNumber=38970123456".to_vec(),
            "not valid JSON",
        ),
        (
            templates,
            "text/xml",
            b"<template/>".to_vec(),
            "Content-Type",
        ),
        (
            bulk,
            json_type,
            b"[\"38970123456\"]".to_vec(),
            "not a JSON object",
        ),
        (
            single,
            json_type,
            b"[\"38970123456\"]".to_vec(),
            "must be a JSON object",
        ),
        (
            templates,
            json_type,
            b"\"template\"".to_vec(),
            "must be a JSON object",
        ),
        (
            bulk,
            json_type,
            br#"{"recipients":"38970123456"}"#.to_vec(),
            "not an array",
        ),
        (
            bulk,
            json_type,
            br#"{"recipients":{"0":"38970123456"}}"#.to_vec(),
            "not an array",
        ),
        (
            bulk,
            json_type,
            br#"{"to":["38970123456"]}"#.to_vec(),
            "no array",
        ),
        (bulk, json_type, br#"{"recipients":[]}"#.to_vec(), "empty"),
        (
            bulk,
            json_type,
            br#"{"recipients":[38970123456]}"#.to_vec(),
            "Each recipient",
        ),
        (
            bulk,
            json_type,
            br#"{"recipients":[null]}"#.to_vec(),
            "Each recipient",
        ),
        (
            bulk,
            json_type,
            br#"{"recipients":[["38970123456"]]}"#.to_vec(),
            "Each recipient",
        ),
        (
            bulk,
            json_type,
            br#"{"recipients":[{"phone":"38970123456"}]}"#.to_vec(),
            "Each recipient",
        ),
        (
            bulk,
            json_type,
            br#"{"recipients":[{"phoneNumber":38970123456}]}"#.to_vec(),
            "Each recipient",
        ),
        (
            single,
            json_type,
            br#"{"phoneNumber":38970123456}"#.to_vec(),
            "string \"phoneNumber\"",
        ),
        (
            single,
            json_type,
            br#"{"to":"38970123456"}"#.to_vec(),
            "string \"phoneNumber\"",
        ),
        (
            bulk,
            json_type,
            br#"{"recipients":["38970123456"],"recipients":["38970123457"]}"#.to_vec(),
            "duplicate key",
        ),
        (
            bulk,
            json_type,
            br#"{"recipients":[{"phoneNumber":"38970123456","phoneNumber":"1"}]}"#.to_vec(),
            "Each recipient",
        ),
        (
            single,
            json_type,
            br#"{"phoneNumber":"38970123456","phoneNumber":"38970123457"}"#.to_vec(),
            "appears twice",
        ),
        (
            templates,
            json_type,
            br#"{"name":"a","templateContent":"x","survey":{"question":"q","question":"r"}}"#
                .to_vec(),
            "appears twice",
        ),
        (
            bulk,
            json_type,
            format!(r#"{{"recipients":["38970123456"],"x":{}}}"#, deep("1")).into_bytes(),
            "deeper than 127",
        ),
        (
            bulk,
            json_type,
            format!(
                r#"{{"recipients":[{{"phoneNumber":"38970123456","v":{}}}]}}"#,
                deep("")
            )
            .into_bytes(),
            "deeper than 127",
        ),
        (
            single,
            json_type,
            format!(
                r#"{{"phoneNumber":"38970123456","variables":{}}}"#,
                deep("")
            )
            .into_bytes(),
            "deeper than 127",
        ),
        (
            templates,
            json_type,
            format!(r#"{{"templateContent":"x","carousel":{}}}"#, deep("")).into_bytes(),
            "deeper than 127",
        ),
    ];
    for (path, content_type, body, mentions) in &cases {
        let shown = String::from_utf8_lossy(body);
        let shown = &shown[..shown.len().min(80)];
        let (status, _, answer) = post(
            &proxy,
            path,
            &[("Content-Type", content_type)],
            body.clone(),
        )
        .await;
        assert_eq!(
            status,
            StatusCode::BAD_REQUEST,
            "{path} {shown}: {}",
            text(&answer)
        );
        let envelope: Envelope = serde_json::from_slice(&answer).unwrap_or_else(|e| {
            panic!("{path} {shown}: not the envelope ({e}): {}", text(&answer))
        });
        assert_eq!(envelope.error, "Bad Request", "{path} {shown}");
        assert!(
            envelope.message.contains(mentions),
            "{path} {shown}: {:?} does not mention {mentions:?}",
            envelope.message
        );
    }
    // Too large for server.max_body_bytes: 413 in the same envelope.
    let many: Vec<Value> = std::iter::repeat_n(json!("38970123456"), 10_000).collect();
    let huge = bulk_of(&many);
    for path in [bulk, single, templates] {
        let (status, answer) = post_json(&proxy, path, huge.clone()).await;
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{path}");
        assert_eq!(common::json(&answer)["error"], "Payload Too Large");
    }
    assert_eq!(sim.sim.stats(), before, "the simulator received nothing");
    assert_eq!(rejections(&proxy, "bulk", "contentType"), 1);
    assert_eq!(rejections(&proxy, "bulk", "recipients"), 10);
    assert_eq!(rejections(&proxy, "single", "phoneNumber"), 2);
    assert_eq!(rejections(&proxy, "templates", "body"), 4);
}

// === invalid_recipients = "skip" ===

#[tokio::test]
async fn skip_mode_sends_the_rest_and_lists_the_skipped() {
    let (sim, proxy) = setup(|c| {
        route_mode(c, "bulk", Mode::Enforce, InvalidRecipients::Skip);
        // Small parts, so cutting around skipped recipients meets the size limit too.
        let mut routes = c.routes();
        routes[0].max_recipients_per_request = 300;
        c.routes = Some(routes);
    })
    .await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");

    let mut recipients: Vec<Value> = phones(0, 1000)
        .into_iter()
        .enumerate()
        .map(|(i, p)| {
            if i % 3 == 0 {
                json!({"phoneNumber": p, "variables": {"i": i}})
            } else {
                json!(p)
            }
        })
        .collect();
    let bad: [(usize, Value, &str, &str); 7] = [
        (0, json!("12345"), "12345", PHONE_RULE),
        (1, json!("+389 70 123 456"), "+389 70 123 456", PHONE_RULE),
        (
            299,
            json!({"phoneNumber": "3897012345678901", "variables": {}}),
            "3897012345678901",
            PHONE_RULE,
        ),
        (
            500,
            json!(38970123456u64),
            "38970123456",
            validate::recipients::SHAPE_RULE,
        ),
        (
            501,
            json!({"phone": "38970123456"}),
            r#"{"phone":"38970123456"}"#,
            validate::recipients::SHAPE_RULE,
        ),
        (777, json!("Ана"), "Ана", PHONE_RULE),
        (999, json!(""), "", PHONE_RULE),
    ];
    for (index, value, _, _) in &bad {
        recipients[*index] = value.clone();
    }
    let (status, headers, answer) = post(
        &proxy,
        &path,
        &[("Content-Type", "application/json"), ("Prefer", "wait=30")],
        bulk_of(&recipients),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", text(&answer));
    let job = common::json(&answer);
    assert_eq!(job["state"], "succeeded", "{job}");
    assert_eq!(job["recipients"], 993);
    assert_eq!(job["delivered"], 993);
    assert_eq!(job["acceptedCount"], 993);
    let skipped = job["skipped"].as_array().expect("skipped").clone();
    let listed: Vec<(u64, &str, &str)> = skipped
        .iter()
        .map(|s| {
            (
                s["index"].as_u64().unwrap(),
                s["value"].as_str().unwrap(),
                s["reason"].as_str().unwrap(),
            )
        })
        .collect();
    let expected: Vec<(u64, &str, &str)> = bad
        .iter()
        .map(|(i, _, value, reason)| (*i as u64, *value, *reason))
        .collect();
    assert_eq!(listed, expected);
    // Runs 2..299, 300..500, 502..777, 778..999, cut to at most 300 recipients each.
    let sizes: Vec<u64> = job["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["recipients"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, [297, 200, 275, 221]);

    let stats = sim.sim.stats();
    assert_eq!(stats.recipients_accepted, 993, "{stats:?}");
    assert_eq!(stats.distinct_recipients, 993, "{stats:?}");
    assert_eq!(
        proxy
            .metrics
            .validation_skipped
            .with_label_values(&["bulk"])
            .get(),
        7
    );
    // The job JSON keeps the list.
    let job_id = headers["x-sluice-job-id"].to_str().unwrap();
    let (status, _, stored) = send(
        Method::GET,
        &proxy_url(&proxy, &format!("/sluice/v1/jobs/{job_id}")),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(common::json(&stored)["skipped"], Value::Array(skipped));

    // Nothing left to send, or a bad media URL (which concerns every recipient): refused.
    let (status, answer) = post_json(&proxy, &path, bulk_of(&[json!("1"), json!("2")])).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        common::json(&answer)["message"],
        "Invalid phone number format"
    );
    let body = json!({"imageUrl": "http://cdn.example.com/a.png",
        "recipients": ["38970123456", "1"]});
    let (status, answer) = post_json(&proxy, &path, body.to_string()).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, MEDIA_SEED)
    );
    assert_eq!(sim.sim.stats().recipients_accepted, 993);
}

// === warn and off ===

#[tokio::test]
async fn warn_mode_logs_counts_and_sends_anyway() {
    let (sim, proxy) = setup(|c| {
        for route in ["bulk", "single", "templates"] {
            route_mode(c, route, Mode::Warn, InvalidRecipients::Reject);
        }
    })
    .await;
    let bulk_id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let single_id = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let bulk = format!("/api/v1/campaigns/{bulk_id}/bulk/sms");
    let single = format!("/api/v1/campaigns/{single_id}/messages/sms");
    let sends = sim.sim.stats().sends;

    // The API gives its own answers, which come back as they are.
    let (status, answer) = post_json(
        &proxy,
        &bulk,
        bulk_of(&[json!("38970123456"), json!("123")]),
    )
    .await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, PHONE_SEED)
    );
    let body = json!({"phoneNumber": "123"}).to_string();
    let (status, answer) = post_json(&proxy, &single, body).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, PHONE_SEED)
    );
    let body = json!({"phoneNumber": "38970123456", "imageUrl": "http://cdn.example.com/a"});
    let (status, answer) = post_json(&proxy, &single, body.to_string()).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, MEDIA_SEED)
    );
    let template =
        json!({"name": "w", "templateContent": "x", "imageUrl": "http://cdn.example.com/a"});
    let (status, answer) = post_json(&proxy, "/api/v1/templates", template.to_string()).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, MEDIA_SEED)
    );
    // A Content-Type of another format is let through too.
    let body = json!({"phoneNumber": "38970123456"}).to_string();
    let (status, _, answer) = post(
        &proxy,
        &single,
        &[("Content-Type", "application/xml")],
        body,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&answer));

    assert_eq!(
        sim.sim.stats().sends,
        sends + 4,
        "every send reached the API"
    );
    assert_eq!(warnings(&proxy, "bulk", "phoneNumber"), 1);
    assert_eq!(warnings(&proxy, "single", "phoneNumber"), 1);
    assert_eq!(warnings(&proxy, "single", "imageUrl"), 1);
    assert_eq!(warnings(&proxy, "single", "contentType"), 1);
    assert_eq!(warnings(&proxy, "templates", "imageUrl"), 1);
    for (route, field) in [
        ("bulk", "phoneNumber"),
        ("single", "phoneNumber"),
        ("templates", "imageUrl"),
    ] {
        assert_eq!(rejections(&proxy, route, field), 0);
    }
}

#[tokio::test]
async fn off_mode_checks_nothing_and_counts_nothing() {
    let (sim, proxy) = setup(|c| {
        for route in ["bulk", "single", "templates"] {
            route_mode(c, route, Mode::Off, InvalidRecipients::Reject);
        }
    })
    .await;
    let bulk_id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let single_id = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let bulk = format!("/api/v1/campaigns/{bulk_id}/bulk/sms");
    let single = format!("/api/v1/campaigns/{single_id}/messages/sms");
    let requests = sim.sim.stats().requests;

    let (status, answer) = post_json(&proxy, &bulk, bulk_of(&[json!("123")])).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, PHONE_SEED)
    );
    let (status, answer) = post_json(&proxy, &single, r#"{"phoneNumber":"1"}"#).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, PHONE_SEED)
    );
    let template =
        json!({"name": "o", "templateContent": "x", "imageUrl": "http://cdn.example.com/a"});
    let (status, answer) = post_json(&proxy, "/api/v1/templates", template.to_string()).await;
    assert_eq!(
        (status, text(&answer)),
        (StatusCode::BAD_REQUEST, MEDIA_SEED)
    );
    assert_eq!(sim.sim.stats().requests, requests + 3);

    // A bulk body must still be splittable.
    let (status, _) = post_json(&proxy, &bulk, "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(sim.sim.stats().requests, requests + 3);
    let rendered = String::from_utf8(proxy.metrics.render()).unwrap();
    assert!(
        !rendered.contains("sluice_validation_warnings_total{"),
        "{rendered}"
    );
    assert!(
        !rendered.contains("sluice_validation_rejections_total{"),
        "{rendered}"
    );
    assert_eq!(
        proxy
            .metrics
            .queue_rejected
            .with_label_values(&["bulk", "invalid"])
            .get(),
        1
    );
}

#[tokio::test]
async fn requests_without_a_key_get_the_apis_401_first() {
    let (sim, proxy) = setup(|_| {}).await;
    let id = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    for path in [
        format!("/api/v1/campaigns/{id}/messages/sms"),
        "/api/v1/templates".to_string(),
    ] {
        let (status, _, answer) = send(
            Method::POST,
            &proxy_url(&proxy, &path),
            &[("Content-Type", "application/json")],
            r#"{"phoneNumber":"1"}"#,
        )
        .await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{path}: {}",
            text(&answer)
        );
    }
}

#[tokio::test]
async fn a_long_wait_is_not_needed_for_a_refusal() {
    // Refusals are answered before anything is stored: no job, no wait, no Location.
    let (sim, proxy) = setup(|_| {}).await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let started = std::time::Instant::now();
    let (status, headers, _) = post(
        &proxy,
        &path,
        &[("Content-Type", "application/json"), ("Prefer", "wait=30")],
        bulk_of(&[json!("1")]),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(headers.get("x-sluice-job-id").is_none());
    assert!(headers.get("location").is_none());
    assert_eq!(
        proxy
            .metrics
            .jobs_accepted
            .with_label_values(&["bulk"])
            .get(),
        0
    );
    assert_eq!(
        proxy
            .metrics
            .queue_rejected
            .with_label_values(&["bulk", "invalid"])
            .get(),
        1
    );
}

// === properties of the shared rules ===

/// A valid phone number: 10-15 digits, maybe a leading `+`.
fn valid_number() -> impl Strategy<Value = String> {
    (any::<bool>(), "[0-9]{10,15}").prop_map(|(plus, d)| if plus { format!("+{d}") } else { d })
}

/// A string that breaks the rule: any text that is not a valid number.
fn invalid_number() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[0-9]{0,9}",
        "\\+?[0-9]{16,30}",
        ("[0-9]{5,8}", "[^0-9]", "[0-9]{5,8}").prop_map(|(a, c, b)| format!("{a}{c}{b}")),
        "\\+\\+[0-9]{10,15}",
        "[ \t]\\+?[0-9]{10,15}",
    ]
    .prop_filter("not a valid number", |s| {
        let digits = s.strip_prefix('+').unwrap_or(s);
        !((10..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()))
    })
}

fn recipient_check(value: &Value) -> Result<(), &'static str> {
    let raw: Box<serde_json::value::RawValue> =
        serde_json::from_str(&value.to_string()).expect("raw JSON");
    validate::recipients::check(&raw)
}

proptest! {
    #[test]
    fn valid_numbers_always_pass(number in valid_number()) {
        prop_assert!(validate::phone::is_valid(&number));
        let single = json!({"phoneNumber": number}).to_string();
        prop_assert_eq!(validate::send::single(single.as_bytes()), Ok(()));
        prop_assert_eq!(recipient_check(&json!(number)), Ok(()));
        prop_assert_eq!(recipient_check(&json!({"phoneNumber": number, "v": {"x": [1]}})), Ok(()));
        // Escaped in JSON (`\u0033` for `3`), still the same number.
        let escaped: String = number.chars().map(|c| format!("\\u{:04x}", c as u32)).collect();
        let raw: Box<serde_json::value::RawValue> =
            serde_json::from_str(&format!("\"{escaped}\"")).unwrap();
        prop_assert_eq!(validate::recipients::check(&raw), Ok(()));
    }

    #[test]
    fn strings_outside_the_rule_never_pass(text in invalid_number()) {
        prop_assert!(!validate::phone::is_valid(&text));
        let single = json!({"phoneNumber": text}).to_string();
        let refused = validate::send::single(single.as_bytes());
        prop_assert!(matches!(
            refused,
            Err(validate::Rejection::Invalid { message: "Invalid phone number format", .. })
        ), "{:?}", refused);
        prop_assert_eq!(recipient_check(&json!(text)), Err(PHONE_RULE));
        prop_assert_eq!(recipient_check(&json!({"phoneNumber": text})), Err(PHONE_RULE));
    }

    #[test]
    fn survey_questions_count_characters(
        letters in proptest::collection::vec(
            prop_oneof![
                proptest::char::range('а', 'я'),
                proptest::char::range('\u{1F600}', '\u{1F64F}'),
                proptest::char::range('a', 'z'),
            ],
            85,
        ),
        extra in prop_oneof![proptest::char::range('А', 'Я'), proptest::char::range('\u{1F680}', '\u{1F6C5}')],
    ) {
        let question: String = letters.into_iter().collect();
        let template = |q: &str| json!({"name": "s", "templateContent": "x", "channel": "Viber",
            "messageType": 6, "survey": {"question": q, "options": ["a", "b"]}}).to_string();
        prop_assert_eq!(validate::template::request(template(&question).as_bytes()), Ok(()));
        let longer = format!("{question}{extra}");
        let refused = validate::template::request(template(&longer).as_bytes());
        let Err(validate::Rejection::Invalid { errors, .. }) = refused else {
            return Err(TestCaseError::fail("an 86-character question passed"));
        };
        prop_assert_eq!(errors.keys().collect::<Vec<_>>(), ["survey.question"]);
    }

    #[test]
    fn carousel_titles_count_characters(
        title in proptest::collection::vec(
            prop_oneof![proptest::char::range('а', 'я'), proptest::char::range('\u{1F600}', '\u{1F64F}')],
            0..45,
        ),
    ) {
        let title: String = title.into_iter().collect();
        let n = title.chars().count();
        let body = json!({"templateContent": "x", "carousel": {"title": title, "items": [{}, {}]}});
        let ok = validate::template::request(body.to_string().as_bytes()).is_ok();
        prop_assert_eq!(ok, (2..=38).contains(&n), "{} characters", n);
    }
}
