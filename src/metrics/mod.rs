//! Prometheus metrics: one registry, every collector the proxy exports, and their HELP.
//!
//! Naming follows Prometheus conventions: prefix `sluice_`, `_total` for counters,
//! `_seconds` for durations, base units. Labels stay low-cardinality: a route name, a
//! status code, a reason, a wait source, a key's alias or short fingerprint. Never a key,
//! a phone number, a job id or a path parameter.

use std::time::Duration;

mod process;

use crate::retry::Outcome;
use process::Process;
use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

/// Every collector, registered once at start and shared behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    pub client_requests: IntCounterVec,
    pub client_duration: HistogramVec,
    pub upstream_requests: IntCounterVec,
    pub upstream_rate_limited: IntCounterVec,
    pub upstream_failures: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub retries: IntCounterVec,
    pub retry_wait: HistogramVec,
    pub hints_capped: IntCounter,
    pub deadline_exceeded: IntCounterVec,
    pub cooldowns_started: IntCounterVec,
    pub cooldown_remaining: prometheus::GaugeVec,
    pub cooldown_waiting: IntGauge,
    pub keys_trimmed: IntCounter,
    pub keys_injected: IntCounter,
    pub capacity: IntGaugeVec,
    pub jobs_accepted: IntCounterVec,
    pub queue_rejected: IntCounterVec,
    pub parts_split: IntCounterVec,
    pub dead_letters: IntCounterVec,
    pub recipients_delivered: IntCounterVec,
    pub recipients_failed: IntCounterVec,
    pub queue_jobs: IntGaugeVec,
    pub queue_parts: IntGaugeVec,
    pub queue_recipients: IntGauge,
    pub queue_oldest_age: prometheus::Gauge,
    pub queue_disk_bytes: IntGauge,
    pub store_writable: IntGauge,
    pub validation_rejections: IntCounterVec,
    pub validation_skipped: IntCounterVec,
    pub validation_warnings: IntCounterVec,
    pub upstream_up: IntGauge,
    pub upstream_outages: IntCounter,
    pub upstream_waiting: IntGauge,
    pub reconciliations: IntCounterVec,
    pub recipients_uncertain: IntCounterVec,
    pub connections_open: IntGaugeVec,
    pub connections_closed: IntCounterVec,
    pub requests_shed: IntCounter,
    pub state_entries: IntGaugeVec,
    process: Process,
    pub build_info: IntGaugeVec,
    pub idempotent_replays: IntCounterVec,
    pub lenient_content_type: IntCounterVec,
}

/// Buckets for request latencies (seconds): 1 ms to 60 s.
const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];
/// Buckets for retry waits (seconds), 50 ms to 5½ min: a bound at each whole hint a
/// typical API gives (1, 2, 3, 5, 10, 30, 60 s…) and one just above it, so that a hint plus
/// sluice's jitter (up to 250 ms by default) lands in its own bucket.
const WAIT_BUCKETS: &[f64] = &[
    0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0, 12.5, 15.0, 20.0,
    25.0, 30.0, 32.5, 45.0, 60.0, 90.0, 120.0, 180.0, 240.0, 300.0, 330.0,
];

// === impl Metrics ===

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        Self {
            client_requests: counter_vec(
                &registry,
                "sluice_client_requests_total",
                "Requests received from client apps, by route and the status sluice answered with.",
                &["route", "status"],
            ),
            client_duration: histogram_vec(
                &registry,
                "sluice_client_request_duration_seconds",
                "Time from a client request's arrival to sluice's response headers, including retries and waits.",
                &["route"],
                LATENCY_BUCKETS,
            ),
            upstream_requests: counter_vec(
                &registry,
                "sluice_upstream_requests_total",
                "Attempts sent to the messaging API that got a response, by route and the API's status code.",
                &["route", "status"],
            ),
            upstream_rate_limited: counter_vec(
                &registry,
                "sluice_upstream_rate_limited_total",
                "429 Too Many Requests answers from the messaging API (pending-message capacity), by route.",
                &["route"],
            ),
            upstream_failures: counter_vec(
                &registry,
                "sluice_upstream_failures_total",
                "Attempts to the messaging API that failed, by route and reason: status_4xx, status_5xx, timeout, connect, body.",
                &["route", "reason"],
            ),
            upstream_duration: histogram_vec(
                &registry,
                "sluice_upstream_request_duration_seconds",
                "Time for one attempt to the messaging API until its response headers arrived.",
                &["route"],
                LATENCY_BUCKETS,
            ),
            retries: counter_vec(
                &registry,
                "sluice_retries_total",
                "Attempts sluice repeated, by why the previous one did not succeed: rate_limited, status_5xx, timeout, connect, body.",
                &["reason"],
            ),
            retry_wait: histogram_vec(
                &registry,
                "sluice_retry_wait_seconds",
                "Waits before a retry, of pass-through requests and queued parts alike, by where the wait came from: hint (Retry-After or retryAfterSeconds), backoff (no hint, a 5xx), outage (the API unreachable: the wait for the next probe).",
                &["source"],
                WAIT_BUCKETS,
            ),
            hints_capped: counter(
                &registry,
                "sluice_retry_hints_capped_total",
                "Retry hints from the API longer than retry.max_retry_after_secs, which sluice shortened to that cap.",
            ),
            deadline_exceeded: counter_vec(
                &registry,
                "sluice_deadline_exceeded_total",
                "Client requests whose retry deadline ran out; the client got the API's last answer as is.",
                &["route"],
            ),
            cooldowns_started: counter_vec(
                &registry,
                "sluice_cooldowns_started_total",
                "Times a 429 paused all requests for an API key, by key alias or short fingerprint.",
                &["key"],
            ),
            cooldown_remaining: {
                let g = prometheus::GaugeVec::new(
                    Opts::new(
                        "sluice_cooldown_remaining_seconds",
                        "Seconds until requests for an API key may go again after a 429; 0 once over, for every key that met a 429 and is not yet forgotten (queue.key_idle_secs).",
                    ),
                    &["key"],
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            cooldown_waiting: int_gauge(
                &registry,
                "sluice_cooldown_waiting_requests",
                "Requests and queued parts currently waiting for their API key's cooldown (after a 429) to end before their next attempt.",
            ),
            keys_trimmed: counter(
                &registry,
                "sluice_api_keys_trimmed_total",
                "Client X-API-Key headers with leading or trailing white space that sluice removed.",
            ),
            keys_injected: counter(
                &registry,
                "sluice_api_keys_injected_total",
                "Requests without an X-API-Key that sluice sent with its own configured key.",
            ),
            capacity: gauge_vec(
                &registry,
                "sluice_upstream_capacity",
                "Last pending-message figures the API reported in a 429, by key and field: current_pending, max_allowed, available_capacity.",
                &["key", "field"],
            ),
            jobs_accepted: counter_vec(
                &registry,
                "sluice_queue_jobs_accepted_total",
                "Send jobs written to the durable queue (on disk before the client heard 'accepted'), by route.",
                &["route"],
            ),
            queue_rejected: counter_vec(
                &registry,
                "sluice_queue_rejected_total",
                "Sends refused before queueing, by reason: queue_full (back-pressure 429), invalid (400), store (the store could not write).",
                &["route", "reason"],
            ),
            parts_split: counter_vec(
                &registry,
                "sluice_queue_parts_split_total",
                "Parts cut into smaller parts, by reason: size (over the route maximum or the API's maxAllowed) or capacity (a piece of the API's availableCapacity sent at once).",
                &["reason"],
            ),
            dead_letters: counter_vec(
                &registry,
                "sluice_queue_dead_letters_total",
                "Parts that failed for good (a final 4xx, or retries exhausted) and wait in the queue for a manual replay, by route.",
                &["route"],
            ),
            recipients_delivered: counter_vec(
                &registry,
                "sluice_queue_recipients_delivered_total",
                "Recipients the API accepted from queued parts, by route.",
                &["route"],
            ),
            recipients_failed: counter_vec(
                &registry,
                "sluice_queue_recipients_failed_total",
                "Recipients in parts that failed for good (dead letters), by route.",
                &["route"],
            ),
            queue_jobs: gauge_vec(
                &registry,
                "sluice_queue_jobs",
                "Jobs in the store, by state: queued, in_progress, succeeded, partially_failed, failed, cancelled, uncertain.",
                &["state"],
            ),
            queue_parts: gauge_vec(
                &registry,
                "sluice_queue_parts",
                "Parts in the store, by state: queued, in_flight, succeeded, failed, cancelled, uncertain.",
                &["state"],
            ),
            queue_recipients: int_gauge(
                &registry,
                "sluice_queue_recipients_queued",
                "Recipients accepted by sluice and not yet accepted by the API (queued or in flight).",
            ),
            queue_oldest_age: {
                let g = prometheus::Gauge::new(
                    "sluice_queue_oldest_part_age_seconds",
                    "Age of the oldest job that still has a queued or in-flight part (0 when none).",
                )
                .expect("valid metric");
                registry.register(Box::new(g.clone())).expect("unique metric");
                g
            },
            queue_disk_bytes: int_gauge(
                &registry,
                "sluice_queue_disk_bytes",
                "Bytes the durable queue's database (and its write-ahead log) takes on disk.",
            ),
            store_writable: int_gauge(
                &registry,
                "sluice_queue_store_writable",
                "1 while the durable queue can write, 0 after a write failed (sends are then refused).",
            ),
            validation_rejections: counter_vec(
                &registry,
                "sluice_validation_rejections_total",
                "Requests sluice answered with the API's 400 itself, before queueing or sending, because they break the API's documented rules or are malformed; by route and field at fault (phoneNumber, recipients, imageUrl and the other media fields, templateContent, messageType, survey.*, carousel.*, contentType, body). A request with several fields at fault counts once for each.",
                &["route", "field"],
            ),
            validation_skipped: counter_vec(
                &registry,
                "sluice_validation_skipped_recipients_total",
                "Recipients left out of bulk sends (invalid_recipients = skip) because they break the phone number rule or have the wrong shape; the job lists each with its index and reason. By route.",
                &["route"],
            ),
            validation_warnings: counter_vec(
                &registry,
                "sluice_validation_warnings_total",
                "Requests that break the API's documented rules but were sent anyway because their route has validation = warn; by route and field at fault (the same fields as sluice_validation_rejections_total).",
                &["route", "field"],
            ),
            upstream_up: int_gauge(
                &registry,
                "sluice_upstream_up",
                "1 while the messaging API can be reached, 0 during an outage (connections refused, DNS or TLS failing): sends then wait and one probe at a time tests the API.",
            ),
            upstream_outages: counter(
                &registry,
                "sluice_upstream_outages_total",
                "Outages of the messaging API: times an attempt could not reach it after the last one did.",
            ),
            upstream_waiting: int_gauge(
                &registry,
                "sluice_upstream_waiting_requests",
                "Queued parts currently waiting for the messaging API to be reachable again (an outage) before their next attempt.",
            ),
            reconciliations: counter_vec(
                &registry,
                "sluice_reconciliations_total",
                "Lookups of sends whose answer was lost (a timeout, a broken connection), by route and result: accepted (the API had it; settled without sending again), not_accepted (sent again), unanswered (the lookup could not tell).",
                &["route", "result"],
            ),
            recipients_uncertain: counter_vec(
                &registry,
                "sluice_queue_recipients_uncertain_total",
                "Recipients in parts whose fate stayed unknown (answers lost and the lookup could not tell), recorded as uncertain instead of being sent a third time; by route.",
                &["route"],
            ),
            connections_open: gauge_vec(
                &registry,
                "sluice_connections_open",
                "Client connections open, by listener (main, admin).",
                &["listener"],
            ),
            connections_closed: counter_vec(
                &registry,
                "sluice_connections_closed_total",
                "Client connections sluice closed itself, by listener and reason: first_byte_timeout (nothing sent), idle_timeout (no request for server.idle_timeout_ms), evicted_at_cap (the longest-idle one, to make room at server.max_connections), refused_at_cap (every one busy).",
                &["listener", "reason"],
            ),
            requests_shed: counter(
                &registry,
                "sluice_requests_shed_total",
                "Requests answered 503 at once because server.max_concurrent_requests were already being handled (load shedding).",
            ),
            state_entries: gauge_vec(
                &registry,
                "sluice_state_entries",
                "Entries of per-key and per-request state held in memory, by kind: waiters (jobs a client waits for), cooldown_gates (keys that met a 429 lately), parts_in_memory (parts paged in from the store, bounded per key), rate_limiter_keys. Keys idle for queue.key_idle_secs are dropped. Computed at scrape time.",
                &["kind"],
            ),
            idempotent_replays: counter_vec(
                &registry,
                "sluice_idempotent_replays_total",
                "Sends carrying an Idempotency-Key already used by the same API key within queue.idempotency_ttl_secs, by route and result: replayed (answered from the first send's job; no new job, nothing sent) or conflict (a different body or path: refused with a 422).",
                &["route", "result"],
            ),
            lenient_content_type: counter_vec(
                &registry,
                "sluice_lenient_content_type_total",
                "Sends and template creations accepted with a JSON body under a Content-Type that is not JSON but names no other format either (application/x-www-form-urlencoded, text/plain…), as the API accepts them; by route.",
                &["route"],
            ),
            process: Process::register(&registry),
            build_info: {
                let g = gauge_vec(
                    &registry,
                    "sluice_build_info",
                    "Always 1; the labels say which sluice this is: version (Cargo) and commit (git, 12 hex digits, or unknown).",
                    &["version", "commit"],
                );
                g.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("SLUICE_COMMIT")])
                    .set(1);
                g
            },
            registry,
        }
    }

    /// Creates at 0 every labelled series whose labels are known in advance, so that a
    /// fresh sluice exports them (dashboards say 0, not "No data"): per route (`routes`:
    /// the configured send routes' names and the client labels), per reason, source,
    /// result, listener and kind.
    pub fn init(&self, routes: &[&str]) {
        const FAILURES: [&str; 5] = ["status_4xx", "status_5xx", "timeout", "connect", "body"];
        const RETRIES: [&str; 5] = ["rate_limited", "status_5xx", "timeout", "connect", "body"];
        const LISTENERS: [&str; 2] = ["main", "admin"];
        const CLOSED: [&str; 4] = [
            "first_byte_timeout",
            "idle_timeout",
            "evicted_at_cap",
            "refused_at_cap",
        ];
        for reason in RETRIES {
            self.retries.with_label_values(&[reason]);
        }
        for source in ["hint", "backoff", "outage"] {
            self.retry_wait.with_label_values(&[source]);
        }
        for reason in ["size", "capacity"] {
            self.parts_split.with_label_values(&[reason]);
        }
        for listener in LISTENERS {
            self.connections_open.with_label_values(&[listener]);
            for reason in CLOSED {
                self.connections_closed
                    .with_label_values(&[listener, reason]);
            }
        }
        for kind in [
            "waiters",
            "cooldown_gates",
            "parts_in_memory",
            "rate_limiter_keys",
        ] {
            self.state_entries.with_label_values(&[kind]);
        }
        for route in routes.iter().chain(&["passthrough"]) {
            self.client_duration.with_label_values(&[route]);
            self.upstream_duration.with_label_values(&[route]);
            self.upstream_rate_limited.with_label_values(&[route]);
            self.deadline_exceeded.with_label_values(&[route]);
            for reason in FAILURES {
                self.upstream_failures.with_label_values(&[route, reason]);
            }
        }
        for route in routes {
            self.jobs_accepted.with_label_values(&[route]);
            for reason in ["queue_full", "invalid", "store"] {
                self.queue_rejected.with_label_values(&[route, reason]);
            }
            self.dead_letters.with_label_values(&[route]);
            self.recipients_delivered.with_label_values(&[route]);
            self.recipients_failed.with_label_values(&[route]);
            self.recipients_uncertain.with_label_values(&[route]);
            for result in ["accepted", "not_accepted", "unanswered"] {
                self.reconciliations.with_label_values(&[route, result]);
            }
            for result in ["replayed", "conflict"] {
                self.idempotent_replays.with_label_values(&[route, result]);
            }
            self.lenient_content_type.with_label_values(&[route]);
            self.validation_skipped.with_label_values(&[route]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> Vec<u8> {
        self.process.refresh();
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        // Encoding into a Vec cannot fail for well-formed families.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        out
    }

    /// Counts one attempt's outcome for `route`: a response by status, a failure by
    /// reason (429s are counted apart, as rate limiting, not failure).
    pub fn count_attempt(&self, route: &str, outcome: Outcome) {
        let reason = match outcome {
            Outcome::Status(status) => {
                self.upstream_requests
                    .with_label_values(&[route, status.as_str()])
                    .inc();
                match status.as_u16() {
                    429 => return,
                    400..=499 => "status_4xx",
                    500..=599 => "status_5xx",
                    _ => return,
                }
            }
            Outcome::Connect => "connect",
            Outcome::Timeout => "timeout",
            Outcome::Body => "body",
        };
        self.upstream_failures
            .with_label_values(&[route, reason])
            .inc();
    }

    pub fn observe_wait(&self, source: &str, wait: Duration) {
        self.retry_wait
            .with_label_values(&[source])
            .observe(wait.as_secs_f64());
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

/// Counts one waiter in a gauge for as long as it lives; the drop uncounts it however
/// the wait ends (done, timed out, cancelled).
pub struct GaugeGuard<'a>(&'a IntGauge);

impl<'a> GaugeGuard<'a> {
    pub fn new(gauge: &'a IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for GaugeGuard<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn int_gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(g.clone()))
        .expect("unique metric");
    g
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
    registry
        .register(Box::new(c.clone()))
        .expect("unique metric");
    c
}

fn histogram_vec(
    registry: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .expect("valid metric");
    registry
        .register(Box::new(h.clone()))
        .expect("unique metric");
    h
}
