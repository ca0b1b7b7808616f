//! Helpers shared by the integration tests: plain HTTP/1 and h2c clients over real
//! sockets, a raw-socket exchange, a simulator served on an ephemeral port, test upstreams
//! (an echo, a scripted one) that record what reached them, an in-process proxy, and a
//! bounded `wait_until` for conditions that become true asynchronously.
//!
//! Each test binary compiles this module on its own and uses only part of it.
#![allow(dead_code)]

pub mod bin;
pub mod pg;
pub mod prom;
pub mod queue;
pub mod sim;

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri, Version};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use sluice::config::Config;
use sluice::keys::apikey::ApiKey;
use sluice::simulator::{self, SimConfig, Simulator};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Which protocol a client speaks to the server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge, in clear text (h2c).
    H2c,
}

/// Sends one request over HTTP/1.1 and reads the whole response. Panics on transport
/// errors: in a test they are failures, not outcomes to assert on.
pub async fn send(
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: impl Into<Bytes>,
) -> (StatusCode, HeaderMap, Bytes) {
    send_with(Proto::Http1, method, url, headers, Full::new(body.into())).await
}

/// Sends one request with any body (e.g. [`Chunked`] for one of unknown length) over
/// `proto` and reads the whole response.
pub async fn send_with<B>(
    proto: Proto,
    method: Method,
    url: &str,
    headers: &[(&str, &str)],
    body: B,
) -> (StatusCode, HeaderMap, Bytes)
where
    B: http_body::Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let mut request = http::Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .expect("a valid request");
    for (name, value) in headers {
        request.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
    }
    let mut builder = Client::builder(TokioExecutor::new());
    if proto == Proto::H2c {
        builder.http2_only(true);
    }
    let client = builder.build_http::<B>();
    let response = client
        .request(request)
        .await
        .expect("the request to go through");
    let expected = match proto {
        Proto::Http1 => Version::HTTP_11,
        Proto::H2c => Version::HTTP_2,
    };
    assert_eq!(response.version(), expected, "the response's protocol");
    let (parts, body) = response.into_parts();
    let bytes = body.collect().await.expect("the whole body").to_bytes();
    (parts.status, parts.headers, bytes)
}

/// A request body of unknown length (sent chunked over HTTP/1.1): the given chunks, one
/// frame each, with no size hint.
pub struct Chunked(VecDeque<Bytes>);

impl Chunked {
    /// `total` bytes of `fill`, in chunks of `chunk` bytes.
    pub fn of(total: usize, chunk: usize, fill: impl Fn(usize) -> u8) -> (Self, Bytes) {
        let all: Bytes = (0..total).map(fill).collect::<Vec<u8>>().into();
        let chunks = (0..total)
            .step_by(chunk.max(1))
            .map(|at| all.slice(at..(at + chunk).min(total)))
            .collect();
        (Self(chunks), all)
    }
}

impl http_body::Body for Chunked {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(|chunk| Ok(Frame::data(chunk))))
    }
}

/// Writes `request` (raw bytes; end its headers with `Connection: close`) on a new TCP
/// connection to `addr` and reads until the server closes it. Returns the status code,
/// the head (status line and headers, as text) and the body bytes after the head.
pub async fn raw_exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, Bytes) {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await.expect("a connection");
        stream
            .write_all(request)
            .await
            .expect("the request written");
        let mut out = Vec::new();
        stream
            .read_to_end(&mut out)
            .await
            .expect("the response read");
        out
    };
    let out = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("the server to answer and close within 10 s");
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no end of head in {:?}", String::from_utf8_lossy(&out)));
    let head = String::from_utf8_lossy(&out[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, head, Bytes::copy_from_slice(&out[split + 4..]))
}

/// Polls `cond` every few milliseconds until it holds; panics naming `what` if it does
/// not hold within `timeout`.
pub async fn wait_until(mut cond: impl FnMut() -> bool, timeout: Duration, what: &str) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting until {what}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Parses a response body as JSON, showing it when it is not.
pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(body)))
}

/// A simulator served on `127.0.0.1:<ephemeral>`; stopped when dropped.
pub struct Running {
    pub sim: Simulator,
    pub addr: SocketAddr,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Running {
    /// Starts a simulator with `cfg`.
    pub async fn start(cfg: SimConfig) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let sim = Simulator::new(cfg);
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(simulator::serve(listener, sim.clone(), async {
            let _ = rx.await;
        }));
        Running {
            sim,
            addr,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Shuts the server down gracefully and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

// === test upstreams ===

/// One request as it reached a [`Server`], and its answer once there is one.
#[derive(Clone, Debug)]
pub struct Hit {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// When the request's head reached the server's router.
    pub arrived: Instant,
    pub arrived_wall: SystemTime,
    pub answer: Option<Answer>,
}

/// The response a [`Server`] gave to one [`Hit`].
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// When the router produced the response (before it was written to the socket).
    pub at: Instant,
}

/// Every request a [`Server`] saw, in arrival order.
#[derive(Clone, Default)]
pub struct Hits(Arc<Mutex<Vec<Hit>>>);

impl Hits {
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Hit>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Requests that have arrived (answered or not).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A copy of the log.
    pub fn all(&self) -> Vec<Hit> {
        self.lock().clone()
    }

    /// The requests to `path` (query excluded), in arrival order.
    pub fn to_path(&self, path: &str) -> Vec<Hit> {
        self.lock()
            .iter()
            .filter(|h| h.uri.path() == path)
            .cloned()
            .collect()
    }
}

/// Middleware recording every request and its answer in [`Hits`].
async fn record(State(hits): State<Hits>, req: Request, next: Next) -> Response {
    let index = {
        let mut log = hits.lock();
        log.push(Hit {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            arrived: Instant::now(),
            arrived_wall: SystemTime::now(),
            answer: None,
        });
        log.len() - 1
    };
    let response = next.run(req).await;
    hits.lock()[index].answer = Some(Answer {
        status: response.status(),
        headers: response.headers().clone(),
        at: Instant::now(),
    });
    response
}

/// Any router served on `127.0.0.1:<ephemeral>` over HTTP/1.1, every request recorded in
/// [`hits`](Self::hits); stopped when dropped.
pub struct Server {
    pub addr: SocketAddr,
    pub hits: Hits,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Server {
    pub async fn start(router: Router) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
        let addr = listener.local_addr().expect("a bound address");
        let hits = Hits::default();
        let app = router.layer(middleware::from_fn_with_state(hits.clone(), record));
        let (tx, rx) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = rx.await;
                })
                .await
        });
        Server {
            addr,
            hits,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    /// The base URL (`http://127.0.0.1:<port>`), for `upstream.url`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The absolute URL of `path` (which starts with `/`).
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Shuts the server down gracefully and waits for it to finish.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.await.expect("server task").expect("server result");
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// What the [`echo`] upstream received, as it answers it (JSON).
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Echoed {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub version: String,
    /// Header names (lower case) to their values, in order.
    pub headers: BTreeMap<String, Vec<String>>,
    pub body: Vec<u8>,
}

impl Echoed {
    /// Parses an echo response body.
    pub fn parse(body: &[u8]) -> Echoed {
        serde_json::from_slice(body).unwrap_or_else(|e| {
            panic!(
                "not an echo ({e}): {}",
                String::from_utf8_lossy(&body[..body.len().min(500)])
            )
        })
    }

    /// The one value of header `name`; `None` when absent, panics when repeated.
    pub fn header(&self, name: &str) -> Option<&str> {
        let values = self.headers.get(name)?;
        assert_eq!(values.len(), 1, "header {name} repeated: {values:?}");
        Some(&values[0])
    }
}

/// Answers every request with 200 and the JSON [`Echoed`] of what arrived.
pub fn echo() -> Router {
    Router::new().fallback(echo_handler)
}

async fn echo_handler(req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .expect("the whole request body");
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (name, value) in &parts.headers {
        headers
            .entry(name.as_str().to_owned())
            .or_default()
            .push(String::from_utf8_lossy(value.as_bytes()).into_owned());
    }
    let echoed = Echoed {
        method: parts.method.to_string(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        version: format!("{:?}", parts.version),
        headers,
        body: body.to_vec(),
    };
    let mut response = Response::new(Body::from(
        serde_json::to_vec(&echoed).expect("serialisable"),
    ));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// Answers with `responses` in order, one per request (without reading its body), then
/// like [`echo`] once they are used up.
pub fn scripted(responses: Vec<Response>) -> Router {
    let script = Arc::new(Mutex::new(VecDeque::from(responses)));
    Router::new().fallback(move |req: Request| {
        let next = script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front();
        async move {
            match next {
                Some(response) => response,
                None => echo_handler(req).await,
            }
        }
    })
}

/// A response with `status`, `headers` and `body`, for [`scripted`].
pub fn canned(status: StatusCode, headers: &[(&str, &str)], body: &'static str) -> Response {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    for (name, value) in headers {
        response.headers_mut().append(
            HeaderName::from_bytes(name.as_bytes()).expect("a valid header name"),
            HeaderValue::from_str(value).expect("a valid header value"),
        );
    }
    response
}

/// An address nothing listens on: a listener's port, bound and then closed.
pub async fn dead_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a free port");
    listener.local_addr().expect("a bound address")
}

// === the proxy ===

/// A configuration for a proxy on `127.0.0.1:0` (both listeners) in front of `upstream`,
/// with no retry jitter to speak of; `tweak` adjusts the rest.
pub fn proxy_config(upstream: &str, tweak: impl FnOnce(&mut Config)) -> Config {
    let mut config = Config::default();
    config.server.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.server.admin_listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.upstream.url = upstream.to_owned();
    config.retry.hint_jitter_ms = 50;
    // No send routes: these tests are about pass-through; the queue has its own.
    config.routes = Some(Vec::new());
    tweak(&mut config);
    config.validate().expect("a valid test configuration");
    config
}

/// A proxy started by [`start_proxy`], with its own data directory (removed on drop).
pub struct TestProxy {
    pub running: sluice::app::Running,
    _dir: tempfile::TempDir,
}

impl std::ops::Deref for TestProxy {
    type Target = sluice::app::Running;
    fn deref(&self) -> &Self::Target {
        &self.running
    }
}

impl TestProxy {
    /// Waits until the proxy's servers have drained (after `shutdown()`).
    pub async fn wait(self) -> std::io::Result<()> {
        self.running.wait().await
    }
}

/// Starts the proxy in-process with `config` (in a fresh data directory) and, if given,
/// its own API key.
pub async fn start_proxy(config: &Config, own_key: Option<&str>) -> TestProxy {
    let key = own_key.map(|k| {
        ApiKey::load(Some(k.to_owned()), None)
            .expect("a valid key")
            .expect("a key")
    });
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut config = config.clone();
    config.server.data_dir = dir.path().to_path_buf();
    config.queue.synchronous = sluice::queue::store::Synchronous::Normal;
    let running = sluice::app::start(&config, key)
        .await
        .expect("the proxy to start");
    TestProxy { running, _dir: dir }
}

/// The proxy's URL of `path`.
pub fn proxy_url(running: &sluice::app::Running, path: &str) -> String {
    format!("http://{}{path}", running.addr)
}

/// The admin listener's URL of `path`.
pub fn admin_url(running: &sluice::app::Running, path: &str) -> String {
    format!("http://{}{path}", running.admin_addr)
}

/// A simulator served by a recording [`Server`]: the world (`sim`) and its front door.
pub async fn simulator_server(cfg: SimConfig) -> (Simulator, Server) {
    let sim = Simulator::new(cfg);
    let server = Server::start(sim.router()).await;
    (sim, server)
}
