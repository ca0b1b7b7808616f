//! The simulator's own accept loop, [`serve`], and the faults that live at the level of
//! connections, which a router alone cannot stage:
//!
//! - **Outage** ([`Simulator::start_outage`]): the listener is dropped, so connecting is
//!   refused, and every connection of the current *listening epoch* (idle keep-alive ones
//!   included) is dropped at once: requests in flight on them get no answer. When the
//!   outage ends the loop binds the same address again and a new epoch begins.
//! - **Reset**: a response marked with [`ResetConnection`] (by the send handlers) becomes
//!   a service error, on which hyper drops the connection without writing anything
//!   (over HTTP/2 it resets the stream).
//! - **Outage after an answer**: a response marked with [`OutageAfterAnswer`] (by the
//!   control endpoint) is written (over HTTP/1 with `Connection: close`), its connection
//!   then closes gracefully, and only then does the outage start, so that the answer is
//!   not lost to the outage it announces.
//!
//! Graceful shutdown is as `axum::serve`'s: the listener closes, idle connections close,
//! requests in flight finish, then [`serve`] returns.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::Request;
use axum::response::Response;
use axum::Router;
use http::{header, HeaderValue, Version};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Notify};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Simulator;

/// Response extension: drop the connection instead of answering.
#[derive(Clone, Copy, Debug)]
pub(super) struct ResetConnection;

/// Response extension: once this answer is out, close the connection and start an outage
/// of this length.
#[derive(Clone, Copy, Debug)]
pub(super) struct OutageAfterAnswer(pub Duration);

/// The error hyper gets for a [`ResetConnection`] response.
#[derive(Debug, thiserror::Error)]
#[error("simulated connection reset after the send was processed")]
struct SimulatedReset;

/// The router as hyper calls it, turning marked responses into connection faults.
struct FaultService {
    router: TowerToHyperService<Router>,
    conn: Arc<ConnNotes>,
}

/// What a connection's requests asked of the connection itself.
#[derive(Default)]
struct ConnNotes {
    /// An outage to start once the connection has closed.
    outage: Mutex<Option<Duration>>,
    /// Woken when `outage` is set: the connection should close gracefully.
    close: Notify,
}

/// What every connection task shares with the accept loop.
#[derive(Clone)]
struct Shared {
    sim: Simulator,
    router: Router,
    builder: auto::Builder<TokioExecutor>,
    /// Cancelled on graceful shutdown: finish what is in flight, then close.
    drain: CancellationToken,
    /// Held by every connection task; [`serve`] waits for all of them to drop it.
    alive: mpsc::Sender<()>,
}

/// How many times, and how far apart, binding the address again is tried after an outage
/// (the old sockets may linger for a moment).
const REBIND_ATTEMPTS: u32 = 50;
const REBIND_PAUSE: Duration = Duration::from_millis(20);

/// Serves `sim` on `listener` until `shutdown` completes, then finishes the requests in
/// flight and returns. Stops listening during outages and listens again on the same
/// address after each; fails only if that address cannot be bound again.
pub async fn serve(
    listener: TcpListener,
    sim: Simulator,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let addr = listener.local_addr()?;
    let mut outage = sim.subscribe_outage();
    let (alive, mut all_closed) = mpsc::channel::<()>(1);
    let shared = Shared {
        router: sim.router(),
        sim,
        builder: auto::Builder::new(TokioExecutor::new()),
        drain: CancellationToken::new(),
        alive,
    };
    let mut shutdown = pin!(shutdown);
    let mut listener = Some(listener);
    'serve: loop {
        if let Some(until) = active_outage(&mut outage) {
            // An outage begun before `serve` first listened.
            listener = None;
            tokio::select! {
                () = &mut shutdown => break 'serve,
                () = tokio::time::sleep_until(until) => {}
                () = changed(&mut outage) => {}
            }
            continue;
        }
        let current = match listener.take() {
            Some(listener) => listener,
            None => {
                let listener = rebind(addr).await?;
                tracing::info!(%addr, "simulated outage over: listening again");
                listener
            }
        };
        // Every connection accepted from now until the next outage.
        let epoch = CancellationToken::new();
        loop {
            tokio::select! {
                () = &mut shutdown => break 'serve,
                () = changed(&mut outage) => {
                    if active_outage(&mut outage).is_some() {
                        epoch.cancel();
                        tracing::info!(%addr, "simulated outage: not listening, connections dropped");
                        continue 'serve;
                    }
                }
                accepted = current.accept() => match accepted {
                    Ok((stream, peer)) => shared.spawn(stream, peer, epoch.clone()),
                    Err(e) => {
                        // EMFILE and friends: pause briefly instead of spinning on the error.
                        tracing::warn!(error = %e, "simulator accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                },
            }
        }
    }
    shared.drain.cancel();
    drop(shared);
    // `None` once every connection task has dropped its sender.
    let _ = all_closed.recv().await;
    Ok(())
}

/// The end of the outage under way, if one is.
fn active_outage(outage: &mut watch::Receiver<Option<Instant>>) -> Option<Instant> {
    let until = *outage.borrow_and_update();
    until.filter(|until| *until > Instant::now())
}

/// Completes when the outage setting changes. The sender lives as long as the simulator,
/// which the caller holds; should it ever be gone, this never completes.
async fn changed(outage: &mut watch::Receiver<Option<Instant>>) {
    if outage.changed().await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Binds `addr` again after an outage, retrying briefly while the port is still taken.
async fn rebind(addr: SocketAddr) -> io::Result<TcpListener> {
    let mut attempt = 1;
    loop {
        match TcpListener::bind(addr).await {
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && attempt < REBIND_ATTEMPTS => {
                attempt += 1;
                tokio::time::sleep(REBIND_PAUSE).await;
            }
            result => return result,
        }
    }
}

// === impl Shared ===

impl Shared {
    /// Serves one accepted connection on its own task until it closes, the epoch ends
    /// (dropped at once) or the server drains (closed gracefully).
    fn spawn(&self, stream: TcpStream, peer: SocketAddr, epoch: CancellationToken) {
        let _ = stream.set_nodelay(true);
        let notes = Arc::new(ConnNotes::default());
        let service = FaultService {
            router: TowerToHyperService::new(self.router.clone()),
            conn: Arc::clone(&notes),
        };
        let conn = self
            .builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let (sim, drain, alive) = (self.sim.clone(), self.drain.clone(), self.alive.clone());
        tokio::spawn(async move {
            let _alive = alive;
            let mut conn = pin!(conn);
            let mut closing = false;
            loop {
                tokio::select! {
                    result = conn.as_mut() => {
                        if let Err(e) = result {
                            tracing::debug!(%peer, error = %e, "simulator connection ended with an error");
                        }
                        break;
                    }
                    // Outage: drop the connection, whatever it was doing.
                    () = epoch.cancelled() => return,
                    () = drain.cancelled(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                    () = notes.close.notified(), if !closing => {
                        closing = true;
                        conn.as_mut().graceful_shutdown();
                    }
                }
            }
            if let Some(duration) = notes.take_outage() {
                sim.start_outage(duration);
            }
        });
    }
}

// === impl FaultService ===

impl hyper::service::Service<Request<Incoming>> for FaultService {
    type Response = Response;
    type Error = SimulatedReset;
    type Future = Pin<Box<dyn Future<Output = Result<Response, SimulatedReset>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() < Version::HTTP_2;
        let answer = self.router.call(req);
        let conn = Arc::clone(&self.conn);
        Box::pin(async move {
            let mut response = match answer.await {
                Ok(response) => response,
                Err(never) => match never {},
            };
            if response
                .extensions_mut()
                .remove::<ResetConnection>()
                .is_some()
            {
                return Err(SimulatedReset);
            }
            if let Some(OutageAfterAnswer(duration)) = response.extensions_mut().remove() {
                if http1 {
                    // Tells the client, and hyper, that this connection ends here.
                    let close = HeaderValue::from_static("close");
                    response.headers_mut().insert(header::CONNECTION, close);
                }
                conn.outage_after_close(duration);
            }
            Ok(response)
        })
    }
}

// === impl ConnNotes ===

impl ConnNotes {
    /// Asks the connection to close gracefully and start an outage of `duration` then.
    fn outage_after_close(&self, duration: Duration) {
        *self.outage.lock().unwrap_or_else(PoisonError::into_inner) = Some(duration);
        self.close.notify_one();
    }

    fn take_outage(&self) -> Option<Duration> {
        self.outage
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulator::SimConfig;
    use tokio::time::advance;

    #[tokio::test(start_paused = true)]
    async fn an_outage_lasts_its_duration_and_a_new_one_replaces_it() {
        let sim = Simulator::new(SimConfig::default());
        let mut outage = sim.subscribe_outage();
        assert_eq!(active_outage(&mut outage), None);
        sim.start_outage(Duration::from_secs(10));
        assert_eq!(
            active_outage(&mut outage),
            Some(Instant::now() + Duration::from_secs(10))
        );
        advance(Duration::from_secs(4)).await;
        assert_eq!(sim.outage_remaining(), Duration::from_secs(6));
        sim.start_outage(Duration::from_secs(2));
        assert_eq!(sim.outage_remaining(), Duration::from_secs(2));
        advance(Duration::from_secs(2)).await;
        assert_eq!(active_outage(&mut outage), None);
        assert_eq!(sim.outage_remaining(), Duration::ZERO);
        sim.start_outage(Duration::from_secs(5));
        sim.start_outage(Duration::ZERO); // ends it; not an outage of its own
        assert_eq!(active_outage(&mut outage), None);
        assert_eq!(sim.stats().outages, 3);
    }
}
