//! Support bundles: everything the provider's "Getting Help" asks for about one request
//! id, from the journal. `sluice support REQUEST_ID --data-dir DIR [--json]` prints it (it
//! opens `journal.db` read-only, so it works while `serve` runs), and
//! `GET /sluice/v1/support/{requestId}` answers it to the API key that made the request
//! (any other key gets the same 404 as an unknown id).
//!
//! A bundle holds the request id, when the request came (UTC, RFC 3339), its method and
//! path, its body sanitized (`sanitize.rs`: the journal never held more), the API's last
//! status and error body, every attempt and wait sluice made, the job id, and what became
//! of the message or campaign when the tracker knows.

use std::fmt::Write as _;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::routing::get;
use axum::Router;
use http::{HeaderMap, Response, StatusCode};
use rusqlite::Connection;
use serde::Serialize;

use super::journal::{self, EventRow};
use super::Delivery;
use crate::api::{self, text, Envelope};
use crate::edge::request_id::RouteName;
use crate::keys::apikey::{self, ApiKey};
use crate::queue::view::rfc3339;

/// One request's support bundle.
#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Bundle {
    pub request_id: String,
    pub timestamp: String,
    pub method: Option<String>,
    pub path: Option<String>,
    pub job_id: Option<String>,
    /// The request body, sanitized.
    pub request_body: Option<serde_json::Value>,
    /// The API's last answer status, and its body when it was an error.
    pub api_status: Option<u16>,
    pub api_error: Option<serde_json::Value>,
    pub steps: Vec<Step>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<serde_json::Value>,
}

/// One attempt, wait or end, in order.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub at: String,
    /// `attempt`, `wait` or `final`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub part: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wait_ms: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// The bundle of `request_id` from the journal (`owner`'s events only, when given).
pub fn bundle(
    c: &Connection,
    request_id: &str,
    owner: Option<&str>,
) -> rusqlite::Result<Option<Bundle>> {
    let rows = journal::events(c, request_id, owner)?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let send = rows.iter().find(|r| r.kind == "send");
    let job_id = send.or(Some(first)).and_then(|r| r.job_id.clone());
    let last_answer = rows
        .iter()
        .rev()
        .find(|r| r.kind == "attempt" && r.status.is_some());
    let delivery = match &job_id {
        Some(job) => journal::views(c, std::slice::from_ref(job))?.remove(job),
        None => None,
    };
    let as_json = |text: &str| {
        serde_json::from_str(text).unwrap_or_else(|_| serde_json::Value::String(text.to_string()))
    };
    Ok(Some(Bundle {
        request_id: request_id.to_string(),
        timestamp: rfc3339(send.unwrap_or(first).at),
        method: send.and_then(|r| r.method.clone()),
        path: send.and_then(|r| r.path.clone()),
        job_id,
        request_body: send.and_then(|r| r.body.as_deref()).map(as_json),
        api_status: last_answer.and_then(|r| r.status),
        api_error: last_answer.and_then(|r| r.answer.as_deref()).map(as_json),
        steps: rows.iter().filter(|r| r.kind != "send").map(step).collect(),
        delivery,
    }))
}

fn step(r: &EventRow) -> Step {
    Step {
        at: rfc3339(r.at),
        kind: r.kind.clone(),
        part: r.part,
        attempt: r.attempt,
        status: r.status,
        wait_ms: r.wait_ms,
        note: r.note.clone(),
    }
}

/// The bundle as plain text, for people.
pub fn render(b: &Bundle) -> String {
    let mut out = String::new();
    let none = "(none)";
    let _ = writeln!(out, "Request ID:  {}", b.request_id);
    let _ = writeln!(out, "Timestamp:   {}", b.timestamp);
    let _ = writeln!(
        out,
        "Request:     {} {}",
        b.method.as_deref().unwrap_or("?"),
        b.path.as_deref().unwrap_or("?")
    );
    let _ = writeln!(out, "Job:         {}", b.job_id.as_deref().unwrap_or(none));
    let _ = writeln!(
        out,
        "Request body (sanitized):\n  {}",
        b.request_body
            .as_ref()
            .map_or_else(|| none.to_string(), |v| v.to_string())
    );
    match (b.api_status, &b.api_error) {
        (Some(status), Some(error)) => {
            let _ = writeln!(out, "API answer:  {status}\n  {error}");
        }
        (Some(status), None) => {
            let _ = writeln!(out, "API answer:  {status}");
        }
        _ => {
            let _ = writeln!(out, "API answer:  {none}");
        }
    }
    let _ = writeln!(out, "Attempts and waits:");
    if b.steps.is_empty() {
        let _ = writeln!(out, "  {none}");
    }
    for s in &b.steps {
        let what = match s.kind.as_str() {
            "attempt" => format!(
                "attempt {} → {}",
                s.attempt.unwrap_or(0),
                s.status
                    .map_or_else(|| "no answer".to_string(), |c| c.to_string())
            ),
            "wait" => format!("waited {:.1} s", s.wait_ms.unwrap_or(0) as f64 / 1000.0),
            other => other.to_string(),
        };
        let part = s.part.map(|p| format!(" (part {p})")).unwrap_or_default();
        let note = s
            .note
            .as_deref()
            .map(|n| format!(": {n}"))
            .unwrap_or_default();
        let _ = writeln!(out, "  {}  {what}{part}{note}", s.at);
    }
    if let Some(d) = &b.delivery {
        let _ = writeln!(out, "Delivery:    {d}");
    }
    out
}

/// `sluice support`: the bundle of `request_id` in `dir`'s journal, as text or JSON.
pub fn run(dir: &std::path::Path, request_id: &str, json: bool) -> Result<String, String> {
    let conn = journal::open_reader_in(dir).map_err(|e| e.to_string())?;
    match bundle(&conn, request_id, None).map_err(|e| format!("cannot read the journal: {e}"))? {
        None => Err(format!(
            "no request {request_id:?} in the journal of {} (it keeps delivery.retention_secs)",
            dir.display()
        )),
        Some(b) if json => serde_json::to_string_pretty(&b).map_err(|e| e.to_string()),
        Some(b) => Ok(render(&b)),
    }
}

/// `GET /sluice/v1/support/{requestId}`, scoped to the caller's key.
pub fn router(delivery: Delivery, own_key: Option<ApiKey>) -> Router {
    Router::new()
        .route("/sluice/v1/support/{request_id}", get(show))
        .with_state((delivery, own_key))
}

async fn show(
    State((delivery, own_key)): State<(Delivery, Option<ApiKey>)>,
    Path(request_id): Path<String>,
    mut headers: HeaderMap,
) -> Response<Body> {
    let Some(owner) = apikey::resolve(&mut headers, own_key.as_ref()).id else {
        return Envelope::new(text::UNAUTHORIZED, text::MISSING_KEY)
            .into_response(StatusCode::UNAUTHORIZED);
    };
    let mut resp = match delivery.support(request_id, owner.full()).await {
        Ok(Some(b)) => api::json_response(StatusCode::OK, &b),
        Ok(None) => {
            Envelope::new(text::NOT_FOUND, "Request not found").into_response(StatusCode::NOT_FOUND)
        }
        Err(e) => {
            tracing::error!(error = %e, "cannot read the journal");
            Envelope::new(
                "Service Unavailable",
                "sluice's journal cannot be read right now; retry shortly.",
            )
            .into_response(StatusCode::SERVICE_UNAVAILABLE)
        }
    };
    resp.extensions_mut().insert(RouteName("jobs"));
    resp
}
