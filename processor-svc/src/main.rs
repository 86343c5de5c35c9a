//! The `processor-svc` binary: reads the configuration, then serves (the
//! default), only migrates the database, or prints a signed token.
//! Everything else is in the library.

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
    /// Print a bearer token signed with the configured key
    /// (AUTH_JWT_SIGNING_KEY_FILE, else AUTH_JWT_SECRET) to stdout.
    Token {
        /// The token's subject: a customer id, or an operator's name.
        #[arg(long)]
        subject: String,
        /// customer or admin.
        #[arg(long, default_value = "customer")]
        role: ordermesh_platform::auth::Role,
        /// Lifetime in seconds (default: AUTH_TOKEN_TTL_S, 3600).
        #[arg(long = "ttl-s", value_parser = clap::value_parser!(u64).range(1..))]
        ttl_s: Option<u64>,
    },
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
        Command::Token {
            subject,
            role,
            ttl_s,
        } => {
            let ttl = ttl_s.map(std::time::Duration::from_secs);
            match processor_svc::issue_token(&config, &subject, role, ttl) {
                Ok(token) => {
                    println!("{token}");
                    return ExitCode::SUCCESS;
                }
                Err(e) => {
                    tracing::error!(variable = %e.name, "{e}");
                    return ExitCode::from(2);
                }
            }
        }
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
    tracing::info!(addr = %listener.local_addr()?, tls = config.tls.is_some(), "gRPC listening");
    let shutdown = ordermesh_platform::shutdown::on_signal();
    processor_svc::run(config, listener, shutdown).await
}
