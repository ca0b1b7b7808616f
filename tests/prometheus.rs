//! The Grafana dashboard and the alert rules of `dashboards/` against a real Prometheus.
//!
//! A simulator and an in-process sluice (the default send routes, templates in warn mode)
//! go through a normal day: pass-through 200s, 400s and a 401, 429s and a cooldown,
//! injected 500s, a bulk job split and delivered, a validation 400, a dead letter, an
//! Idempotency-Key repeated, a lenient Content-Type, a short outage and a late answer
//! reconciled. Then Debian's `prometheus` (2.42) is started in a temporary directory,
//! scraping sluice's admin listener every second (`job="sluice"`) with
//! `dashboards/alerts.yml` loaded, and every expression of `dashboards/sluice.json` (panel
//! queries and template variables, with Grafana's variables substituted) must return at
//! least one series; every alert rule must load and evaluate with health "ok".
//!
//! The static tests check what the real one relies on: every panel query filters by the
//! `job` and `instance` variables, and the variables are what the README says.
//!
//! `prometheus` must be on `PATH` (`.ci/run` installs Debian's package); without it the
//! test fails rather than skipping.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use http::{Method, StatusCode};
use serde_json::{json, Value};
use sluice::simulator::{HintMode, SimConfig};

use common::prom::{value_of, Prometheus};
use common::queue::wait_job;
use common::sim::{campaign, phones, KEY};
use common::{admin_url, json, proxy_config, proxy_url, send, start_proxy, Running};

const DASHBOARD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/sluice.json");
const ALERTS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/dashboards/alerts.yml");

// === the real Prometheus ===

/// Every dashboard expression returns at least one series from a real Prometheus that
/// scraped sluice after a normal scenario, and every alert rule loads and evaluates.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_answers_every_dashboard_query_and_loads_every_alert() {
    let started = Instant::now();
    let sim = Running::start(SimConfig {
        max_pending: 20,
        drain_rate: 1_000.0,
        retry_after: 1,
        hint: HintMode::Both,
        ..SimConfig::default()
    })
    .await;
    let proxy = scenario(&sim).await;
    let scenario_took = started.elapsed();

    let prom = Prometheus::start(
        "sluice",
        &[proxy.admin_addr],
        &[std::path::Path::new(ALERTS)],
    )
    .await;
    let ready_took = started.elapsed();
    // Two scrapes with sluice's series: enough for every rate() over 1m.
    prom.wait_for(
        "count_over_time(sluice_build_info{job=\"sluice\"}[1m])",
        |s| s.len() == 1 && value_of(&s[0]) >= 2.0,
        Duration::from_secs(20),
        "Prometheus has scraped sluice twice",
    )
    .await;

    let scraped_took = started.elapsed();

    // What the scenario did, as Prometheus saw it: each event behind a panel happened.
    let target = proxy.admin_addr.to_string();
    let mut missed = Vec::new();
    for (expr, what) in [
        (
            r#"sluice_client_requests_total{route="passthrough", status="200"}"#,
            "pass-through 200s",
        ),
        (
            r#"sluice_upstream_requests_total{status="401"}"#,
            "a 401 from the API",
        ),
        (
            r#"sluice_upstream_requests_total{status="500"}"#,
            "injected 500s",
        ),
        (
            r#"sluice_upstream_rate_limited_total{route="bulk"}"#,
            "429s",
        ),
        ("sluice_cooldowns_started_total", "a cooldown"),
        ("sluice_queue_parts_split_total", "a part split"),
        (
            r#"sluice_queue_recipients_delivered_total{route="bulk"}"#,
            "bulk recipients delivered",
        ),
        (
            r#"sluice_validation_rejections_total{field="phoneNumber"}"#,
            "a validation 400",
        ),
        (
            r#"sluice_validation_warnings_total{route="templates"}"#,
            "a validation warning",
        ),
        (
            r#"sluice_queue_dead_letters_total{route="bulk"}"#,
            "a dead letter",
        ),
        (
            r#"sluice_idempotent_replays_total{result="replayed"}"#,
            "an idempotent replay",
        ),
        (
            r#"sluice_idempotent_replays_total{result="conflict"}"#,
            "an idempotency conflict",
        ),
        (
            "sluice_lenient_content_type_total",
            "a lenient Content-Type",
        ),
        ("sluice_upstream_outages_total", "an outage"),
        (
            r#"sluice_retry_wait_seconds_count{source="outage"}"#,
            "a wait for the API",
        ),
        (
            r#"sluice_reconciliations_total{result="accepted"}"#,
            "a late answer reconciled",
        ),
    ] {
        let expr = format!("sum({expr}) > 0");
        match prom.series(&expr).await {
            Ok(series) if !series.is_empty() => {}
            other => missed.push(format!("{what}: {expr} gives {other:?}")),
        }
    }
    assert!(
        missed.is_empty(),
        "the scenario did not produce:\n{}",
        missed.join("\n")
    );

    // Every expression of the dashboard, as Grafana would send it for this target.
    let dashboard = dashboard();
    let mut empty = Vec::new();
    let mut asked = 0;
    for (where_, expr) in panel_exprs(&dashboard) {
        let query = substitute(&expr, &target);
        asked += 1;
        match prom.series(&query).await {
            Ok(series) if !series.is_empty() => {}
            Ok(_) => empty.push(format!("{where_}: no series for {query}")),
            Err(e) => empty.push(format!("{where_}: {e} for {query}")),
        }
    }
    for (name, selector, label) in variable_queries(&dashboard) {
        let query = substitute(&selector, &target);
        asked += 1;
        match prom.series(&query).await {
            Ok(series) => {
                let values: BTreeSet<&str> = series
                    .iter()
                    .filter_map(|s| s["metric"][label.as_str()].as_str())
                    .collect();
                if values.is_empty() {
                    empty.push(format!("variable {name}: no {label} values from {query}"));
                }
                let want = match name.as_str() {
                    "job" => Some("sluice"),
                    "instance" => Some(target.as_str()),
                    _ => None,
                };
                if let Some(want) = want.filter(|w| !values.contains(w)) {
                    empty.push(format!("variable {name}: {want} not in {values:?}"));
                }
            }
            Err(e) => empty.push(format!("variable {name}: {e} for {query}")),
        }
    }
    assert!(asked > 60, "only {asked} expressions in the dashboard");
    assert!(
        empty.is_empty(),
        "{} of {asked} dashboard expressions return nothing from a real Prometheus:\n{}",
        empty.len(),
        empty.join("\n")
    );

    let queried_took = started.elapsed();

    // Every alert rule loaded and evaluated without error.
    let names = alert_names();
    let start = Instant::now();
    let rules = loop {
        let answer = prom.get("/api/v1/rules?type=alert").await;
        let rules: Vec<Value> = answer["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .collect();
        if rules.len() == names.len() && rules.iter().all(|r| r["health"] != "unknown") {
            break rules;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the alert rules were not all loaded and evaluated within 20 s: {answer}\n\
             --- prometheus log ---\n{}",
            prom.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let loaded: BTreeSet<String> = rules
        .iter()
        .filter_map(|r| r["name"].as_str().map(str::to_owned))
        .collect();
    assert_eq!(loaded, names, "the rules Prometheus loaded");
    let unhealthy: Vec<String> = rules
        .iter()
        .filter(|r| r["health"] != "ok")
        .map(|r| format!("{}: {} {}", r["name"], r["health"], r["lastError"]))
        .collect();
    assert!(unhealthy.is_empty(), "rules not ok: {unhealthy:?}");

    drop(prom);
    println!(
        "\nreal Prometheus: scenario done at {:.1} s, prometheus ready at {:.1} s, two scrapes \
         at {:.1} s, {asked} dashboard expressions answered at {:.1} s, {} alert rules ok at \
         {:.1} s",
        scenario_took.as_secs_f64(),
        ready_took.as_secs_f64(),
        scraped_took.as_secs_f64(),
        queried_took.as_secs_f64(),
        names.len(),
        started.elapsed().as_secs_f64(),
    );
}

/// The normal day: starts sluice in front of `sim` and runs every kind of traffic the
/// dashboard shows, each to its end. Returns the running proxy.
async fn scenario(sim: &Running) -> common::TestProxy {
    let bulk_campaign = campaign(sim, KEY, "Bulk", "SMS", true).await;
    let single_campaign = campaign(sim, KEY, "Transactional", "SMS", true).await;
    let draft = campaign(sim, KEY, "Bulk", "SMS", false).await;
    let config = proxy_config(&sim.url(""), |c| {
        let mut routes = sluice::routes::defaults();
        for route in &mut routes {
            if route.name == "templates" {
                route.validation = sluice::validate::Mode::Warn;
            }
        }
        c.routes = Some(routes);
        c.retry.backoff_base_ms = 1;
        c.retry.backoff_cap_ms = 5;
        c.retry.max_attempts = 3;
        // Late answers: an answer after 500 ms is lost, and looked up 100 ms later.
        c.upstream.request_timeout_ms = 500;
        c.queue.reconcile_delay_ms = 100;
        // Outages: probes at most 300 ms apart, so a short one ends quickly.
        c.upstream.outage_probe_base_ms = 50;
        c.upstream.outage_probe_max_ms = 300;
    });
    let proxy = start_proxy(&config, None).await;
    let url = |path: &str| proxy_url(&proxy, path);
    let key = [("X-API-Key", KEY)];
    let json_key = [("X-API-Key", KEY), ("Content-Type", "application/json")];
    let bulk = |id: u64| url(&format!("/api/v1/campaigns/{id}/bulk/sms"));
    let single = url(&format!("/api/v1/campaigns/{single_campaign}/messages/sms"));
    let one = |n: u64| json!({ "phoneNumber": phones(n, 1)[0] }).to_string();

    // Pass-through: 200s, the API's own 400 (no phoneNumber) and a 401 (a bad key).
    for _ in 0..3 {
        let (status, _, _) = send(Method::GET, &url("/api/v1/viber-services"), &key, "").await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _, _) = send(Method::GET, &url("/api/v1/messages"), &key, "").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let bad_key = [("X-API-Key", "not-a-key")];
    let (status, _, _) = send(Method::GET, &url("/api/v1/viber-services"), &bad_key, "").await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // Injected 500s: a GET retried until max_attempts, a POST returned as is.
    sim.sim.set_fail_rate(1.0);
    let (status, _, _) = send(Method::GET, &url("/api/v1/viber-services"), &key, "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let create = json!({"name": "c", "type": "Bulk", "channel": "SMS"}).to_string();
    let (status, _, _) = send(Method::POST, &url("/api/v1/campaigns"), &key, create).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    sim.sim.set_fail_rate(0.0);

    // A bulk job of 30 against room for 20: a 429 and a 1 s cooldown for the key, the job
    // split, and every recipient delivered after the hint.
    let recipients = json!({ "recipients": phones(0, 30) }).to_string();
    let (status, _, body) = send(Method::POST, &bulk(bulk_campaign), &json_key, recipients).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{}", json(&body));
    assert_eq!(json(&body)["delivered"], 30, "{}", json(&body));

    // A validation 400 (sluice's own), and a dead letter (a campaign never started).
    let (status, _, _) = send(
        Method::POST,
        &single,
        &json_key,
        json!({"phoneNumber": "123"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let recipients = json!({ "recipients": phones(100, 3) }).to_string();
    let (status, _, body) = send(Method::POST, &bulk(draft), &json_key, recipients).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{}", json(&body));
    assert_eq!(json(&body)["error"], "Campaign is not active");

    // An Idempotency-Key repeated (replayed), then reused with another body (422).
    let idem = [json_key[0], json_key[1], ("Idempotency-Key", "order-1")];
    let (first, first_headers, _) = send(Method::POST, &single, &idem, one(200)).await;
    assert_eq!(first, StatusCode::CREATED);
    let (again, again_headers, _) = send(Method::POST, &single, &idem, one(200)).await;
    assert_eq!(again, StatusCode::CREATED);
    assert_eq!(
        first_headers["x-sluice-job-id"],
        again_headers["x-sluice-job-id"]
    );
    let (status, _, _) = send(Method::POST, &single, &idem, one(201)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);

    // A JSON send under curl's default Content-Type, and a template the API refuses
    // that warn mode let through.
    let form = [
        ("X-API-Key", KEY),
        ("Content-Type", "application/x-www-form-urlencoded"),
    ];
    let (status, _, _) = send(Method::POST, &single, &form, one(300)).await;
    assert_eq!(status, StatusCode::CREATED);
    let template =
        json!({"name": "w", "templateContent": "x", "imageUrl": "http://cdn.example.com/a.png"});
    let (status, _, _) = send(
        Method::POST,
        &url("/api/v1/templates"),
        &json_key,
        template.to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "the API's own answer");

    // A late answer: accepted at once, answered after sluice's timeout, looked up and
    // settled without a second send.
    sim.sim.set_answer_delay(Duration::from_millis(1_000));
    let (status, headers, body) = send(Method::POST, &single, &json_key, one(400)).await;
    assert_eq!(status, StatusCode::CREATED, "{}", json(&body));
    assert_eq!(headers["x-sluice-reconciled"], "lookup");
    sim.sim.set_answer_delay(Duration::ZERO);

    // A short outage: a queued send meets it, waits for the API (sluice_upstream_up is 0
    // meanwhile) and goes once it is back.
    sim.sim.start_outage(Duration::from_millis(1_500));
    let async_send = [json_key[0], json_key[1], ("Prefer", "respond-async")];
    let (status, _, job) = send(Method::POST, &single, &async_send, one(500)).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    let id = json(&job)["id"].as_str().expect("a job id").to_owned();
    let outage = Instant::now();
    loop {
        let (_, _, metrics) = send(Method::GET, &admin_url(&proxy, "/metrics"), &[], "").await;
        if String::from_utf8_lossy(&metrics)
            .lines()
            .any(|l| l == "sluice_upstream_up 0")
        {
            break;
        }
        assert!(
            outage.elapsed() < Duration::from_secs(1),
            "sluice did not see the outage"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let job = wait_job(
        &proxy,
        &id,
        |j| j["state"] != "queued" && j["state"] != "in_progress",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(job["state"], "succeeded", "{job}");

    // sluice's own view agrees that the API is back.
    let (_, _, metrics) = send(Method::GET, &admin_url(&proxy, "/metrics"), &[], "").await;
    let metrics = String::from_utf8_lossy(&metrics);
    assert!(
        metrics.lines().any(|l| l == "sluice_upstream_up 1"),
        "{metrics}"
    );
    proxy
}

/// Grafana's variables as the dashboard would send them for `target` (the scraped
/// address): `$job` and `$instance` regex-escaped as Grafana does for multi-value
/// variables, `$key` as its "All" (`.*`), the interval variables as a 1 s scrape suits.
fn substitute(expr: &str, target: &str) -> String {
    let instance = target.replace('.', r"\\.");
    // Longest names first, so that no name eats the start of a longer one.
    let vars = [
        ("$__rate_interval", "1m"),
        ("$__interval", "15s"),
        ("$__range", "5m"),
        ("$instance", instance.as_str()),
        ("$job", "sluice"),
        ("$key", ".*"),
    ];
    let mut out = expr.to_owned();
    for (name, value) in vars {
        out = out.replace(&format!("${{{}}}", &name[1..]), value);
        out = out.replace(name, value);
    }
    assert!(
        !out.contains('$'),
        "a variable the test does not know in {expr} (add it to substitute())"
    );
    out
}

// === static checks ===

/// Every metric selector of every panel query carries `job=~"$job"` and
/// `instance=~"$instance"` (besides its own label matchers).
#[test]
fn every_panel_query_filters_by_job_and_instance() {
    let dashboard = dashboard();
    let exprs = panel_exprs(&dashboard);
    assert!(exprs.len() > 60, "only {} panel queries", exprs.len());
    let mut unfiltered = Vec::new();
    let mut selectors = 0;
    for (where_, expr) in &exprs {
        for (metric, matchers) in selectors_of(expr) {
            selectors += 1;
            let matchers = matchers.unwrap_or_default();
            let has = |m: &str| matchers.split(',').any(|part| part.trim() == m);
            if !has(r#"job=~"$job""#) || !has(r#"instance=~"$instance""#) {
                unfiltered.push(format!("{where_}: {metric}{{{matchers}}} in {expr}"));
            }
        }
    }
    assert!(selectors >= exprs.len(), "{selectors} selectors found");
    assert!(
        unfiltered.is_empty(),
        "selectors without the job and instance filters:\n{}",
        unfiltered.join("\n")
    );
}

/// The template variables: the data source, then `job` and `instance` from
/// `sluice_build_info` (multi-value, with an "All" that stands for the values found),
/// then `key`, narrowed by both.
#[test]
fn the_variables_select_job_instance_and_key() {
    let dashboard = dashboard();
    let vars = dashboard["templating"]["list"]
        .as_array()
        .expect("template variables");
    let names: Vec<&str> = vars.iter().filter_map(|v| v["name"].as_str()).collect();
    assert_eq!(names, ["datasource", "job", "instance", "key"]);
    let var = |name: &str| vars.iter().find(|v| v["name"] == name).unwrap();
    for (name, definition) in [
        ("job", "label_values(sluice_build_info, job)"),
        (
            "instance",
            r#"label_values(sluice_build_info{job=~"$job"}, instance)"#,
        ),
        (
            "key",
            r#"label_values(sluice_upstream_capacity{job=~"$job", instance=~"$instance"}, key)"#,
        ),
    ] {
        let v = var(name);
        assert_eq!(v["type"], "query", "{name}");
        assert_eq!(v["definition"], definition, "{name}");
        assert_eq!(v["query"]["query"], definition, "{name}");
        assert_eq!(v["datasource"]["uid"], "${datasource}", "{name}");
        assert_eq!(v["multi"], true, "{name}");
        assert_eq!(v["includeAll"], true, "{name}");
    }
    // "All" for job and instance is the list of values found, never `.*`, which would let
    // up{} and process_*{} match other jobs' targets.
    for name in ["job", "instance"] {
        assert!(
            var(name).get("allValue").is_none_or(Value::is_null),
            "{name}"
        );
    }
}

// === the dashboard ===

fn dashboard() -> Value {
    let text = std::fs::read_to_string(DASHBOARD).expect("dashboards/sluice.json");
    serde_json::from_str(&text).expect("the dashboard to be JSON")
}

/// Every panel query as (`panel title / refId`, expression), collapsed rows included.
fn panel_exprs(dashboard: &Value) -> Vec<(String, String)> {
    let mut panels = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        panels.push(panel);
        panels.extend(panel["panels"].as_array().into_iter().flatten());
    }
    panels
        .iter()
        .flat_map(|p| {
            let title = p["title"].as_str().unwrap_or("<untitled>").to_owned();
            p["targets"].as_array().into_iter().flatten().map(move |t| {
                (
                    format!("{title} / {}", t["refId"].as_str().unwrap_or("?")),
                    t["expr"].as_str().expect("an expression").to_owned(),
                )
            })
        })
        .collect()
}

/// The query variables as (name, selector, label) from `label_values(selector, label)`.
fn variable_queries(dashboard: &Value) -> Vec<(String, String, String)> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("variables")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| {
            let def = v["definition"].as_str().expect("a definition");
            let (selector, label) = def
                .strip_prefix("label_values(")
                .and_then(|rest| rest.strip_suffix(')'))
                .and_then(|inner| inner.rsplit_once(','))
                .unwrap_or_else(|| panic!("unexpected variable query {def}"));
            (
                v["name"].as_str().expect("a name").to_owned(),
                selector.trim().to_owned(),
                label.trim().to_owned(),
            )
        })
        .collect()
}

/// The metric selectors of a PromQL expression: each metric name (`sluice_*`,
/// `process_*`, `up`) outside quoted strings, with the text of its `{…}` if it has one.
fn selectors_of(expr: &str) -> Vec<(String, Option<String>)> {
    let bytes = expr.as_bytes();
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                // Skip the string, escapes included.
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b if ident(b) && (i == 0 || !ident(bytes[i - 1])) => {
                let start = i;
                while i < bytes.len() && ident(bytes[i]) {
                    i += 1;
                }
                let word = &expr[start..i];
                let metric =
                    word.starts_with("sluice_") || word.starts_with("process_") || word == "up";
                // `up` is a metric only where a selector or an operator can follow it.
                let rest = expr[i..].trim_start();
                if metric && !rest.starts_with('(') {
                    let matchers = rest.strip_prefix('{').map(|inner| {
                        let mut end = 0;
                        let mut quoted = false;
                        let b = inner.as_bytes();
                        while end < b.len() && (quoted || b[end] != b'}') {
                            match b[end] {
                                b'\\' if quoted => end += 1,
                                b'"' => quoted = !quoted,
                                _ => {}
                            }
                            end += 1;
                        }
                        inner[..end].to_owned()
                    });
                    out.push((word.to_owned(), matchers));
                }
            }
            _ => i += 1,
        }
    }
    out
}

/// The names of the alerting rules in `dashboards/alerts.yml` (`- alert: Name` lines).
fn alert_names() -> BTreeSet<String> {
    let text = std::fs::read_to_string(ALERTS).expect("dashboards/alerts.yml");
    let names: BTreeSet<String> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert:"))
        .map(|n| n.trim().to_owned())
        .collect();
    assert!(names.len() >= 10, "{names:?}");
    names
}

/// The selector scanner finds names with and without matchers, and skips strings and
/// label names.
#[test]
fn selectors_are_found_outside_strings() {
    let found = selectors_of(
        r#"sum by (route) (rate(sluice_a_total{job=~"$job", x="}"}[1m])) / process_b or up{job="j"} or sluice_c"#,
    );
    assert_eq!(
        found,
        [
            (
                "sluice_a_total".to_owned(),
                Some(r#"job=~"$job", x="}""#.to_owned())
            ),
            ("process_b".to_owned(), None),
            ("up".to_owned(), Some(r#"job="j""#.to_owned())),
            ("sluice_c".to_owned(), None),
        ]
    );
}
