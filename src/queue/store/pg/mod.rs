//! The PostgreSQL backend of the job store, for many sluice instances sharing one queue
//! (`store.url = "postgres://…"`).
//!
//! Every method does what the SQLite backend's does (the store conformance tests run the
//! same scenarios against both); what differs is how instances share the work:
//! - **leases, not ownership**: [`Postgres::claim`] takes due parts with `FOR UPDATE SKIP
//!   LOCKED` and marks them with this instance's number and a lease expiry, which
//!   [`Postgres::renew_leases`] extends while the instance lives. A part whose lease has
//!   expired (its instance was killed) is taken by any other instance; one found
//!   `in_flight` is looked up before it is sent again, as after a restart;
//! - **job rows are locked** (`SELECT … FOR UPDATE`) by every change to their parts, so
//!   two instances settling parts of one job never lose a count;
//! - **news is broadcast** with `NOTIFY`: what was learned about a key (`sluice_keys`),
//!   a part that finished (`sluice_jobs`, so a client waiting on another instance is
//!   answered), new work (`sluice_work`); [`Postgres::listen`] turns them into
//!   [`Notice`]s;
//! - **one probe per key for the cluster**: after a cooldown, the instance whose probe
//!   wins [`Postgres::take_probe`] sends it; the others wait for its result.
//!
//! Writes run on pooled connections (deadpool), each in its own transaction; TLS to the
//! database is rustls with the webpki roots (`sslmode=require`, or `prefer`: the default).

mod reads;
mod schema;
mod writes;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio::sync::mpsc;
use tokio_postgres::config::SslMode;
use tokio_postgres::{AsyncMessage, NoTls};

use super::StoreError;

/// The PostgreSQL store of one instance.
pub struct Postgres {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: Tls,
    /// This instance's number (random): the owner of its leases and probes.
    instance: i64,
    /// How long a lease lasts unless renewed (ms).
    lease_ms: i64,
    /// False after a failed database call, true after a successful one.
    writable: Arc<AtomicBool>,
    /// Parts taken over from an instance whose lease expired.
    takeovers: AtomicU64,
}

/// How connections are made: in the clear, or with rustls.
#[derive(Clone)]
enum Tls {
    None,
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

/// News from other instances (and this one), from `LISTEN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// What is known of this key (a `KeyId::full`) changed: read it again.
    Key(String),
    /// A part of this job finished.
    Job(String),
    /// This owner (a `KeyId::full`) has new work.
    Work(String),
}

/// Settings of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgOptions {
    pub url: String,
    pub pool_size: usize,
    pub lease: Duration,
}

/// Maps a driver error to the store's.
pub(super) fn pg_error(e: tokio_postgres::Error) -> StoreError {
    use std::error::Error as _;
    match e.source() {
        Some(source) => StoreError::Database(format!("{e}: {source}")),
        None => StoreError::Database(e.to_string()),
    }
}

// === impl Postgres ===

impl Postgres {
    /// Connects (pool of `pool_size`), and creates or migrates the schema.
    pub async fn open(options: &PgOptions) -> Result<Postgres, StoreError> {
        let config: tokio_postgres::Config = options
            .url
            .parse()
            .map_err(|e: tokio_postgres::Error| StoreError::Invalid(format!("store.url: {e}")))?;
        let tls = match config.get_ssl_mode() {
            SslMode::Disable => Tls::None,
            _ => Tls::Rustls(rustls_connector()?),
        };
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Tls::None => Manager::from_config(config.clone(), NoTls, manager_config),
            Tls::Rustls(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(2))
            .build()
            .map_err(|e| StoreError::Invalid(format!("the database pool: {e}")))?;
        let store = Postgres {
            pool,
            config,
            tls,
            instance: rand::random::<i64>() & i64::MAX,
            lease_ms: options.lease.as_millis() as i64,
            writable: Arc::new(AtomicBool::new(true)),
            takeovers: AtomicU64::new(0),
        };
        let mut client = store.client().await?;
        schema::migrate(&mut client).await?;
        Ok(store)
    }

    /// This instance's number (its leases and probes carry it).
    pub fn run(&self) -> i64 {
        self.instance
    }

    pub fn is_writable(&self) -> bool {
        self.writable.load(Ordering::Acquire)
    }

    /// Parts taken over from instances whose lease expired, since start.
    pub fn takeovers(&self) -> u64 {
        self.takeovers.load(Ordering::Relaxed)
    }

    /// Connections in the pool: (open, idle).
    pub fn pool_use(&self) -> (usize, usize) {
        let s = self.pool.status();
        (s.size, s.available)
    }

    /// A pooled connection; a failure marks the store not writable.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        match self.pool.get().await {
            Ok(c) => Ok(c),
            Err(e) => {
                self.writable.store(false, Ordering::Release);
                Err(StoreError::Database(format!("no database connection: {e}")))
            }
        }
    }

    /// Records whether a database call succeeded (for `/readyz`).
    fn note<T>(&self, result: Result<T, StoreError>) -> Result<T, StoreError> {
        match &result {
            Err(StoreError::Database(_)) => self.writable.store(false, Ordering::Release),
            _ => self.writable.store(true, Ordering::Release),
        }
        result
    }

    /// Checks the connection (for `/readyz` between other calls).
    pub async fn ping(&self) -> bool {
        let ok = match self.client().await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        };
        self.writable.store(ok, Ordering::Release);
        ok
    }

    /// Extends the lease of every part this instance holds.
    pub async fn renew_leases(&self, now_ms: i64) -> Result<u64, StoreError> {
        let c = self.client().await?;
        let n = c
            .execute(
                "UPDATE parts SET lease_until = $2 WHERE lease_owner = $1
                   AND state IN ('queued', 'in_flight')",
                &[&self.instance, &(now_ms + self.lease_ms)],
            )
            .await
            .map_err(pg_error);
        self.note(n)
    }

    /// Listens for [`Notice`]s on a connection of its own, reconnecting when it drops,
    /// until the receiver is dropped.
    pub fn listen(&self) -> mpsc::UnboundedReceiver<Notice> {
        let (tx, rx) = mpsc::unbounded_channel();
        let (config, tls) = (self.config.clone(), self.tls.clone());
        tokio::spawn(async move {
            while !tx.is_closed() {
                if let Err(e) = listen_once(&config, &tls, &tx).await {
                    tracing::warn!(error = %e, "database notifications lost; listening again in 1 s");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        });
        rx
    }
}

/// One LISTEN connection, until it fails or the receiver is gone.
async fn listen_once(
    config: &tokio_postgres::Config,
    tls: &Tls,
    tx: &mpsc::UnboundedSender<Notice>,
) -> Result<(), tokio_postgres::Error> {
    match tls {
        Tls::None => {
            let (client, connection) = config.connect(NoTls).await?;
            drive(client, connection, tx).await
        }
        Tls::Rustls(t) => {
            let (client, connection) = config.connect(t.clone()).await?;
            drive(client, connection, tx).await
        }
    }
}

async fn drive<S, T>(
    client: tokio_postgres::Client,
    mut connection: tokio_postgres::Connection<S, T>,
    tx: &mpsc::UnboundedSender<Notice>,
) -> Result<(), tokio_postgres::Error>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let listening =
        client.batch_execute("LISTEN sluice_keys; LISTEN sluice_jobs; LISTEN sluice_work");
    tokio::pin!(listening);
    let mut listened = false;
    loop {
        tokio::select! {
            done = &mut listening, if !listened => {
                done?;
                listened = true;
            }
            message = std::future::poll_fn(|cx| connection.poll_message(cx)) => match message {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    let payload = n.payload().to_string();
                    let notice = match n.channel() {
                        "sluice_keys" => Notice::Key(payload),
                        "sluice_jobs" => Notice::Job(payload),
                        _ => Notice::Work(payload),
                    };
                    if tx.send(notice).is_err() {
                        return Ok(());
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e),
                None => return Ok(()),
            },
            () = tx.closed() => return Ok(()),
        }
    }
}

/// A rustls connector with the webpki roots and the ring provider.
fn rustls_connector() -> Result<tokio_postgres_rustls::MakeRustlsConnect, StoreError> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| StoreError::Invalid(format!("TLS to the database: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(tokio_postgres_rustls::MakeRustlsConnect::new(config))
}
