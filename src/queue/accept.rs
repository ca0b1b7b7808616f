//! Accepting a send: the request becomes a durable job, then the client is answered.
//!
//! Order matters for the delivery guarantee: the body is read (and its Content-Encoding
//! undone, [`crate::edge::body`]) and checked, cut into parts, and the job is committed to the
//! store; only then is anything sent upstream or said to the client. "Checked" is the
//! route's validation ([`crate::validate`]): a bulk body's recipients are checked by the
//! splitter's visitor in its one pass over the body; with `invalid_recipients = "skip"`
//! the bad ones are left out of every part (parts are cut around them,
//! [`plan::initial_parts`]) and listed in the job's `skipped`. A send carrying an
//! `Idempotency-Key` that already names a job makes no new one: it is answered from that
//! job ([`super::idempotency`]).
//!
//! How the client is answered (RFC 7240; the answers themselves are `answer`'s):
//! - `Prefer: respond-async`: `202 Accepted` at once, `Location: /sluice/v1/jobs/{id}`,
//!   the job JSON;
//! - otherwise sluice waits up to `queue.sync_wait_ms` (or `Prefer: wait=N`) for the job
//!   to finish. A finished one-part job answers with the API's own final response (status,
//!   headers, body) plus `X-Sluice-Job-Id`, so existing clients see what they always saw.
//!   A finished multi-part job answers with the job JSON (each part's API status and
//!   body, and `acceptedCount` summed). Not finished in time: `202` as above.

use std::ops::Range;

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{HeaderMap, Response};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::answer;
use super::dispatcher::Watch;
use super::idempotency::{self, IdempotencyError};
use super::prefer::{self, Preference};
use super::store::{
    Inserted, JobRecord, JobState, NewIdempotency, NewJob, NewPart, PartCounts, PartRecord,
    PartState,
};
use super::{plan, Queue, QueueInner};
use crate::clock::now_ms;
use crate::edge::body;
use crate::edge::request_id::RouteName;
use crate::error::ProxyError;
use crate::keys::apikey::{self, KeyId};
use crate::proxy::strip_hop_by_hop;
use crate::routes::{Route, RouteKind};
use crate::split;
use crate::validate::gate::Gate;
use crate::validate::outcome::{BODY, RECIPIENTS};
use crate::validate::recipients::{Offender, RecipientsCheck, Verdict};
use crate::validate::{self, InvalidRecipients, Mode, Rejection};

pub use super::answer::JOB_HEADER;

/// Headers that belong to this hop or to sluice, not to the stored request.
const NOT_STORED: [&str; 5] = ["x-api-key", "prefer", "content-length", "expect", "host"];

// === impl Queue ===

impl Queue {
    /// Takes a request that matched `route`: stores it as a job and answers.
    /// Requests without any API key pass through (the API answers them with its 401).
    /// Template routes are not queued: they are given back too.
    pub async fn accept(&self, route: &Route, req: Request) -> Result<Response<Body>, Request> {
        if route.kind == RouteKind::Template {
            return Err(req);
        }
        let (mut parts, body) = req.into_parts();
        let key = apikey::resolve(&mut parts.headers, self.inner.own_key.as_ref());
        let Some(key_id) = key.id else {
            return Err(Request::from_parts(parts, body));
        };
        if key.trimmed {
            self.inner.metrics.keys_trimmed.inc();
        }
        if key.injected {
            self.inner.metrics.keys_injected.inc();
        }
        let mut resp = match self
            .accept_inner(
                route,
                parts.headers,
                parts.uri,
                parts.method,
                body,
                key_id,
                key.injected,
            )
            .await
        {
            Ok(resp) => resp,
            Err(e) => e,
        };
        resp.extensions_mut().insert(RouteName(route.label()));
        Ok(resp)
    }

    #[allow(clippy::too_many_arguments)]
    async fn accept_inner(
        &self,
        route: &Route,
        mut headers: HeaderMap,
        uri: http::Uri,
        method: http::Method,
        body: Body,
        key_id: KeyId,
        injected: bool,
    ) -> Result<Response<Body>, Response<Body>> {
        let q = &self.inner;
        let pref = prefer::parse(&headers);
        let gate = Gate::new(route, &q.metrics);
        let lenient = if gate.checks() {
            gate.content_type(&headers)
                .map_err(|resp| refused(q, route, resp))?
        } else {
            false
        };
        let body = body::read_decoded(&mut headers, body, q.max_body)
            .await
            .map_err(ProxyError::into_response)?;
        let owner = key_id.full();
        let path = uri
            .path_and_query()
            .map_or_else(|| uri.path().to_string(), |pq| pq.as_str().to_string());

        // Idempotency at the door: a send repeating a key is answered from its first job.
        let claim = match idempotency::client_key(&headers)
            .map_err(IdempotencyError::into_response)?
        {
            None => None,
            Some(key) => {
                let claim = NewIdempotency {
                    body_hash: idempotency::request_hash(&method, &path, &body),
                    not_before: now_ms() - q.idempotency_ttl_ms,
                    key,
                };
                let first = q
                    .store
                    .idempotent_job(&owner, &claim.key, claim.not_before)
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "cannot read idempotency keys; refusing the send");
                        answer::store_unavailable()
                    })?;
                if let Some(first) = first {
                    return Ok(self
                        .repeat(route, &first, &claim.body_hash, &pref, &owner)
                        .await);
                }
                Some(claim)
            }
        };

        let cut = self.cut(route, &gate, &body, &key_id).await?;
        let part_bytes: u64 = cut.parts.iter().map(|p| p.bytes.end - p.bytes.start).sum();

        // Back-pressure: refuse in the API's own 429 format.
        let room = match q.dispatcher.reserve(
            cut.recipients,
            part_bytes,
            q.max_queued_recipients,
            q.max_queued_bytes,
        ) {
            Ok(room) => room,
            Err((queued, _)) => {
                q.metrics
                    .queue_rejected
                    .with_label_values(&[&route.name, "queue_full"])
                    .inc();
                return Err(answer::queue_full(
                    queued,
                    cut.recipients,
                    q.max_queued_recipients,
                    &q.keys,
                    &key_id,
                ));
            }
        };

        strip_hop_by_hop(&mut headers);
        let meta = JobMeta {
            id: format!("{:032x}", rand::random::<u128>()),
            owner,
            api_key: (!injected)
                .then(|| headers.get(apikey::HEADER).map(|v| v.as_bytes().to_vec()))
                .flatten(),
            route: route.name.clone(),
            method: method.as_str().to_string(),
            path,
            headers: headers
                .iter()
                .filter(|(name, _)| !NOT_STORED.contains(&name.as_str()))
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            created_at: now_ms(),
        };
        let id = meta.id.clone();
        let skipped_json = (!cut.skipped.is_empty())
            .then(|| serde_json::to_string(&cut.skipped).unwrap_or_else(|_| "[]".into()));
        let hash = claim.as_ref().map(|c| c.body_hash.clone());
        let job = NewJob {
            id: id.clone(),
            owner: meta.owner.clone(),
            api_key: meta.api_key.clone(),
            route: meta.route.clone(),
            method: meta.method.clone(),
            path: meta.path.clone(),
            headers: meta.headers.clone(),
            body: body.clone(),
            array: cut.array,
            parts: cut.parts.clone(),
            skipped: skipped_json.clone(),
            idempotency: claim,
            now_ms: meta.created_at,
        };
        let journaled = body;
        let watch = q.dispatcher.watch(&id);
        match q.store.insert_job(job).await {
            Ok(Inserted::New) => {}
            // A concurrent send with the same key made its job first: this is a repeat.
            Ok(Inserted::Existing(first)) => {
                drop(watch);
                let hash = hash.unwrap_or_default();
                return Ok(self.repeat(route, &first, &hash, &pref, &meta.owner).await);
            }
            Err(e) => {
                q.metrics
                    .queue_rejected
                    .with_label_values(&[&route.name, "store"])
                    .inc();
                tracing::error!(error = %e, "cannot store a job; refusing the send");
                return Err(answer::store_unavailable());
            }
        }
        q.metrics
            .jobs_accepted
            .with_label_values(&[&route.name])
            .inc();
        let request_id = meta.request_id();
        q.delivery.sent(
            route,
            request_id.as_deref(),
            &meta.owner,
            &id,
            &meta.method,
            &meta.path,
            journaled,
        );
        room.keep();
        if lenient {
            gate.lenient();
        }
        if !cut.skipped.is_empty() {
            gate.skipped(cut.skipped.len());
            tracing::info!(job = %id, route = %route.name, skipped = cut.skipped.len(), "recipients skipped by validation");
        }
        q.dispatcher.wake(&meta.owner);
        let record = meta.record(cut.recipients, &cut.parts, skipped_json);
        tracing::info!(job = %id, route = %route.name, recipients = cut.recipients, parts = record.parts.len(), "job accepted");

        if pref.respond_async {
            return Ok(answer::accepted(&record, &pref));
        }
        Ok(self
            .answer(&id, &record.owner, &watch, &pref)
            .await
            .unwrap_or_else(|| answer::accepted(&record, &pref)))
    }

    /// Checks the body under the route's validation and cuts it into parts (bulk) or keeps
    /// it whole (single). A bulk body of [`OFF_RUNTIME`] bytes or more is scanned on
    /// tokio's blocking pool, so that a 100 MB send does not stall other requests.
    #[allow(clippy::result_large_err)]
    async fn cut(
        &self,
        route: &Route,
        gate: &Gate<'_>,
        body: &Bytes,
        key_id: &KeyId,
    ) -> Result<Cut, Response<Body>> {
        let q = &self.inner;
        let refused = |resp| refused(q, route, resp);
        match route.kind {
            RouteKind::Bulk => {
                // Only `enforce` may skip; `warn` reports what `reject` would refuse.
                let policy = match route.validation {
                    Mode::Enforce => route.invalid_recipients,
                    Mode::Warn | Mode::Off => InvalidRecipients::Reject,
                };
                let limit =
                    plan::part_limit(route.max_recipients_per_request, q.keys.max_allowed(key_id));
                let checks = gate.checks();
                let scanned = if body.len() >= OFF_RUNTIME {
                    let (body, pointer) = (body.clone(), route.recipients_pointer.clone());
                    tokio::task::spawn_blocking(move || {
                        scan_bulk(&body, &pointer, policy, checks, limit)
                    })
                    .await
                    .map_err(|e| {
                        tracing::error!(error = %e, "the scan of a bulk body failed");
                        refused(answer::store_unavailable())
                    })?
                } else {
                    scan_bulk(body, &route.recipients_pointer, policy, checks, limit)
                };
                // The splitter's own refusals stand in every mode; they count as
                // validation refusals where validation is on.
                let scanned = scanned.map_err(|e| {
                    let rejection = split_rejection(&e);
                    refused(if checks {
                        gate.refuse(rejection)
                    } else {
                        rejection.into_response()
                    })
                })?;
                if let Some(rejection) = scanned.reject {
                    // Refused in `enforce`; in `warn` logged and counted, and sent whole.
                    gate.apply(Err(rejection)).map_err(refused)?;
                }
                Ok(scanned.cut)
            }
            // Template routes never get here (`accept` gives them back).
            RouteKind::Single | RouteKind::Template => {
                if gate.checks() {
                    gate.apply(validate::send::single(body)).map_err(refused)?;
                }
                Ok(Cut {
                    array: None,
                    parts: vec![NewPart {
                        items: 0..1,
                        bytes: 0..body.len() as u64,
                    }],
                    recipients: 1,
                    skipped: Vec::new(),
                })
            }
        }
    }

    /// The answer for job `id` as the client asked for it: at once with
    /// `Prefer: respond-async`, else once it is final or the wait is over (the API's own
    /// answer for a finished job, `202` with the job otherwise). `None` when the job
    /// cannot be read.
    pub(super) async fn answer(
        &self,
        id: &str,
        owner: &str,
        watch: &Watch,
        pref: &Preference,
    ) -> Option<Response<Body>> {
        if pref.respond_async {
            let job = self.inner.store.job(id, owner).await.ok()??;
            return Some(answer::accepted(&job, pref));
        }
        let deadline = Instant::now() + pref.wait.unwrap_or(self.inner.sync_wait);
        let latest = self.wait_for(id, owner, watch.notify(), deadline).await?;
        Some(if answer::is_final(latest.state) {
            answer::finished_answer(&latest)
        } else {
            // Not finished in time: the job as it is now (parts may have been accepted).
            answer::accepted(&latest, pref)
        })
    }

    /// Waits until the job is final (woken by the dispatcher at each part's end) or the
    /// deadline passes; the job as last read (`None` if it could not be read).
    async fn wait_for(
        &self,
        id: &str,
        owner: &str,
        notify: &Notify,
        deadline: Instant,
    ) -> Option<JobRecord> {
        let mut stopping = self.inner.answer_by.subscribe();
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let job = match self.inner.store.job(id, owner).await {
                Ok(Some(job)) if answer::is_final(job.state) => return Some(job),
                Ok(Some(job)) => job,
                Ok(None) | Err(_) => return None,
            };
            // At shutdown, the answer is due before the grace period ends.
            let until = match *stopping.borrow_and_update() {
                Some(by) => deadline.min(by),
                None => deadline,
            };
            let woken = tokio::select! {
                () = &mut notified => true,
                _ = stopping.changed() => true,
                () = tokio::time::sleep_until(until) => false,
            };
            if !woken {
                // One last read, so the answer shows what happened during the wait.
                return match self.inner.store.job(id, owner).await {
                    Ok(Some(latest)) => Some(latest),
                    _ => Some(job),
                };
            }
        }
    }
}

/// Bulk bodies from this size on are scanned off the runtime's worker threads.
const OFF_RUNTIME: usize = 1024 * 1024;

/// A bulk body scanned: its parts, and the refusal its recipients call for, if any.
struct Scanned {
    cut: Cut,
    reject: Option<Rejection>,
}

/// The one pass over a bulk body (pure, so it can run on any thread): finds the
/// recipients array, checks each recipient (when `checks`), and cuts the parts around the
/// skipped ones, each at most `limit` recipients.
fn scan_bulk(
    body: &[u8],
    pointer: &str,
    policy: InvalidRecipients,
    checks: bool,
    limit: u64,
) -> Result<Scanned, split::SplitError> {
    let mut check = RecipientsCheck::new(policy);
    let layout = if checks {
        split::scan_with(body, pointer, &mut check)?
    } else {
        split::scan(body, pointer, |_, _| {})?
    };
    let n = layout.items.len();
    let (skipped, reject) = match check.verdict(policy, n) {
        Verdict::SendAll => (Vec::new(), None),
        Verdict::Skip(offenders) => (offenders, None),
        Verdict::Reject(rejection) => (Vec::new(), Some(rejection)),
    };
    let skipped_at: Vec<usize> = skipped.iter().map(|o| o.index).collect();
    let parts = plan::initial_parts(n, &skipped_at, limit as usize)
        .into_iter()
        .map(|r| NewPart {
            items: r.start as u64..r.end as u64,
            bytes: layout.items[r.start].start as u64..layout.items[r.end - 1].end as u64,
        })
        .collect();
    Ok(Scanned {
        cut: Cut {
            array: Some(layout.array.start as u64..layout.array.end as u64),
            parts,
            recipients: (n - skipped.len()) as u64,
            skipped,
        },
        reject,
    })
}

/// A checked body, cut into the parts of its job.
struct Cut {
    /// Byte range of the recipients array (bulk only).
    array: Option<Range<u64>>,
    parts: Vec<NewPart>,
    /// Recipients to send (skipped ones left out).
    recipients: u64,
    skipped: Vec<Offender>,
}

/// What a new job's parts share, to build its dispatchable parts and first record.
struct JobMeta {
    id: String,
    owner: String,
    api_key: Option<Vec<u8>>,
    route: String,
    method: String,
    path: String,
    headers: Vec<(String, Vec<u8>)>,
    created_at: i64,
}

// === impl JobMeta ===

impl JobMeta {
    /// The client's request id, kept with the job's headers.
    fn request_id(&self) -> Option<String> {
        self.headers
            .iter()
            .find(|(name, _)| name == crate::edge::request_id::HEADER)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// The job as just stored: every part queued, nothing attempted.
    fn record(self, recipients: u64, parts: &[NewPart], skipped: Option<String>) -> JobRecord {
        JobRecord {
            parts: parts
                .iter()
                .enumerate()
                .map(|(seq, p)| PartRecord {
                    seq: seq as u32,
                    items: p.items.clone(),
                    bytes: p.bytes.clone(),
                    state: PartState::Queued,
                    attempts: 0,
                    last_status: None,
                    last_error: None,
                    next_attempt_at: None,
                    response: None,
                })
                .collect(),
            id: self.id,
            owner: self.owner,
            route: self.route,
            method: self.method,
            path: self.path,
            state: JobState::Queued,
            recipients,
            counts: PartCounts {
                queued: parts.len() as u64,
                ..PartCounts::default()
            },
            created_at: self.created_at,
            updated_at: self.created_at,
            skipped,
        }
    }
}

/// Counts a send refused for what it is (validation, a malformed body) and gives its
/// answer back.
fn refused(q: &QueueInner, route: &Route, resp: Response<Body>) -> Response<Body> {
    q.metrics
        .queue_rejected
        .with_label_values(&[&route.name, "invalid"])
        .inc();
    resp
}

/// A body the splitter refused, as a validation refusal: the body as a whole, or its
/// recipients array (missing, not an array, empty).
fn split_rejection(e: &split::SplitError) -> Rejection {
    use split::SplitError as E;
    let label = match e {
        E::MissingArray { .. } | E::NotAnArray { .. } | E::Empty { .. } => RECIPIENTS,
        E::NotJson(_) | E::NotAnObject | E::BadPointer(_) | E::TooDeep | E::DuplicateKey(_) => BODY,
    };
    Rejection::malformed(
        label,
        format!("The request body cannot be read as a bulk send: {e}."),
    )
}
