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

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use bytes::Bytes;
use dashmap::DashMap;
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use http::{HeaderName, HeaderValue, Method, Request};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::plan;
use super::policy::{self, Answer, Exhausted};
use super::reconcile::Turn;
use super::scheduler::{schedule, Allowance, Wake};
use super::settle::Attempt;
use super::store::{Dispatchable, Store, StoreError};
use crate::apikey::{ApiKey, KeyId};
use crate::health::Health;
use crate::keystate::{KeyState, Stored};
use crate::metrics::{GaugeGuard, Metrics};
use crate::retry::{Change, Outcome, Pass};
use crate::routes::{Route, RouteKind};
use crate::upstream::Upstream;

/// Largest upstream answer kept for a part (the API's are small JSON objects).
const MAX_RESPONSE: usize = 1024 * 1024;

/// Handle to the dispatcher; cheap to clone.
#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

/// Settings of the dispatcher.
pub struct DispatchSettings {
    pub routes: Vec<Route>,
    pub own_key: Option<ApiKey>,
    pub concurrency: usize,
    pub max_attempts: u32,
    pub max_age: Duration,
    pub requests_per_sec: u32,
    pub recipients_per_sec: u32,
    /// How long after a lost answer the send is looked up.
    pub reconcile_delay: Duration,
    /// How far the API's clock may run behind sluice's (for lookups).
    pub clock_skew: Duration,
    /// Told whether each attempt reached the API (for `/readyz`).
    pub health: Arc<Health>,
}

/// Back-pressure room taken for a send (see [`Dispatcher::reserve`]).
pub struct Reservation<'a> {
    dispatcher: &'a Dispatcher,
    recipients: u64,
    bytes: u64,
    kept: bool,
}

/// Recipients and bytes accepted and not yet final: the back-pressure figures.
#[derive(Debug, Default)]
pub struct Backlog {
    pub recipients: AtomicU64,
    pub bytes: AtomicU64,
}

pub(super) struct Inner {
    pub(super) store: Arc<Store>,
    pub(super) upstream: Upstream,
    pub(super) keys: Arc<KeyState>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) settings: DispatchSettings,
    routes: HashMap<String, Route>,
    slots: Semaphore,
    wakes: mpsc::UnboundedSender<Wake>,
    waiters: DashMap<String, Arc<Notify>>,
    /// Per-key locks for sending one part at a time (see `attempt`).
    serial: DashMap<KeyId, Arc<tokio::sync::Mutex<()>>>,
    backlog: Backlog,
    requests: Option<DefaultKeyedRateLimiter<KeyId>>,
    recipients: Option<(DefaultKeyedRateLimiter<KeyId>, u32)>,
}

// === impl Dispatcher ===

impl Dispatcher {
    /// Starts the scheduler, which takes parts from the store as they are due; new ones
    /// are announced with [`Dispatcher::wake`].
    pub fn start(
        store: Arc<Store>,
        upstream: Upstream,
        keys: Arc<KeyState>,
        metrics: Arc<Metrics>,
        settings: DispatchSettings,
        shutdown: CancellationToken,
        tasks: TaskTracker,
    ) -> Self {
        let (wakes, rx) = mpsc::unbounded_channel();
        let limiter = |per_sec: u32| {
            NonZeroU32::new(per_sec).map(|n| RateLimiter::keyed(Quota::per_second(n)))
        };
        let inner = Arc::new(Inner {
            routes: settings
                .routes
                .iter()
                .map(|r| (r.name.clone(), r.clone()))
                .collect(),
            slots: Semaphore::new(settings.concurrency),
            requests: limiter(settings.requests_per_sec),
            recipients: limiter(settings.recipients_per_sec)
                .map(|l| (l, settings.recipients_per_sec)),
            store,
            upstream,
            keys,
            metrics,
            settings,
            wakes,
            waiters: DashMap::new(),
            serial: DashMap::new(),
            backlog: Backlog::default(),
        });
        let allowance = Allowance {
            per_key: inner.settings.concurrency,
            hold: inner.settings.concurrency * 2,
        };
        tasks.spawn(schedule(
            inner.clone(),
            rx,
            allowance,
            shutdown,
            tasks.clone(),
        ));
        Self { inner }
    }

    /// Tells the scheduler that `owner` (a [`KeyId::full`]) has parts due now.
    pub fn wake(&self, owner: &str) {
        self.inner.wake(owner, 0);
    }

    /// Takes recipients and bytes that will not be sent (cancelled) out of the backlog.
    pub fn release_backlog(&self, recipients: u64, bytes: u64) {
        self.inner.remove_backlog(recipients, bytes);
    }

    /// Adds newly accepted work to the back-pressure figures.
    pub fn add_backlog(&self, recipients: u64, bytes: u64) {
        self.inner
            .backlog
            .recipients
            .fetch_add(recipients, Ordering::Relaxed);
        self.inner.backlog.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// Takes back-pressure room for a send of `recipients` and `bytes`, if the backlog stays
    /// within the limits with it; in one atomic step per figure, so concurrent sends cannot
    /// all pass the same check. `Err` with the backlog as it is when there is no room. The
    /// room is given back unless [`Reservation::keep`] is called (the send was stored).
    pub fn reserve(
        &self,
        recipients: u64,
        bytes: u64,
        max_recipients: u64,
        max_bytes: u64,
    ) -> Result<Reservation<'_>, (u64, u64)> {
        let b = &self.inner.backlog;
        let take = |a: &AtomicU64, n: u64, max: u64| {
            a.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                v.checked_add(n).filter(|&total| total <= max)
            })
        };
        if take(&b.recipients, recipients, max_recipients).is_err() {
            return Err(self.backlog());
        }
        if take(&b.bytes, bytes, max_bytes).is_err() {
            self.inner.remove_backlog(recipients, 0);
            return Err(self.backlog());
        }
        Ok(Reservation {
            dispatcher: self,
            recipients,
            bytes,
            kept: false,
        })
    }

    pub fn backlog(&self) -> (u64, u64) {
        let b = &self.inner.backlog;
        (
            b.recipients.load(Ordering::Relaxed),
            b.bytes.load(Ordering::Relaxed),
        )
    }

    /// Drops per-key state idle for `idle` (see [`KeyState::evict_idle`]).
    pub fn evict_idle(&self, idle: Duration) -> usize {
        self.inner.evict_idle();
        self.inner.keys.evict_idle(idle)
    }

    /// Entries of per-request and per-key state held in memory, by kind, for the state
    /// gauge: jobs with a client waiting, keys with a cooldown gate, keys with a bulk lock,
    /// keys in the rate limiters.
    pub fn state_sizes(&self) -> [(&'static str, usize); 4] {
        let i = &self.inner;
        [
            ("waiters", i.waiters.len()),
            ("cooldown_gates", i.keys.tracked()),
            ("bulk_locks", i.serial.len()),
            (
                "rate_limiter_keys",
                i.requests.as_ref().map_or(0, |l| l.len())
                    + i.recipients.as_ref().map_or(0, |(l, _)| l.len()),
            ),
        ]
    }

    /// Whether the API is unreachable (an outage: the upstream breaker is open).
    pub fn upstream_down(&self) -> bool {
        self.inner.upstream.breaker().is_open()
    }

    /// A notifier that fires whenever a part of `job` reaches a final state, for as long
    /// as the returned [`Watch`] lives. Several may watch one job (a send and its
    /// idempotent repeats): each is woken.
    pub fn watch(&self, job: &str) -> Watch {
        let notify = self
            .inner
            .waiters
            .entry(job.to_string())
            .or_default()
            .clone();
        Watch {
            inner: self.inner.clone(),
            job: job.to_string(),
            notify: Some(notify),
        }
    }
}

/// One watcher of a job's progress (see [`Dispatcher::watch`]); the last one dropped
/// stops the dispatcher keeping a notifier for the job.
pub struct Watch {
    inner: Arc<Inner>,
    job: String,
    notify: Option<Arc<Notify>>,
}

// === impl Reservation ===

impl Reservation<'_> {
    /// The send was stored: its room stays taken until its parts are final.
    pub fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.dispatcher
                .inner
                .remove_backlog(self.recipients, self.bytes);
        }
    }
}

// === impl Watch ===

impl Watch {
    pub fn notify(&self) -> &Notify {
        // Only `drop` takes it.
        self.notify
            .as_deref()
            .expect("a live watch has its notifier")
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        drop(self.notify.take());
        // The map's clone is the last one: no one else watches. (A watcher arriving now
        // either made its clone first, or finds the entry gone and makes a new one.)
        self.inner
            .waiters
            .remove_if(&self.job, |_, n| Arc::strong_count(n) == 1);
    }
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

// === impl Inner ===

impl Inner {
    /// Tells the scheduler that `owner` has parts due at `at` (unix ms; 0 for now). The
    /// receiver lives as long as the scheduler; after shutdown the parts stay queued on
    /// disk and are taken at the next start.
    pub(super) fn wake(&self, owner: &str, at: i64) {
        let _ = self.wakes.send(Wake::Due {
            owner: owner.to_string(),
            at,
        });
    }

    pub(super) fn remove_backlog(&self, recipients: u64, bytes: u64) {
        let b = &self.backlog;
        let sub = |a: &AtomicU64, n: u64| {
            let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&b.recipients, recipients);
        sub(&b.bytes, bytes);
    }

    /// Drops per-key state that nothing uses: the bulk locks of keys with no part waiting
    /// or sending, and the rate limiters' cells of keys not seen lately.
    fn evict_idle(&self) {
        self.serial.retain(|_, lock| Arc::strong_count(lock) > 1);
        if let Some(limiter) = &self.requests {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
        if let Some((limiter, _)) = &self.recipients {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    pub(super) fn notify(&self, job: &str) {
        if let Some(n) = self.waiters.get(job) {
            n.notify_waiters();
        }
    }

    /// One part's turn. A store error leaves the part where it was on disk; the turn is
    /// tried again a second later (the part stays in memory meanwhile).
    pub(super) async fn run(self: Arc<Self>, part: Dispatchable) {
        loop {
            match self.attempt(part.clone()).await {
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
        // Bulk parts go one at a time per key: each learns from the answer to the one
        // before (a 429 cools the key down, and tells its room and maxAllowed, before the
        // next part is let through), so a wave of large parts cannot run into the same full
        // capacity together. Single sends go in parallel, gated by the key's cooldown alone.
        let _serial = if route.kind == RouteKind::Bulk {
            let lock = self.serial.entry(key_id).or_default().clone();
            Some(lock.lock_owned().await)
        } else {
            None
        };
        // During a cooldown, a send that fits in the room the API's last 429 reported goes
        // at once (the API said it would take it); the rest wait for the cooldown's probe.
        let permit = if self.keys.take_room(&key_id, n) {
            None
        } else {
            let _waiting = GaugeGuard::new(&self.metrics.cooldown_waiting);
            Some(self.keys.cooldowns.acquire(&key_id).await)
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

    /// The route a part was accepted under (or a plain single route, when the
    /// configuration no longer has it: the part is then sent whole).
    fn route(&self, name: &str) -> Route {
        self.routes.get(name).cloned().unwrap_or_else(|| Route {
            name: name.to_string(),
            method: "POST".into(),
            path: String::new(),
            kind: RouteKind::Single,
            recipients_pointer: String::new(),
            max_recipients_per_request: u64::MAX,
            validation: crate::validate::Mode::Off,
            invalid_recipients: crate::validate::InvalidRecipients::Reject,
            lookup: Some(String::new()),
        })
    }

    /// The key to send with: the one stored with the job, else the proxy's own.
    pub(super) fn key_for(&self, part: &Dispatchable) -> Option<(HeaderValue, KeyId)> {
        match &part.api_key {
            Some(bytes) => {
                let mut value = HeaderValue::from_bytes(bytes).ok()?;
                value.set_sensitive(true);
                Some((value, KeyId::of(bytes)))
            }
            None => self
                .settings
                .own_key
                .as_ref()
                .map(|k| (k.header_value(), k.id())),
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
        headers.insert(crate::apikey::HEADER, key);
        // Same recipients, same key, across every retry (harmless where the API ignores it).
        if let Some(v) = super::idempotency::upstream_key(part) {
            headers.insert(super::idempotency::HEADER, v);
        }
        req
    }
}
