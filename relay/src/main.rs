//! `relay`: drains the outbox of every source database into RabbitMQ;
//! `relay dlq ...` inspects and replays dead-lettered messages; `relay
//! outbox ...` the outbox rows the relay parked.

use clap::{Parser, Subcommand};
use ordermesh_platform::{config::ProcessEnv, shutdown, telemetry};

/// Relays outbox rows from PostgreSQL to RabbitMQ. Configured by environment
/// variables (RELAY_SOURCES, RELAY_BATCH_SIZE, RELAY_FALLBACK_TICK_MS,
/// RELAY_ADMIN_ADDR, RELAY_PUBLISH_TIMEOUT_MS, RELAY_HANDOVER_AFTER_MS,
/// RELAY_MAX_ATTEMPTS, RELAY_RETRY_MS, RELAY_MAX_MESSAGE_BYTES, AMQP_URL,
/// AMQP_EXCHANGE, SHUTDOWN_GRACE_MS).
#[derive(Parser)]
#[command(version)]
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

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Dlq { command }) => {
            let config = or_exit(relay::dlq::Config::from_env(&ProcessEnv));
            return relay::dlq::run(command, &config, &mut std::io::stdout().lock()).await;
        }
        Some(Command::Outbox { command }) => {
            let config = or_exit(relay::parked::Config::from_env(&ProcessEnv));
            return relay::parked::run(command, &config, &mut std::io::stdout().lock()).await;
        }
        None => {}
    }
    telemetry::init();
    let config = or_exit(relay::Config::from_env(&ProcessEnv));
    let admin = tokio::net::TcpListener::bind(config.admin_addr).await?;
    tracing::info!(addr = %admin.local_addr()?, "admin listening (GET /healthz, /readyz, /metrics)");
    let shutdown = shutdown::on_signal();
    let result = relay::run(config, admin, shutdown).await;
    // Export the spans still queued before the process exits.
    telemetry::shutdown().await;
    result
}

/// The configuration, or exit 2 naming the bad variable.
fn or_exit<T>(config: Result<T, ordermesh_platform::config::ConfigError>) -> T {
    config.unwrap_or_else(|e| {
        eprintln!("relay: {e}");
        std::process::exit(2);
    })
}
