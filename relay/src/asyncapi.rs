//! The published contract of the events exchange: an AsyncAPI 3.0 document,
//! served at `GET /asyncapi.json` on the admin port ([`crate::admin`]).
//! One channel per routing key (its address) with one `send` operation,
//! the exchange as the channels' AMQP binding, the headers and AMQP
//! properties every message carries, and payload schemas generated from the
//! protobuf descriptors by the same code as the services' `/openapi.json`
//! ([`ordermesh_gateway::rest::openapi::message_schemas`]).
//!
//! The relay knows no business rules and publishes whatever routing key an
//! outbox row names, so the routing keys are listed here, once, in
//! [`EVENTS`]; tests check the table against the event messages of the
//! descriptor set (each documents its routing key) and against the keys
//! the services publish (`tests/it/asyncapi.rs`).

use axum::http::header::CONTENT_TYPE;
use axum::routing::{MethodRouter, get};
use ordermesh_messaging::outbox::CONTENT_TYPE_PROTOBUF;
use ordermesh_messaging::redelivery as rd;
use ordermesh_runtime::propagation::{TRACEPARENT, TRACESTATE};
use prost_reflect::{DescriptorPool, MessageDescriptor};
use serde_json::{Map, Value, json};

/// Where the admin listener serves the document.
pub const PATH: &str = "/asyncapi.json";
/// The protobuf package of the event messages.
pub const EVENTS_PACKAGE: &str = "ordermesh.events.v1";
/// Version of the AMQP bindings used.
const AMQP_BINDING_VERSION: &str = "0.3.0";
/// The schema name of the message headers.
const HEADERS_SCHEMA: &str = "EventHeaders";

/// An event on the exchange: its routing key and payload type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event {
    pub routing_key: &'static str,
    /// Fully qualified protobuf message name, also the AMQP `type`.
    pub message: &'static str,
    /// The service whose outbox writes it, for readers of the document.
    pub publisher: &'static str,
}

/// Every event published on the exchange.
pub const EVENTS: &[Event] = &[
    Event {
        routing_key: "order.created",
        message: "ordermesh.events.v1.OrderCreated",
        publisher: "order-svc",
    },
    Event {
        routing_key: "order.cancelled",
        message: "ordermesh.events.v1.OrderCancelled",
        publisher: "order-svc",
    },
    Event {
        routing_key: "payment.succeeded",
        message: "ordermesh.events.v1.PaymentSucceeded",
        publisher: "processor-svc",
    },
    Event {
        routing_key: "payment.failed",
        message: "ordermesh.events.v1.PaymentFailed",
        publisher: "processor-svc",
    },
    Event {
        routing_key: "payment.refunded",
        message: "ordermesh.events.v1.PaymentRefunded",
        publisher: "processor-svc",
    },
];

#[derive(Debug, thiserror::Error)]
pub enum AsyncApiError {
    #[error("decode the descriptor set: {0}")]
    Descriptors(#[from] prost_reflect::DescriptorError),
    #[error("event message {0} is not in the descriptor set")]
    UnknownMessage(&'static str),
}

/// The `GET` route of the document for events on `exchange`, rendered once.
pub fn route(exchange: &str) -> Result<MethodRouter, AsyncApiError> {
    let pool = ordermesh_gateway::rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET)?;
    let body = document(&pool, exchange)?.to_string();
    Ok(get(move || {
        let body = body.clone();
        async move { ([(CONTENT_TYPE, "application/json")], body) }
    }))
}

/// The AsyncAPI 3.0 document of [`EVENTS`] on `exchange`, with the message
/// schemas from `pool`.
pub fn document(pool: &DescriptorPool, exchange: &str) -> Result<Value, AsyncApiError> {
    let messages: Vec<MessageDescriptor> = EVENTS
        .iter()
        .map(|e| {
            pool.get_message_by_name(e.message)
                .ok_or(AsyncApiError::UnknownMessage(e.message))
        })
        .collect::<Result<_, _>>()?;
    let mut schemas = Map::new();
    schemas.insert(HEADERS_SCHEMA.into(), headers_schema());
    schemas.extend(ordermesh_gateway::rest::openapi::message_schemas(
        pool, &messages,
    ));

    let mut channels = Map::new();
    let mut operations = Map::new();
    let mut components = Map::new();
    for (event, message) in EVENTS.iter().zip(&messages) {
        let name = message.name();
        let channel_id = lower_camel(name);
        let description = schemas
            .get(message.full_name())
            .and_then(|s| s["description"].as_str())
            .unwrap_or_default()
            .to_owned();
        channels.insert(channel_id.clone(), channel_object(event, name, exchange));
        operations.insert(
            format!("send{name}"),
            operation_object(event, name, &channel_id),
        );
        components.insert(
            name.to_owned(),
            message_object(event, message, &description),
        );
    }

    Ok(json!({
        "asyncapi": "3.0.0",
        "info": info(exchange),
        "defaultContentType": CONTENT_TYPE_PROTOBUF,
        "channels": channels,
        "operations": operations,
        "components": {
            "messages": components,
            "schemas": schemas,
        },
    }))
}

/// The channel of one event: its routing key on the topic exchange.
fn channel_object(event: &Event, name: &str, exchange: &str) -> Value {
    json!({
        "address": event.routing_key,
        "title": event.routing_key,
        "description": format!(
            "Messages with routing key `{}` on the topic exchange `{exchange}`, \
             published by {}. Bind a queue to the exchange with this key (or a \
             pattern such as `payment.*`) to receive them.",
            event.routing_key, event.publisher
        ),
        "messages": {name: {"$ref": format!("#/components/messages/{name}")}},
        "bindings": {"amqp": {
            "is": "routingKey",
            "exchange": {
                "name": exchange,
                "type": "topic",
                "durable": true,
                "autoDelete": false,
            },
            "bindingVersion": AMQP_BINDING_VERSION,
        }},
    })
}

/// The publishing of one event by its service, through the relay.
fn operation_object(event: &Event, name: &str, channel_id: &str) -> Value {
    json!({
        "action": "send",
        "title": format!("{} publishes {name}", event.publisher),
        "description": "Published from the service's transactional outbox by the \
            relay, with publisher confirms, after the transaction that wrote it \
            commits. Delivery is at least once; events of one order keep the \
            order they were written in.",
        "channel": {"$ref": format!("#/channels/{channel_id}")},
        "messages": [{"$ref": format!("#/channels/{channel_id}/messages/{name}")}],
        "bindings": {"amqp": {
            "deliveryMode": 2,
            "mandatory": false,
            "timestamp": true,
            "bindingVersion": AMQP_BINDING_VERSION,
        }},
    })
}

/// The document's `info`: what the events are and how they are encoded.
fn info(exchange: &str) -> Value {
    json!({
        "title": "ordermesh events",
        "version": env!("CARGO_PKG_VERSION"),
        "description": format!(
            "The events ordermesh publishes on the RabbitMQ topic exchange \
             `{exchange}`. Each payload is a binary protobuf message \
             (`{CONTENT_TYPE_PROTOBUF}`) of package `{EVENTS_PACKAGE}`, named by the \
             AMQP `type` property; the payload schemas describe the canonical proto3 \
             JSON form of those messages (lowerCamelCase names, 64-bit integers as \
             strings, enums by name), which is what `relay dlq show` prints. \
             Delivery is at least once: deduplicate on the `message_id` property."
        ),
        "license": {
            "name": "Apache-2.0",
            "url": "https://www.apache.org/licenses/LICENSE-2.0",
        },
    })
}

fn message_object(event: &Event, message: &MessageDescriptor, description: &str) -> Value {
    let summary = description
        .split("\n\n")
        .next()
        .unwrap_or_default()
        .replace('\n', " ");
    json!({
        "name": message.name(),
        "title": message.name(),
        "summary": summary,
        "description": format!(
            "{description}\n\nPayload: protobuf `{}` ({CONTENT_TYPE_PROTOBUF}); the schema \
             is its proto3 JSON form.",
            message.full_name()
        ).trim().to_owned(),
        "contentType": CONTENT_TYPE_PROTOBUF,
        "headers": {"$ref": format!("#/components/schemas/{HEADERS_SCHEMA}")},
        "payload": {"$ref": format!("#/components/schemas/{}", message.full_name())},
        "bindings": {"amqp": {
            "messageType": event.message,
            "bindingVersion": AMQP_BINDING_VERSION,
        }},
        // AMQP basic properties have no place of their own in AsyncAPI.
        "x-amqp-properties": {
            "type": "object",
            "properties": {
                "message_id": {
                    "type": "string",
                    "format": "uuid",
                    "description": "The event id (a UUIDv7), the same on every \
                        redelivery: consumers deduplicate on it.",
                },
                "type": {"const": event.message, "description": "The payload's protobuf name."},
                "content_type": {"const": CONTENT_TYPE_PROTOBUF},
                "delivery_mode": {"const": 2, "description": "Persistent."},
                "timestamp": {
                    "type": "integer",
                    "description": "When the event was written to the outbox, in seconds \
                        since the Unix epoch.",
                },
            },
            "required": ["message_id", "type", "content_type", "delivery_mode", "timestamp"],
        },
    })
}

/// The AMQP headers of an event: the W3C trace context of its publish, and
/// the `ordermesh-*` history a retry, dead-letter or replayed copy carries.
fn headers_schema() -> Value {
    let mut properties = trace_headers();
    properties.extend(failure_headers());
    properties.extend(route_headers());
    json!({
        "type": "object",
        "description": "AMQP headers. Other headers may appear and are passed on by \
            retries and replays when small enough.",
        "properties": properties,
        "additionalProperties": true,
    })
}

/// `traceparent` and `tracestate`: the trace every event carries.
fn trace_headers() -> Map<String, Value> {
    let mut properties = Map::new();
    properties.insert(
        TRACEPARENT.into(),
        json!({
            "type": "string",
            "pattern": "^[0-9a-f]{2}-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}$",
            "description": "W3C Trace Context of the relay's publish span (a child of the \
                span that wrote the event): consumers continue the trace from here.",
        }),
    );
    properties.insert(
        TRACESTATE.into(),
        json!({
            "type": "string",
            "maxLength": 512,
            "description": "W3C `tracestate` of the writer, when it had one (at most 32 \
                members).",
        }),
    );
    properties
}

/// The failure history of a retry or dead-letter copy.
fn failure_headers() -> Map<String, Value> {
    let copies = "Set on retry and dead-letter copies";
    let mut properties = Map::new();
    properties.insert(
        rd::HEADER_ATTEMPTS.into(),
        json!({
            "type": "integer",
            "minimum": 1,
            "description": format!("Failed handler attempts so far. {copies}; removed by a replay."),
        }),
    );
    properties.insert(
        rd::HEADER_ERROR.into(),
        json!({
            "type": "string",
            "maxLength": rd::MAX_ERROR_LEN,
            "description": format!("The last failure's error text, cut short. {copies}."),
        }),
    );
    properties.insert(
        rd::HEADER_FAILED_AT.into(),
        json!({
            "type": "string",
            "format": "date-time",
            "description": format!("When the last attempt failed (UTC). {copies}."),
        }),
    );
    properties.insert(
        rd::HEADER_REASON.into(),
        json!({
            "type": "string",
            "enum": [
                rd::DeadLetterReason::Poison.as_str(),
                rd::DeadLetterReason::MaxAttempts.as_str(),
                rd::DeadLetterReason::NoMessageId.as_str(),
            ],
            "description": "Why a message was dead-lettered: never applicable, out of \
                attempts, or no `message_id` to deduplicate on. Set on dead-letter copies.",
        }),
    );
    properties
}

/// Where a copy came from and what was done to it.
fn route_headers() -> Map<String, Value> {
    let text = |description: &str| json!({"type": "string", "description": description});
    let mut properties = Map::new();
    properties.insert(
        rd::HEADER_QUEUE.into(),
        text("The consumer queue that failed to process (or replayed) the message."),
    );
    properties.insert(
        rd::HEADER_EXCHANGE.into(),
        text("The exchange the event was first published to; copies travel through the default exchange."),
    );
    properties.insert(
        rd::HEADER_ROUTING_KEY.into(),
        text("The event's original routing key, restored by the consumer."),
    );
    properties.insert(
        rd::HEADER_REPLAYED_AT.into(),
        json!({
            "type": "string",
            "format": "date-time",
            "description": "When the message was last replayed from a dead-letter queue \
                (`relay dlq replay`).",
        }),
    );
    properties.insert(
        rd::HEADER_DROPPED.into(),
        json!({
            "type": "integer",
            "minimum": 1,
            "description": "How many of the message's own headers a copy left out to fit \
                one AMQP frame; absent when none was.",
        }),
    );
    properties
}

/// `OrderCreated` -> `orderCreated`.
fn lower_camel(name: &str) -> String {
    let mut chars = name.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn pool() -> DescriptorPool {
        ordermesh_gateway::rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET).unwrap()
    }

    #[test]
    fn the_table_covers_every_event_message_once() {
        let pool = pool();
        let in_package: BTreeSet<String> = pool
            .all_messages()
            .filter(|m| m.package_name() == EVENTS_PACKAGE)
            .map(|m| m.full_name().to_owned())
            .collect();
        let in_table: BTreeSet<String> = EVENTS.iter().map(|e| e.message.to_owned()).collect();
        assert_eq!(in_table, in_package, "EVENTS must list every event message");
        assert_eq!(in_table.len(), EVENTS.len(), "a message listed twice");
        let keys: BTreeSet<&str> = EVENTS.iter().map(|e| e.routing_key).collect();
        assert_eq!(keys.len(), EVENTS.len(), "a routing key listed twice");
    }

    #[test]
    fn each_message_documents_the_routing_key_of_the_table() {
        let doc = document(&pool(), "ordermesh.events").unwrap();
        for event in EVENTS {
            let description = doc["components"]["schemas"][event.message]["description"]
                .as_str()
                .unwrap_or_default();
            assert!(
                description.contains(&format!("routing key `{}`", event.routing_key)),
                "{}'s comment should name routing key `{}`: {description:?}",
                event.message,
                event.routing_key
            );
        }
    }

    #[test]
    fn channels_operations_and_bindings() {
        let doc = document(&pool(), "test.exchange").unwrap();
        assert_eq!(doc["asyncapi"], "3.0.0");
        let channels = doc["channels"].as_object().unwrap();
        let addresses: BTreeSet<&str> = channels
            .values()
            .map(|c| c["address"].as_str().unwrap())
            .collect();
        let keys: BTreeSet<&str> = EVENTS.iter().map(|e| e.routing_key).collect();
        assert_eq!(addresses, keys);
        let created = &doc["channels"]["orderCreated"];
        let exchange = &created["bindings"]["amqp"]["exchange"];
        assert_eq!(
            (&exchange["name"], &exchange["type"], &exchange["durable"]),
            (&json!("test.exchange"), &json!("topic"), &json!(true))
        );
        let op = &doc["operations"]["sendOrderCreated"];
        assert_eq!(op["action"], "send");
        assert_eq!(op["channel"]["$ref"], "#/channels/orderCreated");
        let message = &doc["components"]["messages"]["OrderCreated"];
        assert_eq!(message["contentType"], CONTENT_TYPE_PROTOBUF);
        assert_eq!(
            message["payload"]["$ref"],
            "#/components/schemas/ordermesh.events.v1.OrderCreated"
        );
        assert_eq!(
            message["bindings"]["amqp"]["messageType"],
            "ordermesh.events.v1.OrderCreated"
        );
    }

    #[test]
    fn payload_schemas_are_proto3_json_and_every_reference_resolves() {
        let doc = document(&pool(), "x").unwrap();
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        let created = &schemas["ordermesh.events.v1.OrderCreated"]["properties"];
        assert_eq!(created["totalMinor"]["type"], "string");
        assert_eq!(created["items"]["type"], "array");
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert!(!refs.is_empty());
        for r in refs {
            let pointer = r.strip_prefix('#').expect("local reference");
            let pointer = pointer.replace("~1", "/");
            assert!(doc.pointer(&pointer).is_some(), "{r} does not resolve");
        }
    }

    #[test]
    fn headers_name_the_trace_context_and_every_ordermesh_header() {
        let doc = document(&pool(), "x").unwrap();
        let headers = &doc["components"]["schemas"][HEADERS_SCHEMA]["properties"];
        for name in [
            TRACEPARENT,
            TRACESTATE,
            rd::HEADER_ATTEMPTS,
            rd::HEADER_ERROR,
            rd::HEADER_FAILED_AT,
            rd::HEADER_REASON,
            rd::HEADER_QUEUE,
            rd::HEADER_EXCHANGE,
            rd::HEADER_ROUTING_KEY,
            rd::HEADER_REPLAYED_AT,
            rd::HEADER_DROPPED,
        ] {
            assert!(headers.get(name).is_some(), "{name} missing");
        }
    }

    fn collect_refs(value: &Value, out: &mut Vec<String>) {
        match value {
            Value::Object(map) => {
                for (k, v) in map {
                    match (k.as_str(), v) {
                        ("$ref", Value::String(s)) => out.push(s.clone()),
                        _ => collect_refs(v, out),
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
