//! `sluice demo`: a simulated API and a proxy in one process, set up to show a send
//! surviving the API's 429s, with curl lines to try by hand.
//!
//! The demo drives itself once at start (fills the simulated company's pending capacity,
//! then sends through the proxy and reports how the 429s were absorbed), then stays up
//! for the printed curl lines until Ctrl-C.

use std::path::{Path, PathBuf};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{Method, Request};
use http_body_util::BodyExt;
use tokio::net::TcpListener;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::app;
use crate::cli::{DemoArgs, SimulateArgs};
use crate::config::{Config, UpstreamConfig};
use crate::simulator::{self, HintMode, SimConfig, Simulator};
use crate::upstream::Upstream;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The key of the demo's one simulated company.
const DEMO_KEY: &str = "demo-key";

/// The simulator's settings from `sluice simulate`'s flags.
pub fn sim_config(args: &SimulateArgs) -> SimConfig {
    SimConfig {
        max_pending: args.max_pending,
        drain_rate: args.drain_rate,
        retry_after: args.retry_after,
        hint: args.hint,
        fail_rate: args.fail_rate,
        seed: args.seed,
        latency: Duration::from_millis(args.latency_ms),
        api_keys: args.api_keys.clone(),
        reset_rate: args.reset_rate,
        answer_delay: Duration::from_millis(args.answer_delay_ms),
        capacity_flip: args
            .capacity_flip_secs
            .and_then(|secs| Duration::try_from_secs_f64(secs).ok())
            .filter(|period| !period.is_zero()),
        viber_fail_rate: args.viber_fail_rate,
        viber_fail_codes: args.viber_fail_codes,
        sms_fallback_rate: args.sms_fallback_rate,
        sms_fail_rate: args.sms_fail_rate,
        ..SimConfig::default()
    }
}

/// The demo's simulated API: `maxAllowed` 50000, draining 25000 messages a second.
const MAX_PENDING: u64 = 50_000;
const DRAIN_RATE: f64 = 25_000.0;
/// The size of the large send the demo makes (9 times `maxAllowed`).
const LARGE: u64 = 450_000;

/// Runs the demo until `shutdown`.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> Result<(), BoxError> {
    let dir = DemoDir::new(args.data_dir.clone(), args.fresh)?;
    let result = demo(&args, dir.path(), shutdown).await;
    drop(dir);
    result
}

/// The demo's data dir: the one given (emptied first with `--fresh`), or a new temporary
/// one removed at the end.
struct DemoDir {
    path: PathBuf,
    temporary: bool,
}

impl DemoDir {
    fn new(given: Option<PathBuf>, fresh: bool) -> std::io::Result<Self> {
        let (path, temporary) = match given {
            Some(path) => {
                if fresh && path.exists() {
                    std::fs::remove_dir_all(&path)?;
                }
                (path, false)
            }
            None => (
                std::env::temp_dir().join(format!(
                    "sluice-demo-{}-{:08x}",
                    std::process::id(),
                    rand::random::<u32>()
                )),
                true,
            ),
        };
        create_private_dir(&path)?;
        Ok(Self { path, temporary })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DemoDir {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

async fn demo(
    args: &DemoArgs,
    data_dir: &Path,
    shutdown: CancellationToken,
) -> Result<(), BoxError> {
    let sim = Simulator::new(SimConfig {
        max_pending: MAX_PENDING,
        drain_rate: DRAIN_RATE,
        retry_after: 2,
        hint: HintMode::Both,
        api_keys: vec![DEMO_KEY.to_string()],
        ..SimConfig::default()
    });
    let sim_listener = TcpListener::bind(args.sim_listen).await?;
    let sim_addr = sim_listener.local_addr()?;
    let stop = shutdown.clone();
    tokio::spawn(simulator::serve(sim_listener, sim.clone(), async move {
        stop.cancelled().await
    }));

    let mut config = Config::default();
    config.server.listen = args.listen;
    config.server.admin_listen = args.admin_listen;
    config.server.data_dir = data_dir.to_path_buf();
    config.upstream.url = format!("http://{sim_addr}");
    let running = app::start(&config, None).await?;
    let proxy = format!("http://{}", running.addr);
    let admin = format!("http://{}", running.admin_addr);
    let sim_url = format!("http://{sim_addr}");

    let via_proxy = Client::new(&proxy)?;
    let direct = Client::new(&sim_url)?;
    let template = via_proxy
        .call(
            Method::POST,
            "/api/v1/templates",
            r#"{"name":"demo","templateContent":"Hello {{name}}","channel":"SMS"}"#,
            false,
        )
        .await?;
    let template_id = template["id"].clone();
    let campaign = via_proxy
        .call(
            Method::POST,
            "/api/v1/campaigns",
            &format!(
                r#"{{"name":"demo","type":"Bulk","channel":"SMS","templateId":{template_id}}}"#
            ),
            false,
        )
        .await?;
    let id = campaign["id"].clone();
    via_proxy
        .call(
            Method::POST,
            &format!("/api/v1/campaigns/{id}/start"),
            "",
            false,
        )
        .await?;
    let fill = data_dir.join("bulk-50000.json");
    let small = data_dir.join("bulk-5000.json");
    let large = data_dir.join("bulk-450000.json");
    write_bulk(&fill, MAX_PENDING, 0)?;
    write_bulk(&small, 5_000, 1_000_000)?;
    write_bulk(&large, LARGE, 2_000_000)?;

    println!("sluice demo\n  simulated API  {sim_url}   (key {DEMO_KEY}, maxAllowed {MAX_PENDING}, drains {DRAIN_RATE}/s, Retry-After 2 s)\n  proxy          {proxy}\n  admin          {admin}/metrics\n");
    let bulk = format!("/api/v1/campaigns/{id}/bulk/sms");
    let limited = || {
        running
            .metrics
            .upstream_rate_limited
            .with_label_values(&["bulk"])
            .get()
    };

    println!("1. A send meets a full API: filling the pending capacity, then sending 5000 more through the proxy…");
    direct
        .call(Method::POST, &bulk, &std::fs::read_to_string(&fill)?, false)
        .await?;
    let started = Instant::now();
    let answer = via_proxy
        .call(
            Method::POST,
            &bulk,
            &std::fs::read_to_string(&small)?,
            false,
        )
        .await?;
    println!(
        "   the API said 429 {} time(s); sluice waited out the hint and the client got {answer} after {:.1} s\n",
        limited(),
        started.elapsed().as_secs_f64()
    );

    println!("2. A send of {LARGE} recipients, 9 times what the API lets a company have pending, while the API fails 5% of requests with a 500…");
    sim.set_fail_rate(0.05);
    let before = (limited(), sim.stats().sends);
    let started = Instant::now();
    let job = via_proxy
        .call(Method::POST, &bulk, &std::fs::read_to_string(&large)?, true)
        .await?;
    let job_id = job["id"].as_str().unwrap_or_default().to_string();
    println!("   accepted at once as job {job_id}; following it:");
    let job = loop {
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
        }
        let job = via_proxy
            .call(Method::GET, &format!("/sluice/v1/jobs/{job_id}"), "", false)
            .await?;
        println!(
            "   {:>5.1} s  {:<11} delivered {:>6} of {LARGE}",
            started.elapsed().as_secs_f64(),
            job["state"].as_str().unwrap_or(""),
            job["delivered"]
        );
        if job["state"] != "queued" && job["state"] != "in_progress" {
            break job;
        }
    };
    sim.set_fail_rate(0.0);
    let stats = sim.stats();
    println!(
        "   {} in {:.1} s (the drain rate allows {:.1} s at best): {} upstream requests, {} of them 429s and {} injected 500s, all retried; the API saw {} distinct recipients, {} twice\n",
        job["state"].as_str().unwrap_or(""),
        started.elapsed().as_secs_f64(),
        (LARGE - MAX_PENDING) as f64 / DRAIN_RATE,
        stats.sends - before.1,
        limited() - before.0,
        stats.injected_failures,
        stats.distinct_recipients,
        stats.duplicate_recipients
    );

    println!("3. A send to a campaign that was never started…");
    let draft = via_proxy
        .call(
            Method::POST,
            "/api/v1/campaigns",
            r#"{"name":"draft","type":"Bulk","channel":"SMS"}"#,
            false,
        )
        .await?;
    let draft_bulk = format!("/api/v1/campaigns/{}/bulk/sms", draft["id"]);
    let refused = via_proxy
        .call(
            Method::POST,
            &draft_bulk,
            &std::fs::read_to_string(&small)?,
            false,
        )
        .await;
    println!(
        "   the API's own 400 comes back as is ({}); the job keeps it as a dead letter, replayable with POST /sluice/v1/jobs/{{id}}/retry once the campaign is started\n",
        refused.err().map(|e| e.to_string()).unwrap_or_default()
    );

    println!("Try it yourself:");
    println!("  # fill the capacity and send more through the proxy at once: curl waits, then gets the API's 202");
    println!("  curl -s {sim_url}{bulk} -H 'X-API-Key: {DEMO_KEY}' -H 'Content-Type: application/json' --data-binary @{} >/dev/null; time curl -si {proxy}{bulk} -H 'X-API-Key: {DEMO_KEY}' -H 'Content-Type: application/json' --data-binary @{}", fill.display(), small.display());
    println!("  # a large send, answered at once with a job to follow");
    println!("  curl -si {proxy}{bulk} -H 'X-API-Key: {DEMO_KEY}' -H 'Prefer: respond-async' -H 'Content-Type: application/json' --data-binary @{}", large.display());
    println!("  curl -s {proxy}/sluice/v1/jobs/{job_id} -H 'X-API-Key: {DEMO_KEY}'");
    println!(
        "  curl -s '{proxy}/sluice/v1/jobs?state=succeeded&limit=5' -H 'X-API-Key: {DEMO_KEY}'"
    );
    println!("  curl -s {proxy}/api/v1/campaigns/{id} -H 'X-API-Key: {DEMO_KEY}'");
    println!("  curl -s {proxy}/api/v1/templates/999 -H 'X-API-Key: {DEMO_KEY}'      # the API's own 404, passed through");
    println!("  curl -s {proxy}/api/v1/viber-services                                  # the API's own 401");
    println!("  curl -s {admin}/metrics | grep -E '^sluice_(upstream_rate_limited|retries|queue_parts_split|queue_recipients_delivered)'");
    println!("  curl -s {proxy}{bulk} -H 'X-API-Key: {DEMO_KEY}' -H 'Content-Type: application/json' -d '{{\"recipients\":[\"38970123456\",\"123\"]}}'   # refused by sluice itself, in the API's own 400");
    println!("  curl -s {sim_url}/_sim/stats");
    println!("  curl -s {sim_url}/_sim/control -d '{{\"outageSecs\": 5}}'   # stage a fault in the API: 5 s outage (also resetRate, answerDelayMs, capacityFlipSecs)");
    println!("\nCtrl-C to stop.");

    shutdown.cancelled().await;
    running.shutdown();
    running.wait().await?;
    Ok(())
}

/// Creates the data directory readable by its owner only (it holds the job store).
fn create_private_dir(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(path)
}

/// A bulk body of `n` recipients numbered from `first`.
fn write_bulk(path: &Path, n: u64, first: u64) -> std::io::Result<()> {
    let mut body = String::with_capacity(n as usize * 18 + 64);
    body.push_str(r#"{"recipients":["#);
    for i in 0..n {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&format!("\"+3897{:08}\"", first + i));
    }
    body.push_str(r#"],"variables":{"name":"demo"}}"#);
    std::fs::write(path, body)
}

/// A tiny JSON client for the demo's own calls, on the proxy's upstream client.
struct Client(Upstream);

impl Client {
    fn new(base: &str) -> Result<Self, BoxError> {
        let cfg = UpstreamConfig {
            url: base.to_string(),
            request_timeout_ms: 120_000,
            ..UpstreamConfig::default()
        };
        Ok(Self(Upstream::new(&cfg)?))
    }

    /// One JSON call with the demo key; `respond_async` adds `Prefer: respond-async`.
    async fn call(
        &self,
        method: Method,
        path: &str,
        body: &str,
        respond_async: bool,
    ) -> Result<serde_json::Value, BoxError> {
        let mut req = Request::builder()
            .method(method)
            .uri(self.0.uri_for(Some(&path.parse()?)))
            .header("x-api-key", DEMO_KEY)
            .header("content-type", "application/json");
        if respond_async {
            req = req.header("prefer", "respond-async");
        }
        let req = req.body(Body::from(Bytes::copy_from_slice(body.as_bytes())))?;
        let resp = self.0.send(req).await?;
        let status = resp.status();
        let bytes = resp.into_body().collect().await?.to_bytes();
        if !status.is_success() {
            return Err(format!("{path}: {status} {}", String::from_utf8_lossy(&bytes)).into());
        }
        if bytes.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        Ok(serde_json::from_slice(&bytes)?)
    }
}
