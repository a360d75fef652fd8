//! Providers: credentials the gateway injects into allowed requests.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::policy::{NetworkBinary, NetworkEndpoint};
use crate::{ProviderName, Secret};

/// A provider as the gateway reports it. Credential values never come back;
/// only their keys do.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provider {
    pub id: String,
    pub name: String,
    pub kind: String,
    pub credential_keys: Vec<String>,
    pub config: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub resource_version: u64,
}

/// A provider to create or update. On update an empty credential value
/// deletes that key and an empty map leaves credentials unchanged.
#[derive(Clone, Debug, PartialEq)]
pub struct ProviderSpec {
    pub name: ProviderName,
    pub kind: String,
    pub credentials: BTreeMap<String, Secret>,
    pub config: BTreeMap<String, String>,
}

/// A built-in or imported provider profile (what a provider type needs).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderProfile {
    pub id: String,
    pub display_name: String,
    pub description: String,
    pub category: String,
    pub credentials: Vec<ProfileCredential>,
    pub endpoints: Vec<NetworkEndpoint>,
    pub binaries: Vec<NetworkBinary>,
    pub inference_capable: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileCredential {
    pub name: String,
    pub description: String,
    pub env_vars: Vec<String>,
    pub required: bool,
}

/// Result of attaching or detaching a provider.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProviderAttachment {
    pub sandbox_providers: Vec<String>,
    /// False when the provider was already in the requested state.
    pub changed: bool,
}
