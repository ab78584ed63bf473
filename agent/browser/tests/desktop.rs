use crate::common::*;
use baton_browser::BrowserConfig;
use baton_proto::context::JobContext;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Xvfb on a display it picks itself (`-displayfd`: the first one free, stale locks of
/// dead servers included), stopped with SIGTERM when dropped so it removes its lock file
/// and socket.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Self {
        require("Xvfb", "xvfb");
        let mut child = Command::new("Xvfb")
            .args(["-displayfd", "1", "-screen", "0", "1400x1000x24", "-nolisten", "tcp"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // Xvfb writes the display number once it accepts connections, or exits.
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let n = line.trim();
        assert!(!n.is_empty(), "Xvfb exited without a display: {:?}", child.wait());
        Self { display: format!(":{n}"), child }
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child's pid, which is not reaped until `wait` below.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn desktop_login_types_and_clicks_through_enigo_on_headed_chromium() {
    let _one = exclusive().await;
    let x = Xvfb::start();
    let base = site().await;
    let engine =
        engine(BrowserConfig { display: Some(x.display.clone()), desktop_input: true, ..Default::default() }).await;
    let (_, display, desktop) = engine.capabilities();
    assert_eq!((display.as_deref(), desktop), (Some(x.display.as_str()), true));
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/desktop-login.json"))
        .unwrap();
    let req = baton_proto::spec::parse_request(&text.replace("http://127.0.0.1:8088", &base)).unwrap();
    let Some(baton_proto::v1::job_spec::Kind::Browser(spec)) = req.spec.unwrap().kind else { panic!() };
    baton_proto::spec::browser::validate(&spec).unwrap();
    let report = engine.run(&spec, &JobContext::detached("desktop")).await.expect("desktop login succeeds");
    let steps = &report.repeats[0].steps;
    let i = steps.iter().find_map(|s| s.interaction.as_ref()).expect("click → dashboard measured");
    assert!(i.browser_ms >= 150.0, "{i:?}");
    // The welcome text proves the typed username arrived (typeText also confirmed it).
    assert!(steps.last().unwrap().url.ends_with("/dashboard"));
    engine.shutdown().await;
    assert_eq!(settle(our_browsers).await, Vec::<u32>::new());
}
