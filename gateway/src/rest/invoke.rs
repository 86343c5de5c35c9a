//! Calling a gRPC method in-process: the request message is framed as a
//! gRPC request (`application/grpc`, length-prefixed protobuf) and handed to
//! the server's own router as a tower service, so no bytes touch the
//! network. The answer is read back frame by frame, with the status from the
//! trailers (or from the headers of a trailers-only response).

use axum::body::Body;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::Stream;
use http::header::{CONTENT_TYPE, TE};
use http::{HeaderMap, HeaderName, HeaderValue, Request, Version};
use http_body_util::BodyExt;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use tokio::time::Instant;
use tonic::Status;
use tower::ServiceExt as _;

/// Metadata a gRPC server sets on its own: never copied into REST headers.
const RESERVED: &[&str] = &[
    "content-type",
    "content-length",
    "content-encoding",
    "transfer-encoding",
    "connection",
    "te",
    "trailer",
    "date",
    "server",
    "grpc-status",
    "grpc-message",
    "grpc-status-details-bin",
    "grpc-encoding",
    "grpc-accept-encoding",
];

/// The router that serves the gRPC services, called as a tower service.
#[derive(Clone)]
pub struct Invoker {
    grpc: axum::Router,
}

/// A unary answer: the response message and the response metadata
/// (headers and trailers, reserved gRPC names left out).
pub struct Unary {
    pub message: DynamicMessage,
    pub metadata: HeaderMap,
}

impl Invoker {
    pub fn new(grpc: axum::Router) -> Self {
        Self { grpc }
    }

    /// Sends one request and returns the response head and its body.
    async fn start(
        &self,
        method: &MethodDescriptor,
        message: &DynamicMessage,
        metadata: HeaderMap,
        extensions: http::Extensions,
        deadline: Option<Instant>,
    ) -> Result<(HeaderMap, Body), Status> {
        let mut frame = BytesMut::with_capacity(5 + message.encoded_len());
        frame.put_u8(0);
        frame.put_u32(
            u32::try_from(message.encoded_len())
                .map_err(|_| Status::resource_exhausted("request message too large"))?,
        );
        message
            .encode(&mut frame)
            .map_err(|e| Status::internal(format!("encode the request: {e}")))?;

        let uri = format!("/{}/{}", method.parent_service().full_name(), method.name());
        let mut request = Request::post(uri)
            .version(Version::HTTP_2)
            .body(Body::from(frame.freeze()))
            .map_err(|e| Status::internal(format!("build the request: {e}")))?;
        *request.extensions_mut() = extensions;
        let headers = request.headers_mut();
        *headers = metadata;
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
        headers.insert(TE, HeaderValue::from_static("trailers"));
        if let Some(deadline) = deadline {
            let left = deadline.saturating_duration_since(Instant::now());
            // grpc-timeout allows 8 digits: milliseconds cover ~27 hours.
            let millis = left.as_millis().clamp(1, 99_999_999);
            headers.insert(
                HeaderName::from_static("grpc-timeout"),
                HeaderValue::from_str(&format!("{millis}m")).expect("digits are a valid header"),
            );
        }

        let call = self.grpc.clone().oneshot(request);
        let response = within(deadline, call)
            .await?
            .unwrap_or_else(|never| match never {});
        let (parts, body) = response.into_parts();
        // A trailers-only response carries the status in its headers.
        if let Some(status) = Status::from_header_map(&parts.headers)
            && status.code() != tonic::Code::Ok
        {
            return Err(status);
        }
        if !parts.status.is_success() {
            return Err(Status::internal(format!(
                "the gRPC server answered HTTP {}",
                parts.status
            )));
        }
        Ok((parts.headers, body))
    }

    /// Calls a unary method.
    pub async fn unary(
        &self,
        method: &MethodDescriptor,
        message: &DynamicMessage,
        metadata: HeaderMap,
        extensions: http::Extensions,
        deadline: Option<Instant>,
    ) -> Result<Unary, Status> {
        let (headers, body) = self
            .start(method, message, metadata, extensions, deadline)
            .await?;
        let mut frames = Frames::new(body, &headers, method.output(), deadline);
        let mut answer = None;
        while let Some(item) = frames.next_message().await {
            let message = item?;
            if answer.replace(message).is_some() {
                return Err(Status::internal("a unary method sent two messages"));
            }
        }
        let trailers = frames.finish()?;
        let message = answer.ok_or_else(|| Status::internal("the method sent no message"))?;
        let mut metadata = response_metadata(&headers);
        metadata.extend(response_metadata(&trailers));
        Ok(Unary { message, metadata })
    }

    /// Calls a server-streaming method: the response metadata and the
    /// stream of messages, ending with the call's status as an error if it
    /// failed.
    pub async fn server_streaming(
        &self,
        method: &MethodDescriptor,
        message: &DynamicMessage,
        metadata: HeaderMap,
        extensions: http::Extensions,
        deadline: Option<Instant>,
    ) -> Result<(HeaderMap, Frames), Status> {
        let (headers, body) = self
            .start(method, message, metadata, extensions, deadline)
            .await?;
        let frames = Frames::new(body, &headers, method.output(), deadline);
        Ok((response_metadata(&headers), frames))
    }
}

async fn within<F: std::future::Future>(
    deadline: Option<Instant>,
    f: F,
) -> Result<F::Output, Status> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f)
            .await
            .map_err(|_| Status::deadline_exceeded("deadline exceeded")),
        None => Ok(f.await),
    }
}

/// Response metadata fit to become HTTP headers.
fn response_metadata(headers: &HeaderMap) -> HeaderMap {
    headers
        .iter()
        .filter(|(name, _)| !RESERVED.contains(&name.as_str()))
        .map(|(name, value)| (name.clone(), value.clone()))
        .collect()
}

/// The messages of a gRPC response body, decoded as they arrive.
pub struct Frames {
    body: Body,
    desc: MessageDescriptor,
    buffer: BytesMut,
    deadline: Option<Instant>,
    trailers: Option<HeaderMap>,
    done: bool,
}

impl Frames {
    /// `headers` are the response headers: in a trailers-only response
    /// they are the trailers too.
    fn new(
        body: Body,
        headers: &HeaderMap,
        desc: MessageDescriptor,
        deadline: Option<Instant>,
    ) -> Self {
        let trailers_only = headers.contains_key("grpc-status");
        Self {
            body,
            desc,
            buffer: BytesMut::new(),
            deadline,
            trailers: trailers_only.then(|| headers.clone()),
            done: false,
        }
    }

    /// The next message, or `None` once the body ended (then see
    /// [`Frames::finish`]).
    pub async fn next_message(&mut self) -> Option<Result<DynamicMessage, Status>> {
        loop {
            if let Some(frame) = self.take_frame() {
                return Some(frame);
            }
            if self.done {
                if !self.buffer.is_empty() {
                    self.buffer.clear();
                    return Some(Err(Status::internal("truncated gRPC frame")));
                }
                return None;
            }
            let next = match within(self.deadline, self.body.frame()).await {
                Ok(next) => next,
                Err(status) => {
                    self.done = true;
                    return Some(Err(status));
                }
            };
            match next {
                None => self.done = true,
                Some(Err(e)) => {
                    self.done = true;
                    return Some(Err(Status::internal(format!("read the response: {e}"))));
                }
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => self.buffer.extend_from_slice(&data),
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            self.trailers = Some(trailers);
                        }
                    }
                },
            }
        }
    }

    fn take_frame(&mut self) -> Option<Result<DynamicMessage, Status>> {
        if self.buffer.len() < 5 {
            return None;
        }
        let compressed = self.buffer[0];
        let len = u32::from_be_bytes(self.buffer[1..5].try_into().expect("4 bytes")) as usize;
        if self.buffer.len() < 5 + len {
            return None;
        }
        self.buffer.advance(5);
        let bytes: Bytes = self.buffer.split_to(len).freeze();
        if compressed != 0 {
            return Some(Err(Status::internal(
                "compressed gRPC responses are not supported",
            )));
        }
        Some(
            DynamicMessage::decode(self.desc.clone(), bytes)
                .map_err(|e| Status::internal(format!("decode the response: {e}"))),
        )
    }

    /// The trailers once the body ended, or the status they carry if the
    /// call failed.
    pub fn finish(&mut self) -> Result<HeaderMap, Status> {
        let trailers = self
            .trailers
            .take()
            .ok_or_else(|| Status::internal("the response ended without a gRPC status"))?;
        match Status::from_header_map(&trailers) {
            Some(status) if status.code() != tonic::Code::Ok => Err(status),
            Some(_) => Ok(trailers),
            None => Err(Status::internal("the response ended without a gRPC status")),
        }
    }

    /// The remaining messages as a stream; the last item is the call's
    /// status if it failed.
    pub fn into_stream(self) -> impl Stream<Item = Result<DynamicMessage, Status>> + Send {
        futures::stream::unfold(Some(self), |state| async move {
            let mut frames = state?;
            match frames.next_message().await {
                Some(Ok(m)) => Some((Ok(m), Some(frames))),
                Some(Err(e)) => Some((Err(e), None)),
                None => match frames.finish() {
                    Ok(_) => None,
                    Err(e) => Some((Err(e), None)),
                },
            }
        })
    }
}

/// What the in-process call keeps of the HTTP request's extensions: the
/// connection's peer address, which anonymous callers are rate-limited by
/// ([`crate::auth`]).
pub(crate) fn forwarded_extensions(outer: &http::Extensions) -> http::Extensions {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let mut extensions = http::Extensions::new();
    if let Some(info) = outer.get::<TcpConnectInfo>() {
        extensions.insert(info.clone());
    }
    if let Some(info) = outer.get::<TlsConnectInfo<TcpConnectInfo>>() {
        extensions.insert(info.clone());
    }
    extensions
}
