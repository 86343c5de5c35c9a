//! REST errors: every failure is answered with a `google.rpc.Status` JSON
//! body (`code`, `message`, `details`) and the HTTP status grpc-gateway
//! uses for its gRPC code. Details from the service's
//! `grpc-status-details-bin` are rendered as JSON with their `@type`.

use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use http::header::{ALLOW, CONTENT_TYPE};
use http::{HeaderName, HeaderValue, Method, StatusCode};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::Value;
use tonic::Code;

/// Type URL prefix of `google.protobuf.Any` details.
const TYPE_URL_PREFIX: &str = "type.googleapis.com/";

/// Metadata of a failed call that becomes an HTTP header of the error
/// answer: the bearer challenge of a 401, the wait of a 429.
pub const ERROR_HEADERS: &[&str] = &["www-authenticate", "retry-after"];

/// The HTTP status grpc-gateway answers a gRPC `code` with.
pub fn http_status(code: Code) -> StatusCode {
    match code {
        Code::Ok => StatusCode::OK,
        Code::Cancelled => StatusCode::from_u16(499).expect("499 is a valid status"),
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            StatusCode::BAD_REQUEST
        }
        Code::Unauthenticated => StatusCode::UNAUTHORIZED,
        Code::PermissionDenied => StatusCode::FORBIDDEN,
        Code::NotFound => StatusCode::NOT_FOUND,
        Code::AlreadyExists | Code::Aborted => StatusCode::CONFLICT,
        Code::ResourceExhausted => StatusCode::TOO_MANY_REQUESTS,
        Code::Unimplemented => StatusCode::NOT_IMPLEMENTED,
        Code::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unknown | Code::Internal | Code::DataLoss => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// A REST failure: an HTTP status and the `google.rpc.Status` sent as body.
#[derive(Debug, Clone)]
pub struct RestError {
    pub http: StatusCode,
    pub code: Code,
    pub message: String,
    /// `google.protobuf.Any` values in proto3 JSON (with `@type`), each a
    /// serialized object, so the fields keep their declaration order.
    pub details: Vec<String>,
    /// The `Allow` header of a 405.
    pub allow: Option<HeaderValue>,
    /// Further headers of the answer (see [`ERROR_HEADERS`]).
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl RestError {
    pub fn new(http: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self {
            http,
            code,
            message: message.into(),
            details: Vec::new(),
            allow: None,
            headers: Vec::new(),
        }
    }

    /// 400 INVALID_ARGUMENT naming `field`, with a `google.rpc.BadRequest`
    /// detail like the services' own validation errors.
    pub fn bad_field(field: &str, description: impl Into<String>) -> Self {
        let description = description.into();
        let mut err = Self::new(
            StatusCode::BAD_REQUEST,
            Code::InvalidArgument,
            format!("invalid {field}: {description}"),
        );
        let quote = |s: &str| Value::String(s.to_owned()).to_string();
        err.details.push(format!(
            r#"{{"@type":"{TYPE_URL_PREFIX}google.rpc.BadRequest","fieldViolations":[{{"field":{},"description":{}}}]}}"#,
            quote(field),
            quote(&description),
        ));
        err
    }

    /// 400 INVALID_ARGUMENT about the request as a whole (malformed JSON).
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, Code::InvalidArgument, message)
    }

    pub fn not_found(method: &Method, path: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            Code::NotFound,
            format!("no REST route for {method} {path}"),
        )
    }

    /// 405 with `Allow` listing the methods the path does take.
    pub fn method_not_allowed(method: &Method, path: &str, allowed: &[Method]) -> Self {
        let mut err = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            Code::Unimplemented,
            format!("{path} does not take {method}"),
        );
        let allow: Vec<&str> = allowed.iter().map(Method::as_str).collect();
        err.allow = HeaderValue::from_str(&allow.join(", ")).ok();
        err
    }

    pub fn payload_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            Code::ResourceExhausted,
            format!("request body larger than {limit} bytes"),
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, Code::Internal, message)
    }

    /// The REST form of a gRPC status from the service. Its details
    /// (`grpc-status-details-bin`, an encoded `google.rpc.Status`) are
    /// rendered with the message types of `pool`.
    pub fn from_status(status: &tonic::Status, pool: &DescriptorPool) -> Self {
        let mut err = Self::new(
            http_status(status.code()),
            status.code(),
            status.message().to_owned(),
        );
        let metadata = status.metadata().as_ref();
        for name in ERROR_HEADERS {
            for value in metadata.get_all(*name) {
                err.headers
                    .push((HeaderName::from_static(name), value.clone()));
            }
        }
        if !status.details().is_empty() {
            match tonic_types::Status::decode(status.details()) {
                Ok(decoded) => {
                    err.details = decoded
                        .details
                        .iter()
                        .map(|any| any_json(any, pool))
                        .collect();
                }
                Err(e) => tracing::debug!(error = %e, "undecodable grpc-status-details-bin"),
            }
        }
        err
    }

    /// The `google.rpc.Status` JSON body: `code`, `message`, `details`.
    pub fn body_bytes(&self) -> Vec<u8> {
        let message = Value::String(self.message.clone());
        format!(
            r#"{{"code":{},"message":{message},"details":[{}]}}"#,
            self.code as i32,
            self.details.join(","),
        )
        .into_bytes()
    }

    /// [`RestError::body_bytes`] as a JSON value.
    pub fn body(&self) -> Value {
        serde_json::from_slice(&self.body_bytes()).expect("the body is JSON")
    }
}

/// One `google.protobuf.Any` in proto3 JSON: `@type`, then the message's
/// fields; a type the pool does not know keeps its bytes in `value`.
fn any_json(any: &prost_types::Any, pool: &DescriptorPool) -> String {
    let type_url = Value::String(any.type_url.clone());
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    let rendered = pool.get_message_by_name(name).and_then(|desc| {
        let message = DynamicMessage::decode(desc, any.value.as_slice()).ok()?;
        serde_json::to_string(&message).ok()
    });
    match rendered {
        Some(fields) if fields == "{}" => format!(r#"{{"@type":{type_url}}}"#),
        Some(fields) if fields.starts_with('{') => {
            format!(r#"{{"@type":{type_url},{}"#, &fields[1..])
        }
        // Well-known types with a non-object JSON form nest under "value".
        Some(other) => format!(r#"{{"@type":{type_url},"value":{other}}}"#),
        None => {
            let bytes = base64::engine::general_purpose::STANDARD.encode(&any.value);
            format!(r#"{{"@type":{type_url},"value":"{bytes}"}}"#)
        }
    }
}

impl IntoResponse for RestError {
    fn into_response(self) -> Response {
        let mut response = (self.http, self.body_bytes()).into_response();
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Some(allow) = self.allow {
            response.headers_mut().insert(ALLOW, allow);
        }
        for (name, value) in self.headers {
            response.headers_mut().append(name, value);
        }
        response
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn codes_map_as_grpc_gateway_does() {
        let table = [
            (Code::Ok, 200),
            (Code::Cancelled, 499),
            (Code::Unknown, 500),
            (Code::InvalidArgument, 400),
            (Code::DeadlineExceeded, 504),
            (Code::NotFound, 404),
            (Code::AlreadyExists, 409),
            (Code::PermissionDenied, 403),
            (Code::ResourceExhausted, 429),
            (Code::FailedPrecondition, 400),
            (Code::Aborted, 409),
            (Code::OutOfRange, 400),
            (Code::Unimplemented, 501),
            (Code::Internal, 500),
            (Code::Unavailable, 503),
            (Code::DataLoss, 500),
            (Code::Unauthenticated, 401),
        ];
        for (code, http) in table {
            assert_eq!(http_status(code).as_u16(), http, "{code:?}");
        }
    }

    use tonic::metadata::MetadataValue;
    use tonic_types::{ErrorDetails, StatusExt as _};

    /// What a bearer-token layer answers without a token.
    fn unauthenticated() -> tonic::Status {
        let mut status = tonic::Status::unauthenticated("missing bearer token");
        let challenge = MetadataValue::from_static("Bearer realm=\"test\"");
        status.metadata_mut().insert("www-authenticate", challenge);
        status
    }

    /// What a rate limiter answers: RetryInfo and `retry-after`.
    fn rate_limited(secs: u64) -> tonic::Status {
        let retry = ErrorDetails::with_retry_info(Some(std::time::Duration::from_secs(secs)));
        let mut status = tonic::Status::with_error_details(Code::ResourceExhausted, "slow", retry);
        let after = secs.to_string().parse().unwrap();
        status.metadata_mut().insert("retry-after", after);
        status
    }

    /// INVALID_ARGUMENT with a BadRequest naming `field`.
    pub(crate) fn invalid_field(field: &str, description: &str) -> tonic::Status {
        let details = ErrorDetails::with_bad_request_violation(field, description);
        let message = format!("invalid {field}: {description}");
        tonic::Status::with_error_details(Code::InvalidArgument, message, details)
    }

    #[test]
    fn auth_and_rate_limit_hints_become_headers() {
        let pool = super::super::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let err = RestError::from_status(&unauthenticated(), &pool);
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert!(
            response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Bearer")
        );
        let err = RestError::from_status(&rate_limited(3), &pool);
        assert_eq!(
            err.body()["details"][0]["@type"],
            "type.googleapis.com/google.rpc.RetryInfo"
        );
        let response = err.into_response();
        assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(response.headers()["retry-after"], "3");
    }

    #[test]
    fn details_are_rendered_with_their_type() {
        let pool = super::super::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let status = invalid_field("items", "at least one item");
        let err = RestError::from_status(&status, &pool);
        assert_eq!(err.http, StatusCode::BAD_REQUEST);
        assert_eq!(
            err.body(),
            json!({
                "code": 3,
                "message": "invalid items: at least one item",
                "details": [{
                    "@type": "type.googleapis.com/google.rpc.BadRequest",
                    "fieldViolations": [{"field": "items", "description": "at least one item"}],
                }],
            })
        );
        // A type nobody knows keeps its bytes.
        let unknown = prost_types::Any {
            type_url: "type.googleapis.com/acme.Secret".into(),
            value: vec![1, 2, 3],
        };
        assert_eq!(
            any_json(&unknown, &pool),
            r#"{"@type":"type.googleapis.com/acme.Secret","value":"AQID"}"#
        );
        // Fields in declaration order, as the service sent them.
        assert_eq!(
            String::from_utf8(err.body_bytes()).unwrap(),
            r#"{"code":3,"message":"invalid items: at least one item","details":[{"@type":"type.googleapis.com/google.rpc.BadRequest","fieldViolations":[{"field":"items","description":"at least one item"}]}]}"#
        );
    }
}
