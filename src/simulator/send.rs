//! The two send endpoints and the 429 they can answer.
//!
//! `POST /api/v1/campaigns/{id}/bulk/{sms|viber}` takes `{"recipients": [...]}` and
//! answers 202 `{"campaignId", "acceptedCount"}`; `POST .../messages/{sms|viber}` takes
//! `{"phoneNumber": "...", "variables": {...}}` and answers 201
//! `{"messageId", "status": "Pending"}`. Both run the checks in the order the module
//! documentation lists, then ask the state to accept the whole send or refuse it for
//! capacity. The 429 carries the seed's body and the retry hint as [`HintMode`] says.
//!
//! Once a send is processed (accepted or refused), its answer may be held back
//! (`answer_delay`) and then replaced by a connection reset (`reset_rate`): see
//! `faults.rs` for the decision and `serve.rs` for the reset itself.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::{Path, State};
use axum::response::Response;
use bytes::Bytes;
use http::{header, HeaderValue, StatusCode};
use serde::Serialize;
use tokio::time::Instant;

use super::handlers::{bad_request, invalid_phone, not_found_message, parse_id, ApiKey};
use super::model::{Channel, Id};
use super::phone::PhoneKey;
use super::serve::ResetConnection;
use super::state::{Accepted, SendError, SendKind};
use super::validate::{self, PhoneError};
use super::{HintMode, SimConfig, Simulator};
use crate::api::{json_response, text, Envelope, RateLimitBody};

/// The seed's 429 body without `retryAfterSeconds`, fields in the seed's order, for the
/// hint modes that do not put the hint in the body.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct RateLimitBodyWithoutHint<'a> {
    error: &'a str,
    message: &'a str,
    current_pending: u64,
    requested_count: u64,
    max_allowed: u64,
    available_capacity: u64,
}

/// The 202 of a bulk send.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct BulkAccepted {
    campaign_id: Id,
    accepted_count: u64,
}

/// The 201 of a single send.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct MessageAccepted {
    message_id: String,
    status: &'static str,
}

/// The campaign a send goes to, checked for this kind of send (the channel of the path,
/// bulk or not), or the API's answer refusing it.
#[allow(clippy::result_large_err)]
fn campaign_for(
    sim: &Simulator,
    key: &str,
    id: &str,
    channel: &str,
    bulk: bool,
) -> Result<(Id, SendKind), Response> {
    let Some(channel) = Channel::parse(channel) else {
        return Err(no_such_channel(channel));
    };
    let kind = SendKind { bulk, channel };
    match target(sim, key, id, kind) {
        Ok(id) => Ok((id, kind)),
        Err(e) => Err(send_error(sim.config(), e)),
    }
}

/// `POST /api/v1/campaigns/{id}/bulk/{channel}`.
pub async fn bulk(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    Path((id, channel)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let answer = process_bulk(&sim, &key, &id, &channel, body);
    finish(&sim, answer).await
}

/// `POST /api/v1/campaigns/{id}/messages/{channel}`.
pub async fn single(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    Path((id, channel)): Path<(String, String)>,
    body: Bytes,
) -> Response {
    let answer = process_single(&sim, &key, &id, &channel, &body);
    finish(&sim, answer).await
}

/// Stages the send faults on a processed send's answer: holds it back `answer_delay`,
/// then marks it for a connection reset if the draw says so (`serve.rs` drops the
/// connection instead of answering).
async fn finish(sim: &Simulator, mut answer: Response) -> Response {
    let fate = sim.send_fate();
    if !fate.delay.is_zero() {
        sim.stats_mut().delayed_answer();
        tokio::time::sleep(fate.delay).await;
    }
    if fate.reset {
        sim.stats_mut().reset();
        answer.extensions_mut().insert(ResetConnection);
    }
    answer
}

/// A bulk send, processed: accepted whole or refused.
fn process_bulk(sim: &Simulator, key: &str, id: &str, channel: &str, body: Bytes) -> Response {
    let (id, kind) = match campaign_for(sim, key, id, channel, true) {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let obj = match validate::object(&body) {
        Ok(obj) => obj,
        Err(message) => return bad_request(message),
    };
    let items = match validate::recipients(&obj) {
        Ok(items) => items,
        Err(message) => return bad_request(message),
    };
    sim.stats_mut().batch(key, items.len() as u64);
    let max = sim.config().max_recipients;
    if items.len() > max {
        // The seed's text names the provider's limit; say the configured one.
        let message = text::TOO_MANY_RECIPIENTS.replace("200000", &max.to_string());
        return bad_request(message);
    }
    if items.is_empty() {
        return bad_request("At least one recipient is required");
    }
    let phones = match validate::phones(items).and_then(|p| validate::send_media(&obj).map(|()| p))
    {
        Ok(phones) => phones,
        Err(e) => return phone_error(e),
    };
    drop(obj);
    match accept(sim, key, id, kind, &phones) {
        Ok(accepted) => json_response(
            StatusCode::ACCEPTED,
            &BulkAccepted {
                campaign_id: id,
                accepted_count: accepted.count,
            },
        ),
        Err(e) => send_error(sim.config(), e),
    }
}

/// A single send, processed: accepted or refused.
fn process_single(sim: &Simulator, key: &str, id: &str, channel: &str, body: &[u8]) -> Response {
    let (id, kind) = match campaign_for(sim, key, id, channel, false) {
        Ok(found) => found,
        Err(resp) => return resp,
    };
    let phone = match validate::single_phone(body) {
        Ok(phone) => phone,
        Err(e) => return phone_error(e),
    };
    sim.stats_mut().batch(key, 1);
    match accept(sim, key, id, kind, &[phone]) {
        Ok(accepted) => json_response(
            StatusCode::CREATED,
            &MessageAccepted {
                message_id: accepted.first_message_id,
                status: "Pending",
            },
        ),
        Err(e) => send_error(sim.config(), e),
    }
}

/// 404 for a send path whose channel segment is neither `sms` nor `viber`.
fn no_such_channel(channel: &str) -> Response {
    let message = format!("No such send channel: {channel:?} (expected sms or viber)");
    not_found_message(&message)
}

/// Resolves the campaign id and runs the campaign checks (exists and is the key's,
/// InProgress, type, channel).
fn target(sim: &Simulator, key: &str, id: &str, kind: SendKind) -> Result<Id, SendError> {
    let id = parse_id(id).ok_or(SendError::CampaignNotFound)?;
    sim.state().check_send(key, id, kind)?;
    Ok(id)
}

/// Accepts the send whole or refuses it, and counts either in the stats.
fn accept(
    sim: &Simulator,
    key: &str,
    id: Id,
    kind: SendKind,
    phones: &[PhoneKey],
) -> Result<Accepted, SendError> {
    let now = Instant::now();
    let result = sim
        .state()
        .accept(key, id, kind, phones, now, SystemTime::now());
    let mut stats = sim.stats_mut();
    match &result {
        Ok(a) => stats.accepted(a.count, a.distinct_new, a.duplicates),
        Err(SendError::OverCapacity { .. }) => {
            let hint = Duration::from_secs(sim.config().retry_after);
            stats.rate_limited(key, now, hint);
        }
        Err(_) => {}
    }
    result
}

/// The seed's 400, 404 or 429 for a refused send.
fn send_error(cfg: &SimConfig, error: SendError) -> Response {
    let bad = |error: &str, message: String| {
        Envelope::new(error, message).into_response(StatusCode::BAD_REQUEST)
    };
    match error {
        SendError::CampaignNotFound => not_found_message(text::CAMPAIGN_NOT_FOUND),
        SendError::NotActive(status) => bad(
            text::CAMPAIGN_NOT_ACTIVE,
            format!(
                "Campaign status is {status}. Messages can only be added to InProgress \
                 campaigns."
            ),
        ),
        SendError::BulkCampaign => bad(text::BAD_REQUEST, text::BULK_CAMPAIGN.into()),
        SendError::NotBulk => bad(
            text::BAD_REQUEST,
            "Cannot send bulk messages to a transactional campaign. Add messages \
             individually with POST /api/v1/campaigns/{id}/messages/{sms|viber}."
                .into(),
        ),
        SendError::WrongChannel(Channel::Sms) => {
            bad(text::BAD_REQUEST, "Campaign is not an SMS campaign".into())
        }
        SendError::WrongChannel(Channel::Viber) => {
            bad(text::BAD_REQUEST, "Campaign is not a Viber campaign".into())
        }
        SendError::OverCapacity {
            pending,
            requested,
            max_allowed,
        } => rate_limited(cfg, pending, requested, max_allowed),
    }
}

fn phone_error(error: PhoneError) -> Response {
    match error {
        PhoneError::Malformed(message) => bad_request(message),
        PhoneError::Invalid => invalid_phone(),
        PhoneError::Media(errors) => crate::validate::Rejection::send(errors).into_response(),
    }
}

/// The 429: the seed's body, with the retry hint where `cfg.hint` puts it.
fn rate_limited(cfg: &SimConfig, pending: u64, requested: u64, max: u64) -> Response {
    let body = RateLimitBody::new(pending, requested, max, cfg.retry_after);
    let mut response = match cfg.hint {
        HintMode::Both | HintMode::Body => json_response(StatusCode::TOO_MANY_REQUESTS, &body),
        HintMode::Header | HintMode::Date | HintMode::None => json_response(
            StatusCode::TOO_MANY_REQUESTS,
            &RateLimitBodyWithoutHint {
                error: &body.error,
                message: &body.message,
                current_pending: body.current_pending,
                requested_count: body.requested_count,
                max_allowed: body.max_allowed,
                available_capacity: body.available_capacity,
            },
        ),
    };
    let header = match cfg.hint {
        HintMode::Both | HintMode::Header => Some(HeaderValue::from(cfg.retry_after)),
        HintMode::Date => HeaderValue::try_from(retry_date(cfg.retry_after)).ok(),
        HintMode::Body | HintMode::None => None,
    };
    if let Some(value) = header {
        response.headers_mut().insert(header::RETRY_AFTER, value);
    }
    response
}

/// The HTTP-date `secs` seconds from now, rounded up to a whole second so that it is
/// never earlier than the hint meant.
fn retry_date(secs: u64) -> String {
    let at = SystemTime::now() + Duration::from_secs(secs);
    let fraction = at
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let at = if fraction > 0 {
        at + Duration::from_nanos(u64::from(1_000_000_000 - fraction))
    } else {
        at
    };
    httpdate::fmt_http_date(at)
}

#[cfg(test)]
mod tests {
    use axum::response::IntoResponse;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_waits_the_delay_then_a_reset_replaces_it() {
        let sim = Simulator::new(SimConfig {
            answer_delay: Duration::from_secs(5),
            reset_rate: 1.0,
            ..SimConfig::default()
        });
        let start = Instant::now();
        let answer = finish(&sim, StatusCode::CREATED.into_response()).await;
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(answer.status(), StatusCode::CREATED);
        assert!(answer.extensions().get::<ResetConnection>().is_some());
        let stats = sim.stats();
        assert_eq!((stats.delayed_answers, stats.resets), (1, 1));

        sim.set_answer_delay(Duration::ZERO);
        sim.set_reset_rate(0.0);
        let start = Instant::now();
        let answer = finish(&sim, StatusCode::CREATED.into_response()).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        assert!(answer.extensions().get::<ResetConnection>().is_none());
        let stats = sim.stats();
        assert_eq!((stats.delayed_answers, stats.resets), (1, 1));
    }
}
