//! A route's `validation` mode applied to what a check found, and the template route.
//!
//! [`Gate::apply`] is the one place that decides what a [`Rejection`] does:
//! - `enforce`: the client gets the seed's 400; `sluice_validation_rejections_total`
//!   counts it by field; nothing is stored or sent;
//! - `warn`: a warning is logged (route and fields, never values: phone numbers stay out
//!   of logs), `sluice_validation_warnings_total` counts it, and the request goes on as if
//!   nothing was found, so the API gives its own answer;
//! - `off`: callers do not run the checks at all. (A bulk body must still be one JSON
//!   object with a recipients array, or it cannot be split: the splitter's refusals stand
//!   in every mode, and are counted here, by [`Gate::refuse`], only where validation is
//!   on.)
//!
//! [`template`] is the handler half of a `template` route: it checks a template creation
//! with the template rules, then gives the request back, body unchanged, to be passed
//! through (template creations are not queued).

use axum::body::Body;
use axum::extract::Request;
use http::{HeaderMap, Response};

use super::{json, template as rules, Mode, Rejection};
use crate::edge::body;
use crate::keys::apikey::{self, ApiKey};
use crate::metrics::Metrics;
use crate::routes::Route;

/// A route's validation settings with the metrics they feed.
pub struct Gate<'a> {
    route: &'a Route,
    metrics: &'a Metrics,
}

impl<'a> Gate<'a> {
    pub fn new(route: &'a Route, metrics: &'a Metrics) -> Self {
        Self { route, metrics }
    }

    /// True when the route's checks are to run at all.
    pub fn checks(&self) -> bool {
        self.route.validation != Mode::Off
    }

    /// What the route's mode makes of a check's outcome: `Ok` to go on, `Err` with the
    /// 400 to answer.
    // The error is the answer itself, made once per refused request and moved once to
    // the client; boxing it would only add an allocation.
    #[allow(clippy::result_large_err)]
    pub fn apply(&self, outcome: Result<(), Rejection>) -> Result<(), Response<Body>> {
        let Err(rejection) = outcome else {
            return Ok(());
        };
        if self.route.validation == Mode::Warn {
            self.warn(&rejection);
            return Ok(());
        }
        Err(self.refuse(rejection))
    }

    /// Counts and logs a refusal and makes its 400, whatever the mode.
    pub fn refuse(&self, rejection: Rejection) -> Response<Body> {
        let fields = rejection.labels();
        for field in &fields {
            self.metrics
                .validation_rejections
                .with_label_values(&[self.route.name.as_str(), field])
                .inc();
        }
        tracing::info!(route = %self.route.name, ?fields, "request refused by validation");
        rejection.into_response()
    }

    /// Checks the request's Content-Type ([`json::content_type`]) under the route's mode.
    /// `Ok(true)`: a lenient type; call [`Gate::lenient`] once the body is accepted.
    #[allow(clippy::result_large_err)]
    pub fn content_type(&self, headers: &HeaderMap) -> Result<bool, Response<Body>> {
        match json::content_type(headers) {
            Ok(found) => Ok(found == json::ContentType::Lenient),
            Err(rejection) => self.apply(Err(rejection)).map(|()| false),
        }
    }

    /// Counts a request accepted with a lenient Content-Type.
    pub fn lenient(&self) {
        self.metrics
            .lenient_content_type
            .with_label_values(&[&self.route.name])
            .inc();
    }

    /// Counts `n` recipients skipped from an accepted bulk send.
    pub fn skipped(&self, n: usize) {
        self.metrics
            .validation_skipped
            .with_label_values(&[&self.route.name])
            .inc_by(n as u64);
    }

    fn warn(&self, rejection: &Rejection) {
        let fields = rejection.labels();
        for field in &fields {
            self.metrics
                .validation_warnings
                .with_label_values(&[self.route.name.as_str(), field])
                .inc();
        }
        tracing::warn!(
            route = %self.route.name,
            ?fields,
            "request breaks the API's rules; sending it anyway (validation = \"warn\")"
        );
    }
}

/// Checks a request on a `template` route. `Ok` gives the request back to be passed
/// through, with the same body (decoded, when it came with a `Content-Encoding`: see
/// [`crate::edge::body`]); `Err` is the answer (the seed's 400, a 413 for a body over
/// `max_body`, a 415 for a coding sluice cannot undo). Requests without any API key are not checked: the API's 401 comes
/// first, as it would without sluice.
pub async fn template(
    route: &Route,
    metrics: &Metrics,
    max_body: u64,
    own_key: Option<&ApiKey>,
    req: Request,
) -> Result<Request, Response<Body>> {
    let gate = Gate::new(route, metrics);
    if !gate.checks() || !apikey::present(req.headers(), own_key) {
        return Ok(req);
    }
    let lenient = gate.content_type(req.headers())?;
    let (mut parts, body) = req.into_parts();
    let body = body::read_decoded(&mut parts.headers, body, max_body)
        .await
        .map_err(crate::error::ProxyError::into_response)?;
    gate.apply(rules::request(&body))?;
    if lenient {
        gate.lenient();
    }
    Ok(Request::from_parts(parts, Body::from(body)))
}
