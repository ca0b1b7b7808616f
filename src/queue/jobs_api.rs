//! `/sluice/v1/jobs…` on the main listener: clients follow, replay and cancel their jobs.
//!
//! A job is visible only to requests carrying the API key that created it; any other
//! key gets the same 404 as a job that does not exist, so ids cannot be probed. Ids are
//! 128 random bits.
//!
//! - `GET /sluice/v1/jobs/{id}`: the job JSON.
//! - `GET /sluice/v1/jobs?state=failed&limit=50&cursor=…`: newest first,
//!   `{"jobs": […], "nextCursor": "…"|null}`.
//! - `POST /sluice/v1/jobs/{id}/retry`: dead-lettered parts are queued again.
//! - `DELETE /sluice/v1/jobs/{id}`: parts not yet sent are cancelled.

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::routing::get;
use axum::Router;
use http::request::Parts;
use http::{Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::dispatch::now_ms;
use super::store::{JobRecord, JobState};
use super::view::JobView;
use super::Queue;
use crate::api::{self, text, Envelope};
use crate::apikey;
use crate::request_id::RouteName;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<u32>,
    cursor: Option<String>,
}

/// The jobs routes, to merge into the main router.
pub fn router(queue: Queue) -> Router {
    Router::new()
        .route("/sluice/v1/jobs", get(list))
        .route("/sluice/v1/jobs/{id}", get(show).delete(cancel))
        .route("/sluice/v1/jobs/{id}/retry", axum::routing::post(retry))
        .layer(axum::middleware::map_response(label))
        .with_state(queue)
}

// === handlers ===

async fn show(
    State(q): State<Queue>,
    Path(id): Path<String>,
    Owner(owner): Owner,
) -> Response<Body> {
    current(&q, &id, &owner).await
}

async fn list(
    State(q): State<Queue>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    Owner(owner): Owner,
) -> Response<Body> {
    let Ok(Query(query)) = query else {
        return bad_request("Unknown query parameter: use state, limit and cursor.");
    };
    let state = match query.state.as_deref() {
        None => None,
        Some(s) => match JobState::parse(s) {
            Some(state) => Some(state),
            None => {
                return bad_request(
                    "state must be one of queued, in_progress, succeeded, partially_failed, failed, cancelled.",
                )
            }
        },
    };
    let limit = query.limit.unwrap_or(50).clamp(1, 500);
    let before = match query.cursor.as_deref().map(parse_cursor) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => return bad_request("cursor is not one this server gave out."),
    };
    match q.inner.store.list_jobs(&owner, state, limit, before).await {
        Ok(jobs) => {
            let next = (jobs.len() as u32 == limit)
                .then(|| jobs.last().map(|j| format!("{}.{}", j.created_at, j.id)))
                .flatten();
            let views: Vec<JobView> = jobs.iter().map(JobView::new).collect();
            api::json_response(StatusCode::OK, &json!({"jobs": views, "nextCursor": next}))
        }
        Err(e) => store_error(e),
    }
}

async fn retry(
    State(q): State<Queue>,
    Path(id): Path<String>,
    Owner(owner): Owner,
) -> Response<Body> {
    let seqs = match q.inner.store.retry_failed(&id, &owner, now_ms()).await {
        Ok(Some(seqs)) => seqs,
        Ok(None) => return not_found(),
        Err(e) => return store_error(e),
    };
    match q.inner.store.dispatchable(&id, &seqs).await {
        Ok(parts) => {
            for part in parts {
                q.inner.dispatcher.add_backlog(
                    part.items.end - part.items.start,
                    part.bytes.end - part.bytes.start,
                );
                q.inner.dispatcher.enqueue(part);
            }
        }
        Err(e) => return store_error(e),
    }
    tracing::info!(job = %id, parts = seqs.len(), "dead letters replayed");
    current(&q, &id, &owner).await
}

async fn cancel(
    State(q): State<Queue>,
    Path(id): Path<String>,
    Owner(owner): Owner,
) -> Response<Body> {
    // The backlog is not touched here: every cancelled part is still in the scheduler,
    // and the dispatcher takes it out of the backlog when it meets it (the store then
    // refuses to send it). Doing it here too would count queued parts out twice.
    match q.inner.store.cancel_job(&id, &owner, now_ms()).await {
        Ok(Some(recipients)) => {
            tracing::info!(job = %id, recipients, "job cancelled");
            current(&q, &id, &owner).await
        }
        Ok(None) => not_found(),
        Err(e) => store_error(e),
    }
}

// === helpers ===

/// The caller's owner fingerprint (of its key, or the proxy's own when it sent none);
/// without any key the request is refused with the API's own 401.
struct Owner(String);

impl FromRequestParts<Queue> for Owner {
    type Rejection = Response<Body>;

    async fn from_request_parts(parts: &mut Parts, q: &Queue) -> Result<Self, Self::Rejection> {
        let mut headers = parts.headers.clone();
        match apikey::resolve(&mut headers, q.inner.own_key.as_ref()).id {
            Some(id) => Ok(Owner(id.full())),
            None => Err(Envelope::new(text::UNAUTHORIZED, text::MISSING_KEY)
                .into_response(StatusCode::UNAUTHORIZED)),
        }
    }
}

/// Labels every answer of this router as the `jobs` route.
async fn label(mut resp: Response<Body>) -> Response<Body> {
    resp.extensions_mut().insert(RouteName("jobs"));
    resp
}

async fn current(q: &Queue, id: &str, owner: &str) -> Response<Body> {
    match q.inner.store.job(id, owner).await {
        Ok(Some(job)) => job_json(StatusCode::OK, &job),
        Ok(None) => not_found(),
        Err(e) => store_error(e),
    }
}

fn job_json(status: StatusCode, job: &JobRecord) -> Response<Body> {
    api::json_response(status, &JobView::new(job))
}

fn not_found() -> Response<Body> {
    Envelope::new(text::NOT_FOUND, "Job not found").into_response(StatusCode::NOT_FOUND)
}

fn bad_request(message: &str) -> Response<Body> {
    Envelope::new(text::BAD_REQUEST, message).into_response(StatusCode::BAD_REQUEST)
}

fn store_error(e: super::store::StoreError) -> Response<Body> {
    tracing::error!(error = %e, "queue store error");
    Envelope::new(
        "Service Unavailable",
        "sluice's job store cannot be read right now; retry shortly.",
    )
    .into_response(StatusCode::SERVICE_UNAVAILABLE)
}

fn parse_cursor(c: &str) -> Option<(i64, String)> {
    let (at, id) = c.split_once('.')?;
    Some((at.parse().ok()?, id.to_string()))
}
