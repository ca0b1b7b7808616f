//! Cutting a bulk body's recipients array into parts, without building a `Value` tree.
//!
//! A bulk send is one JSON object whose recipients array can hold millions of elements,
//! while the provider takes at most 200 000 (often fewer) per request. This module owns
//! the two steps that turn one such body into several smaller ones:
//!
//! 1. [`scan`] reads the body **once**, front to back. It walks only the objects on the
//!    way to the array (named by a JSON pointer such as `/recipients`), skips every other
//!    value without allocating, and records where the array and each of its elements sit
//!    as **byte offsets** into the body ([`RecipientsLayout`]). Each element is also
//!    handed to a visitor ([`Visit`]) during that same pass, so a validator can look at
//!    recipients without parsing the body a second time; so is every other member of the
//!    objects that enclose the array (a send's `imageUrl` next to its `recipients`, say).
//! 2. [`write_part`] builds one part: the original body, byte for byte, with the array
//!    replaced by `[` + a run of the elements joined by `,` + `]`. [`chunks`] says which
//!    runs to cut, and [`part_len`] gives a part's exact size for preallocation.
//!
//! What the visitor gets, during the pass:
//! - [`Visit::item`], for each element in order: an [`Element`], whose [`Element::get`] is
//!   the element's JSON text borrowed from the body (without the whitespace around it),
//!   and whose [`Element::member`] says what the pass noticed inside an object element:
//!   where the value of the top-level member named by [`Visit::member`] is (the
//!   recipients check names `phoneNumber`), and whether any key repeats. That is
//!   [`Member::Unique`] (keys all distinct; the member's raw JSON value, if it has one) or
//!   [`Member::Repeated`], judged on the keys as written, so only when no key of the
//!   object has an escape; an object with an escaped key (or more than
//!   [`KEYS_COMPARED`] keys) is [`Member::Unknown`], for the visitor to read again
//!   itself. Members of nested objects are never looked at (`{"variables":
//!   {"phoneNumber": …}}` has no `phoneNumber`). Anything but an object, or any element
//!   when the visitor names no member, is [`Member::NotLooked`].
//! - [`Visit::field`], for each other member of an object on the way to the array, in
//!   body order: its depth, its key (unescaped) and its value as a `RawValue`.
//!
//! How the pass reads: a hand-written reader (`split/fast.rs`) walks the bytes; serde_json
//! reads only the members around the array (as `RawValue`s) and keys with escapes. The
//! reader accepts exactly what serde_json accepts and does not explain a refusal: when it
//! refuses a body, the same body is read again by a serde_json walk, whose error (and
//! message) is the one returned. So a refused body is read twice; an accepted one once.
//! Debug builds also run the serde_json walk on every body the reader accepts and check
//! that both find the same layout.
//!
//! Why not `serde_json::Value`? A `Value` tree of a million recipients costs several times
//! the body in memory and many small allocations, and re-serialising it would change
//! bytes the client sent (number formatting, key order, escapes). Working on byte ranges
//! keeps memory at the body plus 16 bytes per element and keeps every byte outside the
//! array exactly as received.
//!
//! What [`scan`] guarantees about a body it accepts:
//! - it is valid UTF-8 and one JSON object, with nothing after it but whitespace;
//! - no value in it nests more than [`MAX_DEPTH`] arrays/objects deep (serde_json's own
//!   limit when it parses a `Value`);
//! - no object on the way to the array repeats a key;
//! - the value at the pointer is a non-empty array.
//!
//! Values are checked against JSON's grammar, not decoded. The grammar allows two things
//! that serde_json refuses when it decodes them (as a validator reading a recipient
//! will): a number beyond f64's range, and a `\u` escape naming half of a surrogate pair.
//! What the elements are is not checked either: numbers, strings and objects alike are
//! items, and validating them is the caller's business.

mod fast;

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;
use std::ops::Range;

use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The deepest nesting of arrays and objects that a body may have, counting the body's own
/// top-level object as 1. It is the limit serde_json applies when it parses a body into a
/// `Value`, so no body that [`scan`] accepts is too deep for serde_json.
pub const MAX_DEPTH: usize = 127;

/// Where the recipients array sits in a body, and where each element is.
///
/// All ranges are byte offsets into the body that was passed to [`scan`]; they are only
/// meaningful together with that same body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientsLayout {
    /// Byte range of the whole array, from its `[` to its `]` inclusive.
    pub array: Range<usize>,
    /// Byte range of each element's raw JSON, in array order, without the whitespace and
    /// commas around it. Never empty: an empty array is [`SplitError::Empty`].
    pub items: Vec<Range<usize>>,
}

/// Why a body could not be split.
///
/// When several things are wrong, the one met first while reading the body front to back
/// is reported; [`SplitError::MissingArray`] is only known once the whole body is read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SplitError {
    /// The body is not valid JSON (or not valid UTF-8). Holds serde_json's message, which
    /// ends in "at line L column C".
    #[error("body is not valid JSON: {0}")]
    NotJson(String),
    /// The body is valid JSON, but its top level is not an object.
    #[error("body is not a JSON object")]
    NotAnObject,
    /// Nothing in the body is at the pointer (a key or index on the way is absent, or a
    /// value on the way is neither an object nor an array).
    #[error("body has no array at {pointer:?}")]
    MissingArray { pointer: String },
    /// The value at the pointer exists but is not an array.
    #[error("the value at {pointer:?} is not an array")]
    NotAnArray { pointer: String },
    /// The array at the pointer has no elements, so there is nothing to send.
    #[error("the array at {pointer:?} is empty")]
    Empty { pointer: String },
    /// The pointer itself is malformed, or names the whole body. Holds the reason.
    #[error("bad JSON pointer: {0}")]
    BadPointer(String),
    /// Some value in the body nests deeper than [`MAX_DEPTH`] arrays/objects.
    #[error("body nests deeper than {MAX_DEPTH} arrays/objects")]
    TooDeep,
    /// An object on the way to the array (the one holding it, or one of its parents) has
    /// this key twice, so it would be ambiguous which value the provider takes.
    #[error("duplicate key {0:?} in an object on the way to the array")]
    DuplicateKey(String),
}

pub use fast::KEYS_COMPARED;

/// What [`scan`] shows a caller during its single pass over the body.
///
/// [`scan`] takes a closure that looks at the elements only; [`scan_with`] takes a
/// `Visit` (or `&mut` one, to read its findings afterwards).
pub trait Visit {
    /// Element `index` of the array at the pointer: its JSON text, borrowed from the body,
    /// and what the pass noted about it ([`Element::member`]).
    fn item(&mut self, index: usize, element: &Element<'_>);

    /// A member `key` of an object on the way to the array (the body's top-level object is
    /// at `depth` 0), other than the one leading to the array, in body order. Elements of
    /// arrays on the way, other than the one the pointer names, are not shown.
    fn field(&mut self, depth: usize, key: &str, raw: &RawValue) {
        let _ = (depth, key, raw);
    }

    /// The key of the top-level member of object elements that [`Visit::item`] wants
    /// located ([`Member`]); asked once, before the pass. `None` (the default): none, and
    /// the pass does not look at keys.
    fn member(&self) -> Option<&'static str> {
        None
    }
}

/// One element of the array, as [`Visit::item`] is shown it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Element<'b> {
    json: &'b str,
    member: Member<'b>,
}

impl<'b> Element<'b> {
    /// The element's JSON text, borrowed from the body, without the whitespace around it
    /// (what its bytes in [`RecipientsLayout::items`] hold).
    pub fn get(&self) -> &'b str {
        self.json
    }

    /// For an object element: its member named by [`Visit::member`], as the pass saw it.
    pub fn member(&self) -> Member<'b> {
        self.member
    }
}

/// What the pass noted about an object element's top-level members, for the key named by
/// [`Visit::member`]. Keys are compared as written, so only an object none of whose keys
/// has an escape is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Member<'b> {
    /// Not looked at: the element is not an object, or the visitor names no key.
    NotLooked,
    /// Every key differs from the others; the named member's value as raw JSON borrowed
    /// from the body (`"+38970123456"`, quotes and any escapes included), or `None` when
    /// the object has no such key.
    Unique(Option<&'b str>),
    /// Some key appears twice.
    Repeated,
    /// Some key has an escape (`"phone\u004eumber"`), or the object has more than
    /// [`KEYS_COMPARED`] keys: read the element's text to know.
    Unknown,
}

/// A closure as a [`Visit`] of the elements only.
struct Items<F>(F);

impl<F: FnMut(usize, &Element<'_>)> Visit for Items<F> {
    fn item(&mut self, index: usize, element: &Element<'_>) {
        (self.0)(index, element);
    }
}

impl<V: Visit + ?Sized> Visit for &mut V {
    fn item(&mut self, index: usize, element: &Element<'_>) {
        (**self).item(index, element);
    }

    fn field(&mut self, depth: usize, key: &str, raw: &RawValue) {
        (**self).field(depth, key, raw);
    }

    fn member(&self) -> Option<&'static str> {
        (**self).member()
    }
}

/// The state of one serde_json walk ([`explain`]), shared by the seeds and visitors below.
struct Walker<'b, 'p> {
    /// The whole body, for finding the array's brackets around its first/last element.
    body: &'b [u8],
    /// The pointer as given, for error messages.
    pointer: &'p str,
    /// The pointer's reference tokens, unescaped (`~1` → `/`, `~0` → `~`).
    tokens: &'p [Cow<'p, str>],
    /// Filled in when the target array has been read.
    layout: Option<RecipientsLayout>,
    /// A structured error found by a visitor. The visitor then returns a placeholder
    /// serde error to stop the deserializer; [`explain`] reports this one instead.
    error: Option<SplitError>,
}

/// Deserializes the value reached after `level` pointer tokens: either a container on the
/// way to the array (walked with [`PathVisitor`]) or the array itself ([`TargetVisitor`]).
struct AtPath<'w, 'b, 'p> {
    walker: &'w mut Walker<'b, 'p>,
    level: usize,
}

/// Visits a container on the way to the array; see [`AtPath`].
struct PathVisitor<'w, 'b, 'p> {
    walker: &'w mut Walker<'b, 'p>,
    level: usize,
}

/// Visits the value at the pointer, which must be a non-empty array.
struct TargetVisitor<'w, 'b, 'p> {
    walker: &'w mut Walker<'b, 'p>,
}

/// Skips a value that is off the path, checking only that it is valid and not too deep.
/// It is read as a borrowed [`RawValue`]: serde_json then validates it without decoding
/// strings or numbers and without allocating.
struct Skip<'w> {
    error: &'w mut Option<SplitError>,
    /// How many arrays/objects enclose the value.
    enclosing: usize,
}

/// Reads an object key, borrowed from the body unless it contains escapes.
struct Key;

/// The message of the placeholder serde error used to stop the deserializer once
/// [`Walker::error`] is set. Never shown to anyone.
const ABORT: &str = "sluice split: stopped";

/// Scans `body` once and locates the array at the JSON pointer `pointer`.
///
/// `pointer` follows RFC 6901: `/recipients`, `/message/to`, `/batches/0/to`; `~1` stands
/// for `/` and `~0` for `~` inside a key. It must name something inside the body (the
/// empty pointer, the whole body, is [`SplitError::BadPointer`]), and the body's top level
/// must be an object.
///
/// `visit(index, element)` is called for each element of the array, in order, during the
/// same pass; `element.get()` is the element's JSON text, borrowed from `body`.
/// ([`scan_with`] also shows the other members of the objects on the way to the array, and
/// can have the pass locate a member of object elements.) A validator can collect its
/// findings there. If `scan` then returns an error (say the body turns out to be truncated
/// after the array), `visit` may already have seen some or all elements: discard what it
/// collected. `visit` is never called for an element of a second array (a duplicate key is
/// an error as soon as it is read).
///
/// Time is one pass over the body (two for a body it refuses: the second one explains the
/// refusal); extra memory is the returned layout (16 bytes per element) plus a set of the
/// keys of each object on the way to the array.
///
/// # Errors
///
/// See [`SplitError`]: the first problem met reading the body front to back.
pub fn scan(
    body: &[u8],
    pointer: &str,
    visit: impl FnMut(usize, &Element<'_>),
) -> Result<RecipientsLayout, SplitError> {
    scan_with(body, pointer, Items(visit))
}

/// [`scan`] with a [`Visit`], which also sees the members of the objects on the way to
/// the array ([`Visit::field`]) and may name a member of object elements for the pass to
/// locate ([`Visit::member`]).
///
/// # Errors
///
/// Like [`scan`].
pub fn scan_with(
    body: &[u8],
    pointer: &str,
    mut visit: impl Visit,
) -> Result<RecipientsLayout, SplitError> {
    let tokens = parse_pointer(pointer)?;
    let text = std::str::from_utf8(body).map_err(|e| invalid_utf8(body, &e))?;
    if let Some(layout) = fast::scan(text, &tokens, &mut visit) {
        #[cfg(debug_assertions)]
        assert_eq!(
            explain(text, pointer, &tokens),
            Ok(layout.clone()),
            "split: the reader accepted a body that the serde_json walk reads otherwise"
        );
        return Ok(layout);
    }
    match explain(text, pointer, &tokens) {
        Err(error) => Err(error),
        // Unreachable while the two readers agree (tests check that they do). Should they
        // not, refuse the body: the visitor may have seen only some of its elements.
        Ok(_) => {
            debug_assert!(false, "split: the reader refused a body serde_json accepts");
            Err(SplitError::NotJson(
                "sluice's two JSON readers disagree about this body (a bug in sluice)".into(),
            ))
        }
    }
}

/// Reads `text` with serde_json's streaming deserializer, walking the objects on the way to
/// the array and reading every other value as a borrowed `RawValue`: the reference for
/// what [`scan`] accepts, and where its errors (and their messages) come from.
fn explain(
    text: &str,
    pointer: &str,
    tokens: &[Cow<'_, str>],
) -> Result<RecipientsLayout, SplitError> {
    let mut walker = Walker {
        body: text.as_bytes(),
        pointer,
        tokens,
        layout: None,
        error: None,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let result = AtPath {
        walker: &mut walker,
        level: 0,
    }
    .deserialize(&mut de)
    .and_then(|()| de.end());
    if let Some(error) = walker.error {
        return Err(error);
    }
    result.map_err(|e| from_json_error(&e))?;
    walker.layout.ok_or_else(|| SplitError::MissingArray {
        pointer: pointer.to_owned(),
    })
}

/// Writes the part body for `layout.items[range]`, appending it to `out`.
///
/// The part is the original body with the array (`layout.array`) replaced by `[` + those
/// elements, byte for byte, joined by `,` + `]`; every other byte of the body is kept as
/// is. An empty `range` writes `[]` in place of the array.
///
/// # Panics
///
/// If `range` is not within `0..layout.items.len()`, or `layout` was not made from `body`.
pub fn write_part(body: &[u8], layout: &RecipientsLayout, range: Range<usize>, out: &mut Vec<u8>) {
    out.reserve(part_len(body, layout, range.clone()));
    out.extend_from_slice(&body[..layout.array.start]);
    out.push(b'[');
    let mut items = layout.items[range].iter();
    if let Some(first) = items.next() {
        // Copy runs of elements that the body already separates by exactly one byte (which
        // can only be their comma) in one go: a compact body is then copied in one block.
        let mut run = first.clone();
        for item in items {
            if item.start == run.end + 1 {
                run.end = item.end;
            } else {
                out.extend_from_slice(&body[run]);
                out.push(b',');
                run = item.clone();
            }
        }
        out.extend_from_slice(&body[run]);
    }
    out.push(b']');
    out.extend_from_slice(&body[layout.array.end..]);
}

/// The exact length in bytes of what [`write_part`] writes for the same arguments, for
/// preallocating the buffer.
///
/// # Panics
///
/// Like [`write_part`].
pub fn part_len(body: &[u8], layout: &RecipientsLayout, range: Range<usize>) -> usize {
    let items = &layout.items[range];
    let elements: usize = items.iter().map(|r| r.end - r.start).sum();
    let commas = items.len().saturating_sub(1);
    let outside = layout.array.start + (body.len() - layout.array.end);
    outside + 2 + elements + commas
}

/// Cuts `n` items into consecutive ranges of at most `max` items, in order, covering
/// `0..n` exactly once; every range is non-empty, and only the last may be shorter.
/// `n == 0` gives no ranges.
///
/// # Panics
///
/// If `max` is 0.
pub fn chunks(n: usize, max: usize) -> impl ExactSizeIterator<Item = Range<usize>> {
    assert!(max >= 1, "split::chunks: max must be at least 1");
    (0..n)
        .step_by(max)
        .map(move |start| start..start.saturating_add(max).min(n))
}

/// Splits an RFC 6901 pointer into unescaped reference tokens.
fn parse_pointer(pointer: &str) -> Result<Vec<Cow<'_, str>>, SplitError> {
    if pointer.is_empty() {
        return Err(SplitError::BadPointer(
            "\"\" names the whole body; name the array inside it, e.g. \"/recipients\"".into(),
        ));
    }
    let Some(rest) = pointer.strip_prefix('/') else {
        return Err(SplitError::BadPointer(format!(
            "{pointer:?} does not start with '/'"
        )));
    };
    rest.split('/')
        .map(|t| unescape_token(pointer, t))
        .collect()
}

/// Undoes a token's `~1` (`/`) and `~0` (`~`) escapes; any other `~` is an error.
fn unescape_token<'p>(pointer: &str, token: &'p str) -> Result<Cow<'p, str>, SplitError> {
    if !token.contains('~') {
        return Ok(Cow::Borrowed(token));
    }
    let mut out = String::with_capacity(token.len());
    let mut chars = token.chars();
    while let Some(c) = chars.next() {
        if c != '~' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('0') => out.push('~'),
            Some('1') => out.push('/'),
            _ => {
                return Err(SplitError::BadPointer(format!(
                    "{pointer:?} has a '~' not followed by 0 or 1"
                )))
            }
        }
    }
    Ok(Cow::Owned(out))
}

/// The array index a token names, per RFC 6901: `0`, or digits without a leading zero.
fn array_index(token: &str) -> Option<usize> {
    let digits = token.bytes().all(|b| b.is_ascii_digit());
    if token.is_empty() || !digits || (token.len() > 1 && token.starts_with('0')) {
        return None;
    }
    token.parse().ok()
}

/// Whether `raw`, one complete JSON value already checked by serde_json, nests more than
/// `budget` arrays/objects deep (a scalar nests 0 deep, `[]` 1, `[{}]` 2).
///
/// serde_json skips values with an explicit stack and no depth limit, so this check is
/// what keeps skipped values within [`MAX_DEPTH`]. It only reads bytes when the value
/// is long enough to possibly exceed the budget.
fn nests_deeper_than(raw: &[u8], budget: usize) -> bool {
    // Each level takes two bytes at least (its opening and closing bracket).
    if raw.len() / 2 <= budget || !matches!(raw.first(), Some(b'[' | b'{')) {
        return false;
    }
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &b in raw {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > budget {
                    return true;
                }
            }
            b']' | b'}' => depth -= 1,
            _ => {}
        }
    }
    false
}

/// JSON's whitespace: space, tab, line feed, carriage return (and nothing else).
fn is_json_whitespace(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

/// Maps a serde_json error: its recursion limit is [`SplitError::TooDeep`], anything else
/// [`SplitError::NotJson`] with serde_json's message (which carries line and column).
fn from_json_error(error: &serde_json::Error) -> SplitError {
    let message = error.to_string();
    // serde_json does not expose its error codes; the message's start is stable.
    if message.starts_with("recursion limit exceeded") {
        SplitError::TooDeep
    } else {
        SplitError::NotJson(message)
    }
}

/// [`SplitError::NotJson`] for a body that is not UTF-8, in serde_json's "at line L column
/// C" style (1-based; the column counts bytes).
fn invalid_utf8(body: &[u8], error: &std::str::Utf8Error) -> SplitError {
    let at = error.valid_up_to();
    let before = &body[..at];
    let line = 1 + before.iter().filter(|&&b| b == b'\n').count();
    let line_start = before
        .iter()
        .rposition(|&b| b == b'\n')
        .map_or(0, |i| i + 1);
    let column = at - line_start + 1;
    SplitError::NotJson(format!("invalid UTF-8 at line {line} column {column}"))
}

impl Walker<'_, '_> {
    /// Records `error` and returns the placeholder serde error that stops the deserializer.
    fn fail<E: de::Error>(&mut self, error: SplitError) -> E {
        self.error = Some(error);
        E::custom(ABORT)
    }

    fn pointer(&self) -> String {
        self.pointer.to_owned()
    }

    /// Records the target array once its elements are known. `items` is not empty, and
    /// serde_json has accepted the array, so only whitespace stands between `[` and the
    /// first element and between the last element and `]`.
    fn found(&mut self, items: Vec<Range<usize>>) {
        let (first, last) = (items[0].start, items[items.len() - 1].end);
        let mut open = first - 1;
        while is_json_whitespace(self.body[open]) {
            open -= 1;
        }
        let mut close = last;
        while is_json_whitespace(self.body[close]) {
            close += 1;
        }
        debug_assert_eq!((self.body[open], self.body[close]), (b'[', b']'));
        self.layout = Some(RecipientsLayout {
            array: open..close + 1,
            items,
        });
    }
}

impl<'de> DeserializeSeed<'de> for AtPath<'_, '_, '_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        let AtPath { walker, level } = self;
        if level == walker.tokens.len() {
            deserializer.deserialize_any(TargetVisitor { walker })
        } else {
            deserializer.deserialize_any(PathVisitor { walker, level })
        }
    }
}

impl PathVisitor<'_, '_, '_> {
    /// A value on the way that is not a container: the top level must be an object;
    /// deeper down the pointer simply does not resolve (reported once the body is read).
    fn scalar<E: de::Error>(self) -> Result<(), E> {
        if self.level == 0 {
            Err(self.walker.fail(SplitError::NotAnObject))
        } else {
            Ok(())
        }
    }
}

impl<'de> Visitor<'de> for PathVisitor<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let PathVisitor { walker, level } = self;
        let mut seen: HashSet<Cow<'de, str>> = HashSet::new();
        while let Some(key) = map.next_key_seed(Key)? {
            if seen.contains(&key) {
                return Err(walker.fail(SplitError::DuplicateKey(key.into_owned())));
            }
            if key == walker.tokens[level] {
                seen.insert(key);
                map.next_value_seed(AtPath {
                    walker: &mut *walker,
                    level: level + 1,
                })?;
            } else {
                map.next_value_seed(Skip {
                    error: &mut walker.error,
                    enclosing: level + 1,
                })?;
                seen.insert(key);
            }
        }
        Ok(())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let PathVisitor { walker, level } = self;
        if level == 0 {
            return Err(walker.fail(SplitError::NotAnObject));
        }
        let wanted = array_index(&walker.tokens[level]);
        let mut index = 0usize;
        loop {
            let more = if Some(index) == wanted {
                seq.next_element_seed(AtPath {
                    walker: &mut *walker,
                    level: level + 1,
                })?
                .is_some()
            } else {
                seq.next_element_seed(Skip {
                    error: &mut walker.error,
                    enclosing: level + 1,
                })?
                .is_some()
            };
            if !more {
                return Ok(());
            }
            index += 1;
        }
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar()
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.scalar()
    }
}

impl<'de> Visitor<'de> for TargetVisitor<'_, '_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON array")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let walker = self.walker;
        let base = walker.body.as_ptr() as usize;
        // The array is enclosed by the top-level object and one container per token.
        let budget = MAX_DEPTH.saturating_sub(walker.tokens.len() + 1);
        let mut items = Vec::new();
        while let Some(raw) = seq.next_element::<&'de RawValue>()? {
            let text = raw.get();
            if nests_deeper_than(text.as_bytes(), budget) {
                return Err(walker.fail(SplitError::TooDeep));
            }
            // `raw` borrows from the body, so the pointer difference is its offset.
            let start = text.as_ptr() as usize - base;
            items.push(start..start + text.len());
        }
        if items.is_empty() {
            let pointer = walker.pointer();
            return Err(walker.fail(SplitError::Empty { pointer }));
        }
        walker.found(items);
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, _: A) -> Result<(), A::Error> {
        let pointer = self.walker.pointer();
        Err(self.walker.fail(SplitError::NotAnArray { pointer }))
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        let pointer = self.walker.pointer();
        Err(self.walker.fail(SplitError::NotAnArray { pointer }))
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_str<E: de::Error>(self, _: &str) -> Result<(), E> {
        self.visit_unit()
    }
}

impl<'de> DeserializeSeed<'de> for Skip<'_> {
    /// The skipped value's raw JSON, borrowed from the body.
    type Value = &'de RawValue;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<&'de RawValue, D::Error> {
        let raw = <&'de RawValue>::deserialize(deserializer)?;
        let budget = MAX_DEPTH.saturating_sub(self.enclosing);
        if nests_deeper_than(raw.get().as_bytes(), budget) {
            *self.error = Some(SplitError::TooDeep);
            return Err(de::Error::custom(ABORT));
        }
        Ok(raw)
    }
}

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }

    fn visit_borrowed_str<E: de::Error>(self, key: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(key))
    }

    fn visit_str<E: de::Error>(self, key: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(key.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    fn scan_str(body: &str, pointer: &str) -> Result<RecipientsLayout, SplitError> {
        scan(body.as_bytes(), pointer, |_, _| {})
    }

    fn items<'b>(body: &'b str, layout: &RecipientsLayout) -> Vec<&'b str> {
        layout.items.iter().map(|r| &body[r.clone()]).collect()
    }

    fn part(body: &str, layout: &RecipientsLayout, range: Range<usize>) -> String {
        let mut out = Vec::new();
        write_part(body.as_bytes(), layout, range.clone(), &mut out);
        assert_eq!(out.len(), part_len(body.as_bytes(), layout, range));
        String::from_utf8(out).unwrap()
    }

    fn missing(pointer: &str) -> SplitError {
        SplitError::MissingArray {
            pointer: pointer.into(),
        }
    }

    fn not_an_array(pointer: &str) -> SplitError {
        SplitError::NotAnArray {
            pointer: pointer.into(),
        }
    }

    fn is_not_json(result: Result<RecipientsLayout, SplitError>) -> bool {
        matches!(result, Err(SplitError::NotJson(m)) if m.contains(" at line "))
    }

    /// `depth` nested arrays around a 1: `[[[1]]]` for 3.
    fn nested(depth: usize) -> String {
        format!("{}1{}", "[".repeat(depth), "]".repeat(depth))
    }

    #[test]
    fn finds_a_top_level_array_and_its_elements() {
        let body =
            r#"{"text":"hi","recipients":["+38970123456",{"phoneNumber":"38970123457"}],"n":1}"#;
        let mut seen = Vec::new();
        let layout = scan(body.as_bytes(), "/recipients", |i, raw| {
            seen.push((i, raw.get().to_owned()))
        })
        .unwrap();
        assert_eq!(
            &body[layout.array.clone()],
            r#"["+38970123456",{"phoneNumber":"38970123457"}]"#
        );
        assert_eq!(
            items(body, &layout),
            [r#""+38970123456""#, r#"{"phoneNumber":"38970123457"}"#]
        );
        assert_eq!(
            seen,
            [
                (0, r#""+38970123456""#.to_owned()),
                (1, r#"{"phoneNumber":"38970123457"}"#.to_owned())
            ]
        );
    }

    #[test]
    fn the_empty_pointer_and_malformed_pointers_are_bad() {
        let body = r#"{"recipients":[1]}"#;
        for pointer in ["", "recipients", "/a~2", "/a~", "/~x/recipients"] {
            assert!(
                matches!(scan_str(body, pointer), Err(SplitError::BadPointer(_))),
                "{pointer:?}"
            );
        }
        // A bad pointer is reported even before the body is looked at.
        assert!(matches!(
            scan_str("not json", ""),
            Err(SplitError::BadPointer(_))
        ));
    }

    #[test]
    fn follows_nested_pointers_and_array_indices() {
        let body = r#"{"message":{"text":"x","to":["a","b"]},"to":["wrong"]}"#;
        let layout = scan_str(body, "/message/to").unwrap();
        assert_eq!(items(body, &layout), [r#""a""#, r#""b""#]);

        let body = r#"{"batches":[{"to":["a"]},{"to":["b","c"]}],"x":[{"to":[0]}]}"#;
        let layout = scan_str(body, "/batches/1/to").unwrap();
        assert_eq!(items(body, &layout), [r#""b""#, r#""c""#]);
        for pointer in [
            "/batches/2/to",
            "/batches/01/to",
            "/batches/-/to",
            "/batches/x/to",
        ] {
            assert_eq!(scan_str(body, pointer), Err(missing(pointer)), "{pointer}");
        }
        // A path through a scalar does not resolve.
        assert_eq!(
            scan_str(r#"{"message":"hi"}"#, "/message/to"),
            Err(missing("/message/to"))
        );
        assert_eq!(
            scan_str(r#"{"message":{"to":{"x":1}}}"#, "/message/to/x"),
            Err(not_an_array("/message/to/x"))
        );
    }

    #[test]
    fn unescapes_pointer_tokens_and_body_keys() {
        let body = r#"{"a/b":[1],"m~n":[2],"~1":[3],"":[4],"recip\u0069ents":[5]}"#;
        for (pointer, item) in [
            ("/a~1b", "1"),
            ("/m~0n", "2"),
            ("/~01", "3"),
            ("/", "4"),
            ("/recipients", "5"),
        ] {
            let layout = scan_str(body, pointer).unwrap();
            assert_eq!(items(body, &layout), [item], "{pointer}");
        }
    }

    #[test]
    fn handles_whitespace_everywhere() {
        let body = "\r\n { \"text\" : \"hi\" ,\r\n\t\"recipients\"\t:\r\n [\r\n\t\"+1\" ,\n  { \"phoneNumber\" : \"2\" }\t\r\n ] \r\n}\r\n\t ";
        let layout = scan_str(body, "/recipients").unwrap();
        assert_eq!(
            &body[layout.array.clone()],
            "[\r\n\t\"+1\" ,\n  { \"phoneNumber\" : \"2\" }\t\r\n ]"
        );
        assert_eq!(
            items(body, &layout),
            ["\"+1\"", "{ \"phoneNumber\" : \"2\" }"]
        );
        let whole = part(body, &layout, 0..2);
        assert_eq!(
            whole,
            "\r\n { \"text\" : \"hi\" ,\r\n\t\"recipients\"\t:\r\n [\"+1\",{ \"phoneNumber\" : \"2\" }] \r\n}\r\n\t "
        );
        let value: Value = serde_json::from_str(&whole).unwrap();
        assert_eq!(value["recipients"], json!(["+1", {"phoneNumber": "2"}]));
    }

    #[test]
    fn pretty_printed_bodies_split_cleanly() {
        let original = json!({
            "text": "Hello {{name}}",
            "recipients": ["+38970123456", {"phoneNumber": "38970123457", "variables": {"name": "Ana"}}, 42],
            "options": {"validity": 3600, "tags": ["a", "b"]},
        });
        let body = serde_json::to_string_pretty(&original).unwrap();
        let layout = scan_str(&body, "/recipients").unwrap();
        assert_eq!(layout.items.len(), 3);
        for range in [0..1, 1..2, 2..3, 0..3] {
            let value: Value = serde_json::from_str(&part(&body, &layout, range.clone())).unwrap();
            assert_eq!(value["options"], original["options"]);
            let expected = original["recipients"].as_array().unwrap()[range].to_vec();
            assert_eq!(value["recipients"], Value::Array(expected));
        }
    }

    #[test]
    fn strings_may_hold_brackets_commas_quotes_and_unicode() {
        let elements = [
            r#""]""#,
            r#"",""#,
            r#""a\"],[\"b""#,
            r#""\\""#,
            r#""\\\"]""#,
            r#""Ана 😀 \u00e9\ud83d\ude00 \/ \b\f\n\r\t""#,
            r#""{\"phoneNumber\":\"1\"}""#,
        ];
        let body = format!(
            r#"{{"recipients":[{}],"after":"],["}}"#,
            elements.join(" , ")
        );
        let layout = scan_str(&body, "/recipients").unwrap();
        assert_eq!(items(&body, &layout), elements);
        let value: Value = serde_json::from_str(&part(&body, &layout, 2..5)).unwrap();
        assert_eq!(value["recipients"], json!(["a\"],[\"b", "\\", "\\\"]"]));
        assert_eq!(value["after"], "],[");
    }

    #[test]
    fn objects_with_nested_variables_are_single_items() {
        let body = r#"{"recipients":[{"phoneNumber":"1","variables":{"name":"Ana","list":[1,[2,{"x":"]}"}]]}},{"phoneNumber":"2","variables":{}}]}"#;
        let layout = scan_str(body, "/recipients").unwrap();
        assert_eq!(
            items(body, &layout),
            [
                r#"{"phoneNumber":"1","variables":{"name":"Ana","list":[1,[2,{"x":"]}"}]]}}"#,
                r#"{"phoneNumber":"2","variables":{}}"#
            ]
        );
    }

    #[test]
    fn numbers_and_other_scalars_are_items_too() {
        let body = r#"{"recipients":[38970123456,-1.5e3,true,null,[1]]}"#;
        let layout = scan_str(body, "/recipients").unwrap();
        assert_eq!(
            items(body, &layout),
            ["38970123456", "-1.5e3", "true", "null", "[1]"]
        );
    }

    #[test]
    fn scan_with_shows_the_members_around_the_array_once() {
        #[derive(Default)]
        struct Seen {
            items: Vec<(usize, String)>,
            fields: Vec<(usize, String, String)>,
        }
        impl Visit for Seen {
            fn item(&mut self, index: usize, element: &Element<'_>) {
                self.items.push((index, element.get().to_string()));
            }
            fn field(&mut self, depth: usize, key: &str, raw: &RawValue) {
                self.fields
                    .push((depth, key.to_string(), raw.get().to_string()));
            }
        }
        let body = r#"{"a":1,"m":{"imageUrl":"https://x","to":["p",{"q":2}],"z":[3]},"b\u0041":null,"l":[{"to":[9]}]}"#;
        let mut seen = Seen::default();
        let layout = scan_with(body.as_bytes(), "/m/to", &mut seen).unwrap();
        assert_eq!(layout.items.len(), 2);
        assert_eq!(
            seen.items,
            [(0, r#""p""#.to_string()), (1, r#"{"q":2}"#.to_string())]
        );
        let fields: Vec<(usize, &str, &str)> = seen
            .fields
            .iter()
            .map(|(d, k, v)| (*d, k.as_str(), v.as_str()))
            .collect();
        assert_eq!(
            fields,
            [
                (0, "a", "1"),
                (1, "imageUrl", r#""https://x""#),
                (1, "z", "[3]"),
                (0, "bA", "null"),
                (0, "l", r#"[{"to":[9]}]"#),
            ]
        );
    }

    /// What the pass noted about each element, for a visitor naming `member`, written out.
    fn noted(body: &str, member: Option<&'static str>) -> Vec<String> {
        struct Noted(Vec<String>, Option<&'static str>);
        impl Visit for Noted {
            fn item(&mut self, _: usize, element: &Element<'_>) {
                self.0.push(match element.member() {
                    Member::NotLooked => "not looked".into(),
                    Member::Unique(Some(value)) => format!("unique {value}"),
                    Member::Unique(None) => "unique, none".into(),
                    Member::Repeated => "repeated".into(),
                    Member::Unknown => "unknown".into(),
                });
            }
            fn member(&self) -> Option<&'static str> {
                self.1
            }
        }
        let mut noted = Noted(Vec::new(), member);
        scan_with(body.as_bytes(), "/recipients", &mut noted).unwrap();
        noted.0
    }

    #[test]
    fn object_elements_have_the_named_member_noted() {
        let keys = |n: usize| {
            (0..n)
                .map(|i| format!(r#""k{i}":{i},"#))
                .collect::<String>()
        };
        let most = format!(r#"{{{}"phoneNumber":"1"}}"#, keys(KEYS_COMPARED - 1));
        let too_many = format!(r#"{{{}"phoneNumber":"1"}}"#, keys(KEYS_COMPARED));
        let cases = [
            // First, last, with whitespace around: the raw value, quotes included.
            (
                r#"{"phoneNumber":"+38970123456","variables":{"name":"Ana"}}"#,
                r#"unique "+38970123456""#,
            ),
            (
                r#"{"variables":{"n":[1,{"phoneNumber":2}]},"phoneNumber":"38970123456"}"#,
                r#"unique "38970123456""#,
            ),
            (
                "{ \"phoneNumber\"\n:\t\"1\" , \"x\" : [ ] }",
                r#"unique "1""#,
            ),
            (most.as_str(), r#"unique "1""#),
            // Not a string: the value as it is, for the visitor to refuse.
            (r#"{"phoneNumber":38970123456}"#, "unique 38970123456"),
            (r#"{"phoneNumber":null}"#, "unique null"),
            (
                r#"{"phoneNumber":{"phoneNumber":"1"}}"#,
                r#"unique {"phoneNumber":"1"}"#,
            ),
            // An escaped value is handed over as written.
            (
                r#"{"phoneNumber":"\u0033\u0038970123456"}"#,
                r#"unique "\u0033\u0038970123456""#,
            ),
            // Missing; members of nested objects do not count.
            (
                r#"{"variables":{"phoneNumber":"38970123456"}}"#,
                "unique, none",
            ),
            (
                r#"{"phone":"1","list":[{"phoneNumber":"1"}]}"#,
                "unique, none",
            ),
            ("{}", "unique, none"),
            ("{ }", "unique, none"),
            // Repeated keys, the named one or any other.
            (r#"{"phoneNumber":"1","phoneNumber":"2"}"#, "repeated"),
            (r#"{"phoneNumber":"1","v":1,"v":2}"#, "repeated"),
            // A key with an escape, or too many keys: not judged.
            (r#"{"phone\u004eumber":"38970123456"}"#, "unknown"),
            (r#"{"phoneNumber":"1","\u0061":1}"#, "unknown"),
            (r#"{"a":1,"a":2,"\ud800":3}"#, "unknown"),
            (too_many.as_str(), "unknown"),
            // Not objects.
            (r#""+38970123456""#, "not looked"),
            (r#"["phoneNumber","1"]"#, "not looked"),
            ("38970123456", "not looked"),
            ("null", "not looked"),
        ];
        let body = format!(
            r#"{{"recipients":[{}]}}"#,
            cases
                .iter()
                .map(|(e, _)| *e)
                .collect::<Vec<_>>()
                .join(" ,\n ")
        );
        let expected: Vec<&str> = cases.iter().map(|(_, n)| *n).collect();
        assert_eq!(noted(&body, Some("phoneNumber")), expected);
        // A visitor naming no member has nothing noted.
        assert!(noted(&body, None).iter().all(|n| n == "not looked"));
        // Another name works the same way.
        assert_eq!(
            noted(
                r#"{"recipients":[{"phoneNumber":"1","to":"2"}]}"#,
                Some("to")
            ),
            [r#"unique "2""#]
        );
    }

    /// Bodies that cover every path through the reader, each cut and edited at random: the
    /// reader and the serde_json walk agree on every one (the same layout, or both refuse).
    #[test]
    fn the_reader_agrees_with_the_serde_json_walk() {
        let seeds = [
            (
                r#"{"a":{"b":[1,"x\"y",{"c":[true,false,null]}]},"recipients":[ "+1" , {"phoneNumber":"2","variables":{"n":"A\u00e9\n","l":[-0.5e+3,10,0]}} ],"z":null}"#,
                "/recipients",
            ),
            (
                r#"{"m":[{"to":[1]},{"x":"\ud83d\ude00","to":[{"phoneNumber":"1","a":[],"b":{}},"2",-1E-2]}],"k\u0065y":{}}"#,
                "/m/1/to",
            ),
            (
                " \r\n{ \"recipients\" :\t[\n{ \"a\" : [ 1 , [ ] ] , \"phoneNumber\" : \"3\" } ] , \"x\" : \"\\/\" } \n",
                "/recipients",
            ),
        ];
        let alphabet = b"\"\\{}[],: 0123456789-+.eEtrufalsnu/\x01\x7f\xc3\xa9";
        // A small deterministic generator, so that a failure is easy to replay.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut accepted, mut refused) = (0, 0);
        for (seed, pointer) in seeds {
            let tokens = parse_pointer(pointer).unwrap();
            for round in 0..10_000 {
                let mut body = seed.as_bytes().to_vec();
                for _ in 0..1 + round % 3 {
                    let at = next(body.len() + 1);
                    let byte = alphabet[next(alphabet.len())];
                    match next(4) {
                        0 if at < body.len() => body[at] = byte,
                        1 if at < body.len() => drop(body.remove(at)),
                        2 => body.truncate(at),
                        _ => body.insert(at, byte),
                    }
                }
                let Ok(text) = std::str::from_utf8(&body) else {
                    continue;
                };
                let fast = fast::scan(text, &tokens, Items(|_, _: &Element<'_>| {}));
                let walk = explain(text, pointer, &tokens);
                assert_eq!(fast, walk.as_ref().ok().cloned(), "{text}: {walk:?}");
                accepted += usize::from(fast.is_some());
                refused += usize::from(fast.is_none());
            }
        }
        // Both verdicts are common enough for the comparison to mean something.
        assert!(
            accepted > 1500 && refused > 15_000,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn an_empty_array_is_an_error() {
        for body in [r#"{"recipients":[]}"#, "{\"recipients\" : [ \r\n\t ] }"] {
            assert_eq!(
                scan_str(body, "/recipients"),
                Err(SplitError::Empty {
                    pointer: "/recipients".into()
                })
            );
        }
    }

    #[test]
    fn a_missing_key_is_an_error() {
        assert_eq!(
            scan_str(
                r#"{"recipient":["a"],"x":{"recipients":["b"]}}"#,
                "/recipients"
            ),
            Err(missing("/recipients"))
        );
        assert_eq!(scan_str("{}", "/recipients"), Err(missing("/recipients")));
        assert_eq!(
            scan_str(r#"{"message":{}}"#, "/message/to"),
            Err(missing("/message/to"))
        );
    }

    #[test]
    fn a_value_that_is_not_an_array_is_an_error() {
        for value in [r#""+1""#, "1", "-2.5", "true", "null", r#"{"0":"+1"}"#] {
            let body = format!(r#"{{"recipients":{value}}}"#);
            assert_eq!(
                scan_str(&body, "/recipients"),
                Err(not_an_array("/recipients")),
                "{value}"
            );
        }
    }

    #[test]
    fn the_top_level_must_be_an_object() {
        for body in [r#"["+1"]"#, r#""+1""#, "1", "null", " [ ] "] {
            assert_eq!(
                scan_str(body, "/recipients"),
                Err(SplitError::NotAnObject),
                "{body}"
            );
        }
        for body in ["", "   ", "x", "{", "\u{feff}{\"recipients\":[1]}"] {
            assert!(is_not_json(scan_str(body, "/recipients")), "{body:?}");
        }
    }

    #[test]
    fn duplicate_keys_on_the_path_are_errors() {
        let duplicates = [
            (
                r#"{"recipients":["a"],"recipients":["b"]}"#,
                "/recipients",
                "recipients",
            ),
            (
                r#"{"recipients":["a"],"text":"x","text":"y"}"#,
                "/recipients",
                "text",
            ),
            (
                r#"{"text":"x","text":"y","recipients":["a"]}"#,
                "/recipients",
                "text",
            ),
            (
                r#"{"recipients":["a"],"recipi\u0065nts":[]}"#,
                "/recipients",
                "recipients",
            ),
            (r#"{"m":{"to":["a"]},"m":{}}"#, "/m/to", "m"),
            (r#"{"m":{"to":["a"],"x":1,"x":2}}"#, "/m/to", "x"),
        ];
        for (body, pointer, key) in duplicates {
            assert_eq!(
                scan_str(body, pointer),
                Err(SplitError::DuplicateKey(key.into())),
                "{body}"
            );
        }
        // Objects off the path (elements, siblings) may repeat keys: they pass through as is.
        let body =
            r#"{"recipients":[{"a":1,"a":2}],"other":{"b":1,"b":2},"m":{"to":[1],"to":[2]}}"#;
        assert_eq!(scan_str(body, "/recipients").unwrap().items.len(), 1);
    }

    #[test]
    fn the_whole_body_must_be_json() {
        let bodies = [
            r#"{"recipients":["a"]} x"#,
            r#"{"recipients":["a"]}{}"#,
            r#"{"recipients":["a"]}]"#,
            r#"{"recipients":["a",]}"#,
            r#"{"recipients":["a"],}"#,
            r#"{"recipients":["a" "b"]}"#,
            r#"{"recipients":["a"],"x":tru}"#,
            r#"{"recipients":["a"],"x":"bad \q escape"}"#,
            "{\"recipients\":[\"raw\ttab\"]}",
            "{\"recipients\":[\"a\"],\"x\":\"raw\nnewline\"}",
            r#"{"recipients":[01]}"#,
            r#"{'recipients':["a"]}"#,
        ];
        for body in bodies {
            assert!(is_not_json(scan_str(body, "/recipients")), "{body}");
        }
        let layout = scan_str("{\"recipients\":[1]} \r\n\t", "/recipients").unwrap();
        assert_eq!((layout.array, layout.items.len()), (14..17, 1));
    }

    #[test]
    fn invalid_utf8_is_not_json_with_a_position() {
        let mut body = b"{\"recipients\":[\"a\"],\n\"x\":\"".to_vec();
        body.extend_from_slice(&[0xff, b'"', b'}']);
        assert_eq!(
            scan(&body, "/recipients", |_, _| {}),
            Err(SplitError::NotJson(
                "invalid UTF-8 at line 2 column 6".into()
            ))
        );
    }

    #[test]
    fn every_truncation_is_an_error() {
        let body = r#"{"a":{"b":[1,"x\"y"]},"recipients":[ "+1" , {"phoneNumber":"2","variables":{"n":"A"}} ],"z":null}"#;
        assert!(scan_str(body, "/recipients").is_ok());
        for end in 0..body.len() {
            assert!(scan_str(&body[..end], "/recipients").is_err(), "{end}");
        }
    }

    #[test]
    fn nesting_is_limited_like_serde_json() {
        // Inside an element, inside a sibling field, and inside an element of an
        // intermediate array: accepted exactly when serde_json would parse the body.
        let shapes: [fn(&str) -> String; 3] = [
            |v| format!(r#"{{"recipients":["a",{v}]}}"#),
            |v| format!(r#"{{"recipients":["a"],"x":{v}}}"#),
            |v| format!(r#"{{"m":[{v},{{"to":["a"]}}]}}"#),
        ];
        let pointers = ["/recipients", "/recipients", "/m/1/to"];
        for (shape, pointer) in shapes.iter().zip(pointers) {
            let mut accepted_any = false;
            for depth in 120..135 {
                let body = shape(&nested(depth));
                let ours = scan_str(&body, pointer);
                let theirs = serde_json::from_str::<Value>(&body);
                match (&ours, &theirs) {
                    (Ok(_), Ok(_)) => accepted_any = true,
                    (Err(SplitError::TooDeep), Err(_)) => {}
                    _ => panic!("depth {depth} {pointer}: {ours:?} vs {theirs:?}"),
                }
            }
            assert!(accepted_any);
        }
        // Deep objects with strings holding brackets count only real nesting.
        let deep_strings = format!(
            r#"{{"recipients":[{}"{}"{}]}}"#,
            r#"{"k":"#.repeat(100),
            r#"[{\"\\"#.repeat(40),
            "}".repeat(100)
        );
        assert!(serde_json::from_str::<Value>(&deep_strings).is_ok());
        assert!(scan_str(&deep_strings, "/recipients").is_ok());
        // A path deeper than the limit hits serde_json's own limit.
        let pointer = "/a".repeat(130);
        let body = format!("{}[1]{}", r#"{"a":"#.repeat(131), "}".repeat(131));
        assert_eq!(scan_str(&body, &pointer), Err(SplitError::TooDeep));
    }

    #[test]
    fn the_array_may_be_the_first_last_or_only_field() {
        let bodies = [
            r#"{"recipients":["a","b","c"],"x":1,"y":[2]}"#,
            r#"{"x":1,"recipients":["a","b","c"],"y":[2]}"#,
            r#"{"x":1,"y":[2],"recipients":["a","b","c"]}"#,
            r#"{"recipients":["a","b","c"]}"#,
        ];
        for body in bodies {
            let layout = scan_str(body, "/recipients").unwrap();
            let (before, after) = (&body[..layout.array.start], &body[layout.array.end..]);
            for range in [0..1, 1..2, 2..3, 0..3, 1..3, 0..2] {
                let written = part(body, &layout, range.clone());
                assert!(written.starts_with(before) && written.ends_with(after));
                let array = &written[before.len()..written.len() - after.len()];
                let expected = ["\"a\"", "\"b\"", "\"c\""][range].join(",");
                assert_eq!(array, format!("[{expected}]"));
                let value: Value = serde_json::from_str(&written).unwrap();
                let original: Value = serde_json::from_str(body).unwrap();
                for key in ["x", "y"] {
                    assert_eq!(value.get(key), original.get(key));
                }
            }
        }
    }

    #[test]
    fn write_part_appends_and_part_len_is_exact() {
        let body = "{\"recipients\": [ \"a\",\"b\" ,\n\"c\",\"d\" ], \"x\": 1}";
        let layout = scan_str(body, "/recipients").unwrap();
        let mut out = b"prefix".to_vec();
        write_part(body.as_bytes(), &layout, 0..4, &mut out);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "prefix{\"recipients\": [\"a\",\"b\",\"c\",\"d\"], \"x\": 1}"
        );
        assert_eq!(
            part(body, &layout, 1..3),
            "{\"recipients\": [\"b\",\"c\"], \"x\": 1}"
        );
        assert_eq!(part(body, &layout, 2..2), "{\"recipients\": [], \"x\": 1}");
    }

    #[test]
    #[should_panic]
    fn write_part_panics_on_a_range_past_the_items() {
        let body = r#"{"recipients":["a"]}"#;
        let layout = scan_str(body, "/recipients").unwrap();
        write_part(body.as_bytes(), &layout, 0..2, &mut Vec::new());
    }

    #[test]
    #[allow(clippy::single_range_in_vec_init)] // one range per part is the point here
    fn chunks_cover_every_item_once_in_order() {
        let cut = |n, max| chunks(n, max).collect::<Vec<_>>();
        assert!(cut(0, 3).is_empty());
        assert_eq!(cut(1, 3), [0..1]);
        assert_eq!(cut(3, 3), [0..3]);
        assert_eq!(cut(7, 3), [0..3, 3..6, 6..7]);
        assert_eq!(cut(3, 1), [0..1, 1..2, 2..3]);
        assert_eq!(cut(5, usize::MAX), [0..5]);
        assert_eq!(chunks(1_000_001, 200_000).len(), 6);
    }

    #[test]
    #[should_panic(expected = "max must be at least 1")]
    fn chunks_of_zero_panic() {
        let _ = chunks(5, 0);
    }

    #[test]
    fn errors_read_clearly() {
        let cases = [
            (
                SplitError::MissingArray {
                    pointer: "/recipients".into(),
                },
                r#"body has no array at "/recipients""#,
            ),
            (
                SplitError::DuplicateKey("recipients".into()),
                r#"duplicate key "recipients" in an object on the way to the array"#,
            ),
            (
                SplitError::TooDeep,
                "body nests deeper than 127 arrays/objects",
            ),
        ];
        for (error, text) in cases {
            assert_eq!(error.to_string(), text);
        }
        let Err(error) = scan_str("{\"recipients\":[1]}\n x", "/recipients") else {
            panic!("accepted trailing garbage");
        };
        assert_eq!(
            error.to_string(),
            "body is not valid JSON: trailing characters at line 2 column 2"
        );
    }
}
