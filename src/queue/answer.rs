//! How a send is answered once its job is stored (or found again by its idempotency key):
//! `202 Accepted` with the job JSON while it is not finished, the API's own answer for a
//! finished one-part job (or for a multi-part job whose parts were all refused alike), the
//! job JSON with the API's fields for a finished multi-part job, and sluice's own answers
//! in the API's formats (a full queue as the API's 429, a store that cannot be used as a
//! 503 envelope).

use axum::body::Body;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use super::prefer::Preference;
use super::store::{JobRecord, JobState, PartRecord, PartState, StoredResponse};
use super::view::JobView;
use crate::api::{self, Envelope, RateLimitBody};
use crate::keys::apikey::KeyId;
use crate::proxy::strip_hop_by_hop;

/// The header naming the job on every answer to a send.
pub const JOB_HEADER: &str = "x-sluice-job-id";

/// Whether the job has nothing left to send (every part is final).
pub(super) fn is_final(state: JobState) -> bool {
    !matches!(state, JobState::Queued | JobState::InProgress)
}

/// `202 Accepted` with the job JSON and where to follow it.
pub(super) fn accepted(job: &JobRecord, pref: &Preference) -> Response<Body> {
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
pub(super) fn finished_answer(job: &JobRecord) -> Response<Body> {
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

pub(super) fn insert_job_header(h: &mut HeaderMap, id: &str) {
    if let Ok(v) = HeaderValue::from_str(id) {
        h.insert(JOB_HEADER, v);
    }
}

/// The back-pressure answer, in the API's own 429 format.
pub(super) fn queue_full(
    queued: u64,
    requested: u64,
    max: u64,
    keys: &crate::keys::keystate::KeyState,
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

/// The answer when the job store cannot be written or read: nothing was accepted.
pub(super) fn store_unavailable() -> Response<Body> {
    Envelope::new(
        "Service Unavailable",
        "sluice could not use its durable queue for this send, so it was not accepted. Nothing was sent; retry later.",
    )
    .into_response(StatusCode::SERVICE_UNAVAILABLE)
}
