//! The send routes: which requests become durable jobs instead of passing through.
//!
//! A route names a method and a path pattern (`{name}` matches one path segment), and
//! says whether the request is a `bulk` send (a recipients array found by a JSON pointer,
//! cut into parts of at most `max_recipients_per_request`), a `single` send (one
//! message, one part), or a `template` creation (checked, then passed through unchanged,
//! never queued). Requests that match no route pass through untouched.
//!
//! Each route also says how its requests are validated against the API's documented
//! rules before anything is stored or sent ([`crate::validate`]): `validation =
//! "enforce" | "warn" | "off"`, and for bulk routes what to do with bad recipients,
//! `invalid_recipients = "reject" | "skip"`.

use serde::Deserialize;

use crate::validate::{InvalidRecipients, Mode};

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
    /// What happens to a request that breaks the API's rules: refused with the API's 400
    /// (`enforce`), logged, counted and sent anyway (`warn`), or not checked (`off`).
    #[serde(default)]
    pub validation: Mode,
    /// Bulk only, in `enforce` mode: refuse a send with any bad recipient (`reject`), or
    /// send the others and list the bad ones in the job (`skip`).
    #[serde(default)]
    pub invalid_recipients: InvalidRecipients,
    /// Bulk and single: how to look a send up in the API when its answer was lost (a
    /// timeout, a broken connection), before sending it again: a GET path and query where
    /// `{phoneNumber}` is a recipient's number and `{name}` a segment of `path`. The API
    /// lists the messages it accepted, with `messageId` and `createdAt`. `""`: no lookup
    /// (such a part is sent once more, then called uncertain). Unset: the API's messages
    /// query ([`DEFAULT_LOOKUP`]) when `path` has a `{campaignId}` segment, else none.
    #[serde(default)]
    pub lookup: Option<String>,
}

/// The lookup a send route has when it sets none and its path names `{campaignId}`.
pub const DEFAULT_LOOKUP: &str =
    "/api/v1/messages?phoneNumber={phoneNumber}&campaignId={campaignId}";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteKind {
    /// A recipients array, cut into parts; a durable job.
    Bulk,
    /// One message, one part; a durable job.
    Single,
    /// A template creation: checked with the template rules, then passed through
    /// unchanged (not queued).
    Template,
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

/// The two send endpoints and template creation, as `upstream-api.md` describes them.
pub fn defaults() -> Vec<Route> {
    let route = |name: &str, path: &str, kind| Route {
        name: name.into(),
        method: "POST".into(),
        path: path.into(),
        kind,
        recipients_pointer: default_pointer(),
        max_recipients_per_request: default_max_recipients(),
        validation: Mode::default(),
        invalid_recipients: InvalidRecipients::default(),
        lookup: None,
    };
    vec![
        route(
            "bulk",
            "/api/v1/campaigns/{campaignId}/bulk/{channel}",
            RouteKind::Bulk,
        ),
        route(
            "single",
            "/api/v1/campaigns/{campaignId}/messages/{channel}",
            RouteKind::Single,
        ),
        route("templates", "/api/v1/templates", RouteKind::Template),
    ]
}

// === impl Route ===

impl Route {
    /// The route's label for client metrics and logs: its name when it is one of the
    /// defaults, else its kind (`send` or `templates`), so labels stay a handful.
    pub fn label(&self) -> &'static str {
        match (self.name.as_str(), self.kind) {
            ("bulk", _) => "bulk",
            ("single", _) => "single",
            ("templates", _) | (_, RouteKind::Template) => "templates",
            _ => "send",
        }
    }

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
        if self.kind != RouteKind::Bulk && self.invalid_recipients == InvalidRecipients::Skip {
            return Err(format!(
                "route {}: invalid_recipients = \"skip\" applies to bulk routes only",
                self.name
            ));
        }
        if self.kind != RouteKind::Template {
            if let Some(lookup) = self.lookup.as_deref().filter(|l| !l.is_empty()) {
                self.check_lookup(lookup)?;
            }
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

impl Route {
    /// The lookup starts with `/`, names `{phoneNumber}`, and every other `{name}` in it is
    /// a segment of the route's path.
    fn check_lookup(&self, lookup: &str) -> Result<(), String> {
        let bad = |why: &str| Err(format!("route {}: lookup {why}", self.name));
        if !lookup.starts_with('/') {
            return bad("must start with '/'");
        }
        if !lookup.contains("{phoneNumber}") {
            return bad("must contain {phoneNumber}");
        }
        let params: Vec<&str> = self
            .path
            .split('/')
            .filter_map(|s| s.strip_prefix('{')?.strip_suffix('}'))
            .collect();
        let mut rest = lookup;
        while let Some(open) = rest.find('{') {
            let Some(close) = rest[open..].find('}') else {
                return bad("has a '{' without a '}'");
            };
            let name = &rest[open + 1..open + close];
            if name != "phoneNumber" && !params.contains(&name) {
                return bad(&format!(
                    "names {{{name}}}, which is not in the route's path"
                ));
            }
            rest = &rest[open + close + 1..];
        }
        Ok(())
    }

    /// The lookup in force: the one set, or [`DEFAULT_LOOKUP`] for a path with a
    /// `{campaignId}` segment; `None` for no lookup.
    pub fn lookup(&self) -> Option<&str> {
        match self.lookup.as_deref() {
            Some("") => None,
            Some(lookup) => Some(lookup),
            None => self.path.contains("{campaignId}").then_some(DEFAULT_LOOKUP),
        }
    }

    /// The values of the path's `{name}` segments in `path` (a request path that this route
    /// matched), by name.
    pub fn params<'a>(&'a self, path: &'a str) -> Vec<(&'a str, &'a str)> {
        let path = path.split('?').next().unwrap_or(path);
        self.path
            .trim_start_matches('/')
            .split('/')
            .zip(path.trim_start_matches('/').split('/'))
            .filter_map(|(pattern, value)| {
                let name = pattern.strip_prefix('{')?.strip_suffix('}')?;
                Some((name, value))
            })
            .collect()
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
        assert_eq!(find(Method::POST, "/api/v1/templates"), Some("templates"));
        assert_eq!(find(Method::GET, "/api/v1/templates"), None);
        assert_eq!(find(Method::POST, "/api/v1/templates/3"), None);
    }

    #[test]
    fn validation_settings_default_to_enforce_and_reject() {
        let route: Route =
            toml::from_str("name = \"b\"\npath = \"/x\"\nkind = \"bulk\"\n").unwrap();
        assert_eq!(
            (route.validation, route.invalid_recipients),
            (Mode::Enforce, InvalidRecipients::Reject)
        );
        let route: Route = toml::from_str(
            "name = \"t\"\npath = \"/t\"\nkind = \"template\"\nvalidation = \"warn\"\n",
        )
        .unwrap();
        assert_eq!(
            (route.kind, route.validation),
            (RouteKind::Template, Mode::Warn)
        );
        let bad: Result<Route, _> = toml::from_str(
            "name = \"b\"\npath = \"/x\"\nkind = \"bulk\"\nvalidation = \"strict\"\n",
        );
        assert!(bad.unwrap_err().to_string().contains("strict"));
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
        let mut single = defaults().remove(1);
        single.invalid_recipients = InvalidRecipients::Skip;
        assert!(single.validate().unwrap_err().contains("bulk routes only"));
    }

    #[test]
    fn lookups_name_the_phone_and_only_the_paths_segments() {
        let mut r = defaults().remove(0);
        for (lookup, ok) in [
            ("", true),
            ("/m?p={phoneNumber}&c={campaignId}&ch={channel}", true),
            ("/m?p={phoneNumber}", true),
            ("m?p={phoneNumber}", false),
            ("/m?c={campaignId}", false),
            ("/m?p={phoneNumber}&x={other}", false),
            ("/m?p={phoneNumber}&x={open", false),
        ] {
            r.lookup = Some(lookup.into());
            assert_eq!(r.validate().is_ok(), ok, "{lookup}: {:?}", r.validate());
        }
        r.lookup = None;
        assert_eq!(r.lookup(), Some(DEFAULT_LOOKUP));
        r.path = "/send/{channel}".into();
        assert_eq!(
            r.lookup(),
            None,
            "no campaign in the path: no default lookup"
        );
        r.validate().unwrap();
        r.path = "/api/v1/campaigns/{campaignId}/bulk/{channel}".into();
        assert_eq!(
            r.params("/api/v1/campaigns/7/bulk/sms?x=1"),
            [("campaignId", "7"), ("channel", "sms")]
        );
    }
}
