//! How to reach a gateway: address, transport security, credentials,
//! deadlines and retry budget.

use std::fmt;
use std::net::IpAddr;
use std::time::Duration;

use breakwater_domain::Secret;

use crate::GatewayError;

/// A gateway address: host (name or IP) and port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GatewayAddress {
    host: String,
    port: u16,
}

impl GatewayAddress {
    /// Accepts `host:port`, `[v6]:port` or the same behind `https://`,
    /// `http://` or `grpcs://`. The port is required: gateways have no
    /// well-known one.
    pub fn parse(raw: &str) -> Result<Self, GatewayError> {
        let bad = |why: &str| GatewayError::Config { message: format!("endpoint {raw:?}: {why}") };
        let rest = raw.trim();
        let rest = ["https://", "http://", "grpcs://", "grpc://"]
            .iter()
            .find_map(|p| rest.strip_prefix(p))
            .unwrap_or(rest)
            .trim_end_matches('/');
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let (h, tail) = v6.split_once(']').ok_or_else(|| bad("unclosed '[' in IPv6 address"))?;
            let port = tail.strip_prefix(':').ok_or_else(|| bad("missing :port after IPv6 address"))?;
            h.parse::<std::net::Ipv6Addr>().map_err(|_| bad("not an IPv6 address inside [...]"))?;
            (h, port)
        } else {
            rest.rsplit_once(':').ok_or_else(|| bad("expected host:port"))?
        };
        if host.is_empty() || host.contains(['/', '@', ' ', ':']) && host.parse::<IpAddr>().is_err() {
            return Err(bad("invalid host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("port must be a number from 1 to 65535"))?;
        if port == 0 {
            return Err(bad("port must be a number from 1 to 65535"));
        }
        Ok(Self { host: host.to_owned(), port })
    }

    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    #[must_use]
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The host as an IP address, when it is one.
    #[must_use]
    pub fn ip(&self) -> Option<IpAddr> {
        self.host.parse().ok()
    }

    /// `host:port` with IPv6 bracketed, as a URI authority.
    #[must_use]
    pub fn authority(&self) -> String {
        match self.ip() {
            Some(IpAddr::V6(_)) => format!("[{}]:{}", self.host, self.port),
            _ => format!("{}:{}", self.host, self.port),
        }
    }
}

impl fmt::Display for GatewayAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.authority())
    }
}

/// PEM client certificate and key presented to the gateway.
#[derive(Clone)]
pub struct ClientIdentity {
    pub cert_pem: Vec<u8>,
    pub key_pem: Secret,
}

impl fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientIdentity").field("cert_pem", &"<pem>").field("key_pem", &"REDACTED").finish()
    }
}

/// Transport security. mTLS is TLS with a client identity.
#[derive(Clone, Debug)]
pub enum Transport {
    Tls {
        /// PEM CA bundle; `None` trusts the system roots.
        ca_pem: Option<Vec<u8>>,
        client: Option<ClientIdentity>,
        /// Accept any server certificate. Our client certificate is still
        /// presented: an mTLS gateway needs it regardless.
        skip_server_verification: bool,
    },
    /// No TLS at all. Only on explicit request.
    Plaintext,
}

/// Per-call deadlines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub connect: Duration,
    /// Unary calls.
    pub call: Duration,
    /// Exec streams (extended to the command's own timeout plus slack).
    pub exec: Duration,
    /// Watch streams.
    pub watch: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(10),
            call: Duration::from_secs(30),
            exec: Duration::from_secs(600),
            watch: Duration::from_secs(3600),
        }
    }
}

/// Jittered exponential backoff inside a total budget.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// No new attempt starts after this much time since the first.
    pub budget: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            budget: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// No retries at all.
    #[must_use]
    pub fn none() -> Self {
        Self { max_attempts: 1, ..Self::default() }
    }
}

/// Everything needed to talk to one gateway.
#[derive(Clone, Debug)]
pub struct ConnectionConfig {
    pub address: GatewayAddress,
    pub transport: Transport,
    pub bearer_token: Option<Secret>,
    pub timeouts: Timeouts,
    pub retry: RetryPolicy,
}

impl ConnectionConfig {
    /// mTLS with the given CA and client identity: the OpenShell default.
    #[must_use]
    pub fn mtls(address: GatewayAddress, ca_pem: Vec<u8>, cert_pem: Vec<u8>, key_pem: Secret) -> Self {
        Self {
            address,
            transport: Transport::Tls {
                ca_pem: Some(ca_pem),
                client: Some(ClientIdentity { cert_pem, key_pem }),
                skip_server_verification: false,
            },
            bearer_token: None,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
        }
    }

    #[must_use]
    pub fn plaintext(address: GatewayAddress) -> Self {
        Self {
            address,
            transport: Transport::Plaintext,
            bearer_token: None,
            timeouts: Timeouts::default(),
            retry: RetryPolicy::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_addresses() {
        let a = GatewayAddress::parse("gw.example.com:8080").unwrap();
        assert_eq!((a.host(), a.port()), ("gw.example.com", 8080));
        let a = GatewayAddress::parse("https://10.0.0.1:443/").unwrap();
        assert_eq!((a.host(), a.port()), ("10.0.0.1", 443));
        // G10: IPv6 loopback endpoints are accepted.
        let a = GatewayAddress::parse("[::1]:18080").unwrap();
        assert_eq!((a.host(), a.port(), a.authority().as_str()), ("::1", 18080, "[::1]:18080"));
    }

    #[test]
    fn rejects_bad_addresses_with_reason() {
        for (raw, why) in [
            ("gw.example.com", "host:port"),
            ("gw:0", "port"),
            ("gw:http", "port"),
            ("[::1:80", "unclosed"),
            ("[zz]:80", "IPv6"),
            (":80", "invalid host"),
        ] {
            let err = GatewayAddress::parse(raw).unwrap_err().to_string();
            assert!(err.contains(why), "{raw}: {err}");
        }
    }
}
