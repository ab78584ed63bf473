//! One browser session: started with the project's Chromium flags and a fresh profile,
//! and always torn down completely (WebDriver quit, then any process still using the
//! profile killed, then the profile removed).

use crate::error::BrowserError;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use thirtyfour::bidi::modules::script::AddPreloadScript;
use thirtyfour::{CapabilitiesHelper, ChromiumLikeCapabilities, DesiredCapabilities, LoggingPrefsLogLevel, WebDriver};

const START_TIMEOUT: Duration = Duration::from_secs(60);
const QUIT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longer than any wait a spec may ask for; waits end themselves page-side.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(11 * 60);

const CHROMIUM_FLAGS: [&str; 7] = [
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--password-store=basic",
];

/// Whether Chromium keeps its sandbox: yes where it can work — not as root (Chromium
/// refuses) and where this process may create a user namespace (the sandbox's first need;
/// a container's seccomp profile may forbid it). Decided once, and logged.
pub(crate) fn chromium_sandbox() -> bool {
    static SANDBOX: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SANDBOX.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        let why_not = if unsafe { libc::geteuid() } == 0 {
            Some("the agent runs as root")
        } else if !user_namespaces() {
            Some("user namespaces are not available here")
        } else {
            None
        };
        match why_not {
            None => tracing::info!("Chromium runs with its sandbox"),
            Some(why) => tracing::warn!(reason = why, "Chromium runs without its sandbox"),
        }
        why_not.is_none()
    })
}

/// Whether a child of this process can enter a new user namespace.
fn user_namespaces() -> bool {
    use std::os::unix::process::CommandExt as _;
    let mut probe = std::process::Command::new("/bin/true");
    // SAFETY: between fork and exec the child only makes one system call.
    unsafe {
        probe.pre_exec(|| {
            if libc::unshare(libc::CLONE_NEWUSER) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    probe.stderr(std::process::Stdio::null()).status().is_ok_and(|s| s.success())
}

/// How to start a browser: which one, headed or not, window size.
#[derive(Debug, Clone)]
pub(crate) struct SessionOptions {
    pub browser: String,
    pub headless: bool,
    pub window: (u32, u32),
    /// The agent's policy proxy ([`crate::guard`]): every request goes through it.
    pub proxy: Option<std::net::SocketAddr>,
}

pub(crate) struct Session {
    pub driver: WebDriver,
    pub version: String,
    /// Where the page's viewport sits on the X screen, measured once per session.
    pub viewport_offset: Option<(i32, i32)>,
    profile: Option<PathBuf>,
}

impl Session {
    pub(crate) async fn start(driver_url: &str, options: &SessionOptions) -> Result<Self, BrowserError> {
        let start_err = |e: thirtyfour::error::WebDriverError| BrowserError::SessionStart(e.to_string());
        let (caps, profile): (thirtyfour::Capabilities, Option<PathBuf>) = if options.browser == "firefox" {
            let mut caps = DesiredCapabilities::firefox();
            // WebDriver BiDi, for the watch at document start (below).
            caps.enable_bidi().map_err(start_err)?;
            if options.headless {
                caps.add_arg("-headless").map_err(start_err)?;
            }
            if let Some(proxy) = options.proxy {
                let mut prefs = thirtyfour::common::capabilities::firefox::FirefoxPreferences::new();
                let (ip, port) = (proxy.ip().to_string(), proxy.port());
                prefs.set("network.proxy.type", 1).map_err(start_err)?;
                for scheme in ["http", "ssl"] {
                    prefs.set(&format!("network.proxy.{scheme}"), &ip).map_err(start_err)?;
                    prefs.set(&format!("network.proxy.{scheme}_port"), port).map_err(start_err)?;
                }
                prefs.set("network.proxy.no_proxies_on", "").map_err(start_err)?;
                prefs.set("network.proxy.allow_hijacking_localhost", true).map_err(start_err)?;
                caps.set_preferences(prefs).map_err(start_err)?;
            }
            (caps.into(), None)
        } else {
            let profile = new_profile_dir()?;
            let mut caps = DesiredCapabilities::chrome();
            for flag in CHROMIUM_FLAGS {
                caps.add_arg(flag).map_err(start_err)?;
            }
            if !chromium_sandbox() {
                caps.add_arg("--no-sandbox").map_err(start_err)?;
            }
            if let Some(proxy) = options.proxy {
                caps.add_arg(&format!("--proxy-server=http://{proxy}")).map_err(start_err)?;
                // Loopback too: an agent's policy may close it.
                caps.add_arg("--proxy-bypass-list=<-loopback>").map_err(start_err)?;
            }
            if options.headless {
                caps.add_arg("--headless=new").map_err(start_err)?;
            }
            caps.add_arg(&format!("--window-size={},{}", options.window.0, options.window.1)).map_err(start_err)?;
            caps.add_arg(&format!("--user-data-dir={}", profile.display())).map_err(start_err)?;
            // A fresh profile's new-tab page reaches for a search engine and can stall the
            // first command for seconds offline: start on about:blank instead.
            caps.add_experimental_option(
                "prefs",
                serde_json::json!({"session.restore_on_startup": 4, "session.startup_urls": ["about:blank"]}),
            )
            .map_err(start_err)?;
            caps.set_browser_log_level(LoggingPrefsLogLevel::Severe).map_err(start_err)?;
            (caps.into(), Some(profile))
        };
        let started = tokio::time::timeout(START_TIMEOUT, WebDriver::new(driver_url, caps)).await;
        let driver = match started {
            Ok(Ok(d)) => d,
            failed => {
                if let Some(p) = &profile {
                    remove_profile(p);
                }
                return Err(match failed {
                    Ok(Err(e)) => BrowserError::SessionStart(e.to_string()),
                    _ => BrowserError::SessionStart(format!("no session after {}s", START_TIMEOUT.as_secs())),
                });
            }
        };
        let version = driver
            .handle()
            .capabilities()
            .get("browserVersion")
            .and_then(|v| v.as_str())
            .unwrap_or_default()
            .to_string();
        let session = Self { driver, version, viewport_offset: None, profile };
        if let Err(e) = session.driver.set_script_timeout(SCRIPT_TIMEOUT).await {
            session.close().await;
            return Err(BrowserError::SessionStart(e.to_string()));
        }
        // The wait-condition watch at the start of every document: Chromium through CDP,
        // Firefox through WebDriver BiDi. Without it (a remote driver that offers neither)
        // it runs only in the document an action starts in.
        if let Err(e) = session.watch_new_documents(&options.browser).await {
            tracing::warn!(
                error = %e,
                "the browser takes no script at document start: interactions across a navigation are timed when the wait step looks"
            );
        }
        Ok(session)
    }

    /// Installs [`crate::timing::WATCH_JS`] at the start of every document of the session.
    async fn watch_new_documents(&self, browser: &str) -> Result<(), thirtyfour::error::WebDriverError> {
        let watch = crate::timing::WATCH_JS;
        if browser == "firefox" {
            let preload = AddPreloadScript {
                function_declaration: format!("() => {{ {watch} }}"),
                arguments: Vec::new(),
                sandbox: None,
                contexts: Vec::new(),
            };
            self.driver.bidi().await?.send(preload).await?;
        } else {
            let source = serde_json::json!({ "source": watch });
            self.driver.cdp().send_raw("Page.addScriptToEvaluateOnNewDocument", source).await?;
        }
        Ok(())
    }

    /// Quits the session and makes sure nothing of it is left running or on disk.
    pub(crate) async fn close(self) {
        match tokio::time::timeout(QUIT_TIMEOUT, self.driver.quit()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::debug!(error = %e, "WebDriver quit failed; killing the browser"),
            Err(_) => tracing::warn!("WebDriver quit timed out; killing the browser"),
        }
        if let Some(profile) = self.profile {
            let killed = crate::process::kill_processes_mentioning(&profile);
            if killed > 0 {
                tracing::info!(killed, "killed browser processes left by the session");
            }
            remove_profile(&profile);
        }
    }
}

/// Profiles are named `baton-browser-<agent pid>-<n>` under the temp dir, so a test (or an
/// operator) can tell which processes belong to which agent.
fn new_profile_dir() -> Result<PathBuf, BrowserError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("{}{}-{n}", profile_prefix(), std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BrowserError::io(format!("creating {}", dir.display()), e))?;
    Ok(dir)
}

pub(crate) fn profile_prefix() -> &'static str {
    "baton-browser-"
}

fn remove_profile(dir: &std::path::Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        tracing::debug!(error = %e, dir = %dir.display(), "could not remove the browser profile");
    }
}
