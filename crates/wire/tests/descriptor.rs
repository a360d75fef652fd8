//! Guards the field numbers and types most likely to drift between protocol
//! generations. A renumbered field would decode as garbage instead of failing,
//! so we fail here, loudly, first. Expected values come from the 0.1 contract.

use breakwater_wire::FILE_DESCRIPTOR_SET;
use prost::Message;
use prost_types::field_descriptor_proto::{Label, Type};
use prost_types::{DescriptorProto, FileDescriptorSet};

fn message(full_name: &str) -> DescriptorProto {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).expect("descriptor set decodes");
    let (pkg, name) = full_name.rsplit_once('.').unwrap();
    set.file
        .iter()
        .filter(|f| f.package() == pkg)
        .flat_map(|f| f.message_type.iter())
        .find(|m| m.name() == name)
        .unwrap_or_else(|| panic!("{full_name} is not in the descriptor set"))
        .clone()
}

/// (number, name, type, type name for messages/enums or "", repeated)
type Expect = (i32, &'static str, Type, &'static str, bool);

fn assert_fields(full_name: &str, expected: &[Expect]) {
    let msg = message(full_name);
    for &(number, name, ty, type_name, repeated) in expected {
        let field = msg
            .field
            .iter()
            .find(|f| f.number() == number)
            .unwrap_or_else(|| panic!("{full_name}: field number {number} ({name}) is missing"));
        assert_eq!(field.name(), name, "{full_name} field {number} name");
        assert_eq!(field.r#type(), ty, "{full_name}.{name} type");
        if !type_name.is_empty() {
            assert_eq!(field.type_name(), type_name, "{full_name}.{name} type name");
        }
        let is_repeated = field.label() == Label::Repeated;
        assert_eq!(is_repeated, repeated, "{full_name}.{name} repeated");
    }
    // Any field we carry that the table does not know about must not collide
    // with a number the contract reserved.
    for reserved in &msg.reserved_range {
        for f in &msg.field {
            assert!(
                f.number() < reserved.start() || f.number() >= reserved.end(),
                "{full_name}.{} reuses reserved number {}",
                f.name(),
                f.number()
            );
        }
    }
}

const TS: &str = ".google.protobuf.Timestamp";
const SELECTOR: &str = ".openshell.datamodel.v1.WorkspaceSelector";

#[test]
fn object_meta_uses_timestamps_at_number_plus_100() {
    assert_fields(
        "openshell.datamodel.v1.ObjectMeta",
        &[
            (1, "id", Type::String, "", false),
            (2, "name", Type::String, "", false),
            (4, "labels", Type::Message, "", true),
            (5, "resource_version", Type::Uint64, "", false),
            (6, "annotations", Type::Message, "", true),
            (7, "workspace", Type::String, "", false),
            (103, "created_time", Type::Message, TS, false),
            (108, "deletion_time", Type::Message, TS, false),
        ],
    );
    let meta = message("openshell.datamodel.v1.ObjectMeta");
    assert!(meta.field.iter().all(|f| f.number() != 3 && f.number() != 8), "G1 *_ms fields are gone");
}

#[test]
fn sandbox_and_spec_numbers() {
    assert_fields(
        "openshell.v1.Sandbox",
        &[
            (1, "metadata", Type::Message, ".openshell.datamodel.v1.ObjectMeta", false),
            (2, "spec", Type::Message, ".openshell.v1.SandboxSpec", false),
            (3, "status", Type::Message, ".openshell.v1.SandboxStatus", false),
            (6, "host_key_fingerprint", Type::String, "", false),
        ],
    );
    assert_fields(
        "openshell.v1.SandboxSpec",
        &[
            (1, "log_level", Type::String, "", false),
            (5, "environment", Type::Message, "", true),
            (6, "template", Type::Message, ".openshell.v1.SandboxTemplate", false),
            (7, "policy", Type::Message, ".openshell.sandbox.v1.SandboxPolicy", false),
            (8, "providers", Type::String, "", true),
            (12, "command", Type::String, "", true),
            (13, "tty", Type::Bool, "", false),
            (15, "restart_policy", Type::Enum, ".openshell.v1.SandboxRestartPolicy", false),
        ],
    );
}

#[test]
fn sandbox_status_lost_sandbox_name_and_gained_phase_fields() {
    assert_fields(
        "openshell.v1.SandboxStatus",
        &[
            (5, "conditions", Type::Message, ".openshell.v1.SandboxCondition", true),
            (6, "phase", Type::Enum, ".openshell.v1.SandboxPhase", false),
            (7, "current_policy_version", Type::Uint32, "", false),
            (9, "exit_code", Type::Int32, "", false),
            (14, "restart_count", Type::Uint32, "", false),
        ],
    );
    let status = message("openshell.v1.SandboxStatus");
    assert!(status.field.iter().all(|f| f.number() != 1), "G1 sandbox_name=1 must not return");
}

#[test]
fn create_sandbox_request_carries_a_workspace_selector_message() {
    assert_fields(
        "openshell.v1.CreateSandboxRequest",
        &[
            (1, "spec", Type::Message, ".openshell.v1.SandboxSpec", false),
            (2, "name", Type::String, "", false),
            (3, "labels", Type::Message, "", true),
            (5, "await_main_process_attachment", Type::Bool, "", false),
            (7, "workspace_scope", Type::Message, SELECTOR, false),
            (8, "request_id", Type::String, "", false),
        ],
    );
}

#[test]
fn workspace_selector_is_a_oneof() {
    let sel = message("openshell.datamodel.v1.WorkspaceSelector");
    assert_eq!(sel.oneof_decl.len(), 1);
    assert_eq!(sel.oneof_decl[0].name(), "selection");
    assert_fields(
        "openshell.datamodel.v1.WorkspaceSelector",
        &[
            (1, "workspace", Type::String, "", false),
            (2, "all_workspaces", Type::Message, ".openshell.datamodel.v1.AllWorkspaces", false),
        ],
    );
    assert!(sel.field.iter().all(|f| f.oneof_index == Some(0)));
}

#[test]
fn policy_chunk_numbers() {
    assert_fields(
        "openshell.v1.PolicyChunk",
        &[
            (1, "id", Type::String, "", false),
            (2, "status", Type::String, "", false),
            (3, "rule_name", Type::String, "", false),
            (4, "proposed_rule", Type::Message, ".openshell.sandbox.v1.NetworkPolicyRule", false),
            (6, "security_notes", Type::String, "", false),
            (7, "confidence", Type::Float, "", false),
            (13, "hit_count", Type::Int32, "", false),
            (16, "binary", Type::String, "", false),
            (20, "review_token", Type::String, "", false),
            (109, "created_time", Type::Message, TS, false),
            (114, "first_seen_time", Type::Message, TS, false),
            (115, "last_seen_time", Type::Message, TS, false),
        ],
    );
}

#[test]
fn update_config_request_numbers() {
    assert_fields(
        "openshell.v1.UpdateConfigRequest",
        &[
            (1, "sandbox", Type::String, "", false),
            (2, "policy", Type::Message, ".openshell.sandbox.v1.SandboxPolicy", false),
            (3, "setting_key", Type::String, "", false),
            (4, "setting_value", Type::Message, ".openshell.sandbox.v1.SettingValue", false),
            (5, "delete_setting", Type::Bool, "", false),
            (6, "global", Type::Bool, "", false),
            (7, "merge_operations", Type::Message, ".openshell.v1.PolicyMergeOperation", true),
            (8, "expected_resource_version", Type::Uint64, "", false),
            (10, "workspace_scope", Type::Message, SELECTOR, false),
            (11, "request_id", Type::String, "", false),
        ],
    );
}

#[test]
fn network_endpoint_modes_are_enums_not_strings() {
    assert_fields(
        "openshell.sandbox.v1.NetworkEndpoint",
        &[
            (1, "host", Type::String, "", false),
            (2, "port", Type::Uint32, "", false),
            (3, "protocol", Type::String, "", false),
            (4, "tls", Type::Enum, ".openshell.sandbox.v1.NetworkTlsMode", false),
            (5, "enforcement", Type::Enum, ".openshell.sandbox.v1.NetworkEnforcementMode", false),
            (6, "access", Type::Enum, ".openshell.sandbox.v1.NetworkAccessPreset", false),
            (7, "rules", Type::Message, ".openshell.sandbox.v1.L7Rule", true),
            (8, "allowed_ips", Type::String, "", true),
            (9, "ports", Type::Uint32, "", true),
            (10, "deny_rules", Type::Message, ".openshell.sandbox.v1.L7DenyRule", true),
        ],
    );
}

#[test]
fn service_has_every_contract_method() {
    let set = FileDescriptorSet::decode(FILE_DESCRIPTOR_SET).unwrap();
    let service =
        set.file.iter().flat_map(|f| f.service.iter()).find(|s| s.name() == "OpenShell").expect("OpenShell service");
    assert_eq!(service.method.len(), 84, "the 0.1.5 service has 84 methods");
    let exec = service.method.iter().find(|m| m.name() == "ExecSandbox").unwrap();
    assert!(exec.server_streaming() && !exec.client_streaming());
    let watch = service.method.iter().find(|m| m.name() == "WatchSandbox").unwrap();
    assert!(watch.server_streaming());
}
