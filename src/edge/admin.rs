//! The admin listener: `/metrics`, `/healthz`, `/readyz`. Loopback by default.
//!
//! Kept off the main listener so that apps (and whatever reaches the app port) cannot
//! read operational data, and so that a scraper never competes with sends. Nothing here
//! shows a key or a body.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::routing::get;
use axum::Router;
use http::{header, HeaderValue, Response, StatusCode};

use crate::api::json_response;
use crate::edge::health::Health;
use crate::keys::keystate::KeyState;
use crate::metrics::Metrics;
use crate::queue::Queue;

#[derive(Clone)]
struct AdminState {
    metrics: Arc<Metrics>,
    keys: Arc<KeyState>,
    queue: Queue,
    health: Arc<Health>,
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
        .route("/healthz", get(healthz))
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

async fn healthz(State(s): State<AdminState>) -> Response<Body> {
    json_response(StatusCode::OK, &s.health.details(s.queue.is_writable()))
}

async fn readyz(State(s): State<AdminState>) -> Response<Body> {
    let (ready, checks) = s.health.ready(s.queue.is_writable());
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, &checks)
}
