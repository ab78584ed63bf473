//! What can go wrong when running a browser scenario.

use baton_proto::v1::{BrowserReport, StepFailure};

#[derive(Debug, thiserror::Error)]
pub enum BrowserError {
    /// A URL the agent's allow/deny lists refuse; raised before any browser starts.
    #[error("{url} is not allowed on this agent: {reason}")]
    UrlDenied { url: String, reason: String },
    /// The job asks for something this agent does not have (a browser, a display, desktop input).
    #[error("this agent cannot run the scenario: {0}")]
    Unsupported(String),
    #[error("{what} not found: {hint}")]
    Missing { what: String, hint: String },
    #[error("the WebDriver server is not available: {0}")]
    DriverUnavailable(String),
    #[error("could not start the browser session: {0}")]
    SessionStart(String),
    /// A step failed; the report (with its `failure` set) holds the screenshot and console errors.
    #[error("{}", failure_line(.0.failure.as_ref()))]
    StepFailed(Box<BrowserReport>),
    #[error("desktop input failed: {0}")]
    DesktopInput(String),
    #[error("cancelled")]
    Cancelled,
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
}

impl BrowserError {
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    /// The report of a failed scenario (with the failure's screenshot), when a step failed.
    pub fn report(&self) -> Option<&BrowserReport> {
        match self {
            Self::StepFailed(r) => Some(r),
            _ => None,
        }
    }
}

/// `step 4 "click Login": no element matches xpath //button (page http://…/login)`.
fn failure_line(failure: Option<&StepFailure>) -> String {
    match failure {
        Some(f) => {
            let repeat = if f.repeat > 1 { format!(" (repeat {})", f.repeat) } else { String::new() };
            format!("step {} {:?}{repeat}: {} (page {})", f.step_number, f.step_name, f.reason, f.page_url)
        }
        None => "a step failed".into(),
    }
}
