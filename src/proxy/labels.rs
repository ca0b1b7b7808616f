//! Metric handles resolved once instead of per request.
//!
//! `with_label_values` hashes its labels and takes the vector's lock on every call; the
//! pass-through's labels are fixed (its route name, a status code), so their handles are
//! looked up the first time and kept.

use std::sync::OnceLock;

use http::StatusCode;
use prometheus::{IntCounter, IntCounterVec};

/// One counter per status code (100–599) of a `[route, status]` counter vector, for one
/// fixed route; looked up the first time each status is seen.
pub struct StatusCounters {
    vec: IntCounterVec,
    route: &'static str,
    by_status: Box<[OnceLock<IntCounter>]>,
}

impl StatusCounters {
    pub fn new(vec: &IntCounterVec, route: &'static str) -> Self {
        Self {
            vec: vec.clone(),
            route,
            by_status: (100..=599).map(|_| OnceLock::new()).collect(),
        }
    }

    /// Adds one for `status`.
    pub fn inc(&self, status: StatusCode) {
        match self.by_status.get(usize::from(status.as_u16()) - 100) {
            Some(slot) => slot
                .get_or_init(|| self.vec.with_label_values(&[self.route, status.as_str()]))
                .inc(),
            None => self
                .vec
                .with_label_values(&[self.route, status.as_str()])
                .inc(),
        }
    }
}
