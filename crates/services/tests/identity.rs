//! IdentityService on SQLite and PostgreSQL: first-run setup, sign-in with
//! lockout and a constant answer (U04), sessions that end on logout,
//! password change and deactivation, API keys with expiry (U06), rotation,
//! the last admin (U07), demotion on the next request (U08).

use std::time::Duration;

use breakwater_domain::Secret;
use breakwater_domain::access::{PrincipalKind, Role};
use breakwater_services::identity::Principal;
use breakwater_services::{Actor, AuditService, IdentityService, IdentitySettings, ServiceError};
use breakwater_store::testing::both;

fn admin() -> Actor {
    Actor { name: "root@example.com".into(), role: "admin".into(), client_ip: None }
}

fn pw(p: &str) -> Secret {
    Secret::new(p)
}

fn service(store: &std::sync::Arc<dyn breakwater_store::Store>, settings: IdentitySettings) -> IdentityService {
    IdentityService::new(store.clone(), AuditService::new(store.clone()), settings)
}

#[tokio::test]
async fn setup_happens_once_and_sessions_end_when_they_should() {
    for t in both().await {
        let ids = service(&t.store, IdentitySettings::for_tests());
        assert!(ids.needs_setup().await.unwrap());
        let horse = pw("correct horse battery");
        let (a, b) =
            tokio::join!(ids.setup("First@Example.com", &horse, None), ids.setup("second@example.com", &horse, None),);
        assert!(a.is_ok() != b.is_ok(), "{}: exactly one setup wins: {a:?} {b:?}", t.backend);
        let first = a.or(b).unwrap();
        assert_eq!(first.role, Role::Admin);
        assert!(!ids.needs_setup().await.unwrap());
        let again = ids.setup("third@example.com", &pw("correct horse battery"), None).await.unwrap_err();
        assert!(matches!(again, ServiceError::Precondition { .. }), "{again:?}");

        let session = ids.login(&first.email.to_uppercase(), &pw("correct horse battery"), None).await.unwrap();
        let token = session.secret;
        let who = ids.authenticate_session(&token).await.unwrap().unwrap();
        assert!(matches!(&who.principal, Principal::User(u) if u.id == first.id));
        assert_eq!(who.role(Some("any")), Some(Role::Admin));
        ids.logout(&token).await.unwrap();
        assert!(ids.authenticate_session(&token).await.unwrap().is_none(), "{}: logout ends it", t.backend);

        // A password change ends every session of that user.
        let token = ids.login(&first.email, &pw("correct horse battery"), None).await.unwrap().secret;
        ids.set_password(&admin(), &first.id, &pw("a new long passphrase")).await.unwrap();
        assert!(ids.authenticate_session(&token).await.unwrap().is_none());
        assert!(ids.login(&first.email, &pw("correct horse battery"), None).await.is_err());
        assert!(ids.login(&first.email, &pw("a new long passphrase"), None).await.is_ok());
        assert!(ids.set_password(&admin(), &first.id, &pw("short")).await.is_err(), "too short");
        // The plaintext never reaches the database.
        assert!(!t.dump_text().await.contains("a new long passphrase"), "{}", t.backend);
    }
}

#[tokio::test]
async fn u04_unknown_and_wrong_answer_alike_and_ten_failures_lock() {
    for t in both().await {
        let ids = service(&t.store, IdentitySettings { lockout_after: 10, ..IdentitySettings::for_tests() });
        let user = ids
            .create_user(&admin(), "op@example.com", Role::Operator, Some(&pw("operator passphrase")))
            .await
            .unwrap();
        let unknown = ids.login("nobody@example.com", &pw("whatever it is"), None).await.unwrap_err();
        let wrong = ids.login("op@example.com", &pw("whatever it is"), None).await.unwrap_err();
        assert_eq!(unknown.to_string(), wrong.to_string(), "{}", t.backend);
        assert!(matches!(unknown, ServiceError::Unauthenticated { .. }));
        for _ in 0..8 {
            assert!(matches!(
                ids.login("op@example.com", &pw("nope nope nope"), None).await,
                Err(ServiceError::Unauthenticated { .. })
            ));
        }
        // The tenth failure locks, and then even the right password waits.
        let locked = ids.login("op@example.com", &pw("nope nope nope"), None).await.unwrap_err();
        assert!(matches!(locked, ServiceError::Throttled { .. }), "{}: {locked:?}", t.backend);
        let still = ids.login("op@example.com", &pw("operator passphrase"), None).await.unwrap_err();
        assert!(matches!(still, ServiceError::Throttled { .. }));
        // An unknown email locks the same way, so the lock says nothing about who exists.
        for _ in 0..9 {
            let _ = ids.login("ghost@example.com", &pw("nope nope nope"), None).await;
        }
        let ghost = ids.login("ghost@example.com", &pw("nope nope nope"), None).await.unwrap_err();
        assert_eq!(std::mem::discriminant(&ghost), std::mem::discriminant(&locked));
        assert_eq!(t.store.get_user(&user.id).await.unwrap().unwrap().failed_logins, 0, "reset when locking");
        let audit = t.store.list_audit(&breakwater_domain::registry::AuditFilter::default(), 200, 0).await.unwrap();
        let failures = audit.0.iter().filter(|e| e.action == "auth.login_failed").count();
        assert_eq!(failures, 22, "{}: every failure is audited", t.backend);
    }
}

#[tokio::test]
async fn api_keys_rotate_expire_and_roles_change_on_the_next_request() {
    for t in both().await {
        let ids = service(&t.store, IdentitySettings::for_tests());
        let issued = ids.create_service_principal(&admin(), "ci", Role::Operator, None).await.unwrap();
        let key = issued.secret;
        assert!(key.expose().starts_with("bw_"));
        assert!(!t.dump_text().await.contains(key.expose()), "{}: only a digest is stored", t.backend);
        let who = ids.authenticate_key(&key).await.unwrap().unwrap();
        assert_eq!(who.role(Some("gw")), Some(Role::Operator));
        // A per-gateway override applies on that gateway only, at once.
        ids.set_gateway_role(&admin(), PrincipalKind::ServicePrincipal, &issued.item.id, "gw", Some(Role::Viewer))
            .await
            .unwrap();
        let who = ids.authenticate_key(&key).await.unwrap().unwrap();
        assert_eq!((who.role(Some("gw")), who.role(Some("other"))), (Some(Role::Viewer), Some(Role::Operator)));
        // Rotation: the old key stops working, the new one works.
        let rotated = ids.rotate_service_principal(&admin(), &issued.item.id).await.unwrap();
        assert!(ids.authenticate_key(&key).await.unwrap().is_none());
        assert!(ids.authenticate_key(&rotated.secret).await.unwrap().is_some());
        // U06: an expired key is no key.
        let past = ids
            .create_service_principal(
                &admin(),
                "old",
                Role::Viewer,
                Some(chrono::Utc::now() + chrono::Duration::milliseconds(300)),
            )
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert!(ids.authenticate_key(&past.secret).await.unwrap().is_none(), "{}", t.backend);
        assert!(ids.create_service_principal(&admin(), "x", Role::Viewer, Some(chrono::Utc::now())).await.is_err());

        // U08: a demoted user's next request carries the new role.
        let op = ids
            .create_user(&admin(), "op@example.com", Role::Operator, Some(&pw("operator passphrase")))
            .await
            .unwrap();
        let token = ids.login("op@example.com", &pw("operator passphrase"), None).await.unwrap().secret;
        ids.set_role(&admin(), &op.id, Role::Viewer).await.unwrap();
        assert_eq!(ids.authenticate_session(&token).await.unwrap().unwrap().role(None), Some(Role::Viewer));
        ids.set_active(&admin(), &op.id, false).await.unwrap();
        assert!(ids.authenticate_session(&token).await.unwrap().is_none(), "deactivation ends sessions");

        // U07: the last admin cannot demote, deactivate or delete themself.
        let root =
            ids.create_user(&admin(), "root@example.com", Role::Admin, Some(&pw("root passphrase!"))).await.unwrap();
        for refused in [
            ids.set_role(&admin(), &root.id, Role::Operator).await.map(drop),
            ids.set_active(&admin(), &root.id, false).await.map(drop),
            ids.delete_user(&admin(), &root.id).await,
        ] {
            assert!(matches!(refused, Err(ServiceError::Precondition { .. })), "{}: {refused:?}", t.backend);
        }
        let second = ids.create_user(&admin(), "two@example.com", Role::Admin, None).await.unwrap();
        ids.set_role(&admin(), &root.id, Role::Operator).await.unwrap();
        assert!(ids.delete_user(&admin(), &second.id).await.is_err(), "now two@ is the last admin");
    }
}

#[tokio::test]
async fn one_address_guessing_across_accounts_is_locked_out() {
    let t = breakwater_store::testing::sqlite().await;
    let ids = service(&t.store, IdentitySettings { ip_lockout_after: 5, ..IdentitySettings::for_tests() });
    ids.create_user(&admin(), "real@example.com", Role::Viewer, Some(&pw("the right passphrase"))).await.unwrap();
    let ip = || Some("192.0.2.9".to_owned());
    for i in 0..5 {
        let e = ids.login(&format!("guess{i}@example.com"), &pw("wrong wrong wrong"), ip()).await.unwrap_err();
        assert!(matches!(e, ServiceError::Unauthenticated { .. }), "{i}: {e:?}");
    }
    // Even the right password waits now, from that address only.
    let e = ids.login("real@example.com", &pw("the right passphrase"), ip()).await.unwrap_err();
    assert!(matches!(e, ServiceError::Throttled { .. }), "{e:?}");
    ids.login("real@example.com", &pw("the right passphrase"), Some("192.0.2.10".into())).await.unwrap();
}

#[tokio::test]
async fn registration_makes_viewers_and_duplicates_conflict() {
    let t = breakwater_store::testing::sqlite().await;
    let ids = service(&t.store, IdentitySettings::for_tests());
    let me = ids.register("Walk.In@example.com", &pw("a long enough passphrase"), None).await.unwrap();
    assert_eq!((me.item.email.as_str(), me.item.role), ("walk.in@example.com", Role::Viewer));
    assert!(ids.authenticate_session(&me.secret).await.unwrap().is_some(), "signed in");
    let dup = ids.register("walk.in@example.com", &pw("a long enough passphrase"), None).await.unwrap_err();
    assert!(matches!(dup, ServiceError::Conflict { .. }), "{dup:?}");
    assert!(ids.register("x@example.com", &pw("short"), None).await.is_err());
}

/// U04 timing: an unknown email costs what a wrong password costs (a
/// password check against a stand-in hash), so response times do not tell
/// which accounts exist. Medians of several tries, with real hashing work.
#[tokio::test]
async fn u04_an_unknown_email_takes_as_long_as_a_wrong_password() {
    let t = breakwater_store::testing::sqlite().await;
    let settings = IdentitySettings {
        hash_memory_kib: 8 * 1024,
        hash_passes: 1,
        lockout_after: 1000,
        ..IdentitySettings::default()
    };
    let ids = service(&t.store, settings);
    ids.create_user(&admin(), "known@example.com", Role::Viewer, Some(&pw("the right passphrase"))).await.unwrap();
    let time = |email: &'static str| {
        let ids = ids.clone();
        async move {
            let mut samples = Vec::new();
            for _ in 0..9 {
                let started = std::time::Instant::now();
                let _ = ids.login(email, &pw("a wrong passphrase"), None).await;
                samples.push(started.elapsed());
            }
            samples.sort();
            samples[samples.len() / 2]
        }
    };
    let known = time("known@example.com").await;
    let unknown = time("nobody@example.com").await;
    let ratio = unknown.as_secs_f64() / known.as_secs_f64();
    assert!((0.5..2.0).contains(&ratio), "unknown {unknown:?} vs known {known:?}");
}

#[tokio::test]
async fn a_database_dump_holds_no_password_token_key_or_invite() {
    for t in both().await {
        let ids = service(&t.store, IdentitySettings::for_tests());
        let password = "canary-passphrase-4f1e";
        ids.create_user(&admin(), "a@example.com", Role::Admin, Some(&pw(password))).await.unwrap();
        let session = ids.login("a@example.com", &pw(password), None).await.unwrap().secret;
        let key = ids.create_service_principal(&admin(), "ci", Role::Viewer, None).await.unwrap().secret;
        let invite = ids.invite_user(&admin(), "b@example.com", Role::Viewer).await.unwrap().secret;
        let dump = t.dump_text().await;
        for secret in [password, session.expose(), key.expose(), invite.expose()] {
            assert!(!dump.contains(secret), "{}: {secret} is in the database", t.backend);
        }
    }
}
