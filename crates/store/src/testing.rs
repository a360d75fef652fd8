//! Throwaway stores for tests: a SQLite file in a temp directory, and a
//! private PostgreSQL schema per test (dropped on a best-effort basis).

use std::sync::Arc;
use std::time::Duration;

use crate::{PgStore, SecretCipher, SqliteStore, Store};

/// The PostgreSQL server tests use: `$BREAKWATER_TEST_DATABASE_URL`, else
/// the local one with trust auth.
#[must_use]
pub fn postgres_url() -> String {
    std::env::var("BREAKWATER_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// Keeps the temp directory alive as long as the store.
pub struct TestStore {
    pub store: Arc<dyn Store>,
    pub backend: &'static str,
    _dir: Option<tempfile::TempDir>,
}

#[must_use]
pub fn cipher() -> SecretCipher {
    SecretCipher::from_base64(&SecretCipher::generate_key()).expect("fresh key")
}

pub async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = SqliteStore::open(&dir.path().join("breakwater.db"), cipher()).await.expect("sqlite store");
    TestStore { store: Arc::new(store), backend: "sqlite", _dir: Some(dir) }
}

/// A fresh schema on the test PostgreSQL server. Panics with a clear message
/// when the server is not running: the suite needs both backends.
pub async fn postgres() -> TestStore {
    let (store, _) = postgres_with_schema().await;
    TestStore { store: Arc::new(store), backend: "postgres", _dir: None }
}

/// As [`postgres`], also returning the schema name (for tests that tamper
/// with rows directly).
pub async fn postgres_with_schema() -> (PgStore, String) {
    let url = postgres_url();
    let schema = format!("t_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed by the tests (.ci/run starts it): {e}"));
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.expect("create schema");
    admin.close().await;
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("url");
    let options = options.options([("search_path", schema.as_str())]);
    let store = PgStore::connect_with(options, cipher(), Duration::from_secs(5)).await.expect("postgres store");
    (store, schema)
}

/// Both backends, for tests that must hold on each.
pub async fn both() -> Vec<TestStore> {
    vec![sqlite().await, postgres().await]
}
