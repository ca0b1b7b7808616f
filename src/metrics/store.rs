//! Metrics of the job store that matter most when instances share one (PostgreSQL):
//! how long taking due parts takes, leases taken over from vanished instances, how late
//! other instances' news arrives, and the database pool. Registered in the one registry by
//! [`super::Metrics::new`].

use prometheus::{Histogram, HistogramOpts, IntCounter, IntGaugeVec, Opts, Registry};

/// The store's collectors.
pub struct StoreMetrics {
    pub claim_duration: Histogram,
    pub lease_takeovers: IntCounter,
    pub notify_lag: Histogram,
    pub pool_connections: IntGaugeVec,
}

/// Buckets for database round trips (seconds): 0.5 ms to 10 s.
const DB_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

// === impl StoreMetrics ===

impl StoreMetrics {
    pub fn register(registry: &Registry) -> Self {
        let histogram = |name: &str, help: &str| {
            let h =
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(DB_BUCKETS.to_vec()))
                    .expect("valid metric");
            registry
                .register(Box::new(h.clone()))
                .expect("unique metric");
            h
        };
        let claim_duration = histogram(
            "sluice_queue_claim_duration_seconds",
            "Time to take a batch of due parts from the store (with PostgreSQL: lock, lease and read them).",
        );
        let notify_lag = histogram(
            "sluice_store_notify_lag_seconds",
            "With PostgreSQL: from another instance's change (a 429 learned, a part finished, new work) to this instance hearing of it (LISTEN/NOTIFY), by the database's clock against this host's.",
        );
        let lease_takeovers = IntCounter::new(
            "sluice_store_lease_takeovers_total",
            "With PostgreSQL: parts this instance took over from an instance whose lease expired (it was killed or lost the database); their sends are looked up before they are sent again.",
        )
        .expect("valid metric");
        registry
            .register(Box::new(lease_takeovers.clone()))
            .expect("unique metric");
        let pool_connections = IntGaugeVec::new(
            Opts::new(
                "sluice_store_pool_connections",
                "With PostgreSQL: connections in this instance's pool (store.pool_size at most), by state: open, idle.",
            ),
            &["state"],
        )
        .expect("valid metric");
        registry
            .register(Box::new(pool_connections.clone()))
            .expect("unique metric");
        for state in ["open", "idle"] {
            pool_connections.with_label_values(&[state]);
        }
        Self {
            claim_duration,
            lease_takeovers,
            notify_lag,
            pool_connections,
        }
    }
}
