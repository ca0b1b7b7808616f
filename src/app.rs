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
use axum::middleware::from_fn_with_state;
use axum::Router;
use http::Response;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::apikey::ApiKey;
use crate::config::Config;
use crate::keystate::KeyState;
use crate::metrics::Metrics;
use crate::proxy::{self, Proxy, Settings};
use crate::queue::jobs_api;
use crate::queue::store::StoreError;
use crate::queue::Queue;
use crate::request_id::{self, RouteName};
use crate::routes::RouteKind;
use crate::server::{self, ServeOptions};
use crate::upstream::{self, Upstream};
use crate::validate;

/// A started proxy: its bound addresses and the handle to stop it.
pub struct Running {
    pub addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    health: Arc<Health>,
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
    let health = Arc::new(Health::default());
    let upstream = Upstream::new(&config.upstream)?;
    let keys = Arc::new(KeyState::new(config.retry_policy(), metrics.clone()));
    let shutdown = CancellationToken::new();
    let queue = Queue::open(
        config,
        upstream.clone(),
        keys.clone(),
        metrics.clone(),
        own_key.clone(),
        health.clone(),
        shutdown.clone(),
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

    let main = Router::new()
        .fallback(front)
        .with_state(Front {
            proxy,
            queue: queue.clone(),
            metrics: metrics.clone(),
            own_key,
            max_body: config.server.max_body_bytes,
        })
        .merge(jobs_api::router(queue.clone()))
        .layer(from_fn_with_state(metrics.clone(), request_id::layer));
    let admin = admin::router(metrics.clone(), keys, queue, health.clone());

    let opts = ServeOptions {
        header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
        grace: Duration::from_millis(config.server.shutdown_grace_ms),
    };
    let tasks = vec![
        tokio::spawn(server::serve(listener, main, opts, shutdown.clone())),
        tokio::spawn(server::serve(admin_listener, admin, opts, shutdown.clone())),
    ];
    tracing::info!(%addr, %admin_addr, upstream = %config.upstream.url, "sluice listening");
    Ok(Running {
        addr,
        admin_addr,
        metrics,
        shutdown,
        health,
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
    /// Stops accepting; in-flight requests get the configured grace period.
    pub fn shutdown(&self) {
        self.health.set_shutting_down();
        self.shutdown.cancel();
    }

    /// Waits until both servers have drained.
    pub async fn wait(self) -> io::Result<()> {
        for task in self.tasks {
            task.await.map_err(io::Error::other)??;
        }
        Ok(())
    }
}
