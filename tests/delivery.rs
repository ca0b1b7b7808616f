//! Delivery tracking and support bundles end to end, over real sockets with the simulator
//! as the API: sluice's delivery counters equal the simulator's outcomes exactly and every
//! failed single send shows its Viber code; a bulk job shows its campaign's counters;
//! `sluice support` (the real binary) and the support route tell what happened to a
//! refused send without a full phone number or a key.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::queue::{get_job, post, proxy};
use common::sim::{bulk_body, call, campaign, phones, text, KEY};
use common::{json, send, wait_until, Running};
use http::{Method, StatusCode};
use serde_json::{json, Value};
use sluice::config::Config;
use sluice::simulator::SimConfig;

/// Lookups soon after acceptance and often, so tests finish in a second or two.
fn quick(config: &mut Config) {
    config.delivery.first_check_ms = 50;
    config.delivery.max_check_interval_ms = 200;
    config.delivery.lookups_per_sec = 2_000;
}

fn sim_config(viber_fail_rate: Option<f64>) -> SimConfig {
    SimConfig {
        api_keys: vec![KEY.into()],
        drain_rate: 1_000.0,
        viber_fail_rate,
        ..SimConfig::default()
    }
}

/// Sum of a labelled counter's series whose labels match `want`.
fn counter(p: &sluice::app::Running, name: &str, want: &[(&str, &str)]) -> u64 {
    let text = String::from_utf8(p.metrics.render()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && (l.as_bytes().get(name.len()) == Some(&b'{')))
        .filter(|l| {
            want.iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn single_viber_sends_are_followed_to_their_codes() {
    let sim = Running::start(sim_config(Some(0.5))).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, quick).await;
    let id = campaign(&sim, KEY, "Transactional", "Viber", true).await;
    let path = format!("/api/v1/campaigns/{id}/messages/viber");
    let mut jobs = Vec::new();
    for phone in phones(1, 80) {
        let body = json!({"phoneNumber": phone}).to_string();
        let (status, headers, answer) = post(&p, &path, KEY, None, body).await;
        assert_eq!(status, StatusCode::CREATED, "{answer}");
        let job = headers["x-sluice-job-id"].to_str().unwrap().to_string();
        jobs.push((
            phone,
            job,
            answer["messageId"].as_str().unwrap().to_string(),
        ));
    }
    let ended = |p: &sluice::app::Running| {
        counter(p, "sluice_messages_delivered_total", &[])
            + counter(p, "sluice_messages_failed_total", &[])
    };
    wait_until(
        || ended(&p) == 80,
        Duration::from_secs(20),
        "80 messages ended",
    )
    .await;

    // sluice's counters are the simulator's outcomes, exactly.
    let stats = sim.sim.stats();
    assert_eq!(stats.delivered + stats.failed, 80);
    assert!(
        (20..=60).contains(&stats.failed),
        "about half fail: {}",
        stats.failed
    );
    let viber = [("channel", "viber")];
    assert_eq!(
        counter(&p, "sluice_messages_delivered_total", &viber),
        stats.delivered
    );
    let mut by_code = BTreeMap::new();
    for code in [8u16, 9, 10] {
        let n = counter(
            &p,
            "sluice_messages_failed_total",
            &[("channel", "viber"), ("code", &code.to_string())],
        );
        if n > 0 {
            by_code.insert(code, n);
        }
    }
    assert_eq!(by_code, stats.failed_by_code);
    assert_eq!(
        counter(&p, "sluice_messages_failed_total", &[("code", "other")]),
        0
    );
    assert_eq!(
        counter(&p, "sluice_delivery_latency_seconds_count", &[]),
        0,
        "unlabelled"
    );
    let text = String::from_utf8(p.metrics.render()).unwrap();
    assert!(
        text.contains("sluice_delivery_latency_seconds_count 80"),
        "latency observed per message"
    );

    // Each job shows what the API's messages query shows for its message.
    let mut failed_jobs = 0;
    for (phone, job, message) in &jobs {
        let (status, view) = get_job(&p, job, KEY).await;
        assert_eq!(status, StatusCode::OK);
        let d = &view["delivery"];
        let listed = call(
            &sim,
            Method::GET,
            &format!("/api/v1/messages?phoneNumber={phone}&campaignId={id}"),
            Some(KEY),
            "",
        )
        .await;
        let listed = json(&listed.2);
        let m = listed
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["messageId"] == *message)
            .unwrap();
        assert_eq!(d["status"], m["status"], "{view}");
        assert_eq!(d["final"], true);
        if d["status"] == "Failed" {
            failed_jobs += 1;
            assert_eq!(d["code"], m["details"]["code"], "{view}");
            assert_eq!(d["error"], m["details"]["error"]);
            assert!([8, 9, 10].contains(&d["code"].as_u64().unwrap()));
            assert_eq!(d["deliveredViaSmsFallback"], false);
        }
    }
    assert_eq!(failed_jobs, stats.failed);
    p.shutdown();
    p.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_job_shows_its_campaign_counters() {
    let sim = Running::start(sim_config(Some(0.3))).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, quick).await;
    // A Viber template with SMS fallback, so some failures are rescued.
    let template = json!({"name": "t", "templateContent": "Hi", "channel": "Viber",
        "messageType": 1, "viberServiceId": 1, "smsFallbackEnabled": true});
    let (_, _, t) = call(
        &sim,
        Method::POST,
        "/api/v1/templates",
        Some(KEY),
        template.to_string(),
    )
    .await;
    let body =
        json!({"name": "b", "type": "Bulk", "channel": "Viber", "templateId": json(&t)["id"]});
    let (_, _, c) = call(
        &sim,
        Method::POST,
        "/api/v1/campaigns",
        Some(KEY),
        body.to_string(),
    )
    .await;
    let id = json(&c)["id"].as_u64().unwrap();
    call(
        &sim,
        Method::POST,
        &format!("/api/v1/campaigns/{id}/start"),
        Some(KEY),
        "",
    )
    .await;

    let (status, headers, answer) = post(
        &p,
        &format!("/api/v1/campaigns/{id}/bulk/viber"),
        KEY,
        None,
        bulk_body(&phones(100, 40)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    let job = headers["x-sluice-job-id"].to_str().unwrap().to_string();
    let view = common::queue::wait_job(
        &p,
        &job,
        |j| j["delivery"]["final"] == true,
        Duration::from_secs(20),
    )
    .await;
    let d = &view["delivery"];
    let (_, _, api) = call(
        &sim,
        Method::GET,
        &format!("/api/v1/campaigns/{id}"),
        Some(KEY),
        "",
    )
    .await;
    let api = json(&api);
    assert_eq!(d["campaignId"], id);
    for field in [
        "sentCount",
        "deliveredCount",
        "failedCount",
        "smsFallbackDeliveredCount",
    ] {
        assert_eq!(d[field], api[field], "{field}: {view}");
    }
    assert_eq!(d["sentCount"], 40);
    assert_eq!(
        d["deliveredCount"].as_u64().unwrap() + d["failedCount"].as_u64().unwrap(),
        40
    );
    assert!(
        d["smsFallbackDeliveredCount"].as_u64().unwrap() > 0,
        "{view}"
    );
    // The gauges sum the campaigns followed.
    let text = String::from_utf8(p.metrics.render()).unwrap();
    assert!(
        text.contains("sluice_campaign_messages{count=\"sent\"} 40"),
        "{text}"
    );
    assert!(text.contains("sluice_campaigns_followed{state=\"finished\"} 1"));
    p.shutdown();
    p.wait().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn support_tells_what_happened_to_a_refused_send() {
    let sim = Running::start(sim_config(None)).await;
    let dir = tempfile::tempdir().unwrap();
    let config = common::bin::config(dir.path(), &sim.url(""), "");
    let bin = common::bin::Sluice::start(&config, &[]);
    // A Draft campaign: the API refuses the send with its 400.
    let id = campaign(&sim, KEY, "Transactional", "Viber", false).await;
    let phone = "38970123456";
    let (status, headers, answer) = send(
        Method::POST,
        &bin.url(&format!("/api/v1/campaigns/{id}/messages/viber")),
        &[
            ("X-API-Key", KEY),
            ("Content-Type", "application/json"),
            ("X-Request-ID", "req-refused-1"),
        ],
        json!({"phoneNumber": phone, "variables": {"apiKey": "secret-value"}}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", text(&answer));
    assert_eq!(headers["x-request-id"], "req-refused-1");
    let job = headers["x-sluice-job-id"].to_str().unwrap().to_string();

    let data = dir.path().join("data");
    let support = |extra: &[&str]| {
        std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
            .args(["support", "req-refused-1", "--data-dir"])
            .arg(&data)
            .args(extra)
            .output()
            .expect("sluice support runs")
    };
    // The journal's writer commits right after the answer; the bundle is complete once it
    // shows the part's end.
    let mut out = String::new();
    wait_until(
        || {
            let o = support(&[]);
            out = String::from_utf8_lossy(&o.stdout).into_owned();
            o.status.success() && out.contains("failed")
        },
        Duration::from_secs(10),
        "the bundle is journaled",
    )
    .await;
    assert!(out.contains("Request ID:  req-refused-1"), "{out}");
    assert!(out.contains("Campaign is not active"), "{out}");
    assert!(out.contains("400"), "{out}");
    assert!(
        out.contains(&format!("POST /api/v1/campaigns/{id}/messages/viber")),
        "{out}"
    );
    assert!(out.contains(&job), "{out}");
    let stamp = out.lines().find(|l| l.starts_with("Timestamp:")).unwrap();
    let stamp = stamp.trim_start_matches("Timestamp:").trim();
    assert!(
        humantime::parse_rfc3339(stamp).is_ok() && stamp.ends_with('Z'),
        "{stamp}"
    );
    assert!(out.contains("********456"), "{out}");
    for secret in [phone, KEY, "secret-value"] {
        assert!(!out.contains(secret), "{secret} shown: {out}");
    }

    let o = support(&["--json"]);
    assert!(o.status.success());
    let bundle: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(bundle["requestId"], "req-refused-1");
    assert_eq!(bundle["apiStatus"], 400);
    assert_eq!(bundle["apiError"]["error"], "Campaign is not active");
    assert_eq!(bundle["requestBody"]["phoneNumber"], "********456");
    assert_eq!(bundle["steps"][0]["kind"], "attempt");
    let o = support(&["--json"]).stdout;
    assert!(!String::from_utf8_lossy(&o).contains(phone));
    let missing = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["support", "no-such-request", "--data-dir"])
        .arg(&data)
        .output()
        .unwrap();
    assert!(!missing.status.success());

    // The same through the API, for the key that made the request only.
    let route = bin.url("/sluice/v1/support/req-refused-1");
    let (status, _, body) = send(Method::GET, &route, &[("X-API-Key", KEY)], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["apiError"]["error"], "Campaign is not active");
    let (status, _, _) = send(Method::GET, &route, &[("X-API-Key", "another-key")], "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}
