//! `/_sim/control`: the simulator's run-time knobs over HTTP, for demos and for tests
//! that drive a simulator in another process. Like `/_sim/stats` it needs no key, is not
//! counted in the stats and is not part of the provider's API.
//!
//! `POST` takes a JSON object with any of these fields and applies what it gives:
//!
//! | field | meaning |
//! |---|---|
//! | `outageSecs` | start an outage this long, once this answer is out (`serve.rs`) |
//! | `resetRate` | probability (0..=1) of a connection reset after a processed send |
//! | `answerDelayMs` | how long a processed send waits before answering |
//! | `capacityFlipSecs` | capacity flip period, restarting now; `0` or `null` turns flips off |
//! | `failRate` | probability (0..=1) of an injected 500 |
//! | `maxPending` | `maxAllowed` of every company |
//!
//! An unknown field, a body that is not such an object or a value out of range gets a
//! 400 in the API's envelope and changes nothing. The answer (also of `GET`) is the
//! current settings: the same names, with `outageRemainingSecs` for the outage.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use bytes::Bytes;
use http::StatusCode;
use serde::{Deserialize, Deserializer, Serialize};

use super::handlers::bad_request;
use super::serve::OutageAfterAnswer;
use super::Simulator;
use crate::api::{json_response, text, Envelope};

/// A `POST /_sim/control` body: every field optional.
#[derive(Deserialize, Debug, Default, PartialEq)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Changes {
    outage_secs: Option<f64>,
    reset_rate: Option<f64>,
    answer_delay_ms: Option<u64>,
    /// Absent: unchanged; `null` or 0: off.
    #[serde(default, deserialize_with = "present")]
    capacity_flip_secs: Option<Option<f64>>,
    fail_rate: Option<f64>,
    max_pending: Option<u64>,
}

/// [`Changes`], checked: what to apply.
#[derive(Debug, Default, PartialEq)]
struct Checked {
    outage: Option<Duration>,
    reset_rate: Option<f64>,
    answer_delay: Option<Duration>,
    capacity_flip: Option<Option<Duration>>,
    fail_rate: Option<f64>,
    max_pending: Option<u64>,
}

/// The current settings, as `/_sim/control` answers them.
#[derive(Serialize, Debug)]
#[serde(rename_all = "camelCase")]
struct Settings {
    outage_remaining_secs: f64,
    reset_rate: f64,
    answer_delay_ms: u64,
    capacity_flip_secs: Option<f64>,
    fail_rate: f64,
    max_pending: u64,
}

/// `GET /_sim/control`: the current settings.
pub async fn show(State(sim): State<Simulator>) -> Response {
    json_response(StatusCode::OK, &settings(&sim, Duration::ZERO))
}

/// `POST /_sim/control`: applies the body's changes, answers the settings.
pub async fn apply(State(sim): State<Simulator>, body: Bytes) -> Response {
    let changes = if body.iter().all(u8::is_ascii_whitespace) {
        Changes::default()
    } else {
        match serde_json::from_slice::<Changes>(&body) {
            Ok(changes) => changes,
            Err(e) => return bad_request(format!("Invalid control body: {e}")),
        }
    };
    let checked = match check(changes) {
        Ok(checked) => checked,
        Err(errors) => {
            return Envelope::new(text::BAD_REQUEST, "Invalid control settings")
                .with_validation(errors)
                .into_response(StatusCode::BAD_REQUEST)
        }
    };
    if let Some(p) = checked.fail_rate {
        sim.set_fail_rate(p);
    }
    if let Some(p) = checked.reset_rate {
        sim.set_reset_rate(p);
    }
    if let Some(delay) = checked.answer_delay {
        sim.set_answer_delay(delay);
    }
    if let Some(period) = checked.capacity_flip {
        sim.set_capacity_flip(period);
    }
    if let Some(n) = checked.max_pending {
        sim.set_max_pending(n);
    }
    let outage = checked.outage.filter(|d| !d.is_zero());
    tracing::info!(?checked, "simulator settings changed");
    let mut response = json_response(
        StatusCode::OK,
        &settings(&sim, outage.unwrap_or(Duration::ZERO)),
    );
    if let Some(duration) = outage {
        // Started by `serve` once this answer is out, or it would cut the answer off.
        response
            .extensions_mut()
            .insert(OutageAfterAnswer(duration));
    }
    response
}

/// The settings now; `outage` is one about to start (it reports as remaining).
fn settings(sim: &Simulator, outage: Duration) -> Settings {
    let (reset_rate, answer_delay) = sim.send_fault_settings();
    let (max_pending, capacity_flip) = sim.capacity_settings();
    Settings {
        outage_remaining_secs: sim.outage_remaining().max(outage).as_secs_f64(),
        reset_rate,
        answer_delay_ms: u64::try_from(answer_delay.as_millis()).unwrap_or(u64::MAX),
        capacity_flip_secs: capacity_flip.map(|p| p.as_secs_f64()),
        fail_rate: sim.fail_rate(),
        max_pending,
    }
}

/// Checks every value; the errors name the fields, as `validationErrors` does.
fn check(changes: Changes) -> Result<Checked, BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let mut probability = |name: &str, value: Option<f64>| {
        let valid = value.filter(|p| (0.0..=1.0).contains(p));
        if value.is_some() && valid.is_none() {
            errors.insert(name.into(), "must be a number from 0 to 1".into());
        }
        valid
    };
    let reset_rate = probability("resetRate", changes.reset_rate);
    let fail_rate = probability("failRate", changes.fail_rate);
    let mut duration = |name: &str, secs: Option<f64>| {
        let valid = secs.and_then(|s| Duration::try_from_secs_f64(s).ok());
        if secs.is_some() && valid.is_none() {
            errors.insert(name.into(), "must be a number of seconds, 0 or more".into());
        }
        valid
    };
    let outage = duration("outageSecs", changes.outage_secs);
    let capacity_flip = match changes.capacity_flip_secs {
        None => None,
        Some(None) => Some(None),
        Some(Some(secs)) => duration("capacityFlipSecs", Some(secs))
            .map(|period| Some(period).filter(|p| !p.is_zero())),
    };
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Checked {
        outage,
        reset_rate,
        answer_delay: changes.answer_delay_ms.map(Duration::from_millis),
        capacity_flip,
        fail_rate,
        max_pending: changes.max_pending,
    })
}

/// Deserializes a field that is present (`null` included) as `Some`.
fn present<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    T::deserialize(deserializer).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(body: &str) -> Result<Changes, String> {
        serde_json::from_str(body).map_err(|e| e.to_string())
    }

    #[test]
    fn a_flip_period_absent_null_or_zero_are_three_things() {
        let absent = check(parse("{}").unwrap()).unwrap();
        assert_eq!(absent.capacity_flip, None, "unchanged");
        let null = check(parse(r#"{"capacityFlipSecs": null}"#).unwrap()).unwrap();
        assert_eq!(null.capacity_flip, Some(None), "off");
        let zero = check(parse(r#"{"capacityFlipSecs": 0}"#).unwrap()).unwrap();
        assert_eq!(zero.capacity_flip, Some(None), "off");
        let on = check(parse(r#"{"capacityFlipSecs": 2.5}"#).unwrap()).unwrap();
        assert_eq!(on.capacity_flip, Some(Some(Duration::from_millis(2500))));
    }

    #[test]
    fn unknown_fields_and_bad_values_are_refused() {
        let unknown = parse(r#"{"resetRate": 0.5, "outage": 3}"#).unwrap_err();
        assert!(unknown.contains("unknown field `outage`"), "{unknown}");
        assert!(parse(r#"{"maxPending": -1}"#).is_err());
        assert!(parse(r#"{"answerDelayMs": 1.5}"#).is_err());

        let bad = parse(
            r#"{"resetRate": 1.5, "failRate": -0.1, "outageSecs": -2,
                            "capacityFlipSecs": -1, "answerDelayMs": 10}"#,
        )
        .unwrap();
        let errors = check(bad).unwrap_err();
        let fields: Vec<&str> = errors.keys().map(String::as_str).collect();
        assert_eq!(
            fields,
            ["capacityFlipSecs", "failRate", "outageSecs", "resetRate"]
        );
    }

    #[test]
    fn valid_values_are_all_applied() {
        let body = r#"{"outageSecs": 1.5, "resetRate": 1, "answerDelayMs": 250,
                       "capacityFlipSecs": 3, "failRate": 0, "maxPending": 7}"#;
        let checked = check(parse(body).unwrap()).unwrap();
        let expected = Checked {
            outage: Some(Duration::from_millis(1500)),
            reset_rate: Some(1.0),
            answer_delay: Some(Duration::from_millis(250)),
            capacity_flip: Some(Some(Duration::from_secs(3))),
            fail_rate: Some(0.0),
            max_pending: Some(7),
        };
        assert_eq!(checked, expected);
    }
}
