//! sluice: a resilient, durable sending proxy in front of an SMS/Viber messaging API.
//!
//! Module map (one concern each):
//! - [`api`]: the provider's wire shapes (error envelope, 429 body, seed texts).
//! - [`retry`]: when to retry and how long to wait; per-key cooldowns.
//! - [`simulator`]: an in-memory simulator of the provider's API.
//! - [`split`]: cutting a bulk body's recipients array into parts without a `Value` tree.
#![forbid(unsafe_code)]

pub mod api;
