//! PolicyService against a real simulated gateway over mTLS: reads,
//! rule-by-rule edits, replace, presets, revisions, diffs, GitOps, and the
//! policy cases of `../shared/cases/policy.md` that need a gateway.

mod common;

use std::sync::Arc;

use breakwater_domain::policy::{Policy, PolicyStatus, ProcessPolicy};
use breakwater_gateway::GatewayError;
use breakwater_services::policy::{ApplyMode, PathAccess};
use breakwater_services::{ServiceError, WriteStatus};
use common::{admin, fixture, rule};

#[tokio::test]
async fn read_edit_rule_by_rule_and_no_op_writes() {
    let f = fixture().await;
    let view = f.policies.get(&f.gw, &f.sandbox).await.unwrap();
    assert!(view.policy.network_policies.contains_key("github"));
    let start = view.version;
    let mut events = f.events.subscribe();

    let out = f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "pypi", rule("pypi.org")).await.unwrap();
    assert_eq!(out.status, WriteStatus::Applied);
    assert_eq!(out.version, start + 1);
    assert_eq!(out.diff.rules_added, vec!["pypi"]);
    assert!(out.text_diff.contains("+    name: pypi") || out.text_diff.contains("pypi.org"), "{}", out.text_diff);
    let ev = events.try_recv().unwrap();
    assert!(matches!(ev, breakwater_services::Event::PolicyUpdated { version, .. } if version == start + 1));

    // The same rule again: nothing to send, no new revision.
    let revisions = f.revision_count().await;
    let again = f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "pypi", rule("pypi.org")).await.unwrap();
    assert_eq!(again.status, WriteStatus::UpToDate);
    assert_eq!(f.revision_count().await, revisions);

    let out = f.policies.delete_network_rule(&admin(), &f.gw, &f.sandbox, "pypi").await.unwrap();
    assert_eq!(out.diff.rules_removed, vec!["pypi"]);
    let err = f.policies.delete_network_rule(&admin(), &f.gw, &f.sandbox, "pypi").await.unwrap_err();
    assert!(matches!(err, ServiceError::NotFound { .. }), "{err:?}");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn p01_an_invalid_rule_is_refused_before_any_call_to_the_gateway() {
    let f = fixture().await;
    let before = f.sim.faults().calls("UpdateConfig");
    let err = f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "wide", rule("*.com")).await.unwrap_err();
    match err {
        ServiceError::Invalid { field, message } => {
            assert_eq!(field, "network_policies.wide.endpoints[0].host");
            assert!(message.contains("top-level domain"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.sim.faults().calls("UpdateConfig"), before);
    f.sim.shutdown().await;
}

#[tokio::test]
async fn p05_a_trailing_dot_never_reaches_the_gateway() {
    let f = fixture().await;
    f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "mcp", rule("mcp.example.com.")).await.unwrap();
    let view = f.policies.get(&f.gw, &f.sandbox).await.unwrap();
    assert_eq!(view.policy.network_policies["mcp"].endpoints[0].host, "mcp.example.com");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn p09_a_replace_keeps_omitted_fixed_sections_and_refuses_to_change_them() {
    let f = fixture().await;
    // The YAML omits `process:`: the live process section is kept.
    let mut next = Policy::default();
    next.network_policies.insert("npm".into(), rule("registry.npmjs.org"));
    let out = f.policies.update(&admin(), &f.gw, &f.sandbox, next).await.unwrap();
    assert_eq!(out.status, WriteStatus::Applied);
    assert_eq!(out.diff.rules_removed, vec!["github"]);
    let view = f.policies.get(&f.gw, &f.sandbox).await.unwrap();
    assert_eq!(view.policy.process.as_ref().unwrap().run_as_user, "sandbox", "not silently dropped");

    // Changing run_as_user on a running sandbox: refused, naming the section.
    let mut changed = view.policy.clone();
    changed.process = Some(ProcessPolicy { run_as_user: "root".into(), run_as_group: "root".into() });
    let err = f.policies.update(&admin(), &f.gw, &f.sandbox, changed).await.unwrap_err();
    match err {
        ServiceError::Precondition { message } => assert!(message.contains("process section"), "{message}"),
        other => panic!("{other:?}"),
    }
    let err =
        f.policies.add_filesystem_path(&admin(), &f.gw, &f.sandbox, "/data", PathAccess::ReadOnly).await.unwrap_err();
    assert!(err.to_string().contains("filesystem_policy section"), "{err}");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a_preset_preview_matches_what_applying_it_does() {
    let f = fixture().await;
    let preview = f.policies.preview_preset(&f.gw, &f.sandbox, "pypi").await.unwrap();
    assert_eq!(preview.merge.rules_added, vec!["pypi"]);
    assert!(preview.conflicts.is_empty());
    let applied = f.policies.apply_preset(&admin(), &f.gw, &f.sandbox, "pypi", false).await.unwrap();
    assert_eq!(applied.status, WriteStatus::Applied);
    assert_eq!(applied.diff, preview.diff, "the preview said what would happen");
    assert_eq!(
        applied.text_diff.lines().skip(2).collect::<Vec<_>>(),
        preview.text_diff.lines().skip(2).collect::<Vec<_>>()
    );
    f.wait_loaded().await;
    let view = f.policies.get(&f.gw, &f.sandbox).await.unwrap();
    assert_eq!(view.version, applied.version);
    assert_eq!(view.status, PolicyStatus::Loaded);
    let hosts: Vec<_> = view.policy.network_policies["pypi"].endpoints.iter().map(|e| e.host.clone()).collect();
    assert_eq!(hosts, ["pypi.org", "files.pythonhosted.org"]);
    // Applying it again changes nothing.
    let again = f.policies.apply_preset(&admin(), &f.gw, &f.sandbox, "pypi", false).await.unwrap();
    assert_eq!(again.status, WriteStatus::UpToDate);
    assert!(matches!(
        f.policies.apply_preset(&admin(), &f.gw, &f.sandbox, "no-such", false).await,
        Err(ServiceError::NotFound { .. })
    ));
    f.sim.shutdown().await;
}

#[tokio::test]
async fn p11_an_exported_policy_re_applied_unchanged_is_up_to_date() {
    let f = fixture().await;
    let (doc, yaml) = f.policies.export(&f.gw, &f.sandbox).await.unwrap();
    assert!(yaml.starts_with("metadata:"), "{yaml}");
    assert!(yaml.contains(&format!("policy_hash: {}", doc.metadata.policy_hash)), "{yaml}");
    let revisions = f.revision_count().await;
    let out = f
        .policies
        .apply_document(&admin(), &f.gw, &f.sandbox, &yaml, ApplyMode::Replace, false, Some(&doc.metadata.policy_hash))
        .await
        .unwrap();
    assert_eq!(out.status, WriteStatus::UpToDate);
    assert_eq!(f.revision_count().await, revisions, "no new revision");

    // An edited export: a dry run shows the change and sends nothing.
    let edited = yaml.replace("api.github.com", "uploads.github.com");
    let dry =
        f.policies.apply_document(&admin(), &f.gw, &f.sandbox, &edited, ApplyMode::Replace, true, None).await.unwrap();
    assert_eq!(dry.status, WriteStatus::DryRun);
    assert_eq!(dry.diff.rules_changed[0].endpoints_added, vec!["uploads.github.com:443"]);
    assert_eq!(f.revision_count().await, revisions);

    // Applied against a stale version: 409 with the current hash.
    let applied = f
        .policies
        .apply_document(
            &admin(),
            &f.gw,
            &f.sandbox,
            &edited,
            ApplyMode::Replace,
            false,
            Some(&doc.metadata.policy_hash),
        )
        .await
        .unwrap();
    assert_eq!(applied.status, WriteStatus::Applied);
    let err = f
        .policies
        .apply_document(&admin(), &f.gw, &f.sandbox, &yaml, ApplyMode::Replace, false, Some(&doc.metadata.policy_hash))
        .await
        .unwrap_err();
    match err {
        ServiceError::StaleVersion { current_hash, current_version, .. } => {
            assert_eq!(current_hash, applied.policy_hash);
            assert_eq!(current_version, applied.version);
        }
        other => panic!("{other:?}"),
    }

    // Merge mode adds rules and keeps the rest.
    let bare = "network_policies:\n  slack:\n    endpoints: [{host: slack.com, port: 443}]\n";
    let merged =
        f.policies.apply_document(&admin(), &f.gw, &f.sandbox, bare, ApplyMode::Merge, false, None).await.unwrap();
    assert_eq!(merged.diff.rules_added, vec!["slack"]);
    assert!(merged.diff.rules_removed.is_empty());
    f.sim.shutdown().await;
}

#[tokio::test]
async fn p15_revisions_and_diffs() {
    let f = fixture().await;
    let first = f.policies.get(&f.gw, &f.sandbox).await.unwrap().version;
    f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "a", rule("a.example.com")).await.unwrap();
    let out = f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "b", rule("b.example.com")).await.unwrap();
    f.wait_loaded().await;

    let (same, text) = f.policies.diff_revisions(&f.gw, &f.sandbox, out.version, out.version).await.unwrap();
    assert!(same.is_empty() && text.is_empty());
    let (d, text) = f.policies.diff_revisions(&f.gw, &f.sandbox, first, out.version).await.unwrap();
    assert_eq!(d.rules_added, vec!["a", "b"]);
    assert!(text.starts_with(&format!("--- version {first}")), "{text}");

    let (page, more) = f.policies.revisions(&f.gw, &f.sandbox, 1, 0).await.unwrap();
    assert_eq!(page.len(), 1);
    assert!(more);
    assert_eq!(page[0].version, out.version, "newest first");
    assert_eq!(page[0].status, PolicyStatus::Loaded);
    let (all, more) = f.policies.revisions(&f.gw, &f.sandbox, 100, 0).await.unwrap();
    assert!(!more);
    assert!(all.iter().any(|r| r.status == PolicyStatus::Superseded), "{all:?}");
    assert!(matches!(
        f.policies.version(&f.gw, &f.sandbox, 999).await,
        Err(ServiceError::Gateway(GatewayError::NotFound { .. }))
    ));
    f.sim.shutdown().await;
}

#[tokio::test]
async fn concurrent_writes_to_different_rules_both_land() {
    let f = Arc::new(fixture().await);
    let writes = (0..4).map(|i| {
        let f = f.clone();
        tokio::spawn(async move {
            f.policies
                .add_network_rule(&admin(), &f.gw, &f.sandbox, &format!("r{i}"), rule(&format!("h{i}.example.com")))
                .await
        })
    });
    let mut applied = 0;
    for r in futures::future::join_all(writes).await {
        match r.unwrap() {
            Ok(_) => applied += 1,
            // Two re-reads lost to the others: a clear conflict, never a lost write.
            Err(ServiceError::Gateway(GatewayError::Conflict { .. })) => {}
            Err(e) => panic!("{e:?}"),
        }
    }
    let view = f.policies.get(&f.gw, &f.sandbox).await.unwrap();
    let present = (0..4).filter(|i| view.policy.network_policies.contains_key(&format!("r{i}"))).count();
    assert_eq!(present, applied, "every write that succeeded is in the policy");
    assert!(applied >= 2, "the retry lets a conflicting write through");
}

#[tokio::test]
async fn p14_unimplemented_policy_writes_say_the_gateway_version_lacks_them() {
    let f = fixture().await;
    f.sim.faults().fail_next(Some("UpdateConfig"), openshell_sim::parse_code("unimplemented").unwrap());
    let err = f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "x", rule("x.example.com")).await.unwrap_err();
    assert!(matches!(err, ServiceError::Gateway(GatewayError::Unimplemented { .. })), "{err:?}");
    assert!(err.to_string().contains("version"), "{err}");
    f.sim.shutdown().await;
}
