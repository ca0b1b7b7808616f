//! Errors the proxy makes itself, and their one mapping to the API's envelope.
//!
//! Inside the proxy, failures are typed ([`ProxyError`]); they become HTTP responses in
//! exactly one place ([`ProxyError::into_response`]), in the seed's envelope
//! `{"error": …, "message": …}`, so a client parses them like any API error. Messages say
//! what happened and what to do; none ever contains a key or a request body.

use axum::body::Body;
use http::{Response, StatusCode};

use crate::api::Envelope;

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("the messaging API at {upstream} could not be reached ({detail}) in {attempts} attempt(s). Nothing was sent; check the upstream URL and the network, then retry.")]
    UpstreamUnreachable {
        upstream: String,
        detail: String,
        attempts: u32,
    },
    #[error("the messaging API at {upstream} has been unreachable since {since}; sluice tests it {probe} and meanwhile answers at once. Nothing was sent; retry later (sends to sluice's queue are kept and go when it is back).")]
    UpstreamDown {
        upstream: String,
        since: String,
        probe: String,
    },
    #[error("the messaging API did not answer within {timeout_ms} ms. The request may or may not have been processed; check before sending it again.")]
    UpstreamTimeout { timeout_ms: u64 },
    #[error("the messaging API's response could not be read ({detail}). The request may or may not have been processed.")]
    UpstreamBody { detail: String },
    #[error("request body is larger than the {limit} bytes this proxy accepts (server.max_body_bytes). Split the request or raise the limit.")]
    BodyTooLarge { limit: u64 },
    #[error("the request body could not be read: {detail}")]
    ClientBody { detail: String },
    #[error("{detail}; nothing was done with this request. Send the body without pauses.")]
    ClientTooSlow { detail: String },
    #[error("the request body is sent with Content-Encoding {encoding:?}, which sluice cannot decode. Send it uncompressed, or compressed with gzip or deflate.")]
    UnsupportedEncoding { encoding: String },
    #[error("the request body could not be decoded as {encoding} (its Content-Encoding): {detail}. Send it uncompressed, or check how it is compressed.")]
    BadEncoding {
        encoding: &'static str,
        detail: String,
    },
    #[error("sluice forwards only to its configured messaging API; absolute-form request targets are refused. Send the path only (e.g. GET /api/v1/viber-services).")]
    AbsoluteForm,
    #[error("sluice forwards only to its configured messaging API; CONNECT tunnels are refused.")]
    Connect,
}

// === impl ProxyError ===

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            Self::UpstreamUnreachable { .. }
            | Self::UpstreamDown { .. }
            | Self::UpstreamBody { .. } => StatusCode::BAD_GATEWAY,
            Self::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            Self::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::ClientBody { .. } | Self::BadEncoding { .. } | Self::AbsoluteForm => {
                StatusCode::BAD_REQUEST
            }
            Self::UnsupportedEncoding { .. } => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Connect => StatusCode::METHOD_NOT_ALLOWED,
            Self::ClientTooSlow { .. } => StatusCode::REQUEST_TIMEOUT,
        }
    }

    /// The envelope's `error` field: the status's reason phrase, as the API uses it.
    fn title(&self) -> &'static str {
        self.status().canonical_reason().unwrap_or("Error")
    }

    /// A failure reading the client's body: too slow (408, see [`crate::edge::layers`]) or
    /// broken (400).
    pub fn client_body(e: &(dyn std::error::Error + 'static)) -> Self {
        if crate::edge::layers::is_slow_body(e) {
            Self::ClientTooSlow {
                detail: e.to_string(),
            }
        } else {
            Self::ClientBody {
                detail: e.to_string(),
            }
        }
    }

    /// The one mapping from an internal error to what the client sees.
    pub fn into_response(self) -> Response<Body> {
        let status = self.status();
        Envelope::new(self.title(), self.to_string()).into_response(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    #[tokio::test]
    async fn maps_to_the_seed_envelope() {
        let resp = ProxyError::BodyTooLarge { limit: 10 }.into_response();
        assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        let env: Envelope = serde_json::from_slice(&body).unwrap();
        assert_eq!(env.error, "Payload Too Large");
        assert!(env.message.contains("10 bytes"));
        let resp = ProxyError::UpstreamTimeout { timeout_ms: 5 }.into_response();
        assert_eq!(resp.status(), StatusCode::GATEWAY_TIMEOUT);
        let unreachable = ProxyError::UpstreamUnreachable {
            upstream: "http://x".into(),
            detail: "refused".into(),
            attempts: 2,
        };
        assert_eq!(unreachable.status(), StatusCode::BAD_GATEWAY);
        assert!(unreachable.to_string().contains("in 2 attempt(s)"));
        assert!(!unreachable.to_string().contains("deadline"));
    }
}
