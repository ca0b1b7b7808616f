//! An in-memory simulator of the provider's messaging API (`sluice simulate`).
//!
//! It plays the API described in `upstream-api.md` faithfully enough to develop, demo,
//! test and benchmark the proxy without the real provider: the same endpoints, the same
//! error bodies (built from [`crate::api`], so they match the seed byte for byte) and,
//! above all, the same pending-message capacity that produces the 429.
//!
//! # Endpoints
//! Every API route needs `X-API-Key` (401 otherwise); each configured key is its own
//! company owning its templates, campaigns and capacity. Only an exact key is valid: one
//! with whitespace around it is refused, as by the real API (trimming is the proxy's
//! job; note that HTTP/1 parsing already strips spaces around a header value).
//!
//! | method, path | success |
//! |---|---|
//! | `GET /api/v1/viber-services` | 200, two fixed services |
//! | `POST /api/v1/templates` | 201, the template with its `id` (fields: see `validate.rs`) |
//! | `GET`, `DELETE /api/v1/templates/{id}` | 200 / 204 |
//! | `POST /api/v1/campaigns` | 201, a Draft campaign |
//! | `GET /api/v1/campaigns/{id}` | 200, with `sentCount`, `deliveredCount`, … |
//! | `POST /api/v1/campaigns/{id}/start` | 200, now InProgress |
//! | `POST /api/v1/campaigns/{id}/bulk/{sms\|viber}` | 202 `{"campaignId","acceptedCount"}` |
//! | `POST /api/v1/campaigns/{id}/messages/{sms\|viber}` | 201 `{"messageId","status":"Pending"}` |
//! | `GET /api/v1/messages?phoneNumber=…[&campaignId=…]` | 200, the messages with statuses and `createdAt` |
//! | `GET /_sim/stats` | 200, [`SimStats`]: the simulator's own endpoint, no key needed |
//! | `GET`, `POST /_sim/control` | 200, the run-time settings; `POST` changes them (see `control.rs`); no key |
//!
//! Unknown paths get a JSON 404 and known paths with another method a JSON 405. The
//! messages query answers 400 without `phoneNumber`, the seed's phone 400 for an invalid
//! one (a leading space counts as the `+` that form decoding turned into one) and 404
//! for a `campaignId` the key does not own. A message's `createdAt` is the wall-clock
//! time its send was accepted, RFC 3339 UTC with milliseconds. Ids are decimal
//! integers; message ids are strings (`msg-<company>-<seq>`).
//!
//! # Sends
//! Checks run in this order: API key; injected failure (`fail_rate`: a 500, nothing
//! accepted); campaign exists and is the key's (404); campaign InProgress; endpoint type
//! matches the campaign (bulk vs transactional); channel matches; body well-formed;
//! at most `max_recipients`; every phone number valid; then capacity. A send that would
//! take the company over `max_pending` pending messages (or any send during a full
//! period of the capacity flips) is refused whole with the seed's 429 body, its retry
//! hint given as [`HintMode`] says.
//!
//! # Faults
//! Besides injected 500s (`fail_rate`) and `latency`, the simulator stages what a client
//! of a real API must survive, set in [`SimConfig`] or at run time:
//! - a connection reset after a send was processed (`reset_rate`): the send is accepted
//!   (or refused) as usual, then the connection closes without an answer;
//! - a late answer (`answer_delay`): the send is accepted at once, the answer waits;
//! - an outage ([`Simulator::start_outage`]): the port closes, open connections drop;
//! - capacity flips (`capacity_flip`): every other period, every company is full and
//!   every send gets the 429 (`currentPending` = `maxAllowed`, no available capacity).
//!
//! `POST /_sim/control` changes all of them (and `fail_rate`, `max_pending`) at run
//! time, as do [`Simulator`]'s `set_…` methods and [`Simulator::start_outage`].
//!
//! Resets and outages act on connections, so they need [`serve`].
//!
//! # Capacity and statuses
//! Pending messages drain at `drain_rate` per second of tokio time (so paused-time
//! tests are exact); see `queue.rs`. Messages go Pending → Sending → Delivered/Failed
//! in acceptance order.
//!
//! # Delivery outcomes
//! How each message ends is decided when it is accepted, deterministically from `seed`,
//! the company and the message's sequence number (never from time), under the rules of
//! `outcome.rs`, set in [`SimConfig`] and at run time ([`Simulator`]'s `set_…` methods):
//! - SMS: Failed with probability `sms_fail_rate` (default 0), `details`
//!   `{"code": 1, "error": "UNDELIVERABLE"}` (the simulator's choice), else Delivered;
//! - Viber, `viber_fail_rate` unset (the default): a number ending in `9` fails with
//!   code 9 (`NOT_VIBER_USER`), any other is Delivered; set: fails with that probability,
//!   code 8, 9 or 10 drawn by the weights `viber_fail_codes` (default 1:1:1);
//! - a failed Viber message of a campaign whose template has `smsFallbackEnabled` is
//!   Delivered by SMS fallback with probability `sms_fallback_rate` (default 1), with
//!   `deliveredViaSmsFallback: true` and its Viber code kept in `details`.
//!
//! The campaign counters and the messages query read the same stored outcome, so they
//! always agree; [`SimStats`] sums them over every company (`delivered`, `failed`,
//! `failed_by_code`, `sms_fallback_delivered`).
//!
//! # Files
//! - `mod.rs`: config, the [`Simulator`] handle and its run-time setters, the router;
//! - `serve.rs`: the accept loop ([`serve`]): outages, connection resets, shutdown;
//! - `handlers.rs`: HTTP for everything but sends; `send.rs`: the two send endpoints
//!   and the 429; `control.rs`: `/_sim/control`;
//! - `faults.rs`: what a processed send's answer suffers (delay, reset), capacity flips;
//! - `state.rs`: the world, pure logic; `company.rs`: one company (counters, statuses);
//!   `outcome.rs`: how each message ends (the rules, the draws, the tally); `queue.rs`:
//!   the capacity model, creation times and each message's stored outcome;
//! - `model.rs`: resource shapes; `validate.rs`: request bodies; `phone.rs`: phone
//!   numbers; `stats.rs`: [`SimStats`].

mod company;
mod control;
mod faults;
mod handlers;
mod model;
mod outcome;
mod phone;
mod queue;
mod send;
mod serve;
mod state;
mod stats;
mod validate;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::middleware;
use axum::routing::{get, post};
use axum::Router;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

use self::faults::{Fate, SendFaults};
use self::outcome::Rules;
pub use self::outcome::ViberFailCodes;
pub use self::serve::serve;
use self::state::State;
pub use self::stats::SimStats;
use self::stats::StatsRecorder;

/// The simulator's knobs. `Default` gives the provider's documented behaviour with one
/// key, `demo-key`.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// `maxAllowed`: most messages a company may have pending (default 50000).
    pub max_pending: u64,
    /// Messages per second leaving Pending, per company (default 5000).
    pub drain_rate: f64,
    /// The retry hint's value in seconds (default 30).
    pub retry_after: u64,
    /// How the 429 gives the hint (default [`HintMode::Both`]).
    pub hint: HintMode,
    /// Probability (0..=1) of an injected 500 on any authenticated request (default 0).
    pub fail_rate: f64,
    /// Seed of the failure-injection RNG and of the delivery outcomes (default 1).
    pub seed: u64,
    /// Delay added before answering every API request (default none).
    pub latency: Duration,
    /// Valid API keys, each its own company (default `["demo-key"]`).
    pub api_keys: Vec<String>,
    /// Most recipients in one bulk request (default 200000).
    pub max_recipients: usize,
    /// Probability (0..=1) that a send (bulk or single), once processed (accepted or
    /// refused as usual), gets its connection closed instead of an answer (default 0).
    /// Drawn from an RNG seeded by `seed`.
    pub reset_rate: f64,
    /// How long a send, once processed, waits before answering: the "accepted, but the
    /// answer came after the client's timeout" fault (default none). `latency` delays
    /// before processing; this delays after.
    pub answer_delay: Duration,
    /// Capacity flips: time (tokio) is cut into periods of this length from the start,
    /// and in every other period (the second, fourth, …) every company is full, so any
    /// send is refused with the 429 (default none).
    pub capacity_flip: Option<Duration>,
    /// Share (0..=1) of Viber messages that fail, drawn per message from `seed` (see
    /// `outcome.rs`). `None` (the default): a Viber message to a number ending in `9`
    /// fails with code 9 (`NOT_VIBER_USER`), every other one is delivered.
    pub viber_fail_rate: Option<f64>,
    /// How drawn Viber failures split among codes 8, 9 and 10 (default 1:1:1). Unused
    /// while `viber_fail_rate` is `None`.
    pub viber_fail_codes: ViberFailCodes,
    /// Share (0..=1) of failed Viber messages of campaigns whose template has
    /// `smsFallbackEnabled` that SMS fallback delivers (default 1: all of them).
    pub sms_fallback_rate: f64,
    /// Share (0..=1) of SMS messages that fail, with `details`
    /// `{"code": 1, "error": "UNDELIVERABLE"}` (default 0).
    pub sms_fail_rate: f64,
}

/// How a 429 tells the client when to retry.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum HintMode {
    /// `Retry-After: <seconds>` header; no `retryAfterSeconds` in the body.
    Header,
    /// `Retry-After: <HTTP-date>` header; no `retryAfterSeconds` in the body.
    Date,
    /// `retryAfterSeconds` in the body; no header.
    Body,
    /// Both the seconds header and the body field (the seed's example).
    Both,
    /// No hint at all.
    None,
}

/// A running simulator: cheap to clone, all clones share one world.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

struct Inner {
    cfg: SimConfig,
    /// `f64` bits of the current failure probability.
    fail_rate: AtomicU64,
    state: Mutex<State>,
    stats: Mutex<StatsRecorder>,
    rng: Mutex<StdRng>,
    faults: Mutex<SendFaults>,
    /// When the outage under way ends (`None`, or a time past: none). [`serve`] watches it.
    outage: watch::Sender<Option<Instant>>,
}

/// Largest request body accepted: room for 200000 recipients with variables.
const BODY_LIMIT: usize = 256 * 1024 * 1024;

// === impl SimConfig ===

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            max_pending: 50_000,
            drain_rate: 5_000.0,
            retry_after: 30,
            hint: HintMode::Both,
            fail_rate: 0.0,
            seed: 1,
            latency: Duration::ZERO,
            api_keys: vec!["demo-key".to_string()],
            max_recipients: 200_000,
            reset_rate: 0.0,
            answer_delay: Duration::ZERO,
            capacity_flip: None,
            viber_fail_rate: None,
            viber_fail_codes: ViberFailCodes::default(),
            sms_fallback_rate: 1.0,
            sms_fail_rate: 0.0,
        }
    }
}

// === impl Simulator ===

impl Simulator {
    /// A fresh world: one empty company per configured key.
    pub fn new(cfg: SimConfig) -> Self {
        let now = Instant::now();
        let mut state = State::new(&cfg.api_keys, cfg.max_pending, cfg.drain_rate, now);
        state.set_capacity_flip(cfg.capacity_flip, now);
        *state.rules_mut() = Rules::from_config(&cfg);
        let inner = Inner {
            fail_rate: AtomicU64::new(cfg.fail_rate.to_bits()),
            state: Mutex::new(state),
            stats: Mutex::new(StatsRecorder::default()),
            rng: Mutex::new(StdRng::seed_from_u64(cfg.seed)),
            faults: Mutex::new(SendFaults::new(cfg.reset_rate, cfg.answer_delay, cfg.seed)),
            outage: watch::Sender::new(None),
            cfg,
        };
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The whole API plus `/_sim/stats` and `/_sim/control`, ready to serve. Outages and connection
    /// resets need [`serve`]: served any other way, the router answers the requests a
    /// reset should cut off, and an outage changes nothing.
    pub fn router(&self) -> Router {
        let sends = Router::new()
            .route("/api/v1/campaigns/{id}/bulk/{channel}", post(send::bulk))
            .route(
                "/api/v1/campaigns/{id}/messages/{channel}",
                post(send::single),
            )
            .route_layer(middleware::from_fn_with_state(
                self.clone(),
                handlers::count_send,
            ));
        let api = Router::new()
            .route("/api/v1/viber-services", get(handlers::viber_services))
            .route("/api/v1/templates", post(handlers::create_template))
            .route(
                "/api/v1/templates/{id}",
                get(handlers::get_template).delete(handlers::delete_template),
            )
            .route("/api/v1/campaigns", post(handlers::create_campaign))
            .route("/api/v1/campaigns/{id}", get(handlers::get_campaign))
            .route(
                "/api/v1/campaigns/{id}/start",
                post(handlers::start_campaign),
            )
            .route("/api/v1/messages", get(handlers::messages))
            .merge(sends)
            .method_not_allowed_fallback(handlers::method_not_allowed)
            .fallback(handlers::not_found)
            .layer(middleware::from_fn_with_state(
                self.clone(),
                handlers::track,
            ))
            .layer(DefaultBodyLimit::max(BODY_LIMIT));
        Router::new()
            .route("/_sim/stats", get(handlers::stats))
            .route("/_sim/control", get(control::show).post(control::apply))
            .merge(api)
            .with_state(self.clone())
    }

    /// A snapshot of the counters (the same as `GET /_sim/stats`), outcomes as of now.
    pub fn stats(&self) -> SimStats {
        let outcomes = self.state().outcomes(Instant::now());
        let mut stats = self.stats_mut().snapshot();
        stats.delivered = outcomes.delivered;
        stats.failed_by_code = outcomes.failed_by_code();
        stats.failed = stats.failed_by_code.values().sum();
        stats.sms_fallback_delivered = outcomes.sms_fallback_delivered;
        stats
    }

    /// Changes the probability of an injected 500 from the next request on.
    pub fn set_fail_rate(&self, p: f64) {
        self.inner.fail_rate.store(p.to_bits(), Ordering::Relaxed);
    }

    /// Changes `maxAllowed` for every company from the next send on.
    pub fn set_max_pending(&self, n: u64) {
        self.state().set_max_pending(n);
    }

    /// Starts capacity flips with periods of `period` from now (replacing any under way);
    /// `None` or zero turns them off.
    pub fn set_capacity_flip(&self, period: Option<Duration>) {
        self.state().set_capacity_flip(period, Instant::now());
    }

    /// Changes the probability that a processed send's connection is reset instead of
    /// answered, from the next send on.
    pub fn set_reset_rate(&self, p: f64) {
        self.faults().set_reset_rate(p);
    }

    /// Changes how long a processed send waits before answering, from the next send on.
    pub fn set_answer_delay(&self, delay: Duration) {
        self.faults().set_answer_delay(delay);
    }

    /// Changes the share of Viber messages that fail (`None`: the "number ending in 9"
    /// rule) for messages accepted from now on.
    pub fn set_viber_fail_rate(&self, p: Option<f64>) {
        self.state().rules_mut().viber_fail_rate = p;
    }

    /// Changes how drawn Viber failures split among codes 8, 9 and 10, for messages
    /// accepted from now on.
    pub fn set_viber_fail_codes(&self, codes: ViberFailCodes) {
        self.state().rules_mut().viber_fail_codes = codes;
    }

    /// Changes the share of failed Viber messages (of campaigns with SMS fallback) that
    /// SMS fallback delivers, for messages accepted from now on.
    pub fn set_sms_fallback_rate(&self, p: f64) {
        self.state().rules_mut().sms_fallback_rate = p;
    }

    /// Changes the share of SMS messages that fail, for messages accepted from now on.
    pub fn set_sms_fail_rate(&self, p: f64) {
        self.state().rules_mut().sms_fail_rate = p;
    }

    /// Stops listening for `duration` (tokio time) from now: connecting is refused and
    /// every open connection is closed at once, requests in flight unanswered; then
    /// [`serve`] listens again on the same address. During an outage this replaces the
    /// outage's end (`Duration::ZERO` ends it).
    pub fn start_outage(&self, duration: Duration) {
        let now = Instant::now();
        // A century stands for "longer than any test or demo".
        let until = now
            .checked_add(duration)
            .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600));
        self.inner.outage.send_replace(Some(until));
        if !duration.is_zero() {
            self.stats_mut().outage();
            tracing::info!(secs = duration.as_secs_f64(), "simulated outage starts");
        }
    }

    /// How long the outage under way still lasts (zero when none is).
    pub fn outage_remaining(&self) -> Duration {
        let until = *self.inner.outage.borrow();
        until.map_or(Duration::ZERO, |until| {
            until.saturating_duration_since(Instant::now())
        })
    }

    /// For [`serve`]: the outage setting, to wait on.
    fn subscribe_outage(&self) -> watch::Receiver<Option<Instant>> {
        self.inner.outage.subscribe()
    }

    /// The probability of an injected 500.
    fn fail_rate(&self) -> f64 {
        f64::from_bits(self.inner.fail_rate.load(Ordering::Relaxed))
    }

    /// `(reset_rate, answer_delay)` as set.
    fn send_fault_settings(&self) -> (f64, Duration) {
        let faults = self.faults();
        (faults.reset_rate(), faults.answer_delay())
    }

    /// `(max_pending, capacity flip period)` as set.
    fn capacity_settings(&self) -> (u64, Option<Duration>) {
        let state = self.state();
        (state.max_pending(), state.capacity_flip())
    }

    fn config(&self) -> &SimConfig {
        &self.inner.cfg
    }

    /// The world. Never held across an `.await`, and never while holding the stats.
    fn state(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn faults(&self) -> MutexGuard<'_, SendFaults> {
        self.inner
            .faults
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Decides what happens to the answer of one processed send.
    fn send_fate(&self) -> Fate {
        self.faults().fate()
    }

    fn stats_mut(&self) -> MutexGuard<'_, StatsRecorder> {
        self.inner
            .stats
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Draws once from the seeded RNG: true when this request gets an injected 500.
    /// Every authenticated request draws, so a seed gives one sequence of outcomes.
    fn inject_failure(&self) -> bool {
        let p = self.fail_rate();
        let draw: f64 = self
            .inner
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .random();
        draw < p
    }
}
