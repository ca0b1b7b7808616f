//! What the dispatcher does with the API's answer to one part: the send queue's failure
//! policy ([`super::policy`]), acted on.
//!
//! - accepted: the part succeeded; the API's answer is kept for the client.
//! - 429: never a failure. The key cools down for the hint; a part the API can never
//!   accept (over `maxAllowed`) is split, and when the 429 reported room
//!   (`availableCapacity`) a piece of exactly that size goes at once, the rest after the wait.
//! - unreachable: not counted; the part waits for the upstream breaker's probe.
//! - lost: the part is looked up (`reconcile.rs`) after `queue.reconcile_delay_ms`.
//! - 5xx: retried with backoff up to `max_attempts`, then a dead letter.
//! - other 4xx: a dead letter at once, with the API's status and body kept.
//! - every wait is bounded by `max_age`: past it, the part fails with that reason.
//!
//! Each decision is committed to the store before the part is scheduled again.

use std::time::Duration;

use super::plan::{self, Cut};
use super::policy::Exhausted;
use super::shared::Core;
use super::store::{Dispatchable, NewPart, PartState, Retry, StoreError, StoredResponse};
use crate::clock::now_ms;
use crate::keys::apikey::KeyId;
use crate::keys::keystate::Stored;
use crate::retry::Permit;
use crate::routes::{Route, RouteKind};
use crate::split;

/// Parts from this size on are scanned off the runtime's worker threads.
const OFF_RUNTIME: usize = 1024 * 1024;

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
    /// When the attempt began (unix ms).
    pub sent_at: i64,
}

// === impl Core ===

impl Core {
    pub(super) async fn on_success(&self, a: Attempt) -> Result<(), StoreError> {
        self.permit_succeeded(a.permit, &a.key).await;
        self.finish(&a.part, PartState::Succeeded, a.stored, None)
            .await
    }

    /// A final answer (4xx other than 429): a dead letter, the answer kept.
    pub(super) async fn on_final(&self, a: Attempt) -> Result<(), StoreError> {
        self.permit_succeeded(a.permit, &a.key).await;
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
        // On disk before the part is: a restart never forgets a cooldown that a part's
        // record shows it met.
        let now = now_ms();
        let learned = self.keys.record(&a.key, now);
        self.store
            .save_key(super::key_record(a.key, learned, now))
            .await?;
        self.metrics
            .retries
            .with_label_values(&["rate_limited"])
            .inc();
        self.metrics.observe_wait("hint", wait.duration);
        let n = a.part.items.end - a.part.items.start;
        // A part resent while an earlier send's fate is unknown is not cut (see `attempt`).
        let cut = (a.route.kind == RouteKind::Bulk && a.part.reconcile_from.is_none())
            .then(|| plan::cut_after_429(n, a.route.max_recipients_per_request, &cap))
            .flatten();
        let why = "rate limited: waiting for the API's hint".to_string();
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
            // The API said it has room for this send after all: it goes again at once,
            // on that room (see `KeyState::take_room`).
            None if cap.available_capacity.is_some_and(|room| room >= n) => {
                self.reschedule(a.part, Some(429), why, Duration::ZERO, false)
                    .await
            }
            None => {
                self.reschedule(a.part, Some(429), why, wait.duration, false)
                    .await
            }
        }
    }

    /// The API could not be reached: not counted; the part waits for the breaker's probe.
    pub(super) async fn on_unreachable(&self, a: Attempt) -> Result<(), StoreError> {
        // The key's probe role (if this held it) passes to the next part: nothing was
        // learned about the key.
        drop(a.permit);
        // Not counted, and not given up here even past max_age: the next turn does that
        // (after the probe's wait), with this attempt taken back.
        let part = a.part;
        let error = a
            .error
            .unwrap_or_else(|| "the API could not be reached".into());
        self.metrics.retries.with_label_values(&["connect"]).inc();
        let wait = self.upstream.breaker().remaining().unwrap_or_default();
        self.metrics.observe_wait("outage", wait);
        self.reschedule(part, None, error, wait, false).await
    }

    /// The answer was lost (a timeout, a broken exchange): the API may have accepted the
    /// part. It is looked up before it is sent again.
    pub(super) async fn on_lost(&self, a: Attempt) -> Result<(), StoreError> {
        // Nothing was learned about the key either: the probe role passes on.
        drop(a.permit);
        let mut part = a.part;
        part.reconcile_from = part.reconcile_from.or(Some(a.sent_at));
        let reason = if a
            .error
            .as_deref()
            .is_some_and(|e| e.starts_with("no response"))
        {
            "timeout"
        } else {
            "body"
        };
        self.metrics.retries.with_label_values(&[reason]).inc();
        let why = format!(
            "{}; the API may have accepted it: it is looked up before it is sent again",
            a.error.as_deref().unwrap_or("the answer was lost")
        );
        let wait = self.settings.reconcile_delay;
        self.reschedule(part, None, why, wait, true).await
    }

    /// 5xx: back off and retry, or give up for good.
    pub(super) async fn on_transient(&self, a: Attempt) -> Result<(), StoreError> {
        self.permit_succeeded(a.permit, &a.key).await;
        let status = a.stored.as_ref().map(|s| s.status.as_u16());
        let why = a
            .error
            .unwrap_or_else(|| format!("the API answered {}", status.unwrap_or(0)));
        let mut part = a.part;
        part.attempts += 1;
        if let Some(exhausted) = self.exhausted_after(&part) {
            if part.reconcile_from.is_none() {
                part.last_error = Some(why);
                return self.give_up(&part, exhausted, a.stored).await;
            }
            // An earlier send's fate is still unknown: look it up before giving up.
            part.attempts -= 1;
            return self
                .reschedule(part, status, why, Duration::ZERO, true)
                .await;
        }
        part.attempts -= 1;
        let wait = self.keys.policy().backoff(part.attempts, &mut rand::rng());
        self.metrics
            .retries
            .with_label_values(&["status_5xx"])
            .inc();
        self.metrics.observe_wait("backoff", wait);
        self.reschedule(part, status, why, wait, true).await
    }

    /// Gives up on a part: a dead letter, or uncertain if an earlier send's fate is still
    /// unknown (it may have been accepted).
    pub(super) async fn give_up(
        &self,
        part: &Dispatchable,
        why: Exhausted,
        stored: Option<Stored>,
    ) -> Result<(), StoreError> {
        let state = if part.reconcile_from.is_some() {
            PartState::Uncertain
        } else {
            PartState::Failed
        };
        let why = why.explain(part.last_error.as_deref());
        self.finish(part, state, stored, Some(why)).await
    }

    /// Puts a part that was just sent back in the queue after `wait`, recording why.
    async fn reschedule(
        &self,
        part: Dispatchable,
        status: Option<u16>,
        why: String,
        wait: Duration,
        count_attempt: bool,
    ) -> Result<(), StoreError> {
        self.settings.delivery.wait(&part, wait, &why);
        let next = now_ms() + wait.as_millis() as i64;
        let retry = Retry {
            last_status: status,
            last_error: Some(why.clone()),
            next_attempt_at: next,
            count_attempt,
            reconcile_from: part.reconcile_from,
            blind_resends: part.blind_resends,
        };
        let state = self
            .store
            .schedule_retry(&part.job_id, part.seq, retry, now_ms())
            .await?;
        self.back_in_queue(&part, state, next);
        Ok(())
    }

    /// A part went back to the store in `state`: the scheduler takes it again at `next`,
    /// unless its job was cancelled meanwhile (then it leaves the backlog).
    fn back_in_queue(&self, part: &Dispatchable, state: PartState, next: i64) {
        if state == PartState::Cancelled {
            self.remove_backlog(
                part.items.end - part.items.start,
                part.bytes.end - part.bytes.start,
            );
            self.notify(&part.job_id);
        } else {
            self.wake(&part.owner, next);
        }
    }

    /// Puts a part that was not sent this turn back in the queue after `wait`.
    pub(super) async fn postpone(
        &self,
        part: Dispatchable,
        wait: Duration,
    ) -> Result<(), StoreError> {
        let next = now_ms() + wait.as_millis() as i64;
        let state = self
            .store
            .postpone(
                &part.job_id,
                part.seq,
                next,
                part.reconcile_from,
                part.blind_resends,
                now_ms(),
            )
            .await?;
        self.back_in_queue(&part, state, next);
        Ok(())
    }

    /// `Some` when a part with these attempts may not be tried again.
    fn exhausted_after(&self, part: &Dispatchable) -> Option<Exhausted> {
        let age = Duration::from_millis((now_ms() - part.created_at).max(0) as u64);
        super::policy::exhausted(
            part.attempts,
            self.settings.max_attempts,
            age,
            self.settings.max_age,
        )
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
        // A large part is scanned off the runtime's worker threads.
        let scanned = if body.len() >= OFF_RUNTIME {
            let (body, pointer) = (body.clone(), route.recipients_pointer.clone());
            tokio::task::spawn_blocking(move || split::scan(&body, &pointer, |_, _| {}))
                .await
                .unwrap_or(Err(split::SplitError::NotAnObject))
        } else {
            split::scan(&body, &route.recipients_pointer, |_, _| {})
        };
        let layout = match scanned {
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
        tracing::info!(
            request_id = part.request_id().as_deref(), job = %part.job_id, part = part.seq, pieces = seqs.len(), reason,
            "part split"
        );
        // The pieces are due now: the scheduler takes them in (the first, of the room the
        // 429 reported, goes at once on that room; the others wait for the key's cooldown).
        let _ = wait;
        self.wake(&part.owner, 0);
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
    pub(super) async fn finish(
        &self,
        part: &Dispatchable,
        state: PartState,
        stored: Option<Stored>,
        error: Option<String>,
    ) -> Result<(), StoreError> {
        let response = stored.map(|s| StoredResponse::of(s.status, &s.headers, &s.body));
        let answer = response.as_ref().map(|r| r.body.clone());
        let note = error.clone();
        self.store
            .finish_part(&part.job_id, part.seq, state, response, error, now_ms())
            .await?;
        self.settings.delivery.finished(
            part,
            state_name(state),
            note.as_deref(),
            answer.as_deref(),
        );
        let n = part.items.end - part.items.start;
        let route = part.route.as_str();
        if state == PartState::Succeeded {
            self.metrics
                .recipients_delivered
                .with_label_values(&[route])
                .inc_by(n);
        } else if state == PartState::Uncertain {
            self.metrics
                .recipients_uncertain
                .with_label_values(&[route])
                .inc_by(n);
            tracing::warn!(
                request_id = part.request_id().as_deref(), job = %part.job_id, part = part.seq, route, recipients = n,
                "part uncertain: the API may or may not have accepted it"
            );
        } else {
            self.metrics.dead_letters.with_label_values(&[route]).inc();
            self.metrics
                .recipients_failed
                .with_label_values(&[route])
                .inc_by(n);
            tracing::warn!(
                request_id = part.request_id().as_deref(), job = %part.job_id, part = part.seq, route, recipients = n,
                "part dead-lettered"
            );
        }
        self.remove_backlog(n, part.bytes.end - part.bytes.start);
        self.notify(&part.job_id);
        Ok(())
    }
}

/// A part state's name, as the job JSON spells it.
fn state_name(state: PartState) -> &'static str {
    match state {
        PartState::Queued => "queued",
        PartState::InFlight => "in_flight",
        PartState::Succeeded => "succeeded",
        PartState::Failed => "failed",
        PartState::Cancelled => "cancelled",
        PartState::Uncertain => "uncertain",
    }
}
