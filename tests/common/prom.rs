//! A real Prometheus server for tests: Debian's `prometheus` binary, started in a
//! temporary directory (its own config, TSDB and log) on a free loopback port, scraping
//! the given targets every second and evaluating rules every second; killed, and its
//! directory removed, when dropped. Queried through its HTTP API.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::Value;

use super::send;

/// A running `prometheus`; killed when dropped.
pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts `prometheus` scraping `targets` (job `job`, `/metrics`, every 1 s) and
    /// loading `rule_files` (evaluated every 1 s); waits (bounded) until it is ready.
    /// Fails the test when the binary is missing or exits.
    pub async fn start(job: &str, targets: &[SocketAddr], rule_files: &[&Path]) -> Prometheus {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let mut config = String::from(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n",
        );
        config.push_str("rule_files:\n");
        for file in rule_files {
            let quoted = serde_json::to_string(file.to_str().expect("a UTF-8 path")).unwrap();
            writeln!(config, "  - {quoted}").unwrap();
        }
        if rule_files.is_empty() {
            config.push_str("  []\n");
        }
        let targets: Vec<String> = targets.iter().map(|t| format!("\"{t}\"")).collect();
        write!(
            config,
            "scrape_configs:\n  - job_name: {job}\n    metrics_path: /metrics\n    \
             static_configs:\n      - targets: [{}]\n",
            targets.join(", ")
        )
        .unwrap();
        let config_file = dir.path().join("prometheus.yml");
        std::fs::write(&config_file, &config).expect("the config written");
        let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("a log file");

        // A free port: bound, read and released just before prometheus binds it.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("the log file"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run prometheus ({e}). It must be on PATH: `.ci/run` installs it \
                     (`apt-get install -y --no-install-recommends prometheus`)."
                )
            });
        let mut prom = Prometheus { child, addr, dir };
        let start = Instant::now();
        loop {
            if let Ok(Some(status)) = prom.child.try_wait() {
                panic!("prometheus exited ({status}):\n{}", prom.log());
            }
            if prom.ready().await {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "prometheus not ready within 30 s:\n{}",
                prom.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        prom
    }

    /// Its log so far (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Whether `/-/ready` answers 200 (false while nothing listens yet).
    async fn ready(&self) -> bool {
        if tokio::net::TcpStream::connect(self.addr).await.is_err() {
            return false;
        }
        let url = format!("http://{}/-/ready", self.addr);
        send(Method::GET, &url, &[], "").await.0 == StatusCode::OK
    }

    /// `GET <path>` of its HTTP API, as JSON; fails unless `"status": "success"`.
    pub async fn get(&self, path_and_query: &str) -> Value {
        let url = format!("http://{}{path_and_query}", self.addr);
        let (status, _, body) = send(Method::GET, &url, &[], "").await;
        serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{path_and_query}: not JSON ({e}, {status}): {}",
                String::from_utf8_lossy(&body)
            )
        })
    }

    /// `GET /api/v1/query?query=<expr>` (an instant query, now): the JSON answer, success
    /// or not.
    pub async fn query(&self, expr: &str) -> Value {
        self.get(&format!("/api/v1/query?query={}", encode(expr)))
            .await
    }

    /// The series of an instant query's vector or matrix result; `Err` with the error or
    /// the unexpected answer otherwise.
    pub async fn series(&self, expr: &str) -> Result<Vec<Value>, String> {
        let answer = self.query(expr).await;
        if answer["status"] != "success" {
            return Err(format!("{}: {}", answer["errorType"], answer["error"]));
        }
        match answer["data"]["resultType"].as_str() {
            Some("vector" | "matrix") => Ok(answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default()),
            other => Err(format!("result type {other:?}: {answer}")),
        }
    }

    /// Polls `cond` over the answers of `expr` (every 100 ms) until it holds; panics
    /// naming `what` (with the last answer and the log) after `timeout`.
    pub async fn wait_for(
        &self,
        expr: &str,
        cond: impl Fn(&[Value]) -> bool,
        timeout: Duration,
        what: &str,
    ) {
        let start = Instant::now();
        loop {
            let last = self.series(expr).await;
            if last.as_deref().is_ok_and(&cond) {
                return;
            }
            assert!(
                start.elapsed() < timeout,
                "timed out after {timeout:?} waiting until {what}: {expr} gives {last:?}\n\
                 --- prometheus log ---\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // `dir` is removed after this, with the TSDB and the log.
    }
}

/// The numeric value of one series of an instant vector (`"value": [time, "1.5"]`).
pub fn value_of(series: &Value) -> f64 {
    series["value"][1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Percent-encodes `s` for a URL query (everything but RFC 3986's unreserved characters).
pub fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            write!(out, "%{b:02X}").unwrap();
        }
    }
    out
}
