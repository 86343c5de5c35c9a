//! Raw bytes over gRPC, for tests that put hand-made (or broken) protobuf
//! on the wire.

/// A tonic codec that sends bytes as they are and reads the answer's bytes
/// back: for tests that put hand-made (or broken) protobuf on the wire, e.g.
/// `tonic::client::Grpc::unary(request, path, RawCodec)`.
#[derive(Debug, Clone, Copy)]
pub struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<Vec<u8>>, tonic::Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

/// Sends `message` as the request of the gRPC method at `path` (e.g.
/// `/ordermesh.order.v1.OrderService/CreateOrder`) with `token` as bearer,
/// bytes as they are; returns the refusal (panics if it was accepted).
pub async fn raw_unary_refused(
    channel: tonic::transport::Channel,
    token: &str,
    path: &'static str,
    message: Vec<u8>,
) -> tonic::Status {
    let bearer = ordermesh_auth::Bearer::new(token);
    let mut grpc = tonic::client::Grpc::new(tonic::service::interceptor::InterceptedService::new(
        channel, bearer,
    ));
    grpc.ready().await.expect("the channel is ready");
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(message), path, RawCodec)
        .await
        .expect_err("hostile bytes are refused")
}

/// Asserts `status` refuses a request whose protobuf did not decode.
pub fn assert_undecodable(status: &tonic::Status) {
    assert!(
        matches!(
            status.code(),
            tonic::Code::InvalidArgument | tonic::Code::Internal
        ),
        "{status:?}"
    );
    assert!(
        status
            .message()
            .starts_with("failed to decode Protobuf message"),
        "{status:?}"
    );
}
