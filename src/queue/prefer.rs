//! The `Prefer` request header (RFC 7240) as sluice honours it for sends.
//!
//! `Prefer: respond-async` answers 202 at once; `Prefer: wait=N` waits up to N seconds
//! for the job to finish (instead of `queue.sync_wait_ms`). Other preferences are ignored,
//! as the RFC asks.

use std::time::Duration;

use http::HeaderMap;

/// What the client asked for.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Preference {
    pub respond_async: bool,
    pub wait: Option<Duration>,
}

/// Reads every `Prefer` header; unknown or malformed preferences are ignored.
pub fn parse(headers: &HeaderMap) -> Preference {
    let mut pref = Preference::default();
    for value in headers.get_all("prefer") {
        let Ok(value) = value.to_str() else { continue };
        for token in value.split(',') {
            let token = token.split(';').next().unwrap_or("").trim();
            let (name, arg) = match token.split_once('=') {
                Some((n, a)) => (n.trim(), Some(a.trim().trim_matches('"'))),
                None => (token, None),
            };
            if name.eq_ignore_ascii_case("respond-async") {
                pref.respond_async = true;
            } else if name.eq_ignore_ascii_case("wait") {
                if let Some(secs) = arg.and_then(|a| a.parse::<u64>().ok()) {
                    pref.wait = Some(Duration::from_secs(secs));
                }
            }
        }
    }
    pref
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn prefer(values: &[&'static str]) -> Preference {
        let mut h = HeaderMap::new();
        for v in values {
            h.append("prefer", HeaderValue::from_static(v));
        }
        parse(&h)
    }

    #[test]
    fn reads_respond_async_and_wait() {
        assert_eq!(prefer(&[]), Preference::default());
        assert!(prefer(&["respond-async"]).respond_async);
        assert_eq!(prefer(&["wait=1"]).wait, Some(Duration::from_secs(1)));
        let both = prefer(&["Respond-Async, wait=10"]);
        assert!(both.respond_async);
        assert_eq!(both.wait, Some(Duration::from_secs(10)));
        assert_eq!(
            prefer(&["handling=lenient", "wait=\"3\""]).wait,
            Some(Duration::from_secs(3))
        );
        assert_eq!(prefer(&["wait=soon"]).wait, None);
        assert_eq!(prefer(&["wait=-1"]).wait, None);
    }
}
