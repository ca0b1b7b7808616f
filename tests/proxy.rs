//! The pass-through proxy over real sockets, in-process on loopback: what reaches the
//! upstream (method, path, query, body, headers), API errors passed through verbatim, the
//! per-key cooldown under a 429 storm, retry hints (seconds and HTTP-date), the deadline,
//! the proxy's own errors, retries on 5xx, streamed bodies, h2c, graceful shutdown and the
//! admin listener.
//!
//! Upstreams are the simulator or small test servers (`common::Server`) that record every
//! request with its arrival time. Nothing sleeps to synchronise: waits poll a condition
//! with a bounded timeout (`common::wait_until`).

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use common::{
    admin_url, canned, dead_addr, echo, json, proxy_config, proxy_url, raw_exchange, scripted,
    send, send_with, simulator_server, start_proxy, wait_until, Chunked, Echoed, Hit, Proto,
    Server,
};
use http::{Method, StatusCode};
use http_body_util::Full;
use serde_json::json;
use sluice::api::{Envelope, RateLimitBody};
use sluice::keys::apikey::KeyId;
use sluice::simulator::{HintMode, SimConfig};
use tokio::sync::oneshot;

const KEY: &str = "demo-key";
const ROUTE: &str = "passthrough";
/// How long any asynchronous condition in these tests may take to come true.
const PATIENCE: Duration = Duration::from_secs(5);

fn text(body: &[u8]) -> &str {
    std::str::from_utf8(body).expect("a UTF-8 body")
}

fn fingerprint(key: &str) -> String {
    KeyId::of(key.as_bytes()).to_string()
}

/// A proxy error body: the seed's envelope, nothing else.
fn envelope(body: &[u8]) -> Envelope {
    let env: Envelope = serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not the envelope ({e}): {}", String::from_utf8_lossy(body)));
    assert_eq!(env.validation_errors, None);
    env
}

/// Creates a started Bulk SMS campaign for `KEY` straight at the simulator; its id.
async fn bulk_campaign(up: &Server) -> u64 {
    let key = [("X-API-Key", KEY)];
    let body = json!({"name": "c", "type": "Bulk", "channel": "SMS"}).to_string();
    let (status, _, created) = send(Method::POST, &up.url("/api/v1/campaigns"), &key, body).await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&created));
    let id = json(&created)["id"].as_u64().expect("an id");
    let start = up.url(&format!("/api/v1/campaigns/{id}/start"));
    let (status, _, _) = send(Method::POST, &start, &key, "").await;
    assert_eq!(status, StatusCode::OK);
    id
}

/// A bulk body with the one recipient number `i`.
fn one_recipient(i: u64) -> String {
    json!({ "recipients": [format!("3897{i:07}")] }).to_string()
}

/// The send requests among `hits` (to the bulk endpoint of `campaign`), oldest first.
fn sends(up: &Server, campaign: u64) -> Vec<Hit> {
    up.hits
        .to_path(&format!("/api/v1/campaigns/{campaign}/bulk/sms"))
}

/// Every send that arrived after a 429 arrived at least `hint` after that 429 was
/// answered.
fn assert_hints_honoured(sends: &[Hit], hint: Duration) {
    for refused in sends.iter().filter(|h| is_429(h)) {
        let answered = refused.answer.as_ref().expect("answered").at;
        for later in sends.iter().filter(|h| h.arrived > refused.arrived) {
            let waited = later.arrived.duration_since(answered);
            assert!(
                waited >= hint,
                "a send arrived {waited:?} after a 429, before its {hint:?} hint"
            );
        }
    }
}

fn is_429(hit: &Hit) -> bool {
    hit.answer
        .as_ref()
        .is_some_and(|a| a.status == StatusCode::TOO_MANY_REQUESTS)
}

// === pass-through ===

#[tokio::test]
async fn method_path_query_and_body_arrive_unchanged() {
    let up = Server::start(echo()).await;
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let binary: Vec<u8> = (0..=255u8).chain((0..=255u8).rev()).collect();
    let cases: [(Method, &str, Bytes); 4] = [
        (
            Method::GET,
            "/api/v1/messages?phoneNumber=%2B38970123456&campaignId=7&a=1&a=2&empty=",
            Bytes::new(),
        ),
        (
            Method::POST,
            "/api/v1/campaigns/5/bulk/sms?dry=1",
            Bytes::from(binary),
        ),
        (
            Method::DELETE,
            "/api/v1/templates/42?force=true",
            Bytes::from_static(br#"{"why": "gone"}"#),
        ),
        (
            Method::GET,
            "/api/v1/a%20b/%2F/c;p=1",
            Bytes::from_static(b"a GET with a body"),
        ),
    ];
    for (method, target, body) in cases {
        let (status, headers, answer) = send(
            method.clone(),
            &proxy_url(&proxy, target),
            &[("Content-Type", "application/octet-stream")],
            body.clone(),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{method} {target}");
        assert_eq!(headers["content-type"], "application/json");
        let got = Echoed::parse(&answer);
        let (path, query) = match target.split_once('?') {
            Some((path, query)) => (path, Some(query.to_owned())),
            None => (target, None),
        };
        assert_eq!(got.method, method.as_str());
        assert_eq!(got.path, path);
        assert_eq!(got.query, query);
        assert_eq!(got.body, body.to_vec(), "{method} {target}");
        assert_eq!(got.header("content-type"), Some("application/octet-stream"));
        // The upstream's authority replaces the client's Host.
        assert_eq!(got.header("host"), Some(up.addr.to_string().as_str()));
        if !body.is_empty() {
            assert_eq!(
                got.header("content-length"),
                Some(body.len().to_string().as_str())
            );
        }
    }
    assert_eq!(up.hits.len(), 4, "one attempt each");
}

#[tokio::test]
async fn hop_by_hop_headers_are_dropped_both_ways() {
    // The upstream answers with hop-by-hop headers of its own.
    let answer = canned(
        StatusCode::OK,
        &[
            ("Connection", "x-resp-hop"),
            ("X-Resp-Hop", "1"),
            ("Keep-Alive", "timeout=5"),
            ("Proxy-Authenticate", "Basic realm=\"up\""),
            ("Upgrade", "h2c"),
            ("X-Resp-Kept", "yes"),
        ],
        "ok",
    );
    let up = Server::start(scripted(vec![answer])).await;
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let (status, headers, body) = send(
        Method::POST,
        &proxy_url(&proxy, "/api/v1/templates"),
        &[
            ("Connection", "keep-alive, X-Hop-Named"),
            ("X-Hop-Named", "1"),
            ("Keep-Alive", "timeout=5"),
            ("TE", "trailers"),
            ("Upgrade", "websocket"),
            ("Proxy-Authorization", "Basic Zm9vOmJhcg=="),
            ("Proxy-Connection", "keep-alive"),
            ("X-Kept", "yes"),
            ("X-API-Key", KEY),
        ],
        "{}",
    )
    .await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"ok"[..]));

    let arrived = &up.hits.all()[0].headers;
    for hop in [
        "connection",
        "x-hop-named",
        "keep-alive",
        "te",
        "upgrade",
        "proxy-authorization",
        "proxy-connection",
    ] {
        assert!(
            !arrived.contains_key(hop),
            "{hop} reached the upstream: {arrived:?}"
        );
    }
    assert_eq!(arrived["x-kept"], "yes");
    assert_eq!(arrived["x-api-key"], KEY);

    for hop in [
        "connection",
        "x-resp-hop",
        "keep-alive",
        "proxy-authenticate",
        "upgrade",
    ] {
        assert!(
            !headers.contains_key(hop),
            "{hop} reached the client: {headers:?}"
        );
    }
    assert_eq!(headers["x-resp-kept"], "yes");
}

#[tokio::test]
async fn request_id_is_kept_or_generated_forwarded_and_returned() {
    let up = Server::start(echo()).await;
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let url = proxy_url(&proxy, "/api/v1/viber-services");

    let (_, headers, body) = send(Method::GET, &url, &[("X-Request-ID", "abc-123")], "").await;
    assert_eq!(headers["x-request-id"], "abc-123");
    assert_eq!(Echoed::parse(&body).header("x-request-id"), Some("abc-123"));

    let (_, headers, body) = send(Method::GET, &url, &[], "").await;
    let generated = headers["x-request-id"].to_str().expect("ASCII").to_owned();
    assert_eq!(generated.len(), 32, "{generated}");
    assert!(
        generated
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        "{generated}"
    );
    assert_eq!(
        Echoed::parse(&body).header("x-request-id"),
        Some(generated.as_str())
    );
    let (_, again, _) = send(Method::GET, &url, &[], "").await;
    assert_ne!(again["x-request-id"], generated, "a new id per request");
}

#[tokio::test]
async fn api_keys_are_trimmed_and_the_own_key_injected_only_when_none_is_sent() {
    let up = Server::start(echo()).await;
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), Some("proxy-own-key")).await;
    let url = proxy_url(&proxy, "/api/v1/viber-services");
    let m = &proxy.metrics;

    let (_, _, body) = send(Method::GET, &url, &[], "").await;
    assert_eq!(
        Echoed::parse(&body).header("x-api-key"),
        Some("proxy-own-key")
    );
    assert_eq!(m.keys_injected.get(), 1);

    let (_, _, body) = send(Method::GET, &url, &[("X-API-Key", "client-key")], "").await;
    assert_eq!(Echoed::parse(&body).header("x-api-key"), Some("client-key"));
    assert_eq!((m.keys_injected.get(), m.keys_trimmed.get()), (1, 0));

    // HTTP/1 parsing strips surrounding white space before any handler sees it; HTTP/2
    // carries the value as sent, so the padded key reaches the proxy as is.
    let (status, _, body) = send_with(
        Proto::H2c,
        Method::GET,
        &url,
        &[("X-API-Key", " \tclient-key  ")],
        Full::new(Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Echoed::parse(&body).header("x-api-key"), Some("client-key"));
    assert_eq!((m.keys_injected.get(), m.keys_trimmed.get()), (1, 1));
    let rendered = String::from_utf8(m.render()).expect("UTF-8 metrics");
    assert!(rendered.contains("sluice_api_keys_trimmed_total 1"));
    assert!(!rendered.contains("client-key") && !rendered.contains("proxy-own-key"));
}

#[tokio::test]
async fn simulator_flow_through_the_proxy() {
    let (sim, up) = simulator_server(SimConfig::default()).await;
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let key = [("X-API-Key", KEY)];
    let url = |path: &str| proxy_url(&proxy, path);

    let template = json!({"name": "welcome", "templateContent": "Hi {name}"}).to_string();
    let (status, _, created) = send(Method::POST, &url("/api/v1/templates"), &key, template).await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&created));
    let created = json(&created);
    assert_eq!(created["name"], "welcome");
    let path = format!("/api/v1/templates/{}", created["id"]);
    let (status, _, got) = send(Method::GET, &url(&path), &key, "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&got), created);

    let campaign = json!({"name": "otp", "type": "Transactional", "channel": "SMS"}).to_string();
    let (status, _, c) = send(Method::POST, &url("/api/v1/campaigns"), &key, campaign).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = json(&c)["id"].as_u64().expect("an id");
    let start = format!("/api/v1/campaigns/{id}/start");
    let (status, _, _) = send(Method::POST, &url(&start), &key, "").await;
    assert_eq!(status, StatusCode::OK);
    let single = format!("/api/v1/campaigns/{id}/messages/sms");
    let message = json!({"phoneNumber": "+38970123456", "variables": {"code": "1"}});
    let (status, _, sent) = send(Method::POST, &url(&single), &key, message.to_string()).await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&sent));
    let sent = json(&sent);

    let query = format!("/api/v1/messages?phoneNumber=%2B38970123456&campaignId={id}");
    let (status, _, listed) = send(Method::GET, &url(&query), &key, "").await;
    assert_eq!(status, StatusCode::OK);
    let listed = json(&listed);
    assert_eq!(listed.as_array().map(Vec::len), Some(1), "{listed}");
    assert_eq!(listed[0]["messageId"], sent["messageId"]);
    let arrived = up.hits.to_path("/api/v1/messages");
    assert_eq!(
        arrived[0].uri.query(),
        Some(&query["/api/v1/messages?".len()..])
    );

    let (status, headers, body) = send(Method::DELETE, &url(&path), &key, "").await;
    assert_eq!((status, body.len()), (StatusCode::NO_CONTENT, 0));
    assert!(headers.contains_key("x-request-id"));
    let (status, _, _) = send(Method::GET, &url(&path), &key, "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(sim.stats().requests, 8, "one attempt per request");
}

#[tokio::test]
async fn api_errors_pass_through_verbatim() {
    let (_sim, up) = simulator_server(SimConfig::default()).await;
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let key = [("X-API-Key", KEY)];
    let (status, _, c) = send(
        Method::POST,
        &up.url("/api/v1/campaigns"),
        &key,
        json!({"name": "t", "type": "Transactional", "channel": "SMS"}).to_string(),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED);
    let id = json(&c)["id"].as_u64().expect("an id");
    let start = format!("/api/v1/campaigns/{id}/start");
    send(Method::POST, &up.url(&start), &key, "").await;
    let single = format!("/api/v1/campaigns/{id}/messages/sms");

    let cases: Vec<(Method, &str, Option<&str>, &str, StatusCode)> = vec![
        (
            Method::GET,
            "/api/v1/viber-services",
            None,
            "",
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            "/api/v1/viber-services",
            Some("wrong-key"),
            "",
            StatusCode::UNAUTHORIZED,
        ),
        (
            Method::GET,
            "/api/v1/templates/999",
            Some(KEY),
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/v1/campaigns/999",
            Some(KEY),
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::GET,
            "/api/v2/nothing",
            Some(KEY),
            "",
            StatusCode::NOT_FOUND,
        ),
        (
            Method::POST,
            "/api/v1/templates",
            Some(KEY),
            "{not json",
            StatusCode::BAD_REQUEST,
        ),
        (
            Method::POST,
            &single,
            Some(KEY),
            r#"{"phoneNumber": "123"}"#,
            StatusCode::BAD_REQUEST,
        ),
    ];
    for (method, path, key, body, expected) in cases {
        let headers: Vec<(&str, &str)> = key.map(|k| ("X-API-Key", k)).into_iter().collect();
        let direct = send(method.clone(), &up.url(path), &headers, body.to_owned()).await;
        let proxied = send(
            method.clone(),
            &proxy_url(&proxy, path),
            &headers,
            body.to_owned(),
        )
        .await;
        assert_eq!(direct.0, expected, "{method} {path}: {}", text(&direct.2));
        assert_eq!(proxied.0, direct.0, "{method} {path}");
        assert_eq!(
            proxied.2, direct.2,
            "{method} {path}: the body, byte for byte"
        );
        assert_eq!(
            proxied.1.get("content-type"),
            direct.1.get("content-type"),
            "{method} {path}"
        );
    }
    assert_eq!(
        up.hits.len(),
        2 + 2 * 7,
        "setup, then one direct and one proxied attempt per case: none retried"
    );
}

// === 429s, cooldowns, hints, the deadline ===

/// 21 sends for one key while the key's capacity is 0: the first is refused; 20 more
/// join it waiting; the API refuses the probe `refusals - 1` more times, then has room.
async fn storm(refusals: u64) {
    let cfg = SimConfig {
        retry_after: 1,
        hint: HintMode::Both,
        ..SimConfig::default()
    };
    let (sim, up) = simulator_server(cfg).await;
    let campaign = bulk_campaign(&up).await;
    sim.set_max_pending(0);
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let url = proxy_url(&proxy, &format!("/api/v1/campaigns/{campaign}/bulk/sms"));
    let spawn_send = |i: u64| {
        let url = url.clone();
        tokio::spawn(async move {
            send(Method::POST, &url, &[("X-API-Key", KEY)], one_recipient(i)).await
        })
    };

    let mut requests = vec![spawn_send(0)];
    wait_until(
        || sim.stats().rate_limited == 1,
        PATIENCE,
        "the first send is refused",
    )
    .await;
    requests.extend((1..=20).map(spawn_send));
    let waiting = &proxy.metrics.cooldown_waiting;
    wait_until(
        || waiting.get() == 21,
        PATIENCE,
        "all 21 sends wait for the cooldown",
    )
    .await;
    assert_eq!(
        sim.stats().rate_limited,
        1,
        "the 20 waited instead of asking"
    );
    wait_until(
        || sim.stats().rate_limited == refusals,
        PATIENCE,
        "the API refused the probes",
    )
    .await;
    sim.set_max_pending(1_000_000);

    for request in requests {
        let (status, _, body) = request.await.expect("the send task");
        assert_eq!(status, StatusCode::ACCEPTED, "{}", text(&body));
        assert_eq!(
            json(&body),
            json!({"campaignId": campaign, "acceptedCount": 1})
        );
    }
    let stats = sim.stats();
    assert_eq!(stats.rate_limited, refusals, "one 429 per cooldown");
    assert_eq!(stats.accepted_sends, 21);
    assert_eq!(stats.sends, 21 + refusals);
    assert_eq!(stats.early_retries, 0);
    let m = &proxy.metrics;
    let label = fingerprint(KEY);
    assert_eq!(
        m.cooldowns_started.with_label_values(&[&label]).get(),
        refusals
    );
    assert_eq!(
        m.upstream_rate_limited.with_label_values(&[ROUTE]).get(),
        refusals
    );
    assert_eq!(waiting.get(), 0);
    let hits = sends(&up, campaign);
    assert_eq!(hits.iter().filter(|h| is_429(h)).count() as u64, refusals);
    assert_hints_honoured(&hits, Duration::from_secs(1));
}

#[tokio::test]
async fn a_429_storm_makes_one_upstream_429_per_cooldown() {
    storm(1).await;
}

#[tokio::test]
async fn a_refused_probe_starts_one_more_cooldown() {
    storm(2).await;
}

#[tokio::test]
async fn an_http_date_hint_is_waited_out() {
    let cfg = SimConfig {
        retry_after: 1,
        hint: HintMode::Date,
        ..SimConfig::default()
    };
    let (sim, up) = simulator_server(cfg).await;
    let campaign = bulk_campaign(&up).await;
    sim.set_max_pending(0);
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let url = proxy_url(&proxy, &format!("/api/v1/campaigns/{campaign}/bulk/sms"));
    let request = tokio::spawn(async move {
        send(Method::POST, &url, &[("X-API-Key", KEY)], one_recipient(1)).await
    });
    wait_until(|| sim.stats().rate_limited == 2, PATIENCE, "two 429s").await;
    sim.set_max_pending(1_000_000);
    let (status, _, body) = request.await.expect("the send task");
    assert_eq!(status, StatusCode::ACCEPTED, "{}", text(&body));

    let stats = sim.stats();
    assert_eq!((stats.rate_limited, stats.early_retries), (2, 0));
    let hits = sends(&up, campaign);
    assert_eq!(hits.len(), 3);
    for pair in hits.windows(2) {
        let answer = pair[0].answer.as_ref().expect("answered");
        let date = answer.headers["retry-after"].to_str().expect("ASCII");
        let at = httpdate::parse_http_date(date).expect("an HTTP-date");
        assert!(
            pair[1].arrived_wall >= at,
            "the retry came before the Retry-After date {date}"
        );
    }
    assert_eq!(
        proxy
            .metrics
            .retry_wait
            .with_label_values(&["hint"])
            .get_sample_count(),
        2
    );
}

#[tokio::test]
async fn past_the_deadline_the_client_gets_the_apis_429_unchanged() {
    let cfg = SimConfig {
        retry_after: 5,
        ..SimConfig::default()
    };
    let (sim, up) = simulator_server(cfg).await;
    let campaign = bulk_campaign(&up).await;
    sim.set_max_pending(0);
    let proxy = start_proxy(
        &proxy_config(&up.base(), |c| c.retry.deadline_ms = 1_000),
        None,
    )
    .await;
    let path = format!("/api/v1/campaigns/{campaign}/bulk/sms");
    let key = [("X-API-Key", KEY)];

    let started = Instant::now();
    let (status, headers, body) = send(
        Method::POST,
        &proxy_url(&proxy, &path),
        &key,
        one_recipient(1),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "5");
    let seed_shape = serde_json::to_vec(&RateLimitBody::new(0, 1, 0, 5)).expect("JSON");
    assert_eq!(text(&body), text(&seed_shape));
    let (d_status, d_headers, d_body) =
        send(Method::POST, &up.url(&path), &key, one_recipient(1)).await;
    assert_eq!(d_status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(body, d_body, "the simulator's 429 body, byte for byte");
    assert_eq!(headers["retry-after"], d_headers["retry-after"]);
    assert_eq!(headers["content-type"], d_headers["content-type"]);
    let exceeded = proxy.metrics.deadline_exceeded.with_label_values(&[ROUTE]);
    assert_eq!(exceeded.get(), 1);
    // Nobody waited: the retry-wait histogram records only waits before a retry.
    let waits = proxy.metrics.retry_wait.with_label_values(&["hint"]);
    assert_eq!(waits.get_sample_count(), 0);

    // While the key cools down, another request cannot make its deadline either: it
    // gets the same 429 at once, without asking the API.
    let asked = sim.stats().rate_limited;
    let started = Instant::now();
    let (status, headers, again) = send(
        Method::POST,
        &proxy_url(&proxy, &path),
        &key,
        one_recipient(2),
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        (status, &headers["retry-after"]),
        (StatusCode::TOO_MANY_REQUESTS, &d_headers["retry-after"])
    );
    assert_eq!(again, body);
    assert_eq!(sim.stats().rate_limited, asked, "the API was not asked");
    assert_eq!(exceeded.get(), 2);

    let (status, _, metrics) = send(Method::GET, &admin_url(&proxy, "/metrics"), &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let metrics = text(&metrics);
    assert!(
        metrics.contains(r#"sluice_upstream_rate_limited_total{route="passthrough"} 1"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"sluice_deadline_exceeded_total{route="passthrough"} 2"#));
}

#[tokio::test]
async fn a_streamed_send_that_gets_a_429_returns_it_and_still_cools_the_key() {
    let cfg = SimConfig {
        retry_after: 1,
        ..SimConfig::default()
    };
    let (sim, up) = simulator_server(cfg).await;
    let campaign = bulk_campaign(&up).await;
    sim.set_max_pending(0);
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let url = proxy_url(&proxy, &format!("/api/v1/campaigns/{campaign}/bulk/sms"));
    let key = [("X-API-Key", KEY)];

    // A body of unknown length goes upstream once: its 429 comes back as is.
    let (chunks, _) = {
        let body = one_recipient(1).into_bytes();
        Chunked::of(body.len(), 7, move |i| body[i])
    };
    let (status, headers, body) = send_with(Proto::Http1, Method::POST, &url, &key, chunks).await;
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(headers["retry-after"], "1");
    assert_eq!(json(&body)["availableCapacity"], 0);
    let m = &proxy.metrics;
    assert_eq!(m.upstream_rate_limited.with_label_values(&[ROUTE]).get(), 1);
    assert_eq!(
        m.cooldowns_started
            .with_label_values(&[&fingerprint(KEY)])
            .get(),
        1
    );

    // The key cools down all the same: the next send waits out the hint.
    let next = tokio::spawn(async move {
        send(Method::POST, &url, &[("X-API-Key", KEY)], one_recipient(2)).await
    });
    wait_until(
        || m.cooldown_waiting.get() == 1,
        PATIENCE,
        "the next send waits",
    )
    .await;
    sim.set_max_pending(1_000_000);
    let (status, _, _) = next.await.expect("the send task");
    assert_eq!(status, StatusCode::ACCEPTED);
    let stats = sim.stats();
    assert_eq!((stats.rate_limited, stats.early_retries), (1, 0));
    assert_hints_honoured(&sends(&up, campaign), Duration::from_secs(1));
}

// === errors the proxy makes itself ===

#[tokio::test]
async fn an_unreachable_upstream_is_a_502_after_connect_retries() {
    let dead = dead_addr().await;
    let base = format!("http://{dead}");
    let proxy = start_proxy(
        &proxy_config(&base, |c| {
            c.retry.backoff_base_ms = 10;
            c.retry.backoff_cap_ms = 50;
            c.retry.max_attempts = 3;
            c.retry.deadline_ms = 3_000;
        }),
        None,
    )
    .await;
    let secret = "secret-key-9f3a0c";
    let started = Instant::now();
    // A POST too: a refused connection never reached the API, so it is safe to repeat.
    let (status, headers, body) = send(
        Method::POST,
        &proxy_url(&proxy, "/api/v1/templates"),
        &[("X-API-Key", secret)],
        r#"{"name": "x"}"#,
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    assert!(headers["content-type"]
        .to_str()
        .is_ok_and(|t| t.starts_with("application/json")));
    let env = envelope(&body);
    assert_eq!(env.error, "Bad Gateway");
    assert!(env.message.contains(&base), "{}", env.message);
    assert!(!text(&body).contains(secret), "{}", text(&body));
    let m = &proxy.metrics;
    assert_eq!(
        m.upstream_failures
            .with_label_values(&[ROUTE, "connect"])
            .get(),
        3
    );
    assert_eq!(m.retries.with_label_values(&["connect"]).get(), 2);
}

#[tokio::test]
async fn bodies_over_max_body_bytes_get_a_413() {
    let up = Server::start(echo()).await;
    let proxy = start_proxy(
        &proxy_config(&up.base(), |c| c.server.max_body_bytes = 1024),
        None,
    )
    .await;
    let url = proxy_url(&proxy, "/api/v1/campaigns/1/bulk/sms");
    let check_413 = |status: StatusCode, body: &Bytes| {
        assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{}", text(body));
        let env = envelope(body);
        assert_eq!(env.error, "Payload Too Large");
        assert!(env.message.contains("1024 bytes"), "{}", env.message);
    };

    // With Content-Length: refused before anything is sent upstream.
    let (status, headers, body) = send(Method::POST, &url, &[], vec![b'x'; 1025]).await;
    check_413(status, &body);
    assert!(headers.contains_key("x-request-id"));
    assert!(up.hits.is_empty(), "nothing reached the upstream");
    // Exactly the limit passes.
    let (status, _, body) = send(Method::POST, &url, &[], vec![b'x'; 1024]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Echoed::parse(&body).body.len(), 1024);

    // Of unknown length: cut off once the stream passes the limit.
    let (chunks, _) = Chunked::of(4096, 512, |_| b'y');
    let (status, _, body) = send_with(Proto::Http1, Method::POST, &url, &[], chunks).await;
    check_413(status, &body);
    let (chunks, sent) = Chunked::of(1024, 100, |i| i as u8);
    let (status, _, body) = send_with(Proto::Http1, Method::POST, &url, &[], chunks).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Echoed::parse(&body).body, sent.to_vec());
}

#[tokio::test]
async fn absolute_form_targets_and_connect_are_refused() {
    let up = Server::start(echo()).await;
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;

    let (status, head, body) = raw_exchange(
        proxy.addr,
        b"GET http://evil.example/ HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 400, "{head}");
    let env = envelope(&body);
    assert_eq!(env.error, "Bad Request");
    assert!(env.message.contains("absolute-form"), "{}", env.message);

    let (status, head, body) = raw_exchange(
        proxy.addr,
        b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405, "{head}");
    assert_eq!(envelope(&body).error, "Method Not Allowed");
    assert!(up.hits.is_empty(), "nothing reached the upstream");

    // A path-only target on the same kind of connection goes through.
    let (status, _, body) = raw_exchange(
        proxy.addr,
        b"GET /api/v1/viber-services HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    let got = Echoed::parse(&body);
    assert_eq!(got.path, "/api/v1/viber-services");
    assert_eq!(got.header("host"), Some(up.addr.to_string().as_str()));
    assert_eq!(up.hits.len(), 1);
}

// === retries on 5xx, streamed bodies ===

const INTERNAL: &str = r#"{"error":"Internal Server Error","message":"boom"}"#;

#[tokio::test]
async fn an_idempotent_get_is_retried_on_5xx() {
    let up = Server::start(scripted(vec![
        canned(StatusCode::INTERNAL_SERVER_ERROR, &[], INTERNAL),
        canned(StatusCode::SERVICE_UNAVAILABLE, &[], INTERNAL),
    ]))
    .await;
    let proxy = start_proxy(
        &proxy_config(&up.base(), |c| {
            c.retry.backoff_base_ms = 10;
            c.retry.backoff_cap_ms = 20;
        }),
        None,
    )
    .await;
    let (status, _, body) = send(
        Method::GET,
        &proxy_url(&proxy, "/api/v1/viber-services"),
        &[("X-API-Key", KEY)],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(Echoed::parse(&body).path, "/api/v1/viber-services");
    assert_eq!(up.hits.len(), 3);
    assert_eq!(
        proxy
            .metrics
            .retries
            .with_label_values(&["status_5xx"])
            .get(),
        2
    );
    let waits = proxy.metrics.retry_wait.with_label_values(&["backoff"]);
    assert_eq!(waits.get_sample_count(), 2);
}

#[tokio::test]
async fn a_post_is_not_retried_on_500() {
    let (sim, up) = simulator_server(SimConfig::default()).await;
    let campaign = bulk_campaign(&up).await;
    let proxy = start_proxy(
        &proxy_config(&up.base(), |c| c.retry.backoff_base_ms = 10),
        None,
    )
    .await;
    let path = format!("/api/v1/campaigns/{campaign}/bulk/sms");
    let key = [("X-API-Key", KEY)];
    sim.set_fail_rate(1.0);
    let (status, headers, body) = send(
        Method::POST,
        &proxy_url(&proxy, &path),
        &key,
        one_recipient(1),
    )
    .await;
    let direct = send(Method::POST, &up.url(&path), &key, one_recipient(1)).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(
        (status, &body, headers.get("content-type")),
        (direct.0, &direct.2, direct.1.get("content-type")),
        "the API's 500 as is"
    );
    let stats = sim.stats();
    assert_eq!(
        (stats.injected_failures, stats.sends),
        (2, 2),
        "one attempt each"
    );
    assert_eq!(
        proxy
            .metrics
            .retries
            .with_label_values(&["status_5xx"])
            .get(),
        0
    );
}

#[tokio::test]
async fn bodies_over_the_retry_buffer_stream_through_once() {
    let up = Server::start(scripted(vec![canned(
        StatusCode::INTERNAL_SERVER_ERROR,
        &[],
        INTERNAL,
    )]))
    .await;
    let proxy = start_proxy(
        &proxy_config(&up.base(), |c| {
            c.upstream.retry_buffer_bytes = 1024;
            c.retry.backoff_base_ms = 10;
        }),
        None,
    )
    .await;
    let url = proxy_url(&proxy, "/api/v1/campaigns/1/bulk/sms");

    // An idempotent PUT whose body cannot be replayed gets the 500 as is.
    let (chunks, _) = Chunked::of(4096, 1000, |i| i as u8);
    let (status, _, body) = send_with(Proto::Http1, Method::PUT, &url, &[], chunks).await;
    assert_eq!(
        (status, text(&body)),
        (StatusCode::INTERNAL_SERVER_ERROR, INTERNAL)
    );
    assert_eq!(up.hits.len(), 1, "not retried");

    // Of unknown length, far over the buffer: intact.
    let (chunks, sent) = Chunked::of(300_000, 4096, |i| (i * 31 % 251) as u8);
    let (status, _, body) = send_with(Proto::Http1, Method::POST, &url, &[], chunks).await;
    assert_eq!(status, StatusCode::OK);
    let got = Echoed::parse(&body);
    assert_eq!(got.body.len(), sent.len());
    assert!(
        got.body == sent.to_vec(),
        "the streamed body arrived intact"
    );
    assert_eq!(got.header("transfer-encoding"), Some("chunked"));

    // With a Content-Length over the buffer: intact, with its length.
    let sized: Vec<u8> = (0..50_000).map(|i| (i % 256) as u8).collect();
    let (status, _, body) = send(Method::POST, &url, &[], sized.clone()).await;
    assert_eq!(status, StatusCode::OK);
    let got = Echoed::parse(&body);
    assert!(got.body == sized, "the sized body arrived intact");
    assert_eq!(got.header("content-length"), Some("50000"));
}

// === protocols and lifecycle ===

#[tokio::test]
async fn an_h2c_client_works_through_the_proxy() {
    let (sim, up) = simulator_server(SimConfig::default()).await;
    let proxy = start_proxy(&proxy_config(&up.base(), |_| {}), None).await;
    let key = [("X-API-Key", KEY)];
    let (status, headers, body) = send_with(
        Proto::H2c,
        Method::GET,
        &proxy_url(&proxy, "/api/v1/viber-services"),
        &key,
        Full::new(Bytes::new()),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body).as_array().map(Vec::len), Some(2));
    assert!(headers.contains_key("x-request-id"));
    let template = json!({"name": "h2", "templateContent": "Hi"}).to_string();
    let (status, _, created) = send_with(
        Proto::H2c,
        Method::POST,
        &proxy_url(&proxy, "/api/v1/templates"),
        &key,
        Full::new(Bytes::from(template)),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{}", text(&created));
    assert_eq!(json(&created)["name"], "h2");
    assert_eq!(sim.stats().by_status.get(&201), Some(&1));
}

#[tokio::test]
async fn shutdown_lets_the_request_in_flight_finish() {
    let (release, held) = oneshot::channel::<()>();
    let held = Arc::new(Mutex::new(Some(held)));
    let router = Router::new().route(
        "/hold",
        get(move || {
            let held = held.lock().expect("lock").take();
            async move {
                if let Some(rx) = held {
                    let _ = rx.await;
                }
                "released"
            }
        }),
    );
    let up = Server::start(router).await;
    // A grace period longer than the test's patience: wait() returning means drained.
    let proxy = start_proxy(
        &proxy_config(&up.base(), |c| c.server.shutdown_grace_ms = 30_000),
        None,
    )
    .await;
    let addr = proxy.addr;
    let url = proxy_url(&proxy, "/hold");
    let request = tokio::spawn(async move { send(Method::GET, &url, &[], "").await });
    wait_until(
        || up.hits.len() == 1,
        PATIENCE,
        "the request reaches the upstream",
    )
    .await;

    proxy.shutdown();
    wait_until(
        || std::net::TcpStream::connect(addr).is_err(),
        PATIENCE,
        "the proxy stops accepting connections",
    )
    .await;
    let mut stopped = tokio::spawn(proxy.wait());
    // A negative check, not a synchronisation: wait() must not return while the
    // request is still held upstream.
    let early = tokio::time::timeout(Duration::from_millis(100), &mut stopped).await;
    assert!(early.is_err(), "wait() returned with a request in flight");
    assert!(!request.is_finished());

    release.send(()).expect("the upstream is waiting");
    let (status, _, body) = request.await.expect("the request task");
    assert_eq!((status, text(&body)), (StatusCode::OK, "released"));
    tokio::time::timeout(PATIENCE, stopped)
        .await
        .expect("wait() returns once drained")
        .expect("the wait task")
        .expect("a clean stop");
}

#[tokio::test]
async fn admin_health_readiness_and_metrics() {
    let dead = dead_addr().await;
    let proxy = start_proxy(
        &proxy_config(&format!("http://{dead}"), |c| {
            c.retry.backoff_base_ms = 10;
            c.retry.max_attempts = 1;
        }),
        None,
    )
    .await;
    let get_admin = |path: &'static str| {
        let url = admin_url(&proxy, path);
        async move { send(Method::GET, &url, &[], "").await }
    };

    let (status, _, body) = get_admin("/healthz").await;
    assert_eq!(
        (status, &json(&body)["status"]),
        (StatusCode::OK, &json!("ok"))
    );
    let (status, _, body) = get_admin("/readyz").await;
    assert_eq!(status, StatusCode::OK, "ready before any upstream attempt");
    assert_eq!(json(&body)["upstream"], "not tried yet");

    let (status, _, _) = send(
        Method::GET,
        &proxy_url(&proxy, "/api/v1/viber-services"),
        &[],
        "",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    // An API outage is no reason to take sluice out of service: it keeps taking sends.
    let (status, _, body) = get_admin("/readyz").await;
    assert_eq!(status, StatusCode::OK, "{}", json(&body));
    assert_eq!(json(&body)["upstream"], "unreachable");
    let (status, _, body) = get_admin("/healthz").await;
    assert_eq!(
        status,
        StatusCode::OK,
        "alive even when the upstream is not"
    );
    assert_eq!(json(&body)["upstream"], "unreachable");

    let (status, headers, body) = get_admin("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers["content-type"]
        .to_str()
        .is_ok_and(|t| t.starts_with("text/plain")));
    let metrics = text(&body);
    assert!(metrics.contains("# HELP sluice_cooldown_waiting_requests"));
    assert!(
        metrics
            .contains(r#"sluice_upstream_failures_total{reason="connect",route="passthrough"} 1"#),
        "{metrics}"
    );
}
