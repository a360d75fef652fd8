//! The live feed's queue bound: a reader that stops reading is dropped
//! (the feed ends and says it overflowed) instead of buffering forever.

mod common;

use std::time::Duration;

use breakwater_services::sandboxes::{LiveEnd, LiveFrame, LiveSettings};
use breakwater_services::{AuditService, OperationService, SandboxService};
use common::fixture;

#[tokio::test]
async fn a_reader_that_falls_behind_is_dropped_not_buffered() {
    let f = fixture().await;
    f.wait_ready().await;
    let operations = OperationService::new(f.store.store.clone(), AuditService::new(f.store.store.clone()));
    let settings =
        LiveSettings { queue: 4, heartbeat: Duration::from_secs(60), retry: Duration::from_secs(60), log_tail: 0 };
    let sandboxes =
        SandboxService::new(f.gateways.clone(), operations, f.policies.clone()).with_live_settings(settings);
    let mut feed = sandboxes.live(&f.gw, &f.sandbox).await.unwrap();
    // The snapshot first: the watch stream is open from here on.
    assert!(matches!(feed.next().await, Some(LiveFrame::Status(_))));
    for i in 0..50 {
        f.sim.inject_log("default", f.sandbox.as_str(), "info", &format!("line {i}")).unwrap();
    }
    // Not reading while the lines arrive is what a stuck client does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(Duration::from_secs(5), feed.next()).await {
        got.push(frame);
    }
    assert!(got.len() <= 4, "at most the queue: {got:?}");
    assert_eq!(feed.end(), LiveEnd::Overflowed, "the feed says why it ended");

    // A reader that keeps up gets every line.
    let mut feed = sandboxes.live(&f.gw, &f.sandbox).await.unwrap();
    assert!(matches!(feed.next().await, Some(LiveFrame::Status(_))));
    for i in 0..10 {
        f.sim.inject_log("default", f.sandbox.as_str(), "info", &format!("kept {i}")).unwrap();
        let next = tokio::time::timeout(Duration::from_secs(5), feed.next()).await.unwrap().unwrap();
        assert!(matches!(&next, LiveFrame::Log(l) if l.message == format!("kept {i}")), "{next:?}");
    }
    assert_ne!(feed.end(), LiveEnd::Overflowed);
}
