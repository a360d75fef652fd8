//! Fault injection: what tests and demos turn on to see how clients cope.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tonic::Code;

/// How newly created sandboxes behave.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProvisioningMode {
    /// PROVISIONING, then READY after the configured delay.
    #[default]
    Normal,
    /// PROVISIONING, then ERROR with a condition message.
    Fail,
    /// PROVISIONING forever.
    Hang,
}

impl std::str::FromStr for ProvisioningMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "normal" => Ok(Self::Normal),
            "fail" => Ok(Self::Fail),
            "hang" => Ok(Self::Hang),
            other => Err(format!("unknown provisioning mode {other:?} (normal, fail, hang)")),
        }
    }
}

/// Parses a gRPC code name such as `unavailable` or `UNAVAILABLE`.
pub fn parse_code(raw: &str) -> Result<Code, String> {
    let code = match raw.to_ascii_lowercase().as_str() {
        "cancelled" => Code::Cancelled,
        "unknown" => Code::Unknown,
        "invalid_argument" => Code::InvalidArgument,
        "deadline_exceeded" => Code::DeadlineExceeded,
        "not_found" => Code::NotFound,
        "already_exists" => Code::AlreadyExists,
        "permission_denied" => Code::PermissionDenied,
        "resource_exhausted" => Code::ResourceExhausted,
        "failed_precondition" => Code::FailedPrecondition,
        "aborted" => Code::Aborted,
        "out_of_range" => Code::OutOfRange,
        "unimplemented" => Code::Unimplemented,
        "internal" => Code::Internal,
        "unavailable" => Code::Unavailable,
        "data_loss" => Code::DataLoss,
        "unauthenticated" => Code::Unauthenticated,
        other => {
            return Err(format!(
                "unknown gRPC code {other:?} (one of: cancelled, unknown, invalid_argument, deadline_exceeded, not_found, \
                 already_exists, permission_denied, resource_exhausted, failed_precondition, aborted, out_of_range, \
                 unimplemented, internal, unavailable, data_loss, unauthenticated)"
            ));
        }
    };
    Ok(code)
}

/// Live fault settings, shared by every RPC handler.
#[derive(Default)]
pub struct Faults {
    latency_ms: AtomicU64,
    refuse_connections: AtomicBool,
    rates: Mutex<HashMap<Code, f64>>,
    /// Queued one-shot failures: (method or None for any, code).
    next: Mutex<VecDeque<(Option<String>, Code)>>,
    calls: Mutex<HashMap<String, u64>>,
    version: Mutex<String>,
    provisioning: Mutex<ProvisioningMode>,
    /// Hosts whose presence in a policy makes the revision FAILED on load.
    reject_hosts: Mutex<Vec<String>>,
    /// Replaces the SSH host the sim hands out (to test client validation).
    ssh_host_override: Mutex<Option<String>>,
    /// Revisions stay PENDING forever (for "never loads" tests).
    hold_policy_loads: AtomicBool,
    /// How long an exec stream stays open after its exit event.
    exec_linger: Mutex<Duration>,
    /// When set, every call but Health needs `authorization: Bearer <token>`.
    bearer_token: Mutex<Option<String>>,
}

impl std::fmt::Debug for Faults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Faults").finish_non_exhaustive()
    }
}

impl Faults {
    pub(crate) fn new(version: &str) -> Self {
        let f = Self::default();
        version.clone_into(&mut f.version.lock().unwrap());
        f
    }

    /// Adds latency to every RPC.
    pub fn set_latency(&self, latency: Duration) {
        self.latency_ms.store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// Fails this fraction (0.0–1.0) of RPCs with `code`.
    pub fn set_failure_rate(&self, code: Code, rate: f64) {
        let mut rates = self.rates.lock().unwrap();
        if rate <= 0.0 {
            rates.remove(&code);
        } else {
            rates.insert(code, rate.min(1.0));
        }
    }

    /// Fails the next call of `method` (any method when `None`) with `code`.
    pub fn fail_next(&self, method: Option<&str>, code: Code) {
        self.next.lock().unwrap().push_back((method.map(str::to_owned), code));
    }

    /// While set, new connections are dropped and open ones are cut.
    pub fn set_refuse_connections(&self, refuse: bool) {
        self.refuse_connections.store(refuse, Ordering::SeqCst);
    }

    #[must_use]
    pub fn refusing(&self) -> bool {
        self.refuse_connections.load(Ordering::SeqCst)
    }

    /// The version string Health and GetGatewayInfo report.
    pub fn set_version(&self, version: &str) {
        version.clone_into(&mut self.version.lock().unwrap());
    }

    #[must_use]
    pub fn version(&self) -> String {
        self.version.lock().unwrap().clone()
    }

    pub fn set_provisioning(&self, mode: ProvisioningMode) {
        *self.provisioning.lock().unwrap() = mode;
    }

    #[must_use]
    pub fn provisioning(&self) -> ProvisioningMode {
        *self.provisioning.lock().unwrap()
    }

    pub fn set_reject_hosts(&self, hosts: Vec<String>) {
        *self.reject_hosts.lock().unwrap() = hosts;
    }

    #[must_use]
    pub fn reject_hosts(&self) -> Vec<String> {
        self.reject_hosts.lock().unwrap().clone()
    }

    pub fn set_ssh_host_override(&self, host: Option<String>) {
        *self.ssh_host_override.lock().unwrap() = host;
    }

    #[must_use]
    pub fn ssh_host_override(&self) -> Option<String> {
        self.ssh_host_override.lock().unwrap().clone()
    }

    /// Keeps every exec stream open this long after its exit event, like a
    /// gateway slow to close (zero, the default: it closes at once).
    pub fn set_exec_linger(&self, linger: Duration) {
        *self.exec_linger.lock().unwrap() = linger;
    }

    #[must_use]
    pub fn exec_linger(&self) -> Duration {
        *self.exec_linger.lock().unwrap()
    }

    pub fn set_hold_policy_loads(&self, hold: bool) {
        self.hold_policy_loads.store(hold, Ordering::SeqCst);
    }

    #[must_use]
    pub fn holding_policy_loads(&self) -> bool {
        self.hold_policy_loads.load(Ordering::SeqCst)
    }

    /// Requires `authorization: Bearer <token>` on every call but Health,
    /// like a gateway with OIDC configured.
    pub fn require_bearer(&self, token: Option<String>) {
        *self.bearer_token.lock().unwrap() = token;
    }

    /// How many times `method` was called (including failed calls).
    #[must_use]
    pub fn calls(&self, method: &str) -> u64 {
        self.calls.lock().unwrap().get(method).copied().unwrap_or(0)
    }

    /// Called at the start of every RPC: counts it, delays it, maybe fails it.
    pub(crate) async fn enter(
        &self,
        method: &str,
        metadata: &tonic::metadata::MetadataMap,
    ) -> Result<(), tonic::Status> {
        *self.calls.lock().unwrap().entry(method.to_owned()).or_default() += 1;
        let required = self.bearer_token.lock().unwrap().clone();
        if let Some(token) = required.filter(|_| method != "Health") {
            let presented =
                metadata.get("authorization").and_then(|v| v.to_str().ok()).and_then(|v| v.strip_prefix("Bearer "));
            if presented != Some(token.as_str()) {
                return Err(tonic::Status::unauthenticated("a valid bearer token is required"));
            }
        }
        let latency = self.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        {
            let mut next = self.next.lock().unwrap();
            if let Some(pos) = next.iter().position(|(m, _)| m.as_deref().is_none_or(|m| m == method)) {
                let (_, code) = next.remove(pos).expect("position is valid");
                return Err(tonic::Status::new(code, format!("injected fault for {method}")));
            }
        }
        let rates = self.rates.lock().unwrap().clone();
        for (code, rate) in rates {
            if rand::rng().random_bool(rate) {
                return Err(tonic::Status::new(code, format!("injected fault ({:.0}% of calls)", rate * 100.0)));
            }
        }
        Ok(())
    }
}
