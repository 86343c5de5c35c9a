//! `relay dlq`: lists, shows and replays the messages the consumers parked
//! in their dead-letter queues (`<queue>.dlq`, see
//! [`ordermesh_platform::redelivery`]).
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

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use anyhow::Context as _;
use base64::Engine as _;
use clap::{ArgGroup, Subcommand};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicNackOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, Connection};
use ordermesh_platform::amqp::{self, BrokerConfig, dead_letter_queue};
use ordermesh_platform::config::{self, ConfigError, Env};
use ordermesh_platform::redelivery::{self, value_text};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

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

/// A parked message as read from a dead-letter queue.
#[derive(Debug)]
pub struct Parked {
    /// The work queue it failed in.
    pub queue: String,
    pub delivery: Delivery,
}

impl Parked {
    pub fn message_id(&self) -> Option<&str> {
        self.delivery
            .properties
            .message_id()
            .as_ref()
            .map(|s| s.as_str())
    }

    fn header(&self, name: &str) -> Option<String> {
        self.delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| redelivery::header_text(h, name))
    }

    /// The fields `list` prints.
    pub fn summary(&self) -> Value {
        let p = &self.delivery.properties;
        let (exchange, routing_key) = redelivery::original_route(&self.delivery);
        json!({
            "queue": self.queue,
            "dead_letter_queue": dead_letter_queue(&self.queue),
            "message_id": self.message_id(),
            "type": p.kind().as_ref().map(|s| s.as_str()),
            "exchange": exchange,
            "routing_key": routing_key,
            "attempts": redelivery::attempts(p),
            "reason": self.header(redelivery::HEADER_REASON)
                .or_else(|| self.header("x-first-death-reason")),
            "error": self.header(redelivery::HEADER_ERROR),
            "failed_at": self.header(redelivery::HEADER_FAILED_AT),
            "redelivered": self.delivery.redelivered,
            "payload_bytes": self.delivery.data.len(),
        })
    }

    /// Everything: the summary, all properties and headers, the payload in
    /// base64 and, when its `type` is a known protobuf message, as JSON.
    pub fn detail(&self) -> Value {
        let p = &self.delivery.properties;
        let mut out = self.summary();
        let headers: serde_json::Map<String, Value> = p
            .headers()
            .as_ref()
            .map(|h| {
                h.inner()
                    .iter()
                    .map(|(k, v)| (k.as_str().to_owned(), json_value(v)))
                    .collect()
            })
            .unwrap_or_default();
        let properties = json!({
            "content_type": p.content_type().as_ref().map(|s| s.as_str()),
            "delivery_mode": p.delivery_mode(),
            "timestamp": p.timestamp(),
            "app_id": p.app_id().as_ref().map(|s| s.as_str()),
            "correlation_id": p.correlation_id().as_ref().map(|s| s.as_str()),
        });
        let extra = json!({
            "properties": properties,
            "headers": headers,
            "payload_base64": base64::engine::general_purpose::STANDARD.encode(&self.delivery.data),
            "payload": decode_payload(p.kind().as_ref().map(|s| s.as_str()), &self.delivery.data),
        });
        if let (Value::Object(out), Value::Object(extra)) = (&mut out, extra) {
            out.extend(extra);
        }
        out
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

/// A confirm-mode channel and the number of messages in `queue`'s
/// dead-letter queue, or `None` (reported) when it does not exist.
async fn open(
    conn: &Connection,
    queue: &str,
    out: &mut impl Write,
) -> anyhow::Result<Option<(Channel, u32)>> {
    let dlq = dead_letter_queue(queue);
    let channel = conn.create_channel().await.context("open a channel")?;
    // A passive declare of a missing queue closes the channel.
    let parked = match passive_len(&channel, &dlq).await {
        Ok(n) => n,
        Err(e) => {
            writeln!(out, "{dlq}: not found ({e})")?;
            return Ok(None);
        }
    };
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .context("enable publisher confirms")?;
    Ok(Some((channel, parked)))
}

async fn passive_len(channel: &Channel, queue: &str) -> lapin::Result<u32> {
    let q = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(q.message_count())
}

/// Takes up to `limit` messages of `queue`'s dead-letter queue without
/// acknowledging them; also returns how many were left behind.
async fn take(channel: &Channel, queue: &str, limit: usize) -> anyhow::Result<(Vec<Parked>, u32)> {
    let dlq = dead_letter_queue(queue);
    let mut held = Vec::new();
    while held.len() < limit {
        let Some(got) = channel
            .basic_get(dlq.as_str().into(), BasicGetOptions { no_ack: false })
            .await
            .with_context(|| format!("read {dlq}"))?
        else {
            return Ok((held, 0));
        };
        held.push(Parked {
            queue: queue.to_owned(),
            delivery: got.delivery,
        });
    }
    let left = passive_len(channel, &dlq)
        .await
        .with_context(|| format!("count {dlq}"))?;
    Ok((held, left))
}

/// Puts held messages back in their places.
async fn put_back(held: &[Parked]) -> anyhow::Result<()> {
    for p in held {
        p.delivery
            .acker
            .nack(BasicNackOptions {
                multiple: false,
                requeue: true,
            })
            .await
            .context("requeue a dead letter")?;
    }
    Ok(())
}

/// The first `limit` parked messages of `queue`, left in place (flagged
/// redelivered), and how many more there are.
pub async fn list(
    channel: &Channel,
    queue: &str,
    limit: usize,
) -> anyhow::Result<(Vec<Parked>, u32)> {
    let (held, left) = take(channel, queue, limit).await?;
    put_back(&held).await?;
    Ok((held, left))
}

/// Every parked copy of message `id` in `queue`'s dead-letter queue, left
/// in place.
pub async fn show(channel: &Channel, queue: &str, id: &str) -> anyhow::Result<Vec<Parked>> {
    let (held, _) = take(channel, queue, SCAN_LIMIT).await?;
    put_back(&held).await?;
    Ok(held
        .into_iter()
        .filter(|p| p.message_id() == Some(id))
        .collect())
}

/// Replays every parked copy of `id` (or, for `None`, the first `parked`
/// messages: those parked when the command started) to `queue`; returns
/// the message ids replayed. `channel` must be in confirm mode.
pub async fn replay(
    channel: &Channel,
    queue: &str,
    id: Option<&str>,
    parked: u32,
) -> anyhow::Result<Vec<Option<String>>> {
    let mut replayed = Vec::new();
    match id {
        Some(id) => {
            let (held, _) = take(channel, queue, SCAN_LIMIT).await?;
            let (chosen, rest): (Vec<_>, Vec<_>) =
                held.into_iter().partition(|p| p.message_id() == Some(id));
            put_back(&rest).await?;
            for p in &chosen {
                replay_one(channel, p).await?;
                replayed.push(Some(id.to_owned()));
            }
        }
        None => {
            // Only what was parked at the start: a message that fails again
            // and comes back is not replayed twice by one command.
            for _ in 0..parked {
                let (mut one, _) = take(channel, queue, 1).await?;
                let Some(p) = one.pop() else { break };
                replay_one(channel, &p).await?;
                replayed.push(p.message_id().map(str::to_owned));
            }
        }
    }
    Ok(replayed)
}

/// Republishes one held message to its work queue, confirmed, then
/// acknowledges it out of the dead-letter queue. If the publish fails the
/// message stays held and goes back when the channel closes.
async fn replay_one(channel: &Channel, parked: &Parked) -> anyhow::Result<()> {
    let d = &parked.delivery;
    let properties = redelivery::replay_properties(d, &parked.queue);
    redelivery::publish_confirmed(channel, &parked.queue, &d.data, properties)
        .await
        .with_context(|| format!("replay {:?} to {}", parked.message_id(), parked.queue))?;
    d.acker
        .ack(BasicAckOptions::default())
        .await
        .context("acknowledge the replayed dead letter")?;
    Ok(())
}

fn print_table(
    out: &mut impl Write,
    queue: &str,
    parked: &[Parked],
    left: u32,
) -> std::io::Result<()> {
    writeln!(
        out,
        "{}: {} parked",
        dead_letter_queue(queue),
        parked.len() as u64 + u64::from(left)
    )?;
    if parked.is_empty() {
        return Ok(());
    }
    let field = |v: &Value, k: &str| match &v[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.replace(['\n', '\r'], " "),
        other => other.to_string(),
    };
    let columns = [
        ("MESSAGE ID", "message_id"),
        ("ATTEMPTS", "attempts"),
        ("REASON", "reason"),
        ("FAILED AT", "failed_at"),
        ("ROUTING KEY", "routing_key"),
        ("TYPE", "type"),
        ("ERROR", "error"),
    ];
    let rows: Vec<Vec<String>> = parked
        .iter()
        .map(|p| {
            let s = p.summary();
            columns.iter().map(|(_, k)| field(&s, k)).collect()
        })
        .collect();
    let widths: Vec<usize> = columns
        .iter()
        .enumerate()
        .map(|(i, (title, _))| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([title.len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |out: &mut dyn Write, cells: Vec<String>| {
        let last = cells.len() - 1;
        let mut text = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            if i == last {
                // The error goes last and unpadded; cut it for the table.
                text.extend(cell.chars().take(100));
            } else {
                text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(out, columns.iter().map(|(t, _)| (*t).to_owned()).collect())?;
    for row in rows {
        line(out, row)?;
    }
    if left > 0 {
        writeln!(out, "... and {left} more (raise --limit)")?;
    }
    Ok(())
}

fn print_detail(out: &mut impl Write, parked: &Parked) -> std::io::Result<()> {
    let d = parked.detail();
    let text = |k: &str| match &d[k] {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    writeln!(out, "message_id:   {}", text("message_id"))?;
    writeln!(
        out,
        "queue:        {} (parked in {})",
        text("queue"),
        text("dead_letter_queue")
    )?;
    writeln!(out, "type:         {}", text("type"))?;
    writeln!(
        out,
        "published to: {} / {}",
        text("exchange"),
        text("routing_key")
    )?;
    writeln!(out, "attempts:     {}", text("attempts"))?;
    writeln!(out, "reason:       {}", text("reason"))?;
    writeln!(out, "failed at:    {}", text("failed_at"))?;
    writeln!(out, "error:        {}", text("error"))?;
    writeln!(out, "properties:   {}", d["properties"])?;
    writeln!(out, "headers:")?;
    if let Value::Object(headers) = &d["headers"] {
        for (k, v) in headers {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            writeln!(out, "  {k}: {v}")?;
        }
    }
    writeln!(out, "payload ({} bytes):", text("payload_bytes"))?;
    match &d["payload"] {
        Value::Null => writeln!(out, "  base64 {}", text("payload_base64"))?,
        json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(json).unwrap_or_default()
        )?,
    }
    writeln!(out)
}

/// The payload as proto3 JSON when `type` names a message of the ordermesh
/// contracts and the bytes decode as one (also for `relay outbox show`).
pub(crate) fn decode_payload(event_type: Option<&str>, payload: &[u8]) -> Value {
    let Some(name) = event_type else {
        return Value::Null;
    };
    let Ok(pool) = ordermesh_platform::rest::descriptor_pool() else {
        return Value::Null;
    };
    let Some(desc) = pool.get_message_by_name(name) else {
        return Value::Null;
    };
    match prost_reflect::DynamicMessage::decode(desc, payload) {
        Ok(message) => serde_json::to_value(&message).unwrap_or(Value::Null),
        Err(_) => Value::Null,
    }
}

/// An AMQP header value as JSON.
fn json_value(value: &AMQPValue) -> Value {
    match value {
        AMQPValue::FieldArray(items) => {
            Value::Array(items.as_slice().iter().map(json_value).collect())
        }
        AMQPValue::FieldTable(table) => Value::Object(
            table
                .inner()
                .iter()
                .map(|(k, v)| (k.as_str().to_owned(), json_value(v)))
                .collect(),
        ),
        AMQPValue::ByteArray(bytes) => {
            Value::String(base64::engine::general_purpose::STANDARD.encode(bytes.as_slice()))
        }
        AMQPValue::Boolean(b) => Value::Bool(*b),
        AMQPValue::Void => Value::Null,
        AMQPValue::LongString(_) | AMQPValue::ShortString(_) => {
            Value::String(value_text(value).unwrap_or_default())
        }
        other => match value_text(other) {
            Some(text) => text
                .parse::<serde_json::Number>()
                .map(Value::Number)
                .unwrap_or(Value::String(text)),
            None => Value::String(format!("{other:?}")),
        },
    }
}

/// The header values as a map of text, for tests and scripts.
pub fn header_texts(delivery: &Delivery) -> BTreeMap<String, String> {
    delivery
        .properties
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter_map(|(k, v)| Some((k.as_str().to_owned(), value_text(v)?)))
                .collect()
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

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
