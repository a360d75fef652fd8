//! Every method of the `Gateway` trait against the simulator over real mTLS.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use breakwater_domain::gateway::ServiceStatus;
use breakwater_domain::policy::{
    ConfigChange, NetworkBinary, NetworkEndpoint, NetworkRule, PolicyMergeOp, PolicyStatus, SettingValue,
};
use breakwater_domain::provider::ProviderSpec;
use breakwater_domain::sandbox::{
    DeletionOutcome, ExecRequest, LogQuery, NewSandbox, SandboxPhase, WatchEvent, WatchOptions,
};
use breakwater_domain::{LabelSelector, Labels, PageRequest, ProviderName, Secret, WorkspaceName};
use breakwater_gateway::{EXEC_OUTPUT_CAP, Gateway, GatewayError, WorkspaceScope};
use common::{name, spawn, ws};
use futures::StreamExt;

/// Waits (up to 5 s) until revision `version` of `sandbox` is no longer
/// pending: fixed sleeps flake on a loaded machine.
async fn settle(t: &common::TestGateway, sandbox: &str, version: u32) {
    for _ in 0..250 {
        let st = t.gw.policy_status(&ws(), &name(sandbox), Some(version)).await.unwrap();
        if st.revision.status != PolicyStatus::Pending {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("revision {version} of {sandbox} stayed pending");
}

#[tokio::test]
async fn health_info_and_current_user() {
    let t = spawn().await;
    let health = t.gw.health().await.unwrap();
    assert_eq!(health.status, ServiceStatus::Healthy);
    assert_eq!(health.version, openshell_sim::DEFAULT_VERSION);
    let info = t.gw.gateway_info().await.unwrap();
    assert_eq!(info.version, openshell_sim::DEFAULT_VERSION);
    assert_eq!(info.compute_drivers[0].driver_name, "openshell-sim");
    let me = t.gw.current_user().await.unwrap();
    assert_eq!(me.subject, "openshell-client", "the mTLS identity is the client certificate CN");
    assert_eq!(me.identity_provider, "mtls");
}

#[tokio::test]
async fn sandbox_lifecycle_create_watch_exec_stop_start_delete() {
    let t = spawn().await;
    let created =
        t.gw.create_sandbox(&NewSandbox {
            name: Some(name("box-1")),
            labels: Labels::parse([("team", "ml")]).unwrap(),
            ..Default::default()
        })
        .await
        .unwrap();
    assert_eq!(created.phase, SandboxPhase::Provisioning);
    assert_eq!(created.conditions[0].reason, "SupervisorNotConnected");
    assert!(uuid::Uuid::parse_str(&created.id).is_ok(), "ids are UUIDs: {}", created.id);

    let ready = t.wait_phase("box-1", SandboxPhase::Ready).await;
    assert_eq!(ready.conditions[0].reason, "DependenciesReady");
    assert_eq!(ready.current_policy_version, 1);

    let out =
        t.gw.exec(
            &ws(),
            &name("box-1"),
            &ExecRequest { command: vec!["echo".into(), "hi".into()], ..Default::default() },
            EXEC_OUTPUT_CAP,
        )
        .await
        .unwrap();
    assert_eq!((out.stdout.as_str(), out.exit_code), ("hi\n", 0));

    let out =
        t.gw.exec(
            &ws(),
            &name("box-1"),
            &ExecRequest { command: vec!["stderr".into(), "oops".into()], ..Default::default() },
            EXEC_OUTPUT_CAP,
        )
        .await
        .unwrap();
    assert_eq!((out.stdout.as_str(), out.stderr.as_str(), out.exit_code), ("to stdout\n", "oops\n", 3));

    let stopping = t.gw.stop_sandbox(&ws(), &name("box-1")).await.unwrap();
    assert_eq!(stopping.phase, SandboxPhase::Stopping);
    t.wait_phase("box-1", SandboxPhase::Stopped).await;
    let err =
        t.gw.exec(&ws(), &name("box-1"), &ExecRequest { command: vec!["true".into()], ..Default::default() }, 10)
            .await
            .unwrap_err();
    assert!(matches!(err, GatewayError::FailedPrecondition { .. }), "exec on a stopped sandbox: {err:?}");
    assert!(err.to_string().contains("not ready"));

    let starting = t.gw.start_sandbox(&ws(), &name("box-1")).await.unwrap();
    assert_eq!(starting.phase, SandboxPhase::Starting);
    t.wait_phase("box-1", SandboxPhase::Ready).await;

    let del = t.gw.delete_sandbox(&ws(), &name("box-1"), false).await.unwrap();
    assert_eq!(del.outcome, DeletionOutcome::Accepted);
    assert_eq!(del.sandbox_id, created.id);
    // Deleting first, then gone; on a loaded machine the 50 ms test timing may
    // already have passed, so only a sandbox still present is checked.
    match t.gw.get_sandbox(&ws(), &name("box-1")).await {
        Ok(deleting) => {
            assert_eq!(deleting.phase, SandboxPhase::Deleting);
            assert!(deleting.deleted_at.is_some());
        }
        Err(e) => assert!(matches!(e, GatewayError::NotFound { .. }), "{e:?}"),
    }
    let mut gone = None;
    for _ in 0..250 {
        match t.gw.get_sandbox(&ws(), &name("box-1")).await {
            Err(e) => {
                gone = Some(e);
                break;
            }
            Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    assert!(matches!(gone, Some(GatewayError::NotFound { .. })), "{gone:?}");
    let again = t.gw.delete_sandbox(&ws(), &name("box-1"), true).await.unwrap();
    assert_eq!(again.outcome, DeletionOutcome::AlreadyAbsent);
    let err = t.gw.delete_sandbox(&ws(), &name("box-1"), false).await.unwrap_err();
    assert_eq!(err.code(), "not_found");
}

#[tokio::test]
async fn list_pages_and_filters_by_label() {
    let t = spawn().await;
    for i in 0..7 {
        let labels = Labels::parse([("parity", if i % 2 == 0 { "even" } else { "odd" })]).unwrap();
        t.gw.create_sandbox(&NewSandbox { name: Some(name(&format!("s-{i}"))), labels, ..Default::default() })
            .await
            .unwrap();
    }
    let mut page = PageRequest::first(3);
    let mut seen = Vec::new();
    loop {
        let p = t.gw.list_sandboxes(&WorkspaceScope::default(), &LabelSelector::default(), &page).await.unwrap();
        assert!(p.items.len() <= 3);
        seen.extend(p.items.into_iter().map(|s| s.name));
        if p.next_page_token.is_empty() {
            break;
        }
        page.page_token = p.next_page_token;
    }
    assert_eq!(seen, (0..7).map(|i| format!("s-{i}")).collect::<Vec<_>>());

    let even = t
        .gw
        .list_sandboxes(&WorkspaceScope::All, &LabelSelector::parse("parity=even").unwrap(), &PageRequest::first(100))
        .await
        .unwrap();
    assert_eq!(even.items.len(), 4);
    assert!(even.items.iter().all(|s| s.labels["parity"] == "even"));
}

#[tokio::test]
async fn logs_filter_by_level_and_source() {
    let t = spawn().await;
    t.create_ready("logs").await;
    for cmd in ["true", "false"] {
        t.gw.exec(&ws(), &name("logs"), &ExecRequest { command: vec![cmd.into()], ..Default::default() }, 100)
            .await
            .unwrap();
    }
    t.sim.inject_denial("default", "logs", "pypi.org", 443, "/usr/bin/pip").unwrap();
    let all = t.gw.sandbox_logs(&ws(), &name("logs"), &LogQuery::default()).await.unwrap();
    assert!(all.lines.len() >= 4, "{:?}", all.lines);
    assert_eq!(all.buffer_total as usize, all.lines.len());
    let warn =
        t.gw.sandbox_logs(&ws(), &name("logs"), &LogQuery { min_level: "warn".into(), ..Default::default() })
            .await
            .unwrap();
    assert_eq!(warn.lines.len(), 1);
    assert!(warn.lines[0].message.contains("denied connection to pypi.org:443"));
    let gateway_only =
        t.gw.sandbox_logs(&ws(), &name("logs"), &LogQuery { sources: vec!["gateway".into()], ..Default::default() })
            .await
            .unwrap();
    assert!(gateway_only.lines.iter().all(|l| l.source == "gateway"));
    let tail = t.gw.sandbox_logs(&ws(), &name("logs"), &LogQuery { lines: 2, ..Default::default() }).await.unwrap();
    assert_eq!(tail.lines.len(), 2);
    assert_eq!(tail.lines[1].level, "warn", "tail keeps the newest lines");
}

#[tokio::test]
async fn ssh_sessions_are_validated_and_revocable() {
    let t = spawn().await;
    t.create("ssh").await;
    let err = t.gw.create_ssh_session(&ws(), &name("ssh")).await.unwrap_err();
    assert_eq!(err.code(), "failed_precondition", "SSH before READY: {err}");
    t.wait_phase("ssh", SandboxPhase::Ready).await;
    let session = t.gw.create_ssh_session(&ws(), &name("ssh")).await.unwrap();
    assert_eq!(session.gateway_host, "127.0.0.1");
    assert_eq!(session.gateway_port, t.sim.addr().port());
    assert!(session.expires_at.unwrap() > chrono::Utc::now() + chrono::Duration::hours(23));
    assert!(!format!("{session:?}").contains(session.token.expose()), "the token never shows in debug output");
    assert_eq!(t.gw.revoke_ssh_session(&session.token, false).await.unwrap(), DeletionOutcome::Completed);
    assert_eq!(t.gw.revoke_ssh_session(&session.token, true).await.unwrap(), DeletionOutcome::AlreadyAbsent);
    assert_eq!(t.gw.revoke_ssh_session(&Secret::new("nope-nope-nope"), false).await.unwrap_err().code(), "not_found");

    // S11: a gateway answering with a hostile SSH host is refused.
    t.sim.faults().set_ssh_host_override(Some("evil;ProxyCommand=sh".into()));
    let err = t.gw.create_ssh_session(&ws(), &name("ssh")).await.unwrap_err();
    assert_eq!(err.code(), "invalid_response");
}

#[tokio::test]
async fn providers_credentials_never_come_back() {
    let t = spawn().await;
    let gh = ProviderName::parse("github").unwrap();
    let spec = ProviderSpec {
        name: gh.clone(),
        kind: "github".into(),
        credentials: [("GITHUB_TOKEN".to_owned(), Secret::new("ghp_secret"))].into_iter().collect(),
        config: BTreeMap::new(),
    };
    let created = t.gw.create_provider(&ws(), &spec).await.unwrap();
    assert_eq!(created.credential_keys, vec!["GITHUB_TOKEN"]);
    assert!(!format!("{created:?}").contains("ghp_secret"));
    assert_eq!(t.gw.create_provider(&ws(), &spec).await.unwrap_err().code(), "already_exists");

    let update = ProviderSpec {
        credentials: [("EXTRA".to_owned(), Secret::new("x")), ("GITHUB_TOKEN".to_owned(), Secret::new(""))]
            .into_iter()
            .collect(),
        ..spec.clone()
    };
    let updated = t.gw.update_provider(&ws(), &update).await.unwrap();
    assert_eq!(updated.credential_keys, vec!["EXTRA"], "an empty value deletes a credential key");

    let page = t.gw.list_providers(&ws(), &PageRequest::default()).await.unwrap();
    assert_eq!(page.items.len(), 1);
    assert_eq!(t.gw.get_provider(&ws(), &gh).await.unwrap().kind, "github");

    t.create("with-gh").await;
    let att = t.gw.attach_provider(&ws(), &name("with-gh"), &gh).await.unwrap();
    assert!(att.changed);
    assert_eq!(att.sandbox_providers, vec!["github"]);
    assert!(!t.gw.attach_provider(&ws(), &name("with-gh"), &gh).await.unwrap().changed, "attach is idempotent");
    let listed = t.gw.list_sandbox_providers(&ws(), &name("with-gh"), &PageRequest::default()).await.unwrap();
    assert_eq!(listed.items[0].name, "github");

    // S08: an attached provider cannot be deleted; the error names the sandbox.
    let err = t.gw.delete_provider(&ws(), &gh, false).await.unwrap_err();
    assert_eq!(err.code(), "failed_precondition");
    assert!(err.to_string().contains("with-gh"), "{err}");

    let det = t.gw.detach_provider(&ws(), &name("with-gh"), &gh).await.unwrap();
    assert!(det.changed && det.sandbox_providers.is_empty());
    assert_eq!(t.gw.delete_provider(&ws(), &gh, false).await.unwrap(), DeletionOutcome::Completed);
    assert_eq!(t.gw.delete_provider(&ws(), &gh, true).await.unwrap(), DeletionOutcome::AlreadyAbsent);

    let profiles = t.gw.list_provider_profiles(&ws(), &PageRequest::default()).await.unwrap();
    assert!(profiles.items.iter().any(|p| p.id == "anthropic" && p.inference_capable));
    let openai = t.gw.get_provider_profile(&ws(), "openai").await.unwrap();
    assert_eq!(openai.credentials[0].env_vars, vec!["OPENAI_API_KEY"]);
}

fn rule(name: &str, host: &str) -> NetworkRule {
    NetworkRule {
        name: name.into(),
        endpoints: vec![NetworkEndpoint { host: host.into(), port: 443, ..Default::default() }],
        binaries: vec![NetworkBinary { path: "/usr/bin/curl".into() }],
    }
}

#[tokio::test]
async fn policy_updates_make_revisions_and_respect_resource_versions() {
    let t = spawn().await;
    let ready = t.create_ready("pol").await;
    let cfg = t.gw.sandbox_config(&ws(), &name("pol")).await.unwrap();
    assert_eq!(cfg.version, 1);
    let base = cfg.policy.clone().unwrap();
    assert!(base.filesystem.is_some());

    let merge =
        ConfigChange::Merge(vec![PolicyMergeOp::AddRule { rule_name: "pypi".into(), rule: rule("pypi", "pypi.org") }]);
    let up = t.gw.update_config(&ws(), Some(&name("pol")), &merge, None).await.unwrap();
    assert_eq!(up.version, 2);
    assert_ne!(up.policy_hash, cfg.policy_hash);
    let pending = t.gw.policy_status(&ws(), &name("pol"), Some(2)).await.unwrap();
    assert_eq!(pending.revision.status, PolicyStatus::Pending);
    settle(&t, "pol", 2).await;
    let loaded = t.gw.policy_status(&ws(), &name("pol"), None).await.unwrap();
    assert_eq!((loaded.revision.version, loaded.revision.status, loaded.active_version), (2, PolicyStatus::Loaded, 2));
    let revs = t.gw.list_policy_revisions(&ws(), &name("pol"), &PageRequest::default()).await.unwrap();
    assert_eq!(
        revs.items.iter().map(|r| (r.version, r.status)).collect::<Vec<_>>(),
        vec![(2, PolicyStatus::Loaded), (1, PolicyStatus::Superseded)]
    );

    // Same effective policy again: no new revision.
    let same = t.gw.update_config(&ws(), Some(&name("pol")), &merge, None).await.unwrap();
    assert_eq!((same.version, same.policy_hash.clone()), (2, up.policy_hash.clone()));

    // Stale resource version: a classified conflict, not retried.
    let stale = ConfigChange::Merge(vec![PolicyMergeOp::AddRule {
        rule_name: "npm".into(),
        rule: rule("npm", "registry.npmjs.org"),
    }]);
    let err = t.gw.update_config(&ws(), Some(&name("pol")), &stale, Some(ready.resource_version)).await.unwrap_err();
    assert_eq!(err.code(), "conflict", "{err}");
    let fresh = t.gw.get_sandbox(&ws(), &name("pol")).await.unwrap();
    let ok = t.gw.update_config(&ws(), Some(&name("pol")), &stale, Some(fresh.resource_version)).await.unwrap();
    assert_eq!(ok.version, 3);

    // The process section is fixed on a live sandbox.
    let mut changed = base.clone();
    changed.process.as_mut().unwrap().run_as_user = "root".into();
    let err =
        t.gw.update_config(&ws(), Some(&name("pol")), &ConfigChange::ReplacePolicy(changed), None).await.unwrap_err();
    assert_eq!(err.code(), "failed_precondition");
    assert!(err.to_string().contains("process"), "{err}");

    // Validation failures carry the field that was wrong.
    let bad = ConfigChange::Merge(vec![PolicyMergeOp::AddRule { rule_name: "tld".into(), rule: rule("tld", "*.com") }]);
    let err = t.gw.update_config(&ws(), Some(&name("pol")), &bad, None).await.unwrap_err();
    let GatewayError::InvalidArgument { violations, .. } = &err else { panic!("{err:?}") };
    assert!(violations[0].field.contains("endpoints[0].host"), "{violations:?}");

    let removal = ConfigChange::Merge(vec![
        PolicyMergeOp::RemoveEndpoint { rule_name: "pypi".into(), host: "pypi.org".into(), port: 443 },
        PolicyMergeOp::RemoveRule { rule_name: "npm".into() },
    ]);
    let after = t.gw.update_config(&ws(), Some(&name("pol")), &removal, None).await.unwrap();
    assert_eq!(after.policy_hash, cfg.policy_hash, "removing what was added restores the original hash");
}

#[tokio::test]
async fn policy_revision_fails_for_a_rejected_host() {
    let t = spawn().await;
    t.create_ready("fails").await;
    t.sim.faults().set_reject_hosts(vec!["blocked.example.com".into()]);
    let change = ConfigChange::Merge(vec![PolicyMergeOp::AddRule {
        rule_name: "b".into(),
        rule: rule("b", "blocked.example.com"),
    }]);
    let up = t.gw.update_config(&ws(), Some(&name("fails")), &change, None).await.unwrap();
    settle(&t, "fails", up.version).await;
    let st = t.gw.policy_status(&ws(), &name("fails"), Some(up.version)).await.unwrap();
    assert_eq!(st.revision.status, PolicyStatus::Failed);
    assert!(st.revision.load_error.contains("blocked.example.com"));
    assert_eq!(st.active_version, 1, "the old revision stays active");
}

#[tokio::test]
async fn settings_are_typed_and_only_real_keys_are_accepted() {
    let t = spawn().await;
    let set = ConfigChange::SetSetting {
        key: "proposal_approval_mode".into(),
        value: SettingValue::String("manual".into()),
        global: true,
    };
    let r = t.gw.update_config(&ws(), None, &set, None).await.unwrap();
    assert!(r.settings_revision > 1);
    let s = t.gw.gateway_settings().await.unwrap();
    assert_eq!(s.settings["proposal_approval_mode"], SettingValue::String("manual".into()));

    // G09: a key that does not exist is refused and the message lists the real ones.
    let bad =
        ConfigChange::SetSetting { key: "ocsf_logging_enabled".into(), value: SettingValue::Bool(true), global: true };
    let err = t.gw.update_config(&ws(), None, &bad, None).await.unwrap_err();
    assert_eq!(err.code(), "invalid_argument");
    assert!(err.to_string().contains("ocsf_json_enabled"), "{err}");

    let del = ConfigChange::DeleteSetting { key: "proposal_approval_mode".into(), global: true };
    assert!(t.gw.update_config(&ws(), None, &del, None).await.unwrap().deleted);

    t.create("sets").await;
    let per =
        ConfigChange::SetSetting { key: "ocsf_json_enabled".into(), value: SettingValue::Bool(true), global: false };
    t.gw.update_config(&ws(), Some(&name("sets")), &per, None).await.unwrap();
    let cfg = t.gw.sandbox_config(&ws(), &name("sets")).await.unwrap();
    assert_eq!(cfg.settings["ocsf_json_enabled"], SettingValue::Bool(true));
}

#[tokio::test]
async fn draft_chunks_full_flow() {
    let t = spawn().await;
    t.create_ready("agent").await;
    let (w, n) = (ws(), name("agent"));
    let pypi = t.sim.inject_denial("default", "agent", "pypi.org", 443, "/usr/bin/pip").unwrap();
    let npm = t.sim.inject_denial("default", "agent", "registry.npmjs.org", 443, "/usr/bin/npm").unwrap();
    let db = t.sim.inject_denial("default", "agent", "db.internal", 5432, "/usr/bin/psql").unwrap();
    // The same denial again bumps the hit count instead of adding a chunk.
    assert_eq!(t.sim.inject_denial("default", "agent", "pypi.org", 443, "/usr/bin/pip").unwrap(), pypi);

    let draft = t.gw.draft_policy(&w, &n, "pending").await.unwrap();
    assert_eq!(draft.chunks.len(), 3);
    let chunk = draft.chunks.iter().find(|c| c.id == pypi).unwrap();
    assert_eq!(chunk.hit_count, 2);
    assert_eq!(chunk.binary, "/usr/bin/pip");
    assert!(chunk.first_seen.is_some() && chunk.last_seen.is_some());
    assert!(chunk.candidate_effective_policy.is_some() && chunk.current_effective_policy.is_some());
    let flagged = draft.chunks.iter().find(|c| c.id == db).unwrap();
    assert!(flagged.is_security_flagged() && flagged.security_notes.contains("5432"));

    // A stale review token is refused...
    let old_token = chunk.review_token.clone();
    let rebuild =
        ConfigChange::Merge(vec![PolicyMergeOp::AddRule { rule_name: "x".into(), rule: rule("x", "x.example.com") }]);
    t.gw.update_config(&w, Some(&n), &rebuild, None).await.unwrap();
    let err = t.gw.approve_chunk(&w, &n, &pypi, &old_token).await.unwrap_err();
    assert_eq!(err.code(), "failed_precondition");
    assert!(err.to_string().contains("stale"), "{err}");
    // ...and the fresh one works and bumps the policy version.
    let fresh = t.gw.draft_policy(&w, &n, "").await.unwrap();
    let token = &fresh.chunks.iter().find(|c| c.id == pypi).unwrap().review_token;
    let approved = t.gw.approve_chunk(&w, &n, &pypi, token).await.unwrap();
    assert_eq!(approved.policy_version, 3);

    let edited = NetworkRule { name: "npm_registry".into(), ..rule("npm_registry", "registry.npmjs.org") };
    t.gw.edit_chunk(&w, &n, &npm, &edited).await.unwrap();
    let all = t.gw.approve_all_chunks(&w, &n, false).await.unwrap();
    assert_eq!((all.chunks_approved, all.chunks_skipped), (1, 1), "the security-flagged chunk is skipped");
    t.gw.reject_chunk(&w, &n, &db, "no database access").await.unwrap();

    let undone = t.gw.undo_chunk(&w, &n, &npm).await.unwrap();
    assert_eq!(undone.policy_version, all.policy_version + 1);
    let revision_before_bulk = t.gw.policy_status(&w, &n, Some(approved.policy_version)).await.unwrap();
    assert_eq!(
        undone.policy_hash, revision_before_bulk.revision.policy_hash,
        "undo restores the hash from before the approval"
    );

    t.sim.inject_denial("default", "agent", "huggingface.co", 443, "/usr/bin/python3").unwrap();
    assert_eq!(t.gw.clear_chunks(&w, &n).await.unwrap(), 2, "the new chunk and the undone one were pending");
    let history = t.gw.draft_history(&w, &n).await.unwrap();
    let kinds: Vec<_> = history.iter().map(|h| h.event_type.as_str()).collect();
    for k in ["proposed", "approved", "edited", "rejected", "undone", "cleared"] {
        assert!(kinds.contains(&k), "history has {k}: {kinds:?}");
    }
}

#[tokio::test]
async fn watch_streams_status_logs_and_draft_updates_and_stops_when_dropped() {
    let t = spawn().await;
    t.create_ready("watched").await;
    let opts = WatchOptions { follow_status: true, follow_logs: true, follow_events: true, ..Default::default() };
    let mut stream = t.gw.watch_sandbox(&ws(), &name("watched"), &opts).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first, WatchEvent::Sandbox(ref s) if s.phase == SandboxPhase::Ready), "snapshot first: {first:?}");
    t.sim.inject_denial("default", "watched", "pypi.org", 443, "/usr/bin/pip").unwrap();
    let mut saw_log = false;
    let mut saw_draft = false;
    while !(saw_log && saw_draft) {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await.unwrap().unwrap().unwrap() {
            WatchEvent::Log(l) => saw_log |= l.message.contains("pypi.org"),
            WatchEvent::DraftPolicy(d) => saw_draft |= d.total_pending == 1,
            _ => {}
        }
    }
    assert_eq!(t.sim.active_watchers(), 1);
    drop(stream);
    // The gateway notices the cancellation and ends its side of the stream.
    for _ in 0..50 {
        if t.sim.active_watchers() == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(t.sim.active_watchers(), 0, "dropping the stream cancels it on the gateway");
}

#[tokio::test]
async fn watch_ends_when_the_sandbox_is_deleted() {
    let t = spawn().await;
    t.create_ready("short-lived").await;
    let opts = WatchOptions { follow_status: true, ..Default::default() };
    let mut stream = t.gw.watch_sandbox(&ws(), &name("short-lived"), &opts).await.unwrap();
    t.gw.delete_sandbox(&ws(), &name("short-lived"), false).await.unwrap();
    let mut phases = vec![];
    let collect = async {
        while let Some(ev) = stream.next().await {
            if let WatchEvent::Sandbox(s) = ev.unwrap() {
                phases.push(s.phase);
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(5), collect).await.expect("stream ends cleanly after deletion");
    assert_eq!(phases.last(), Some(&SandboxPhase::Deleting));
}

#[tokio::test]
async fn workspaces_crud() {
    let t = spawn().await;
    let team = WorkspaceName::parse("team-a").unwrap();
    let created = t.gw.create_workspace(&team, &Labels::parse([("org", "x")]).unwrap()).await.unwrap();
    assert_eq!(created.name, "team-a");
    assert_eq!(t.gw.get_workspace(&team).await.unwrap().labels["org"], "x");
    let all = t.gw.list_workspaces(&PageRequest::default()).await.unwrap();
    assert_eq!(all.items.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), vec!["default", "team-a"]);
    t.gw.create_sandbox(&NewSandbox { name: Some(name("in-team")), workspace: team.clone(), ..Default::default() })
        .await
        .unwrap();
    assert!(t.gw.get_sandbox(&ws(), &name("in-team")).await.is_err(), "sandboxes are scoped to their workspace");
    assert_eq!(t.gw.get_sandbox(&team, &name("in-team")).await.unwrap().workspace, "team-a");
    assert_eq!(t.gw.delete_workspace(&team, false).await.unwrap_err().code(), "failed_precondition");
    assert_eq!(
        t.gw.delete_workspace(&WorkspaceName::default(), false).await.unwrap_err().code(),
        "failed_precondition"
    );
    assert_eq!(
        t.gw.delete_workspace(&WorkspaceName::parse("nope").unwrap(), true).await.unwrap(),
        DeletionOutcome::AlreadyAbsent
    );
}

#[tokio::test]
async fn creating_twice_with_one_name_is_already_exists() {
    let t = spawn().await;
    t.create("dup").await;
    let err = t.gw.create_sandbox(&NewSandbox { name: Some(name("dup")), ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), "already_exists");
}
