//! The media URL rule: "URL must be HTTPS and publicly accessible".
//!
//! The provider fetches media (`imageUrl` and the other media fields of templates and
//! sends) itself, so a URL it cannot fetch fails the request. sluice checks what can be
//! known **without fetching or resolving anything** (no DNS, no connection: a check must
//! not become a way to probe networks, and must not cost a round trip):
//!
//! - well-formed: an absolute URI (parsed by `http::Uri`), ASCII, no white space or
//!   control characters, at most [`MAX_LEN`] bytes;
//! - scheme `https`;
//! - no user name or password (`https://user:pass@…`): "publicly accessible" means no
//!   authentication;
//! - a host that can be public: an IP literal must not be loopback, private (RFC 1918,
//!   RFC 4193 `fc00::/7`), link-local, unspecified, shared (RFC 6598), multicast,
//!   broadcast, reserved or documentation space (an IPv6 address embedding an IPv4 one,
//!   `::ffff:10.0.0.1`, is judged by that IPv4 address); a name must have at least two
//!   labels and not be `localhost` or end in a special-use or private-use domain
//!   ([`PRIVATE_SUFFIXES`]). Host forms that resolvers read as IPv4 (`127.1`,
//!   `2130706433`, `0x7f.0.0.1`) are judged as the address they stand for.
//!
//! [`MEDIA_FIELDS`] names the fields the rule applies to. The simulator uses the same
//! functions, so the proxy never refuses what the simulator would take, or the reverse.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::FieldErrors;
use crate::api::text;

/// The fields holding a media URL, in a template, a carousel item or a send body.
pub const MEDIA_FIELDS: [&str; 5] = [
    "imageUrl",
    "videoUrl",
    "fileUrl",
    "thumbnailUrl",
    "mediaUrl",
];

/// The longest URL accepted, in bytes (what common browsers and CDNs handle).
pub const MAX_LEN: usize = 2048;

/// Host names under these domains (or equal to them) are never public: special-use names
/// (RFC 6761 `localhost`, `invalid`; RFC 6762 `local`; RFC 8375 `home.arpa`), the
/// private-use `internal` (ICANN, 2024) and the conventional `localdomain`.
pub const PRIVATE_SUFFIXES: [&str; 6] = [
    "localhost",
    "local",
    "localdomain",
    "internal",
    "home.arpa",
    "invalid",
];

/// True when `field` is one of [`MEDIA_FIELDS`].
pub fn is_media_field(field: &str) -> bool {
    MEDIA_FIELDS.contains(&field)
}

/// True when `url` is a well-formed `https` URL whose host can be publicly reachable.
pub fn is_public_https_url(url: &str) -> bool {
    if url.len() > MAX_LEN || !url.bytes().all(|b| b.is_ascii_graphic()) {
        return false;
    }
    // `http::Uri` takes no fragment; a fragment never reaches the server anyway.
    let (url, fragment) = url.split_once('#').unwrap_or((url, ""));
    if fragment.contains('#') {
        return false;
    }
    let Ok(uri) = url.parse::<http::Uri>() else {
        return false;
    };
    let https = uri
        .scheme_str()
        .is_some_and(|s| s.eq_ignore_ascii_case("https"));
    let Some(authority) = uri.authority() else {
        return false;
    };
    if !https || authority.as_str().contains('@') {
        return false;
    }
    // A port, when written, must be a number from 1 to 65535.
    let port_ok = match authority.as_str().rsplit_once(':') {
        Some((_, port)) if !authority.as_str().ends_with(']') => {
            port.parse::<u16>().is_ok_and(|p| p > 0)
        }
        _ => true,
    };
    port_ok && is_public_host(authority.host())
}

/// True when `host` (a name, an IPv4 address, or an IPv6 address in brackets) can be a
/// public host; see the module documentation.
pub fn is_public_host(host: &str) -> bool {
    if let Some(inner) = host.strip_prefix('[') {
        return inner
            .strip_suffix(']')
            .and_then(|a| a.parse::<Ipv6Addr>().ok())
            .is_some_and(is_public_v6);
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let last = name.rsplit('.').next().unwrap_or("");
    if looks_numeric(last) {
        // Resolvers (and URL parsers) read this as an IPv4 address, in any of its forms.
        return parse_ipv4_loosely(&name).is_some_and(is_public_v4);
    }
    is_public_name(&name)
}

/// Checks the media fields of an object (a template, a carousel item, a send body),
/// adding `prefix` + the field name → the seed's rule text for each that breaks the rule.
/// `null` counts as absent; anything but a string breaks it.
pub fn check_fields(obj: &Map<String, Value>, prefix: &str, errors: &mut FieldErrors) {
    for field in MEDIA_FIELDS {
        let ok = match obj.get(field) {
            None | Some(Value::Null) => true,
            Some(Value::String(url)) => is_public_https_url(url),
            Some(_) => false,
        };
        if !ok {
            errors.insert(format!("{prefix}{field}"), text::MEDIA_RULE.to_string());
        }
    }
}

/// [`check_fields`] for one raw member (as the splitter shows it): whether the value of a
/// media field is acceptable (`null`, or a string that is a public `https` URL).
pub fn raw_value_ok(raw: &RawValue) -> bool {
    let text = raw.get();
    if text == "null" {
        return true;
    }
    match serde_json::from_str::<std::borrow::Cow<'_, str>>(text) {
        Ok(url) => is_public_https_url(&url),
        Err(_) => false,
    }
}

/// A host name that can be public: at least two labels of letters, digits, `-` and `_`
/// (1-63 bytes, not starting or ending in `-`), at most 253 bytes, and not under
/// [`PRIVATE_SUFFIXES`]. `name` is lower case without a trailing dot.
fn is_public_name(name: &str) -> bool {
    let labels_ok = name.split('.').all(|label| {
        (1..=63).contains(&label.len())
            && !label.starts_with('-')
            && !label.ends_with('-')
            && label
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    });
    let private = PRIVATE_SUFFIXES.iter().any(|suffix| {
        name == *suffix
            || name
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.'))
    });
    name.len() <= 253 && name.contains('.') && labels_ok && !private
}

/// True for a label that makes a host an IPv4 address: decimal digits, or `0x` + hex.
fn looks_numeric(label: &str) -> bool {
    let hex = label
        .strip_prefix("0x")
        .is_some_and(|h| h.bytes().all(|b| b.is_ascii_hexdigit()));
    hex || (!label.is_empty() && label.bytes().all(|b| b.is_ascii_digit()))
}

/// Parses IPv4 the way URL parsers and `inet_aton` do: 1 to 4 parts, each decimal, octal
/// (leading `0`) or hex (`0x`), the last filling the remaining bytes (`127.1` is
/// 127.0.0.1, `2130706433` too). `None` when it is not such an address.
fn parse_ipv4_loosely(host: &str) -> Option<Ipv4Addr> {
    let parts: Vec<&str> = host.split('.').collect();
    if parts.is_empty() || parts.len() > 4 {
        return None;
    }
    let mut numbers = Vec::with_capacity(parts.len());
    for part in &parts {
        let (digits, radix) = if let Some(hex) = part.strip_prefix("0x") {
            (hex, 16)
        } else if part.len() > 1 && part.starts_with('0') {
            (&part[1..], 8)
        } else {
            (*part, 10)
        };
        let value = if digits.is_empty() {
            0 // "0x" alone is 0, as URL parsers read it
        } else {
            u64::from_str_radix(digits, radix).ok()?
        };
        numbers.push(value);
    }
    let (last, first) = numbers.split_last()?;
    if first.iter().any(|&n| n > 255) {
        return None;
    }
    let last_bytes = 4 - first.len();
    if *last >= 1u64 << (8 * last_bytes) {
        return None;
    }
    let mut value: u64 = 0;
    for &n in first {
        value = (value << 8) | n;
    }
    value = (value << (8 * last_bytes)) | last;
    u32::try_from(value).ok().map(Ipv4Addr::from)
}

/// An IPv4 address in public unicast space.
fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    let special = ip.is_unspecified()
        || a == 0 // "this network", 0.0.0.0/8
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || (a == 100 && (64..128).contains(&b)) // shared address space, RFC 6598
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments, RFC 6890
        || ip.is_documentation()
        || (a == 198 && (b == 18 || b == 19)) // benchmarking, RFC 2544
        || ip.is_multicast()
        || a >= 240; // reserved, and the broadcast address
    !special
}

/// An IPv6 address in public unicast space; addresses embedding an IPv4 address are
/// judged by it.
fn is_public_v6(ip: Ipv6Addr) -> bool {
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    let s = ip.segments();
    // IPv4-compatible (deprecated, ::a.b.c.d), NAT64 (64:ff9b::/96) and 6to4 (2002::/16)
    // carry an IPv4 address that the traffic ends up at.
    let embedded = |hi: u16, lo: u16| Ipv4Addr::from((u32::from(hi) << 16) | u32::from(lo));
    if s[..6] == [0; 6] && !(ip.is_loopback() || ip.is_unspecified()) {
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return is_public_v4(embedded(s[6], s[7]));
    }
    if s[0] == 0x2002 {
        return is_public_v4(embedded(s[1], s[2]));
    }
    let special = ip.is_unspecified()
        || ip.is_loopback()
        || (s[0] & 0xfe00) == 0xfc00 // unique local, RFC 4193
        || (s[0] & 0xffc0) == 0xfe80 // link-local
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || ip.is_multicast()
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation, RFC 3849
        || (s[0] == 0x0100 && s[1..4] == [0, 0, 0]); // discard-only, RFC 6666
    !special
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_https_urls_pass() {
        for ok in [
            "https://cdn.example.com/a.png",
            "HTTPS://CDN.Example.com/a.png",
            "https://cdn.example/a.png",
            "https://cdn.example.com./a.png",
            "https://cdn.example.com:8443/a.png?size=large&v=2",
            "https://cdn.example.com/a.png#top",
            "https://img_1.cdn-eu.example.com/x",
            "https://8.8.8.8/a.png",
            "https://[2606:4700::1111]/a.png",
            "https://[2606:4700::1111]:443/a.png",
            "https://1.1.1.1",
            "https://xn--80ak6aa92e.com/a.png",
        ] {
            assert!(is_public_https_url(ok), "{ok} should pass");
        }
    }

    #[test]
    fn not_https_or_not_well_formed_fails() {
        for bad in [
            "",
            "http://cdn.example.com/a.png",
            "ftp://cdn.example.com/a.png",
            "//cdn.example.com/a.png",
            "/a.png",
            "cdn.example.com/a.png",
            "https://",
            "https:///a.png",
            "https://cdn.example.com/a b.png",
            " https://cdn.example.com/a.png",
            "https://cdn.example.com/a.png\n",
            "https://cdn.example.com/ä.png",
            "https://сдн.example.com/a.png",
            "https://cdn.example.com:0/a.png",
            "https://cdn.example.com:99999/a.png",
            "https://cdn.example.com:x/a.png",
            "https://cdn..example.com/a.png",
            "https://-cdn.example.com/a.png",
            "https://cdn.example.com/a.png#x#y",
            "https://user:pass@cdn.example.com/a.png",
            "https://user@cdn.example.com/a.png",
            "https://[fe80::1%25eth0]/a.png",
            "https://[::1/a.png",
        ] {
            assert!(!is_public_https_url(bad), "{bad:?} should fail");
        }
        let long = format!("https://cdn.example.com/{}", "a".repeat(MAX_LEN));
        assert!(!is_public_https_url(&long));
    }

    #[test]
    fn hosts_that_cannot_be_public_fail() {
        for host in [
            "localhost",
            "LOCALHOST",
            "localhost.",
            "app.localhost",
            "printer.local",
            "db.localdomain",
            "api.internal",
            "nas.home.arpa",
            "x.invalid",
            "intranet",
            "127.0.0.1",
            "127.1",
            "2130706433",
            "0x7f.0.0.1",
            "0177.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "169.254.169.254",
            "0.0.0.0",
            "0",
            "100.64.0.1",
            "192.0.0.8",
            "192.0.2.1",
            "198.51.100.7",
            "203.0.113.9",
            "198.18.0.1",
            "224.0.0.1",
            "240.0.0.1",
            "255.255.255.255",
            "1.2.3.4.5",
            "256.1.1.1",
            "[::1]",
            "[::]",
            "[fc00::1]",
            "[fd12:3456::1]",
            "[fe80::1]",
            "[fec0::1]",
            "[ff02::1]",
            "[2001:db8::1]",
            "[::ffff:127.0.0.1]",
            "[::ffff:10.0.0.1]",
            "[::10.0.0.1]",
            "[64:ff9b::a00:1]",
            "[2002:c0a8:101::1]",
            "[100::1]",
        ] {
            assert!(!is_public_host(host), "{host} should not be public");
            let url = format!("https://{host}/a.png");
            assert!(!is_public_https_url(&url), "{url} should fail");
        }
        for host in [
            "172.15.0.1",
            "172.32.0.1",
            "100.128.0.1",
            "11.0.0.1",
            "[::ffff:8.8.8.8]",
            "[2002:808:808::1]",
            "localhost.example.com",
            "local.example.com",
            "mylocal.com",
        ] {
            assert!(is_public_host(host), "{host} can be public");
        }
    }

    #[test]
    fn fields_are_checked_by_name_and_type() {
        let obj = serde_json::json!({
            "imageUrl": "http://x.example.com/a.png",
            "videoUrl": "https://x.example.com/a.mp4",
            "fileUrl": 42,
            "thumbnailUrl": null,
            "mediaUrl": "https://localhost/a",
            "otherUrl": "http://ignored",
        });
        let mut errors = FieldErrors::new();
        check_fields(obj.as_object().unwrap(), "carousel.items[0].", &mut errors);
        let keys: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            [
                "carousel.items[0].fileUrl",
                "carousel.items[0].imageUrl",
                "carousel.items[0].mediaUrl"
            ]
        );
        assert!(errors.values().all(|v| v == text::MEDIA_RULE));
        let raw = |s: &str| serde_json::from_str::<Box<RawValue>>(s).unwrap();
        assert!(raw_value_ok(&raw("null")));
        assert!(raw_value_ok(&raw(r#""https://cdn.example.com/a.png""#)));
        assert!(raw_value_ok(&raw(r#""https:\/\/cdn.example.com\/a.png""#)));
        assert!(!raw_value_ok(&raw(r#""http://cdn.example.com/a.png""#)));
        assert!(!raw_value_ok(&raw("1")));
        assert!(!raw_value_ok(&raw(r#"{"url":"https://cdn.example.com"}"#)));
    }
}
