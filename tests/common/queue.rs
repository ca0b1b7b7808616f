//! Helpers for the send queue's tests: a proxy with its own data dir in front of a
//! simulator, posting sends, and reading or waiting for jobs through the jobs API.

use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::Value;
use sluice::app::{self, Running as Proxy};
use sluice::config::Config;

use super::sim::KEY;
use super::{json, send, Running};

/// Starts a proxy in front of `sim` with a fresh data dir; `tweak` adjusts the config.
pub async fn proxy(
    sim: &Running,
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut Config),
) -> Proxy {
    proxy_at(sim.addr, dir, tweak).await
}

/// Starts a proxy in front of whatever listens at `upstream`, keeping its state in `dir`.
pub async fn proxy_at(
    upstream: std::net::SocketAddr,
    dir: &tempfile::TempDir,
    tweak: impl FnOnce(&mut Config),
) -> Proxy {
    let mut config = Config::default();
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.server.data_dir = dir.path().to_path_buf();
    config.upstream.url = format!("http://{upstream}");
    config.retry.hint_jitter_ms = 20;
    config.queue.synchronous = sluice::queue::store::Synchronous::Normal;
    tweak(&mut config);
    app::start(&config, None).await.expect("the proxy starts")
}

pub fn url(p: &Proxy, path: &str) -> String {
    format!("http://{}{path}", p.addr)
}

pub async fn post(
    p: &Proxy,
    path: &str,
    key: &str,
    prefer: Option<&str>,
    body: String,
) -> (StatusCode, http::HeaderMap, Value) {
    let mut headers = vec![("X-API-Key", key), ("Content-Type", "application/json")];
    if let Some(pref) = prefer {
        headers.push(("Prefer", pref));
    }
    let (status, h, body) = send(Method::POST, &url(p, path), &headers, body).await;
    (
        status,
        h,
        if body.is_empty() {
            Value::Null
        } else {
            json(&body)
        },
    )
}

pub async fn get_job(p: &Proxy, id: &str, key: &str) -> (StatusCode, Value) {
    let (status, _, body) = send(
        Method::GET,
        &url(p, &format!("/sluice/v1/jobs/{id}")),
        &[("X-API-Key", key)],
        "",
    )
    .await;
    (status, json(&body))
}

/// Polls the job until `done` holds (bounded), returning its last JSON.
pub async fn wait_job(
    p: &Proxy,
    id: &str,
    done: impl Fn(&Value) -> bool,
    within: Duration,
) -> Value {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let (status, job) = get_job(p, id, KEY).await;
        assert_eq!(status, StatusCode::OK, "{job}");
        if done(&job) {
            return job;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "job did not get there in {within:?}: {job}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
