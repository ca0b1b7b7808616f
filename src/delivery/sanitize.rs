//! Request bodies made fit for a support bundle: phone numbers masked but for their last
//! three digits, anything that looks like a key or a secret hidden, long arrays cut to
//! their first few items and a count. The journal stores only the sanitized text, so a
//! full phone number or a key never reaches it.
//!
//! A body too large to parse whole (a bulk send to a million numbers) is first cut down to
//! the first items of its recipients array (found without parsing, by [`crate::split`]).

use serde_json::{Map, Value};

/// Array items shown before the rest is summarised.
pub const SHOWN: usize = 3;
/// Bodies from this size on are cut down before parsing.
const LARGE: usize = 256 * 1024;
/// The longest sanitized text kept.
const MAX_TEXT: usize = 16 * 1024;
/// Digits in a row from which a string's digits are masked.
const PHONE_DIGITS: usize = 7;

/// The sanitized text of a request body; `pointer` names a bulk send's recipients array.
pub fn body(bytes: &[u8], pointer: Option<&str>) -> String {
    let (parsed, total) = match (bytes.len() >= LARGE, pointer) {
        (true, Some(pointer)) => match cut_down(bytes, pointer) {
            Some((small, total)) => (
                serde_json::from_slice::<Value>(&small).ok(),
                Some((pointer, total)),
            ),
            None => (None, None),
        },
        _ => (serde_json::from_slice::<Value>(bytes).ok(), None),
    };
    let Some(mut value) = parsed else {
        return if bytes.is_empty() {
            String::new()
        } else {
            format!("({} bytes, not JSON: not shown)", bytes.len())
        };
    };
    value = sanitize(value);
    if let Some((pointer, total)) = total {
        if let Some(Value::Array(items)) = value.pointer_mut(pointer) {
            let shown = items.len();
            items.push(Value::String(summary(shown, total)));
        }
    }
    let mut text = value.to_string();
    if text.len() > MAX_TEXT {
        let mut end = MAX_TEXT;
        while !text.is_char_boundary(end) {
            end -= 1;
        }
        text.truncate(end);
        text.push_str("… (cut)");
    }
    text
}

/// A JSON value with phones masked, secrets hidden and long arrays summarised.
pub fn sanitize(value: Value) -> Value {
    match value {
        Value::String(s) => Value::String(mask_digits(&s)),
        Value::Number(n) if n.to_string().len() >= 10 => Value::String(mask_digits(&n.to_string())),
        Value::Array(items) => {
            let total = items.len();
            let mut out: Vec<Value> = items.into_iter().take(SHOWN).map(sanitize).collect();
            if total > SHOWN {
                out.push(Value::String(summary(SHOWN, total)));
            }
            Value::Array(out)
        }
        Value::Object(fields) => Value::Object(
            fields
                .into_iter()
                .map(|(k, v)| {
                    let v = if is_secret(&k) {
                        Value::String("(hidden)".into())
                    } else {
                        sanitize(v)
                    };
                    (k, v)
                })
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

/// Masks every run of [`PHONE_DIGITS`] or more digits but its last three.
pub fn mask_digits(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        if chars[i].is_ascii_digit() {
            let start = i;
            while i < chars.len() && chars[i].is_ascii_digit() {
                i += 1;
            }
            let run = i - start;
            if run >= PHONE_DIGITS {
                out.extend(std::iter::repeat_n('*', run - 3));
                out.extend(&chars[i - 3..i]);
            } else {
                out.extend(&chars[start..i]);
            }
        } else {
            out.push(chars[i]);
            i += 1;
        }
    }
    out
}

/// Field names whose values are never shown.
fn is_secret(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "password",
        "authorization",
        "credential",
    ]
    .iter()
    .any(|s| n.contains(s))
}

fn summary(shown: usize, total: usize) -> String {
    format!(
        "… {} more ({total} items in all)",
        total.saturating_sub(shown)
    )
}

/// The body with its recipients array cut to its first [`SHOWN`] items, and the count.
fn cut_down(bytes: &[u8], pointer: &str) -> Option<(Vec<u8>, usize)> {
    let layout = crate::split::scan(bytes, pointer, |_, _| {}).ok()?;
    let total = layout.items.len();
    let mut small = Vec::with_capacity(4096);
    small.extend_from_slice(&bytes[..layout.array.start]);
    small.push(b'[');
    for (i, item) in layout.items.iter().take(SHOWN).enumerate() {
        if i > 0 {
            small.push(b',');
        }
        small.extend_from_slice(&bytes[item.clone()]);
    }
    small.push(b']');
    small.extend_from_slice(&bytes[layout.array.end..]);
    Some((small, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phones_keep_their_last_three_digits() {
        assert_eq!(mask_digits("+38970123456"), "+********456");
        assert_eq!(
            mask_digits("call 38970123456 now, room 12"),
            "call ********456 now, room 12"
        );
        assert_eq!(mask_digits("123456"), "123456");
        let v = sanitize(serde_json::json!({"phoneNumber": 38970123456u64, "campaignId": 7}));
        assert_eq!(
            v,
            serde_json::json!({"phoneNumber": "********456", "campaignId": 7})
        );
    }

    #[test]
    fn secrets_are_hidden_and_long_arrays_counted() {
        let body = serde_json::json!({
            "apiKey": "sk-live-123", "X-API-Key": "k", "token": "t",
            "recipients": ["38970000001", {"phoneNumber": "38970000002", "variables": {"name": "Ana"}},
                           "38970000003", "38970000004", "38970000005"],
        });
        let text = super::body(body.to_string().as_bytes(), Some("/recipients"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["apiKey"], "(hidden)");
        assert_eq!(v["X-API-Key"], "(hidden)");
        assert_eq!(v["token"], "(hidden)");
        assert_eq!(v["recipients"][0], "********001");
        assert_eq!(v["recipients"][1]["phoneNumber"], "********002");
        assert_eq!(v["recipients"][1]["variables"]["name"], "Ana");
        assert_eq!(v["recipients"][3], "… 2 more (5 items in all)");
        assert!(!text.contains("38970000004") && !text.contains("sk-live"));
    }

    #[test]
    fn a_large_bulk_body_is_cut_before_parsing() {
        let phones: Vec<String> = (0..40_000).map(|i| format!("\"3897{:07}\"", i)).collect();
        let raw = format!("{{\"recipients\":[{}],\"name\":\"big\"}}", phones.join(","));
        assert!(raw.len() >= LARGE);
        let text = body(raw.as_bytes(), Some("/recipients"));
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["recipients"].as_array().unwrap().len(), SHOWN + 1);
        assert_eq!(v["recipients"][SHOWN], "… 39997 more (40000 items in all)");
        assert_eq!(v["name"], "big");
        assert_eq!(body(b"not json", None), "(8 bytes, not JSON: not shown)");
    }
}
