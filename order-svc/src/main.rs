//! The `order-svc` binary: `serve` (the default) runs the service, `migrate`
//! only prepares the database. Everything else lives in the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use order_svc::Config;
use ordermesh_platform::{config::ProcessEnv, shutdown, telemetry};

#[derive(Parser)]
#[command(name = "order-svc", version, about = "The ordermesh OrderService")]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Migrate, serve gRPC and consume payment results (the default).
    Serve,
    /// Create the database if missing, apply migrations and exit.
    Migrate,
}

#[tokio::main]
async fn main() -> ExitCode {
    telemetry::init();
    let cli = Cli::parse();
    let config = match Config::from_env(&ProcessEnv) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("order-svc: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Migrate => order_svc::migrate(&config).await,
        Command::Serve => serve(config).await,
    };
    // Export the spans still queued before the process exits.
    telemetry::shutdown().await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = format!("{e:#}"), "order-svc failed");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(config.addr)
        .await
        .with_context(|| format!("bind {}", config.addr))?;
    tracing::info!(addr = %listener.local_addr()?, tls = config.tls.is_some(), "order-svc listening (gRPC)");
    order_svc::run(config, listener, shutdown::on_signal()).await
}
