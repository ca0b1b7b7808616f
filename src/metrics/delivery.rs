//! The delivery tracker's metrics: what became of the messages sluice sent, and the
//! counters of the campaigns it follows.
//!
//! Labels are bounded: `channel` is `sms`, `viber` or `other`; `code` is `8`, `9`, `10` or
//! `other`; `kind`, `result`, `count` and `state` are fixed sets. Never a phone number, a
//! campaign id, a job id or a key: campaign counters are summed over the campaigns
//! followed.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// Every collector of the delivery tracker.
pub struct DeliveryMetrics {
    pub delivered: IntCounterVec,
    pub failed: IntCounterVec,
    pub sms_fallback: IntCounterVec,
    pub latency: Histogram,
    pub lookups: IntCounterVec,
    pub campaign_messages: IntGaugeVec,
    pub campaigns: IntGaugeVec,
    pub journal_dropped: IntCounter,
}

/// Accepted → final, in seconds: 1 s to a day.
const DELIVERY_BUCKETS: &[f64] = &[
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
];

pub const CHANNELS: [&str; 3] = ["sms", "viber", "other"];
pub const CODES: [&str; 4] = ["8", "9", "10", "other"];

impl DeliveryMetrics {
    pub fn register(registry: &Registry) -> Self {
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let latency = Histogram::with_opts(
            HistogramOpts::new(
                "sluice_delivery_latency_seconds",
                "Time from the API accepting a single send to sluice seeing its message Delivered or Failed.",
            )
            .buckets(DELIVERY_BUCKETS.to_vec()),
        )
        .expect("valid metric");
        registry
            .register(Box::new(latency.clone()))
            .expect("unique metric");
        let dropped = IntCounter::new(
            "sluice_journal_dropped_total",
            "Journal entries (support bundles, delivery tracking) dropped because the journal's writer was behind.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(dropped.clone()))
            .expect("unique metric");
        let m = Self {
            delivered: counter_vec(
                "sluice_messages_delivered_total",
                "Messages of single sends that ended Delivered (SMS fallback included), by channel: sms, viber, other.",
                &["channel"],
            ),
            failed: counter_vec(
                "sluice_messages_failed_total",
                "Messages of single sends that ended Failed, by channel and details.code: 8 (USER_BLOCKED), 9 (NOT_VIBER_USER), 10 (NO_SUITABLE_DEVICE), other.",
                &["channel", "code"],
            ),
            sms_fallback: counter_vec(
                "sluice_messages_sms_fallback_total",
                "Messages of single sends delivered by SMS fallback after Viber failed, by the channel they were sent on.",
                &["channel"],
            ),
            latency,
            lookups: counter_vec(
                "sluice_delivery_lookups_total",
                "Lookups the delivery tracker made, by kind (message, campaign) and result: ok, error, rate_limited, deferred (the key was cooling or the API down: not sent).",
                &["kind", "result"],
            ),
            campaign_messages: gauge_vec(
                "sluice_campaign_messages",
                "Campaign counters summed over the campaigns sluice follows for bulk sends, by count: sent, delivered, failed, sms_fallback_delivered.",
                &["count"],
            ),
            campaigns: gauge_vec(
                "sluice_campaigns_followed",
                "Campaigns sluice follows for bulk sends, by state: active (still looked at), finished.",
                &["state"],
            ),
            journal_dropped: dropped,
        };
        for channel in CHANNELS {
            m.delivered.with_label_values(&[channel]);
            m.sms_fallback.with_label_values(&[channel]);
            for code in CODES {
                m.failed.with_label_values(&[channel, code]);
            }
        }
        for kind in ["message", "campaign"] {
            for result in ["ok", "error", "rate_limited", "deferred"] {
                m.lookups.with_label_values(&[kind, result]);
            }
        }
        for count in ["sent", "delivered", "failed", "sms_fallback_delivered"] {
            m.campaign_messages.with_label_values(&[count]);
        }
        for state in ["active", "finished"] {
            m.campaigns.with_label_values(&[state]);
        }
        m
    }
}
