//! The simulator's behaviour as a raw gRPC client sees it, for what the
//! domain-typed client deliberately cannot express (malformed requests,
//! supervisor-only calls, request ids).

use std::time::Duration;

use breakwater_wire::openshell::v1::open_shell_client::OpenShellClient;
use breakwater_wire::{datamodel as dm, v1};
use openshell_sim::{ProvisioningMode, Sim, SimConfig, SimTls};
use tonic::Code;
use tonic::transport::Channel;

async fn plaintext() -> (Sim, OpenShellClient<Channel>) {
    let mut config = SimConfig::for_tests().unwrap();
    config.tls = SimTls::Plaintext;
    let sim = Sim::start(config).await.unwrap();
    let client = OpenShellClient::connect(format!("http://{}", sim.endpoint())).await.unwrap();
    (sim, client)
}

fn default_ws() -> Option<dm::WorkspaceSelector> {
    Some(dm::WorkspaceSelector { selection: Some(dm::workspace_selector::Selection::Workspace("default".into())) })
}

fn create(name: &str) -> v1::CreateSandboxRequest {
    v1::CreateSandboxRequest { name: name.into(), workspace_scope: default_ws(), ..Default::default() }
}

async fn phase_after(client: &mut OpenShellClient<Channel>, name: &str, wait: Duration) -> i32 {
    tokio::time::sleep(wait).await;
    let sb = client
        .get_sandbox(v1::GetSandboxRequest { name: name.into(), workspace_scope: default_ws() })
        .await
        .unwrap()
        .into_inner();
    sb.sandbox.unwrap().status.unwrap().phase
}

#[tokio::test]
async fn supervisor_only_rpcs_are_permission_denied_for_operators() {
    let (_sim, mut client) = plaintext().await;
    let err = client.report_policy_status(v1::ReportPolicyStatusRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(err.message(), "this method requires a sandbox principal");
    let err = client.submit_policy_analysis(v1::SubmitPolicyAnalysisRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client.issue_sandbox_token(v1::IssueSandboxTokenRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn workspace_scope_is_required_and_all_workspaces_only_lists() {
    let (_sim, mut client) = plaintext().await;
    let err = client.get_sandbox(v1::GetSandboxRequest { name: "x".into(), workspace_scope: None }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().contains("workspace_scope"), "{}", err.message());
    let all = Some(dm::WorkspaceSelector {
        selection: Some(dm::workspace_selector::Selection::AllWorkspaces(dm::AllWorkspaces {})),
    });
    let err =
        client.get_sandbox(v1::GetSandboxRequest { name: "x".into(), workspace_scope: all.clone() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let listed = client.list_sandboxes(v1::ListSandboxesRequest { workspace_scope: all, ..Default::default() }).await;
    assert!(listed.is_ok());
    let err = client
        .list_sandboxes(v1::ListSandboxesRequest {
            workspace_scope: default_ws(),
            page_token: "garbage".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn bad_names_are_rejected_with_field_details() {
    let (_sim, mut client) = plaintext().await;
    let err = client.create_sandbox(create("Not_A_Name")).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(!err.details().is_empty(), "google.rpc details are attached");
}

#[tokio::test]
async fn a_repeated_request_id_gives_the_same_answer_once() {
    let (sim, mut client) = plaintext().await;
    let mut req = create("idem");
    req.request_id = "req-1".into();
    let a = client.create_sandbox(req.clone()).await.unwrap().into_inner();
    let b = client.create_sandbox(req).await.unwrap().into_inner();
    assert_eq!(a.sandbox.unwrap().metadata.unwrap().id, b.sandbox.unwrap().metadata.unwrap().id);
    assert_eq!(sim.sandbox_count(), 1);
}

#[tokio::test]
async fn provisioning_can_fail_or_hang() {
    let (sim, mut client) = plaintext().await;
    sim.faults().set_provisioning(ProvisioningMode::Fail);
    client.create_sandbox(create("fails")).await.unwrap();
    assert_eq!(phase_after(&mut client, "fails", Duration::from_millis(300)).await, v1::SandboxPhase::Error as i32);
    sim.faults().set_provisioning(ProvisioningMode::Hang);
    client.create_sandbox(create("hangs")).await.unwrap();
    assert_eq!(
        phase_after(&mut client, "hangs", Duration::from_millis(300)).await,
        v1::SandboxPhase::Provisioning as i32
    );
}

#[tokio::test]
async fn failure_rates_fail_that_share_of_calls() {
    let (sim, mut client) = plaintext().await;
    sim.faults().set_failure_rate(Code::Unavailable, 1.0);
    let err = client.health(v1::HealthRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable);
    sim.faults().set_failure_rate(Code::Unavailable, 0.0);
    assert!(client.health(v1::HealthRequest {}).await.is_ok());
}

#[tokio::test]
async fn auto_approval_mode_approves_unflagged_chunks_itself() {
    let (sim, mut client) = plaintext().await;
    client
        .update_config(v1::UpdateConfigRequest {
            global: true,
            setting_key: "proposal_approval_mode".into(),
            setting_value: Some(breakwater_wire::sandbox::SettingValue {
                value: Some(breakwater_wire::sandbox::setting_value::Value::StringValue("auto".into())),
            }),
            ..Default::default()
        })
        .await
        .unwrap();
    client.create_sandbox(create("auto")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let plain = sim.inject_denial("default", "auto", "pypi.org", 443, "/usr/bin/pip").unwrap();
    let flagged = sim.inject_denial("default", "auto", "db.internal", 5432, "/usr/bin/psql").unwrap();
    let draft = client
        .get_draft_policy(v1::GetDraftPolicyRequest {
            sandbox: "auto".into(),
            workspace_scope: default_ws(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let status = |id: &str| draft.chunks.iter().find(|c| c.id == id).unwrap().status.clone();
    assert_eq!(status(&plain), "approved");
    assert_eq!(status(&flagged), "pending", "security-flagged chunks still wait for a human");
    let history = client
        .get_draft_history(v1::GetDraftHistoryRequest { sandbox: "auto".into(), workspace_scope: default_ws() })
        .await
        .unwrap()
        .into_inner();
    assert!(history.entries.iter().any(|e| e.event_type == "approved" && e.description.contains("gateway")));
}

#[tokio::test]
async fn an_absurd_page_token_is_invalid_not_a_crash() {
    let (_sim, mut client) = plaintext().await;
    let err = client
        .list_sandboxes(v1::ListSandboxesRequest {
            workspace_scope: default_ws(),
            page_token: "pffffffffffffffff".into(),
            ..Default::default()
        })
        .await;
    // Past the end is an empty last page, never a panic.
    let page = err.unwrap().into_inner();
    assert!(page.sandboxes.is_empty() && page.next_page_token.is_empty());
}

#[tokio::test]
async fn request_ids_are_scoped_to_their_method() {
    let (sim, mut client) = plaintext().await;
    let mut req = create("first");
    req.request_id = "shared-id".into();
    client.create_sandbox(req).await.unwrap();
    let ws = client
        .create_workspace(v1::CreateWorkspaceRequest {
            name: "team".into(),
            request_id: "shared-id".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ws.workspace.unwrap().metadata.unwrap().name, "team");
    assert_eq!(sim.sandbox_count(), 1);
}

#[tokio::test]
async fn retried_rejects_and_clears_answer_like_the_first_time() {
    let (sim, mut client) = plaintext().await;
    client.create_sandbox(create("idem-drafts")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let chunk = sim.inject_denial("default", "idem-drafts", "pypi.org", 443, "/usr/bin/pip").unwrap();
    let reject = v1::RejectDraftChunkRequest {
        sandbox: "idem-drafts".into(),
        chunk_id: chunk,
        reason: "no".into(),
        workspace_scope: default_ws(),
        request_id: "rej-1".into(),
    };
    client.reject_draft_chunk(reject.clone()).await.unwrap();
    client.reject_draft_chunk(reject).await.expect("the repeat is answered from the first outcome");
    sim.inject_denial("default", "idem-drafts", "npmjs.org", 443, "/usr/bin/npm").unwrap();
    let clear = v1::ClearDraftChunksRequest {
        sandbox: "idem-drafts".into(),
        workspace_scope: default_ws(),
        request_id: "clr-1".into(),
    };
    let a = client.clear_draft_chunks(clear.clone()).await.unwrap().into_inner();
    let b = client.clear_draft_chunks(clear).await.unwrap().into_inner();
    assert_eq!((a.chunks_cleared, b.chunks_cleared), (1, 1));
}

#[tokio::test]
async fn settings_values_and_scopes_are_checked() {
    let (_sim, mut client) = plaintext().await;
    let string = |s: &str| {
        Some(breakwater_wire::sandbox::SettingValue {
            value: Some(breakwater_wire::sandbox::setting_value::Value::StringValue(s.into())),
        })
    };
    let global = |key: &str, value| v1::UpdateConfigRequest {
        global: true,
        setting_key: key.into(),
        setting_value: value,
        ..Default::default()
    };
    let err = client.update_config(global("proposal_approval_mode", string("banana"))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = client.update_config(global("ocsf_json_enabled", string("yes"))).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let mut no_sandbox = global("ocsf_json_enabled", None);
    no_sandbox.global = false;
    let err = client.update_config(no_sandbox).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "a sandbox setting needs a sandbox");
}

#[tokio::test]
async fn deleting_a_sandbox_ends_a_running_exec() {
    let (_sim, mut client) = plaintext().await;
    client.create_sandbox(create("doomed")).await.unwrap();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let mut stream = client
        .exec_sandbox(v1::ExecSandboxRequest {
            sandbox: "doomed".into(),
            command: vec!["sleep".into(), "30".into()],
            workspace_scope: default_ws(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    client
        .delete_sandbox(v1::DeleteSandboxRequest {
            name: "doomed".into(),
            workspace_scope: default_ws(),
            ..Default::default()
        })
        .await
        .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("exec ends promptly");
    assert_eq!(end.unwrap_err().code(), Code::Aborted);
}
