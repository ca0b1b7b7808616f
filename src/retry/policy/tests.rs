//! Tests for the retry policy: backoff bounds, hint jitter, classification and permission.

use super::*;
use proptest::prelude::*;
use rand::{rngs::StdRng, SeedableRng};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn hint(wait: Duration, capped: bool) -> Hint {
    Hint {
        wait,
        capped,
        header: Some(wait),
        body: None,
    }
}

fn backoff_wait(duration: Duration) -> Wait {
    Wait {
        duration,
        source: WaitSource::Backoff,
        capped: false,
    }
}

/// `min(cap, base * 2^attempt)`, computed the slow, obviously correct way.
fn ceiling(policy: &RetryPolicy, attempt: u32) -> Duration {
    let factor = 2u128.saturating_pow(attempt);
    let nanos = policy.backoff_base.as_nanos().saturating_mul(factor);
    Duration::from_nanos(nanos.min(policy.backoff_cap.as_nanos()) as u64)
}

#[test]
fn defaults() {
    let policy = RetryPolicy::default();
    assert_eq!(policy.backoff_base, ms(100));
    assert_eq!(policy.backoff_cap, secs(10));
    assert_eq!(policy.max_retry_after, secs(300));
    assert_eq!(policy.hint_jitter, ms(250));
    assert_eq!(policy.deadline, secs(30));
    assert_eq!(policy.max_attempts, 5);
}

#[test]
fn backoff_stays_within_the_doubling_ceiling_and_uses_it() {
    let policy = RetryPolicy::default();
    let mut rng = StdRng::seed_from_u64(7);
    for attempt in (0..=70).chain([1000, u32::MAX - 1, u32::MAX]) {
        let ceiling = ceiling(&policy, attempt);
        let samples: Vec<_> = (0..500)
            .map(|_| policy.backoff(attempt, &mut rng))
            .collect();
        let largest = *samples.iter().max().unwrap();
        assert!(
            largest <= ceiling,
            "attempt {attempt}: {largest:?} > {ceiling:?}"
        );
        // Full jitter spreads over the whole range, not just its bottom.
        assert!(
            largest > ceiling / 2,
            "attempt {attempt}: {largest:?} never near {ceiling:?}"
        );
    }
    assert_eq!(ceiling(&policy, 0), ms(100));
    assert_eq!(ceiling(&policy, 3), ms(800));
    assert_eq!(ceiling(&policy, 7), secs(10));
    assert_eq!(ceiling(&policy, 1000), secs(10));
}

#[test]
fn backoff_with_a_zero_base_or_cap_is_zero() {
    let mut rng = StdRng::seed_from_u64(1);
    let zero_base = RetryPolicy {
        backoff_base: Duration::ZERO,
        ..RetryPolicy::default()
    };
    let zero_cap = RetryPolicy {
        backoff_cap: Duration::ZERO,
        ..RetryPolicy::default()
    };
    for attempt in [0, 5, 1000] {
        assert_eq!(zero_base.backoff(attempt, &mut rng), Duration::ZERO);
        assert_eq!(zero_cap.backoff(attempt, &mut rng), Duration::ZERO);
    }
}

#[test]
fn backoff_with_a_tiny_base_still_doubles_past_32_attempts() {
    let policy = RetryPolicy {
        backoff_base: Duration::from_nanos(1),
        ..RetryPolicy::default()
    };
    let mut rng = StdRng::seed_from_u64(5);
    let ceiling = Duration::from_nanos(1 << 32); // ~4.3 s, below the 10 s cap
    let largest = (0..500)
        .map(|_| policy.backoff(32, &mut rng))
        .max()
        .unwrap();
    assert!(largest <= ceiling && largest > ceiling / 2, "{largest:?}");
}

#[test]
fn backoff_with_huge_settings_does_not_overflow() {
    let policy = RetryPolicy {
        backoff_base: Duration::MAX,
        backoff_cap: Duration::MAX,
        ..RetryPolicy::default()
    };
    let mut rng = StdRng::seed_from_u64(3);
    for attempt in [0, 1, 64, u32::MAX] {
        policy.backoff(attempt, &mut rng);
    }
}

#[test]
fn wait_without_a_hint_is_the_backoff() {
    let policy = RetryPolicy::default();
    let wait = policy.wait(None, 2, &mut StdRng::seed_from_u64(9));
    let backoff = policy.backoff(2, &mut StdRng::seed_from_u64(9));
    assert_eq!(wait, backoff_wait(backoff));
}

#[test]
fn wait_with_a_hint_reports_the_hint_and_its_capping() {
    let policy = RetryPolicy::default();
    let mut rng = StdRng::seed_from_u64(11);
    let wait = policy.wait(Some(hint(secs(300), true)), 0, &mut rng);
    assert_eq!((wait.source, wait.capped), (WaitSource::Hint, true));
    assert!(wait.duration >= secs(300) && wait.duration <= secs(300) + ms(250));
    let huge = policy.wait(Some(hint(Duration::MAX, false)), 0, &mut rng);
    assert_eq!(huge.duration, Duration::MAX);
}

proptest! {
    #[test]
    fn wait_with_a_hint_is_within_hint_and_hint_plus_jitter(
        hint_ms in 0u64..10_000_000,
        jitter_ms in 0u64..10_000,
        attempt in any::<u32>(),
        capped in any::<bool>(),
        seed in any::<u64>(),
    ) {
        let policy = RetryPolicy { hint_jitter: ms(jitter_ms), ..RetryPolicy::default() };
        let given = hint(ms(hint_ms), capped);
        let wait = policy.wait(Some(given), attempt, &mut StdRng::seed_from_u64(seed));
        prop_assert!(wait.duration >= given.wait);
        prop_assert!(wait.duration <= given.wait + policy.hint_jitter);
        prop_assert_eq!(wait.source, WaitSource::Hint);
        prop_assert_eq!(wait.capped, capped);
    }

    #[test]
    fn backoff_never_exceeds_its_ceiling(
        base_ns in prop_oneof![0u64..1_000, 0u64..100_000_000_000],
        cap_ms in 0u64..1_000_000,
        attempt in prop_oneof![0u32..130, any::<u32>()],
        seed in any::<u64>(),
    ) {
        let policy = RetryPolicy {
            backoff_base: Duration::from_nanos(base_ns),
            backoff_cap: ms(cap_ms),
            ..RetryPolicy::default()
        };
        let backoff = policy.backoff(attempt, &mut StdRng::seed_from_u64(seed));
        prop_assert!(backoff <= ceiling(&policy, attempt));
    }
}

#[test]
fn classification_table() {
    use Class::{Final, RateLimited, Success, Transient};
    let status = |code: u16| Outcome::Status(StatusCode::from_u16(code).unwrap());
    // (outcome, class when idempotent, class when not)
    let table = [
        (status(101), Success, Success),
        (status(200), Success, Success),
        (status(201), Success, Success),
        (status(202), Success, Success),
        (status(204), Success, Success),
        (status(301), Success, Success),
        (status(304), Success, Success),
        (status(429), RateLimited, RateLimited),
        (status(400), Final, Final),
        (status(401), Final, Final),
        (status(403), Final, Final),
        (status(404), Final, Final),
        (status(408), Final, Final),
        (status(409), Final, Final),
        (status(413), Final, Final),
        (status(422), Final, Final),
        (status(499), Final, Final),
        (status(500), Transient(Reason::Status5xx), Final),
        (status(502), Transient(Reason::Status5xx), Final),
        (status(503), Transient(Reason::Status5xx), Final),
        (status(504), Transient(Reason::Status5xx), Final),
        (status(501), Final, Final),
        (status(505), Final, Final),
        (status(507), Final, Final),
        (status(599), Final, Final),
        (
            Outcome::Connect,
            Transient(Reason::Connect),
            Transient(Reason::Connect),
        ),
        (Outcome::Timeout, Transient(Reason::Timeout), Final),
        (Outcome::Body, Transient(Reason::Body), Final),
    ];
    for (outcome, idempotent, not_idempotent) in table {
        assert_eq!(
            classify(outcome, true),
            idempotent,
            "{outcome:?}, idempotent"
        );
        assert_eq!(
            classify(outcome, false),
            not_idempotent,
            "{outcome:?}, not idempotent"
        );
    }
}

#[test]
fn idempotent_methods() {
    for method in ["GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"] {
        assert!(is_idempotent(&method.parse().unwrap()), "{method}");
    }
    for method in ["POST", "PATCH", "CONNECT", "PURGE"] {
        assert!(!is_idempotent(&method.parse().unwrap()), "{method}");
    }
}

#[test]
fn labels() {
    let reasons = [
        (Reason::RateLimited, "rate_limited"),
        (Reason::Connect, "connect"),
        (Reason::Timeout, "timeout"),
        (Reason::Status5xx, "status_5xx"),
        (Reason::Body, "body"),
    ];
    for (reason, label) in reasons {
        assert_eq!(reason.as_str(), label);
    }
    assert_eq!(WaitSource::Hint.as_str(), "hint");
    assert_eq!(WaitSource::Backoff.as_str(), "backoff");
    assert_eq!(GiveUpReason::Deadline.as_str(), "deadline");
    assert_eq!(GiveUpReason::Attempts.as_str(), "attempts");
    assert_eq!(GiveUpReason::Final.as_str(), "final");
    assert_eq!(Class::RateLimited.reason(), Some(Reason::RateLimited));
    assert_eq!(Class::Transient(Reason::Body).reason(), Some(Reason::Body));
    assert_eq!(Class::Success.reason(), None);
    assert_eq!(Class::Final.reason(), None);
}

#[test]
fn decide_never_retries_success_or_final() {
    let policy = RetryPolicy::default();
    for class in [Class::Success, Class::Final] {
        let verdict = policy.decide(class, backoff_wait(ms(1)), 0, Duration::ZERO);
        assert_eq!(verdict, Verdict::GiveUp(GiveUpReason::Final));
    }
}

#[test]
fn decide_retries_transient_failures_until_max_attempts() {
    let policy = RetryPolicy::default();
    let wait = backoff_wait(ms(100));
    let class = Class::Transient(Reason::Status5xx);
    for made in 1..policy.max_attempts {
        assert_eq!(
            policy.decide(class, wait, made, secs(1)),
            Verdict::RetryAfter(wait)
        );
    }
    for made in [policy.max_attempts, policy.max_attempts + 1, u32::MAX] {
        let verdict = policy.decide(class, wait, made, secs(1));
        assert_eq!(verdict, Verdict::GiveUp(GiveUpReason::Attempts));
    }
}

#[test]
fn decide_never_exhausts_attempts_on_429() {
    let policy = RetryPolicy::default();
    let wait = backoff_wait(secs(1));
    for made in [0, policy.max_attempts, 1000, u32::MAX] {
        let verdict = policy.decide(Class::RateLimited, wait, made, secs(1));
        assert_eq!(verdict, Verdict::RetryAfter(wait));
    }
}

#[test]
fn decide_respects_the_deadline_for_every_retryable_class() {
    let policy = RetryPolicy::default(); // deadline 30 s
    let wait = backoff_wait(secs(10));
    for class in [Class::RateLimited, Class::Transient(Reason::Connect)] {
        assert_eq!(
            policy.decide(class, wait, 1, secs(20)),
            Verdict::RetryAfter(wait)
        );
        let late = policy.decide(class, wait, 1, secs(20) + ms(1));
        assert_eq!(late, Verdict::GiveUp(GiveUpReason::Deadline));
        let endless = policy.decide(class, backoff_wait(Duration::MAX), 1, secs(1));
        assert_eq!(endless, Verdict::GiveUp(GiveUpReason::Deadline));
    }
    // A hint longer than the whole budget is refused at once rather than waited out.
    let long_hint = Wait {
        duration: secs(31),
        source: WaitSource::Hint,
        capped: false,
    };
    let verdict = policy.decide(Class::RateLimited, long_hint, 0, Duration::ZERO);
    assert_eq!(verdict, Verdict::GiveUp(GiveUpReason::Deadline));
}
