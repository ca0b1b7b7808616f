//! Request bodies: from bytes to checked drafts, with the provider's validation rules.
//!
//! Template body (`POST /api/v1/templates`), camelCase JSON:
//! - `name` (string, required, unique per company),
//! - `templateContent` (string, required, not blank),
//! - `channel` (`"SMS"` or `"Viber"`, default `"SMS"`),
//! - `messageType` (integer 1-8; required for Viber),
//! - `viberServiceId` (optional; an id from `GET /api/v1/viber-services`),
//! - `imageUrl` (optional; an `https://` URL),
//! - `survey` (`{"question": string ≤ 85 chars, "options": [2-5 strings]}`; required
//!   when `messageType` is 6, the seed's Survey type),
//! - `carousel` (`{"title": string of 2-38 chars, "items": [2-5 values]}`; an item's
//!   `imageUrl`, when it has one, must be `https://`),
//! - `smsFallbackEnabled` (bool, default false).
//!
//! Campaign body (`POST /api/v1/campaigns`): `name` (required), `type` (`"Bulk"` or
//! `"Transactional"`), `channel` (`"SMS"` or `"Viber"`), `templateId` (optional).
//!
//! A body that is not a JSON object, or a send body without the expected shape, is
//! *malformed* (a plain 400 with a message saying what was expected); a well-formed body
//! that breaks a rule yields field-by-field `validationErrors` like the seed's.

use serde_json::{Map, Value};

use super::model::{CampaignType, Carousel, Channel, Id, Survey, Template, VIBER_SERVICES};
use super::phone::PhoneKey;
use super::state::{CampaignDraft, Errors};
use crate::api::text;

/// Why a body was refused before any business rule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Rejected {
    /// Not the expected JSON shape; the message says what was expected.
    Malformed(String),
    /// Well-formed, but fields break the rules.
    Invalid(Errors),
}

/// Why a send's phone numbers were refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PhoneError {
    /// A recipient (or the single-send body) has the wrong JSON shape.
    Malformed(String),
    /// A phone number breaks the 10-15 digits rule.
    Invalid,
}

type Object = Map<String, Value>;

/// Parses a body that must be a JSON object.
pub fn object(body: &[u8]) -> Result<Object, String> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err("Request body must be a JSON object".into()),
        Err(e) => Err(format!("Request body is not valid JSON: {e}")),
    }
}

/// Checks a template body. Returns the draft (id 0) and the rule violations found, so
/// the caller can add the uniqueness rule before deciding.
pub fn template(body: &[u8]) -> Result<(Template, Errors), String> {
    let obj = object(body)?;
    let mut errors = Errors::new();
    let name = text_field(&obj, "name", &mut errors, "Template name is required");
    let content = text_field(
        &obj,
        "templateContent",
        &mut errors,
        "Template content is required",
    );
    let channel = match obj.get("channel") {
        None | Some(Value::Null) => Channel::Sms,
        Some(v) => v.as_str().and_then(Channel::parse).unwrap_or_else(|| {
            errors.insert("channel".into(), "Channel must be SMS or Viber".into());
            Channel::Sms
        }),
    };
    let message_type = match obj.get("messageType") {
        None | Some(Value::Null) => None,
        Some(v) => v
            .as_u64()
            .and_then(|t| u8::try_from(t).ok())
            .filter(|t| (1..=8).contains(t)),
    };
    let type_given = !matches!(obj.get("messageType"), None | Some(Value::Null));
    if (type_given || channel == Channel::Viber) && message_type.is_none() {
        let rule = "Message type must be 1-8 for Viber";
        errors.insert("messageType".into(), rule.into());
    }
    let viber_service_id = match obj.get("viberServiceId") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let known = v
                .as_u64()
                .and_then(|id| VIBER_SERVICES.iter().find(|s| u64::from(s.id) == id));
            if known.is_none() {
                let rule = "Unknown Viber service; see GET /api/v1/viber-services";
                errors.insert("viberServiceId".into(), rule.into());
            }
            known.map(|s| s.id)
        }
    };
    let image_url = media_url(obj.get("imageUrl"), "imageUrl", &mut errors);
    let survey = survey(obj.get("survey"), message_type == Some(6), &mut errors);
    let carousel = carousel(obj.get("carousel"), &mut errors);
    let sms_fallback_enabled = match obj.get("smsFallbackEnabled") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            let rule = "smsFallbackEnabled must be true or false";
            errors.insert("smsFallbackEnabled".into(), rule.into());
            false
        }
    };
    let draft = Template {
        id: 0,
        name,
        template_content: content,
        channel,
        message_type,
        viber_service_id,
        image_url,
        survey,
        carousel,
        sms_fallback_enabled,
    };
    Ok((draft, errors))
}

/// Checks a campaign body.
pub fn campaign(body: &[u8]) -> Result<CampaignDraft, Rejected> {
    let obj = object(body).map_err(Rejected::Malformed)?;
    let mut errors = Errors::new();
    let name = text_field(&obj, "name", &mut errors, "Campaign name is required");
    let kind = obj
        .get("type")
        .and_then(Value::as_str)
        .and_then(CampaignType::parse);
    if kind.is_none() {
        let rule = "Campaign type must be Bulk or Transactional";
        errors.insert("type".into(), rule.into());
    }
    let channel = obj
        .get("channel")
        .and_then(Value::as_str)
        .and_then(Channel::parse);
    if channel.is_none() {
        errors.insert("channel".into(), "Channel must be SMS or Viber".into());
    }
    let template_id = match obj.get("templateId") {
        None | Some(Value::Null) => None,
        Some(v) => {
            let id = v.as_u64().and_then(|id| Id::try_from(id).ok());
            if id.is_none() {
                let rule = "templateId must be a template id (a non-negative integer)";
                errors.insert("templateId".into(), rule.into());
            }
            id
        }
    };
    match (kind, channel) {
        (Some(kind), Some(channel)) if errors.is_empty() => Ok(CampaignDraft {
            name,
            kind,
            channel,
            template_id,
        }),
        _ => Err(Rejected::Invalid(errors)),
    }
}

/// The `recipients` array of a bulk send body.
pub fn recipients(body: &Object) -> Result<&[Value], String> {
    match body.get("recipients") {
        Some(Value::Array(items)) => Ok(items),
        _ => Err("Request body must be a JSON object with a \"recipients\" array".into()),
    }
}

/// Each recipient's phone number: a string, or an object with a string `phoneNumber`.
/// A wrong shape is reported before an invalid number, by position.
pub fn phones(items: &[Value]) -> Result<Vec<PhoneKey>, PhoneError> {
    let mut texts = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let text = match item {
            Value::String(s) => Some(s.as_str()),
            Value::Object(o) => o.get("phoneNumber").and_then(Value::as_str),
            _ => None,
        };
        texts.push(text.ok_or_else(|| {
            PhoneError::Malformed(format!(
                "recipients[{i}] must be a phone number string or an object with a string \
                 \"phoneNumber\""
            ))
        })?);
    }
    texts
        .into_iter()
        .map(|t| PhoneKey::parse(t).ok_or(PhoneError::Invalid))
        .collect()
}

/// The phone number of a single-send body `{"phoneNumber": "...", "variables": {...}}`.
pub fn single_phone(body: &[u8]) -> Result<PhoneKey, PhoneError> {
    let obj = object(body).map_err(PhoneError::Malformed)?;
    let text = obj
        .get("phoneNumber")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            PhoneError::Malformed(
                "Request body must be a JSON object with a string \"phoneNumber\"".into(),
            )
        })?;
    PhoneKey::parse(text).ok_or(PhoneError::Invalid)
}

/// A phone number from a query string. Form decoding turns an unescaped `+` into a
/// space, so one leading space stands for the `+` a client meant.
pub fn query_phone(text: &str) -> Option<PhoneKey> {
    match text.strip_prefix(' ') {
        Some(rest) => PhoneKey::parse(&format!("+{rest}")),
        None => PhoneKey::parse(text),
    }
}

/// True for an absolute `https://` URL with a host and no whitespace.
pub fn is_https_url(url: &str) -> bool {
    let Some(scheme) = url.get(..8) else {
        return false;
    };
    let host = url[8..].split(['/', '?', '#']).next().unwrap_or("");
    scheme.eq_ignore_ascii_case("https://")
        && !host.is_empty()
        && !url.chars().any(char::is_whitespace)
}

/// A required, non-blank string field; records `missing` under `field` otherwise.
fn text_field(obj: &Object, field: &str, errors: &mut Errors, missing: &str) -> String {
    match obj.get(field).and_then(Value::as_str) {
        Some(s) if !s.trim().is_empty() => s.to_owned(),
        _ => {
            errors.insert(field.into(), missing.into());
            String::new()
        }
    }
}

fn media_url(value: Option<&Value>, field: &str, errors: &mut Errors) -> Option<String> {
    match value {
        None | Some(Value::Null) => None,
        Some(Value::String(url)) if is_https_url(url) => Some(url.clone()),
        Some(_) => {
            errors.insert(field.into(), text::MEDIA_RULE.into());
            None
        }
    }
}

fn survey(value: Option<&Value>, required: bool, errors: &mut Errors) -> Option<Survey> {
    let obj = match value {
        Some(Value::Object(obj)) => obj,
        None | Some(Value::Null) if !required => return None,
        _ => {
            let rule = "Survey with a question and 2-5 options is required for message type 6";
            errors.insert("survey".into(), rule.into());
            return None;
        }
    };
    let question = obj.get("question").and_then(Value::as_str).unwrap_or("");
    let question_ok = !question.trim().is_empty() && question.chars().count() <= 85;
    if !question_ok {
        let rule = "Survey question is required and must be at most 85 characters";
        errors.insert("survey.question".into(), rule.into());
    }
    let options = match obj.get("options").and_then(Value::as_array) {
        Some(a) if (2..=5).contains(&a.len()) && a.iter().all(Value::is_string) => Some(
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ),
        _ => {
            let rule = "Survey must have 2-5 options, each a string";
            errors.insert("survey.options".into(), rule.into());
            None
        }
    };
    match (question_ok, options) {
        (true, Some(options)) => Some(Survey {
            question: question.to_owned(),
            options,
        }),
        _ => None,
    }
}

fn carousel(value: Option<&Value>, errors: &mut Errors) -> Option<Carousel> {
    let obj = match value {
        None | Some(Value::Null) => return None,
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            let rule = "Carousel must be an object with a title and 2-5 items";
            errors.insert("carousel".into(), rule.into());
            return None;
        }
    };
    let before = errors.len();
    let title = obj.get("title").and_then(Value::as_str).unwrap_or("");
    if !(2..=38).contains(&title.chars().count()) {
        let rule = "Carousel title must be 2-38 characters";
        errors.insert("carousel.title".into(), rule.into());
    }
    let items = obj.get("items").and_then(Value::as_array);
    match items {
        Some(items) if (2..=5).contains(&items.len()) => {
            for (i, item) in items.iter().enumerate() {
                let field = format!("carousel.items[{i}].imageUrl");
                media_url(item.get("imageUrl"), &field, errors);
            }
        }
        _ => {
            let rule = "Carousel must have 2-5 items";
            errors.insert("carousel.items".into(), rule.into());
        }
    }
    (errors.len() == before).then(|| Carousel {
        title: title.to_owned(),
        items: items.cloned().unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests;
