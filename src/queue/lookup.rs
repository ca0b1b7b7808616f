//! Looking a send up in the API after its answer was lost: the pure pieces.
//!
//! A timeout, or a connection that broke after the request was written, leaves a send's
//! fate unknown: the API may have accepted it. Sending it again blindly could deliver it
//! twice, so the dispatcher first asks the API (`reconcile.rs` does the I/O) with the
//! route's `lookup`, by default `GET /api/v1/messages?phoneNumber=…&campaignId=…`, which
//! lists the messages the API accepted with their `messageId` and `createdAt`. This file
//! builds that request and reads its answer:
//! - which phone numbers to look up: a single send's `phoneNumber`; for a bulk part (which
//!   the API accepts or refuses whole), its first and last recipients;
//! - whether the answer lists a message created since the attempt began (less the allowed
//!   clock skew): then the send was accepted, with that message's id.

use serde::Deserialize;

use crate::split;

/// A message the lookup found: the send was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub message_id: String,
    /// The message's status as the API listed it (`Pending`, `Delivered`…).
    pub status: Option<String>,
    /// When the API created it (unix ms).
    pub created_at: i64,
}

/// One message of the lookup's answer (only the fields needed here).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Listed {
    message_id: Option<serde_json::Value>,
    created_at: Option<String>,
    status: Option<String>,
}

/// A bulk recipient: a phone number, or an object with one.
#[derive(Deserialize)]
#[serde(untagged)]
enum Recipient {
    Phone(String),
    Object {
        #[serde(rename = "phoneNumber")]
        phone_number: String,
    },
}

/// The lookup's path and query: `template` with `{phoneNumber}` (percent-encoded) and each
/// `{name}` of `params` (path segments, already encoded as they came) filled in.
pub fn lookup_path(template: &str, params: &[(&str, &str)], phone: &str) -> String {
    let mut out = template.replace("{phoneNumber}", &percent_encode(phone));
    for (name, value) in params {
        out = out.replace(&format!("{{{name}}}"), value);
    }
    out
}

/// A single send's `phoneNumber`, if its body is a JSON object with one.
pub fn single_phone(body: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct Single {
        #[serde(rename = "phoneNumber")]
        phone_number: Option<String>,
    }
    serde_json::from_slice::<Single>(body).ok()?.phone_number
}

/// The phone numbers to look a bulk part up by: its first and last recipients (one when
/// they are the same). Empty if the body cannot be read.
pub fn bulk_phones(part_body: &[u8], pointer: &str) -> Vec<String> {
    let Ok(layout) = split::scan(part_body, pointer, |_, _| {}) else {
        return Vec::new();
    };
    let phone =
        |range: &std::ops::Range<usize>| match serde_json::from_slice(&part_body[range.clone()]) {
            Ok(Recipient::Phone(p) | Recipient::Object { phone_number: p }) => Some(p),
            Err(_) => None,
        };
    let mut phones: Vec<String> = [layout.items.first(), layout.items.last()]
        .into_iter()
        .flatten()
        .filter_map(phone)
        .collect();
    phones.dedup();
    phones
}

/// Reads the lookup's answer (a JSON array of messages): the earliest message created at
/// or after `since_ms`, if any. `Err` when the answer is not such an array.
pub fn find_since(answer: &[u8], since_ms: i64) -> Result<Option<Found>, String> {
    let listed: Vec<Listed> = serde_json::from_slice(answer)
        .map_err(|e| format!("the lookup's answer is not a list of messages: {e}"))?;
    let found = listed
        .into_iter()
        .filter_map(|m| {
            let created = humantime::parse_rfc3339_weak(m.created_at.as_deref()?).ok()?;
            let created_at = created
                .duration_since(std::time::UNIX_EPOCH)
                .ok()?
                .as_millis() as i64;
            let message_id = match m.message_id? {
                serde_json::Value::String(s) => s,
                other => other.to_string(),
            };
            Some(Found {
                message_id,
                status: m.status,
                created_at,
            })
        })
        .filter(|f| f.created_at >= since_ms)
        .min_by_key(|f| f.created_at);
    Ok(found)
}

/// Percent-encodes everything but RFC 3986's unreserved characters (so `+` becomes `%2B`).
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_path_fills_the_phone_and_the_routes_segments() {
        let path = lookup_path(
            "/api/v1/messages?phoneNumber={phoneNumber}&campaignId={campaignId}",
            &[("campaignId", "42"), ("channel", "sms")],
            "+38970123456",
        );
        assert_eq!(
            path,
            "/api/v1/messages?phoneNumber=%2B38970123456&campaignId=42"
        );
        assert_eq!(
            lookup_path("/m?p={phoneNumber}", &[], "a b&c"),
            "/m?p=a%20b%26c"
        );
    }

    #[test]
    fn phones_come_from_the_single_body_or_the_parts_ends() {
        assert_eq!(
            single_phone(br#"{"phoneNumber":"38970123456","variables":{}}"#),
            Some("38970123456".into())
        );
        assert_eq!(single_phone(b"[1]"), None);
        assert_eq!(single_phone(br#"{"phoneNumber":5}"#), None);
        let body = br#"{"x":1,"recipients":["38970000001",{"phoneNumber":"38970000002"},{"phoneNumber":"38970000003","v":{}}]}"#;
        assert_eq!(
            bulk_phones(body, "/recipients"),
            ["38970000001", "38970000003"]
        );
        assert_eq!(
            bulk_phones(br#"{"recipients":["38970000001"]}"#, "/recipients"),
            ["38970000001"]
        );
        assert!(bulk_phones(b"nope", "/recipients").is_empty());
    }

    #[test]
    fn only_a_message_created_since_the_attempt_counts() {
        let answer = br#"[
            {"messageId":"msg-1-0","createdAt":"2026-12-01T10:00:00.000Z","status":"Delivered"},
            {"messageId":"msg-1-7","createdAt":"2026-12-01T10:00:05.250Z","status":"Pending"},
            {"messageId":"msg-1-9","createdAt":"2026-12-01T10:00:09.000Z","status":"Pending"}
        ]"#;
        let at = |s: &str| {
            humantime::parse_rfc3339(s)
                .unwrap()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64
        };
        let found = find_since(answer, at("2026-12-01T10:00:05Z"))
            .unwrap()
            .unwrap();
        assert_eq!(found.message_id, "msg-1-7");
        assert_eq!(found.status.as_deref(), Some("Pending"));
        assert_eq!(found.created_at, at("2026-12-01T10:00:05.250Z"));
        assert_eq!(
            find_since(answer, at("2026-12-01T10:00:10Z")).unwrap(),
            None
        );
        assert_eq!(find_since(b"[]", 0).unwrap(), None);
        assert!(find_since(br#"{"error":"x"}"#, 0).is_err());
        // Numeric ids are kept as their text; messages without a date are ignored.
        let found = find_since(
            br#"[{"messageId":7,"createdAt":"2026-12-01T10:00:00Z"},{"messageId":"x"}]"#,
            0,
        )
        .unwrap()
        .unwrap();
        assert_eq!(found.message_id, "7");
    }
}
