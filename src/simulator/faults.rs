//! The faults the send endpoints stage, as pure decisions:
//!
//! - after processing a send: should its answer be late (`answer_delay`), should its
//!   connection be reset instead (`reset_rate`, drawn from a seeded RNG). `send.rs`
//!   applies them; `serve.rs` turns a reset into a dropped connection;
//! - capacity flips ([`CapacityFlip`]): whether every company is full right now.
//!   `state.rs` refuses sends with the 429 while it is.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

/// The run-time settings of the send faults, with the RNG the resets are drawn from.
#[derive(Debug)]
pub struct SendFaults {
    /// Probability (0..=1) that a processed send's connection is reset instead of answered.
    reset_rate: f64,
    /// How long a processed send waits before answering.
    answer_delay: Duration,
    /// Seeded apart from the failure injection's RNG, so that turning resets on does not
    /// change which requests get an injected 500.
    rng: StdRng,
}

/// What happens to one processed send's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fate {
    /// Wait this long before answering (zero: answer at once).
    pub delay: Duration,
    /// Drop the connection instead of answering (after the delay).
    pub reset: bool,
}

/// Time cut into periods of one length from `start`: in every other period (the second,
/// the fourth, …) every company is full; in the others capacity is as usual.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapacityFlip {
    period: Duration,
    start: Instant,
}

/// Mixed into the configured seed for the reset RNG.
const RESET_SEED_SALT: u64 = 0x7e5e_7c0e_6e55_0001;

// === impl SendFaults ===

impl SendFaults {
    /// The configured settings; the reset RNG is seeded from `seed`.
    pub fn new(reset_rate: f64, answer_delay: Duration, seed: u64) -> Self {
        Self {
            reset_rate,
            answer_delay,
            rng: StdRng::seed_from_u64(seed ^ RESET_SEED_SALT),
        }
    }

    pub fn reset_rate(&self) -> f64 {
        self.reset_rate
    }

    pub fn answer_delay(&self) -> Duration {
        self.answer_delay
    }

    pub fn set_reset_rate(&mut self, p: f64) {
        self.reset_rate = p;
    }

    pub fn set_answer_delay(&mut self, delay: Duration) {
        self.answer_delay = delay;
    }

    /// Decides the fate of one processed send. Draws once from the reset RNG whatever the
    /// rate, so a seed gives one sequence of resets per sequence of sends.
    pub fn fate(&mut self) -> Fate {
        let draw: f64 = self.rng.random();
        Fate {
            delay: self.answer_delay,
            reset: draw < self.reset_rate,
        }
    }
}

// === impl CapacityFlip ===

impl CapacityFlip {
    /// Flips every `period` from `start`; `None` for a zero period (no flips).
    pub fn new(period: Duration, start: Instant) -> Option<Self> {
        (!period.is_zero()).then_some(Self { period, start })
    }

    pub fn period(&self) -> Duration {
        self.period
    }

    /// True in the full periods: the second, the fourth, … counted from `start`.
    pub fn full(&self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.start).as_nanos();
        (elapsed / self.period.as_nanos()) % 2 == 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resets(faults: &mut SendFaults, n: usize) -> Vec<bool> {
        (0..n).map(|_| faults.fate().reset).collect()
    }

    #[test]
    fn resets_follow_the_rate_and_the_seed() {
        let never = resets(&mut SendFaults::new(0.0, Duration::ZERO, 1), 200);
        assert!(never.iter().all(|r| !r));
        let always = resets(&mut SendFaults::new(1.0, Duration::ZERO, 1), 200);
        assert!(always.iter().all(|r| *r));

        let a = resets(&mut SendFaults::new(0.5, Duration::ZERO, 7), 200);
        let b = resets(&mut SendFaults::new(0.5, Duration::ZERO, 7), 200);
        let c = resets(&mut SendFaults::new(0.5, Duration::ZERO, 8), 200);
        assert_eq!(a, b, "one seed, one sequence");
        assert_ne!(a, c, "another seed, another sequence");
        let count = a.iter().filter(|r| **r).count();
        assert!((60..=140).contains(&count), "about half of 200: {count}");
    }

    #[tokio::test(start_paused = true)]
    async fn capacity_flips_every_period_starting_open() {
        let start = Instant::now();
        let flip = CapacityFlip::new(Duration::from_secs(10), start).unwrap();
        let at = |ms: u64| flip.full(start + Duration::from_millis(ms));
        let full: Vec<bool> = [0, 9_999, 10_000, 19_999, 20_000, 29_999, 30_000, 39_999]
            .into_iter()
            .map(at)
            .collect();
        assert_eq!(full, [false, false, true, true, false, false, true, true]);
        assert_eq!(flip.period(), Duration::from_secs(10));
        assert_eq!(CapacityFlip::new(Duration::ZERO, start), None);
    }

    #[test]
    fn settings_change_the_next_fate() {
        let mut faults = SendFaults::new(0.0, Duration::ZERO, 1);
        let delay = Duration::from_millis(1500);
        faults.set_answer_delay(delay);
        faults.set_reset_rate(1.0);
        assert_eq!(faults.fate(), Fate { delay, reset: true });
        assert_eq!((faults.reset_rate(), faults.answer_delay()), (1.0, delay));
    }
}
