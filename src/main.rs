//! The `sluice` binary: parses the command line, sets up logging, runs a command, and
//! turns Ctrl-C/SIGTERM into a graceful shutdown.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use sluice::cli::{Cli, Command};
use sluice::config::{Config, LogFormat};
use sluice::{apikey::ApiKey, app, demo, simulator};
use tokio_util::sync::CancellationToken;

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
            init_logging(&cli.log_format, &cli.log_level, &config);
            config.validate()?;
            let key = ApiKey::load(
                std::env::var("SLUICE_API_KEY").ok(),
                config.upstream.api_key_file.as_deref(),
            )?;
            let running = app::start(&config, key).await?;
            shutdown.cancelled().await;
            tracing::info!("shutting down: no new connections, finishing in-flight requests");
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

/// Logging to stdout: flags over config; `RUST_LOG` over both.
fn init_logging(format: &Option<LogFormat>, level: &Option<String>, config: &Config) {
    let level = level.clone().unwrap_or_else(|| config.log.level.clone());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match format.unwrap_or(config.log.format) {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
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
