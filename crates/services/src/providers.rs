//! Providers: credentials a gateway injects into allowed requests, which
//! agents never see. Credential values go to the gateway and nowhere else:
//! not into a response (the gateway answers `REDACTED`, and only key names
//! are kept), a log line or an audit entry.

use std::collections::BTreeMap;

use breakwater_domain::SandboxName;
use breakwater_domain::provider::{Provider, ProviderAttachment, ProviderSpec};
use breakwater_domain::registry::GatewayName;
use breakwater_domain::{PageRequest, ProviderName, Secret, WorkspaceName};
use breakwater_gateway::{Gateway, GatewayError};
use serde::Serialize;

use crate::{Actor, GatewayService, Result, ServiceError};

/// A provider type: its label and the variable its primary key fills.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderType {
    pub id: &'static str,
    pub label: &'static str,
    pub credential_variable: &'static str,
}

/// The built-in table (`shared/reference/provider-types.md`); gateways'
/// own profiles are preferred where they offer them.
pub const PROVIDER_TYPES: &[ProviderType] = &[
    ProviderType { id: "anthropic", label: "Anthropic", credential_variable: "ANTHROPIC_API_KEY" },
    ProviderType { id: "claude", label: "Claude (Anthropic)", credential_variable: "ANTHROPIC_API_KEY" },
    ProviderType { id: "openai", label: "OpenAI", credential_variable: "OPENAI_API_KEY" },
    ProviderType { id: "nvidia", label: "NVIDIA NIM", credential_variable: "NVIDIA_API_KEY" },
    ProviderType { id: "github", label: "GitHub", credential_variable: "GITHUB_TOKEN" },
    ProviderType { id: "gitlab", label: "GitLab", credential_variable: "GITLAB_TOKEN" },
    ProviderType { id: "copilot", label: "GitHub Copilot", credential_variable: "GITHUB_TOKEN" },
    ProviderType { id: "codex", label: "Codex", credential_variable: "OPENAI_API_KEY" },
    ProviderType { id: "opencode", label: "OpenCode", credential_variable: "OPENAI_API_KEY" },
    ProviderType { id: "outlook", label: "Outlook", credential_variable: "OUTLOOK_TOKEN" },
    ProviderType { id: "generic", label: "Generic", credential_variable: "API_KEY" },
];

/// The variable a provider type's primary key fills (`API_KEY` for types
/// the table does not know).
#[must_use]
pub fn credential_variable(kind: &str) -> &'static str {
    PROVIDER_TYPES.iter().find(|t| t.id == kind).map_or("API_KEY", |t| t.credential_variable)
}

/// Features that differ between gateway generations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Capabilities {
    pub inference_routes: bool,
}

/// What a create or update carries.
#[derive(Clone, Debug, Default)]
pub struct ProviderInput {
    pub kind: Option<String>,
    /// The primary key, stored under the type's credential variable.
    pub api_key: Option<Secret>,
    pub credentials: BTreeMap<String, Secret>,
    pub config: BTreeMap<String, String>,
}

/// Providers on registered gateways. Cheap to clone.
#[derive(Clone)]
pub struct ProviderService {
    gateways: GatewayService,
}

fn ws() -> WorkspaceName {
    WorkspaceName::default()
}

impl ProviderService {
    #[must_use]
    pub fn new(gateways: GatewayService) -> Self {
        Self { gateways }
    }

    pub async fn list(&self, gw: &GatewayName, limit: u32, offset: u32) -> Result<(Vec<Provider>, bool)> {
        crate::window(limit.clamp(1, 1000) as usize, offset as usize, 500, |p| async move {
            self.gateways.with_gateway(gw, |c| async move { c.list_providers(&ws(), &p).await }).await
        })
        .await
    }

    pub async fn get(&self, gw: &GatewayName, name: &ProviderName) -> Result<Provider> {
        self.gateways.with_gateway(gw, |c| async move { c.get_provider(&ws(), name).await }).await
    }

    fn spec(name: &ProviderName, kind: String, input: ProviderInput) -> Result<ProviderSpec> {
        let mut credentials = input.credentials;
        if let Some(key) = input.api_key {
            credentials.insert(credential_variable(&kind).to_owned(), key);
        }
        for k in credentials.keys() {
            if k.is_empty() || k.len() > 128 || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(ServiceError::Invalid {
                    field: "credentials".into(),
                    message: format!(
                        "{:?} is not a variable name (letters, digits, '_')",
                        breakwater_domain::sanitize(k, 64)
                    ),
                });
            }
        }
        Ok(ProviderSpec { name: name.clone(), kind, credentials, config: input.config })
    }

    async fn audit(&self, actor: &Actor, action: &str, gw: &GatewayName, name: &ProviderName, p: Option<&Provider>) {
        // Key names only: values never leave the request.
        let detail = serde_json::json!({
            "type": p.map(|p| p.kind.clone()),
            "credential_keys": p.map(|p| p.credential_keys.clone()),
        });
        self.gateways.audit().log(actor, action, "provider", name.as_str(), Some(gw.as_str()), detail).await;
    }

    pub async fn create(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        name: &ProviderName,
        input: ProviderInput,
    ) -> Result<Provider> {
        let kind = input.kind.clone().filter(|k| !k.is_empty()).ok_or_else(|| ServiceError::Invalid {
            field: "type".into(),
            message: "a provider needs a type (anthropic, openai, github, generic, ...)".into(),
        })?;
        let spec = Self::spec(name, kind, input)?;
        let p = self.gateways.with_gateway(gw, |c| async move { c.create_provider(&ws(), &spec).await }).await?;
        self.audit(actor, "provider.create", gw, name, Some(&p)).await;
        Ok(p)
    }

    /// Credentials merge as the gateway defines: a key with an empty value
    /// is deleted, an empty map changes none.
    pub async fn update(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        name: &ProviderName,
        input: ProviderInput,
    ) -> Result<Provider> {
        let kind = match input.kind.clone().filter(|k| !k.is_empty()) {
            Some(k) => k,
            None => self.get(gw, name).await?.kind,
        };
        let spec = Self::spec(name, kind, input)?;
        let p = self.gateways.with_gateway(gw, |c| async move { c.update_provider(&ws(), &spec).await }).await?;
        self.audit(actor, "provider.update", gw, name, Some(&p)).await;
        Ok(p)
    }

    pub async fn sandbox_providers(&self, gw: &GatewayName, sb: &SandboxName) -> Result<Vec<Provider>> {
        let page = PageRequest::first(1000);
        let got =
            self.gateways.with_gateway(gw, |c| async move { c.list_sandbox_providers(&ws(), sb, &page).await }).await?;
        Ok(got.items)
    }

    /// Attaches (`attach = true`) or detaches a provider; `changed` is false
    /// when it already was in that state.
    pub async fn set_attached(
        &self,
        actor: &Actor,
        gw: &GatewayName,
        sb: &SandboxName,
        name: &ProviderName,
        attach: bool,
    ) -> Result<ProviderAttachment> {
        let out = self
            .gateways
            .with_gateway(gw, |c| async move {
                if attach { c.attach_provider(&ws(), sb, name).await } else { c.detach_provider(&ws(), sb, name).await }
            })
            .await?;
        let action = if attach { "sandbox.provider.attach" } else { "sandbox.provider.detach" };
        self.gateways
            .audit()
            .log(
                actor,
                action,
                "sandbox",
                sb.as_str(),
                Some(gw.as_str()),
                serde_json::json!({"provider": name.as_str(), "changed": out.changed}),
            )
            .await;
        Ok(out)
    }

    /// What a gateway generation offers. OpenShell 0.1 gateways have no
    /// managed inference routes; the flag is the seam for one that does.
    #[must_use]
    pub fn capabilities(&self, _gw: &GatewayName) -> Capabilities {
        Capabilities { inference_routes: false }
    }

    fn no_inference_routes(gw: &GatewayName) -> ServiceError {
        ServiceError::Unsupported {
            message: format!(
                "gateway {gw} (OpenShell 0.1) has no managed inference routes: give sandboxes a provider for the \
                 model API and allow its endpoint in their network policy instead"
            ),
        }
    }

    pub async fn inference(&self, gw: &GatewayName) -> Result<serde_json::Value> {
        self.gateways.get(gw).await?;
        Err(Self::no_inference_routes(gw))
    }

    /// Checks what can be checked (the provider must exist on the gateway,
    /// else the error lists the ones that do), then says routes are not
    /// offered by this gateway generation.
    pub async fn set_inference(&self, gw: &GatewayName, provider_name: &str) -> Result<serde_json::Value> {
        let (providers, _) = self.list(gw, 1000, 0).await?;
        if !providers.iter().any(|p| p.name == provider_name) {
            let names: Vec<&str> = providers.iter().map(|p| p.name.as_str()).collect();
            return Err(ServiceError::Invalid {
                field: "provider_name".into(),
                message: format!(
                    "gateway {gw} has no provider {:?}; it has: {}",
                    breakwater_domain::sanitize(provider_name, 64),
                    if names.is_empty() { "none".to_owned() } else { names.join(", ") }
                ),
            });
        }
        // A generation with `capabilities().inference_routes` would set the route here.
        debug_assert!(!self.capabilities(gw).inference_routes);
        Err(Self::no_inference_routes(gw))
    }

    /// A provider attached to sandboxes cannot go: the conflict names them.
    pub async fn delete(&self, actor: &Actor, gw: &GatewayName, name: &ProviderName) -> Result<()> {
        let out = self.gateways.with_gateway(gw, |c| async move { c.delete_provider(&ws(), name, false).await }).await;
        match out {
            Ok(_) => {
                self.audit(actor, "provider.delete", gw, name, None).await;
                Ok(())
            }
            Err(ServiceError::Gateway(GatewayError::FailedPrecondition { message, .. })) => {
                Err(ServiceError::Precondition { message: format!("provider {name} cannot be deleted: {message}") })
            }
            Err(e) => Err(e),
        }
    }
}
