//! Providers: credentials a gateway injects into allowed requests, which
//! agents never see. Credential values go to the gateway and nowhere else:
//! not into a response (the gateway answers `REDACTED`, and only key names
//! are kept), a log line or an audit entry.

use std::collections::BTreeMap;

use breakwater_domain::SandboxName;
use breakwater_domain::provider::{Provider, ProviderAttachment, ProviderProfile, ProviderSpec};
use breakwater_domain::registry::GatewayName;
use breakwater_domain::sandbox::DeletionOutcome;
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

/// A provider type as the types list shows it: the gateway's own profile
/// where it has one, else the built-in table's entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProviderTypeView {
    pub id: String,
    pub label: String,
    pub credential_variable: String,
    pub category: Option<String>,
    /// `gateway` or `built_in`.
    pub source: &'static str,
}

/// A model API a sandbox can reach through a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct InferenceProvider {
    pub id: String,
    pub label: String,
    /// Free text: models are not a fixed list.
    pub example_model: String,
    pub credential_variable: String,
    pub source: &'static str,
}

const INFERENCE_PROVIDERS: &[(&str, &str, &str, &str)] = &[
    ("nvidia", "NVIDIA NIM", "meta/llama-3.1-8b-instruct", "NVIDIA_API_KEY"),
    ("anthropic", "Anthropic", "claude-sonnet-4-20250514", "ANTHROPIC_API_KEY"),
    ("openai", "OpenAI", "gpt-4o", "OPENAI_API_KEY"),
];

/// A published sandbox image.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct CommunitySandbox {
    pub name: &'static str,
    pub description: &'static str,
    /// Empty: the gateway's default image.
    pub image: &'static str,
}

pub const COMMUNITY_SANDBOXES: &[CommunitySandbox] = &[
    CommunitySandbox {
        name: "base",
        description: "foundational image with pre-installed agents (claude-code, opencode, codex, copilot)",
        image: "",
    },
    CommunitySandbox {
        name: "openclaw",
        description: "open agent framework; default provider nvidia",
        image: "ghcr.io/nvidia/openshell-community/sandboxes/openclaw:latest",
    },
    CommunitySandbox {
        name: "ollama",
        description: "local LLM inference with Ollama",
        image: "ghcr.io/nvidia/openshell-community/sandboxes/ollama:latest",
    },
    CommunitySandbox {
        name: "sdg",
        description: "synthetic data generation",
        image: "ghcr.io/nvidia/openshell-community/sandboxes/sdg:latest",
    },
];

/// The variable a profile's primary credential fills: its first required
/// credential's first variable, else its first variable at all.
fn profile_variable(p: &ProviderProfile) -> Option<&str> {
    let first =
        |required: bool| p.credentials.iter().filter(|c| !required || c.required).find_map(|c| c.env_vars.first());
    first(true).or_else(|| first(false)).map(String::as_str)
}

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

fn profile_id(raw: &str) -> Result<String> {
    let ok = !raw.is_empty()
        && raw.len() <= 128
        && raw.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(raw.to_owned())
    } else {
        Err(ServiceError::Invalid {
            field: "profile_id".into(),
            message: "letters, digits, '-', '_' or '.' (at most 128)".into(),
        })
    }
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

    /// One page of the gateway's providers and how many there are.
    pub async fn list(&self, gw: &GatewayName, limit: u32, offset: u32) -> Result<(Vec<Provider>, usize)> {
        let (all, _) = crate::window(usize::MAX, 0, 500, |p| async move {
            self.gateways.with_gateway(gw, |c| async move { c.list_providers(&ws(), &p).await }).await
        })
        .await?;
        let total = all.len();
        Ok((all.into_iter().skip(offset as usize).take(limit.clamp(1, 1000) as usize).collect(), total))
    }

    pub async fn get(&self, gw: &GatewayName, name: &ProviderName) -> Result<Provider> {
        self.gateways.with_gateway(gw, |c| async move { c.get_provider(&ws(), name).await }).await
    }

    /// Every profile the gateway offers; `None` when its generation has none.
    async fn profiles(&self, gw: &GatewayName) -> Result<Option<Vec<ProviderProfile>>> {
        let all = crate::window(usize::MAX, 0, 200, |p| async move {
            self.gateways.with_gateway(gw, |c| async move { c.list_provider_profiles(&ws(), &p).await }).await
        })
        .await;
        match all {
            Ok((items, _)) => Ok(Some(items)),
            Err(ServiceError::Gateway(GatewayError::Unimplemented { .. })) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The gateway's profiles first, then the built-in types it has no
    /// profile for.
    pub async fn types(&self, gw: &GatewayName) -> Result<Vec<ProviderTypeView>> {
        let profiles = self.profiles(gw).await?.unwrap_or_default();
        let mut out: Vec<ProviderTypeView> = profiles
            .iter()
            .map(|p| ProviderTypeView {
                id: p.id.clone(),
                label: if p.display_name.is_empty() { p.id.clone() } else { p.display_name.clone() },
                credential_variable: profile_variable(p).unwrap_or_else(|| credential_variable(&p.id)).to_owned(),
                category: Some(p.category.clone()).filter(|c| !c.is_empty()),
                source: "gateway",
            })
            .collect();
        for t in PROVIDER_TYPES {
            if !out.iter().any(|v| v.id == t.id) {
                out.push(ProviderTypeView {
                    id: t.id.to_owned(),
                    label: t.label.to_owned(),
                    credential_variable: t.credential_variable.to_owned(),
                    category: None,
                    source: "built_in",
                });
            }
        }
        Ok(out)
    }

    /// The model APIs sandboxes can reach through a provider: the built-in
    /// list, with the gateway's variables where it has a profile, then the
    /// gateway's other inference-capable profiles.
    pub async fn inference_providers(&self, gw: &GatewayName) -> Result<Vec<InferenceProvider>> {
        let profiles = self.profiles(gw).await?.unwrap_or_default();
        let mut out: Vec<InferenceProvider> = INFERENCE_PROVIDERS
            .iter()
            .map(|(id, label, model, var)| {
                let profile = profiles.iter().find(|p| p.id == *id);
                InferenceProvider {
                    id: (*id).to_owned(),
                    label: (*label).to_owned(),
                    example_model: (*model).to_owned(),
                    credential_variable: profile.and_then(profile_variable).unwrap_or(var).to_owned(),
                    source: if profile.is_some() { "gateway" } else { "built_in" },
                }
            })
            .collect();
        for p in profiles.iter().filter(|p| p.inference_capable) {
            if !out.iter().any(|i| i.id == p.id) {
                out.push(InferenceProvider {
                    id: p.id.clone(),
                    label: p.display_name.clone(),
                    example_model: String::new(),
                    credential_variable: profile_variable(p).unwrap_or("API_KEY").to_owned(),
                    source: "gateway",
                });
            }
        }
        Ok(out)
    }

    /// One window of the gateway's profiles and how many there are.
    pub async fn list_profiles(
        &self,
        gw: &GatewayName,
        limit: u32,
        offset: u32,
    ) -> Result<(Vec<ProviderProfile>, usize)> {
        let all = self.profiles(gw).await?.ok_or_else(|| ServiceError::Unsupported {
            message: format!("gateway {gw} has no provider profiles (an older OpenShell generation)"),
        })?;
        let total = all.len();
        Ok((all.into_iter().skip(offset as usize).take(limit.clamp(1, 1000) as usize).collect(), total))
    }

    pub async fn get_profile(&self, gw: &GatewayName, id: &str) -> Result<ProviderProfile> {
        let id = profile_id(id)?;
        self.gateways.with_gateway(gw, |c| async move { c.get_provider_profile(&ws(), &id).await }).await
    }

    pub async fn delete_profile(&self, actor: &Actor, gw: &GatewayName, id: &str) -> Result<DeletionOutcome> {
        let id = profile_id(id)?;
        let id_ref = &id;
        let out =
            self.gateways.with_gateway(gw, |c| async move { c.delete_provider_profile(&ws(), id_ref).await }).await?;
        self.gateways
            .audit()
            .log(actor, "provider_profile.delete", "provider_profile", &id, Some(gw.as_str()), serde_json::json!({}))
            .await;
        Ok(out)
    }

    /// The variable the primary key of `kind` fills: the gateway's profile
    /// for that type where it has one, else the built-in table.
    async fn primary_variable(&self, gw: &GatewayName, kind: &str) -> Result<String> {
        let got = self.gateways.with_gateway(gw, |c| async move { c.get_provider_profile(&ws(), kind).await }).await;
        match got {
            Ok(p) => Ok(profile_variable(&p).unwrap_or_else(|| credential_variable(kind)).to_owned()),
            Err(ServiceError::Gateway(
                GatewayError::NotFound { .. }
                | GatewayError::Unimplemented { .. }
                | GatewayError::InvalidArgument { .. },
            )) => Ok(credential_variable(kind).to_owned()),
            Err(e) => Err(e),
        }
    }

    fn spec(name: &ProviderName, kind: String, primary: &str, input: ProviderInput) -> Result<ProviderSpec> {
        let mut credentials = input.credentials;
        if let Some(key) = input.api_key {
            credentials.insert(primary.to_owned(), key);
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
        let primary = self.primary_variable(gw, &kind).await?;
        let spec = Self::spec(name, kind, &primary, input)?;
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
        let primary = if input.api_key.is_some() { self.primary_variable(gw, &kind).await? } else { String::new() };
        let spec = Self::spec(name, kind, &primary, input)?;
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
