//! Assembling a running proxy from a [`Config`]: listeners, routers, shared state.
//!
//! `serve`, `demo` and the integration tests all start the proxy through [`start`], so
//! what the tests exercise is what ships.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::Router;
use http::Response;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Config;
use crate::edge::admin;
use crate::edge::health::Health;
use crate::edge::layers::{self, Limits};
use crate::edge::request_id::{self, RouteName};
use crate::edge::server::{self, Observed, ServeOptions};
use crate::keys::apikey::ApiKey;
use crate::keys::keystate::KeyState;
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy, Settings};
use crate::queue::jobs_api;
use crate::queue::store::StoreError;
use crate::queue::{Background, Queue};
use crate::routes::RouteKind;
use crate::upstream::{self, Upstream};
use crate::validate;

/// Connections the admin listener keeps open at most (scrapers and probes).
const ADMIN_CONNECTIONS: usize = 64;
/// At shutdown, waiting clients are answered this long (at most a quarter of the grace)
/// before the grace period ends, so that the answer is out before connections drop.
const ANSWER_MARGIN: Duration = Duration::from_secs(1);
/// After the grace period, how long tasks may take to notice the stop.
const TASKS_AFTER_GRACE: Duration = Duration::from_secs(2);

/// A started proxy: its bound addresses and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    /// Cancelled first at shutdown: the listeners close and connections drain.
    stop_accepting: CancellationToken,
    /// Cancelled once the connections are done: the dispatcher and background tasks stop.
    stop_work: CancellationToken,
    queue: Queue,
    health: Arc<Health>,
    grace: Duration,
    tracker: TaskTracker,
    tasks: Vec<JoinHandle<io::Result<()>>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind { addr: SocketAddr, source: io::Error },
    #[error(transparent)]
    Upstream(#[from] upstream::BuildError),
    #[error("the durable queue cannot be used: {0}")]
    Store(#[from] StoreError),
}

/// State of the main listener's front handler.
#[derive(Clone)]
struct Front {
    proxy: Proxy,
    queue: Queue,
    metrics: Arc<Metrics>,
    own_key: Option<ApiKey>,
    max_body: u64,
}

/// Binds both listeners and starts serving.
pub async fn start(config: &Config, own_key: Option<ApiKey>) -> Result<Running, StartError> {
    let bind = |addr: SocketAddr| async move {
        TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })
    };
    let listener = bind(config.server.listen).await?;
    let admin_listener = bind(config.server.admin_listen).await?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.server.listen,
        source,
    })?;
    let admin_addr = admin_listener
        .local_addr()
        .map_err(|source| StartError::Bind {
            addr: config.server.admin_listen,
            source,
        })?;

    let metrics = Arc::new(Metrics::new());
    let mut labels: Vec<&str> = config
        .routes
        .iter()
        .flatten()
        .map(|r| r.name.as_str())
        .collect();
    let defaults = crate::routes::defaults();
    if config.routes.is_none() {
        labels.extend(defaults.iter().map(|r| r.name.as_str()));
    }
    metrics.init(&labels);
    let health = Arc::new(Health::new(config.server.ready_requires_upstream));
    let upstream = Upstream::new(&config.upstream)?;
    let keys = Arc::new(KeyState::new(config.retry_policy(), metrics.clone()));
    let stop_accepting = CancellationToken::new();
    let stop_work = CancellationToken::new();
    let tracker = TaskTracker::new();
    let queue = Queue::open(
        config,
        upstream.clone(),
        keys.clone(),
        metrics.clone(),
        own_key.clone(),
        health.clone(),
        Background {
            stop: stop_work.clone(),
            tasks: tracker.clone(),
        },
    )
    .await?;
    let proxy = Proxy::new(
        upstream,
        Settings {
            keys: keys.clone(),
            own_key: own_key.clone(),
            max_body: config.server.max_body_bytes,
            retry_buffer: config.upstream.retry_buffer_bytes,
            health: health.clone(),
        },
        metrics.clone(),
    );

    let own_key_for_support = own_key.clone();
    let s = &config.server;
    let main = Router::new()
        .fallback(front)
        .with_state(Front {
            proxy,
            queue: queue.clone(),
            metrics: metrics.clone(),
            own_key,
            max_body: s.max_body_bytes,
        })
        .merge(jobs_api::router(queue.clone()))
        .merge(crate::delivery::support::router(
            queue.delivery().clone(),
            own_key_for_support,
        ))
        .layer(request_id::RequestIdLayer::new(metrics.clone()));
    let main = layers::front(
        main,
        Limits {
            max_concurrent: s.max_concurrent_requests,
            body_read_timeout: Duration::from_millis(s.body_read_timeout_ms),
            body_min_rate: s.body_min_rate_bytes_per_sec,
        },
        metrics.clone(),
    );
    let admin = admin::router(metrics.clone(), keys, queue.clone(), health.clone());

    let opts = ServeOptions {
        header_read_timeout: Duration::from_millis(s.header_read_timeout_ms),
        first_byte_timeout: Duration::from_millis(s.first_byte_timeout_ms),
        idle_timeout: Duration::from_millis(s.idle_timeout_ms),
        max_connections: match s.max_connections {
            0 => server::default_max_connections(),
            n => n,
        },
        grace: Duration::from_millis(s.shutdown_grace_ms),
    };
    // The admin listener has its own (small) connection allowance, so a flood on the main
    // listener never locks the scraper and the probes out.
    let admin_opts = ServeOptions {
        max_connections: ADMIN_CONNECTIONS,
        ..opts
    };
    let observed = |listener| Observed {
        listener,
        metrics: metrics.clone(),
    };
    let tasks = vec![
        tokio::spawn(server::serve(
            listener,
            main,
            opts,
            stop_accepting.clone(),
            tracker.clone(),
            observed("main"),
        )),
        tokio::spawn(server::serve(
            admin_listener,
            admin,
            admin_opts,
            stop_accepting.clone(),
            tracker.clone(),
            observed("admin"),
        )),
    ];
    tracing::info!(%addr, %admin_addr, upstream = %config.upstream.url, max_connections = opts.max_connections, "sluice listening");
    Ok(Running {
        addr,
        admin_addr,
        metrics,
        stop_accepting,
        stop_work,
        queue,
        health,
        grace: opts.grace,
        tracker,
        tasks,
    })
}

/// Sends matching a route go to the queue; template creations are checked and pass
/// through; everything else passes through.
async fn front(State(front): State<Front>, req: Request) -> Response<Body> {
    let route = front
        .queue
        .routes()
        .find(req.method(), req.uri().path())
        .cloned();
    let req = match route {
        Some(route) if route.kind == RouteKind::Template => {
            let checked = validate::gate::template(
                &route,
                &front.metrics,
                front.max_body,
                front.own_key.as_ref(),
                req,
            )
            .await;
            let mut resp = match checked {
                Ok(req) => proxy::handle(State(front.proxy), req).await,
                Err(resp) => resp,
            };
            resp.extensions_mut().insert(RouteName(route.label()));
            return resp;
        }
        Some(route) => match front.queue.accept(&route, req).await {
            Ok(resp) => return resp,
            Err(req) => req,
        },
        None => req,
    };
    proxy::handle(State(front.proxy), req).await
}

// === impl Running ===

impl Running {
    /// Starts a graceful shutdown: `/readyz` turns 503, the listeners close, connections
    /// finish their requests, every client waiting for its send is answered shortly before
    /// the grace period ends, and the dispatcher keeps sending until then.
    pub fn shutdown(&self) {
        self.health.set_shutting_down();
        let margin = (self.grace / 4).min(ANSWER_MARGIN);
        self.queue
            .answer_by(tokio::time::Instant::now() + self.grace.saturating_sub(margin));
        self.stop_accepting.cancel();
    }

    /// Waits until both servers have drained (at most the grace period), then stops the
    /// dispatcher and waits (briefly) for the tasks still running.
    pub async fn wait(self) -> io::Result<()> {
        let mut result = Ok(());
        for task in self.tasks {
            if let Err(e) = task.await.map_err(io::Error::other).and_then(|r| r) {
                result = Err(e);
            }
        }
        self.stop_work.cancel();
        self.tracker.close();
        if tokio::time::timeout(TASKS_AFTER_GRACE, self.tracker.wait())
            .await
            .is_err()
        {
            tracing::warn!("tasks still running after the grace period; leaving them");
        }
        result
    }
}
