//! Pre-flight validation: the API's documented rules, checked before anything leaves the
//! machine, and answered exactly as the API would.
//!
//! Every 400 the API gives costs a round trip, and one bad phone number in a bulk send
//! fails every recipient of the request. The provider's error page documents the rules;
//! sluice checks them first and answers in the seed's own envelope. Where each concern
//! lives:
//!
//! - [`phone`], [`media`], [`template`]: the pure rules (10-15 digits; HTTPS and publicly
//!   accessible; the template limits, counted in characters). The simulator calls the same
//!   functions, so the proxy and the simulator cannot disagree about a rule.
//! - [`json`]: strict reading of small bodies (repeated keys, nesting) and Content-Type.
//! - [`recipients`]: the per-recipient check that rides the splitter's single pass over
//!   a bulk body (no second parse, no allocation for a plain string recipient), and what
//!   a bulk send's findings come to under `invalid_recipients = "reject" | "skip"`.
//! - [`send`]: the single-send body.
//! - [`outcome`]: what a failed check becomes: the seed's 400 and the metric labels.
//! - [`gate`]: a route's `validation = "enforce" | "warn" | "off"` applied to an outcome
//!   (answer, or log and count and let it through), and the template route's handler.
//!
//! The route table ([`crate::routes`]) says which checks apply where: bulk and single
//! sends are checked on their way into the queue ([`crate::queue::accept`]); template
//! creations are checked and then passed through unchanged.

pub mod gate;
pub mod json;
pub mod media;
pub mod outcome;
pub mod phone;
pub mod recipients;
pub mod send;
pub mod template;

use std::collections::BTreeMap;

use serde::Deserialize;

pub use outcome::Rejection;

/// `validationErrors`: field (as the API names it, e.g. `recipients[3]`,
/// `survey.question`) → the rule it breaks.
pub type FieldErrors = BTreeMap<String, String>;

/// How a route treats a request that breaks a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Answer 400 in the API's format; nothing is queued or sent.
    #[default]
    Enforce,
    /// Log it and count it (`sluice_validation_warnings_total`), then send it anyway: the
    /// API gives its own answer.
    Warn,
    /// Check nothing (a bulk body must still be one JSON object with a recipients array,
    /// or it cannot be split).
    Off,
}

/// What a bulk route in `enforce` mode does with recipients that break a rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvalidRecipients {
    /// Refuse the whole send, listing the first [`recipients::LISTED`] offenders.
    #[default]
    Reject,
    /// Send the others; the job lists the skipped ones with their index and reason.
    Skip,
}
