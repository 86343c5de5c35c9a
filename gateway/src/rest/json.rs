//! Proto3 JSON both ways. A request message is assembled as one JSON object
//! from the body, the path variables and the query parameters, checked for
//! unknown fields, then decoded with prost-reflect (so both the camelCase
//! and the proto field names are accepted, 64-bit integers as strings or
//! numbers, enums by name or number, Timestamps as RFC 3339); a decoding
//! error names the field it happened at. Responses are proto3 JSON the way
//! grpc-gateway users know it: camelCase names, 64-bit integers as strings,
//! enums by name, and fields at their default value written (`"0"`, `""`,
//! `[]`, the zero enum), so a client sees the whole resource; only fields
//! with presence (messages, `optional`, oneofs) are left out when unset.

use prost_reflect::{
    DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, SerializeOptions,
};
use serde_json::{Map, Value};

use super::errors::RestError;
use super::http_rule::{Binding, BodyMapping, Captured};

/// Builds the request message of `binding` from the path variables, the raw
/// query string and the body bytes.
pub fn request_message(
    binding: &Binding,
    captured: &[Captured],
    query: Option<&str>,
    body: &[u8],
) -> Result<DynamicMessage, RestError> {
    let input = binding.method.input();
    let mut root = Map::new();
    let body_is_empty = body.iter().all(u8::is_ascii_whitespace);
    match &binding.body {
        BodyMapping::Whole => {
            if !body_is_empty {
                match parse_body(body)? {
                    Value::Object(fields) => root = fields,
                    _ => {
                        return Err(RestError::bad_request(
                            "the request body must be a JSON object",
                        ));
                    }
                }
            }
        }
        BodyMapping::Field(field) => {
            if !body_is_empty {
                root.insert(field.json_name().to_owned(), parse_body(body)?);
            }
        }
        BodyMapping::None => {
            if !body_is_empty {
                return Err(RestError::bad_request(format!(
                    "{} {} takes no request body",
                    binding.http_method, binding.template
                )));
            }
        }
    }
    check_known_fields(&input, &Value::Object(root.clone()), "")?;

    for c in captured {
        let fields = &binding.variables[c.variable];
        let leaf = fields.last().expect("field paths are never empty");
        set_path(&mut root, fields, scalar(leaf, &c.value))?;
    }

    if let Some(query) = query.filter(|q| !q.is_empty()) {
        if matches!(binding.body, BodyMapping::Whole) {
            let first = query_pairs(query)?
                .into_iter()
                .next()
                .map(|(k, _)| k)
                .unwrap_or_default();
            return Err(RestError::bad_field(
                &first,
                "unknown query parameter: the body carries every field of this method",
            ));
        }
        for (key, value) in query_pairs(query)? {
            apply_query_param(binding, &input, &mut root, &key, &value)?;
        }
    }

    decode(&input, Value::Object(root))
}

/// The `key=value` pairs of a query string, decoded as
/// `application/x-www-form-urlencoded` (`+` is a space, `%XX` a byte), but
/// strictly: a key or value that is not UTF-8 once decoded is a 400 naming
/// it, never silently replaced with U+FFFD.
fn query_pairs(query: &str) -> Result<Vec<(String, String)>, RestError> {
    fn decode_part(part: &str) -> Option<String> {
        let spaced = part.replace('+', " ");
        percent_encoding::percent_decode_str(&spaced)
            .decode_utf8()
            .ok()
            .map(std::borrow::Cow::into_owned)
    }
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            // An undecodable name is named as it was sent.
            let key = decode_part(raw_key).ok_or_else(|| {
                RestError::bad_field(raw_key, "the query parameter name is not valid UTF-8")
            })?;
            let value = decode_part(raw_value).ok_or_else(|| {
                RestError::bad_field(&key, "the query parameter is not valid UTF-8")
            })?;
            Ok((key, value))
        })
        .collect()
}

fn parse_body(body: &[u8]) -> Result<Value, RestError> {
    serde_json::from_slice(body)
        .map_err(|e| RestError::bad_request(format!("malformed JSON in the request body: {e}")))
}

/// Decodes `value` into a message of type `desc`; an error names the field.
pub fn decode(desc: &MessageDescriptor, value: Value) -> Result<DynamicMessage, RestError> {
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(value, &mut track);
    DynamicMessage::deserialize_with_options(desc.clone(), de, &DeserializeOptions::new()).map_err(
        |e| {
            let path = track.path().to_string();
            let path = if path == "." { String::new() } else { path };
            if path.is_empty() {
                RestError::bad_request(format!("invalid request: {e}"))
            } else {
                RestError::bad_field(&path, e.to_string())
            }
        },
    )
}

fn field_by_either_name(desc: &MessageDescriptor, name: &str) -> Option<FieldDescriptor> {
    desc.get_field_by_json_name(name)
        .or_else(|| desc.get_field_by_name(name))
}

fn join(prefix: &str, name: &str) -> String {
    if prefix.is_empty() {
        name.to_owned()
    } else {
        format!("{prefix}.{name}")
    }
}

/// Rejects fields `desc` does not have (anywhere in `value`), naming them,
/// and a field given under both of its names.
fn check_known_fields(
    desc: &MessageDescriptor,
    value: &Value,
    path: &str,
) -> Result<(), RestError> {
    if desc.full_name().starts_with("google.protobuf.") {
        return Ok(()); // well-known types have their own JSON forms
    }
    let Value::Object(fields) = value else {
        return Ok(()); // a type error, reported by the decoder
    };
    for (key, value) in fields {
        let here = join(path, key);
        let Some(field) = field_by_either_name(desc, key) else {
            return Err(RestError::bad_field(&here, "unknown field"));
        };
        if field.json_name() != field.name()
            && fields.contains_key(field.json_name())
            && fields.contains_key(field.name())
        {
            return Err(RestError::bad_field(
                &here,
                format!("given as both {} and {}", field.json_name(), field.name()),
            ));
        }
        let Kind::Message(inner) = field.kind() else {
            continue;
        };
        if field.is_map() {
            let value_kind = inner.map_entry_value_field().kind();
            if let (Kind::Message(v), Value::Object(entries)) = (value_kind, value) {
                for (k, entry) in entries {
                    check_known_fields(&v, entry, &format!("{here}[{k:?}]"))?;
                }
            }
        } else if field.is_list() {
            if let Value::Array(items) = value {
                for (i, item) in items.iter().enumerate() {
                    check_known_fields(&inner, item, &format!("{here}[{i}]"))?;
                }
            }
        } else {
            check_known_fields(&inner, value, &here)?;
        }
    }
    Ok(())
}

/// Sets the field at `fields` (a path of singular messages ending in the
/// target) in the JSON object `root`, replacing whatever the body had.
fn set_path(
    root: &mut Map<String, Value>,
    fields: &[FieldDescriptor],
    value: Value,
) -> Result<(), RestError> {
    let (leaf, parents) = fields.split_last().expect("field paths are never empty");
    let mut object = root;
    let mut path = String::new();
    for field in parents {
        path = join(&path, field.name());
        let key = if object.contains_key(field.name()) {
            field.name()
        } else {
            field.json_name()
        }
        .to_owned();
        let slot = object
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if slot.is_null() {
            *slot = Value::Object(Map::new());
        }
        object = slot
            .as_object_mut()
            .ok_or_else(|| RestError::bad_field(&path, "must be an object"))?;
    }
    object.remove(leaf.name());
    object.remove(leaf.json_name());
    object.insert(leaf.name().to_owned(), value);
    Ok(())
}

/// The JSON form of a text value (path variable, query parameter) for a
/// field of `field`'s type. Text that does not fit stays a string, so the
/// decoder reports it against the field.
fn scalar(field: &FieldDescriptor, text: &str) -> Value {
    scalar_of_kind(&field.kind(), text)
}

fn scalar_of_kind(kind: &Kind, text: &str) -> Value {
    let string = || Value::String(text.to_owned());
    match kind {
        Kind::Bool => match text {
            "true" => Value::Bool(true),
            "false" => Value::Bool(false),
            _ => string(),
        },
        Kind::Int32
        | Kind::Sint32
        | Kind::Sfixed32
        | Kind::Uint32
        | Kind::Fixed32
        | Kind::Enum(_) => text
            .parse::<i64>()
            .map(Value::from)
            .unwrap_or_else(|_| string()),
        Kind::Double | Kind::Float => text
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .unwrap_or_else(string),
        Kind::Message(m) if is_wrapper(m) => scalar_of_kind(
            &m.get_field_by_name("value")
                .expect("wrappers have value")
                .kind(),
            text,
        ),
        // Strings, bytes (base64), 64-bit integers (strings in proto3 JSON),
        // Timestamp, Duration, FieldMask.
        _ => string(),
    }
}

fn is_wrapper(m: &MessageDescriptor) -> bool {
    matches!(
        m.full_name(),
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// Messages a query parameter can set directly (their JSON is a string or
/// a scalar).
pub fn is_scalar_message(m: &MessageDescriptor) -> bool {
    is_wrapper(m)
        || matches!(
            m.full_name(),
            "google.protobuf.Timestamp" | "google.protobuf.Duration" | "google.protobuf.FieldMask"
        )
}

/// Sets the field a query parameter names (`a.b.c`, proto or JSON names;
/// repeated fields by repetition).
fn apply_query_param(
    binding: &Binding,
    input: &MessageDescriptor,
    root: &mut Map<String, Value>,
    key: &str,
    text: &str,
) -> Result<(), RestError> {
    let parts: Vec<&str> = key.split('.').collect();
    let fields = query_field_path(binding, input, key, &parts)?;
    let (leaf, parents) = fields.split_last().expect("one field per part");
    let (leaf_key, parent_keys) = parts.split_last().expect("non-empty");
    let value = scalar(leaf, text);
    let object = parent_object(root, parents, parent_keys, key)?;
    set_or_append(object, leaf, leaf_key, value, key)
}

/// The fields the parts of a query parameter `key` walk through: singular
/// messages, then a scalar (or list of scalars) that neither the body nor
/// the path sets.
fn query_field_path(
    binding: &Binding,
    input: &MessageDescriptor,
    key: &str,
    parts: &[&str],
) -> Result<Vec<FieldDescriptor>, RestError> {
    let mut desc = input.clone();
    let mut fields = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let field = field_by_either_name(&desc, part)
            .ok_or_else(|| RestError::bad_field(key, "unknown query parameter"))?;
        if i == 0 && matches!(&binding.body, BodyMapping::Field(b) if *b == field) {
            return Err(RestError::bad_field(key, "is set by the request body"));
        }
        let last = i + 1 == parts.len();
        match field.kind() {
            Kind::Message(m) if !is_scalar_message(&m) => {
                if last || field.is_list() || field.is_map() {
                    return Err(RestError::bad_field(
                        key,
                        "a message, list of messages or map cannot be a query parameter",
                    ));
                }
                desc = m;
            }
            _ if !last => {
                return Err(RestError::bad_field(key, "unknown query parameter"));
            }
            _ if field.is_map() => {
                return Err(RestError::bad_field(
                    key,
                    "a map cannot be a query parameter",
                ));
            }
            _ => {}
        }
        fields.push(field);
    }
    if binding.variables.contains(&fields) {
        return Err(RestError::bad_field(key, "is set by the URL path"));
    }
    Ok(fields)
}

/// The object in `root` that `parents` lead to, created as needed. Keys
/// keep the spelling the client used, so a decoding error names its
/// parameter; an object already there under the other spelling is reused.
fn parent_object<'m>(
    root: &'m mut Map<String, Value>,
    parents: &[FieldDescriptor],
    parent_keys: &[&str],
    key: &str,
) -> Result<&'m mut Map<String, Value>, RestError> {
    let mut object = root;
    for (field, part) in parents.iter().zip(parent_keys) {
        let other = if *part == field.name() {
            field.json_name()
        } else {
            field.name()
        };
        let key_now = if object.contains_key(other) {
            other
        } else {
            part
        };
        let slot = object
            .entry(key_now.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
        object = slot
            .as_object_mut()
            .ok_or_else(|| RestError::bad_field(key, "conflicts with another parameter"))?;
    }
    Ok(object)
}

/// Sets `leaf` in `object` to `value` (under `leaf_key`), or appends it
/// when the field is repeated; a singular field given twice is an error.
fn set_or_append(
    object: &mut Map<String, Value>,
    leaf: &FieldDescriptor,
    leaf_key: &str,
    value: Value,
    key: &str,
) -> Result<(), RestError> {
    let existing = object
        .remove(leaf.name())
        .or_else(|| object.remove(leaf.json_name()));
    let merged = match (leaf.is_list(), existing) {
        (true, Some(Value::Array(mut items))) => {
            items.push(value);
            Value::Array(items)
        }
        (true, _) => Value::Array(vec![value]),
        (false, None) => value,
        (false, Some(_)) => {
            return Err(RestError::bad_field(
                key,
                "given more than once but not repeated",
            ));
        }
    };
    object.insert(leaf_key.to_owned(), merged);
    Ok(())
}

/// How responses are written: default values included (see the module
/// comment).
fn response_options() -> SerializeOptions {
    SerializeOptions::new().skip_default_fields(false)
}

/// A response message as proto3 JSON (see the module comment).
pub fn message_json(message: &DynamicMessage) -> Result<Vec<u8>, RestError> {
    let mut out = Vec::new();
    message
        .serialize_with_options(
            &mut serde_json::Serializer::new(&mut out),
            &response_options(),
        )
        .map_err(render_error)?;
    Ok(out)
}

fn render_error(e: serde_json::Error) -> RestError {
    RestError::internal(format!("cannot render the response: {e}"))
}

/// The response body: the message (or its `response_body` field) as
/// proto3 JSON with default values written.
pub fn response_json(binding: &Binding, message: &DynamicMessage) -> Result<Vec<u8>, RestError> {
    let Some(field) = &binding.response_body else {
        return message_json(message);
    };
    if let prost_reflect::Value::Message(inner) = message.get_field(field).as_ref() {
        // An unset message field is its default: an empty message, written
        // with its own defaults.
        return message_json(inner);
    }
    let whole = message
        .serialize_with_options(serde_json::value::Serializer, &response_options())
        .map_err(render_error)?;
    // Written unless it has presence and is unset: then null.
    let value = whole.get(field.json_name()).cloned().unwrap_or(Value::Null);
    serde_json::to_vec(&value).map_err(render_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_pairs_decode_like_forms_but_refuse_invalid_utf8() {
        let pairs = query_pairs("a=1&b=x+y%20z&&c&d=%C3%A9").unwrap();
        let expected = [("a", "1"), ("b", "x y z"), ("c", ""), ("d", "é")];
        assert_eq!(
            pairs,
            expected.map(|(k, v)| (k.to_owned(), v.to_owned())).to_vec()
        );
        assert!(query_pairs("customerId=%FF").is_err());
        assert!(query_pairs("%FF=1").is_err());
    }

    fn create_order() -> MessageDescriptor {
        super::super::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET)
            .unwrap()
            .get_message_by_name("ordermesh.order.v1.CreateOrderRequest")
            .unwrap()
    }

    #[test]
    fn both_names_and_int64_forms_are_accepted() {
        let desc = create_order();
        let m = decode(
            &desc,
            serde_json::json!({
                "orderId": "o1",
                "customer_id": "c1",
                "items": [{"sku": "a", "quantity": 2, "unitPriceMinor": "250"},
                          {"sku": "b", "quantity": "1", "unit_price_minor": 199}],
            }),
        )
        .unwrap();
        let out = serde_json::to_value(&m).unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "orderId": "o1",
                "customerId": "c1",
                "items": [{"sku": "a", "quantity": 2, "unitPriceMinor": "250"},
                          {"sku": "b", "quantity": 1, "unitPriceMinor": "199"}],
            })
        );
    }

    #[test]
    fn errors_name_the_field() {
        let desc = create_order();
        let err = decode(
            &desc,
            serde_json::json!({"items": [{"sku": "a"}, {"quantity": "lots"}]}),
        )
        .unwrap_err();
        assert_eq!(err.http, 400);
        assert!(err.message.contains("items[1].quantity"), "{}", err.message);

        let err = check_known_fields(
            &desc,
            &serde_json::json!({"items": [{"sku": "a", "colour": "red"}]}),
            "",
        )
        .unwrap_err();
        assert_eq!(err.message, "invalid items[0].colour: unknown field");

        let err = check_known_fields(
            &desc,
            &serde_json::json!({"orderId": "a", "order_id": "b"}),
            "",
        )
        .unwrap_err();
        assert!(
            err.message.contains("both orderId and order_id"),
            "{}",
            err.message
        );
    }
}
