//! W3C trace context (`traceparent`, `tracestate`) across every hop of an
//! order: HTTP/gRPC metadata, outbox rows and AMQP headers (both string maps,
//! [`crate::outbox::OutboxEvent::headers`] and [`crate::amqp::Message::headers`]).
//!
//! The format is always W3C trace context, whatever global propagator is
//! set, so the services and the relay agree on it. Injecting from a span
//! without a valid context (no telemetry installed) writes nothing.

use std::collections::BTreeMap;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C header carrying trace id, parent span id and flags.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C header carrying vendor trace state.
pub const TRACESTATE: &str = "tracestate";
/// Response header with the request's trace id (32 hex digits), for people
/// pasting it into Jaeger.
pub const TRACE_ID_HEADER: &str = "x-trace-id";

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The context `headers` carry (an empty context when they carry none).
pub fn extract_map(headers: &BTreeMap<String, String>) -> Context {
    propagator().extract(&MapExtractor(headers))
}

/// Writes `cx`'s trace context into `headers`, replacing any previous one.
/// An invalid context (no telemetry) leaves `headers` as they are.
pub fn inject_map(cx: &Context, headers: &mut BTreeMap<String, String>) {
    if cx.span().span_context().is_valid() {
        headers.remove(TRACESTATE);
        propagator().inject_context(cx, &mut MapInjector(headers));
    }
}

/// Writes the trace context of `span` into `headers` (see [`inject_map`]).
pub fn inject_span(span: &tracing::Span, headers: &mut BTreeMap<String, String>) {
    inject_map(&span.context(), headers);
}

/// The trace context of `span` as a string map (empty without telemetry).
pub fn span_headers(span: &tracing::Span) -> BTreeMap<String, String> {
    let mut headers = BTreeMap::new();
    inject_span(span, &mut headers);
    headers
}

/// The context of incoming HTTP or gRPC metadata.
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    propagator().extract(&HttpExtractor(headers))
}

/// Writes `cx`'s trace context into HTTP or gRPC metadata.
pub fn inject_http(cx: &Context, headers: &mut http::HeaderMap) {
    if cx.span().span_context().is_valid() {
        propagator().inject_context(cx, &mut HttpInjector(headers));
    }
}

/// Makes `cx` the remote parent of `span` when it carries a valid context.
/// Must be called before the span is first entered.
pub fn set_remote_parent(span: &tracing::Span, cx: Context) {
    if !cx.span().span_context().is_valid() {
        return;
    }
    if let Err(e) = span.set_parent(cx) {
        tracing::debug!(error = %e, "could not attach the remote trace context");
    }
}

/// The trace id of `span` as 32 lowercase hex digits, if it has one.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span_ref = cx.span();
    let sc = span_ref.span_context();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .get(key)
            .or_else(|| {
                self.0
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(key))
                    .map(|(_, v)| v)
            })
            .map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct MapInjector<'a>(&'a mut BTreeMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        // An empty `tracestate` says nothing; leave it out.
        if !value.is_empty() {
            self.0.insert(key.to_owned(), value);
        }
    }
}

struct HttpExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HttpExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

struct HttpInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HttpInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

    use super::*;

    fn remote() -> Context {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        Context::new().with_remote_span_context(sc)
    }

    #[test]
    fn a_map_round_trips_the_context() {
        let mut headers = BTreeMap::from([("other".to_owned(), "kept".to_owned())]);
        inject_map(&remote(), &mut headers);
        assert_eq!(
            headers[TRACEPARENT],
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(headers["other"], "kept");
        assert!(
            !headers.contains_key(TRACESTATE),
            "an empty tracestate is left out"
        );
        let cx = extract_map(&headers);
        let span = cx.span();
        assert_eq!(
            span.span_context().trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(span.span_context().is_remote());
    }

    #[test]
    fn a_valid_context_replaces_the_stored_one_and_an_invalid_one_keeps_it() {
        let stale = BTreeMap::from([
            (TRACEPARENT.to_owned(), "00-stale".to_owned()),
            (TRACESTATE.to_owned(), "k=v".to_owned()),
        ]);
        let mut headers = stale.clone();
        inject_map(&Context::new(), &mut headers);
        assert_eq!(headers, stale);
        assert!(!extract_map(&headers).span().span_context().is_valid());
        inject_map(&remote(), &mut headers);
        assert!(headers[TRACEPARENT].starts_with("00-4bf92f35"));
        assert!(!headers.contains_key(TRACESTATE));
    }

    #[test]
    fn http_metadata_round_trips_the_context() {
        let mut headers = http::HeaderMap::new();
        inject_http(&remote(), &mut headers);
        let cx = extract_http(&headers);
        assert_eq!(
            cx.span().span_context().span_id().to_string(),
            "00f067aa0ba902b7"
        );
    }

    #[test]
    fn extraction_ignores_header_case() {
        let headers = BTreeMap::from([(
            "TraceParent".to_owned(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned(),
        )]);
        assert!(extract_map(&headers).span().span_context().is_valid());
    }
}
