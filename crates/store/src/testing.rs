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
    /// The SQLite file, for tests that inspect or tamper with it.
    pub sqlite_path: Option<std::path::PathBuf>,
    /// The PostgreSQL schema, likewise.
    pub pg_schema: Option<String>,
    _dir: Option<tempfile::TempDir>,
}

impl TestStore {
    /// Runs raw SQL behind the store's back (tamper tests).
    pub async fn raw_execute(&self, sql: &str) {
        if let Some(path) = &self.sqlite_path {
            let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display())).await.expect("open sqlite");
            sqlx::query(sql).execute(&pool).await.expect("raw sql");
            pool.close().await;
        } else if let Some(schema) = &self.pg_schema {
            let pool = sqlx::PgPool::connect(&postgres_url()).await.expect("connect");
            sqlx::query(&format!("SET search_path TO {schema}")).execute(&pool).await.expect("search path");
            let mut conn = pool.acquire().await.expect("conn");
            sqlx::query(&format!("SET search_path TO {schema}")).execute(&mut *conn).await.expect("search path");
            sqlx::query(sql).execute(&mut *conn).await.expect("raw sql");
        }
    }

    /// Everything the database holds, as text: what a dump would show.
    pub async fn dump_text(&self) -> String {
        if let Some(path) = &self.sqlite_path {
            let mut out = String::new();
            for suffix in ["", "-wal"] {
                let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
                if let Ok(bytes) = std::fs::read(&file) {
                    out.push_str(&String::from_utf8_lossy(&bytes));
                }
            }
            out
        } else if let Some(schema) = &self.pg_schema {
            let pool = sqlx::PgPool::connect(&postgres_url()).await.expect("connect");
            let mut out = String::new();
            for table in ["gateways", "gateway_labels", "audit_log", "audit_chain"] {
                let sql = format!("SELECT COALESCE(string_agg(t::text, E'\\n'), '') FROM {schema}.{table} t");
                let (text,): (String,) = sqlx::query_as(&sql).fetch_one(&pool).await.expect("dump");
                out.push_str(&text);
            }
            out
        } else {
            String::new()
        }
    }
}

#[must_use]
pub fn cipher() -> SecretCipher {
    SecretCipher::from_base64(&SecretCipher::generate_key()).expect("fresh key")
}

pub async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("breakwater.db");
    let store = SqliteStore::open(&path, cipher()).await.expect("sqlite store");
    TestStore { store: Arc::new(store), backend: "sqlite", sqlite_path: Some(path), pg_schema: None, _dir: Some(dir) }
}

/// A fresh schema on the test PostgreSQL server. Panics with a clear message
/// when the server is not running: the suite needs both backends.
pub async fn postgres() -> TestStore {
    let (store, schema) = postgres_with_schema().await;
    TestStore { store: Arc::new(store), backend: "postgres", sqlite_path: None, pg_schema: Some(schema), _dir: None }
}

/// As [`postgres`], also returning the schema name (for tests that tamper
/// with rows directly).
pub async fn postgres_with_schema() -> (PgStore, String) {
    let url = postgres_url();
    // The creation time in the name lets later runs sweep what this one leaves.
    let now = chrono::Utc::now().timestamp();
    let schema = format!("t_{now}_{}", uuid::Uuid::new_v4().simple());
    let admin = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(&url)
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {url} is needed by the tests (.ci/run starts it): {e}"));
    sweep_stale_schemas(&admin, now).await;
    sqlx::query(&format!("CREATE SCHEMA {schema}")).execute(&admin).await.expect("create schema");
    admin.close().await;
    let options: sqlx::postgres::PgConnectOptions = url.parse().expect("url");
    let options = options.options([("search_path", schema.as_str())]);
    let store = PgStore::connect_with(options, cipher(), Duration::from_secs(5)).await.expect("postgres store");
    (store, schema)
}

/// Drops test schemas older than an hour (once per process): a test's pool
/// outlives any synchronous `Drop`, so schemas are reaped by later runs.
async fn sweep_stale_schemas(admin: &sqlx::PgPool, now: i64) {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    let Ok(rows) = sqlx::query_scalar::<_, String>("SELECT nspname FROM pg_namespace WHERE nspname LIKE 't\\_%'")
        .fetch_all(admin)
        .await
    else {
        return;
    };
    for name in rows {
        let born = name.split('_').nth(1).and_then(|t| t.parse::<i64>().ok());
        // Schemas from before timestamps were in the name have none: stale too.
        if born.is_none_or(|t| now - t > 3600) {
            let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).execute(admin).await;
        }
    }
}

/// Both backends, for tests that must hold on each.
pub async fn both() -> Vec<TestStore> {
    vec![sqlite().await, postgres().await]
}
