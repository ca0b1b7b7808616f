//! Accepting a send: the request becomes a durable job, then the client is answered.
//!
//! Order matters for the delivery guarantee: the body is read and checked, cut into
//! parts, and the job is committed to the store; only then is anything sent upstream or
//! said to the client. "Checked" is the route's validation ([`crate::validate`]): a bulk
//! body's recipients are checked by the splitter's visitor in its one pass over the body;
//! with `invalid_recipients = "skip"` the bad ones are left out of every part (parts are
//! cut around them, [`plan::initial_parts`]) and listed in the job's `skipped`. How the client is answered (RFC 7240):
//! - `Prefer: respond-async`: `202 Accepted` at once, `Location: /sluice/v1/jobs/{id}`,
//!   the job JSON;
//! - otherwise sluice waits up to `queue.sync_wait_ms` (or `Prefer: wait=N`) for the job
//!   to finish. A finished one-part job answers with the API's own final response (status,
//!   headers, body) plus `X-Sluice-Job-Id`, so existing clients see what they always saw.
//!   A finished multi-part job answers with the job JSON (each part's API status and
//!   body, and `acceptedCount` summed). Not finished in time: `202` as above.

use axum::body::Body;
use axum::extract::Request;
use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::dispatch::now_ms;
use super::prefer::{self, Preference};
use super::store::{
    Dispatchable, JobRecord, JobState, NewJob, NewPart, PartCounts, PartRecord, PartState,
    StoredResponse,
};
use super::view::JobView;
use super::{plan, Queue};
use crate::api::{self, Envelope, RateLimitBody};
use crate::apikey::{self, KeyId};
use crate::error::ProxyError;
use crate::proxy::strip_hop_by_hop;
use crate::request_id::RouteName;
use crate::routes::{Route, RouteKind};
use crate::split;
use crate::validate::gate::Gate;
use crate::validate::outcome::{BODY, RECIPIENTS};
use crate::validate::recipients::{RecipientsCheck, Verdict};
use crate::validate::{self, InvalidRecipients, Mode, Rejection};

/// The header naming the job on every answer to a send.
pub const JOB_HEADER: &str = "x-sluice-job-id";

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
        let refused = |resp: Response<Body>| {
            q.metrics
                .queue_rejected
                .with_label_values(&[&route.name, "invalid"])
                .inc();
            resp
        };
        if gate.checks() {
            gate.apply(validate::json::content_type(&headers))
                .map_err(refused)?;
        }
        let body = read_body(body, q.max_body)
            .await
            .map_err(ProxyError::into_response)?;

        // Check, then cut into parts (bulk) or keep whole (single).
        let (array, new_parts, recipients, skipped) = match route.kind {
            RouteKind::Bulk => {
                // Only `enforce` may skip; `warn` reports what `reject` would refuse.
                let policy = match route.validation {
                    Mode::Enforce => route.invalid_recipients,
                    Mode::Warn | Mode::Off => InvalidRecipients::Reject,
                };
                let mut check = RecipientsCheck::new(policy);
                let scanned = if gate.checks() {
                    split::scan_with(&body, &route.recipients_pointer, &mut check)
                } else {
                    split::scan(&body, &route.recipients_pointer, |_, _| {})
                };
                // The splitter's own refusals stand in every mode; they count as
                // validation refusals where validation is on.
                let layout = scanned.map_err(|e| {
                    let rejection = split_rejection(&e);
                    refused(if gate.checks() {
                        gate.refuse(rejection)
                    } else {
                        rejection.into_response()
                    })
                })?;
                let n = layout.items.len();
                let skipped = match check.verdict(policy, n) {
                    Verdict::SendAll => Vec::new(),
                    Verdict::Skip(offenders) => offenders,
                    Verdict::Reject(rejection) => {
                        gate.apply(Err(rejection)).map_err(refused)?;
                        Vec::new()
                    }
                };
                let limit = plan::part_limit(
                    route.max_recipients_per_request,
                    q.keys.max_allowed(&key_id),
                );
                let skipped_at: Vec<usize> = skipped.iter().map(|o| o.index).collect();
                let parts: Vec<NewPart> = plan::initial_parts(n, &skipped_at, limit as usize)
                    .into_iter()
                    .map(|r| NewPart {
                        items: r.start as u64..r.end as u64,
                        bytes: layout.items[r.start].start as u64
                            ..layout.items[r.end - 1].end as u64,
                    })
                    .collect();
                let array = layout.array.start as u64..layout.array.end as u64;
                (Some(array), parts, (n - skipped.len()) as u64, skipped)
            }
            // Template routes never get here (`accept` gives them back).
            RouteKind::Single | RouteKind::Template => {
                if gate.checks() {
                    gate.apply(validate::send::single(&body)).map_err(refused)?;
                }
                (
                    None,
                    vec![NewPart {
                        items: 0..1,
                        bytes: 0..body.len() as u64,
                    }],
                    1,
                    Vec::new(),
                )
            }
        };
        let skipped_json = (!skipped.is_empty())
            .then(|| serde_json::to_string(&skipped).unwrap_or_else(|_| "[]".into()));
        let part_bytes: u64 = new_parts.iter().map(|p| p.bytes.end - p.bytes.start).sum();

        // Back-pressure: refuse in the API's own 429 format.
        let (queued, queued_bytes) = q.dispatcher.backlog();
        if queued + recipients > q.max_queued_recipients
            || queued_bytes + part_bytes > q.max_queued_bytes
        {
            q.metrics
                .queue_rejected
                .with_label_values(&[&route.name, "queue_full"])
                .inc();
            return Err(queue_full(
                queued,
                recipients,
                q.max_queued_recipients,
                &q.keys,
                &key_id,
            ));
        }

        strip_hop_by_hop(&mut headers);
        let meta = JobMeta {
            id: format!("{:032x}", rand::random::<u128>()),
            owner: key_id.full(),
            api_key: (!injected)
                .then(|| headers.get(apikey::HEADER).map(|v| v.as_bytes().to_vec()))
                .flatten(),
            route: route.name.clone(),
            method: method.as_str().to_string(),
            path: uri
                .path_and_query()
                .map_or_else(|| uri.path().to_string(), |pq| pq.as_str().to_string()),
            headers: headers
                .iter()
                .filter(|(name, _)| !NOT_STORED.contains(&name.as_str()))
                .map(|(k, v)| (k.as_str().to_string(), v.as_bytes().to_vec()))
                .collect(),
            created_at: now_ms(),
        };
        let id = meta.id.clone();
        let job = NewJob {
            id: id.clone(),
            owner: meta.owner.clone(),
            api_key: meta.api_key.clone(),
            route: meta.route.clone(),
            method: meta.method.clone(),
            path: meta.path.clone(),
            headers: meta.headers.clone(),
            body,
            array,
            parts: new_parts.clone(),
            skipped: skipped_json.clone(),
            now_ms: meta.created_at,
        };
        let watch = q.dispatcher.watch(&id);
        if let Err(e) = q.store.insert_job(job).await {
            q.metrics
                .queue_rejected
                .with_label_values(&[&route.name, "store"])
                .inc();
            tracing::error!(error = %e, "cannot store a job; refusing the send");
            return Err(Envelope::new(
                "Service Unavailable",
                "sluice could not write this send to its durable queue, so it was not accepted. Nothing was sent; retry later.",
            )
            .into_response(StatusCode::SERVICE_UNAVAILABLE));
        }
        q.metrics
            .jobs_accepted
            .with_label_values(&[&route.name])
            .inc();
        q.dispatcher.add_backlog(recipients, part_bytes);
        if !skipped.is_empty() {
            gate.skipped(skipped.len());
            tracing::info!(job = %id, route = %route.name, skipped = skipped.len(), "recipients skipped by validation");
        }
        for (seq, p) in new_parts.iter().enumerate() {
            q.dispatcher.enqueue(meta.dispatchable(seq as u32, p));
        }
        let record = meta.record(recipients, &new_parts, skipped_json);
        tracing::info!(job = %id, route = %route.name, recipients, parts = record.parts.len(), "job accepted");

        if pref.respond_async {
            return Ok(accepted(&record, &pref));
        }
        let deadline = Instant::now() + pref.wait.unwrap_or(q.sync_wait);
        let latest = self
            .wait_for(&id, &key_id.full(), watch.notify(), deadline)
            .await;
        Ok(match latest {
            Some(job) if is_final(job.state) => finished_answer(&job),
            // Not finished in time: the job as it is now (parts may have been accepted).
            Some(job) => accepted(&job, &pref),
            None => accepted(&record, &pref),
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
                Ok(Some(job)) if is_final(job.state) => return Some(job),
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
    fn dispatchable(&self, seq: u32, part: &NewPart) -> Dispatchable {
        Dispatchable {
            job_id: self.id.clone(),
            seq,
            owner: self.owner.clone(),
            api_key: self.api_key.clone(),
            route: self.route.clone(),
            method: self.method.clone(),
            path: self.path.clone(),
            headers: self.headers.clone(),
            items: part.items.clone(),
            bytes: part.bytes.clone(),
            attempts: 0,
            next_attempt_at: None,
            created_at: self.created_at,
            reconcile_from: None,
            blind_resends: 0,
            last_error: None,
        }
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

fn is_final(state: JobState) -> bool {
    !matches!(state, JobState::Queued | JobState::InProgress)
}

/// Reads the whole body (a send's is stored), refusing more than `max` bytes.
pub(crate) async fn read_body(body: Body, max: u64) -> Result<Bytes, ProxyError> {
    if body.size_hint().exact().is_some_and(|n| n > max) {
        return Err(ProxyError::BodyTooLarge { limit: max });
    }
    match Limited::new(body, max as usize).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ProxyError::BodyTooLarge { limit: max })
        }
        Err(e) => Err(ProxyError::client_body(e.as_ref())),
    }
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

/// `202 Accepted` with the job JSON and where to follow it.
fn accepted(job: &JobRecord, pref: &Preference) -> Response<Body> {
    let mut resp = api::json_response(StatusCode::ACCEPTED, &JobView::new(job));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("/sluice/v1/jobs/{}", job.id)) {
        h.insert(header::LOCATION, v);
    }
    let applied = match (pref.respond_async, pref.wait) {
        (true, _) => Some("respond-async".to_string()),
        (false, Some(w)) => Some(format!("wait={}", w.as_secs())),
        _ => None,
    };
    if let Some(v) = applied.and_then(|a| HeaderValue::from_str(&a).ok()) {
        h.insert("preference-applied", v);
    }
    insert_job_header(h, &job.id);
    resp
}

/// The answer for a job that finished within the wait.
fn finished_answer(job: &JobRecord) -> Response<Body> {
    // The fate of some recipients is unknown: the API may have accepted them. The client
    // hears "accepted" (sluice has the job) rather than an error it would resend after.
    if job.state == JobState::Uncertain {
        return accepted(job, &Preference::default());
    }
    if let Some(answer) = same_refusal(&job.parts) {
        return the_apis_answer(answer, &job.id);
    }
    if let [part] = job.parts.as_slice() {
        if let Some(r) = &part.response {
            return the_apis_answer(r, &job.id);
        }
        let message = format!(
            "sluice could not deliver this send: {}. GET /sluice/v1/jobs/{} shows the details; POST …/retry replays it.",
            part.last_error.as_deref().unwrap_or("unknown error"),
            job.id
        );
        let mut resp = Envelope::new("Bad Gateway", message).into_response(StatusCode::BAD_GATEWAY);
        insert_job_header(resp.headers_mut(), &job.id);
        return resp;
    }
    // Several parts: the job JSON, with the status of the outcome.
    let status = match job.state {
        JobState::Succeeded => job
            .parts
            .first()
            .and_then(|p| p.last_status)
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::OK),
        JobState::Cancelled => StatusCode::OK,
        _ => job
            .parts
            .iter()
            .find(|p| p.state == PartState::Failed)
            .and_then(|p| p.last_status)
            .and_then(|s| StatusCode::from_u16(s).ok())
            .unwrap_or(StatusCode::BAD_GATEWAY),
    };
    let mut resp = api::json_response(status, &JobView::new(job).with_api_fields());
    insert_job_header(resp.headers_mut(), &job.id);
    resp
}

/// When every part was refused by the API with the same status and body (say a campaign
/// that is not started), that answer: the client sees what the API said.
fn same_refusal(parts: &[PartRecord]) -> Option<&StoredResponse> {
    let first = parts.first()?.response.as_ref()?;
    let same = parts.iter().all(|p| {
        p.state == PartState::Failed
            && p.response
                .as_ref()
                .is_some_and(|r| r.status == first.status && r.body == first.body)
    });
    (same && (400..500).contains(&first.status)).then_some(first)
}

/// The API's own stored answer, as the client gets it, with the job's id.
fn the_apis_answer(r: &StoredResponse, job: &str) -> Response<Body> {
    let mut resp = Response::new(Body::from(r.body.clone()));
    *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_GATEWAY);
    *resp.headers_mut() = r.header_map();
    strip_hop_by_hop(resp.headers_mut());
    resp.headers_mut().remove(header::CONTENT_LENGTH);
    insert_job_header(resp.headers_mut(), job);
    resp
}

fn insert_job_header(h: &mut HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(JOB_HEADER, v);
    }
}

/// The back-pressure answer, in the API's own 429 format.
fn queue_full(
    queued: u64,
    requested: u64,
    max: u64,
    keys: &crate::keystate::KeyState,
    key: &KeyId,
) -> Response<Body> {
    let retry_after = keys
        .cooldowns
        .remaining(key)
        .map_or(5, |d| d.as_secs().max(1));
    let body = RateLimitBody::new(queued.min(max), requested, max, retry_after);
    let mut resp = api::json_response(StatusCode::TOO_MANY_REQUESTS, &body);
    if let Ok(v) = HeaderValue::from_str(&retry_after.to_string()) {
        resp.headers_mut().insert(header::RETRY_AFTER, v);
    }
    resp
}
