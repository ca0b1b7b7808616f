//! Observability, proven against a running proxy: the `/metrics` exposition (checked by
//! the real `promtool`), exact counters for a scenario with a known number of 429s, 500s
//! and 400s, the Grafana dashboard and the alert rules in `dashboards/` (every metric
//! they use is exported), and no API key in logs or metrics of the real binary.
//!
//! `promtool` must be on `PATH`; `.ci/run` installs it (Debian's `prometheus` package).
//! A test that needs it fails without it rather than skipping.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http::{Method, StatusCode};
use serde_json::{json, Value};
use sluice::keys::apikey::KeyId;
use sluice::metrics::Metrics;
use sluice::simulator::{HintMode, SimConfig};

use common::{
    admin_url, proxy_config, proxy_url, send, start_proxy, wait_until, Running, TestProxy,
};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/sluice.json");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/alerts.yml");
const ALERT_TESTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/alerts.test.yml");
const DASHBOARD_README: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/README.md");

// === tests ===

/// `promtool check metrics` accepts the live exposition of a proxy that has seen 429s,
/// 5xx, 4xx and retries (so every family the proxy feeds is present).
#[tokio::test]
async fn promtool_accepts_the_live_metrics() {
    let scenario = Scenario::run().await;
    let text = scenario.scrape().await;
    let out = promtool(&["check", "metrics"], Some(text.as_bytes()));
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- the exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The alert rules load, and their unit tests (every alert fires on the series it is
/// for and stays quiet otherwise) pass.
#[test]
fn promtool_accepts_the_alert_rules_and_their_unit_tests() {
    let out = promtool(&["check", "rules", ALERTS], None);
    assert!(
        out.status.success(),
        "promtool check rules {ALERTS} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    let out = promtool(&["test", "rules", ALERT_TESTS], None);
    assert!(
        out.status.success(),
        "promtool test rules {ALERT_TESTS} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// Every PromQL expression of the dashboard parses: they are checked by promtool as
/// recording rules, with Grafana's variables replaced by plausible values.
#[test]
fn dashboard_expressions_are_valid_promql() {
    let dashboard = dashboard();
    let exprs = dashboard_exprs(&dashboard);
    assert!(exprs.len() > 30, "only {} expressions found", exprs.len());
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, expr) in exprs.iter().enumerate() {
        let expr = expr
            .replace("$__rate_interval", "2m")
            .replace("$__range", "1h")
            .replace("$instance", ".*")
            .replace("$key", ".*");
        let quoted = serde_json::to_string(&expr).expect("a JSON string");
        rules.push_str(&format!(
            "      - record: dashboard:expr_{i}\n        expr: {quoted}\n"
        ));
    }
    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let file = dir.join("dashboard-rules.yml");
    std::fs::write(&file, &rules).expect("the rules written");
    let out = promtool(
        &["check", "rules", file.to_str().expect("a UTF-8 path")],
        None,
    );
    assert!(
        out.status.success(),
        "a dashboard expression is not valid PromQL:\n{}{}\n--- as rules ---\n{rules}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
}

/// The dashboard imports as is: no hard-coded data source, a unit on every panel,
/// `$__rate_interval` in every rate, and the four rows the issue asks for.
#[test]
fn dashboard_is_importable_as_is() {
    let dashboard = dashboard();
    assert_eq!(dashboard["id"], Value::Null);
    assert_eq!(dashboard["uid"], "sluice-overview");
    let schema = dashboard["schemaVersion"]
        .as_u64()
        .expect("a schemaVersion");
    assert!((36..=41).contains(&schema), "schemaVersion {schema}");
    assert!(
        dashboard.get("__inputs").is_none(),
        "no import-time inputs: the data source is a variable"
    );

    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables");
    let var = |name: &str| {
        vars.iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no variable {name}"))
    };
    assert_eq!(var("datasource")["type"], "datasource");
    assert_eq!(var("datasource")["query"], "prometheus");
    assert!(var("key")["definition"].as_str().is_some_and(|q| q
        .starts_with("label_values(sluice_upstream_capacity")
        && q.ends_with(", key)")));

    // Every `uid` in the file is the dashboard's own or the data source variable.
    let mut uids = Vec::new();
    walk(&dashboard, &mut |key, value| {
        if key == "uid" {
            uids.push(value.clone());
        }
    });
    for uid in &uids {
        assert!(
            *uid == "sluice-overview" || *uid == "${datasource}",
            "hard-coded uid {uid}"
        );
    }

    let panels = all_panels(&dashboard);
    let rows: Vec<&str> = panels
        .iter()
        .filter(|p| p["type"] == "row")
        .filter_map(|p| p["title"].as_str())
        .collect();
    for row in [
        "Traffic",
        "429s and waits",
        "Failures",
        "Queue and capacity",
    ] {
        assert!(rows.contains(&row), "no row {row:?} in {rows:?}");
    }
    let ds = json!({"type": "prometheus", "uid": "${datasource}"});
    let mut ids = BTreeSet::new();
    for panel in panels.iter().filter(|p| p["type"] != "row") {
        let title = panel["title"].as_str().unwrap_or("<untitled>");
        assert!(ids.insert(panel["id"].to_string()), "{title}: duplicate id");
        assert_eq!(panel["datasource"], ds, "{title}: data source");
        let unit = panel["fieldConfig"]["defaults"]["unit"].as_str();
        assert!(unit.is_some_and(|u| !u.is_empty()), "{title}: no unit");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            assert_eq!(target["datasource"], ds, "{title}: target data source");
            let expr = target["expr"].as_str().expect("an expression");
            for range in ranges(expr) {
                assert!(
                    range == "$__rate_interval" || range == "$__range",
                    "{title}: range [{range}] in {expr}"
                );
            }
        }
    }
}

/// A scenario with a known number of 429s, 500s and 400s, through pass-through routes:
/// the counters in the scraped text equal those numbers exactly.
#[tokio::test]
async fn counters_equal_a_known_scenario() {
    let scenario = Scenario::run().await;
    let text = scenario.scrape().await;
    let m = Exposition::parse(&text);

    // Upstream attempts: 3 × 429, 2 × 400, 1 × 401, 2 × 500 (POST, not retried) plus
    // 5 × 500 (one GET, max_attempts = 5), 1 × 200.
    assert_eq!(
        m.family("sluice_upstream_requests_total"),
        counts(&[
            (&pt(&[("status", "200")]), 1.0),
            (&pt(&[("status", "400")]), 2.0),
            (&pt(&[("status", "401")]), 1.0),
            (&pt(&[("status", "429")]), 3.0),
            (&pt(&[("status", "500")]), 7.0),
        ]),
    );
    assert_eq!(
        m.family("sluice_upstream_rate_limited_total"),
        counts(&[(&pt(&[]), 3.0)])
    );
    // 429s are not failures; every other 4xx and 5xx is.
    assert_eq!(
        m.family("sluice_upstream_failures_total"),
        counts(&[
            (&pt(&[("reason", "status_4xx")]), 3.0),
            (&pt(&[("reason", "status_5xx")]), 7.0),
        ]),
    );
    assert_eq!(
        m.family("sluice_retries_total"),
        counts(&[(&[("reason", "status_5xx")], 4.0)])
    );
    // Each 429's hint (30 s, capped to 10 s) passes the 2 s deadline: no retry, the
    // client gets the 429.
    assert_eq!(
        m.family("sluice_deadline_exceeded_total"),
        counts(&[(&pt(&[]), 3.0)])
    );
    assert_eq!(m.single("sluice_retry_hints_capped_total"), 3.0);
    assert_eq!(
        m.family("sluice_client_requests_total"),
        counts(&[
            (&pt(&[("status", "200")]), 1.0),
            (&pt(&[("status", "400")]), 2.0),
            (&pt(&[("status", "401")]), 1.0),
            (&pt(&[("status", "429")]), 3.0),
            (&pt(&[("status", "500")]), 3.0),
        ]),
    );
    assert_eq!(
        m.value("sluice_client_request_duration_seconds_count", &pt(&[])),
        Some(10.0)
    );
    assert_eq!(
        m.value("sluice_upstream_request_duration_seconds_count", &pt(&[])),
        Some(14.0)
    );

    // One cooldown per key, still running (10 s, plus at most 50 ms of jitter), and the
    // 429 bodies' capacity figures; keys appear only as fingerprints.
    let fingerprints: Vec<String> = Scenario::KEYS_429
        .iter()
        .map(|k| KeyId::of(k.as_bytes()).to_string())
        .collect();
    assert_eq!(
        m.family("sluice_cooldowns_started_total"),
        fingerprints
            .iter()
            .map(|fp| (labels(&[("key", fp)]), 1.0))
            .collect()
    );
    for fp in &fingerprints {
        let left = m
            .value("sluice_cooldown_remaining_seconds", &[("key", fp)])
            .unwrap_or_else(|| panic!("no cooldown for {fp}"));
        assert!(left > 0.0 && left <= 10.05, "{fp}: {left} s left");
        for (field, value) in [
            ("current_pending", 0.0),
            ("max_allowed", 5.0),
            ("available_capacity", 5.0),
        ] {
            assert_eq!(
                m.value("sluice_upstream_capacity", &[("key", fp), ("field", field)]),
                Some(value),
                "{fp} {field}"
            );
        }
    }
    // And the simulator agrees on what it answered.
    let stats = scenario.sim.sim.stats();
    assert_eq!(stats.rate_limited, 3);
    assert_eq!(stats.injected_failures, 7);
}

/// Every metric name the dashboard and the alert rules use is exported by the running
/// proxy after traffic that makes every family it feeds appear.
#[tokio::test]
async fn dashboard_and_alerts_use_only_exported_metrics() {
    let scenario = Scenario::run().await;
    let mut live = Exposition::parse(&scenario.scrape().await);
    // The pass-through scenario leaves the queue idle; a queue scenario feeds its families.
    let queued = Exposition::parse(&queue_scenario().await);
    live.types.extend(queued.types);

    let dashboard_text = std::fs::read_to_string(DASHBOARD).expect("the dashboard");
    let mut used = BTreeSet::new();
    for expr in dashboard_exprs(&dashboard()) {
        used.extend(metric_names(&expr));
    }
    // Descriptions name metrics too; they must be real as well.
    used.extend(metric_names(&dashboard_text));
    let alerts = std::fs::read_to_string(ALERTS).expect("the alert rules");
    let in_alerts = metric_names(&alerts);
    assert!(in_alerts.len() >= 7, "{in_alerts:?}");
    used.extend(in_alerts);
    assert!(used.len() > 25, "only {} names found: {used:?}", used.len());

    let missing: Vec<&str> = used
        .iter()
        .filter(|name| !live.exports(name))
        .map(String::as_str)
        .collect();
    assert!(
        missing.is_empty(),
        "used by dashboards/ but not exported by the running proxy: {missing:?}\nexported: {:?}",
        live.types.keys().collect::<Vec<_>>()
    );
}

/// Drives the durable queue through a proxy with the default send routes: one send
/// refused by back-pressure, one split by the API's capacity and delivered, one
/// dead-lettered by a final 400; then validation (bulk route skipping bad recipients,
/// template route in warn mode): one send with a skipped recipient, one refused for its
/// media URL, one template sent despite its media URL. Returns the scraped `/metrics`.
async fn queue_scenario() -> String {
    let sim = Running::start(SimConfig {
        max_pending: 50,
        retry_after: 1,
        drain_rate: 1_000.0,
        hint: HintMode::Both,
        ..SimConfig::default()
    })
    .await;
    let started = start_bulk_campaign(&sim, Scenario::KEY).await;
    let draft = {
        let body = json!({"name": "d", "type": "Bulk", "channel": "SMS"}).to_string();
        let headers = [("X-API-Key", Scenario::KEY)];
        let (_, _, created) =
            send(Method::POST, &sim.url("/api/v1/campaigns"), &headers, body).await;
        common::json(&created)["id"].as_u64().expect("an id")
    };
    let config = proxy_config(&sim.url(""), |c| {
        let mut routes = sluice::routes::defaults();
        for route in &mut routes {
            match route.name.as_str() {
                "bulk" => route.invalid_recipients = sluice::validate::InvalidRecipients::Skip,
                "templates" => route.validation = sluice::validate::Mode::Warn,
                _ => {}
            }
        }
        c.routes = Some(routes);
        c.queue.max_queued_recipients = 100;
    });
    let proxy = start_proxy(&config, None).await;
    let headers = [
        ("X-API-Key", Scenario::KEY),
        ("Content-Type", "application/json"),
    ];
    let bulk = |id: u64| proxy_url(&proxy, &format!("/api/v1/campaigns/{id}/bulk/sms"));
    let (status, _, _) = send(Method::POST, &bulk(started), &headers, bulk_body(150)).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    // 60 recipients against room for 50: a 429, a piece of 50 at once, the rest after it.
    let (status, _, body) = send(Method::POST, &bulk(started), &headers, bulk_body(60)).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    assert_eq!(common::json(&body)["delivered"], 60);
    let (status, _, _) = send(Method::POST, &bulk(draft), &headers, bulk_body(3)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    // Validation: one recipient skipped, one send refused, one template let through.
    let skipping = json!({"recipients": ["38970000001", "123", "38970000002"]}).to_string();
    let async_headers = [headers[0], headers[1], ("Prefer", "respond-async")];
    let (status, _, body) = send(Method::POST, &bulk(started), &async_headers, skipping).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body:?}");
    assert_eq!(common::json(&body)["skipped"][0]["index"], 1);
    let refused = json!({"imageUrl": "http://cdn.example.com/a.png",
        "recipients": ["38970000001"]});
    let (status, _, _) = send(Method::POST, &bulk(started), &headers, refused.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let template = json!({"name": "w", "templateContent": "x",
        "imageUrl": "http://cdn.example.com/a.png"});
    let templates = proxy_url(&proxy, "/api/v1/templates");
    let (status, _, _) = send(Method::POST, &templates, &headers, template.to_string()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the API's own answer");
    let (_, _, metrics) = send(Method::GET, &admin_url(&proxy, "/metrics"), &[], "").await;
    String::from_utf8(metrics.to_vec()).expect("UTF-8 metrics")
}

/// `dashboards/README.md` documents every metric the proxy registers.
#[test]
fn readme_documents_every_metric() {
    let readme = std::fs::read_to_string(DASHBOARD_README).expect("dashboards/README.md");
    let registered = Exposition::parse(&every_family_rendered());
    let undocumented: Vec<&String> = registered
        .types
        .keys()
        .filter(|name| !readme.contains(&format!("| `{name}` |")))
        .collect();
    assert!(
        undocumented.is_empty(),
        "not in the metrics table of dashboards/README.md: {undocumented:?}"
    );
}

/// The real binary, with its own key in `SLUICE_API_KEY` and clients sending another
/// (padded with white space), debug JSON logs: after a 200, a 401, 500s with retries, a
/// 429 and a 413, neither key appears in its output or its metrics.
#[tokio::test]
async fn no_api_key_in_logs_or_metrics() {
    const OWN_KEY: &str = "sk-own-Q7vXw93LmZ-leakcheck";
    const CLIENT_KEY: &str = "ck-client-R4tYp28NbK-leakcheck";
    // Parts that would still give a key away if it were cut or trimmed.
    const OWN_CORE: &str = "Q7vXw93LmZ";
    const CLIENT_CORE: &str = "R4tYp28NbK";

    let sim = Running::start(SimConfig {
        max_pending: 5,
        retry_after: 30,
        hint: HintMode::Both,
        api_keys: vec![OWN_KEY.to_string()],
        ..SimConfig::default()
    })
    .await;
    let campaign = start_bulk_campaign(&sim, OWN_KEY).await;

    let tmp = tempfile::tempdir().expect("a temporary directory");
    let dir = tmp.path();
    let config = dir.join("sluice.toml");
    let quoted = |s: &str| serde_json::to_string(s).expect("a JSON string");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             data_dir = {}\nmax_body_bytes = 4096\n\n\
             [upstream]\nurl = {}\n\n\
             [retry]\ndeadline_ms = 2000\nmax_retry_after_secs = 10\n\
             backoff_base_ms = 1\nbackoff_cap_ms = 5\nmax_attempts = 3\n\n\
             [log]\nformat = \"json\"\nlevel = \"debug\"\n",
            quoted(dir.to_str().expect("a UTF-8 path")),
            quoted(&sim.url("")),
        ),
    )
    .expect("the config written");

    let child = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .env("SLUICE_API_KEY", OWN_KEY)
        .env("RUST_LOG", "debug")
        .env_remove("SLUICE_LOG_FORMAT")
        .env_remove("SLUICE_LOG_LEVEL")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the sluice binary to start");
    let mut proc = Proc::new(child);

    // Its first JSON line of note names the addresses it bound.
    let mut exited = None;
    wait_until(
        || {
            exited = proc.child.try_wait().expect("the child's status");
            exited.is_some()
                || proc
                    .stdout_text()
                    .contains("\"message\":\"sluice listening\"")
        },
        Duration::from_secs(30),
        "sluice logs that it is listening",
    )
    .await;
    assert!(
        exited.is_none(),
        "sluice exited ({exited:?}):\n{}{}",
        proc.stdout_text(),
        proc.stderr_text()
    );
    let listening: Value = proc
        .stdout_text()
        .lines()
        .find(|l| l.contains("\"message\":\"sluice listening\""))
        .map(|l| serde_json::from_str(l).expect("a JSON log line"))
        .expect("the listening line");
    let addr: SocketAddr = listening["addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no addr in {listening}"));
    let admin: SocketAddr = listening["admin_addr"]
        .as_str()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no admin_addr in {listening}"));
    let url = |path: &str| format!("http://{addr}{path}");
    let padded = format!("  {CLIENT_KEY}\t ");
    let client_key = [("X-API-Key", padded.as_str())];

    // 200 with the proxy's own key (the client sends none).
    let (status, _, _) = send(Method::GET, &url("/api/v1/viber-services"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    // 401: the client's key is unknown to the API.
    let (status, _, _) = send(Method::GET, &url("/api/v1/viber-services"), &client_key, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // 500s: a POST returned as is, a GET retried until max_attempts.
    sim.sim.set_fail_rate(1.0);
    let create = json!({"name": "c", "type": "Bulk", "channel": "SMS"}).to_string();
    let (status, _, _) = send(Method::POST, &url("/api/v1/campaigns"), &[], create).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let (status, _, _) = send(Method::GET, &url("/api/v1/viber-services"), &[], "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    sim.sim.set_fail_rate(0.0);
    // A queued send for the proxy's key, over capacity: the dispatcher meets a 429.
    let path = format!("/api/v1/campaigns/{campaign}/bulk/sms");
    let async_send = [("Prefer", "respond-async")];
    let (status, _, _) = send(Method::POST, &url(&path), &async_send, bulk_body(10)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    wait_until(
        || sim.sim.stats().rate_limited >= 1,
        Duration::from_secs(10),
        "a 429",
    )
    .await;
    // 413, an error sluice makes itself, to a client that sent its key.
    let (status, _, _) = send(Method::POST, &url(&path), &client_key, vec![b'x'; 8192]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let admin_url = |p: &str| format!("http://{admin}{p}");
    let (status, _, metrics) = send(Method::GET, &admin_url("/metrics"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = String::from_utf8(metrics.to_vec()).expect("UTF-8 metrics");
    let mut admin_bodies = String::new();
    for p in ["/healthz", "/readyz"] {
        let (_, _, body) = send(Method::GET, &admin_url(p), &[], "").await;
        admin_bodies.push_str(&String::from_utf8_lossy(&body));
    }

    let (stdout, stderr) = proc.stop().await;
    let logs = format!("{stdout}{stderr}");

    // The run is what we think it was: debug JSON logs of those answers, key labels
    // as fingerprints.
    assert!(
        logs.contains("\"level\":\"DEBUG\""),
        "no debug lines:\n{logs}"
    );
    for status in [200, 401, 413, 429, 500] {
        assert!(
            logs.contains(&format!("\"status\":{status}")),
            "no log line with status {status}:\n{logs}"
        );
    }
    assert!(logs.contains("rate limited by the API"), "{logs}");
    let own_fp = KeyId::of(OWN_KEY.as_bytes()).to_string();
    assert!(metrics.contains(&own_fp), "no {own_fp} label:\n{metrics}");
    assert!(metrics.contains("sluice_api_keys_injected_total"));

    for (what, text) in [
        ("logs", &logs),
        ("metrics", &metrics),
        ("/healthz and /readyz", &admin_bodies),
    ] {
        for secret in [OWN_KEY, CLIENT_KEY, OWN_CORE, CLIENT_CORE] {
            assert!(
                !text.contains(secret),
                "{what} contain an API key ({secret}):\n{text}"
            );
        }
    }
}

// === the known scenario ===

/// A simulator and an in-process proxy in front of it, after traffic with a known
/// number of each answer (see [`Scenario::run`]).
struct Scenario {
    proxy: TestProxy,
    sim: Running,
}

impl Scenario {
    /// One key per 429: a 429 cools its key down for longer than the deadline, so a
    /// second request with the same key would get the stored 429 without an attempt.
    const KEYS_429: [&'static str; 3] = ["k429-a", "k429-b", "k429-c"];
    const KEY: &'static str = "demo-key";

    /// Runs, in order and each to its end:
    /// - 3 bulk sends over capacity (10 recipients, `maxAllowed` 5), one per key in
    ///   [`KEYS_429`](Self::KEYS_429): one 429 each (the 30 s hint, capped to 10 s,
    ///   passes the 2 s deadline, so no retry);
    /// - 2 × `GET /api/v1/messages` without `phoneNumber`: 400, final;
    /// - 1 × GET with an unknown key: 401, final;
    /// - with every answer an injected 500: 2 × POST (returned as is) and 1 × GET
    ///   (retried: 5 attempts);
    /// - 1 × GET answered 200.
    async fn run() -> Scenario {
        let mut api_keys = vec![Self::KEY.to_string()];
        api_keys.extend(Self::KEYS_429.iter().map(|k| k.to_string()));
        let sim = Running::start(SimConfig {
            max_pending: 5,
            retry_after: 30,
            hint: HintMode::Both,
            api_keys,
            ..SimConfig::default()
        })
        .await;
        let mut campaigns = Vec::new();
        for key in Self::KEYS_429 {
            campaigns.push(start_bulk_campaign(&sim, key).await);
        }
        let config = proxy_config(&sim.url(""), |c| {
            c.retry.deadline_ms = 2_000;
            c.retry.max_retry_after_secs = 10;
            c.retry.backoff_base_ms = 1;
            c.retry.backoff_cap_ms = 5;
            c.retry.max_attempts = 5;
        });
        let proxy = start_proxy(&config, None).await;
        let url = |path: &str| proxy_url(&proxy, path);

        for (key, id) in Self::KEYS_429.iter().zip(&campaigns) {
            let path = format!("/api/v1/campaigns/{id}/bulk/sms");
            let (status, _, body) = send(
                Method::POST,
                &url(&path),
                &[("X-API-Key", key)],
                bulk_body(10),
            )
            .await;
            assert_eq!(status, StatusCode::TOO_MANY_REQUESTS, "{body:?}");
        }
        let key = [("X-API-Key", Self::KEY)];
        for _ in 0..2 {
            let (status, _, _) = send(Method::GET, &url("/api/v1/messages"), &key, "").await;
            assert_eq!(status, StatusCode::BAD_REQUEST);
        }
        let (status, _, _) = send(
            Method::GET,
            &url("/api/v1/viber-services"),
            &[("X-API-Key", "not-a-key")],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::UNAUTHORIZED);

        sim.sim.set_fail_rate(1.0);
        let create = json!({"name": "c", "type": "Bulk", "channel": "SMS"}).to_string();
        for _ in 0..2 {
            let (status, _, _) = send(
                Method::POST,
                &url("/api/v1/campaigns"),
                &key,
                create.clone(),
            )
            .await;
            assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        }
        let (status, _, _) = send(Method::GET, &url("/api/v1/viber-services"), &key, "").await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        sim.sim.set_fail_rate(0.0);

        let (status, _, _) = send(Method::GET, &url("/api/v1/viber-services"), &key, "").await;
        assert_eq!(status, StatusCode::OK);
        Scenario { proxy, sim }
    }

    /// The admin listener's `/metrics`, as text.
    async fn scrape(&self) -> String {
        let (status, headers, body) =
            send(Method::GET, &admin_url(&self.proxy, "/metrics"), &[], "").await;
        assert_eq!(status, StatusCode::OK);
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        String::from_utf8(body.to_vec()).expect("UTF-8 metrics")
    }
}

/// Creates and starts a bulk SMS campaign for `key` directly on the simulator (not
/// through a proxy, so no proxy counter moves); returns its id.
async fn start_bulk_campaign(sim: &Running, key: &str) -> u64 {
    let headers = [("X-API-Key", key)];
    let body = json!({"name": "c", "type": "Bulk", "channel": "SMS"}).to_string();
    let (status, _, created) =
        send(Method::POST, &sim.url("/api/v1/campaigns"), &headers, body).await;
    assert_eq!(status, StatusCode::CREATED, "{created:?}");
    let id = common::json(&created)["id"].as_u64().expect("an id");
    let start = sim.url(&format!("/api/v1/campaigns/{id}/start"));
    let (status, _, _) = send(Method::POST, &start, &headers, "").await;
    assert_eq!(status, StatusCode::OK);
    id
}

/// A bulk body with `n` distinct valid phone numbers.
fn bulk_body(n: u64) -> String {
    let phones: Vec<String> = (0..n).map(|i| format!("3897{i:07}")).collect();
    json!({ "recipients": phones }).to_string()
}

// === the real binary ===

/// A child process whose stdout and stderr are collected by two threads; killed when
/// dropped, so a failing test leaves nothing running.
struct Proc {
    child: Child,
    stdout: Arc<Mutex<Vec<u8>>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Proc {
    fn new(mut child: Child) -> Proc {
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().expect("a piped stdout");
        let err = child.stderr.take().expect("a piped stderr");
        let readers = vec![collect(out, stdout.clone()), collect(err, stderr.clone())];
        Proc {
            child,
            stdout,
            stderr,
            readers,
        }
    }

    fn stdout_text(&self) -> String {
        text_of(&self.stdout)
    }

    fn stderr_text(&self) -> String {
        text_of(&self.stderr)
    }

    /// SIGTERM, then waits for the exit and the end of both streams; returns them.
    async fn stop(mut self) -> (String, String) {
        let pid = self.child.id().to_string();
        let term = Command::new("kill").args(["-TERM", &pid]).status();
        if !term.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let mut status = None;
        wait_until(
            || {
                status = self.child.try_wait().expect("the child's status");
                status.is_some()
            },
            Duration::from_secs(30),
            "sluice exits after SIGTERM",
        )
        .await;
        for reader in self.readers.drain(..) {
            reader.join().expect("a reader thread");
        }
        (self.stdout_text(), self.stderr_text())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn collect(
    mut from: impl Read + Send + 'static,
    into: Arc<Mutex<Vec<u8>>>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let mut buf = [0u8; 8192];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => into
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .extend_from_slice(&buf[..n]),
            }
        }
    })
}

fn text_of(buf: &Mutex<Vec<u8>>) -> String {
    String::from_utf8_lossy(&buf.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
}

// === promtool ===

/// Runs the real `promtool` with `args`, feeding `stdin` if given. Fails the test when
/// promtool is not installed: it is a requirement, not an option.
fn promtool(args: &[&str], stdin: Option<&[u8]>) -> Output {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run promtool ({e}). It must be on PATH: `.ci/run` installs it \
                 (`apt-get install -y --no-install-recommends prometheus`, Debian's package \
                 carries promtool); install it the same way to run these tests."
            )
        });
    if let Some(input) = stdin {
        let mut pipe = child.stdin.take().expect("a piped stdin");
        pipe.write_all(input).expect("promtool reads its input");
    }
    child.wait_with_output().expect("promtool to finish")
}

// === the dashboard ===

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("dashboards/sluice.json");
    serde_json::from_str(&text).expect("the dashboard to be JSON")
}

/// Every panel, those inside collapsed rows included.
fn all_panels(dashboard: &Value) -> Vec<&Value> {
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        out.push(panel);
        if let Some(inner) = panel["panels"].as_array() {
            out.extend(inner);
        }
    }
    out
}

/// The PromQL of every panel target and template variable.
fn dashboard_exprs(dashboard: &Value) -> Vec<String> {
    let mut exprs: Vec<String> = all_panels(dashboard)
        .iter()
        .filter_map(|p| p["targets"].as_array())
        .flatten()
        .filter_map(|t| t["expr"].as_str().map(str::to_owned))
        .collect();
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
    {
        if var["type"] == "query" {
            // `label_values(metric, label)` is Grafana's, not PromQL: keep the selector.
            let def = var["definition"].as_str().expect("a definition");
            let selector = def
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map(|(selector, _)| selector.trim().to_owned())
                .unwrap_or_else(|| panic!("unexpected variable query {def}"));
            exprs.push(selector);
        }
    }
    exprs
}

/// Calls `f(key, value)` for every object member in `value`, recursively.
fn walk(value: &Value, f: &mut impl FnMut(&str, &Value)) {
    match value {
        Value::Object(map) => {
            for (k, v) in map {
                f(k, v);
                walk(v, f);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| walk(v, f)),
        _ => {}
    }
}

/// The range selectors (`[...]`) of a PromQL expression; brackets inside quoted
/// strings (regular expressions) are not ranges.
fn ranges(expr: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let (mut quoted, mut escaped, mut open) = (false, false, None);
    for (i, c) in expr.char_indices() {
        match c {
            _ if escaped => escaped = false,
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '[' if !quoted => open = Some(i + 1),
            ']' if !quoted => {
                if let Some(start) = open.take() {
                    out.push(&expr[start..i]);
                }
            }
            _ => {}
        }
    }
    out
}

/// Metric names in `text`: `sluice_[a-z_]+`, trailing underscores dropped.
fn metric_names(text: &str) -> BTreeSet<String> {
    let bytes = text.as_bytes();
    let mut names = BTreeSet::new();
    let mut at = 0;
    while let Some(found) = text[at..].find("sluice_") {
        let start = at + found;
        let boundary = start == 0 || {
            let b = bytes[start - 1];
            !(b.is_ascii_alphanumeric() || b == b'_')
        };
        let mut end = start + "sluice_".len();
        while end < bytes.len() && (bytes[end].is_ascii_lowercase() || bytes[end] == b'_') {
            end += 1;
        }
        let name = text[start..end].trim_end_matches('_');
        if boundary && name.len() > "sluice".len() {
            names.insert(name.to_owned());
        }
        at = end;
    }
    names
}

// === the exposition ===

type Labels = BTreeMap<String, String>;

/// A parsed Prometheus text exposition.
struct Exposition {
    /// Family name → its `# TYPE`.
    types: BTreeMap<String, String>,
    samples: Vec<(String, Labels, f64)>,
}

impl Exposition {
    fn parse(text: &str) -> Exposition {
        let mut types = BTreeMap::new();
        let mut samples = Vec::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
                types.insert(name.to_owned(), kind.to_owned());
                continue;
            }
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            samples.push(parse_sample(line));
        }
        Exposition { types, samples }
    }

    /// Whether `name` is a family with samples, or a histogram's `_bucket`, `_sum` or
    /// `_count` series.
    fn exports(&self, name: &str) -> bool {
        if self.types.contains_key(name) {
            return true;
        }
        ["_bucket", "_sum", "_count"].iter().any(|suffix| {
            name.strip_suffix(suffix)
                .is_some_and(|base| self.types.get(base).is_some_and(|t| t == "histogram"))
        })
    }

    /// The value of the sample `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want = self::labels(labels);
        self.samples
            .iter()
            .find(|(n, l, _)| n == name && *l == want)
            .map(|(_, _, v)| *v)
    }

    /// The one unlabelled sample of `name`.
    fn single(&self, name: &str) -> f64 {
        self.value(name, &[])
            .unwrap_or_else(|| panic!("no sample {name}"))
    }

    /// Every sample of `name`, by labels.
    /// The family's series that counted something (series created at 0 are left out).
    fn family(&self, name: &str) -> BTreeMap<Labels, f64> {
        self.samples
            .iter()
            .filter(|(n, _, v)| n == name && *v != 0.0)
            .map(|(_, l, v)| (l.clone(), *v))
            .collect()
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn counts(rows: &[(&[(&str, &str)], f64)]) -> BTreeMap<Labels, f64> {
    rows.iter().map(|(l, v)| (labels(l), *v)).collect()
}

/// `route="passthrough"` plus `extra`.
fn pt<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut labels = vec![("route", "passthrough")];
    labels.extend_from_slice(extra);
    labels
}

/// `name{k="v",...} value` (label values may hold `\\`, `\"` and `\n`).
fn parse_sample(line: &str) -> (String, Labels, f64) {
    let name_end = line.find(['{', ' ']).unwrap_or(line.len());
    let name = line[..name_end].to_owned();
    let mut labels = Labels::new();
    let mut rest = &line[name_end..];
    if let Some(inner) = rest.strip_prefix('{') {
        let mut chars = inner.char_indices();
        let mut key = String::new();
        loop {
            let (i, c) = chars.next().unwrap_or_else(|| panic!("bad line {line}"));
            match c {
                '}' => {
                    rest = &inner[i + 1..];
                    break;
                }
                ',' | ' ' => {}
                '=' => {
                    assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{line}");
                    let mut value = String::new();
                    loop {
                        match chars.next().map(|(_, c)| c) {
                            Some('"') => break,
                            Some('\\') => match chars.next().map(|(_, c)| c) {
                                Some('n') => value.push('\n'),
                                Some(c) => value.push(c),
                                None => panic!("bad line {line}"),
                            },
                            Some(c) => value.push(c),
                            None => panic!("bad line {line}"),
                        }
                    }
                    labels.insert(std::mem::take(&mut key), value);
                }
                c => key.push(c),
            }
        }
    }
    let value = rest
        .split_whitespace()
        .next()
        .unwrap_or_else(|| panic!("no value in {line}"));
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse()
            .unwrap_or_else(|e| panic!("bad value in {line}: {e}")),
    };
    (name, labels, value)
}

/// The exposition of a fresh registry in which every labelled family has one child, so
/// that every registered family is printed (the crate omits families without children).
fn every_family_rendered() -> String {
    let m = Metrics::new();
    m.client_requests.with_label_values(&["r", "200"]).inc();
    m.client_duration.with_label_values(&["r"]).observe(0.1);
    m.upstream_requests.with_label_values(&["r", "200"]).inc();
    m.upstream_rate_limited.with_label_values(&["r"]).inc();
    m.upstream_failures
        .with_label_values(&["r", "connect"])
        .inc();
    m.upstream_duration.with_label_values(&["r"]).observe(0.1);
    m.retries.with_label_values(&["connect"]).inc();
    m.observe_wait("hint", Duration::from_secs(1));
    m.deadline_exceeded.with_label_values(&["r"]).inc();
    m.cooldowns_started.with_label_values(&["fp:0"]).inc();
    m.cooldown_remaining.with_label_values(&["fp:0"]).set(1.0);
    m.capacity
        .with_label_values(&["fp:0", "max_allowed"])
        .set(1);
    m.jobs_accepted.with_label_values(&["r"]).inc();
    m.queue_rejected.with_label_values(&["r", "invalid"]).inc();
    m.parts_split.with_label_values(&["size"]).inc();
    m.dead_letters.with_label_values(&["r"]).inc();
    m.recipients_delivered.with_label_values(&["r"]).inc();
    m.recipients_failed.with_label_values(&["r"]).inc();
    m.queue_jobs.with_label_values(&["queued"]).set(1);
    m.queue_parts.with_label_values(&["queued"]).set(1);
    m.validation_rejections
        .with_label_values(&["r", "phoneNumber"])
        .inc();
    m.validation_skipped.with_label_values(&["r"]).inc();
    m.validation_warnings
        .with_label_values(&["r", "imageUrl"])
        .inc();
    String::from_utf8(m.render()).expect("UTF-8 metrics")
}
