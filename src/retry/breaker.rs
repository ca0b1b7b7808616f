//! The upstream breaker: what sluice does while the API cannot be reached at all.
//!
//! A connection refused, a DNS or TLS failure says nothing about a send: the request never
//! reached the API. So such failures are not counted against a send's attempts; instead
//! the whole upstream is marked unreachable, every attempt waits (the queue) or is answered
//! at once (pass-through), and one probe at a time tests whether the API is back. The
//! probes back off exponentially with jitter up to a cap; the first probe that reaches the
//! API (any answer at all) closes the breaker and everyone goes again at full speed.
//!
//! It is the per-key cooldown's state machine ([`Cooldowns`]) with a single key: "cooling"
//! is the wait before the next probe, "probing" a probe in flight. The breaker adds the
//! count of consecutive failures (for the backoff) and when the outage began (for
//! messages and metrics). It knows nothing of HTTP or metrics: callers report what an
//! attempt did ([`Pass::reached`], [`Pass::unreachable`]) and are told whether that began
//! or ended an outage.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use rand::Rng;

use super::{Cooldowns, Permit};

/// The upstream's reachability, shared by everything that sends to it.
pub struct Breaker {
    gate: Cooldowns<()>,
    /// Consecutive attempts that could not reach the API (0: reachable).
    failures: AtomicU32,
    /// Outages begun since start.
    outages: AtomicU64,
    /// When the current outage began; `None` while the API is reachable.
    since: Mutex<Option<SystemTime>>,
    base: Duration,
    cap: Duration,
}

/// The right to make one attempt; report what happened to it.
///
/// Dropped without a report (a cancelled request), a probe's role passes to the next
/// caller, as with a cooldown [`Permit`].
#[must_use = "report whether the attempt reached the API"]
pub struct Pass {
    permit: Permit<()>,
    breaker: Arc<Breaker>,
}

/// Why [`Breaker::try_pass`] refused: the API is unreachable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outage {
    /// When the outage began.
    pub since: SystemTime,
    /// Time until the next probe may go; `None` while a probe is in flight.
    pub next_probe_in: Option<Duration>,
}

/// What a report changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Nothing: the breaker was (and stays) closed, or (and stays) open.
    None,
    /// This failure began an outage.
    Opened,
    /// This success ended an outage that began at the given time.
    Closed { since: SystemTime },
}

// === impl Breaker ===

impl Breaker {
    /// A closed breaker whose probes wait from about `base` (doubling each time) up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            gate: Cooldowns::new(),
            failures: AtomicU32::new(0),
            outages: AtomicU64::new(0),
            since: Mutex::new(None),
            base,
            cap: cap.max(base),
        }
    }

    /// Waits until an attempt may go: at once while the API is reachable; during an
    /// outage, until this caller is the next probe or a probe has closed the breaker.
    /// Cancel-safe.
    pub async fn pass(self: &Arc<Self>) -> Pass {
        Pass {
            permit: self.gate.acquire(&()).await,
            breaker: Arc::clone(self),
        }
    }

    /// [`pass`](Self::pass) without waiting: `Err` during an outage unless this caller may
    /// be the probe now.
    pub fn try_pass(self: &Arc<Self>) -> Result<Pass, Outage> {
        match self.gate.try_acquire(&()) {
            Ok(permit) => Ok(Pass {
                permit,
                breaker: Arc::clone(self),
            }),
            Err(next_probe_in) => Err(Outage {
                since: self.since().unwrap_or_else(SystemTime::now),
                next_probe_in,
            }),
        }
    }

    /// Whether the last attempt failed to reach the API.
    pub fn is_open(&self) -> bool {
        self.failures.load(Ordering::Relaxed) > 0
    }

    /// When the current outage began, if the API is unreachable.
    pub fn since(&self) -> Option<SystemTime> {
        *self.since.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Time until the next probe may go; `None` when none is waited for.
    pub fn remaining(&self) -> Option<Duration> {
        self.gate.remaining(&())
    }

    /// Outages begun since start.
    pub fn outages(&self) -> u64 {
        self.outages.load(Ordering::Relaxed)
    }

    /// The wait before the next probe after `failures` consecutive failures: from
    /// `base · 2^(failures-1)` capped at `cap`, half of it fixed and half random, so
    /// probes neither hammer the API nor wait much longer than needed.
    pub fn probe_wait(&self, failures: u32, rng: &mut impl Rng) -> Duration {
        let doublings = failures.saturating_sub(1).min(30);
        let full = self.base.saturating_mul(1 << doublings).min(self.cap);
        let half = full / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rng.random_range(0..=nanos))
    }

    fn reached(&self) -> Change {
        if self.failures.swap(0, Ordering::Relaxed) == 0 {
            return Change::None;
        }
        match self
            .since
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            Some(since) => Change::Closed { since },
            None => Change::None,
        }
    }

    fn failed(&self) -> (Change, Duration) {
        let failures = self.failures.fetch_add(1, Ordering::Relaxed) + 1;
        let wait = self.probe_wait(failures, &mut rand::rng());
        let mut since = self.since.lock().unwrap_or_else(PoisonError::into_inner);
        let change = if since.is_none() {
            *since = Some(SystemTime::now());
            self.outages.fetch_add(1, Ordering::Relaxed);
            Change::Opened
        } else {
            Change::None
        };
        (change, wait)
    }
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("failures", &self.failures)
            .field("since", &self.since())
            .finish_non_exhaustive()
    }
}

// === impl Pass ===

impl Pass {
    /// Whether this attempt is the probe of an outage.
    pub fn is_probe(&self) -> bool {
        self.permit.is_probe()
    }

    /// The attempt reached the API (any answer, or a connection that was made): the
    /// breaker closes, if it was open.
    pub fn reached(self) -> Change {
        let change = self.breaker.reached();
        self.permit.succeeded();
        change
    }

    /// The attempt could not reach the API: the next probe waits (longer each time).
    /// Returns what changed and the wait before the next probe.
    pub fn unreachable(self) -> (Change, Duration) {
        let (change, wait) = self.breaker.failed();
        self.permit.rate_limited(wait);
        (change, wait)
    }
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("probe", &self.is_probe())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::SeedableRng;

    fn breaker() -> Arc<Breaker> {
        Arc::new(Breaker::new(
            Duration::from_millis(100),
            Duration::from_secs(5),
        ))
    }

    #[test]
    fn probe_waits_grow_to_the_cap_and_never_below_half() {
        let b = breaker();
        let mut rng = StdRng::seed_from_u64(7);
        for failures in 1..40 {
            let full = Duration::from_millis(100)
                .saturating_mul(1 << (failures - 1).min(30))
                .min(Duration::from_secs(5));
            for _ in 0..20 {
                let w = b.probe_wait(failures, &mut rng);
                assert!(w >= full / 2 && w <= full, "{failures}: {w:?} vs {full:?}");
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_outage_lets_one_probe_at_a_time_and_the_first_answer_reopens() {
        let b = breaker();
        // Reachable: everyone goes.
        let a = b.pass().await;
        let c = b.pass().await;
        assert!(!a.is_probe());
        let (change, wait) = a.unreachable();
        assert_eq!(change, Change::Opened);
        assert!(wait >= Duration::from_millis(50));
        // A second failure during the same outage changes nothing.
        assert_eq!(c.unreachable().0, Change::None);
        assert!(b.is_open());
        assert_eq!(b.outages(), 1);
        // Pass-through callers are refused at once, with the time to the next probe.
        let refused = b.try_pass().unwrap_err();
        assert!(refused.next_probe_in.is_some());
        // Waiters wait for the probe wait, then exactly one goes as the probe.
        let probe = b.pass().await;
        assert!(probe.is_probe());
        let err = b.try_pass().unwrap_err();
        assert_eq!(err.next_probe_in, None, "a probe is in flight");
        let waiter = {
            let b = b.clone();
            tokio::spawn(async move { b.pass().await.is_probe() })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        assert!(matches!(probe.reached(), Change::Closed { .. }));
        assert!(!waiter.await.unwrap(), "the waiter goes as a plain attempt");
        assert!(!b.is_open());
        assert!(b.try_pass().is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_passes_the_role_on() {
        let b = breaker();
        let _ = b.pass().await.unreachable();
        let probe = b.pass().await;
        assert!(probe.is_probe());
        drop(probe);
        let next = b.try_pass().expect("the next caller becomes the probe");
        assert!(next.is_probe());
        let _ = next.reached();
    }
}
