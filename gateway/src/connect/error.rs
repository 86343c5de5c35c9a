//! Connect errors: a code name (`not_found`), a message and details, sent
//! as the JSON body of a unary answer (with the HTTP status the Connect
//! protocol gives the code) or inside a stream's end message.
//! Details are `google.protobuf.Any` values from the gRPC status: the type
//! name, the bytes in unpadded base64 and, when the descriptor pool knows
//! the type, the message as JSON under `debug`.

use axum::body::Body;
use axum::response::Response;
use base64::Engine as _;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderValue, StatusCode};
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Map, Value, json};
use tonic::{Code, Status};

use super::RESERVED_METADATA;

/// The Connect name of a gRPC code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "ok",
        Code::Cancelled => "canceled",
        Code::Unknown => "unknown",
        Code::InvalidArgument => "invalid_argument",
        Code::DeadlineExceeded => "deadline_exceeded",
        Code::NotFound => "not_found",
        Code::AlreadyExists => "already_exists",
        Code::PermissionDenied => "permission_denied",
        Code::ResourceExhausted => "resource_exhausted",
        Code::FailedPrecondition => "failed_precondition",
        Code::Aborted => "aborted",
        Code::OutOfRange => "out_of_range",
        Code::Unimplemented => "unimplemented",
        Code::Internal => "internal",
        Code::Unavailable => "unavailable",
        Code::DataLoss => "data_loss",
        Code::Unauthenticated => "unauthenticated",
    }
}

/// The HTTP status of a unary Connect error. The Connect protocol's table
/// is the one grpc-gateway uses (499, 400, 504, 404, 409, 403, 429, 400,
/// 409, 400, 501, 500, 503, 500, 401; 500 for unknown), so it is shared.
pub fn http_status(code: Code) -> StatusCode {
    crate::rest::errors::http_status(code)
}

/// A failed Connect call.
#[derive(Debug, Clone)]
pub struct ConnectError {
    pub code: Code,
    pub message: String,
    pub details: Vec<prost_types::Any>,
    /// Response metadata of the failed call (headers and trailers); boxed
    /// to keep `Result<_, ConnectError>` small.
    pub metadata: Box<HeaderMap>,
}

impl ConnectError {
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            details: Vec::new(),
            metadata: Box::default(),
        }
    }

    pub fn invalid_argument(message: impl Into<String>) -> Self {
        Self::new(Code::InvalidArgument, message)
    }

    /// The error a gRPC status stands for, with its details and metadata.
    pub fn from_status(status: &Status) -> Self {
        let details = if status.details().is_empty() {
            Vec::new()
        } else {
            tonic_types::pb::Status::decode(status.details())
                .map(|s| s.details)
                .unwrap_or_default()
        };
        Self {
            code: status.code(),
            message: status.message().to_owned(),
            details,
            metadata: Box::new(metadata_headers(&status.metadata().clone().into_headers())),
        }
    }

    /// The Connect error object: `{"code", "message", "details"}`.
    pub fn to_json(&self, pool: &DescriptorPool) -> Value {
        let mut error = Map::new();
        error.insert("code".into(), json!(code_name(self.code)));
        if !self.message.is_empty() {
            error.insert("message".into(), json!(self.message));
        }
        if !self.details.is_empty() {
            let details = self
                .details
                .iter()
                .map(|any| detail_json(any, pool))
                .collect();
            error.insert("details".into(), Value::Array(details));
        }
        Value::Object(error)
    }

    /// A unary error answer: the HTTP status for the code, the error as a
    /// JSON body, and the call's metadata as headers.
    pub fn into_unary_response(self, pool: &DescriptorPool) -> Response {
        let body = serde_json::to_vec(&self.to_json(pool)).expect("JSON serializes");
        let mut response = Response::new(Body::from(body));
        *response.status_mut() = http_status(self.code);
        let headers = response.headers_mut();
        headers.extend(*self.metadata);
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        response
    }
}

fn detail_json(any: &prost_types::Any, pool: &DescriptorPool) -> Value {
    let type_name = any.type_url.rsplit('/').next().unwrap_or_default();
    let mut detail = Map::new();
    detail.insert("type".into(), json!(type_name));
    detail.insert(
        "value".into(),
        json!(base64::engine::general_purpose::STANDARD_NO_PAD.encode(&any.value)),
    );
    let debug = pool
        .get_message_by_name(type_name)
        .and_then(|desc| DynamicMessage::decode(desc, any.value.as_slice()).ok())
        .and_then(|message| serde_json::to_value(&message).ok());
    if let Some(debug) = debug {
        detail.insert("debug".into(), debug);
    }
    Value::Object(detail)
}

/// `headers` without the names a server sets on its own or that carry the
/// gRPC status.
pub(crate) fn metadata_headers(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            !RESERVED_METADATA.contains(&name) && !name.starts_with("grpc-")
        })
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_the_connect_name_and_status() {
        let table = [
            (Code::Cancelled, "canceled", 499),
            (Code::Unknown, "unknown", 500),
            (Code::InvalidArgument, "invalid_argument", 400),
            (Code::DeadlineExceeded, "deadline_exceeded", 504),
            (Code::NotFound, "not_found", 404),
            (Code::AlreadyExists, "already_exists", 409),
            (Code::PermissionDenied, "permission_denied", 403),
            (Code::ResourceExhausted, "resource_exhausted", 429),
            (Code::FailedPrecondition, "failed_precondition", 400),
            (Code::Aborted, "aborted", 409),
            (Code::OutOfRange, "out_of_range", 400),
            (Code::Unimplemented, "unimplemented", 501),
            (Code::Internal, "internal", 500),
            (Code::Unavailable, "unavailable", 503),
            (Code::DataLoss, "data_loss", 500),
            (Code::Unauthenticated, "unauthenticated", 401),
        ];
        for (code, name, status) in table {
            assert_eq!(code_name(code), name);
            assert_eq!(http_status(code).as_u16(), status, "{name}");
        }
    }

    #[test]
    fn details_carry_type_value_and_debug() {
        let pool = crate::rest::descriptor_pool(ordermesh_proto::FILE_DESCRIPTOR_SET).unwrap();
        let status = crate::rest::errors::tests::invalid_field("title", "must not be empty");
        let error = ConnectError::from_status(&status);
        let body = error.to_json(&pool);
        assert_eq!(body["code"], "invalid_argument");
        assert_eq!(body["message"], "invalid title: must not be empty");
        let detail = &body["details"][0];
        assert_eq!(detail["type"], "google.rpc.BadRequest");
        let value = detail["value"].as_str().unwrap();
        assert!(!value.ends_with('='), "unpadded: {value}");
        assert_eq!(
            detail["debug"]["fieldViolations"][0]["field"], "title",
            "{detail}"
        );
    }
}
