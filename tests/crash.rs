//! Nothing lost across `kill -9`: the real binary accepts a large job, is killed with
//! SIGKILL mid-dispatch, restarts on the same data directory and finishes the job.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use http::{Method, StatusCode};
use sluice::simulator::{HintMode, SimConfig};

use common::sim::{bulk_body, campaign, phones, KEY};
use common::{json, send, wait_until, Running};

/// Starts `sluice serve` and returns it with the address it listens on (read from its
/// JSON log line "sluice listening").
fn spawn(config: &std::path::Path) -> (Child, SocketAddr) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(config)
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("the binary starts");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("the proxy logs before exiting")
            .expect("readable stdout");
        let Ok(log) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        if log["message"] == "sluice listening" {
            break log["addr"]
                .as_str()
                .expect("an addr field")
                .parse()
                .expect("an address");
        }
    };
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (child, addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_dispatch_loses_nothing() {
    const N: u64 = 300_000;
    let sim = Running::start(SimConfig {
        max_pending: 50_000,
        drain_rate: 50_000.0,
        retry_after: 1,
        hint: HintMode::Both,
        ..SimConfig::default()
    })
    .await;
    let campaign_id = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             [upstream]\nurl = \"http://{}\"\n[queue]\nconcurrency = 2\n",
            dir.path().join("data"),
            sim.addr
        ),
    )
    .unwrap();

    let (mut first, addr) = spawn(&config);
    let path = format!("http://{addr}/api/v1/campaigns/{campaign_id}/bulk/sms");
    let headers = [
        ("X-API-Key", KEY),
        ("Prefer", "respond-async"),
        ("Content-Type", "application/json"),
    ];
    let (status, _, body) = send(Method::POST, &path, &headers, bulk_body(&phones(0, N))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job_id = json(&body)["id"].as_str().unwrap().to_string();

    // Mid-dispatch: some recipients accepted by the API, not all.
    wait_until(
        || sim.sim.stats().recipients_accepted > 0,
        Duration::from_secs(30),
        "some recipients accepted",
    )
    .await;
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");
    let before = sim.sim.stats().recipients_accepted;
    assert!(
        before < N,
        "the kill came too late to test anything: {before}"
    );

    let (mut second, addr) = spawn(&config);
    let job_url = format!("http://{addr}/sluice/v1/jobs/{job_id}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let job = loop {
        let (status, _, body) = send(Method::GET, &job_url, &[("X-API-Key", KEY)], "").await;
        assert_eq!(status, StatusCode::OK);
        let job = json(&body);
        if job["state"] == "succeeded" {
            break job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished after restart: {job}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    second.kill().expect("SIGKILL");
    second.wait().expect("reaped");

    let stats = sim.sim.stats();
    println!("kill -9 mid-dispatch: {stats:?}");
    assert_eq!(job["delivered"], N);
    assert_eq!(
        stats.distinct_recipients, N,
        "every recipient reached the API: {stats:?}"
    );
    // At-least-once: only parts in flight at the kill (at most `concurrency` = 2 parts of
    // at most maxAllowed = 50000) may have been sent twice.
    assert!(stats.duplicate_recipients <= 2 * 50_000, "{stats:?}");
}

#[test]
fn serve_fails_loudly_when_the_store_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    // A data dir that is a regular file cannot hold a database.
    let not_a_dir = dir.path().join("file");
    std::fs::write(&not_a_dir, "x").unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&not_a_dir)
        .output()
        .expect("the binary runs");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("job store"), "{stderr}");
    assert!(
        stderr.contains(&not_a_dir.display().to_string()),
        "{stderr}"
    );
}

/// What sluice learned about a key survives `kill -9`: killed while a key cools down after
/// a 429, the restarted binary sends nothing into that key before the API's hint has
/// passed, and cuts a new bulk job to the `maxAllowed` it learned before the kill.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_cooldown_keeps_the_key_cooling_after_restart() {
    const MAX: u64 = 1_000;
    // Nothing drains: the company stays full, so every send during a hint is refused and
    // counted by the simulator as an early retry.
    let sim = Running::start(SimConfig {
        max_pending: MAX,
        drain_rate: 0.0,
        retry_after: 6,
        hint: HintMode::Both,
        ..SimConfig::default()
    })
    .await;
    let bulk_campaign = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let (status, _, _) =
        common::sim::bulk(&sim, bulk_campaign, "sms", bulk_body(&phones(0, MAX))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the company is full");

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("sluice.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
             [upstream]\nurl = \"http://{}\"\n[retry]\nhint_jitter_ms = 10\n",
            dir.path().join("data"),
            sim.addr
        ),
    )
    .unwrap();
    let (mut first, addr) = spawn(&config);
    let headers = [
        ("X-API-Key", KEY),
        ("Prefer", "respond-async"),
        ("Content-Type", "application/json"),
    ];
    let single = format!("http://{addr}/api/v1/campaigns/{single_campaign}/messages/sms");
    let (status, _, body) = send(
        Method::POST,
        &single,
        &headers,
        r#"{"phoneNumber":"38970999001"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job_url = format!(
        "http://{addr}/sluice/v1/jobs/{}",
        json(&body)["id"].as_str().unwrap()
    );
    // Killed once sluice has recorded the 429 (the part shows it).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (_, _, job) = send(Method::GET, &job_url, &[("X-API-Key", KEY)], "").await;
        if json(&job)["parts"][0]["lastStatus"] == 429 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no 429 recorded: {}",
            json(&job)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(sim.sim.stats().rate_limited, 1);
    first.kill().expect("SIGKILL");
    first.wait().expect("reaped");

    let (mut second, addr) = spawn(&config);
    // A new bulk job is cut to the maxAllowed learned before the kill, at once.
    let bulk = format!("http://{addr}/api/v1/campaigns/{bulk_campaign}/bulk/sms");
    let (status, _, body) = send(
        Method::POST,
        &bulk,
        &headers,
        bulk_body(&phones(10_000, 3 * MAX)),
    )
    .await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let job = json(&body);
    assert_eq!(job["parts"].as_array().map(Vec::len), Some(3), "{job}");
    // The resumed single send goes again only after the hint: its next 429 is not early.
    wait_until(
        || sim.sim.stats().rate_limited >= 2,
        Duration::from_secs(20),
        "the resumed send tried again after the hint",
    )
    .await;
    second.kill().expect("SIGKILL");
    second.wait().expect("reaped");
    let stats = sim.sim.stats();
    assert_eq!(
        stats.early_retries, 0,
        "a send went into a cooling key: {stats:?}"
    );
    assert!(stats.max_batch_after_first_429 <= MAX, "{stats:?}");
}
