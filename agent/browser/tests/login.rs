use crate::common::*;
use baton_browser::BrowserConfig;
use baton_proto::context::JobContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_flow_measures_page_load_and_click_to_dashboard() {
    let _one = exclusive().await;
    let base = site().await;
    let engine = engine(BrowserConfig::default()).await;
    let spec = login_spec(&base, r#"{"repeat": 3, "mode": "warm"}"#);
    let report = engine.run(&spec, &JobContext::detached("login")).await.expect("login flow succeeds");
    assert_eq!(report.repeats.len(), 3);
    assert!(report.browser_version.starts_with(|c: char| c.is_ascii_digit()), "{:?}", report.browser_version);
    for rep in &report.repeats {
        let page = rep.steps[0].page.as_ref().expect("the open step has page timing");
        assert!(page.ttfb_ms > 0.0, "{page:?}");
        assert!(page.ttfb_ms <= page.dom_content_loaded_ms && page.dom_content_loaded_ms <= page.load_ms, "{page:?}");
        assert!(page.first_contentful_paint_ms > 0.0, "{page:?}");
        assert!(page.transfer_bytes > 0, "{page:?}");
        let wait = rep.steps.iter().find(|s| s.interaction.is_some()).expect("a measured interaction");
        let i = wait.interaction.as_ref().unwrap();
        // The login API answers after 150 ms; the browser clock sees the click to the table.
        assert!(i.browser_ms >= 150.0 && i.browser_ms < 5000.0, "{i:?}");
        assert!(i.wall_ms >= i.browser_ms * 0.9, "{i:?}");
        assert!(wait.url.ends_with("/dashboard"), "{}", wait.url);
    }
    let figures: Vec<_> = report.summary.iter().map(|f| (f.step.as_str(), f.figure.as_str())).collect();
    assert!(figures.contains(&("", "sessionStartMs")) && figures.contains(&("", "scenarioWallMs")), "{figures:?}");
    assert!(report.summary.iter().any(|f| f.figure == "interactionBrowserMs"
        && f.count == 3
        && f.min <= f.median
        && f.median <= f.p90
        && f.p90 <= f.max));
    // The password is a secret: nowhere in the report.
    let json = serde_json::to_string(&report).unwrap();
    assert!(!json.contains("s3cret-pass"), "the secret leaked into the report");
    let ttfb = report.summary.iter().find(|f| f.figure == "ttfbMs").unwrap();
    let load = report.summary.iter().find(|f| f.figure == "loadMs").unwrap();
    let click = report.summary.iter().find(|f| f.figure == "interactionBrowserMs").unwrap();
    eprintln!(
        "login flow: ttfb median {:.1} ms, load median {:.1} ms, click→dashboard median {:.1} ms (browser clock)",
        ttfb.median, load.median, click.median
    );
    engine.shutdown().await;
    assert_eq!(settle(our_browsers).await, Vec::<u32>::new(), "browser processes left over");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_page_and_form() {
    let _one = exclusive().await;
    let base = site().await;
    let engine = engine(BrowserConfig::default()).await;
    let spec = spec(&format!(
        r##"{{"steps":[
        {{"open":{{"url":"{base}/heavy"}}}},
        {{"open":{{"url":"{base}/form"}}}},
        {{"find":{{"locator":{{"name":"name"}},"type":"Ada"}}}},
        {{"find":{{"locator":{{"id":"size"}},"select":"Large"}}}},
        {{"find":{{"locator":{{"css":"#gift"}},"click":true}}}},
        {{"find":{{"locator":{{"id":"name"}},"submit":true}}}},
        {{"wait":{{"textPresent":"size=Large","timeoutMs":5000}}}},
        {{"assert":{{"text":{{"locator":{{"id":"result"}},"contains":"gift=on"}}}}}},
        {{"assert":{{"title":"Form"}}}},
        {{"script":{{"script":"return document.querySelectorAll('input').length"}}}},
        {{"screenshot":{{"name":"form-done"}}}}]}}"##
    ));
    let report = engine.run(&spec, &JobContext::detached("heavy")).await.expect("scenario succeeds");
    let heavy = report.repeats[0].steps[0].page.as_ref().unwrap();
    assert!(heavy.resource_count >= 60, "{heavy:?}");
    assert!(heavy.largest_contentful_paint_ms > 0.0, "{heavy:?}");
    assert_eq!(report.repeats[0].steps[9].script_result_json, "7");
    assert!(report.repeats[0].screenshots[0].png.starts_with(b"\x89PNG"));
    engine.shutdown().await;
}
