//! The retry policy: what an attempt's outcome means, how long to wait, and whether
//! another attempt is allowed.
//!
//! Three separate steps, none of them doing I/O:
//! 1. [`classify`] says what an [`Outcome`] was (success, rate limited, transient, final).
//!    It knows HTTP semantics: a request that may have reached the upstream is only
//!    repeated when its method is idempotent.
//! 2. [`RetryPolicy::wait`] picks the wait: the upstream's [`Hint`] when there is one
//!    (plus a little jitter, only ever added), else capped exponential backoff.
//! 3. [`RetryPolicy::decide`] grants or refuses the retry against the policy's limits
//!    (deadline, attempts). A 429 is the upstream pacing us, not a failure, so it never
//!    uses up attempts; only the deadline bounds it.

use std::time::Duration;

use http::{Method, StatusCode};
use rand::Rng;

use super::Hint;

/// Limits and timings for retrying one request.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// The first backoff ceiling; it doubles with each attempt.
    pub backoff_base: Duration,
    /// The largest backoff ceiling, however many attempts were made.
    pub backoff_cap: Duration,
    /// The longest upstream hint honoured; longer hints are cut to this (see [`super::hint_from`]).
    pub max_retry_after: Duration,
    /// The most jitter added on top of an upstream hint.
    pub hint_jitter: Duration,
    /// Total time budget for a request, all attempts and waits included.
    pub deadline: Duration,
    /// How many transient failures a request may have before giving up (429s not counted).
    pub max_attempts: u32,
}

/// What happened to one attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The upstream answered with this status.
    Status(StatusCode),
    /// The connection could not be made: the request never reached the upstream.
    Connect,
    /// No (complete) answer in time: the upstream may have acted on the request.
    Timeout,
    /// Sending the request body or reading the response body failed midway.
    Body,
}

/// What an [`Outcome`] means for retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// The upstream handled the request: pass the answer on.
    Success,
    /// A 429: wait (for the hint, or a backoff) and try again.
    RateLimited,
    /// A failure that the same request may not meet again.
    Transient(Reason),
    /// An answer that repeating the request cannot change, or a failure that is unsafe to
    /// repeat (the upstream may already have acted on a non-idempotent request).
    Final,
}

/// Why an attempt is worth retrying; the values are metric labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reason {
    RateLimited,
    Connect,
    Timeout,
    Status5xx,
    Body,
}

/// Where a [`Wait`] came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitSource {
    /// The upstream's retry hint.
    Hint,
    /// The policy's own exponential backoff.
    Backoff,
}

/// How long to wait before the next attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wait {
    pub duration: Duration,
    pub source: WaitSource,
    /// The upstream asked for longer than [`RetryPolicy::max_retry_after`] (hints only).
    pub capped: bool,
}

/// The permission step's answer: may another attempt be made?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Yes, after this wait.
    RetryAfter(Wait),
    /// No; answer the client with the last attempt's result.
    GiveUp(GiveUpReason),
}

/// Why no further attempt is made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GiveUpReason {
    /// Waiting and trying again would overrun [`RetryPolicy::deadline`].
    Deadline,
    /// [`RetryPolicy::max_attempts`] transient failures were reached.
    Attempts,
    /// The outcome was a success or [`Class::Final`]: there is nothing to retry.
    Final,
}

/// Classifies one attempt's outcome. `idempotent` says whether the request may safely
/// be repeated after it may have reached the upstream (see [`is_idempotent`]).
///
/// - 1xx/2xx/3xx → [`Class::Success`]; 429 → [`Class::RateLimited`];
/// - [`Outcome::Connect`] → transient always: the request never reached the upstream;
/// - 500, 502, 503, 504, [`Outcome::Timeout`], [`Outcome::Body`] → transient when
///   idempotent, else [`Class::Final`];
/// - every other 4xx and 5xx (400, 401, 404, 501, 505, …) → [`Class::Final`].
pub fn classify(outcome: Outcome, idempotent: bool) -> Class {
    let transient_if_idempotent = |reason| {
        if idempotent {
            Class::Transient(reason)
        } else {
            Class::Final
        }
    };
    match outcome {
        Outcome::Connect => Class::Transient(Reason::Connect),
        Outcome::Timeout => transient_if_idempotent(Reason::Timeout),
        Outcome::Body => transient_if_idempotent(Reason::Body),
        Outcome::Status(StatusCode::TOO_MANY_REQUESTS) => Class::RateLimited,
        Outcome::Status(
            StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT,
        ) => transient_if_idempotent(Reason::Status5xx),
        Outcome::Status(status) if status.as_u16() < 400 => Class::Success,
        Outcome::Status(_) => Class::Final,
    }
}

/// Whether a method is idempotent (RFC 9110 §9.2.2): GET, HEAD, OPTIONS, TRACE, PUT, DELETE.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}

// === impl RetryPolicy ===

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            backoff_base: Duration::from_millis(100),
            backoff_cap: Duration::from_secs(10),
            max_retry_after: Duration::from_secs(300),
            hint_jitter: Duration::from_millis(250),
            deadline: Duration::from_secs(30),
            max_attempts: 5,
        }
    }
}

impl RetryPolicy {
    /// The backoff before retry number `attempt` (0-based), with full jitter: uniform in
    /// `[0, min(backoff_cap, backoff_base * 2^attempt)]`. Never overflows, for any `attempt`.
    pub fn backoff(&self, attempt: u32, rng: &mut impl Rng) -> Duration {
        let base = self.backoff_base.as_nanos();
        // `base << attempt` is exact while the shift loses no bits; past that the product
        // exceeds every `Duration` (and so every cap).
        let grown = match base {
            0 => 0,
            _ if attempt < base.leading_zeros() => base << attempt,
            _ => u128::MAX,
        };
        uniform_nanos(grown.min(self.backoff_cap.as_nanos()), rng)
    }

    /// The wait before the next attempt: the upstream's hint plus up to `hint_jitter` when
    /// there is a hint (never less than the hint: it is the earliest the upstream expects
    /// us), else [`backoff`](Self::backoff) for `attempt`.
    pub fn wait(&self, hint: Option<Hint>, attempt: u32, rng: &mut impl Rng) -> Wait {
        match hint {
            Some(hint) => Wait {
                duration: hint
                    .wait
                    .saturating_add(uniform_nanos(self.hint_jitter.as_nanos(), rng)),
                source: WaitSource::Hint,
                capped: hint.capped,
            },
            None => Wait {
                duration: self.backoff(attempt, rng),
                source: WaitSource::Backoff,
                capped: false,
            },
        }
    }

    /// Grants or refuses another attempt, in this order:
    /// - [`Class::Success`] and [`Class::Final`] → `GiveUp(Final)`;
    /// - `elapsed + wait` beyond [`deadline`](Self::deadline) → `GiveUp(Deadline)`;
    /// - [`Class::Transient`] with `attempts_made >= max_attempts` → `GiveUp(Attempts)`;
    /// - otherwise → `RetryAfter(wait)`.
    ///
    /// `attempts_made` counts the attempts so far that count against `max_attempts`
    /// (including the one just classified): the caller leaves 429s out of it, and
    /// [`Class::RateLimited`] is never refused for attempts either way.
    pub fn decide(
        &self,
        class: Class,
        wait: Wait,
        attempts_made: u32,
        elapsed: Duration,
    ) -> Verdict {
        match class {
            Class::Success | Class::Final => Verdict::GiveUp(GiveUpReason::Final),
            _ if elapsed.saturating_add(wait.duration) > self.deadline => {
                Verdict::GiveUp(GiveUpReason::Deadline)
            }
            Class::Transient(_) if attempts_made >= self.max_attempts => {
                Verdict::GiveUp(GiveUpReason::Attempts)
            }
            Class::Transient(_) | Class::RateLimited => Verdict::RetryAfter(wait),
        }
    }
}

/// A duration drawn uniformly from `[0, max_nanos]` ns; a bound beyond `u64` nanoseconds
/// (~584 years) is treated as that.
fn uniform_nanos(max_nanos: u128, rng: &mut impl Rng) -> Duration {
    let max_nanos = u64::try_from(max_nanos).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=max_nanos))
}

// === impl Class ===

impl Class {
    /// The metric label for a class that may be retried; `None` for success and final.
    pub fn reason(self) -> Option<Reason> {
        match self {
            Class::RateLimited => Some(Reason::RateLimited),
            Class::Transient(reason) => Some(reason),
            Class::Success | Class::Final => None,
        }
    }
}

// === impl Reason ===

impl Reason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::RateLimited => "rate_limited",
            Reason::Connect => "connect",
            Reason::Timeout => "timeout",
            Reason::Status5xx => "status_5xx",
            Reason::Body => "body",
        }
    }
}

// === impl WaitSource ===

impl WaitSource {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitSource::Hint => "hint",
            WaitSource::Backoff => "backoff",
        }
    }
}

// === impl GiveUpReason ===

impl GiveUpReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            GiveUpReason::Deadline => "deadline",
            GiveUpReason::Attempts => "attempts",
            GiveUpReason::Final => "final",
        }
    }
}

#[cfg(test)]
mod tests;
