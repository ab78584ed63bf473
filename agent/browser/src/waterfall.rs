//! A page load as spans, the way OpenTelemetry's browser document-load instrumentation
//! draws it: `documentLoad` from the navigation's start to its last milestone, with an
//! event at each milestone (fetchStart, responseStart, domInteractive,
//! domContentLoadedEventEnd, loadEventEnd, firstContentfulPaint, largestContentfulPaint,
//! ...); under it `documentFetch`, the document's own request, and one `resourceFetch` per
//! Resource Timing entry (at most [`MAX_RESOURCES`](crate::timing::MAX_RESOURCES)). Times
//! are the browser's own (its time origin plus each entry's offsets), so the waterfall sits
//! in Jaeger where it happened, under the step that navigated. Every URL is redacted like
//! the rest of the result.

use crate::timing::{RawNavigation, RawPageTiming, RawResource, between};
use opentelemetry::trace::{Span as _, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use std::time::{Duration, SystemTime};

/// Records the page's waterfall under `parent` (the step's span). Does nothing when
/// spans are not exported, or when the page gave no navigation entry.
pub(crate) fn record(raw: &RawPageTiming, parent: &Context, redact: &dyn Fn(&str) -> String) {
    let Some(nav) = raw.nav.as_ref() else { return };
    if !parent.span().span_context().is_valid() || raw.time_origin <= 0.0 {
        return;
    }
    let at = |offset_ms: f64| SystemTime::UNIX_EPOCH + Duration::from_secs_f64((raw.time_origin + offset_ms) / 1000.0);
    let tracer = global::tracer("baton-browser");
    let milestones = milestones(raw, nav);
    let end = milestones.iter().map(|(_, t)| *t).fold(nav.start_time, f64::max);
    let mut load = tracer
        .span_builder("documentLoad")
        .with_start_time(at(nav.start_time))
        .with_attributes([KeyValue::new("url.full", redact(&raw.url))])
        .start_with_context(&tracer, parent);
    for (name, t) in &milestones {
        load.add_event_with_timestamp(*name, at(*t), Vec::new());
    }
    let load_cx = parent.with_remote_span_context(load.span_context().clone());

    // The document's request, seen as a resource entry of its own.
    let document = RawResource {
        name: raw.url.clone(),
        initiator_type: "navigation".into(),
        start_time: nav.start_time,
        domain_lookup_start: nav.domain_lookup_start,
        domain_lookup_end: nav.domain_lookup_end,
        connect_start: nav.connect_start,
        connect_end: nav.connect_end,
        request_start: nav.request_start,
        response_start: nav.response_start,
        response_end: nav.response_end,
        transfer_size: nav.transfer_size,
    };
    let mut fetch = tracer
        .span_builder("documentFetch")
        .with_start_time(at(nav.fetch_start))
        .with_attributes(request_attributes(&document, redact))
        .start_with_context(&tracer, &load_cx);
    for (name, t) in [
        ("fetchStart", nav.fetch_start),
        ("domainLookupStart", nav.domain_lookup_start),
        ("domainLookupEnd", nav.domain_lookup_end),
        ("connectStart", nav.connect_start),
        ("secureConnectionStart", nav.secure_connection_start),
        ("connectEnd", nav.connect_end),
        ("requestStart", nav.request_start),
        ("responseStart", nav.response_start),
        ("responseEnd", nav.response_end),
    ] {
        if t > 0.0 {
            fetch.add_event_with_timestamp(name, at(t), Vec::new());
        }
    }
    fetch.end_with_timestamp(at(nav.response_end.max(nav.fetch_start)));

    for resource in &raw.resources {
        resource_span(resource, &tracer, &load_cx, &at, redact);
    }
    load.end_with_timestamp(at(end));
}

/// The document's milestones that happened, by the names OpenTelemetry's document-load
/// instrumentation gives its events.
fn milestones(raw: &RawPageTiming, nav: &RawNavigation) -> Vec<(&'static str, f64)> {
    [
        ("fetchStart", nav.fetch_start),
        ("responseStart", nav.response_start),
        ("responseEnd", nav.response_end),
        ("domInteractive", nav.dom_interactive),
        ("domContentLoadedEventStart", nav.dom_content_loaded_event_start),
        ("domContentLoadedEventEnd", nav.dom_content_loaded_event_end),
        ("domComplete", nav.dom_complete),
        ("loadEventStart", nav.load_event_start),
        ("loadEventEnd", nav.load_event_end),
        ("firstPaint", raw.first_paint),
        ("firstContentfulPaint", raw.first_contentful_paint),
        ("largestContentfulPaint", raw.largest_contentful_paint),
    ]
    .into_iter()
    .filter(|(_, t)| *t > 0.0)
    .collect()
}

/// A request's URL, initiator and own figures, named as in the result: bytes
/// transferred, DNS, connect, and time to first byte from its start.
fn request_attributes(r: &RawResource, redact: &dyn Fn(&str) -> String) -> Vec<KeyValue> {
    vec![
        KeyValue::new("url.full", redact(&r.name)),
        KeyValue::new("initiatorType", r.initiator_type.clone()),
        KeyValue::new("transferBytes", r.transfer_size.max(0.0) as i64),
        KeyValue::new("dnsMs", between(r.domain_lookup_start, r.domain_lookup_end)),
        KeyValue::new("connectMs", between(r.connect_start, r.connect_end)),
        KeyValue::new("ttfbMs", if r.response_start >= r.start_time { r.response_start - r.start_time } else { 0.0 }),
    ]
}

fn resource_span(
    r: &RawResource,
    tracer: &global::BoxedTracer,
    parent: &Context,
    at: &dyn Fn(f64) -> SystemTime,
    redact: &dyn Fn(&str) -> String,
) {
    let mut span = tracer
        .span_builder("resourceFetch")
        .with_start_time(at(r.start_time))
        .with_attributes(request_attributes(r, redact))
        .start_with_context(tracer, parent);
    span.end_with_timestamp(at(r.response_end.max(r.start_time)));
}
