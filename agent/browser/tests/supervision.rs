use crate::common::*;
use baton_browser::BrowserConfig;
use baton_proto::context::JobContext;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chromedriver_killed_mid_run_is_restarted_and_the_next_run_succeeds() {
    let _one = exclusive().await;
    let base = site().await;
    let engine = engine(BrowserConfig::default()).await;
    let drivers = our_chromedrivers();
    assert_eq!(drivers.len(), 1, "one supervised chromedriver: {drivers:?}");
    let slow = spec(&format!(
        r#"{{"steps":[{{"open":{{"url":"{base}/login"}}}},{{"wait":{{"js":"false","timeoutMs":20000}}}}]}}"#
    ));
    let killer = tokio::spawn(async move {
        // Kill it once the browser is up and the wait is running.
        for _ in 0..200 {
            if !our_browsers().is_empty() {
                tokio::time::sleep(Duration::from_millis(700)).await;
                kill(drivers[0]);
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("no browser started");
    });
    let broken = engine.run(&slow, &JobContext::detached("killed")).await;
    killer.await.unwrap();
    assert!(broken.is_err(), "the run whose driver died fails");
    let report =
        engine.run(&login_spec(&base, ""), &JobContext::detached("after")).await.expect("the next run succeeds");
    assert!(report.repeats[0].steps[0].page.is_some());
    assert_eq!(settle(our_browsers).await, Vec::<u32>::new(), "the orphaned browser was cleaned up");
    engine.shutdown().await;
}
