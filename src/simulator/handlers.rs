//! The HTTP side of everything but the two send endpoints (those are in `send.rs`):
//! authentication, templates, campaigns, the messages query, the stats endpoint, the
//! JSON 404/405 and the middleware that adds latency and counts responses.
//!
//! Handlers stay thin: parse with `validate.rs`, lock the state once, render the result
//! with the seed's envelope from [`crate::api`].

use std::collections::HashMap;

use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::request::Parts;
use http::{HeaderMap, Method, StatusCode, Uri};
use tokio::time::Instant;

use super::model::{Id, VIBER_SERVICES};
use super::serve::ResetConnection;
use super::state::{CampaignError, Errors};
use super::validate::{self, Rejected};
use super::Simulator;
use crate::api::{json_response, text, Envelope};

/// The authenticated caller's API key (the company). Extracting it runs the checks
/// every API request starts with: the key, then failure injection.
pub struct ApiKey(pub String);

// === impl ApiKey ===

impl FromRequestParts<Simulator> for ApiKey {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, sim: &Simulator) -> Result<Self, Response> {
        let key = authenticate(sim, &parts.headers).map_err(|message| {
            Envelope::new(text::UNAUTHORIZED, message).into_response(StatusCode::UNAUTHORIZED)
        })?;
        if sim.inject_failure() {
            sim.stats_mut().injected_failure();
            let message = "Simulated transient failure: the request was not processed and \
                           nothing was accepted. Retry the same request later.";
            return Err(Envelope::new(text::INTERNAL, message)
                .into_response(StatusCode::INTERNAL_SERVER_ERROR));
        }
        Ok(ApiKey(key))
    }
}

/// The caller's key, or the seed's 401 message: missing or blank `X-API-Key` →
/// MISSING_KEY; anything but an exact configured key (surrounding whitespace included)
/// → INVALID_KEY.
fn authenticate(sim: &Simulator, headers: &HeaderMap) -> Result<String, &'static str> {
    let Some(value) = headers.get("x-api-key") else {
        return Err(text::MISSING_KEY);
    };
    if value.as_bytes().iter().all(u8::is_ascii_whitespace) {
        return Err(text::MISSING_KEY);
    }
    match value.to_str() {
        Ok(key) if sim.state().is_known(key) => Ok(key.to_owned()),
        _ => Err(text::INVALID_KEY),
    }
}

/// Middleware on every API route: adds the configured latency, counts the response (not
/// one that will be a connection reset: nothing is answered).
/// Logs method, path and status (never headers, so never the key, nor the query).
pub async fn track(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let latency = sim.config().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let response = next.run(req).await;
    let status = response.status().as_u16();
    if response.extensions().get::<ResetConnection>().is_some() {
        tracing::debug!(%method, %path, status, "simulator resets the connection instead");
    } else {
        sim.stats_mut().response(status);
        tracing::debug!(%method, %path, status, "simulator answered");
    }
    response
}

/// Middleware on the send routes: counts every send request, whatever its outcome.
pub async fn count_send(State(sim): State<Simulator>, req: Request, next: Next) -> Response {
    sim.stats_mut().send();
    next.run(req).await
}

/// `GET /_sim/stats`.
pub async fn stats(State(sim): State<Simulator>) -> Response {
    json_response(StatusCode::OK, &sim.stats())
}

/// Any path the API does not have.
pub async fn not_found(method: Method, uri: Uri) -> Response {
    let message = format!("No such endpoint: {method} {}", uri.path());
    Envelope::new(text::NOT_FOUND, message).into_response(StatusCode::NOT_FOUND)
}

/// A known path with a method it does not take.
pub async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let message = format!("{} does not accept {method}", uri.path());
    Envelope::new("Method Not Allowed", message).into_response(StatusCode::METHOD_NOT_ALLOWED)
}

/// `GET /api/v1/viber-services`.
pub async fn viber_services(_key: ApiKey) -> Response {
    json_response(StatusCode::OK, &VIBER_SERVICES)
}

/// `POST /api/v1/templates`.
pub async fn create_template(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    body: Bytes,
) -> Response {
    let (draft, errors) = match validate::template(&body) {
        Ok(checked) => checked,
        Err(message) => return bad_request(message),
    };
    let created = sim.state().create_template(&key, draft, errors);
    match created {
        Ok(template) => json_response(StatusCode::CREATED, &template),
        Err(errors) => template_invalid(errors),
    }
}

/// `GET /api/v1/templates/{id}`.
pub async fn get_template(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    Path(id): Path<String>,
) -> Response {
    let found = parse_id(&id).and_then(|id| sim.state().template(&key, id));
    match found {
        Some(template) => json_response(StatusCode::OK, &template),
        None => not_found_message(text::TEMPLATE_NOT_FOUND),
    }
}

/// `DELETE /api/v1/templates/{id}`.
pub async fn delete_template(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    Path(id): Path<String>,
) -> Response {
    let deleted = parse_id(&id).is_some_and(|id| sim.state().delete_template(&key, id));
    if deleted {
        StatusCode::NO_CONTENT.into_response()
    } else {
        not_found_message(text::TEMPLATE_NOT_FOUND)
    }
}

/// `POST /api/v1/campaigns`.
pub async fn create_campaign(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    body: Bytes,
) -> Response {
    let draft = match validate::campaign(&body) {
        Ok(draft) => draft,
        Err(Rejected::Malformed(message)) => return bad_request(message),
        Err(Rejected::Invalid(errors)) => return campaign_invalid(errors),
    };
    let created = sim.state().create_campaign(&key, draft);
    match created {
        Ok(campaign) => json_response(StatusCode::CREATED, &campaign),
        Err(CampaignError::TemplateNotFound) => not_found_message(text::TEMPLATE_NOT_FOUND),
        Err(CampaignError::Invalid(errors)) => campaign_invalid(errors),
    }
}

/// `GET /api/v1/campaigns/{id}`.
pub async fn get_campaign(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    Path(id): Path<String>,
) -> Response {
    let found = parse_id(&id).and_then(|id| sim.state().campaign(&key, id, Instant::now()));
    match found {
        Some(campaign) => json_response(StatusCode::OK, &campaign),
        None => not_found_message(text::CAMPAIGN_NOT_FOUND),
    }
}

/// `POST /api/v1/campaigns/{id}/start`.
pub async fn start_campaign(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    Path(id): Path<String>,
) -> Response {
    let started = parse_id(&id).and_then(|id| sim.state().start_campaign(&key, id, Instant::now()));
    match started {
        Some(campaign) => json_response(StatusCode::OK, &campaign),
        None => not_found_message(text::CAMPAIGN_NOT_FOUND),
    }
}

/// `GET /api/v1/messages?phoneNumber=…[&campaignId=…]`.
pub async fn messages(
    State(sim): State<Simulator>,
    ApiKey(key): ApiKey,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Response {
    let Ok(Query(query)) = query else {
        return bad_request("The query string could not be parsed");
    };
    let Some(raw) = query.get("phoneNumber") else {
        return bad_request("The phoneNumber query parameter is required");
    };
    let Some(phone) = validate::query_phone(raw) else {
        return invalid_phone();
    };
    let campaign = match query.get("campaignId").map(|id| parse_id(id)) {
        None => None,
        Some(Some(id)) => Some(id),
        Some(None) => return not_found_message(text::CAMPAIGN_NOT_FOUND),
    };
    let found = sim.state().messages(&key, phone, campaign, Instant::now());
    match found {
        Some(messages) => json_response(StatusCode::OK, &messages),
        None => not_found_message(text::CAMPAIGN_NOT_FOUND),
    }
}

/// A path id: ids are decimal integers; anything else names nothing (so: 404).
pub fn parse_id(text: &str) -> Option<Id> {
    text.parse().ok()
}

/// 400 Bad Request with `message`.
pub fn bad_request(message: impl Into<String>) -> Response {
    Envelope::new(text::BAD_REQUEST, message).into_response(StatusCode::BAD_REQUEST)
}

/// 404 Not Found with one of the seed's messages.
pub fn not_found_message(message: &str) -> Response {
    Envelope::new(text::NOT_FOUND, message).into_response(StatusCode::NOT_FOUND)
}

/// The seed's 400 for a phone number that breaks the 10-15 digits rule.
pub fn invalid_phone() -> Response {
    let rule = Errors::from([("phoneNumber".to_string(), text::PHONE_RULE.to_string())]);
    Envelope::new(text::BAD_REQUEST, text::INVALID_PHONE)
        .with_validation(rule)
        .into_response(StatusCode::BAD_REQUEST)
}

/// The seed's template 400s: "Image URL is not accessible" when media URLs are the only
/// problem, else "Template validation failed" with every field's error (the proxy's
/// answer too: [`crate::validate::Rejection::template`]).
fn template_invalid(errors: Errors) -> Response {
    crate::validate::Rejection::template(errors).into_response()
}

fn campaign_invalid(errors: Errors) -> Response {
    Envelope::new(text::BAD_REQUEST, "Campaign validation failed")
        .with_validation(errors)
        .into_response(StatusCode::BAD_REQUEST)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::SimConfig;

    fn headers(key: &'static str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert("x-api-key", http::HeaderValue::from_static(key));
        map
    }

    #[test]
    fn only_an_exact_configured_key_authenticates() {
        let sim = Simulator::new(SimConfig::default());
        assert_eq!(
            authenticate(&sim, &headers("demo-key")),
            Ok("demo-key".into())
        );
        assert_eq!(
            authenticate(&sim, &HeaderMap::new()),
            Err(text::MISSING_KEY)
        );
        assert_eq!(authenticate(&sim, &headers("")), Err(text::MISSING_KEY));
        assert_eq!(authenticate(&sim, &headers(" \t ")), Err(text::MISSING_KEY));
        // The API wants no surrounding whitespace; trimming is the proxy's job.
        assert_eq!(
            authenticate(&sim, &headers(" demo-key")),
            Err(text::INVALID_KEY)
        );
        assert_eq!(
            authenticate(&sim, &headers("demo-key\t")),
            Err(text::INVALID_KEY)
        );
        assert_eq!(
            authenticate(&sim, &headers("Demo-Key")),
            Err(text::INVALID_KEY)
        );
    }
}
