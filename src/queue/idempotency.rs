//! Idempotency at the door: a client's `Idempotency-Key` on a send names one job.
//!
//! Clients retry: their own timeout is often shorter than sluice's sync wait, or an
//! answer is lost on the way back. With a key, a repeat makes no second job and no second
//! upstream send:
//! - the key is scoped to the API key that sent it (the job's owner) and lives for
//!   `queue.idempotency_ttl_secs`; the store keeps the mapping, claimed in the same
//!   savepoint as the job ([`super::store::Store::insert_job`]), so of two concurrent
//!   first sends only one makes a job and the other is a repeat;
//! - a repeat with the same request (SHA-256 of method, path and decoded body) is
//!   answered from the first job exactly as the first send would be answered now: waiting
//!   for it (honouring `Prefer`), the API's own answer once it is final, `202` naming the
//!   same job if it is not ([`Queue::repeat`]);
//! - a repeat with a different request is refused with `422` naming the first job;
//! - upstream, the key goes as is for a one-part job and as `KEY-START-END` per part of a
//!   multi-part one ([`upstream_key`]), the same across retries; without a client key
//!   sluice's own `JOB-START-END`.

use axum::body::Body;
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use sha2::{Digest, Sha256};

use super::answer;
use super::prefer::Preference;
use super::store::{Dispatchable, IdempotencyRecord};
use super::Queue;
use crate::api::Envelope;
use crate::routes::Route;

/// The header, as clients and the API name it.
pub const HEADER: &str = "idempotency-key";

/// The longest key accepted (the suffix for a part is added to it upstream).
const MAX_LEN: usize = 255;

/// Why a send's `Idempotency-Key` cannot be honoured; each maps to one answer in the
/// API's envelope ([`IdempotencyError::into_response`]).
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error("Idempotency-Key must be one header of 1 to {MAX_LEN} printable ASCII characters. Send one such key per logical send, and the same key when you retry it.")]
    BadKey,
    #[error("This Idempotency-Key was used with a different body (or path) for job {job} within the last {ttl_secs} s, so this send was not accepted. Use a new key for a new send; GET /sluice/v1/jobs/{job} shows the first one.")]
    Conflict { job: String, ttl_secs: u64 },
}

// === impl IdempotencyError ===

impl IdempotencyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadKey => StatusCode::BAD_REQUEST,
            Self::Conflict { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        }
    }

    /// The one mapping to what the client sees: the API's envelope, and for a conflict
    /// the first job's id in `X-Sluice-Job-Id`.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        let title = status.canonical_reason().unwrap_or("Error");
        let job = match &self {
            Self::Conflict { job, .. } => Some(job.clone()),
            Self::BadKey => None,
        };
        let mut resp = Envelope::new(title, self.to_string()).into_response(status);
        if let Some(job) = job {
            answer::insert_job_header(resp.headers_mut(), &job);
        }
        resp
    }
}

// === impl Queue ===

impl Queue {
    /// Answers a send whose key already names `first`: a conflict when the request
    /// differs, else the first job's answer (see the module doc). Nothing is stored or
    /// sent.
    pub(super) async fn repeat(
        &self,
        route: &Route,
        first: &IdempotencyRecord,
        hash: &[u8],
        pref: &Preference,
        owner: &str,
    ) -> Response<Body> {
        let q = &self.inner;
        let count = |result: &str| {
            q.metrics
                .idempotent_replays
                .with_label_values(&[&route.name, result])
                .inc();
        };
        if first.body_hash != hash {
            count("conflict");
            tracing::info!(job = %first.job_id, route = %route.name, "idempotency key reused with a different request; refused");
            return IdempotencyError::Conflict {
                job: first.job_id.clone(),
                ttl_secs: q.idempotency_ttl_ms as u64 / 1000,
            }
            .into_response();
        }
        count("replayed");
        tracing::info!(job = %first.job_id, route = %route.name, "idempotent repeat answered from its first job");
        let watch = q.dispatcher.watch(&first.job_id);
        self.answer(&first.job_id, owner, &watch, pref)
            .await
            .unwrap_or_else(answer::store_unavailable)
    }
}

/// The client's key, trimmed; `None` without one. More than one header, an empty or too
/// long value, or characters other than printable ASCII: [`IdempotencyError::BadKey`].
pub fn client_key(headers: &HeaderMap) -> Result<Option<String>, IdempotencyError> {
    let mut all = headers.get_all(HEADER).iter();
    let Some(value) = all.next() else {
        return Ok(None);
    };
    if all.next().is_some() {
        return Err(IdempotencyError::BadKey);
    }
    let key = value.to_str().map_err(|_| IdempotencyError::BadKey)?.trim();
    let printable = key.bytes().all(|b| (0x20..0x7f).contains(&b));
    if key.is_empty() || key.len() > MAX_LEN || !printable {
        return Err(IdempotencyError::BadKey);
    }
    Ok(Some(key.to_string()))
}

/// What a key is bound to: SHA-256 of the method, the path with its query, and the body
/// as decoded (so the same send compressed or not is the same request).
pub fn request_hash(method: &Method, path: &str, body: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    for field in [method.as_str().as_bytes(), path.as_bytes()] {
        h.update((field.len() as u64).to_le_bytes());
        h.update(field);
    }
    h.update(body);
    h.finalize().to_vec()
}

/// The `Idempotency-Key` a part goes up with: the client's own for a job's only part,
/// the client's with `-START-END` (the part's recipients) for a part of several, and
/// `JOB-START-END` when the client sent none. The same across every retry of the same
/// recipients, and new pieces of a split part get their own.
pub fn upstream_key(part: &Dispatchable) -> Option<HeaderValue> {
    let client = part
        .headers
        .iter()
        .find(|(name, _)| name == HEADER)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
        .map(str::trim);
    let (start, end) = (part.items.start, part.items.end);
    let key = match client {
        Some(key) if part.sole => key.to_string(),
        Some(key) => format!("{key}-{start}-{end}"),
        None => format!("{}-{start}-{end}", part.job_id),
    };
    HeaderValue::from_str(&key).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(key: Option<&str>, sole: bool, items: std::ops::Range<u64>) -> Dispatchable {
        Dispatchable {
            job_id: "j1".into(),
            headers: key
                .map(|k| vec![(HEADER.to_string(), k.as_bytes().to_vec())])
                .unwrap_or_default(),
            items,
            sole,
            ..Dispatchable::sample()
        }
    }

    #[test]
    fn the_client_key_goes_up_as_is_alone_and_suffixed_in_parts() {
        let key = |p: &Dispatchable| upstream_key(p).unwrap().to_str().unwrap().to_string();
        assert_eq!(key(&part(Some("order-7"), true, 0..1)), "order-7");
        assert_eq!(
            key(&part(Some("order-7"), false, 200..400)),
            "order-7-200-400"
        );
        assert_eq!(key(&part(None, true, 0..1)), "j1-0-1");
        assert_eq!(key(&part(None, false, 5..9)), "j1-5-9");
    }

    #[test]
    fn keys_are_one_printable_header() {
        let headers = |values: &[&[u8]]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append(HEADER, HeaderValue::from_bytes(v).unwrap());
            }
            h
        };
        assert_eq!(client_key(&HeaderMap::new()).unwrap(), None);
        assert_eq!(
            client_key(&headers(&[b" a b-1 "])).unwrap().as_deref(),
            Some("a b-1")
        );
        let long = vec![b'k'; MAX_LEN];
        assert!(client_key(&headers(&[&long])).unwrap().is_some());
        let too_long = vec![b'k'; MAX_LEN + 1];
        for bad in [
            headers(&[b""]),
            headers(&[b"  "]),
            headers(&[&too_long]),
            headers(&[b"caf\xc3\xa9"]),
            headers(&[b"a", b"b"]),
        ] {
            assert!(
                matches!(client_key(&bad), Err(IdempotencyError::BadKey)),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn the_hash_binds_method_path_and_body() {
        let h = request_hash(&Method::POST, "/a", b"{}");
        assert_eq!(h.len(), 32);
        assert_eq!(h, request_hash(&Method::POST, "/a", b"{}"));
        assert_ne!(h, request_hash(&Method::POST, "/a", b"{ }"));
        assert_ne!(h, request_hash(&Method::POST, "/b", b"{}"));
        assert_ne!(h, request_hash(&Method::PUT, "/a", b"{}"));
        // Fields are length-prefixed: moving bytes from path to body changes the hash.
        assert_ne!(
            request_hash(&Method::POST, "/a{", b"}"),
            request_hash(&Method::POST, "/a", b"{}")
        );
    }
}
