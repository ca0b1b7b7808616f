//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Loopback by default.
//!
//! Kept off the main listener so that apps (and whatever reaches the app port) cannot
//! read operational data, and so that a scraper never competes with sends. Nothing here
//! shows a key or a body.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, Response, StatusCode};
use serde_json::json;

use crate::api::json_response;
use crate::keystate::KeyState;
use crate::metrics::Metrics;
use crate::queue::Queue;

/// What `/readyz` reports on, updated by the parts that know.
#[derive(Debug, Default)]
pub struct Health {
    shutting_down: AtomicBool,
    /// 0: not tried yet, 1: last attempt got a response, 2: last attempt could not connect.
    upstream: AtomicU8,
}

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    keys: Arc<KeyState>,
    queue: Queue,
    health: Arc<Health>,
}

// === impl Health ===

impl Health {
    pub fn set_shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    pub fn upstream_reached(&self, reached: bool) {
        self.upstream
            .store(if reached { 1 } else { 2 }, Ordering::Relaxed);
    }

    /// `(ready, checks)` for `/readyz`.
    fn check(&self, store_writable: bool) -> (bool, serde_json::Value) {
        let stopping = self.shutting_down.load(Ordering::Relaxed);
        let upstream = match self.upstream.load(Ordering::Relaxed) {
            0 => "not tried yet",
            1 => "reached",
            _ => "unreachable",
        };
        let ready = !stopping && upstream != "unreachable" && store_writable;
        let checks = json!({
            "ready": ready,
            "shuttingDown": stopping,
            "upstream": upstream,
            "storeWritable": store_writable,
        });
        (ready, checks)
    }
}

/// The admin router.
pub fn router(
    metrics: Arc<Metrics>,
    keys: Arc<KeyState>,
    queue: Queue,
    health: Arc<Health>,
) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route(
            "/healthz",
            get(|| async { json_response(StatusCode::OK, &json!({"status": "ok"})) }),
        )
        .route("/readyz", get(readyz))
        .with_state(AdminState {
            metrics,
            keys,
            queue,
            health,
        })
}

async fn metrics_handler(State(s): State<AdminState>) -> Response<Body> {
    s.keys.export_cooldowns();
    s.queue.export_metrics().await;
    let mut resp = Response::new(Body::from(s.metrics.render()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

async fn readyz(State(s): State<AdminState>) -> Response<Body> {
    let (ready, checks) = s.health.check(s.queue.is_writable());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &checks)
}
