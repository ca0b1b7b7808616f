//! The template rules of `POST /api/v1/templates`, as the provider documents them.
//!
//! - `templateContent` is required (a string that is not blank);
//! - `messageType` is 1-8 for Viber (required when `channel` is `"Viber"`, checked
//!   whenever it is given);
//! - a survey (`messageType` 6) has a `survey` with a `question` of at most 85
//!   characters and 2-5 `options` (strings);
//! - a `carousel` has a `title` of 2-38 characters and 2-5 `items`;
//! - media URLs (the template's and each carousel item's [`super::media::MEDIA_FIELDS`])
//!   are HTTPS and publicly accessible.
//!
//! Characters are Unicode scalar values (`chars().count()`), not bytes: an 85-character
//! Cyrillic question is 170 bytes and passes; so does one of 85 emoji.
//!
//! [`check`] is pure and shared: the proxy refuses a template that breaks these rules
//! before sending it, and the simulator runs the same function before its own checks
//! (a unique `name`, a known `viberServiceId`…), so both give the same `validationErrors`
//! with the same texts.

use serde_json::{Map, Value};

use super::{json, media, FieldErrors, Rejection};

/// Texts of the template rules (the API's own wording where the seed gives it).
pub mod rule {
    pub const CONTENT_REQUIRED: &str = "Template content is required";
    pub const MESSAGE_TYPE: &str = "Message type must be 1-8 for Viber";
    pub const SURVEY_REQUIRED: &str =
        "Survey with a question and 2-5 options is required for message type 6";
    pub const SURVEY_QUESTION: &str =
        "Survey question is required and must be at most 85 characters";
    pub const SURVEY_OPTIONS: &str = "Survey must have 2-5 options, each a string";
    pub const CAROUSEL_SHAPE: &str = "Carousel must be an object with a title and 2-5 items";
    pub const CAROUSEL_TITLE: &str = "Carousel title must be 2-38 characters";
    pub const CAROUSEL_ITEMS: &str = "Carousel must have 2-5 items";
}

/// The Viber message type of a survey.
pub const SURVEY_TYPE: u64 = 6;
/// Longest survey question, in characters.
pub const SURVEY_QUESTION_MAX: usize = 85;
/// Allowed number of survey options.
pub const SURVEY_OPTIONS: std::ops::RangeInclusive<usize> = 2..=5;
/// Allowed carousel title length, in characters.
pub const CAROUSEL_TITLE: std::ops::RangeInclusive<usize> = 2..=38;
/// Allowed number of carousel items.
pub const CAROUSEL_ITEMS: std::ops::RangeInclusive<usize> = 2..=5;
/// Allowed Viber message types.
pub const MESSAGE_TYPES: std::ops::RangeInclusive<u64> = 1..=8;

/// Checks a template request body: strictly read, then [`check`].
pub fn request(body: &[u8]) -> Result<(), Rejection> {
    let obj = json::object(body)?;
    let errors = check(&obj);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Rejection::template(errors))
    }
}

/// Every documented template rule `obj` breaks: field → rule text.
pub fn check(obj: &Map<String, Value>) -> FieldErrors {
    let mut errors = FieldErrors::new();
    let mut fail = |field: &str, rule: &str| {
        errors.insert(field.to_string(), rule.to_string());
    };
    let content_ok = obj
        .get("templateContent")
        .and_then(Value::as_str)
        .is_some_and(|s| !s.trim().is_empty());
    if !content_ok {
        fail("templateContent", rule::CONTENT_REQUIRED);
    }
    let viber = obj
        .get("channel")
        .and_then(Value::as_str)
        .is_some_and(|c| c.eq_ignore_ascii_case("viber"));
    let message_type = present(obj.get("messageType"));
    let valid_type = message_type
        .and_then(Value::as_u64)
        .filter(|t| MESSAGE_TYPES.contains(t));
    if (message_type.is_some() || viber) && valid_type.is_none() {
        fail("messageType", rule::MESSAGE_TYPE);
    }
    check_survey(
        obj.get("survey"),
        valid_type == Some(SURVEY_TYPE),
        &mut fail,
    );
    check_carousel(obj.get("carousel"), &mut errors);
    media::check_fields(obj, "", &mut errors);
    errors
}

/// `None` for an absent or `null` value.
fn present(value: Option<&Value>) -> Option<&Value> {
    value.filter(|v| !v.is_null())
}

fn check_survey(value: Option<&Value>, required: bool, fail: &mut impl FnMut(&str, &str)) {
    let survey = match present(value) {
        Some(Value::Object(obj)) => obj,
        None if !required => return,
        _ => return fail("survey", rule::SURVEY_REQUIRED),
    };
    let question = survey.get("question").and_then(Value::as_str).unwrap_or("");
    if question.trim().is_empty() || question.chars().count() > SURVEY_QUESTION_MAX {
        fail("survey.question", rule::SURVEY_QUESTION);
    }
    let options_ok = survey
        .get("options")
        .and_then(Value::as_array)
        .is_some_and(|a| SURVEY_OPTIONS.contains(&a.len()) && a.iter().all(Value::is_string));
    if !options_ok {
        fail("survey.options", rule::SURVEY_OPTIONS);
    }
}

fn check_carousel(value: Option<&Value>, errors: &mut FieldErrors) {
    let fail = |errors: &mut FieldErrors, field: &str, rule: &str| {
        errors.insert(field.to_string(), rule.to_string());
    };
    let carousel = match present(value) {
        None => return,
        Some(Value::Object(obj)) => obj,
        Some(_) => return fail(errors, "carousel", rule::CAROUSEL_SHAPE),
    };
    let title = carousel.get("title").and_then(Value::as_str).unwrap_or("");
    if !CAROUSEL_TITLE.contains(&title.chars().count()) {
        fail(errors, "carousel.title", rule::CAROUSEL_TITLE);
    }
    match carousel.get("items").and_then(Value::as_array) {
        Some(items) if CAROUSEL_ITEMS.contains(&items.len()) => {
            for (i, item) in items.iter().enumerate() {
                if let Some(item) = item.as_object() {
                    media::check_fields(item, &format!("carousel.items[{i}]."), errors);
                }
            }
        }
        _ => fail(errors, "carousel.items", rule::CAROUSEL_ITEMS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::text;
    use serde_json::json;

    fn errors_of(body: Value) -> Vec<String> {
        check(body.as_object().unwrap()).into_keys().collect()
    }

    #[test]
    fn a_complete_viber_survey_passes() {
        let body = json!({"name": "poll", "templateContent": "Pick one", "channel": "Viber",
            "messageType": 6, "imageUrl": "https://cdn.example.com/a.png",
            "survey": {"question": "Tea or coffee?", "options": ["Tea", "Coffee"]}});
        assert!(errors_of(body).is_empty());
        let carousel = json!({"templateContent": "Deals", "channel": "viber", "messageType": 7,
            "carousel": {"title": "Hi", "items": [{"imageUrl": "https://cdn.example.com/1.png"}, "x"]}});
        assert!(errors_of(carousel).is_empty());
    }

    #[test]
    fn each_rule_names_its_field() {
        assert_eq!(errors_of(json!({})), ["templateContent"]);
        assert_eq!(
            errors_of(json!({"templateContent": " \n"})),
            ["templateContent"]
        );
        assert_eq!(
            errors_of(json!({"templateContent": 5})),
            ["templateContent"]
        );
        let t = |extra: Value| {
            let mut body = json!({"templateContent": "x"});
            body.as_object_mut()
                .unwrap()
                .extend(extra.as_object().unwrap().clone());
            errors_of(body)
        };
        assert_eq!(t(json!({"channel": "Viber"})), ["messageType"]);
        assert_eq!(t(json!({"messageType": 0})), ["messageType"]);
        assert_eq!(t(json!({"messageType": 9})), ["messageType"]);
        assert_eq!(t(json!({"messageType": "6"})), ["messageType"]);
        assert_eq!(t(json!({"messageType": 6.5})), ["messageType"]);
        assert!(t(json!({"channel": "SMS", "messageType": null})).is_empty());
        assert_eq!(t(json!({"messageType": 6})), ["survey"]);
        assert_eq!(t(json!({"messageType": 6, "survey": []})), ["survey"]);
        assert_eq!(
            t(json!({"messageType": 6, "survey": {}})),
            ["survey.options", "survey.question"]
        );
        assert_eq!(
            t(json!({"survey": {"question": "q", "options": ["a", 2]}})),
            ["survey.options"]
        );
        assert_eq!(
            t(json!({"survey": {"question": "q", "options": ["a", "b", "c", "d", "e", "f"]}})),
            ["survey.options"]
        );
        assert_eq!(t(json!({"carousel": "x"})), ["carousel"]);
        assert_eq!(
            t(json!({"carousel": {"title": "T", "items": [{}]}})),
            ["carousel.items", "carousel.title"]
        );
        assert_eq!(
            t(
                json!({"carousel": {"title": "Deals", "items": [{"videoUrl": "ftp://x"}, {"imageUrl": "https://10.0.0.1/a"}]}})
            ),
            ["carousel.items[0].videoUrl", "carousel.items[1].imageUrl"]
        );
        assert_eq!(
            t(json!({"imageUrl": "http://cdn.example.com/a.png"})),
            ["imageUrl"]
        );
        assert_eq!(t(json!({"thumbnailUrl": 3})), ["thumbnailUrl"]);
    }

    #[test]
    fn limits_count_characters_not_bytes() {
        let survey = |q: String| {
            json!({"templateContent": "x", "messageType": 6,
                "survey": {"question": q, "options": ["a", "b"]}})
        };
        for unit in ["q", "ж", "😀", "👍🏽"] {
            let n = SURVEY_QUESTION_MAX / unit.chars().count();
            let pad = SURVEY_QUESTION_MAX - n * unit.chars().count();
            let fits = format!("{}{}", unit.repeat(n), "ё".repeat(pad));
            assert_eq!(fits.chars().count(), SURVEY_QUESTION_MAX);
            let over = format!("{fits}é");
            assert!(errors_of(survey(fits)).is_empty(), "{unit}");
            assert_eq!(errors_of(survey(over)), ["survey.question"], "{unit}");
        }
        let carousel = |title: &str| json!({"templateContent": "x", "carousel": {"title": title, "items": [1, 2]}});
        assert!(errors_of(carousel("Жж")).is_empty());
        assert!(errors_of(carousel(&"😀".repeat(38))).is_empty());
        assert_eq!(errors_of(carousel("Ж")), ["carousel.title"]);
        assert_eq!(errors_of(carousel(&"😀".repeat(39))), ["carousel.title"]);
    }

    #[test]
    fn requests_get_the_seed_messages() {
        let msg = |body: &str| match request(body.as_bytes()) {
            Err(Rejection::Invalid { message, .. }) => message,
            other => panic!("{body}: {other:?}"),
        };
        assert_eq!(
            msg(r#"{"templateContent":"x","imageUrl":"http://a.example.com/x"}"#),
            text::IMAGE_NOT_ACCESSIBLE
        );
        assert_eq!(msg(r#"{"name":"x"}"#), text::TEMPLATE_VALIDATION);
        assert!(request(br#"{"templateContent":"x"}"#).is_ok());
        assert!(matches!(
            request(br#"{"templateContent":"x","templateContent":"y"}"#),
            Err(Rejection::Malformed { .. })
        ));
    }
}
