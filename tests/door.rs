//! The door of the send queue end to end (the simulator behind a recording server, the
//! proxy on loopback, a real SQLite file): a client's Idempotency-Key names one job, and
//! goes upstream; compressed bodies; lenient Content-Types; the jobs API's errors and its
//! list.

mod common;

use std::io::Write;
use std::time::Duration;

use bytes::Bytes;
use flate2::write::{GzEncoder, ZlibEncoder};
use flate2::Compression;
use http::{HeaderMap, Method, StatusCode};
use serde_json::{json, Value};
use sluice::app::Running as Proxy;
use sluice::config::Config;
use sluice::simulator::{HintMode, SimConfig, Simulator};

use common::queue::{get_job, proxy_at, url, wait_job};
use common::sim::{bulk_body, phones, KEY};
use common::{json, send, simulator_server, Server};

const JOB: &str = "x-sluice-job-id";

/// A simulator behind a recording server, and a proxy in front of it with its own data
/// dir; `tweak` adjusts the proxy's configuration.
struct World {
    sim: Simulator,
    up: Server,
    dir: tempfile::TempDir,
    p: Proxy,
}

async fn world(tweak: impl FnOnce(&mut Config)) -> World {
    let (sim, up) = simulator_server(SimConfig {
        max_pending: 50_000,
        drain_rate: 1_000.0,
        retry_after: 1,
        hint: HintMode::Both,
        ..SimConfig::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let p = proxy_at(up.addr, &dir, tweak).await;
    World { sim, up, dir, p }
}

/// Small bulk parts: 60 recipients make 3 parts (25, 25, 10).
fn parts_of_25(c: &mut Config) {
    let mut routes = sluice::routes::defaults();
    routes[0].max_recipients_per_request = 25;
    c.routes = Some(routes);
}

impl World {
    /// A started campaign of `kind` ("Bulk" or "Transactional"); its send path.
    async fn campaign(&self, kind: &str) -> String {
        let body = json!({"name": "c", "type": kind, "channel": "SMS"}).to_string();
        let headers = [("X-API-Key", KEY)];
        let (status, _, created) = send(
            Method::POST,
            &self.up.url("/api/v1/campaigns"),
            &headers,
            body,
        )
        .await;
        assert_eq!(status, StatusCode::CREATED);
        let id = json(&created)["id"].as_u64().unwrap();
        let start = self.up.url(&format!("/api/v1/campaigns/{id}/start"));
        let (status, _, _) = send(Method::POST, &start, &headers, "").await;
        assert_eq!(status, StatusCode::OK);
        match kind {
            "Bulk" => format!("/api/v1/campaigns/{id}/bulk/sms"),
            _ => format!("/api/v1/campaigns/{id}/messages/sms"),
        }
    }

    /// The Idempotency-Keys of the sends that reached the API on `path`, in order.
    fn upstream_keys(&self, path: &str) -> Vec<String> {
        self.up
            .hits
            .to_path(path)
            .iter()
            .map(|h| {
                h.headers
                    .get("idempotency-key")
                    .map_or(String::new(), |v| v.to_str().unwrap().to_string())
            })
            .collect()
    }

    fn replays(&self, route: &str, result: &str) -> u64 {
        self.p
            .metrics
            .idempotent_replays
            .with_label_values(&[route, result])
            .get()
    }

    async fn jobs(&self) -> Vec<Value> {
        list(&self.p, "").await
    }
}

/// Posts `body` to `path` with the API key and `extra` headers.
async fn post(
    p: &Proxy,
    path: &str,
    extra: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    let mut headers = vec![("X-API-Key", KEY)];
    headers.extend_from_slice(extra);
    send(Method::POST, &url(p, path), &headers, body).await
}

/// The job list's `jobs` (with `query`, e.g. `?limit=5`).
async fn list(p: &Proxy, query: &str) -> Vec<Value> {
    let (status, _, body) = send(
        Method::GET,
        &url(p, &format!("/sluice/v1/jobs{query}")),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    json(&body)["jobs"].as_array().unwrap().clone()
}

fn job_of(h: &HeaderMap) -> String {
    h[JOB].to_str().unwrap().to_string()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zlib(data: &[u8]) -> Vec<u8> {
    let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

// === Idempotency-Key ===

#[tokio::test]
async fn the_same_key_twice_is_one_job_one_send_and_the_same_answer() {
    let w = world(|_| {}).await;
    let path = w.campaign("Transactional").await;
    let body = r#"{"phoneNumber":"+38970123456"}"#;
    let key = [("Idempotency-Key", "order-1")];
    let first = post(&w.p, &path, &key, body).await;
    assert_eq!(first.0, StatusCode::CREATED, "{:?}", first.2);
    let again = post(&w.p, &path, &key, body).await;
    assert_eq!((again.0, &again.2), (first.0, &first.2));
    assert_eq!(job_of(&again.1), job_of(&first.1));
    assert_eq!(w.sim.stats().sends, 1);
    assert_eq!(w.jobs().await.len(), 1);
    // The API saw the client's own key, as is.
    assert_eq!(w.upstream_keys(&path), ["order-1"]);
    assert_eq!(w.replays("single", "replayed"), 1);
    // A send without a key is a new job, sent under sluice's own key.
    let other = post(&w.p, &path, &[], body).await;
    assert_ne!(job_of(&other.1), job_of(&first.1));
    assert_eq!(w.sim.stats().sends, 2);
    let job = job_of(&other.1);
    assert_eq!(w.upstream_keys(&path)[1], format!("{job}-0-1"));
}

#[tokio::test]
async fn a_multi_part_send_goes_up_with_the_key_suffixed_per_part() {
    let w = world(parts_of_25).await;
    let path = w.campaign("Bulk").await;
    let body = bulk_body(&phones(0, 60));
    let key = [("Idempotency-Key", "batch-9")];
    let first = post(&w.p, &path, &key, body.clone()).await;
    assert_eq!(first.0, StatusCode::ACCEPTED);
    assert_eq!(json(&first.2)["state"], "succeeded");
    let mut keys = w.upstream_keys(&path);
    keys.sort();
    assert_eq!(keys, ["batch-9-0-25", "batch-9-25-50", "batch-9-50-60"]);
    let again = post(&w.p, &path, &key, body).await;
    assert_eq!((again.0, &again.2), (first.0, &first.2));
    assert_eq!(job_of(&again.1), job_of(&first.1));
    assert_eq!(w.sim.stats().sends, 3);
    assert_eq!(w.replays("bulk", "replayed"), 1);
}

#[tokio::test]
async fn concurrent_sends_with_one_key_make_one_job() {
    let w = world(|_| {}).await;
    let path = w.campaign("Transactional").await;
    let body = r#"{"phoneNumber":"+38970123456"}"#;
    let key = [("Idempotency-Key", "race-1")];
    let answers = futures_join(
        (0..6)
            .map(|_| post(&w.p, &path, &key, body))
            .collect::<Vec<_>>(),
    )
    .await;
    let first = &answers[0];
    assert_eq!(first.0, StatusCode::CREATED, "{:?}", first.2);
    for a in &answers {
        assert_eq!((a.0, &a.2), (first.0, &first.2));
        assert_eq!(job_of(&a.1), job_of(&first.1));
    }
    assert_eq!(w.sim.stats().sends, 1);
    assert_eq!(w.jobs().await.len(), 1);
    assert_eq!(w.replays("single", "replayed"), 5);
}

/// Runs the futures concurrently on this task and collects their outputs in order.
async fn futures_join<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut set = Vec::new();
    for f in futures {
        set.push(Box::pin(f));
    }
    let mut out: Vec<Option<F::Output>> = (0..set.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in set.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn the_same_key_with_another_body_is_a_422_naming_the_first_job() {
    let w = world(|_| {}).await;
    let path = w.campaign("Transactional").await;
    let key = [("Idempotency-Key", "order-2")];
    let first = post(&w.p, &path, &key, r#"{"phoneNumber":"+38970123456"}"#).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let other = post(&w.p, &path, &key, r#"{"phoneNumber":"+38970123457"}"#).await;
    assert_eq!(other.0, StatusCode::UNPROCESSABLE_ENTITY);
    let envelope = json(&other.2);
    assert_eq!(envelope["error"], "Unprocessable Entity");
    let message = envelope["message"].as_str().unwrap();
    assert!(
        message.contains("Idempotency-Key was used with a different body"),
        "{message}"
    );
    assert!(message.contains(&job_of(&first.1)), "{message}");
    assert_eq!(job_of(&other.1), job_of(&first.1));
    assert_eq!(w.sim.stats().sends, 1);
    assert_eq!(w.replays("single", "conflict"), 1);
    // A key that cannot be one is refused before anything is stored.
    let bad = post(&w.p, &path, &[("Idempotency-Key", " ")], "{}").await;
    assert_eq!(bad.0, StatusCode::BAD_REQUEST);
    assert!(json(&bad.2)["message"]
        .as_str()
        .unwrap()
        .contains("Idempotency-Key"));
    assert_eq!(w.jobs().await.len(), 1);
}

#[tokio::test]
async fn a_client_that_gives_up_and_retries_gets_the_same_job() {
    let w = world(|_| {}).await;
    let path = w.campaign("Bulk").await;
    // The API is full: the job cannot finish until it has room again.
    w.sim.set_max_pending(0);
    let body = bulk_body(&phones(0, 10));
    let key = ("Idempotency-Key", "campaign-7");
    // The client's own timeout is shorter than the sync wait: it gives up...
    let gave_up = tokio::time::timeout(
        Duration::from_millis(700),
        post(&w.p, &path, &[key], body.clone()),
    )
    .await;
    assert!(
        gave_up.is_err(),
        "the send cannot finish while the API is full"
    );
    // ...and retries while another first try is still waiting.
    let waiting = tokio::spawn({
        let url = url(&w.p, &path);
        let body = body.clone();
        async move {
            let headers = [("X-API-Key", KEY), key, ("Prefer", "wait=20")];
            send(Method::POST, &url, &headers, body).await
        }
    });
    // Once it waits on the job (counted as a repeat), a second repeat comes and goes.
    common::wait_until(
        || w.replays("bulk", "replayed") >= 1,
        Duration::from_secs(5),
        "the first repeat waits",
    )
    .await;
    let retry = post(&w.p, &path, &[key, ("Prefer", "wait=1")], body.clone()).await;
    assert_eq!(retry.0, StatusCode::ACCEPTED, "{:?}", retry.2);
    let id = job_of(&retry.1);
    assert_eq!(json(&retry.2)["id"], id.as_str());
    assert_eq!(
        retry.1["location"],
        format!("/sluice/v1/jobs/{id}").as_str()
    );
    assert_eq!(w.jobs().await.len(), 1);
    // Room again: the waiting repeat is woken with the finished job's answer (long
    // before its 20 s wait would be over: the other repeat leaving did not stop its watch).
    w.sim.set_max_pending(50_000);
    let room = tokio::time::Instant::now();
    let (status, headers, answer) = waiting.await.unwrap();
    assert!(
        room.elapsed() < Duration::from_secs(10),
        "{:?}",
        room.elapsed()
    );
    assert_eq!(status, StatusCode::ACCEPTED, "{answer:?}");
    assert_eq!(job_of(&headers), id);
    assert_eq!(json(&answer)["acceptedCount"], 10);
    assert!(headers.get("location").is_none(), "a final answer");
    assert_eq!(w.sim.stats().recipients_accepted, 10);
    assert_eq!(w.jobs().await.len(), 1);
}

#[tokio::test]
async fn a_key_past_its_ttl_makes_a_new_job() {
    let w = world(|c| c.queue.idempotency_ttl_secs = 1).await;
    let path = w.campaign("Transactional").await;
    let body = r#"{"phoneNumber":"+38970123456"}"#;
    let key = [("Idempotency-Key", "short-lived")];
    let first = job_of(&post(&w.p, &path, &key, body).await.1);
    // Repeats name the first job until the key expires, then a new job is made.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let (status, h, _) = post(&w.p, &path, &key, body).await;
        assert_eq!(status, StatusCode::CREATED);
        if job_of(&h) != first {
            break job_of(&h);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_ne!(second, first);
    assert_eq!(w.sim.stats().sends, 2);
    // The new job holds the key now.
    let again = post(&w.p, &path, &key, body).await;
    assert_eq!(job_of(&again.1), second);
}

#[tokio::test]
async fn keys_survive_a_restart() {
    let w = world(|_| {}).await;
    let path = w.campaign("Transactional").await;
    let body = r#"{"phoneNumber":"+38970123456"}"#;
    let key = [("Idempotency-Key", "durable-1")];
    let first = post(&w.p, &path, &key, body).await;
    assert_eq!(first.0, StatusCode::CREATED);
    let World { sim, up, dir, p } = w;
    p.shutdown();
    p.wait().await.unwrap();
    let p = proxy_at(up.addr, &dir, |_| {}).await;
    let again = post(&p, &path, &key, body).await;
    assert_eq!((again.0, &again.2), (first.0, &first.2));
    assert_eq!(job_of(&again.1), job_of(&first.1));
    assert_eq!(sim.stats().sends, 1);
}

// === compressed bodies ===

#[tokio::test]
async fn gzip_and_deflate_sends_are_decompressed_before_anything_else() {
    let w = world(|c| c.server.max_body_bytes = 64 * 1024).await;
    let bulk = w.campaign("Bulk").await;
    let single = w.campaign("Transactional").await;
    let recipients = bulk_body(&phones(0, 30));
    let one = br#"{"phoneNumber":"+38970123456"}"#;
    for (encoding, path, body, want) in [
        (
            "gzip",
            &bulk,
            gzip(recipients.as_bytes()),
            StatusCode::ACCEPTED,
        ),
        (
            "deflate",
            &bulk,
            zlib(recipients.as_bytes()),
            StatusCode::ACCEPTED,
        ),
        ("gzip", &single, gzip(one), StatusCode::CREATED),
        ("deflate", &single, zlib(one), StatusCode::CREATED),
    ] {
        let (status, h, answer) = post(
            &w.p,
            path,
            &[
                ("Content-Encoding", encoding),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .await;
        assert_eq!(status, want, "{encoding} {path}: {answer:?}");
        let (_, job) = get_job(&w.p, &job_of(&h), KEY).await;
        assert_eq!(job["state"], "succeeded", "{job}");
    }
    assert_eq!(w.sim.stats().recipients_accepted, 62);
    // The API got plain JSON, without the coding.
    for hit in w.up.hits.to_path(&bulk) {
        assert!(hit.headers.get("content-encoding").is_none());
    }
    // A bomb: small as sent, over max_body_bytes once inflated.
    let bomb = gzip(&vec![b' '; 1_000_000]);
    assert!(bomb.len() < 64 * 1024);
    let (status, _, answer) = post(&w.p, &bulk, &[("Content-Encoding", "gzip")], bomb).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(json(&answer)["error"], "Payload Too Large");
    // A coding sluice cannot undo.
    let (status, _, answer) = post(&w.p, &single, &[("Content-Encoding", "br")], &one[..]).await;
    assert_eq!(status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let envelope = json(&answer);
    assert_eq!(envelope["error"], "Unsupported Media Type");
    assert!(envelope["message"].as_str().unwrap().contains("br"));
    assert_eq!(w.sim.stats().sends, 4, "nothing else reached the API");
    assert_eq!(w.jobs().await.len(), 4);
}

#[tokio::test]
async fn a_gzip_template_is_checked_and_forwarded_decompressed() {
    let w = world(|_| {}).await;
    let template = json!({"name": "t", "templateContent": "Hi"}).to_string();
    let (status, _, answer) = post(
        &w.p,
        "/api/v1/templates",
        &[("Content-Encoding", "gzip")],
        gzip(template.as_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{answer:?}");
    assert_eq!(json(&answer)["templateContent"], "Hi");
    let hits = w.up.hits.to_path("/api/v1/templates");
    assert!(hits[0].headers.get("content-encoding").is_none());
    // A bad template inside the gzip is refused like a plain one.
    let bad = json!({"name": "u"}).to_string();
    let (status, _, answer) = post(
        &w.p,
        "/api/v1/templates",
        &[("Content-Encoding", "gzip")],
        gzip(bad.as_bytes()),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(json(&answer)["message"], "Template validation failed");
    assert_eq!(w.up.hits.to_path("/api/v1/templates").len(), 1);
}

// === lenient Content-Type ===

#[tokio::test]
async fn a_json_body_sent_as_a_form_is_accepted_and_counted() {
    let w = world(|_| {}).await;
    let path = w.campaign("Transactional").await;
    let body = r#"{"phoneNumber":"+38970123456"}"#;
    let form = [("Content-Type", "application/x-www-form-urlencoded")];
    let (status, _, answer) = post(&w.p, &path, &form, body).await;
    assert_eq!(status, StatusCode::CREATED, "{answer:?}");
    let counted = |route: &str| {
        w.p.metrics
            .lenient_content_type
            .with_label_values(&[route])
            .get()
    };
    assert_eq!(counted("single"), 1);
    // JSON types and no Content-Type at all are not leniency.
    let (status, _, _) = post(&w.p, &path, &[], body).await;
    assert_eq!(status, StatusCode::CREATED);
    let (status, _, _) = post(&w.p, &path, &[("Content-Type", "application/json")], body).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(counted("single"), 1);
    // A type that names another format is still refused.
    let multipart = [("Content-Type", "multipart/form-data; boundary=x")];
    let (status, _, answer) = post(&w.p, &path, &multipart, body).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(json(&answer)["message"]
        .as_str()
        .unwrap()
        .contains("Content-Type"));
    assert_eq!(w.sim.stats().sends, 3);
}

// === the jobs API ===

#[tokio::test]
async fn jobs_api_errors_are_in_the_envelope() {
    let w = world(|_| {}).await;
    let key = [("X-API-Key", KEY)];
    for (method, path, allow) in [
        (Method::PUT, "/sluice/v1/jobs/abc", "GET,HEAD,DELETE"),
        (Method::POST, "/sluice/v1/jobs", "GET,HEAD"),
        (Method::GET, "/sluice/v1/jobs/abc/retry", "POST"),
    ] {
        let (status, h, body) = send(method.clone(), &url(&w.p, path), &key, "").await;
        assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
        let envelope = json(&body);
        assert_eq!(envelope["error"], "Method Not Allowed", "{method} {path}");
        let mut allowed: Vec<&str> = h["allow"]
            .to_str()
            .unwrap()
            .split(',')
            .map(str::trim)
            .collect();
        allowed.sort_unstable();
        let mut want: Vec<&str> = allow.split(',').collect();
        want.sort_unstable();
        assert_eq!(allowed, want, "{method} {path}");
    }
    for path in ["/sluice/v1/jobs/%ff", "/sluice/v1/jobs/%ff/retry"] {
        let method = if path.ends_with("retry") {
            Method::POST
        } else {
            Method::GET
        };
        let (status, _, body) = send(method, &url(&w.p, path), &key, "").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{path}");
        assert_eq!(
            json(&body),
            json!({"error": "Not Found", "message": "Job not found"})
        );
    }
    for (query, names) in [
        ("?limit=-1", "limit"),
        ("?limit=ten", "limit"),
        ("?state=done", "state"),
        ("?colour=red", "colour"),
    ] {
        let (status, _, body) = send(
            Method::GET,
            &url(&w.p, &format!("/sluice/v1/jobs{query}")),
            &key,
            "",
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{query}");
        let envelope = json(&body);
        assert_eq!(envelope["error"], "Bad Request");
        assert!(
            envelope["message"].as_str().unwrap().contains(names),
            "{query}: {envelope}"
        );
    }
    let (status, _, _) = send(
        Method::GET,
        &url(&w.p, "/sluice/v1/jobs?limit=7&state=uncertain"),
        &key,
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_listed_job_is_the_same_as_its_own_view() {
    let w = world(parts_of_25).await;
    let path = w.campaign("Bulk").await;
    let done = post(&w.p, &path, &[], bulk_body(&phones(0, 60))).await;
    assert_eq!(done.0, StatusCode::ACCEPTED);
    // A failed one too: a campaign that does not exist.
    let missing = "/api/v1/campaigns/999999/bulk/sms";
    let failed = post(&w.p, missing, &[], bulk_body(&phones(100, 30))).await;
    assert_eq!(failed.0, StatusCode::NOT_FOUND);
    let failed = job_of(&failed.1);
    wait_job(
        &w.p,
        &failed,
        |j| j["state"] == "failed",
        Duration::from_secs(5),
    )
    .await;

    let listed = w.jobs().await;
    assert_eq!(listed.len(), 2);
    for job in &listed {
        let (_, alone) = get_job(&w.p, job["id"].as_str().unwrap(), KEY).await;
        assert_eq!(job, &alone);
    }
    let done_job = listed.iter().find(|j| j["id"] != failed.as_str()).unwrap();
    assert_eq!(done_job["delivered"], 60);
    assert_eq!(done_job["acceptedCount"], 60);
    assert_eq!(done_job["parts"].as_array().unwrap().len(), 3);
    let failed_job = listed.iter().find(|j| j["id"] == failed.as_str()).unwrap();
    assert_eq!(
        (
            failed_job["delivered"].clone(),
            failed_job["failed"].clone()
        ),
        (json!(0), json!(30))
    );
    // Paging keeps the parts too.
    let page = list(&w.p, "?limit=1").await;
    assert_eq!(page.len(), 1);
    assert_eq!(page[0], listed[0]);
}
