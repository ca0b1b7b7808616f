//! The job JSON that clients see (`/sluice/v1/jobs/…` and 202 answers).
//!
//! ```json
//! {"id": "…", "route": "bulk", "state": "in_progress", "recipients": 450000,
//!  "delivered": 100000, "failed": 0, "uncertain": 0, "acceptedCount": 100000,
//!  "parts": [{"index": 0, "recipients": 50000, "state": "succeeded", "attempts": 1,
//!             "lastStatus": 202, "lastError": null, "nextAttemptAt": null,
//!             "response": {"campaignId": 7, "acceptedCount": 50000}}, …],
//!  "skipped": [], "createdAt": "2026-…Z", "updatedAt": "2026-…Z"}
//! ```
//! `delivered` counts recipients the API accepted, `failed` those in dead-lettered
//! parts, `uncertain` those whose fate is unknown (answers lost, the lookup could not tell);
//! `acceptedCount` sums the API's own `acceptedCount` fields where present.

use serde::Serialize;
use serde_json::value::RawValue;

use super::store::{JobRecord, JobState, PartRecord, PartState};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobView<'a> {
    pub id: &'a str,
    pub route: &'a str,
    pub state: JobState,
    pub recipients: u64,
    pub delivered: u64,
    pub failed: u64,
    /// Recipients whose fate is unknown: the API may or may not have accepted them.
    pub uncertain: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_count: Option<u64>,
    pub parts: Vec<PartView<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<&'a RawValue>,
    pub created_at: String,
    pub updated_at: String,
    /// What became of the message (single send) or campaign (bulk) after the API accepted
    /// it: see `crate::delivery::view`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<serde_json::Value>,
    /// Fields of the API's own answer carried over into an aggregate (see
    /// [`JobView::with_api_fields`]).
    #[serde(flatten)]
    pub api_fields: serde_json::Map<String, serde_json::Value>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PartView<'a> {
    pub index: usize,
    pub recipients: u64,
    pub state: PartState,
    pub attempts: u32,
    pub last_status: Option<u16>,
    pub last_error: Option<&'a str>,
    pub next_attempt_at: Option<String>,
    /// The API's final answer body for this part, when it was JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<&'a RawValue>,
}

// === impl JobView ===

impl<'a> JobView<'a> {
    pub fn new(job: &'a JobRecord) -> Self {
        let count = |s: PartState| -> u64 {
            job.parts
                .iter()
                .filter(|p| p.state == s)
                .map(|p| p.items.end - p.items.start)
                .sum()
        };
        let mut accepted: Option<u64> = None;
        let parts = job
            .parts
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let response = response_json(p);
                if let Some(n) = response.and_then(accepted_count) {
                    *accepted.get_or_insert(0) += n;
                }
                PartView {
                    index,
                    recipients: p.items.end - p.items.start,
                    state: p.state,
                    attempts: p.attempts,
                    last_status: p.last_status,
                    last_error: p.last_error.as_deref(),
                    next_attempt_at: p
                        .next_attempt_at
                        .filter(|_| matches!(p.state, PartState::Queued))
                        .map(rfc3339),
                    response,
                }
            })
            .collect();
        Self {
            id: &job.id,
            route: &job.route,
            state: job.state,
            recipients: job.recipients,
            delivered: count(PartState::Succeeded),
            failed: count(PartState::Failed),
            uncertain: count(PartState::Uncertain),
            accepted_count: accepted,
            parts,
            skipped: job
                .skipped
                .as_deref()
                .and_then(|s| serde_json::from_str::<&RawValue>(s).ok()),
            created_at: rfc3339(job.created_at),
            updated_at: rfc3339(job.updated_at),
            delivery: None,
            api_fields: serde_json::Map::new(),
        }
    }

    /// With what became of the job's message or campaign, when sluice knows.
    pub fn with_delivery(mut self, delivery: Option<serde_json::Value>) -> Self {
        self.delivery = delivery;
        self
    }

    /// For the answer to a finished multi-part send: the top-level fields of the first
    /// succeeded part's API answer (e.g. `campaignId`) that the job JSON does not have
    /// already, so a client reading the API's usual fields finds them (`acceptedCount`
    /// is the sum over all parts).
    pub fn with_api_fields(mut self) -> Self {
        let first = self
            .parts
            .iter()
            .find(|p| p.state == PartState::Succeeded)
            .and_then(|p| p.response)
            .and_then(|raw| {
                serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(raw.get()).ok()
            });
        if let Some(fields) = first {
            let own = serde_json::to_value(&self).ok();
            for (name, value) in fields {
                let taken = own.as_ref().is_some_and(|o| o.get(&name).is_some());
                if !taken && name != "acceptedCount" {
                    self.api_fields.insert(name, value);
                }
            }
        }
        self
    }
}

/// The part's stored response body, if it is JSON.
fn response_json(p: &PartRecord) -> Option<&RawValue> {
    let body = &p.response.as_ref()?.body;
    serde_json::from_slice::<&RawValue>(body).ok()
}

fn accepted_count(raw: &RawValue) -> Option<u64> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Accepted {
        accepted_count: Option<u64>,
    }
    serde_json::from_str::<Accepted>(raw.get())
        .ok()?
        .accepted_count
}

/// Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn rfc3339(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}
