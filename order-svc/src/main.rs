//! The `order-svc` binary: `serve` (the default) runs the service, `migrate`
//! only prepares the database. Everything else lives in the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use order_svc::Config;
use ordermesh_runtime::{config::ProcessEnv, service, shutdown, telemetry};

#[derive(Parser)]
#[command(
    name = "order-svc",
    version,
    about = "The ordermesh OrderService",
    after_help = Config::help()
)]
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

fn main() -> ExitCode {
    service::runtime().block_on(run())
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let config = service::config_or_exit(Config::from_env(&ProcessEnv));
    telemetry::init();
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(config).await,
        Command::Migrate => order_svc::migrate(&config).await,
    };
    service::exit("order-svc", result).await
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let listener = service::bind("order-svc", config.addr, config.tls.is_some()).await?;
    order_svc::run(config, listener, shutdown::on_signal()).await
}
