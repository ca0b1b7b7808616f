//! sluice: a resilient, durable sending proxy in front of an SMS/Viber messaging API.
//!
//! Apps call sluice instead of the API: same paths, same bodies, same error format.
//! Module map, in the order a send travels (one concern each):
//! - [`edge`]: the front door: the accept loop and connection limits, the tower layers
//!   every request passes, request ids and the access log, reading bodies, the admin
//!   listener and health.
//! - [`routes`]: which requests are sends; everything else goes to [`proxy`]
//!   (pass-through forwarding with retries) over [`upstream`] (the pooled client).
//! - [`queue`]: a send becomes a durable job: accept, then [`validate`] (the API's
//!   documented rules), [`split`] (cutting recipients arrays without a `Value` tree), the
//!   store (SQLite, or PostgreSQL for a cluster), the scheduler and dispatcher, settle.
//! - [`retry`]: classifying answers and how long to wait (pure), per-key cooldowns;
//!   [`keys`]: API keys, what 429s say about capacity, per-key state shared by the proxy
//!   and the queue.
//! - [`delivery`]: after the API accepted: delivery lookups and the support journal.
//! - [`api`]: the provider's wire shapes; [`error`]: the proxy's own errors, mapped once.
//! - [`metrics`], [`logs`]: Prometheus metrics, flat JSON log lines.
//! - [`config`], [`cli`], [`app`]: what the operator sets, and assembling a running proxy;
//!   [`clock`]: the wall clock the store's times use.
//! - [`simulator`]: an in-memory simulator of the API; [`demo`]: both in one process.
#![forbid(unsafe_code)]

pub mod api;
pub mod app;
pub mod cli;
pub mod clock;
pub mod config;
pub mod delivery;
pub mod demo;
pub mod edge;
pub mod error;
pub mod keys;
pub mod logs;
pub mod metrics;
pub mod proxy;
pub mod queue;
pub mod retry;
pub mod routes;
pub mod simulator;
pub mod split;
pub mod upstream;
pub mod validate;
