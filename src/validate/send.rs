//! The single-send body: `{"phoneNumber": "...", "variables": {...}, ...}`.
//!
//! A single send is small, so it is read whole ([`super::json::object`], which refuses
//! repeated keys and deep nesting). It needs a string `phoneNumber` that follows the
//! 10-15 digits rule (the seed's exact 400 otherwise) and, when it carries media fields,
//! URLs that follow the media rule.

use serde_json::Value;

use super::outcome::PHONE_NUMBER;
use super::{json, media, phone, FieldErrors, Rejection};
use crate::api::text;

/// The message for a single-send body without a string `phoneNumber` (the simulator says
/// the same).
pub const NO_PHONE_NUMBER: &str =
    "Request body must be a JSON object with a string \"phoneNumber\"";

/// Checks a single-send body.
pub fn single(body: &[u8]) -> Result<(), Rejection> {
    let obj = json::object(body)?;
    let mut errors = FieldErrors::new();
    match obj.get("phoneNumber") {
        Some(Value::String(number)) => {
            if !phone::is_valid(number) {
                errors.insert("phoneNumber".into(), text::PHONE_RULE.into());
            }
        }
        _ => return Err(Rejection::malformed(PHONE_NUMBER, NO_PHONE_NUMBER)),
    }
    media::check_fields(&obj, "", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Rejection::send(errors))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(body: &str) -> serde_json::Value {
        match single(body.as_bytes()) {
            Ok(()) => serde_json::Value::Null,
            Err(r) => serde_json::to_value(r.envelope()).unwrap(),
        }
    }

    #[test]
    fn valid_single_sends_pass() {
        for ok in [
            r#"{"phoneNumber":"+38970123456"}"#,
            r#"{"phoneNumber":"38970123456","variables":{"name":"Ana"},"imageUrl":"https://cdn.example.com/a.png"}"#,
            r#"{"phoneNumber":"38970123456","imageUrl":null}"#,
        ] {
            assert_eq!(answer(ok), serde_json::Value::Null, "{ok}");
        }
    }

    #[test]
    fn the_seed_answers() {
        assert_eq!(
            serde_json::to_string(&single(br#"{"phoneNumber":"123"}"#).unwrap_err().envelope())
                .unwrap(),
            r#"{"error":"Bad Request","message":"Invalid phone number format","validationErrors":{"phoneNumber":"Phone number must be 10-15 digits"}}"#
        );
        assert_eq!(
            answer(r#"{"phoneNumber":"38970123456","imageUrl":"http://cdn.example.com/a.png"}"#),
            serde_json::json!({"error": "Bad Request", "message": "Image URL is not accessible",
                "validationErrors": {"imageUrl": "URL must be HTTPS and publicly accessible"}})
        );
        for shape in [
            r#"{"phoneNumber":38970123456}"#,
            r#"{"to":"38970123456"}"#,
            r#"{"phoneNumber":null}"#,
        ] {
            assert_eq!(
                answer(shape),
                serde_json::json!({"error": "Bad Request", "message": NO_PHONE_NUMBER}),
                "{shape}"
            );
        }
    }
}
