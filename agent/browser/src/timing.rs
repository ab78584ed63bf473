//! Timing read from the browser itself: the page-side scripts, their parsing, and the
//! summary statistics across repeats.

use baton_proto::v1::{BrowserReport, FigureSummary, PageTiming};
use serde::Deserialize;

/// Reads the current document's navigation, paint, LCP and resource entries (the first
/// [`MAX_RESOURCES`], for the trace's waterfall) and the page's time origin. Waits
/// (page-side, event driven) for the load event's end and for the first contentful
/// paint, up to 2 s, since both may come after WebDriver's navigation returns.
pub(crate) const PAGE_TIMING_JS: &str = r#"
const done = arguments[arguments.length - 1];
const maxResources = arguments[0];
const started = performance.now();
let lcp = 0;
let lcpObserver = null;
try {
  lcpObserver = new PerformanceObserver(l => { for (const e of l.getEntries()) lcp = Math.max(lcp, e.startTime); });
  lcpObserver.observe({ type: 'largest-contentful-paint', buffered: true });
} catch (_) {}
function paint(name) { const e = performance.getEntriesByName(name, 'paint')[0]; return e ? e.startTime : 0; }
function finish() {
  if (lcpObserver) { for (const e of lcpObserver.takeRecords()) lcp = Math.max(lcp, e.startTime); lcpObserver.disconnect(); }
  const nav = performance.getEntriesByType('navigation')[0];
  const res = performance.getEntriesByType('resource');
  let bytes = nav ? nav.transferSize : 0;
  for (const r of res) bytes += r.transferSize || 0;
  const resources = res.slice(0, maxResources).map(r => ({ name: r.name, initiatorType: r.initiatorType, startTime: r.startTime,
    domainLookupStart: r.domainLookupStart, domainLookupEnd: r.domainLookupEnd, connectStart: r.connectStart,
    connectEnd: r.connectEnd, requestStart: r.requestStart, responseStart: r.responseStart, responseEnd: r.responseEnd,
    transferSize: r.transferSize || 0 }));
  done({ nav: nav ? nav.toJSON() : null, firstPaint: paint('first-paint'), firstContentfulPaint: paint('first-contentful-paint'),
         largestContentfulPaint: lcp, resourceCount: res.length, transferBytes: bytes, url: location.href,
         timeOrigin: performance.timeOrigin, resources });
}
function ready() {
  const nav = performance.getEntriesByType('navigation')[0];
  const loaded = !nav || nav.loadEventEnd > 0;
  return loaded && (paint('first-contentful-paint') > 0 || performance.now() - started > 2000);
}
(function poll() { if (ready()) finish(); else setTimeout(poll, 2); })();
"#;

/// The wait conditions, page-side: `holds(kind, arg, by)`, its last script error in
/// `lastError`. One text, in both scripts that check a condition.
macro_rules! condition_js {
    () => {
        r#"
let lastError = null;
function find(by, value) {
  switch (by) {
    case 'css': return document.querySelector(value);
    case 'xpath': return document.evaluate(value, document, null, XPathResult.FIRST_ORDERED_NODE_TYPE, null).singleNodeValue;
    case 'id': return document.getElementById(value);
    case 'name': return document.getElementsByName(value)[0] || null;
    case 'linkText': return Array.from(document.links).find(a => a.innerText.trim() === value) || null;
  }
  return null;
}
function visible(el) {
  if (!el || !el.isConnected) return false;
  const s = getComputedStyle(el);
  return el.getClientRects().length > 0 && s.visibility !== 'hidden' && s.display !== 'none';
}
function holds(kind, arg, by) {
  try {
    switch (kind) {
      case 'visible': return visible(find(by, arg));
      case 'clickable': { const el = find(by, arg); return visible(el) && !el.disabled; }
      case 'textPresent': return !!document.body && document.body.innerText.includes(arg);
      case 'urlMatches': return new RegExp(arg).test(location.href);
      case 'js': return !!(0, eval)(arg);
    }
  } catch (e) { lastError = String(e); }
  return false;
}
"#
    };
}

/// The watch: while a condition is armed (in sessionStorage, by [`ARM_JS`]) and an input
/// event has been stamped, it checks the condition on every DOM mutation and every 5 ms and
/// stamps, in sessionStorage, the browser's clock when it first holds. It runs in the
/// document the action starts in (from [`ARM_JS`]) and, installed at document start
/// (`Session::watch_new_documents`: CDP in Chromium, WebDriver BiDi in Firefox), in every
/// document after it — so a condition met while a new page is still loading is stamped
/// then, not when the wait step gets to look.
macro_rules! watch_js {
    () => {
        concat!(
            "(() => {\nif (window.top !== window) return;\nif (!window.__batonWatch) {\n",
            condition_js!(),
            r#"
  let armed = null, observer = null, interval = null;
  const stop = () => { if (observer) observer.disconnect(); clearInterval(interval); observer = null; interval = null; };
  const check = () => {
    try {
      if (sessionStorage.getItem('__batonMetAt')) { stop(); return; }
      if (!sessionStorage.getItem('__batonInputAt')) return;
      if (holds(armed[0], armed[1], armed[2])) {
        sessionStorage.setItem('__batonMetAt', String(performance.timeOrigin + performance.now()));
        stop();
      }
    } catch (_) { stop(); }
  };
  window.__batonWatch = () => {
    stop();
    try { armed = JSON.parse(sessionStorage.getItem('__batonCondition') || 'null'); } catch (_) { armed = null; }
    if (!armed) return;
    observer = new MutationObserver(check);
    observer.observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
    interval = setInterval(check, 5);
    check();
  };
}
window.__batonWatch();
})();
"#
        )
    };
}

/// Installed at the start of every document of a session.
pub(crate) const WATCH_JS: &str = watch_js!();

/// Before an action: forgets the last action's stamps, arms the condition of the wait step
/// that follows (arguments: kind, argument, locator kind; a null kind arms none), arms the
/// page to stamp the action's first input event, and starts the watch in this document.
/// Stamps live in sessionStorage, so they survive a same-origin navigation the action
/// causes.
pub(crate) const ARM_JS: &str = concat!(
    r#"
const [condKind, condArg, condBy] = arguments;
try {
  for (const key of ['__batonInputAt', '__batonMetAt', '__batonCondition']) sessionStorage.removeItem(key);
  if (condKind) sessionStorage.setItem('__batonCondition', JSON.stringify([condKind, condArg, condBy]));
} catch (_) {}
if (!window.__batonArmed) {
  window.__batonArmed = true;
  for (const type of ['pointerdown', 'mousedown', 'keydown', 'beforeinput', 'click', 'submit']) {
    addEventListener(type, e => {
      try { if (!sessionStorage.getItem('__batonInputAt')) sessionStorage.setItem('__batonInputAt', String(performance.timeOrigin + e.timeStamp)); } catch (_) {}
    }, true);
  }
}
"#,
    watch_js!()
);

/// Waits page-side for a condition, checking on every DOM mutation and every 5 ms; the
/// moment it holds is stamped with the browser's clock — or, when the watch stamped this
/// same condition earlier (maybe in a document before this one) and it still holds, that
/// earlier moment. Arguments: kind, argument, locator kind, timeout in ms.
pub(crate) const WAIT_JS: &str = concat!(
    r#"
const [kind, arg, by, timeoutMs] = arguments;
const done = arguments[arguments.length - 1];
"#,
    condition_js!(),
    r#"
let observer = null, interval = null, timer = null, finished = false;
function finish(met, stamped) {
  if (finished) return;
  finished = true;
  const at = stamped || performance.timeOrigin + performance.now();
  if (observer) observer.disconnect();
  clearInterval(interval); clearTimeout(timer);
  let input = null;
  try {
    input = Number(sessionStorage.getItem('__batonInputAt')) || null;
    if (met) for (const key of ['__batonMetAt', '__batonCondition']) sessionStorage.removeItem(key);
  } catch (_) {}
  done({ met, at, input, lastError, url: location.href, watched: !!stamped });
}
let stamped = null;
try {
  if (sessionStorage.getItem('__batonCondition') === JSON.stringify([kind, arg, by])) {
    stamped = Number(sessionStorage.getItem('__batonMetAt')) || null;
  }
} catch (_) {}
if (holds(kind, arg, by)) { finish(true, stamped); } else {
  const check = () => { if (holds(kind, arg, by)) finish(true, null); };
  observer = new MutationObserver(check);
  observer.observe(document, { subtree: true, childList: true, attributes: true, characterData: true });
  interval = setInterval(check, 5);
  timer = setTimeout(() => finish(false, null), timeoutMs);
}
"#
);

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct WaitOutcome {
    pub met: bool,
    /// Browser clock (ms since the epoch, high resolution) when the condition held.
    pub at: f64,
    /// Browser clock of the action's first input event, when the page saw one.
    pub input: Option<f64>,
    /// `at` is the watch's stamp (taken as the condition first held, maybe in an earlier
    /// document) rather than the wait script's.
    #[serde(default)]
    pub watched: bool,
    pub last_error: Option<String>,
}

/// How many Resource Timing entries of one page become `resourceFetch` spans.
pub(crate) const MAX_RESOURCES: usize = 300;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct RawPageTiming {
    pub(crate) nav: Option<RawNavigation>,
    pub(crate) first_paint: f64,
    pub(crate) first_contentful_paint: f64,
    pub(crate) largest_contentful_paint: f64,
    resource_count: u32,
    transfer_bytes: f64,
    pub(crate) url: String,
    /// The page's `performance.timeOrigin`: ms since the epoch, what every entry counts from.
    #[serde(default)]
    pub(crate) time_origin: f64,
    #[serde(default)]
    pub(crate) resources: Vec<RawResource>,
}

/// The fields of PerformanceNavigationTiming we use (ms from the time origin; 0 when the
/// moment did not happen, e.g. no TLS).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawNavigation {
    pub(crate) start_time: f64,
    pub(crate) redirect_start: f64,
    pub(crate) redirect_end: f64,
    pub(crate) fetch_start: f64,
    pub(crate) domain_lookup_start: f64,
    pub(crate) domain_lookup_end: f64,
    pub(crate) connect_start: f64,
    pub(crate) connect_end: f64,
    pub(crate) secure_connection_start: f64,
    pub(crate) request_start: f64,
    pub(crate) response_start: f64,
    pub(crate) response_end: f64,
    pub(crate) dom_interactive: f64,
    pub(crate) dom_content_loaded_event_start: f64,
    pub(crate) dom_content_loaded_event_end: f64,
    pub(crate) dom_complete: f64,
    pub(crate) load_event_start: f64,
    pub(crate) load_event_end: f64,
    pub(crate) transfer_size: f64,
}

/// One PerformanceResourceTiming entry (ms from the time origin).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct RawResource {
    pub(crate) name: String,
    pub(crate) initiator_type: String,
    pub(crate) start_time: f64,
    pub(crate) domain_lookup_start: f64,
    pub(crate) domain_lookup_end: f64,
    pub(crate) connect_start: f64,
    pub(crate) connect_end: f64,
    pub(crate) request_start: f64,
    pub(crate) response_start: f64,
    pub(crate) response_end: f64,
    pub(crate) transfer_size: f64,
}

/// `b - a` when both happened in that order, else 0.
pub(crate) fn between(a: f64, b: f64) -> f64 {
    if a > 0.0 && b >= a { b - a } else { 0.0 }
}

impl RawPageTiming {
    pub(crate) fn page_timing(&self) -> PageTiming {
        let default = RawNavigation::default();
        let n = self.nav.as_ref().unwrap_or(&default);
        let span = between;
        PageTiming {
            url: self.url.clone(),
            redirect_ms: span(n.redirect_start, n.redirect_end),
            dns_ms: span(n.domain_lookup_start, n.domain_lookup_end),
            connect_ms: span(n.connect_start, n.connect_end),
            tls_ms: span(n.secure_connection_start, n.connect_end),
            ttfb_ms: n.response_start,
            response_ms: span(n.response_start, n.response_end),
            dom_content_loaded_ms: n.dom_content_loaded_event_end,
            load_ms: n.load_event_end,
            first_paint_ms: self.first_paint,
            first_contentful_paint_ms: self.first_contentful_paint,
            largest_contentful_paint_ms: self.largest_contentful_paint,
            resource_count: self.resource_count,
            transfer_bytes: self.transfer_bytes.max(0.0) as u64,
        }
    }
}

/// Every figure of every step across the repeats, plus session start and scenario wall time.
pub(crate) fn summarize_report(report: &BrowserReport) -> Vec<FigureSummary> {
    // (step, figure) in first-seen order, so the summary reads like the scenario.
    let mut order: Vec<(String, &'static str)> = Vec::new();
    let mut values: std::collections::HashMap<(String, &'static str), Vec<f64>> = Default::default();
    let mut add = |step: &str, figure: &'static str, v: f64| {
        let key = (step.to_string(), figure);
        if !values.contains_key(&key) {
            order.push(key.clone());
        }
        values.entry(key).or_default().push(v);
    };
    for rep in &report.repeats {
        for (step, figure, v) in baton_proto::figures::repeat_figures(rep) {
            add(step, figure, v);
        }
    }
    order.iter().filter_map(|key| summarize(&key.0, key.1, &values[key])).collect()
}

/// Median, p90 (linear interpolation between closest ranks), min and max.
pub(crate) fn summarize(step: &str, figure: &str, values: &[f64]) -> Option<FigureSummary> {
    let s = baton_proto::stats::summarize(values)?;
    Some(FigureSummary {
        step: step.to_string(),
        figure: figure.to_string(),
        count: s.count as u32,
        median: s.p50,
        p90: s.p90,
        min: s.min,
        max: s.max,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_interpolate() {
        let s = summarize("open", "loadMs", &[5.0, 1.0, 3.0, 2.0, 4.0]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.count), (3.0, 1.0, 5.0, 5));
        assert!((s.p90 - 4.6).abs() < 1e-9);
        assert!(summarize("x", "y", &[]).is_none());
    }

    #[test]
    fn navigation_entry_becomes_page_timing() {
        let raw: RawPageTiming = serde_json::from_value(serde_json::json!({
            "nav": {"domainLookupStart": 1.0, "domainLookupEnd": 1.5, "connectStart": 1.5, "connectEnd": 2.0,
                    "secureConnectionStart": 0, "responseStart": 5.0, "responseEnd": 6.0,
                    "domContentLoadedEventEnd": 20.0, "loadEventEnd": 30.0},
            "firstPaint": 25.0, "firstContentfulPaint": 25.0, "largestContentfulPaint": 28.0,
            "resourceCount": 3, "transferBytes": 1234.0, "url": "http://x/"
        }))
        .unwrap();
        let p = raw.page_timing();
        assert_eq!((p.dns_ms, p.connect_ms, p.tls_ms, p.ttfb_ms, p.response_ms), (0.5, 0.5, 0.0, 5.0, 1.0));
        assert_eq!((p.dom_content_loaded_ms, p.load_ms, p.transfer_bytes), (20.0, 30.0, 1234));
    }
}
