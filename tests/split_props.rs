//! Property tests for `sluice::split`: random bodies (recipients of every shape, any
//! surrounding fields, whitespace anywhere, arrays nested under any pointer) cut into
//! parts of any size, checked against serde_json's own `Value` reading of the same text.

use std::fmt::Write as _;
use std::ops::Range;

use proptest::prelude::*;
use serde_json::Value;
use sluice::split::{chunks, part_len, scan, write_part, RecipientsLayout, SplitError};

/// A JSON value to be written out as text, with the exact spelling chosen by the test.
#[derive(Debug, Clone)]
enum J {
    Null,
    Bool(bool),
    Int(i64),
    Float(f64),
    /// A string; `true` writes every character as a `\u` escape.
    Str(String, bool),
    Arr(Vec<J>),
    /// An object; a key's later repeats are left out when it is written.
    Obj(Vec<(String, J)>),
}

/// Writes values, taking the whitespace between tokens from a cycled list.
struct Writer<'w> {
    out: String,
    spaces: &'w [String],
    next: usize,
}

impl Writer<'_> {
    fn space(&mut self) {
        if !self.spaces.is_empty() {
            let space = &self.spaces[self.next % self.spaces.len()];
            self.next += 1;
            self.out.push_str(space);
        }
    }

    fn string(&mut self, s: &str, escape_all: bool) {
        if escape_all {
            self.out.push('"');
            for unit in s.encode_utf16() {
                write!(self.out, "\\u{unit:04x}").unwrap();
            }
            self.out.push('"');
        } else {
            self.out.push_str(&serde_json::to_string(s).unwrap());
        }
    }

    fn value(&mut self, value: &J) {
        match value {
            J::Null => self.out.push_str("null"),
            J::Bool(b) => self.out.push_str(if *b { "true" } else { "false" }),
            J::Int(i) => write!(self.out, "{i}").unwrap(),
            J::Float(f) => self.out.push_str(&serde_json::to_string(f).unwrap()),
            J::Str(s, escape_all) => self.string(s, *escape_all),
            J::Arr(items) => {
                self.out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.space();
                    if i > 0 {
                        self.out.push(',');
                        self.space();
                    }
                    self.value(item);
                }
                self.space();
                self.out.push(']');
            }
            J::Obj(fields) => {
                // Unique keys, so that any pointer through the object is unambiguous.
                let mut seen = std::collections::HashSet::new();
                self.object(
                    fields
                        .iter()
                        .filter(|(k, _)| seen.insert(k.as_str()))
                        .map(|(k, v)| (k.as_str(), v)),
                )
            }
        }
    }

    fn object<'v>(&mut self, fields: impl Iterator<Item = (&'v str, &'v J)>) {
        self.out.push('{');
        for (i, (key, value)) in fields.enumerate() {
            self.space();
            if i > 0 {
                self.out.push(',');
                self.space();
            }
            self.string(key, false);
            self.space();
            self.out.push(':');
            self.space();
            self.value(value);
        }
        self.space();
        self.out.push('}');
    }
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("recipients".to_owned()),
        Just("to".to_owned()),
        Just("a/b".to_owned()),
        Just("m~n".to_owned()),
        Just(String::new()),
        Just("0".to_owned()),
        Just("1".to_owned()),
        "[a-z]{1,6}",
        "\\PC{0,6}",
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\+?[0-9]{8,15}",
        "[\\]\\[,\"\\\\{}: \t\n\u{0}-\u{1f}]{0,8}",
        "\\PC{0,12}",
        any::<String>(),
    ]
}

fn scalar() -> impl Strategy<Value = J> {
    prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::Bool),
        any::<i64>().prop_map(J::Int),
        (-1e300f64..1e300).prop_map(J::Float),
        (text(), any::<bool>()).prop_map(|(s, e)| J::Str(s, e)),
    ]
}

fn value() -> impl Strategy<Value = J> {
    scalar().prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(J::Arr),
            prop::collection::vec((key(), inner), 0..6).prop_map(J::Obj),
        ]
    })
}

/// A recipient as clients send them: a phone number, an object with variables, or
/// anything else (validation happens elsewhere).
fn recipient() -> impl Strategy<Value = J> {
    prop_oneof![
        4 => (text(), any::<bool>()).prop_map(|(s, e)| J::Str(s, e)),
        4 => (text(), prop::collection::vec((key(), value()), 0..4)).prop_map(|(phone, vars)| {
            J::Obj(vec![
                ("phoneNumber".to_owned(), J::Str(phone, false)),
                ("variables".to_owned(), J::Obj(vars)),
            ])
        }),
        1 => value(),
    ]
}

fn spaces() -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec("[ \t\r\n]{0,3}", 0..12)
}

/// An object's fields, in order.
type Fields = Vec<(String, J)>;

/// Fields around the path (repeats of a key, or of the path's key, are left out when
/// the body is written).
fn fields() -> impl Strategy<Value = Fields> {
    prop::collection::vec((key(), value()), 0..4)
}

/// One body: a pointer path of 1..=3 keys, fields around each object on the path, and
/// the value at the path's end.
#[derive(Debug, Clone)]
struct Body {
    path: Vec<String>,
    /// Fields before and after the path's key, for each object on the path.
    around: Vec<(Fields, Fields)>,
    target: J,
    spaces: Vec<String>,
}

impl Body {
    fn pointer(&self) -> String {
        self.path
            .iter()
            .map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
            .collect()
    }

    fn text(&self) -> String {
        let mut writer = Writer {
            out: String::new(),
            spaces: &self.spaces,
            next: 0,
        };
        writer.space();
        self.level(&mut writer, 0);
        writer.space();
        writer.out
    }

    fn level(&self, writer: &mut Writer, level: usize) {
        let Some(key) = self.path.get(level) else {
            writer.value(&self.target);
            return;
        };
        let (before, after) = &self.around[level];
        let mut seen = std::collections::HashSet::new();
        seen.insert(key.as_str());
        let before: Vec<_> = before.iter().filter(|(k, _)| seen.insert(k)).collect();
        let after: Vec<_> = after.iter().filter(|(k, _)| seen.insert(k)).collect();
        writer.out.push('{');
        let count = before.len() + 1 + after.len();
        let mut index = 0;
        let separate = |writer: &mut Writer, index: &mut usize| {
            writer.space();
            if *index > 0 {
                writer.out.push(',');
                writer.space();
            }
            *index += 1;
        };
        for (k, v) in before {
            separate(writer, &mut index);
            writer.string(k, false);
            writer.space();
            writer.out.push(':');
            writer.space();
            writer.value(v);
        }
        separate(writer, &mut index);
        writer.string(key, false);
        writer.space();
        writer.out.push(':');
        writer.space();
        self.level(writer, level + 1);
        for (k, v) in after {
            separate(writer, &mut index);
            writer.string(k, false);
            writer.space();
            writer.out.push(':');
            writer.space();
            writer.value(v);
        }
        assert_eq!(index, count);
        writer.space();
        writer.out.push('}');
    }
}

fn body_with(target: BoxedStrategy<J>) -> impl Strategy<Value = Body> {
    let path = prop::collection::vec(key(), 1..4);
    (path, target, spaces()).prop_flat_map(|(path, target, spaces)| {
        prop::collection::vec((fields(), fields()), path.len()).prop_map(move |around| Body {
            path: path.clone(),
            around,
            target: target.clone(),
            spaces: spaces.clone(),
        })
    })
}

fn recipients_body() -> impl Strategy<Value = (Body, usize)> {
    let target = prop::collection::vec(recipient(), 1..40).prop_map(J::Arr);
    body_with(target.boxed()).prop_flat_map(|body| {
        let n = match &body.target {
            J::Arr(items) => items.len(),
            _ => unreachable!(),
        };
        (Just(body), 1..=n + 2)
    })
}

fn parse(text: &[u8]) -> Value {
    serde_json::from_slice(text).expect("valid JSON")
}

fn part(body: &[u8], layout: &RecipientsLayout, range: Range<usize>) -> Vec<u8> {
    let mut out = Vec::new();
    write_part(body, layout, range, &mut out);
    out
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// Parts cut by `chunks` re-join to the original array, and nothing outside the
    /// array changes by a single byte.
    #[test]
    fn parts_rejoin_to_the_original((shape, max) in recipients_body()) {
        let text = shape.text();
        let body = text.as_bytes();
        let pointer = shape.pointer();
        let original = parse(body);
        let expected = original.pointer(&pointer).unwrap().as_array().unwrap().clone();

        let mut visited = Vec::new();
        let layout = scan(body, &pointer, |i, raw| visited.push((i, raw.get().to_owned())))
            .unwrap();
        prop_assert_eq!(layout.items.len(), expected.len());
        prop_assert_eq!(visited.len(), expected.len());
        for (i, ((index, raw), range)) in visited.iter().zip(&layout.items).enumerate() {
            prop_assert_eq!(*index, i);
            prop_assert_eq!(raw.as_str(), &text[range.clone()]);
        }
        // Items are in order, inside the array, and never overlap.
        prop_assert_eq!(body[layout.array.start], b'[');
        prop_assert_eq!(body[layout.array.end - 1], b']');
        prop_assert!(layout.items[0].start > layout.array.start);
        prop_assert!(layout.items[layout.items.len() - 1].end < layout.array.end);
        for pair in layout.items.windows(2) {
            prop_assert!(pair[0].end < pair[1].start);
        }

        let mut rejoined = Vec::new();
        let mut covered = 0;
        let (before, after) = (&body[..layout.array.start], &body[layout.array.end..]);
        for range in chunks(layout.items.len(), max) {
            prop_assert!(!range.is_empty() && range.len() <= max);
            prop_assert_eq!(range.start, covered);
            covered = range.end;
            let written = part(body, &layout, range.clone());
            prop_assert_eq!(written.len(), part_len(body, &layout, range.clone()));
            prop_assert!(written.starts_with(before));
            prop_assert!(written.ends_with(after));
            let value = parse(&written);
            let items = value.pointer(&pointer).unwrap().as_array().unwrap();
            prop_assert_eq!(items.len(), range.len());
            rejoined.extend(items.iter().cloned());
            // A part scans back to the same elements, byte for byte.
            let again = scan(&written, &pointer, |_, _| {}).unwrap();
            for (mine, theirs) in again.items.iter().zip(&layout.items[range]) {
                prop_assert_eq!(&written[mine.clone()], &body[theirs.clone()]);
            }
        }
        prop_assert_eq!(covered, layout.items.len());
        prop_assert_eq!(rejoined, expected);
    }

    /// On any body, `scan` agrees with serde_json's `Value::pointer`: same verdict, and
    /// the same elements when it finds an array. Checked for the pointer the body was
    /// built around and for one that keeps some of its tokens and then wanders off.
    #[test]
    fn scan_agrees_with_value_pointer(
        shape in body_with(prop_oneof![
            3 => prop::collection::vec(recipient(), 0..8).prop_map(J::Arr),
            1 => value(),
        ].boxed()),
        keep in any::<prop::sample::Index>(),
        wander in prop::collection::vec(key(), 0..3),
    ) {
        let text = shape.text();
        let value = parse(text.as_bytes());
        let kept = &shape.path[..keep.index(shape.path.len() + 1)];
        let other: String = kept
            .iter()
            .chain(&wander)
            .map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
            .collect();
        for pointer in [shape.pointer(), other] {
            agrees(&text, &value, pointer)?;
        }
    }
}

fn agrees(text: &str, value: &Value, pointer: String) -> Result<(), TestCaseError> {
    let ours = scan(text.as_bytes(), &pointer, |_, _| {});
    if pointer.is_empty() {
        prop_assert!(matches!(ours, Err(SplitError::BadPointer(_))));
        return Ok(());
    }
    match value.pointer(&pointer) {
        Some(Value::Array(items)) if items.is_empty() => {
            prop_assert_eq!(ours, Err(SplitError::Empty { pointer }));
        }
        Some(Value::Array(items)) => {
            let layout = ours.unwrap();
            let found: Vec<Value> = layout
                .items
                .iter()
                .map(|r| parse(&text.as_bytes()[r.clone()]))
                .collect();
            prop_assert_eq!(&found, items);
        }
        Some(_) => prop_assert_eq!(ours, Err(SplitError::NotAnArray { pointer })),
        None => prop_assert_eq!(ours, Err(SplitError::MissingArray { pointer })),
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    /// A body cut anywhere before its closing brace is never accepted.
    #[test]
    fn truncated_bodies_are_rejected((shape, _) in recipients_body(), cut in any::<prop::sample::Index>()) {
        let text = shape.text();
        let close = text.rfind('}').unwrap();
        let end = cut.index(close + 1);
        let result = scan(&text.as_bytes()[..end], &shape.pointer(), |_, _| {});
        prop_assert!(result.is_err(), "accepted {:?}", &text[..end]);
    }

    /// Whatever `scan` accepts, serde_json accepts too, whatever the bytes; except what
    /// JSON's grammar allows and `Value` refuses when it decodes it: a number beyond f64's
    /// range, a `\u` escape of half a surrogate pair.
    #[test]
    fn accepted_bodies_are_json(
        (shape, _) in recipients_body(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut body = shape.text().into_bytes();
        let at = at.index(body.len());
        body[at] = byte;
        if scan(&body, &shape.pointer(), |_, _| {}).is_ok() {
            if let Err(error) = serde_json::from_slice::<Value>(&body) {
                let message = error.to_string();
                prop_assert!(
                    message.contains("surrogate")
                        || message.contains("end of hex escape")
                        || message.contains("number out of range"),
                    "{} in {}", message, String::from_utf8_lossy(&body)
                );
            }
        }
    }
}
