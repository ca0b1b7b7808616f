//! What `/healthz` and `/readyz` report, updated by the parts that know.
//!
//! - `/healthz`: the process is alive (always 200), with details: the messaging API's
//!   reachability, whether the queue can write, whether sluice is stopping.
//! - `/readyz`: 200 while sluice can take work: it is not stopping and its queue can
//!   write. The messaging API's state is left out by default: during an API outage sluice
//!   is exactly what keeps sends safe, so a sidecar must stay in service
//!   (`server.ready_requires_upstream = true` couples them for those who want it).
//!
//! Kept apart from the admin listener (which serves it) and the queue and proxy (which
//! update it), so that neither imports the other for it.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};

use serde_json::json;

/// The readiness facts.
#[derive(Debug, Default)]
pub struct Health {
    shutting_down: AtomicBool,
    /// 0: not tried yet, 1: the last attempt got a response, 2: it could not connect.
    upstream: AtomicU8,
    requires_upstream: bool,
}

// === impl Health ===

impl Health {
    /// `requires_upstream`: `/readyz` also requires the API to be reachable.
    pub fn new(requires_upstream: bool) -> Self {
        Self {
            requires_upstream,
            ..Self::default()
        }
    }

    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn is_shutting_down(&self) -> bool {
        self.shutting_down.load(Ordering::Relaxed)
    }

    /// Whether the last attempt to the API reached it.
    pub fn upstream_reached(&self, reached: bool) {
        self.upstream
            .store(if reached { 1 } else { 2 }, Ordering::Relaxed);
    }

    fn upstream(&self) -> &'static str {
        match self.upstream.load(Ordering::Relaxed) {
            0 => "not tried yet",
            1 => "reachable",
            _ => "unreachable",
        }
    }

    /// `(ready, checks)` for `/readyz`.
    pub fn ready(&self, store_writable: bool) -> (bool, serde_json::Value) {
        let stopping = self.is_shutting_down();
        let upstream = self.upstream();
        let upstream_ok = !self.requires_upstream || upstream != "unreachable";
        let ready = !stopping && store_writable && upstream_ok;
        let checks = json!({
            "ready": ready,
            "shuttingDown": stopping,
            "storeWritable": store_writable,
            "upstream": upstream,
            "upstreamRequired": self.requires_upstream,
        });
        (ready, checks)
    }

    /// The details of `/healthz`.
    pub fn details(&self, store_writable: bool) -> serde_json::Value {
        json!({
            "status": "ok",
            "shuttingDown": self.is_shutting_down(),
            "storeWritable": store_writable,
            "upstream": self.upstream(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_means_can_take_work_unless_told_to_need_the_api() {
        let h = Health::new(false);
        assert!(h.ready(true).0);
        h.upstream_reached(false);
        assert!(
            h.ready(true).0,
            "an API outage is no reason to leave service"
        );
        assert_eq!(h.ready(true).1["upstream"], "unreachable");
        assert!(
            !h.ready(false).0,
            "a queue that cannot write cannot take sends"
        );
        let strict = Health::new(true);
        strict.upstream_reached(false);
        assert!(!strict.ready(true).0);
        strict.upstream_reached(true);
        assert!(
            strict.ready(true).0,
            "ready again as soon as the API answers"
        );
        h.set_shutting_down();
        assert!(!h.ready(true).0);
        assert_eq!(h.details(true)["status"], "ok");
    }
}
