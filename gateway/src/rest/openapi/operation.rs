//! One OpenAPI operation per binding: its id, parameters (path and
//! query), request body and responses.

use prost_reflect::{FieldDescriptor, Kind, MethodDescriptor};
use serde_json::{Value, json};

use super::comments::summary;
use super::schemas::{Generator, reference};
use super::{MAX_QUERY_DEPTH, STATUS};
use crate::rest::http_rule::{Binding, BodyMapping};
use crate::rest::json::is_scalar_message;
use crate::rest::stream::EVENT_STREAM;

impl Generator<'_> {
    /// The operation of `binding`: described by the method's comment, its
    /// parameters the path variables and (unless the whole message is the
    /// body) the other fields as query parameters.
    pub(super) fn operation(&mut self, binding: &Binding) -> Value {
        let method = &binding.method;
        let doc = self
            .comments
            .get(method.parent_file().name(), method.path())
            .unwrap_or_default()
            .to_owned();
        let mut parameters = self.path_parameters(binding);
        if !matches!(binding.body, BodyMapping::Whole) {
            self.query_parameters_of(binding, &mut parameters);
        }
        let mut op = json!({
            "operationId": operation_id(binding),
            "tags": [method.parent_service().name()],
            "summary": summary(&doc),
            "description": format!("{doc}\n\ngRPC: `{}`", method.full_name()).trim().to_owned(),
            "parameters": parameters,
        });
        if let Some(body) = self.request_body(binding) {
            op["requestBody"] = body;
        }
        op["responses"] = json!({
            "200": self.ok_response(binding),
            "default": {
                "description": "An error: the gRPC status as `google.rpc.Status` (HTTP status \
                    as grpc-gateway maps the code).",
                "content": {"application/json": {"schema": reference(STATUS)}},
            },
        });
        op
    }

    /// A required parameter per path variable, constrained to what its
    /// template segment matches.
    fn path_parameters(&mut self, binding: &Binding) -> Vec<Value> {
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
            let mut p = json!({
                "name": dotted(fields),
                "in": "path",
                "required": true,
                "schema": schema,
            });
            if let Some(d) = self.comments.field(leaf) {
                p["description"] = Value::String(d.to_owned());
            }
            parameters.push(p);
        }
        parameters
    }

    /// Query parameters for the input's fields that neither the path nor
    /// the body carries.
    fn query_parameters_of(&mut self, binding: &Binding, parameters: &mut Vec<Value>) {
        let input = binding.method.input();
        let top: Vec<FieldDescriptor> = input
            .fields()
            .filter(|f| !matches!(&binding.body, BodyMapping::Field(b) if b == f))
            .collect();
        let bound: Vec<String> = binding.variables.iter().map(|v| dotted(v)).collect();
        let mut visiting = vec![input.full_name().to_owned()];
        for field in top {
            self.query_parameters(&field, "", &bound, &mut visiting, parameters);
        }
    }

    /// The JSON body the rule maps, if any: the input message (less the
    /// path's top-level fields) or one of its fields.
    fn request_body(&mut self, binding: &Binding) -> Option<Value> {
        let method: &MethodDescriptor = &binding.method;
        let schema = match &binding.body {
            BodyMapping::None => return None,
            BodyMapping::Whole => {
                let path_fields: Vec<FieldDescriptor> = binding
                    .variables
                    .iter()
                    .filter(|v| v.len() == 1)
                    .map(|v| v[0].clone())
                    .collect();
                if path_fields.is_empty() {
                    self.message_ref(&method.input())
                } else {
                    self.message_schema(&method.input(), &path_fields)
                }
            }
            BodyMapping::Field(field) => self.field_schema(field),
        };
        Some(json!({
            "required": true,
            "content": {"application/json": {"schema": schema}},
        }))
    }

    /// The 200 answer: the output message (or the rule's response field),
    /// once, or as a stream of NDJSON lines or server-sent events.
    fn ok_response(&mut self, binding: &Binding) -> Value {
        let method = &binding.method;
        let result = match &binding.response_body {
            Some(field) => self.field_schema(field),
            None => self.message_ref(&method.output()),
        };
        if !method.is_server_streaming() {
            return json!({
                "description": "OK",
                "content": {"application/json": {"schema": result}},
            });
        }
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
                EVENT_STREAM: {"schema": {
                    "type": "string",
                    "description": "Server-sent events (text/event-stream).",
                }},
            },
        })
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

/// `Service_Method`, with `_<n>` for a method's additional bindings.
fn operation_id(binding: &Binding) -> String {
    let method = &binding.method;
    let mut operation_id = format!("{}_{}", method.parent_service().name(), method.name());
    if binding.index > 0 {
        operation_id.push_str(&format!("_{}", binding.index));
    }
    operation_id
}

/// A field path as a dotted name (`address.city`).
fn dotted(fields: &[FieldDescriptor]) -> String {
    fields
        .iter()
        .map(FieldDescriptor::name)
        .collect::<Vec<_>>()
        .join(".")
}
