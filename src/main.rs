//! The `sluice` binary: parses the command line, sets up logging, runs a command, and
//! turns Ctrl-C/SIGTERM into a graceful shutdown.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{Cli, Command};
use sluice::config::{Config, LogFormat};
use sluice::{apikey::ApiKey, app, demo, simulator};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Registry};

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Command::CheckConfig { file } = &cli.command {
        return match Config::load(file) {
            Ok(_) => {
                println!("{}: ok", file.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sluice stopped");
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    }
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(cli: Cli) -> Result<(), BoxError> {
    let shutdown = shutdown_signal();
    match cli.command {
        Command::Serve(args) => {
            let mut config = match &args.config {
                Some(path) => Config::load(path)?,
                None => Config::default(),
            };
            args.apply(&mut config);
            let logs = init_logging(&cli.log_format, &cli.log_level, &config);
            config.validate()?;
            let key = ApiKey::load(
                std::env::var("SLUICE_API_KEY").ok(),
                config.upstream.api_key_file.as_deref(),
            )?;
            // Listening for SIGHUP before anything else, so that none can stop sluice.
            let hangups = hangups();
            let running = app::start(&config, key).await?;
            tokio::spawn(reload_on_hangup(
                hangups,
                logs,
                args.config.clone(),
                cli.log_level.clone(),
            ));
            shutdown.cancelled().await;
            tracing::info!(
                grace_ms = config.server.shutdown_grace_ms,
                "shutting down: no new connections; queued sends go on and waiting clients are answered within the grace period"
            );
            running.shutdown();
            running.wait().await?;
            tracing::info!("stopped");
        }
        Command::Simulate(args) => {
            init_logging(&cli.log_format, &cli.log_level, &Config::default());
            let sim = simulator::Simulator::new(demo::sim_config(&args));
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
            tracing::info!(addr = %listener.local_addr()?, "simulated messaging API listening");
            simulator::serve(listener, sim, async move { shutdown.cancelled().await }).await?;
        }
        Command::Demo(args) => {
            let mut config = Config::default();
            config.log.format = LogFormat::Text;
            config.log.level = "error".into();
            init_logging(&cli.log_format, &cli.log_level, &config);
            demo::run(args, shutdown).await?;
        }
        Command::CheckConfig { .. } => unreachable!("handled before the runtime starts"),
    }
    Ok(())
}

/// Changes the log filter while running (on SIGHUP).
type LogHandle = reload::Handle<EnvFilter, Registry>;

/// Logging to stdout: flags over config; `RUST_LOG` over both. Returns the handle that
/// changes the filter later.
fn init_logging(format: &Option<LogFormat>, level: &Option<String>, config: &Config) -> LogHandle {
    let level = level.clone().unwrap_or_else(|| config.log.level.clone());
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);
    match format.unwrap_or(config.log.format) {
        LogFormat::Json => registry
            .with(
                fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(true)
                    .with_span_list(false),
            )
            .init(),
        LogFormat::Text => registry.with(fmt::layer()).init(),
    }
    handle
}

/// SIGHUP reloads what can change while running, the log level (from `--log-level`, else
/// the config file read again), and says that the rest needs a restart. It never stops
/// sluice, whatever the file holds.
async fn reload_on_hangup(
    hangups: Option<Hangups>,
    logs: LogHandle,
    file: Option<PathBuf>,
    flag: Option<String>,
) {
    #[cfg(unix)]
    {
        let Some(mut hangups) = hangups else {
            tracing::warn!("cannot listen for SIGHUP; it would stop sluice");
            return;
        };
        while hangups.recv().await.is_some() {
            if std::env::var_os("RUST_LOG").is_some() {
                tracing::warn!("SIGHUP: RUST_LOG is set, so the log level stays; nothing else is reloaded while running (restart for other settings)");
                continue;
            }
            let level = match (&flag, &file) {
                (Some(level), _) => Ok(level.clone()),
                (None, Some(path)) => Config::load(path).map(|c| c.log.level),
                (None, None) => Ok(Config::default().log.level),
            };
            let applied = level
                .map_err(|e| e.to_string())
                .and_then(|l| {
                    EnvFilter::try_new(&l)
                        .map(|f| (l, f))
                        .map_err(|e| e.to_string())
                })
                .and_then(|(l, f)| logs.reload(f).map(|()| l).map_err(|e| e.to_string()));
            match applied {
                Ok(level) => {
                    tracing::warn!(%level, "SIGHUP: log level reloaded; other settings apply at the next start")
                }
                Err(e) => {
                    tracing::error!(error = %e, "SIGHUP: nothing reloaded; sluice goes on as it was")
                }
            }
        }
    }
    #[cfg(not(unix))]
    let _ = (hangups, logs, file, flag);
}

#[cfg(unix)]
type Hangups = tokio::signal::unix::Signal;
#[cfg(not(unix))]
type Hangups = ();

/// The SIGHUP stream; from its creation on, SIGHUP no longer stops the process.
fn hangups() -> Option<Hangups> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        signal(SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    None
}

/// A token cancelled on the first Ctrl-C or SIGTERM.
fn shutdown_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = ctrl_c => {},
                _ = term.recv() => {},
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        cancel.cancel();
    });
    token
}
