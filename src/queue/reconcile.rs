//! Reconciling a part whose answer was lost: asking the API whether it accepted the send
//! before sending it again (the pure pieces are in `lookup.rs`).
//!
//! A part gets here when an attempt timed out or its connection broke after the request
//! was written, or when sluice found it in flight at start (it was killed mid-send). Its
//! `reconcile_from` is when that attempt began. The lookup then decides:
//! - **accepted**: a message created since then is listed; the part succeeds without being
//!   sent again, its answer made in the API's shape (with the message id it found) and
//!   marked `x-sluice-reconciled: lookup`;
//! - **not accepted**: nothing listed; the part is sent again as usual;
//! - **unanswered**: the lookup failed (an error, a 5xx, no lookup configured). The part is
//!   sent once more with the same `Idempotency-Key`; if that answer is lost too, it ends
//!   `uncertain`, never sent a third time;
//! - **unreachable**: the API is down; the part waits for the breaker and looks again.

use std::time::Duration;

use axum::body::Body;
use http::{HeaderValue, Method, Request, StatusCode};
use http_body_util::{BodyExt, Limited};

use super::lookup::{self, Found};
use super::shared::Core;
use super::store::{Dispatchable, PartState, StoreError};
use crate::keys::keystate::Stored;
use crate::retry::Outcome;
use crate::routes::{Route, RouteKind};

/// Largest lookup answer read (the messages of one phone number).
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// Lookups tried per phone number before the lookup counts as unanswered.
const TRIES: u32 = 3;
/// The wait before the second try; it doubles for the third.
const FIRST_RETRY: Duration = Duration::from_millis(250);

/// What a part's turn does after its lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Turn {
    /// The part is settled or put back: nothing more this turn.
    Settled,
    /// Send it (again).
    Send,
}

/// What the lookup found out.
enum Reconciled {
    Accepted(Found),
    NotAccepted,
    Unanswered(String),
    Unreachable,
}

// === impl Core ===

impl Core {
    /// Looks the part up and acts on what was found (see the module documentation).
    pub(super) async fn reconcile_turn(
        &self,
        part: &mut Dispatchable,
        route: &Route,
        key: &HeaderValue,
    ) -> Result<Turn, StoreError> {
        let Some(from) = part.reconcile_from else {
            return Ok(Turn::Send);
        };
        let since = from - self.settings.clock_skew.as_millis() as i64;
        let result = |r: &str| {
            self.metrics
                .reconciliations
                .with_label_values(&[&part.route, r])
                .inc();
        };
        match self.look_up(part, route, key, since).await {
            Reconciled::Accepted(found) => {
                result("accepted");
                tracing::info!(
                    request_id = part.request_id().as_deref(), job = %part.job_id, part = part.seq,
                    message_id = %found.message_id, "lost answer reconciled: the API had accepted the send"
                );
                let answer = accepted_answer(route, part, &found);
                self.finish(part, PartState::Succeeded, Some(answer), None)
                    .await?;
                Ok(Turn::Settled)
            }
            Reconciled::NotAccepted => {
                result("not_accepted");
                part.reconcile_from = None;
                self.store
                    .note_reconcile(&part.job_id, part.seq, None, part.blind_resends)
                    .await?;
                Ok(Turn::Send)
            }
            Reconciled::Unanswered(why) => {
                result("unanswered");
                if part.blind_resends >= 1 {
                    let why = format!(
                        "the API's answer was lost again and the lookup could not tell whether it \
                         accepted the send ({why}); not sent a third time"
                    );
                    self.finish(part, PartState::Uncertain, None, Some(why))
                        .await?;
                    return Ok(Turn::Settled);
                }
                tracing::warn!(
                    request_id = part.request_id().as_deref(), job = %part.job_id, part = part.seq, error = %why,
                    "the lookup could not tell whether a lost send was accepted; sending it once more"
                );
                part.blind_resends += 1;
                self.store
                    .note_reconcile(
                        &part.job_id,
                        part.seq,
                        part.reconcile_from,
                        part.blind_resends,
                    )
                    .await?;
                Ok(Turn::Send)
            }
            Reconciled::Unreachable => {
                let wait = self.upstream.breaker().remaining().unwrap_or_default();
                self.postpone(part.clone(), wait).await?;
                Ok(Turn::Settled)
            }
        }
    }

    /// Asks the API whether it accepted the part since `since` (unix ms).
    async fn look_up(
        &self,
        part: &Dispatchable,
        route: &Route,
        key: &HeaderValue,
        since: i64,
    ) -> Reconciled {
        let Some(template) = route.lookup() else {
            return Reconciled::Unanswered(format!("route {} has no lookup", route.name));
        };
        let body = match self.store.part_body(&part.job_id, part.bytes.clone()).await {
            Ok(body) => body,
            Err(e) => return Reconciled::Unanswered(e.to_string()),
        };
        let phones = match route.kind {
            RouteKind::Bulk => lookup::bulk_phones(&body, &route.recipients_pointer),
            RouteKind::Single | RouteKind::Template => {
                lookup::single_phone(&body).into_iter().collect()
            }
        };
        if phones.is_empty() {
            return Reconciled::Unanswered("no phone number to look the send up by".into());
        }
        let params = route.params(&part.path);
        let mut first = None;
        // A bulk part is accepted or refused whole: every number looked up must be there.
        for phone in &phones {
            let path = lookup::lookup_path(template, &params, phone);
            match self.look_up_one(&path, key, since).await {
                Reconciled::Accepted(found) => {
                    first.get_or_insert(found);
                }
                other => return other,
            }
        }
        first.map_or(Reconciled::NotAccepted, Reconciled::Accepted)
    }

    /// One lookup, tried up to [`TRIES`] times.
    async fn look_up_one(&self, path: &str, key: &HeaderValue, since: i64) -> Reconciled {
        let mut last = String::new();
        for attempt in 0..TRIES {
            if attempt > 0 {
                tokio::time::sleep(FIRST_RETRY * (1 << (attempt - 1))).await;
            }
            let pass = self.upstream.breaker().pass().await;
            let mut req = Request::new(Body::empty());
            *req.method_mut() = Method::GET;
            *req.uri_mut() = self.upstream.uri_for(path.parse().ok().as_ref());
            req.headers_mut()
                .insert(crate::keys::apikey::HEADER, key.clone());
            let result = self.upstream.send(req).await;
            let outcome = match &result {
                Ok(resp) => Outcome::Status(resp.status()),
                Err(e) => e.outcome(),
            };
            self.report_reach(pass, outcome);
            match result {
                Err(e) if outcome == Outcome::Connect => {
                    tracing::debug!(error = %e, "lookup could not reach the API");
                    return Reconciled::Unreachable;
                }
                Err(e) => last = e.to_string(),
                Ok(resp) if resp.status() == StatusCode::OK => {
                    match Limited::new(resp.into_body(), MAX_ANSWER).collect().await {
                        Ok(body) => {
                            return match lookup::find_since(&body.to_bytes(), since) {
                                Ok(Some(found)) => Reconciled::Accepted(found),
                                Ok(None) => Reconciled::NotAccepted,
                                Err(e) => Reconciled::Unanswered(e),
                            }
                        }
                        Err(e) => last = format!("the lookup's answer could not be read: {e}"),
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    last = format!("the lookup was answered {status}");
                    // Only a 429 or a 5xx may answer differently a moment later.
                    if !(status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error()) {
                        break;
                    }
                }
            }
        }
        Reconciled::Unanswered(last)
    }
}

/// The API's answer to the part, made from what the lookup found: a single send's 201
/// `{"messageId", "status"}`, a bulk part's 202 `{"campaignId", "acceptedCount"}`.
fn accepted_answer(route: &Route, part: &Dispatchable, found: &Found) -> Stored {
    let (status, body) = match route.kind {
        RouteKind::Bulk => {
            let campaign = route
                .params(&part.path)
                .into_iter()
                .find(|(name, _)| *name == "campaignId")
                .map(|(_, v)| match v.parse::<u64>() {
                    Ok(n) => serde_json::Value::from(n),
                    Err(_) => serde_json::Value::from(v),
                });
            let mut body = serde_json::Map::new();
            if let Some(id) = campaign {
                body.insert("campaignId".into(), id);
            }
            body.insert(
                "acceptedCount".into(),
                (part.items.end - part.items.start).into(),
            );
            (StatusCode::ACCEPTED, serde_json::Value::Object(body))
        }
        RouteKind::Single | RouteKind::Template => (
            StatusCode::CREATED,
            serde_json::json!({
                "messageId": found.message_id,
                "status": found.status.as_deref().unwrap_or("Pending"),
            }),
        ),
    };
    let mut headers = http::HeaderMap::new();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert("x-sluice-reconciled", HeaderValue::from_static("lookup"));
    Stored {
        status,
        headers,
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
    }
}
