//! Reading the upstream's retry hint from a 429.
//!
//! The provider may say how long to wait in the `Retry-After` header (delta-seconds or an
//! HTTP-date, RFC 9110 §10.2.3), in the JSON body's top-level `retryAfterSeconds`, in
//! both (and the two may differ), or in neither. This module turns whatever is there into
//! one [`Hint`]; it never fails and never panics on hostile input: what cannot be read is
//! treated as absent, and absurdly large values saturate instead of overflowing.

use std::time::{Duration, SystemTime};

use http::{header::RETRY_AFTER, HeaderMap, HeaderValue};
use serde::Deserialize;

/// The wait the upstream asked for, after capping, together with where it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hint {
    /// How long to wait: the larger of `header` and `body`, capped at the caller's maximum.
    pub wait: Duration,
    /// True when the upstream asked for more than the maximum and `wait` was cut down.
    pub capped: bool,
    /// The `Retry-After` header's value as read, before capping (`None`: absent or unreadable).
    pub header: Option<Duration>,
    /// The body's `retryAfterSeconds` as read, before capping (`None`: absent or unreadable).
    pub body: Option<Duration>,
}

/// The only part of a 429 body this module reads; every other field is skipped unparsed.
#[derive(Deserialize)]
struct BodyHint {
    #[serde(rename = "retryAfterSeconds", default)]
    retry_after_seconds: Option<f64>,
}

/// Parses a `Retry-After` header value, relative to `now`.
///
/// - delta-seconds: ASCII digits only (`"120"` → 120 s); a value too large for a `u64`
///   saturates to [`Duration::MAX`];
/// - an HTTP-date in any of the three formats RFC 9110 allows (IMF-fixdate, RFC 850,
///   asctime): the time left until then, or zero if it has passed;
/// - anything else (empty, negative, fractional, garbage, non-ASCII) → `None`.
pub fn parse_retry_after(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim();
    if text.is_empty() {
        return None;
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        // Only digits, so the one way `parse` can fail is overflow: saturate.
        return Some(text.parse().map_or(Duration::MAX, Duration::from_secs));
    }
    let at = httpdate::parse_http_date(text).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Reads the top-level `retryAfterSeconds` of a JSON object body.
///
/// Accepts non-negative integers and floats (`1.5` → 1.5 s); a value too large for a
/// [`Duration`] saturates to [`Duration::MAX`]. Returns `None` when the body is not a JSON
/// object, the field is missing or `null`, or its value is negative or not a number.
/// Fields other than `retryAfterSeconds` (and the same name nested deeper) are skipped
/// without building a `serde_json::Value` tree.
pub fn parse_body_retry_after(body: &[u8]) -> Option<Duration> {
    // A derived struct would also accept a JSON array (`[30]`) positionally: only objects count.
    if body.trim_ascii_start().first() != Some(&b'{') {
        return None;
    }
    let secs = serde_json::from_slice::<BodyHint>(body)
        .ok()?
        .retry_after_seconds?;
    if secs.is_nan() || secs < 0.0 {
        return None;
    }
    if secs == 0.0 {
        // Also covers -0.0, which `try_from_secs_f64` would reject as negative.
        return Some(Duration::ZERO);
    }
    Some(Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX))
}

/// Builds the [`Hint`] of a response from its headers and body.
///
/// The larger of the header's and the body's value wins (the upstream asked for at least
/// that much); it is then capped at `max`, with `capped` set and a warning logged. Returns
/// `None` when neither carries a readable value: the caller falls back to its own backoff.
pub fn hint_from(headers: &HeaderMap, body: &[u8], now: SystemTime, max: Duration) -> Option<Hint> {
    let header = headers
        .get(RETRY_AFTER)
        .and_then(|value| parse_retry_after(value, now));
    let body = parse_body_retry_after(body);
    // `None < Some(_)` for `Option`'s ordering, so `max` keeps the larger present value.
    let asked = header.max(body)?;
    let capped = asked > max;
    if capped {
        tracing::warn!(
            asked_secs = asked.as_secs_f64(),
            max_secs = max.as_secs_f64(),
            "upstream retry hint exceeds the maximum; capping it"
        );
    }
    Some(Hint {
        wait: asked.min(max),
        capped,
        header,
        body,
    })
}

#[cfg(test)]
mod tests;
