use baton_browser::{BrowserConfig, BrowserEngine};
use baton_proto::v1::BrowserSpec;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use tokio::sync::{Mutex, MutexGuard};

/// One test at a time: they start browsers and count processes.
pub async fn exclusive() -> MutexGuard<'static, ()> {
    static LOCK: OnceLock<Mutex<()>> = OnceLock::new();
    let _ = tracing_subscriber::fmt().with_env_filter("baton_browser=info").with_test_writer().try_init();
    LOCK.get_or_init(|| Mutex::new(())).lock().await
}

pub fn require(program: &str, package: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file())).unwrap_or(false);
    assert!(found, "{program} is not on PATH: install the Debian package {package} (deploy/install.sh does)");
}

/// Serves the reference site on a free loopback port; returns its base URL.
pub async fn site() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(baton_browser::serve_reference_site(listener));
    format!("http://{addr}")
}

pub async fn engine(config: BrowserConfig) -> BrowserEngine {
    require("chromium", "chromium");
    require("chromedriver", "chromium-driver");
    BrowserEngine::start(config).await.expect("engine starts")
}

pub fn spec(json: &str) -> BrowserSpec {
    let req = baton_proto::spec::parse_request(&format!(r#"{{"spec":{{"browser":{json}}}}}"#)).expect("spec parses");
    let Some(baton_proto::v1::job_spec::Kind::Browser(spec)) = req.spec.unwrap().kind else {
        panic!("not a browser spec")
    };
    baton_proto::spec::browser::validate(&spec).expect("spec is valid");
    spec
}

/// The login flow of examples/browser-login.json, against `base`.
pub fn login_spec(base: &str, extra: &str) -> BrowserSpec {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/browser-login.json"))
        .unwrap();
    let text = text.replace("http://127.0.0.1:8088", base);
    let mut req: serde_json::Value = serde_json::from_str(&text).unwrap();
    let browser = req["spec"]["browser"].take();
    let mut browser = browser.as_object().unwrap().clone();
    if !extra.is_empty() {
        let extra: serde_json::Value = serde_json::from_str(extra).unwrap();
        browser.extend(extra.as_object().unwrap().clone());
    }
    spec(&serde_json::Value::Object(browser).to_string())
}

/// Pids of live processes whose command line contains `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<u32> {
    let me = std::process::id();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let state = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            // Zombies (state Z) have exited already.
            !state.contains(") Z ") && String::from_utf8_lossy(&cmd).contains(needle)
        })
        .collect()
}

/// Browser processes of this test process's sessions (profiles are named after our pid).
pub fn our_browsers() -> Vec<u32> {
    processes_mentioning(&format!("baton-browser-{}-", std::process::id()))
}

/// chromedriver processes whose parent is this test process.
pub fn our_chromedrivers() -> Vec<u32> {
    let me = std::process::id().to_string();
    processes_mentioning("chromedriver")
        .into_iter()
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit(')').next().unwrap_or_default();
            after.split_whitespace().nth(1) == Some(me.as_str())
        })
        .collect()
}

/// Waits (up to 5 s) for `f` to return an empty list; returns what is left.
pub async fn settle(f: fn() -> Vec<u32>) -> Vec<u32> {
    for _ in 0..100 {
        let left = f();
        if left.is_empty() {
            return left;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    f()
}

pub fn kill(pid: u32) {
    Command::new("kill").arg("-9").arg(pid.to_string()).status().unwrap();
}
