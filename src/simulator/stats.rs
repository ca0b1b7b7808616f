//! What the simulator saw, for tests and benchmarks to judge a client by.
//!
//! [`SimStats`] is a plain snapshot, served as JSON at `GET /_sim/stats` (the
//! simulator's own endpoint: no API key, not counted in the figures, not part of the
//! provider's API) and returned by `Simulator::stats()` in-process. The recorder behind
//! it keeps per-key notes on 429s so it can tell whether a client shrank its batches and
//! honoured the retry hint. The outcome counters (`delivered`, `failed`, …) are not
//! recorded here: `Simulator::stats()` fills them from the world, brought up to date
//! first, so they are the truth a client's view can be compared with.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// A snapshot of the simulator's counters. Field names are the JSON names.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
pub struct SimStats {
    /// API requests answered (every status, unknown paths included; not `/_sim/stats`).
    pub requests: u64,
    /// API requests by response status code.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests to a send endpoint (bulk or single), whatever their outcome.
    pub sends: u64,
    /// Send requests accepted (202 or 201).
    pub accepted_sends: u64,
    /// 429 responses.
    pub rate_limited: u64,
    /// 500 responses injected by `fail_rate`.
    pub injected_failures: u64,
    /// Recipients accepted, summed over accepted bulk and single sends.
    pub recipients_accepted: u64,
    /// Distinct (campaign, phone number) pairs accepted.
    pub distinct_recipients: u64,
    /// Recipients accepted again for a campaign that had already accepted that number;
    /// each extra time counts once.
    pub duplicate_recipients: u64,
    /// Largest recipients count of a send request (whose body was well-formed) that
    /// arrived, for any key, after that key's first 429. 0 when no key saw a 429.
    pub max_batch_after_first_429: u64,
    /// Send requests refused with 429 that arrived before the retry hint of that key's
    /// previous 429 had elapsed (the configured `retry_after`, whatever the hint mode).
    pub early_retries: u64,
    /// Largest recipients count of any send request whose body was well-formed.
    pub largest_batch: u64,
    /// Processed sends whose connection was closed instead of answered (`reset_rate`).
    /// Not in `requests` nor `by_status`: nothing was answered.
    pub resets: u64,
    /// Processed sends answered only after `answer_delay` (counted when the wait starts).
    pub delayed_answers: u64,
    /// Outages started (`Simulator::start_outage` or the control endpoint).
    pub outages: u64,
    /// Messages Delivered so far (every company and channel, SMS fallback included): the
    /// sum of the campaigns' `deliveredCount`.
    pub delivered: u64,
    /// Messages Failed so far: the sum of the campaigns' `failedCount`, and of
    /// `failed_by_code`.
    pub failed: u64,
    /// Messages Failed so far by their `details.code` (8, 9, 10 for Viber, 1 for SMS);
    /// codes with none are left out. Fallback deliveries are not failures: not here.
    pub failed_by_code: BTreeMap<u16, u64>,
    /// Viber messages delivered by SMS fallback so far: the sum of the campaigns'
    /// `smsFallbackDeliveredCount`.
    pub sms_fallback_delivered: u64,
}

/// Accumulates [`SimStats`] and the per-key 429 notes.
#[derive(Debug, Default)]
pub struct StatsRecorder {
    stats: SimStats,
    keys: HashMap<String, KeyNotes>,
}

/// Per-key memory of 429s.
#[derive(Debug, Default)]
struct KeyNotes {
    seen_429: bool,
    /// When the retry hint of the key's last 429 elapses.
    hint_until: Option<Instant>,
}

// === impl StatsRecorder ===

impl StatsRecorder {
    /// Counts one answered API request.
    pub fn response(&mut self, status: u16) {
        self.stats.requests += 1;
        *self.stats.by_status.entry(status).or_default() += 1;
    }

    /// Counts one request to a send endpoint.
    pub fn send(&mut self) {
        self.stats.sends += 1;
    }

    /// Counts one injected 500.
    pub fn injected_failure(&mut self) {
        self.stats.injected_failures += 1;
    }

    /// Notes the recipients count of a well-formed send request from `key`.
    pub fn batch(&mut self, key: &str, recipients: u64) {
        self.stats.largest_batch = self.stats.largest_batch.max(recipients);
        if self.keys.get(key).is_some_and(|notes| notes.seen_429) {
            let max = &mut self.stats.max_batch_after_first_429;
            *max = (*max).max(recipients);
        }
    }

    /// Counts an accepted send.
    pub fn accepted(&mut self, count: u64, distinct_new: u64, duplicates: u64) {
        self.stats.accepted_sends += 1;
        self.stats.recipients_accepted += count;
        self.stats.distinct_recipients += distinct_new;
        self.stats.duplicate_recipients += duplicates;
    }

    /// Counts a 429 for `key` at `now`, whose hint is `retry_after`.
    pub fn rate_limited(&mut self, key: &str, now: Instant, retry_after: Duration) {
        self.stats.rate_limited += 1;
        let notes = match self.keys.get_mut(key) {
            Some(notes) => notes,
            None => self.keys.entry(key.to_owned()).or_default(),
        };
        if notes.hint_until.is_some_and(|until| now < until) {
            self.stats.early_retries += 1;
        }
        notes.seen_429 = true;
        notes.hint_until = Some(now + retry_after);
    }

    /// Counts one connection reset instead of an answer.
    pub fn reset(&mut self) {
        self.stats.resets += 1;
    }

    /// Counts one answer held back by `answer_delay`.
    pub fn delayed_answer(&mut self) {
        self.stats.delayed_answers += 1;
    }

    /// Counts one outage started.
    pub fn outage(&mut self) {
        self.stats.outages += 1;
    }

    /// A copy of the counters.
    pub fn snapshot(&self) -> SimStats {
        self.stats.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn early_retries_count_only_429s_inside_the_previous_hint() {
        let mut rec = StatsRecorder::default();
        let t0 = Instant::now();
        let hint = Duration::from_secs(30);
        rec.rate_limited("a", t0, hint); // first 429: nothing to be early for
        rec.rate_limited("a", t0 + Duration::from_secs(5), hint); // early
        rec.rate_limited("b", t0 + Duration::from_secs(6), hint); // other key: first
        rec.rate_limited("a", t0 + Duration::from_secs(40), hint); // 35 s after: on time
        let stats = rec.snapshot();
        assert_eq!(stats.rate_limited, 4);
        assert_eq!(stats.early_retries, 1);
    }

    #[test]
    fn max_batch_after_first_429_is_per_key() {
        let mut rec = StatsRecorder::default();
        rec.batch("a", 900);
        rec.rate_limited("a", Instant::now(), Duration::from_secs(1));
        rec.batch("b", 800); // b never saw a 429
        rec.batch("a", 300);
        rec.batch("a", 200);
        let stats = rec.snapshot();
        assert_eq!(stats.largest_batch, 900);
        assert_eq!(stats.max_batch_after_first_429, 300);
    }

    #[test]
    fn snapshot_round_trips_through_json() {
        let mut rec = StatsRecorder::default();
        rec.response(202);
        rec.response(429);
        rec.accepted(3, 2, 1);
        let stats = rec.snapshot();
        let json = serde_json::to_string(&stats).unwrap();
        assert!(json.contains(r#""by_status":{"202":1,"429":1}"#), "{json}");
        assert_eq!(serde_json::from_str::<SimStats>(&json).unwrap(), stats);
    }
}
