//! Retries, deadlines, version skew and outages.

mod common;

use std::time::{Duration, Instant};

use breakwater_domain::sandbox::{ExecEvent, ExecRequest, NewSandbox};
use breakwater_domain::{LabelSelector, PageRequest};
use breakwater_gateway::{Gateway, GatewayError, GrpcGateway, WorkspaceScope};
use common::{mtls_config, name, spawn, ws};
use futures::StreamExt;
use tonic::Code;

#[tokio::test]
async fn reads_are_retried_on_unavailable() {
    let t = spawn().await;
    t.sim.faults().fail_next(Some("ListSandboxes"), Code::Unavailable);
    let page =
        t.gw.list_sandboxes(&WorkspaceScope::default(), &LabelSelector::default(), &PageRequest::default()).await;
    assert!(page.is_ok(), "{page:?}");
    assert_eq!(t.sim.faults().calls("ListSandboxes"), 2, "one failure, one retry");
}

#[tokio::test]
async fn keyed_mutations_are_retried_and_applied_once() {
    let t = spawn().await;
    // The gateway fails the first attempt; the retry carries the same
    // request_id, so even a gateway that had applied it would not apply it twice.
    t.sim.faults().fail_next(Some("CreateSandbox"), Code::Unavailable);
    t.gw.create_sandbox(&NewSandbox { name: Some(name("once")), ..Default::default() }).await.unwrap();
    assert_eq!(t.sim.faults().calls("CreateSandbox"), 2);
    assert_eq!(t.sim.sandbox_count(), 1);
}

#[tokio::test]
async fn mutations_without_request_id_are_not_retried() {
    let t = spawn().await;
    t.create_ready("ssh-once").await;
    t.sim.faults().fail_next(Some("CreateSshSession"), Code::Unavailable);
    let err = t.gw.create_ssh_session(&ws(), &name("ssh-once")).await.unwrap_err();
    assert!(matches!(err, GatewayError::Unreachable { .. }), "{err:?}");
    assert_eq!(t.sim.faults().calls("CreateSshSession"), 1, "a second attempt could mint a second session");
}

#[tokio::test]
async fn non_retryable_errors_come_back_at_once() {
    let t = spawn().await;
    t.sim.faults().fail_next(Some("GetSandbox"), Code::Internal);
    let err = t.gw.get_sandbox(&ws(), &name("x")).await.unwrap_err();
    assert_eq!(err.code(), "internal");
    assert_eq!(t.sim.faults().calls("GetSandbox"), 1);
}

#[tokio::test]
async fn unimplemented_is_reported_as_version_skew() {
    // G05 / P14: a gateway of another protocol generation.
    let t = spawn().await;
    t.sim.faults().fail_next(Some("ListSandboxPolicies"), Code::Unimplemented);
    let err = t.gw.list_policy_revisions(&ws(), &name("x"), &PageRequest::default()).await.unwrap_err();
    assert!(matches!(&err, GatewayError::Unimplemented { method } if method == "ListSandboxPolicies"), "{err:?}");
    assert!(err.to_string().contains("protocol version"), "{err}");
}

#[tokio::test]
async fn calls_have_deadlines() {
    let t = spawn().await;
    let mut config = mtls_config(&t.sim);
    config.timeouts.call = Duration::from_millis(200);
    config.retry = breakwater_gateway::RetryPolicy::none();
    let gw = GrpcGateway::connect(config).await.unwrap();
    t.sim.faults().set_latency(Duration::from_secs(2));
    let started = Instant::now();
    let err = gw.health().await.unwrap_err();
    assert!(matches!(err, GatewayError::DeadlineExceeded { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
}

#[tokio::test]
async fn exec_returns_as_soon_as_the_exit_code_arrives() {
    // S02: output then an immediate close must not make us wait.
    let t = spawn().await;
    t.create_ready("fast").await;
    let started = Instant::now();
    let out =
        t.gw.exec(
            &ws(),
            &name("fast"),
            &ExecRequest { command: vec!["echo".into(), "done".into()], ..Default::default() },
            1024,
        )
        .await
        .unwrap();
    assert_eq!((out.stdout.as_str(), out.exit_code), ("done\n", 0));
    assert!(started.elapsed() < Duration::from_secs(1));
}

#[tokio::test]
async fn exec_stream_yields_chunks_then_exit_then_ends() {
    let t = spawn().await;
    t.create_ready("stream").await;
    let mut s =
        t.gw.exec_stream(
            &ws(),
            &name("stream"),
            &ExecRequest { command: vec!["stderr".into(), "x".into()], ..Default::default() },
        )
        .await
        .unwrap();
    let mut events = vec![];
    while let Some(e) = s.next().await {
        events.push(e.unwrap());
    }
    assert_eq!(
        events,
        vec![ExecEvent::Stdout(b"to stdout\n".to_vec()), ExecEvent::Stderr(b"x\n".to_vec()), ExecEvent::Exit(3)]
    );
}

#[tokio::test]
async fn exec_output_is_capped() {
    let t = spawn().await;
    t.create_ready("big").await;
    let out =
        t.gw.exec(
            &ws(),
            &name("big"),
            &ExecRequest { command: vec!["seq".into(), "100000".into()], ..Default::default() },
            1000,
        )
        .await
        .unwrap();
    assert_eq!(out.stdout.len(), 1000);
    assert!(out.truncated);
}

#[tokio::test]
async fn exec_timeout_is_enforced_by_the_gateway() {
    let t = spawn().await;
    t.create_ready("slow").await;
    let req = ExecRequest {
        command: vec!["sleep".into(), "30".into()],
        timeout: Some(Duration::from_millis(200)),
        ..Default::default()
    };
    let out = t.gw.exec(&ws(), &name("slow"), &req, 1024).await.unwrap();
    assert_eq!(out.exit_code, 124);
}

#[tokio::test]
async fn an_outage_is_unreachable_and_recovery_is_automatic() {
    let t = spawn().await;
    t.gw.health().await.unwrap();
    t.sim.set_outage(true);
    let err = t.gw.health().await.unwrap_err();
    assert!(err.is_connection_failure(), "{err:?}");
    t.sim.set_outage(false);
    // The same client reconnects on its own.
    let mut ok = false;
    for _ in 0..50 {
        if t.gw.health().await.is_ok() {
            ok = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(ok, "client recovers after the outage");
}

#[tokio::test]
async fn a_restart_drops_state() {
    let t = spawn().await;
    t.create("before-restart").await;
    t.sim.restart();
    let mut listed = None;
    for _ in 0..50 {
        if let Ok(p) =
            t.gw.list_sandboxes(&WorkspaceScope::default(), &LabelSelector::default(), &PageRequest::default()).await
        {
            listed = Some(p);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(listed.expect("gateway is back").items.is_empty());
}

#[tokio::test]
async fn the_sim_holds_ten_thousand_sandboxes() {
    let t = spawn().await;
    t.sim.seed_sandboxes("default", 10_000).await.unwrap();
    let mut page = PageRequest::first(1000);
    let mut total = 0;
    loop {
        let p = t.gw.list_sandboxes(&WorkspaceScope::default(), &LabelSelector::default(), &page).await.unwrap();
        total += p.items.len();
        if p.next_page_token.is_empty() {
            break;
        }
        page.page_token = p.next_page_token;
    }
    assert_eq!(total, 10_000);
    assert!(t.gw.get_sandbox(&ws(), &name("sim-9999")).await.is_ok());
}

#[tokio::test]
async fn merge_operations_are_applied_in_the_callers_order() {
    use breakwater_domain::policy::{ConfigChange, NetworkBinary, NetworkEndpoint, NetworkRule, PolicyMergeOp};
    let t = spawn().await;
    t.create_ready("ordered").await;
    let rule = NetworkRule {
        name: "gh".into(),
        endpoints: vec![NetworkEndpoint { host: "api.github.com".into(), port: 443, ..Default::default() }],
        binaries: vec![NetworkBinary { path: "/usr/bin/curl".into() }, NetworkBinary { path: "/usr/bin/gh".into() }],
    };
    let ops = ConfigChange::Merge(vec![
        PolicyMergeOp::AddRule { rule_name: "gh".into(), rule },
        PolicyMergeOp::RemoveBinary { rule_name: "gh".into(), binary_path: "/usr/bin/curl".into() },
    ]);
    t.gw.update_config(&ws(), Some(&name("ordered")), &ops, None).await.expect("add, then remove from what was added");
    tokio::time::sleep(Duration::from_millis(150)).await;
    let policy = t.gw.sandbox_config(&ws(), &name("ordered")).await.unwrap().policy.unwrap();
    assert_eq!(policy.network_policies["gh"].binaries, vec![NetworkBinary { path: "/usr/bin/gh".into() }]);
}

#[tokio::test]
async fn bad_exec_requests_are_invalid_arguments_not_config_errors() {
    let t = spawn().await;
    let err = t.gw.exec(&ws(), &name("x"), &ExecRequest::default(), 10).await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    let huge = ExecRequest {
        command: vec!["true".into()],
        timeout: Some(Duration::from_secs(u64::MAX)),
        ..Default::default()
    };
    let err = t.gw.exec(&ws(), &name("x"), &huge, 10).await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument", "no overflow panic");
}
