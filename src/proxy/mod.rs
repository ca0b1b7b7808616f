//! The pass-through proxy: any request sluice has no rule for goes to the API unchanged.
//!
//! One client request becomes one or more attempts upstream. Between attempts the retry
//! engine decides ([`crate::retry`]): a 429 waits for the API's hint and cools the whole
//! API key down (so N waiting requests make one retry wave, not N 429s); connect errors
//! retry; 5xx and timeouts retry only for idempotent methods; every other answer goes
//! back to the client as received. A request can only be retried if its body can be sent
//! again, so bodies up to `retry_buffer_bytes` are held in memory and larger ones are
//! streamed through once. When the retry deadline would pass, the client gets the API's
//! last 429 unchanged, so its own retry logic still works. While the API cannot be reached
//! at all (the upstream breaker is open), requests are answered at once with a 502 in the
//! API's envelope instead of waiting behind the breaker's probes.

mod headers;
pub mod labels;

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use bytes::Bytes;
use http::{Method, Response, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use prometheus::Histogram;
use tokio::time::Instant;

pub use headers::strip_hop_by_hop;

use crate::edge::health::Health;
use crate::error::ProxyError;
use crate::keys::apikey::{self, ApiKey, KeyId};
use crate::keys::keystate::{KeyState, Stored};
use crate::metrics::{GaugeGuard, Metrics};
use crate::retry::{self, Change, Class, Outage, Outcome, Pass, Permit, RetryPolicy, Verdict};
use crate::upstream::{self, AttemptError, Upstream};
use labels::StatusCounters;

/// The metric/log route name of everything that matches no send rule.
const ROUTE: &str = "passthrough";
/// Largest 429 body read to find its hint; the API's is a few hundred bytes.
const MAX_429_BODY: usize = 64 * 1024;
/// During an outage, the longest a request waits for the breaker's next probe before it is
/// answered with a 502: short blips are waited out, real outages answered at once.
const OUTAGE_WAIT: Duration = Duration::from_secs(1);

/// Shared state of the pass-through handler; cheap to clone.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    upstream: Upstream,
    policy: RetryPolicy,
    /// Cooldowns, last 429s and capacity per key, shared with the send queue.
    keys: Arc<KeyState>,
    own_key: Option<ApiKey>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    max_body: u64,
    retry_buffer: u64,
    /// This route's metric handles, looked up once.
    upstream_requests: StatusCounters,
    upstream_duration: Histogram,
}

/// The request body, either kept for replay or streamed through once.
enum Payload {
    Replayable(Bytes),
    Stream(Option<Body>),
}

/// Settings of the handler that do not come from the upstream client.
pub struct Settings {
    pub keys: Arc<KeyState>,
    pub own_key: Option<ApiKey>,
    pub max_body: u64,
    pub retry_buffer: u64,
    pub health: Arc<Health>,
}

// === impl Proxy ===

impl Proxy {
    pub fn new(upstream: Upstream, settings: Settings, metrics: Arc<Metrics>) -> Self {
        Self {
            inner: Arc::new(Inner {
                upstream_requests: StatusCounters::new(&metrics.upstream_requests, ROUTE),
                upstream_duration: metrics.upstream_duration.with_label_values(&[ROUTE]),
                upstream,
                policy: settings.keys.policy().clone(),
                keys: settings.keys,
                own_key: settings.own_key,
                metrics,
                health: settings.health,
                max_body: settings.max_body,
                retry_buffer: settings.retry_buffer,
            }),
        }
    }
}

/// The axum handler for every request no other route took.
pub async fn handle(State(proxy): State<Proxy>, req: Request) -> Response<Body> {
    match proxy.inner.forward(req).await {
        Ok(resp) => resp,
        Err(e) => {
            tracing::warn!(error = %e, "request failed in the proxy");
            e.into_response()
        }
    }
}

// === impl Inner ===

impl Inner {
    async fn forward(&self, req: Request) -> Result<Response<Body>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        if parts.method == Method::CONNECT {
            return Err(ProxyError::Connect);
        }
        // HTTP/1 requests name only a path; an absolute URI asks us to relay elsewhere.
        // (HTTP/2 always carries :authority, which we replace like Host.)
        if parts.version < Version::HTTP_2 && parts.uri.authority().is_some() {
            return Err(ProxyError::AbsoluteForm);
        }
        let key = apikey::resolve(&mut parts.headers, self.own_key.as_ref());
        if key.trimmed {
            self.metrics.keys_trimmed.inc();
        }
        if key.injected {
            self.metrics.keys_injected.inc();
        }
        strip_hop_by_hop(&mut parts.headers);
        parts.headers.remove(http::header::HOST);
        let mut payload = self.payload(body).await?;
        let uri = self.upstream.uri_for(parts.uri.path_and_query());
        let idempotent = retry::is_idempotent(&parts.method);
        let started = Instant::now();
        let mut failures = 0u32;
        let mut attempts = 0u32;

        loop {
            let permit = match key.id {
                Some(id) => match self.gate(id, started).await {
                    Ok(permit) => Some(permit),
                    Err(stored) => {
                        // Waiting out the key's cooldown would pass the deadline.
                        self.metrics
                            .deadline_exceeded
                            .with_label_values(&[ROUTE])
                            .inc();
                        return Ok(self.give_up_with(stored));
                    }
                },
                None => None,
            };
            // During an outage the client is answered at once rather than kept waiting
            // behind the breaker's probes; a blip shorter than `OUTAGE_WAIT` is waited out.
            let pass = match self.upstream_pass(started).await {
                Ok(pass) => pass,
                Err(outage) => {
                    drop(permit);
                    return Err(self.outage_error(outage));
                }
            };
            let body = match &mut payload {
                Payload::Replayable(bytes) => Body::from(bytes.clone()),
                Payload::Stream(slot) => slot.take().unwrap_or_else(Body::empty),
            };
            let replayable = matches!(payload, Payload::Replayable(_));
            let mut attempt = http::Request::new(body);
            *attempt.method_mut() = parts.method.clone();
            *attempt.uri_mut() = uri.clone();
            *attempt.headers_mut() = parts.headers.clone();

            let sent_at = Instant::now();
            attempts += 1;
            let result = self.upstream.send(attempt).await;
            self.upstream_duration
                .observe(sent_at.elapsed().as_secs_f64());

            let mut failed = None;
            let (outcome, resp) = match result {
                Ok(resp) => {
                    tracing::info!(
                        route = ROUTE,
                        attempt = attempts,
                        status = resp.status().as_u16(),
                        duration_ms = sent_at.elapsed().as_millis() as u64,
                        "upstream attempt"
                    );
                    (Outcome::Status(resp.status()), Some(resp))
                }
                Err(AttemptError::BodyTooLarge) => {
                    return Err(ProxyError::BodyTooLarge {
                        limit: self.max_body,
                    })
                }
                Err(e) => {
                    tracing::warn!(route = ROUTE, attempt = attempts, error = %e, "upstream attempt failed");
                    let outcome = e.outcome();
                    failed = Some(e);
                    (outcome, None)
                }
            };
            let class = match retry::classify(outcome, idempotent) {
                Class::Transient(_) if !replayable => Class::Final,
                class => class,
            };
            self.count_attempt(outcome);
            if upstream::report(pass, outcome) == Change::Opened {
                self.metrics.upstream_outages.inc();
            }

            let resp = match (class, resp) {
                (Class::RateLimited, Some(resp)) => {
                    let stored = self.read_429(resp).await?;
                    let wait = self.on_rate_limited(key.id, permit, &stored);
                    if !replayable {
                        // The body went up once and cannot go again: the 429 goes back
                        // as is, but the key cools down all the same.
                        return Ok(self.give_up_with(stored));
                    }
                    match self.inner_decide(class, wait, failures, started) {
                        Some(pause) => {
                            self.metrics
                                .retries
                                .with_label_values(&["rate_limited"])
                                .inc();
                            self.metrics.observe_wait(wait.source.as_str(), pause);
                            if key.id.is_none() {
                                tokio::time::sleep(pause).await;
                            }
                            continue;
                        }
                        None => return Ok(self.give_up_with(stored)),
                    }
                }
                (_, resp) => {
                    // Any answer other than a 429 reopens the key's gate.
                    if let Some(p) = permit {
                        if resp.is_some() {
                            p.succeeded();
                        }
                    }
                    resp
                }
            };

            if let Class::Transient(reason) = class {
                // An unreachable API is waited for by the breaker (above), not by a backoff.
                let wait = match reason {
                    retry::Reason::Connect => retry::Wait {
                        duration: Duration::ZERO,
                        source: retry::WaitSource::Backoff,
                        capped: false,
                    },
                    _ => self.policy.wait(None, failures, &mut rand::rng()),
                };
                failures += 1;
                if let Some(wait) = self.inner_decide(class, wait, failures, started) {
                    self.metrics
                        .retries
                        .with_label_values(&[reason.as_str()])
                        .inc();
                    self.metrics.observe_wait("backoff", wait);
                    tracing::info!(
                        attempt = failures,
                        reason = reason.as_str(),
                        wait_ms = wait.as_millis() as u64,
                        "retrying"
                    );
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            return match resp {
                Some(resp) => Ok(passthrough(resp)),
                None => Err(self.attempt_error(failed, attempts)),
            };
        }
    }

    /// Reads the request body as far as replay needs; refuses bodies over the limit.
    async fn payload(&self, body: Body) -> Result<Payload, ProxyError> {
        if body.is_end_stream() {
            return Ok(Payload::Replayable(Bytes::new()));
        }
        let too_large = ProxyError::BodyTooLarge {
            limit: self.max_body,
        };
        match body.size_hint().exact() {
            Some(n) if n > self.max_body => Err(too_large),
            Some(n) if n <= self.retry_buffer => crate::edge::body::read(body, self.max_body)
                .await
                .map(Payload::Replayable),
            _ => Ok(Payload::Stream(Some(Body::new(Limited::new(
                body,
                self.max_body as usize,
            ))))),
        }
    }

    /// Waits until the key's cooldown lets a request go. Gives up (with the key's last
    /// 429) when that wait would pass the request's deadline.
    async fn gate(&self, id: KeyId, started: Instant) -> Result<Permit, Stored> {
        // The common case, a key that is not cooling down, passes at once: no timer, no gauge.
        let mut acquire = pin!(self.keys.cooldowns.acquire(&id));
        if let Poll::Ready(permit) = acquire
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            return Ok(permit);
        }
        let deadline = started + self.policy.deadline;
        let last = || self.keys.last_429(&id);
        if let Some(left) = self.keys.cooldowns.remaining(&id) {
            if Instant::now() + left > deadline {
                if let Some(stored) = last() {
                    return Err(stored);
                }
            }
        }
        let _waiting = GaugeGuard::new(&self.metrics.cooldown_waiting);
        match tokio::time::timeout_at(deadline, acquire).await {
            Ok(permit) => Ok(permit),
            Err(_) => match last() {
                Some(stored) => Err(stored),
                // Nothing to replay: go anyway and let the API answer for itself.
                None => Ok(self.keys.cooldowns.acquire(&id).await),
            },
        }
    }

    /// Reads a 429's (small) body so its hint can be parsed and the answer replayed.
    async fn read_429(&self, resp: Response<hyper::body::Incoming>) -> Result<Stored, ProxyError> {
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let body = Limited::new(body, MAX_429_BODY)
            .collect()
            .await
            .map_err(|e| ProxyError::UpstreamBody {
                detail: e.to_string(),
            })?
            .to_bytes();
        Ok(Stored {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Records a 429 (hint, capacity, last answer) and cools the key down.
    fn on_rate_limited(
        &self,
        key: Option<KeyId>,
        permit: Option<Permit>,
        stored: &Stored,
    ) -> retry::Wait {
        let (wait, _) = self.keys.observe_429(key, ROUTE, stored);
        match (permit, key) {
            (Some(p), _) => p.rate_limited(wait.duration),
            (None, Some(id)) => self.keys.cooldowns.on_rate_limited(&id, wait.duration),
            (None, None) => {}
        }
        wait
    }

    /// Asks the policy whether another attempt may go; `Some(wait)` if so.
    fn inner_decide(
        &self,
        class: Class,
        wait: retry::Wait,
        failures: u32,
        started: Instant,
    ) -> Option<Duration> {
        match self.policy.decide(class, wait, failures, started.elapsed()) {
            Verdict::RetryAfter(w) => Some(w.duration),
            Verdict::GiveUp(why) => {
                if matches!(why, retry::GiveUpReason::Deadline) {
                    self.metrics
                        .deadline_exceeded
                        .with_label_values(&[ROUTE])
                        .inc();
                }
                None
            }
        }
    }

    fn count_attempt(&self, outcome: Outcome) {
        self.health
            .upstream_reached(!matches!(outcome, Outcome::Connect));
        match outcome {
            // Answers that count as no failure: one counter, its handle kept.
            Outcome::Status(status) if status.as_u16() == 429 || status.as_u16() < 400 => {
                self.upstream_requests.inc(status)
            }
            _ => self.metrics.count_attempt(ROUTE, outcome),
        }
    }

    fn give_up_with(&self, stored: Stored) -> Response<Body> {
        let mut resp = Response::new(Body::from(stored.body));
        *resp.status_mut() = stored.status;
        *resp.headers_mut() = stored.headers;
        resp
    }

    /// Waits for the upstream breaker to let an attempt go: at once while the API is
    /// reachable; during an outage only if the next probe is due within `OUTAGE_WAIT` (and
    /// the deadline), else `Err` so that the client is answered now.
    async fn upstream_pass(&self, started: Instant) -> Result<Pass, Outage> {
        let breaker = self.upstream.breaker();
        let deadline = started + self.policy.deadline;
        loop {
            match breaker.try_pass() {
                Ok(pass) => return Ok(pass),
                Err(outage) => match outage.next_probe_in {
                    Some(wait) if wait <= OUTAGE_WAIT && Instant::now() + wait < deadline => {
                        tokio::time::sleep(wait).await;
                    }
                    _ => return Err(outage),
                },
            }
        }
    }

    fn outage_error(&self, outage: Outage) -> ProxyError {
        let probe = match outage.next_probe_in {
            Some(wait) => format!("again in {} ms", wait.as_millis()),
            None => "right now".to_string(),
        };
        ProxyError::UpstreamDown {
            upstream: self.upstream.display().to_string(),
            since: humantime::format_rfc3339_seconds(outage.since).to_string(),
            probe,
        }
    }

    fn attempt_error(&self, failed: Option<AttemptError>, attempts: u32) -> ProxyError {
        match failed {
            Some(AttemptError::Timeout(t)) => ProxyError::UpstreamTimeout {
                timeout_ms: t.as_millis() as u64,
            },
            Some(AttemptError::Connect(detail)) => ProxyError::UpstreamUnreachable {
                upstream: self.upstream.display().to_string(),
                detail,
                attempts,
            },
            Some(e) => ProxyError::UpstreamBody {
                detail: e.to_string(),
            },
            None => ProxyError::UpstreamBody {
                detail: "no response".into(),
            },
        }
    }
}

/// The upstream's response, streamed back with hop-by-hop headers removed.
fn passthrough(resp: Response<hyper::body::Incoming>) -> Response<Body> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    Response::from_parts(parts, Body::new(body))
}
