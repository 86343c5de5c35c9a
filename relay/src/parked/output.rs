//! How `relay outbox` prints parked rows: tables and details for people,
//! JSON lines for tools. Text that came from clients is escaped first.

use std::io::Write;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{Value, json};

use super::store::{ParkedDetail, ParkedRow, Replayed};

pub(super) fn time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Text as it may be printed to a terminal: aggregate ids, headers and
/// reasons come from clients, so control characters are escaped.
pub(super) fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

pub(super) fn id_list(ids: &[i64]) -> String {
    ids.iter()
        .map(i64::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The fields `list --json` prints.
pub fn summary_json(source: &str, row: &ParkedRow) -> Value {
    json!({
        "source": source,
        "id": row.id,
        "event_id": row.event_id.to_string(),
        "aggregate_id": row.aggregate_id,
        "routing_key": row.routing_key,
        "event_type": row.event_type,
        "attempts": row.attempts,
        "reason": row.reason,
        "create_time": time(&row.create_time),
        "park_time": time(&row.park_time),
        "payload_bytes": row.payload_bytes,
        "headers_bytes": row.headers_bytes,
    })
}

/// Everything: the summary, the headers, the payload in base64 and, when
/// its type is a known protobuf message, as JSON.
pub fn detail_json(source: &str, detail: &ParkedDetail) -> Value {
    let mut value = summary_json(source, &detail.row);
    value["headers"] = detail.headers.clone();
    value["payload_base64"] =
        json!(base64::engine::general_purpose::STANDARD.encode(&detail.payload));
    value["payload"] = crate::dlq::decode_payload(Some(&detail.row.event_type), &detail.payload);
    value
}

pub(super) fn print_table(
    out: &mut impl Write,
    source: &str,
    rows: &[ParkedRow],
    total: i64,
) -> std::io::Result<()> {
    writeln!(out, "{source}: {total} parked")?;
    if rows.is_empty() {
        return Ok(());
    }
    let titles = [
        "ID",
        "EVENT ID",
        "AGGREGATE",
        "ROUTING KEY",
        "TYPE",
        "ATTEMPTS",
        "PARKED AT",
        "BYTES",
        "REASON",
    ];
    let cells: Vec<[String; 9]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.event_id.to_string(),
                printable(&r.aggregate_id),
                printable(&r.routing_key),
                printable(&r.event_type),
                r.attempts.to_string(),
                time(&r.park_time),
                r.payload_bytes.to_string(),
                // Last and unpadded; cut for the table (`show` has it all).
                printable(&r.reason).chars().take(100).collect(),
            ]
        })
        .collect();
    let widths: Vec<usize> = (0..titles.len())
        .map(|i| {
            cells
                .iter()
                .map(|c| c[i].chars().count())
                .chain([titles[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut line = |row: Vec<&str>| {
        let mut text = String::new();
        for (i, cell) in row.iter().enumerate() {
            text.push_str(&format!("{cell:<w$}  ", w = widths[i]));
        }
        writeln!(out, "{}", text.trim_end())
    };
    line(titles.to_vec())?;
    for row in &cells {
        line(row.iter().map(String::as_str).collect())?;
    }
    let shown = rows.len() as i64;
    if total > shown {
        writeln!(out, "... and {} more (raise --limit)", total - shown)?;
    }
    Ok(())
}

pub(super) fn print_detail(
    out: &mut impl Write,
    source: &str,
    detail: &ParkedDetail,
) -> std::io::Result<()> {
    let r = &detail.row;
    writeln!(out, "source:       {source}")?;
    writeln!(out, "id:           {}", r.id)?;
    writeln!(out, "event_id:     {}", r.event_id)?;
    writeln!(out, "aggregate_id: {}", printable(&r.aggregate_id))?;
    writeln!(out, "routing_key:  {}", printable(&r.routing_key))?;
    writeln!(out, "event_type:   {}", printable(&r.event_type))?;
    writeln!(out, "attempts:     {}", r.attempts)?;
    writeln!(out, "reason:       {}", printable(&r.reason))?;
    writeln!(out, "created at:   {}", time(&r.create_time))?;
    writeln!(out, "parked at:    {}", time(&r.park_time))?;
    writeln!(out, "headers ({} bytes as JSON):", r.headers_bytes)?;
    if let Value::Object(headers) = &detail.headers {
        for (k, v) in headers {
            let v = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            writeln!(out, "  {}: {}", printable(k), printable(&v))?;
        }
    }
    writeln!(out, "payload ({} bytes):", detail.payload.len())?;
    match crate::dlq::decode_payload(Some(&r.event_type), &detail.payload) {
        Value::Null => writeln!(
            out,
            "  base64 {}",
            base64::engine::general_purpose::STANDARD.encode(&detail.payload)
        )?,
        json => writeln!(
            out,
            "{}",
            serde_json::to_string_pretty(&json).unwrap_or_default()
        )?,
    }
    Ok(())
}

pub(super) fn print_replayed(
    out: &mut impl Write,
    source: &str,
    moved: &[Replayed],
) -> std::io::Result<()> {
    for r in moved {
        writeln!(
            out,
            "replayed {source} id {} (event {}, aggregate {})",
            r.id,
            r.event_id,
            printable(&r.aggregate_id)
        )?;
    }
    Ok(())
}
