//! Helpers for talking to the simulator's API in tests: calls with a key, campaigns,
//! phone numbers and bulk bodies.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};

use super::{json, send, Running};

/// The default configuration's only API key.
pub const KEY: &str = "demo-key";

/// One API call with `key` (no header when `None`).
pub async fn call(
    run: &Running,
    method: Method,
    path: &str,
    key: Option<&str>,
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
    send(method, &run.url(path), &headers, body).await
}

/// A response body as text (the simulator always answers UTF-8).
pub fn text(body: &Bytes) -> &str {
    std::str::from_utf8(body).expect("a UTF-8 body")
}

/// Creates a campaign (started unless `start` is false) for `key`; returns its id.
pub async fn campaign(run: &Running, key: &str, kind: &str, channel: &str, start: bool) -> u64 {
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
pub fn phones(first: u64, n: u64) -> Vec<String> {
    (first..first + n).map(|i| format!("3897{i:07}")).collect()
}

/// The messages `GET /api/v1/messages` lists for `phone`, oldest first.
pub async fn messages(run: &Running, phone: &str) -> Vec<Value> {
    let path = format!("/api/v1/messages?phoneNumber={}", phone.replace('+', "%2B"));
    let (status, _, body) = call(run, Method::GET, &path, Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    match json(&body) {
        Value::Array(list) => list,
        other => panic!("not a list: {other}"),
    }
}

/// Panics unless `value` is an RFC 3339 UTC time with milliseconds, within a minute of
/// now (wall clock: paused tokio time does not stop it).
pub fn assert_recent(value: &Value) {
    let shown = value.as_str().expect("createdAt is a string");
    assert!(
        shown.len() == 24 && shown.ends_with('Z') && shown.as_bytes()[19] == b'.',
        "RFC 3339 with milliseconds in UTC: {shown}"
    );
    let at = humantime::parse_rfc3339(shown).expect("an RFC 3339 time");
    let age = SystemTime::now()
        .duration_since(at)
        .unwrap_or_else(|e| e.duration());
    assert!(age < Duration::from_secs(60), "{shown} is not about now");
}

pub fn bulk_body(phones: &[String]) -> String {
    json!({ "recipients": phones }).to_string()
}

pub async fn bulk(
    run: &Running,
    id: u64,
    channel: &str,
    body: String,
) -> (StatusCode, HeaderMap, Bytes) {
    let path = format!("/api/v1/campaigns/{id}/bulk/{channel}");
    call(run, Method::POST, &path, Some(KEY), body).await
}
