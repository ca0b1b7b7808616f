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
