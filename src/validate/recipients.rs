//! Checking a bulk send's recipients inside the splitter's single pass.
//!
//! [`crate::split::scan`] reads a bulk body once and shows each recipient to a
//! [`crate::split::Visit`] as an [`Element`]: its raw JSON borrowed from the body, plus
//! what the pass noted inside an object. [`RecipientsCheck`] is that visitor: a million
//! recipients are checked in the same pass that finds them, with no second parse and no
//! `Value` tree. A string without escapes (`"+38970123456"`) is checked on its bytes in
//! place. For an object (`{"phoneNumber": "…", "variables": {…}}`) the check names
//! `phoneNumber` as the member the pass locates ([`Visit::member`]), so the pass hands it
//! the raw value of the top-level `phoneNumber` and whether any key repeats, and the
//! number is checked on its bytes in place like a string recipient. What stays on serde_json
//! is rare: a number written with escapes (`"\u0033…"`) is decoded first, and an object
//! whose keys have escapes (`"phone\u004eumber"`) or that has more than
//! [`crate::split::KEYS_COMPARED`] keys is read again on its own text ([`check`]), as
//! every object was before. Members of the objects around the array (`imageUrl` next to
//! `recipients`) get the media URL rule.
//!
//! A recipient is either a phone number string or an object with a string `phoneNumber`
//! (other members are kept as sent). Anything else is a shape error ([`SHAPE_RULE`]), a
//! repeated key in a recipient object too ([`REPEATED_KEY_RULE`]); a number breaking the
//! 10-15 digits rule is [`crate::api::text::PHONE_RULE`]. Both ways of reading give the
//! same answer for every recipient ([`check`] is the reference; the tests compare them).
//!
//! [`RecipientsCheck::verdict`] turns the findings into what happens to the send under
//! the route's `invalid_recipients` setting.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::{media, phone, FieldErrors, InvalidRecipients, Rejection};
use crate::api::text;
use crate::split::{Element, Member, Visit};

/// The reason for a recipient of the wrong shape.
pub const SHAPE_RULE: &str =
    "Recipient must be a phone number string or an object with a string phoneNumber";

/// The reason for a recipient object that has some key twice (which `phoneNumber` counts
/// would be ambiguous).
pub const REPEATED_KEY_RULE: &str = "Recipient object has the same key twice";

/// Most offenders listed in a refusal's `validationErrors`.
pub const LISTED: usize = 100;

/// Longest `value` kept for a skipped recipient, in characters (longer ones are cut and
/// end in `…`).
pub const VALUE_CHARS: usize = 64;

/// True for the reasons that are about a recipient's shape rather than its number.
pub fn is_shape_rule(reason: &str) -> bool {
    reason == SHAPE_RULE || reason == REPEATED_KEY_RULE
}

/// A recipient that breaks a rule.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Offender {
    /// Its index in the recipients array.
    pub index: usize,
    /// Its phone number as sent (or its JSON, when it has none), at most [`VALUE_CHARS`].
    pub value: String,
    /// The rule it breaks.
    pub reason: &'static str,
}

/// The visitor for [`crate::split::scan`]; see the module documentation.
#[derive(Debug, Default)]
pub struct RecipientsCheck {
    /// Offenders are kept up to this many (all of them when skipping).
    keep: usize,
    offenders: Vec<Offender>,
    /// All offenders, kept or not.
    count: usize,
    /// Media fields of the enclosing objects that break the media rule.
    media: FieldErrors,
}

/// What a bulk send's findings come to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing breaks a rule.
    SendAll,
    /// Send every recipient but these (in index order).
    Skip(Vec<Offender>),
    /// Refuse the send.
    Reject(Rejection),
}

// === impl RecipientsCheck ===

impl RecipientsCheck {
    /// A check for a route with this policy: skipping needs every offender; refusing, the
    /// first [`LISTED`].
    pub fn new(policy: InvalidRecipients) -> Self {
        Self {
            keep: match policy {
                InvalidRecipients::Reject => LISTED,
                InvalidRecipients::Skip => usize::MAX,
            },
            ..Self::default()
        }
    }

    /// How many recipients break a rule.
    pub fn offenders(&self) -> usize {
        self.count
    }

    /// What happens to a send of `total` recipients under `policy` (the one given to
    /// [`RecipientsCheck::new`]): bad media URLs always refuse it (they concern every
    /// recipient); bad recipients refuse it, or are skipped, unless none would be left.
    pub fn verdict(self, policy: InvalidRecipients, total: usize) -> Verdict {
        if self.count == 0 && self.media.is_empty() {
            return Verdict::SendAll;
        }
        if policy == InvalidRecipients::Skip && self.count < total {
            if !self.media.is_empty() {
                // The bad recipients would be skipped; the media URLs are what refuses it.
                return Verdict::Reject(Rejection::send(self.media));
            }
            debug_assert_eq!(self.offenders.len(), self.count);
            return Verdict::Skip(self.offenders);
        }
        let mut errors = self.media;
        for o in self.offenders.iter().take(LISTED) {
            errors.insert(format!("recipients[{}]", o.index), o.reason.to_string());
        }
        Verdict::Reject(Rejection::send(errors))
    }
}

impl Visit for RecipientsCheck {
    fn item(&mut self, index: usize, element: &Element<'_>) {
        if let Err(reason) = check_element(element) {
            self.count += 1;
            if self.offenders.len() < self.keep {
                self.offenders.push(Offender {
                    index,
                    value: shown(element.get()),
                    reason,
                });
            }
        }
    }

    fn field(&mut self, _depth: usize, key: &str, raw: &RawValue) {
        if media::is_media_field(key) && !media::raw_value_ok(raw) {
            self.media
                .insert(key.to_string(), text::MEDIA_RULE.to_string());
        }
    }

    fn member(&self) -> Option<&'static str> {
        Some(PHONE_NUMBER)
    }
}

/// The key of a recipient object's phone number.
const PHONE_NUMBER: &str = "phoneNumber";

/// Checks one recipient, given as its raw JSON; the error is the rule it breaks. This
/// reads an object recipient with serde_json; the accept path checks what the splitter's
/// pass noted instead, with the same answers.
pub fn check(raw: &RawValue) -> Result<(), &'static str> {
    let text = raw.get();
    match text.as_bytes().first() {
        Some(b'"') => check_string(text),
        Some(b'{') => check_object(text),
        _ => Err(SHAPE_RULE),
    }
}

/// [`check`] on an element as the splitter's pass shows it: an object's `phoneNumber` is
/// checked where the pass found it, without reading the object again, unless the pass
/// could not judge its keys ([`Member::Unknown`]).
fn check_element(element: &Element<'_>) -> Result<(), &'static str> {
    let text = element.get();
    match text.as_bytes().first() {
        Some(b'"') => check_string(text),
        Some(b'{') => match element.member() {
            Member::Unique(Some(phone)) if phone.starts_with('"') => check_string(phone),
            Member::Unique(_) => Err(SHAPE_RULE),
            Member::Repeated => Err(REPEATED_KEY_RULE),
            Member::Unknown | Member::NotLooked => check_object(text),
        },
        _ => Err(SHAPE_RULE),
    }
}

/// A JSON string's phone number. Without escapes the bytes between the quotes are the
/// number itself, checked in place; with escapes (`"\u0033…"`) it is decoded first.
fn check_string(json: &str) -> Result<(), &'static str> {
    let inner = &json.as_bytes()[1..json.len() - 1];
    if phone::is_valid_bytes(inner) {
        return Ok(());
    }
    if inner.contains(&b'\\') {
        let decoded: Cow<'_, str> = serde_json::from_str(json).map_err(|_| SHAPE_RULE)?;
        if phone::is_valid(&decoded) {
            return Ok(());
        }
    }
    Err(text::PHONE_RULE)
}

/// A recipient object: a string `phoneNumber` that follows the rule, no key twice.
fn check_object(json: &str) -> Result<(), &'static str> {
    let mut de = serde_json::Deserializer::from_str(json);
    match RecipientObject.deserialize(&mut de) {
        Ok(found) => found,
        Err(_) => Err(SHAPE_RULE),
    }
}

/// What [`shown`] keeps of a recipient: its phone number text when it has one.
fn shown(text: &str) -> String {
    #[derive(Deserialize)]
    struct WithPhone {
        #[serde(rename = "phoneNumber")]
        phone_number: String,
    }
    let value = serde_json::from_str::<String>(text)
        .or_else(|_| serde_json::from_str::<WithPhone>(text).map(|w| w.phone_number))
        .unwrap_or_else(|_| text.to_string());
    match value.char_indices().nth(VALUE_CHARS) {
        Some((cut, _)) => format!("{}…", &value[..cut]),
        None => value,
    }
}

/// Reads a recipient object's members once: keys borrowed from the text, other values
/// skipped without being built.
struct RecipientObject;

impl<'de> DeserializeSeed<'de> for RecipientObject {
    type Value = Result<(), &'static str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecipientObject {
    type Value = Result<(), &'static str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a recipient object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut keys = SeenKeys::default();
        let mut repeated = false;
        let mut phone: Option<Result<(), &'static str>> = None;
        while let Some(key) = map.next_key_seed(Key)? {
            let is_phone = key == "phoneNumber";
            repeated |= !keys.insert(key);
            if is_phone {
                let raw: &'de RawValue = map.next_value()?;
                let text = raw.get();
                phone = Some(if text.starts_with('"') {
                    check_string(text)
                } else {
                    Err(SHAPE_RULE)
                });
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(if repeated {
            Err(REPEATED_KEY_RULE)
        } else {
            phone.unwrap_or(Err(SHAPE_RULE))
        })
    }
}

/// Keys without allocating for the first few (a recipient object has a handful).
const INLINE_KEYS: usize = 8;

/// The keys of one recipient object seen so far.
#[derive(Default)]
struct SeenKeys<'de> {
    inline: [Option<Cow<'de, str>>; INLINE_KEYS],
    more: Vec<Cow<'de, str>>,
}

impl<'de> SeenKeys<'de> {
    /// Adds `key`; false when it was already there.
    fn insert(&mut self, key: Cow<'de, str>) -> bool {
        let seen = self
            .inline
            .iter()
            .flatten()
            .chain(&self.more)
            .any(|k| *k == key);
        if !seen {
            match self.inline.iter_mut().find(|slot| slot.is_none()) {
                Some(slot) => *slot = Some(key),
                None => self.more.push(key),
            }
        }
        !seen
    }
}

/// An object key, borrowed from the text unless it has escapes.
struct Key;

impl<'de> DeserializeSeed<'de> for Key {
    type Value = Cow<'de, str>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for Key {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a string key")
    }

    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(s))
    }

    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(s.to_owned()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split;

    fn raw(json: &str) -> Box<RawValue> {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn strings_and_objects_with_a_valid_number_pass() {
        for ok in [
            r#""38970123456""#,
            r#""+38970123456""#,
            r#""\u002b38970123456""#,
            r#""3897012345\u0036""#,
            r#"{"phoneNumber":"+38970123456"}"#,
            r#"{"variables":{"name":"Ana","phoneNumber":1},"phoneNumber":"38970123456"}"#,
            r#"{ "phoneNumber" : "38970123456" , "x" : [1, {"y": null}] }"#,
            r#"{"phone\u004eumber":"38970123456"}"#,
            r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"phoneNumber":"38970123456"}"#,
        ] {
            assert_eq!(check(&raw(ok)), Ok(()), "{ok}");
        }
    }

    #[test]
    fn each_failure_has_its_reason() {
        for (bad, reason) in [
            (r#""123""#, text::PHONE_RULE),
            (r#""""#, text::PHONE_RULE),
            (r#""389 70 123 456""#, text::PHONE_RULE),
            (r#""\u0033""#, text::PHONE_RULE),
            (r#""38970123456\n""#, text::PHONE_RULE),
            (r#"{"phoneNumber":"12"}"#, text::PHONE_RULE),
            ("38970123456", SHAPE_RULE),
            ("null", SHAPE_RULE),
            ("true", SHAPE_RULE),
            (r#"["38970123456"]"#, SHAPE_RULE),
            ("{}", SHAPE_RULE),
            (r#"{"phone":"38970123456"}"#, SHAPE_RULE),
            (r#"{"phoneNumber":38970123456}"#, SHAPE_RULE),
            (r#"{"phoneNumber":null}"#, SHAPE_RULE),
            (r#"{"phoneNumber":["38970123456"]}"#, SHAPE_RULE),
            (
                r#"{"phoneNumber":"38970123456","phoneNumber":"38970123457"}"#,
                REPEATED_KEY_RULE,
            ),
            (
                r#"{"phoneNumber":"38970123456","v":1,"v":2}"#,
                REPEATED_KEY_RULE,
            ),
            (
                r#"{"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7,"h":8,"i":9,"j":10,"i":11,"phoneNumber":"38970123456"}"#,
                REPEATED_KEY_RULE,
            ),
        ] {
            assert_eq!(check(&raw(bad)), Err(reason), "{bad}");
        }
    }

    /// The verdict on one recipient as the accept path reaches it: inside the splitter's
    /// pass, from what the pass noted.
    fn in_the_pass(recipient: &str) -> Result<(), &'static str> {
        let body = format!(r#"{{"recipients":[{recipient}]}}"#);
        let mut check = RecipientsCheck::new(InvalidRecipients::Skip);
        split::scan_with(body.as_bytes(), "/recipients", &mut check).unwrap();
        match check.offenders.as_slice() {
            [] => Ok(()),
            [offender] => Err(offender.reason),
            more => panic!("one recipient, {} offenders", more.len()),
        }
    }

    #[test]
    fn objects_checked_in_the_pass_get_the_answers_of_a_second_read() {
        let keys = |n: usize| {
            (0..n)
                .map(|i| format!(r#""k{i}":{i},"#))
                .collect::<String>()
        };
        let many = format!(r#"{{{}"phoneNumber":"38970123456"}}"#, keys(20));
        let many_repeated = format!(r#"{{{}"k3":1,"phoneNumber":"38970123456"}}"#, keys(20));
        let cases = [
            // phoneNumber first, last, alone, beside nested ones.
            (
                r#"{"phoneNumber":"+38970123456","variables":{"name":"Ana"}}"#,
                Ok(()),
            ),
            (
                r#"{"variables":{"phoneNumber":"1"},"phoneNumber":"38970123456"}"#,
                Ok(()),
            ),
            (r#"{ "phoneNumber" : "38970123456" }"#, Ok(())),
            (
                r#"{"phoneNumber":"12","variables":{}}"#,
                Err(text::PHONE_RULE),
            ),
            (r#"{"phoneNumber":"","v":1}"#, Err(text::PHONE_RULE)),
            // Missing (only nested ones), or not a string.
            (
                r#"{"variables":{"phoneNumber":"38970123456"}}"#,
                Err(SHAPE_RULE),
            ),
            (
                r#"{"to":"38970123456","l":[{"phoneNumber":"38970123456"}]}"#,
                Err(SHAPE_RULE),
            ),
            ("{}", Err(SHAPE_RULE)),
            (r#"{"phoneNumber":38970123456}"#, Err(SHAPE_RULE)),
            (r#"{"phoneNumber":null}"#, Err(SHAPE_RULE)),
            (r#"{"phoneNumber":["38970123456"]}"#, Err(SHAPE_RULE)),
            (
                r#"{"phoneNumber":{"phoneNumber":"38970123456"}}"#,
                Err(SHAPE_RULE),
            ),
            // An escaped number is decoded, as before; half a surrogate pair does not decode.
            (r#"{"phoneNumber":"\u0033\u0038970123456"}"#, Ok(())),
            (r#"{"phoneNumber":"\u002b38970123456"}"#, Ok(())),
            (r#"{"phoneNumber":"\u0033"}"#, Err(text::PHONE_RULE)),
            (r#"{"phoneNumber":"38970123456\n"}"#, Err(text::PHONE_RULE)),
            (
                r#"{"phoneNumber":"\ud800\u0038970123456"}"#,
                Err(SHAPE_RULE),
            ),
            // Escaped keys are read again by serde_json, as before.
            (r#"{"phone\u004eumber":"38970123456"}"#, Ok(())),
            (
                r#"{"phone\u004eumber":"38970123456","phoneNumber":"38970123456"}"#,
                Err(REPEATED_KEY_RULE),
            ),
            (
                r#"{"\ud800":1,"phoneNumber":"38970123456"}"#,
                Err(SHAPE_RULE),
            ),
            (
                r#"{"a":1,"a":2,"\ud800":3,"phoneNumber":"38970123456"}"#,
                Err(SHAPE_RULE),
            ),
            // Repeated keys.
            (
                r#"{"phoneNumber":"38970123456","phoneNumber":"38970123457"}"#,
                Err(REPEATED_KEY_RULE),
            ),
            (
                r#"{"phoneNumber":"38970123456","v":1,"v":2}"#,
                Err(REPEATED_KEY_RULE),
            ),
            (r#"{"v":1,"v":2}"#, Err(REPEATED_KEY_RULE)),
            (many.as_str(), Ok(())),
            (many_repeated.as_str(), Err(REPEATED_KEY_RULE)),
            // Not objects.
            (r#""+38970123456""#, Ok(())),
            (r#""\u0033\u0038970123456""#, Ok(())),
            (r#""12""#, Err(text::PHONE_RULE)),
            ("38970123456", Err(SHAPE_RULE)),
            (r#"["38970123456"]"#, Err(SHAPE_RULE)),
        ];
        for (recipient, expected) in cases {
            assert_eq!(check(&raw(recipient)), expected, "{recipient}");
            assert_eq!(in_the_pass(recipient), expected, "{recipient}");
        }
    }

    #[test]
    fn a_scan_finds_offenders_and_media_in_one_pass() {
        let body = r#"{"imageUrl":"http://x.example.com/a.png","videoUrl":"https://x.example.com/v.mp4","recipients":["38970123456","12",{"phoneNumber":"+38970123457"},{"phoneNumber":5},"Ана 😀 and a very long text that goes on and on and on and on and on and on and on and on"]}"#;
        let mut check = RecipientsCheck::new(InvalidRecipients::Skip);
        let layout = split::scan_with(body.as_bytes(), "/recipients", &mut check).unwrap();
        assert_eq!(layout.items.len(), 5);
        assert_eq!(check.offenders(), 3);
        assert_eq!(
            check.media,
            FieldErrors::from([("imageUrl".to_string(), text::MEDIA_RULE.to_string())])
        );
        assert_eq!(check.offenders[0].value, "12");
        assert_eq!(check.offenders[1].value, r#"{"phoneNumber":5}"#);
        let long = &check.offenders[2].value;
        assert_eq!(long.chars().count(), VALUE_CHARS + 1);
        assert!(long.starts_with("Ана 😀") && long.ends_with('…'));
    }

    #[test]
    fn verdicts_follow_the_policy() {
        let scan = |body: &str, policy| {
            let mut check = RecipientsCheck::new(policy);
            let layout = split::scan_with(body.as_bytes(), "/recipients", &mut check).unwrap();
            check.verdict(policy, layout.items.len())
        };
        let clean = r#"{"recipients":["38970123456"]}"#;
        for policy in [InvalidRecipients::Reject, InvalidRecipients::Skip] {
            assert_eq!(scan(clean, policy), Verdict::SendAll);
        }
        let some_bad = r#"{"recipients":["38970123456","1",2]}"#;
        let Verdict::Skip(skipped) = scan(some_bad, InvalidRecipients::Skip) else {
            panic!("expected a skip");
        };
        assert_eq!(
            skipped
                .iter()
                .map(|o| (o.index, o.reason))
                .collect::<Vec<_>>(),
            [(1, text::PHONE_RULE), (2, SHAPE_RULE)]
        );
        let Verdict::Reject(r) = scan(some_bad, InvalidRecipients::Reject) else {
            panic!("expected a refusal");
        };
        assert_eq!(
            serde_json::to_value(r.envelope()).unwrap(),
            serde_json::json!({"error": "Bad Request",
                "message": super::super::outcome::RECIPIENTS_MALFORMED,
                "validationErrors": {"recipients[1]": text::PHONE_RULE, "recipients[2]": SHAPE_RULE}})
        );
        // Nothing left to send, or a bad media URL: refused even when skipping.
        let all_bad = r#"{"recipients":["1","2"]}"#;
        assert!(matches!(
            scan(all_bad, InvalidRecipients::Skip),
            Verdict::Reject(_)
        ));
        let bad_media = r#"{"imageUrl":"http://a.example.com/x","recipients":["38970123456","1"]}"#;
        let Verdict::Reject(r) = scan(bad_media, InvalidRecipients::Skip) else {
            panic!("expected a refusal");
        };
        assert_eq!(
            serde_json::to_string(&r.envelope()).unwrap(),
            r#"{"error":"Bad Request","message":"Image URL is not accessible","validationErrors":{"imageUrl":"URL must be HTTPS and publicly accessible"}}"#
        );
    }

    #[test]
    fn refusals_list_the_first_hundred_offenders() {
        let recipients: Vec<String> = (0..250).map(|i| format!("\"{i}\"")).collect();
        let body = format!(r#"{{"recipients":[{}]}}"#, recipients.join(","));
        let mut check = RecipientsCheck::new(InvalidRecipients::Reject);
        split::scan_with(body.as_bytes(), "/recipients", &mut check).unwrap();
        assert_eq!(check.offenders(), 250);
        assert_eq!(check.offenders.len(), LISTED);
        let Verdict::Reject(Rejection::Invalid { message, errors }) =
            check.verdict(InvalidRecipients::Reject, 250)
        else {
            panic!("expected a refusal");
        };
        assert_eq!(message, text::INVALID_PHONE);
        assert_eq!(errors.len(), LISTED);
        assert!(errors.contains_key("recipients[0]") && errors.contains_key("recipients[99]"));
        assert!(!errors.contains_key("recipients[100]"));
    }
}
