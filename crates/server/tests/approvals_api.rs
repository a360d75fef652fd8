//! The approval, workflow and pin routes over real HTTP against a simulated
//! gateway: success and error statuses (200, 202, 400, 403, 404, 409, 423, 504).

mod common;

use common::{P, setup};
use serde_json::json;

const A: &str = "/api/gateways/gw/sandboxes/agent-1/approvals";

#[tokio::test]
async fn the_inbox_approve_reject_undo_clear_and_history() {
    let (app, s) = setup().await;
    let id = s.inject_denial("default", "agent-1", "api.openai.com", 443, "/usr/bin/curl").unwrap();
    let (status, pending) = app.get(&format!("{A}/pending")).await;
    assert_eq!(status, 200);
    assert_eq!(pending[0]["id"], id.as_str());
    assert_eq!(pending[0]["binary"], "/usr/bin/curl");
    let (status, draft) = app.get(&format!("{A}?status_filter=pending")).await;
    assert_eq!(status, 200);
    assert_eq!(draft["chunks"].as_array().unwrap().len(), 1);

    let (status, body) = app.post(&format!("{A}/{id}/approve?wait_loaded=true"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "approved");
    assert_eq!(body["loaded"], true);
    assert_eq!(body["chunk"]["status"], "approved");
    // A08 over HTTP: the second approve is 200, already approved.
    let (status, body) = app.post(&format!("{A}/{id}/approve"), &json!({})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("already_approved")));

    let (status, body) = app.post(&format!("{A}/{id}/undo"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    let other = s.inject_denial("default", "agent-1", "evil.example.com", 443, "/usr/bin/curl").unwrap();
    let (status, body) = app.post(&format!("{A}/{other}/reject"), &json!({"reason": "no"})).await;
    assert_eq!((status, body["status"].as_str()), (200, Some("rejected")), "{body}");
    let (status, body) = app.post(&format!("{A}/{other}/approve"), &json!({})).await;
    assert_eq!(status, 409, "a rejected chunk cannot be approved: {body}");
    assert_eq!(app.post(&format!("{A}/nope/approve"), &json!({})).await.0, 409);

    let (status, history) = app.get(&format!("{A}/history")).await;
    assert_eq!(status, 200);
    let actors: Vec<_> = history
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h["event_type"].as_str().unwrap(), h["actor"].as_str().unwrap()))
        .collect();
    assert!(actors.contains(&("approved", "local-admin")), "{actors:?}");
    assert!(actors.contains(&("proposed", "gateway")), "{actors:?}");

    s.inject_denial("default", "agent-1", "x.example.com", 443, "/usr/bin/curl").unwrap();
    let (status, body) = app.post(&format!("{A}/clear"), &json!({})).await;
    assert_eq!(status, 200);
    assert!(body["cleared"].as_u64().unwrap() >= 1);
    let (_, audit) = app.get("/api/audit?action=approval.approved").await;
    assert_eq!(audit["total"], 1);
    s.shutdown().await;
}

#[tokio::test]
async fn approve_all_edit_and_their_errors() {
    let (app, s) = setup().await;
    s.inject_denial("default", "agent-1", "api.openai.com", 443, "/usr/bin/curl").unwrap();
    s.inject_denial("default", "agent-1", "pypi.org", 443, "/usr/bin/pip").unwrap();
    let flagged = s.inject_denial("default", "agent-1", "10.0.0.5", 5432, "/usr/bin/psql").unwrap();
    // A04 over HTTP: 400 before the gateway is called.
    let (status, body) = app
        .post(
            &format!("{A}/{flagged}/edit"),
            &json!({"proposed_rule": {"name": "db", "endpoints": [{"host": "*.com", "port": 443}]}}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = app.post(&format!("{A}/approve-all"), &json!({"include_security_flagged": false})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!((body["approved"].as_u64(), body["skipped"].as_u64()), (Some(2), Some(1)), "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn a03_wait_loaded_on_a_sandbox_that_never_loads_is_504() {
    let (app, s) = setup().await;
    let id = s.inject_denial("default", "agent-1", "api.openai.com", 443, "/usr/bin/curl").unwrap();
    s.faults().set_hold_policy_loads(true);
    let (status, body) = app.post(&format!("{A}/{id}/approve?wait_loaded=true"), &json!({})).await;
    assert_eq!(status, 504, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("last seen status is Pending"), "{body}");
    s.shutdown().await;
}

#[tokio::test]
async fn workflows_vote_with_202_and_pins_lock_with_423() {
    let (app, s) = setup().await;
    let wf = "/api/gateways/gw/sandboxes/agent-1/approval-workflow";
    assert_eq!(app.get(wf).await.0, 404);
    let r = app.http.put(format!("{}{wf}", app.base)).json(&json!({"required_approvals": 2})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = app.http.put(format!("{}{wf}", app.base)).json(&json!({"required_approvals": 0})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = app
        .http
        .put(format!("{}{wf}", app.base))
        .json(&json!({"required_approvals": 1, "required_roles": ["chef"]}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);

    let id = s.inject_denial("default", "agent-1", "api.openai.com", 443, "/usr/bin/curl").unwrap();
    let (status, body) = app.post(&format!("{A}/{id}/approve"), &json!({})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "vote_recorded");
    assert_eq!(body["tally"]["votes_needed"], 1);
    let (status, tally) = app.get(&format!("{A}/{id}/decisions")).await;
    assert_eq!(status, 200);
    assert_eq!(tally["approvals"], 1);
    // GitOps apply under the workflow: a proposal, 202 until quorum.
    let (_, export) = app.get(&format!("{P}/export")).await;
    let edited = export["yaml"].as_str().unwrap().replace("api.github.com", "uploads.github.com");
    let (status, body) = app.post(&format!("{P}/apply"), &json!({"yaml": edited})).await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "vote_recorded");
    assert_eq!(body["votes_needed"], 1);
    assert!(body["chunk_id"].as_str().unwrap().starts_with("policy.apply:"));
    assert_eq!(app.delete(wf).await.0, 200);
    assert_eq!(app.delete(wf).await.0, 404);

    // The pin.
    let pin = format!("{P}/pin");
    assert_eq!(app.get(&pin).await.0, 404);
    let (status, body) = app.post(&pin, &json!({"reason": "release freeze"})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["pinned_by"], "local-admin");
    let (status, body) = app.post(&format!("{A}/{id}/approve"), &json!({})).await;
    assert_eq!(status, 423, "{body}");
    assert_eq!(body["code"], "POLICY_PINNED");
    assert_eq!(body["pinned_by"], "local-admin");
    assert_eq!(body["reason"], "release freeze");
    let (status, _) = app
        .post(
            &format!("{P}/network-rules"),
            &json!({"key": "x", "rule": {"endpoints": [{"host": "x.example.com", "port": 443}]}}),
        )
        .await;
    assert_eq!(status, 423, "policy writes are locked too");
    let (status, _) = app.post(&pin, &json!({"expires_at": "2000-01-01T00:00:00Z"})).await;
    assert_eq!(status, 400, "an expiry in the past");
    let r = app.http.delete(format!("{}{pin}", app.base)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 204);
    assert_eq!(app.delete(&pin).await.0, 404);
    let (status, body) = app.post(&format!("{A}/{id}/approve"), &json!({})).await;
    assert_eq!(status, 200, "{body}");
    s.shutdown().await;
}
