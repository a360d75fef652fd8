//! The audit trail: who changed what, chained so that tampering shows.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use breakwater_domain::registry::{AuditEntry, AuditFilter, NewAuditEntry, audit_hash};
use breakwater_store::Store;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::{Actor, Result};

/// Keys whose values never go into an audit entry.
const SECRET_KEYS: &[&str] =
    &["client_key", "key", "secret", "password", "token", "api_key", "credentials", "private_key", "authorization"];

/// Replaces the values of secret-looking keys, at any depth, with `REDACTED`.
#[must_use]
pub fn redact(value: serde_json::Value) -> serde_json::Value {
    match value {
        serde_json::Value::Object(map) => serde_json::Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    let lower = k.to_ascii_lowercase();
                    if SECRET_KEYS.iter().any(|s| lower == *s || lower.ends_with(&format!("_{s}"))) {
                        (k, serde_json::Value::String("REDACTED".into()))
                    } else {
                        (k, redact(v))
                    }
                })
                .collect(),
        ),
        serde_json::Value::Array(items) => serde_json::Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

/// What `verify` found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    pub ok: bool,
    /// Entries checked.
    pub checked: u64,
    /// The first entry whose hash or link does not match, if any.
    pub first_bad_seq: Option<i64>,
    pub reason: Option<String>,
}

#[derive(Clone)]
pub struct AuditService {
    store: Arc<dyn Store>,
    failures: Arc<AtomicU64>,
}

impl AuditService {
    #[must_use]
    pub fn new(store: Arc<dyn Store>) -> Self {
        Self { store, failures: Arc::new(AtomicU64::new(0)) }
    }

    /// Records one change. Never fails the caller: the change already
    /// happened, so a storage failure is logged and counted instead.
    pub async fn log(
        &self,
        actor: &Actor,
        action: &str,
        resource_type: &str,
        resource_id: &str,
        gateway: Option<&str>,
        detail: serde_json::Value,
    ) {
        let entry = NewAuditEntry {
            actor: actor.name.clone(),
            role: actor.role.clone(),
            client_ip: actor.client_ip.clone(),
            action: action.to_owned(),
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_owned(),
            gateway: gateway.map(str::to_owned),
            detail: redact(detail),
        };
        if let Err(e) = self.store.append_audit(&entry).await {
            self.failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(error = %e, action, resource_id, "could not write the audit entry");
        }
    }

    /// Audit writes that failed since start (exposed as a metric).
    #[must_use]
    pub fn failures(&self) -> u64 {
        self.failures.load(Ordering::Relaxed)
    }

    pub async fn list(&self, filter: &AuditFilter, limit: u32, offset: u32) -> Result<(Vec<AuditEntry>, u64)> {
        Ok(self.store.list_audit(filter, limit.clamp(1, 1000), offset).await?)
    }

    /// Every matching entry, oldest first, fetched a page at a time so an
    /// export never holds the whole log in memory.
    pub fn export(&self, filter: AuditFilter) -> futures::stream::BoxStream<'static, Result<AuditEntry>> {
        use futures::StreamExt;
        const PAGE: u32 = 500;
        let store = self.store.clone();
        futures::stream::unfold(Some(0i64), move |after| {
            let store = store.clone();
            let filter = filter.clone();
            async move {
                let after = after?;
                match store.audit_after(after, PAGE).await {
                    Err(e) => Some((vec![Err(e.into())], None)),
                    Ok(page) => {
                        if page.is_empty() {
                            return None;
                        }
                        let next = (page.len() == PAGE as usize).then(|| page.last().map_or(after, |e| e.seq));
                        let kept = page.into_iter().filter(|e| matches(&filter, e)).map(Ok).collect();
                        Some((kept, next))
                    }
                }
            }
        })
        .flat_map(futures::stream::iter)
        .boxed()
    }

    /// Recomputes the chain from the retention anchor up to the stored head
    /// and reports the first entry that does not match. Deleting the newest
    /// entries shows too: the head remembers how far the chain went.
    pub async fn verify(&self) -> Result<VerifyReport> {
        // Entries appended while we walk are past this head and not checked.
        let chain = self.store.audit_chain().await?;
        let key = self.store.audit_key();
        let mut prev_hash = chain.anchor_hash.clone();
        let mut expected_seq = chain.anchor_seq + 1;
        let mut checked = 0u64;
        let mut after = chain.anchor_seq;
        loop {
            let page = self.store.audit_after(after, 1000).await?;
            let done = page.is_empty() || page.first().is_some_and(|e| e.seq > chain.head_seq);
            if done {
                if expected_seq <= chain.head_seq {
                    return Ok(VerifyReport {
                        ok: false,
                        checked,
                        first_bad_seq: Some(expected_seq),
                        reason: Some(format!(
                            "entries {expected_seq} to {} are missing (the newest entries were deleted)",
                            chain.head_seq
                        )),
                    });
                }
                if chain.head_seq > chain.anchor_seq && prev_hash != chain.head_hash {
                    return Ok(VerifyReport {
                        ok: false,
                        checked,
                        first_bad_seq: Some(chain.head_seq),
                        reason: Some("the newest entry is not the one the chain head records".into()),
                    });
                }
                return Ok(VerifyReport { ok: true, checked, first_bad_seq: None, reason: None });
            }
            for e in page.iter().take_while(|e| e.seq <= chain.head_seq) {
                let bad = |reason: &str| VerifyReport {
                    ok: false,
                    checked,
                    first_bad_seq: Some(e.seq),
                    reason: Some(reason.to_owned()),
                };
                if e.seq != expected_seq {
                    return Ok(bad(&format!("entry {expected_seq} is missing")));
                }
                if e.prev_hash != prev_hash {
                    return Ok(bad("does not link to the entry before it"));
                }
                if audit_hash(&key, e.seq, &e.content(), &e.id, e.at, &e.prev_hash) != e.hash {
                    return Ok(bad("its content does not match its MAC (edited after it was written)"));
                }
                prev_hash.clone_from(&e.hash);
                expected_seq += 1;
                checked += 1;
            }
            after = page.last().map_or(after, |e| e.seq);
        }
    }

    /// Retention keeps at most this many days of history.
    pub const MAX_RETENTION_DAYS: u32 = 36_500;

    /// Deletes entries older than `days` days; the chain stays verifiable.
    pub async fn cleanup(&self, actor: &Actor, days: u32) -> Result<u64> {
        if days == 0 || days > Self::MAX_RETENTION_DAYS {
            return Err(crate::ServiceError::Invalid {
                field: "older_than_days".into(),
                message: format!("must be 1 to {}", Self::MAX_RETENTION_DAYS),
            });
        }
        let cutoff: DateTime<Utc> = Utc::now() - chrono::Duration::days(i64::from(days));
        let deleted = self.store.delete_audit_before(cutoff).await?;
        self.log(
            actor,
            "audit.cleanup",
            "audit",
            "retention",
            None,
            serde_json::json!({"days": days, "deleted": deleted}),
        )
        .await;
        Ok(deleted)
    }

    /// Runs [`AuditService::cleanup`] every `every` until `stop` is cancelled.
    #[must_use]
    pub fn spawn_retention(
        &self,
        days: u32,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = tick.tick() => {}
                }
                match this.cleanup(&Actor::system(), days).await {
                    Ok(n) => tracing::info!(deleted = n, days, "audit retention"),
                    Err(e) => tracing::warn!(error = %e, "audit retention failed"),
                }
            }
        })
    }
}

fn matches(f: &AuditFilter, e: &AuditEntry) -> bool {
    f.actor.as_ref().is_none_or(|v| *v == e.actor)
        && f.action.as_ref().is_none_or(|v| *v == e.action)
        && f.resource_type.as_ref().is_none_or(|v| *v == e.resource_type)
        && f.gateway.as_ref().is_none_or(|v| e.gateway.as_ref() == Some(v))
        && f.since.is_none_or(|t| e.at >= t)
        && f.until.is_none_or(|t| e.at < t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted_at_any_depth() {
        let v = redact(serde_json::json!({
            "name": "gw",
            "client_key": "-----BEGIN PRIVATE KEY-----",
            "nested": {"api_key": "sk-1", "list": [{"password": "p"}]},
            "provider_token": "t",
        }));
        let text = v.to_string();
        assert!(!text.contains("BEGIN") && !text.contains("sk-1") && !text.contains("\"p\""), "{text}");
        assert_eq!(v["name"], "gw");
    }
}
