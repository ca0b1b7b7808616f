//! sluice's life as a process and a server: a shutdown that answers every waiting client,
//! one instance per data dir, SIGHUP, connection floods under a descriptor limit, load
//! shedding and slow bodies. Process tests run the real binary (`common::bin`).

mod common;

use std::time::Duration;

use http::{Method, StatusCode};
use sluice::simulator::{HintMode, SimConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use common::bin::{config, Sluice};
use common::sim::{bulk_body, campaign, phones, KEY};
use common::{json, send, Running};

/// Polls the job through the jobs API until `done` holds (bounded).
async fn wait_job(base: &Sluice, id: &str, within: Duration) -> serde_json::Value {
    let deadline = Instant::now() + within;
    loop {
        let (status, _, body) = send(
            Method::GET,
            &base.url(&format!("/sluice/v1/jobs/{id}")),
            &[("X-API-Key", KEY)],
            "",
        )
        .await;
        assert_eq!(status, StatusCode::OK);
        let job = json(&body);
        if job["state"] == "succeeded" {
            return job;
        }
        assert!(Instant::now() < deadline, "not finished: {job}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A metric's value in a scrape of `admin` (0 when absent).
async fn metric(sluice: &Sluice, name_and_labels: &str) -> f64 {
    let (_, _, body) = send(Method::GET, &sluice.admin_url("/metrics"), &[], "").await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(name_and_labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Five clients wait for sends held by a 429's 8 s hint when sluice gets SIGTERM: each
/// gets an HTTP answer naming its stored job before the grace period ends, sluice exits 0,
/// and after a restart every job finishes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_answers_every_waiting_client_and_loses_nothing() {
    let sim = Running::start(SimConfig {
        max_pending: 100,
        drain_rate: 0.0,
        retry_after: 8,
        hint: HintMode::Both,
        ..SimConfig::default()
    })
    .await;
    let bulk_campaign = campaign(&sim, KEY, "Bulk", "SMS", true).await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let (status, _, _) =
        common::sim::bulk(&sim, bulk_campaign, "sms", bulk_body(&phones(0, 100))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "the company is full");

    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        &format!("http://{}", sim.addr),
        "[retry]\nhint_jitter_ms = 10\n",
    );
    std::fs::write(
        &cfg,
        std::fs::read_to_string(&cfg)
            .unwrap()
            .replace("[server]\n", "[server]\nshutdown_grace_ms = 3000\n"),
    )
    .unwrap();
    let mut first = Sluice::start(&cfg, &[]);
    let single = first.url(&format!("/api/v1/campaigns/{single_campaign}/messages/sms"));
    let clients: Vec<_> = (0..5)
        .map(|n| {
            let url = single.clone();
            tokio::spawn(async move {
                let headers = [("X-API-Key", KEY), ("Content-Type", "application/json")];
                let body = format!(r#"{{"phoneNumber":"{}"}}"#, phones(1_000 + n, 1)[0]);
                let (status, headers, body) = send(Method::POST, &url, &headers, body).await;
                (status, headers, json(&body), Instant::now())
            })
        })
        .collect();
    // Every send is stored and the key is cooling down: the clients wait.
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&first, "sluice_queue_jobs_accepted_total").await < 5.0
        || sim.sim.stats().rate_limited < 1
    {
        assert!(Instant::now() < deadline, "{}", first.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let stopped_at = Instant::now();
    first.signal("TERM");
    let mut jobs = Vec::new();
    for client in clients {
        let (status, headers, job, at) = client.await.unwrap();
        assert_eq!(status, StatusCode::ACCEPTED, "{job}");
        let id = headers["x-sluice-job-id"].to_str().unwrap().to_string();
        assert_eq!(
            headers["location"],
            format!("/sluice/v1/jobs/{id}").as_str()
        );
        assert_eq!(job["id"], id.as_str());
        assert!(
            at - stopped_at < Duration::from_secs(3),
            "answered within the grace"
        );
        jobs.push(id);
    }
    let status = first.wait_exit(Duration::from_secs(10));
    assert!(status.success(), "exit {status:?}:\n{}", first.logs());

    // Room again; the restarted sluice still honours the hint, then sends everything.
    sim.sim.set_max_pending(1_000_000);
    let second = Sluice::start(&cfg, &[]);
    for id in &jobs {
        wait_job(&second, id, Duration::from_secs(20)).await;
    }
    let stats = sim.sim.stats();
    assert_eq!(stats.distinct_recipients, 105, "{stats:?}");
    assert_eq!(stats.duplicate_recipients, 0, "{stats:?}");
}

/// A second sluice on the same data dir exits 1 saying which process holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sluice_per_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), "http://127.0.0.1:9", "");
    let first = Sluice::start(&cfg, &[]);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["serve", "--config"])
        .arg(&cfg)
        .output()
        .expect("the binary runs");
    assert_eq!(output.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("is in use by pid {}", first.child.id());
    assert!(stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("data dir"), "{stderr}");
}

/// SIGHUP never stops sluice: it reloads the log level and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_never_kills() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        "http://127.0.0.1:9",
        "[log]\nlevel = \"info\"\n",
    );
    let mut sluice = Sluice::start(&cfg, &[]);
    // RUST_LOG wins over the file; without it the file's level is reloaded.
    sluice.signal("HUP");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !sluice.logs().contains("SIGHUP") {
        assert!(Instant::now() < deadline, "{}", sluice.logs());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(sluice.child.try_wait().unwrap().is_none(), "still running");
    let (status, _, _) = send(Method::GET, &sluice.admin_url("/healthz"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    sluice.signal("TERM");
    assert!(sluice.wait_exit(Duration::from_secs(15)).success());
}

/// The open-file limit of this test process (the sockets it opens count against it).
fn own_nofile() -> usize {
    std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(1024)
}

/// More idle sockets than sluice has descriptors: the longest-idle are closed to make
/// room, and a real request and `/healthz` still answer within 2 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sockets_cannot_lock_requests_out() {
    // 1100 sockets against 1024 descriptors; scaled down where this process itself may
    // not hold that many.
    let (limit, sockets) = if own_nofile() >= 1400 {
        (1024, 1100)
    } else {
        (400, 450)
    };
    let sim = Running::start(SimConfig::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &format!("http://{}", sim.addr), "");
    let nofile = format!("--nofile={limit}:{limit}");
    let sluice = Sluice::start(&cfg, &["prlimit", &nofile, "--"]);
    let mut idle = Vec::with_capacity(sockets);
    for _ in 0..sockets {
        idle.push(TcpStream::connect(sluice.addr).await.expect("a connection"));
    }
    let asked = Instant::now();
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(2),
        send(
            Method::GET,
            &sluice.url("/api/v1/viber-services"),
            &[("X-API-Key", KEY)],
            "",
        ),
    )
    .await
    .expect("a real request is answered within 2 s");
    assert_eq!(status, StatusCode::OK);
    let (status, _, _) = tokio::time::timeout(
        Duration::from_secs(2),
        send(Method::GET, &sluice.admin_url("/healthz"), &[], ""),
    )
    .await
    .expect("/healthz answers within 2 s");
    assert_eq!(status, StatusCode::OK);
    assert!(asked.elapsed() < Duration::from_secs(4));
    let evicted = metric(
        &sluice,
        "sluice_connections_closed_total{listener=\"main\",reason=\"evicted_at_cap\"}",
    )
    .await;
    assert!(evicted >= 1.0, "{}", sluice.logs());
    assert!(
        !sluice.logs().contains("accept failed"),
        "{}",
        sluice.logs()
    );
    drop(idle);
}

/// Past `server.max_concurrent_requests`, a request is answered 503 at once in the API's
/// envelope (load shedding), not queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_is_shed_with_the_apis_envelope() {
    // An upstream that holds every request until released.
    let release = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = release.clone();
    let up = common::Server::start(axum::Router::new().fallback(move || {
        let held = held.clone();
        async move {
            let _ = held.acquire().await;
            "released"
        }
    }))
    .await;
    let proxy = common::start_proxy(
        &common::proxy_config(&up.base(), |c| c.server.max_concurrent_requests = 2),
        None,
    )
    .await;
    let url = common::proxy_url(&proxy, "/api/v1/viber-services");
    let slow: Vec<_> = (0..2)
        .map(|_| {
            let url = url.clone();
            tokio::spawn(async move { send(Method::GET, &url, &[("X-API-Key", KEY)], "").await })
        })
        .collect();
    common::wait_until(|| up.hits.len() == 2, Duration::from_secs(5), "both held").await;
    let asked = Instant::now();
    let (status, headers, body) = send(Method::GET, &url, &[("X-API-Key", KEY)], "").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(asked.elapsed() < Duration::from_secs(1), "at once");
    assert_eq!(json(&body)["error"], "Service Unavailable");
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(up.hits.len(), 2, "the shed request never reached the API");
    release.add_permits(2);
    for s in slow {
        assert_eq!(s.await.unwrap().0, StatusCode::OK);
    }
    let scrape = String::from_utf8_lossy(&proxy.metrics.render()).into_owned();
    assert!(scrape.contains("sluice_requests_shed_total 1"), "{scrape}");
}

/// A body that stops arriving is cut off with a 408 in the API's envelope.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_gets_a_408() {
    let sim = Running::start(SimConfig::default()).await;
    let proxy = common::start_proxy(
        &common::proxy_config(&format!("http://{}", sim.addr), |c| {
            c.routes = None;
            c.server.body_read_timeout_ms = 300;
        }),
        None,
    )
    .await;
    let mut stream = TcpStream::connect(proxy.addr).await.unwrap();
    let head = format!(
        "POST /api/v1/campaigns/1/messages/sms HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"phone"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        loop {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") && answer.ends_with(b"}") {
                break;
            }
        }
    })
    .await
    .expect("an answer within 5 s");
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_read_timeout_ms"), "{text}");
}

/// State per key and per request is bounded: 10000 invented keys leave nothing behind,
/// a key that met a 429 is forgotten (gate and metric series) once idle, and a client
/// that gives up while waiting for its send leaves no waiter behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_state_returns_to_its_baseline() {
    let sim = Running::start(SimConfig {
        retry_after: 1,
        ..SimConfig::default()
    })
    .await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    sim.sim.set_max_pending(0);
    let proxy = common::start_proxy(
        &common::proxy_config(&format!("http://{}", sim.addr), |c| {
            c.routes = None;
            c.queue.key_idle_secs = 1;
            c.retry.deadline_ms = 300;
        }),
        None,
    )
    .await;
    let scrape = || String::from_utf8_lossy(&proxy.metrics.render()).into_owned();
    let entries = |kind: &str| {
        let text = scrape();
        let line = format!("sluice_state_entries{{kind=\"{kind}\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&line)?.parse::<f64>().ok())
    };
    let admin = common::admin_url(&proxy, "/metrics");
    let refresh = || async { send(Method::GET, &admin, &[], "").await };

    // 10000 keys nobody issued: each gets the API's 401, and nothing is kept for them.
    let url = common::proxy_url(&proxy, "/api/v1/viber-services");
    let tasks: Vec<_> = (0..50)
        .map(|t| {
            let url = url.clone();
            tokio::spawn(async move {
                for i in 0..200 {
                    let key = format!("bogus-{t}-{i}");
                    let (status, _, _) = send(Method::GET, &url, &[("X-API-Key", &key)], "").await;
                    assert_eq!(status, StatusCode::UNAUTHORIZED);
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    refresh().await;
    assert_eq!(entries("cooldown_gates"), Some(0.0), "{}", scrape());

    // A real key meets a 429 (the company is full): it has a gate and metric series.
    let (status, _, _) = send(
        Method::POST,
        &url.replace("/api/v1/viber-services", "/api/v1/campaigns"),
        &[("X-API-Key", KEY), ("Content-Type", "application/json")],
        r#"{"name":"x","type":"Bulk","channel":"SMS"}"#,
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    // A sync send whose client gives up while it waits for the key's cooldown.
    let single = common::proxy_url(
        &proxy,
        &format!("/api/v1/campaigns/{single_campaign}/messages/sms"),
    );
    let gave_up = tokio::time::timeout(
        Duration::from_millis(1500),
        send(
            Method::POST,
            &single,
            &[("X-API-Key", KEY), ("Content-Type", "application/json")],
            r#"{"phoneNumber":"38970123456"}"#,
        ),
    )
    .await;
    assert!(gave_up.is_err(), "the send waits for capacity");
    refresh().await;
    assert_eq!(entries("cooldown_gates"), Some(1.0), "{}", scrape());
    assert!(scrape().contains("sluice_cooldowns_started_total{key="));

    // The job is cancelled, the key goes idle: everything returns to its baseline.
    let (_, _, list) = send(
        Method::GET,
        &common::proxy_url(&proxy, "/sluice/v1/jobs"),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    let id = json(&list)["jobs"][0]["id"].as_str().unwrap().to_string();
    let (status, _, _) = send(
        Method::DELETE,
        &common::proxy_url(&proxy, &format!("/sluice/v1/jobs/{id}")),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        refresh().await;
        let text = scrape();
        if entries("cooldown_gates") == Some(0.0)
            && entries("waiters") == Some(0.0)
            && !text.contains("sluice_cooldowns_started_total{key=")
        {
            break;
        }
        assert!(Instant::now() < deadline, "{text}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Back-pressure is one atomic reservation: 30 concurrent sends against room for 10 make
/// exactly 10 jobs, never more.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_cannot_overrun_back_pressure() {
    let sim = Running::start(SimConfig {
        max_pending: 0,
        retry_after: 60,
        ..SimConfig::default()
    })
    .await;
    let single_campaign = campaign(&sim, KEY, "Transactional", "SMS", true).await;
    let dir = tempfile::tempdir().unwrap();
    let p = common::queue::proxy(&sim, &dir, |c| c.queue.max_queued_recipients = 10).await;
    let url = common::queue::url(
        &p,
        &format!("/api/v1/campaigns/{single_campaign}/messages/sms"),
    );
    let sends: Vec<_> = (0..30)
        .map(|n| {
            let url = url.clone();
            tokio::spawn(async move {
                let headers = [
                    ("X-API-Key", KEY),
                    ("Content-Type", "application/json"),
                    ("Prefer", "respond-async"),
                ];
                let body = format!(r#"{{"phoneNumber":"{}"}}"#, phones(n, 1)[0]);
                send(Method::POST, &url, &headers, body).await.0
            })
        })
        .collect();
    let mut accepted = 0;
    for s in sends {
        match s.await.unwrap() {
            StatusCode::ACCEPTED => accepted += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(accepted, 10);
}
