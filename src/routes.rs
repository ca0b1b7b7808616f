//! The send routes: which requests become durable jobs instead of passing through.
//!
//! A route names a method and a path pattern (`{name}` matches one path segment), and
//! says whether the request is a `bulk` send (a recipients array found by a JSON pointer,
//! cut into parts of at most `max_recipients_per_request`) or a `single` send (one
//! message, one part). Requests that match no route pass through untouched.

use serde::Deserialize;

/// One `[[routes]]` entry.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A short name, used as the metric label and in job JSON.
    pub name: String,
    #[serde(default = "default_method")]
    pub method: String,
    /// e.g. `/api/v1/campaigns/{campaignId}/bulk/{channel}`.
    pub path: String,
    pub kind: RouteKind,
    /// Bulk only: JSON pointer (RFC 6901) of the recipients array.
    #[serde(default = "default_pointer")]
    pub recipients_pointer: String,
    /// Bulk only: most recipients in one upstream request (the API's documented maximum).
    #[serde(default = "default_max_recipients")]
    pub max_recipients_per_request: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    Bulk,
    Single,
}

/// Routes in match order.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteTable {
    routes: Vec<(Route, Vec<Segment>)>,
}

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    Literal(String),
    Param,
}

fn default_method() -> String {
    "POST".into()
}
fn default_pointer() -> String {
    "/recipients".into()
}
fn default_max_recipients() -> u64 {
    200_000
}

/// The two send endpoints of the API, as `upstream-api.md` describes them.
pub fn defaults() -> Vec<Route> {
    vec![
        Route {
            name: "bulk".into(),
            method: "POST".into(),
            path: "/api/v1/campaigns/{campaignId}/bulk/{channel}".into(),
            kind: RouteKind::Bulk,
            recipients_pointer: default_pointer(),
            max_recipients_per_request: default_max_recipients(),
        },
        Route {
            name: "single".into(),
            method: "POST".into(),
            path: "/api/v1/campaigns/{campaignId}/messages/{channel}".into(),
            kind: RouteKind::Single,
            recipients_pointer: default_pointer(),
            max_recipients_per_request: default_max_recipients(),
        },
    ]
}

// === impl Route ===

impl Route {
    /// Checks one route; the error names what is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.name.is_empty()
            || !self
                .name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_')
        {
            return Err(format!(
                "route name {:?} must be non-empty [A-Za-z0-9_]",
                self.name
            ));
        }
        if http::Method::from_bytes(self.method.as_bytes()).is_err() {
            return Err(format!("route {}: bad method {:?}", self.name, self.method));
        }
        if !self.path.starts_with('/') {
            return Err(format!("route {}: path must start with '/'", self.name));
        }
        if self.kind == RouteKind::Bulk {
            if !self.recipients_pointer.starts_with('/') {
                return Err(format!(
                    "route {}: recipients_pointer must start with '/'",
                    self.name
                ));
            }
            if self.max_recipients_per_request == 0 {
                return Err(format!(
                    "route {}: max_recipients_per_request must be at least 1",
                    self.name
                ));
            }
        }
        Ok(())
    }
}

// === impl RouteTable ===

impl RouteTable {
    pub fn new(routes: &[Route]) -> Self {
        let routes = routes
            .iter()
            .map(|r| (r.clone(), parse_pattern(&r.path)))
            .collect();
        Self { routes }
    }

    /// The first route matching this method and path, if any.
    pub fn find(&self, method: &http::Method, path: &str) -> Option<&Route> {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        self.routes
            .iter()
            .find(|(route, pattern)| {
                route.method.eq_ignore_ascii_case(method.as_str()) && matches(pattern, &segments)
            })
            .map(|(route, _)| route)
    }
}

fn parse_pattern(path: &str) -> Vec<Segment> {
    path.trim_start_matches('/')
        .split('/')
        .map(|s| {
            if s.starts_with('{') && s.ends_with('}') {
                Segment::Param
            } else {
                Segment::Literal(s.to_string())
            }
        })
        .collect()
}

fn matches(pattern: &[Segment], segments: &[&str]) -> bool {
    pattern.len() == segments.len()
        && pattern.iter().zip(segments).all(|(p, s)| match p {
            Segment::Literal(l) => l == s,
            Segment::Param => !s.is_empty(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;

    #[test]
    fn default_routes_match_the_send_endpoints_only() {
        let table = RouteTable::new(&defaults());
        let find = |m: Method, p: &str| table.find(&m, p).map(|r| r.name.as_str());
        assert_eq!(
            find(Method::POST, "/api/v1/campaigns/7/bulk/sms"),
            Some("bulk")
        );
        assert_eq!(
            find(Method::POST, "/api/v1/campaigns/7/bulk/viber"),
            Some("bulk")
        );
        assert_eq!(
            find(Method::POST, "/api/v1/campaigns/7/messages/sms"),
            Some("single")
        );
        assert_eq!(find(Method::GET, "/api/v1/campaigns/7/bulk/sms"), None);
        assert_eq!(find(Method::POST, "/api/v1/campaigns//bulk/sms"), None);
        assert_eq!(find(Method::POST, "/api/v1/campaigns/7/bulk/sms/x"), None);
        assert_eq!(find(Method::POST, "/api/v1/campaigns/7/start"), None);
        assert_eq!(find(Method::POST, "/api/v1/templates"), None);
    }

    #[test]
    fn validation_names_the_route() {
        let mut r = defaults().remove(0);
        r.max_recipients_per_request = 0;
        assert!(r.validate().unwrap_err().contains("bulk"));
        r.max_recipients_per_request = 1;
        r.recipients_pointer = "recipients".into();
        assert!(r.validate().is_err());
        for r in defaults() {
            r.validate().unwrap();
        }
    }
}
