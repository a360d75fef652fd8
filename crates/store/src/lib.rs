//! Persistence behind one trait, [`Store`], with SQLite (the embedded
//! default) and PostgreSQL implementations, each with its own migrations.
//!
//! Both implementations share their SQL: `$N` placeholders work in SQLite
//! too, and each backend's migrations give the columns types that decode to
//! the same Rust values. The `impl_store!` macro instantiates the one body
//! for each pool type, so the two cannot drift apart.
#![forbid(unsafe_code)]

mod cipher;
#[cfg(feature = "testing")]
pub mod testing;

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use breakwater_domain::access::{
    Grants, Group, GroupGrant, OidcLogin, PrincipalKind, Role, ServicePrincipal, Session, User,
};
use breakwater_domain::approval::{ApprovalWorkflow, ChunkAction, Decision, PolicyPin, Vote};
use breakwater_domain::operation::{Operation, OperationError, OperationStatus};
use breakwater_domain::registry::{
    AuditEntry, AuditFilter, AuthMode, FieldPatch, GatewayHealth, GatewayMetadataPatch, GatewayName, GatewayRecord,
    GatewayStatus, NewAuditEntry, audit_hash,
};
use breakwater_domain::sandbox::SandboxMetadata;
use breakwater_domain::{LabelSelector, Secret};
use chrono::{DateTime, SubsecRound, Utc};
use sqlx::types::Json;
use sqlx::{Row, postgres::PgPoolOptions, sqlite::SqlitePoolOptions};

pub use cipher::{CipherError, SecretCipher};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} already exists")]
    Conflict(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Database(String),
    #[error("stored data is corrupt: {0}")]
    Corrupt(String),
    #[error(
        "the secret key is not the one this database was created with: its stored secrets cannot be read; \
         start with the original BREAKWATER_SECRET_KEY or key file"
    )]
    WrongKey,
    #[error(transparent)]
    Cipher(#[from] CipherError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        match &e {
            sqlx::Error::RowNotFound => Self::NotFound("row".into()),
            sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) | sqlx::Error::Tls(_) => {
                Self::Unavailable(e.to_string())
            }
            sqlx::Error::Database(db) if db.is_unique_violation() => Self::Conflict(db.message().to_owned()),
            _ => Self::Database(e.to_string()),
        }
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// A gateway to add to the registry.
#[derive(Clone, Debug)]
pub struct NewGateway {
    pub name: GatewayName,
    pub endpoint: String,
    pub scheme: String,
    pub auth_mode: AuthMode,
    pub skip_server_verification: bool,
    pub ca_cert: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<Secret>,
    pub bearer_token: Option<Secret>,
    pub metadata: BTreeMap<String, serde_json::Value>,
    pub description: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// An SSH session Breakwater issued: which sandbox its token opens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SshSessionRecord {
    pub token_digest: String,
    pub gateway: String,
    pub sandbox: String,
    pub created_by: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// What [`Store::insert_operation`] did.
#[derive(Clone, Debug, PartialEq)]
pub enum OperationInsert {
    Created,
    /// The idempotency key was used before, for the same request: this is
    /// that operation.
    SameKey(Operation),
    /// The idempotency key was used before for a different request body:
    /// this is the operation it started.
    KeyReused(Operation),
    /// The resource already has an active operation: this one.
    Busy(Operation),
}

/// Where the audit chain stands: the anchor left by retention and the head
/// (the newest entry's sequence number and MAC).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditChain {
    pub anchor_seq: i64,
    pub anchor_hash: String,
    pub head_seq: i64,
    pub head_hash: String,
}

/// The persistence operations Breakwater needs. Every implementation encrypts
/// secret material (client keys) before it reaches the database.
#[async_trait]
pub trait Store: Send + Sync {
    /// Cheap liveness check for `/readyz`.
    async fn ping(&self) -> Result<()>;

    async fn insert_gateway(&self, g: &NewGateway) -> Result<GatewayRecord>;
    async fn delete_gateway(&self, name: &GatewayName) -> Result<bool>;
    async fn get_gateway(&self, name: &GatewayName) -> Result<Option<GatewayRecord>>;
    /// Ordered by name; every selector pair must match. Returns the page and the total.
    async fn list_gateways(
        &self,
        selector: &LabelSelector,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<GatewayRecord>, u64)>;
    async fn update_gateway_health(&self, name: &GatewayName, health: &GatewayHealth) -> Result<()>;
    async fn update_gateway_metadata(&self, name: &GatewayName, patch: &GatewayMetadataPatch) -> Result<GatewayRecord>;

    /// Numbers and chains a new entry, atomically with the chain head.
    async fn append_audit(&self, entry: &NewAuditEntry) -> Result<AuditEntry>;
    /// Newest first. Returns the page and the total matching.
    async fn list_audit(&self, filter: &AuditFilter, limit: u32, offset: u32) -> Result<(Vec<AuditEntry>, u64)>;
    /// Oldest first, entries with `seq > after`, at most `limit`.
    async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>>;
    /// (anchor seq, anchor hash): where verification starts after retention.
    async fn audit_chain(&self) -> Result<AuditChain>;
    /// The key the audit chain's MACs are computed with (derived from the
    /// server key).
    fn audit_key(&self) -> [u8; 32];
    /// Deletes entries older than `cutoff`, moving the anchor to the newest
    /// deleted one so the rest of the chain still verifies.
    async fn delete_audit_before(&self, cutoff: DateTime<Utc>) -> Result<u64>;

    // --- policy pins, approval workflows, votes ---
    async fn get_pin(&self, gateway: &str, sandbox: &str) -> Result<Option<PolicyPin>>;
    /// Creates or replaces the pin.
    async fn put_pin(&self, pin: &PolicyPin) -> Result<()>;
    async fn delete_pin(&self, gateway: &str, sandbox: &str) -> Result<bool>;
    async fn get_workflow(&self, gateway: &str, sandbox: &str) -> Result<Option<ApprovalWorkflow>>;
    async fn put_workflow(&self, wf: &ApprovalWorkflow) -> Result<()>;
    async fn delete_workflow(&self, gateway: &str, sandbox: &str) -> Result<bool>;
    /// Records (or replaces) one actor's vote on a chunk.
    async fn put_vote(&self, gateway: &str, sandbox: &str, vote: &Vote) -> Result<()>;
    async fn votes(&self, gateway: &str, sandbox: &str, chunk_id: &str) -> Result<Vec<Vote>>;
    /// Claims the decision on a chunk. Exactly one caller gets `true`; that
    /// caller acts upstream.
    async fn claim_outcome(&self, gateway: &str, sandbox: &str, chunk_id: &str, outcome: Decision) -> Result<bool>;
    /// Gives a claim back (the upstream action failed), so a later vote can retry.
    async fn release_outcome(&self, gateway: &str, sandbox: &str, chunk_id: &str) -> Result<()>;
    async fn outcome(&self, gateway: &str, sandbox: &str, chunk_id: &str) -> Result<Option<Decision>>;
    async fn record_chunk_action(&self, gateway: &str, sandbox: &str, action: &ChunkAction) -> Result<()>;
    async fn chunk_actions(&self, gateway: &str, sandbox: &str) -> Result<Vec<ChunkAction>>;

    // --- long-running operations ---
    /// Inserts `op` unless its idempotency key was used before (that
    /// operation comes back) or its resource already has an active one.
    /// `idempotency` is the (scoped key, request digest) pair.
    async fn insert_operation(&self, op: &Operation, idempotency: Option<(&str, &str)>) -> Result<OperationInsert>;
    async fn get_operation(&self, id: &str) -> Result<Option<Operation>>;
    /// The active operation holding `active_key` (see `Operation::active_key`).
    async fn get_active_operation(&self, active_key: &str) -> Result<Option<Operation>>;
    /// The operation a scoped key started, with the digest of the request
    /// it came with (`None` for rows older than digests).
    async fn get_operation_by_key(&self, idempotency_key: &str) -> Result<Option<(Operation, Option<String>)>>;
    /// Writes status, progress, message, result and error (and frees the
    /// resource when the operation is no longer active).
    /// Only while the stored status is still `from` (compare and set):
    /// `false` when another writer (a cancel, an orphan sweep) got there
    /// first, so a stale read never overwrites a newer state.
    async fn save_operation(&self, op: &Operation, from: OperationStatus) -> Result<bool>;
    /// Newest first.
    async fn list_operations(
        &self,
        status: Option<OperationStatus>,
        resource_type: Option<&str>,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<Operation>, u64)>;
    async fn operation_counts(&self) -> Result<Vec<(OperationStatus, u64)>>;
    /// Fails every active operation updated before `before` (all of them at
    /// start: orphans of a previous process).
    async fn fail_active_operations(&self, before: DateTime<Utc>, code: OperationError, message: &str) -> Result<u64>;
    /// Fails the active operations whose replica is gone: no owner, an
    /// owner without a heartbeat since `alive_since`, or `previous_self`
    /// (this replica's own earlier run).
    async fn fail_orphaned_operations(
        &self,
        alive_since: DateTime<Utc>,
        previous_self: Option<&str>,
        message: &str,
    ) -> Result<u64>;
    /// Ids of `owner`'s operations someone asked to cancel.
    async fn cancelling_operations(&self, owner: &str) -> Result<Vec<String>>;
    /// Records that replica `id` is alive (and forgets replicas silent for a day).
    async fn replica_heartbeat(&self, id: &str, at: DateTime<Utc>) -> Result<()>;
    /// When replica `id` last said it was alive.
    async fn replica_seen(&self, id: &str) -> Result<Option<DateTime<Utc>>>;
    async fn delete_finished_operations(&self, before: DateTime<Utc>) -> Result<u64>;

    // --- identity ---
    async fn count_users(&self) -> Result<u64>;
    /// A duplicate email is a conflict.
    async fn insert_user(&self, user: &User, password_hash: Option<&str>) -> Result<()>;
    /// First-run setup: inserts `user` only if no user exists and no setup
    /// ran before, atomically; `false` otherwise.
    async fn insert_first_user(&self, user: &User, password_hash: &str) -> Result<bool>;
    async fn get_user(&self, id: &str) -> Result<Option<User>>;
    /// The user and their password hash, by normalised email.
    async fn user_by_email(&self, email: &str) -> Result<Option<(User, Option<String>)>>;
    async fn list_users(&self) -> Result<Vec<User>>;
    /// Writes role, active flag, lock state and failed-login count.
    async fn save_user(&self, user: &User) -> Result<()>;
    /// Sets an active user's role only if it is still `from` (compare and
    /// set); `false` when it changed or the user was deactivated meanwhile.
    async fn set_user_role_if(&self, id: &str, from: Role, to: Role, at: DateTime<Utc>) -> Result<bool>;
    async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<()>;
    async fn delete_user(&self, id: &str) -> Result<bool>;
    /// Active admins (for "there is always an admin").
    async fn count_active_admins(&self) -> Result<u64>;

    async fn insert_session(&self, token_hash: &str, session: &Session) -> Result<()>;
    async fn get_session(&self, token_hash: &str) -> Result<Option<Session>>;
    async fn touch_session(&self, token_hash: &str, at: DateTime<Utc>) -> Result<()>;
    async fn delete_session(&self, token_hash: &str) -> Result<bool>;
    async fn delete_user_sessions(&self, user_id: &str) -> Result<u64>;

    /// A duplicate name is a conflict.
    async fn insert_service_principal(&self, sp: &ServicePrincipal, key_hash: &str) -> Result<()>;
    async fn list_service_principals(&self) -> Result<Vec<ServicePrincipal>>;
    async fn get_service_principal(&self, id: &str) -> Result<Option<ServicePrincipal>>;
    async fn service_principal_by_key(&self, key_hash: &str) -> Result<Option<ServicePrincipal>>;
    async fn rotate_service_principal_key(&self, id: &str, key_hash: &str, key_prefix: &str) -> Result<bool>;
    async fn touch_service_principal(&self, id: &str, at: DateTime<Utc>) -> Result<()>;
    async fn delete_service_principal(&self, id: &str) -> Result<bool>;

    async fn insert_invite(
        &self,
        token_hash: &str,
        email: &str,
        role: Role,
        created_by: &str,
        expires_at: DateTime<Utc>,
    ) -> Result<()>;
    /// Uses an invite once: its email, if it is unused and unexpired.
    async fn take_invite(&self, token_hash: &str, now: DateTime<Utc>) -> Result<Option<String>>;

    /// Inserts a user linked to an identity provider's subject (no
    /// password). `Conflict` when the email or the link is taken.
    async fn insert_oidc_user(&self, user: &User, subject: &str) -> Result<()>;
    /// The user linked to `(provider, subject)`, if any.
    async fn user_by_oidc(&self, provider: &str, subject: &str) -> Result<Option<User>>;
    /// Records a sign-in in flight (the verifier is sealed here) and drops
    /// those that expired before `login.created_at`.
    async fn insert_oidc_login(&self, login: &OidcLogin) -> Result<()>;
    /// Takes (deletes and returns) the sign-in with this state digest, if it
    /// exists and has not expired at `now`. Taking is atomic, so a state is
    /// used at most once across replicas.
    async fn take_oidc_login(&self, state_hash: &str, now: DateTime<Utc>) -> Result<Option<OidcLogin>>;

    /// A duplicate name is a conflict.
    async fn insert_group(&self, group: &Group) -> Result<()>;
    async fn list_groups(&self) -> Result<Vec<Group>>;
    async fn get_group(&self, id: &str) -> Result<Option<Group>>;
    async fn update_group(&self, group: &Group) -> Result<bool>;
    async fn delete_group(&self, id: &str) -> Result<bool>;
    /// `false` when already a member.
    async fn add_group_member(&self, group_id: &str, user_id: &str) -> Result<bool>;
    async fn remove_group_member(&self, group_id: &str, user_id: &str) -> Result<bool>;
    async fn group_members(&self, group_id: &str) -> Result<Vec<String>>;

    async fn put_gateway_role(&self, kind: PrincipalKind, id: &str, gateway: &str, role: Role) -> Result<()>;
    async fn delete_gateway_role(&self, kind: PrincipalKind, id: &str, gateway: &str) -> Result<bool>;
    async fn gateway_roles(&self, kind: PrincipalKind, id: &str) -> Result<BTreeMap<String, Role>>;
    /// Everything that decides a principal's roles, in one read.
    async fn grants(&self, kind: PrincipalKind, id: &str) -> Result<Grants>;

    /// Re-seals every stored secret (gateway client keys and bearer tokens,
    /// the audit chain's key) with `new` and makes it the server key, in one
    /// transaction; returns how many secrets were re-sealed. Afterwards only
    /// `new` opens the database.
    async fn rotate_key(&self, new: &SecretCipher) -> Result<u64>;

    // --- sandbox metadata ---
    async fn get_sandbox_metadata(&self, gateway: &str, sandbox: &str) -> Result<Option<SandboxMetadata>>;
    /// Every row of one gateway, by sandbox name.
    async fn list_sandbox_metadata(&self, gateway: &str) -> Result<Vec<SandboxMetadata>>;
    async fn put_sandbox_metadata(&self, m: &SandboxMetadata) -> Result<()>;
    async fn delete_sandbox_metadata(&self, gateway: &str, sandbox: &str) -> Result<bool>;

    // --- SSH sessions Breakwater issued (by token digest) ---
    async fn record_ssh_session(&self, s: &SshSessionRecord) -> Result<()>;
    async fn get_ssh_session(&self, token_digest: &str) -> Result<Option<SshSessionRecord>>;
    async fn delete_ssh_session(&self, token_digest: &str) -> Result<bool>;
    /// Forgets sessions that expired before `before`; how many.
    async fn delete_expired_ssh_sessions(&self, before: DateTime<Utc>) -> Result<u64>;
}

/// How long to keep retrying while the database is not reachable yet.
pub const CONNECT_PATIENCE: Duration = Duration::from_secs(30);

async fn with_connect_retry<T, F, Fut>(what: &str, patience: Duration, mut connect: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
{
    let started = std::time::Instant::now();
    let mut delay = Duration::from_millis(200);
    loop {
        match connect().await {
            Ok(v) => return Ok(v),
            Err(e) if started.elapsed() + delay < patience => {
                tracing::warn!(error = %e, ?delay, "{what} is not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(5));
            }
            Err(e) => return Err(StoreError::Unavailable(format!("{what}: {e}"))),
        }
    }
}

fn status_of(raw: &str) -> Result<GatewayStatus> {
    GatewayStatus::parse(raw).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// Timestamps are kept at microsecond precision: what PostgreSQL stores, so
/// hashes computed before and after a round trip agree.
fn now() -> DateTime<Utc> {
    Utc::now().trunc_subsecs(6)
}

macro_rules! impl_store {
    ($store:ident, $db:ty, $pool:ty) => {
        #[async_trait]
        impl Store for $store {
            async fn ping(&self) -> Result<()> {
                sqlx::query("SELECT 1").execute(&self.pool).await?;
                Ok(())
            }

            async fn insert_gateway(&self, g: &NewGateway) -> Result<GatewayRecord> {
                let key = g.client_key.as_ref().map(|k| self.cipher.encrypt(k.expose().as_bytes())).transpose()?;
                let token = g.bearer_token.as_ref().map(|k| self.cipher.encrypt(k.expose().as_bytes())).transpose()?;
                let at = now();
                let mut tx = self.pool.begin().await?;
                let inserted = sqlx::query(
                    "INSERT INTO gateways (name, endpoint, scheme, auth_mode, skip_server_verification, ca_cert, \
                     client_cert, client_key_enc, metadata, description, registered_at, updated_at, bearer_token_enc) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11, $12)",
                )
                .bind(g.name.as_str())
                .bind(&g.endpoint)
                .bind(&g.scheme)
                .bind(g.auth_mode.as_str())
                .bind(g.skip_server_verification)
                .bind(&g.ca_cert)
                .bind(&g.client_cert)
                .bind(key)
                .bind(Json(&g.metadata))
                .bind(&g.description)
                .bind(at)
                .bind(token)
                .execute(&mut *tx)
                .await;
                match inserted {
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        return Err(StoreError::Conflict(format!("gateway {}", g.name)));
                    }
                    other => {
                        other?;
                    }
                }
                for (k, v) in &g.labels {
                    sqlx::query("INSERT INTO gateway_labels (gateway, key, value) VALUES ($1, $2, $3)")
                        .bind(g.name.as_str())
                        .bind(k)
                        .bind(v)
                        .execute(&mut *tx)
                        .await?;
                }
                tx.commit().await?;
                self.get_gateway(&g.name).await?.ok_or_else(|| StoreError::NotFound(format!("gateway {}", g.name)))
            }

            async fn delete_gateway(&self, name: &GatewayName) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                // What we kept about its sandboxes goes with it.
                sqlx::query("DELETE FROM sandbox_metadata WHERE gateway = $1").bind(name.as_str()).execute(&mut *tx).await?;
                sqlx::query("DELETE FROM ssh_sessions WHERE gateway = $1").bind(name.as_str()).execute(&mut *tx).await?;
                let done = sqlx::query("DELETE FROM gateways WHERE name = $1").bind(name.as_str()).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() > 0)
            }

            async fn get_gateway(&self, name: &GatewayName) -> Result<Option<GatewayRecord>> {
                let row = sqlx::query(GATEWAY_SELECT_ONE).bind(name.as_str()).fetch_optional(&self.pool).await?;
                let Some(row) = row else { return Ok(None) };
                let labels = self.labels_of(&[name.as_str().to_owned()]).await?;
                Ok(Some(self.gateway_from_row(&row, &labels)?))
            }

            async fn list_gateways(
                &self,
                selector: &LabelSelector,
                limit: u32,
                offset: u32,
            ) -> Result<(Vec<GatewayRecord>, u64)> {
                let mut count = sqlx::QueryBuilder::<$db>::new("SELECT COUNT(*) FROM gateways WHERE 1 = 1");
                let mut list = sqlx::QueryBuilder::<$db>::new(GATEWAY_SELECT);
                list.push(" WHERE 1 = 1");
                for (k, v) in selector.pairs() {
                    for q in [&mut count, &mut list] {
                        q.push(" AND name IN (SELECT gateway FROM gateway_labels WHERE key = ");
                        q.push_bind(k.to_owned());
                        q.push(" AND value = ");
                        q.push_bind(v.to_owned());
                        q.push(")");
                    }
                }
                let total: i64 = count.build().fetch_one(&self.pool).await?.try_get(0)?;
                list.push(" ORDER BY name LIMIT ");
                list.push_bind(i64::from(limit));
                list.push(" OFFSET ");
                list.push_bind(i64::from(offset));
                let rows = list.build().fetch_all(&self.pool).await?;
                let names: Vec<String> = rows.iter().map(|r| r.try_get::<String, _>("name")).collect::<Result<_, _>>()?;
                let labels = self.labels_of(&names).await?;
                let items = rows.iter().map(|r| self.gateway_from_row(r, &labels)).collect::<Result<Vec<_>>>()?;
                Ok((items, u64::try_from(total).unwrap_or(0)))
            }

            async fn update_gateway_health(&self, name: &GatewayName, h: &GatewayHealth) -> Result<()> {
                sqlx::query(
                    "UPDATE gateways SET status = $2, error_code = $3, error = $4, \
                     version = COALESCE($5, version), checked_at = $6, last_seen = COALESCE($7, last_seen) \
                     WHERE name = $1",
                )
                .bind(name.as_str())
                .bind(h.status.as_str())
                .bind(&h.error_code)
                .bind(&h.error)
                .bind(&h.version)
                .bind(h.checked_at.map(|t| t.trunc_subsecs(6)))
                .bind(h.last_seen.map(|t| t.trunc_subsecs(6)))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn update_gateway_metadata(
                &self,
                name: &GatewayName,
                patch: &GatewayMetadataPatch,
            ) -> Result<GatewayRecord> {
                let mut tx = self.pool.begin().await?;
                let found = sqlx::query("UPDATE gateways SET updated_at = $2 WHERE name = $1")
                    .bind(name.as_str())
                    .bind(now())
                    .execute(&mut *tx)
                    .await?;
                if found.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("gateway {name}")));
                }
                let description = match &patch.description {
                    FieldPatch::Keep => None,
                    FieldPatch::Clear => Some(None),
                    FieldPatch::Set(d) => Some(Some(d.as_str())),
                };
                if let Some(description) = description {
                    sqlx::query("UPDATE gateways SET description = $2 WHERE name = $1")
                        .bind(name.as_str())
                        .bind(description)
                        .execute(&mut *tx)
                        .await?;
                }
                let labels = match &patch.labels {
                    FieldPatch::Keep => None,
                    FieldPatch::Clear => Some(None),
                    FieldPatch::Set(l) => Some(Some(l)),
                };
                if let Some(labels) = labels {
                    sqlx::query("DELETE FROM gateway_labels WHERE gateway = $1").bind(name.as_str()).execute(&mut *tx).await?;
                    for (k, v) in labels.into_iter().flatten() {
                        sqlx::query("INSERT INTO gateway_labels (gateway, key, value) VALUES ($1, $2, $3)")
                            .bind(name.as_str())
                            .bind(k)
                            .bind(v)
                            .execute(&mut *tx)
                            .await?;
                    }
                }
                tx.commit().await?;
                self.get_gateway(name).await?.ok_or_else(|| StoreError::NotFound(format!("gateway {name}")))
            }

            async fn append_audit(&self, e: &NewAuditEntry) -> Result<AuditEntry> {
                let mut tx = self.pool.begin().await?;
                // Taking the chain row first serialises appenders (a row lock
                // in PostgreSQL, the write lock in SQLite).
                let head = sqlx::query("UPDATE audit_chain SET seq = seq + 1 WHERE id = 1 RETURNING seq, head_hash")
                    .fetch_one(&mut *tx)
                    .await?;
                let seq: i64 = head.try_get("seq")?;
                let prev_hash: String = head.try_get("head_hash")?;
                let id = uuid::Uuid::new_v4().to_string();
                let at = now();
                let hash = audit_hash(&self.audit_key(), seq, e, &id, at, &prev_hash);
                sqlx::query(
                    "INSERT INTO audit_log (seq, id, at, actor, role, client_ip, action, resource_type, resource_id, \
                     gateway, detail, prev_hash, hash) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13)",
                )
                .bind(seq)
                .bind(&id)
                .bind(at)
                .bind(&e.actor)
                .bind(&e.role)
                .bind(&e.client_ip)
                .bind(&e.action)
                .bind(&e.resource_type)
                .bind(&e.resource_id)
                .bind(&e.gateway)
                .bind(Json(&e.detail))
                .bind(&prev_hash)
                .bind(&hash)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE audit_chain SET head_hash = $1 WHERE id = 1").bind(&hash).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(e.clone().chained(seq, id, at, prev_hash, hash))
            }

            async fn list_audit(&self, f: &AuditFilter, limit: u32, offset: u32) -> Result<(Vec<AuditEntry>, u64)> {
                let mut count = sqlx::QueryBuilder::<$db>::new("SELECT COUNT(*) FROM audit_log WHERE 1 = 1");
                let mut list = sqlx::QueryBuilder::<$db>::new(AUDIT_SELECT);
                list.push(" WHERE 1 = 1");
                for q in [&mut count, &mut list] {
                    if let Some(v) = &f.actor {
                        q.push(" AND actor = ").push_bind(v.clone());
                    }
                    if let Some(v) = &f.action {
                        q.push(" AND action = ").push_bind(v.clone());
                    }
                    if let Some(v) = &f.resource_type {
                        q.push(" AND resource_type = ").push_bind(v.clone());
                    }
                    if let Some(v) = &f.gateway {
                        q.push(" AND gateway = ").push_bind(v.clone());
                    }
                    if let Some(v) = f.since {
                        q.push(" AND at >= ").push_bind(v);
                    }
                    if let Some(v) = f.until {
                        q.push(" AND at < ").push_bind(v);
                    }
                }
                let total: i64 = count.build().fetch_one(&self.pool).await?.try_get(0)?;
                list.push(" ORDER BY seq DESC LIMIT ").push_bind(i64::from(limit));
                list.push(" OFFSET ").push_bind(i64::from(offset));
                let rows = list.build().fetch_all(&self.pool).await?;
                let items = rows.iter().map(audit_from_row).collect::<Result<Vec<_>>>()?;
                Ok((items, u64::try_from(total).unwrap_or(0)))
            }

            async fn audit_after(&self, after: i64, limit: u32) -> Result<Vec<AuditEntry>> {
                let sql = format!("{AUDIT_SELECT} WHERE seq > $1 ORDER BY seq LIMIT $2");
                let rows = sqlx::query(&sql).bind(after).bind(i64::from(limit)).fetch_all(&self.pool).await?;
                rows.iter().map(audit_from_row).collect()
            }

            async fn audit_chain(&self) -> Result<AuditChain> {
                let row = sqlx::query("SELECT seq, head_hash, anchor_seq, anchor_hash FROM audit_chain WHERE id = 1")
                    .fetch_one(&self.pool)
                    .await?;
                Ok(AuditChain {
                    anchor_seq: row.try_get("anchor_seq")?,
                    anchor_hash: row.try_get("anchor_hash")?,
                    head_seq: row.try_get("seq")?,
                    head_hash: row.try_get("head_hash")?,
                })
            }

            fn audit_key(&self) -> [u8; 32] {
                self.audit_key
            }

            async fn delete_audit_before(&self, cutoff: DateTime<Utc>) -> Result<u64> {
                let mut tx = self.pool.begin().await?;
                // Lock the chain first, like appends do.
                sqlx::query("UPDATE audit_chain SET seq = seq WHERE id = 1").execute(&mut *tx).await?;
                let last = sqlx::query("SELECT seq, hash FROM audit_log WHERE at < $1 ORDER BY seq DESC LIMIT 1")
                    .bind(cutoff)
                    .fetch_optional(&mut *tx)
                    .await?;
                let Some(last) = last else { return Ok(0) };
                let (seq, hash): (i64, String) = (last.try_get("seq")?, last.try_get("hash")?);
                let deleted = sqlx::query("DELETE FROM audit_log WHERE seq <= $1").bind(seq).execute(&mut *tx).await?;
                sqlx::query("UPDATE audit_chain SET anchor_seq = $1, anchor_hash = $2 WHERE id = 1")
                    .bind(seq)
                    .bind(&hash)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(deleted.rows_affected())
            }

            async fn get_pin(&self, gateway: &str, sandbox: &str) -> Result<Option<PolicyPin>> {
                let row = sqlx::query(
                    "SELECT version, pinned_by, reason, pinned_at, expires_at FROM policy_pins \
                     WHERE gateway = $1 AND sandbox = $2",
                )
                .bind(gateway)
                .bind(sandbox)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let version: i64 = row.try_get("version")?;
                Ok(Some(PolicyPin {
                    gateway: gateway.to_owned(),
                    sandbox: sandbox.to_owned(),
                    version: u32::try_from(version).map_err(|_| StoreError::Corrupt("pin version".into()))?,
                    pinned_by: row.try_get("pinned_by")?,
                    reason: row.try_get("reason")?,
                    pinned_at: row.try_get("pinned_at")?,
                    expires_at: row.try_get("expires_at")?,
                }))
            }

            async fn put_pin(&self, p: &PolicyPin) -> Result<()> {
                sqlx::query(
                    "INSERT INTO policy_pins (gateway, sandbox, version, pinned_by, reason, pinned_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (gateway, sandbox) DO UPDATE SET \
                     version = excluded.version, pinned_by = excluded.pinned_by, reason = excluded.reason, \
                     pinned_at = excluded.pinned_at, expires_at = excluded.expires_at",
                )
                .bind(&p.gateway)
                .bind(&p.sandbox)
                .bind(i64::from(p.version))
                .bind(&p.pinned_by)
                .bind(&p.reason)
                .bind(p.pinned_at.trunc_subsecs(6))
                .bind(p.expires_at.map(|t| t.trunc_subsecs(6)))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn delete_pin(&self, gateway: &str, sandbox: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM policy_pins WHERE gateway = $1 AND sandbox = $2")
                    .bind(gateway)
                    .bind(sandbox)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn get_workflow(&self, gateway: &str, sandbox: &str) -> Result<Option<ApprovalWorkflow>> {
                let row = sqlx::query(
                    "SELECT required_approvals, required_roles, distinct_actors, escalation_timeout_minutes, \
                     updated_by, updated_at FROM approval_workflows WHERE gateway = $1 AND sandbox = $2",
                )
                .bind(gateway)
                .bind(sandbox)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let n: i64 = row.try_get("required_approvals")?;
                let roles: String = row.try_get("required_roles")?;
                let esc: Option<i64> = row.try_get("escalation_timeout_minutes")?;
                Ok(Some(ApprovalWorkflow {
                    gateway: gateway.to_owned(),
                    sandbox: sandbox.to_owned(),
                    required_approvals: u32::try_from(n).map_err(|_| StoreError::Corrupt("required_approvals".into()))?,
                    required_roles: serde_json::from_str(&roles).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    distinct_actors: row.try_get("distinct_actors")?,
                    escalation_timeout_minutes: esc.and_then(|m| u32::try_from(m).ok()),
                    updated_by: row.try_get("updated_by")?,
                    updated_at: row.try_get("updated_at")?,
                }))
            }

            async fn put_workflow(&self, w: &ApprovalWorkflow) -> Result<()> {
                sqlx::query(
                    "INSERT INTO approval_workflows (gateway, sandbox, required_approvals, required_roles, \
                     distinct_actors, escalation_timeout_minutes, updated_by, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (gateway, sandbox) DO UPDATE SET \
                     required_approvals = excluded.required_approvals, required_roles = excluded.required_roles, \
                     distinct_actors = excluded.distinct_actors, \
                     escalation_timeout_minutes = excluded.escalation_timeout_minutes, \
                     updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                )
                .bind(&w.gateway)
                .bind(&w.sandbox)
                .bind(i64::from(w.required_approvals))
                .bind(serde_json::to_string(&w.required_roles).unwrap_or_else(|_| "[]".into()))
                .bind(w.distinct_actors)
                .bind(w.escalation_timeout_minutes.map(i64::from))
                .bind(&w.updated_by)
                .bind(w.updated_at.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn delete_workflow(&self, gateway: &str, sandbox: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM approval_workflows WHERE gateway = $1 AND sandbox = $2")
                    .bind(gateway)
                    .bind(sandbox)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn put_vote(&self, gateway: &str, sandbox: &str, v: &Vote) -> Result<()> {
                sqlx::query(
                    "INSERT INTO approval_votes (gateway, sandbox, chunk_id, actor, role, decision, reason, at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (gateway, sandbox, chunk_id, actor) \
                     DO UPDATE SET role = excluded.role, decision = excluded.decision, reason = excluded.reason, \
                     at = excluded.at",
                )
                .bind(gateway)
                .bind(sandbox)
                .bind(&v.chunk_id)
                .bind(&v.actor)
                .bind(&v.role)
                .bind(v.decision.as_str())
                .bind(&v.reason)
                .bind(v.at.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn votes(&self, gateway: &str, sandbox: &str, chunk_id: &str) -> Result<Vec<Vote>> {
                let rows = sqlx::query(
                    "SELECT actor, role, decision, reason, at FROM approval_votes \
                     WHERE gateway = $1 AND sandbox = $2 AND chunk_id = $3 ORDER BY at, actor",
                )
                .bind(gateway)
                .bind(sandbox)
                .bind(chunk_id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        let d: String = row.try_get("decision")?;
                        Ok(Vote {
                            chunk_id: chunk_id.to_owned(),
                            actor: row.try_get("actor")?,
                            role: row.try_get("role")?,
                            decision: Decision::parse(&d).ok_or_else(|| StoreError::Corrupt(format!("decision {d}")))?,
                            reason: row.try_get("reason")?,
                            at: row.try_get("at")?,
                        })
                    })
                    .collect()
            }

            async fn claim_outcome(&self, gateway: &str, sandbox: &str, chunk_id: &str, outcome: Decision) -> Result<bool> {
                let done = sqlx::query(
                    "INSERT INTO approval_outcomes (gateway, sandbox, chunk_id, outcome, decided_at) \
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT (gateway, sandbox, chunk_id) DO NOTHING",
                )
                .bind(gateway)
                .bind(sandbox)
                .bind(chunk_id)
                .bind(outcome.as_str())
                .bind(now())
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn release_outcome(&self, gateway: &str, sandbox: &str, chunk_id: &str) -> Result<()> {
                sqlx::query("DELETE FROM approval_outcomes WHERE gateway = $1 AND sandbox = $2 AND chunk_id = $3")
                    .bind(gateway)
                    .bind(sandbox)
                    .bind(chunk_id)
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn outcome(&self, gateway: &str, sandbox: &str, chunk_id: &str) -> Result<Option<Decision>> {
                let raw: Option<String> = sqlx::query_scalar(
                    "SELECT outcome FROM approval_outcomes WHERE gateway = $1 AND sandbox = $2 AND chunk_id = $3",
                )
                .bind(gateway)
                .bind(sandbox)
                .bind(chunk_id)
                .fetch_optional(&self.pool)
                .await?;
                Ok(raw.as_deref().and_then(Decision::parse))
            }

            async fn record_chunk_action(&self, gateway: &str, sandbox: &str, a: &ChunkAction) -> Result<()> {
                sqlx::query(
                    "INSERT INTO chunk_actions (gateway, sandbox, chunk_id, action, actor, at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(gateway)
                .bind(sandbox)
                .bind(&a.chunk_id)
                .bind(&a.action)
                .bind(&a.actor)
                .bind(a.at.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn insert_operation(&self, op: &Operation, idempotency: Option<(&str, &str)>) -> Result<OperationInsert> {
                let (idempotency_key, fingerprint) = idempotency.unzip();
                let inserted = sqlx::query(
                    "INSERT INTO operations (id, gateway, resource_type, resource_name, action, status, active_key, \
                     idempotency_key, progress, message, actor, created_at, updated_at, owner, idempotency_fingerprint) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12, $13, $14)",
                )
                .bind(&op.id)
                .bind(&op.gateway)
                .bind(&op.resource_type)
                .bind(&op.resource_name)
                .bind(&op.action)
                .bind(op.status.as_str())
                .bind(op.status.is_active().then(|| op.active_key()))
                .bind(idempotency_key)
                .bind(i64::from(op.progress))
                .bind(&op.message)
                .bind(&op.actor)
                .bind(op.created_at.trunc_subsecs(6))
                .bind(&op.owner)
                .bind(fingerprint)
                .execute(&self.pool)
                .await;
                match inserted {
                    Ok(_) => Ok(OperationInsert::Created),
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        if let Some(key) = idempotency_key
                            && let Some((existing, first)) = self.get_operation_by_key(key).await?
                        {
                            return Ok(if first.is_none_or(|f| Some(f.as_str()) == fingerprint) {
                                OperationInsert::SameKey(existing)
                            } else {
                                OperationInsert::KeyReused(existing)
                            });
                        }
                        let row = sqlx::query(&format!("{OPERATION_SELECT} WHERE active_key = $1"))
                            .bind(op.active_key())
                            .fetch_optional(&self.pool)
                            .await?;
                        match row {
                            Some(row) => Ok(OperationInsert::Busy(operation_from_row(&row)?)),
                            // The other one finished in between: try once more.
                            None => Err(StoreError::Conflict(format!("operation on {}", op.resource_name))),
                        }
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn get_active_operation(&self, active_key: &str) -> Result<Option<Operation>> {
                let row = sqlx::query(&format!("{OPERATION_SELECT} WHERE active_key = $1"))
                    .bind(active_key)
                    .fetch_optional(&self.pool)
                    .await?;
                row.as_ref().map(operation_from_row).transpose()
            }

            async fn get_operation(&self, id: &str) -> Result<Option<Operation>> {
                let row = sqlx::query(&format!("{OPERATION_SELECT} WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?;
                row.as_ref().map(operation_from_row).transpose()
            }

            async fn get_operation_by_key(&self, key: &str) -> Result<Option<(Operation, Option<String>)>> {
                let sql = format!(
                    "{} WHERE idempotency_key = $1",
                    OPERATION_SELECT.replace(" FROM operations", ", idempotency_fingerprint FROM operations")
                );
                let Some(row) = sqlx::query(&sql).bind(key).fetch_optional(&self.pool).await? else {
                    return Ok(None);
                };
                Ok(Some((operation_from_row(&row)?, row.try_get("idempotency_fingerprint")?)))
            }

            async fn save_operation(&self, op: &Operation, from: OperationStatus) -> Result<bool> {
                let done = sqlx::query(
                    "UPDATE operations SET status = $2, active_key = $3, progress = $4, message = $5, result = $6, \
                     error_code = $7, error = $8, updated_at = $9 WHERE id = $1 AND status = $10",
                )
                .bind(&op.id)
                .bind(op.status.as_str())
                .bind(op.status.is_active().then(|| op.active_key()))
                .bind(i64::from(op.progress))
                .bind(&op.message)
                .bind(op.result.as_ref().map(Json))
                .bind(op.error_code.map(OperationError::as_str))
                .bind(&op.error)
                .bind(op.updated_at.trunc_subsecs(6))
                .bind(from.as_str())
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn list_operations(
                &self,
                status: Option<OperationStatus>,
                resource_type: Option<&str>,
                limit: u32,
                offset: u32,
            ) -> Result<(Vec<Operation>, u64)> {
                let filter = "WHERE ($1 IS NULL OR status = $1) AND ($2 IS NULL OR resource_type = $2)";
                let total: i64 = sqlx::query_scalar(&format!("SELECT COUNT(*) FROM operations {filter}"))
                    .bind(status.map(OperationStatus::as_str))
                    .bind(resource_type)
                    .fetch_one(&self.pool)
                    .await?;
                let rows = sqlx::query(&format!("{OPERATION_SELECT} {filter} ORDER BY created_at DESC, id LIMIT $3 OFFSET $4"))
                    .bind(status.map(OperationStatus::as_str))
                    .bind(resource_type)
                    .bind(i64::from(limit))
                    .bind(i64::from(offset))
                    .fetch_all(&self.pool)
                    .await?;
                let items = rows.iter().map(operation_from_row).collect::<Result<Vec<_>>>()?;
                Ok((items, u64::try_from(total).unwrap_or(0)))
            }

            async fn operation_counts(&self) -> Result<Vec<(OperationStatus, u64)>> {
                let rows = sqlx::query("SELECT status, COUNT(*) AS n FROM operations GROUP BY status").fetch_all(&self.pool).await?;
                rows.iter()
                    .map(|row| {
                        let s: String = row.try_get("status")?;
                        let n: i64 = row.try_get("n")?;
                        let status = OperationStatus::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("status {s}")))?;
                        Ok((status, u64::try_from(n).unwrap_or(0)))
                    })
                    .collect()
            }

            async fn fail_active_operations(&self, before: DateTime<Utc>, code: OperationError, message: &str) -> Result<u64> {
                let done = sqlx::query(
                    "UPDATE operations SET status = 'failed', active_key = NULL, error_code = $1, error = $2, \
                     updated_at = $3 WHERE active_key IS NOT NULL AND updated_at < $4",
                )
                .bind(code.as_str())
                .bind(message)
                .bind(now())
                .bind(before.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected())
            }

            async fn fail_orphaned_operations(
                &self,
                alive_since: DateTime<Utc>,
                previous_self: Option<&str>,
                message: &str,
            ) -> Result<u64> {
                let done = sqlx::query(
                    "UPDATE operations SET status = 'failed', active_key = NULL, error_code = 'orphaned', error = $1, \
                     updated_at = $2 WHERE active_key IS NOT NULL AND (owner IS NULL OR owner = $3 OR owner NOT IN \
                     (SELECT id FROM replicas WHERE heartbeat_at >= $4))",
                )
                .bind(message)
                .bind(now())
                .bind(previous_self)
                .bind(alive_since.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected())
            }

            async fn cancelling_operations(&self, owner: &str) -> Result<Vec<String>> {
                let rows = sqlx::query("SELECT id FROM operations WHERE owner = $1 AND status = 'cancelling'")
                    .bind(owner)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok(r.try_get("id")?)).collect()
            }

            async fn replica_heartbeat(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
                let at = at.trunc_subsecs(6);
                sqlx::query(
                    "INSERT INTO replicas (id, started_at, heartbeat_at) VALUES ($1, $2, $2) \
                     ON CONFLICT (id) DO UPDATE SET heartbeat_at = excluded.heartbeat_at",
                )
                .bind(id)
                .bind(at)
                .execute(&self.pool)
                .await?;
                sqlx::query("DELETE FROM replicas WHERE heartbeat_at < $1")
                    .bind(at - chrono::Duration::days(1))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn replica_seen(&self, id: &str) -> Result<Option<DateTime<Utc>>> {
                let row = sqlx::query("SELECT heartbeat_at FROM replicas WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| Ok(r.try_get("heartbeat_at")?)).transpose()
            }

            async fn delete_finished_operations(&self, before: DateTime<Utc>) -> Result<u64> {
                let done = sqlx::query("DELETE FROM operations WHERE active_key IS NULL AND updated_at < $1")
                    .bind(before.trunc_subsecs(6))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn count_users(&self) -> Result<u64> {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&self.pool).await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn insert_user(&self, u: &User, password_hash: Option<&str>) -> Result<()> {
                self.insert_user_row(u, password_hash, None).await
            }

            async fn insert_first_user(&self, u: &User, password_hash: &str) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                let claimed = sqlx::query("INSERT INTO setup_claim (id, claimed_at) VALUES (1, $1)")
                    .bind(now())
                    .execute(&mut *tx)
                    .await;
                match claimed {
                    Ok(_) => {}
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => return Ok(false),
                    Err(e) => return Err(e.into()),
                }
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users").fetch_one(&mut *tx).await?;
                if n > 0 {
                    return Ok(false);
                }
                sqlx::query(
                    "INSERT INTO users (id, email, password_hash, role, active, failed_logins, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $6)",
                )
                .bind(&u.id)
                .bind(&u.email)
                .bind(password_hash)
                .bind(u.role.as_str())
                .bind(u.active)
                .bind(u.created_at.trunc_subsecs(6))
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(true)
            }

            async fn get_user(&self, id: &str) -> Result<Option<User>> {
                let row = sqlx::query(&format!("{USER_SELECT} WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?;
                row.map(|r| user_from_row(&r)).transpose()
            }

            async fn user_by_email(&self, email: &str) -> Result<Option<(User, Option<String>)>> {
                let row =
                    sqlx::query(&format!("{USER_SELECT} WHERE email = $1")).bind(email).fetch_optional(&self.pool).await?;
                row.map(|r| Ok((user_from_row(&r)?, r.try_get("password_hash")?))).transpose()
            }

            async fn list_users(&self) -> Result<Vec<User>> {
                let rows = sqlx::query(&format!("{USER_SELECT} ORDER BY email")).fetch_all(&self.pool).await?;
                rows.iter().map(|r| user_from_row(r)).collect()
            }

            async fn set_user_role_if(&self, id: &str, from: Role, to: Role, at: DateTime<Utc>) -> Result<bool> {
                let done = sqlx::query("UPDATE users SET role = $3, updated_at = $4 WHERE id = $1 AND role = $2 AND active")
                    .bind(id)
                    .bind(from.as_str())
                    .bind(to.as_str())
                    .bind(at.trunc_subsecs(6))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() == 1)
            }

            async fn save_user(&self, u: &User) -> Result<()> {
                let done = sqlx::query(
                    "UPDATE users SET role = $2, active = $3, failed_logins = $4, locked_until = $5, \
                     updated_at = $6 WHERE id = $1",
                )
                .bind(&u.id)
                .bind(u.role.as_str())
                .bind(u.active)
                .bind(i64::from(u.failed_logins))
                .bind(u.locked_until.map(|t| t.trunc_subsecs(6)))
                .bind(u.updated_at.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                if done.rows_affected() == 0 {
                    return Err(StoreError::NotFound(format!("user {}", u.id)));
                }
                Ok(())
            }

            async fn set_password_hash(&self, user_id: &str, hash: &str) -> Result<()> {
                sqlx::query("UPDATE users SET password_hash = $2, updated_at = $3 WHERE id = $1")
                    .bind(user_id)
                    .bind(hash)
                    .bind(now())
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_user(&self, id: &str) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM gateway_roles WHERE principal_kind = 'user' AND principal_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query("DELETE FROM users WHERE id = $1").bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() > 0)
            }

            async fn count_active_admins(&self) -> Result<u64> {
                let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND active = $1")
                    .bind(true)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(u64::try_from(n).unwrap_or(0))
            }

            async fn insert_session(&self, token_hash: &str, s: &Session) -> Result<()> {
                sqlx::query(
                    "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(token_hash)
                .bind(&s.user_id)
                .bind(s.created_at.trunc_subsecs(6))
                .bind(s.last_seen_at.trunc_subsecs(6))
                .bind(s.expires_at.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn get_session(&self, token_hash: &str) -> Result<Option<Session>> {
                let row = sqlx::query(
                    "SELECT user_id, created_at, last_seen_at, expires_at FROM sessions WHERE token_hash = $1",
                )
                .bind(token_hash)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| {
                    Ok(Session {
                        user_id: r.try_get("user_id")?,
                        created_at: r.try_get("created_at")?,
                        last_seen_at: r.try_get("last_seen_at")?,
                        expires_at: r.try_get("expires_at")?,
                    })
                })
                .transpose()
            }

            async fn touch_session(&self, token_hash: &str, at: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE sessions SET last_seen_at = $2 WHERE token_hash = $1")
                    .bind(token_hash)
                    .bind(at.trunc_subsecs(6))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_session(&self, token_hash: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM sessions WHERE token_hash = $1").bind(token_hash).execute(&self.pool).await?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_user_sessions(&self, user_id: &str) -> Result<u64> {
                let done = sqlx::query("DELETE FROM sessions WHERE user_id = $1").bind(user_id).execute(&self.pool).await?;
                Ok(done.rows_affected())
            }

            async fn insert_service_principal(&self, sp: &ServicePrincipal, key_hash: &str) -> Result<()> {
                let done = sqlx::query(
                    "INSERT INTO service_principals (id, name, role, key_hash, key_prefix, expires_at, last_used_at, \
                     created_by, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(&sp.id)
                .bind(&sp.name)
                .bind(sp.role.as_str())
                .bind(key_hash)
                .bind(&sp.key_prefix)
                .bind(sp.expires_at.map(|t| t.trunc_subsecs(6)))
                .bind(sp.last_used_at.map(|t| t.trunc_subsecs(6)))
                .bind(&sp.created_by)
                .bind(sp.created_at.trunc_subsecs(6))
                .execute(&self.pool)
                .await;
                match done {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        Err(StoreError::Conflict(format!("service principal {}", sp.name)))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn list_service_principals(&self) -> Result<Vec<ServicePrincipal>> {
                let rows = sqlx::query(&format!("{SP_SELECT} ORDER BY name")).fetch_all(&self.pool).await?;
                rows.iter().map(|r| service_principal_from_row(r)).collect()
            }

            async fn get_service_principal(&self, id: &str) -> Result<Option<ServicePrincipal>> {
                let row = sqlx::query(&format!("{SP_SELECT} WHERE id = $1")).bind(id).fetch_optional(&self.pool).await?;
                row.map(|r| service_principal_from_row(&r)).transpose()
            }

            async fn service_principal_by_key(&self, key_hash: &str) -> Result<Option<ServicePrincipal>> {
                let row =
                    sqlx::query(&format!("{SP_SELECT} WHERE key_hash = $1")).bind(key_hash).fetch_optional(&self.pool).await?;
                row.map(|r| service_principal_from_row(&r)).transpose()
            }

            async fn rotate_service_principal_key(&self, id: &str, key_hash: &str, key_prefix: &str) -> Result<bool> {
                let done = sqlx::query("UPDATE service_principals SET key_hash = $2, key_prefix = $3 WHERE id = $1")
                    .bind(id)
                    .bind(key_hash)
                    .bind(key_prefix)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn touch_service_principal(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
                sqlx::query("UPDATE service_principals SET last_used_at = $2 WHERE id = $1")
                    .bind(id)
                    .bind(at.trunc_subsecs(6))
                    .execute(&self.pool)
                    .await?;
                Ok(())
            }

            async fn delete_service_principal(&self, id: &str) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM gateway_roles WHERE principal_kind = 'service_principal' AND principal_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                let done = sqlx::query("DELETE FROM service_principals WHERE id = $1").bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() > 0)
            }

            async fn insert_invite(
                &self,
                token_hash: &str,
                email: &str,
                role: Role,
                created_by: &str,
                expires_at: DateTime<Utc>,
            ) -> Result<()> {
                sqlx::query(
                    "INSERT INTO invites (token_hash, email, role, created_by, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6)",
                )
                .bind(token_hash)
                .bind(email)
                .bind(role.as_str())
                .bind(created_by)
                .bind(now())
                .bind(expires_at.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn take_invite(&self, token_hash: &str, at: DateTime<Utc>) -> Result<Option<String>> {
                let at = at.trunc_subsecs(6);
                let email: Option<String> = sqlx::query_scalar(
                    "UPDATE invites SET used_at = $2 WHERE token_hash = $1 AND used_at IS NULL AND expires_at > $2 \
                     RETURNING email",
                )
                .bind(token_hash)
                .bind(at)
                .fetch_optional(&self.pool)
                .await?;
                Ok(email)
            }

            async fn insert_oidc_user(&self, u: &User, subject: &str) -> Result<()> {
                self.insert_user_row(u, None, Some(subject)).await
            }

            async fn user_by_oidc(&self, provider: &str, subject: &str) -> Result<Option<User>> {
                let row = sqlx::query(&format!("{USER_SELECT} WHERE oidc_provider = $1 AND oidc_subject = $2"))
                    .bind(provider)
                    .bind(subject)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| user_from_row(&r)).transpose()
            }

            async fn insert_oidc_login(&self, l: &OidcLogin) -> Result<()> {
                let sealed = self.cipher.encrypt(l.code_verifier.expose().as_bytes())?;
                sqlx::query("DELETE FROM oidc_logins WHERE expires_at <= $1")
                    .bind(l.created_at.trunc_subsecs(6))
                    .execute(&self.pool)
                    .await?;
                sqlx::query(
                    "INSERT INTO oidc_logins (state_hash, provider, browser_hash, nonce, code_verifier_enc, next, \
                     created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
                )
                .bind(&l.state_hash)
                .bind(&l.provider)
                .bind(&l.browser_hash)
                .bind(&l.nonce)
                .bind(sealed)
                .bind(&l.next)
                .bind(l.created_at.trunc_subsecs(6))
                .bind(l.expires_at.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn take_oidc_login(&self, state_hash: &str, at: DateTime<Utc>) -> Result<Option<OidcLogin>> {
                let row = sqlx::query(
                    "DELETE FROM oidc_logins WHERE state_hash = $1 RETURNING state_hash, provider, browser_hash, \
                     nonce, code_verifier_enc, next, created_at, expires_at",
                )
                .bind(state_hash)
                .fetch_optional(&self.pool)
                .await?;
                let Some(row) = row else { return Ok(None) };
                let sealed: Vec<u8> = row.try_get("code_verifier_enc")?;
                let verifier = String::from_utf8(self.cipher.decrypt(&sealed)?)
                    .map_err(|_| StoreError::Corrupt("oidc code verifier".into()))?;
                let login = OidcLogin {
                    state_hash: row.try_get("state_hash")?,
                    provider: row.try_get("provider")?,
                    browser_hash: row.try_get("browser_hash")?,
                    nonce: row.try_get("nonce")?,
                    code_verifier: Secret::new(verifier),
                    next: row.try_get("next")?,
                    created_at: row.try_get("created_at")?,
                    expires_at: row.try_get("expires_at")?,
                };
                Ok((login.expires_at > at).then_some(login))
            }

            async fn insert_group(&self, g: &Group) -> Result<()> {
                let done = sqlx::query("INSERT INTO groups (id, name, role, description, created_at) VALUES ($1, $2, $3, $4, $5)")
                    .bind(&g.id)
                    .bind(&g.name)
                    .bind(g.role.map(Role::as_str))
                    .bind(&g.description)
                    .bind(g.created_at.trunc_subsecs(6))
                    .execute(&self.pool)
                    .await;
                match done {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        Err(StoreError::Conflict(format!("group {}", g.name)))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn list_groups(&self) -> Result<Vec<Group>> {
                let rows = sqlx::query("SELECT id, name, role, description, created_at FROM groups ORDER BY name")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| group_from_row(r)).collect()
            }

            async fn get_group(&self, id: &str) -> Result<Option<Group>> {
                let row = sqlx::query("SELECT id, name, role, description, created_at FROM groups WHERE id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|r| group_from_row(&r)).transpose()
            }

            async fn update_group(&self, g: &Group) -> Result<bool> {
                let done = sqlx::query("UPDATE groups SET name = $2, role = $3, description = $4 WHERE id = $1")
                    .bind(&g.id)
                    .bind(&g.name)
                    .bind(g.role.map(Role::as_str))
                    .bind(&g.description)
                    .execute(&self.pool)
                    .await;
                match done {
                    Ok(d) => Ok(d.rows_affected() > 0),
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        Err(StoreError::Conflict(format!("group {}", g.name)))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn delete_group(&self, id: &str) -> Result<bool> {
                let mut tx = self.pool.begin().await?;
                sqlx::query("DELETE FROM gateway_roles WHERE principal_kind = 'group' AND principal_id = $1")
                    .bind(id)
                    .execute(&mut *tx)
                    .await?;
                sqlx::query("DELETE FROM group_members WHERE group_id = $1").bind(id).execute(&mut *tx).await?;
                let done = sqlx::query("DELETE FROM groups WHERE id = $1").bind(id).execute(&mut *tx).await?;
                tx.commit().await?;
                Ok(done.rows_affected() > 0)
            }

            async fn add_group_member(&self, group_id: &str, user_id: &str) -> Result<bool> {
                let done = sqlx::query(
                    "INSERT INTO group_members (group_id, user_id) VALUES ($1, $2) ON CONFLICT (group_id, user_id) DO NOTHING",
                )
                .bind(group_id)
                .bind(user_id)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn remove_group_member(&self, group_id: &str, user_id: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM group_members WHERE group_id = $1 AND user_id = $2")
                    .bind(group_id)
                    .bind(user_id)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn group_members(&self, group_id: &str) -> Result<Vec<String>> {
                let rows = sqlx::query("SELECT user_id FROM group_members WHERE group_id = $1 ORDER BY user_id")
                    .bind(group_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map(|r| Ok(r.try_get("user_id")?)).collect()
            }

            async fn put_gateway_role(&self, kind: PrincipalKind, id: &str, gateway: &str, role: Role) -> Result<()> {
                sqlx::query(
                    "INSERT INTO gateway_roles (principal_kind, principal_id, gateway, role) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (principal_kind, principal_id, gateway) DO UPDATE SET role = excluded.role",
                )
                .bind(kind.as_str())
                .bind(id)
                .bind(gateway)
                .bind(role.as_str())
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn delete_gateway_role(&self, kind: PrincipalKind, id: &str, gateway: &str) -> Result<bool> {
                let done = sqlx::query(
                    "DELETE FROM gateway_roles WHERE principal_kind = $1 AND principal_id = $2 AND gateway = $3",
                )
                .bind(kind.as_str())
                .bind(id)
                .bind(gateway)
                .execute(&self.pool)
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn gateway_roles(&self, kind: PrincipalKind, id: &str) -> Result<BTreeMap<String, Role>> {
                let rows = sqlx::query(
                    "SELECT gateway, role FROM gateway_roles WHERE principal_kind = $1 AND principal_id = $2",
                )
                .bind(kind.as_str())
                .bind(id)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|r| Ok((r.try_get("gateway")?, role_of(&r.try_get::<String, _>("role")?)?))).collect()
            }

            async fn grants(&self, kind: PrincipalKind, id: &str) -> Result<Grants> {
                let global: Option<String> = match kind {
                    PrincipalKind::User => {
                        sqlx::query_scalar("SELECT role FROM users WHERE id = $1 AND active = $2")
                            .bind(id)
                            .bind(true)
                            .fetch_optional(&self.pool)
                            .await?
                    }
                    PrincipalKind::ServicePrincipal => {
                        sqlx::query_scalar("SELECT role FROM service_principals WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&self.pool)
                            .await?
                    }
                    PrincipalKind::Group => {
                        sqlx::query_scalar::<_, Option<String>>("SELECT role FROM groups WHERE id = $1")
                            .bind(id)
                            .fetch_optional(&self.pool)
                            .await?
                            .flatten()
                    }
                };
                let mut grants = Grants {
                    global: global.as_deref().map(role_of).transpose()?,
                    gateways: self.gateway_roles(kind, id).await?,
                    groups: Vec::new(),
                };
                if kind == PrincipalKind::User {
                    let rows = sqlx::query(
                        "SELECT g.id, g.role, r.gateway, r.role AS gateway_role FROM group_members m \
                         JOIN groups g ON g.id = m.group_id \
                         LEFT JOIN gateway_roles r ON r.principal_kind = 'group' AND r.principal_id = g.id \
                         WHERE m.user_id = $1 ORDER BY g.id",
                    )
                    .bind(id)
                    .fetch_all(&self.pool)
                    .await?;
                    let mut by_group: BTreeMap<String, GroupGrant> = BTreeMap::new();
                    for r in &rows {
                        let entry = by_group.entry(r.try_get("id")?).or_default();
                        let role: Option<String> = r.try_get("role")?;
                        entry.global = role.as_deref().map(role_of).transpose()?;
                        let gateway: Option<String> = r.try_get("gateway")?;
                        let gateway_role: Option<String> = r.try_get("gateway_role")?;
                        if let (Some(g), Some(role)) = (gateway, gateway_role) {
                            entry.gateways.insert(g, role_of(&role)?);
                        }
                    }
                    grants.groups = by_group.into_values().collect();
                }
                Ok(grants)
            }

            async fn rotate_key(&self, new: &SecretCipher) -> Result<u64> {
                self.reseal_all(new).await
            }

            async fn get_sandbox_metadata(&self, gateway: &str, sandbox: &str) -> Result<Option<SandboxMetadata>> {
                let row = sqlx::query(
                    "SELECT gateway, sandbox, description, labels, updated_by, updated_at FROM sandbox_metadata \
                     WHERE gateway = $1 AND sandbox = $2",
                )
                .bind(gateway)
                .bind(sandbox)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| sandbox_metadata_from_row(&r)).transpose()
            }

            async fn list_sandbox_metadata(&self, gateway: &str) -> Result<Vec<SandboxMetadata>> {
                let rows = sqlx::query(
                    "SELECT gateway, sandbox, description, labels, updated_by, updated_at FROM sandbox_metadata \
                     WHERE gateway = $1 ORDER BY sandbox",
                )
                .bind(gateway)
                .fetch_all(&self.pool)
                .await?;
                rows.iter().map(|r| sandbox_metadata_from_row(r)).collect()
            }

            async fn put_sandbox_metadata(&self, m: &SandboxMetadata) -> Result<()> {
                let labels = m.labels.as_ref().map(|l| serde_json::to_string(l).unwrap_or_else(|_| "{}".into()));
                sqlx::query(
                    "INSERT INTO sandbox_metadata (gateway, sandbox, description, labels, updated_by, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (gateway, sandbox) DO UPDATE SET \
                     description = excluded.description, labels = excluded.labels, \
                     updated_by = excluded.updated_by, updated_at = excluded.updated_at",
                )
                .bind(&m.gateway)
                .bind(&m.sandbox)
                .bind(&m.description)
                .bind(labels)
                .bind(&m.updated_by)
                .bind(m.updated_at.trunc_subsecs(6))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn delete_sandbox_metadata(&self, gateway: &str, sandbox: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM sandbox_metadata WHERE gateway = $1 AND sandbox = $2")
                    .bind(gateway)
                    .bind(sandbox)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn record_ssh_session(&self, r: &SshSessionRecord) -> Result<()> {
                sqlx::query(
                    "INSERT INTO ssh_sessions (token_digest, gateway, sandbox, created_by, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (token_digest) DO NOTHING",
                )
                .bind(&r.token_digest)
                .bind(&r.gateway)
                .bind(&r.sandbox)
                .bind(&r.created_by)
                .bind(r.created_at.trunc_subsecs(6))
                .bind(r.expires_at.map(|t| t.trunc_subsecs(6)))
                .execute(&self.pool)
                .await?;
                Ok(())
            }

            async fn get_ssh_session(&self, token_digest: &str) -> Result<Option<SshSessionRecord>> {
                let row = sqlx::query(
                    "SELECT token_digest, gateway, sandbox, created_by, created_at, expires_at FROM ssh_sessions \
                     WHERE token_digest = $1",
                )
                .bind(token_digest)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|r| -> Result<SshSessionRecord> {
                    Ok(SshSessionRecord {
                        token_digest: r.try_get("token_digest")?,
                        gateway: r.try_get("gateway")?,
                        sandbox: r.try_get("sandbox")?,
                        created_by: r.try_get("created_by")?,
                        created_at: r.try_get("created_at")?,
                        expires_at: r.try_get("expires_at")?,
                    })
                })
                .transpose()
            }

            async fn delete_ssh_session(&self, token_digest: &str) -> Result<bool> {
                let done = sqlx::query("DELETE FROM ssh_sessions WHERE token_digest = $1")
                    .bind(token_digest)
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn delete_expired_ssh_sessions(&self, before: DateTime<Utc>) -> Result<u64> {
                let done = sqlx::query("DELETE FROM ssh_sessions WHERE expires_at IS NOT NULL AND expires_at < $1")
                    .bind(before.trunc_subsecs(6))
                    .execute(&self.pool)
                    .await?;
                Ok(done.rows_affected())
            }

            async fn chunk_actions(&self, gateway: &str, sandbox: &str) -> Result<Vec<ChunkAction>> {
                let rows = sqlx::query(
                    "SELECT chunk_id, action, actor, at FROM chunk_actions WHERE gateway = $1 AND sandbox = $2 \
                     ORDER BY id",
                )
                .bind(gateway)
                .bind(sandbox)
                .fetch_all(&self.pool)
                .await?;
                rows.iter()
                    .map(|row| {
                        Ok(ChunkAction {
                            chunk_id: row.try_get("chunk_id")?,
                            action: row.try_get("action")?,
                            actor: row.try_get("actor")?,
                            at: row.try_get("at")?,
                        })
                    })
                    .collect()
            }
        }

        impl $store {
            /// Refuses a server key other than the one this database's
            /// secrets were sealed with, before anything fails obscurely.
            async fn check_key(&self) -> Result<()> {
                let mine = hex::encode(self.cipher.derive("breakwater key check v1"));
                let stored: Option<String> =
                    sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'key_check'")
                        .fetch_optional(&self.pool)
                        .await?;
                match stored {
                    Some(s) if s == mine => Ok(()),
                    Some(_) => Err(StoreError::WrongKey),
                    None => {
                        sqlx::query("INSERT INTO store_meta (key, value) VALUES ('key_check', $1) ON CONFLICT (key) DO NOTHING")
                            .bind(&mine)
                            .execute(&self.pool)
                            .await?;
                        Ok(())
                    }
                }
            }

            /// The audit chain's HMAC key: the one derived from the first
            /// server key, carried (sealed with the current key) across
            /// rotations so the chain stays verifiable.
            async fn load_audit_key(&self) -> Result<[u8; 32]> {
                let stored: Option<String> =
                    sqlx::query_scalar("SELECT value FROM store_meta WHERE key = 'audit_key'")
                        .fetch_optional(&self.pool)
                        .await?;
                match stored {
                    None => Ok(self.cipher.derive("breakwater audit chain v1")),
                    Some(hex_sealed) => {
                        let sealed = hex::decode(hex_sealed).map_err(|_| StoreError::Corrupt("audit key".into()))?;
                        let plain = self.cipher.decrypt(&sealed)?;
                        plain.try_into().map_err(|_| StoreError::Corrupt("audit key length".into()))
                    }
                }
            }

            /// (See [`Store::rotate_key`].) Re-seals every stored secret with `new` (gateway client keys
            /// and bearer tokens, the audit chain key) and records `new` as
            /// the server key, in one transaction. Returns how many secrets
            /// were re-sealed. Run it with the server stopped, then start the
            /// server with the new key.
            /// One user row: a password account, or one linked to an OIDC
            /// subject. A taken email (or subject) is a conflict.
            async fn insert_user_row(&self, u: &User, password_hash: Option<&str>, subject: Option<&str>) -> Result<()> {
                let done = sqlx::query(
                    "INSERT INTO users (id, email, password_hash, role, active, failed_logins, locked_until, \
                     oidc_provider, oidc_subject, created_at, updated_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
                )
                .bind(&u.id)
                .bind(&u.email)
                .bind(password_hash)
                .bind(u.role.as_str())
                .bind(u.active)
                .bind(i64::from(u.failed_logins))
                .bind(u.locked_until.map(|t| t.trunc_subsecs(6)))
                .bind(&u.oidc_provider)
                .bind(subject)
                .bind(u.created_at.trunc_subsecs(6))
                .bind(u.updated_at.trunc_subsecs(6))
                .execute(&self.pool)
                .await;
                match done {
                    Ok(_) => Ok(()),
                    Err(sqlx::Error::Database(db)) if db.is_unique_violation() => {
                        Err(StoreError::Conflict(format!("user {}", u.email)))
                    }
                    Err(e) => Err(e.into()),
                }
            }

            async fn reseal_all(&self, new: &SecretCipher) -> Result<u64> {
                let mut tx = self.pool.begin().await?;
                let rows = sqlx::query("SELECT name, client_key_enc, bearer_token_enc FROM gateways")
                    .fetch_all(&mut *tx)
                    .await?;
                let mut n = 0u64;
                let reseal = |sealed: Option<Vec<u8>>| -> Result<Option<Vec<u8>>> {
                    sealed.map(|s| Ok(new.encrypt(&self.cipher.decrypt(&s)?)?)).transpose()
                };
                for row in &rows {
                    let name: String = row.try_get("name")?;
                    let key: Option<Vec<u8>> = row.try_get("client_key_enc")?;
                    let token: Option<Vec<u8>> = row.try_get("bearer_token_enc")?;
                    n += u64::from(key.is_some()) + u64::from(token.is_some());
                    sqlx::query("UPDATE gateways SET client_key_enc = $2, bearer_token_enc = $3 WHERE name = $1")
                        .bind(&name)
                        .bind(reseal(key)?)
                        .bind(reseal(token)?)
                        .execute(&mut *tx)
                        .await?;
                }
                // Sign-ins in flight live minutes; dropping them is simpler
                // than re-sealing, and the person just starts again.
                sqlx::query("DELETE FROM oidc_logins").execute(&mut *tx).await?;
                let audit = hex::encode(new.encrypt(&self.audit_key)?);
                sqlx::query(
                    "INSERT INTO store_meta (key, value) VALUES ('audit_key', $1) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .bind(&audit)
                .execute(&mut *tx)
                .await?;
                sqlx::query("UPDATE store_meta SET value = $1 WHERE key = 'key_check'")
                    .bind(hex::encode(new.derive("breakwater key check v1")))
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(n + 1)
            }

            async fn labels_of(&self, names: &[String]) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
                let mut out: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
                if names.is_empty() {
                    return Ok(out);
                }
                let mut q = sqlx::QueryBuilder::<$db>::new("SELECT gateway, key, value FROM gateway_labels WHERE gateway IN (");
                let mut sep = q.separated(", ");
                for n in names {
                    sep.push_bind(n.clone());
                }
                q.push(")");
                for row in q.build().fetch_all(&self.pool).await? {
                    out.entry(row.try_get("gateway")?).or_default().insert(row.try_get("key")?, row.try_get("value")?);
                }
                Ok(out)
            }

            fn gateway_from_row(
                &self,
                row: &<$db as sqlx::Database>::Row,
                labels: &BTreeMap<String, BTreeMap<String, String>>,
            ) -> Result<GatewayRecord> {
                let name: String = row.try_get("name")?;
                let key: Option<Vec<u8>> = row.try_get("client_key_enc")?;
                let client_key = key
                    .map(|k| self.cipher.decrypt(&k))
                    .transpose()?
                    .map(|bytes| String::from_utf8(bytes).map(Secret::new))
                    .transpose()
                    .map_err(|_| StoreError::Corrupt("client key is not UTF-8".into()))?;
                let token: Option<Vec<u8>> = row.try_get("bearer_token_enc")?;
                let bearer_token = token
                    .map(|k| self.cipher.decrypt(&k))
                    .transpose()?
                    .map(|bytes| String::from_utf8(bytes).map(Secret::new))
                    .transpose()
                    .map_err(|_| StoreError::Corrupt("bearer token is not UTF-8".into()))?;
                let Json(metadata): Json<BTreeMap<String, serde_json::Value>> = row.try_get("metadata")?;
                let auth: String = row.try_get("auth_mode")?;
                let status: String = row.try_get("status")?;
                Ok(GatewayRecord {
                    labels: labels.get(&name).cloned().unwrap_or_default(),
                    name: GatewayName::parse(&name).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    endpoint: row.try_get("endpoint")?,
                    scheme: row.try_get("scheme")?,
                    auth_mode: AuthMode::parse(&auth).map_err(|e| StoreError::Corrupt(e.to_string()))?,
                    skip_server_verification: row.try_get("skip_server_verification")?,
                    ca_cert: row.try_get("ca_cert")?,
                    client_cert: row.try_get("client_cert")?,
                    client_key,
                    bearer_token,
                    metadata,
                    description: row.try_get("description")?,
                    health: GatewayHealth {
                        status: status_of(&status)?,
                        error_code: row.try_get("error_code")?,
                        error: row.try_get("error")?,
                        version: row.try_get("version")?,
                        checked_at: row.try_get("checked_at")?,
                        last_seen: row.try_get("last_seen")?,
                    },
                    registered_at: row.try_get("registered_at")?,
                    updated_at: row.try_get("updated_at")?,
                })
            }
        }
    };
}

const GATEWAY_SELECT: &str = "SELECT name, endpoint, scheme, auth_mode, skip_server_verification, ca_cert, client_cert, \
     client_key_enc, bearer_token_enc, metadata, description, status, error_code, error, version, checked_at, last_seen, \
     registered_at, updated_at FROM gateways";
const GATEWAY_SELECT_ONE: &str = "SELECT name, endpoint, scheme, auth_mode, skip_server_verification, ca_cert, \
     client_cert, client_key_enc, bearer_token_enc, metadata, description, status, error_code, error, version, \
     checked_at, last_seen, registered_at, updated_at FROM gateways WHERE name = $1";
const OPERATION_SELECT: &str = "SELECT id, gateway, resource_type, resource_name, action, status, progress, message, \
     result, error_code, error, actor, owner, created_at, updated_at FROM operations";

fn operation_from_row<R: Row>(row: &R) -> Result<Operation>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<Json<serde_json::Value>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let status: String = row.try_get("status")?;
    let code: Option<String> = row.try_get("error_code")?;
    let progress: i64 = row.try_get("progress")?;
    let result: Option<Json<serde_json::Value>> = row.try_get("result")?;
    Ok(Operation {
        id: row.try_get("id")?,
        gateway: row.try_get("gateway")?,
        resource_type: row.try_get("resource_type")?,
        resource_name: row.try_get("resource_name")?,
        action: row.try_get("action")?,
        status: OperationStatus::parse(&status).ok_or_else(|| StoreError::Corrupt(format!("status {status}")))?,
        progress: u8::try_from(progress.clamp(0, 100)).unwrap_or(100),
        message: row.try_get("message")?,
        result: result.map(|Json(v)| v),
        error_code: code.as_deref().and_then(OperationError::parse),
        error: row.try_get("error")?,
        actor: row.try_get("actor")?,
        owner: row.try_get("owner")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn role_of(raw: &str) -> Result<Role> {
    Role::parse(raw).map_err(|_| StoreError::Corrupt(format!("role {raw}")))
}

const USER_SELECT: &str = "SELECT id, email, password_hash, role, active, failed_logins, locked_until, \
     oidc_provider, created_at, updated_at FROM users";

fn user_from_row<R: Row>(row: &R) -> Result<User>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    bool: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<DateTime<Utc>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let failed: i64 = row.try_get("failed_logins")?;
    Ok(User {
        id: row.try_get("id")?,
        email: row.try_get("email")?,
        role: role_of(&row.try_get::<String, _>("role")?)?,
        active: row.try_get("active")?,
        locked_until: row.try_get("locked_until")?,
        failed_logins: u32::try_from(failed.max(0)).unwrap_or(u32::MAX),
        oidc_provider: row.try_get("oidc_provider")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    })
}

fn group_from_row<R: Row>(row: &R) -> Result<Group>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let role: Option<String> = row.try_get("role")?;
    Ok(Group {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role.as_deref().map(role_of).transpose()?,
        description: row.try_get("description")?,
        created_at: row.try_get("created_at")?,
    })
}

const SP_SELECT: &str = "SELECT id, name, role, key_prefix, expires_at, last_used_at, created_by, created_at \
     FROM service_principals";

fn service_principal_from_row<R: Row>(row: &R) -> Result<ServicePrincipal>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<DateTime<Utc>>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    Ok(ServicePrincipal {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        role: role_of(&row.try_get::<String, _>("role")?)?,
        key_prefix: row.try_get("key_prefix")?,
        expires_at: row.try_get("expires_at")?,
        last_used_at: row.try_get("last_used_at")?,
        created_by: row.try_get("created_by")?,
        created_at: row.try_get("created_at")?,
    })
}

fn sandbox_metadata_from_row<R: Row>(row: &R) -> Result<SandboxMetadata>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let labels: Option<String> = row.try_get("labels")?;
    Ok(SandboxMetadata {
        gateway: row.try_get("gateway")?,
        sandbox: row.try_get("sandbox")?,
        description: row.try_get("description")?,
        labels: labels
            .map(|l| serde_json::from_str(&l))
            .transpose()
            .map_err(|_| StoreError::Corrupt("sandbox labels are not a JSON object".into()))?,
        updated_by: row.try_get("updated_by")?,
        updated_at: row.try_get("updated_at")?,
    })
}

const AUDIT_SELECT: &str = "SELECT seq, id, at, actor, role, client_ip, action, resource_type, resource_id, gateway, \
     detail, prev_hash, hash FROM audit_log";

fn audit_from_row<R: Row>(row: &R) -> Result<AuditEntry>
where
    for<'a> &'a str: sqlx::ColumnIndex<R>,
    i64: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    String: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Option<String>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    DateTime<Utc>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
    Json<serde_json::Value>: for<'r> sqlx::Decode<'r, R::Database> + sqlx::Type<R::Database>,
{
    let Json(detail): Json<serde_json::Value> = row.try_get("detail")?;
    Ok(AuditEntry {
        seq: row.try_get("seq")?,
        id: row.try_get("id")?,
        at: row.try_get("at")?,
        actor: row.try_get("actor")?,
        role: row.try_get("role")?,
        client_ip: row.try_get("client_ip")?,
        action: row.try_get("action")?,
        resource_type: row.try_get("resource_type")?,
        resource_id: row.try_get("resource_id")?,
        gateway: row.try_get("gateway")?,
        detail,
        prev_hash: row.try_get("prev_hash")?,
        hash: row.try_get("hash")?,
    })
}

/// The embedded default: one SQLite file with WAL and foreign keys.
pub struct SqliteStore {
    pool: sqlx::SqlitePool,
    cipher: SecretCipher,
    audit_key: [u8; 32],
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and migrates it.
    pub async fn open(path: &std::path::Path, cipher: SecretCipher) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Unavailable(format!("{}: {e}", dir.display())))?;
        }
        let options = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(sqlx::sqlite::SqliteJournalMode::Wal)
            .synchronous(sqlx::sqlite::SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let pool = with_connect_retry("SQLite", CONNECT_PATIENCE, || {
            SqlitePoolOptions::new().max_connections(8).connect_with(options.clone())
        })
        .await?;
        sqlx::migrate!("./migrations/sqlite").run(&pool).await.map_err(|e| StoreError::Database(e.to_string()))?;
        let mut store = Self { pool, cipher, audit_key: [0; 32] };
        store.check_key().await?;
        store.audit_key = store.load_audit_key().await?;
        Ok(store)
    }
}

impl_store!(SqliteStore, sqlx::Sqlite, sqlx::SqlitePool);

/// PostgreSQL, for several replicas sharing one database.
pub struct PgStore {
    pool: sqlx::PgPool,
    cipher: SecretCipher,
    audit_key: [u8; 32],
}

impl PgStore {
    /// Connects (retrying while the server is not up yet) and migrates.
    pub async fn connect(url: &str, cipher: SecretCipher) -> Result<Self> {
        let options: sqlx::postgres::PgConnectOptions =
            url.parse().map_err(|e: sqlx::Error| StoreError::Unavailable(format!("invalid database URL: {e}")))?;
        Self::connect_with(options, cipher, CONNECT_PATIENCE).await
    }

    /// As [`PgStore::connect`], with explicit options (tests use a private schema).
    pub async fn connect_with(
        options: sqlx::postgres::PgConnectOptions,
        cipher: SecretCipher,
        patience: Duration,
    ) -> Result<Self> {
        let pool = with_connect_retry("PostgreSQL", patience, || {
            PgPoolOptions::new()
                .max_connections(16)
                .acquire_timeout(Duration::from_secs(5))
                .connect_with(options.clone())
        })
        .await?;
        sqlx::migrate!("./migrations/postgres").run(&pool).await.map_err(|e| StoreError::Database(e.to_string()))?;
        let mut store = Self { pool, cipher, audit_key: [0; 32] };
        store.check_key().await?;
        store.audit_key = store.load_audit_key().await?;
        Ok(store)
    }
}

impl_store!(PgStore, sqlx::Postgres, sqlx::PgPool);
