//! The durable send queue: sends matching a route become jobs that sluice owns until
//! every recipient is delivered or has a recorded, final reason why not.
//!
//! - [`store`]: SQLite, one writer thread with group commit; a job is on disk before
//!   the client hears "accepted".
//! - [`accept`]: turns a send into a job (split into parts); `answer`: what the client
//!   hears; [`idempotency`]: a client's `Idempotency-Key` names one job.
//! - [`dispatcher`]: the handle on the sending side; `shared`: its state; `scheduler`:
//!   pages due parts in from the store and says when each may go; `dispatch`: one part's
//!   turn and its send; `settle`: what each answer leads to (the failure policy).
//! - [`policy`]: what each answer means for a part (pure); `reconcile`: looking a send up
//!   when its answer was lost, before sending it again ([`lookup`]: the pure pieces).
//! - [`plan`]: the pure cutting rules; [`prefer`]: RFC 7240 `Prefer`; [`view`]: job JSON.
//! - [`jobs_api`]: `/sluice/v1/jobs…` for clients to follow, retry and cancel their jobs.

pub mod accept;
mod answer;
mod cluster;
mod dispatch;
pub mod dispatcher;
pub mod idempotency;
pub mod jobs_api;
pub mod lookup;
pub mod plan;
pub mod policy;
pub mod prefer;
mod reconcile;
mod scheduler;
mod settle;
mod shared;
pub mod store;
pub mod view;

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::edge::health::Health;
use crate::keys::apikey::{ApiKey, KeyId};
use crate::keys::keystate::{KeyState, Learned, Stored};
use crate::metrics::Metrics;
use crate::routes::RouteTable;
use crate::upstream::Upstream;
use dispatcher::Dispatcher;
use shared::DispatchSettings;
use store::{KeyRecord, Store, StoreError, StoredResponse};

/// Where the queue's background work runs (the dispatcher, its workers, housekeeping):
/// spawned on `tasks`, stopped by `stop`.
pub struct Background {
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
}

/// Everything the queue's handlers share; cheap to clone.
#[derive(Clone)]
pub struct Queue {
    inner: Arc<QueueInner>,
}

struct QueueInner {
    store: Arc<Store>,
    dispatcher: Dispatcher,
    routes: RouteTable,
    keys: Arc<KeyState>,
    own_key: Option<ApiKey>,
    metrics: Arc<Metrics>,
    sync_wait: Duration,
    max_body: u64,
    max_queued_recipients: u64,
    max_queued_bytes: u64,
    /// Set at shutdown: every client waiting for its send is answered by then.
    answer_by: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
    /// `queue.idempotency_ttl_secs`, in milliseconds.
    idempotency_ttl_ms: i64,
    /// Delivery tracking and the support journal (`crate::delivery`).
    delivery: crate::delivery::Delivery,
}

/// Most expired idempotency keys deleted by one write (the purge repeats until fewer are
/// left), so a purge never holds the writer for long.
const PURGE_BATCH: u32 = 1000;

/// The longest time between two purges of expired idempotency keys.
const PURGE_EVERY: Duration = Duration::from_secs(600);

// === impl Queue ===

impl Queue {
    /// Opens the store (failing loudly if it cannot be written), starts the dispatcher
    /// and schedules every part left unfinished by a previous run.
    pub async fn open(
        config: &Config,
        upstream: Upstream,
        keys: Arc<KeyState>,
        metrics: Arc<Metrics>,
        own_key: Option<ApiKey>,
        health: Arc<Health>,
        background: Background,
    ) -> Result<Self, StoreError> {
        let Background {
            stop: shutdown,
            tasks,
        } = background;
        let store = Arc::new(if config.store.url.is_empty() {
            Store::open(&config.server.data_dir, config.queue.synchronous)?
        } else {
            let options = store::pg::PgOptions {
                url: config.store.url.clone(),
                pool_size: config.store.pool_size,
                lease: Duration::from_secs(config.store.lease_secs),
            };
            let store = Store::open_postgres(&options).await?;
            tracing::info!(
                instance = store.run(),
                "job store: PostgreSQL, shared with the other instances"
            );
            store
        });
        let routes = config.routes();
        let q = &config.queue;
        let delivery = open_delivery(
            config, &upstream, &keys, &metrics, &own_key, &shutdown, &tasks,
        )?;
        let dispatcher = Dispatcher::start(
            store.clone(),
            upstream,
            keys.clone(),
            metrics.clone(),
            DispatchSettings {
                routes: routes.clone(),
                own_key: own_key.clone(),
                concurrency: q.concurrency,
                max_attempts: q.max_attempts,
                max_age: Duration::from_secs(q.max_age_secs),
                requests_per_sec: q.requests_per_sec,
                recipients_per_sec: q.recipients_per_sec,
                reconcile_delay: Duration::from_millis(q.reconcile_delay_ms),
                clock_skew: Duration::from_millis(q.reconcile_clock_skew_ms),
                health,
                lease: Duration::from_secs(config.store.lease_secs),
                delivery: delivery.clone(),
            },
            shutdown.clone(),
            tasks.clone(),
        );
        // What was learned about keys before a restart (cooldowns, maxAllowed), before any
        // part is sent; and from now on, what is learned is saved.
        let now = crate::clock::now_ms();
        for record in store.keys().await? {
            if let Some(id) = KeyId::from_full(&record.key) {
                keys.restore(id, learned(record), now);
            }
        }
        if let Some(changed) = keys.saved() {
            tasks.spawn(save_keys(
                store.clone(),
                keys.clone(),
                changed,
                shutdown.clone(),
            ));
        }
        tasks.spawn(evict_idle(
            dispatcher.clone(),
            Duration::from_secs(q.key_idle_secs),
            shutdown.clone(),
        ));
        // What is left to send stays on disk; the scheduler pages it in as it is due.
        let (recipients, bytes) = store.backlog().await?;
        if recipients > 0 {
            tracing::info!(
                recipients,
                bytes,
                "resuming unfinished sends from the store"
            );
        }
        dispatcher.add_backlog(recipients, bytes);
        let idempotency_ttl = Duration::from_secs(q.idempotency_ttl_secs);
        tasks.spawn(housekeep(
            store.clone(),
            idempotency_ttl,
            Duration::from_secs(q.retention_secs),
            shutdown,
        ));
        Ok(Self {
            inner: Arc::new(QueueInner {
                store,
                dispatcher,
                routes: RouteTable::new(&routes),
                keys,
                own_key,
                metrics,
                sync_wait: Duration::from_millis(q.sync_wait_ms),
                max_body: config.server.max_body_bytes,
                max_queued_recipients: q.max_queued_recipients,
                max_queued_bytes: q.max_queued_bytes,
                answer_by: tokio::sync::watch::Sender::new(None),
                idempotency_ttl_ms: i64::try_from(idempotency_ttl.as_millis()).unwrap_or(i64::MAX),
                delivery,
            }),
        })
    }

    /// Shutdown: every client waiting for its send is answered by `deadline` (the API's
    /// answer if it came, else a 202 naming its stored job); the dispatcher keeps sending
    /// until the queue's shutdown token is cancelled.
    pub fn answer_by(&self, deadline: tokio::time::Instant) {
        self.inner.answer_by.send_replace(Some(deadline));
    }

    /// Delivery tracking and the support journal.
    pub fn delivery(&self) -> &crate::delivery::Delivery {
        &self.inner.delivery
    }

    pub fn routes(&self) -> &RouteTable {
        &self.inner.routes
    }

    pub fn is_writable(&self) -> bool {
        self.inner.store.is_writable()
    }

    /// Sets the queue gauges from the store (called at scrape time).
    pub async fn export_metrics(&self) {
        let m = &self.inner.metrics;
        m.store_writable.set(i64::from(self.is_writable()));
        m.upstream_up
            .set(i64::from(!self.inner.dispatcher.upstream_down()));
        for (kind, n) in self.inner.dispatcher.state_sizes() {
            m.state_entries.with_label_values(&[kind]).set(n as i64);
        }
        match self.inner.store.stats(crate::clock::now_ms()).await {
            Ok(stats) => {
                for (state, n) in &stats.jobs {
                    m.queue_jobs
                        .with_label_values(&[state.as_str()])
                        .set(*n as i64);
                }
                for (state, n) in &stats.parts {
                    m.queue_parts
                        .with_label_values(&[state.as_str()])
                        .set(*n as i64);
                }
                m.queue_recipients.set(stats.recipients_queued as i64);
                m.queue_oldest_age
                    .set(stats.oldest_queued_secs.unwrap_or(0.0));
                m.queue_disk_bytes.set(stats.db_bytes as i64);
            }
            Err(e) => tracing::warn!(error = %e, "cannot read queue statistics"),
        }
        if let Some(c) = self.inner.store.cluster() {
            let (open, idle) = c.pool_use();
            let pool = &m.store.pool_connections;
            pool.with_label_values(&["open"]).set(open as i64);
            pool.with_label_values(&["idle"]).set(idle as i64);
            let counted = m.store.lease_takeovers.get();
            m.store
                .lease_takeovers
                .inc_by(c.takeovers().saturating_sub(counted));
        }
    }
}

/// Opens delivery tracking and the support journal (`journal.db`, beside the job store).
fn open_delivery(
    config: &Config,
    upstream: &Upstream,
    keys: &Arc<KeyState>,
    metrics: &Arc<Metrics>,
    own_key: &Option<ApiKey>,
    stop: &CancellationToken,
    tasks: &TaskTracker,
) -> Result<crate::delivery::Delivery, StoreError> {
    let cx = crate::delivery::Context {
        upstream: upstream.clone(),
        keys: keys.clone(),
        own_key: own_key.clone(),
        metrics: metrics.clone(),
    };
    let dir = &config.server.data_dir;
    crate::delivery::Delivery::open(dir, &config.delivery, cx, stop.clone(), tasks).map_err(|e| {
        StoreError::Open {
            path: dir.join(crate::delivery::journal::FILE),
            source: Box::new(e),
        }
    })
}

/// Every so often, drops per-key state idle for `idle`, so that keys clients invent (and
/// keys no longer used) cannot grow memory without bound.
async fn evict_idle(dispatcher: Dispatcher, idle: Duration, shutdown: CancellationToken) {
    let every = (idle / 2).clamp(Duration::from_millis(100), Duration::from_secs(60));
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.cancelled() => return,
        }
        let gone = dispatcher.evict_idle(idle);
        if gone > 0 {
            tracing::debug!(keys = gone, "idle per-key state dropped");
        }
    }
}

/// Saves the learned state of each key named on `changed` (a 429 was seen for it).
async fn save_keys(
    store: Arc<Store>,
    keys: Arc<KeyState>,
    mut changed: tokio::sync::mpsc::UnboundedReceiver<KeyId>,
    shutdown: CancellationToken,
) {
    loop {
        let id = tokio::select! {
            id = changed.recv() => match id {
                Some(id) => id,
                None => return,
            },
            _ = shutdown.cancelled() => return,
        };
        let now = crate::clock::now_ms();
        let learned = keys.record(&id, now);
        if let Err(e) = store.save_key(key_record(id, learned, now)).await {
            tracing::warn!(key = %id, error = %e, "cannot save what was learned about a key");
        }
    }
}

/// Every so often (`PURGE_EVERY`, or sooner when a lifetime is shorter), deletes what has
/// outlived its time, in batches of `PURGE_BATCH`: idempotency keys older than `ttl`, and
/// finished jobs (their parts and bodies) last changed more than `retention` ago.
async fn housekeep(
    store: Arc<Store>,
    ttl: Duration,
    retention: Duration,
    shutdown: CancellationToken,
) {
    let every = ttl
        .min(retention)
        .clamp(Duration::from_secs(1), PURGE_EVERY);
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.cancelled() => return,
        }
        let now = crate::clock::now_ms();
        let keys_before = now.saturating_sub(ms(ttl));
        let jobs_before = now.saturating_sub(ms(retention));
        for what in ["idempotency keys", "finished jobs"] {
            loop {
                let purged = match what {
                    "idempotency keys" => store.purge_idempotency(keys_before, PURGE_BATCH).await,
                    _ => store.purge_finished(jobs_before, PURGE_BATCH).await,
                };
                match purged {
                    Ok(n) if n < PURGE_BATCH as usize => break,
                    Ok(_) => tokio::task::yield_now().await,
                    Err(e) => {
                        tracing::warn!(error = %e, what, "cannot purge");
                        break;
                    }
                }
            }
        }
    }
}

/// The store's record of what was learned about a key.
pub(super) fn key_record(id: KeyId, l: Learned, now: i64) -> KeyRecord {
    KeyRecord {
        key: id.full(),
        cooling_until: l.cooling_until,
        max_allowed: l.max_allowed,
        available: l.available,
        last_429: l
            .last_429
            .map(|s| StoredResponse::of(s.status, &s.headers, &s.body)),
        updated_at: now,
    }
}

pub(super) fn learned(r: KeyRecord) -> Learned {
    Learned {
        cooling_until: r.cooling_until,
        max_allowed: r.max_allowed,
        available: r.available,
        last_429: r.last_429.map(|s| Stored {
            status: http::StatusCode::from_u16(s.status)
                .unwrap_or(http::StatusCode::TOO_MANY_REQUESTS),
            headers: s.header_map(),
            body: s.body.into(),
        }),
    }
}
