//! Recipient objects checked inside the splitter's pass, against a straightforward
//! serde_json reading of the same body.
//!
//! The accept path checks an object recipient's `phoneNumber` from what `split::scan`
//! noted while it read the element (no second parse). These properties write bulk bodies
//! by hand, as clients might (keys in any order, escapes, whitespace, nested values,
//! repeated or missing `phoneNumber`, a `phoneNumber` that is not a string), and compare
//! that against a reference that reads every recipient again with serde_json: the same
//! offenders with the same reasons, and the same parts, every element and every other
//! member of the body passed through byte for byte.

use std::collections::HashSet;
use std::fmt;

use proptest::prelude::*;
use serde::de::{MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;
use sluice::api::text::PHONE_RULE;
use sluice::split;
use sluice::validate::recipients::{self, RecipientsCheck, Verdict, REPEATED_KEY_RULE, SHAPE_RULE};
use sluice::validate::{phone, InvalidRecipients, Rejection};

// === the reference ===

/// An object's members in body order, keys decoded, values as written.
struct Members(Vec<(String, Box<RawValue>)>);

impl<'de> serde::Deserialize<'de> for Members {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Each;
        impl<'de> Visitor<'de> for Each {
            type Value = Members;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        d.deserialize_map(Each)
    }
}

/// The rule one recipient breaks, read the plain way: a string is decoded and checked; an
/// object's members are listed (keys decoded), a repeated key is refused, and the value of
/// `phoneNumber` must decode to a string that follows the rule.
fn reference(recipient: &str) -> Result<(), &'static str> {
    let number = |json: &str| match serde_json::from_str::<Value>(json) {
        Ok(Value::String(s)) if phone::is_valid(&s) => Ok(()),
        Ok(Value::String(_)) => Err(PHONE_RULE),
        _ => Err(SHAPE_RULE),
    };
    if recipient.starts_with('"') {
        return number(recipient);
    }
    let Ok(Members(members)) = serde_json::from_str::<Members>(recipient) else {
        return Err(SHAPE_RULE);
    };
    let keys: HashSet<&str> = members.iter().map(|(k, _)| k.as_str()).collect();
    if keys.len() < members.len() {
        return Err(REPEATED_KEY_RULE);
    }
    match members.iter().find(|(k, _)| k == "phoneNumber") {
        Some((_, value)) => number(value.get()),
        None => Err(SHAPE_RULE),
    }
}

/// The elements of the body's `recipients` array as written, and its other members.
fn read_body(body: &str) -> (Vec<String>, Vec<(String, String)>) {
    let Members(members) = serde_json::from_str(body).expect("the body is an object");
    let mut elements = Vec::new();
    let mut others = Vec::new();
    for (key, value) in members {
        if key == "recipients" {
            let items: Vec<&RawValue> = serde_json::from_str(value.get()).expect("an array");
            elements = items.iter().map(|r| r.get().to_string()).collect();
        } else {
            others.push((key, value.get().to_string()));
        }
    }
    (elements, others)
}

// === the bodies ===

/// A phone number, valid or not, as plain JSON text (no escapes needed).
fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => (any::<bool>(), "[0-9]{10,15}").prop_map(|(p, d)| if p { format!("+{d}") } else { d }),
        1 => "\\+?[0-9]{0,9}",
        1 => "\\+?[0-9]{16,18}",
        1 => "[0-9]{5}[ a+x-][0-9]{6}",
        1 => "\\PC{0,6}",
    ]
}

/// A JSON string of `text`, each character written plainly or as an escape.
fn string_of(text: impl Strategy<Value = String>) -> impl Strategy<Value = String> {
    (text, any::<u64>()).prop_map(|(text, mut choices)| {
        let mut json = String::from('"');
        for c in text.chars() {
            let escape = choices & 3 == 0;
            choices = choices.rotate_right(2);
            match c {
                '"' => json.push_str("\\\""),
                '\\' => json.push_str("\\\\"),
                c if (c as u32) < 0x20 => json.push_str(&format!("\\u{:04x}", c as u32)),
                c if escape => {
                    let mut units = [0; 2];
                    for unit in c.encode_utf16(&mut units) {
                        json.push_str(&format!("\\u{unit:04X}"));
                    }
                }
                '/' if choices & 1 == 0 => json.push_str("\\/"),
                c => json.push(c),
            }
        }
        json.push('"');
        json
    })
}

/// Whitespace between tokens.
fn space() -> impl Strategy<Value = &'static str> {
    prop_oneof![4 => Just(""), 2 => Just(" "), 1 => Just("\r\n\t ")]
}

/// A member key: `phoneNumber` (plain or escaped) often, look-alikes and others too.
fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => Just(r#""phoneNumber""#.to_string()),
        1 => Just(r#""phone\u004eumber""#.to_string()),
        1 => Just(r#""\u0070honeNumber""#.to_string()),
        1 => Just(r#""phonenumber""#.to_string()),
        1 => Just(r#""phoneNumber ""#.to_string()),
        2 => Just(r#""variables""#.to_string()),
        1 => Just(r#""\ud800""#.to_string()),
        2 => string_of("[a-z\"\\\\/é😀]{0,4}"),
    ]
}

/// Any JSON value, nested up to a few levels, with `phoneNumber` keys and look-alike
/// text inside strings.
fn any_value() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just("null".to_string()),
        Just("true".to_string()),
        Just("false".to_string()),
        Just("-0.5e+3".to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        string_of(number()),
        string_of("[a-z\"\\\\{}\\[\\]:,é😀\n]{0,10}"),
        Just(r#"",\"phoneNumber\":\"38970123456\"}""#.to_string()),
        Just(r#""\ud800""#.to_string()),
    ];
    leaf.prop_recursive(3, 12, 4, |inner| {
        prop_oneof![
            prop::collection::vec((inner.clone(), space()), 0..4).prop_map(|items| {
                let items: Vec<String> = items.iter().map(|(v, s)| format!("{s}{v}{s}")).collect();
                format!("[{}]", items.join(","))
            }),
            prop::collection::vec((key(), inner, space()), 0..4).prop_map(|members| {
                let members: Vec<String> = members
                    .iter()
                    .map(|(k, v, s)| format!("{s}{k}{s}:{s}{v}{s}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
        ]
    })
}

/// A recipient object: members in any order, `phoneNumber` once, never, twice, or not a
/// string; whitespace anywhere between tokens.
fn recipient_object() -> impl Strategy<Value = String> {
    let value = prop_oneof![4 => string_of(number()), 3 => any_value()];
    prop::collection::vec((key(), value, space(), space()), 0..7).prop_map(|members| {
        let members: Vec<String> = members
            .iter()
            .map(|(k, v, a, b)| format!("{a}{k}{b}:{a}{v}{b}"))
            .collect();
        format!("{{{}}}", members.join(","))
    })
}

/// A recipient: mostly objects, some strings, the odd value of another type.
fn recipient() -> impl Strategy<Value = String> {
    prop_oneof![6 => recipient_object(), 2 => string_of(number()), 1 => any_value()]
}

/// A bulk body: other members before and after the recipients, whitespace around.
fn bulk_body() -> impl Strategy<Value = String> {
    let member = || (string_of("[a-z]{1,6}"), any_value());
    (
        prop::collection::vec(member(), 0..3),
        prop::collection::vec((recipient(), space()), 1..12),
        prop::collection::vec(member(), 0..3),
        space(),
    )
        .prop_filter_map(
            "a key repeated around the array",
            |(before, items, after, s)| {
                // Keys as they decode (`"\u0061"` is `a`), `recipients` among them.
                let mut keys = HashSet::from(["recipients".to_string()]);
                let decoded = |k: &String| serde_json::from_str::<String>(k).expect("a key");
                if !before
                    .iter()
                    .chain(&after)
                    .all(|(k, _)| keys.insert(decoded(k)))
                {
                    return None;
                }
                let member = |(k, v): &(String, String)| format!("{s}{k}{s}:{s}{v}");
                let items: Vec<String> = items.iter().map(|(r, s)| format!("{s}{r}{s}")).collect();
                let members: Vec<String> = before
                    .iter()
                    .map(member)
                    .chain(std::iter::once(format!(
                        r#"{s}"recipients"{s}:{s}[{}]"#,
                        items.join(",")
                    )))
                    .chain(after.iter().map(member))
                    .collect();
                Some(format!("{s}{{{}}}{s}", members.join(",")))
            },
        )
}

// === the properties ===

/// The offenders the accept path finds, as (index, reason), in index order.
fn offenders_in_the_pass(body: &str) -> Vec<(usize, &'static str)> {
    let mut check = RecipientsCheck::new(InvalidRecipients::Skip);
    let layout =
        split::scan_with(body.as_bytes(), "/recipients", &mut check).expect("the body splits");
    let total = layout.items.len();
    match check.verdict(InvalidRecipients::Skip, total) {
        Verdict::SendAll => Vec::new(),
        Verdict::Skip(offenders) => offenders.iter().map(|o| (o.index, o.reason)).collect(),
        // Every recipient is bad: the refusal lists them by index.
        Verdict::Reject(Rejection::Invalid { errors, .. }) => (0..total)
            .filter_map(|i| {
                let reason = errors.get(&format!("recipients[{i}]"))?;
                let known = [PHONE_RULE, SHAPE_RULE, REPEATED_KEY_RULE];
                Some((
                    i,
                    known
                        .into_iter()
                        .find(|r| r == reason)
                        .expect("a known reason"),
                ))
            })
            .collect(),
        Verdict::Reject(other) => panic!("{other:?}"),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// One object alone: the pass, serde_json's second read (`recipients::check`, what
    /// every object went through before) and the plain reference all agree.
    #[test]
    fn one_object_gets_the_reference_answer(object in recipient_object()) {
        let expected = reference(&object);
        let raw: Box<RawValue> = serde_json::from_str(&object).expect("valid JSON");
        prop_assert_eq!(recipients::check(&raw), expected, "check: {}", object);
        let body = format!(r#"{{"recipients":["38970123456",{object}]}}"#);
        let found = offenders_in_the_pass(&body);
        let in_the_pass = found.first().map_or(Ok(()), |&(_, reason)| Err(reason));
        prop_assert_eq!(in_the_pass, expected, "in the pass: {}", object);
    }

    /// Whole bodies: the same offenders with the same reasons as the reference, and parts
    /// that hold the elements and the body's other members exactly as written.
    #[test]
    fn bodies_get_the_reference_offenders_and_parts(body in bulk_body(), max in 1..5usize) {
        let (elements, others) = read_body(&body);
        let expected: Vec<(usize, &'static str)> = elements
            .iter()
            .enumerate()
            .filter_map(|(i, e)| reference(e).err().map(|reason| (i, reason)))
            .collect();
        prop_assert_eq!(offenders_in_the_pass(&body), expected, "{}", body);

        let layout = split::scan(body.as_bytes(), "/recipients", |_, _| {}).expect("splits");
        let mut cut = Vec::new();
        for range in split::chunks(elements.len(), max) {
            let mut part = Vec::new();
            split::write_part(body.as_bytes(), &layout, range.clone(), &mut part);
            prop_assert_eq!(part.len(), split::part_len(body.as_bytes(), &layout, range.clone()));
            let (items, around) = read_body(std::str::from_utf8(&part).expect("UTF-8"));
            prop_assert_eq!(&items[..], &elements[range], "{}", body);
            prop_assert_eq!(&around, &others, "{}", body);
            cut.extend(items);
        }
        prop_assert_eq!(cut, elements);
    }
}

/// The reference itself, on cases whose answer is known: a reference that agreed with
/// anything would make the properties above pass for nothing.
#[test]
fn the_reference_knows_the_rules() {
    let cases = [
        (
            r#"{"phoneNumber":"+38970123456","v":{"phoneNumber":1}}"#,
            Ok(()),
        ),
        (
            r#"{"v":[],"phone\u004eumber":"\u0033\u00388970123456"}"#,
            Ok(()),
        ),
        (r#"{"phoneNumber":"1234"}"#, Err(PHONE_RULE)),
        (r#"{"phoneNumber":"38970123456\n"}"#, Err(PHONE_RULE)),
        (r#"{"phoneNumber":38970123456}"#, Err(SHAPE_RULE)),
        (r#"{"phoneNumber":"\ud800"}"#, Err(SHAPE_RULE)),
        (r#"{"v":{"phoneNumber":"38970123456"}}"#, Err(SHAPE_RULE)),
        (
            r#"{"\ud800":1,"phoneNumber":"38970123456"}"#,
            Err(SHAPE_RULE),
        ),
        (
            r#"{"phoneNumber":"38970123456","phone\u004eumber":"1"}"#,
            Err(REPEATED_KEY_RULE),
        ),
        (
            r#"{"phoneNumber":"38970123456","v":1,"v":{}}"#,
            Err(REPEATED_KEY_RULE),
        ),
        (r#""38970123456""#, Ok(())),
        (r#""3897""#, Err(PHONE_RULE)),
        ("38970123456", Err(SHAPE_RULE)),
    ];
    for (recipient, expected) in cases {
        assert_eq!(reference(recipient), expected, "{recipient}");
    }
}
