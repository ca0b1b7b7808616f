//! The delivery tracker's lookups (the I/O; the rules are `policy.rs`'s).
//!
//! One task takes what is due from `journal.db` in rounds of at most `delivery.batch`:
//! messages to one number of one campaign with one key share one lookup; each lookup waits
//! for its turn under `delivery.lookups_per_sec`. While a key cools down after a 429 (the
//! send queue's cooldowns, read only) or the API cannot be reached, its lookups are put off
//! until then, not sent. A 429 answering a lookup puts that lookup off by its hint; other
//! errors by the usual doubling wait. Each outcome is written before the next round reads
//! what is due, so nothing is looked up twice for one due time, and a message's metrics
//! are counted once: when the write says it became final.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::journal::{self, Campaign, Journal, Op, Tracked};
use super::policy::{self, Observed};
use super::{Context, DeliveryConfig};
use crate::clock::now_ms;
use crate::keys::apikey::KeyId;

/// Largest lookup answer read.
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// The longest idle wait between two looks at what is due.
const IDLE: Duration = Duration::from_secs(60);
/// How far before the API's answer a listed message may have been created (clock skew).
const SKEW_MS: i64 = 60_000;

pub(super) struct Poller {
    journal: Arc<Journal>,
    cfg: DeliveryConfig,
    cx: Context,
    wake: Arc<Notify>,
    gap: Duration,
    next_slot: Instant,
}

/// What one lookup got.
enum Got {
    Answer(Bytes),
    /// Put off this long (a cooling key, the API down, a 429's hint).
    Later(Duration),
    Error(String),
}

impl Poller {
    pub(super) fn new(
        journal: Arc<Journal>,
        cfg: DeliveryConfig,
        cx: Context,
        wake: Arc<Notify>,
    ) -> Self {
        let gap = Duration::from_secs_f64(1.0 / f64::from(cfg.lookups_per_sec.max(1)));
        Self {
            journal,
            cfg,
            cx,
            wake,
            gap,
            next_slot: Instant::now(),
        }
    }

    pub(super) async fn run(mut self, stop: CancellationToken) {
        loop {
            let now = now_ms();
            let batch = self.cfg.batch;
            let due = self
                .journal
                .read(move |c| {
                    Ok((
                        journal::due_messages(c, now, batch)?,
                        journal::due_campaigns(c, now, batch)?,
                    ))
                })
                .await;
            let (messages, campaigns) = match due {
                Ok(due) => due,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read what the delivery tracker follows");
                    (Vec::new(), Vec::new())
                }
            };
            if messages.is_empty() && campaigns.is_empty() {
                let next = self.journal.read(journal::next_due).await.ok().flatten();
                let wait = next.map_or(IDLE, |t| {
                    Duration::from_millis((t - now_ms()).max(1) as u64).min(IDLE)
                });
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    // A new send: what it wrote is committed before the next read.
                    _ = self.wake.notified() => self.journal.flush().await,
                    _ = stop.cancelled() => return,
                }
                continue;
            }
            let mut groups: BTreeMap<(Option<Vec<u8>>, String), Vec<Tracked>> = BTreeMap::new();
            for m in messages {
                groups
                    .entry((m.api_key.clone(), m.lookup.clone()))
                    .or_default()
                    .push(m);
            }
            for ((key, lookup), group) in groups {
                tokio::select! {
                    _ = self.messages(key.as_deref(), &lookup, group) => {}
                    _ = stop.cancelled() => return,
                }
            }
            let any_campaign = !campaigns.is_empty();
            for c in campaigns {
                tokio::select! {
                    _ = self.campaign(c) => {}
                    _ = stop.cancelled() => return,
                }
            }
            self.journal.flush().await;
            if any_campaign {
                self.export_sums().await;
            }
        }
    }

    /// One lookup for messages to one number; writes what each showed.
    async fn messages(&mut self, key: Option<&[u8]>, lookup: &str, group: Vec<Tracked>) {
        let got = self.get(key, lookup, "message").await;
        let now = now_ms();
        for m in group {
            let (seen, next) = match &got {
                Got::Answer(body) => {
                    let since = m.accepted_at - SKEW_MS;
                    match policy::find_message(body, m.message_id.as_deref(), since) {
                        Ok(Some(o)) if policy::is_final(&o.status) => (Some(o), None),
                        Ok(seen) => (seen, Some(self.backoff(m.polls))),
                        Err(e) => {
                            tracing::debug!(job = %m.job_id, error = %e, "delivery lookup unreadable");
                            (None, Some(self.backoff(m.polls)))
                        }
                    }
                }
                Got::Later(wait) => (None, Some(*wait)),
                Got::Error(e) => {
                    tracing::debug!(job = %m.job_id, error = %e, "delivery lookup failed");
                    (None, Some(self.backoff(m.polls)))
                }
            };
            let give_up =
                next.is_some() && policy::given_up(m.accepted_at, now, self.give_up_after());
            let next_poll_at = next
                .filter(|_| !give_up)
                .map(|d| now + d.as_millis() as i64);
            let (tx, rx) = oneshot::channel();
            let final_seen = seen.clone().filter(|o| policy::is_final(&o.status));
            self.journal.send(Op::Seen {
                job_id: m.job_id.clone(),
                seen,
                at: now,
                next_poll_at,
                reply: Some(tx),
            });
            if let (Ok(true), Some(o)) = (rx.await, final_seen) {
                self.count(&m, &o, now);
            }
        }
    }

    /// One look at a campaign's counters.
    async fn campaign(&mut self, c: Campaign) {
        let got = self.get(c.api_key.as_deref(), &c.path, "campaign").await;
        let now = now_ms();
        let (counters, next) = match got {
            Got::Answer(body) => match policy::read_campaign(&body) {
                Ok(k) if policy::campaign_done(&k) => (Some(k), None),
                Ok(k) => (Some(k), Some(self.backoff(c.polls))),
                Err(e) => {
                    tracing::debug!(campaign = %c.campaign_id, error = %e, "campaign unreadable");
                    (None, Some(self.backoff(c.polls)))
                }
            },
            Got::Later(wait) => (None, Some(wait)),
            Got::Error(e) => {
                tracing::debug!(campaign = %c.campaign_id, error = %e, "campaign lookup failed");
                (None, Some(self.backoff(c.polls)))
            }
        };
        let give_up = next.is_some() && policy::given_up(c.accepted_at, now, self.give_up_after());
        self.journal.send(Op::CampaignSeen {
            owner: c.owner,
            campaign_id: c.campaign_id,
            counters,
            at: now,
            next_poll_at: next
                .filter(|_| !give_up)
                .map(|d| now + d.as_millis() as i64),
        });
    }

    /// A GET with the key, in its turn; put off while the key cools or the API is down.
    async fn get(&mut self, key: Option<&[u8]>, path: &str, kind: &'static str) -> Got {
        let lookups = &self.cx.metrics.delivery.lookups;
        let value = match key {
            Some(bytes) => HeaderValue::from_bytes(bytes)
                .ok()
                .map(|v| (v, KeyId::of(bytes))),
            None => self.cx.own_key.as_ref().map(|k| (k.header_value(), k.id())),
        };
        let Some((mut value, id)) = value else {
            lookups.with_label_values(&[kind, "error"]).inc();
            return Got::Error("no API key to look it up with".into());
        };
        value.set_sensitive(true);
        if let Some(wait) = self.cx.keys.cooldowns.remaining(&id) {
            lookups.with_label_values(&[kind, "deferred"]).inc();
            return Got::Later(wait);
        }
        if let Some(wait) = self.cx.upstream.breaker().remaining() {
            lookups.with_label_values(&[kind, "deferred"]).inc();
            return Got::Later(wait);
        }
        // Paced: one lookup per gap, whatever it asks for.
        let now = Instant::now();
        let slot = self.next_slot.max(now);
        self.next_slot = slot + self.gap;
        tokio::time::sleep_until(slot).await;
        let mut req = Request::new(Body::empty());
        *req.method_mut() = Method::GET;
        *req.uri_mut() = self.cx.upstream.uri_for(path.parse().ok().as_ref());
        req.headers_mut().insert(crate::keys::apikey::HEADER, value);
        let resp = match self.cx.upstream.send(req).await {
            Ok(resp) => resp,
            Err(e) => {
                lookups.with_label_values(&[kind, "error"]).inc();
                return Got::Error(e.to_string());
            }
        };
        let status = resp.status();
        let retry_after = resp
            .headers()
            .get(http::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let body = match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                lookups.with_label_values(&[kind, "error"]).inc();
                return Got::Error(format!("the answer could not be read: {e}"));
            }
        };
        match status {
            StatusCode::OK => {
                lookups.with_label_values(&[kind, "ok"]).inc();
                Got::Answer(body)
            }
            StatusCode::TOO_MANY_REQUESTS => {
                lookups.with_label_values(&[kind, "rate_limited"]).inc();
                let secs = policy::hint_secs(retry_after.as_deref(), &body).unwrap_or(30);
                Got::Later(Duration::from_secs(secs.max(1)))
            }
            other => {
                lookups.with_label_values(&[kind, "error"]).inc();
                Got::Error(format!("the lookup was answered {other}"))
            }
        }
    }

    fn backoff(&self, polls: u32) -> Duration {
        policy::next_wait(
            polls,
            Duration::from_millis(self.cfg.first_check_ms),
            Duration::from_millis(self.cfg.max_check_interval_ms),
        )
    }

    fn give_up_after(&self) -> Duration {
        Duration::from_secs(self.cfg.give_up_after_secs)
    }

    /// Counts a message that just became final.
    fn count(&self, m: &Tracked, o: &Observed, now: i64) {
        let d = &self.cx.metrics.delivery;
        let channel = policy::channel_label(m.channel.as_deref().or(o.channel.as_deref()));
        if o.status == "Delivered" {
            d.delivered.with_label_values(&[channel]).inc();
            if o.via_fallback == Some(true) {
                d.sms_fallback.with_label_values(&[channel]).inc();
            }
        } else {
            d.failed
                .with_label_values(&[channel, policy::code_label(o.code)])
                .inc();
        }
        d.latency
            .observe((now - m.accepted_at).max(0) as f64 / 1000.0);
    }

    /// Sets the campaign gauges from the journal.
    async fn export_sums(&self) {
        let Ok(s) = self.journal.read(journal::sums).await else {
            return;
        };
        let d = &self.cx.metrics.delivery;
        for (count, n) in [
            ("sent", s.sent),
            ("delivered", s.delivered),
            ("failed", s.failed),
            ("sms_fallback_delivered", s.sms_fallback_delivered),
        ] {
            d.campaign_messages
                .with_label_values(&[count])
                .set(n as i64);
        }
        d.campaigns
            .with_label_values(&["active"])
            .set(s.active as i64);
        d.campaigns
            .with_label_values(&["finished"])
            .set(s.finished as i64);
    }
}
