//! A parked message as the commands print it: JSON for tools, a table or
//! its details for people, and its payload decoded when its type is an
//! ordermesh event.

use std::io::Write;

use base64::Engine as _;
use lapin::message::Delivery;
use lapin::types::AMQPValue;
use ordermesh_messaging::amqp::dead_letter_queue;
use ordermesh_messaging::redelivery::{self, value_text};
use serde_json::{Value, json};

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

pub(super) fn print_table(
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

pub(super) fn print_detail(out: &mut impl Write, parked: &Parked) -> std::io::Result<()> {
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
    let Ok(pool) = ordermesh_gateway::rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET)
    else {
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
pub(super) fn json_value(value: &AMQPValue) -> Value {
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
