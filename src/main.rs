//! The `sluice` binary: parses the command line, sets up logging, runs a command, and
//! turns Ctrl-C/SIGTERM into a graceful shutdown.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};
use sluice::cli::{Cli, Command};
use sluice::config::{Config, LogFormat};
use sluice::{app, demo, keys::apikey::ApiKey, logs, simulator};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = Cli::command();
            clap_complete::generate(*shell, &mut command, "sluice", &mut std::io::stdout());
            return ExitCode::SUCCESS;
        }
        Command::Man => {
            return match clap_mangen::Man::new(Cli::command()).render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("sluice: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {}
    }
    if let Command::Support(args) = &cli.command {
        return match sluice::delivery::support::run(&args.data_dir, &args.request_id, args.json) {
            Ok(text) => {
                println!("{text}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("sluice support: {e}");
                ExitCode::FAILURE
            }
        };
    }
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
    let code = match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "sluice stopped");
            eprintln!("sluice: {e}");
            ExitCode::FAILURE
        }
    };
    // Log lines still spooled would be lost at exit.
    logs::flush();
    code
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;

async fn run(cli: Cli) -> Result<(), BoxError> {
    let shutdown = shutdown_signal();
    match cli.command {
        Command::Serve(args) => {
            let mut config = Config::from_sources(args.config.as_deref(), std::env::vars())?;
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
        Command::CheckConfig { .. }
        | Command::Completions { .. }
        | Command::Man
        | Command::Support(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
    Ok(())
}

/// Logging to stdout: flags over config; `RUST_LOG` over both (see [`logs`]).
fn init_logging(
    format: &Option<LogFormat>,
    level: &Option<String>,
    config: &Config,
) -> logs::Handle {
    let level = level.clone().unwrap_or_else(|| config.log.level.clone());
    logs::init(format.unwrap_or(config.log.format), &level)
}

/// SIGHUP reloads what can change while running, the log level (from `--log-level`, else
/// the config file read again), and says that the rest needs a restart. It never stops
/// sluice, whatever the file holds.
async fn reload_on_hangup(
    hangups: Option<Hangups>,
    logs: logs::Handle,
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
                (None, file) => {
                    Config::from_sources(file.as_deref(), std::env::vars()).map(|c| c.log.level)
                }
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
