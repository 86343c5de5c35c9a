//! The OpenAPI 3.1 document of the REST bindings, generated from the same
//! descriptors the transcoder runs on: one operation per binding, message
//! schemas under `components.schemas` (named by their full protobuf name),
//! descriptions from the `.proto` comments, errors as `google.rpc.Status`.
//! Schemas describe canonical proto3 JSON as the gateway writes it
//! (camelCase names, 64-bit integers as strings, enums by name); requests
//! may use the same forms.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::http_rule::{Binding, BodyMapping};
use super::json::is_scalar_message;

/// The schema name errors refer to.
const STATUS: &str = "google.rpc.Status";
/// How deep query parameters follow nested messages.
const MAX_QUERY_DEPTH: usize = 4;

/// Comments of every element of the pool, by file and source path.
struct Comments(HashMap<(String, Vec<i32>), String>);

impl Comments {
    fn new(pool: &DescriptorPool) -> Self {
        let mut map = HashMap::new();
        for file in pool.files() {
            let Some(info) = &file.file_descriptor_proto().source_code_info else {
                continue;
            };
            for location in &info.location {
                let text = location
                    .leading_comments
                    .as_deref()
                    .or(location.trailing_comments.as_deref())
                    .map(clean_comment)
                    .unwrap_or_default();
                if !text.is_empty() {
                    map.insert((file.name().to_owned(), location.path.clone()), text);
                }
            }
        }
        Self(map)
    }

    fn get(&self, file: &str, path: &[i32]) -> Option<&str> {
        self.0
            .get(&(file.to_owned(), path.to_vec()))
            .map(String::as_str)
    }

    fn message(&self, m: &MessageDescriptor) -> Option<&str> {
        self.get(m.parent_file().name(), m.path())
    }

    fn field(&self, f: &FieldDescriptor) -> Option<&str> {
        self.get(f.parent_file().name(), f.path())
    }
}

fn clean_comment(raw: &str) -> String {
    raw.lines()
        .map(|l| l.strip_prefix(' ').unwrap_or(l).trim_end())
        .collect::<Vec<_>>()
        .join("\n")
        .trim()
        .to_owned()
}

/// The first sentence (or line) of a description, for operation summaries.
fn summary(description: &str) -> String {
    let first = description.split("\n\n").next().unwrap_or_default();
    let line = first.replace('\n', " ");
    match line.find(". ") {
        Some(i) => line[..=i].to_owned(),
        None => line,
    }
}

/// Builds the document for `bindings`.
/// The name of the bearer token scheme in `components.securitySchemes`.
const BEARER_SCHEME: &str = "bearerAuth";

pub fn document(pool: &DescriptorPool, bindings: &[Binding], title: &str) -> Value {
    let comments = Comments::new(pool);
    let mut generator = Generator {
        comments: &comments,
        schemas: BTreeMap::new(),
        pending: Vec::new(),
        seen: BTreeSet::new(),
    };
    generator.reference_message_name(STATUS, pool);

    let mut paths: BTreeMap<String, Map<String, Value>> = BTreeMap::new();
    let mut tags = BTreeMap::new();
    for binding in bindings {
        let service = binding.method.parent_service();
        let service_doc = comments
            .get(service.parent_file().name(), service.path())
            .unwrap_or_default()
            .to_owned();
        tags.insert(service.name().to_owned(), service_doc);
        let operation = generator.operation(binding);
        paths
            .entry(binding.template.openapi_path())
            .or_default()
            .insert(binding.http_method.as_str().to_ascii_lowercase(), operation);
    }
    generator.drain();

    let tags: Vec<Value> = tags
        .into_iter()
        .map(|(name, description)| json!({"name": name, "description": description}))
        .collect();
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": title,
            "version": env!("CARGO_PKG_VERSION"),
            "description": "REST/JSON transcoded from the gRPC services' `google.api.http` \
                annotations. Bodies are proto3 JSON: lowerCamelCase names (the proto \
                names are accepted too), 64-bit integers as strings, enums by name, \
                timestamps in RFC 3339. Errors are `google.rpc.Status` objects. \
                Fields at their default value are written. \
                Server-streaming methods answer newline-delimited JSON: one \
                `{\"result\": ...}` per message, and `{\"error\": Status}` last if the \
                stream fails; with `Accept: text/event-stream` they answer server-sent \
                events: `data: <message>` per message, `event: error` with the Status \
                last if the stream fails.",
        },
        "tags": tags,
        "paths": paths,
        // Every operation takes `Authorization: Bearer <jwt>` (crate::auth)
        // unless it says otherwise (AuthService's).
        "security": [{BEARER_SCHEME: []}],
        "components": {
            "schemas": generator.schemas,
            "securitySchemes": {BEARER_SCHEME: {
                "type": "http",
                "scheme": "bearer",
                "bearerFormat": "JWT",
                "description": "A token from AuthService (`/v1/auth:login`) or \
                    `processor-svc token`; missing or invalid: 401, over the rate \
                    limit: 429 with `Retry-After`.",
            }},
        },
    })
}

/// JSON schemas of `messages` and of every message and enum they reference,
/// keyed by full protobuf name, in the form [`document`] writes them; their
/// references point to `#/components/schemas/<name>`, so the map can be an
/// AsyncAPI document's `components.schemas` too (relay's `/asyncapi.json`).
pub fn message_schemas(
    pool: &DescriptorPool,
    messages: &[MessageDescriptor],
) -> BTreeMap<String, Value> {
    let comments = Comments::new(pool);
    let mut generator = Generator {
        comments: &comments,
        schemas: BTreeMap::new(),
        pending: Vec::new(),
        seen: BTreeSet::new(),
    };
    for m in messages {
        generator.message_ref(m);
    }
    generator.drain();
    generator.schemas
}

struct Generator<'a> {
    comments: &'a Comments,
    schemas: BTreeMap<String, Value>,
    pending: Vec<Pending>,
    seen: BTreeSet<String>,
}

enum Pending {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

impl Generator<'_> {
    fn reference_message_name(&mut self, name: &str, pool: &DescriptorPool) {
        if let Some(m) = pool.get_message_by_name(name) {
            self.message_ref(&m);
        }
    }

    fn message_ref(&mut self, m: &MessageDescriptor) -> Value {
        if self.seen.insert(m.full_name().to_owned()) {
            self.pending.push(Pending::Message(m.clone()));
        }
        reference(m.full_name())
    }

    fn enum_ref(&mut self, e: &EnumDescriptor) -> Value {
        if self.seen.insert(e.full_name().to_owned()) {
            self.pending.push(Pending::Enum(e.clone()));
        }
        reference(e.full_name())
    }

    /// Generates every schema referenced so far (and what they reference).
    fn drain(&mut self) {
        while let Some(next) = self.pending.pop() {
            match next {
                Pending::Message(m) => {
                    let schema = self.message_schema(&m, &[]);
                    self.schemas.insert(m.full_name().to_owned(), schema);
                }
                Pending::Enum(e) => {
                    let schema = self.enum_schema(&e);
                    self.schemas.insert(e.full_name().to_owned(), schema);
                }
            }
        }
    }

    fn enum_schema(&self, e: &EnumDescriptor) -> Value {
        let mut lines = Vec::new();
        if let Some(doc) = self.comments.get(e.parent_file().name(), e.path()) {
            lines.push(doc.to_owned());
        }
        for v in e.values() {
            let doc = self
                .comments
                .get(v.parent_file().name(), v.path())
                .map(|d| format!(": {}", d.replace('\n', " ")))
                .unwrap_or_default();
            lines.push(format!("- `{}`{doc}", v.name()));
        }
        let names: Vec<Value> = e.values().map(|v| Value::from(v.name())).collect();
        json!({"type": "string", "enum": names, "description": lines.join("\n")})
    }

    /// An object schema of `m`'s fields, leaving out the top-level fields in
    /// `skip` (those a request's path sets).
    fn message_schema(&mut self, m: &MessageDescriptor, skip: &[FieldDescriptor]) -> Value {
        if let Some(wkt) = self.well_known(m) {
            return wkt;
        }
        let mut properties = Map::new();
        for field in m.fields() {
            if skip.contains(&field) {
                continue;
            }
            let mut schema = self.field_schema(&field);
            if let (Some(doc), Value::Object(obj)) = (self.comments.field(&field), &mut schema) {
                obj.insert("description".into(), Value::String(doc.to_owned()));
            }
            properties.insert(field.json_name().to_owned(), schema);
        }
        let mut schema = json!({
            "type": "object",
            "properties": properties,
            "additionalProperties": false,
        });
        if let Some(doc) = self.comments.message(m) {
            schema["description"] = Value::String(doc.to_owned());
        }
        schema
    }

    fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        if field.is_map() {
            let Kind::Message(entry) = field.kind() else {
                unreachable!("map fields are entry messages")
            };
            let value = self.kind_schema(&entry.map_entry_value_field().kind());
            return json!({"type": "object", "additionalProperties": value});
        }
        let item = self.kind_schema(&field.kind());
        if field.is_list() {
            json!({"type": "array", "items": item})
        } else {
            item
        }
    }

    fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => json!({
                "type": "integer", "format": "int32",
                "minimum": i32::MIN, "maximum": i32::MAX,
            }),
            Kind::Uint32 | Kind::Fixed32 => json!({
                "type": "integer", "format": "int64", "minimum": 0, "maximum": u32::MAX,
            }),
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => json!({
                "type": "string", "format": "int64",
                "pattern": format!("^-?{}$", decimal_at_most(i64::MAX as u64)),
            }),
            Kind::Uint64 | Kind::Fixed64 => json!({
                "type": "string", "format": "uint64",
                "pattern": format!("^{}$", decimal_at_most(u64::MAX)),
            }),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "contentEncoding": "base64"}),
            Kind::Enum(e) => self.enum_ref(e),
            Kind::Message(m) => match self.well_known(m) {
                Some(schema) => schema,
                None => self.message_ref(m),
            },
        }
    }

    /// Well-known types with their own JSON form.
    fn well_known(&mut self, m: &MessageDescriptor) -> Option<Value> {
        let nullable = |mut inner: Value| {
            if let Some(t) = inner.get("type").cloned() {
                inner["type"] = json!([t, "null"]);
            }
            inner
        };
        Some(match m.full_name() {
            "google.protobuf.Timestamp" => json!({"type": "string", "format": "date-time"}),
            "google.protobuf.Duration" => {
                json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$"})
            }
            "google.protobuf.FieldMask" => json!({"type": "string"}),
            "google.protobuf.Empty" => json!({"type": "object", "additionalProperties": false}),
            "google.protobuf.Struct" => json!({"type": "object"}),
            "google.protobuf.ListValue" => json!({"type": "array"}),
            "google.protobuf.Value" => json!({}),
            "google.protobuf.Any" => json!({
                "type": "object",
                "properties": {"@type": {"type": "string"}},
                "required": ["@type"],
                "additionalProperties": true,
            }),
            name if name.starts_with("google.protobuf.") && is_scalar_message(m) => {
                let value = m.get_field_by_name("value")?;
                nullable(self.kind_schema(&value.kind()))
            }
            _ => return None,
        })
    }

    fn operation(&mut self, binding: &Binding) -> Value {
        let method = &binding.method;
        let service = method.parent_service();
        let doc = self
            .comments
            .get(method.parent_file().name(), method.path())
            .unwrap_or_default()
            .to_owned();
        let mut operation_id = format!("{}_{}", service.name(), method.name());
        if binding.index > 0 {
            operation_id.push_str(&format!("_{}", binding.index));
        }

        let mut parameters = Vec::new();
        for (i, fields) in binding.variables.iter().enumerate() {
            let leaf = fields.last().expect("field paths are never empty");
            let mut schema = self.kind_schema(&leaf.kind());
            if let Some(pattern) = binding.template.variable_pattern(i) {
                schema = json!({"type": "string", "pattern": pattern});
            } else if schema.get("type") == Some(&json!("string"))
                && schema.get("pattern").is_none()
            {
                schema["minLength"] = json!(1);
            }
            let name: Vec<&str> = fields.iter().map(FieldDescriptor::name).collect();
            let mut p = json!({
                "name": name.join("."),
                "in": "path",
                "required": true,
                "schema": schema,
            });
            if let Some(d) = self.comments.field(leaf) {
                p["description"] = Value::String(d.to_owned());
            }
            parameters.push(p);
        }
        if !matches!(binding.body, BodyMapping::Whole) {
            let input = method.input();
            let top: Vec<FieldDescriptor> = input
                .fields()
                .filter(|f| !matches!(&binding.body, BodyMapping::Field(b) if b == f))
                .collect();
            let bound: Vec<String> = binding
                .variables
                .iter()
                .map(|v| {
                    v.iter()
                        .map(FieldDescriptor::name)
                        .collect::<Vec<_>>()
                        .join(".")
                })
                .collect();
            let mut visiting = vec![input.full_name().to_owned()];
            for field in top {
                self.query_parameters(&field, "", &bound, &mut visiting, &mut parameters);
            }
        }

        let mut op = json!({
            "operationId": operation_id,
            "tags": [service.name()],
            "summary": summary(&doc),
            "description": format!("{doc}\n\ngRPC: `{}`", method.full_name()).trim().to_owned(),
            "parameters": parameters,
        });

        let path_fields: Vec<FieldDescriptor> = binding
            .variables
            .iter()
            .filter(|v| v.len() == 1)
            .map(|v| v[0].clone())
            .collect();
        match &binding.body {
            BodyMapping::None => {}
            BodyMapping::Whole => {
                let schema = if path_fields.is_empty() {
                    self.message_ref(&method.input())
                } else {
                    self.message_schema(&method.input(), &path_fields)
                };
                op["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": schema}},
                });
            }
            BodyMapping::Field(field) => {
                let schema = self.field_schema(field);
                op["requestBody"] = json!({
                    "required": true,
                    "content": {"application/json": {"schema": schema}},
                });
            }
        }

        let result = match &binding.response_body {
            Some(field) => self.field_schema(field),
            None => self.message_ref(&method.output()),
        };
        let ok = if method.is_server_streaming() {
            json!({
                "description": "A stream of newline-delimited JSON objects: `result` for each \
                    message; `error` once, last, if the stream fails. With \
                    `Accept: text/event-stream`, server-sent events instead: one \
                    `data:` event per message (the message's JSON, as `result` above), \
                    a last `event: error` whose data is a `google.rpc.Status` if the \
                    stream fails, and `:` comment lines while it is idle.",
                "content": {
                    "application/x-ndjson": {"schema": {
                        "type": "object",
                        "properties": {"result": result, "error": reference(STATUS)},
                    }},
                    super::EVENT_STREAM: {"schema": {
                        "type": "string",
                        "description": "Server-sent events (text/event-stream).",
                    }},
                },
            })
        } else {
            json!({
                "description": "OK",
                "content": {"application/json": {"schema": result}},
            })
        };
        if service.full_name() == crate::auth::AUTH_SERVICE {
            // Registering and logging in need no token.
            op["security"] = json!([]);
        }
        op["responses"] = json!({
            "200": ok,
            "default": {
                "description": "An error: the gRPC status as `google.rpc.Status` (HTTP status \
                    as grpc-gateway maps the code).",
                "content": {"application/json": {"schema": reference(STATUS)}},
            },
        });
        op
    }

    /// Query parameters for `field` and, for a singular message, its fields
    /// (dotted names), skipping what a query cannot carry.
    fn query_parameters(
        &mut self,
        field: &FieldDescriptor,
        prefix: &str,
        bound: &[String],
        visiting: &mut Vec<String>,
        out: &mut Vec<Value>,
    ) {
        let name = if prefix.is_empty() {
            field.name().to_owned()
        } else {
            format!("{prefix}.{}", field.name())
        };
        if field.is_map() || bound.contains(&name) {
            return;
        }
        if let Kind::Message(m) = field.kind()
            && !is_scalar_message(&m)
        {
            if field.is_list()
                || visiting.len() >= MAX_QUERY_DEPTH
                || visiting.iter().any(|v| v == m.full_name())
            {
                return;
            }
            visiting.push(m.full_name().to_owned());
            for inner in m.fields() {
                self.query_parameters(&inner, &name, bound, visiting, out);
            }
            visiting.pop();
            return;
        }
        let mut p = json!({
            "name": name,
            "in": "query",
            "required": false,
            "schema": self.field_schema(field),
        });
        if field.is_list() {
            p["style"] = json!("form");
            p["explode"] = json!(true);
        }
        if let Some(d) = self.comments.field(field) {
            p["description"] = Value::String(d.to_owned());
        }
        out.push(p);
    }
}

/// A regular expression (without anchors) for the decimal numbers from 0 to
/// `max`, so a 64-bit integer's string form is described exactly: every
/// value in range matches (19 digits included), nothing that would overflow
/// does. For `max` = 9223372036854775807: up to 18 digits, or 19 digits that
/// stay at or below `max` digit by digit.
fn decimal_at_most(max: u64) -> String {
    let digits: Vec<u32> = max
        .to_string()
        .chars()
        .filter_map(|c| c.to_digit(10))
        .collect();
    let n = digits.len();
    let mut alternatives = vec![format!("[0-9]{{1,{}}}", n - 1)];
    for (i, &d) in digits.iter().enumerate() {
        let prefix: String = digits[..i].iter().map(|d| d.to_string()).collect();
        let low = if i == 0 { 1 } else { 0 };
        let rest = n - i - 1;
        if d > low {
            let tail = if rest > 0 {
                format!("[0-9]{{{rest}}}")
            } else {
                String::new()
            };
            alternatives.push(format!("{prefix}[{low}-{}]{tail}", d - 1));
        }
    }
    alternatives.push(max.to_string());
    format!("({})", alternatives.join("|"))
}

#[cfg(test)]
mod tests {
    use super::decimal_at_most;

    fn matcher(max: u64) -> regex::Regex {
        regex::Regex::new(&format!("^{}$", decimal_at_most(max))).unwrap()
    }

    #[test]
    fn the_integer_patterns_match_exactly_the_values_in_range() {
        let int64 = matcher(i64::MAX as u64);
        for ok in [
            "0",
            "7",
            "1564151744488529105",
            "9223372036854775807",
            "9223372036854775799",
            "8999999999999999999",
        ] {
            assert!(int64.is_match(ok), "{ok} should match");
        }
        for bad in [
            "9223372036854775808",
            "9300000000000000000",
            "10000000000000000000",
            "",
            "1a",
        ] {
            assert!(!int64.is_match(bad), "{bad} should not match");
        }
        let uint64 = matcher(u64::MAX);
        assert!(uint64.is_match("18446744073709551615"));
        assert!(uint64.is_match("9223372036854775808"));
        assert!(!uint64.is_match("18446744073709551616"));
        assert!(!uint64.is_match("20000000000000000000"));
    }

    #[test]
    fn operations_need_a_bearer_token_but_auth_service_ones() {
        let pool = crate::rest::descriptor_pool().unwrap();
        let services: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        let bindings = crate::rest::http_rule::bindings(&pool, &services).unwrap();
        let doc = super::document(&pool, &bindings, "t");
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

    #[test]
    fn small_bounds_are_exact_too() {
        let m = matcher(305);
        for v in 0..=1000u64 {
            assert_eq!(m.is_match(&v.to_string()), v <= 305, "{v}");
        }
    }
}
