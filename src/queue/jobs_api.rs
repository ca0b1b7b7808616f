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
//!
//! A listed job is the same JSON as `GET /sluice/v1/jobs/{id}` shows, parts included (they
//! are read for the whole page in one query). Every error is in the API's envelope: a
//! method a path does not take (405, with `Allow`), an id that cannot be one (404, like an
//! unknown id), a query parameter that is unknown or not a valid value (400 naming it).

use axum::body::Body;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::routing::get;
use axum::Router;
use http::request::Parts;
use http::{header, HeaderValue, Response, StatusCode};
use serde::Deserialize;
use serde_json::json;

use super::store::JobState;
use super::view::JobView;
use super::Queue;
use crate::api::{self, text, Envelope};
use crate::clock::now_ms;
use crate::edge::request_id::RouteName;
use crate::keys::apikey;

/// The list's query parameters, as sent (each is checked by [`list`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    state: Option<String>,
    limit: Option<String>,
    cursor: Option<String>,
}

/// The most jobs in one page, and the default.
const MAX_LIMIT: u32 = 500;
const DEFAULT_LIMIT: u32 = 50;

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

async fn show(State(q): State<Queue>, JobId(id): JobId, Owner(owner): Owner) -> Response<Body> {
    current(&q, &id, &owner).await
}

async fn list(
    State(q): State<Queue>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
    Owner(owner): Owner,
) -> Response<Body> {
    let query = match query {
        Ok(Query(query)) => query,
        Err(e) => {
            return bad_request(&format!(
                "{}: the parameters are state, limit and cursor.",
                e.body_text()
            ))
        }
    };
    let state = match query.state.as_deref() {
        None => None,
        Some(s) => match JobState::parse(s) {
            Some(state) => Some(state),
            None => {
                return bad_request(
                    "state must be one of queued, in_progress, succeeded, partially_failed, failed, cancelled, uncertain.",
                )
            }
        },
    };
    let limit = match query.limit.as_deref().map(str::parse::<u32>) {
        None => DEFAULT_LIMIT,
        Some(Ok(n)) => n.clamp(1, MAX_LIMIT),
        Some(Err(_)) => {
            return bad_request(&format!(
            "limit must be a whole number from 1 to {MAX_LIMIT} (the default is {DEFAULT_LIMIT})."
        ))
        }
    };
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
            let ids = jobs.iter().map(|j| j.id.clone()).collect();
            let mut delivery = q.inner.delivery.views(ids).await.unwrap_or_default();
            let views: Vec<JobView> = jobs
                .iter()
                .map(|j| JobView::new(j).with_delivery(delivery.remove(&j.id)))
                .collect();
            api::json_response(StatusCode::OK, &json!({"jobs": views, "nextCursor": next}))
        }
        Err(e) => store_error(e),
    }
}

async fn retry(
    State(q): State<Queue>,
    JobId(id): JobId,
    Owner(owner): Owner,
    mut headers: http::HeaderMap,
) -> Response<Body> {
    // The replay is sent with the key of the request asking for it (the owner's), unless
    // that is sluice's own: a finished job no longer keeps its client's key.
    let resolved = apikey::resolve(&mut headers, q.inner.own_key.as_ref());
    let key = (!resolved.injected)
        .then(|| headers.get(apikey::HEADER).map(|v| v.as_bytes().to_vec()))
        .flatten();
    let seqs = match q.inner.store.retry_failed(&id, &owner, key, now_ms()).await {
        Ok(Some(seqs)) => seqs,
        Ok(None) => return not_found(),
        Err(e) => return store_error(e),
    };
    match q.inner.store.dispatchable(&id, &seqs).await {
        Ok(parts) => {
            for part in &parts {
                q.inner.dispatcher.add_backlog(
                    part.items.end - part.items.start,
                    part.bytes.end - part.bytes.start,
                );
            }
            q.inner.dispatcher.wake(&owner);
        }
        Err(e) => return store_error(e),
    }
    tracing::info!(job = %id, parts = seqs.len(), "dead letters replayed");
    current(&q, &id, &owner).await
}

async fn cancel(State(q): State<Queue>, JobId(id): JobId, Owner(owner): Owner) -> Response<Body> {
    // The cancelled parts leave the backlog here, once: a part the dispatcher holds in
    // memory meets the cancel when it is about to be sent, and only stops.
    match q.inner.store.cancel_job(&id, &owner, now_ms()).await {
        Ok(Some((recipients, bytes))) => {
            q.inner.dispatcher.release_backlog(recipients, bytes);
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

/// The job id of the path; one that is not even text (`%ff`) names no job: the same 404.
struct JobId(String);

impl FromRequestParts<Queue> for JobId {
    type Rejection = Response<Body>;

    async fn from_request_parts(parts: &mut Parts, q: &Queue) -> Result<Self, Self::Rejection> {
        match Path::<String>::from_request_parts(parts, q).await {
            Ok(Path(id)) => Ok(JobId(id)),
            Err(_) => Err(not_found()),
        }
    }
}

/// Labels every answer of this router as the `jobs` route, and gives the router's own
/// 405 (a method the path does not take) the API's envelope.
async fn label(resp: Response<Body>) -> Response<Body> {
    let mut resp = if resp.status() == StatusCode::METHOD_NOT_ALLOWED {
        method_not_allowed(resp.headers().get(header::ALLOW))
    } else {
        resp
    };
    resp.extensions_mut().insert(RouteName("jobs"));
    resp
}

fn method_not_allowed(allow: Option<&HeaderValue>) -> Response<Body> {
    let allowed = allow.and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut resp = Envelope::new(
        "Method Not Allowed",
        format!("This jobs API path does not take that method; it takes {allowed}."),
    )
    .into_response(StatusCode::METHOD_NOT_ALLOWED);
    if let Some(allow) = allow {
        resp.headers_mut().insert(header::ALLOW, allow.clone());
    }
    resp
}

async fn current(q: &Queue, id: &str, owner: &str) -> Response<Body> {
    match q.inner.store.job(id, owner).await {
        Ok(Some(job)) => {
            let delivery = q.inner.delivery.views(vec![job.id.clone()]).await;
            let delivery = delivery.ok().and_then(|mut d| d.remove(&job.id));
            api::json_response(StatusCode::OK, &JobView::new(&job).with_delivery(delivery))
        }
        Ok(None) => not_found(),
        Err(e) => store_error(e),
    }
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
