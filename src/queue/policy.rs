//! The send queue's failure policy as pure decisions: what one attempt's outcome means for
//! a part, and when a part has run out of attempts or time. `settle.rs` acts on them.
//!
//! The queue sends only POSTs that it must not deliver twice, so it sorts outcomes by what
//! they prove about the send, not by HTTP method:
//! - **accepted** (2xx/3xx): done;
//! - **rate limited** (429): nothing was accepted; wait for the hint, never counted;
//! - **unreachable** (connection refused, DNS, TLS): the request never reached the API;
//!   never counted, the part waits for the upstream breaker, up to `max_age`;
//! - **lost** (a timeout, a connection broken after the request was written): the API may
//!   have accepted it; the part is looked up before it is sent again;
//! - **transient** (500, 502, 503, 504): the API says it did not do it; retried with
//!   backoff, counted against `max_attempts`;
//! - **refused** (any other 4xx or 5xx): final, the API's answer kept.

use std::time::Duration;

use http::StatusCode;

use crate::retry::Outcome;

/// What one attempt's outcome means for the part.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    Accepted,
    RateLimited,
    Unreachable,
    Lost,
    Transient,
    Refused,
}

/// Why a part stops being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exhausted {
    /// `max_attempts` answers that were 5xx (or lost and then not found).
    Attempts(u32),
    /// The job is older than `max_age`.
    Age(Duration),
}

/// Sorts an attempt's outcome (see the module documentation).
pub fn classify(outcome: Outcome) -> Answer {
    match outcome {
        Outcome::Connect => Answer::Unreachable,
        Outcome::Timeout | Outcome::Body => Answer::Lost,
        Outcome::Status(StatusCode::TOO_MANY_REQUESTS) => Answer::RateLimited,
        Outcome::Status(
            StatusCode::INTERNAL_SERVER_ERROR
            | StatusCode::BAD_GATEWAY
            | StatusCode::SERVICE_UNAVAILABLE
            | StatusCode::GATEWAY_TIMEOUT,
        ) => Answer::Transient,
        Outcome::Status(status) if status.as_u16() < 400 => Answer::Accepted,
        Outcome::Status(_) => Answer::Refused,
    }
}

/// Whether a part with `attempts` counted attempts, whose job is `age` old, may be tried
/// again: `Some` when it may not.
pub fn exhausted(
    attempts: u32,
    max_attempts: u32,
    age: Duration,
    max_age: Duration,
) -> Option<Exhausted> {
    if age >= max_age {
        Some(Exhausted::Age(max_age))
    } else if attempts >= max_attempts {
        Some(Exhausted::Attempts(max_attempts))
    } else {
        None
    }
}

// === impl Exhausted ===

impl Exhausted {
    /// Why the part stopped, for its `lastError`, ending with the last thing that went wrong.
    pub fn explain(self, last: Option<&str>) -> String {
        let last = last.map_or(String::new(), |l| format!("; the last attempt: {l}"));
        match self {
            Exhausted::Attempts(n) => format!(
                "gave up after {n} attempts the API refused with a server error \
                 (queue.max_attempts){last}"
            ),
            Exhausted::Age(age) => format!(
                "gave up: the job was not delivered within {} s of being accepted \
                 (queue.max_age_secs){last}",
                age.as_secs()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_sort_by_what_they_prove() {
        let s = |code: u16| classify(Outcome::Status(StatusCode::from_u16(code).unwrap()));
        assert_eq!(s(201), Answer::Accepted);
        assert_eq!(s(202), Answer::Accepted);
        assert_eq!(s(429), Answer::RateLimited);
        for code in [500, 502, 503, 504] {
            assert_eq!(s(code), Answer::Transient, "{code}");
        }
        for code in [400, 401, 404, 409, 422, 501, 505] {
            assert_eq!(s(code), Answer::Refused, "{code}");
        }
        assert_eq!(classify(Outcome::Connect), Answer::Unreachable);
        assert_eq!(classify(Outcome::Timeout), Answer::Lost);
        assert_eq!(classify(Outcome::Body), Answer::Lost);
    }

    #[test]
    fn age_wins_over_attempts_and_both_are_bounds() {
        let day = Duration::from_secs(86_400);
        assert_eq!(exhausted(0, 10, Duration::ZERO, day), None);
        assert_eq!(exhausted(9, 10, day / 2, day), None);
        assert_eq!(
            exhausted(10, 10, day / 2, day),
            Some(Exhausted::Attempts(10))
        );
        assert_eq!(exhausted(3, 10, day, day), Some(Exhausted::Age(day)));
        assert_eq!(exhausted(10, 10, day, day), Some(Exhausted::Age(day)));
        let why = Exhausted::Age(day).explain(Some("connection refused"));
        assert!(
            why.contains("86400 s") && why.ends_with("connection refused"),
            "{why}"
        );
        let why = Exhausted::Attempts(10).explain(None);
        assert!(
            why.contains("10 attempts") && why.contains("max_attempts"),
            "{why}"
        );
    }
}
