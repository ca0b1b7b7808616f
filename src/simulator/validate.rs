//! Request bodies: from bytes to checked drafts, with the provider's validation rules.
//!
//! Template body (`POST /api/v1/templates`), camelCase JSON:
//! - `name` (string, required, unique per company),
//! - `templateContent` (string, required, not blank),
//! - `channel` (`"SMS"` or `"Viber"`, default `"SMS"`),
//! - `messageType` (integer 1-8; required for Viber),
//! - `viberServiceId` (optional; an id from `GET /api/v1/viber-services`),
//! - `imageUrl` and the other media fields (optional; HTTPS and publicly accessible,
//!   [`crate::validate::media`]),
//! - `survey` (`{"question": string ≤ 85 chars, "options": [2-5 strings]}`; required
//!   when `messageType` is 6, the seed's Survey type),
//! - `carousel` (`{"title": string of 2-38 chars, "items": [2-5 values]}`; an item's
//!   media fields follow the media rule),
//! - `smsFallbackEnabled` (bool, default false).
//!
//! The documented rules (content, message type, survey, carousel, media URLs, counted in
//! characters) are [`crate::validate::template::check`], shared with the proxy; this
//! module adds the simulator's own. Send bodies' media fields follow the media rule too.
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
    /// A media field of the send breaks the media rule.
    Media(Errors),
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
///
/// The documented rules are [`crate::validate::template::check`], the very function the
/// proxy refuses templates with; the simulator adds what only the API can know or
/// insists on besides (a name, a channel it knows, a known Viber service, a boolean
/// `smsFallbackEnabled`). The draft is only used when no rule is broken, so it is read
/// leniently.
pub fn template(body: &[u8]) -> Result<(Template, Errors), String> {
    let obj = object(body)?;
    let mut errors = crate::validate::template::check(&obj);
    let name = text_field(&obj, "name", &mut errors, "Template name is required");
    let content = obj
        .get("templateContent")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let channel = match obj.get("channel") {
        None | Some(Value::Null) => Channel::Sms,
        Some(v) => v.as_str().and_then(Channel::parse).unwrap_or_else(|| {
            errors.insert("channel".into(), "Channel must be SMS or Viber".into());
            Channel::Sms
        }),
    };
    let message_type = obj
        .get("messageType")
        .and_then(Value::as_u64)
        .and_then(|t| u8::try_from(t).ok());
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
    let sms_fallback_enabled = match obj.get("smsFallbackEnabled") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(_) => {
            let rule = "smsFallbackEnabled must be true or false";
            errors.insert("smsFallbackEnabled".into(), rule.into());
            false
        }
    };
    let survey = obj
        .get("survey")
        .and_then(Value::as_object)
        .map(|s| Survey {
            question: s
                .get("question")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            options: s
                .get("options")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        });
    let carousel = obj
        .get("carousel")
        .and_then(Value::as_object)
        .map(|c| Carousel {
            title: c
                .get("title")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            items: c
                .get("items")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default(),
        });
    let draft = Template {
        id: 0,
        name,
        template_content: content,
        channel,
        message_type,
        viber_service_id,
        image_url: obj
            .get("imageUrl")
            .and_then(Value::as_str)
            .map(str::to_owned),
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
/// Its media fields are checked after the number.
pub fn single_phone(body: &[u8]) -> Result<PhoneKey, PhoneError> {
    let obj = object(body).map_err(PhoneError::Malformed)?;
    let text = obj
        .get("phoneNumber")
        .and_then(Value::as_str)
        .ok_or_else(|| PhoneError::Malformed(crate::validate::send::NO_PHONE_NUMBER.into()))?;
    let phone = PhoneKey::parse(text).ok_or(PhoneError::Invalid)?;
    send_media(&obj)?;
    Ok(phone)
}

/// The media fields of a send body (bulk or single), under the shared media rule.
pub fn send_media(body: &Object) -> Result<(), PhoneError> {
    let mut errors = Errors::new();
    crate::validate::media::check_fields(body, "", &mut errors);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(PhoneError::Media(errors))
    }
}

/// A phone number from a query string. Form decoding turns an unescaped `+` into a
/// space, so one leading space stands for the `+` a client meant.
pub fn query_phone(text: &str) -> Option<PhoneKey> {
    match text.strip_prefix(' ') {
        Some(rest) => PhoneKey::parse(&format!("+{rest}")),
        None => PhoneKey::parse(text),
    }
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

#[cfg(test)]
mod tests;
