//! Who is calling: users (passwords, browser sessions), service principals
//! (API keys), per-gateway roles, first-run setup and sign-in throttling.
//!
//! Secrets are never stored: passwords as Argon2id hashes, session tokens
//! and API keys as SHA-256 digests (they are 32 random bytes, so a fast
//! digest is enough and a lookup is one indexed read). A principal's role
//! and active flag are read from the store on every request, so demotion,
//! deactivation and revocation take effect on the next one; when that read
//! fails the request is refused, never let through.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use base64::Engine as _;
use breakwater_domain::access::{Email, Grants, Group, PrincipalKind, Role, ServicePrincipal, Session, User};
use breakwater_domain::registry::FieldPatch;
use breakwater_domain::{Secret, sanitize};
use breakwater_store::Store;
use chrono::{DateTime, Utc};
use rand::RngCore as _;
use sha2::{Digest as _, Sha256};

use crate::{Actor, AuditService, Result, ServiceError};

/// API keys start with this, so scanners and people recognise them.
pub const KEY_PREFIX: &str = "bw_";
const SESSION_PREFIX: &str = "bws_";
/// `last_used`/`last_seen` are written at most this often per principal:
/// never a write per request.
const TOUCH_EVERY: Duration = Duration::from_secs(60);
const MIN_PASSWORD: usize = 12;

/// Session lifetimes, lockout and hashing cost.
#[derive(Clone, Debug)]
pub struct IdentitySettings {
    /// A session unused this long ends.
    pub session_idle: Duration,
    /// A session ends this long after sign-in, used or not.
    pub session_absolute: Duration,
    /// Failed sign-ins in a row that lock an account.
    pub lockout_after: u32,
    /// Failed sign-ins from one address (any accounts) that lock it out.
    pub ip_lockout_after: u32,
    pub lockout_for: Duration,
    /// Argon2id memory (KiB) and passes.
    pub hash_memory_kib: u32,
    pub hash_passes: u32,
}

impl Default for IdentitySettings {
    fn default() -> Self {
        Self {
            session_idle: Duration::from_secs(8 * 3600),
            session_absolute: Duration::from_secs(7 * 24 * 3600),
            lockout_after: 10,
            ip_lockout_after: 50,
            lockout_for: Duration::from_secs(15 * 60),
            // OWASP's Argon2id baseline: 19 MiB, 2 passes, 1 lane.
            hash_memory_kib: 19 * 1024,
            hash_passes: 2,
        }
    }
}

impl IdentitySettings {
    /// Cheap hashing for tests (the scheme is the same).
    #[must_use]
    pub fn for_tests() -> Self {
        Self { hash_memory_kib: 1024, hash_passes: 1, ..Self::default() }
    }
}

/// Who a request acts as, with the grants that decide its roles.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Principal {
    User(User),
    ServicePrincipal(ServicePrincipal),
    /// `--no-auth` local mode: the one user of a loopback server.
    LocalAdmin,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Authenticated {
    pub principal: Principal,
    pub grants: Grants,
}

impl Authenticated {
    #[must_use]
    pub fn local_admin() -> Self {
        Self { principal: Principal::LocalAdmin, grants: Grants { global: Some(Role::Admin), ..Grants::default() } }
    }

    /// The name the audit trail records.
    #[must_use]
    pub fn name(&self) -> String {
        match &self.principal {
            Principal::User(u) => u.email.clone(),
            Principal::ServicePrincipal(sp) => format!("sp:{}", sp.name),
            Principal::LocalAdmin => "local-admin".to_owned(),
        }
    }

    /// The role for routes about gateway `gw`, or for global routes.
    #[must_use]
    pub fn role(&self, gateway: Option<&str>) -> Option<Role> {
        match gateway {
            Some(gw) => self.grants.role_on(gw),
            None => self.grants.global_role(),
        }
    }

    #[must_use]
    pub fn actor(&self, gateway: Option<&str>, client_ip: Option<String>) -> Actor {
        Actor { name: self.name(), role: self.role(gateway).map_or("none", Role::as_str).to_owned(), client_ip }
    }
}

/// A session or key handed out once.
#[derive(Debug)]
pub struct Issued<T> {
    pub item: T,
    pub secret: Secret,
}

pub(crate) fn digest(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

pub(crate) fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!("{prefix}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

fn since(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

/// The same answer for an unknown email and a wrong password.
fn bad_credentials() -> ServiceError {
    ServiceError::Unauthenticated { message: "invalid email or password".into() }
}

/// Users, sessions, service principals, roles. Cheap to clone.
#[derive(Clone)]
pub struct IdentityService(Arc<Inner>);

struct Inner {
    store: Arc<dyn Store>,
    audit: AuditService,
    settings: IdentitySettings,
    hasher: Argon2<'static>,
    /// Verified when the email is unknown, so both paths cost the same.
    dummy_hash: String,
    /// Failed sign-ins for emails with no account (accounts keep theirs in
    /// the store), so an unknown email locks exactly like a known one.
    unknown_failures: Mutex<HashMap<String, (u32, DateTime<Utc>)>>,
    /// Failed sign-ins per client address, whatever the account.
    ip_failures: Mutex<HashMap<String, (u32, DateTime<Utc>)>>,
    /// When each session or key was last written as used.
    touched: Mutex<HashMap<String, std::time::Instant>>,
}

impl IdentityService {
    #[must_use]
    pub fn new(store: Arc<dyn Store>, audit: AuditService, settings: IdentitySettings) -> Self {
        let params = Params::new(settings.hash_memory_kib, settings.hash_passes, 1, None).unwrap_or_default();
        let hasher = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        // Written, not computed: verifying costs what its parameters say
        // whatever the hash bytes are, and computing one at start would
        // add tens of milliseconds and Argon2's working memory to every
        // start, sign-in or not.
        let dummy_hash = format!(
            "$argon2id$v=19$m={},t={},p=1${}${}",
            settings.hash_memory_kib,
            settings.hash_passes,
            salt.as_str(),
            "A".repeat(43)
        );
        Self(Arc::new(Inner {
            store,
            audit,
            settings,
            hasher,
            dummy_hash,
            unknown_failures: Mutex::default(),
            ip_failures: Mutex::default(),
            touched: Mutex::default(),
        }))
    }

    fn hash(&self, password: &Secret) -> Result<String> {
        let salt = SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
        self.0
            .hasher
            .hash_password(password.expose().as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| ServiceError::Invalid { field: "password".into(), message: e.to_string() })
    }

    fn verify(&self, password: &Secret, hash: &str) -> bool {
        PasswordHash::new(hash).is_ok_and(|h| self.0.hasher.verify_password(password.expose().as_bytes(), &h).is_ok())
    }

    fn check_password(password: &Secret) -> Result<()> {
        let n = password.expose().chars().count();
        if !(MIN_PASSWORD..=1024).contains(&n) {
            return Err(ServiceError::Invalid {
                field: "password".into(),
                message: format!("a password has {MIN_PASSWORD} to 1024 characters"),
            });
        }
        Ok(())
    }

    pub(crate) fn new_user(email: &Email, role: Role) -> User {
        let now = Utc::now();
        User {
            id: uuid::Uuid::new_v4().to_string(),
            email: email.as_str().to_owned(),
            role,
            active: true,
            locked_until: None,
            failed_logins: 0,
            oidc_provider: None,
            created_at: now,
            updated_at: now,
        }
    }

    /// How long a session cookie may live.
    #[must_use]
    pub fn session_max_age(&self) -> Duration {
        self.0.settings.session_absolute
    }

    /// True until the first user exists.
    pub async fn needs_setup(&self) -> Result<bool> {
        Ok(self.0.store.count_users().await? == 0)
    }

    /// First-run setup: the first admin, only while no user exists (once,
    /// even under racing requests).
    pub async fn setup(&self, email: &str, password: &Secret, client_ip: Option<String>) -> Result<User> {
        let email = Email::parse(email)?;
        Self::check_password(password)?;
        let user = Self::new_user(&email, Role::Admin);
        if !self.0.store.insert_first_user(&user, &self.hash(password)?).await? {
            return Err(ServiceError::Precondition {
                message: "setup is done: an account exists already; sign in, or ask an admin for an invite".into(),
            });
        }
        let actor = Actor { name: user.email.clone(), role: "admin".into(), client_ip };
        self.0.audit.log(&actor, "auth.setup", "user", &user.id, None, serde_json::json!({"email": user.email})).await;
        Ok(user)
    }

    /// Creates a user (an admin's action, or bootstrap from the command line).
    pub async fn create_user(&self, actor: &Actor, email: &str, role: Role, password: Option<&Secret>) -> Result<User> {
        let email = Email::parse(email)?;
        let hash = match password {
            Some(p) => {
                Self::check_password(p)?;
                Some(self.hash(p)?)
            }
            None => None,
        };
        let user = Self::new_user(&email, role);
        self.0.store.insert_user(&user, hash.as_deref()).await?;
        self.0
            .audit
            .log(actor, "user.create", "user", &user.id, None, serde_json::json!({"email": user.email, "role": role}))
            .await;
        Ok(user)
    }

    /// How long an invite stays usable.
    pub const INVITE_FOR: Duration = Duration::from_secs(7 * 24 * 3600);

    /// A user without a password yet, and a one-time invite token (shown
    /// once) with which they choose one.
    pub async fn invite_user(&self, actor: &Actor, email: &str, role: Role) -> Result<Issued<User>> {
        let email = Email::parse(email)?;
        let user = Self::new_user(&email, role);
        self.0.store.insert_user(&user, None).await?;
        let token = random_token("bwi_");
        let expires = Utc::now() + since(Self::INVITE_FOR);
        self.0.store.insert_invite(&digest(&token), email.as_str(), role, &actor.name, expires).await?;
        self.0
            .audit
            .log(
                actor,
                "user.invite",
                "user",
                &user.id,
                None,
                serde_json::json!({"email": user.email, "role": role, "expires_at": expires}),
            )
            .await;
        Ok(Issued { item: user, secret: Secret::new(token) })
    }

    /// Uses an invite: sets the password and signs in. A used, expired or
    /// unknown token is refused alike.
    pub async fn accept_invite(
        &self,
        token: &Secret,
        password: &Secret,
        client_ip: Option<String>,
    ) -> Result<Issued<User>> {
        Self::check_password(password)?;
        let refused = || ServiceError::Unauthenticated {
            message: "this invite is unknown, used or expired; ask an admin for a new one".into(),
        };
        let email = self.0.store.take_invite(&digest(token.expose()), Utc::now()).await?.ok_or_else(refused)?;
        let (user, _) = self.0.store.user_by_email(&email).await?.ok_or_else(refused)?;
        self.0.store.set_password_hash(&user.id, &self.hash(password)?).await?;
        let actor = Actor { name: user.email.clone(), role: user.role.as_str().into(), client_ip: client_ip.clone() };
        self.0.audit.log(&actor, "user.accept_invite", "user", &user.id, None, serde_json::json!({})).await;
        self.login(&email, password, client_ip).await
    }

    /// Self-registration (when the server allows it): a viewer, signed in.
    pub async fn register(&self, email: &str, password: &Secret, client_ip: Option<String>) -> Result<Issued<User>> {
        Self::check_password(password)?;
        let parsed = Email::parse(email)?;
        let user = Self::new_user(&parsed, Role::Viewer);
        self.0.store.insert_user(&user, Some(&self.hash(password)?)).await?;
        let actor = Actor { name: user.email.clone(), role: "viewer".into(), client_ip: client_ip.clone() };
        self.0
            .audit
            .log(&actor, "user.register", "user", &user.id, None, serde_json::json!({"email": user.email}))
            .await;
        self.login(parsed.as_str(), password, client_ip).await
    }

    /// Signs in: a new session whose token is returned once. Unknown
    /// emails and wrong passwords answer alike and cost alike; repeated
    /// failures lock the account (or the unknown email) for a while.
    pub async fn login(&self, email: &str, password: &Secret, client_ip: Option<String>) -> Result<Issued<User>> {
        let key = email.trim().to_lowercase();
        let now = Utc::now();
        let attempt = Actor { name: sanitize(&key, 254), role: "none".into(), client_ip: client_ip.clone() };
        if let Some(locked) = client_ip.as_deref().and_then(|ip| self.ip_locked(ip, now)) {
            return Err(locked);
        }
        let result = self.login_checked(&key, email, password, client_ip.clone(), &attempt, now).await;
        if let (Err(ServiceError::Unauthenticated { .. } | ServiceError::Throttled { .. }), Some(ip)) =
            (&result, client_ip.as_deref())
        {
            self.ip_failed(ip, now);
        }
        result
    }

    async fn login_checked(
        &self,
        key: &str,
        email: &str,
        password: &Secret,
        client_ip: Option<String>,
        attempt: &Actor,
        now: DateTime<Utc>,
    ) -> Result<Issued<User>> {
        let found = match Email::parse(email) {
            Ok(e) => self.0.store.user_by_email(e.as_str()).await?,
            Err(_) => None,
        };
        let Some((mut user, hash)) = found else {
            // Same work as a real check, then the same answer.
            let _ = self.verify(password, &self.0.dummy_hash);
            let locked = self.unknown_failed(key, now);
            self.0
                .audit
                .log(attempt, "auth.login_failed", "user", "-", None, serde_json::json!({"reason": "bad_credentials"}))
                .await;
            return Err(locked.unwrap_or_else(bad_credentials));
        };
        if let Some(until) = user.locked_until.filter(|u| *u > now) {
            let _ = self.verify(password, &self.0.dummy_hash);
            self.0
                .audit
                .log(attempt, "auth.login_failed", "user", &user.id, None, serde_json::json!({"reason": "locked"}))
                .await;
            return Err(Self::locked(until, now));
        }
        let ok = self.verify(password, hash.as_deref().unwrap_or(&self.0.dummy_hash)) && hash.is_some() && user.active;
        if !ok {
            user.failed_logins = user.failed_logins.saturating_add(1);
            let lock = user.failed_logins >= self.0.settings.lockout_after;
            if lock {
                user.locked_until = Some(now + since(self.0.settings.lockout_for));
                user.failed_logins = 0;
            }
            user.updated_at = now;
            self.0.store.save_user(&user).await?;
            self.0
                .audit
                .log(
                    attempt,
                    "auth.login_failed",
                    "user",
                    &user.id,
                    None,
                    serde_json::json!({"reason": if user.active { "bad_credentials" } else { "inactive" }, "locked": lock}),
                )
                .await;
            return Err(if lock { Self::locked(user.locked_until.unwrap_or(now), now) } else { bad_credentials() });
        }
        if user.failed_logins > 0 || user.locked_until.is_some() {
            user.failed_logins = 0;
            user.locked_until = None;
            user.updated_at = now;
            self.0.store.save_user(&user).await?;
        }
        self.open_session(user, client_ip, serde_json::json!({})).await
    }

    /// A new session for a user who has proved who they are (a password or
    /// an identity provider), audited as `auth.login` with `details`. Every
    /// way of signing in ends here, so sessions behave the same whatever
    /// opened them.
    pub(crate) async fn open_session(
        &self,
        user: User,
        client_ip: Option<String>,
        details: serde_json::Value,
    ) -> Result<Issued<User>> {
        let now = Utc::now();
        let token = random_token(SESSION_PREFIX);
        let session = Session {
            user_id: user.id.clone(),
            created_at: now,
            last_seen_at: now,
            expires_at: now + since(self.0.settings.session_absolute),
        };
        self.0.store.insert_session(&digest(&token), &session).await?;
        let actor = Actor { name: user.email.clone(), role: user.role.as_str().into(), client_ip };
        self.0.audit.log(&actor, "auth.login", "user", &user.id, None, details).await;
        Ok(Issued { item: user, secret: Secret::new(token) })
    }

    fn locked(until: DateTime<Utc>, now: DateTime<Utc>) -> ServiceError {
        let minutes = (until - now).num_minutes().max(1);
        ServiceError::Throttled {
            message: format!("too many failed sign-ins; try again in {minutes} minute(s)"),
            retry_after: u64::try_from((until - now).num_seconds().max(1)).unwrap_or(60),
        }
    }

    fn ip_locked(&self, ip: &str, now: DateTime<Utc>) -> Option<ServiceError> {
        let map = self.0.ip_failures.lock().expect("failures lock");
        map.get(ip).filter(|(n, until)| *n == 0 && *until > now).map(|(_, until)| Self::locked(*until, now))
    }

    fn ip_failed(&self, ip: &str, now: DateTime<Utc>) {
        let mut map = self.0.ip_failures.lock().expect("failures lock");
        if map.len() > 10_000 {
            map.retain(|_, (_, until)| *until > now);
        }
        let entry = map.entry(ip.to_owned()).or_insert((0, now));
        if entry.0 == 0 && entry.1 > now {
            return;
        }
        entry.0 += 1;
        if entry.0 >= self.0.settings.ip_lockout_after {
            *entry = (0, now + since(self.0.settings.lockout_for));
        }
    }

    /// Counts a failure for an email without an account; `Some` once locked.
    fn unknown_failed(&self, key: &str, now: DateTime<Utc>) -> Option<ServiceError> {
        let mut map = self.0.unknown_failures.lock().expect("failures lock");
        // Bounded: stale entries go when the map grows.
        if map.len() > 10_000 {
            map.retain(|_, (_, until)| *until > now);
        }
        let entry = map.entry(key.to_owned()).or_insert((0, now));
        if entry.1 > now && entry.0 == 0 {
            return Some(Self::locked(entry.1, now));
        }
        entry.0 += 1;
        if entry.0 >= self.0.settings.lockout_after {
            *entry = (0, now + since(self.0.settings.lockout_for));
            return Some(Self::locked(entry.1, now));
        }
        None
    }

    /// Ends a session (logout). Unknown tokens are fine: the result is the same.
    pub async fn logout(&self, token: &Secret) -> Result<()> {
        self.0.store.delete_session(&digest(token.expose())).await?;
        Ok(())
    }

    /// The principal behind a session token, if the session is live.
    pub async fn authenticate_session(&self, token: &Secret) -> Result<Option<Authenticated>> {
        if !token.expose().starts_with(SESSION_PREFIX) {
            return Ok(None);
        }
        let key = digest(token.expose());
        let Some(session) = self.0.store.get_session(&key).await? else { return Ok(None) };
        let now = Utc::now();
        if session.expires_at <= now || session.last_seen_at + since(self.0.settings.session_idle) <= now {
            self.0.store.delete_session(&key).await?;
            return Ok(None);
        }
        let Some(user) = self.0.store.get_user(&session.user_id).await? else { return Ok(None) };
        if !user.active {
            return Ok(None);
        }
        if self.due(&key) {
            self.0.store.touch_session(&key, now).await?;
        }
        let grants = self.0.store.grants(PrincipalKind::User, &user.id).await?;
        Ok(Some(Authenticated { principal: Principal::User(user), grants }))
    }

    /// The service principal behind an API key, if it is valid and unexpired.
    pub async fn authenticate_key(&self, key: &Secret) -> Result<Option<Authenticated>> {
        if !key.expose().starts_with(KEY_PREFIX) {
            return Ok(None);
        }
        let Some(sp) = self.0.store.service_principal_by_key(&digest(key.expose())).await? else { return Ok(None) };
        let now = Utc::now();
        if sp.expires_at.is_some_and(|e| e <= now) {
            return Ok(None);
        }
        if self.due(&sp.id) {
            self.0.store.touch_service_principal(&sp.id, now).await?;
        }
        let grants = self.0.store.grants(PrincipalKind::ServicePrincipal, &sp.id).await?;
        Ok(Some(Authenticated { principal: Principal::ServicePrincipal(sp), grants }))
    }

    /// Whether `key` was last written as used more than a minute ago.
    fn due(&self, key: &str) -> bool {
        let mut touched = self.0.touched.lock().expect("touched lock");
        let now = std::time::Instant::now();
        if touched.len() > 100_000 {
            touched.retain(|_, at| now.duration_since(*at) < TOUCH_EVERY);
        }
        match touched.get(key) {
            Some(at) if now.duration_since(*at) < TOUCH_EVERY => false,
            _ => {
                touched.insert(key.to_owned(), now);
                true
            }
        }
    }

    pub async fn users(&self) -> Result<Vec<User>> {
        Ok(self.0.store.list_users().await?)
    }

    async fn user(&self, id: &str) -> Result<User> {
        self.0.store.get_user(id).await?.ok_or_else(|| ServiceError::NotFound { what: format!("user {id}") })
    }

    /// Would this change leave no active admin? Then it is refused.
    pub(crate) async fn keeps_an_admin(&self, user: &User, role: Role, active: bool) -> Result<()> {
        let was_admin = user.role == Role::Admin && user.active;
        let stays_admin = role == Role::Admin && active;
        if was_admin && !stays_admin && self.0.store.count_active_admins().await? <= 1 {
            return Err(ServiceError::Precondition {
                message: format!("{} is the last admin; make someone else admin first", user.email),
            });
        }
        Ok(())
    }

    /// Changes a user's global role; effective on their next request.
    pub async fn set_role(&self, actor: &Actor, id: &str, role: Role) -> Result<User> {
        let mut user = self.user(id).await?;
        if user.role == role {
            return Ok(user);
        }
        self.keeps_an_admin(&user, role, user.active).await?;
        let from = user.role;
        user.role = role;
        user.updated_at = Utc::now();
        self.0.store.save_user(&user).await?;
        self.0
            .audit
            .log(
                actor,
                "user.set_role",
                "user",
                id,
                None,
                serde_json::json!({"email": user.email, "from": from, "to": role}),
            )
            .await;
        Ok(user)
    }

    /// Deactivates or reactivates a user; deactivation ends their sessions.
    pub async fn set_active(&self, actor: &Actor, id: &str, active: bool) -> Result<User> {
        let mut user = self.user(id).await?;
        if user.active == active {
            return Ok(user);
        }
        self.keeps_an_admin(&user, user.role, active).await?;
        user.active = active;
        user.updated_at = Utc::now();
        self.0.store.save_user(&user).await?;
        if !active {
            self.0.store.delete_user_sessions(id).await?;
        }
        let action = if active { "user.activate" } else { "user.deactivate" };
        self.0.audit.log(actor, action, "user", id, None, serde_json::json!({"email": user.email})).await;
        Ok(user)
    }

    pub async fn delete_user(&self, actor: &Actor, id: &str) -> Result<()> {
        let user = self.user(id).await?;
        self.keeps_an_admin(&user, Role::Viewer, false).await?;
        self.0.store.delete_user(id).await?;
        self.0.audit.log(actor, "user.delete", "user", id, None, serde_json::json!({"email": user.email})).await;
        Ok(())
    }

    /// Sets a password (an admin reset or the user's own change) and ends
    /// every session of that user.
    pub async fn set_password(&self, actor: &Actor, id: &str, password: &Secret) -> Result<()> {
        Self::check_password(password)?;
        let user = self.user(id).await?;
        self.0.store.set_password_hash(id, &self.hash(password)?).await?;
        self.0.store.delete_user_sessions(id).await?;
        self.0.audit.log(actor, "user.set_password", "user", id, None, serde_json::json!({"email": user.email})).await;
        Ok(())
    }

    /// A service principal and its API key, shown once.
    pub async fn create_service_principal(
        &self,
        actor: &Actor,
        name: &str,
        role: Role,
        expires_at: Option<DateTime<Utc>>,
    ) -> Result<Issued<ServicePrincipal>> {
        let name_ok = !name.is_empty()
            && name.len() <= 63
            && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if !name_ok {
            return Err(ServiceError::Invalid {
                field: "name".into(),
                message: "1-63 letters, digits, '-', '_' or '.'".into(),
            });
        }
        if expires_at.is_some_and(|e| e <= Utc::now()) {
            return Err(ServiceError::Invalid { field: "expires_at".into(), message: "must be in the future".into() });
        }
        let key = random_token(KEY_PREFIX);
        let sp = ServicePrincipal {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.to_owned(),
            role,
            key_prefix: key[..KEY_PREFIX.len() + 6].to_owned(),
            expires_at,
            last_used_at: None,
            created_by: actor.name.clone(),
            created_at: Utc::now(),
        };
        self.0.store.insert_service_principal(&sp, &digest(&key)).await?;
        self.0
            .audit
            .log(
                actor,
                "service_principal.create",
                "service_principal",
                &sp.id,
                None,
                serde_json::json!({"name": sp.name, "role": role, "key_prefix": sp.key_prefix, "expires_at": expires_at}),
            )
            .await;
        Ok(Issued { item: sp, secret: Secret::new(key) })
    }

    pub async fn service_principals(&self) -> Result<Vec<ServicePrincipal>> {
        Ok(self.0.store.list_service_principals().await?)
    }

    async fn service_principal(&self, id: &str) -> Result<ServicePrincipal> {
        self.0
            .store
            .get_service_principal(id)
            .await?
            .ok_or_else(|| ServiceError::NotFound { what: format!("service principal {id}") })
    }

    /// A new key; the old one stops working at once.
    pub async fn rotate_service_principal(&self, actor: &Actor, id: &str) -> Result<Issued<ServicePrincipal>> {
        let mut sp = self.service_principal(id).await?;
        let key = random_token(KEY_PREFIX);
        sp.key_prefix = key[..KEY_PREFIX.len() + 6].to_owned();
        self.0.store.rotate_service_principal_key(id, &digest(&key), &sp.key_prefix).await?;
        self.0
            .audit
            .log(
                actor,
                "service_principal.rotate",
                "service_principal",
                id,
                None,
                serde_json::json!({"name": sp.name, "key_prefix": sp.key_prefix}),
            )
            .await;
        Ok(Issued { item: sp, secret: Secret::new(key) })
    }

    pub async fn delete_service_principal(&self, actor: &Actor, id: &str) -> Result<()> {
        let sp = self.service_principal(id).await?;
        self.0.store.delete_service_principal(id).await?;
        self.0
            .audit
            .log(actor, "service_principal.delete", "service_principal", id, None, serde_json::json!({"name": sp.name}))
            .await;
        Ok(())
    }

    fn check_group_name(name: &str) -> Result<()> {
        let ok = !name.trim().is_empty() && name.chars().count() <= 100 && !name.chars().any(char::is_control);
        if ok {
            Ok(())
        } else {
            Err(ServiceError::Invalid { field: "name".into(), message: "1-100 printable characters".into() })
        }
    }

    pub async fn create_group(
        &self,
        actor: &Actor,
        name: &str,
        role: Option<Role>,
        description: Option<String>,
    ) -> Result<Group> {
        Self::check_group_name(name)?;
        crate::gateways::check_description(description.as_deref())?;
        let group = Group {
            id: uuid::Uuid::new_v4().to_string(),
            name: name.trim().to_owned(),
            role,
            description,
            created_at: Utc::now(),
        };
        self.0.store.insert_group(&group).await?;
        self.0
            .audit
            .log(actor, "group.create", "group", &group.id, None, serde_json::json!({"name": group.name, "role": role}))
            .await;
        Ok(group)
    }

    pub async fn groups(&self) -> Result<Vec<Group>> {
        Ok(self.0.store.list_groups().await?)
    }

    pub async fn group(&self, id: &str) -> Result<Group> {
        self.0.store.get_group(id).await?.ok_or_else(|| ServiceError::NotFound { what: format!("group {id}") })
    }

    /// The group's members (user ids).
    pub async fn group_members(&self, id: &str) -> Result<Vec<String>> {
        self.group(id).await?;
        Ok(self.0.store.group_members(id).await?)
    }

    /// Name (`None` keeps it), role and description (keep, clear or set). The role change
    /// counts for every member on their next request.
    pub async fn update_group(
        &self,
        actor: &Actor,
        id: &str,
        name: Option<&str>,
        role: FieldPatch<Role>,
        description: FieldPatch<String>,
    ) -> Result<Group> {
        let mut group = self.group(id).await?;
        if let Some(n) = name {
            Self::check_group_name(n)?;
            n.trim().clone_into(&mut group.name);
        }
        match role {
            FieldPatch::Keep => {}
            FieldPatch::Clear => group.role = None,
            FieldPatch::Set(r) => group.role = Some(r),
        }
        match description {
            FieldPatch::Keep => {}
            FieldPatch::Clear => group.description = None,
            FieldPatch::Set(d) => {
                crate::gateways::check_description(Some(&d))?;
                group.description = Some(d);
            }
        }
        self.0.store.update_group(&group).await?;
        self.0
            .audit
            .log(actor, "group.update", "group", id, None, serde_json::json!({"name": group.name, "role": group.role}))
            .await;
        Ok(group)
    }

    pub async fn delete_group(&self, actor: &Actor, id: &str) -> Result<()> {
        let group = self.group(id).await?;
        self.0.store.delete_group(id).await?;
        self.0.audit.log(actor, "group.delete", "group", id, None, serde_json::json!({"name": group.name})).await;
        Ok(())
    }

    /// Adds (`true`) or removes a member; `false` when nothing changed.
    pub async fn set_member(&self, actor: &Actor, group_id: &str, user_id: &str, member: bool) -> Result<bool> {
        let group = self.group(group_id).await?;
        let user = self.user(user_id).await?;
        let changed = if member {
            self.0.store.add_group_member(group_id, user_id).await?
        } else {
            self.0.store.remove_group_member(group_id, user_id).await?
        };
        if changed {
            let action = if member { "group.add_member" } else { "group.remove_member" };
            self.0
                .audit
                .log(
                    actor,
                    action,
                    "group",
                    group_id,
                    None,
                    serde_json::json!({"group": group.name, "user": user.email}),
                )
                .await;
        }
        Ok(changed)
    }

    /// A principal's own per-gateway roles.
    pub async fn gateway_roles(&self, kind: PrincipalKind, id: &str) -> Result<BTreeMap<String, Role>> {
        self.exists(kind, id).await?;
        Ok(self.0.store.gateway_roles(kind, id).await?)
    }

    async fn exists(&self, kind: PrincipalKind, id: &str) -> Result<()> {
        match kind {
            PrincipalKind::User => self.user(id).await.map(drop),
            PrincipalKind::ServicePrincipal => self.service_principal(id).await.map(drop),
            PrincipalKind::Group => self.group(id).await.map(drop),
        }
    }

    /// Sets (`Some`) or removes a principal's role on one gateway.
    pub async fn set_gateway_role(
        &self,
        actor: &Actor,
        kind: PrincipalKind,
        id: &str,
        gateway: &str,
        role: Option<Role>,
    ) -> Result<bool> {
        self.exists(kind, id).await?;
        let changed = match role {
            Some(r) => {
                self.0.store.put_gateway_role(kind, id, gateway, r).await?;
                true
            }
            None => self.0.store.delete_gateway_role(kind, id, gateway).await?,
        };
        if changed {
            self.0
                .audit
                .log(actor, "access.gateway_role", kind.as_str(), id, Some(gateway), serde_json::json!({"role": role}))
                .await;
        }
        Ok(changed)
    }
}
