use crate::common::*;
use baton_browser::{BrowserConfig, BrowserError};
use baton_proto::context::JobContext;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_selector_that_matches_nothing_fails_naming_the_step_with_a_screenshot() {
    let _one = exclusive().await;
    let base = site().await;
    let engine = engine(BrowserConfig::default()).await;
    let mut spec = login_spec(&base, r#"{"defaultTimeoutMs": 500}"#);
    let Some(baton_proto::v1::browser_step::Kind::Find(find)) = &mut spec.steps[3].kind else {
        panic!("step 4 clicks")
    };
    find.locator = Some(baton_proto::v1::Locator {
        by: Some(baton_proto::v1::locator::By::Xpath(r#"//button[text()="Logn"]"#.into())),
    });
    let err = engine.run(&spec, &JobContext::detached("typo")).await.unwrap_err();
    let message = err.to_string();
    assert!(
        message.starts_with(r#"step 4 "click Login": no element matches xpath //button[text()="Logn"]"#)
            && message.ends_with(&format!("(page {base}/login)")),
        "{message}"
    );
    let failure = err.report().and_then(|r| r.failure.as_ref()).expect("the failure is in the report");
    assert!(failure.screenshot_png.starts_with(b"\x89PNG"), "a PNG screenshot");
    assert_eq!(failure.step_number, 4);
    engine.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_mixed_runs_leave_no_browser_or_driver_behind() {
    let _one = exclusive().await;
    let base = site().await;
    let engine = engine(BrowserConfig::default()).await;
    let ok = login_spec(&base, "");
    let bad = spec(&format!(
        r#"{{"steps":[{{"open":{{"url":"{base}/login"}}}},{{"find":{{"locator":{{"id":"nope"}},"click":true,"timeoutMs":100}}}}]}}"#
    ));
    for i in 0..50 {
        let result = engine.run(if i % 2 == 0 { &ok } else { &bad }, &JobContext::detached("mixed")).await;
        assert_eq!(result.is_ok(), i % 2 == 0, "run {i}: {result:?}");
    }
    // Cancelled mid-scenario: the session is still closed.
    let ctx = JobContext::detached("cancelled");
    let cancel = ctx.cancel.clone();
    let slow = spec(&format!(
        r#"{{"steps":[{{"open":{{"url":"{base}/login"}}}},{{"wait":{{"js":"false","timeoutMs":30000}}}}]}}"#
    ));
    tokio::spawn(async move {
        tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
        cancel.cancel();
    });
    assert!(matches!(engine.run(&slow, &ctx).await, Err(BrowserError::Cancelled)));
    assert_eq!(settle(our_browsers).await, Vec::<u32>::new(), "browser processes left over after the runs");
    engine.shutdown().await;
    assert_eq!(settle(our_chromedrivers).await, Vec::<u32>::new(), "chromedriver left over after shutdown");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_url_is_refused_before_any_browser_starts() {
    let _one = exclusive().await;
    let engine = engine(BrowserConfig { deny: vec!["*.example.com".into()], ..Default::default() }).await;
    let before = our_browsers();
    for (url, want) in [
        ("http://169.254.169.254/latest/meta-data/", "link-local or cloud metadata"),
        ("https://www.example.com/", "deny pattern *.example.com"),
    ] {
        let spec = spec(&format!(r#"{{"steps":[{{"open":{{"url":"{url}"}}}}]}}"#));
        let err = engine.run(&spec, &JobContext::detached("denied")).await.unwrap_err();
        assert!(matches!(err, BrowserError::UrlDenied { .. }), "{err}");
        assert!(err.to_string().contains(want), "{err}");
        assert_eq!(our_browsers(), before, "a browser started for a denied URL");
    }
    engine.shutdown().await;
}
