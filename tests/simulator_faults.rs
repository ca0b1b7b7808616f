//! The simulator's staged faults over real sockets: outages (refused connections, open
//! ones closed, then the same address again), connection resets after a send was
//! accepted, late answers, capacity flips and the control endpoint.
//!
//! Durations here are short and real where the simulator arms timers of its own (an
//! outage, a late answer), and paused where it does not (capacity flips); state is never
//! waited for with a sleep, only polled for with a bounded wait.

mod common;

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::sim::{assert_recent, bulk, bulk_body, call, campaign, messages, phones, KEY};
use common::{json, Running};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use sluice::simulator::SimConfig;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::{timeout, Instant};

/// Polls `cond` every few milliseconds until it holds; panics naming `what` if it does
/// not within `limit`.
async fn eventually<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// True when connecting to `addr` is refused (nothing listens there). A connection
/// reset means it was caught in the backlog of a listener being closed: not yet.
async fn refused(addr: SocketAddr) -> bool {
    match TcpStream::connect(addr).await {
        Err(e) => e.kind() == ErrorKind::ConnectionRefused,
        Ok(_) => false,
    }
}

/// A keep-alive HTTP/1.1 connection of its own (no pool): the handle to send on it.
async fn connection(addr: SocketAddr) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let stream = TcpStream::connect(addr).await.expect("a connection");
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("an HTTP/1.1 handshake");
    tokio::spawn(conn);
    sender
}

fn get(addr: SocketAddr, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .expect("a request")
}

#[tokio::test]
async fn an_outage_refuses_connections_closes_open_ones_then_listens_again() {
    let run = Running::start(SimConfig::default()).await;
    let addr = run.addr;
    // A pooled client holding an idle keep-alive connection, and a connection of our own.
    let pool = Client::builder(TokioExecutor::new()).build_http::<Empty<Bytes>>();
    let stats = || {
        let uri = format!("http://{addr}/_sim/stats").parse().unwrap();
        pool.get(uri)
    };
    assert_eq!(stats().await.expect("an answer").status(), StatusCode::OK);
    let mut own = connection(addr).await;
    let answer = own.send_request(get(addr, "/_sim/stats")).await;
    assert_eq!(answer.expect("an answer").status(), StatusCode::OK);

    run.sim.start_outage(Duration::from_secs(3));
    assert_eq!(run.sim.stats().outages, 1);
    eventually(Duration::from_secs(2), "connecting is refused", || {
        refused(addr)
    })
    .await;
    // The idle connection was closed by the simulator: it cannot carry a request.
    let ready = timeout(Duration::from_secs(2), own.ready()).await;
    assert!(
        matches!(ready, Ok(Err(_))),
        "the open connection is closed: {ready:?}"
    );
    let pooled = stats().await;
    assert!(pooled.is_err(), "the pool's next request fails: {pooled:?}");
    let left = run.sim.outage_remaining();
    assert!(
        left > Duration::ZERO && left <= Duration::from_secs(3),
        "{left:?}"
    );

    // After the outage the same address answers again, the pool included.
    eventually(
        Duration::from_secs(10),
        "the simulator listens again",
        || async { !refused(addr).await },
    )
    .await;
    assert_eq!(run.sim.outage_remaining(), Duration::ZERO);
    let answer = stats().await.expect("an answer after the outage");
    assert_eq!(answer.status(), StatusCode::OK);
    let body = answer.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(json(&body)["outages"], 1);
    run.stop().await;
}

/// A single send of `phone` to campaign `id`, with the key.
fn single(addr: SocketAddr, id: u64, phone: &str) -> Request<Full<Bytes>> {
    let body = json!({ "phoneNumber": phone }).to_string();
    Request::post(format!("http://{addr}/api/v1/campaigns/{id}/messages/sms"))
        .header("x-api-key", KEY)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body)))
        .expect("a request")
}

#[tokio::test]
async fn a_reset_send_is_accepted_but_never_answered() {
    let run = Running::start(SimConfig {
        reset_rate: 1.0,
        ..SimConfig::default()
    })
    .await;
    // Creating and starting campaigns are not sends: answered as usual.
    let bulk_id = campaign(&run, KEY, "Bulk", "SMS", true).await;
    let single_id = campaign(&run, KEY, "Transactional", "SMS", true).await;
    let to = phones(0, 2);

    // A bulk send on a raw socket: not one byte comes back before the connection ends.
    let body = bulk_body(&to);
    let request = format!(
        "POST /api/v1/campaigns/{bulk_id}/bulk/sms HTTP/1.1\r\nHost: sim\r\nX-API-Key: {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut stream = TcpStream::connect(run.addr).await.expect("a connection");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the connection to end, not hang");
    assert!(
        answer.is_empty(),
        "no answer at all: {:?}",
        String::from_utf8_lossy(&answer)
    );
    if let Err(e) = read {
        assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{e}");
    }

    // A single send on a keep-alive connection: the client sees it end, no response.
    let mut own = connection(run.addr).await;
    let sent = timeout(
        Duration::from_secs(10),
        own.send_request(single(run.addr, single_id, &to[0])),
    )
    .await
    .expect("the connection to end, not hang");
    let err = sent.expect_err("no response");
    assert!(err.is_incomplete_message(), "{err}");

    // Both sends were accepted: their messages are listed with when they were accepted.
    let stats = run.sim.stats();
    assert_eq!(
        (
            stats.resets,
            stats.accepted_sends,
            stats.recipients_accepted
        ),
        (2, 2, 3)
    );
    assert_eq!(
        (stats.requests, stats.by_status.get(&202)),
        (4, None),
        "resets are not answers: {stats:?}"
    );
    let listed = messages(&run, &to[0]).await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert_eq!(
        (&listed[0]["campaignId"], &listed[1]["campaignId"]),
        (&json!(bulk_id), &json!(single_id))
    );
    for message in &listed {
        assert_recent(&message["createdAt"]);
    }
    assert_eq!(messages(&run, &to[1]).await.len(), 1);
    run.stop().await;
}

#[tokio::test]
async fn a_late_answer_comes_after_the_delay_its_message_listed_before() {
    let run = Running::start(SimConfig::default()).await;
    let id = campaign(&run, KEY, "Transactional", "SMS", true).await;
    let delay = Duration::from_secs(2);
    run.sim.set_answer_delay(delay);
    let to = phones(0, 1).remove(0);

    let started = Instant::now();
    let mut own = connection(run.addr).await;
    let request = own.send_request(single(run.addr, id, &to));
    let answer = tokio::spawn(request);
    let (run_ref, to_ref) = (&run, to.as_str());
    eventually(delay, "the message is listed", move || async move {
        messages(run_ref, to_ref).await.len() == 1
    })
    .await;
    assert!(!answer.is_finished(), "answered before the delay");
    assert_eq!(run.sim.stats().delayed_answers, 1);

    let response = answer.await.unwrap().expect("an answer, late");
    assert!(started.elapsed() >= delay, "{:?}", started.elapsed());
    assert_eq!(response.status(), StatusCode::CREATED);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let listed = messages(&run, &to).await;
    assert_eq!(json(&body)["messageId"], listed[0]["messageId"]);
    run.stop().await;
}

#[tokio::test]
async fn an_outage_leaves_a_request_in_flight_unanswered() {
    let run = Running::start(SimConfig {
        answer_delay: Duration::from_secs(60),
        ..SimConfig::default()
    })
    .await;
    let id = campaign(&run, KEY, "Transactional", "SMS", true).await;
    let to = phones(0, 1).remove(0);
    let mut own = connection(run.addr).await;
    let answer = tokio::spawn(own.send_request(single(run.addr, id, &to)));
    common::wait_until(
        || run.sim.stats().delayed_answers == 1,
        Duration::from_secs(10),
        "the send is processed and its answer held back",
    )
    .await;

    run.sim.start_outage(Duration::from_millis(500));
    let cut = timeout(Duration::from_secs(10), answer)
        .await
        .expect("cut off by the outage, not answered after the delay")
        .unwrap();
    assert!(cut.is_err(), "no answer: {cut:?}");

    // It had been accepted: once the simulator listens again, the message is listed.
    let addr = run.addr;
    eventually(
        Duration::from_secs(10),
        "the simulator listens again",
        || async move { !refused(addr).await },
    )
    .await;
    assert_eq!(messages(&run, &to).await.len(), 1);
    run.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_still_delivers_a_late_answer() {
    let run = Running::start(SimConfig {
        answer_delay: Duration::from_millis(500),
        ..SimConfig::default()
    })
    .await;
    let id = campaign(&run, KEY, "Transactional", "SMS", true).await;
    let (addr, to) = (run.addr, phones(0, 1).remove(0));
    let mut own = connection(addr).await;
    let answer = tokio::spawn(own.send_request(single(addr, id, &to)));
    common::wait_until(
        || run.sim.stats().delayed_answers == 1,
        Duration::from_secs(10),
        "the send is processed and its answer held back",
    )
    .await;
    run.stop().await;
    let response = answer
        .await
        .unwrap()
        .expect("the answer, despite the shutdown");
    assert_eq!(response.status(), StatusCode::CREATED);
    assert!(refused(addr).await, "nothing listens after the shutdown");
}

// Paused time over sockets: nothing in the server or the client arms a timer here, so
// the clock moves only when the test advances it.
#[tokio::test(start_paused = true)]
async fn capacity_flips_alternate_201_and_429_by_period() {
    let period = Duration::from_secs(10);
    let run = Running::start(SimConfig {
        retry_after: 7,
        capacity_flip: Some(period),
        ..SimConfig::default()
    })
    .await;
    let id = campaign(&run, KEY, "Transactional", "SMS", true).await;
    let path = format!("/api/v1/campaigns/{id}/messages/sms");
    let mut seen = Vec::new();
    for n in 0..5 {
        let body = json!({ "phoneNumber": phones(n, 1)[0] }).to_string();
        let (status, headers, body) = call(&run, Method::POST, &path, Some(KEY), body).await;
        if status == StatusCode::TOO_MANY_REQUESTS {
            assert_eq!(headers["retry-after"], "7");
            let expected = json!({"error": "Rate limit exceeded",
                "message": "Too many pending messages. You have 50000 pending messages and \
                            requested 1 more. Maximum allowed: 50000. Available capacity: 0.",
                "currentPending": 50000, "requestedCount": 1, "maxAllowed": 50000,
                "availableCapacity": 0, "retryAfterSeconds": 7});
            assert_eq!(json(&body), expected);
        }
        seen.push(status.as_u16());
        tokio::time::advance(period).await;
    }
    assert_eq!(seen, [201, 429, 201, 429, 201]);
    let stats = run.sim.stats();
    assert_eq!((stats.accepted_sends, stats.rate_limited), (3, 2));

    run.sim.set_capacity_flip(None);
    let body = json!({ "phoneNumber": phones(9, 1)[0] }).to_string();
    let (status, _, _) = call(&run, Method::POST, &path, Some(KEY), body).await;
    assert_eq!(
        status,
        StatusCode::CREATED,
        "flips off: the full period is over"
    );
    run.stop().await;
}

/// `POST /_sim/control` with `body`: the status and the JSON answer.
async fn control(run: &Running, body: Value) -> (StatusCode, Value) {
    let url = run.url("/_sim/control");
    let (status, _, answer) = common::send(Method::POST, &url, &[], body.to_string()).await;
    (status, json(&answer))
}

#[tokio::test]
async fn the_control_endpoint_applies_and_reports_settings() {
    let run = Running::start(SimConfig {
        drain_rate: 0.0,
        ..SimConfig::default()
    })
    .await;
    let url = run.url("/_sim/control");
    let (status, _, body) = common::send(Method::GET, &url, &[], "").await;
    assert_eq!(status, StatusCode::OK);
    let defaults = json!({"outageRemainingSecs": 0.0, "resetRate": 0.0, "answerDelayMs": 0,
        "capacityFlipSecs": null, "failRate": 0.0, "maxPending": 50000});
    assert_eq!(json(&body), defaults);

    let change = json!({"resetRate": 0.25, "answerDelayMs": 300, "capacityFlipSecs": 30,
        "failRate": 0.0, "maxPending": 5});
    let (status, settings) = control(&run, change).await;
    assert_eq!(status, StatusCode::OK);
    let changed = json!({"outageRemainingSecs": 0.0, "resetRate": 0.25, "answerDelayMs": 300,
        "capacityFlipSecs": 30.0, "failRate": 0.0, "maxPending": 5});
    assert_eq!(settings, changed);

    // Applied: the next send waits 300 ms and meets the new maxAllowed (the first flip
    // period is open).
    let (_, settings) = control(&run, json!({"resetRate": 0})).await;
    assert_eq!(settings["answerDelayMs"], 300, "what is not given stays");
    let id = campaign(&run, KEY, "Bulk", "SMS", true).await;
    let started = Instant::now();
    let (status, _, body) = bulk(&run, id, "sms", bulk_body(&phones(0, 6))).await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(json(&body)["maxAllowed"], 5);
    assert_eq!(run.sim.stats().delayed_answers, 1);

    // `null` (or 0) turns the flips off.
    let (_, settings) = control(&run, json!({"capacityFlipSecs": null})).await;
    assert_eq!(settings["capacityFlipSecs"], Value::Null);
    let (_, settings) = control(&run, json!({"capacityFlipSecs": 5})).await;
    assert_eq!(settings["capacityFlipSecs"], 5.0);
    let (_, settings) = control(&run, json!({"capacityFlipSecs": 0})).await;
    assert_eq!(settings["capacityFlipSecs"], Value::Null);

    // Unknown fields and bad values are refused in the API's envelope; nothing changes.
    let (status, refused) = control(&run, json!({"maxPending": 9, "bogus": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(refused["error"], "Bad Request");
    let message = refused["message"].as_str().unwrap();
    assert!(message.contains("unknown field `bogus`"), "{message}");
    let (status, refused) = control(&run, json!({"maxPending": 9, "resetRate": 2})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let expected = json!({"error": "Bad Request", "message": "Invalid control settings",
        "validationErrors": {"resetRate": "must be a number from 0 to 1"}});
    assert_eq!(refused, expected);
    let (status, _, body) = common::send(Method::GET, &url, &[], "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(json(&body)["maxPending"], 5);
    run.stop().await;
}

#[tokio::test]
async fn an_outage_from_the_control_endpoint_starts_once_it_has_answered() {
    let run = Running::start(SimConfig::default()).await;
    let addr = run.addr;
    let mut own = connection(addr).await;
    let request = Request::post(format!("http://{addr}/_sim/control"))
        .body(Full::new(Bytes::from(r#"{"outageSecs": 2}"#)))
        .unwrap();
    let response = own.send_request(request).await.expect("the answer");
    assert_eq!(response.status(), StatusCode::OK);
    // The answer says its connection ends there: the outage waits for that.
    assert_eq!(response.headers()["connection"], "close");
    let body = response.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(json(&body)["outageRemainingSecs"], 2.0);
    let ready = timeout(Duration::from_secs(2), own.ready()).await;
    assert!(
        matches!(ready, Ok(Err(_))),
        "the connection closed: {ready:?}"
    );

    eventually(Duration::from_secs(2), "connecting is refused", || {
        refused(addr)
    })
    .await;
    assert_eq!(run.sim.stats().outages, 1);
    eventually(
        Duration::from_secs(10),
        "the simulator listens again",
        || async move { !refused(addr).await },
    )
    .await;
    run.stop().await;
}
