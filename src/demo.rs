//! `sluice demo`: a simulated API and a proxy in one process, set up to show a send
//! surviving the API's 429s, with curl lines to try by hand.
//!
//! The demo drives itself once at start (fills the simulated company's pending capacity,
//! then sends through the proxy and reports how the 429s were absorbed), then stays up
//! for the printed curl lines until Ctrl-C.

use std::path::Path;
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
        ..SimConfig::default()
    }
}

/// Runs the demo until `shutdown`.
pub async fn run(args: DemoArgs, shutdown: CancellationToken) -> Result<(), BoxError> {
    std::fs::create_dir_all(&args.data_dir)?;
    let sim = Simulator::new(SimConfig {
        max_pending: 50_000,
        drain_rate: 1_000.0,
        retry_after: 2,
        hint: HintMode::Both,
        api_keys: vec![DEMO_KEY.to_string()],
        ..SimConfig::default()
    });
    let sim_listener = TcpListener::bind(args.sim_listen).await?;
    let sim_addr = sim_listener.local_addr()?;
    let stop = shutdown.clone();
    tokio::spawn(simulator::serve(sim_listener, sim, async move {
        stop.cancelled().await
    }));

    let mut config = Config::default();
    config.server.listen = args.listen;
    config.server.admin_listen = args.admin_listen;
    config.server.data_dir = args.data_dir.clone();
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
        )
        .await?;
    let id = campaign["id"].clone();
    via_proxy
        .call(Method::POST, &format!("/api/v1/campaigns/{id}/start"), "")
        .await?;
    let fill = args.data_dir.join("bulk-50000.json");
    let small = args.data_dir.join("bulk-5000.json");
    write_bulk(&fill, 50_000, 0)?;
    write_bulk(&small, 5_000, 50_000)?;

    println!("sluice demo\n  simulated API  {sim_url}   (key {DEMO_KEY}, maxAllowed 50000, drains 1000/s, Retry-After 2 s)\n  proxy          {proxy}\n  admin          {admin}/metrics\n");
    println!("Self-check: filling the pending capacity, then sending 5000 more through the proxy…");
    let bulk = format!("/api/v1/campaigns/{id}/bulk/sms");
    direct
        .call(Method::POST, &bulk, &std::fs::read_to_string(&fill)?)
        .await?;
    let started = Instant::now();
    let answer = via_proxy
        .call(Method::POST, &bulk, &std::fs::read_to_string(&small)?)
        .await?;
    let limited: u64 = running
        .metrics
        .upstream_rate_limited
        .with_label_values(&["passthrough"])
        .get();
    println!(
        "  the API said 429 {limited} time(s); the proxy waited out each hint and the client got {answer} after {:.1} s\n",
        started.elapsed().as_secs_f64()
    );

    println!("Try it yourself (while the capacity is full the proxy holds your request):");
    println!("  curl -s {sim_url}{bulk} -H 'X-API-Key: {DEMO_KEY}' -H 'Content-Type: application/json' --data-binary @{}", fill.display());
    println!("  time curl -s {proxy}{bulk} -H 'X-API-Key: {DEMO_KEY}' -H 'Content-Type: application/json' --data-binary @{}", small.display());
    println!("  curl -s {proxy}/api/v1/campaigns/{id} -H 'X-API-Key: {DEMO_KEY}'");
    println!("  curl -s {proxy}/api/v1/templates/999 -H 'X-API-Key: {DEMO_KEY}'      # the API's own 404, passed through");
    println!("  curl -s {proxy}/api/v1/viber-services                                  # the API's own 401");
    println!("  curl -s {proxy}{bulk} -H 'X-API-Key: {DEMO_KEY}' -H 'Content-Type: application/json' -d '{{\"recipients\":[\"38970123456\",\"123\"]}}'   # refused by sluice itself, in the API's own 400");
    println!(
        "  curl -s {admin}/metrics | grep -E '^sluice_(upstream_rate_limited|retries|cooldowns)'"
    );
    println!("  curl -s {sim_url}/_sim/stats");
    println!("\nCtrl-C to stop.");

    shutdown.cancelled().await;
    running.shutdown();
    running.wait().await?;
    Ok(())
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

    async fn call(
        &self,
        method: Method,
        path: &str,
        body: &str,
    ) -> Result<serde_json::Value, BoxError> {
        let req = Request::builder()
            .method(method)
            .uri(self.0.uri_for(Some(&path.parse()?)))
            .header("x-api-key", DEMO_KEY)
            .header("content-type", "application/json")
            .body(Body::from(Bytes::copy_from_slice(body.as_bytes())))?;
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
