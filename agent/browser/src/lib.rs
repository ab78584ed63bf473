//! baton's browser and desktop automation engine.
//!
//! Layout: [`BrowserEngine`] owns the WebDriver servers (`driver`: supervised
//! chromedriver/geckodriver on loopback, restarted when they die) and runs scenarios
//! (`runner`: steps, repeats, failures) in browser sessions (`session`: flags, profile,
//! complete teardown). Page and interaction timing come from scripts in the page
//! (`timing`), OS input from enigo (`desktop`), URL checks from the agent's lists
//! (`policy`). [`serve_reference_site`] is the site the tests, demo and benchmark use.
//!
//! A scenario's failed step is returned as [`BrowserError::StepFailed`], whose Display is
//! the one-line reason (`step 4 "click Login": no element matches … (page …)`) and whose
//! [`BrowserError::report`] is the report so far with `failure` set (screenshot, console
//! errors). Secrets never leave the engine: every text in spans, logs and reports is
//! masked.

mod desktop;
mod driver;
mod error;
mod guard;
mod policy;
mod process;
mod runner;
mod session;
mod site;
mod timing;
mod waterfall;

pub use error::BrowserError;
pub use policy::UrlPolicy;
pub use site::serve_reference_site;

use baton_proto::context::JobContext;
use baton_proto::spec::browser::{self as rules, browser_name, is_desktop_step};
use baton_proto::v1::{BrowserInfo, BrowserReport, BrowserSpec, browser_step};
use desktop::Desktop;
use driver::SupervisedDriver;
use session::SessionOptions;
use std::collections::BTreeMap;
use std::path::PathBuf;
use tracing::Instrument;

/// How the agent runs browsers.
#[derive(Debug, Clone, Default)]
pub struct BrowserConfig {
    /// chromedriver to supervise; default: found on PATH.
    pub chromedriver: Option<PathBuf>,
    /// Use this WebDriver server (e.g. a Selenium Grid) instead of starting one.
    pub remote_webdriver: Option<String>,
    /// X display for headed browsers and desktop input, e.g. ":99".
    pub display: Option<String>,
    /// Allow desktop (enigo) steps; needs `display`.
    pub desktop_input: bool,
    /// URL host patterns (see [`UrlPolicy`]). Link-local and cloud metadata addresses
    /// are always denied unless an allow pattern names them.
    pub allow: Vec<String>,
    pub deny: Vec<String>,
}

/// Where sessions of one browser are started.
enum Endpoint {
    Supervised(SupervisedDriver),
    Remote(String),
}

impl Endpoint {
    async fn url(&self) -> Result<String, BrowserError> {
        match self {
            Self::Supervised(d) => d.url().await,
            Self::Remote(u) => Ok(u.clone()),
        }
    }
}

pub struct BrowserEngine {
    /// By browser name ("chrome", "firefox").
    endpoints: BTreeMap<String, Endpoint>,
    browsers: Vec<BrowserInfo>,
    policy: UrlPolicy,
    /// The proxy every request of a browser this agent starts goes through (not for a
    /// remote WebDriver: its browser runs elsewhere).
    guard: Option<guard::Guard>,
    desktop: Option<Desktop>,
    display: Option<String>,
}

impl BrowserEngine {
    /// Finds the browsers and drivers, and starts the drivers on loopback ports.
    pub async fn start(config: BrowserConfig) -> Result<BrowserEngine, BrowserError> {
        if config.desktop_input && config.display.is_none() {
            return Err(BrowserError::Unsupported("desktop input needs an X display (set the display)".into()));
        }
        let mut endpoints = BTreeMap::new();
        let mut browsers = Vec::new();
        if let Some(remote) = &config.remote_webdriver {
            endpoints.insert("chrome".to_string(), Endpoint::Remote(remote.clone()));
            browsers.push(BrowserInfo {
                name: "chrome".into(),
                version: "remote".into(),
                driver_version: remote.clone(),
            });
        } else {
            let chromedriver =
                config.chromedriver.clone().or_else(|| process::find_on_path(&["chromedriver"])).ok_or_else(|| {
                    BrowserError::Missing {
                        what: "chromedriver".into(),
                        hint: "install chromium and chromium-driver (Debian) or set the chromedriver path".into(),
                    }
                })?;
            let chromium =
                process::find_on_path(&["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"])
                    .ok_or_else(|| BrowserError::Missing {
                        what: "Chromium".into(),
                        hint: "install chromium (Debian) or Google Chrome".into(),
                    })?;
            browsers.push(BrowserInfo {
                name: "chrome".into(),
                version: version_of(&chromium).await,
                driver_version: version_of(&chromedriver).await,
            });
            session::chromium_sandbox();
            endpoints.insert(
                "chrome".into(),
                Endpoint::Supervised(SupervisedDriver::start(chromedriver, config.display.clone()).await?),
            );
            let firefox = process::find_on_path(&["firefox-esr", "firefox"]);
            if let (Some(gecko), Some(firefox)) = (process::find_on_path(&["geckodriver"]), firefox) {
                browsers.push(BrowserInfo {
                    name: "firefox".into(),
                    version: version_of(&firefox).await,
                    driver_version: version_of(&gecko).await,
                });
                endpoints.insert(
                    "firefox".into(),
                    Endpoint::Supervised(SupervisedDriver::start(gecko, config.display.clone()).await?),
                );
            }
        }
        let desktop = config.display.clone().filter(|_| config.desktop_input).map(Desktop::new);
        let policy = UrlPolicy::new(&config.allow, &config.deny);
        let guard = match config.remote_webdriver {
            Some(_) => None,
            None => Some(guard::Guard::start(policy.clone()).await.map_err(|e| {
                BrowserError::Unsupported(format!("cannot start the browser's policy proxy on loopback: {e}"))
            })?),
        };
        Ok(BrowserEngine { endpoints, browsers, policy, guard, desktop, display: config.display })
    }

    /// What this agent offers: browsers (with versions), its X display, desktop input.
    pub fn capabilities(&self) -> (Vec<BrowserInfo>, Option<String>, bool) {
        (self.browsers.clone(), self.display.clone(), self.desktop.is_some())
    }

    /// Checks the scenario against this agent (URLs against the allow/deny lists,
    /// browser, display, desktop input) before any browser starts, then runs it.
    /// A failed step is `Err(BrowserError::StepFailed(report))`; cancellation through
    /// `ctx.cancel` is `Err(BrowserError::Cancelled)`. Browser sessions are always closed.
    pub async fn run(&self, spec: &BrowserSpec, ctx: &JobContext) -> Result<BrowserReport, BrowserError> {
        let browser = browser_name(spec).to_string();
        let span = tracing::info_span!("browser.scenario", browser = %browser, job.id = %ctx.job_id, repeats = spec.repeat.max(1));
        async {
            let endpoint = self
                .endpoints
                .get(&browser)
                .ok_or_else(|| BrowserError::Unsupported(format!("{browser} is not installed on this agent")))?;
            let desktop = self.admit(spec).await?;
            let headless = spec.headless.unwrap_or(true);
            let window = spec.window_size.as_ref().map(|w| (w.width, w.height)).unwrap_or(rules::DEFAULT_WINDOW);
            let proxy = self.guard.as_ref().map(|g| g.addr);
            let options = SessionOptions { browser: browser.clone(), headless, window, proxy };
            let scenario = runner::Scenario::new(spec, options, &self.policy, desktop, ctx);
            let driver_url = endpoint.url().await?;
            let mut report = BrowserReport {
                browser: browser.clone(),
                mode: if spec.mode.is_empty() { "cold".into() } else { spec.mode.clone() },
                ..Default::default()
            };
            let mut slot = None;
            let outcome = tokio::select! {
                r = scenario.run(&driver_url, &mut slot, &mut report) => r,
                _ = ctx.cancel.cancelled() => Err(BrowserError::Cancelled),
            };
            if let Some(session) = slot.take() {
                session.close().instrument(tracing::info_span!("browser.session.close")).await;
            }
            outcome?;
            report.summary = timing::summarize_report(&report);
            if report.failure.is_some() {
                return Err(BrowserError::StepFailed(Box::new(report)));
            }
            Ok(report)
        }
        .instrument(span)
        .await
    }

    /// Refuses, before any browser starts, what this agent must not or cannot run.
    async fn admit(&self, spec: &BrowserSpec) -> Result<Option<&Desktop>, BrowserError> {
        let values = runner::Values::new(spec);
        for step in &spec.steps {
            if let Some(browser_step::Kind::Open(o)) = &step.kind {
                let url = values.fill(&o.url);
                self.policy
                    .check(&url)
                    .await
                    .map_err(|reason| BrowserError::UrlDenied { url: values.redact(&url), reason })?;
            }
        }
        if !spec.headless.unwrap_or(true) && self.display.is_none() {
            return Err(BrowserError::Unsupported("a headed browser needs an X display; this agent has none".into()));
        }
        if spec.steps.iter().any(is_desktop_step) {
            return match &self.desktop {
                Some(d) => Ok(Some(d)),
                None => Err(BrowserError::Unsupported("desktop input is not enabled on this agent".into())),
            };
        }
        Ok(None)
    }

    /// Stops the WebDriver servers (and any browser they still run).
    pub async fn shutdown(self) {
        for (_, endpoint) in self.endpoints {
            if let Endpoint::Supervised(d) = endpoint {
                d.shutdown().await;
            }
        }
    }
}

async fn version_of(binary: &std::path::Path) -> String {
    match tokio::process::Command::new(binary).arg("--version").output().await {
        Ok(out) => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .find(|w| w.chars().next().is_some_and(|c| c.is_ascii_digit()))
            .unwrap_or_default()
            .to_string(),
        Err(_) => String::new(),
    }
}
