//! Request ids and the per-request log line.
//!
//! Every client request gets an `X-Request-ID`: the client's own when it sent a sane one,
//! else a new random one. The id goes upstream with the request, comes back on the
//! response, and names the tracing span that every log line of the request is written
//! in, so one grep follows a request through retries. This layer also writes the one
//! summary line per client request and the client-side metrics.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use http::{HeaderValue, Response};
use tokio::time::Instant;
use tracing::Instrument;

use crate::metrics::Metrics;

pub const HEADER: &str = "x-request-id";

/// The request's id, readable by handlers from the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

/// The route name a handler answered under (a low-cardinality metric label), put in the
/// response's extensions; absent means pass-through.
#[derive(Clone, Copy, Debug)]
pub struct RouteName(pub &'static str);

// === impl RequestId ===

impl RequestId {
    /// Keeps a client's id if it is short, visible ASCII; otherwise makes a new one.
    fn from_client(value: Option<&HeaderValue>) -> Self {
        match value {
            Some(v)
                if !v.is_empty()
                    && v.len() <= 128
                    && v.as_bytes().iter().all(|b| b.is_ascii_graphic()) =>
            {
                Self(v.clone())
            }
            _ => Self::generate(),
        }
    }

    pub fn generate() -> Self {
        let id = format!("{:032x}", rand::random::<u128>());
        Self(HeaderValue::from_str(&id).expect("hex is a valid header value"))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

/// Middleware: assigns the id, runs the request inside its span, logs and counts it.
pub async fn layer(
    State(metrics): State<Arc<Metrics>>,
    mut req: Request,
    next: Next,
) -> Response<Body> {
    let id = RequestId::from_client(req.headers().get(HEADER));
    req.headers_mut().insert(HEADER, id.0.clone());
    req.extensions_mut().insert(id.clone());
    let method = req.method().clone();
    // The path only: queries can carry phone numbers.
    let path = req.uri().path().to_owned();
    let started = Instant::now();
    let span = tracing::info_span!("request", request_id = %id.as_str());
    let mut resp = next.run(req).instrument(span.clone()).await;
    let route = resp
        .extensions()
        .get::<RouteName>()
        .map_or("passthrough", |r| r.0);
    let status = resp.status();
    let elapsed = started.elapsed();
    metrics
        .client_requests
        .with_label_values(&[route, status.as_str()])
        .inc();
    metrics
        .client_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    span.in_scope(|| {
        tracing::info!(
            method = %method,
            path = %path,
            route,
            status = status.as_u16(),
            duration_ms = elapsed.as_millis() as u64,
            "client request"
        )
    });
    resp.headers_mut().insert(HEADER, id.0);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_sane_client_ids_and_replaces_others() {
        let ok = HeaderValue::from_static("abc-123");
        assert_eq!(RequestId::from_client(Some(&ok)).as_str(), "abc-123");
        let spaced = HeaderValue::from_static("a b");
        assert_ne!(RequestId::from_client(Some(&spaced)).as_str(), "a b");
        let long = HeaderValue::from_str(&"x".repeat(500)).unwrap();
        assert_eq!(RequestId::from_client(Some(&long)).as_str().len(), 32);
        assert_eq!(RequestId::from_client(None).as_str().len(), 32);
    }
}
