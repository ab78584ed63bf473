//! The named figures of a browser report, by the names the result, the step spans'
//! attributes, the report's summary and the CLI's tables all use: one rule for all.

use crate::v1::{PageTiming, RepeatReport, StepTiming};

/// The named figures of a page timing.
pub fn page_figures(p: &PageTiming) -> [(&'static str, f64); 13] {
    [
        ("redirectMs", p.redirect_ms),
        ("dnsMs", p.dns_ms),
        ("connectMs", p.connect_ms),
        ("tlsMs", p.tls_ms),
        ("ttfbMs", p.ttfb_ms),
        ("responseMs", p.response_ms),
        ("domContentLoadedMs", p.dom_content_loaded_ms),
        ("loadMs", p.load_ms),
        ("firstPaintMs", p.first_paint_ms),
        ("firstContentfulPaintMs", p.first_contentful_paint_ms),
        ("largestContentfulPaintMs", p.largest_contentful_paint_ms),
        ("resourceCount", f64::from(p.resource_count)),
        ("transferBytes", p.transfer_bytes as f64),
    ]
}

/// A step's figures; its span carries them as attributes under the same names.
pub fn step_figures(step: &StepTiming) -> Vec<(&'static str, f64)> {
    let mut figures = vec![("wallMs", step.wall_ms)];
    if let Some(p) = &step.page {
        figures.extend(page_figures(p));
    }
    if let Some(i) = &step.interaction {
        figures.extend([("interactionBrowserMs", i.browser_ms), ("interactionWallMs", i.wall_ms)]);
    }
    figures
}

/// Every figure of one repeat as (step name, figure, value), in the scenario's order:
/// session start (when this repeat started a session) and the scenario's wall time under
/// step "", then each step's.
pub fn repeat_figures(rep: &RepeatReport) -> Vec<(&str, &'static str, f64)> {
    let mut figures = Vec::new();
    if rep.session_start_ms > 0.0 {
        figures.push(("", "sessionStartMs", rep.session_start_ms));
    }
    figures.push(("", "scenarioWallMs", rep.scenario_wall_ms));
    for step in &rep.steps {
        figures.extend(step_figures(step).into_iter().map(|(figure, v)| (step.name.as_str(), figure, v)));
    }
    figures
}
