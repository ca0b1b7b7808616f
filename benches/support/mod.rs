//! What `benches/split.rs` and `examples/split_mem.rs` share: the two million-recipient
//! bodies, the recipient check, and the two ways of splitting a body (sluice's and the
//! naive `serde_json::Value` one).
//!
//! Validation is sluice's own: `validate::recipients::RecipientsCheck`, the visitor the
//! accept path runs inside the splitter's single pass. The naive way checks each
//! `Value` recipient with the same phone rule (`validate::phone::is_valid`).

// Each includer uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::Write;

use serde_json::Value;
use sluice::split::{chunks, part_len, scan_with, write_part};
use sluice::validate::recipients::RecipientsCheck;
use sluice::validate::{phone, InvalidRecipients};

/// Recipients in each benchmark body.
pub const RECIPIENTS: usize = 1_000_000;
/// Most recipients per part: the provider's documented maximum per request.
pub const PART_MAX: usize = 200_000;
/// Where the recipients are in the bodies (sluice's default bulk route).
pub const POINTER: &str = "/recipients";

/// The two body shapes of issue 6.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// `"recipients": ["+38970000000", ...]`
    Strings,
    /// `"recipients": [{"phoneNumber": "...", "variables": {...}}, ...]`
    Objects,
}

impl Shape {
    pub fn name(self) -> &'static str {
        match self {
            Shape::Strings => "strings",
            Shape::Objects => "objects",
        }
    }
}

/// A compact bulk body of `n` recipients, written straight into one buffer sized up
/// front (so building it leaves no freed heap behind to blur a memory measurement).
pub fn body(shape: Shape, n: usize) -> Vec<u8> {
    let per_item = match shape {
        Shape::Strings => 16,
        Shape::Objects => 80,
    };
    let mut body = Vec::with_capacity(n * per_item + 128);
    let write = |body: &mut Vec<u8>, s: std::fmt::Arguments| {
        body.write_fmt(s).expect("writing to a Vec cannot fail")
    };
    match shape {
        Shape::Strings => {
            write(
                &mut body,
                format_args!(r#"{{"sender":"Sluice","text":"Hello from the proxy","recipients":["#),
            );
            for i in 0..n {
                let comma = if i > 0 { "," } else { "" };
                write(&mut body, format_args!(r#"{comma}"+3897{i:07}""#));
            }
            write(&mut body, format_args!(r#"],"channel":"sms"}}"#));
        }
        Shape::Objects => {
            write(
                &mut body,
                format_args!(
                    r#"{{"sender":"Sluice","text":"Hello {{{{name}}}}, your code is {{{{code}}}}","recipients":["#
                ),
            );
            for i in 0..n {
                let comma = if i > 0 { "," } else { "" };
                write(
                    &mut body,
                    format_args!(
                        r#"{comma}{{"phoneNumber":"3897{i:07}","variables":{{"name":"Ana {}","code":"{:06}"}}}}"#,
                        i % 97,
                        (i * 7919) % 1_000_000
                    ),
                );
            }
            write(&mut body, format_args!(r#"],"channel":"viber"}}"#));
        }
    }
    body
}

/// The same check on a `serde_json::Value` recipient (the naive path's).
pub fn valid_value(recipient: &Value) -> bool {
    match recipient {
        Value::String(s) => phone::is_valid(s),
        Value::Object(o) => o
            .get("phoneNumber")
            .and_then(Value::as_str)
            .is_some_and(phone::is_valid),
        _ => false,
    }
}

/// What one split produced, for a sanity check that both ways did the same work.
#[derive(Debug, PartialEq, Eq)]
pub struct Outcome {
    pub recipients: usize,
    pub invalid: usize,
    pub parts: usize,
}

/// sluice's way: one `split::scan` pass with the recipient check as its visitor; then,
/// when `sink` is given, each part of at most `max` recipients written (one at a time,
/// each into a buffer of its exact size) and handed to `sink`.
pub fn sluice_split(body: &[u8], max: usize, sink: Option<&mut dyn FnMut(Vec<u8>)>) -> Outcome {
    // The product's own check, as the accept path runs it: inside the splitter's pass.
    let mut check = RecipientsCheck::new(InvalidRecipients::Reject);
    let layout = scan_with(body, POINTER, &mut check).expect("the benchmark body splits");
    let invalid = check.offenders();
    let n = layout.items.len();
    let mut parts = 0;
    if let Some(sink) = sink {
        for range in chunks(n, max) {
            let mut out = Vec::with_capacity(part_len(body, &layout, range.clone()));
            write_part(body, &layout, range, &mut out);
            sink(out);
            parts += 1;
        }
    }
    Outcome {
        recipients: n,
        invalid,
        parts,
    }
}

/// The naive way: parse the whole body into a `serde_json::Value`, check every
/// recipient, then move the recipients into parts of at most `max` and serialise each
/// part (with the body's other fields) back to bytes. Recipients are moved, not cloned,
/// so this is the naive approach at its most frugal.
pub fn naive_split(body: &[u8], max: usize, sink: &mut dyn FnMut(Vec<u8>)) -> Outcome {
    let mut value: Value = serde_json::from_slice(body).expect("the benchmark body is JSON");
    let object = value.as_object_mut().expect("the body is an object");
    let Some(Value::Array(recipients)) = object.remove("recipients") else {
        panic!("the body has a recipients array");
    };
    let invalid = recipients.iter().filter(|r| !valid_value(r)).count();
    let n = recipients.len();
    let mut items = recipients.into_iter();
    let mut parts = 0;
    loop {
        let chunk: Vec<Value> = items.by_ref().take(max).collect();
        if chunk.is_empty() {
            break;
        }
        object.insert("recipients".into(), Value::Array(chunk));
        sink(serde_json::to_vec(&*object).expect("a Value serialises"));
        parts += 1;
    }
    Outcome {
        recipients: n,
        invalid,
        parts,
    }
}

/// Panics unless both ways cut `body` into the same parts (compared as JSON values: the
/// naive way reorders keys, sluice keeps the client's bytes).
pub fn check_same_parts(body: &[u8], max: usize) {
    let mut ours = Vec::new();
    let a = sluice_split(body, max, Some(&mut |p| ours.push(p)));
    let mut theirs = Vec::new();
    let b = naive_split(body, max, &mut |p| theirs.push(p));
    assert_eq!(a, b, "both ways must see the same recipients");
    assert_eq!(a.invalid, 0, "every benchmark recipient is valid");
    for (x, y) in ours.iter().zip(&theirs) {
        let x: Value = serde_json::from_slice(x).expect("sluice's part is JSON");
        let y: Value = serde_json::from_slice(y).expect("the naive part is JSON");
        assert_eq!(x, y, "both ways must produce the same parts");
    }
}
