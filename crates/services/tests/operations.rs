//! OperationService on SQLite and PostgreSQL: one active operation per
//! resource, idempotency keys, lifecycle, cancellation, orphans, cleanup.

use std::time::Duration;

use breakwater_domain::operation::{OperationError, OperationStatus};
use breakwater_services::{Actor, AuditService, IdempotencyKey, NewOperation, OperationService, ServiceError};
use breakwater_store::testing::both;

fn person(name: &str) -> Actor {
    Actor { name: name.into(), role: "operator".into(), client_ip: None }
}

fn key(k: &str, body: &str) -> IdempotencyKey {
    IdempotencyKey { key: k.to_owned(), fingerprint: format!("digest-of-{body}") }
}

fn create<'a>(gw: &'a str, name: &'a str, key: Option<&'a IdempotencyKey>) -> NewOperation<'a> {
    NewOperation {
        gateway: Some(gw),
        resource_type: "sandbox",
        resource_name: name,
        action: "create",
        idempotency_key: key.map(|k| ("POST /api/gateways/{gw}/sandboxes", k)),
    }
}

#[tokio::test]
async fn s06_one_active_operation_per_resource_but_not_across_gateways() {
    for t in both().await {
        let ops = OperationService::new(t.store.clone(), AuditService::new(t.store.clone()));
        let first = ops.create(&person("alice"), create("gw-a", "agent", None)).await.unwrap();
        let err = ops.create(&person("bob"), create("gw-a", "agent", None)).await.unwrap_err();
        assert!(matches!(&err, ServiceError::Precondition { message } if message.contains(&first.id)), "{err:?}");
        // The same name on another gateway, at the same moment: both proceed.
        let alice = person("alice");
        let (a, b) = tokio::join!(
            ops.create(&alice, create("gw-b", "twin", None)),
            ops.create(&alice, create("gw-c", "twin", None)),
        );
        assert!(a.is_ok() && b.is_ok(), "{}: {a:?} {b:?}", t.backend);
        // Once the first ends, the resource is free again.
        ops.fail(&first.id, OperationError::Gateway, "nope").await.unwrap();
        ops.create(&person("bob"), create("gw-a", "agent", None)).await.unwrap();
    }
}

#[tokio::test]
async fn s07_the_same_idempotency_key_at_the_same_moment_gives_one_operation() {
    for t in both().await {
        let ops = OperationService::new(t.store.clone(), AuditService::new(t.store.clone()));
        let calls = (0..8).map(|_| {
            let ops = ops.clone();
            tokio::spawn(async move {
                let k = key("k-1", "a");
                ops.create(&person("alice"), create("gw", "agent", Some(&k))).await
            })
        });
        let ids: Vec<String> =
            futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().unwrap().id).collect();
        assert!(ids.windows(2).all(|w| w[0] == w[1]), "{}: {ids:?}", t.backend);
        // Another user's identical key is another operation (and here a conflict: same resource).
        let other = ops.create(&person("bob"), create("gw", "agent", Some(&key("k-1", "a")))).await;
        assert!(matches!(other, Err(ServiceError::Precondition { .. })), "{other:?}");
        // The same key with another body is refused, naming the first.
        let reused = ops.create(&person("alice"), create("gw", "agent", Some(&key("k-1", "b")))).await;
        assert!(
            matches!(&reused, Err(ServiceError::IdempotencyKeyReused { operation_id }) if *operation_id == ids[0]),
            "{}: {reused:?}",
            t.backend
        );
        let route = "POST /api/gateways/{gw}/sandboxes";
        let alice = person("alice");
        let found = ops.get_by_idempotency_key(&alice, route, &key("k-1", "a")).await.unwrap();
        assert_eq!(found.map(|op| op.id), Some(ids[0].clone()));
        assert!(ops.get_by_idempotency_key(&alice, route, &key("k-1", "b")).await.is_err());
        assert!(ops.get_by_idempotency_key(&person("bob"), route, &key("k-1", "a")).await.unwrap().is_none());
        assert!(ops.get_by_idempotency_key(&alice, "POST /other", &key("k-1", "a")).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn lifecycle_progress_results_counts_and_listing() {
    for t in both().await {
        let ops = OperationService::new(t.store.clone(), AuditService::new(t.store.clone()));
        let op = ops.create(&person("alice"), create("gw", "agent", None)).await.unwrap();
        assert_eq!(op.status, OperationStatus::Pending);
        let done = ops.spawn(&op, async { Ok(serde_json::json!({"presets": {"pypi": "applied"}})) });
        done.await.unwrap();
        let op = ops.get(&op.id).await.unwrap();
        assert_eq!((op.status, op.progress), (OperationStatus::Succeeded, 100), "{}", t.backend);
        assert_eq!(op.result.unwrap()["presets"]["pypi"], "applied");
        // A finished operation stays finished.
        assert_eq!(
            ops.fail(&op.id, OperationError::Internal, "late").await.unwrap().status,
            OperationStatus::Succeeded
        );

        let slow = ops.create(&person("alice"), create("gw", "slow", None)).await.unwrap();
        ops.start(&slow.id).await.unwrap();
        let p = ops.progress(&slow.id, 150, &"x".repeat(5000)).await.unwrap();
        assert_eq!(p.progress, 100);
        assert!(p.message.unwrap().chars().count() <= 2_001);
        let (running, total) = ops.list(Some(OperationStatus::Running), Some("sandbox"), 10, 0).await.unwrap();
        assert_eq!((running.len(), total), (1, 1), "{}", t.backend);
        let counts = ops.status_counts().await.unwrap();
        assert!(counts.contains(&(OperationStatus::Succeeded, 1)) && counts.contains(&(OperationStatus::Running, 1)));
        assert!(matches!(ops.get("nope").await, Err(ServiceError::NotFound { .. })));
    }
}

#[tokio::test]
async fn cancel_reaches_the_task_and_without_a_task_fails_at_once() {
    for t in both().await {
        let ops = OperationService::new(t.store.clone(), AuditService::new(t.store.clone()));
        let op = ops.create(&person("alice"), create("gw", "hang", None)).await.unwrap();
        let task = ops.spawn(&op, async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(serde_json::Value::Null)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(ops.is_running(&op.id));
        assert_eq!(ops.cancel(&op.id).await.unwrap().status, OperationStatus::Cancelling);
        tokio::time::timeout(Duration::from_secs(5), task).await.expect("the task stopped").unwrap();
        let op = ops.get(&op.id).await.unwrap();
        assert_eq!(
            (op.status, op.error_code),
            (OperationStatus::Failed, Some(OperationError::Cancelled)),
            "{}",
            t.backend
        );

        // No live task (a restart happened): fails directly.
        let lone = ops.create(&person("alice"), create("gw", "lone", None)).await.unwrap();
        let op = ops.cancel(&lone.id).await.unwrap();
        assert_eq!((op.status, op.error_code), (OperationStatus::Failed, Some(OperationError::Cancelled)));
    }
}

#[tokio::test]
async fn s13_a_restart_leaves_no_operation_pending_or_running() {
    for t in both().await {
        let before = OperationService::new(t.store.clone(), AuditService::new(t.store.clone()));
        for i in 0..10 {
            let op = before.create(&person("alice"), create("gw", &format!("agent-{i}"), None)).await.unwrap();
            if i % 2 == 0 {
                before.start(&op.id).await.unwrap();
            }
        }
        // "SIGKILL": the old service is gone without a word; a new process starts.
        drop(before);
        let after = OperationService::new(t.store.clone(), AuditService::new(t.store.clone()));
        assert_eq!(after.recover_orphans().await.unwrap(), 10, "{}", t.backend);
        for status in [OperationStatus::Pending, OperationStatus::Running, OperationStatus::Cancelling] {
            assert_eq!(after.list(Some(status), None, 200, 0).await.unwrap().1, 0, "{}: {status:?}", t.backend);
        }
        let (failed, _) = after.list(Some(OperationStatus::Failed), None, 200, 0).await.unwrap();
        assert!(failed.iter().all(|o| o.error_code == Some(OperationError::Orphaned)));
        // The resources are free again.
        after.create(&person("alice"), create("gw", "agent-0", None)).await.unwrap();
        // Cleanup: nothing is stuck, and finished ones younger than a day stay.
        assert_eq!(after.cleanup(Duration::from_secs(3600), Duration::from_secs(86_400)).await.unwrap(), (0, 0));
        assert_eq!(after.cleanup(Duration::from_secs(3600), Duration::ZERO).await.unwrap().1, 10);
    }
}

#[tokio::test]
async fn shutdown_leaves_every_operation_terminal() {
    for t in both().await {
        let ops = OperationService::new(t.store.clone(), AuditService::new(t.store.clone()));
        let op = ops.create(&person("alice"), create("gw", "long", None)).await.unwrap();
        let _task = ops.spawn(&op, async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(serde_json::Value::Null)
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        ops.shutdown().await;
        let op = ops.get(&op.id).await.unwrap();
        assert!(!op.status.is_active(), "{}: {op:?}", t.backend);
    }
}

#[tokio::test]
async fn replicas_sharing_a_database_fail_only_the_operations_of_gone_replicas() {
    for t in both().await {
        let replica = |id: &str| {
            OperationService::new(t.store.clone(), AuditService::new(t.store.clone()))
                .with_instance(&format!("{}-{id}", t.backend))
        };
        let long = || async {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(serde_json::Value::Null)
        };
        let a = replica("a");
        a.recover_orphans().await.unwrap();
        let b = replica("b");
        b.recover_orphans().await.unwrap();
        let op_a = a.create(&person("alice"), create("gw", "on-a", None)).await.unwrap();
        let _task_a = a.spawn(&op_a, long());
        let op_b = b.create(&person("alice"), create("gw", "on-b", None)).await.unwrap();
        let _task_b = b.spawn(&op_b, long());
        assert_eq!(op_a.owner.as_deref(), Some(a.instance()));

        // A third replica starting up leaves its live neighbours' work alone.
        let c = replica("c");
        assert_eq!(c.recover_orphans().await.unwrap(), 0, "{}", t.backend);
        assert!(a.get(&op_a.id).await.unwrap().status.is_active());

        // A restarts under the same name: its previous run's work is failed at once.
        drop(a);
        let a2 = replica("a");
        assert_eq!(a2.recover_orphans().await.unwrap(), 1, "{}", t.backend);
        let failed = a2.get(&op_a.id).await.unwrap();
        assert_eq!((failed.status, failed.error_code), (OperationStatus::Failed, Some(OperationError::Orphaned)));
        assert!(b.get(&op_b.id).await.unwrap().status.is_active(), "{}: B is alive", t.backend);

        // A cancel for B's operation, asked of C: recorded for B, which acts on its next beat.
        let asked = c.cancel(&op_b.id).await.unwrap();
        assert_eq!(asked.status, OperationStatus::Cancelling, "{}", t.backend);
        b.beat().await.unwrap();
        let mut op = b.get(&op_b.id).await.unwrap();
        for _ in 0..100 {
            if !op.status.is_active() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            op = b.get(&op_b.id).await.unwrap();
        }
        assert_eq!((op.status, op.error_code), (OperationStatus::Failed, Some(OperationError::Cancelled)));

        // B goes silent (its last heartbeat long ago): the next beat elsewhere fails its work.
        let op_b2 = b.create(&person("alice"), create("gw", "on-b-2", None)).await.unwrap();
        let _task = b.spawn(&op_b2, long());
        t.store.replica_heartbeat(b.instance(), chrono::Utc::now() - chrono::Duration::minutes(5)).await.unwrap();
        assert_eq!(c.beat().await.unwrap(), 1, "{}", t.backend);
        assert_eq!(c.get(&op_b2.id).await.unwrap().error_code, Some(OperationError::Orphaned));
    }
}
