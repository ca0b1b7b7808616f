//! The dispatcher: sends queued parts to the API, paced to its capacity, until each is
//! delivered or has a recorded final reason.
//!
//! The `scheduler` hands over each part when it may go (at most `queue.concurrency` of one
//! key's parts at once). Each becomes a worker task whose turn (`attempt`) goes:
//! 1. a part whose last answer was lost is looked up first (`reconcile`): it may already
//!    have been accepted;
//! 2. a part out of attempts or past `max_age` stops (`policy::exhausted`);
//! 3. a part larger than the API could ever accept (the route's maximum, or the
//!    `maxAllowed` the key's last 429 reported) is cut;
//! 4. the gates, in order: bulk parts of a key one at a time; the key's cooldown (shared
//!    with the pass-through proxy, so one 429 pauses the whole key) unless the send fits in
//!    the room the last 429 reported; the optional per-key rate limits; a global
//!    concurrency limit; and the upstream breaker (while the API cannot be reached, one
//!    probe at a time);
//! 5. the send; what happens after the answer is `settle`'s (the failure policy).
//!
//! Every state change is committed to the store before the next step, so a crash at any
//! point loses nothing: on restart every unfinished part is scheduled again, and a part
//! that was in flight is looked up before it is sent again.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use tokio::time::Instant;

use super::plan;
use super::policy::{self, Answer, Exhausted};
use super::reconcile::Turn;
use super::settle::Attempt;
use super::shared::Core;
use super::store::{Dispatchable, StoreError};
use crate::clock::now_ms;
use crate::keys::apikey::KeyId;
use crate::keys::keystate::Stored;
use crate::metrics::GaugeGuard;
use crate::retry::{Change, Outcome, Pass};
use crate::routes::RouteKind;

/// Largest upstream answer kept for a part (the API's are small JSON objects).
const MAX_RESPONSE: usize = 1024 * 1024;

// === impl Core ===

impl Core {
    /// One part's turn. A store error leaves the part where it was on disk; the turn is
    /// tried again a second later (the part stays in memory meanwhile).
    pub(super) async fn run(self: Arc<Self>, part: Dispatchable) {
        let bulk = self
            .routes
            .get(&part.route)
            .is_some_and(|r| r.kind == RouteKind::Bulk);
        loop {
            let result = self.attempt(part.clone()).await;
            if bulk {
                self.end_bulk_turn(part.owner_no).await;
            }
            match result {
                Ok(()) => return,
                // Cancelled (or finished) meanwhile: nothing more to send for this part;
                // the cancel took it out of the backlog.
                Err(StoreError::WrongState(state)) => {
                    tracing::info!(job = %part.job_id, part = part.seq, ?state, "part no longer to be sent");
                    self.notify(&part.job_id);
                    return;
                }
                Err(e) => {
                    tracing::error!(job = %part.job_id, error = %e, "queue store error; part tried again in 1 s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    async fn attempt(&self, mut part: Dispatchable) -> Result<(), StoreError> {
        let route = self.route(&part.route);
        let Some((key_value, key_id)) = self.key_for(&part) else {
            let error = "no API key: the client sent none and sluice holds none".to_string();
            return self.dead_letter(&part, None, error).await;
        };
        // A part whose last answer was lost is looked up before anything else: it may
        // already have been accepted.
        if part.reconcile_from.is_some()
            && self.reconcile_turn(&mut part, &route, &key_value).await? == Turn::Settled
        {
            return Ok(());
        }
        if let Some(why) = self.exhausted(&part) {
            return self.give_up(&part, why, None).await;
        }
        let n = part.items.end - part.items.start;
        // A part resent while its first send's fate is unknown keeps its shape: the lookup
        // after it must be about the same recipients.
        let resending = part.reconcile_from.is_some();
        let too_big = || {
            let limit = plan::part_limit(
                route.max_recipients_per_request,
                self.keys.max_allowed(&key_id),
            );
            (route.kind == RouteKind::Bulk && !resending)
                .then(|| plan::cut_before_send(n, limit))
                .flatten()
        };
        if let Some(max) = too_big() {
            return self.split_to(&part, &route, max).await;
        }
        // During a cooldown, a send that fits in the room the API's last 429 reported goes
        // at once (the API said it would take it); the rest wait for the cooldown's probe.
        let permit = loop {
            let permit = if self.take_room(&key_id, n).await {
                None
            } else {
                let _waiting = GaugeGuard::new(&self.metrics.cooldown_waiting);
                let permit = self.keys.cooldowns.acquire(&key_id).await;
                // In a cluster, one instance probes a key whose cooldown ended.
                match self.cluster_probe(permit, &key_id).await {
                    Some(permit) => Some(permit),
                    None => continue,
                }
            };
            // In a cluster, one instance at a time sends an owner's bulk parts; a part
            // whose turn came after the key cooled down again waits for that.
            if route.kind != RouteKind::Bulk || self.bulk_turn(part.owner_no, &key_id).await {
                break permit;
            }
        };
        // A 429 seen while this part waited may have taught a smaller maxAllowed.
        if let Some(max) = too_big() {
            drop(permit);
            return self.split_to(&part, &route, max).await;
        }
        self.rate_limit(&key_id, n).await;
        let Ok(_slot) = self.slots.acquire().await else {
            return Ok(());
        };
        // While the API cannot be reached, one probe at a time tests it; the rest wait here.
        let pass = {
            let _waiting = GaugeGuard::new(&self.metrics.upstream_waiting);
            self.upstream.breaker().pass().await
        };

        let sent_at = now_ms();
        self.store
            .mark_in_flight(&part.job_id, part.seq, sent_at)
            .await?;
        let body = self
            .store
            .part_body(&part.job_id, part.bytes.clone())
            .await?;
        let request = self.request(&part, key_value, body);
        let sent = Instant::now();
        let result = self.upstream.send(request).await;
        self.metrics
            .upstream_duration
            .with_label_values(&[&part.route])
            .observe(sent.elapsed().as_secs_f64());

        let (outcome, stored, error) = match result {
            Ok(resp) => {
                let (parts, body) = resp.into_parts();
                match Limited::new(body, MAX_RESPONSE).collect().await {
                    Ok(b) => (
                        Outcome::Status(parts.status),
                        Some(Stored {
                            status: parts.status,
                            headers: parts.headers,
                            body: b.to_bytes(),
                        }),
                        None,
                    ),
                    Err(e) => (
                        Outcome::Body,
                        None,
                        Some(format!(
                            "the API answered {} but its body could not be read: {e}",
                            parts.status
                        )),
                    ),
                }
            }
            Err(e) => (e.outcome(), None, Some(e.to_string())),
        };
        self.report_reach(pass, outcome);
        self.metrics.count_attempt(&part.route, outcome);
        let attempts = part.attempts + 1;
        let answer = stored.as_ref().map(|s| (s.status.as_u16(), &s.body[..]));
        self.settings.delivery.attempt(
            &part,
            sent_at,
            attempts,
            answer.map(|a| a.0),
            answer.map(|a| a.1),
            error.as_deref(),
        );
        tracing::info!(
            request_id = part.request_id().as_deref(), job = %part.job_id, part = part.seq, route = %part.route,
            recipients = n, attempt = attempts, status = stored.as_ref().map(|s| s.status.as_u16()),
            error = error.as_deref(), "upstream send attempt"
        );

        let attempt = Attempt {
            part,
            route,
            key: key_id,
            permit,
            stored,
            error,
            sent_at,
        };
        match policy::classify(outcome) {
            Answer::Accepted => self.on_success(attempt).await,
            Answer::RateLimited => self.on_rate_limited(attempt).await,
            Answer::Unreachable => self.on_unreachable(attempt).await,
            Answer::Lost => self.on_lost(attempt).await,
            Answer::Transient => self.on_transient(attempt).await,
            Answer::Refused => self.on_final(attempt).await,
        }
    }

    /// Tells the upstream breaker whether an attempt reached the API (see
    /// [`crate::upstream::report`]); counts outages.
    pub(super) fn report_reach(&self, pass: Pass, outcome: Outcome) {
        self.settings
            .health
            .upstream_reached(!matches!(outcome, Outcome::Connect));
        if crate::upstream::report(pass, outcome) == Change::Opened {
            self.metrics.upstream_outages.inc();
        }
    }

    /// `Some` when the part may not be tried again (see [`policy::exhausted`]).
    fn exhausted(&self, part: &Dispatchable) -> Option<Exhausted> {
        let age = Duration::from_millis((now_ms() - part.created_at).max(0) as u64);
        policy::exhausted(
            part.attempts,
            self.settings.max_attempts,
            age,
            self.settings.max_age,
        )
    }

    /// Waits for the optional per-key request and recipient limits.
    async fn rate_limit(&self, key: &KeyId, n: u64) {
        if let Some(limiter) = &self.requests {
            limiter.until_key_ready(key).await;
        }
        if let Some((limiter, burst)) = &self.recipients {
            let mut left = n;
            while left > 0 {
                let take = left.min(u64::from(*burst)) as u32;
                if let Some(cells) = NonZeroU32::new(take) {
                    // `take` never exceeds the burst, so the limiter can always grant it.
                    let _ = limiter.until_key_n_ready(key, cells).await;
                }
                left -= u64::from(take);
            }
        }
    }

    fn request(&self, part: &Dispatchable, key: HeaderValue, body: Bytes) -> Request<Body> {
        let uri = self.upstream.uri_for(part.path.parse().ok().as_ref());
        let mut req = Request::new(Body::from(body));
        *req.method_mut() = Method::from_bytes(part.method.as_bytes()).unwrap_or(Method::POST);
        *req.uri_mut() = uri;
        let headers = req.headers_mut();
        for (name, value) in &part.headers {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(name.as_bytes()),
                HeaderValue::from_bytes(value),
            ) {
                headers.append(n, v);
            }
        }
        headers.insert(crate::keys::apikey::HEADER, key);
        // Same recipients, same key, across every retry (harmless where the API ignores it).
        if let Some(v) = super::idempotency::upstream_key(part) {
            headers.insert(super::idempotency::HEADER, v);
        }
        req
    }
}
