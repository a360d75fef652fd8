//! Sandboxes and what can be done with them: lifecycle, exec, logs, watch, SSH.

use std::collections::BTreeMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::policy::Policy;
use crate::{Labels, SandboxName, Secret, WorkspaceName};

/// Lifecycle phase reported by the gateway.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SandboxPhase {
    Unspecified,
    Provisioning,
    Ready,
    Error,
    Deleting,
    Unknown,
    Stopping,
    Stopped,
    Starting,
    Completed,
}

impl SandboxPhase {
    /// Phases a sandbox never leaves on its own.
    #[must_use]
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Error | Self::Completed | Self::Stopped)
    }

    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Provisioning => "provisioning",
            Self::Ready => "ready",
            Self::Error => "error",
            Self::Deleting => "deleting",
            Self::Unknown => "unknown",
            Self::Stopping => "stopping",
            Self::Stopped => "stopped",
            Self::Starting => "starting",
            Self::Completed => "completed",
        }
    }
}

impl std::fmt::Display for SandboxPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Kubernetes-style condition (`Ready=False`, reason, message).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxCondition {
    pub kind: String,
    pub status: String,
    pub reason: String,
    pub message: String,
    #[serde(serialize_with = "crate::timefmt::option::serialize")]
    pub transition_time: Option<DateTime<Utc>>,
}

/// A sandbox as the gateway reports it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Sandbox {
    pub id: String,
    pub name: String,
    pub workspace: String,
    pub labels: BTreeMap<String, String>,
    pub resource_version: u64,
    #[serde(serialize_with = "crate::timefmt::option::serialize")]
    pub created_at: Option<DateTime<Utc>>,
    #[serde(serialize_with = "crate::timefmt::option::serialize")]
    pub deleted_at: Option<DateTime<Utc>>,
    pub phase: SandboxPhase,
    pub conditions: Vec<SandboxCondition>,
    pub current_policy_version: u32,
    pub exit_code: Option<i32>,
    pub restart_count: u32,
    pub image: String,
    pub providers: Vec<String>,
    pub host_key_fingerprint: String,
    /// Whether the sandbox asked for a GPU.
    #[serde(default)]
    pub gpu: bool,
    /// Kept by Breakwater, not the gateway (see [`SandboxMetadata`]).
    #[serde(default)]
    pub description: Option<String>,
}

/// What Breakwater keeps about a sandbox beside the gateway: a description,
/// and labels that replace the gateway's in every view once set.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxMetadata {
    pub gateway: String,
    pub sandbox: String,
    pub description: Option<String>,
    /// `None`: the gateway's labels show.
    pub labels: Option<BTreeMap<String, String>>,
    pub updated_by: String,
    pub updated_at: DateTime<Utc>,
}

impl SandboxMetadata {
    /// Lays this over what the gateway reported.
    pub fn apply_to(&self, sandbox: &mut Sandbox) {
        sandbox.description.clone_from(&self.description);
        if let Some(labels) = &self.labels {
            sandbox.labels.clone_from(labels);
        }
    }
}

impl Sandbox {
    /// The condition message a human most wants when a sandbox is stuck.
    #[must_use]
    pub fn status_summary(&self) -> String {
        let cond = self.conditions.iter().find(|c| c.kind == "Ready").or_else(|| self.conditions.first());
        match cond {
            Some(c) if !c.message.is_empty() => {
                format!("{} ({}: {})", self.phase, c.reason, c.message)
            }
            Some(c) if !c.reason.is_empty() => format!("{} ({})", self.phase, c.reason),
            _ => self.phase.to_string(),
        }
    }
}

/// What to create.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NewSandbox {
    /// `None` lets the gateway pick a name.
    pub name: Option<SandboxName>,
    pub workspace: WorkspaceName,
    pub labels: Labels,
    pub image: String,
    pub environment: BTreeMap<String, String>,
    pub providers: Vec<String>,
    pub policy: Option<Policy>,
    pub command: Vec<String>,
    /// Asks for a GPU (the gateway picks which).
    pub gpu: bool,
    /// The supervisor's log level; empty for the gateway's default.
    pub log_level: String,
}

/// How a delete ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeletionOutcome {
    Unspecified,
    /// Gone now.
    Completed,
    /// The gateway accepted the delete and finishes it in the background.
    Accepted,
    /// Nothing to delete (only with `allow_missing`).
    AlreadyAbsent,
}

/// Result of deleting a sandbox.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxDeletion {
    pub outcome: DeletionOutcome,
    pub sandbox_id: String,
}

/// A command to run in a sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExecRequest {
    pub command: Vec<String>,
    pub workdir: String,
    pub environment: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    /// Gateway-side execution limit; `None` uses the gateway's default.
    pub timeout: Option<Duration>,
}

/// One event of a running exec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExecEvent {
    Stdout(Vec<u8>),
    Stderr(Vec<u8>),
    Exit(i32),
}

/// The collected result of an exec.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecOutput {
    pub stdout: String,
    pub stderr: String,
    pub exit_code: i32,
    /// True when output beyond the cap was dropped.
    pub truncated: bool,
}

/// A log line from the gateway's ring buffer or the watch stream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogLine {
    pub sandbox_id: String,
    pub time: Option<DateTime<Utc>>,
    pub level: String,
    pub target: String,
    pub message: String,
    pub source: String,
    pub fields: BTreeMap<String, String>,
}

/// Which logs to read.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LogQuery {
    /// Newest N lines; 0 lets the gateway choose.
    pub lines: u32,
    pub since: Option<DateTime<Utc>>,
    pub sources: Vec<String>,
    pub min_level: String,
}

/// Logs plus the size of the gateway's buffer.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxLogs {
    pub lines: Vec<LogLine>,
    pub buffer_total: u32,
}

/// What a watch stream should follow.
// Independent switches, as on the wire; an enum would not express their combinations.
#[allow(clippy::struct_excessive_bools)]
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WatchOptions {
    pub follow_status: bool,
    pub follow_logs: bool,
    pub follow_events: bool,
    pub log_tail_lines: u32,
    pub stop_on_terminal: bool,
}

/// A platform event (scheduling, image pull, supervisor connect...).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlatformEvent {
    pub time: Option<DateTime<Utc>>,
    pub source: String,
    pub kind: String,
    pub reason: String,
    pub message: String,
}

/// Notice that the draft policy changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DraftPolicyUpdate {
    pub draft_version: u64,
    pub new_chunks: u32,
    pub total_pending: u32,
    pub summary: String,
}

/// One item of a `WatchSandbox` stream.
#[derive(Clone, Debug, PartialEq)]
pub enum WatchEvent {
    Sandbox(Box<Sandbox>),
    Log(LogLine),
    Event(PlatformEvent),
    Warning(String),
    DraftPolicy(DraftPolicyUpdate),
}

/// A validated SSH session handed out by the gateway.
#[derive(Clone, Debug, PartialEq)]
pub struct SshSession {
    pub sandbox_id: String,
    pub token: Secret,
    pub gateway_host: String,
    pub gateway_port: u16,
    pub gateway_scheme: String,
    pub host_key_fingerprint: String,
    pub expires_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_summary_names_the_ready_condition() {
        let sb = Sandbox {
            id: "1".into(),
            name: "a".into(),
            workspace: "default".into(),
            labels: BTreeMap::new(),
            resource_version: 1,
            created_at: None,
            deleted_at: None,
            phase: SandboxPhase::Provisioning,
            conditions: vec![SandboxCondition {
                kind: "Ready".into(),
                status: "False".into(),
                reason: "SupervisorNotConnected".into(),
                message: "waiting for supervisor".into(),
                transition_time: None,
            }],
            current_policy_version: 0,
            exit_code: None,
            restart_count: 0,
            image: String::new(),
            providers: vec![],
            host_key_fingerprint: String::new(),
            gpu: false,
            description: None,
        };
        assert_eq!(sb.status_summary(), "provisioning (SupervisorNotConnected: waiting for supervisor)");
    }
}

/// Splits a command line the way a POSIX shell splits words, without any
/// expansion: single quotes are literal, double quotes allow `\"` and `\\`,
/// a backslash outside quotes escapes the next character. Unbalanced quotes
/// are an error that says so.
pub fn split_command(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut word = String::new();
    let mut in_word = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                        None => return Err("unbalanced single quote (') in the command".into()),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(ch @ ('"' | '\\' | '$' | '`')) => word.push(ch),
                            Some(ch) => {
                                word.push('\\');
                                word.push(ch);
                            }
                            None => return Err("unbalanced double quote (\") in the command".into()),
                        },
                        Some(ch) => word.push(ch),
                        None => return Err("unbalanced double quote (\") in the command".into()),
                    }
                }
            }
            '\\' => {
                in_word = true;
                match chars.next() {
                    Some(ch) => word.push(ch),
                    None => return Err("the command ends with a lone backslash".into()),
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut word));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                word.push(c);
            }
        }
    }
    if in_word {
        words.push(word);
    }
    if words.is_empty() {
        return Err("the command is empty".into());
    }
    Ok(words)
}

#[cfg(test)]
mod split_tests {
    use super::split_command;

    #[test]
    fn words_quotes_and_escapes() {
        assert_eq!(split_command("echo hi").unwrap(), ["echo", "hi"]);
        assert_eq!(split_command(r#"sh -c 'echo "a b"' x\ y"#).unwrap(), ["sh", "-c", "echo \"a b\"", "x y"]);
        assert_eq!(split_command(r#"printf "%s\n" "a\"b""#).unwrap(), ["printf", "%s\\n", "a\"b"]);
        assert_eq!(split_command("''").unwrap(), [""]);
    }

    #[test]
    fn s04_unbalanced_quotes_say_so() {
        assert!(split_command(r#"echo "hi"#).unwrap_err().contains("unbalanced double quote"));
        assert!(split_command("echo 'hi").unwrap_err().contains("unbalanced single quote"));
        assert!(split_command("   ").unwrap_err().contains("empty"));
    }
}
