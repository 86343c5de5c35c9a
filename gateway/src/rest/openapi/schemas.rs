//! JSON schemas of messages and enums, as proto3 JSON writes them.

use std::collections::{BTreeMap, BTreeSet};

use prost_reflect::{DescriptorPool, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use super::comments::Comments;
use crate::rest::json::is_scalar_message;

/// Collects the schemas of the messages and enums referenced so far.
pub(super) struct Generator<'a> {
    pub(super) comments: &'a Comments,
    pub(super) schemas: BTreeMap<String, Value>,
    pending: Vec<Pending>,
    seen: BTreeSet<String>,
}

enum Pending {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

/// A reference to the schema `name` under `components.schemas`.
pub(super) fn reference(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

impl<'a> Generator<'a> {
    pub(super) fn new(comments: &'a Comments) -> Self {
        Self {
            comments,
            schemas: BTreeMap::new(),
            pending: Vec::new(),
            seen: BTreeSet::new(),
        }
    }

    pub(super) fn reference_message_name(&mut self, name: &str, pool: &DescriptorPool) {
        if let Some(m) = pool.get_message_by_name(name) {
            self.message_ref(&m);
        }
    }

    pub(super) fn message_ref(&mut self, m: &MessageDescriptor) -> Value {
        if self.seen.insert(m.full_name().to_owned()) {
            self.pending.push(Pending::Message(m.clone()));
        }
        reference(m.full_name())
    }

    pub(super) fn enum_ref(&mut self, e: &EnumDescriptor) -> Value {
        if self.seen.insert(e.full_name().to_owned()) {
            self.pending.push(Pending::Enum(e.clone()));
        }
        reference(e.full_name())
    }

    /// Generates every schema referenced so far (and what they reference).
    pub(super) fn drain(&mut self) {
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
    pub(super) fn message_schema(
        &mut self,
        m: &MessageDescriptor,
        skip: &[FieldDescriptor],
    ) -> Value {
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

    pub(super) fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
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

    pub(super) fn kind_schema(&mut self, kind: &Kind) -> Value {
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
    fn small_bounds_are_exact_too() {
        let m = matcher(305);
        for v in 0..=1000u64 {
            assert_eq!(m.is_match(&v.to_string()), v <= 305, "{v}");
        }
    }
}
