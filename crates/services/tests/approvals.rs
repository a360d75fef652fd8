//! ApprovalService and policy pins against a simulated gateway: the cases
//! of `../shared/cases/approvals.md` (A01-A08) and the rest of the flow.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_domain::policy::{NetworkEndpoint, NetworkRule, PolicyStatus, SettingValue};
use breakwater_services::{Actor, ApprovalService, ApproveOutcome, ServiceError, WorkflowSettings};
use common::{Fixture, admin, fixture};

fn approvals(f: &Fixture) -> ApprovalService {
    ApprovalService::new(f.gateways.clone(), f.policies.clone(), f.events.clone())
}

fn deny(f: &Fixture, host: &str, port: u32) -> String {
    f.sim.inject_denial("default", "agent-1", host, port, "/usr/bin/curl").unwrap()
}

fn wf(required: u32, roles: &[&str], escalation: Option<u32>) -> WorkflowSettings {
    WorkflowSettings {
        required_approvals: required,
        required_roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        distinct_actors: true,
        escalation_timeout_minutes: escalation,
    }
}

fn person(name: &str, role: &str) -> Actor {
    Actor { name: name.into(), role: role.into(), client_ip: None }
}

#[tokio::test]
async fn injected_denials_are_pending_chunks_with_their_context() {
    let f = fixture().await;
    let svc = approvals(&f);
    let mut events = f.events.subscribe();
    let id = deny(&f, "api.openai.com", 443);
    let pending = svc.pending(&f.gw, &f.sandbox).await.unwrap();
    svc.pending(&f.gw, &f.sandbox).await.unwrap();
    match events.try_recv().unwrap() {
        breakwater_services::Event::ApprovalPending { chunk_id, .. } => assert_eq!(chunk_id, id),
        other => panic!("{other:?}"),
    }
    assert!(events.try_recv().is_err(), "announced once");
    assert_eq!(pending.len(), 1);
    let c = &pending[0];
    assert_eq!(c.id, id);
    assert_eq!(c.binary, "/usr/bin/curl");
    assert!(c.hit_count >= 1 && c.first_seen.is_some() && c.last_seen.is_some());
    assert!(!c.rationale.is_empty() && !c.review_token.is_empty());
    assert!(c.proposed_rule.as_ref().unwrap().endpoints[0].host == "api.openai.com");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn approve_with_wait_loaded_returns_once_the_version_is_loaded() {
    let f = fixture().await;
    let svc = approvals(&f);
    let id = deny(&f, "api.openai.com", 443);
    match svc.approve(&admin(), &f.gw, &f.sandbox, &id, true).await.unwrap() {
        ApproveOutcome::Approved { chunk, policy_version, loaded, .. } => {
            assert_eq!(chunk.status, "approved");
            assert_eq!(loaded, Some(true));
            let view = f.policies.get(&f.gw, &f.sandbox).await.unwrap();
            assert_eq!(view.version, policy_version);
            assert_eq!(view.status, PolicyStatus::Loaded, "loaded before the call returned");
        }
        other => panic!("{other:?}"),
    }
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a01_a_stale_review_token_is_re_read_once_and_a_vanished_chunk_is_a_clear_conflict() {
    let f = fixture().await;
    let svc = approvals(&f);
    let id = deny(&f, "api.openai.com", 443);
    // The policy changes after the draft was read: every review token goes stale.
    let before = svc.pending(&f.gw, &f.sandbox).await.unwrap()[0].review_token.clone();
    f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "other", common::rule("other.example.com")).await.unwrap();
    let after = svc.pending(&f.gw, &f.sandbox).await.unwrap()[0].review_token.clone();
    assert_ne!(before, after, "the sim refreshed the token");
    // The service always fetches the current token, so a stale one only
    // happens in a race; force one by failing the first approve.
    f.sim.faults().fail_next(Some("ApproveDraftChunk"), openshell_sim::parse_code("failed_precondition").unwrap());
    let out = svc.approve(&admin(), &f.gw, &f.sandbox, &id, false).await.unwrap();
    assert!(matches!(out, ApproveOutcome::Approved { .. }), "{out:?}");

    // A chunk that disappeared (cleared) meanwhile: a conflict that says so.
    let gone = deny(&f, "gone.example.com", 443);
    svc.clear(&admin(), &f.gw, &f.sandbox).await.unwrap();
    match svc.approve(&admin(), &f.gw, &f.sandbox, &gone, false).await.unwrap_err() {
        ServiceError::Precondition { message } => assert!(message.contains("not in the draft"), "{message}"),
        other => panic!("{other:?}"),
    }
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a02_approve_all_skips_the_security_flagged_chunk_and_says_so() {
    let f = fixture().await;
    let svc = approvals(&f);
    deny(&f, "api.openai.com", 443);
    deny(&f, "pypi.org", 443);
    deny(&f, "db.internal.example", 5432); // a database port: security notes
    let out = svc.approve_all(&admin(), &f.gw, &f.sandbox, false, false).await.unwrap();
    assert_eq!((out.approved, out.skipped), (2, 1), "{out:?}");
    let pending = svc.pending(&f.gw, &f.sandbox).await.unwrap();
    assert_eq!(pending.len(), 1);
    assert!(pending[0].is_security_flagged());
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a03_a_version_that_never_loads_times_out_naming_its_status() {
    let f = fixture().await;
    let svc = approvals(&f).with_wait_cap(Duration::from_millis(800));
    let id = deny(&f, "api.openai.com", 443);
    f.sim.faults().set_hold_policy_loads(true);
    let started = Instant::now();
    let err = svc.approve(&admin(), &f.gw, &f.sandbox, &id, true).await.unwrap_err();
    assert!(started.elapsed() >= Duration::from_millis(800));
    match err {
        ServiceError::Timeout { message } => assert!(message.contains("Pending"), "{message}"),
        other => panic!("{other:?}"),
    }
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a04_an_edit_to_a_whole_tld_is_refused_before_the_gateway_sees_it() {
    let f = fixture().await;
    let svc = approvals(&f);
    let id = deny(&f, "api.openai.com", 443);
    let calls = f.sim.faults().calls("EditDraftChunk");
    let rule = NetworkRule {
        name: "wide".into(),
        endpoints: vec![NetworkEndpoint { host: "*.com".into(), port: 443, ..Default::default() }],
        binaries: vec![],
    };
    let err = svc.edit(&admin(), &f.gw, &f.sandbox, &id, rule).await.unwrap_err();
    match err {
        ServiceError::Invalid { field, message } => {
            assert!(field.starts_with("proposed_rule"), "{field}");
            assert!(message.contains("top-level domain"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(f.sim.faults().calls("EditDraftChunk"), calls);
    // A valid edit goes through.
    let ok = NetworkRule {
        name: "openai".into(),
        endpoints: vec![NetworkEndpoint { host: "api.openai.com".into(), port: 443, ..Default::default() }],
        binaries: vec![],
    };
    svc.edit(&admin(), &f.gw, &f.sandbox, &id, ok).await.unwrap();
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a05_two_racing_votes_reach_quorum_and_approve_upstream_exactly_once() {
    let f = Arc::new(fixture().await);
    let svc = approvals(&f);
    svc.set_workflow(&admin(), &f.gw, &f.sandbox, wf(2, &["operator"], None)).await.unwrap();
    let id = deny(&f, "api.openai.com", 443);
    // One vote: below quorum, recorded and tallied.
    let first = svc.approve(&person("carol", "operator"), &f.gw, &f.sandbox, &id, false).await.unwrap();
    match first {
        ApproveOutcome::VoteRecorded { tally } => assert_eq!((tally.approvals, tally.votes_needed), (1, 1)),
        other => panic!("{other:?}"),
    }
    // A role the workflow does not count.
    let err = svc.approve(&person("vic", "viewer"), &f.gw, &f.sandbox, &id, false).await.unwrap_err();
    assert!(matches!(err, ServiceError::Forbidden { .. }), "{err:?}");

    // Two more operators vote at the same moment.
    let before = f.sim.faults().calls("ApproveDraftChunk");
    let votes = ["alice", "bob"].map(|who| {
        let (svc, f, id) = (svc.clone(), f.clone(), id.clone());
        tokio::spawn(async move { svc.approve(&person(who, "operator"), &f.gw, &f.sandbox, &id, false).await })
    });
    let results: Vec<_> = futures::future::join_all(votes).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert_eq!(f.sim.faults().calls("ApproveDraftChunk") - before, 1, "exactly one upstream approve");
    assert!(results.iter().any(|r| matches!(r, ApproveOutcome::Approved { .. })), "{results:?}");
    let tally = svc.tally(&f.gw, &f.sandbox, &id).await.unwrap();
    assert_eq!(tally.outcome, "approved");
    assert_eq!(tally.votes.len(), 3, "every vote recorded");
}

#[tokio::test]
async fn a05_one_rejection_rejects_under_a_workflow() {
    let f = fixture().await;
    let svc = approvals(&f);
    svc.set_workflow(&admin(), &f.gw, &f.sandbox, wf(3, &[], Some(60))).await.unwrap();
    let id = deny(&f, "api.openai.com", 443);
    svc.approve(&person("alice", "operator"), &f.gw, &f.sandbox, &id, false).await.unwrap();
    let chunk = svc.reject(&person("bob", "operator"), &f.gw, &f.sandbox, &id, "not needed").await.unwrap();
    assert_eq!(chunk.status, "rejected");
    assert_eq!(svc.tally(&f.gw, &f.sandbox, &id).await.unwrap().outcome, "rejected");
    assert!(matches!(
        svc.set_workflow(&admin(), &f.gw, &f.sandbox, wf(21, &[], None)).await,
        Err(ServiceError::Invalid { .. })
    ));
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a06_a_chunk_the_gateway_approves_by_itself_is_attributed_to_the_gateway() {
    let f = fixture().await;
    let svc = approvals(&f);
    let manual = deny(&f, "pypi.org", 443);
    svc.approve(&person("alice", "admin"), &f.gw, &f.sandbox, &manual, false).await.unwrap();
    f.gateways
        .set_setting(&admin(), &f.gw, "proposal_approval_mode", SettingValue::String("auto".into()))
        .await
        .unwrap();
    let auto = deny(&f, "api.openai.com", 443);
    let history = svc.history(&f.gw, &f.sandbox).await.unwrap();
    let approved: Vec<_> = history.iter().filter(|h| h.event.event_type == "approved").collect();
    let by = |id: &str| approved.iter().find(|h| h.event.chunk_id == id).map(|h| h.actor.clone());
    assert_eq!(by(&manual).as_deref(), Some("alice"));
    assert_eq!(by(&auto).as_deref(), Some("gateway"), "{history:?}");
    assert!(history.iter().filter(|h| h.event.event_type == "proposed").all(|h| h.actor == "gateway"));
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a07_approving_while_pinned_is_locked_naming_who_and_why_and_expiry_lifts_it() {
    let f = fixture().await;
    let svc = approvals(&f);
    let id = deny(&f, "api.openai.com", 443);
    let pin = f
        .policies
        .pin(&person("alice", "admin"), &f.gw, &f.sandbox, Some("release freeze".into()), None)
        .await
        .unwrap();
    let err = svc.approve(&admin(), &f.gw, &f.sandbox, &id, false).await.unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, ServiceError::Locked { .. }));
    assert!(message.contains("alice") && message.contains("release freeze"), "{message}");
    let err =
        f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "x", common::rule("x.example.com")).await.unwrap_err();
    assert!(matches!(err, ServiceError::Locked { .. }), "policy writes too");
    assert_eq!(pin.version, f.policies.get(&f.gw, &f.sandbox).await.unwrap().active_version);

    f.policies.unpin(&admin(), &f.gw, &f.sandbox).await.unwrap();
    // An expiring pin stops applying by itself: no scheduler involved.
    let soon = chrono::Utc::now() + chrono::Duration::milliseconds(300);
    f.policies.pin(&admin(), &f.gw, &f.sandbox, None, Some(soon)).await.unwrap();
    assert!(svc.approve(&admin(), &f.gw, &f.sandbox, &id, false).await.is_err());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert!(matches!(
        svc.approve(&admin(), &f.gw, &f.sandbox, &id, false).await.unwrap(),
        ApproveOutcome::Approved { .. }
    ));
    assert!(f.policies.active_pin(&f.gw, &f.sandbox).await.unwrap().is_none());
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a08_approving_the_same_chunk_twice_is_not_an_error() {
    let f = fixture().await;
    let svc = approvals(&f);
    let id = deny(&f, "api.openai.com", 443);
    svc.approve(&admin(), &f.gw, &f.sandbox, &id, false).await.unwrap();
    match svc.approve(&admin(), &f.gw, &f.sandbox, &id, false).await.unwrap() {
        ApproveOutcome::AlreadyApproved { chunk } => assert_eq!(chunk.status, "approved"),
        other => panic!("{other:?}"),
    }
    f.sim.shutdown().await;
}

#[tokio::test]
async fn undo_restores_the_previous_hash_and_reject_records_the_reason() {
    let f = fixture().await;
    let svc = approvals(&f);
    let before = f.policies.get(&f.gw, &f.sandbox).await.unwrap().policy_hash;
    let id = deny(&f, "api.openai.com", 443);
    svc.approve(&admin(), &f.gw, &f.sandbox, &id, true).await.unwrap();
    assert_ne!(f.policies.get(&f.gw, &f.sandbox).await.unwrap().policy_hash, before);
    svc.undo(&admin(), &f.gw, &f.sandbox, &id).await.unwrap();
    assert_eq!(f.policies.get(&f.gw, &f.sandbox).await.unwrap().policy_hash, before, "undo restores the hash");

    let other = deny(&f, "evil.example.com", 443);
    let chunk = svc.reject(&admin(), &f.gw, &f.sandbox, &other, "exfiltration risk").await.unwrap();
    assert_eq!(chunk.status, "rejected");
    assert_eq!(chunk.rejection_reason, "exfiltration risk");
    let draft = svc.draft(&f.gw, &f.sandbox, Some("rejected")).await.unwrap();
    assert_eq!(draft.chunks.len(), 1);
    let history = svc.history(&f.gw, &f.sandbox).await.unwrap();
    assert!(history.iter().any(|h| h.event.event_type == "undone" && h.actor == "local-admin"), "{history:?}");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn gitops_apply_under_a_workflow_is_a_proposal_applied_once_at_quorum() {
    use breakwater_services::ApplyOutcome;
    use breakwater_services::policy::ApplyMode;
    let f = fixture().await;
    let svc = approvals(&f);
    svc.set_workflow(&admin(), &f.gw, &f.sandbox, wf(2, &[], None)).await.unwrap();
    let (_, yaml) = f.policies.export(&f.gw, &f.sandbox).await.unwrap();
    let edited = yaml.replace("api.github.com", "uploads.github.com");
    let revisions = f.revision_count().await;
    let (alice, bob) = (person("alice", "operator"), person("bob", "operator"));

    let dry = svc.apply_document(&alice, &f.gw, &f.sandbox, &edited, ApplyMode::Replace, true, None);
    assert!(
        matches!(dry.await.unwrap(), ApplyOutcome::Written(w) if w.status == breakwater_services::WriteStatus::DryRun)
    );
    let first = svc.apply_document(&alice, &f.gw, &f.sandbox, &edited, ApplyMode::Replace, false, None);
    match first.await.unwrap() {
        ApplyOutcome::VoteRecorded { tally, diff } => {
            assert_eq!(tally.votes_needed, 1);
            assert_eq!(diff.diff.rules_changed[0].endpoints_added, vec!["uploads.github.com:443"]);
        }
        other @ ApplyOutcome::Written(_) => panic!("{other:?}"),
    }
    assert_eq!(f.revision_count().await, revisions, "nothing written below quorum");
    let second = svc.apply_document(&bob, &f.gw, &f.sandbox, &edited, ApplyMode::Replace, false, None);
    match second.await.unwrap() {
        ApplyOutcome::Written(w) => assert_eq!(w.status, breakwater_services::WriteStatus::Applied),
        other @ ApplyOutcome::VoteRecorded { .. } => panic!("{other:?}"),
    }
    assert_eq!(f.revision_count().await, revisions + 1);
    f.sim.shutdown().await;
}

#[tokio::test]
async fn a_chunk_waiting_past_the_escalation_timeout_is_flagged_once() {
    let f = fixture().await;
    let svc = approvals(&f);
    svc.set_workflow(&admin(), &f.gw, &f.sandbox, wf(2, &[], Some(1))).await.unwrap();
    let id = deny(&f, "api.openai.com", 443);
    svc.approve(&person("alice", "operator"), &f.gw, &f.sandbox, &id, false).await.unwrap();
    assert!(!svc.tally(&f.gw, &f.sandbox, &id).await.unwrap().escalated);
    // Alice voted two minutes ago (as far as the store knows).
    let old = breakwater_domain::approval::Vote {
        chunk_id: id.clone(),
        actor: "alice".into(),
        role: "operator".into(),
        decision: breakwater_domain::approval::Decision::Approve,
        reason: None,
        at: chrono::Utc::now() - chrono::Duration::minutes(2),
    };
    f.store.store.put_vote(f.gw.as_str(), f.sandbox.as_str(), &old).await.unwrap();
    let mut events = f.events.subscribe();
    assert!(svc.tally(&f.gw, &f.sandbox, &id).await.unwrap().escalated);
    assert!(svc.tally(&f.gw, &f.sandbox, &id).await.unwrap().escalated);
    assert!(matches!(
        events.try_recv().unwrap(),
        breakwater_services::Event::ApprovalEscalated { waiting_minutes: 2, .. }
    ));
    assert!(events.try_recv().is_err(), "announced once");
    f.sim.shutdown().await;
}

#[tokio::test]
async fn review_findings_edits_workflows_and_clears() {
    let f = fixture().await;
    let svc = approvals(&f);
    // An edit keeps the chunk's rule name and is re-checked for security:
    // approve-all skips a chunk edited to a database port on a private address.
    let id = deny(&f, "files.example.com", 443);
    let name_before = svc.pending(&f.gw, &f.sandbox).await.unwrap()[0].rule_name.clone();
    let sneaky = NetworkRule {
        name: String::new(),
        endpoints: vec![NetworkEndpoint { host: "10.0.0.5".into(), port: 5432, ..Default::default() }],
        binaries: vec![],
    };
    svc.edit(&admin(), &f.gw, &f.sandbox, &id, sneaky).await.unwrap();
    let chunk = svc.pending(&f.gw, &f.sandbox).await.unwrap().remove(0);
    assert_eq!(chunk.rule_name, name_before, "the edit kept the rule's name");
    assert!(chunk.is_security_flagged(), "Breakwater flags the edited rule itself");
    let clean = deny(&f, "pypi.org", 443);
    let out = svc.approve_all(&admin(), &f.gw, &f.sandbox, false, false).await.unwrap();
    assert_eq!((out.approved, out.skipped), (1, 1), "{out:?}");
    assert_eq!(svc.pending(&f.gw, &f.sandbox).await.unwrap()[0].id, id);
    let _ = clean;
    let empty = NetworkRule::default();
    assert!(matches!(svc.edit(&admin(), &f.gw, &f.sandbox, &id, empty).await, Err(ServiceError::Invalid { .. })));

    // A workflow for a sandbox that does not exist is refused.
    let missing = breakwater_domain::SandboxName::parse("nope").unwrap();
    assert!(svc.set_workflow(&admin(), &f.gw, &missing, wf(2, &[], None)).await.is_err());
    // Under a workflow, direct policy edits are refused: changes are proposals.
    svc.set_workflow(&admin(), &f.gw, &f.sandbox, wf(2, &[], None)).await.unwrap();
    let err =
        f.policies.add_network_rule(&admin(), &f.gw, &f.sandbox, "x", common::rule("x.example.com")).await.unwrap_err();
    assert!(matches!(&err, ServiceError::Precondition { message } if message.contains("approval workflow")), "{err:?}");
    svc.delete_workflow(&admin(), &f.gw, &f.sandbox).await.unwrap();

    // A clear is credited to the person who cleared.
    svc.clear(&person("carol", "operator"), &f.gw, &f.sandbox).await.unwrap();
    let history = svc.history(&f.gw, &f.sandbox).await.unwrap();
    let cleared: Vec<_> = history.iter().filter(|h| h.event.event_type == "cleared").collect();
    assert!(!cleared.is_empty() && cleared.iter().all(|h| h.actor == "carol"), "{history:?}");
    f.sim.shutdown().await;
}
