//! sluice: a resilient, durable sending proxy in front of an SMS/Viber messaging API.
//!
//! Apps call sluice instead of the API: same paths, same bodies, same error format.
//! Module map (one concern each):
//! - [`config`], [`cli`]: what the operator sets, and how.
//! - [`app`]: assembling a running proxy; [`server`]: the HTTP accept loop and its
//!   connection limits; [`layers`]: the tower layers every request passes (load shedding,
//!   panics, slow bodies).
//! - [`proxy`]: pass-through forwarding with retries; [`upstream`]: the pooled client.
//! - [`retry`]: when to retry and how long to wait (pure), and per-key cooldowns.
//! - [`apikey`]: key cleaning, injection, fingerprints; [`request_id`]: ids and access log.
//! - [`capacity`]: what 429 bodies say about pending capacity; [`keystate`]: per-key
//!   cooldowns and capacity shared by the proxy and the queue.
//! - [`routes`]: which requests are sends; [`queue`]: the durable send queue (store,
//!   dispatcher, jobs API); [`split`]: cutting recipients arrays without a `Value` tree.
//! - [`validate`]: the API's documented rules checked before anything is sent (phone
//!   numbers, media URLs, templates, malformed bodies), answered in the API's format.
//! - [`logs`]: flat JSON log lines, `request_id` always top level.
//! - [`api`]: the provider's wire shapes; [`error`]: the proxy's own errors, mapped once.
//! - [`body`]: reading a send's or template's body whole, undoing its Content-Encoding.
//! - [`metrics`], [`admin`], [`health`]: Prometheus metrics, the admin listener and what
//!   `/healthz` and `/readyz` report.
//! - [`simulator`]: an in-memory simulator of the API; [`demo`]: both in one process.
#![forbid(unsafe_code)]

pub mod admin;
pub mod api;
pub mod apikey;
pub mod app;
pub mod body;
pub mod capacity;
pub mod cli;
pub mod clock;
pub mod config;
pub mod demo;
pub mod error;
pub mod health;
pub mod keystate;
pub mod layers;
pub mod logs;
pub mod metrics;
pub mod proxy;
pub mod queue;
pub mod request_id;
pub mod retry;
pub mod routes;
pub mod server;
pub mod simulator;
pub mod split;
pub mod upstream;
pub mod validate;
