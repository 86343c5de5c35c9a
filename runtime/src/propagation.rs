//! W3C trace context (`traceparent`, `tracestate`) across every hop of an
//! order: HTTP/gRPC metadata, outbox rows and AMQP headers (both string maps,
//! `OutboxEvent::headers` and `Message::headers` in `ordermesh_messaging`).
//!
//! The format is always W3C trace context, whatever global propagator is
//! set, so the services and the relay agree on it. Injecting from a span
//! without a valid context (no telemetry installed) writes nothing.
//!
//! Trace context comes from callers, and what is extracted ends up in every
//! outbox row and AMQP message of the request, so it is bounded as W3C
//! Trace Context allows ([`bound_tracestate`]): at most 32 `tracestate`
//! members and 512 bytes, a malformed `tracestate` dropped whole (the
//! `traceparent` is kept). Injection bounds it again, whatever the context
//! came from: what [`span_headers`] makes for an outbox row is at most a
//! `traceparent` (55 bytes) and a `tracestate` of 512 bytes. `baggage` is
//! not propagated at all: it is neither extracted nor injected.

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
/// Most `tracestate` list members kept (W3C Trace Context).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;
/// Longest `tracestate` kept, in bytes: W3C asks to propagate at least
/// this much, and to truncate beyond it.
pub const MAX_TRACESTATE_LEN: usize = 512;
/// Members longer than this are the first dropped when truncating (W3C).
const LARGE_MEMBER_LEN: usize = 128;

/// `raw` (a `tracestate` value, or several joined with `,`) as W3C Trace
/// Context allows it to be propagated: the first
/// [`MAX_TRACESTATE_MEMBERS`] members, then, while the header is longer
/// than [`MAX_TRACESTATE_LEN`], the last member over 128 bytes dropped, or
/// the last member when none is that long. `None` when nothing is left or
/// any member is malformed (W3C: an invalid `tracestate` is discarded).
pub fn bound_tracestate(raw: &str) -> Option<String> {
    let mut members = Vec::new();
    for member in raw.split(',') {
        // Optional white space around members; empty members are allowed.
        let member = member.trim_matches([' ', '\t']);
        if member.is_empty() {
            continue;
        }
        if !valid_member(member) {
            return None;
        }
        members.push(member);
    }
    members.truncate(MAX_TRACESTATE_MEMBERS);
    let joined_len = |m: &[&str]| {
        m.iter()
            .map(|s| s.len() + 1)
            .sum::<usize>()
            .saturating_sub(1)
    };
    while joined_len(&members) > MAX_TRACESTATE_LEN {
        let drop = members
            .iter()
            .rposition(|m| m.len() > LARGE_MEMBER_LEN)
            .unwrap_or(members.len() - 1);
        members.remove(drop);
    }
    (!members.is_empty()).then(|| members.join(","))
}

/// A `key=value` list member per the W3C Trace Context grammar.
fn valid_member(member: &str) -> bool {
    member
        .split_once('=')
        .is_some_and(|(key, value)| valid_key(key) && valid_value(value))
}

/// `simple-key` or `tenant-id@system-id`.
fn valid_key(key: &str) -> bool {
    let lead = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let rest = |s: &[u8]| {
        s.iter()
            .all(|&b| lead(b) || matches!(b, b'_' | b'-' | b'*' | b'/'))
    };
    match key.split_once('@') {
        None => {
            let k = key.as_bytes();
            (1..=256).contains(&k.len()) && k[0].is_ascii_lowercase() && rest(&k[1..])
        }
        Some((tenant, system)) => {
            let (t, s) = (tenant.as_bytes(), system.as_bytes());
            (1..=241).contains(&t.len())
                && lead(t[0])
                && rest(&t[1..])
                && (1..=14).contains(&s.len())
                && s[0].is_ascii_lowercase()
                && rest(&s[1..])
        }
    }
}

/// Up to 256 printable ASCII characters but `,` and `=`, not ending in a
/// space.
fn valid_value(value: &str) -> bool {
    let v = value.as_bytes();
    (1..=256).contains(&v.len())
        && v.iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && v[v.len() - 1] != b' '
}

fn propagator() -> TraceContextPropagator {
    TraceContextPropagator::new()
}

/// The context `headers` carry (an empty context when they carry none),
/// its `tracestate` bounded by [`bound_tracestate`].
pub fn extract_map(headers: &BTreeMap<String, String>) -> Context {
    let tracestate = MapExtractor(headers).get(TRACESTATE).map(str::to_owned);
    propagator().extract(&Bounded::new(MapExtractor(headers), tracestate))
}

/// Writes `cx`'s trace context into `headers`, replacing any previous one;
/// the `tracestate` written is bounded by [`bound_tracestate`].
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

/// The context of incoming HTTP or gRPC metadata. Several `tracestate`
/// fields are one list (W3C); it is bounded by [`bound_tracestate`].
pub fn extract_http(headers: &http::HeaderMap) -> Context {
    let fields: Vec<&str> = headers
        .get_all(TRACESTATE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let tracestate = (!fields.is_empty()).then(|| fields.join(","));
    propagator().extract(&Bounded::new(HttpExtractor(headers), tracestate))
}

/// Writes `cx`'s trace context into HTTP or gRPC metadata (the
/// `tracestate` bounded by [`bound_tracestate`]).
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

/// An extractor whose `tracestate` is the bounded form of the one given.
struct Bounded<E> {
    inner: E,
    tracestate: Option<String>,
}

impl<E: Extractor> Bounded<E> {
    fn new(inner: E, tracestate: Option<String>) -> Self {
        Self {
            inner,
            tracestate: tracestate.as_deref().and_then(bound_tracestate),
        }
    }
}

impl<E: Extractor> Extractor for Bounded<E> {
    fn get(&self, key: &str) -> Option<&str> {
        if key.eq_ignore_ascii_case(TRACESTATE) {
            self.tracestate.as_deref()
        } else {
            self.inner.get(key)
        }
    }

    fn keys(&self) -> Vec<&str> {
        self.inner.keys()
    }
}

/// What an injector writes under `key`: `value`, or for `tracestate` its
/// bounded form; `None` for nothing (an empty `tracestate` says nothing).
fn bounded_value(key: &str, value: String) -> Option<String> {
    if key.eq_ignore_ascii_case(TRACESTATE) {
        bound_tracestate(&value)
    } else {
        (!value.is_empty()).then_some(value)
    }
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
        if let Some(value) = bounded_value(key, value) {
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
        let Some(value) = bounded_value(key, value) else {
            return;
        };
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

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    /// The hostile header of issue 13: 32 members of 256-byte keys and
    /// values, 16,447 bytes.
    fn hostile_tracestate() -> String {
        (0..32)
            .map(|i| format!("{:a<256}={:v<256}", format!("k{i:02}"), format!("{i:02}")))
            .collect::<Vec<_>>()
            .join(",")
    }

    fn state_of(cx: &Context) -> String {
        cx.span().span_context().trace_state().header()
    }

    #[test]
    fn a_hostile_tracestate_is_not_kept_but_the_parent_is() {
        let hostile = hostile_tracestate();
        assert!(hostile.len() > 16_000);
        assert_eq!(
            bound_tracestate(&hostile),
            None,
            "every member is over 512 bytes"
        );

        let mut http = http::HeaderMap::new();
        http.insert(TRACEPARENT, PARENT.parse().unwrap());
        http.insert(TRACESTATE, hostile.parse().unwrap());
        let cx = extract_http(&http);
        assert!(cx.span().span_context().is_valid());
        assert_eq!(state_of(&cx), "");

        let map = BTreeMap::from([
            (TRACEPARENT.to_owned(), PARENT.to_owned()),
            (TRACESTATE.to_owned(), hostile),
        ]);
        let cx = extract_map(&map);
        assert!(cx.span().span_context().is_valid());
        assert_eq!(state_of(&cx), "");
    }

    #[test]
    fn a_long_tracestate_drops_large_members_first_then_from_the_end() {
        let large = format!("big={}", "x".repeat(200));
        let small: Vec<String> = (0..40).map(|i| format!("v{i:02}=0123456789")).collect();
        let mut members = vec![small[0].clone(), large.clone()];
        members.extend(small[1..].iter().cloned());
        let bounded = bound_tracestate(&members.join(",")).unwrap();
        assert!(bounded.len() <= MAX_TRACESTATE_LEN, "{}", bounded.len());
        assert!(!bounded.contains("big="), "the large member goes first");
        let kept: Vec<&str> = bounded.split(',').collect();
        // 32 members at most, of which the large one was dropped; the
        // small ones kept are a prefix in their order.
        assert_eq!(
            kept,
            small[..31].iter().map(String::as_str).collect::<Vec<_>>()
        );

        // Without large members: cut from the end until 512 bytes fit.
        let wide: Vec<String> = (0..32)
            .map(|i| format!("k{i:02}={}", "y".repeat(60)))
            .collect();
        let bounded = bound_tracestate(&wide.join(",")).unwrap();
        let kept: Vec<&str> = bounded.split(',').collect();
        assert_eq!(
            kept,
            wide[..kept.len()]
                .iter()
                .map(String::as_str)
                .collect::<Vec<_>>()
        );
        assert!(bounded.len() <= MAX_TRACESTATE_LEN);
        assert!(bounded.len() + 1 + wide[kept.len()].len() > MAX_TRACESTATE_LEN);

        // A short valid one is kept as it is, white space around members
        // and empty members aside.
        assert_eq!(
            bound_tracestate(" congo=t61rcWkgMzE ,, rojo=00f067aa0ba902b7\t").as_deref(),
            Some("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7")
        );
        assert_eq!(
            bound_tracestate("tenant@vendor=1,a/b_c*d-e=x y").as_deref(),
            Some("tenant@vendor=1,a/b_c*d-e=x y")
        );
    }

    #[test]
    fn a_malformed_tracestate_is_dropped_whole() {
        for bad in [
            "ok=1,novalue",
            "ok=1,Upper=1",
            "ok=1,1digit=1",
            "ok=1,k=a=b",
            "ok=1,k=",
            "ok=1,k=tab\there",
            "ok=1,k=caf\u{e9}",
            "ok=1,t@=1",
            "ok=1,t@Vendor=1",
            "ok=1,t@vendorvendorvendor=1",
            "ok=1,a@b@c=1",
        ] {
            assert_eq!(bound_tracestate(bad), None, "{bad:?}");
        }
        let long_key = format!("{}=1", "k".repeat(257));
        assert_eq!(bound_tracestate(&long_key), None);
        let long_value = format!("k={}", "v".repeat(257));
        assert_eq!(bound_tracestate(&long_value), None);

        let map = BTreeMap::from([
            (TRACEPARENT.to_owned(), PARENT.to_owned()),
            (TRACESTATE.to_owned(), "ok=1,bad".to_owned()),
        ]);
        let cx = extract_map(&map);
        assert!(cx.span().span_context().is_valid(), "the parent is kept");
        assert_eq!(state_of(&cx), "");
    }

    #[test]
    fn several_tracestate_fields_are_one_list() {
        let mut http = http::HeaderMap::new();
        http.insert(TRACEPARENT, PARENT.parse().unwrap());
        http.append(TRACESTATE, "a=1".parse().unwrap());
        http.append(TRACESTATE, "b=2".parse().unwrap());
        assert_eq!(state_of(&extract_http(&http)), "a=1,b=2");
    }

    #[test]
    fn what_is_injected_is_bounded_whatever_the_context() {
        // A context made in process, not extracted: still bounded when
        // written into a header map (an outbox row) or metadata.
        let members: Vec<(String, String)> = (0..32)
            .map(|i| (format!("k{i:02}{}", "a".repeat(253)), "v".repeat(256)))
            .collect();
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value(members).unwrap(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut headers = BTreeMap::from([(TRACESTATE.to_owned(), "stale=1".to_owned())]);
        inject_map(&cx, &mut headers);
        assert_eq!(headers.len(), 1, "{headers:?}");
        assert_eq!(headers[TRACEPARENT], PARENT);
        let mut http = http::HeaderMap::new();
        inject_http(&cx, &mut http);
        assert!(http.get(TRACESTATE).is_none());

        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("a", "1"), ("b", "2")]).unwrap(),
        );
        let cx = Context::new().with_remote_span_context(sc);
        let mut headers = BTreeMap::new();
        inject_map(&cx, &mut headers);
        assert_eq!(headers[TRACESTATE], "a=1,b=2");
    }

    #[test]
    fn baggage_is_not_propagated() {
        let mut http = http::HeaderMap::new();
        http.insert(TRACEPARENT, PARENT.parse().unwrap());
        http.insert("baggage", "user=alice,tier=gold".parse().unwrap());
        let cx = extract_http(&http);
        let mut headers = BTreeMap::new();
        inject_map(&cx, &mut headers);
        assert_eq!(headers.keys().collect::<Vec<_>>(), [TRACEPARENT]);
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
