//! Request ids and the per-request log line.
//!
//! Every client request gets an `X-Request-ID`: the client's own when it sent a sane one,
//! else a new random one. The id goes upstream with the request, comes back on the
//! response, and names the tracing span that every log line of the request is written
//! in, so one grep follows a request through retries. This layer also writes the one
//! summary line per client request and the client-side metrics.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderName, HeaderValue, Response};
use prometheus::Histogram;
use tokio::time::Instant;
use tower::{Layer, Service};
use tracing::Instrument;

use crate::metrics::Metrics;
use crate::proxy::labels::StatusCounters;

pub const HEADER: &str = "x-request-id";
const HEADER_NAME: HeaderName = HeaderName::from_static(HEADER);
/// The route label of everything no handler named.
const PASSTHROUGH: &str = "passthrough";

/// The request's id, readable by handlers from the request's extensions.
#[derive(Clone, Debug)]
pub struct RequestId(pub HeaderValue);

/// The route name a handler answered under (a low-cardinality metric label), put in the
/// response's extensions; absent means pass-through.
#[derive(Clone, Copy, Debug)]
pub struct RouteName(pub &'static str);

/// The tower layer: assigns the id, runs the request inside its span, logs and counts it.
#[derive(Clone)]
pub struct RequestIdLayer {
    metrics: Arc<ClientMetrics>,
}

/// The service [`RequestIdLayer`] wraps around the router.
#[derive(Clone)]
pub struct RequestIds<S> {
    inner: S,
    metrics: Arc<ClientMetrics>,
}

/// The client-side metrics, with the pass-through's handles resolved once.
struct ClientMetrics {
    metrics: Arc<Metrics>,
    passthrough_requests: StatusCounters,
    passthrough_duration: Histogram,
}

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

    /// 128 random bits as 32 lowercase hex digits.
    pub fn generate() -> Self {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let n = rand::random::<u128>();
        let mut id = [0u8; 32];
        for (i, digit) in id.iter_mut().enumerate() {
            *digit = HEX[((n >> (124 - 4 * i)) & 0xf) as usize];
        }
        Self(HeaderValue::from_bytes(&id).expect("hex is a valid header value"))
    }

    pub fn as_str(&self) -> &str {
        self.0.to_str().unwrap_or("")
    }
}

// === impl RequestIdLayer ===

impl RequestIdLayer {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Self {
            metrics: Arc::new(ClientMetrics {
                passthrough_requests: StatusCounters::new(&metrics.client_requests, PASSTHROUGH),
                passthrough_duration: metrics.client_duration.with_label_values(&[PASSTHROUGH]),
                metrics,
            }),
        }
    }
}

impl<S> Layer<S> for RequestIdLayer {
    type Service = RequestIds<S>;

    fn layer(&self, inner: S) -> RequestIds<S> {
        RequestIds {
            inner,
            metrics: Arc::clone(&self.metrics),
        }
    }
}

// === impl RequestIds ===

impl<S> Service<Request> for RequestIds<S>
where
    S: Service<Request, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request) -> Self::Future {
        let id = RequestId::from_client(req.headers().get(&HEADER_NAME));
        req.headers_mut().insert(HEADER_NAME, id.0.clone());
        req.extensions_mut().insert(id.clone());
        let method = req.method().clone();
        // The path only (read from the URI at the end): queries can carry phone numbers.
        let uri = req.uri().clone();
        let started = Instant::now();
        let span = tracing::info_span!("request", request_id = %id.as_str());
        let inner = span.in_scope(|| self.inner.call(req));
        let metrics = Arc::clone(&self.metrics);
        Box::pin(async move {
            let Ok(mut resp) = inner.instrument(span.clone()).await;
            let route = resp
                .extensions()
                .get::<RouteName>()
                .map_or(PASSTHROUGH, |r| r.0);
            let status = resp.status();
            let elapsed = started.elapsed();
            metrics.count(route, status, elapsed.as_secs_f64());
            span.in_scope(|| {
                tracing::info!(
                    method = %method,
                    path = %uri.path(),
                    route,
                    status = status.as_u16(),
                    duration_ms = elapsed.as_millis() as u64,
                    "client request"
                )
            });
            resp.headers_mut().insert(HEADER_NAME, id.0);
            Ok(resp)
        })
    }
}

// === impl ClientMetrics ===

impl ClientMetrics {
    fn count(&self, route: &'static str, status: http::StatusCode, secs: f64) {
        if route == PASSTHROUGH {
            self.passthrough_requests.inc(status);
            self.passthrough_duration.observe(secs);
            return;
        }
        self.metrics
            .client_requests
            .with_label_values(&[route, status.as_str()])
            .inc();
        self.metrics
            .client_duration
            .with_label_values(&[route])
            .observe(secs);
    }
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
