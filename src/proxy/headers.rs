//! Header hygiene between hops (RFC 9110 §7.6.1).
//!
//! Hop-by-hop headers describe one connection, not the message: they are dropped in both
//! directions, together with any header the `Connection` header names. `Host` is dropped
//! on the way up because the upstream's authority replaces it.

use http::header::{self, HeaderMap, HeaderName};

/// Headers that never cross the proxy.
const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers (and those listed in `Connection`) in place.
/// `Transfer-Encoding` goes too: hyper frames each hop's body itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    // Most messages have none but `Connection`, or none at all: one pass over the names
    // tells, instead of a lookup for each of the nine.
    let hop = |name: &HeaderName| name == header::TRANSFER_ENCODING || HOP_BY_HOP.contains(name);
    if !headers.keys().any(hop) {
        return;
    }
    // The headers `Connection` names, removed by name as read (no list of them is built);
    // the values are cheap clones, since removing changes the map being read.
    let mut i = 0;
    while let Some(value) = headers.get_all(header::CONNECTION).iter().nth(i).cloned() {
        i += 1;
        let Ok(names) = value.to_str() else { continue };
        for name in names.split(',').map(str::trim) {
            // `Connection` itself goes last, with the others below, so that a second
            // `Connection` line is still read.
            if !name.eq_ignore_ascii_case("connection") {
                headers.remove(name);
            }
        }
    }
    for name in HOP_BY_HOP.iter() {
        headers.remove(name);
    }
    headers.remove(header::TRANSFER_ENCODING);
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    #[test]
    fn drops_hop_by_hop_and_connection_named_headers() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-api-key", HeaderValue::from_static("k"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        strip_hop_by_hop(&mut h);
        let left: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(left, vec!["x-api-key", "content-type"]);
    }
}
