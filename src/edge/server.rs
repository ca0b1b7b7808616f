//! The HTTP server loop shared by every listener (proxy, admin): connections, their limits
//! and their end.
//!
//! hyper-util's `auto` builder serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on
//! the same port. What this file adds around it, so that idle or hostile clients cannot
//! take the server down:
//! - **a connection cap** below the process's descriptor limit: when it is reached, the
//!   connection idle the longest is closed to make room (none idle: the new one is
//!   refused), so a flood of silent sockets never starves real requests;
//! - **a first-byte timeout**: a connection that sends nothing is closed (protocol
//!   detection would otherwise wait for ever); then hyper's header read timeout bounds
//!   the request head;
//! - **an idle keep-alive timeout**: a connection with no request in flight is closed
//!   after `idle_timeout`.
//!
//! On shutdown the listener closes first (no new connections), every connection is asked
//! to finish its requests and close, and after `grace` what is still open is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use std::convert::Infallible;

use bytes::Bytes;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;

/// Limits of one server.
#[derive(Debug, Clone, Copy)]
pub struct ServeOptions {
    /// Time a client has to send its request headers once it has started.
    pub header_read_timeout: Duration,
    /// Time a new connection has to send its first byte.
    pub first_byte_timeout: Duration,
    /// A connection with no request in flight is closed after this long.
    pub idle_timeout: Duration,
    /// Most open connections; at the cap the longest-idle one is closed for a new one.
    pub max_connections: usize,
    /// On shutdown, how long open connections may take to finish.
    pub grace: Duration,
}

/// The listener's name in metrics (`main`, `admin`) and where its figures go.
#[derive(Clone)]
pub struct Observed {
    pub listener: &'static str,
    pub metrics: Arc<Metrics>,
}

/// The open connections of one listener.
#[derive(Default)]
struct Conns {
    open: Mutex<HashMap<u64, Arc<Conn>>>,
    /// Woken when the last connection is gone.
    empty: Notify,
}

/// One open connection, as the accept loop and its own task see it.
struct Conn {
    id: u64,
    state: Mutex<ConnState>,
    /// Cancelled to ask the connection to finish what it is doing and close.
    close: CancellationToken,
}

struct ConnState {
    /// Requests in flight.
    busy: usize,
    /// Since when no request is in flight.
    idle_since: Instant,
}

/// The service as hyper calls it, counting the requests in flight on its connection.
struct Tracked<S> {
    inner: TowerToHyperService<S>,
    conn: Arc<Conn>,
}

/// What a listener can serve: a router, or one inside layers ([`crate::edge::layers::front`]).
pub trait Serve:
    tower::Service<
        http::Request<Incoming>,
        Response = http::Response<Self::Body>,
        Error = Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
    type Body: http_body::Body<Data = Bytes, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static;
}

impl<S, B> Serve for S
where
    S: tower::Service<http::Request<Incoming>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + Sync
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Body = B;
}

/// Ends a request's "in flight" however its future ends.
struct Busy(Arc<Conn>);

/// Why a connection was closed by the server, a metric label.
#[derive(Debug, Clone, Copy)]
enum Closed {
    FirstByte,
    Idle,
    Evicted,
    Refused,
}

/// Serves `router` on `listener` until `shutdown` is cancelled, then drains. Connection
/// tasks are spawned on `tracker`.
pub async fn serve<S: Serve>(
    listener: TcpListener,
    router: S,
    opts: ServeOptions,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    observed: Observed,
) -> io::Result<()> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder.http2().timer(TokioTimer::new());
    let conns = Arc::new(Conns::default());
    let hard_stop = CancellationToken::new();
    let mut next_id = 0u64;
    let open_gauge = observed
        .metrics
        .connections_open
        .with_label_values(&[observed.listener]);

    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // EMFILE and friends: pause briefly instead of spinning on the error.
                    tracing::warn!(error = %e, listener = observed.listener, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.cancelled() => break,
        };
        if conns.len() >= opts.max_connections && !conns.evict_idlest() {
            observed.closed(Closed::Refused);
            tracing::warn!(
                listener = observed.listener,
                max = opts.max_connections,
                "connection cap reached with every connection busy; refusing one"
            );
            continue;
        }
        if conns.len() >= opts.max_connections {
            observed.closed(Closed::Evicted);
        }
        let _ = stream.set_nodelay(true);
        next_id += 1;
        let conn = conns.add(next_id);
        open_gauge.inc();
        let task = connection(
            stream,
            router.clone(),
            builder.clone(),
            Arc::clone(&conn),
            opts,
            shutdown.clone(),
            hard_stop.clone(),
            observed.clone(),
        );
        let conns = Arc::clone(&conns);
        let gauge = open_gauge.clone();
        tracker.spawn(async move {
            if let Err(e) = task.await {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
            conns.remove(conn.id);
            gauge.dec();
        });
    }
    drop(listener);
    let drained = conns.drained();
    tokio::select! {
        () = drained => tracing::debug!(listener = observed.listener, "all connections drained"),
        () = tokio::time::sleep(opts.grace) => {
            tracing::warn!(grace_ms = opts.grace.as_millis() as u64, listener = observed.listener, "grace period over; dropping open connections");
            hard_stop.cancel();
        }
    }
    Ok(())
}

/// Serves one connection: its first byte, then HTTP until it ends, is idle too long, is
/// asked to close (evicted, shutdown) or dropped (grace over).
#[allow(clippy::too_many_arguments)]
async fn connection<S: Serve>(
    stream: TcpStream,
    router: S,
    builder: auto::Builder<TokioExecutor>,
    conn: Arc<Conn>,
    opts: ServeOptions,
    shutdown: CancellationToken,
    hard_stop: CancellationToken,
    observed: Observed,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let mut first = [0u8; 1];
    tokio::select! {
        peeked = tokio::time::timeout(opts.first_byte_timeout, stream.peek(&mut first)) => match peeked {
            Ok(Ok(n)) if n > 0 => {}
            Ok(Ok(_)) | Ok(Err(_)) => return Ok(()),
            Err(_) => {
                observed.closed(Closed::FirstByte);
                return Ok(());
            }
        },
        _ = conn.close.cancelled() => return Ok(()),
        _ = shutdown.cancelled() => return Ok(()),
    }
    let service = Tracked {
        inner: TowerToHyperService::new(router),
        conn: Arc::clone(&conn),
    };
    let mut http = pin!(builder.serve_connection(TokioIo::new(stream), service));
    let mut closing = false;
    // One timer for the connection's life, looked at only when it fires (not at every
    // request): idle, it closes the connection once `idle_timeout` has passed since its
    // last request ended, or waits for that moment; busy, it looks again a timeout later.
    let next_look = |conn: &Conn| {
        conn.idle_deadline(opts.idle_timeout)
            .unwrap_or_else(|| Instant::now() + opts.idle_timeout)
    };
    let mut idle = pin!(tokio::time::sleep_until(next_look(&conn)));
    let mut evicted = pin!(conn.close.cancelled());
    let mut stopping = pin!(shutdown.cancelled());
    let mut dropped = pin!(hard_stop.cancelled());
    loop {
        tokio::select! {
            biased;
            result = http.as_mut() => return result,
            () = idle.as_mut(), if !closing => {
                if conn.idle_for() >= Some(opts.idle_timeout) {
                    observed.closed(Closed::Idle);
                    http.as_mut().graceful_shutdown();
                    closing = true;
                } else {
                    idle.as_mut().reset(next_look(&conn));
                }
            }
            () = evicted.as_mut(), if !closing => {
                http.as_mut().graceful_shutdown();
                closing = true;
            }
            () = stopping.as_mut(), if !closing => {
                http.as_mut().graceful_shutdown();
                closing = true;
            }
            () = dropped.as_mut() => return Ok(()),
        }
    }
}

// === impl Observed ===

impl Observed {
    fn closed(&self, why: Closed) {
        let reason = match why {
            Closed::FirstByte => "first_byte_timeout",
            Closed::Idle => "idle_timeout",
            Closed::Evicted => "evicted_at_cap",
            Closed::Refused => "refused_at_cap",
        };
        self.metrics
            .connections_closed
            .with_label_values(&[self.listener, reason])
            .inc();
    }
}

// === impl Conns ===

impl Conns {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn add(&self, id: u64) -> Arc<Conn> {
        let conn = Arc::new(Conn {
            id,
            state: Mutex::new(ConnState {
                busy: 0,
                idle_since: Instant::now(),
            }),
            close: CancellationToken::new(),
        });
        self.lock().insert(id, Arc::clone(&conn));
        conn
    }

    fn remove(&self, id: u64) {
        let mut open = self.lock();
        open.remove(&id);
        if open.is_empty() {
            self.empty.notify_waiters();
        }
    }

    /// Asks the connection idle the longest (not already asked) to close; false if none is
    /// idle.
    fn evict_idlest(&self) -> bool {
        let victim = self
            .lock()
            .values()
            .filter(|c| !c.close.is_cancelled())
            .filter_map(|c| Some((c.idle_for()?, Arc::clone(c))))
            .max_by_key(|(idle, c)| (*idle, std::cmp::Reverse(c.id)));
        match victim {
            Some((_, conn)) => {
                conn.close.cancel();
                true
            }
            None => false,
        }
    }

    /// Resolves once no connection is open.
    async fn drained(&self) {
        loop {
            let empty = self.empty.notified();
            if self.lock().is_empty() {
                return;
            }
            empty.await;
        }
    }
}

// === impl Conn ===

impl Conn {
    fn state(&self) -> std::sync::MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// How long no request has been in flight; `None` while one is.
    fn idle_for(&self) -> Option<Duration> {
        let s = self.state();
        (s.busy == 0).then(|| s.idle_since.elapsed())
    }

    fn idle_deadline(&self, idle_timeout: Duration) -> Option<Instant> {
        let s = self.state();
        (s.busy == 0).then(|| s.idle_since + idle_timeout)
    }

    fn begin(&self) {
        self.state().busy += 1;
    }

    fn end(&self) {
        let mut s = self.state();
        s.busy = s.busy.saturating_sub(1);
        s.idle_since = Instant::now();
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.0.end();
    }
}

// === impl Tracked ===

impl<S: Serve> hyper::service::Service<http::Request<Incoming>> for Tracked<S> {
    type Response = http::Response<S::Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.conn.begin();
        let busy = Busy(Arc::clone(&self.conn));
        let inner = self.inner.call(req);
        Box::pin(async move {
            let _busy = busy;
            inner.await
        })
    }
}

/// The default connection cap: three quarters of the process's open-file limit (the rest
/// is for the store, the upstream pool and the admin listener), at least 64.
pub fn default_max_connections() -> usize {
    let soft = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3))
                .and_then(|v| v.parse::<usize>().ok())
        })
        .unwrap_or(1024);
    (soft / 4 * 3).clamp(64, 100_000)
}
