//! How messages are written: binary protobuf or proto3 JSON.

use prost::Message as _;
use prost_reflect::{DeserializeOptions, DynamicMessage, MessageDescriptor, SerializeOptions};
use tonic::Code;

use super::ConnectError;

/// How messages are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Codec {
    Proto,
    Json,
}

/// The request message `bytes` holds.
pub(super) fn decode(
    desc: &MessageDescriptor,
    codec: Codec,
    bytes: &[u8],
) -> Result<DynamicMessage, ConnectError> {
    match codec {
        Codec::Proto => DynamicMessage::decode(desc.clone(), bytes).map_err(|e| {
            ConnectError::invalid_argument(format!("cannot decode the request message: {e}"))
        }),
        Codec::Json => {
            // An empty body is the empty message, as for proto.
            let text = if bytes.iter().all(u8::is_ascii_whitespace) {
                &b"{}"[..]
            } else {
                bytes
            };
            let mut de = serde_json::Deserializer::from_slice(text);
            let message = DynamicMessage::deserialize_with_options(
                desc.clone(),
                &mut de,
                &DeserializeOptions::new(),
            )
            .and_then(|m| de.end().map(|()| m))
            .map_err(|e| ConnectError::invalid_argument(format!("invalid request JSON: {e}")))?;
            Ok(message)
        }
    }
}

/// The answer, written with `codec`.
pub(super) fn encode(message: &DynamicMessage, codec: Codec) -> Result<Vec<u8>, ConnectError> {
    match codec {
        Codec::Proto => Ok(message.encode_to_vec()),
        Codec::Json => {
            let mut out = Vec::new();
            let mut ser = serde_json::Serializer::new(&mut out);
            message
                .serialize_with_options(&mut ser, &SerializeOptions::new())
                .map_err(|e| {
                    ConnectError::new(Code::Internal, format!("encode the answer: {e}"))
                })?;
            Ok(out)
        }
    }
}
