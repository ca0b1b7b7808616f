//! The reader [`super::scan`] runs first: one hand-written pass over the body's bytes.
//!
//! It accepts exactly the bodies that the serde_json walk in [`super`] accepts, and
//! nothing else: the same grammar (serde_json's, as it checks a value it skips: any `\u`
//! escape of four hex digits, numbers of any size), the same depth limit, no repeated key
//! on the way to the array, a non-empty array at the pointer. It does not say *why* it
//! refuses a body: it returns `None` at the first thing it does not accept, and
//! [`super::scan_with`] then runs the serde_json walk for the error (and its message).
//! Debug builds run that walk on every accepted body too and compare the layouts.
//!
//! What it adds over the serde_json walk is that it reads each element of the array
//! itself, token by token, so what it learns on the way is not thrown away: for an
//! object element it notes where the member named by [`Visit::member`] is and whether a
//! key repeats ([`Member`]), and the visitor needs no second parse of the element.
//!
//! Keys and values off the array are still read by serde_json where the visitor is shown
//! them: a key with escapes is decoded by serde_json (so a key like `"recipi\u0065nts"`
//! means what it means there), and a member of an object on the way is skipped by
//! serde_json's own `RawValue` reader, which is what [`Visit::field`] is given.

use std::borrow::Cow;
use std::collections::HashSet;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::{array_index, nests_deeper_than, Element, Member, RecipientsLayout, Visit, MAX_DEPTH};

/// Most keys of one object element that are compared with each other for repeats; an
/// element with more keys is [`Member::Unknown`] (recipient objects have a handful).
pub const KEYS_COMPARED: usize = 16;

/// Reads `text` (the whole body) and returns the array's layout, calling `visit` for each
/// member around the array and each element as it goes; `None` when the body is refused
/// for any reason. `tokens` is the pointer, already split and unescaped.
pub(super) fn scan<V: Visit>(
    text: &str,
    tokens: &[Cow<'_, str>],
    visit: V,
) -> Option<RecipientsLayout> {
    // The array and every object or array on the way count against the depth limit.
    if tokens.is_empty() || tokens.len() + 1 > MAX_DEPTH {
        return None;
    }
    let member = visit.member().map(str::as_bytes);
    let mut reader = Reader {
        text,
        bytes: text.as_bytes(),
        pos: 0,
        tokens,
        visit,
        member,
        layout: None,
    };
    reader.whitespace();
    if reader.peek()? != b'{' {
        return None;
    }
    reader.object_on_path(0)?;
    reader.whitespace();
    if reader.pos != reader.bytes.len() {
        return None;
    }
    reader.layout
}

/// The state of one read. `pos` is the index of the next byte to read; every method that
/// reads a value starts at its first byte and leaves `pos` just after its last.
struct Reader<'b, 't, V> {
    text: &'b str,
    bytes: &'b [u8],
    pos: usize,
    tokens: &'t [Cow<'t, str>],
    visit: V,
    /// The key of [`Visit::member`], as bytes.
    member: Option<&'static [u8]>,
    layout: Option<RecipientsLayout>,
}

impl<'b, V: Visit> Reader<'b, '_, V> {
    #[inline]
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.pos).copied()
    }

    #[inline]
    fn whitespace(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.pos += 1;
        }
    }

    /// After a value in an object (`close` `}`) or array (`]`): whitespace, then a comma
    /// and whitespace (`Some(true)`: another member follows) or the closing bracket
    /// (`Some(false)`, `pos` after it).
    #[inline]
    fn next_or_close(&mut self, close: u8) -> Option<bool> {
        self.whitespace();
        let b = self.peek()?;
        self.pos += 1;
        if b == b',' {
            self.whitespace();
            Some(true)
        } else {
            (b == close).then_some(false)
        }
    }

    /// The text from `start` to `pos`. Every value starts and ends on an ASCII byte, so
    /// this is always a whole number of characters.
    #[inline]
    fn since(&self, start: usize) -> Option<&'b str> {
        self.text.get(start..self.pos)
    }

    /// An object on the way to the array, `level` tokens down (0: the body's own object).
    fn object_on_path(&mut self, level: usize) -> Option<()> {
        self.pos += 1;
        self.whitespace();
        if self.peek()? == b'}' {
            return None; // the key for the next token is missing
        }
        let mut seen: HashSet<Cow<'b, str>> = HashSet::new();
        let mut found = false;
        loop {
            let key = self.key()?;
            self.whitespace();
            if self.peek()? != b':' {
                return None;
            }
            self.pos += 1;
            self.whitespace();
            if seen.contains(&key) {
                return None;
            }
            if key == self.tokens[level] {
                self.value_on_path(level + 1)?;
                found = true;
            } else {
                let raw = self.member_around(level + 1)?;
                self.visit.field(level, &key, raw);
            }
            seen.insert(key);
            if !self.next_or_close(b'}')? {
                break;
            }
        }
        // Without the key there is no array: the serde_json walk says which error.
        found.then_some(())
    }

    /// An array on the way to the array: only the element at the token's index leads on.
    fn array_on_path(&mut self, level: usize) -> Option<()> {
        let wanted = array_index(&self.tokens[level])?;
        let budget = MAX_DEPTH - (level + 1);
        self.pos += 1;
        self.whitespace();
        if self.peek()? == b']' {
            return None;
        }
        let mut index = 0;
        loop {
            if index == wanted {
                self.value_on_path(level + 1)?;
            } else {
                self.value(budget)?;
            }
            index += 1;
            if !self.next_or_close(b']')? {
                break;
            }
        }
        (index > wanted).then_some(())
    }

    /// The value `level` tokens down the pointer: a container on the way, or the array.
    fn value_on_path(&mut self, level: usize) -> Option<()> {
        match self.peek()? {
            b'[' if level == self.tokens.len() => self.target(),
            b'{' if level < self.tokens.len() => self.object_on_path(level),
            b'[' => self.array_on_path(level),
            // Not an array at the pointer, or a scalar on the way: an error either way.
            _ => None,
        }
    }

    /// A member of an object on the way, other than the one leading on, read by serde_json
    /// as a borrowed `RawValue` for [`Visit::field`]. `enclosing`: the containers around it.
    fn member_around(&mut self, enclosing: usize) -> Option<&'b RawValue> {
        let rest = self.text.get(self.pos..)?;
        let mut de = serde_json::Deserializer::from_str(rest);
        let raw = <&'b RawValue>::deserialize(&mut de).ok()?;
        let json = raw.get();
        if nests_deeper_than(json.as_bytes(), MAX_DEPTH - enclosing) {
            return None;
        }
        self.pos = json.as_ptr() as usize - self.text.as_ptr() as usize + json.len();
        Some(raw)
    }

    /// The array at the pointer: each element read, shown to the visitor, and recorded.
    fn target(&mut self) -> Option<()> {
        let open = self.pos;
        self.pos += 1;
        self.whitespace();
        if self.peek()? == b']' {
            return None; // empty
        }
        // The elements sit inside the body's object, one container per token, and the
        // array itself.
        let budget = MAX_DEPTH - (self.tokens.len() + 1);
        let mut items = Vec::new();
        loop {
            let start = self.pos;
            let member = match self.peek()? {
                b'{' if self.member.is_some() => self.object_element(budget)?,
                _ => {
                    self.value(budget)?;
                    Member::NotLooked
                }
            };
            let element = Element {
                json: self.since(start)?,
                member,
            };
            self.visit.item(items.len(), &element);
            items.push(start..self.pos);
            if !self.next_or_close(b']')? {
                break;
            }
        }
        self.layout = Some(RecipientsLayout {
            array: open..self.pos,
            items,
        });
        Some(())
    }

    /// An object element, when the visitor names a member: read like any object, noting
    /// its keys (as written) and the named member's value on the way.
    fn object_element(&mut self, budget: usize) -> Option<Member<'b>> {
        let budget = budget.checked_sub(1)?;
        let wanted = self.member.unwrap_or_default();
        let mut keys: [&[u8]; KEYS_COMPARED] = [&[]; KEYS_COMPARED];
        let mut count = 0;
        let mut unknown = false;
        let mut repeated = false;
        let mut value = None;
        self.pos += 1;
        self.whitespace();
        if self.peek()? == b'}' {
            self.pos += 1;
            return Some(Member::Unique(None));
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let key_start = self.pos + 1;
            let escaped = self.string()?;
            let key = &self.bytes[key_start..self.pos - 1];
            self.whitespace();
            if self.peek()? != b':' {
                return None;
            }
            self.pos += 1;
            self.whitespace();
            let value_start = self.pos;
            self.value(budget)?;
            if escaped || count == KEYS_COMPARED {
                // Only serde_json can say what an escaped key is (or whether it decodes).
                unknown = true;
            } else if !unknown {
                repeated |= keys[..count].contains(&key);
                keys[count] = key;
                count += 1;
                if key == wanted {
                    value = Some(self.since(value_start)?);
                }
            }
            if !self.next_or_close(b'}')? {
                break;
            }
        }
        Some(if unknown {
            Member::Unknown
        } else if repeated {
            Member::Repeated
        } else {
            Member::Unique(value)
        })
    }

    /// Any value, checked and skipped; it may nest `budget` arrays/objects deep.
    fn value(&mut self, budget: usize) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'{' => {
                let budget = budget.checked_sub(1)?;
                self.pos += 1;
                self.whitespace();
                if self.peek()? == b'}' {
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    if self.peek()? != b'"' {
                        return None;
                    }
                    self.string()?;
                    self.whitespace();
                    if self.peek()? != b':' {
                        return None;
                    }
                    self.pos += 1;
                    self.whitespace();
                    self.value(budget)?;
                    if !self.next_or_close(b'}')? {
                        return Some(());
                    }
                }
            }
            b'[' => {
                let budget = budget.checked_sub(1)?;
                self.pos += 1;
                self.whitespace();
                if self.peek()? == b']' {
                    self.pos += 1;
                    return Some(());
                }
                loop {
                    self.value(budget)?;
                    if !self.next_or_close(b']')? {
                        return Some(());
                    }
                }
            }
            b'-' | b'0'..=b'9' => self.number(),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            _ => None,
        }
    }

    /// A string; true when it has an escape. Refused as serde_json refuses it: a control
    /// character, an unknown escape, `\u` without four hex digits, no closing quote.
    #[inline(always)]
    fn string(&mut self) -> Option<bool> {
        let bytes = self.bytes;
        let mut pos = self.pos + 1;
        let mut escaped = false;
        loop {
            // Plain content, eight bytes at a time while there are eight left.
            while let Some(chunk) = bytes.get(pos..pos + 8) {
                let stops = stops_in(u64::from_le_bytes(chunk.try_into().ok()?));
                if stops != 0 {
                    pos += stops.trailing_zeros() as usize / 8;
                    break;
                }
                pos += 8;
            }
            let b = *bytes.get(pos)?;
            if !STOPS[usize::from(b)] {
                pos += 1;
                continue;
            }
            match b {
                b'"' => {
                    self.pos = pos + 1;
                    return Some(escaped);
                }
                b'\\' => {
                    escaped = true;
                    match *bytes.get(pos + 1)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => pos += 2,
                        b'u' => {
                            let hex = bytes.get(pos + 2..pos + 6)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            pos += 6;
                        }
                        _ => return None,
                    }
                }
                _ => return None, // a control character
            }
        }
    }

    /// A number, by JSON's grammar; its size is not checked (as serde_json skips it).
    fn number(&mut self) -> Option<()> {
        let bytes = self.bytes;
        let digits = |mut pos: usize| {
            while let Some(b'0'..=b'9') = bytes.get(pos) {
                pos += 1;
            }
            pos
        };
        let mut pos = self.pos;
        if bytes[pos] == b'-' {
            pos += 1;
        }
        pos = match bytes.get(pos)? {
            b'0' => pos + 1,
            b'1'..=b'9' => digits(pos + 1),
            _ => return None,
        };
        if bytes.get(pos) == Some(&b'.') {
            let end = digits(pos + 1);
            if end == pos + 1 {
                return None;
            }
            pos = end;
        }
        if let Some(b'e' | b'E') = bytes.get(pos) {
            pos += 1;
            if let Some(b'+' | b'-') = bytes.get(pos) {
                pos += 1;
            }
            let end = digits(pos);
            if end == pos {
                return None;
            }
            pos = end;
        }
        self.pos = pos;
        Some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let end = self.pos + word.len();
        (self.bytes.get(self.pos..end)? == word).then(|| self.pos = end)
    }

    /// An object key, `pos` at its opening quote: borrowed from the body, or decoded by
    /// serde_json when it has escapes (`None` when serde_json refuses it, as it does a
    /// `\u` escape of half a surrogate pair in a key).
    fn key(&mut self) -> Option<Cow<'b, str>> {
        if self.peek()? != b'"' {
            return None;
        }
        let start = self.pos;
        let escaped = self.string()?;
        let json = self.since(start)?;
        if escaped {
            serde_json::from_str::<String>(json).ok().map(Cow::Owned)
        } else {
            Some(Cow::Borrowed(&json[1..json.len() - 1]))
        }
    }
}

/// The bytes that end a run of plain string content: `"`, `\` and control characters.
static STOPS: [bool; 256] = {
    let mut stops = [false; 256];
    let mut b = 0;
    while b < 0x20 {
        stops[b] = true;
        b += 1;
    }
    stops[b'"' as usize] = true;
    stops[b'\\' as usize] = true;
    stops
};

/// Eight bytes of a string (little-endian): a word whose lowest set bit is the high bit of
/// the first byte in [`STOPS`], 0 when there is none. (Bits above the first one may be
/// set for bytes that are not stops, from borrows; only the lowest one is used.)
#[inline]
fn stops_in(word: u64) -> u64 {
    const ONES: u64 = u64::MAX / 255;
    const HIGHS: u64 = ONES << 7;
    let control = word.wrapping_sub(ONES * 0x20) & !word;
    let quote = word ^ (ONES * u64::from(b'"'));
    let quote = quote.wrapping_sub(ONES) & !quote;
    let backslash = word ^ (ONES * u64::from(b'\\'));
    let backslash = backslash.wrapping_sub(ONES) & !backslash;
    (control | quote | backslash) & HIGHS
}
