//! The `processor-svc` binary: reads the configuration, then either serves
//! (the default) or only migrates the database. Everything else is in the
//! library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use ordermesh_platform::config::ProcessEnv;
use processor_svc::Config;

/// AccountService and the order payment consumer of ordermesh.
#[derive(Debug, Parser)]
#[command(name = "processor-svc", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Migrate, serve gRPC and consume orders until SIGTERM (the default).
    Serve,
    /// Create and migrate the database, then exit.
    Migrate,
}

#[tokio::main]
async fn main() -> ExitCode {
    ordermesh_platform::telemetry::init();
    let cli = Cli::parse();
    let config = match Config::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(variable = %e.name, "{e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => processor_svc::migrate(&config).await,
    };
    // Export the spans still queued before the process exits.
    ordermesh_platform::telemetry::shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "processor-svc failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("bind {}", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, "gRPC listening");
    let shutdown = ordermesh_platform::shutdown::on_signal();
    processor_svc::run(config, listener, shutdown).await
}
