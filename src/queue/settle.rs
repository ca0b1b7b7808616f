//! What the dispatcher does with the API's answer to one part: the send queue's failure
//! policy, acted on.
//!
//! - 2xx: the part succeeded; the API's answer is kept for the client.
//! - 429: never a failure. The key cools down for the hint; a part the API can never
//!   accept (over `maxAllowed`) is split, and when the 429 reported room
//!   (`availableCapacity`) a piece of exactly that size goes at once, the rest after the wait.
//! - 5xx, timeouts, connection errors: retried with backoff up to `max_attempts` or
//!   `max_age`, then a dead letter.
//! - other 4xx: a dead letter at once, with the API's status and body kept.
//!
//! Each decision is committed to the store before the part is scheduled again.

use std::time::Duration;

use super::dispatch::{now_ms, Inner};
use super::plan::{self, Cut};
use super::store::{Dispatchable, NewPart, PartState, StoreError, StoredResponse};
use crate::apikey::KeyId;
use crate::keystate::Stored;
use crate::retry::{Permit, Reason};
use crate::routes::{Route, RouteKind};
use crate::split;

/// One answered attempt, as the outcome handlers need it.
pub(super) struct Attempt {
    pub part: Dispatchable,
    pub route: Route,
    pub key: KeyId,
    /// The key's cooldown permit (none for a piece sent on the API's stated room).
    pub permit: Option<Permit>,
    /// The API's answer, when there was one.
    pub stored: Option<Stored>,
    /// Why there was no usable answer.
    pub error: Option<String>,
}

// === impl Inner ===

impl Inner {
    pub(super) async fn on_success(&self, a: Attempt) -> Result<(), StoreError> {
        if let Some(p) = a.permit {
            p.succeeded();
        }
        self.finish(&a.part, PartState::Succeeded, a.stored, None)
            .await
    }

    /// A final answer (4xx other than 429): a dead letter, the answer kept.
    pub(super) async fn on_final(&self, a: Attempt) -> Result<(), StoreError> {
        if let (Some(p), true) = (a.permit, a.stored.is_some()) {
            p.succeeded();
        }
        self.finish(&a.part, PartState::Failed, a.stored, a.error)
            .await
    }

    pub(super) async fn on_rate_limited(&self, a: Attempt) -> Result<(), StoreError> {
        let Some(stored) = a.stored else {
            return Err(StoreError::Invalid("a 429 without its answer".into()));
        };
        let (wait, cap) = self.keys.observe_429(Some(a.key), &a.part.route, &stored);
        match a.permit {
            Some(p) => p.rate_limited(wait.duration),
            None => self.keys.cooldowns.on_rate_limited(&a.key, wait.duration),
        }
        self.metrics
            .retries
            .with_label_values(&["rate_limited"])
            .inc();
        let n = a.part.items.end - a.part.items.start;
        let cut = (a.route.kind == RouteKind::Bulk)
            .then(|| plan::cut_after_429(n, a.route.max_recipients_per_request, &cap))
            .flatten();
        match cut {
            Some(cut) => {
                let reason = if cut.now.is_some() {
                    "capacity"
                } else {
                    "size"
                };
                self.split(&a.part, &a.route, cut, reason, wait.duration)
                    .await
            }
            None => {
                let why = "rate limited: waiting for the API's hint".to_string();
                self.reschedule(a.part, Some(429), why, wait.duration, false)
                    .await
            }
        }
    }

    /// 5xx, timeouts, connection errors: back off and retry, or give up for good.
    pub(super) async fn on_transient(&self, a: Attempt, reason: Reason) -> Result<(), StoreError> {
        if let (Some(p), true) = (a.permit, a.stored.is_some()) {
            p.succeeded();
        }
        let attempts = a.part.attempts + 1;
        let age = Duration::from_millis((now_ms() - a.part.created_at).max(0) as u64);
        if attempts >= self.settings.max_attempts || age >= self.settings.max_age {
            let why = a
                .error
                .unwrap_or_else(|| format!("gave up after {attempts} attempts"));
            return self
                .finish(&a.part, PartState::Failed, a.stored, Some(why))
                .await;
        }
        let wait = self.keys.policy().backoff(attempts - 1, &mut rand::rng());
        self.metrics
            .retries
            .with_label_values(&[reason.as_str()])
            .inc();
        self.metrics.observe_wait("backoff", wait);
        let status = a.stored.as_ref().map(|s| s.status.as_u16());
        let why = a
            .error
            .unwrap_or_else(|| format!("the API answered {}", status.unwrap_or(0)));
        self.reschedule(a.part, status, why, wait, true).await
    }

    /// Puts a part back in the queue after `wait`, recording why.
    async fn reschedule(
        &self,
        mut part: Dispatchable,
        status: Option<u16>,
        why: String,
        wait: Duration,
        count_attempt: bool,
    ) -> Result<(), StoreError> {
        let next = now_ms() + wait.as_millis() as i64;
        self.store
            .schedule_retry(
                &part.job_id,
                part.seq,
                status,
                Some(why),
                next,
                count_attempt,
                now_ms(),
            )
            .await?;
        if count_attempt {
            part.attempts += 1;
        }
        part.next_attempt_at = Some(next);
        self.enqueue(part, Some(wait), false);
        Ok(())
    }

    /// Cuts a part too big for the API into pieces of at most `max`, to go now.
    pub(super) async fn split_to(
        &self,
        part: &Dispatchable,
        route: &Route,
        max: u64,
    ) -> Result<(), StoreError> {
        let cut = Cut {
            now: None,
            piece_max: max,
        };
        self.split(part, route, cut, "size", Duration::ZERO).await
    }

    /// Cuts a part into pieces (see [`plan`]) and schedules them: with `cut.now`, the
    /// first piece goes at once past the cooldown; the others after `wait`.
    async fn split(
        &self,
        part: &Dispatchable,
        route: &Route,
        cut: Cut,
        reason: &str,
        wait: Duration,
    ) -> Result<(), StoreError> {
        let n = part.items.end - part.items.start;
        let body = self
            .store
            .part_body(&part.job_id, part.bytes.clone())
            .await?;
        let layout = match split::scan(&body, &route.recipients_pointer, |_, _| {}) {
            Ok(layout) if layout.items.len() as u64 == n => layout,
            Ok(_) | Err(_) => {
                let why =
                    "the stored part no longer matches its recipients; cannot split it".to_string();
                return self.dead_letter(part, None, why).await;
            }
        };
        // Offsets in the part body → offsets in the stored body.
        let base = layout.array.start as u64 + 1;
        let to_body = |offset: usize| offset as u64 - base + part.bytes.start;
        let mut pieces = Vec::new();
        let mut first = 0usize;
        for size in plan::piece_sizes(n, cut) {
            let last = first + size as usize;
            pieces.push(NewPart {
                items: part.items.start + first as u64..part.items.start + last as u64,
                bytes: to_body(layout.items[first].start)..to_body(layout.items[last - 1].end),
            });
            first = last;
        }
        let seqs = self
            .store
            .split_part(&part.job_id, part.seq, pieces, now_ms())
            .await?;
        self.metrics.parts_split.with_label_values(&[reason]).inc();
        tracing::info!(job = %part.job_id, part = part.seq, pieces = seqs.len(), reason, "part split");
        let mut pieces = self.store.dispatchable(&part.job_id, &seqs).await?;
        pieces.sort_by_key(|p| p.items.start);
        for (i, piece) in pieces.into_iter().enumerate() {
            if i == 0 && cut.now.is_some() {
                self.enqueue(piece, Some(Duration::ZERO), true);
            } else {
                self.enqueue(piece, Some(wait), false);
            }
        }
        Ok(())
    }

    pub(super) async fn dead_letter(
        &self,
        part: &Dispatchable,
        stored: Option<Stored>,
        why: String,
    ) -> Result<(), StoreError> {
        self.finish(part, PartState::Failed, stored, Some(why))
            .await
    }

    /// Records a part's final state, counts it and wakes whoever waits for the job.
    async fn finish(
        &self,
        part: &Dispatchable,
        state: PartState,
        stored: Option<Stored>,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let response = stored.map(|s| StoredResponse {
            status: s.status.as_u16(),
            headers: s
                .headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            body: s.body.to_vec(),
        });
        self.store
            .finish_part(&part.job_id, part.seq, state, response, error, now_ms())
            .await?;
        let n = part.items.end - part.items.start;
        let route = part.route.as_str();
        if state == PartState::Succeeded {
            self.metrics
                .recipients_delivered
                .with_label_values(&[route])
                .inc_by(n);
        } else {
            self.metrics.dead_letters.with_label_values(&[route]).inc();
            self.metrics
                .recipients_failed
                .with_label_values(&[route])
                .inc_by(n);
            tracing::warn!(job = %part.job_id, part = part.seq, route, recipients = n, "part dead-lettered");
        }
        self.remove_backlog(n, part.bytes.end - part.bytes.start);
        self.notify(&part.job_id);
        Ok(())
    }
}
