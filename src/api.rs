//! The provider API's wire shapes, exactly as its error page fixes them.
//!
//! Everything that must match the seed (`errors-and-troubleshooting.txt`) byte for byte
//! lives here: the error envelope, the 429 body and the seed's fixed messages. The proxy
//! (for errors it makes itself) and the simulator (for errors it plays back) both build
//! their bodies from this one place, so they cannot drift apart.

use std::collections::BTreeMap;

use axum::body::Body;
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use serde::{Deserialize, Serialize};

/// The seed's error envelope: `{"error": …, "message": …, "validationErrors": {…}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    pub error: String,
    pub message: String,
    #[serde(
        rename = "validationErrors",
        skip_serializing_if = "Option::is_none",
        default
    )]
    pub validation_errors: Option<BTreeMap<String, String>>,
}

/// The body of a 429 for pending-message capacity, field for field as the seed shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RateLimitBody {
    pub error: String,
    pub message: String,
    pub current_pending: u64,
    pub requested_count: u64,
    pub max_allowed: u64,
    pub available_capacity: u64,
    pub retry_after_seconds: u64,
}

/// The seed's fixed texts, so that no caller retypes them.
pub mod text {
    pub const UNAUTHORIZED: &str = "Unauthorized";
    pub const MISSING_KEY: &str =
        "Missing or invalid X-API-Key header. Please provide a valid API key.";
    pub const INVALID_KEY: &str = "Invalid or revoked API key. Please check your credentials.";
    pub const BAD_REQUEST: &str = "Bad Request";
    pub const NOT_FOUND: &str = "Not Found";
    pub const TEMPLATE_NOT_FOUND: &str = "Template not found or access denied";
    pub const CAMPAIGN_NOT_FOUND: &str = "Campaign not found";
    pub const INVALID_PHONE: &str = "Invalid phone number format";
    pub const PHONE_RULE: &str = "Phone number must be 10-15 digits";
    pub const TOO_MANY_RECIPIENTS: &str = "Maximum 200000 recipients allowed per request";
    pub const IMAGE_NOT_ACCESSIBLE: &str = "Image URL is not accessible";
    pub const MEDIA_RULE: &str = "URL must be HTTPS and publicly accessible";
    pub const CAMPAIGN_NOT_ACTIVE: &str = "Campaign is not active";
    pub const BULK_CAMPAIGN: &str = "Cannot add messages to bulk campaign";
    pub const TEMPLATE_VALIDATION: &str = "Template validation failed";
    pub const RATE_LIMITED: &str = "Rate limit exceeded";
    pub const INTERNAL: &str = "Internal Server Error";
}

// === impl Envelope ===

impl Envelope {
    pub fn new(error: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            error: error.into(),
            message: message.into(),
            validation_errors: None,
        }
    }

    pub fn with_validation(mut self, errors: BTreeMap<String, String>) -> Self {
        self.validation_errors = Some(errors);
        self
    }

    /// The envelope as a complete JSON response with the given status.
    pub fn into_response(self, status: StatusCode) -> Response<Body> {
        json_response(status, &self)
    }
}

// === impl RateLimitBody ===

impl RateLimitBody {
    /// Builds the 429 body with the seed's message text, computed from the numbers.
    pub fn new(current_pending: u64, requested: u64, max_allowed: u64, retry_after: u64) -> Self {
        let available = max_allowed.saturating_sub(current_pending);
        Self {
            error: text::RATE_LIMITED.to_string(),
            message: format!(
                "Too many pending messages. You have {current_pending} pending messages and \
                 requested {requested} more. Maximum allowed: {max_allowed}. \
                 Available capacity: {available}."
            ),
            current_pending,
            requested_count: requested,
            max_allowed,
            available_capacity: available,
            retry_after_seconds: retry_after,
        }
    }
}

/// Serialises `value` as the body of a JSON response.
pub fn json_response<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    // Serialising our own plain structs cannot fail; an empty object is a safe fallback.
    let bytes = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut resp = Response::new(Body::from(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limit_body_matches_the_seed_byte_for_byte() {
        let body = RateLimitBody::new(48500, 5000, 50000, 30);
        let json = serde_json::to_string(&body).unwrap();
        assert_eq!(
            json,
            r#"{"error":"Rate limit exceeded","message":"Too many pending messages. You have 48500 pending messages and requested 5000 more. Maximum allowed: 50000. Available capacity: 1500.","currentPending":48500,"requestedCount":5000,"maxAllowed":50000,"availableCapacity":1500,"retryAfterSeconds":30}"#
        );
    }

    #[test]
    fn envelope_omits_absent_validation_errors() {
        let json = serde_json::to_string(&Envelope::new("Unauthorized", "x")).unwrap();
        assert_eq!(json, r#"{"error":"Unauthorized","message":"x"}"#);
    }
}
