//! Configuration: the TOML file, its defaults, and the checks that refuse bad values.
//!
//! Precedence is flags > file > defaults. Every struct here is `deny_unknown_fields`, so a
//! misspelt key stops the proxy at start with the key's name and line instead of being
//! silently ignored. `config.example.toml` lists every key with its default; a test parses
//! it and compares it with `Config::default()`, so the two cannot drift apart.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

mod delivery;

use crate::queue::store::Synchronous;
use crate::retry::RetryPolicy;
use crate::routes::Route;
pub use delivery::DeliveryConfig;

/// The whole configuration, as read from the file (all sections optional).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub server: ServerConfig,
    pub upstream: UpstreamConfig,
    pub retry: RetryConfig,
    pub queue: QueueConfig,
    pub store: StoreConfig,
    pub log: LogConfig,
    pub delivery: DeliveryConfig,
    /// Send routes; requests matching none pass through. Absent: the two default send
    /// routes; `routes = []`: none (sluice is then a pure pass-through proxy).
    pub routes: Option<Vec<Route>>,
}

/// `[queue]`: the durable send queue and how it dispatches.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// SQLite `synchronous`: `full` survives power loss; `normal` survives a process
    /// crash but may lose the last commits on power loss.
    pub synchronous: Synchronous,
    /// How long a send waits for its job to finish before answering 202 (RFC 7240
    /// `Prefer: wait=N` overrides it per request; `Prefer: respond-async` answers at once).
    pub sync_wait_ms: u64,
    /// Back-pressure: recipients queued (not yet accepted by the API) across all jobs.
    pub max_queued_recipients: u64,
    /// Back-pressure: bytes of queued request bodies.
    pub max_queued_bytes: u64,
    /// Attempts for a part failing with 5xx, timeouts or connection errors before it
    /// becomes a dead letter (429s never count).
    pub max_attempts: u32,
    /// A part still failing this long after its job was accepted becomes a dead letter.
    pub max_age_secs: u64,
    /// Most upstream send requests in flight at once, across all keys.
    pub concurrency: usize,
    /// Per API key: most send requests per second (0: no limit).
    pub requests_per_sec: u32,
    /// Per API key: most recipients per second (0: no limit).
    pub recipients_per_sec: u32,
    /// After an attempt whose answer was lost (a timeout, a broken connection), how long to
    /// wait before looking the send up in the API's messages (the API may still be
    /// processing it).
    pub reconcile_delay_ms: u64,
    /// How far the API's clock may be behind sluice's: a message the lookup finds counts
    /// as this send's if the API created it at most this long before the attempt began.
    pub reconcile_clock_skew_ms: u64,
    /// Per-key state in memory (a cooldown gate, rate limiter cells, metric series) of a
    /// key idle this long is dropped.
    pub key_idle_secs: u64,
    /// Finished jobs (and their bodies) are deleted this long after they finished.
    pub retention_secs: u64,
    /// How long a client's `Idempotency-Key` on a send keeps naming the job it made: a
    /// repeat within this time is answered from that job instead of making another.
    pub idempotency_ttl_secs: u64,
}

/// `[store]`: where jobs are kept: the embedded SQLite file in `server.data_dir` (the
/// default), or a PostgreSQL database shared by many instances.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/database?sslmode=require`: the shared store of
    /// a cluster of instances. Empty: SQLite in `server.data_dir`.
    pub url: String,
    /// Most connections to the database (at least 2).
    pub pool_size: usize,
    /// How long a part taken by an instance stays its own without being renewed; a killed
    /// instance's parts are taken by the others after this.
    pub lease_secs: u64,
}

/// `[server]`: the listeners and what the proxy accepts from clients.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Where apps send their API calls.
    pub listen: SocketAddr,
    /// Where `/metrics`, `/healthz` and `/readyz` are served; loopback unless you mean it.
    pub admin_listen: SocketAddr,
    /// Largest request body accepted, in bytes; larger ones get a 413.
    pub max_body_bytes: u64,
    /// How long a client may take to send its request headers.
    pub header_read_timeout_ms: u64,
    /// How long a new connection may take to send its first byte.
    pub first_byte_timeout_ms: u64,
    /// A keep-alive connection with no request in flight is closed after this long.
    pub idle_timeout_ms: u64,
    /// The longest pause while a request body is sent; a body that stops longer is cut off
    /// (408).
    pub body_read_timeout_ms: u64,
    /// After the first `body_read_timeout_ms` of a body, the slowest average rate allowed,
    /// in bytes per second (0: none). Slower bodies are cut off (408).
    pub body_min_rate_bytes_per_sec: u64,
    /// Most open client connections on the main listener (0: three quarters of the open
    /// file limit). At the cap, the connection idle the longest is closed for a new one.
    pub max_connections: usize,
    /// Most client requests handled at once; more are answered 503 at once (load shedding).
    pub max_concurrent_requests: usize,
    /// Whether `/readyz` also requires the messaging API to be reachable. Off by default:
    /// during an API outage sluice still takes sends into its queue.
    pub ready_requires_upstream: bool,
    /// On SIGTERM/Ctrl-C, how long in-flight requests may take to finish; clients waiting
    /// for their send are answered before it ends.
    pub shutdown_grace_ms: u64,
    /// Where durable state lives.
    pub data_dir: PathBuf,
}

/// `[upstream]`: the one API the proxy forwards to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct UpstreamConfig {
    /// Base URL of the API (`http://` or `https://`); paths are appended unchanged.
    pub url: String,
    /// A file holding the API key to inject when a client sends none. `SLUICE_API_KEY`
    /// (the environment) takes precedence. Empty: clients' own keys pass through.
    pub api_key_file: Option<PathBuf>,
    pub connect_timeout_ms: u64,
    /// Time allowed for one attempt, until the response headers arrive.
    pub request_timeout_ms: u64,
    /// Idle keep-alive connections kept per upstream host.
    pub pool_max_idle: usize,
    pub pool_idle_timeout_ms: u64,
    /// Request bodies up to this size are held in memory so that a request can be
    /// retried; larger bodies are streamed and get no retry after the first byte left.
    pub retry_buffer_bytes: u64,
    /// While the API cannot be reached (connection refused, DNS, TLS), one probe at a time
    /// tests it: the first after about this long, each next one twice as long, with jitter.
    pub outage_probe_base_ms: u64,
    /// The longest wait between two probes during an outage.
    pub outage_probe_max_ms: u64,
}

/// `[retry]`: how the proxy waits and retries (see `retry::policy`).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryConfig {
    /// Total time one client request may spend in retries before the last upstream
    /// answer is returned as is.
    pub deadline_ms: u64,
    /// Longest wait honoured from a `Retry-After`/`retryAfterSeconds` hint.
    pub max_retry_after_secs: u64,
    pub backoff_base_ms: u64,
    pub backoff_cap_ms: u64,
    /// Random delay added on top of a hint (never subtracted), so waiting clients do not
    /// all come back in the same millisecond.
    pub hint_jitter_ms: u64,
    /// Attempts for a request failing with 5xx/timeouts (429s do not count).
    pub max_attempts: u32,
}

/// `[log]`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// A `tracing` filter such as `info` or `sluice=debug,info`; `RUST_LOG` wins.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Json,
    Text,
}

/// A configuration that could not be loaded; the message names the key or line.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

// === impl Config ===

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        let config = Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })?;
        Ok(config)
    }

    /// The configuration from `file` (defaults without one) with the environment over it,
    /// checked. Every key can be set by a variable `SLUICE_<SECTION>__<KEY>` (two
    /// underscores; `SLUICE_QUEUE__MAX_ATTEMPTS=5`, `SLUICE_SERVER__SHUTDOWN_GRACE_MS=15000`)
    /// and the routes by `SLUICE_ROUTES` (a TOML array of tables:
    /// `[{name = "single", path = "/…", kind = "single"}]`). A value is read as TOML (a
    /// number, a boolean, an array) and else taken as a string. A misspelt variable is
    /// refused like a misspelt key. Flags (and their own variables, `SLUICE_LISTEN`…) are
    /// applied over this by the caller.
    pub fn from_sources(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let (path, text) = match file {
            Some(path) => (
                path.to_owned(),
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?,
            ),
            None => (PathBuf::from("<defaults>"), String::new()),
        };
        let parse_error = |message: String| ConfigError::Parse {
            path: path.clone(),
            message,
        };
        let mut table: toml::Table =
            toml::from_str(&text).map_err(|e| parse_error(e.to_string()))?;
        let mut from_env = Vec::new();
        for (name, value) in env {
            let Some(rest) = name.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let (section, key) = match rest.split_once("__") {
                Some((section, key)) => (Some(section.to_ascii_lowercase()), key),
                None if rest == "ROUTES" => (None, "routes"),
                None => continue,
            };
            let value = env_value(&value);
            let key = key.to_ascii_lowercase();
            match section {
                Some(section) => {
                    let entry = table
                        .entry(section.clone())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()));
                    let toml::Value::Table(section_table) = entry else {
                        return Err(parse_error(format!("{name}: `{section}` is not a section")));
                    };
                    section_table.insert(key, value);
                }
                None => {
                    table.insert(key, value);
                }
            }
            from_env.push(name);
        }
        let config = Config::deserialize(toml::Value::Table(table)).map_err(|e| {
            let origin = if from_env.is_empty() {
                String::new()
            } else {
                format!(" (with {} from the environment)", from_env.join(", "))
            };
            parse_error(format!("{e}{origin}"))
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text and checks the values.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: PathBuf::from("<config>"),
            message: e.to_string(),
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Refuses values that parse but make no sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| {
            Err(ConfigError::Invalid {
                key,
                message: message.to_string(),
            })
        };
        let url = &self.upstream.url;
        match url.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some()
                    && uri.query().is_none() => {}
            _ => {
                return invalid(
                    "upstream.url",
                    &format!("{url:?} is not an http:// or https:// base URL without a query"),
                )
            }
        }
        let store = &self.store.url;
        let postgres = store.starts_with("postgres://") || store.starts_with("postgresql://");
        if !(store.is_empty() || postgres) {
            return invalid(
                "store.url",
                "must be empty (SQLite in server.data_dir) or a postgres:// URL",
            );
        }
        if self.store.lease_secs == 0 {
            return invalid("store.lease_secs", "must be greater than 0");
        }
        if self.server.max_body_bytes == 0 {
            return invalid("server.max_body_bytes", "must be greater than 0");
        }
        if self.upstream.request_timeout_ms == 0 {
            return invalid("upstream.request_timeout_ms", "must be greater than 0");
        }
        for (key, value) in [
            (
                "server.header_read_timeout_ms",
                self.server.header_read_timeout_ms,
            ),
            (
                "server.first_byte_timeout_ms",
                self.server.first_byte_timeout_ms,
            ),
            ("server.idle_timeout_ms", self.server.idle_timeout_ms),
            (
                "server.body_read_timeout_ms",
                self.server.body_read_timeout_ms,
            ),
            (
                "server.max_concurrent_requests",
                self.server.max_concurrent_requests as u64,
            ),
        ] {
            if value == 0 {
                return invalid(key, "must be greater than 0");
            }
        }
        if self.upstream.outage_probe_base_ms == 0 {
            return invalid("upstream.outage_probe_base_ms", "must be greater than 0");
        }
        if self.upstream.outage_probe_max_ms < self.upstream.outage_probe_base_ms {
            return invalid(
                "upstream.outage_probe_max_ms",
                "must be at least upstream.outage_probe_base_ms",
            );
        }
        if self.upstream.connect_timeout_ms == 0 {
            return invalid("upstream.connect_timeout_ms", "must be greater than 0");
        }
        if self.retry.backoff_base_ms == 0 {
            return invalid("retry.backoff_base_ms", "must be greater than 0");
        }
        if self.retry.backoff_cap_ms < self.retry.backoff_base_ms {
            return invalid(
                "retry.backoff_cap_ms",
                "must be at least retry.backoff_base_ms",
            );
        }
        if self.retry.max_attempts == 0 {
            return invalid("retry.max_attempts", "must be at least 1");
        }
        if self.retry.deadline_ms == 0 {
            return invalid("retry.deadline_ms", "must be greater than 0");
        }
        if let Err(e) = tracing_subscriber::EnvFilter::try_new(&self.log.level) {
            return invalid("log.level", &e.to_string());
        }
        if self.queue.max_attempts == 0 {
            return invalid("queue.max_attempts", "must be at least 1");
        }
        if self.queue.concurrency == 0 {
            return invalid("queue.concurrency", "must be at least 1");
        }
        if self.queue.idempotency_ttl_secs == 0 {
            return invalid("queue.idempotency_ttl_secs", "must be at least 1");
        }
        if let Err((key, message)) = self.delivery.validate() {
            return Err(ConfigError::Invalid { key, message });
        }
        for route in self.routes.iter().flatten() {
            if let Err(message) = route.validate() {
                return Err(ConfigError::Invalid {
                    key: "routes",
                    message,
                });
            }
        }
        Ok(())
    }

    /// The send routes in force: the file's, or the defaults when it has none.
    pub fn routes(&self) -> Vec<Route> {
        self.routes.clone().unwrap_or_else(crate::routes::defaults)
    }

    /// The retry policy this configuration describes.
    pub fn retry_policy(&self) -> RetryPolicy {
        let r = &self.retry;
        RetryPolicy {
            backoff_base: Duration::from_millis(r.backoff_base_ms),
            backoff_cap: Duration::from_millis(r.backoff_cap_ms),
            max_retry_after: Duration::from_secs(r.max_retry_after_secs),
            hint_jitter: Duration::from_millis(r.hint_jitter_ms),
            deadline: Duration::from_millis(r.deadline_ms),
            max_attempts: r.max_attempts,
        }
    }
}

/// The prefix of the environment variables that set config keys (see
/// [`Config::from_sources`]).
pub const ENV_PREFIX: &str = "SLUICE_";

/// An environment value as TOML: `5`, `true`, `[1, 2]` keep their type; anything else is a
/// string (`0.0.0.0:8080`, `http://api`).
fn env_value(text: &str) -> toml::Value {
    toml::from_str::<toml::Table>(&format!("v = {text}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(text.to_string()))
}

// === defaults ===

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            synchronous: Synchronous::Full,
            sync_wait_ms: 25_000,
            max_queued_recipients: 10_000_000,
            max_queued_bytes: 2 * 1024 * 1024 * 1024,
            max_attempts: 10,
            max_age_secs: 86_400,
            concurrency: 16,
            requests_per_sec: 0,
            recipients_per_sec: 0,
            reconcile_delay_ms: 2_000,
            reconcile_clock_skew_ms: 1_000,
            key_idle_secs: 600,
            retention_secs: 7 * 86_400,
            idempotency_ttl_secs: 86_400,
        }
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            pool_size: 16,
            lease_secs: 30,
        }
    }
}

/// The URL may hold a password: shown without it.
impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let url = match self.url.split_once('@') {
            Some((_, host)) => format!("postgres://…@{host}"),
            None => self.url.clone(),
        };
        f.debug_struct("StoreConfig")
            .field("url", &url)
            .field("pool_size", &self.pool_size)
            .field("lease_secs", &self.lease_secs)
            .finish()
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            max_body_bytes: 128 * 1024 * 1024,
            header_read_timeout_ms: 10_000,
            first_byte_timeout_ms: 10_000,
            idle_timeout_ms: 60_000,
            body_read_timeout_ms: 30_000,
            body_min_rate_bytes_per_sec: 1024,
            max_connections: 0,
            max_concurrent_requests: 4096,
            ready_requires_upstream: false,
            shutdown_grace_ms: 10_000,
            data_dir: PathBuf::from("sluice-data"),
        }
    }
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        Self {
            url: "http://127.0.0.1:8081".to_string(),
            api_key_file: None,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            pool_max_idle: 64,
            pool_idle_timeout_ms: 90_000,
            retry_buffer_bytes: 1024 * 1024,
            outage_probe_base_ms: 250,
            outage_probe_max_ms: 5_000,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            deadline_ms: 30_000,
            max_retry_after_secs: 300,
            backoff_base_ms: 100,
            backoff_cap_ms: 10_000,
            hint_jitter_ms: 250,
            max_attempts: 5,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: "info".to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn example_file_parses_to_the_defaults() {
        let text = include_str!("../config.example.toml");
        let mut parsed = Config::parse(text).unwrap();
        // The example spells out the default routes; leaving them out means the same.
        assert_eq!(parsed.routes, Some(crate::routes::defaults()));
        parsed.routes = None;
        assert_eq!(parsed, Config::default());
        assert_eq!(Config::parse("routes = []").unwrap().routes(), vec![]);
    }

    #[test]
    fn unknown_key_is_refused_with_its_name_and_line() {
        let err = Config::parse("[server]\nlisten = \"127.0.0.1:1\"\nlisen = 3\n").unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("lisen"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn every_key_can_come_from_the_environment() {
        let env = |pairs: &[(&str, &str)]| -> Vec<(String, String)> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let config = Config::from_sources(
            None,
            env(&[
                ("SLUICE_QUEUE__MAX_ATTEMPTS", "5"),
                ("SLUICE_SERVER__LISTEN", "0.0.0.0:8080"),
                ("SLUICE_SERVER__READY_REQUIRES_UPSTREAM", "true"),
                ("SLUICE_UPSTREAM__URL", "https://api.example.test"),
                (
                    "SLUICE_ROUTES",
                    r#"[{name = "one", path = "/one", kind = "single"}]"#,
                ),
                // Flags' own variables and other programs' are not config keys.
                ("SLUICE_LISTEN", "127.0.0.1:1"),
                ("PATH", "/bin"),
            ]),
        )
        .unwrap();
        assert_eq!(config.queue.max_attempts, 5);
        assert_eq!(config.server.listen, "0.0.0.0:8080".parse().unwrap());
        assert!(config.server.ready_requires_upstream);
        assert_eq!(config.upstream.url, "https://api.example.test");
        assert_eq!(config.routes().len(), 1);
        // A misspelt variable is refused, named.
        let err = Config::from_sources(None, env(&[("SLUICE_QUEUE__MAX_ATEMPTS", "5")]))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("max_atempts") && err.contains("SLUICE_QUEUE__MAX_ATEMPTS"),
            "{err}"
        );
        // Values are checked as in a file.
        let err = Config::from_sources(None, env(&[("SLUICE_QUEUE__MAX_ATTEMPTS", "0")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("queue.max_attempts"), "{err}");
    }

    #[test]
    fn the_environment_goes_over_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sluice.toml");
        std::fs::write(
            &file,
            "[queue]
max_attempts = 3
sync_wait_ms = 7
",
        )
        .unwrap();
        let config = Config::from_sources(
            Some(&file),
            [("SLUICE_QUEUE__MAX_ATTEMPTS".to_string(), "4".to_string())],
        )
        .unwrap();
        assert_eq!(
            (config.queue.max_attempts, config.queue.sync_wait_ms),
            (4, 7)
        );
    }

    #[test]
    fn unknown_section_is_refused() {
        let err = Config::parse("[srever]\n").unwrap_err().to_string();
        assert!(err.contains("srever"), "{err}");
    }

    #[test]
    fn bad_values_are_refused_naming_the_key() {
        for (text, key) in [
            ("[upstream]\nurl = \"ftp://x\"", "upstream.url"),
            ("[upstream]\nurl = \"http://x/?a=1\"", "upstream.url"),
            ("[retry]\nmax_attempts = 0", "retry.max_attempts"),
            ("[retry]\nbackoff_cap_ms = 1", "retry.backoff_cap_ms"),
            ("[server]\nmax_body_bytes = 0", "server.max_body_bytes"),
            (
                "[queue]\nidempotency_ttl_secs = 0",
                "queue.idempotency_ttl_secs",
            ),
            ("[log]\nlevel = \"=[\"", "log.level"),
        ] {
            let err = Config::parse(text).unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = Config::parse("[server]\nlisten = \"nope\"").unwrap_err();
        assert!(err.to_string().contains("listen"), "{err}");
        let err = Config::parse("[log]\nformat = \"xml\"").unwrap_err();
        assert!(err.to_string().contains("xml"), "{err}");
    }
}
