//! Tests for reading retry hints: the header in both forms, the body field, and how the two combine.

use super::*;

/// 1994-11-06 08:49:37 UTC, the RFC's example date, as seconds since the epoch.
const RFC_EXAMPLE: u64 = 784_111_777;
const MAX: Duration = Duration::from_secs(300);

fn at(secs: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
}

fn header(value: &str) -> Option<Duration> {
    parse_retry_after(&HeaderValue::from_str(value).unwrap(), at(RFC_EXAMPLE - 30))
}

fn headers(value: &str) -> HeaderMap {
    let mut map = HeaderMap::new();
    map.insert(RETRY_AFTER, HeaderValue::from_str(value).unwrap());
    map
}

fn secs(n: u64) -> Option<Duration> {
    Some(Duration::from_secs(n))
}

#[test]
fn header_delta_seconds() {
    assert_eq!(header("120"), secs(120));
    assert_eq!(header("0"), secs(0));
    assert_eq!(header("007"), secs(7));
    assert_eq!(header(" 30 "), secs(30));
}

#[test]
fn header_rejects_what_is_not_delta_seconds_or_a_date() {
    for bad in [
        "", "   ", "-5", "+5", "1.5", "1e3", "30s", "soon", "0x10", "12 34",
    ] {
        assert_eq!(header(bad), None, "{bad:?}");
    }
    let non_ascii = HeaderValue::from_bytes(b"3\xe90").unwrap();
    assert_eq!(parse_retry_after(&non_ascii, at(0)), None);
}

#[test]
fn header_huge_delta_saturates() {
    assert_eq!(header("99999999999999999999"), Some(Duration::MAX));
    assert_eq!(header("18446744073709551615"), secs(u64::MAX));
}

#[test]
fn header_http_date_in_all_three_formats() {
    for date in [
        "Sun, 06 Nov 1994 08:49:37 GMT",  // IMF-fixdate
        "Sunday, 06-Nov-94 08:49:37 GMT", // RFC 850
        "Sun Nov  6 08:49:37 1994",       // asctime
    ] {
        assert_eq!(header(date), secs(30), "{date:?}");
    }
}

#[test]
fn header_http_date_in_the_past_is_zero() {
    let value = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
    assert_eq!(parse_retry_after(&value, at(RFC_EXAMPLE + 100)), secs(0));
    assert_eq!(parse_retry_after(&value, at(RFC_EXAMPLE)), secs(0));
}

#[test]
fn body_field() {
    let cases: &[(&str, Option<Duration>)] = &[
        (r#"{"retryAfterSeconds":30}"#, secs(30)),
        (r#"{"retryAfterSeconds":0}"#, secs(0)),
        (r#"{"retryAfterSeconds":-0.0}"#, secs(0)),
        (
            r#"{"retryAfterSeconds":1.5}"#,
            Some(Duration::from_millis(1500)),
        ),
        (r#"{"retryAfterSeconds":30.0}"#, secs(30)),
        (r#"{"retryAfterSeconds":-5}"#, None),
        (r#"{"retryAfterSeconds":-0.5}"#, None),
        (r#"{"retryAfterSeconds":"30"}"#, None),
        (r#"{"retryAfterSeconds":true}"#, None),
        (r#"{"retryAfterSeconds":null}"#, None),
        (r#"{"retryAfterSeconds":[30]}"#, None),
        (r#"{"error":"Rate limit exceeded"}"#, None),
        (r#"{"details":{"retryAfterSeconds":30}}"#, None),
        (r#"[30]"#, None),
        (r#"30"#, None),
        ("", None),
        ("not json", None),
        (r#"{"retryAfterSeconds":30"#, None),
    ];
    for (body, want) in cases {
        assert_eq!(parse_body_retry_after(body.as_bytes()), *want, "{body}");
    }
}

#[test]
fn body_field_among_the_seeds_other_fields() {
    let body = serde_json::to_vec(&crate::api::RateLimitBody::new(48500, 5000, 50000, 30));
    assert_eq!(parse_body_retry_after(&body.unwrap()), secs(30));
    let nested_first = br#" {"details":{"retryAfterSeconds":1},"retryAfterSeconds":7} "#;
    assert_eq!(parse_body_retry_after(nested_first), secs(7));
}

#[test]
fn body_huge_saturates() {
    let body = br#"{"retryAfterSeconds":99999999999999999999999}"#;
    assert_eq!(parse_body_retry_after(body), Some(Duration::MAX));
    let body = br#"{"retryAfterSeconds":1e300}"#;
    assert_eq!(parse_body_retry_after(body), Some(Duration::MAX));
}

#[test]
fn hint_from_header_only_body_only_both_and_neither() {
    let now = at(RFC_EXAMPLE);
    let body = br#"{"retryAfterSeconds":45}"#;

    let only_header = hint_from(&headers("30"), b"{}", now, MAX).unwrap();
    assert_eq!(only_header.wait, Duration::from_secs(30));
    assert_eq!((only_header.header, only_header.body), (secs(30), None));
    assert!(!only_header.capped);

    let only_body = hint_from(&HeaderMap::new(), body, now, MAX).unwrap();
    assert_eq!(only_body.wait, Duration::from_secs(45));
    assert_eq!((only_body.header, only_body.body), (None, secs(45)));

    // The larger wins, whichever side it is on.
    let body_larger = hint_from(&headers("30"), body, now, MAX).unwrap();
    assert_eq!(body_larger.wait, Duration::from_secs(45));
    assert_eq!((body_larger.header, body_larger.body), (secs(30), secs(45)));
    let header_larger = hint_from(&headers("60"), body, now, MAX).unwrap();
    assert_eq!(header_larger.wait, Duration::from_secs(60));

    assert_eq!(hint_from(&HeaderMap::new(), b"", now, MAX), None);
    assert_eq!(hint_from(&headers("soon"), b"garbage", now, MAX), None);
    assert_eq!(
        hint_from(&headers("-5"), br#"{"retryAfterSeconds":-5}"#, now, MAX),
        None
    );
}

#[test]
fn hint_from_an_unreadable_side_falls_back_to_the_other() {
    let hint = hint_from(&headers("1.5"), br#"{"retryAfterSeconds":12}"#, at(0), MAX);
    assert_eq!(hint.unwrap().wait, Duration::from_secs(12));
    let hint = hint_from(&headers("12"), br#"{"retryAfterSeconds":"x"}"#, at(0), MAX);
    assert_eq!(hint.unwrap().wait, Duration::from_secs(12));
}

#[test]
fn hint_from_an_http_date_header() {
    let hint = hint_from(
        &headers("Sun, 06 Nov 1994 08:49:37 GMT"),
        b"",
        at(RFC_EXAMPLE - 90),
        MAX,
    );
    assert_eq!(hint.unwrap().wait, Duration::from_secs(90));
}

#[test]
fn hint_from_caps_at_max_and_says_so() {
    let hint = hint_from(&headers("301"), b"", at(0), MAX).unwrap();
    assert_eq!(hint.wait, MAX);
    assert!(hint.capped);
    assert_eq!(hint.header, secs(301));

    let huge = hint_from(&headers("99999999999999999999"), b"", at(0), MAX).unwrap();
    assert_eq!((huge.wait, huge.capped), (MAX, true));

    let exactly = hint_from(&headers("300"), b"", at(0), MAX).unwrap();
    assert_eq!((exactly.wait, exactly.capped), (MAX, false));
}
