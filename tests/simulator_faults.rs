//! The simulator's staged faults over real sockets: outages (refused connections, open
//! ones closed, then the same address again), connection resets after a send was
//! accepted, late answers, capacity flips and the control endpoint.
//!
//! Durations here are short and real (a socket cannot follow paused time); state is
//! never waited for with a sleep, only polled for with a bounded wait.

mod common;

use std::future::Future;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use common::{json, Running};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use sluice::simulator::SimConfig;
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
