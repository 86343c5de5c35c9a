//! `relay dlq`: lists, shows and replays the messages the consumers parked
//! in their dead-letter queues (`<queue>.dlq`, see
//! [`ordermesh_messaging::redelivery`]).
//!
//! AMQP 0-9-1 cannot peek, so reading a queue takes its messages with
//! `basic.get` without acknowledging them and, once done, requeues all it
//! did not replay (`basic.nack`, `requeue`). A classic queue puts them back
//! in their places, so nothing is lost or reordered; they come back with
//! the `redelivered` flag set (and on a quorum queue with `x-delivery-count`
//! raised). If the command dies half-way, closing its connection requeues
//! them just the same. While one command holds messages, another sees only
//! the rest.
//!
//! A replay publishes the message to its work queue only (default exchange,
//! the queue's name as routing key: the events exchange would deliver it to
//! every subscriber again), with its own message id and properties, its
//! attempt count and failure details dropped; once the broker confirms, it
//! is acknowledged out of the dead-letter queue. A message that had been
//! applied before is a duplicate to the consumer's inbox.

mod broker;
mod output;

use std::io::Write;
use std::time::Duration;

use clap::{ArgGroup, Subcommand};
use lapin::Connection;
use ordermesh_messaging::amqp::{self, BrokerConfig, dead_letter_queue};
use ordermesh_runtime::config::{self, ConfigError, Env};
use tokio_util::sync::CancellationToken;

use self::broker::open;
pub use self::broker::{list, replay, show};
pub use self::output::Parked;
pub(crate) use self::output::decode_payload;
use self::output::{print_detail, print_table};

/// The services' queues and their defaults (order-svc's and
/// processor-svc's `ENV_QUEUE` / `DEFAULT_QUEUE`): without `--queue` the
/// command looks at both dead-letter queues.
pub const ENV_ORDER_QUEUE: &str = "ORDER_QUEUE";
pub const DEFAULT_ORDER_QUEUE: &str = "ordermesh.order-svc.payment-results";
pub const ENV_PROCESSOR_QUEUE: &str = "PROCESSOR_QUEUE";
pub const DEFAULT_PROCESSOR_QUEUE: &str = "ordermesh.processor-svc.order-created";
/// Messages `list` prints per queue unless `--limit` says otherwise.
pub const DEFAULT_LIST_LIMIT: usize = 1000;
/// Most messages `show` and `replay <id>` look through per queue.
pub const SCAN_LIMIT: usize = 100_000;
/// How long the command waits for the broker.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// `relay dlq ...`
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List parked messages, oldest first; they stay in the queue.
    List {
        #[command(flatten)]
        queue: QueueArg,
        /// Print at most this many per queue.
        #[arg(long, default_value_t = DEFAULT_LIST_LIMIT)]
        limit: usize,
        /// One JSON object per line instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one parked message: properties, headers, payload.
    Show {
        /// Its AMQP message_id (the outbox event id).
        message_id: String,
        #[command(flatten)]
        queue: QueueArg,
        /// JSON instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Send parked messages back to their work queue, attempts reset.
    #[command(group(ArgGroup::new("which").required(true).args(["message_id", "all"])))]
    Replay {
        /// The message_id to replay (every copy of it).
        message_id: Option<String>,
        /// Replay every message parked when the command starts.
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        queue: QueueArg,
    },
}

#[derive(Debug, clap::Args)]
pub struct QueueArg {
    /// The work queue whose dead letters to use (its `.dlq` name works too);
    /// default: the order-svc and processor-svc queues.
    #[arg(long)]
    pub queue: Option<String>,
}

/// Where the broker is and which work queues there are.
#[derive(Debug, Clone)]
pub struct Config {
    pub broker: BrokerConfig,
    /// The work queues looked at without `--queue`.
    pub queues: Vec<String>,
}

impl Config {
    /// Reads the broker variables (`AMQP_URL`, ...) and `ORDER_QUEUE`,
    /// `PROCESSOR_QUEUE`.
    pub fn from_env(env: &impl Env) -> Result<Self, ConfigError> {
        Ok(Self {
            broker: BrokerConfig::from_env(env)?,
            queues: vec![
                config::string(env, ENV_ORDER_QUEUE, DEFAULT_ORDER_QUEUE),
                config::string(env, ENV_PROCESSOR_QUEUE, DEFAULT_PROCESSOR_QUEUE),
            ],
        })
    }

    fn queues(&self, arg: &QueueArg) -> Vec<String> {
        match &arg.queue {
            Some(q) => vec![q.strip_suffix(".dlq").unwrap_or(q).to_owned()],
            None => self.queues.clone(),
        }
    }
}

/// Runs one `relay dlq` command, writing its report to `out`.
pub async fn run(command: Command, config: &Config, out: &mut impl Write) -> anyhow::Result<()> {
    let conn = tokio::time::timeout(
        CONNECT_TIMEOUT,
        amqp::connect(&config.broker, "relay-dlq", &CancellationToken::new()),
    )
    .await
    .map_err(|_| anyhow::anyhow!("RabbitMQ not reachable within {CONNECT_TIMEOUT:?}"))??;
    let result = match command {
        Command::List { queue, limit, json } => {
            list_cmd(&conn, &config.queues(&queue), limit, json, out).await
        }
        Command::Show {
            message_id,
            queue,
            json,
        } => show_cmd(&conn, &config.queues(&queue), &message_id, json, out).await,
        Command::Replay {
            message_id,
            all,
            queue,
        } => {
            let which = if all { None } else { message_id.as_deref() };
            replay_cmd(&conn, &config.queues(&queue), which, out).await
        }
    };
    let _ = conn.close(200, "done".into()).await;
    result
}

async fn list_cmd(
    conn: &Connection,
    queues: &[String],
    limit: usize,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    for queue in queues {
        let Some((channel, _)) = open(conn, queue, out).await? else {
            continue;
        };
        let (parked, left) = list(&channel, queue, limit).await?;
        if json {
            for p in &parked {
                writeln!(out, "{}", p.summary())?;
            }
        } else {
            print_table(out, queue, &parked, left)?;
        }
        let _ = channel.close(200, "done".into()).await;
    }
    Ok(())
}

async fn show_cmd(
    conn: &Connection,
    queues: &[String],
    id: &str,
    json: bool,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut found = 0;
    for queue in queues {
        let Some((channel, _)) = open(conn, queue, out).await? else {
            continue;
        };
        for p in show(&channel, queue, id).await? {
            found += 1;
            if json {
                writeln!(out, "{}", p.detail())?;
            } else {
                print_detail(out, &p)?;
            }
        }
        let _ = channel.close(200, "done".into()).await;
    }
    anyhow::ensure!(found > 0, "no message {id} in {}", dlq_names(queues));
    Ok(())
}

async fn replay_cmd(
    conn: &Connection,
    queues: &[String],
    id: Option<&str>,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let mut total = 0;
    for queue in queues {
        let Some((channel, parked)) = open(conn, queue, out).await? else {
            continue;
        };
        let replayed = replay(&channel, queue, id, parked).await?;
        for message_id in &replayed {
            writeln!(
                out,
                "replayed {} to {queue}",
                message_id.as_deref().unwrap_or("(no message_id)")
            )?;
        }
        total += replayed.len();
        let _ = channel.close(200, "done".into()).await;
    }
    match id {
        Some(id) => anyhow::ensure!(total > 0, "no message {id} in {}", dlq_names(queues)),
        None => writeln!(out, "replayed {total} message(s)")?,
    }
    Ok(())
}

fn dlq_names(queues: &[String]) -> String {
    queues
        .iter()
        .map(|q| dead_letter_queue(q))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use lapin::types::{AMQPValue, FieldTable};
    use serde_json::json;

    use super::output::json_value;
    use super::*;

    #[test]
    fn defaults_are_the_two_service_queues() {
        let config = Config::from_env(&HashMap::<&str, String>::new()).unwrap();
        assert_eq!(
            config.queues,
            [DEFAULT_ORDER_QUEUE, DEFAULT_PROCESSOR_QUEUE]
        );
        let env = HashMap::from([(ENV_ORDER_QUEUE, "a".to_owned())]);
        let config = Config::from_env(&env).unwrap();
        assert_eq!(config.queues, ["a", DEFAULT_PROCESSOR_QUEUE]);
        let arg = QueueArg {
            queue: Some("x.dlq".into()),
        };
        assert_eq!(config.queues(&arg), ["x"]);
    }

    #[test]
    fn header_values_render_as_json() {
        let mut death = FieldTable::default();
        death.insert("count".into(), AMQPValue::LongLongInt(2));
        death.insert("queue".into(), AMQPValue::LongString("q".into()));
        let array = AMQPValue::FieldArray(vec![AMQPValue::FieldTable(death)].into());
        assert_eq!(json_value(&array), json!([{"count": 2, "queue": "q"}]));
        assert_eq!(json_value(&AMQPValue::Boolean(true)), json!(true));
    }
}
