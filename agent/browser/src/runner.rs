//! The scenario runner: runs a spec's steps `repeat` times, timing each from the
//! browser's own clocks, and stops at the first failing step with a screenshot.

use crate::desktop::{Desktop, Input, button_named};
use crate::error::BrowserError;
use crate::policy::UrlPolicy;
use crate::session::{Session, SessionOptions};
use crate::timing::{self, RawPageTiming, WaitOutcome};
use crate::waterfall;
use baton_proto::context::JobContext;
use baton_proto::spec::browser::{check_key_chord, step_kind_name, substitute};
use baton_proto::v1::{
    BrowserReport, BrowserSpec, BrowserStep, InteractionTiming, Locator, Progress, RepeatReport, Screenshot,
    StepFailure, StepTiming, ViewportPoint, assert_step, browser_step, find_step, locator, mouse_click_step,
    mouse_move_step, wait_step,
};
use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime};
use thirtyfour::components::SelectElement;
use thirtyfour::{By, WebElement};
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

const CAPTURE_TIMEOUT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(5);

/// What a step's failure says, before secrets are masked.
type StepResult<T> = Result<T, String>;

/// A wait step's condition: its kind, argument and locator kind as the page-side scripts
/// take them, and how to say it in an error.
struct Condition {
    kind: &'static str,
    arg: String,
    by: &'static str,
    what: String,
}

/// The clock an interaction is measured from: the last action step.
#[derive(Clone, Copy)]
struct Action {
    step_number: u32,
    started: Instant,
}

/// A spec's variables and secrets: filling `${name}` in, and masking secrets out.
pub(crate) struct Values {
    values: HashMap<String, String>,
    secrets: Vec<String>,
}

impl Values {
    pub(crate) fn new(spec: &BrowserSpec) -> Self {
        let values = spec.variables.iter().chain(spec.secrets.iter()).map(|(k, v)| (k.clone(), v.clone())).collect();
        let mut secrets: Vec<String> =
            spec.secrets.values().filter(|v| !v.is_empty()).flat_map(|v| encoded_forms(v)).collect();
        // Longest first, so a secret containing another is masked whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Self { values, secrets }
    }

    /// Text with `${...}` filled in: what the browser gets.
    pub(crate) fn fill(&self, text: &str) -> String {
        substitute(text, &self.values)
    }

    /// Text safe for spans, logs and results: every secret value replaced by `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        self.secrets.iter().fold(text.to_string(), |t, s| t.replace(s.as_str(), "***"))
    }
}

/// A secret as it may appear in text that leaves the agent: as it is, percent-encoded
/// (as a URL component and as a form field, upper and lower case hex), JSON- and
/// Rust-Debug-escaped, HTML-escaped, and base64 (standard and URL-safe, with and without
/// padding) — each only where it differs from the value.
fn encoded_forms(secret: &str) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let component: String = secret
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'!' | b'~' | b'*' | b'\'' | b'(' | b')' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let quoted = |s: String| s.trim_matches('"').to_string();
    let html = secret
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;");
    let mut forms = vec![
        secret.to_string(),
        lowercase_hex(&component),
        component,
        url::form_urlencoded::byte_serialize(secret.as_bytes()).collect(),
        quoted(serde_json::to_string(secret).unwrap_or_default()),
        quoted(format!("{secret:?}")),
        html,
    ];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        forms.push(engine.encode(secret));
    }
    forms.retain(|f| !f.is_empty());
    forms.sort();
    forms.dedup();
    forms
}

/// `%2F` → `%2f`: the same percent-encoding with lower-case hex digits.
fn lowercase_hex(encoded: &str) -> String {
    let mut out = String::with_capacity(encoded.len());
    let mut hex_left = 0;
    for c in encoded.chars() {
        if c == '%' {
            hex_left = 2;
            out.push(c);
        } else if hex_left > 0 {
            hex_left -= 1;
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

pub(crate) struct Scenario<'a> {
    spec: &'a BrowserSpec,
    options: SessionOptions,
    policy: &'a UrlPolicy,
    desktop: Option<&'a Desktop>,
    ctx: &'a JobContext,
    default_timeout: Duration,
    values: Values,
}

impl<'a> Scenario<'a> {
    pub(crate) fn new(
        spec: &'a BrowserSpec,
        options: SessionOptions,
        policy: &'a UrlPolicy,
        desktop: Option<&'a Desktop>,
        ctx: &'a JobContext,
    ) -> Self {
        let default_timeout = Duration::from_millis(u64::from(match spec.default_timeout_ms {
            0 => baton_proto::spec::browser::DEFAULT_TIMEOUT_MS,
            ms => ms,
        }));
        Self { spec, options, policy, desktop, ctx, default_timeout, values: Values::new(spec) }
    }

    fn fill(&self, text: &str) -> String {
        self.values.fill(text)
    }

    fn redact(&self, text: &str) -> String {
        self.values.redact(text)
    }

    /// Runs every repeat. Sessions live in `slot` so the caller can always close the
    /// last one, also when this future is dropped on cancel.
    pub(crate) async fn run(
        &self,
        driver_url: &str,
        slot: &mut Option<Session>,
        report: &mut BrowserReport,
    ) -> Result<(), BrowserError> {
        let repeats = self.spec.repeat.max(1);
        let warm = self.spec.mode == "warm";
        let total_steps = f64::from(repeats) * self.spec.steps.len() as f64;
        for repeat in 1..=repeats {
            // One span per repeat, warm or cold: the session start, the steps and the
            // session close of that repeat hang under it.
            let repeat_span = tracing::info_span!(
                "browser.repeat",
                otel.name = %format!("repeat {repeat} of {repeats}"),
                repeat,
                mode = if warm { "warm" } else { "cold" },
            );
            let started_at = SystemTime::now();
            let mut session_start_ms = 0.0;
            let session = match slot {
                Some(s) => s,
                None => {
                    let t = Instant::now();
                    let s = Session::start(driver_url, &self.options)
                        .instrument(tracing::info_span!(parent: &repeat_span, "browser.session.start", browser = %self.options.browser))
                        .await?;
                    session_start_ms = ms(t.elapsed());
                    report.browser_version = s.version.clone();
                    slot.insert(s)
                }
            };
            let mut rep = RepeatReport {
                repeat,
                started_at: Some(timestamp(started_at)),
                session_start_ms,
                ..Default::default()
            };
            let scenario_start = Instant::now();
            let mut last_action = None;
            for (i, step) in self.spec.steps.iter().enumerate() {
                let number = i as u32 + 1;
                let name = self.step_name(step);
                let kind = step_kind_name(step);
                let span = tracing::info_span!(
                    parent: &repeat_span,
                    "browser.step",
                    otel.name = %format!("step {number} {name}"),
                    step.number = number,
                    step.name = %name,
                    step.kind = kind,
                    repeat,
                    url.full = tracing::field::Empty,
                );
                let t = Instant::now();
                let next = self.spec.steps.get(i + 1);
                let outcome = self
                    .run_step(session, &mut rep, number, step, next, &mut last_action)
                    .instrument(span.clone())
                    .await;
                match outcome {
                    Ok(mut timing) => {
                        timing.step_number = number;
                        timing.name = name.clone();
                        timing.kind = kind.to_string();
                        timing.wall_ms = ms(t.elapsed());
                        timing.url = self.redact(&timing.url);
                        span.record("url.full", timing.url.as_str());
                        // Every figure of the step, searchable, named as in the result.
                        for (figure, value) in baton_proto::figures::step_figures(&timing) {
                            span.set_attribute(figure, value);
                        }
                        let done = f64::from(repeat - 1) * self.spec.steps.len() as f64 + f64::from(number);
                        self.ctx.report(progress(done / total_steps, repeat, repeats, &timing));
                        rep.steps.push(timing);
                    }
                    Err(reason) => {
                        let reason = self.redact(&reason);
                        tracing::warn!(parent: &span, reason = %reason, "step failed");
                        let failure = self.capture_failure(session, repeat, number, &name, reason).await;
                        rep.scenario_wall_ms = ms(scenario_start.elapsed());
                        report.repeats.push(rep);
                        report.failure = Some(failure);
                        return Ok(());
                    }
                }
            }
            rep.scenario_wall_ms = ms(scenario_start.elapsed());
            report.repeats.push(rep);
            if !warm && let Some(s) = slot.take() {
                s.close().instrument(tracing::info_span!(parent: &repeat_span, "browser.session.close")).await;
            }
        }
        Ok(())
    }

    /// The name a step goes by in spans and results: its own, or a description of it.
    fn step_name(&self, step: &BrowserStep) -> String {
        use browser_step::Kind;
        if !step.name.is_empty() {
            return self.redact(&step.name);
        }
        let described = match &step.kind {
            Some(Kind::Open(o)) => format!("open {}", o.url),
            Some(Kind::Find(f)) => {
                let action = match &f.action {
                    Some(find_step::Action::Type(_)) => "type into",
                    Some(find_step::Action::Clear(_)) => "clear",
                    Some(find_step::Action::Click(_)) => "click",
                    Some(find_step::Action::Select(_)) => "select in",
                    Some(find_step::Action::Submit(_)) => "submit",
                    None => "find",
                };
                format!("{action} {}", describe(f.locator.as_ref()))
            }
            Some(Kind::Wait(_)) => "wait".to_string(),
            Some(Kind::TypeText(t)) => format!("type into {}", describe(t.locator.as_ref())),
            _ => step_kind_name(step).to_string(),
        };
        // Templates, not filled-in values, and masked should a secret be written inline.
        self.redact(&described)
    }

    async fn run_step(
        &self,
        session: &mut Session,
        rep: &mut RepeatReport,
        number: u32,
        step: &BrowserStep,
        next: Option<&BrowserStep>,
        last_action: &mut Option<Action>,
    ) -> StepResult<StepTiming> {
        use browser_step::Kind;
        let driver = session.driver.clone();
        let mut timing = StepTiming::default();
        let timeout_or = |ms: u32| {
            if ms == 0 { self.default_timeout } else { Duration::from_millis(u64::from(ms)) }
        };
        match &step.kind {
            None => return Err("the step has no kind".into()),
            Some(Kind::Open(o)) => {
                let url = self.fill(&o.url);
                *last_action = Some(Action { step_number: number, started: Instant::now() });
                driver.goto(url.as_str()).await.map_err(|e| format!("navigation failed: {e}"))?;
                let raw: RawPageTiming = driver
                    .execute_async(timing::PAGE_TIMING_JS, vec![serde_json::json!(timing::MAX_RESOURCES)])
                    .await
                    .and_then(|r| r.convert())
                    .map_err(|e| format!("reading the page timing failed: {e}"))?;
                let page = raw.page_timing();
                if let Err(reason) = self.policy.check(&page.url).await {
                    // Leave the page before the failure is captured: a denied page is never
                    // screenshotted.
                    let _ = driver.goto("about:blank").await;
                    return Err(format!("the page went to a URL that is not allowed: {reason}"));
                }
                waterfall::record(&raw, &tracing::Span::current().context(), &|text| self.redact(text));
                timing.page = Some(page);
            }
            Some(Kind::SetWindowSize(w)) => {
                driver.set_window_rect(0, 0, w.width, w.height).await.map_err(|e| e.to_string())?;
                session.viewport_offset = None;
            }
            Some(Kind::Find(f)) => {
                let el = self.find(session, f.locator.as_ref(), timeout_or(f.timeout_ms)).await?;
                self.arm(session, next).await?;
                *last_action = Some(Action { step_number: number, started: Instant::now() });
                let acted = match &f.action {
                    None => return Err("the find step has no action".into()),
                    Some(find_step::Action::Type(t)) => el.send_keys(self.fill(t)).await,
                    Some(find_step::Action::Clear(_)) => el.clear().await,
                    Some(find_step::Action::Click(_)) => el.click().await,
                    Some(find_step::Action::Select(t)) => match SelectElement::new(&el).await {
                        Ok(s) => s.select_by_visible_text(&self.fill(t)).await,
                        Err(e) => Err(e),
                    },
                    Some(find_step::Action::Submit(_)) => {
                        let arg = el.to_json().map_err(|e| e.to_string())?;
                        driver
                            .execute("const el = arguments[0]; (el.form || el).requestSubmit ? (el.form || el).requestSubmit() : (el.form || el).submit();", vec![arg])
                            .await
                            .map(|_| ())
                    }
                };
                acted.map_err(|e| format!("{} failed: {e}", step_kind_name(step)))?;
            }
            Some(Kind::Wait(w)) => {
                let outcome = self.wait(session, w, timeout_or(w.timeout_ms)).await?;
                if let Some(action) = last_action.take() {
                    let browser_ms = outcome.input.map(|input| (outcome.at - input).max(0.0)).unwrap_or(0.0);
                    let wall_ms = ms(action.started.elapsed());
                    let watched = outcome.watched;
                    tracing::info!(action_step = action.step_number, browser_ms, wall_ms, watched, "interaction");
                    timing.interaction =
                        Some(InteractionTiming { action_step_number: action.step_number, browser_ms, wall_ms });
                }
            }
            Some(Kind::Assert(a)) => match &a.check {
                None => return Err("the assert step has no check".into()),
                Some(assert_step::Check::Text(t)) => {
                    let el = self.find(session, t.locator.as_ref(), self.default_timeout).await?;
                    let text = el.text().await.map_err(|e| e.to_string())?;
                    let want = self.fill(&t.contains);
                    if !text.contains(&want) {
                        return Err(format!(
                            "{} shows {text:?}, which does not contain {want:?}",
                            describe(t.locator.as_ref())
                        ));
                    }
                }
                Some(assert_step::Check::Title(want)) => {
                    let title = driver.title().await.map_err(|e| e.to_string())?;
                    let want = self.fill(want);
                    if !title.contains(&want) {
                        return Err(format!("the title is {title:?}, which does not contain {want:?}"));
                    }
                }
                Some(assert_step::Check::Url(want)) => {
                    let url = driver.current_url().await.map_err(|e| e.to_string())?;
                    let want = self.fill(want);
                    if !url.as_str().contains(&want) {
                        return Err(format!("the URL is {url}, which does not contain {want:?}"));
                    }
                }
            },
            Some(Kind::Screenshot(s)) => {
                let png = driver.screenshot_as_png().await.map_err(|e| format!("screenshot failed: {e}"))?;
                let name = if s.name.is_empty() { format!("step-{number}") } else { self.redact(&self.fill(&s.name)) };
                rep.screenshots.push(Screenshot { name, step_number: number, png });
            }
            Some(Kind::Script(s)) => {
                let ret = driver
                    .execute(self.fill(&s.script), Vec::new())
                    .await
                    .map_err(|e| format!("the script failed: {e}"))?;
                timing.script_result_json = ret.json().to_string();
            }
            Some(Kind::TypeText(t)) => {
                let desktop = self.desktop()?;
                let el = match &t.locator {
                    Some(l) => Some(self.find(session, Some(l), timeout_or(t.timeout_ms)).await?),
                    None => None,
                };
                self.arm(session, next).await?;
                *last_action = Some(Action { step_number: number, started: Instant::now() });
                if let Some(el) = &el {
                    let (x, y) = self.element_on_screen(session, desktop, el).await?;
                    desktop
                        .send(Input::Click { x, y, button: button_named("left") })
                        .await
                        .map_err(|e| e.to_string())?;
                }
                let text = self.fill(&t.text);
                desktop.send(Input::Text(text.clone())).await.map_err(|e| e.to_string())?;
                if let Some(el) = &el {
                    self.confirm_value(el, &text, timeout_or(t.timeout_ms)).await?;
                }
            }
            Some(Kind::KeyChord(k)) => {
                let desktop = self.desktop()?;
                let keys = check_key_chord(&k.keys)?.into_iter().map(str::to_string).collect();
                self.arm(session, next).await?;
                *last_action = Some(Action { step_number: number, started: Instant::now() });
                desktop.send(Input::Chord(keys)).await.map_err(|e| e.to_string())?;
            }
            Some(Kind::MouseMove(m)) => {
                let desktop = self.desktop()?;
                let (x, y) = match &m.target {
                    Some(mouse_move_step::Target::Element(l)) => self.locate_on_screen(session, desktop, l).await?,
                    Some(mouse_move_step::Target::Point(p)) => self.point_on_screen(session, desktop, p).await?,
                    None => return Err("the mouseMove step has no target".into()),
                };
                desktop.send(Input::MoveTo { x, y }).await.map_err(|e| e.to_string())?;
            }
            Some(Kind::MouseClick(m)) => {
                let desktop = self.desktop()?;
                let (x, y) = match &m.target {
                    Some(mouse_click_step::Target::Element(l)) => self.locate_on_screen(session, desktop, l).await?,
                    Some(mouse_click_step::Target::Point(p)) => self.point_on_screen(session, desktop, p).await?,
                    None => return Err("the mouseClick step has no target".into()),
                };
                self.arm(session, next).await?;
                *last_action = Some(Action { step_number: number, started: Instant::now() });
                desktop
                    .send(Input::Click { x, y, button: button_named(&m.button) })
                    .await
                    .map_err(|e| e.to_string())?;
            }
        }
        timing.url = driver.current_url().await.map(|u| u.to_string()).unwrap_or_default();
        Ok(timing)
    }

    fn desktop(&self) -> StepResult<&'a Desktop> {
        self.desktop.ok_or_else(|| "desktop input is not enabled on this agent".to_string())
    }

    /// Finds the first element the locator matches, polling every 5 ms until the timeout.
    async fn find(&self, session: &Session, loc: Option<&Locator>, timeout: Duration) -> StepResult<WebElement> {
        let by = self.by(loc)?;
        let deadline = Instant::now() + timeout;
        loop {
            match session.driver.find_all(by.clone()).await {
                Ok(found) => {
                    if let Some(el) = found.into_iter().next() {
                        return Ok(el);
                    }
                }
                Err(e) if !is_navigation_race(&e.to_string()) => {
                    return Err(format!("looking up {} failed: {e}", describe(loc)));
                }
                Err(_) => {}
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "no element matches {} after {} ms",
                    self.redact(&self.fill(&describe(loc))),
                    timeout.as_millis()
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    fn by(&self, loc: Option<&Locator>) -> StepResult<By> {
        let by = loc.and_then(|l| l.by.as_ref()).ok_or("the step has no locator")?;
        Ok(match by {
            locator::By::Css(v) => By::Css(self.fill(v)),
            locator::By::Xpath(v) => By::XPath(self.fill(v)),
            locator::By::Id(v) => By::Id(self.fill(v)),
            locator::By::Name(v) => By::Name(self.fill(v)),
            locator::By::LinkText(v) => By::LinkText(self.fill(v)),
        })
    }

    /// Waits page-side for the condition; a navigation in between only restarts the wait.
    async fn wait(
        &self,
        session: &Session,
        w: &baton_proto::v1::WaitStep,
        timeout: Duration,
    ) -> StepResult<WaitOutcome> {
        let Condition { kind, arg, by, what } = self.condition(w)?;
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let args = vec![kind.into(), arg.clone().into(), by.into(), (left.as_millis() as u64).into()];
            match session.driver.execute_async(timing::WAIT_JS, args).await.and_then(|r| r.convert::<WaitOutcome>()) {
                Ok(outcome) if outcome.met => return Ok(outcome),
                Ok(outcome) if Instant::now() >= deadline => {
                    let detail = outcome.last_error.map(|e| format!(" (last script error: {e})")).unwrap_or_default();
                    return Err(format!("timed out after {} ms waiting for {what}{detail}", timeout.as_millis()));
                }
                Ok(_) => {}
                Err(e) if is_navigation_race(&e.to_string()) && Instant::now() < deadline => {}
                Err(e) => return Err(format!("waiting for {what} failed: {e}")),
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// What a wait step waits for, as the page-side scripts take it.
    fn condition(&self, w: &baton_proto::v1::WaitStep) -> StepResult<Condition> {
        let (kind, arg, by, what) = match &w.condition {
            None => return Err("the wait step has no condition".into()),
            Some(wait_step::Condition::Visible(l)) => {
                ("visible", locator_value(l), locator_kind(l), format!("{} to be visible", describe(Some(l))))
            }
            Some(wait_step::Condition::Clickable(l)) => {
                ("clickable", locator_value(l), locator_kind(l), format!("{} to be clickable", describe(Some(l))))
            }
            Some(wait_step::Condition::TextPresent(t)) => ("textPresent", t.as_str(), "", format!("text {t:?}")),
            Some(wait_step::Condition::UrlMatches(t)) => {
                ("urlMatches", t.as_str(), "", format!("the URL to match {t}"))
            }
            Some(wait_step::Condition::Js(t)) => ("js", t.as_str(), "", format!("{t} to be true")),
        };
        Ok(Condition { kind, arg: self.fill(arg), by, what })
    }

    /// Before an action: the page stamps the action's first input event, and — when the
    /// next step waits — the moment its condition first holds, in this document and (where
    /// the session watches new documents) every document after it.
    async fn arm(&self, session: &Session, next: Option<&BrowserStep>) -> StepResult<()> {
        let args = match next.and_then(|s| match &s.kind {
            Some(browser_step::Kind::Wait(w)) => self.condition(w).ok(),
            _ => None,
        }) {
            Some(c) => vec![c.kind.into(), c.arg.into(), c.by.into()],
            None => vec![serde_json::Value::Null; 3],
        };
        session.driver.execute(timing::ARM_JS, args).await.map(|_| ()).map_err(|e| e.to_string())
    }

    /// Polls (through WebDriver) until the typed text has arrived in the element.
    async fn confirm_value(&self, el: &WebElement, text: &str, timeout: Duration) -> StepResult<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = el.prop("value").await.map_err(|e| e.to_string())?.unwrap_or_default();
            if value.ends_with(text) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "the typed text did not arrive within {} ms (the field holds {:?})",
                    timeout.as_millis(),
                    self.redact(&value)
                ));
            }
            tokio::time::sleep(POLL).await;
        }
    }

    async fn locate_on_screen(&self, session: &mut Session, desktop: &Desktop, l: &Locator) -> StepResult<(i32, i32)> {
        let el = self.find(session, Some(l), self.default_timeout).await?;
        self.element_on_screen(session, desktop, &el).await
    }

    /// The element's centre on the X screen (scrolled into view first).
    async fn element_on_screen(
        &self,
        session: &mut Session,
        desktop: &Desktop,
        el: &WebElement,
    ) -> StepResult<(i32, i32)> {
        let arg = el.to_json().map_err(|e| e.to_string())?;
        let centre: (f64, f64) = session
            .driver
            .execute(
                "const el = arguments[0]; el.scrollIntoView({block: 'center', inline: 'center'}); \
                 const r = el.getBoundingClientRect(); return [r.left + r.width / 2, r.top + r.height / 2];",
                vec![arg],
            )
            .await
            .and_then(|r| r.convert())
            .map_err(|e| e.to_string())?;
        let point = ViewportPoint { x: centre.0.round() as i32, y: centre.1.round() as i32 };
        self.point_on_screen(session, desktop, &point).await
    }

    async fn point_on_screen(
        &self,
        session: &mut Session,
        desktop: &Desktop,
        p: &ViewportPoint,
    ) -> StepResult<(i32, i32)> {
        let (dx, dy) = match session.viewport_offset {
            Some(o) => o,
            None => {
                let o = measure_viewport_offset(session, desktop).await?;
                session.viewport_offset = Some(o);
                o
            }
        };
        Ok((p.x + dx, p.y + dy))
    }

    async fn capture_failure(
        &self,
        session: &Session,
        repeat: u32,
        number: u32,
        name: &str,
        reason: String,
    ) -> StepFailure {
        let driver = &session.driver;
        let page_url = match tokio::time::timeout(CAPTURE_TIMEOUT, driver.current_url()).await {
            Ok(Ok(u)) => self.redact(u.as_str()),
            _ => "unknown".into(),
        };
        let screenshot_png = match tokio::time::timeout(CAPTURE_TIMEOUT, driver.screenshot_as_png()).await {
            Ok(Ok(png)) => png,
            _ => Vec::new(),
        };
        let console_errors = match tokio::time::timeout(CAPTURE_TIMEOUT, driver.browser_log()).await {
            Ok(Ok(entries)) => {
                entries.into_iter().filter(|e| e.level == "SEVERE").map(|e| self.redact(&e.message)).collect()
            }
            _ => Vec::new(),
        };
        StepFailure {
            repeat,
            step_number: number,
            step_name: name.to_string(),
            reason,
            page_url,
            screenshot_png,
            console_errors,
        }
    }
}

/// Where the viewport's (0, 0) is on the X screen: move the OS mouse into the window and
/// read a real mousemove event's screen and client coordinates.
async fn measure_viewport_offset(session: &Session, desktop: &Desktop) -> StepResult<(i32, i32)> {
    let centre: (f64, f64) = session
        .driver
        .execute(
            "window.__batonOffset = null; \
             addEventListener('mousemove', e => { window.__batonOffset = [e.screenX - e.clientX, e.screenY - e.clientY]; }, {capture: true, once: true}); \
             return [window.screenX + window.outerWidth / 2, window.screenY + window.outerHeight / 2];",
            Vec::new(),
        )
        .await
        .and_then(|r| r.convert())
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut nudge = 0;
    loop {
        let (x, y) = (centre.0 as i32 + nudge, centre.1 as i32 + nudge);
        desktop.send(Input::MoveTo { x, y }).await.map_err(|e| e.to_string())?;
        let poll_until = Instant::now() + Duration::from_millis(300);
        while Instant::now() < poll_until {
            let offset: Option<(f64, f64)> = session
                .driver
                .execute("return window.__batonOffset;", Vec::new())
                .await
                .and_then(|r| r.convert())
                .map_err(|e| e.to_string())?;
            if let Some((dx, dy)) = offset {
                return Ok((dx.round() as i32, dy.round() as i32));
            }
            tokio::time::sleep(POLL).await;
        }
        if Instant::now() >= deadline {
            return Err("could not locate the page on the screen: the page saw no mouse movement".into());
        }
        nudge += 3;
    }
}

fn locator_kind(l: &Locator) -> &'static str {
    match &l.by {
        Some(locator::By::Css(_)) => "css",
        Some(locator::By::Xpath(_)) => "xpath",
        Some(locator::By::Id(_)) => "id",
        Some(locator::By::Name(_)) => "name",
        Some(locator::By::LinkText(_)) => "linkText",
        None => "",
    }
}

fn locator_value(l: &Locator) -> &str {
    match &l.by {
        Some(
            locator::By::Css(v)
            | locator::By::Xpath(v)
            | locator::By::Id(v)
            | locator::By::Name(v)
            | locator::By::LinkText(v),
        ) => v,
        None => "",
    }
}

/// `xpath //button[text()="Login"]`, as people read a locator.
fn describe(l: Option<&Locator>) -> String {
    match l {
        Some(l) if l.by.is_some() => format!("{} {}", locator_kind(l), locator_value(l)),
        _ => "the page".into(),
    }
}

/// Errors that only mean "the page is navigating, ask again".
fn is_navigation_race(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ["navigation", "unloaded", "stale element", "detached", "execution context"].iter().any(|s| m.contains(s))
}

fn progress(fraction: f64, repeat: u32, repeats: u32, t: &StepTiming) -> Progress {
    let mut metrics = HashMap::from([("stepWallMs".to_string(), t.wall_ms), ("repeat".to_string(), f64::from(repeat))]);
    if let Some(p) = &t.page {
        metrics.insert("loadMs".into(), p.load_ms);
        metrics.insert("ttfbMs".into(), p.ttfb_ms);
    }
    if let Some(i) = &t.interaction {
        metrics.insert("interactionBrowserMs".into(), i.browser_ms);
        metrics.insert("interactionWallMs".into(), i.wall_ms);
    }
    Progress {
        fraction,
        message: format!("repeat {repeat}/{repeats}: step {} {:?} done", t.step_number, t.name),
        metrics,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn timestamp(t: SystemTime) -> pbjson_types::Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    pbjson_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_redacted_in_every_encoding_text_may_carry_it_in() {
        use base64::Engine as _;
        let secret = r#"p@ss w/rd&"é"<x>"#;
        let spec = BrowserSpec { secrets: [("pw".to_string(), secret.to_string())].into(), ..Default::default() };
        let values = Values::new(&spec);
        let url = format!(
            "http://site/login?pw={}",
            url::form_urlencoded::byte_serialize(secret.as_bytes()).collect::<String>()
        );
        let leaks = [
            format!("typed {secret} into the field"),
            url,
            "http://site/a/p%40ss%20w%2Frd%26%22%C3%A9%22%3Cx%3E/b".to_string(),
            "http://site/a/p%40ss%20w%2frd%26%22%c3%a9%22%3cx%3e/b".to_string(),
            format!("script returned {}", serde_json::json!({ "pw": secret })),
            format!("assert failed: {secret:?} != \"x\""),
            "<input value=\"p@ss w/rd&amp;&quot;é&quot;&lt;x&gt;\">".to_string(),
            format!("Authorization: Basic {}", base64::engine::general_purpose::STANDARD.encode(secret)),
            format!("token={}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)),
        ];
        for text in leaks {
            let redacted = values.redact(&text);
            assert!(redacted.contains("***"), "not masked: {text} → {redacted}");
            for form in &values.secrets {
                assert!(!redacted.contains(form.as_str()), "{text} → {redacted} still holds {form}");
            }
        }
        assert_eq!(values.redact("nothing secret here"), "nothing secret here");
    }
}
