//! Unit tests of request-body parsing and the template, campaign and phone rules.

use super::*;
use crate::api::text;
use serde_json::json;

fn errors_of(body: Value) -> Errors {
    template(body.to_string().as_bytes()).unwrap().1
}

#[test]
fn a_complete_viber_survey_template_passes() {
    let body = json!({
        "name": "poll", "templateContent": "Pick one", "channel": "Viber",
        "messageType": 6, "viberServiceId": 1, "imageUrl": "https://cdn.example/a.png",
        "survey": {"question": "Tea or coffee?", "options": ["Tea", "Coffee"]},
        "smsFallbackEnabled": true
    });
    let (draft, errors) = template(body.to_string().as_bytes()).unwrap();
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(draft.channel, Channel::Viber);
    assert_eq!(draft.survey.unwrap().options.len(), 2);
    assert!(draft.sms_fallback_enabled);
}

#[test]
fn each_seed_rule_reports_its_field() {
    let e = errors_of(json!({"name": "x", "templateContent": "  "}));
    assert_eq!(e.keys().collect::<Vec<_>>(), ["templateContent"]);

    let e = errors_of(json!({"name": "x", "templateContent": "y", "channel": "Viber"}));
    assert!(e.contains_key("messageType"), "Viber needs a message type");
    let e = errors_of(json!({"name": "x", "templateContent": "y", "messageType": 9}));
    assert!(e.contains_key("messageType"));

    let e = errors_of(json!({"name": "x", "templateContent": "y",
        "imageUrl": "http://cdn.example/a.png"}));
    assert_eq!(
        e.get("imageUrl").map(String::as_str),
        Some(text::MEDIA_RULE)
    );

    let long = "q".repeat(86);
    let e = errors_of(
        json!({"name": "x", "templateContent": "y", "channel": "Viber",
        "messageType": 6, "survey": {"question": long, "options": ["a"]}}),
    );
    assert!(e.contains_key("survey.question") && e.contains_key("survey.options"));
    let e = errors_of(
        json!({"name": "x", "templateContent": "y", "channel": "Viber",
        "messageType": 6}),
    );
    assert!(e.contains_key("survey"), "type 6 needs a survey");

    let e = errors_of(json!({"name": "x", "templateContent": "y",
        "carousel": {"title": "T", "items": [{}, {}, {}, {}, {}, {}]}}));
    assert!(e.contains_key("carousel.title") && e.contains_key("carousel.items"));
    let e = errors_of(json!({"name": "x", "templateContent": "y",
        "carousel": {"title": "Deals", "items": [{"imageUrl": "ftp://x"}, {}]}}));
    assert_eq!(e.keys().collect::<Vec<_>>(), ["carousel.items[0].imageUrl"]);
}

#[test]
fn malformed_bodies_say_what_was_expected() {
    assert!(template(b"[1,2]").unwrap_err().contains("JSON object"));
    assert!(template(b"{").unwrap_err().contains("not valid JSON"));
    let obj = object(br#"{"recipients": "38970123456"}"#).unwrap();
    assert!(recipients(&obj)
        .unwrap_err()
        .contains("\"recipients\" array"));
}

#[test]
fn recipients_are_strings_or_objects_with_a_phone_number() {
    let items = vec![
        json!("38970123456"),
        json!({"phoneNumber": "+38970123457", "v": 1}),
    ];
    assert_eq!(phones(&items).unwrap().len(), 2);
    let shape = phones(&[json!("38970123456"), json!({"phone": "x"})]);
    assert!(matches!(shape, Err(PhoneError::Malformed(m)) if m.contains("recipients[1]")));
    assert_eq!(phones(&[json!("12345")]), Err(PhoneError::Invalid));
}

#[test]
fn a_query_phone_may_have_its_plus_decoded_as_a_space() {
    assert_eq!(query_phone(" 38970123456"), PhoneKey::parse("+38970123456"));
    assert_eq!(query_phone("38970123456"), PhoneKey::parse("38970123456"));
    assert_eq!(query_phone("  38970123456"), None);
}

#[test]
fn campaign_bodies_need_name_type_and_channel() {
    let ok = campaign(br#"{"name":"n","type":"bulk","channel":"SMS","templateId":3}"#);
    assert_eq!(ok.unwrap().template_id, Some(3));
    let Err(Rejected::Invalid(e)) = campaign(br#"{"type":"Weekly","templateId":-1}"#) else {
        panic!("expected validation errors");
    };
    let fields: Vec<_> = e.keys().map(String::as_str).collect();
    assert_eq!(fields, ["channel", "name", "templateId", "type"]);
}
