//! Every store test runs against SQLite and PostgreSQL.

use std::collections::BTreeMap;

use breakwater_domain::registry::{
    AuditFilter, AuthMode, FieldPatch, GatewayHealth, GatewayMetadataPatch, GatewayName, GatewayStatus, NewAuditEntry,
};
use breakwater_domain::{LabelSelector, Secret};
use breakwater_store::testing::both;
use breakwater_store::{NewGateway, PgStore, SecretCipher, SqliteStore, Store, StoreError};

fn gw(name: &str, labels: &[(&str, &str)]) -> NewGateway {
    NewGateway {
        name: GatewayName::parse(name).unwrap(),
        endpoint: "127.0.0.1:8443".into(),
        scheme: "https".into(),
        auth_mode: AuthMode::Mtls,
        skip_server_verification: false,
        ca_cert: Some("-----BEGIN CERTIFICATE-----\nca\n-----END CERTIFICATE-----\n".into()),
        client_cert: Some("cert".into()),
        client_key: Some(Secret::new("-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n")),
        bearer_token: Some(Secret::new("token-sekrit")),
        metadata: [("runtime".to_owned(), serde_json::json!("docker"))].into_iter().collect(),
        description: Some("test".into()),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
    }
}

fn entry(action: &str, actor: &str) -> NewAuditEntry {
    NewAuditEntry {
        actor: actor.into(),
        role: "admin".into(),
        client_ip: Some("127.0.0.1".into()),
        action: action.into(),
        resource_type: "gateway".into(),
        resource_id: "gw".into(),
        gateway: Some("gw".into()),
        detail: serde_json::json!({"endpoint": "127.0.0.1:1", "n": 3}),
    }
}

#[tokio::test]
async fn gateways_round_trip_with_the_key_decrypted() {
    for t in both().await {
        let s = &t.store;
        let created = s.insert_gateway(&gw("alpha", &[("env", "prod")])).await.unwrap();
        assert_eq!(created.name.as_str(), "alpha", "{}", t.backend);
        assert_eq!(
            created.client_key.as_ref().unwrap().expose(),
            "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n"
        );
        assert_eq!(created.bearer_token.as_ref().unwrap().expose(), "token-sekrit");
        assert!(!t.dump_text().await.contains("token-sekrit"), "{}: the token is sealed", t.backend);
        assert_eq!(created.labels["env"], "prod");
        assert_eq!(created.metadata["runtime"], "docker");
        assert_eq!(created.health.status, GatewayStatus::Unknown);
        let dup = s.insert_gateway(&gw("alpha", &[])).await.unwrap_err();
        assert!(matches!(dup, StoreError::Conflict(_)), "{}: {dup:?}", t.backend);
        assert!(s.delete_gateway(&GatewayName::parse("alpha").unwrap()).await.unwrap());
        assert!(!s.delete_gateway(&GatewayName::parse("alpha").unwrap()).await.unwrap());
        assert!(s.get_gateway(&GatewayName::parse("alpha").unwrap()).await.unwrap().is_none());
    }
}

#[tokio::test]
async fn list_filters_by_every_label_pair_and_orders_by_name() {
    for t in both().await {
        let s = &t.store;
        s.insert_gateway(&gw("c", &[("env", "prod"), ("team", "ml")])).await.unwrap();
        s.insert_gateway(&gw("a", &[("env", "prod")])).await.unwrap();
        s.insert_gateway(&gw("b", &[("env", "dev"), ("team", "ml")])).await.unwrap();
        let (all, total) = s.list_gateways(&LabelSelector::default(), 100, 0).await.unwrap();
        assert_eq!(all.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["a", "b", "c"], "{}", t.backend);
        assert_eq!(total, 3);
        let (prod_ml, total) =
            s.list_gateways(&LabelSelector::parse("env=prod,team=ml").unwrap(), 100, 0).await.unwrap();
        assert_eq!(prod_ml.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["c"], "{}", t.backend);
        assert_eq!(total, 1);
        let (page, total) = s.list_gateways(&LabelSelector::default(), 1, 1).await.unwrap();
        assert_eq!((page[0].name.as_str(), total), ("b", 3));
    }
}

#[tokio::test]
async fn health_and_metadata_updates() {
    for t in both().await {
        let s = &t.store;
        let name = GatewayName::parse("h").unwrap();
        s.insert_gateway(&gw("h", &[("a", "1")])).await.unwrap();
        let now = chrono::Utc::now();
        let health = GatewayHealth {
            status: GatewayStatus::Connected,
            error_code: None,
            error: None,
            version: Some("0.1.5".into()),
            checked_at: Some(now),
            last_seen: Some(now),
        };
        s.update_gateway_health(&name, &health).await.unwrap();
        let down = GatewayHealth {
            status: GatewayStatus::Unreachable,
            error_code: Some("gateway_unreachable".into()),
            error: Some("refused".into()),
            version: None,
            checked_at: Some(now),
            last_seen: None,
        };
        s.update_gateway_health(&name, &down).await.unwrap();
        let g = s.get_gateway(&name).await.unwrap().unwrap();
        assert_eq!(g.health.status, GatewayStatus::Unreachable, "{}", t.backend);
        assert_eq!(g.health.version.as_deref(), Some("0.1.5"), "the last known version is kept");
        assert!(g.health.last_seen.is_some(), "last seen survives a failed check");

        let keep = s.update_gateway_metadata(&name, &GatewayMetadataPatch::default()).await.unwrap();
        assert_eq!((keep.description.as_deref(), keep.labels.len()), (Some("test"), 1));
        let patch = GatewayMetadataPatch {
            description: FieldPatch::Clear,
            labels: FieldPatch::Set([("b".to_owned(), "2".to_owned())].into_iter().collect::<BTreeMap<_, _>>()),
        };
        let changed = s.update_gateway_metadata(&name, &patch).await.unwrap();
        assert_eq!(changed.description, None, "{}", t.backend);
        assert_eq!(changed.labels.keys().collect::<Vec<_>>(), ["b"]);
        let cleared = s
            .update_gateway_metadata(
                &name,
                &GatewayMetadataPatch { description: FieldPatch::Keep, labels: FieldPatch::Clear },
            )
            .await
            .unwrap();
        assert!(cleared.labels.is_empty());
        let missing = s.update_gateway_metadata(&GatewayName::parse("nope").unwrap(), &patch).await.unwrap_err();
        assert!(matches!(missing, StoreError::NotFound(_)));
    }
}

#[tokio::test]
async fn audit_entries_chain_and_filter() {
    for t in both().await {
        let s = &t.store;
        let a = s.append_audit(&entry("gateway.register", "alice")).await.unwrap();
        let b = s.append_audit(&entry("gateway.unregister", "bob")).await.unwrap();
        assert_eq!((a.seq, b.seq), (1, 2), "{}", t.backend);
        assert_eq!(a.prev_hash, "genesis");
        assert_eq!(b.prev_hash, a.hash);
        let (by_bob, total) =
            s.list_audit(&AuditFilter { actor: Some("bob".into()), ..Default::default() }, 10, 0).await.unwrap();
        assert_eq!((by_bob.len(), total), (1, 1));
        assert_eq!(by_bob[0], b, "{}: what is read back equals what was written", t.backend);
        let (newest_first, _) = s.list_audit(&AuditFilter::default(), 10, 0).await.unwrap();
        assert_eq!(newest_first.iter().map(|e| e.seq).collect::<Vec<_>>(), [2, 1]);
        let after = s.audit_after(0, 10).await.unwrap();
        assert_eq!(after.iter().map(|e| e.seq).collect::<Vec<_>>(), [1, 2]);
    }
}

#[tokio::test]
async fn concurrent_appends_never_fork_the_chain() {
    for t in both().await {
        let mut tasks = Vec::new();
        for i in 0..20 {
            let s = t.store.clone();
            tasks.push(tokio::spawn(async move { s.append_audit(&entry("x", &format!("u{i}"))).await.unwrap() }));
        }
        for task in tasks {
            task.await.unwrap();
        }
        let all = t.store.audit_after(0, 100).await.unwrap();
        assert_eq!(all.len(), 20, "{}", t.backend);
        for pair in all.windows(2) {
            assert_eq!(pair[1].prev_hash, pair[0].hash, "{}: chain is linear", t.backend);
            assert_eq!(pair[1].seq, pair[0].seq + 1);
        }
    }
}

#[tokio::test]
async fn retention_moves_the_anchor() {
    for t in both().await {
        let s = &t.store;
        s.append_audit(&entry("a", "x")).await.unwrap();
        let second = s.append_audit(&entry("b", "x")).await.unwrap();
        let cutoff = chrono::Utc::now() + chrono::Duration::seconds(1);
        assert_eq!(s.delete_audit_before(cutoff).await.unwrap(), 2, "{}", t.backend);
        let chain = s.audit_chain().await.unwrap();
        assert_eq!((chain.anchor_seq, chain.anchor_hash.clone()), (2, second.hash.clone()));
        assert_eq!((chain.head_seq, chain.head_hash), (2, second.hash.clone()));
        let third = s.append_audit(&entry("c", "x")).await.unwrap();
        assert_eq!(third.prev_hash, second.hash, "the chain continues from the deleted head");
    }
}

#[tokio::test]
async fn a_different_server_key_is_refused_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.db");
    let key = SecretCipher::generate_key();
    let store = SqliteStore::open(&path, SecretCipher::from_base64(&key).unwrap()).await.unwrap();
    store.insert_gateway(&gw("alpha", &[])).await.unwrap();
    drop(store);
    let other = SecretCipher::from_base64(&SecretCipher::generate_key()).unwrap();
    let err = SqliteStore::open(&path, other).await.err().expect("refused");
    assert!(matches!(err, StoreError::WrongKey), "{err:?}");
    assert!(err.to_string().contains("BREAKWATER_SECRET_KEY"), "{err}");
    SqliteStore::open(&path, SecretCipher::from_base64(&key).unwrap()).await.expect("the right key still opens it");

    // PostgreSQL: the same check, in a schema of its own.
    let (pg, schema) = breakwater_store::testing::postgres_with_schema().await;
    drop(pg);
    let options: sqlx::postgres::PgConnectOptions = breakwater_store::testing::postgres_url().parse().unwrap();
    let options = options.options([("search_path", schema.as_str())]);
    let err = PgStore::connect_with(
        options,
        SecretCipher::from_base64(&SecretCipher::generate_key()).unwrap(),
        std::time::Duration::from_secs(5),
    )
    .await
    .err()
    .expect("refused");
    assert!(matches!(err, StoreError::WrongKey), "{err:?}");
}

#[tokio::test]
async fn pins_workflows_votes_and_exactly_one_outcome_claim() {
    use breakwater_domain::approval::{ApprovalWorkflow, ChunkAction, Decision, PolicyPin, Vote};
    for t in both().await {
        let s = t.store.clone();
        let now = chrono::Utc::now();
        let pin = PolicyPin {
            gateway: "gw".into(),
            sandbox: "sb".into(),
            version: 7,
            pinned_by: "alice".into(),
            reason: Some("release freeze".into()),
            pinned_at: now,
            expires_at: Some(now + chrono::Duration::hours(1)),
        };
        s.put_pin(&pin).await.unwrap();
        let got = s.get_pin("gw", "sb").await.unwrap().unwrap();
        assert_eq!((got.version, got.reason.as_deref()), (7, Some("release freeze")), "{}", t.backend);
        assert!(s.delete_pin("gw", "sb").await.unwrap());
        assert!(s.get_pin("gw", "sb").await.unwrap().is_none());

        let wf = ApprovalWorkflow {
            gateway: "gw".into(),
            sandbox: "sb".into(),
            required_approvals: 2,
            required_roles: vec!["operator".into(), "admin".into()],
            distinct_actors: true,
            escalation_timeout_minutes: Some(30),
            updated_by: "alice".into(),
            updated_at: now,
        };
        s.put_workflow(&wf).await.unwrap();
        let got = s.get_workflow("gw", "sb").await.unwrap().unwrap();
        assert_eq!(got.required_roles, wf.required_roles, "{}", t.backend);
        assert_eq!(got.escalation_timeout_minutes, Some(30));

        let vote = |actor: &str, d| Vote {
            chunk_id: "c1".into(),
            actor: actor.into(),
            role: "operator".into(),
            decision: d,
            reason: None,
            at: chrono::Utc::now(),
        };
        s.put_vote("gw", "sb", &vote("alice", Decision::Approve)).await.unwrap();
        s.put_vote("gw", "sb", &vote("alice", Decision::Reject)).await.unwrap();
        s.put_vote("gw", "sb", &vote("bob", Decision::Approve)).await.unwrap();
        let votes = s.votes("gw", "sb", "c1").await.unwrap();
        assert_eq!(votes.len(), 2, "{}: one vote per actor", t.backend);
        assert_eq!(votes.iter().find(|v| v.actor == "alice").unwrap().decision, Decision::Reject);

        let claims = (0..20).map(|_| {
            let s = s.clone();
            tokio::spawn(async move { s.claim_outcome("gw", "sb", "c1", Decision::Approve).await.unwrap() })
        });
        let won = futures::future::join_all(claims).await.into_iter().filter(|r| *r.as_ref().unwrap()).count();
        assert_eq!(won, 1, "{}: exactly one claim wins", t.backend);
        assert_eq!(s.outcome("gw", "sb", "c1").await.unwrap(), Some(Decision::Approve));
        s.release_outcome("gw", "sb", "c1").await.unwrap();
        assert!(s.claim_outcome("gw", "sb", "c1", Decision::Reject).await.unwrap());

        s.record_chunk_action(
            "gw",
            "sb",
            &ChunkAction { chunk_id: "c1".into(), action: "approved".into(), actor: "bob".into(), at: now },
        )
        .await
        .unwrap();
        assert_eq!(s.chunk_actions("gw", "sb").await.unwrap()[0].actor, "bob");
    }
}

#[tokio::test]
async fn sandbox_metadata_round_trips_and_goes_with_its_gateway() {
    use breakwater_domain::sandbox::SandboxMetadata;
    for t in both().await {
        let s = &t.store;
        s.insert_gateway(&gw("meta", &[])).await.unwrap();
        let m = |sb: &str, labels: Option<&[(&str, &str)]>| SandboxMetadata {
            gateway: "meta".into(),
            sandbox: sb.into(),
            description: Some(format!("about {sb}")),
            labels: labels.map(|l| l.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()),
            updated_by: "alice".into(),
            updated_at: chrono::Utc::now(),
        };
        s.put_sandbox_metadata(&m("b", None)).await.unwrap();
        s.put_sandbox_metadata(&m("a", Some(&[("team", "ml")]))).await.unwrap();
        let got = s.get_sandbox_metadata("meta", "a").await.unwrap().unwrap();
        assert_eq!(got.labels.unwrap()["team"], "ml", "{}", t.backend);
        assert_eq!(got.description.as_deref(), Some("about a"));
        let none = s.get_sandbox_metadata("meta", "b").await.unwrap().unwrap();
        assert_eq!(none.labels, None, "{}: no labels is not empty labels", t.backend);
        // An upsert replaces.
        s.put_sandbox_metadata(&m("a", Some(&[]))).await.unwrap();
        assert_eq!(s.get_sandbox_metadata("meta", "a").await.unwrap().unwrap().labels, Some(BTreeMap::new()));
        let all = s.list_sandbox_metadata("meta").await.unwrap();
        assert_eq!(all.iter().map(|m| m.sandbox.as_str()).collect::<Vec<_>>(), ["a", "b"], "{}", t.backend);
        assert!(s.delete_sandbox_metadata("meta", "b").await.unwrap());
        assert!(!s.delete_sandbox_metadata("meta", "b").await.unwrap());
        s.delete_gateway(&GatewayName::parse("meta").unwrap()).await.unwrap();
        assert!(s.list_sandbox_metadata("meta").await.unwrap().is_empty(), "{}", t.backend);
    }
}

#[tokio::test]
async fn identity_users_sessions_keys_and_grants() {
    use breakwater_domain::access::{PrincipalKind, Role, ServicePrincipal, Session, User};
    for t in both().await {
        let s = &t.store;
        let now = chrono::Utc::now();
        let user = |id: &str, email: &str, role: Role| User {
            id: id.into(),
            email: email.into(),
            role,
            active: true,
            locked_until: None,
            failed_logins: 0,
            oidc_provider: None,
            created_at: now,
            updated_at: now,
        };
        assert_eq!(s.count_users().await.unwrap(), 0);
        s.insert_user(&user("u1", "alice@example.com", Role::Admin), Some("$argon2id$hash")).await.unwrap();
        s.insert_user(&user("u2", "bob@example.com", Role::Operator), None).await.unwrap();
        let dup = s.insert_user(&user("u3", "alice@example.com", Role::Viewer), None).await.unwrap_err();
        assert!(matches!(dup, StoreError::Conflict(_)), "{}: {dup:?}", t.backend);
        let (alice, hash) = s.user_by_email("alice@example.com").await.unwrap().unwrap();
        assert_eq!((alice.role, hash.as_deref()), (Role::Admin, Some("$argon2id$hash")));
        assert_eq!(s.count_active_admins().await.unwrap(), 1);
        let mut bob = s.get_user("u2").await.unwrap().unwrap();
        bob.failed_logins = 3;
        bob.locked_until = Some(now + chrono::Duration::minutes(15));
        s.save_user(&bob).await.unwrap();
        let got = s.get_user("u2").await.unwrap().unwrap();
        assert_eq!(got.failed_logins, 3, "{}", t.backend);
        assert!(got.locked_until.is_some());

        let session = Session { user_id: "u2".into(), created_at: now, last_seen_at: now, expires_at: now };
        s.insert_session("digest-1", &session).await.unwrap();
        assert_eq!(s.get_session("digest-1").await.unwrap().unwrap().user_id, "u2");
        s.touch_session("digest-1", now + chrono::Duration::seconds(5)).await.unwrap();
        assert_eq!(s.delete_user_sessions("u2").await.unwrap(), 1);
        assert!(s.get_session("digest-1").await.unwrap().is_none());

        let sp = ServicePrincipal {
            id: "sp1".into(),
            name: "ci".into(),
            role: Role::Operator,
            key_prefix: "bw_abcd".into(),
            expires_at: None,
            last_used_at: None,
            created_by: "alice@example.com".into(),
            created_at: now,
        };
        s.insert_service_principal(&sp, "key-digest").await.unwrap();
        assert_eq!(s.service_principal_by_key("key-digest").await.unwrap().unwrap().name, "ci");
        assert!(s.rotate_service_principal_key("sp1", "new-digest", "bw_efgh").await.unwrap());
        assert!(s.service_principal_by_key("key-digest").await.unwrap().is_none(), "the old key is gone");
        assert_eq!(s.get_service_principal("sp1").await.unwrap().unwrap().key_prefix, "bw_efgh");

        // U02 through the store: own override viewer on gw1, a group with global admin.
        s.put_gateway_role(PrincipalKind::User, "u2", "gw1", Role::Viewer).await.unwrap();
        sqlx_group(&t, "g1", "admins", Some("admin"), "u2").await;
        s.put_gateway_role(PrincipalKind::Group, "g1", "gw3", Role::Viewer).await.unwrap();
        let grants = s.grants(PrincipalKind::User, "u2").await.unwrap();
        assert_eq!(grants.role_on("gw1"), Some(Role::Viewer), "{}: {grants:?}", t.backend);
        assert_eq!(grants.role_on("gw2"), Some(Role::Admin));
        assert_eq!(grants.role_on("gw3"), Some(Role::Viewer), "a group's gateway role beats globals");
        // A deactivated user has no global role of their own.
        let mut bob = s.get_user("u2").await.unwrap().unwrap();
        bob.active = false;
        s.save_user(&bob).await.unwrap();
        assert_eq!(s.grants(PrincipalKind::User, "u2").await.unwrap().global, None);
        assert!(s.delete_user("u2").await.unwrap());
        assert!(s.gateway_roles(PrincipalKind::User, "u2").await.unwrap().is_empty(), "overrides go with the user");
        assert!(s.delete_service_principal("sp1").await.unwrap());
    }
}

/// Groups have no store API yet beyond what grants read; seed one directly.
async fn sqlx_group(t: &breakwater_store::testing::TestStore, id: &str, name: &str, role: Option<&str>, member: &str) {
    let role = role.map_or("NULL".to_owned(), |r| format!("'{r}'"));
    t.raw_execute(&format!(
        "INSERT INTO groups (id, name, role, description, created_at) \
         VALUES ('{id}', '{name}', {role}, NULL, '2026-01-01T00:00:00Z')"
    ))
    .await;
    t.raw_execute(&format!("INSERT INTO group_members (group_id, user_id) VALUES ('{id}', '{member}')")).await;
}

#[tokio::test]
async fn rotating_the_server_key_reseals_secrets_and_keeps_the_audit_chain_key() {
    // SQLite, reopened from its file.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("r.db");
    let old = SecretCipher::from_base64(&SecretCipher::generate_key()).unwrap();
    let new_key = SecretCipher::generate_key();
    let store = SqliteStore::open(&path, old.clone()).await.unwrap();
    store.insert_gateway(&gw("alpha", &[])).await.unwrap();
    store.append_audit(&entry("gateway.register", "alice")).await.unwrap();
    let chain_key = store.audit_key();
    assert_eq!(store.rotate_key(&SecretCipher::from_base64(&new_key).unwrap()).await.unwrap(), 3);
    drop(store);
    let err = SqliteStore::open(&path, old).await.err().expect("the old key no longer opens it");
    assert!(matches!(err, StoreError::WrongKey), "{err:?}");
    let store = SqliteStore::open(&path, SecretCipher::from_base64(&new_key).unwrap()).await.unwrap();
    let g = store.get_gateway(&GatewayName::parse("alpha").unwrap()).await.unwrap().unwrap();
    assert_eq!(g.bearer_token.unwrap().expose(), "token-sekrit");
    assert!(g.client_key.unwrap().expose().contains("secret"));
    assert_eq!(store.audit_key(), chain_key, "entries written before the rotation still verify");
    // A second rotation carries the same chain key on.
    let third = SecretCipher::generate_key();
    store.rotate_key(&SecretCipher::from_base64(&third).unwrap()).await.unwrap();
    drop(store);
    let store = SqliteStore::open(&path, SecretCipher::from_base64(&third).unwrap()).await.unwrap();
    assert_eq!(store.audit_key(), chain_key);

    // PostgreSQL, in a schema of its own.
    let (pg, schema) = breakwater_store::testing::postgres_with_schema().await;
    pg.insert_gateway(&gw("beta", &[])).await.unwrap();
    let pg_chain = pg.audit_key();
    let pg_new = SecretCipher::generate_key();
    pg.rotate_key(&SecretCipher::from_base64(&pg_new).unwrap()).await.unwrap();
    drop(pg);
    let options: sqlx::postgres::PgConnectOptions = breakwater_store::testing::postgres_url().parse().unwrap();
    let options = options.options([("search_path", schema.as_str())]);
    let pg =
        PgStore::connect_with(options, SecretCipher::from_base64(&pg_new).unwrap(), std::time::Duration::from_secs(5))
            .await
            .unwrap();
    let g = pg.get_gateway(&GatewayName::parse("beta").unwrap()).await.unwrap().unwrap();
    assert_eq!(g.bearer_token.unwrap().expose(), "token-sekrit");
    assert_eq!(pg.audit_key(), pg_chain);
}

#[tokio::test]
async fn oidc_users_are_found_by_link_and_sign_ins_in_flight_are_taken_once() {
    use breakwater_domain::access::{OidcLogin, Role, User};
    for t in both().await {
        let s = &t.store;
        let now = chrono::Utc::now();
        let user = |id: &str, email: &str| User {
            id: id.into(),
            email: email.into(),
            role: Role::Viewer,
            active: true,
            locked_until: None,
            failed_logins: 0,
            oidc_provider: Some("corp".into()),
            created_at: now,
            updated_at: now,
        };
        s.insert_oidc_user(&user("o1", "carol@example.com"), "sub-1").await.unwrap();
        let again = s.insert_oidc_user(&user("o2", "other@example.com"), "sub-1").await.unwrap_err();
        assert!(matches!(again, StoreError::Conflict(_)), "{}: the link is unique: {again:?}", t.backend);
        assert_eq!(s.user_by_oidc("corp", "sub-1").await.unwrap().unwrap().id, "o1");
        assert!(s.user_by_oidc("other", "sub-1").await.unwrap().is_none());
        let (_, hash) = s.user_by_email("carol@example.com").await.unwrap().unwrap();
        assert!(hash.is_none(), "an OIDC account has no password");

        let login = |state: &str, ttl: i64| OidcLogin {
            state_hash: state.into(),
            provider: "corp".into(),
            browser_hash: "b".into(),
            nonce: "n".into(),
            code_verifier: Secret::new("the-verifier-value"),
            next: "/x".into(),
            created_at: now,
            expires_at: now + chrono::Duration::seconds(ttl),
        };
        s.insert_oidc_login(&login("live", 600)).await.unwrap();
        s.insert_oidc_login(&login("stale", -1)).await.unwrap();
        let taken = s.take_oidc_login("live", now).await.unwrap().unwrap();
        assert_eq!(taken.code_verifier.expose(), "the-verifier-value", "{}", t.backend);
        assert_eq!(taken.next, "/x");
        assert!(s.take_oidc_login("live", now).await.unwrap().is_none(), "{}: used once", t.backend);
        assert!(s.take_oidc_login("stale", now).await.unwrap().is_none(), "{}: expired", t.backend);
    }
}

#[tokio::test]
async fn ssh_sessions_are_found_by_digest_and_expire() {
    use breakwater_store::SshSessionRecord;
    use chrono::{Duration, Utc};
    for t in both().await {
        let now = Utc::now();
        let record = |digest: &str, expires: Option<chrono::DateTime<Utc>>| SshSessionRecord {
            token_digest: digest.to_owned(),
            gateway: "gw".into(),
            sandbox: "agent-1".into(),
            created_by: "alice".into(),
            created_at: now,
            expires_at: expires,
        };
        t.store.record_ssh_session(&record("live", Some(now + Duration::hours(1)))).await.unwrap();
        t.store.record_ssh_session(&record("old", Some(now - Duration::hours(2)))).await.unwrap();
        t.store.record_ssh_session(&record("forever", None)).await.unwrap();
        let got = t.store.get_ssh_session("live").await.unwrap().unwrap();
        assert_eq!((got.sandbox.as_str(), got.created_by.as_str()), ("agent-1", "alice"), "{}", t.backend);
        assert_eq!(t.store.delete_expired_ssh_sessions(now - Duration::hours(1)).await.unwrap(), 1, "{}", t.backend);
        assert!(t.store.get_ssh_session("old").await.unwrap().is_none());
        assert!(t.store.get_ssh_session("forever").await.unwrap().is_some());
        assert!(t.store.delete_ssh_session("live").await.unwrap());
        assert!(!t.store.delete_ssh_session("live").await.unwrap());
    }
}

#[tokio::test]
async fn a_role_is_set_only_while_it_is_what_was_read_and_the_user_is_active() {
    use breakwater_domain::access::{Role, User};
    for t in both().await {
        let s = &t.store;
        let now = chrono::Utc::now();
        let mut u = User {
            id: "u1".into(),
            email: "carol@example.com".into(),
            role: Role::Operator,
            active: true,
            locked_until: None,
            failed_logins: 0,
            oidc_provider: None,
            created_at: now,
            updated_at: now,
        };
        s.insert_user(&u, None).await.unwrap();
        assert!(s.set_user_role_if("u1", Role::Operator, Role::Admin, now).await.unwrap(), "{}", t.backend);
        // Read as operator, but an admin made it admin meanwhile: no write.
        assert!(!s.set_user_role_if("u1", Role::Operator, Role::Viewer, now).await.unwrap(), "{}", t.backend);
        assert_eq!(s.get_user("u1").await.unwrap().unwrap().role, Role::Admin);
        // Deactivated meanwhile: no write either, and it stays inactive.
        u.role = Role::Admin;
        u.active = false;
        s.save_user(&u).await.unwrap();
        assert!(!s.set_user_role_if("u1", Role::Admin, Role::Viewer, now).await.unwrap(), "{}", t.backend);
        let after = s.get_user("u1").await.unwrap().unwrap();
        assert_eq!((after.role, after.active), (Role::Admin, false), "{}", t.backend);
    }
}
