//! The service layer: every business rule and every state change lives here,
//! and every state change writes exactly one audit entry.
#![forbid(unsafe_code)]

pub mod approvals;
pub mod audit;
mod certs;
pub mod events;
pub mod gateways;
pub mod identity;
pub mod import;
pub mod local;
pub mod oidc;
pub mod operations;
pub mod policy;
pub mod providers;
pub mod sandboxes;

use breakwater_domain::DomainError;
use breakwater_gateway::GatewayError;
use breakwater_store::StoreError;

pub use approvals::{
    ApplyOutcome, ApprovalService, ApproveOutcome, BulkOutcome, HistoryEntry, Tally, WorkflowSettings,
};
pub use audit::{AuditService, VerifyReport};
pub use events::{Event, EventBus};
pub use gateways::{ConnectionTest, GatewayInfoView, GatewayService, MonitorSettings, RegisterGateway};
pub use identity::{Authenticated, IdentityService, IdentitySettings, Principal};
pub use import::{ImportProblem, ImportReport, default_openshell_config_dir};
pub use local::{CreateLocalGateway, Diagnostics, LocalActionResult, LocalError, LocalGatewayManager, LocalTools};
pub use oidc::{OidcConfig, OidcService, OidcSettings, SignInFailure};
pub use operations::{IdempotencyKey, NewOperation, OperationService};
pub use policy::{PolicyService, PolicyView, WriteOutcome, WriteStatus};
pub use providers::ProviderService;
pub use sandboxes::SandboxService;

/// Who is acting, for authorization decisions and the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Actor {
    pub name: String,
    pub role: String,
    pub client_ip: Option<String>,
}

impl Actor {
    /// The single user of `--no-auth` local mode.
    #[must_use]
    pub fn local_admin(client_ip: Option<String>) -> Self {
        Self { name: "local-admin".into(), role: "admin".into(), client_ip }
    }

    /// Breakwater itself (health monitor, imports at start).
    #[must_use]
    pub fn system() -> Self {
        Self { name: "system".into(), role: "system".into(), client_ip: None }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("{what} not found")]
    NotFound { what: String },
    #[error("{what} already exists")]
    Conflict { what: String },
    #[error("invalid {field}: {message}")]
    Invalid { field: String, message: String },
    #[error(transparent)]
    Gateway(#[from] GatewayError),
    #[error("storage failed: {0}")]
    Store(StoreError),
    #[error(transparent)]
    Local(#[from] local::LocalError),
    /// The request cannot apply to the resource as it is now (e.g. a
    /// section that cannot change on a running sandbox).
    #[error("{message}")]
    Precondition { message: String },
    /// The caller's expected version is not the current one.
    #[error("{message}")]
    StaleVersion { message: String, expected: String, current_version: u32, current_hash: String },
    /// The sandbox's policy is pinned.
    #[error("{}", pin.refusal())]
    Locked { pin: Box<breakwater_domain::approval::PolicyPin> },
    /// Waited as long as allowed.
    #[error("{message}")]
    Timeout { message: String },
    /// The caller may not do this (e.g. a role a workflow does not count).
    #[error("{message}")]
    Forbidden { message: String },
    /// The gateway's generation has no such feature.
    #[error("{message}")]
    Unsupported { message: String },
    /// The caller is not signed in, or the credentials are wrong.
    #[error("{message}")]
    Unauthenticated { message: String },
    /// An `Idempotency-Key` came back with a different request body.
    #[error(
        "this Idempotency-Key was already used with a different request (operation {operation_id}); send a new key \
         for a new request"
    )]
    IdempotencyKeyReused { operation_id: String },
    /// Too many attempts; try again after `retry_after` seconds.
    #[error("{message}")]
    Throttled { message: String, retry_after: u64 },
    /// A sign-in with an identity provider failed; `reason` says at which check.
    #[error("{message}")]
    SignIn { reason: oidc::SignInFailure, message: String },
}

impl From<StoreError> for ServiceError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(what) => Self::NotFound { what },
            StoreError::Conflict(what) => Self::Conflict { what },
            other => Self::Store(other),
        }
    }
}

impl From<DomainError> for ServiceError {
    fn from(e: DomainError) -> Self {
        let field = match &e {
            DomainError::InvalidName { kind, .. } => (*kind).replace(' ', "_"),
            DomainError::InvalidLabel { .. } => "labels".into(),
            DomainError::InvalidSelector { .. } => "label".into(),
            DomainError::InvalidField { field, .. } => (*field).to_owned(),
        };
        Self::Invalid { field, message: e.to_string() }
    }
}

pub type Result<T, E = ServiceError> = std::result::Result<T, E>;

/// `limit` items from `offset` of a gateway listing that pages with tokens:
/// fetches pages of `page_size` until the window is in hand, and says
/// whether more items follow it.
pub(crate) async fn window<T, F, Fut>(
    limit: usize,
    offset: usize,
    page_size: u32,
    mut fetch: F,
) -> Result<(Vec<T>, bool)>
where
    F: FnMut(breakwater_domain::PageRequest) -> Fut,
    Fut: std::future::Future<Output = Result<breakwater_domain::Page<T>>>,
{
    let want = offset + limit;
    let mut all = Vec::new();
    let mut page = breakwater_domain::PageRequest::first(page_size);
    loop {
        let got = fetch(page).await?;
        all.extend(got.items);
        if got.next_page_token.is_empty() || all.len() > want {
            let more = !got.next_page_token.is_empty() || all.len() > want;
            return Ok((all.into_iter().skip(offset).take(limit).collect(), more));
        }
        page = breakwater_domain::PageRequest { page_size, page_token: got.next_page_token };
    }
}
