//! The client side toward the messaging API: one pooled HTTP(S) client, one base URL.
//!
//! The proxy never talks to any other host: every request's target is built here from
//! the configured base URL plus the client's path and query. TLS is rustls with the ring
//! provider and the webpki root store (no OpenSSL, no aws-lc). Each attempt is bounded by
//! `request_timeout`, and failures are sorted into what the retry policy needs to know:
//! the connection never opened (safe to retry), the API did not answer in time, or the
//! exchange broke.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use http::uri::{PathAndQuery, Scheme};
use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::config::UpstreamConfig;
use crate::retry::{Breaker, Change, Outcome, Pass};

/// The pooled client and the base URL every request goes to.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpsConnector<HttpConnector>, Body>,
    scheme: Scheme,
    authority: http::uri::Authority,
    /// Path prefix of the base URL without a trailing slash ("" for none).
    prefix: String,
    request_timeout: Duration,
    display: String,
    /// Whether the API can be reached at all; shared by the proxy and the queue.
    breaker: Arc<Breaker>,
}

/// Why one attempt produced no response.
#[derive(Debug, thiserror::Error)]
pub enum AttemptError {
    #[error("connection failed: {0}")]
    Connect(String),
    #[error("no response within {0:?}")]
    Timeout(Duration),
    #[error("exchange failed: {0}")]
    Exchange(String),
    #[error("request body exceeded the size limit")]
    BodyTooLarge,
}

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("upstream.url {0:?} is not a usable base URL")]
    Url(String),
    #[error("TLS setup failed: {0}")]
    Tls(String),
}

// === impl Upstream ===

impl Upstream {
    pub fn new(cfg: &UpstreamConfig) -> Result<Self, BuildError> {
        let base: Uri = cfg
            .url
            .parse()
            .map_err(|_| BuildError::Url(cfg.url.clone()))?;
        let (Some(scheme), Some(authority)) = (base.scheme().cloned(), base.authority().cloned())
        else {
            return Err(BuildError::Url(cfg.url.clone()));
        };
        let prefix = base.path().trim_end_matches('/').to_string();

        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_millis(cfg.connect_timeout_ms)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| BuildError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .pool_idle_timeout(Duration::from_millis(cfg.pool_idle_timeout_ms))
            .build(connector);
        Ok(Self {
            client,
            scheme,
            authority,
            prefix,
            request_timeout: Duration::from_millis(cfg.request_timeout_ms),
            display: cfg.url.clone(),
            breaker: Arc::new(Breaker::new(
                Duration::from_millis(cfg.outage_probe_base_ms),
                Duration::from_millis(cfg.outage_probe_max_ms),
            )),
        })
    }

    /// Whether the API can be reached; see [`Breaker`].
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// The base URL, for messages (it holds no secret).
    pub fn display(&self) -> &str {
        &self.display
    }

    pub fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// The absolute upstream URI for a client's path and query.
    pub fn uri_for(&self, path_and_query: Option<&PathAndQuery>) -> Uri {
        let pq = path_and_query.map(PathAndQuery::as_str).unwrap_or("/");
        let builder = Uri::builder()
            .scheme(self.scheme.clone())
            .authority(self.authority.clone());
        let builder = match path_and_query {
            // No prefix: the client's own (already parsed) path and query, not a copy.
            Some(pq) if self.prefix.is_empty() => builder.path_and_query(pq.clone()),
            _ => builder.path_and_query(format!("{}{}", self.prefix, pq)),
        };
        builder
            .build()
            // Scheme and authority come from a parsed URI and the path from one too.
            .unwrap_or_else(|_| Uri::from_static("/"))
    }

    /// Sends one attempt and waits (bounded) for the response headers.
    pub async fn send(&self, req: Request<Body>) -> Result<Response<Incoming>, AttemptError> {
        match tokio::time::timeout(self.request_timeout, self.client.request(req)).await {
            Err(_) => Err(AttemptError::Timeout(self.request_timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(AttemptError::Connect(error_chain(&e))),
            Ok(Err(e)) if is_length_limit(&e) => Err(AttemptError::BodyTooLarge),
            Ok(Err(e)) => Err(AttemptError::Exchange(error_chain(&e))),
        }
    }
}

// === impl AttemptError ===

impl AttemptError {
    /// What the retry policy sees of this failure.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Connect(_) => Outcome::Connect,
            Self::Timeout(_) => Outcome::Timeout,
            Self::Exchange(_) | Self::BodyTooLarge => Outcome::Body,
        }
    }
}

/// Tells the breaker whether an attempt with `outcome` reached the API (a response, or a
/// connection that was made), and logs an outage's start and end. Returns what changed.
pub fn report(pass: Pass, outcome: Outcome) -> Change {
    if matches!(outcome, Outcome::Connect) {
        let (change, wait) = pass.unreachable();
        if change == Change::Opened {
            tracing::warn!(
                probe_in_ms = wait.as_millis() as u64,
                "the messaging API cannot be reached; sends wait and one probe at a time tests it"
            );
        }
        change
    } else {
        let change = pass.reached();
        if let Change::Closed { since } = change {
            let secs = since.elapsed().map_or(0.0, |d| d.as_secs_f64());
            tracing::warn!(
                outage_secs = secs,
                "the messaging API is reachable again; sending resumes"
            );
        }
        change
    }
}

/// `a: b: c` from an error and its sources, for messages a person can act on.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

fn is_length_limit(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut src: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = src {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        src = s.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(url: &str) -> Upstream {
        let cfg = UpstreamConfig {
            url: url.into(),
            ..UpstreamConfig::default()
        };
        Upstream::new(&cfg).unwrap()
    }

    #[test]
    fn target_is_always_the_configured_base() {
        let up = upstream("https://api.example.test/base/");
        let pq: PathAndQuery = "/api/v1/messages?phoneNumber=1".parse().unwrap();
        assert_eq!(
            up.uri_for(Some(&pq)).to_string(),
            "https://api.example.test/base/api/v1/messages?phoneNumber=1"
        );
        let up = upstream("http://127.0.0.1:9");
        assert_eq!(up.uri_for(None).to_string(), "http://127.0.0.1:9/");
    }
}
