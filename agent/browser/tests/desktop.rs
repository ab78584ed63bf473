use crate::common::*;
use baton_browser::BrowserConfig;
use baton_proto::context::JobContext;
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// Xvfb on the first free display of :90..:99, killed when dropped.
struct Xvfb {
    child: Child,
    display: String,
}

impl Xvfb {
    fn start() -> Self {
        require("Xvfb", "xvfb");
        for n in 90..100 {
            if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() || Path::new(&format!("/tmp/.X{n}-lock")).exists() {
                continue;
            }
            let display = format!(":{n}");
            let mut child = Command::new("Xvfb")
                .args([display.as_str(), "-screen", "0", "1400x1000x24", "-nolisten", "tcp"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            for _ in 0..100 {
                if Path::new(&format!("/tmp/.X11-unix/X{n}")).exists() {
                    return Self { child, display };
                }
                if child.try_wait().unwrap().is_some() {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            let _ = child.kill();
        }
        panic!("could not start Xvfb on any display :90..:99");
    }
}

impl Drop for Xvfb {
    fn drop(&mut self) {
        let _ = self.child.kill();
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
