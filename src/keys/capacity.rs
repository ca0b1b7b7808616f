//! What the API's 429 bodies say about a key's pending-message capacity.
//!
//! The 429 body carries `currentPending`, `maxAllowed` and `availableCapacity`. The proxy
//! exports the last figures per key (so operators see how close they run to the limit),
//! and the send queue uses `maxAllowed` to cut parts the API could never accept.

use serde::Deserialize;

use crate::metrics::Metrics;

/// The capacity fields of a 429 body; each may be missing.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capacity {
    pub current_pending: Option<u64>,
    pub requested_count: Option<u64>,
    pub max_allowed: Option<u64>,
    pub available_capacity: Option<u64>,
}

// === impl Capacity ===

impl Capacity {
    /// Reads the fields from a 429 body; anything unreadable gives all-`None`.
    pub fn parse(body: &[u8]) -> Self {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// Sets the capacity gauges of `key_label` from a 429 body.
pub fn record(metrics: &Metrics, key_label: &str, body: &[u8]) -> Capacity {
    let cap = Capacity::parse(body);
    for (field, value) in [
        ("current_pending", cap.current_pending),
        ("max_allowed", cap.max_allowed),
        ("available_capacity", cap.available_capacity),
    ] {
        if let Some(v) = value {
            metrics
                .capacity
                .with_label_values(&[key_label, field])
                .set(i64::try_from(v).unwrap_or(i64::MAX));
        }
    }
    cap
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_seed_429_and_tolerates_anything_else() {
        let seed = br#"{"error":"Rate limit exceeded","message":"...","currentPending":48500,"requestedCount":5000,"maxAllowed":50000,"availableCapacity":1500,"retryAfterSeconds":30}"#;
        let cap = Capacity::parse(seed);
        assert_eq!(cap.max_allowed, Some(50000));
        assert_eq!(cap.available_capacity, Some(1500));
        assert_eq!(Capacity::parse(b"not json"), Capacity::default());
        assert_eq!(
            Capacity::parse(br#"{"maxAllowed":"x"}"#),
            Capacity::default()
        );
    }
}
