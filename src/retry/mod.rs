//! Retrying: whether another attempt may be made, how long to wait first, and how
//! requests that share an API key wait together.
//!
//! The pieces are pure decisions, kept apart from the I/O that acts on them:
//! - [`hint`](hint_from): reads the upstream's retry hint from a 429 (the `Retry-After`
//!   header and the body's `retryAfterSeconds`).
//! - [`policy`](RetryPolicy): classifies what happened to one attempt ([`classify`]),
//!   picks the wait ([`RetryPolicy::wait`]) and grants or refuses another attempt
//!   ([`RetryPolicy::decide`]). Classification and permission are separate steps, so a
//!   caller can record *why* an attempt failed even when no retry is allowed.
//! - [`cooldown`](Cooldowns): one cooldown per API key, so that many requests waiting
//!   out the same 429 make one probe and then one wave of retries, not a burst of 429s.
//! - [`breaker`](Breaker): the same for the whole upstream while it cannot be reached at
//!   all (connection refused, DNS, TLS): one probe at a time, nothing counted as a failure.
//!
//! A caller's loop, in outline:
//!
//! ```text
//! permit  = cooldowns.acquire(&key_fingerprint).await
//! outcome = send the attempt
//! class   = classify(outcome, is_idempotent(&method))
//! hint    = hint_from(headers, body, now, policy.max_retry_after)   // on a 429
//! wait    = policy.wait(hint, attempt, rng)
//! report to the permit: 429 → permit.rate_limited(wait.duration), else permit.succeeded()
//! match policy.decide(class, wait, attempts_made, elapsed) { RetryAfter(w) → loop, GiveUp(_) → answer }
//! ```

mod breaker;
mod cooldown;
mod hint;
mod policy;

pub use breaker::{Breaker, Change, Outage, Pass};
pub use cooldown::{Cooldowns, Permit};
pub use hint::{hint_from, parse_body_retry_after, parse_retry_after, Hint};
pub use policy::{
    classify, is_idempotent, Class, GiveUpReason, Outcome, Reason, RetryPolicy, Verdict, Wait,
    WaitSource,
};
