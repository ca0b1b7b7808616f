//! The faults sluice exists for, end to end over real sockets: an outage of the API, a
//! pending capacity flipping between full and free, answers that come after sluice's
//! timeout (or never), and the answers clients get when parts are refused.
//!
//! Each test stages its fault with the simulator (`Simulator::start_outage`,
//! `set_capacity_flip`, `set_answer_delay`, `set_reset_rate`) and judges sluice by what
//! the simulator saw (recipients accepted, duplicates, early retries) and what the clients
//! got.

mod common;

use std::time::Duration;

use http::{Method, StatusCode};
use sluice::simulator::{HintMode, SimConfig};
use tokio::time::Instant;

use common::queue::{get_job, post, proxy, url, wait_job};
use common::sim::{bulk_body, campaign, phones, KEY};
use common::{admin_url, json, send, Running};

fn sim_config(max_pending: u64, drain_rate: f64) -> SimConfig {
    SimConfig {
        max_pending,
        drain_rate,
        retry_after: 1,
        hint: HintMode::Both,
        ..SimConfig::default()
    }
}

/// A single send's body to `n`'s phone number.
fn single_body(n: u64) -> String {
    format!(r#"{{"phoneNumber":"{}"}}"#, phones(n, 1)[0])
}

/// The value of a metric sample line `name{labels} value` in a scrape (0 when absent).
fn metric(scrape: &str, name_and_labels: &str) -> f64 {
    scrape
        .lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A 15 s outage with a 120000-recipient bulk job and 20 single sends queued: nothing is
/// dead-lettered, and everything is delivered within 20 s of the API's return, each
/// recipient once. Pass-through requests during the outage are answered at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_delays_sends_and_loses_none() {
    let sim = Running::start(sim_config(50_000, 200_000.0)).await;
    let bulk_campaign = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |_| {}).await;

    sim.sim.start_outage(Duration::from_secs(15));
    let bulk = format!("/api/v1/campaigns/{bulk_campaign}/bulk/sms");
    let (status, _, job) = post(
        &p,
        &bulk,
        KEY,
        Some("respond-async"),
        bulk_body(&phones(0, 120_000)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let mut jobs = vec![job["id"].as_str().unwrap().to_string()];
    let single = format!("/api/v1/campaigns/{single_campaign}/messages/sms");
    for n in 0..20 {
        let body = single_body(500_000 + n);
        let (status, _, job) = post(&p, &single, KEY, Some("respond-async"), body).await;
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        jobs.push(job["id"].as_str().unwrap().to_string());
    }

    // Pass-through during the outage: the API's envelope, at once, not after a deadline.
    common::wait_until(
        || sim.sim.outage_remaining() > Duration::ZERO,
        Duration::from_secs(1),
        "the outage to be on",
    )
    .await;
    let asked = Instant::now();
    let (status, _, body) = send(
        Method::GET,
        &url(&p, "/api/v1/viber-services"),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert_eq!(json(&body)["error"], "Bad Gateway", "{}", json(&body));
    assert!(
        asked.elapsed() < Duration::from_secs(3),
        "{:?}",
        asked.elapsed()
    );

    let back = Instant::now() + sim.sim.outage_remaining();
    tokio::time::sleep_until(back).await;
    for id in &jobs {
        let job = wait_job(
            &p,
            id,
            |j| j["state"] != "queued" && j["state"] != "in_progress",
            Duration::from_secs(40),
        )
        .await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    let recovered = back.elapsed();
    println!(
        "outage 15 s: 120020 recipients delivered {:.1} s after the API came back; {:?}",
        recovered.as_secs_f64(),
        sim.sim.stats()
    );
    assert!(
        recovered <= Duration::from_secs(20),
        "all delivered {recovered:?} after the return"
    );
    let stats = sim.sim.stats();
    assert_eq!(stats.distinct_recipients, 120_020, "{stats:?}");
    assert_eq!(stats.duplicate_recipients, 0, "{stats:?}");
    let (_, _, scrape) = send(Method::GET, &admin_url(&p, "/metrics"), &[], "").await;
    let scrape = String::from_utf8_lossy(&scrape);
    assert_eq!(metric(&scrape, "sluice_queue_dead_letters_total"), 0.0);
    assert!(
        metric(&scrape, "sluice_upstream_outages_total") >= 1.0,
        "{scrape}"
    );
    assert_eq!(metric(&scrape, "sluice_upstream_up "), 1.0);
}

/// The API accepts every send at once but answers only after sluice's timeout: each lost
/// answer is looked up, found, and settled without a second send. No single send is
/// delivered twice, no bulk part more than twice, no job fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_answers_are_reconciled_not_resent() {
    let sim = Running::start(SimConfig {
        answer_delay: Duration::from_millis(2_500),
        ..sim_config(50_000, 100_000.0)
    })
    .await;
    let bulk_campaign = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| {
        c.upstream.request_timeout_ms = 1_000;
        c.queue.reconcile_delay_ms = 200;
    })
    .await;

    let bulk = format!("/api/v1/campaigns/{bulk_campaign}/bulk/sms");
    let (status, _, job) = post(
        &p,
        &bulk,
        KEY,
        Some("respond-async"),
        bulk_body(&phones(0, 20_000)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let bulk_id = job["id"].as_str().unwrap().to_string();

    let single = format!("/api/v1/campaigns/{single_campaign}/messages/sms");
    let clients: Vec<_> = (0..10)
        .map(|n| {
            let url = url(&p, &single);
            tokio::spawn(async move {
                let headers = [("X-API-Key", KEY), ("Content-Type", "application/json")];
                send(Method::POST, &url, &headers, single_body(700_000 + n)).await
            })
        })
        .collect();
    for c in clients {
        let (status, headers, body) = c.await.unwrap();
        assert_eq!(
            status,
            StatusCode::CREATED,
            "{}",
            String::from_utf8_lossy(&body)
        );
        let answer = json(&body);
        assert!(
            answer["messageId"]
                .as_str()
                .is_some_and(|m| m.starts_with("msg-")),
            "{answer}"
        );
        assert_eq!(headers["x-sluice-reconciled"], "lookup");
    }
    let job = wait_job(
        &p,
        &bulk_id,
        |j| j["state"] == "succeeded",
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(job["delivered"], 20_000, "{job}");
    let stats = sim.sim.stats();
    println!("late answers: {stats:?}");
    assert_eq!(stats.distinct_recipients, 20_010, "{stats:?}");
    assert_eq!(stats.duplicate_recipients, 0, "{stats:?}");
    assert_eq!(stats.accepted_sends, 11, "one send each: {stats:?}");
}

/// The connection breaks after every send and the route has no lookup: a send whose fate
/// cannot be known is sent once more (same Idempotency-Key), then recorded as uncertain,
/// never sent a third time, and the client is told "accepted" with the job rather than
/// an error it would resend after.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fate_nobody_can_tell_is_uncertain_after_one_resend() {
    let sim = Running::start(SimConfig {
        reset_rate: 1.0,
        ..sim_config(50_000, 100_000.0)
    })
    .await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| {
        c.queue.reconcile_delay_ms = 50;
        let mut routes = sluice::routes::defaults();
        for r in &mut routes {
            r.lookup = Some(String::new());
        }
        c.routes = Some(routes);
    })
    .await;
    let single = format!("/api/v1/campaigns/{single_campaign}/messages/sms");
    let (status, headers, job) = post(&p, &single, KEY, None, single_body(1)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert!(headers.contains_key("x-sluice-job-id"));
    assert_eq!(job["state"], "uncertain", "{job}");
    assert_eq!(job["uncertain"], 1, "{job}");
    assert_eq!(job["failed"], 0, "{job}");
    let stats = sim.sim.stats();
    println!("resets, no lookup: {stats:?}");
    assert_eq!(stats.sends, 2, "sent twice, never a third time: {stats:?}");
    assert_eq!(stats.resets, 2, "{stats:?}");
    let (_, _, scrape) = send(Method::GET, &admin_url(&p, "/metrics"), &[], "").await;
    let scrape = String::from_utf8_lossy(&scrape);
    assert_eq!(
        metric(
            &scrape,
            "sluice_queue_recipients_uncertain_total{route=\"single\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &scrape,
            "sluice_reconciliations_total{result=\"unanswered\",route=\"single\"}"
        ),
        2.0,
        "{scrape}"
    );
}

/// Every part of a multi-part job refused with the same 400 (a campaign never started):
/// the client gets the API's own 400, with the job's id. A sync answer that times out
/// shows the job as it is by then, not as it was created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_say_what_happened() {
    let sim = Running::start(sim_config(50_000, 10_000.0)).await;
    let draft = campaign(&sim, KEY, "Bulk", "SMS", false).await;
    let started = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| {
        let mut routes = sluice::routes::defaults();
        routes[0].max_recipients_per_request = 10;
        c.routes = Some(routes);
    })
    .await;
    let (status, headers, body) = post(
        &p,
        &format!("/api/v1/campaigns/{draft}/bulk/sms"),
        KEY,
        None,
        bulk_body(&phones(0, 30)),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["error"], "Campaign is not active", "{body}");
    assert!(headers.contains_key("x-sluice-job-id"));
    let (_, job) = get_job(&p, headers["x-sluice-job-id"].to_str().unwrap(), KEY).await;
    assert_eq!(job["parts"].as_array().map(Vec::len), Some(3), "{job}");

    // 150000 recipients into a company with room for 60000: that much is accepted within
    // the one-second wait, and the 202 says so.
    let p2dir = tempfile::tempdir().unwrap();
    let p2 = proxy(&sim, &p2dir, |c| c.queue.sync_wait_ms = 25_000).await;
    sim.sim.set_max_pending(60_000);
    let (status, _, job) = post(
        &p2,
        &format!("/api/v1/campaigns/{started}/bulk/sms"),
        KEY,
        Some("wait=1"),
        bulk_body(&phones(1_000, 150_000)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert!(job["delivered"].as_u64().unwrap_or(0) >= 50_000, "{job}");
    assert_eq!(job["state"], "in_progress", "{job}");
}

/// An outage longer than `queue.max_age_secs`: the part fails with that reason (not an
/// attempts count), and the client's sync answer says so in the API's envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_max_age_fails_with_that_reason() {
    let sim = Running::start(sim_config(50_000, 100_000.0)).await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| {
        c.queue.max_age_secs = 2;
        c.upstream.outage_probe_max_ms = 500;
    })
    .await;
    sim.sim.start_outage(Duration::from_secs(30));
    let single = format!("/api/v1/campaigns/{single_campaign}/messages/sms");
    let (status, headers, body) = post(&p, &single, KEY, None, single_body(9)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(body["error"], "Bad Gateway", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(message.contains("max_age_secs"), "{message}");
    assert!(!message.contains("attempts the API refused"), "{message}");
    let (_, job) = get_job(&p, headers["x-sluice-job-id"].to_str().unwrap(), KEY).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(
        job["parts"][0]["attempts"], 0,
        "an outage is no attempt: {job}"
    );
    sim.sim.start_outage(Duration::ZERO);
}

/// 5xx answers are retried with backoff up to `queue.max_attempts`, then the part is a
/// dead letter whose error says so; the client gets the API's last answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_up_to_max_attempts_then_dead_lettered() {
    let sim = Running::start(SimConfig {
        fail_rate: 1.0,
        ..sim_config(50_000, 100_000.0)
    })
    .await;
    sim.sim.set_fail_rate(0.0);
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    sim.sim.set_fail_rate(1.0);
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| {
        c.queue.max_attempts = 3;
        c.retry.backoff_base_ms = 10;
        c.retry.backoff_cap_ms = 50;
    })
    .await;
    let single = format!("/api/v1/campaigns/{single_campaign}/messages/sms");
    let (status, headers, body) = post(&p, &single, KEY, None, single_body(3)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert_eq!(body["error"], "Internal Server Error", "{body}");
    let (_, job) = get_job(&p, headers["x-sluice-job-id"].to_str().unwrap(), KEY).await;
    assert_eq!(job["state"], "failed", "{job}");
    assert_eq!(job["parts"][0]["attempts"], 3, "{job}");
    let error = job["parts"][0]["lastError"].as_str().unwrap_or_default();
    assert!(error.contains("gave up after 3 attempts"), "{error}");
    assert_eq!(sim.sim.stats().sends, 3);
}
