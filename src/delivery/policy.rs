//! The delivery tracker's pure decisions, apart from its I/O (`poll.rs`): when to look a
//! message or a campaign up next, what a messages listing or a campaign says, when to
//! stop following, and the bounded metric labels an outcome counts under.
//!
//! Nothing here reads a clock or a socket: times come in as unix milliseconds, answers
//! as bytes, so every rule is tested on its own.

use std::time::Duration;

use serde::Deserialize;

/// What one lookup of a message showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// `Pending`, `Sending`, `Delivered`, `Failed` (or whatever else the API says).
    pub status: String,
    pub code: Option<i64>,
    pub error: Option<String>,
    pub via_fallback: Option<bool>,
    /// `SMS` or `Viber`, as the API lists it.
    pub channel: Option<String>,
    pub message_id: Option<String>,
}

/// A campaign's counters, as `GET /api/v1/campaigns/{id}` shows them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Counters {
    pub status: Option<String>,
    pub channel: Option<String>,
    pub sent_count: u64,
    pub delivered_count: u64,
    pub failed_count: u64,
    pub sms_fallback_delivered_count: u64,
}

/// One message of the listing (only the fields the tracker reads).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    message_id: Option<serde_json::Value>,
    created_at: Option<String>,
    status: Option<String>,
    channel: Option<String>,
    details: Option<Details>,
    delivered_via_sms_fallback: Option<bool>,
}

#[derive(Deserialize)]
struct Details {
    code: Option<i64>,
    error: Option<String>,
}

/// Whether a status is the end of a message's road.
pub fn is_final(status: &str) -> bool {
    matches!(status, "Delivered" | "Failed")
}

/// The wait before the next lookup of something looked up `polls` times already: `first`,
/// doubling each time, at most `max`.
pub fn next_wait(polls: u32, first: Duration, max: Duration) -> Duration {
    first
        .checked_mul(1u32 << polls.min(20))
        .unwrap_or(max)
        .min(max)
        .max(first.min(max))
}

/// Whether something accepted at `accepted_at` is followed no longer at `now` (all unix ms).
pub fn given_up(accepted_at: i64, now: i64, give_up_after: Duration) -> bool {
    now.saturating_sub(accepted_at) > give_up_after.as_millis() as i64
}

/// Finds the message in a messages listing: by its id when the API's answer named one,
/// else the earliest created at or after `since` (unix ms). `Err` when the answer is not a
/// list of messages.
pub fn find_message(
    listing: &[u8],
    message_id: Option<&str>,
    since: i64,
) -> Result<Option<Observed>, String> {
    let listed: Vec<Listed> = serde_json::from_slice(listing)
        .map_err(|e| format!("the messages listing is not a list of messages: {e}"))?;
    let id_of = |v: &serde_json::Value| match v {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let created = |m: &Listed| -> Option<i64> {
        let t = humantime::parse_rfc3339_weak(m.created_at.as_deref()?).ok()?;
        Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as i64)
    };
    let found = match message_id {
        Some(id) => listed
            .into_iter()
            .find(|m| m.message_id.as_ref().map(id_of).as_deref() == Some(id)),
        None => listed
            .into_iter()
            .filter_map(|m| Some((created(&m).filter(|&c| c >= since)?, m)))
            .min_by_key(|(c, _)| *c)
            .map(|(_, m)| m),
    };
    Ok(found.map(|m| Observed {
        status: m.status.unwrap_or_else(|| "Unknown".into()),
        code: m.details.as_ref().and_then(|d| d.code),
        error: m.details.and_then(|d| d.error),
        via_fallback: m.delivered_via_sms_fallback,
        channel: m.channel,
        message_id: m.message_id.as_ref().map(id_of),
    }))
}

/// Reads a campaign's counters. `Err` when the answer is not a campaign.
pub fn read_campaign(body: &[u8]) -> Result<Counters, String> {
    let value: serde_json::Value =
        serde_json::from_slice(body).map_err(|e| format!("the campaign is not JSON: {e}"))?;
    if !value.is_object() {
        return Err("the campaign is not a JSON object".into());
    }
    Counters::deserialize(value).map_err(|e| format!("the campaign's counters: {e}"))
}

/// Whether a campaign's messages have all ended: every one sent is delivered or failed
/// (or the API calls the campaign finished).
pub fn campaign_done(c: &Counters) -> bool {
    let ended = c.delivered_count + c.failed_count;
    (c.sent_count > 0 && ended >= c.sent_count)
        || matches!(
            c.status.as_deref(),
            Some("Completed" | "Cancelled" | "Failed")
        )
}

/// The bounded `channel` label: `sms`, `viber`, or `other`.
pub fn channel_label(channel: Option<&str>) -> &'static str {
    match channel.map(str::to_ascii_lowercase).as_deref() {
        Some("sms") => "sms",
        Some("viber") => "viber",
        _ => "other",
    }
}

/// The bounded `code` label of a failure: the Viber codes `8`, `9`, `10`, else `other`.
pub fn code_label(code: Option<i64>) -> &'static str {
    match code {
        Some(8) => "8",
        Some(9) => "9",
        Some(10) => "10",
        _ => "other",
    }
}

/// The channel of a send from its path's `{channel}` segment (`sms`, `viber`), if any.
pub fn channel_of_params(params: &[(&str, &str)]) -> Option<String> {
    params
        .iter()
        .find(|(name, _)| *name == "channel")
        .map(|(_, v)| match v.to_ascii_lowercase().as_str() {
            "sms" => "SMS".to_string(),
            "viber" => "Viber".to_string(),
            other => other.to_string(),
        })
}

/// The retry hint of a 429 answering a lookup, in seconds (header, else body), if any.
pub fn hint_secs(retry_after: Option<&str>, body: &[u8]) -> Option<u64> {
    if let Some(secs) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Some(secs);
    }
    let v: serde_json::Value = serde_json::from_slice(body).ok()?;
    v.get("retryAfterSeconds")?.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    const LISTING: &str = r#"[
      {"messageId":"m-1","campaignId":7,"phoneNumber":"38970000009","channel":"Viber",
       "createdAt":"2026-01-01T00:00:00.000Z","status":"Failed",
       "details":{"code":9,"error":"NOT_VIBER_USER"},"deliveredViaSmsFallback":false},
      {"messageId":"m-2","campaignId":7,"phoneNumber":"38970000009","channel":"Viber",
       "createdAt":"2026-01-01T00:00:05.000Z","status":"Pending"}]"#;

    #[test]
    fn a_message_is_found_by_id_else_by_time() {
        let m = find_message(LISTING.as_bytes(), Some("m-1"), 0)
            .unwrap()
            .unwrap();
        assert_eq!(
            (m.status.as_str(), m.code, m.error.as_deref()),
            ("Failed", Some(9), Some("NOT_VIBER_USER"))
        );
        assert_eq!(
            (m.via_fallback, m.channel.as_deref()),
            (Some(false), Some("Viber"))
        );
        assert!(is_final(&m.status));
        let t = 1_767_225_601_000; // 2026-01-01T00:00:01Z
        let m = find_message(LISTING.as_bytes(), None, t).unwrap().unwrap();
        assert_eq!(
            (m.message_id.as_deref(), m.status.as_str()),
            (Some("m-2"), "Pending")
        );
        assert!(!is_final(&m.status));
        assert_eq!(find_message(LISTING.as_bytes(), Some("m-3"), 0), Ok(None));
        assert!(find_message(b"{}", None, 0).is_err());
    }

    #[test]
    fn waits_double_up_to_the_cap() {
        let (first, max) = (Duration::from_secs(1), Duration::from_secs(10));
        let waits: Vec<u64> = (0..6).map(|n| next_wait(n, first, max).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(next_wait(u32::MAX, first, max), max);
        assert!(given_up(0, 11_000, Duration::from_secs(10)));
        assert!(!given_up(0, 10_000, Duration::from_secs(10)));
    }

    #[test]
    fn campaigns_are_done_when_every_sent_message_ended() {
        let body = br#"{"id":7,"status":"InProgress","channel":"Viber","sentCount":10,
            "deliveredCount":6,"failedCount":3,"smsFallbackDeliveredCount":2}"#;
        let mut c = read_campaign(body).unwrap();
        assert_eq!((c.sent_count, c.sms_fallback_delivered_count), (10, 2));
        assert!(!campaign_done(&c));
        c.failed_count = 4;
        assert!(campaign_done(&c));
        assert!(!campaign_done(&Counters::default()));
        assert!(read_campaign(b"[1]").is_err());
    }

    #[test]
    fn labels_stay_bounded() {
        assert_eq!(channel_label(Some("Viber")), "viber");
        assert_eq!(channel_label(Some("SMS")), "sms");
        assert_eq!(channel_label(Some("fax")), "other");
        assert_eq!(channel_label(None), "other");
        let codes: Vec<_> = [Some(8), Some(9), Some(10), Some(1), None]
            .map(code_label)
            .to_vec();
        assert_eq!(codes, ["8", "9", "10", "other", "other"]);
        assert_eq!(
            channel_of_params(&[("campaignId", "7"), ("channel", "viber")]).as_deref(),
            Some("Viber")
        );
    }

    #[test]
    fn hints_come_from_the_header_or_the_body() {
        assert_eq!(hint_secs(Some("3"), b""), Some(3));
        assert_eq!(hint_secs(None, br#"{"retryAfterSeconds":30}"#), Some(30));
        assert_eq!(hint_secs(Some("soon"), b"{}"), None);
    }
}
