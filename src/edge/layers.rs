//! The tower layers in front of the main listener's router, outermost first:
//!
//! 1. **panics** become a 500 in the API's envelope (tower-http's `CatchPanic`), so one bad
//!    request never takes its connection's other requests down;
//! 2. **load shedding**: at most `server.max_concurrent_requests` are handled at once; one
//!    more is answered 503 in the API's envelope at once (tower's `LoadShed` over
//!    `ConcurrencyLimit`) rather than queued behind the others;
//! 3. **paced bodies**: a request body that pauses longer than `server.body_read_timeout_ms`
//!    or, after that long, arrives slower than `server.body_min_rate_bytes_per_sec` on
//!    average is cut off ([`Paced`]); readers turn that into a 408.
//!
//! Request ids, the access log and client metrics are the next layer in
//! ([`crate::edge::request_id::RequestIdLayer`]); connection limits are the server's ([`crate::edge::server`]).
//!
//! The layers wrap the router as a whole, once (not each of its routes, as `Router::layer`
//! would), so a request passes each layer without a boxed clone of the next, and the
//! concurrency limit counts every request of the listener together.

use std::any::Any;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use std::convert::Infallible;

use axum::error_handling::HandleErrorLayer;
use axum::extract::Request;
use axum::Router;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body::{Body as _, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::{Service, ServiceBuilder};
use tower_http::catch_panic::CatchPanicLayer;

use crate::api::Envelope;
use crate::metrics::Metrics;

/// Limits applied to every client request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_concurrent: usize,
    pub body_read_timeout: Duration,
    /// Bytes per second; 0 for none.
    pub body_min_rate: u64,
}

/// A request body cut off for arriving too slowly.
#[derive(Debug, thiserror::Error)]
#[error("the request body arrived too slowly: {0}")]
pub struct SlowBody(String);

/// A request body that errors with [`SlowBody`] when it pauses or crawls.
pub struct Paced {
    inner: Body,
    timeout: Duration,
    min_rate: u64,
    started: Instant,
    read: u64,
    timer: Pin<Box<Sleep>>,
}

/// Wraps `router` in the layers (see the module documentation): the service the main
/// listener serves.
pub fn front(
    router: Router,
    limits: Limits,
    metrics: Arc<Metrics>,
) -> impl Service<
    http::Request<hyper::body::Incoming>,
    Response = Response<
        impl http_body::Body<Data = Bytes, Error = impl Into<axum::BoxError>> + Send,
    >,
    Error = Infallible,
    Future = impl Send,
> + Clone
       + Send
       + Sync
       + 'static {
    ServiceBuilder::new()
        .layer(CatchPanicLayer::custom(panicked))
        .layer(HandleErrorLayer::new(move |_: tower::BoxError| {
            metrics.requests_shed.inc();
            std::future::ready(overloaded())
        }))
        .load_shed()
        .concurrency_limit(limits.max_concurrent)
        .service(Pace {
            inner: router,
            limits,
        })
}

/// The service that paces request bodies (see [`Paced`]) before the router sees them.
#[derive(Clone)]
pub struct Pace<S> {
    inner: S,
    limits: Limits,
}

impl<S, B> Service<http::Request<B>> for Pace<S>
where
    S: Service<Request>,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> S::Future {
        let limits = self.limits;
        self.inner.call(req.map(|body| {
            let body = Body::new(body);
            if body.is_end_stream() {
                return body;
            }
            Body::new(Paced::new(
                body,
                limits.body_read_timeout,
                limits.body_min_rate,
            ))
        }))
    }
}

/// The 503 of load shedding, in the API's envelope.
fn overloaded() -> Response<Body> {
    let mut resp = Envelope::new(
        "Service Unavailable",
        "sluice is handling as many requests as it is configured for \
         (server.max_concurrent_requests); nothing was done with this one. Retry shortly.",
    )
    .into_response(StatusCode::SERVICE_UNAVAILABLE);
    resp.headers_mut().insert(
        http::header::RETRY_AFTER,
        http::HeaderValue::from_static("1"),
    );
    resp
}

/// A handler's panic, as a 500 in the API's envelope (the panic is logged, not shown).
fn panicked(err: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let what = err
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| err.downcast_ref::<String>().cloned())
        .unwrap_or_default();
    tracing::error!(panic = %what, "a request handler panicked");
    Envelope::new(
        "Internal Server Error",
        "sluice failed while handling this request; it was not sent. Retry, and report it \
         with the X-Request-ID if it happens again.",
    )
    .into_response(StatusCode::INTERNAL_SERVER_ERROR)
}

// === impl Paced ===

impl Paced {
    pub fn new(inner: Body, timeout: Duration, min_rate: u64) -> Self {
        Self {
            inner,
            timeout,
            min_rate,
            started: Instant::now(),
            read: 0,
            timer: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    fn too_slow(&self) -> Option<SlowBody> {
        let elapsed = self.started.elapsed();
        if self.min_rate == 0 || elapsed <= self.timeout {
            return None;
        }
        let rate = self.read as f64 / elapsed.as_secs_f64();
        (rate < self.min_rate as f64).then(|| {
            SlowBody(format!(
                "{rate:.0} bytes/s on average, below server.body_min_rate_bytes_per_sec ({})",
                self.min_rate
            ))
        })
    }
}

impl http_body::Body for Paced {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.read += data.len() as u64;
                }
                if let Some(slow) = this.too_slow() {
                    return Poll::Ready(Some(Err(axum::Error::new(slow))));
                }
                let next = Instant::now() + this.timeout;
                this.timer.as_mut().reset(next);
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Pending => match this.timer.as_mut().poll(cx) {
                Poll::Ready(()) => {
                    let why = format!(
                        "nothing for {} ms (server.body_read_timeout_ms)",
                        this.timeout.as_millis()
                    );
                    Poll::Ready(Some(Err(axum::Error::new(SlowBody(why)))))
                }
                Poll::Pending => Poll::Pending,
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Whether a body error (or one of its sources) is a [`SlowBody`].
pub fn is_slow_body(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<SlowBody>() {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::sync::mpsc;

    /// A body fed by the test, frame by frame.
    struct Fed(mpsc::Receiver<Bytes>);

    impl http_body::Body for Fed {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    fn fed() -> (mpsc::Sender<Bytes>, Body) {
        let (tx, rx) = mpsc::channel(16);
        (tx, Body::new(Fed(rx)))
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_pauses_too_long_is_cut_off() {
        let (tx, body) = fed();
        let paced = Paced::new(body, Duration::from_secs(2), 0);
        let reader = tokio::spawn(async move { paced.collect().await });
        tx.send(Bytes::from_static(b"abc")).await.unwrap();
        tokio::time::advance(Duration::from_secs(3)).await;
        let err = reader.await.unwrap().unwrap_err();
        assert!(is_slow_body(&err), "{err}");
        assert!(err.to_string().contains("body_read_timeout_ms"), "{err}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_body_that_crawls_is_cut_off_after_the_first_window() {
        let (tx, body) = fed();
        let paced = Paced::new(body, Duration::from_secs(2), 100);
        let reader = tokio::spawn(async move { paced.collect().await });
        // 10 bytes a second: fine during the first 2 s, too slow after.
        for _ in 0..5 {
            // The reader stops at the first frame past the window: later sends fail.
            let _ = tx.send(Bytes::from_static(b"0123456789")).await;
            tokio::time::advance(Duration::from_secs(1)).await;
        }
        let err = reader.await.unwrap().unwrap_err();
        assert!(err.to_string().contains("bytes/s on average"), "{err}");
    }
}
