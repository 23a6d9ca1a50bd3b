//! Continuing a caller's trace: the W3C Trace Context `traceparent` header of an incoming
//! request becomes the parent of the span that serves it, so that the span joins the
//! caller's trace in whatever the spans are exported to.

use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The header that carries the caller's trace and span ids.
pub const TRACEPARENT: &str = "traceparent";
/// The header that carries vendor-specific trace state along with `traceparent`.
pub const TRACESTATE: &str = "tracestate";

/// Makes the span described by `traceparent` (and `tracestate`) the parent of `span`.
///
/// Call it right after creating `span`, before entering it: once started, a span keeps
/// its parent. Does nothing when the header is missing or malformed (the span starts a
/// trace of its own, as the W3C recommendation says), or when no OpenTelemetry layer is
/// installed (OTLP export is off).
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(parent) = traceparent.and_then(|header| parse_traceparent(header, tracestate)) else {
        return;
    };
    let context = opentelemetry::Context::new().with_remote_span_context(parent);
    // Without the OpenTelemetry layer there is nothing to attach the parent to.
    let _ = span.set_parent(context);
}

/// Parses a `traceparent` header (W3C Trace Context, level 1): `00-{trace id: 32 hex}-{parent
/// id: 16 hex}-{flags: 2 hex}`. A later version may append fields, which are ignored; the
/// version `ff` and all-zero ids are invalid.
pub fn parse_traceparent(header: &str, tracestate: Option<&str>) -> Option<SpanContext> {
    let header = header.trim();
    let mut parts = header.split('-');
    let version = parts.next()?;
    let trace_id = parts.next()?;
    let parent_id = parts.next()?;
    let flags = parts.next()?;
    if !is_lower_hex(version, 2) || version == "ff" {
        return None;
    }
    // Version 00 has exactly four fields; later versions may add some after them.
    if version == "00" && parts.next().is_some() {
        return None;
    }
    if !is_lower_hex(trace_id, 32) || !is_lower_hex(parent_id, 16) || !is_lower_hex(flags, 2) {
        return None;
    }
    let trace_id = TraceId::from_hex(trace_id).ok()?;
    let parent_id = SpanId::from_hex(parent_id).ok()?;
    if trace_id == TraceId::INVALID || parent_id == SpanId::INVALID {
        return None;
    }
    let flags = u8::from_str_radix(flags, 16).ok()?;
    // Only the sampled bit is defined; the others are not propagated (W3C §3.2.2.5).
    let flags = TraceFlags::new(flags & TraceFlags::SAMPLED.to_u8());
    let state = tracestate
        .and_then(|state| state.parse::<TraceState>().ok())
        .unwrap_or_default();
    Some(SpanContext::new(trace_id, parent_id, flags, true, state))
}

fn is_lower_hex(text: &str, len: usize) -> bool {
    text.len() == len && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn reads_the_example_of_the_recommendation() {
        let parent = parse_traceparent(VALID, Some("congo=t61rcWkgMzE")).unwrap();
        assert_eq!(
            parent.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(parent.span_id().to_string(), "00f067aa0ba902b7");
        assert!(parent.is_sampled());
        assert!(parent.is_remote());
        assert_eq!(parent.trace_state().get("congo"), Some("t61rcWkgMzE"));
    }

    #[test]
    fn a_later_version_may_add_fields() {
        let header = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00-what-comes";
        let parent = parse_traceparent(header, None).unwrap();
        assert!(!parent.is_sampled());
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for header in [
            "",
            "00",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473-600f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
            "0-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e47é6-00f067aa0ba902b7-01",
        ] {
            assert!(parse_traceparent(header, None).is_none(), "{header:?}");
        }
    }
}
