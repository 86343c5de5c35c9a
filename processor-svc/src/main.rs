//! The `processor-svc` binary: reads the configuration, then serves (the
//! default), only migrates the database, or prints a signed token.
//! Everything else is in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ordermesh_runtime::{config::ProcessEnv, service, shutdown, telemetry};
use processor_svc::Config;

/// AccountService and the order payment consumer of ordermesh.
#[derive(Debug, Parser)]
#[command(name = "processor-svc", version, about, after_help = Config::help())]
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
        role: ordermesh_auth::Role,
        /// Lifetime in seconds (default: AUTH_TOKEN_TTL_S, 3600).
        #[arg(long = "ttl-s", value_parser = clap::value_parser!(u64).range(1..))]
        ttl_s: Option<u64>,
    },
}

fn main() -> ExitCode {
    service::runtime().block_on(run())
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let config = service::config_or_exit(Config::from_env(&ProcessEnv));
    telemetry::init();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => processor_svc::migrate(&config).await,
        Command::Token {
            subject,
            role,
            ttl_s,
        } => {
            let ttl = ttl_s.map(std::time::Duration::from_secs);
            let token = processor_svc::issue_token(&config, &subject, role, ttl);
            println!("{}", service::config_or_exit(token));
            Ok(())
        }
    };
    service::exit("processor-svc", result).await
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = service::bind("processor-svc", config.addr, config.tls.is_some()).await?;
    processor_svc::run(config, listener, shutdown::on_signal()).await
}
