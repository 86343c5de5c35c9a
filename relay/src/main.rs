//! `relay`: drains the outbox of every source database into RabbitMQ;
//! `relay dlq ...` inspects and replays dead-lettered messages; `relay
//! outbox ...` the outbox rows the relay parked.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use ordermesh_runtime::{config::ProcessEnv, service, shutdown, telemetry};

/// Relays outbox rows from PostgreSQL to RabbitMQ.
#[derive(Parser)]
#[command(name = "relay", version, about, after_help = relay::Config::help())]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// List, show and replay dead-lettered messages (AMQP_URL, ORDER_QUEUE,
    /// PROCESSOR_QUEUE).
    Dlq {
        #[command(subcommand)]
        command: relay::dlq::Command,
    },
    /// List, show, replay and drop the outbox rows the relay parked
    /// (RELAY_SOURCES, PG_CA_FILE).
    Outbox {
        #[command(subcommand)]
        command: relay::parked::Command,
    },
}

fn main() -> ExitCode {
    service::runtime().block_on(run())
}

async fn run() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        None => relay().await,
        Some(Command::Dlq { command }) => {
            let config = service::config_or_exit(relay::dlq::Config::from_env(&ProcessEnv));
            relay::dlq::run(command, &config, &mut std::io::stdout().lock()).await
        }
        Some(Command::Outbox { command }) => {
            let config = service::config_or_exit(relay::parked::Config::from_env(&ProcessEnv));
            relay::parked::run(command, &config, &mut std::io::stdout().lock()).await
        }
    };
    service::exit("relay", result).await
}

/// Relays until a signal, with telemetry (the subcommands have none).
async fn relay() -> anyhow::Result<()> {
    let config = service::config_or_exit(relay::Config::from_env(&ProcessEnv));
    telemetry::init();
    let admin = service::bind("relay admin", config.admin_addr, config.tls.is_some()).await?;
    relay::run(config, admin, shutdown::on_signal()).await
}
