//! `google.api.http` rules: read from the method options of a descriptor
//! pool ([`bindings`]) and path templates parsed and matched
//! ([`PathTemplate`], in [`template`]), following the grammar in `google/api/http.proto`:
//!
//! ```text
//! Template = "/" Segments [ Verb ] ;
//! Segments = Segment { "/" Segment } ;
//! Segment  = "*" | "**" | LITERAL | Variable ;
//! Variable = "{" FieldPath [ "=" Segments ] "}" ;
//! Verb     = ":" LITERAL ;
//! ```

use http::Method;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MethodDescriptor, Value,
};

pub mod template;

pub use template::{Captured, PathTemplate, Variable};

/// The `google.api.http` extension of `google.protobuf.MethodOptions`.
pub const HTTP_EXTENSION: &str = "google.api.http";

/// A rule that cannot be served; the message says which method and why.
#[derive(Debug, thiserror::Error)]
#[error("{method}: {reason}")]
pub struct RuleError {
    pub method: String,
    pub reason: String,
}

fn rule_error(method: &MethodDescriptor, reason: impl Into<String>) -> RuleError {
    RuleError {
        method: method.full_name().to_owned(),
        reason: reason.into(),
    }
}

/// What the HTTP request body holds.
#[derive(Debug, Clone)]
pub enum BodyMapping {
    /// No body (`body` unset): every field not in the path is a query parameter.
    None,
    /// `body: "*"`: the whole request message except the path fields.
    Whole,
    /// `body: "<field>"`: one top-level field; the rest come from the query.
    Field(FieldDescriptor),
}

/// One HTTP binding of an RPC: the rule itself or one of its
/// `additional_bindings`.
#[derive(Debug, Clone)]
pub struct Binding {
    pub method: MethodDescriptor,
    pub http_method: Method,
    pub template: PathTemplate,
    /// The request fields each template variable sets, in template order.
    pub variables: Vec<Vec<FieldDescriptor>>,
    pub body: BodyMapping,
    /// `response_body`: only this field of the response is sent.
    pub response_body: Option<FieldDescriptor>,
    /// 0 for the rule itself, n for its n-th additional binding.
    pub index: usize,
}

/// Every binding of the methods of `services` that carry a `google.api.http`
/// rule. Client-streaming methods have no REST mapping and are left out.
pub fn bindings(pool: &DescriptorPool, services: &[String]) -> Result<Vec<Binding>, RuleError> {
    let Some(extension) = pool.get_extension_by_name(HTTP_EXTENSION) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for service in pool.services() {
        if !services.iter().any(|s| s == service.full_name()) {
            continue;
        }
        for method in service.methods() {
            let options = method.options();
            if !options.has_extension(&extension) {
                continue;
            }
            if method.is_client_streaming() {
                tracing::warn!(
                    method = method.full_name(),
                    "client-streaming method has no REST mapping"
                );
                continue;
            }
            let rule = match options.get_extension(&extension).as_ref() {
                Value::Message(rule) => rule.clone(),
                other => return Err(rule_error(&method, format!("unexpected option {other:?}"))),
            };
            out.push(binding(&method, &rule, 0)?);
            let extras = match rule.get_field_by_name("additional_bindings").as_deref() {
                Some(Value::List(list)) => list.clone(),
                _ => Vec::new(),
            };
            for (i, extra) in extras.iter().enumerate() {
                let Value::Message(extra) = extra else {
                    continue;
                };
                if matches!(extra.get_field_by_name("additional_bindings").as_deref(),
                    Some(Value::List(l)) if !l.is_empty())
                {
                    return Err(rule_error(
                        &method,
                        "additional_bindings may not nest additional_bindings",
                    ));
                }
                out.push(binding(&method, extra, i + 1)?);
            }
        }
    }
    for (i, a) in out.iter().enumerate() {
        if let Some(b) = out[..i].iter().find(|b| {
            b.http_method == a.http_method && b.template.canonical() == a.template.canonical()
        }) {
            return Err(rule_error(
                &a.method,
                format!(
                    "{} {} is already bound to {}",
                    a.http_method,
                    a.template,
                    b.method.full_name()
                ),
            ));
        }
    }
    Ok(out)
}

fn string_field(rule: &DynamicMessage, name: &str) -> String {
    rule.get_field_by_name(name)
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// The binding `rule` (the rule of `method` or its `index`-th additional
/// binding) describes, checked against the method's messages.
fn binding(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
    index: usize,
) -> Result<Binding, RuleError> {
    let (http_method, path) = http_pattern(method, rule)?;
    let template = PathTemplate::parse(&path)
        .map_err(|e| rule_error(method, format!("path template {path:?}: {e}")))?;
    let variables = path_variables(method, &template)?;
    let body = body_mapping(method, rule, &variables)?;
    let response_body = response_body(method, rule)?;
    Ok(Binding {
        method: method.clone(),
        http_method,
        template,
        variables,
        body,
        response_body,
        index,
    })
}

/// The HTTP method and path template of `rule`: one of `get`, `put`,
/// `post`, `delete`, `patch`, or `custom`.
fn http_pattern(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
) -> Result<(Method, String), RuleError> {
    let mut pattern = None;
    for name in ["get", "put", "post", "delete", "patch"] {
        if rule.has_field_by_name(name) {
            let verb = Method::from_bytes(name.to_ascii_uppercase().as_bytes())
                .expect("a standard method");
            pattern = Some((verb, string_field(rule, name)));
        }
    }
    if rule.has_field_by_name("custom")
        && let Some(Value::Message(custom)) = rule.get_field_by_name("custom").as_deref()
    {
        let kind = string_field(custom, "kind");
        let verb = Method::from_bytes(kind.as_bytes())
            .map_err(|_| rule_error(method, format!("invalid custom method {kind:?}")))?;
        pattern = Some((verb, string_field(custom, "path")));
    }
    pattern.ok_or_else(|| rule_error(method, "the rule sets no HTTP method and path"))
}

/// The request fields each variable of `template` sets; each must end in a
/// singular scalar field.
fn path_variables(
    method: &MethodDescriptor,
    template: &PathTemplate,
) -> Result<Vec<Vec<FieldDescriptor>>, RuleError> {
    let input = method.input();
    let mut variables = Vec::new();
    for variable in template.variables() {
        let fields = resolve_field_path(&input, &variable.field_path).map_err(|e| {
            rule_error(
                method,
                format!("path variable {}: {e}", variable.field_path.join(".")),
            )
        })?;
        let leaf = fields.last().expect("a field path is never empty");
        if leaf.is_list() || leaf.is_map() || matches!(leaf.kind(), Kind::Message(_)) {
            return Err(rule_error(
                method,
                format!(
                    "path variable {} must be a singular scalar field",
                    leaf.name()
                ),
            ));
        }
        variables.push(fields);
    }
    Ok(variables)
}

/// The rule's `body`: none, `*`, or a top-level request field that no path
/// variable sets.
fn body_mapping(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
    variables: &[Vec<FieldDescriptor>],
) -> Result<BodyMapping, RuleError> {
    let input = method.input();
    Ok(match string_field(rule, "body").as_str() {
        "" => BodyMapping::None,
        "*" => BodyMapping::Whole,
        name => {
            let field = input.get_field_by_name(name).ok_or_else(|| {
                rule_error(
                    method,
                    format!("body field {name:?} is not in {}", input.full_name()),
                )
            })?;
            if variables.iter().any(|v| v[0] == field) {
                return Err(rule_error(
                    method,
                    format!("body field {name:?} is also a path variable"),
                ));
            }
            BodyMapping::Field(field)
        }
    })
}

/// The rule's `response_body`: a field of the response message, if set.
fn response_body(
    method: &MethodDescriptor,
    rule: &DynamicMessage,
) -> Result<Option<FieldDescriptor>, RuleError> {
    match string_field(rule, "response_body").as_str() {
        "" => Ok(None),
        name => method
            .output()
            .get_field_by_name(name)
            .map(Some)
            .ok_or_else(|| {
                rule_error(
                    method,
                    format!(
                        "response_body field {name:?} is not in {}",
                        method.output().full_name()
                    ),
                )
            }),
    }
}

/// The fields `path` (proto names, dot-separated in the rule) walks through;
/// every field but the last is a singular message.
fn resolve_field_path(
    message: &prost_reflect::MessageDescriptor,
    path: &[String],
) -> Result<Vec<FieldDescriptor>, String> {
    let mut fields = Vec::new();
    let mut current = message.clone();
    for (i, name) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(name)
            .ok_or_else(|| format!("no field {name:?} in {}", current.full_name()))?;
        if i + 1 < path.len() {
            match field.kind() {
                Kind::Message(next) if !field.is_list() && !field.is_map() => current = next,
                _ => return Err(format!("{name} is not a singular message field")),
            }
        }
        fields.push(field);
    }
    Ok(fields)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordermesh_rules_are_read_from_the_descriptor_set() {
        let pool = super::super::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let services = vec![
            "ordermesh.order.v1.OrderService".to_owned(),
            "ordermesh.payment.v1.AccountService".to_owned(),
        ];
        let all = bindings(&pool, &services).unwrap();
        let deposit = all
            .iter()
            .find(|b| b.method.name() == "Deposit")
            .expect("Deposit has a rule");
        assert_eq!(deposit.http_method, Method::POST);
        assert_eq!(
            deposit.template.to_string(),
            "/v1/accounts/{customer_id}:deposit"
        );
        assert!(matches!(deposit.body, BodyMapping::Whole));
        assert!(all.iter().any(|b| b.method.name() == "ListOrders"));
        // Only the services asked for.
        let orders_only = bindings(&pool, &services[..1]).unwrap();
        assert!(
            orders_only
                .iter()
                .all(|b| b.method.parent_service().name() == "OrderService")
        );
    }
}
