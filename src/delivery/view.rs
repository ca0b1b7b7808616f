//! The `delivery` object of the job JSON (`/sluice/v1/jobs/{id}`): what became of a single
//! send's message, or the counters of a bulk send's campaign.
//!
//! ```json
//! "delivery": {"status": "Failed", "code": 9, "error": "NOT_VIBER_USER",
//!              "deliveredViaSmsFallback": false, "messageId": "…", "channel": "Viber",
//!              "final": true, "checkedAt": "2026-…Z"}
//! "delivery": {"campaignId": 7, "campaignStatus": "InProgress", "sentCount": 1000,
//!              "deliveredCount": 900, "failedCount": 40, "smsFallbackDeliveredCount": 25,
//!              "final": false, "checkedAt": "2026-…Z"}
//! ```
//! `final` says whether sluice still looks: a message is final once Delivered or Failed (or
//! given up on after `delivery.give_up_after_secs`), a campaign once every message it sent
//! ended.

use serde_json::{json, Map, Value};

use super::policy::Counters;
use crate::queue::view::rfc3339;

/// A single send's message as the journal holds it.
pub struct Message {
    pub status: String,
    pub code: Option<i64>,
    pub error: Option<String>,
    pub via_fallback: Option<bool>,
    pub message_id: Option<String>,
    pub channel: Option<String>,
    pub checked_at: Option<i64>,
    pub final_at: Option<i64>,
    pub next_poll_at: Option<i64>,
}

/// A single send's delivery.
pub fn single(m: Message) -> Value {
    let Message {
        status,
        code,
        error,
        via_fallback,
        message_id,
        channel,
        checked_at,
        final_at,
        next_poll_at,
    } = m;
    let mut v = Map::new();
    v.insert("status".into(), status.into());
    if let Some(code) = code {
        v.insert("code".into(), code.into());
    }
    if let Some(error) = error {
        v.insert("error".into(), error.into());
    }
    if let Some(via) = via_fallback {
        v.insert("deliveredViaSmsFallback".into(), via.into());
    }
    if let Some(id) = message_id {
        v.insert("messageId".into(), id.into());
    }
    if let Some(channel) = channel {
        v.insert("channel".into(), channel.into());
    }
    v.insert("final".into(), next_poll_at.is_none().into());
    v.insert("checkedAt".into(), checked_at.map(rfc3339).into());
    if let Some(at) = final_at {
        v.insert("finalAt".into(), rfc3339(at).into());
    }
    Value::Object(v)
}

/// A bulk send's campaign counters.
pub fn campaign(id: &str, c: &Counters, checked_at: Option<i64>, done: bool) -> Value {
    let id = id
        .parse::<u64>()
        .map_or_else(|_| Value::from(id), Value::from);
    json!({
        "campaignId": id,
        "campaignStatus": c.status,
        "sentCount": c.sent_count,
        "deliveredCount": c.delivered_count,
        "failedCount": c.failed_count,
        "smsFallbackDeliveredCount": c.sms_fallback_delivered_count,
        "final": done,
        "checkedAt": checked_at.map(rfc3339),
    })
}
