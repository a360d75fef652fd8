//! The gateway connection cases of `../shared/cases/gateways.md` that live in
//! the service layer, against real simulated gateways over mTLS.

use std::sync::Arc;
use std::time::{Duration, Instant};

use breakwater_domain::registry::{GatewayName, GatewayStatus};
use breakwater_domain::{LabelSelector, Secret};
use breakwater_gateway::{Gateway, GatewayError};
use breakwater_services::{Actor, AuditService, GatewayService, MonitorSettings, RegisterGateway, ServiceError};
use breakwater_store::Store;
use breakwater_store::testing::sqlite;
use openshell_sim::pki::{CertAuthority, Validity, default_sans};
use openshell_sim::{Sim, SimConfig, SimPki, SimTls};

fn service(store: &Arc<dyn Store>) -> GatewayService {
    GatewayService::new(store.clone(), AuditService::new(store.clone()))
}

fn registration(name: &str, endpoint: &str, pki: &SimPki) -> RegisterGateway {
    let client = pki.client.as_ref().expect("minted PKI has a client pair");
    RegisterGateway {
        name: name.into(),
        endpoint: endpoint.into(),
        ca_cert: Some(pki.ca_pem.clone()),
        client_cert: Some(client.cert_pem.clone()),
        client_key: Some(Secret::new(client.key_pem.clone())),
        ..RegisterGateway::default()
    }
}

fn pki_of(sim: &Sim) -> SimPki {
    sim.pki().expect("mTLS sim").clone()
}

fn name(raw: &str) -> GatewayName {
    GatewayName::parse(raw).unwrap()
}

/// A port where nothing listens.
async fn dead_endpoint() -> String {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    drop(l);
    addr.to_string()
}

#[tokio::test]
async fn g02_a_gateway_recreated_with_a_new_ca_is_reported_as_untrusted() {
    let store = sqlite().await;
    let svc = service(&store.store);
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let addr = sim.addr();
    let (_, test) = svc.register(&Actor::system(), registration("gw", &sim.endpoint(), &pki_of(&sim))).await.unwrap();
    assert!(test.success, "{test:?}");
    sim.shutdown().await;

    // Same address, new PKI: what `openshell gateway destroy && start` does.
    let mut config = SimConfig::for_tests().unwrap();
    config.listen = addr;
    let recreated = Sim::start(config).await.unwrap();

    let test = svc.test_connection(&name("gw")).await.unwrap();
    assert!(!test.success);
    assert_eq!(test.error_code.as_deref(), Some("tls_untrusted"));
    let message = test.error.unwrap();
    assert!(message.contains("not trusted by the configured CA"), "{message}");
    assert!(message.contains("again with its new CA bundle"), "{message}");

    svc.sweep(MonitorSettings::default()).await.unwrap();
    let rec = svc.get(&name("gw")).await.unwrap();
    assert_eq!(rec.health.status, GatewayStatus::Error);
    assert_eq!(rec.health.error_code.as_deref(), Some("tls_untrusted"));
    recreated.shutdown().await;
}

#[tokio::test]
async fn g06_a_gateway_that_never_answers_does_not_hold_up_the_sweep() {
    let store = sqlite().await;
    let svc = service(&store.store);
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let pki = pki_of(&sim);
    for i in 0..19 {
        svc.register(&Actor::system(), registration(&format!("ok-{i:02}"), &sim.endpoint(), &pki)).await.unwrap();
    }
    // Accepts TCP, then says nothing: the TLS handshake never completes.
    let blackhole = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hole = blackhole.local_addr().unwrap().to_string();
    let held = tokio::spawn(async move {
        let mut conns = Vec::new();
        loop {
            let (c, _) = blackhole.accept().await.unwrap();
            conns.push(c);
        }
    });
    // Registration reports the failed first contact but keeps the gateway.
    let (_, test) = svc.register(&Actor::system(), registration("silent", &hole, &pki)).await.unwrap();
    assert!(!test.success);
    // Make the 19 look stale, so the sweep has to refresh them.
    sim.set_outage(true);
    svc.sweep(MonitorSettings { probe_timeout: Duration::from_millis(300), ..MonitorSettings::default() })
        .await
        .unwrap();
    sim.set_outage(false);

    let interval = Duration::from_secs(3);
    let settings = MonitorSettings { interval, probe_timeout: Duration::from_secs(1), concurrency: 8 };
    let started = Instant::now();
    assert_eq!(svc.sweep(settings).await.unwrap(), 20);
    let took = started.elapsed();
    assert!(took < interval, "the sweep took {took:?}, longer than its interval");

    let (all, _) = svc.list(&LabelSelector::default(), 100, 0).await.unwrap();
    for rec in &all {
        let want = if rec.name.as_str() == "silent" { GatewayStatus::Unreachable } else { GatewayStatus::Connected };
        assert_eq!(rec.health.status, want, "{}", rec.name);
    }
    held.abort();
    sim.shutdown().await;
}

#[tokio::test]
async fn g07_a_hundred_calls_to_a_down_gateway_make_one_dial_and_fail_fast() {
    let store = sqlite().await;
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    let down = dead_endpoint().await;
    service(&store.store).register(&Actor::system(), registration("down", &down, &pki_of(&sim))).await.unwrap();

    // A fresh service, as after a restart: nothing cached, no backoff yet.
    let svc = service(&store.store);
    let gw = name("down");
    let started = Instant::now();
    let calls = (0..100).map(|_| {
        let svc = svc.clone();
        let gw = gw.clone();
        tokio::spawn(async move { svc.with_gateway(&gw, |c| async move { c.health().await }).await })
    });
    let results = futures::future::join_all(calls).await;
    let took = started.elapsed();
    assert_eq!(svc.dial_count(), 1, "concurrent callers share one dial");
    for r in results {
        match r.unwrap() {
            Err(ServiceError::Gateway(GatewayError::Unreachable { message })) => {
                assert!(message.contains("down") || message.contains("refused"), "{message}");
            }
            other => panic!("expected unreachable, got {other:?}"),
        }
    }
    assert!(took < Duration::from_secs(2), "100 failures took {took:?}");
    // Still inside the backoff window: no new dial.
    let again = svc.with_gateway(&gw, |c| async move { c.health().await }).await;
    assert!(matches!(again, Err(ServiceError::Gateway(GatewayError::Unreachable { .. }))));
    assert_eq!(svc.dial_count(), 1);
    sim.shutdown().await;
}

#[tokio::test]
async fn g08_a_client_certificate_expiring_in_three_days_is_shown_with_a_warning() {
    let ca = CertAuthority::new("short-lived CA").unwrap();
    let server = ca.issue_server(&default_sans(&[]), Validity::days(365)).unwrap();
    let client = ca.issue_client("expiring-client", Validity::days(3)).unwrap();
    let pki = SimPki { ca_pem: ca.cert_pem().to_owned(), server, client: Some(client) };
    let mut config = SimConfig::for_tests().unwrap();
    config.tls = SimTls::Mtls(pki.clone());
    let sim = Sim::start(config).await.unwrap();

    let store = sqlite().await;
    let svc = service(&store.store);
    let (_, test) = svc.register(&Actor::system(), registration("soon", &sim.endpoint(), &pki)).await.unwrap();
    assert!(test.success, "still valid for three days: {test:?}");
    let info = svc.info(&name("soon")).await.unwrap();
    let expires = info.client_cert_expires_at.expect("expiry shown");
    let left = expires - chrono::Utc::now();
    assert!(left > chrono::Duration::days(2) && left <= chrono::Duration::days(3), "{left:?}");
    assert_eq!(info.warnings.len(), 1, "{:?}", info.warnings);
    assert!(info.warnings[0].contains("expires in 3 day(s)"), "{:?}", info.warnings);
    assert!(!info.compute_drivers.is_empty(), "live facts still come back");

    // A year-long certificate raises nothing.
    let other = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    svc.register(&Actor::system(), registration("later", &other.endpoint(), &pki_of(&other))).await.unwrap();
    assert!(svc.info(&name("later")).await.unwrap().warnings.is_empty());
    sim.shutdown().await;
    other.shutdown().await;
}

#[tokio::test]
async fn a_successful_test_connection_clears_the_backoff() {
    let store = sqlite().await;
    let mut config = SimConfig::for_tests().unwrap();
    config.listen = dead_endpoint().await.parse().unwrap();
    let pki = match &config.tls {
        SimTls::Mtls(p) => p.clone(),
        _ => unreachable!(),
    };
    let svc = service(&store.store);
    let (_, test) =
        svc.register(&Actor::system(), registration("late", &config.listen.to_string(), &pki)).await.unwrap();
    assert_eq!(test.error_code.as_deref(), Some("gateway_unreachable"));
    // In backoff now: calls fail without dialling.
    let dials = svc.dial_count();
    assert!(svc.client(&name("late")).await.is_err());
    assert_eq!(svc.dial_count(), dials);

    let sim = Sim::start(config).await.unwrap();
    assert!(svc.test_connection(&name("late")).await.unwrap().success);
    let health = svc.with_gateway(&name("late"), |c| async move { c.health().await }).await.unwrap();
    assert_eq!(health.version, openshell_sim::DEFAULT_VERSION);
    sim.shutdown().await;
}

#[tokio::test]
async fn a_second_replica_sees_registrations_within_the_snapshot_ttl() {
    let store = sqlite().await;
    let a = service(&store.store);
    let b = service(&store.store);
    let sim = Sim::start(SimConfig::for_tests().unwrap()).await.unwrap();
    assert_eq!(b.list(&LabelSelector::default(), 100, 0).await.unwrap().1, 0, "b takes its snapshot");
    a.register(&Actor::system(), registration("from-a", &sim.endpoint(), &pki_of(&sim))).await.unwrap();
    assert_eq!(a.list(&LabelSelector::default(), 100, 0).await.unwrap().1, 1, "a local change shows at once");
    let started = Instant::now();
    loop {
        if b.list(&LabelSelector::default(), 100, 0).await.unwrap().1 == 1 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(3), "the other replica never saw it");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    sim.shutdown().await;
}
