//! The simulator's delivery outcomes over real sockets: drawn Viber failures with their
//! codes, SMS fallback and SMS failures; the campaign counters, the messages query and
//! `/_sim/stats` agreeing exactly; the same seed giving the same outcomes.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::sim::{bulk, bulk_body, call, phones, text, KEY};
use common::{json, send, Running};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sluice::simulator::{SimConfig, ViberFailCodes};

/// Creates a Viber template (with or without SMS fallback) and a started bulk campaign
/// from it; returns the campaign's id.
async fn viber_campaign(run: &Running, name: &str, fallback: bool) -> u64 {
    let template = json!({"name": name, "templateContent": "Hi", "channel": "Viber",
        "messageType": 1, "viberServiceId": 1, "smsFallbackEnabled": fallback});
    let path = "/api/v1/templates";
    let (status, _, created) = call(run, Method::POST, path, Some(KEY), template.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&created));
    let body = json!({"name": name, "type": "Bulk", "channel": "Viber",
        "templateId": json(&created)["id"]});
    let path = "/api/v1/campaigns";
    let (status, _, created) = call(run, Method::POST, path, Some(KEY), body.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&created));
    let id = json(&created)["id"].as_u64().expect("an id");
    let start = format!("/api/v1/campaigns/{id}/start");
    let (status, _, _) = call(run, Method::POST, &start, Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK);
    id
}

async fn counters(run: &Running, id: u64) -> Value {
    let path = format!("/api/v1/campaigns/{id}");
    let (status, _, body) = call(run, Method::GET, &path, Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK);
    json(&body)
}

/// The messages of campaign `id` to `phone`, oldest first.
async fn listed(run: &Running, phone: &str, id: u64) -> Vec<Value> {
    let path = format!("/api/v1/messages?phoneNumber={phone}&campaignId={id}");
    let (status, _, body) = call(run, Method::GET, &path, Some(KEY), "").await;
    assert_eq!(status, StatusCode::OK, "{}", text(&body));
    json(&body).as_array().expect("a list").clone()
}

/// What the messages query shows for a campaign, summed over recipients.
#[derive(Debug, Default)]
struct Summed {
    messages: u64,
    delivered: u64,
    failed: u64,
    fallback: u64,
    /// Failed messages by `details.code`.
    failed_by_code: BTreeMap<u16, u64>,
}

/// Sums the messages query over every distinct phone of `to` for campaign `id` (of
/// `channel`), checking each message's shape on the way.
async fn summed(run: &Running, id: u64, channel: &str, to: &[String]) -> Summed {
    let mut distinct = to.to_vec();
    distinct.sort();
    distinct.dedup();
    let mut sum = Summed::default();
    for phone in &distinct {
        for m in listed(run, phone, id).await {
            sum.messages += 1;
            assert_eq!(m["channel"], channel);
            let code = m["details"]["code"].as_u64().map(|c| c as u16);
            let via = m.get("deliveredViaSmsFallback");
            match (m["status"].as_str(), channel) {
                (Some("Delivered"), "SMS") => {
                    assert_eq!((code, via), (None, None), "{m}");
                    sum.delivered += 1;
                }
                (Some("Failed"), "SMS") => {
                    assert_eq!(m["details"], json!({"code": 1, "error": "UNDELIVERABLE"}));
                    assert_eq!(via, None, "{m}");
                    sum.failed += 1;
                    *sum.failed_by_code.entry(1).or_default() += 1;
                }
                (Some("Delivered"), _) if via == Some(&json!(true)) => {
                    assert!(matches!(code, Some(8..=10)), "the Viber code is kept: {m}");
                    sum.delivered += 1;
                    sum.fallback += 1;
                }
                (Some("Delivered"), _) => {
                    assert_eq!((code, via), (None, Some(&json!(false))), "{m}");
                    sum.delivered += 1;
                }
                (Some("Failed"), _) => {
                    let code = code.expect("a Viber code");
                    let error = match code {
                        8 => "USER_BLOCKED",
                        9 => "NOT_VIBER_USER",
                        10 => "NO_SUITABLE_DEVICE",
                        other => panic!("code {other} is not a Viber code"),
                    };
                    assert_eq!(m["details"]["error"], error);
                    assert_eq!(via, Some(&json!(false)), "{m}");
                    sum.failed += 1;
                    *sum.failed_by_code.entry(code).or_default() += 1;
                }
                _ => panic!("not done: {m}"),
            }
        }
    }
    sum
}

fn drawn(seed: u64) -> SimConfig {
    SimConfig {
        drain_rate: 1000.0,
        seed,
        viber_fail_rate: Some(0.3),
        viber_fail_codes: ViberFailCodes::parse("8:1,9:2,10:1").unwrap(),
        sms_fallback_rate: 0.5,
        sms_fail_rate: 0.1,
        ..SimConfig::default()
    }
}

// Paused time: nothing in the server or client arms a timer, so the clock moves only
// when the test advances it.
#[tokio::test(start_paused = true)]
async fn campaign_counters_equal_the_messages_query_summed_over_every_recipient() {
    let run = Running::start(drawn(7)).await;
    let fallback = viber_campaign(&run, "fb", true).await;
    let plain = viber_campaign(&run, "plain", false).await;
    let sms = common::sim::campaign(&run, KEY, "Bulk", "SMS", true).await;
    let mut to = phones(0, 200);
    to.push(to[3].clone()); // a duplicate: two messages for one phone
    for (id, channel) in [(fallback, "viber"), (plain, "viber"), (sms, "sms")] {
        let (status, _, body) = bulk(&run, id, channel, bulk_body(&to)).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{}", text(&body));
    }
    tokio::time::advance(Duration::from_secs(2)).await; // 603 messages at 1000/s: all done

    let mut total = Summed::default();
    for (id, channel) in [(fallback, "Viber"), (plain, "Viber"), (sms, "SMS")] {
        let c = counters(&run, id).await;
        let s = summed(&run, id, channel, &to).await;
        assert_eq!(s.messages, 201, "campaign {id}");
        assert_eq!(c["acceptedCount"], 201);
        assert_eq!(c["sentCount"], 201);
        assert_eq!(c["deliveredCount"], s.delivered, "campaign {id}: {s:?}");
        assert_eq!(c["failedCount"], s.failed, "campaign {id}: {s:?}");
        assert_eq!(c["smsFallbackDeliveredCount"], s.fallback, "campaign {id}");
        assert!(
            s.failed > 0,
            "campaign {id}: failures at these rates: {s:?}"
        );
        total.delivered += s.delivered;
        total.failed += s.failed;
        total.fallback += s.fallback;
        for (&code, &n) in &s.failed_by_code {
            *total.failed_by_code.entry(code).or_default() += n;
        }
        if id == fallback {
            assert!(s.fallback > 0, "half the Viber failures fall back: {s:?}");
        } else {
            assert_eq!(s.fallback, 0, "campaign {id}");
        }
    }
    // About 30% of 402 Viber messages fail, half of those of the fallback campaign are
    // rescued; about 10% of 201 SMS fail.
    let sms_failed = total.failed_by_code.get(&1).copied().unwrap_or(0);
    assert!((8..=35).contains(&sms_failed), "{total:?}");
    let viber_failed = total.failed - sms_failed + total.fallback;
    assert!((80..=165).contains(&viber_failed), "{total:?}");
    assert!(
        [8, 9, 10]
            .iter()
            .all(|c| total.failed_by_code.contains_key(c)),
        "every weighted code is drawn: {total:?}"
    );

    // The simulator's own figures are the same truth.
    let (status, _, body) = send(Method::GET, &run.url("/_sim/stats"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let stats: sluice::simulator::SimStats = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats.delivered, total.delivered);
    assert_eq!(stats.failed, total.failed);
    assert_eq!(stats.failed_by_code, total.failed_by_code);
    assert_eq!(stats.sms_fallback_delivered, total.fallback);
    assert_eq!(stats.delivered + stats.failed, 603);
    let served = json(&body);
    let by_code = served["failed_by_code"].as_object().expect("a map");
    assert!(by_code
        .keys()
        .all(|k| ["1", "8", "9", "10"].contains(&k.as_str())));
    run.stop().await;
}

/// Every message's `(status, details, deliveredViaSmsFallback)` after one fixed run.
async fn outcomes(seed: u64) -> Vec<(Value, Value, Value)> {
    let run = Running::start(SimConfig {
        viber_fail_rate: Some(0.5),
        ..drawn(seed)
    })
    .await;
    let id = viber_campaign(&run, "fb", true).await;
    let to = phones(0, 60);
    let (status, _, _) = bulk(&run, id, "viber", bulk_body(&to)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    tokio::time::advance(Duration::from_secs(1)).await;
    let mut all = Vec::new();
    for phone in &to {
        for m in listed(&run, phone, id).await {
            all.push((
                m["status"].clone(),
                m["details"].clone(),
                m["deliveredViaSmsFallback"].clone(),
            ));
        }
    }
    run.stop().await;
    all
}

#[tokio::test(start_paused = true)]
async fn the_same_seed_gives_the_same_outcomes() {
    let first = outcomes(7).await;
    assert_eq!(first.len(), 60);
    assert_eq!(outcomes(7).await, first, "the same seed");
    assert_ne!(outcomes(8).await, first, "another seed");
    let kinds: std::collections::BTreeSet<String> = first
        .iter()
        .map(|(status, _, via)| format!("{status}/{via}"))
        .collect();
    assert_eq!(
        kinds.into_iter().collect::<Vec<_>>(),
        [
            r#""Delivered"/false"#,
            r#""Delivered"/true"#,
            r#""Failed"/false"#
        ],
        "all three outcomes occur"
    );
}
