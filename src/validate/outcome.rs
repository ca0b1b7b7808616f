//! What a failed check becomes: the seed's 400 envelope, and bounded metric labels.
//!
//! Two shapes, both `{"error": "Bad Request", "message": …}` as the seed's error page
//! shows them:
//! - [`Rejection::Malformed`]: the body is not what the endpoint takes at all (not JSON,
//!   not an object, a wrong Content-Type, a repeated key…); the message says what.
//! - [`Rejection::Invalid`]: well-formed, but fields break rules; `validationErrors` maps
//!   each field to its rule, with the seed's message for the kind of rule:
//!   "Invalid phone number format", "Image URL is not accessible" or "Template
//!   validation failed".
//!
//! Metric labels ([`Rejection::labels`]) name the field, never a value, from a fixed list
//! ([`LABELS`]), so a client cannot grow the metrics' cardinality.

use std::collections::BTreeSet;

use axum::body::Body;
use http::{Response, StatusCode};

use super::FieldErrors;
use crate::api::{text, Envelope};

/// Metric label: the body as a whole (not JSON, not an object, too deep, a repeated key).
pub const BODY: &str = "body";
/// Metric label: a Content-Type that is not JSON.
pub const CONTENT_TYPE: &str = "contentType";
/// Metric label: a phone number breaking the 10-15 digits rule (single or bulk).
pub const PHONE_NUMBER: &str = "phoneNumber";
/// Metric label: a recipient of the wrong shape (neither a string nor an object with a
/// string `phoneNumber`), or a recipients array that is missing, not an array or empty.
pub const RECIPIENTS: &str = "recipients";
/// Metric label of any field not in [`LABELS`].
pub const OTHER: &str = "other";

/// Every metric label a field can get (besides [`OTHER`]).
pub const LABELS: [&str; 24] = [
    BODY,
    CONTENT_TYPE,
    PHONE_NUMBER,
    RECIPIENTS,
    "imageUrl",
    "videoUrl",
    "fileUrl",
    "thumbnailUrl",
    "mediaUrl",
    "templateContent",
    "messageType",
    "survey",
    "survey.question",
    "survey.options",
    "carousel",
    "carousel.title",
    "carousel.items",
    "carousel.items.imageUrl",
    "carousel.items.videoUrl",
    "carousel.items.fileUrl",
    "carousel.items.thumbnailUrl",
    "carousel.items.mediaUrl",
    "name",
    "channel",
];

/// The message of a bulk send refused for recipients of the wrong shape.
pub const RECIPIENTS_MALFORMED: &str =
    "Each recipient must be a phone number string or an object with a string \"phoneNumber\"";

/// Why a request is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Not the shape the endpoint takes; `label` is the metric label.
    Malformed {
        label: &'static str,
        message: String,
    },
    /// Fields break rules.
    Invalid {
        message: &'static str,
        errors: FieldErrors,
    },
}

// === impl Rejection ===

impl Rejection {
    pub fn malformed(label: &'static str, message: impl Into<String>) -> Self {
        Self::Malformed {
            label,
            message: message.into(),
        }
    }

    /// A send (bulk or single) whose fields break rules, with the seed's message for the
    /// most basic kind of problem found: a recipient's shape, then a phone number, then a
    /// media URL.
    pub fn send(errors: FieldErrors) -> Self {
        let message = if errors.values().any(|v| super::recipients::is_shape_rule(v)) {
            RECIPIENTS_MALFORMED
        } else if errors.values().any(|v| v == text::PHONE_RULE) {
            text::INVALID_PHONE
        } else {
            text::IMAGE_NOT_ACCESSIBLE
        };
        Self::Invalid { message, errors }
    }

    /// A template whose fields break rules: "Image URL is not accessible" when every
    /// problem is a media URL, else "Template validation failed".
    pub fn template(errors: FieldErrors) -> Self {
        let message = if !errors.is_empty() && errors.values().all(|v| v == text::MEDIA_RULE) {
            text::IMAGE_NOT_ACCESSIBLE
        } else {
            text::TEMPLATE_VALIDATION
        };
        Self::Invalid { message, errors }
    }

    /// The seed's envelope.
    pub fn envelope(&self) -> Envelope {
        match self {
            Self::Malformed { message, .. } => Envelope::new(text::BAD_REQUEST, message.clone()),
            Self::Invalid { message, errors } => {
                Envelope::new(text::BAD_REQUEST, *message).with_validation(errors.clone())
            }
        }
    }

    /// The 400 response.
    pub fn into_response(self) -> Response<Body> {
        self.envelope().into_response(StatusCode::BAD_REQUEST)
    }

    /// The metric labels of the fields at fault, each once.
    pub fn labels(&self) -> BTreeSet<&'static str> {
        match self {
            Self::Malformed { label, .. } => BTreeSet::from([*label]),
            Self::Invalid { errors, .. } => errors.iter().map(|(k, v)| label_of(k, v)).collect(),
        }
    }
}

/// The metric label of a `validationErrors` entry: [`PHONE_NUMBER`] for the phone rule
/// (`recipients[7]` included), [`RECIPIENTS`] for other recipient entries, else the field
/// with its indices dropped (`carousel.items[1].imageUrl` → `carousel.items.imageUrl`)
/// when it is in [`LABELS`], else [`OTHER`].
pub fn label_of(field: &str, rule: &str) -> &'static str {
    if rule == text::PHONE_RULE {
        return PHONE_NUMBER;
    }
    if field.starts_with("recipients[") {
        return RECIPIENTS;
    }
    let mut plain = String::with_capacity(field.len());
    let mut in_index = false;
    for c in field.chars() {
        match c {
            '[' => in_index = true,
            ']' => in_index = false,
            _ if !in_index => plain.push(c),
            _ => {}
        }
    }
    LABELS
        .iter()
        .find(|l| **l == plain)
        .copied()
        .unwrap_or(OTHER)
}

#[cfg(test)]
mod tests {
    use super::super::media::MEDIA_FIELDS;
    use super::*;

    fn errors(pairs: &[(&str, &str)]) -> FieldErrors {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_seed_envelopes_byte_for_byte() {
        let phone = Rejection::send(errors(&[("phoneNumber", text::PHONE_RULE)]));
        assert_eq!(
            serde_json::to_string(&phone.envelope()).unwrap(),
            r#"{"error":"Bad Request","message":"Invalid phone number format","validationErrors":{"phoneNumber":"Phone number must be 10-15 digits"}}"#
        );
        let image = Rejection::template(errors(&[("imageUrl", text::MEDIA_RULE)]));
        assert_eq!(
            serde_json::to_string(&image.envelope()).unwrap(),
            r#"{"error":"Bad Request","message":"Image URL is not accessible","validationErrors":{"imageUrl":"URL must be HTTPS and publicly accessible"}}"#
        );
        let malformed = Rejection::malformed(BODY, "Request body must be a JSON object");
        assert_eq!(
            serde_json::to_string(&malformed.envelope()).unwrap(),
            r#"{"error":"Bad Request","message":"Request body must be a JSON object"}"#
        );
    }

    #[test]
    fn messages_follow_the_most_basic_problem() {
        let media = ("imageUrl", text::MEDIA_RULE);
        let phone = ("recipients[2]", text::PHONE_RULE);
        let shape = ("recipients[5]", super::super::recipients::SHAPE_RULE);
        let message = |r: Rejection| match r {
            Rejection::Invalid { message, .. } => message,
            Rejection::Malformed { .. } => unreachable!(),
        };
        assert_eq!(
            message(Rejection::send(errors(&[media]))),
            text::IMAGE_NOT_ACCESSIBLE
        );
        assert_eq!(
            message(Rejection::send(errors(&[media, phone]))),
            text::INVALID_PHONE
        );
        assert_eq!(
            message(Rejection::send(errors(&[media, phone, shape]))),
            RECIPIENTS_MALFORMED
        );
        let content = ("templateContent", "Template content is required");
        assert_eq!(
            message(Rejection::template(errors(&[media, content]))),
            text::TEMPLATE_VALIDATION
        );
        let item = ("carousel.items[0].imageUrl", text::MEDIA_RULE);
        assert_eq!(
            message(Rejection::template(errors(&[media, item]))),
            text::IMAGE_NOT_ACCESSIBLE
        );
    }

    #[test]
    fn labels_are_bounded_field_names() {
        let r = Rejection::template(errors(&[
            ("carousel.items[3].imageUrl", text::MEDIA_RULE),
            ("carousel.items[4].imageUrl", text::MEDIA_RULE),
            ("survey.question", "x"),
            ("somethingNew", "x"),
        ]));
        assert_eq!(
            r.labels().into_iter().collect::<Vec<_>>(),
            ["carousel.items.imageUrl", "other", "survey.question"]
        );
        assert_eq!(label_of("recipients[12]", text::PHONE_RULE), PHONE_NUMBER);
        assert_eq!(label_of("phoneNumber", text::PHONE_RULE), PHONE_NUMBER);
        assert_eq!(label_of("recipients[12]", "anything else"), RECIPIENTS);
        for field in MEDIA_FIELDS {
            assert_eq!(label_of(field, text::MEDIA_RULE), field);
            let item = format!("carousel.items[0].{field}");
            assert_eq!(
                label_of(&item, text::MEDIA_RULE),
                format!("carousel.items.{field}")
            );
        }
    }
}
