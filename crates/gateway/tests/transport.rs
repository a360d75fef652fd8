//! Connection modes and TLS failures, each classified so a user can act.

mod common;

use std::time::Duration;

use breakwater_domain::Secret;
use breakwater_gateway::{
    CertificateProblem, ClientIdentity, ConnectionConfig, Gateway, GatewayAddress, GatewayError, GrpcGateway, Transport,
};
use common::mtls_config;
use openshell_sim::pki::{CertAuthority, SimPki, Validity};
use openshell_sim::{Sim, SimConfig, SimTls};

async fn sim_with(tls: SimTls, listen: &str) -> Sim {
    let mut config = SimConfig::for_tests().unwrap();
    config.tls = tls;
    config.listen = listen.parse().unwrap();
    Sim::start(config).await.unwrap()
}

async fn connect_err(config: ConnectionConfig) -> GatewayError {
    match GrpcGateway::connect(config).await {
        Err(e) => e,
        // TLS 1.3 finishes the client side of the handshake before the
        // server checks our certificate: the refusal arrives on first use.
        Ok(gw) => gw.health().await.expect_err("the call must fail"),
    }
}

#[tokio::test]
async fn mtls_works_and_the_identity_is_the_client_certificate() {
    let sim = sim_with(SimTls::Mtls(SimPki::mint(&[]).unwrap()), "127.0.0.1:0").await;
    let gw = GrpcGateway::connect(mtls_config(&sim)).await.unwrap();
    assert_eq!(gw.current_user().await.unwrap().subject, "openshell-client");
}

#[tokio::test]
async fn wrong_ca_is_tls_untrusted() {
    // G02: the gateway was re-created with a new CA after we stored the old one.
    let sim = sim_with(SimTls::Mtls(SimPki::mint(&[]).unwrap()), "127.0.0.1:0").await;
    let mut config = mtls_config(&sim);
    let other = SimPki::mint(&[]).unwrap();
    if let Transport::Tls { ca_pem, .. } = &mut config.transport {
        *ca_pem = Some(other.ca_pem.into_bytes());
    }
    let err = connect_err(config).await;
    assert!(matches!(err, GatewayError::TlsUntrusted { .. }), "{err:?}");
    assert!(err.to_string().contains("no longer") || err.to_string().contains("not trusted"), "{err}");
    assert!(err.to_string().contains("again with its new CA bundle"), "tells the user what to do: {err}");
}

#[tokio::test]
async fn expired_client_certificate_is_reported_as_such() {
    // A PKI whose CA we hold, so we can issue an expired client certificate.
    let ca = CertAuthority::new("test CA").unwrap();
    let server = ca.issue_server(&openshell_sim::pki::default_sans(&[]), Validity::days(30)).unwrap();
    let expired = ca.issue_client("old-client", Validity::expired()).unwrap();
    let pki = SimPki { ca_pem: ca.cert_pem().to_owned(), server, client: Some(expired.clone()) };
    let sim = sim_with(SimTls::Mtls(pki), "127.0.0.1:0").await;
    let err = connect_err(mtls_config(&sim)).await;
    assert!(matches!(err, GatewayError::TlsCertificate { problem: CertificateProblem::ClientExpired, .. }), "{err:?}");
    assert!(err.to_string().contains("client certificate"), "{err}");
    assert_eq!(err.code(), "tls_client_certificate_expired");
}

#[tokio::test]
async fn expired_or_misnamed_server_certificates_are_named() {
    let ca = CertAuthority::new("test CA").unwrap();
    let client = ca.issue_client("c", Validity::days(30)).unwrap();

    let expired = ca.issue_server(&openshell_sim::pki::default_sans(&[]), Validity::expired()).unwrap();
    let sim = sim_with(
        SimTls::Mtls(SimPki { ca_pem: ca.cert_pem().into(), server: expired, client: Some(client.clone()) }),
        "127.0.0.1:0",
    )
    .await;
    let err = connect_err(mtls_config(&sim)).await;
    assert!(matches!(err, GatewayError::TlsCertificate { problem: CertificateProblem::ServerExpired, .. }), "{err:?}");
    assert_eq!(err.code(), "tls_server_certificate_expired");

    let misnamed = ca.issue_server(&["gw.example.com".into()], Validity::days(30)).unwrap();
    let sim = sim_with(
        SimTls::Mtls(SimPki { ca_pem: ca.cert_pem().into(), server: misnamed, client: Some(client) }),
        "127.0.0.1:0",
    )
    .await;
    let err = connect_err(mtls_config(&sim)).await;
    assert!(matches!(err, GatewayError::TlsCertificate { problem: CertificateProblem::WrongHost, .. }), "{err:?}");
    assert!(err.to_string().contains("endpoint"), "{err}");
    assert_eq!(err.code(), "tls_wrong_host");
}

#[tokio::test]
async fn g01_skip_verification_still_presents_the_client_certificate() {
    // G01: a server certificate we cannot verify (misnamed, unknown CA), but
    // the gateway demands our client certificate and gets it.
    let ca = CertAuthority::new("test CA").unwrap();
    let server = ca.issue_server(&["somewhere.else".into()], Validity::days(30)).unwrap();
    let client = ca.issue_client("skip-verify-client", Validity::days(30)).unwrap();
    let sim = sim_with(
        SimTls::Mtls(SimPki { ca_pem: ca.cert_pem().into(), server, client: Some(client.clone()) }),
        "127.0.0.1:0",
    )
    .await;
    let mut config = ConnectionConfig::plaintext(GatewayAddress::parse(&sim.endpoint()).unwrap());
    config.transport = Transport::Tls {
        ca_pem: None,
        client: Some(ClientIdentity { cert_pem: client.cert_pem.into_bytes(), key_pem: Secret::new(client.key_pem) }),
        skip_server_verification: true,
    };
    let gw = GrpcGateway::connect(config).await.unwrap();
    assert_eq!(gw.current_user().await.unwrap().subject, "skip-verify-client");
}

#[tokio::test]
async fn server_tls_without_client_certificate() {
    let pki = SimPki::mint(&[]).unwrap();
    let sim = sim_with(SimTls::Tls(pki.clone()), "127.0.0.1:0").await;
    let mut config = ConnectionConfig::plaintext(GatewayAddress::parse(&sim.endpoint()).unwrap());
    config.transport =
        Transport::Tls { ca_pem: Some(pki.ca_pem.into_bytes()), client: None, skip_server_verification: false };
    let gw = GrpcGateway::connect(config).await.unwrap();
    let me = gw.current_user().await.unwrap();
    assert_eq!(me.subject, "anonymous");
}

#[tokio::test]
async fn mtls_gateway_refuses_a_client_without_certificate() {
    let pki = SimPki::mint(&[]).unwrap();
    let sim = sim_with(SimTls::Mtls(pki.clone()), "127.0.0.1:0").await;
    let mut config = ConnectionConfig::plaintext(GatewayAddress::parse(&sim.endpoint()).unwrap());
    config.transport =
        Transport::Tls { ca_pem: Some(pki.ca_pem.into_bytes()), client: None, skip_server_verification: false };
    let err = connect_err(config).await;
    assert!(matches!(err, GatewayError::TlsCertificate { problem: CertificateProblem::ClientRejected, .. }), "{err:?}");
}

#[tokio::test]
async fn plaintext_client_against_a_tls_gateway_fails_fast_and_clearly() {
    let sim = sim_with(SimTls::Mtls(SimPki::mint(&[]).unwrap()), "127.0.0.1:0").await;
    let mut config = ConnectionConfig::plaintext(GatewayAddress::parse(&sim.endpoint()).unwrap());
    config.timeouts.call = Duration::from_secs(5);
    config.retry = breakwater_gateway::RetryPolicy::none();
    let started = std::time::Instant::now();
    let err = connect_err(config).await;
    assert!(started.elapsed() < Duration::from_secs(4), "must not hang: {:?}", started.elapsed());
    assert!(err.is_connection_failure(), "{err:?}");
}

#[tokio::test]
async fn plaintext_mode_works_when_explicitly_chosen() {
    let sim = sim_with(SimTls::Plaintext, "127.0.0.1:0").await;
    let config = ConnectionConfig::plaintext(GatewayAddress::parse(&sim.endpoint()).unwrap());
    let gw = GrpcGateway::connect(config).await.unwrap();
    assert!(gw.health().await.is_ok());
}

#[tokio::test]
async fn g10_ipv6_loopback_endpoint_connects() {
    // G10: `[::1]:PORT` is accepted and dialled over IPv6.
    let sim = sim_with(SimTls::Mtls(SimPki::mint(&[]).unwrap()), "[::1]:0").await;
    let config = mtls_config(&sim);
    assert_eq!(config.address.host(), "::1");
    let gw = GrpcGateway::connect(config).await.unwrap();
    assert!(gw.health().await.is_ok());
}

#[tokio::test]
async fn nothing_listening_is_unreachable() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let mut config = ConnectionConfig::plaintext(GatewayAddress::parse(&addr.to_string()).unwrap());
    config.retry = breakwater_gateway::RetryPolicy::none();
    let err = GrpcGateway::connect(config).await.unwrap_err();
    assert!(matches!(err, GatewayError::Unreachable { .. }), "{err:?}");
}

#[tokio::test]
async fn bad_pem_is_a_config_error_not_a_crash() {
    let mut config = ConnectionConfig::plaintext(GatewayAddress::parse("127.0.0.1:1").unwrap());
    config.transport =
        Transport::Tls { ca_pem: Some(b"not pem".to_vec()), client: None, skip_server_verification: false };
    let err = GrpcGateway::connect(config).await.unwrap_err();
    assert_eq!(err.code(), "invalid_config");
    assert!(err.to_string().contains("CA certificate"), "{err}");
}

#[tokio::test]
async fn bearer_tokens_ride_along_with_mtls() {
    let sim = sim_with(SimTls::Mtls(SimPki::mint(&[]).unwrap()), "127.0.0.1:0").await;
    sim.faults().require_bearer(Some("s3cret-token".into()));
    let gw = GrpcGateway::connect(mtls_config(&sim)).await.unwrap();
    assert!(gw.health().await.is_ok(), "Health is unauthenticated");
    let err = gw.current_user().await.unwrap_err();
    assert!(matches!(err, GatewayError::Unauthenticated { .. }), "{err:?}");
    let mut config = mtls_config(&sim);
    config.bearer_token = Some(Secret::new("s3cret-token"));
    let gw = GrpcGateway::connect(config).await.unwrap();
    assert_eq!(gw.current_user().await.unwrap().subject, "openshell-client");
}
