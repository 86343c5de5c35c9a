//! `relay`: drains the outbox of every source database into RabbitMQ;
//! `relay dlq ...` inspects and replays dead-lettered messages.

use clap::{Parser, Subcommand};
use ordermesh_platform::{config::ProcessEnv, shutdown, telemetry};

/// Relays outbox rows from PostgreSQL to RabbitMQ. Configured by environment
/// variables (RELAY_SOURCES, RELAY_BATCH_SIZE, RELAY_FALLBACK_TICK_MS,
/// RELAY_ADMIN_ADDR, AMQP_URL, AMQP_EXCHANGE, SHUTDOWN_GRACE_MS).
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
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Some(Command::Dlq { command }) = cli.command {
        let config = match relay::dlq::Config::from_env(&ProcessEnv) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("relay: {e}");
                std::process::exit(2);
            }
        };
        return relay::dlq::run(command, &config, &mut std::io::stdout().lock()).await;
    }
    telemetry::init();
    let config = match relay::Config::from_env(&ProcessEnv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("relay: {e}");
            std::process::exit(2);
        }
    };
    let admin = tokio::net::TcpListener::bind(config.admin_addr).await?;
    tracing::info!(addr = %admin.local_addr()?, "admin listening (GET /healthz, /readyz, /metrics)");
    let shutdown = shutdown::on_signal();
    let result = relay::run(config, admin, shutdown).await;
    // Export the spans still queued before the process exits.
    telemetry::shutdown().await;
    result
}
