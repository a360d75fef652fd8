//! Long-running operations: create (one active per resource, enforced by a
//! unique key in the store, never check-then-insert), idempotency keys
//! scoped to the caller and the route, progress, completion, cancellation,
//! recovery of orphans at start and cleanup. Work runs in tracked tasks: a
//! cancel reaches the task, and shutdown leaves every operation terminal.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use breakwater_domain::operation::{Operation, OperationError, OperationStatus};
use breakwater_store::{OperationInsert, Store};
use chrono::Utc;
use tokio_util::sync::CancellationToken;

use crate::events::{Event, EventBus};
use crate::{Actor, AuditService, Result, ServiceError};

/// Messages and results are capped: an operation row is not a log file.
const MAX_MESSAGE_CHARS: usize = 2_000;
const MAX_RESULT_BYTES: usize = 64 * 1024;

/// What to start.
#[derive(Clone, Debug)]
pub struct NewOperation<'a> {
    pub gateway: Option<&'a str>,
    pub resource_type: &'a str,
    pub resource_name: &'a str,
    pub action: &'a str,
    /// The route (method and concrete path) and the caller's
    /// `Idempotency-Key`; scoped here by actor and route.
    pub idempotency_key: Option<(&'a str, &'a IdempotencyKey)>,
}

/// A caller's `Idempotency-Key` with a digest of the request body it came
/// with: the same key with another body is refused, not answered with the
/// first request's operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdempotencyKey {
    pub key: String,
    pub fingerprint: String,
}

/// Long-running operations. Cheap to clone.
#[derive(Clone)]
pub struct OperationService {
    store: Arc<dyn Store>,
    audit: AuditService,
    tasks: Arc<Mutex<HashMap<String, CancellationToken>>>,
    /// Ids of operations that just changed, for long polls and streams.
    changes: tokio::sync::broadcast::Sender<String>,
    /// Where progress is announced to live views (none until wired).
    events: Option<EventBus>,
    /// This replica, as operations' `owner` and in heartbeats.
    instance: Arc<str>,
}

/// Two users' keys never collide, nor one user's keys on two routes (the
/// route is the method and the concrete path, gateway and sandbox included).
fn scoped_key(actor: &Actor, route: &str, key: &IdempotencyKey) -> String {
    format!("{}\u{1f}{route}\u{1f}{}", actor.name, key.key)
}

fn capped(message: &str) -> String {
    breakwater_domain::sanitize(message, MAX_MESSAGE_CHARS)
}

impl OperationService {
    #[must_use]
    pub fn new(store: Arc<dyn Store>, audit: AuditService) -> Self {
        Self {
            store,
            audit,
            tasks: Arc::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
            events: None,
            instance: format!("replica-{}", uuid::Uuid::new_v4().simple()).into(),
        }
    }

    /// Names this replica. A name that stays the same across restarts lets
    /// a restarted replica fail its own previous run's operations at once
    /// instead of waiting for that run's heartbeat to go stale.
    #[must_use]
    pub fn with_instance(mut self, id: &str) -> Self {
        self.instance = id.into();
        self
    }

    #[must_use]
    pub fn instance(&self) -> &str {
        &self.instance
    }

    /// Announces every change on `events` as well.
    #[must_use]
    pub fn with_events(mut self, events: EventBus) -> Self {
        self.events = Some(events);
        self
    }

    /// Creates a pending operation, or returns the one the same idempotency
    /// key created before. A resource with an active operation is a conflict
    /// naming that operation.
    pub async fn create(&self, actor: &Actor, new: NewOperation<'_>) -> Result<Operation> {
        Ok(self.create_tracked(actor, new).await?.0)
    }

    /// As [`OperationService::create`], also saying whether this call created
    /// it (`false`: an earlier request with the same key did, and started it).
    pub async fn create_tracked(&self, actor: &Actor, new: NewOperation<'_>) -> Result<(Operation, bool)> {
        let now = Utc::now();
        let op = Operation {
            id: uuid::Uuid::new_v4().to_string(),
            gateway: new.gateway.map(str::to_owned),
            resource_type: new.resource_type.to_owned(),
            resource_name: new.resource_name.to_owned(),
            action: new.action.to_owned(),
            status: OperationStatus::Pending,
            progress: 0,
            message: None,
            result: None,
            error_code: None,
            error: None,
            actor: actor.name.clone(),
            owner: Some(self.instance.to_string()),
            created_at: now,
            updated_at: now,
        };
        let key = new.idempotency_key.map(|(route, k)| (scoped_key(actor, route, k), k));
        // A unique violation whose holder finished in between is retried once.
        for _ in 0..2 {
            let idempotency = key.as_ref().map(|(scoped, k)| (scoped.as_str(), k.fingerprint.as_str()));
            match self.store.insert_operation(&op, idempotency).await {
                Ok(OperationInsert::Created) => return Ok((op, true)),
                Ok(OperationInsert::SameKey(existing)) => return Ok((existing, false)),
                Ok(OperationInsert::KeyReused(existing)) => {
                    return Err(ServiceError::IdempotencyKeyReused { operation_id: existing.id });
                }
                Ok(OperationInsert::Busy(existing)) => {
                    return Err(ServiceError::Precondition {
                        message: format!(
                            "{} {} already has an operation in progress ({}, {}); wait for it or cancel it",
                            existing.resource_type,
                            existing.resource_name,
                            existing.id,
                            existing.status.as_str()
                        ),
                    });
                }
                Err(breakwater_store::StoreError::Conflict(_)) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Err(ServiceError::Precondition { message: format!("{} is busy; try again", op.resource_name) })
    }

    /// What an earlier request with this key started, if one did; the same
    /// key with another body is refused.
    pub async fn get_by_idempotency_key(
        &self,
        actor: &Actor,
        route: &str,
        key: &IdempotencyKey,
    ) -> Result<Option<Operation>> {
        match self.store.get_operation_by_key(&scoped_key(actor, route, key)).await? {
            None => Ok(None),
            Some((op, first)) if first.as_ref().is_none_or(|f| *f == key.fingerprint) => Ok(Some(op)),
            Some((op, _)) => Err(ServiceError::IdempotencyKeyReused { operation_id: op.id }),
        }
    }

    /// The operation running on a resource now, if any (`is_running` says
    /// whether this replica has a live task for an operation id).
    pub async fn active(
        &self,
        gateway: Option<&str>,
        resource_type: &str,
        resource_name: &str,
    ) -> Result<Option<Operation>> {
        let key = breakwater_domain::operation::active_key(gateway, resource_type, resource_name);
        Ok(self.store.get_active_operation(&key).await?)
    }

    pub async fn get(&self, id: &str) -> Result<Operation> {
        self.store.get_operation(id).await?.ok_or_else(|| ServiceError::NotFound { what: format!("operation {id}") })
    }

    /// The operation once it differs from `seen` (status or progress) or
    /// ends, or as it is after `wait`. Woken by changes made here; changes
    /// made by another replica are picked up by a re-read every second.
    pub async fn wait_for_change(&self, id: &str, seen: Option<&Operation>, wait: Duration) -> Result<Operation> {
        let mut rx = self.changes.subscribe();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let op = self.get(id).await?;
            let changed =
                seen.is_none_or(|s| s.status != op.status || s.progress != op.progress || s.message != op.message);
            if !op.status.is_active() || (seen.is_some() && changed) {
                return Ok(op);
            }
            let tick = (tokio::time::Instant::now() + Duration::from_secs(1)).min(deadline);
            let woke = tokio::time::timeout_at(tick, async {
                loop {
                    match rx.recv().await {
                        Ok(changed) if changed == id => return,
                        Ok(_) => {}
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                    }
                }
            })
            .await;
            if woke.is_err() && tokio::time::Instant::now() >= deadline {
                return self.get(id).await;
            }
        }
    }

    pub async fn list(
        &self,
        status: Option<OperationStatus>,
        resource_type: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<Operation>, u64)> {
        Ok(self.store.list_operations(status, resource_type, limit.clamp(1, 200), offset).await?)
    }

    pub async fn status_counts(&self) -> Result<Vec<(OperationStatus, u64)>> {
        Ok(self.store.operation_counts().await?)
    }

    /// Read, change, compare-and-set on the status read; re-read and apply
    /// again when another writer changed it in between.
    async fn update(&self, id: &str, mut change: impl FnMut(&mut Operation) -> bool) -> Result<Operation> {
        let mut tries = 0;
        let op = loop {
            let mut op = self.get(id).await?;
            let from = op.status;
            if !change(&mut op) {
                return Ok(op);
            }
            op.updated_at = Utc::now();
            if self.store.save_operation(&op, from).await? {
                break op;
            }
            tries += 1;
            if tries == 5 {
                return Err(ServiceError::Precondition { message: format!("operation {id} is changing; try again") });
            }
        };
        {
            let _ = self.changes.send(op.id.clone());
            if let Some(events) = &self.events {
                events.publish(Event::OperationChanged {
                    id: op.id.clone(),
                    gateway: op.gateway.clone(),
                    resource_type: op.resource_type.clone(),
                    resource_name: op.resource_name.clone(),
                    status: op.status.as_str().to_owned(),
                    progress: op.progress,
                    message: op.message.clone(),
                });
            }
        }
        Ok(op)
    }

    /// pending → running; anything else is left as it is.
    pub async fn start(&self, id: &str) -> Result<Operation> {
        self.update(id, |op| {
            let go = op.status == OperationStatus::Pending;
            if go {
                op.status = OperationStatus::Running;
            }
            go
        })
        .await
    }

    pub async fn progress(&self, id: &str, percent: u8, message: &str) -> Result<Operation> {
        self.update(id, |op| {
            let live = op.status.is_active();
            if live {
                op.progress = percent.min(100);
                op.message = Some(capped(message));
            }
            live
        })
        .await
    }

    pub async fn complete(&self, id: &str, result: serde_json::Value) -> Result<Operation> {
        let text = result.to_string();
        let result = if text.len() > MAX_RESULT_BYTES {
            serde_json::json!({"truncated": true, "bytes": text.len()})
        } else {
            result
        };
        self.update(id, |op| {
            let live = op.status.is_active();
            if live {
                op.status = OperationStatus::Succeeded;
                op.progress = 100;
                op.message = Some("done".to_owned());
                op.result = Some(result.clone());
            }
            live
        })
        .await
    }

    pub async fn fail(&self, id: &str, code: OperationError, message: &str) -> Result<Operation> {
        self.update(id, |op| {
            let live = op.status.is_active();
            if live {
                op.status = OperationStatus::Failed;
                op.error_code = Some(code);
                op.error = Some(capped(message));
            }
            live
        })
        .await
    }

    /// Runs `work` as operation `op`'s task: started, then succeeded with
    /// its result or failed with its error; a cancel stops it.
    pub fn spawn<F>(&self, op: &Operation, work: F) -> tokio::task::JoinHandle<()>
    where
        F: std::future::Future<Output = std::result::Result<serde_json::Value, (OperationError, String)>>
            + Send
            + 'static,
    {
        let token = CancellationToken::new();
        self.tasks.lock().expect("tasks lock").insert(op.id.clone(), token.clone());
        let (this, id) = (self.clone(), op.id.clone());
        tokio::spawn(async move {
            let _ = this.start(&id).await;
            let outcome = tokio::select! {
                () = token.cancelled() => Err((OperationError::Cancelled, "cancelled".to_owned())),
                r = work => r,
            };
            let saved = match outcome {
                Ok(result) => this.complete(&id, result).await,
                Err((code, message)) => this.fail(&id, code, &message).await,
            };
            if let Err(e) = saved {
                tracing::error!(operation = %id, error = %e, "could not record the operation's end");
            }
            this.tasks.lock().expect("tasks lock").remove(&id);
        })
    }

    #[must_use]
    pub fn is_running(&self, id: &str) -> bool {
        self.tasks.lock().expect("tasks lock").contains_key(id)
    }

    /// A person's cancel: refused for an operation that already ended,
    /// audited otherwise.
    pub async fn cancel_by(&self, actor: &Actor, id: &str) -> Result<Operation> {
        let op = self.get(id).await?;
        if !op.status.is_active() {
            return Err(ServiceError::Precondition {
                message: format!("operation {id} already ended ({})", op.status.as_str()),
            });
        }
        let op = self.cancel(id).await?;
        self.audit
            .log(
                actor,
                "operation.cancel",
                "operation",
                id,
                op.gateway.as_deref(),
                serde_json::json!({"resource_type": op.resource_type, "resource_name": op.resource_name}),
            )
            .await;
        Ok(op)
    }

    /// pending/running → cancelling, and the task is told to stop (it then
    /// ends failed/cancelled). A task on another live replica is told on
    /// that replica's next beat; with no live task anywhere (e.g. after a
    /// restart) the operation fails at once.
    pub async fn cancel(&self, id: &str) -> Result<Operation> {
        let token = self.tasks.lock().expect("tasks lock").get(id).cloned();
        let owner_alive = if token.is_some() {
            true
        } else {
            let op = self.get(id).await?;
            let alive_since = Utc::now() - chrono::Duration::from_std(Self::REPLICA_STALE).unwrap_or_default();
            match op.owner.as_deref().filter(|o| *o != &*self.instance) {
                Some(o) => self.store.replica_seen(o).await?.is_some_and(|at| at >= alive_since),
                None => false,
            }
        };
        if !owner_alive {
            return self.fail(id, OperationError::Cancelled, "cancelled (no task was running it)").await;
        }
        // Our task is told now; another live replica's sees it on its next beat.
        let op = self
            .update(id, |op| {
                let live = op.status.is_active();
                if live {
                    op.status = OperationStatus::Cancelling;
                }
                live
            })
            .await?;
        if let Some(token) = token {
            token.cancel();
        }
        Ok(op)
    }

    /// At start: operations this replica's previous run, or a replica that
    /// went silent, left active can never finish. Live neighbours' are kept.
    pub async fn recover_orphans(&self) -> Result<u64> {
        let alive_since = Utc::now() - chrono::Duration::from_std(Self::REPLICA_STALE).unwrap_or_default();
        let n = self
            .store
            .fail_orphaned_operations(alive_since, Some(&self.instance), "the server stopped before it finished")
            .await?;
        self.store.replica_heartbeat(&self.instance, Utc::now()).await?;
        if n > 0 {
            tracing::warn!(operations = n, "failed operations orphaned by a previous run");
        }
        Ok(n)
    }

    /// Fails operations stuck active longer than `stuck` (with no task of
    /// ours) and deletes finished ones older than `keep`.
    pub async fn cleanup(&self, stuck: Duration, keep: Duration) -> Result<(u64, u64)> {
        let now = Utc::now();
        let stuck_before = now - chrono::Duration::from_std(stuck).unwrap_or(chrono::Duration::hours(1));
        let failed = self
            .store
            .fail_active_operations(stuck_before, OperationError::Timeout, "no progress for too long")
            .await?;
        let keep_before = now - chrono::Duration::from_std(keep).unwrap_or(chrono::Duration::days(7));
        let deleted = self.store.delete_finished_operations(keep_before).await?;
        Ok((failed, deleted))
    }

    /// No operation runs this long (the longest exec is an hour): one still
    /// active after it has lost its task.
    pub const STUCK_AFTER: Duration = Duration::from_secs(2 * 3600);
    /// Finished operations are kept this long for clients to read.
    pub const KEEP_FINISHED: Duration = Duration::from_secs(7 * 24 * 3600);
    /// How often a replica says it is alive (and looks for cancel requests).
    pub const HEARTBEAT: Duration = Duration::from_secs(2);
    /// A replica silent this long is gone, and its operations with it.
    pub const REPLICA_STALE: Duration = Duration::from_secs(30);

    /// One beat of the housekeeping loop: say this replica is alive, act on
    /// cancels other replicas recorded for our tasks, and fail the
    /// operations of replicas that went silent.
    pub async fn beat(&self) -> Result<u64> {
        self.store.replica_heartbeat(&self.instance, Utc::now()).await?;
        for id in self.store.cancelling_operations(&self.instance).await? {
            let token = self.tasks.lock().expect("tasks lock").get(&id).cloned();
            match token {
                Some(token) => token.cancel(),
                None => {
                    let _ = self.fail(&id, OperationError::Cancelled, "cancelled (no task was running it)").await?;
                }
            }
        }
        let alive_since = Utc::now() - chrono::Duration::from_std(Self::REPLICA_STALE).unwrap_or_default();
        let n = self.store.fail_orphaned_operations(alive_since, None, "the replica running it stopped").await?;
        if n > 0 {
            tracing::warn!(operations = n, "failed operations of a replica that stopped");
        }
        Ok(n)
    }

    /// Heartbeats every [`Self::HEARTBEAT`] and [`OperationService::cleanup`]
    /// every `cleanup_every`, until `stop`.
    #[must_use]
    pub fn spawn_housekeeping(&self, cleanup_every: Duration, stop: CancellationToken) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut beat = tokio::time::interval(Self::HEARTBEAT);
            beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut cleanup = tokio::time::interval(cleanup_every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = beat.tick() => if let Err(e) = this.beat().await {
                        tracing::warn!(error = %e, "operation heartbeat failed");
                    },
                    _ = cleanup.tick() => match this.cleanup(Self::STUCK_AFTER, Self::KEEP_FINISHED).await {
                        Ok((0, 0)) => {}
                        Ok((failed, deleted)) => tracing::info!(failed, deleted, "operations cleaned up"),
                        Err(e) => tracing::warn!(error = %e, "operation cleanup failed"),
                    },
                }
            }
        })
    }

    /// On shutdown: stop every task and leave its operation terminal.
    pub async fn shutdown(&self) {
        let ids: Vec<(String, CancellationToken)> = self.tasks.lock().expect("tasks lock").drain().collect();
        for (id, token) in ids {
            token.cancel();
            let _ = self.fail(&id, OperationError::Cancelled, "the server shut down").await;
        }
    }
}
