//! The OpenAPI 3.1 document of the REST bindings, generated from the same
//! descriptors the transcoder runs on: one operation per binding, message
//! schemas under `components.schemas` (named by their full protobuf name),
//! descriptions from the `.proto` comments, errors as `google.rpc.Status`.
//! Schemas describe canonical proto3 JSON as the gateway writes it
//! (camelCase names, 64-bit integers as strings, enums by name); requests
//! may use the same forms.

mod comments;
mod operation;
mod schemas;

use std::collections::BTreeMap;

use prost_reflect::{DescriptorPool, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::RestConfig;
use super::http_rule::Binding;
use comments::Comments;
use schemas::Generator;

/// The schema name errors refer to.
const STATUS: &str = "google.rpc.Status";
/// How deep query parameters follow nested messages.
const MAX_QUERY_DEPTH: usize = 4;

/// The name of the bearer token scheme in `components.securitySchemes`.
const BEARER_SCHEME: &str = "bearerAuth";

/// What the document says of the API as a whole.
const DESCRIPTION: &str = "REST/JSON transcoded from the gRPC services' `google.api.http` \
    annotations. Bodies are proto3 JSON: lowerCamelCase names (the proto \
    names are accepted too), 64-bit integers as strings, enums by name, \
    timestamps in RFC 3339. Errors are `google.rpc.Status` objects. \
    Fields at their default value are written. \
    Server-streaming methods answer newline-delimited JSON: one \
    `{\"result\": ...}` per message, and `{\"error\": Status}` last if the \
    stream fails; with `Accept: text/event-stream` they answer server-sent \
    events: `data: <message>` per message, `event: error` with the Status \
    last if the stream fails.";

/// Builds the document for `bindings`, titled `title`: every operation
/// needs a bearer token but those of `config.public_services`.
pub fn document(
    pool: &DescriptorPool,
    bindings: &[Binding],
    title: &str,
    config: &RestConfig,
) -> Value {
    let comments = Comments::new(pool);
    let mut generator = Generator::new(&comments);
    generator.reference_message_name(STATUS, pool);
    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    for binding in bindings {
        let mut operation = generator.operation(binding);
        let service = binding.method.parent_service();
        if config
            .public_services
            .iter()
            .any(|s| s == service.full_name())
        {
            // Operations of a public service (registering, logging in)
            // need no token.
            operation["security"] = json!([]);
        }
        paths
            .entry(binding.template.openapi_path())
            .or_default()
            .insert(binding.http_method.as_str().to_ascii_lowercase(), operation);
    }
    generator.drain();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": DESCRIPTION,
        },
        "tags": tags(&comments, bindings),
        "paths": paths,
        // Every operation takes `Authorization: Bearer <jwt>` unless it says
        // otherwise (a public service's).
        "security": [{BEARER_SCHEME: []}],
        "components": {
            "schemas": generator.schemas,
            "securitySchemes": {BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": config.bearer_description,
            }},
        },
    })
}

/// A tag per service of `bindings`, by name, described by its comment.
fn tags(comments: &Comments, bindings: &[Binding]) -> Vec<Value> {
    let mut tags = BTreeMap::new();
    for binding in bindings {
        let service = binding.method.parent_service();
        let service_doc = comments
            .get(service.parent_file().name(), service.path())
            .unwrap_or_default()
            .to_owned();
        tags.insert(service.name().to_owned(), service_doc);
    }
    tags.into_iter()
        .map(|(name, description)| json!({"name": name, "description": description}))
        .collect()
}

/// JSON schemas of `messages` and of every message and enum they reference,
/// keyed by full protobuf name, in the form [`document`] writes them; their
/// references point to `#/components/schemas/<name>`, so the map can be an
/// AsyncAPI document's `components.schemas` too.
pub fn message_schemas(
    pool: &DescriptorPool,
    messages: &[MessageDescriptor],
) -> BTreeMap<String, Value> {
    let comments = Comments::new(pool);
    let mut generator = Generator::new(&comments);
    for m in messages {
        generator.message_ref(m);
    }
    generator.drain();
    generator.schemas
}

#[cfg(test)]
mod tests {
    #[test]
    fn operations_need_a_bearer_token_but_auth_service_ones() {
        let pool = crate::rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let services: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        let bindings = crate::rest::http_rule::bindings(&pool, &services).unwrap();
        let config = crate::rest::RestConfig {
            public_services: vec!["ordermesh.auth.v1.AuthService".to_owned()],
            ..crate::rest::RestConfig::default()
        };
        let doc = super::document(&pool, &bindings, "t", &config);
        assert_eq!(doc["security"], serde_json::json!([{"bearerAuth": []}]));
        let scheme = &doc["components"]["securitySchemes"]["bearerAuth"];
        assert_eq!(
            (&scheme["type"], &scheme["scheme"]),
            (&"http".into(), &"bearer".into())
        );
        assert_eq!(
            doc["paths"]["/v1/auth:login"]["post"]["security"],
            serde_json::json!([])
        );
        assert!(doc["paths"]["/v1/orders"]["post"].get("security").is_none());
    }
}
