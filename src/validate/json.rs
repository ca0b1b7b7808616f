//! Reading a small request body (a single send, a template) strictly, and the
//! Content-Type a JSON body must carry.
//!
//! serde_json takes the last of two equal keys without a word, so `{"phoneNumber": "good",
//! "phoneNumber": "bad"}` would mean one thing to sluice and maybe another to the API.
//! [`object`] builds the `Value` itself and refuses a repeated key in any object, at any
//! depth, and a body nesting deeper than [`crate::split::MAX_DEPTH`] (serde_json's own
//! limit, reached without a stack overflow). Bulk bodies are never read this way: the
//! splitter reads them in one pass ([`crate::split`]), and the recipients check looks at
//! each element as the splitter shows it ([`super::recipients`]).
//!
//! Each failure is a [`Rejection::Malformed`] with a message saying what is wrong and
//! where, so the client gets a clear 400 in the seed's envelope.

use std::fmt;

use http::{header, HeaderMap};
use serde::de::{self, DeserializeSeed, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Value};

use super::outcome::{BODY, CONTENT_TYPE};
use super::Rejection;
use crate::split::MAX_DEPTH;

/// The message for a Content-Type that names another format.
pub const NOT_JSON_CONTENT_TYPE: &str =
    "Content-Type names a format that is not JSON: the body of this request must be JSON. Send it as application/json.";

/// What a request's Content-Type says, when it does not refuse the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentType {
    /// A JSON media type.
    Json,
    /// No Content-Type (many clients send none).
    Missing,
    /// A type that is not JSON but does not clearly name another format either (say
    /// `application/x-www-form-urlencoded`, curl's default): accepted when the body is
    /// JSON, as the API accepts it.
    Lenient,
}

/// The message for a body that is JSON but not an object.
pub const NOT_AN_OBJECT: &str = "Request body must be a JSON object";

/// Parses `body` as one JSON object, refusing repeated keys and too deep nesting.
pub fn object(body: &[u8]) -> Result<Map<String, Value>, Rejection> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = Strict
        .deserialize(&mut de)
        .and_then(|v| de.end().map(|()| v))
        .map_err(|e| malformed(&e))?;
    match value {
        Value::Object(map) => Ok(map),
        _ => Err(Rejection::malformed(BODY, NOT_AN_OBJECT)),
    }
}

/// Checks a request's Content-Type, leniently where the API is lenient: the body is
/// checked as JSON whatever the type says, so only a type that clearly names another
/// format ([`clearly_not_json`]: `multipart/form-data`, XML, images…) is refused. JSON
/// types (`application/json`, `…/…+json`) and a missing Content-Type are what a JSON body
/// should carry; anything else (curl's default `application/x-www-form-urlencoded`,
/// `text/plain`, `application/octet-stream`…) is [`ContentType::Lenient`], let through
/// and counted.
pub fn content_type(headers: &HeaderMap) -> Result<ContentType, Rejection> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Ok(ContentType::Missing);
    };
    let essence = value
        .to_str()
        .ok()
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase())
        .unwrap_or_default();
    let json = essence == "application/json"
        || essence
            .split_once('/')
            .is_some_and(|(t, sub)| !t.is_empty() && sub.ends_with("+json"));
    if json {
        Ok(ContentType::Json)
    } else if clearly_not_json(&essence) {
        Err(Rejection::malformed(CONTENT_TYPE, NOT_JSON_CONTENT_TYPE))
    } else {
        Ok(ContentType::Lenient)
    }
}

/// Whether a media type (lower case, no parameters) names a format that is not JSON:
/// whole families (images, audio, video, fonts, models, multipart, messages), XML and
/// HTML of any kind, and the common data formats a JSON body is never sent as.
fn clearly_not_json(essence: &str) -> bool {
    let Some((top, sub)) = essence.split_once('/') else {
        return false;
    };
    matches!(
        top,
        "image" | "audio" | "video" | "font" | "model" | "multipart" | "message" | "haptics"
    ) || sub == "xml"
        || sub.ends_with("+xml")
        || matches!(
            essence,
            "text/html"
                | "text/csv"
                | "text/javascript"
                | "text/yaml"
                | "application/javascript"
                | "application/yaml"
                | "application/x-yaml"
                | "application/pdf"
                | "application/zip"
                | "application/gzip"
                | "application/protobuf"
                | "application/x-protobuf"
                | "application/msgpack"
                | "application/x-msgpack"
                | "application/cbor"
        )
}

/// The message for a body serde_json could not read.
fn malformed(e: &serde_json::Error) -> Rejection {
    let message = e.to_string();
    let message = if message.starts_with("recursion limit exceeded") {
        format!("Request body nests deeper than {MAX_DEPTH} arrays/objects")
    } else if e.is_data() {
        // Only our own checks raise data errors: a repeated key.
        format!("Request body is ambiguous: {message}. A key may appear only once in an object.")
    } else {
        format!("Request body is not valid JSON: {message}")
    };
    Rejection::malformed(BODY, message)
}

/// A `Value` that refuses repeated keys.
struct Strict;

impl<'de> DeserializeSeed<'de> for Strict {
    type Value = Value;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(StrictVisitor)
    }
}

struct StrictVisitor;

impl<'de> Visitor<'de> for StrictVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_bool<E>(self, b: bool) -> Result<Value, E> {
        Ok(Value::Bool(b))
    }

    fn visit_i64<E>(self, n: i64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_u64<E>(self, n: u64) -> Result<Value, E> {
        Ok(Value::from(n))
    }

    fn visit_f64<E>(self, n: f64) -> Result<Value, E> {
        Ok(serde_json::Number::from_f64(n).map_or(Value::Null, Value::Number))
    }

    fn visit_str<E>(self, s: &str) -> Result<Value, E> {
        Ok(Value::String(s.to_owned()))
    }

    fn visit_string<E>(self, s: String) -> Result<Value, E> {
        Ok(Value::String(s))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element_seed(Strict)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key {key:?} appears twice"
                )));
            }
            let value = map.next_value_seed(Strict)?;
            out.insert(key, value);
        }
        Ok(Value::Object(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn message(body: &str) -> String {
        match object(body.as_bytes()) {
            Err(Rejection::Malformed { message, .. }) => message,
            other => panic!("{body}: {other:?}"),
        }
    }

    #[test]
    fn reads_objects_like_serde_json() {
        let body = r#"{"a":[1,-2,3.5,"x",null,true,{"b":{}}],"c":"\u00e9"}"#;
        let ours = Value::Object(object(body.as_bytes()).unwrap());
        assert_eq!(ours, serde_json::from_str::<Value>(body).unwrap());
    }

    #[test]
    fn refuses_what_is_not_one_clean_object() {
        assert!(message("not json").starts_with("Request body is not valid JSON: "));
        assert!(message("{").starts_with("Request body is not valid JSON: "));
        assert!(message(r#"{"a":1} x"#).contains("trailing characters"));
        assert_eq!(message("[1]"), NOT_AN_OBJECT);
        assert_eq!(message(r#""+38970123456""#), NOT_AN_OBJECT);
        let dup = message(r#"{"phoneNumber":"1","phoneNumber":"2"}"#);
        assert!(
            dup.contains(r#"the key "phoneNumber" appears twice"#),
            "{dup}"
        );
        assert!(dup.contains("line 1"), "{dup}");
        let nested = message(r#"{"a":{"b":[{"c":1,"c":2}]}}"#);
        assert!(nested.contains(r#""c" appears twice"#), "{nested}");
        let deep = format!("{}1{}", r#"{"a":"#.repeat(200), "}".repeat(200));
        assert_eq!(
            message(&deep),
            "Request body nests deeper than 127 arrays/objects"
        );
        let ok = format!("{}1{}", r#"{"a":"#.repeat(100), "}".repeat(100));
        assert!(object(ok.as_bytes()).is_ok());
        assert!(message("{\"a\":\"\u{1}\"}").starts_with("Request body is not valid JSON"));
        assert!(object(b"{\"a\":\"\xff\"}").is_err());
    }

    #[test]
    fn content_type_is_refused_only_when_it_names_another_format() {
        let check = |value: Option<&str>| {
            let mut h = HeaderMap::new();
            if let Some(v) = value {
                h.insert(header::CONTENT_TYPE, HeaderValue::from_str(v).unwrap());
            }
            content_type(&h).ok()
        };
        assert_eq!(check(None), Some(ContentType::Missing));
        for json in [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
            " application/json ;charset=UTF-8",
        ] {
            assert_eq!(check(Some(json)), Some(ContentType::Json), "{json:?}");
        }
        for lenient in [
            "application/x-www-form-urlencoded",
            "text/plain",
            "text/plain; charset=utf-8",
            "application/octet-stream",
            "application/jsonp",
            "json",
            "",
        ] {
            assert_eq!(
                check(Some(lenient)),
                Some(ContentType::Lenient),
                "{lenient:?}"
            );
        }
        for other in [
            "multipart/form-data; boundary=x",
            "application/xml",
            "text/xml",
            "application/soap+xml",
            "image/png",
            "video/mp4",
            "text/html",
            "text/csv",
            "application/pdf",
        ] {
            assert_eq!(check(Some(other)), None, "{other:?}");
        }
    }
}
