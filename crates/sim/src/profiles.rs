//! Built-in provider profiles, as `ListProviderProfiles` returns them.

use breakwater_wire::{sandbox as sb, v1};

fn profile(
    id: &str,
    display_name: &str,
    category: v1::ProviderProfileCategory,
    env_var: &str,
    hosts: &[&str],
    inference: bool,
) -> v1::ProviderProfile {
    v1::ProviderProfile {
        id: id.into(),
        display_name: display_name.into(),
        description: format!("{display_name} credentials, injected by the gateway"),
        category: category as i32,
        credentials: vec![v1::ProviderProfileCredential {
            name: env_var.to_ascii_lowercase(),
            description: format!("{display_name} API credential"),
            env_vars: vec![env_var.into()],
            required: true,
            auth_style: "bearer".into(),
            ..Default::default()
        }],
        endpoints: hosts
            .iter()
            .map(|h| sb::NetworkEndpoint { host: (*h).into(), port: 443, ..Default::default() })
            .collect(),
        inference_capable: inference,
        resource_version: 1,
        source: "builtin".into(),
        scope: "gateway".into(),
        ..Default::default()
    }
}

pub(crate) fn builtin() -> Vec<v1::ProviderProfile> {
    use v1::ProviderProfileCategory as C;
    vec![
        profile("anthropic", "Anthropic", C::Inference, "ANTHROPIC_API_KEY", &["api.anthropic.com"], true),
        profile("aws", "AWS", C::Data, "AWS_ACCESS_KEY_ID", &["sts.amazonaws.com"], false),
        profile("github", "GitHub", C::SourceControl, "GITHUB_TOKEN", &["api.github.com", "github.com"], false),
        profile("gitlab", "GitLab", C::SourceControl, "GITLAB_TOKEN", &["gitlab.com"], false),
        profile("nvidia", "NVIDIA NIM", C::Inference, "NVIDIA_API_KEY", &["integrate.api.nvidia.com"], true),
        profile("openai", "OpenAI", C::Inference, "OPENAI_API_KEY", &["api.openai.com"], true),
        profile("slack", "Slack", C::Messaging, "SLACK_BOT_TOKEN", &["slack.com"], false),
    ]
}
