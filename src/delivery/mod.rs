//! Delivery tracking and support bundles: what happened to every message after the API
//! accepted it, and everything a support request needs about one request id.
//!
//! The API's 201/202 only says a send was queued. The provider's troubleshooting guide
//! tells users to poll each message's status, read the Viber codes 8, 9, 10, check a
//! campaign's `smsFallbackDeliveredCount`, and hand support a request id, a timestamp,
//! the sanitized body and the error answer. sluice does this for them:
//!
//! - **Single sends** are looked up with the messages query (`delivery.messages_path`,
//!   by default `GET /api/v1/messages?phoneNumber=…&campaignId=…`) until Delivered or
//!   Failed; the outcome (status, `details.code`/`error`, `deliveredViaSmsFallback`) shows
//!   in the job JSON as `delivery` and in the `sluice_messages_*` metrics.
//! - **Bulk sends** are followed by their campaign's counters (`delivery.campaign_path`)
//!   until every message sent ended.
//! - Lookups are paced (`delivery.lookups_per_sec`), grouped (messages to one number of
//!   one campaign take one lookup), backed off (doubling from `delivery.first_check_ms` to
//!   `delivery.max_check_interval_ms`), deferred while the key cools down after a 429 or
//!   the API is down, and given up after `delivery.give_up_after_secs`.
//! - **The support journal**: every send accepted as a job, each attempt and the API's
//!   answer (error bodies kept), each wait and each part's end, by request id; read by
//!   `sluice support REQUEST_ID` and `GET /sluice/v1/support/{requestId}`.
//!
//! Files: `journal.rs` (the SQLite file `journal.db`, its writer, its reads), `poll.rs`
//! (the lookups, I/O), `policy.rs` (the pure rules), `sanitize.rs` (bodies fit to show),
//! `view.rs` (the job JSON's `delivery`), `support.rs` (the bundle, the CLI, the route).
//! The hooks the send queue calls are the methods of [`Delivery`]; none of them waits.

pub mod journal;
pub mod policy;
mod poll;
pub mod sanitize;
pub mod support;
mod view;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::clock::now_ms;
use crate::keys::apikey::ApiKey;
use crate::keys::keystate::KeyState;
use crate::metrics::Metrics;
use crate::queue::store::Dispatchable;
use crate::routes::{Route, RouteKind};
use crate::upstream::Upstream;
use journal::{Event, Expect, Journal, JournalError, Kind, Op};

pub use crate::config::DeliveryConfig;

/// The handle the rest of sluice holds: hooks for the send queue, reads for the views.
/// Cheap to clone.
#[derive(Clone)]
pub struct Delivery {
    inner: Arc<Inner>,
}

struct Inner {
    journal: Arc<Journal>,
    cfg: DeliveryConfig,
    metrics: Arc<Metrics>,
    /// Told when a send was accepted: the lookups may have new work.
    wake: Arc<Notify>,
}

/// Where the tracker's lookups go and what they may read.
pub struct Context {
    pub upstream: Upstream,
    /// Read only: lookups wait while a key cools down.
    pub keys: Arc<KeyState>,
    pub own_key: Option<ApiKey>,
    pub metrics: Arc<Metrics>,
}

/// How often the journal is trimmed.
const PURGE_EVERY: Duration = Duration::from_secs(300);

// === impl Delivery ===

impl Delivery {
    /// Opens `journal.db` in `dir`; starts the lookups (unless `delivery.enabled` is off)
    /// and the journal's trimming on `tasks`, until `stop`.
    pub fn open(
        dir: &std::path::Path,
        cfg: &DeliveryConfig,
        cx: Context,
        stop: CancellationToken,
        tasks: &TaskTracker,
    ) -> Result<Self, JournalError> {
        let journal = Journal::open(dir)?;
        let wake = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            journal: journal.clone(),
            cfg: cfg.clone(),
            metrics: cx.metrics.clone(),
            wake: wake.clone(),
        });
        tasks.spawn(trim(journal.clone(), cfg.clone(), stop.clone()));
        if cfg.enabled {
            let poller = poll::Poller::new(journal, cfg.clone(), cx, wake);
            tasks.spawn(poller.run(stop));
        }
        Ok(Self { inner })
    }

    /// Hook: a send was accepted as job `job_id`. Journals it (the body is sanitized off
    /// the runtime) and notes what the job will be followed by once the API accepts it.
    #[allow(clippy::too_many_arguments)]
    pub fn sent(
        &self,
        route: &Route,
        request_id: Option<&str>,
        owner: &str,
        job_id: &str,
        method: &str,
        path: &str,
        body: Bytes,
    ) {
        let at = now_ms();
        let params = route.params(path.split('?').next().unwrap_or(path));
        let channel = policy::channel_of_params(&params);
        let cfg = &self.inner.cfg;
        let expect = match route.kind {
            RouteKind::Single => {
                crate::queue::lookup::single_phone(&body).map(|phone| Expect::Message {
                    lookup: crate::queue::lookup::lookup_path(&cfg.messages_path, &params, &phone),
                })
            }
            RouteKind::Bulk => {
                params
                    .iter()
                    .find(|(name, _)| *name == "campaignId")
                    .map(|(_, id)| Expect::Campaign {
                        campaign_id: id.to_string(),
                        path: crate::queue::lookup::lookup_path(&cfg.campaign_path, &params, ""),
                    })
            }
            RouteKind::Template => None,
        };
        // A path with a `{name}` left unfilled cannot be looked up.
        let filled = |e: &Expect| match e {
            Expect::Message { lookup: p } | Expect::Campaign { path: p, .. } => !p.contains('{'),
        };
        if let Some(expect) = expect.filter(filled) {
            self.send(Op::Expect {
                job_id: job_id.to_string(),
                expect,
                channel,
                at,
            });
        }
        let pointer = (route.kind == RouteKind::Bulk).then(|| route.recipients_pointer.clone());
        self.event(Event {
            request_id: request_id.unwrap_or_default().to_string(),
            owner: owner.to_string(),
            job_id: Some(job_id.to_string()),
            at,
            kind: Some(Kind::Send),
            method: Some(method.to_string()),
            path: Some(path.to_string()),
            body: Some((body, pointer)),
            ..Event::default()
        });
    }

    /// Hook: one attempt of `part` was answered (`status`, the API's body) or failed
    /// (`error`). An error answer's body is kept; a success's is not.
    pub fn attempt(
        &self,
        part: &Dispatchable,
        at: i64,
        attempt: u32,
        status: Option<u16>,
        answer: Option<&[u8]>,
        error: Option<&str>,
    ) {
        let answer = answer
            .filter(|_| status.is_some_and(|s| s >= 400))
            .map(|b| cut(&String::from_utf8_lossy(b), 8 * 1024));
        self.event(Event {
            kind: Some(Kind::Attempt),
            at,
            attempt: Some(attempt),
            status,
            answer,
            note: error.map(str::to_string),
            ..part_event(part)
        });
    }

    /// Hook: `part` waits `wait` before its next attempt, for `why`.
    pub fn wait(&self, part: &Dispatchable, wait: Duration, why: &str) {
        self.event(Event {
            kind: Some(Kind::Wait),
            wait_ms: Some(wait.as_millis() as i64),
            note: Some(why.to_string()),
            ..part_event(part)
        });
    }

    /// Hook: `part` ended in `state` (`succeeded`, `failed`, `uncertain`…). A succeeded
    /// part starts being followed (`message_id`: from the API's answer to a single send).
    pub fn finished(
        &self,
        part: &Dispatchable,
        state: &str,
        error: Option<&str>,
        answer: Option<&[u8]>,
    ) {
        self.event(Event {
            kind: Some(Kind::Final),
            note: Some(match error {
                Some(e) => format!("{state}: {e}"),
                None => state.to_string(),
            }),
            ..part_event(part)
        });
        if state != "succeeded" {
            return;
        }
        let at = now_ms();
        self.send(Op::Accepted(journal::Accepted {
            job_id: part.job_id.clone(),
            owner: part.owner.clone(),
            request_id: part.request_id(),
            api_key: part.api_key.clone(),
            message_id: answer.and_then(message_id),
            at,
            next_poll_at: at + self.inner.cfg.first_check().as_millis() as i64,
        }));
        self.inner.wake.notify_one();
    }

    /// The `delivery` JSON of each of `jobs` that has one (jobs the API accepted).
    pub async fn views(
        &self,
        jobs: Vec<String>,
    ) -> Result<HashMap<String, serde_json::Value>, JournalError> {
        self.inner
            .journal
            .read(move |c| journal::views(c, &jobs))
            .await
    }

    /// The support bundle of `request_id` as `owner` may see it.
    pub async fn support(
        &self,
        request_id: String,
        owner: String,
    ) -> Result<Option<support::Bundle>, JournalError> {
        self.inner
            .journal
            .read(move |c| support::bundle(c, &request_id, Some(&owner)))
            .await
    }

    /// Waits until every hook called so far is written (for tests and shutdown).
    pub async fn flush(&self) {
        self.inner.journal.flush().await;
    }

    fn event(&self, e: Event) {
        self.send(Op::Event(e));
    }

    fn send(&self, op: Op) {
        if !self.inner.journal.send(op) {
            self.inner.metrics.delivery.journal_dropped.inc();
        }
    }
}

/// A part's fields every event of it has.
fn part_event(part: &Dispatchable) -> Event {
    Event {
        request_id: part.request_id().unwrap_or_default(),
        owner: part.owner.clone(),
        job_id: Some(part.job_id.clone()),
        at: now_ms(),
        part: Some(part.seq),
        ..Event::default()
    }
}

/// The `messageId` of a single send's answer.
fn message_id(answer: &[u8]) -> Option<String> {
    let v: serde_json::Value = serde_json::from_slice(answer).ok()?;
    match v.get("messageId")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Null => None,
        other => Some(other.to_string()),
    }
}

/// `text` cut to at most `max` bytes (on a character boundary).
fn cut(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… (cut)", &text[..end])
}

/// Trims the journal every so often: older than the retention, past the most entries.
async fn trim(journal: Arc<Journal>, cfg: DeliveryConfig, stop: CancellationToken) {
    let every = Duration::from_secs(cfg.retention_secs).clamp(Duration::from_secs(1), PURGE_EVERY);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
        let (tx, rx) = tokio::sync::oneshot::channel();
        journal.send(Op::Purge {
            before: now_ms() - (cfg.retention_secs as i64).saturating_mul(1000),
            max_events: cfg.max_journal_entries,
            reply: tx,
        });
        match rx.await {
            Ok(Ok(n)) if n > 0 => tracing::debug!(deleted = n, "journal trimmed"),
            Ok(Err(e)) => tracing::warn!(error = %e, "cannot trim the journal"),
            _ => {}
        }
    }
}
