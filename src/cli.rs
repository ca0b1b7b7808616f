//! The command line: `serve`, `simulate`, `demo`, `check-config`.
//!
//! Every flag can also be set through an environment variable `SLUICE_…` (shown in
//! `--help`), which is how a sidecar container is usually configured. The upstream API
//! key is deliberately not a flag: `ps` shows flags to every user of the machine.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{Config, LogFormat};
use crate::simulator::HintMode;

/// `sluice --version`: the crate's version and the git commit it was built from.
pub const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("SLUICE_COMMIT"), ")");

#[derive(Debug, Parser)]
#[command(
    name = "sluice",
    version = VERSION,
    about = "A resilient, durable sending proxy for the messaging API"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// Log format (overrides log.format).
    #[arg(long, global = true, env = "SLUICE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    /// Log filter such as `info` or `sluice=debug` (overrides log.level; RUST_LOG wins).
    #[arg(long, global = true, env = "SLUICE_LOG_LEVEL")]
    pub log_level: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the proxy.
    Serve(ServeArgs),
    /// Run the built-in simulator of the messaging API.
    Simulate(SimulateArgs),
    /// Run a simulator and a proxy in one process and print curl lines to try.
    Demo(DemoArgs),
    /// Check a config file and exit: 0 if valid, 1 with the bad key or line if not.
    CheckConfig {
        /// The TOML file to check.
        file: PathBuf,
    },
    /// Print what support needs about one request (its id, time, sanitized body, the API's
    /// error, every attempt and wait, the job, the delivery): works while `serve` runs.
    Support(SupportArgs),
    /// Print a shell completion script: `sluice completions bash > /etc/bash_completion.d/sluice`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): `sluice man > sluice.1 && man ./sluice.1`.
    Man,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Config file (TOML); without one, defaults plus flags.
    #[arg(long, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address apps connect to (server.listen).
    #[arg(long, env = "SLUICE_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Address of /metrics, /healthz, /readyz (server.admin_listen).
    #[arg(long, env = "SLUICE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Base URL of the messaging API (upstream.url).
    #[arg(long, env = "SLUICE_UPSTREAM")]
    pub upstream: Option<String>,
    /// Directory for durable state (server.data_dir).
    #[arg(long, env = "SLUICE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// A PostgreSQL URL: the job store shared by a cluster of instances (store.url).
    #[arg(long, env = "SLUICE_STORE_URL", hide_env_values = true)]
    pub store_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct SupportArgs {
    /// The request id (the `X-Request-ID` sluice answered with).
    pub request_id: String,
    /// sluice's data directory (server.data_dir), where `journal.db` is.
    #[arg(long, env = "SLUICE_DATA_DIR", default_value = "sluice-data")]
    pub data_dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Args)]
pub struct SimulateArgs {
    /// Address the simulated API listens on.
    #[arg(long, env = "SLUICE_SIM_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: SocketAddr,
    /// Pending messages allowed per company (the 429's maxAllowed).
    #[arg(long, env = "SLUICE_SIM_MAX_PENDING", default_value_t = 50_000)]
    pub max_pending: u64,
    /// Messages per second leaving Pending, per company.
    #[arg(long, env = "SLUICE_SIM_DRAIN_RATE", default_value_t = 5_000.0)]
    pub drain_rate: f64,
    /// The retry hint given with a 429, in seconds.
    #[arg(long, env = "SLUICE_SIM_RETRY_AFTER", default_value_t = 30)]
    pub retry_after: u64,
    /// How the hint is given: Retry-After seconds (header), Retry-After HTTP-date (date),
    /// the body's retryAfterSeconds (body), header and body (both), or not at all (none).
    #[arg(long, env = "SLUICE_SIM_HINT", value_enum, default_value = "both")]
    pub hint: HintMode,
    /// Probability (0 to 1) of an injected 500 on any authenticated request.
    #[arg(long, env = "SLUICE_SIM_FAIL_RATE", default_value_t = 0.0)]
    pub fail_rate: f64,
    /// Seed of the failure injection, for repeatable runs.
    #[arg(long, env = "SLUICE_SIM_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Latency added to every answer, in milliseconds.
    #[arg(long, env = "SLUICE_SIM_LATENCY_MS", default_value_t = 0)]
    pub latency_ms: u64,
    /// Probability (0 to 1) that a send, once processed (accepted or refused), gets its
    /// connection closed instead of an answer.
    #[arg(long, env = "SLUICE_SIM_RESET_RATE", default_value_t = 0.0, value_parser = probability)]
    pub reset_rate: f64,
    /// Milliseconds a send, once processed (accepted), waits before answering.
    #[arg(long, env = "SLUICE_SIM_ANSWER_DELAY_MS", default_value_t = 0)]
    pub answer_delay_ms: u64,
    /// Capacity flips: in every other period of this many seconds, every company is full
    /// and every send gets the 429 (0 or absent: off).
    #[arg(long, env = "SLUICE_SIM_CAPACITY_FLIP_SECS", value_parser = seconds)]
    pub capacity_flip_secs: Option<f64>,
    /// Share (0 to 1) of Viber messages that fail, with code 8, 9 or 10 (absent: a Viber
    /// message to a number ending in 9 fails with code 9, every other one is delivered).
    #[arg(long, env = "SLUICE_SIM_VIBER_FAIL_RATE", value_parser = probability)]
    pub viber_fail_rate: Option<f64>,
    /// How failed Viber messages split among codes 8, 9 and 10, as code:weight pairs.
    #[arg(long, env = "SLUICE_SIM_VIBER_FAIL_CODES", default_value = "8:1,9:1,10:1",
        value_parser = crate::simulator::ViberFailCodes::parse)]
    pub viber_fail_codes: crate::simulator::ViberFailCodes,
    /// Share (0 to 1) of failed Viber messages that SMS fallback delivers, when the
    /// campaign's template has smsFallbackEnabled.
    #[arg(long, env = "SLUICE_SIM_SMS_FALLBACK_RATE", default_value_t = 1.0, value_parser = probability)]
    pub sms_fallback_rate: f64,
    /// Share (0 to 1) of SMS messages that fail (details code 1, UNDELIVERABLE).
    #[arg(long, env = "SLUICE_SIM_SMS_FAIL_RATE", default_value_t = 0.0, value_parser = probability)]
    pub sms_fail_rate: f64,
    /// A valid API key (repeat for several companies; env: comma-separated).
    #[arg(
        long = "api-key",
        env = "SLUICE_SIM_API_KEYS",
        value_delimiter = ',',
        default_value = "demo-key"
    )]
    pub api_keys: Vec<String>,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Address of the demo's proxy.
    #[arg(long, env = "SLUICE_DEMO_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Address of the demo's admin listener.
    #[arg(
        long,
        env = "SLUICE_DEMO_ADMIN_LISTEN",
        default_value = "127.0.0.1:9090"
    )]
    pub admin_listen: SocketAddr,
    /// Address of the demo's simulated API.
    #[arg(long, env = "SLUICE_DEMO_SIM_LISTEN", default_value = "127.0.0.1:8081")]
    pub sim_listen: SocketAddr,
    /// Directory for the demo's durable state and sample bodies. Default: a new temporary
    /// directory, removed at the end, so every run starts afresh.
    #[arg(long, env = "SLUICE_DEMO_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// With --data-dir: empty it first (jobs left by an earlier run are not resumed).
    #[arg(long, requires = "data_dir")]
    pub fresh: bool,
}

/// A probability: a number from 0 to 1.
fn probability(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{text:?} is not a number from 0 to 1")),
    }
}

/// A number of seconds, 0 or more, that a `Duration` can hold.
fn seconds(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(s) if std::time::Duration::try_from_secs_f64(s).is_ok() => Ok(s),
        _ => Err(format!("{text:?} is not a number of seconds, 0 or more")),
    }
}

// === impl ServeArgs ===

impl ServeArgs {
    /// Flags (and their env vars) over the file over defaults.
    pub fn apply(&self, config: &mut Config) {
        if let Some(v) = self.listen {
            config.server.listen = v;
        }
        if let Some(v) = self.admin_listen {
            config.server.admin_listen = v;
        }
        if let Some(v) = &self.upstream {
            config.upstream.url = v.clone();
        }
        if let Some(v) = &self.data_dir {
            config.server.data_dir = v.clone();
        }
        if let Some(v) = &self.store_url {
            config.store.url = v.clone();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn simulate_fault_flags_reach_the_simulator_config() {
        let parse = |extra: &[&str]| {
            let args = ["sluice", "simulate"].iter().chain(extra);
            match Cli::try_parse_from(args).map(|cli| cli.command) {
                Ok(Command::Simulate(args)) => Ok(crate::demo::sim_config(&args)),
                Ok(_) => panic!("not simulate"),
                Err(e) => Err(e.to_string()),
            }
        };
        let defaults = parse(&[]).unwrap();
        assert_eq!(defaults.reset_rate, 0.0);
        assert_eq!(defaults.answer_delay, Duration::ZERO);
        assert_eq!(defaults.capacity_flip, None);

        let set = parse(&[
            "--reset-rate",
            "0.2",
            "--answer-delay-ms",
            "1500",
            "--capacity-flip-secs",
            "2.5",
        ])
        .unwrap();
        assert_eq!(set.reset_rate, 0.2);
        assert_eq!(set.answer_delay, Duration::from_millis(1500));
        assert_eq!(set.capacity_flip, Some(Duration::from_millis(2500)));
        let off = parse(&["--capacity-flip-secs", "0"]).unwrap();
        assert_eq!(off.capacity_flip, None);
        let outcomes = parse(&[
            "--viber-fail-rate",
            "0.5",
            "--viber-fail-codes",
            "8:1,9:2",
            "--sms-fallback-rate",
            "0.25",
            "--sms-fail-rate",
            "0.1",
        ])
        .unwrap();
        assert_eq!(outcomes.viber_fail_rate, Some(0.5));
        assert_eq!(outcomes.viber_fail_codes.to_string(), "8:1,9:2,10:0");
        assert_eq!(
            (outcomes.sms_fallback_rate, outcomes.sms_fail_rate),
            (0.25, 0.1)
        );
        assert_eq!(defaults.viber_fail_rate, None);
        assert_eq!(defaults.sms_fallback_rate, 1.0);

        for bad in [
            ["--reset-rate", "1.5"],
            ["--reset-rate", "x"],
            ["--capacity-flip-secs", "-1"],
            ["--viber-fail-rate", "2"],
            ["--viber-fail-codes", "7:1"],
        ] {
            let err = parse(&bad).unwrap_err();
            assert!(err.contains(bad[1]), "{err}");
        }
    }

    #[test]
    fn flags_override_the_file() {
        let cli = Cli::parse_from([
            "sluice",
            "serve",
            "--listen",
            "127.0.0.1:1",
            "--upstream",
            "https://api.test",
        ]);
        let Command::Serve(args) = cli.command else {
            panic!("not serve")
        };
        let mut config =
            Config::parse("[server]\nlisten = \"127.0.0.1:2\"\nadmin_listen = \"127.0.0.1:3\"")
                .unwrap();
        args.apply(&mut config);
        assert_eq!(config.server.listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(config.server.admin_listen, "127.0.0.1:3".parse().unwrap());
        assert_eq!(config.upstream.url, "https://api.test");
    }
}
