//! The durable send queue end to end: the simulator and the proxy on loopback sockets,
//! a real SQLite file in a temporary directory.

mod common;

use std::time::Duration;

use http::{Method, StatusCode};
use sluice::app;
use sluice::simulator::{HintMode, SimConfig};

use common::queue::{get_job, post, proxy, url, wait_job};
use common::sim::{bulk_body, campaign, phones, KEY};
use common::{json, send, Running};

fn sim_config(max_pending: u64, drain_rate: f64) -> SimConfig {
    SimConfig {
        max_pending,
        drain_rate,
        retry_after: 1,
        hint: HintMode::Both,
        ..SimConfig::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_of_450000_completes_against_max_pending_50000() {
    let sim = Running::start(sim_config(50_000, 150_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |_| {}).await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let body = bulk_body(&phones(0, 450_000));
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let (status, headers, job) = post(&p, &path, KEY, Some("respond-async"), body).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    let job_id = job["id"].as_str().unwrap().to_string();
    assert_eq!(
        headers["location"],
        format!("/sluice/v1/jobs/{job_id}").as_str()
    );
    assert_eq!(headers["preference-applied"], "respond-async");
    assert_eq!(job["recipients"], 450_000);

    let job = wait_job(
        &p,
        &job_id,
        |j| j["state"] == "succeeded",
        Duration::from_secs(90),
    )
    .await;
    assert_eq!(job["delivered"], 450_000);
    assert_eq!(job["failed"], 0);
    assert_eq!(job["acceptedCount"], 450_000);
    let stats = sim.sim.stats();
    assert_eq!(stats.recipients_accepted, 450_000, "{stats:?}");
    assert_eq!(stats.distinct_recipients, 450_000, "{stats:?}");
    assert_eq!(stats.duplicate_recipients, 0, "{stats:?}");
    assert!(
        stats.rate_limited > 0,
        "the scenario must meet the capacity limit: {stats:?}"
    );
    assert!(stats.max_batch_after_first_429 <= 50_000, "{stats:?}");
    assert_eq!(stats.early_retries, 0, "{stats:?}");
}

#[tokio::test]
async fn single_send_waits_and_returns_the_apis_answer() {
    let sim = Running::start(sim_config(50_000, 1_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |_| {}).await;
    let id = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/messages/sms");
    let body = r#"{"phoneNumber":"+38970123456","variables":{"name":"Ana"}}"#.to_string();
    let (status, headers, answer) = post(&p, &path, KEY, None, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["status"], "Pending");
    assert!(answer["messageId"].is_string());
    let job_id = headers["x-sluice-job-id"].to_str().unwrap();
    let (status, job) = get_job(&p, job_id, KEY).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(job["state"], "succeeded");
    assert_eq!(job["parts"][0]["lastStatus"], 201);
}

#[tokio::test]
async fn prefer_wait_answers_202_when_the_job_is_not_done() {
    let sim = Running::start(sim_config(50_000, 1_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |_| {}).await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    sim.sim.set_max_pending(0);
    let started = tokio::time::Instant::now();
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let (status, headers, job) =
        post(&p, &path, KEY, Some("wait=1"), bulk_body(&phones(0, 10))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{job}");
    assert!(started.elapsed() >= Duration::from_secs(1));
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(headers["preference-applied"], "wait=1");
    assert!(
        matches!(job["state"].as_str(), Some("queued" | "in_progress")),
        "{job}"
    );
    // Once the API has room again the job finishes by itself.
    sim.sim.set_max_pending(50_000);
    let job_id = job["id"].as_str().unwrap();
    let job = wait_job(
        &p,
        job_id,
        |j| j["state"] == "succeeded",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(job["delivered"], 10);
}

#[tokio::test]
async fn a_final_400_is_a_dead_letter_that_replays_after_the_cause_is_fixed() {
    let sim = Running::start(sim_config(50_000, 1_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |_| {}).await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", false).await; // still Draft
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let (status, headers, answer) = post(&p, &path, KEY, None, bulk_body(&phones(0, 5))).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(answer["error"], "Campaign is not active");
    let job_id = headers["x-sluice-job-id"].to_str().unwrap().to_string();
    let (_, job) = get_job(&p, &job_id, KEY).await;
    assert_eq!(job["state"], "failed");
    assert_eq!(job["failed"], 5);
    assert_eq!(job["parts"][0]["lastStatus"], 400);
    assert_eq!(p.metrics.dead_letters.with_label_values(&["bulk"]).get(), 1);

    let (status, _, _) = common::sim::call(
        &sim,
        Method::POST,
        &format!("/api/v1/campaigns/{id}/start"),
        Some(KEY),
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, _, job) = post(
        &p,
        &format!("/sluice/v1/jobs/{job_id}/retry"),
        KEY,
        None,
        String::new(),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{job}");
    let job = wait_job(
        &p,
        &job_id,
        |j| j["state"] == "succeeded",
        Duration::from_secs(10),
    )
    .await;
    assert_eq!(job["delivered"], 5);
    assert_eq!(sim.sim.stats().recipients_accepted, 5);
}

#[tokio::test]
async fn cancel_stops_what_was_not_sent_and_other_keys_see_nothing() {
    let sim = Running::start(SimConfig {
        api_keys: vec![KEY.into(), "other-key".into()],
        ..sim_config(50_000, 1_000.0)
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |_| {}).await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    sim.sim.set_max_pending(0);
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let (status, _, job) = post(
        &p,
        &path,
        KEY,
        Some("respond-async"),
        bulk_body(&phones(0, 20)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job_id = job["id"].as_str().unwrap().to_string();

    // Another key cannot see, cancel or replay it: the same 404 as an unknown id.
    let (status, body) = get_job(&p, &job_id, "other-key").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        serde_json::json!({"error": "Not Found", "message": "Job not found"})
    );
    let (status, _, _) = send(
        Method::DELETE,
        &url(&p, &format!("/sluice/v1/jobs/{job_id}")),
        &[("X-API-Key", "other-key")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _, body) = send(
        Method::GET,
        &url(&p, "/sluice/v1/jobs"),
        &[("X-API-Key", "other-key")],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["jobs"], serde_json::json!([]));
    // No key at all: the API's own 401.
    let (status, _, body) = send(
        Method::GET,
        &url(&p, &format!("/sluice/v1/jobs/{job_id}")),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(
        json(&body),
        serde_json::json!({"error": "Unauthorized", "message": "Missing or invalid X-API-Key header. Please provide a valid API key."})
    );

    // Wait until the API has refused the part at least once, then cancel.
    common::wait_until(
        || sim.sim.stats().rate_limited >= 1,
        Duration::from_secs(5),
        "a 429",
    )
    .await;
    let (status, _, body) = send(
        Method::DELETE,
        &url(&p, &format!("/sluice/v1/jobs/{job_id}")),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let job = json(&body);
    assert_eq!(job["state"], "cancelled", "{job}");
    sim.sim.set_max_pending(50_000);
    let (_, job) = get_job(&p, &job_id, KEY).await;
    assert_eq!(job["state"], "cancelled");
    assert_eq!(sim.sim.stats().recipients_accepted, 0);
    // Listing by state finds it.
    let (_, _, body) = send(
        Method::GET,
        &url(&p, "/sluice/v1/jobs?state=cancelled"),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    assert_eq!(json(&body)["jobs"][0]["id"], job_id.as_str());
}

#[tokio::test]
async fn a_full_queue_answers_429_in_the_apis_format() {
    let sim = Running::start(sim_config(50_000, 1_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| c.queue.max_queued_recipients = 10).await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let (status, headers, body) = post(&p, &path, KEY, None, bulk_body(&phones(0, 11))).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(body["error"], "Rate limit exceeded");
    assert_eq!(body["currentPending"], 0);
    assert_eq!(body["requestedCount"], 11);
    assert_eq!(body["maxAllowed"], 10);
    assert_eq!(body["availableCapacity"], 10);
    assert!(body["retryAfterSeconds"].as_u64().unwrap() >= 1);
    assert_eq!(sim.sim.stats().sends, 0);
}

#[tokio::test]
async fn a_malformed_bulk_body_is_a_400_in_the_seed_envelope() {
    let sim = Running::start(sim_config(50_000, 1_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |_| {}).await;
    let path = "/api/v1/campaigns/1/bulk/sms";
    for bad in [
        "not json",
        r#"{"recipients": "x"}"#,
        r#"{"recipients": []}"#,
        r#"{"to": []}"#,
    ] {
        let (status, _, body) = post(&p, path, KEY, None, bad.to_string()).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"], "Bad Request");
        assert!(body["message"].as_str().unwrap().len() > 10);
    }
    assert_eq!(sim.sim.stats().requests, 0);
}

#[tokio::test]
async fn a_finished_multi_part_send_answers_with_the_aggregate() {
    let sim = Running::start(sim_config(50_000, 1_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| {
        let mut routes = sluice::routes::defaults();
        routes[0].max_recipients_per_request = 25;
        c.routes = Some(routes);
    })
    .await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let (status, headers, answer) = post(&p, &path, KEY, None, bulk_body(&phones(0, 60))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{answer}");
    assert_eq!(answer["state"], "succeeded");
    assert_eq!(answer["acceptedCount"], 60);
    assert_eq!(answer["campaignId"], id);
    assert_eq!(answer["id"], headers["x-sluice-job-id"].to_str().unwrap());
    let sizes: Vec<u64> = answer["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["recipients"].as_u64().unwrap())
        .collect();
    assert_eq!(sizes, vec![25, 25, 10]);
    assert!(answer["parts"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["lastStatus"] == 202));
    // Each part went up with its own idempotency key; the simulator saw every recipient once.
    let stats = sim.sim.stats();
    assert_eq!(
        (
            stats.sends,
            stats.distinct_recipients,
            stats.duplicate_recipients
        ),
        (3, 60, 0)
    );
}

#[tokio::test]
async fn a_queued_send_goes_up_with_its_key_request_id_and_idempotency_key() {
    let up = common::Server::start(common::echo()).await;
    let dir = tempfile::tempdir().unwrap();
    let mut config = common::proxy_config(&up.base(), |c| c.routes = None);
    config.server.data_dir = dir.path().to_path_buf();
    let p = app::start(&config, None).await.unwrap();
    let body = r#"{"phoneNumber":"+38970123456","variables":{"name":"Ana"}}"#;
    let headers = [
        ("X-API-Key", "  client-key "),
        ("X-Request-ID", "req-42"),
        ("Prefer", "wait=10"),
        ("Content-Type", "application/json"),
    ];
    let (status, h, answer) = send(
        Method::POST,
        &url(&p, "/api/v1/campaigns/9/messages/sms?x=1"),
        &headers,
        body,
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let job_id = h["x-sluice-job-id"].to_str().unwrap().to_string();
    let seen = common::Echoed::parse(&answer);
    assert_eq!(seen.method, "POST");
    assert_eq!(seen.path, "/api/v1/campaigns/9/messages/sms");
    assert_eq!(seen.query.as_deref(), Some("x=1"));
    assert_eq!(seen.body, body.as_bytes());
    assert_eq!(seen.header("x-api-key"), Some("client-key"));
    assert_eq!(seen.header("x-request-id"), Some("req-42"));
    assert_eq!(seen.header("content-type"), Some("application/json"));
    assert_eq!(
        seen.header("idempotency-key"),
        Some(format!("{job_id}-0-1").as_str())
    );
    assert_eq!(
        seen.header("prefer"),
        None,
        "Prefer is for sluice, not the API"
    );
}

#[tokio::test]
async fn per_key_request_limit_paces_the_sends() {
    let sim = Running::start(sim_config(50_000, 1_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| c.queue.requests_per_sec = 10).await;
    let id = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/messages/sms");
    let started = tokio::time::Instant::now();
    let mut jobs = Vec::new();
    for i in 0..25 {
        let body = format!(r#"{{"phoneNumber":"+3897012{i:04}"}}"#);
        let (status, _, job) = post(&p, &path, KEY, Some("respond-async"), body).await;
        assert_eq!(status, StatusCode::ACCEPTED);
        jobs.push(job["id"].as_str().unwrap().to_string());
    }
    for job in &jobs {
        wait_job(
            &p,
            job,
            |j| j["state"] == "succeeded",
            Duration::from_secs(10),
        )
        .await;
    }
    // A burst of 10, then 10 a second: the last of 25 cannot go before 1.5 s.
    assert!(
        started.elapsed() >= Duration::from_millis(1_400),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(sim.sim.stats().recipients_accepted, 25);
}

#[tokio::test]
async fn a_cancelled_job_leaves_the_backlog_once() {
    let sim = Running::start(sim_config(50_000, 1_000.0)).await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy(&sim, &dir, |c| c.queue.max_queued_recipients = 20).await;
    let id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    sim.sim.set_max_pending(0);
    let path = format!("/api/v1/campaigns/{id}/bulk/sms");
    let send10 = |first| {
        post(
            &p,
            &path,
            KEY,
            Some("respond-async"),
            bulk_body(&phones(first, 10)),
        )
    };
    let (status, _, a) = send10(0).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let (status, _, _) = send10(100).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let a = a["id"].as_str().unwrap().to_string();
    let (status, _, _) = send(
        Method::DELETE,
        &url(&p, &format!("/sluice/v1/jobs/{a}")),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // The cancelled part leaves the backlog when the dispatcher next meets it, after the
    // API's 1 s hint: bulk parts of a key go one at a time, A's turn first, so once B has
    // been refused a second time A's part has certainly been met.
    common::wait_until(
        || sim.sim.stats().rate_limited >= 3,
        Duration::from_secs(10),
        "B retried",
    )
    .await;
    let (status, _, body) = send10(200).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    // B and the new job are queued: the backlog is full (counting A out twice would
    // leave room here).
    let (status, _, body) = send10(300).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["currentPending"], 20);
}
