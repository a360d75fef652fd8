//! Request extractors shared by the routes.

use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::response::IntoResponse;
use breakwater_services::{Actor, IdempotencyKey};
use sha2::{Digest as _, Sha256};

use crate::ApiError;

/// The caller as authentication found them (with their role on the
/// route's gateway), taken when the request arrives; the client IP comes
/// from the connection.
pub struct Caller(pub Actor);

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(crate::auth::actor_of(parts)))
    }
}

/// Query pairs, keeping repeated keys (`?label=a:1&label=b:2`).
pub struct QueryPairs(pub Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for QueryPairs {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let q = parts.uri.query().unwrap_or("");
        Ok(Self(form_urlencoded::parse(q.as_bytes()).into_owned().collect()))
    }
}

impl QueryPairs {
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.0.iter().filter(move |(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    pub fn u32(&self, key: &str, default: u32, max: u32) -> Result<u32, ApiError> {
        match self.get(key) {
            None | Some("") => Ok(default),
            Some(raw) => match raw.parse::<u64>() {
                Ok(v) => Ok(u32::try_from(v).unwrap_or(u32::MAX).min(max)),
                Err(_) => Err(ApiError::bad_request(key, format!("{key} must be a non-negative integer"))),
            },
        }
    }

    /// `?label=k:v&label=k2:v2` (every pair must match), ShoreGuard's form.
    pub fn label_selector(&self) -> Result<breakwater_domain::LabelSelector, ApiError> {
        let mut pairs = Vec::new();
        let mut seen = std::collections::BTreeMap::new();
        for raw in self.all("label") {
            let (k, v) = raw
                .split_once(':')
                .ok_or_else(|| ApiError::bad_request("label", format!("{raw:?} is not key:value")))?;
            // Filters AND together, so two values for one key match nothing:
            // almost surely a mistake worth saying.
            if seen.insert(k, v).is_some_and(|before| before != v) {
                return Err(ApiError::bad_request(
                    "label",
                    format!("label {k:?} is filtered on twice with different values; nothing can match both"),
                ));
            }
            pairs.push(format!("{k}={v}"));
        }
        breakwater_domain::LabelSelector::parse(&pairs.join(","))
            .map_err(|e| ApiError::bad_request("label", e.to_string()))
    }

    pub fn bool(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("" | "false" | "0") => Ok(false),
            Some("true" | "1") => Ok(true),
            Some(_) => Err(ApiError::bad_request(key, format!("{key} must be true or false"))),
        }
    }

    pub fn time(&self, key: &str) -> Result<Option<chrono::DateTime<chrono::Utc>>, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|raw| {
                chrono::DateTime::parse_from_rfc3339(raw).map(|t| t.with_timezone(&chrono::Utc)).map_err(|_| {
                    ApiError::bad_request(key, format!("{key} must be an RFC 3339 time, e.g. 2026-01-31T12:00:00Z"))
                })
            })
            .transpose()
    }
}

/// Longest `Idempotency-Key` accepted (a UUID is 36).
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A JSON body with the request's `Idempotency-Key`, if one came, carrying a
/// digest of the body: the same key with a different body is refused
/// rather than answered with the first request's operation. The digest is
/// over the parsed document re-serialised (object keys sorted), so
/// whitespace and key order do not make two requests differ.
pub struct IdempotentJson<T> {
    pub body: T,
    pub key: Option<IdempotencyKey>,
}

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for IdempotentJson<T> {
    type Rejection = axum::response::Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let key = match req.headers().get("idempotency-key") {
            None => None,
            Some(v) => {
                let ok = (1..=MAX_IDEMPOTENCY_KEY).contains(&v.len())
                    && v.as_bytes().iter().all(|b| (0x21..=0x7e).contains(b));
                if !ok {
                    return Err(ApiError::bad_request(
                        "Idempotency-Key",
                        format!("the Idempotency-Key header must be 1 to {MAX_IDEMPOTENCY_KEY} printable ASCII characters without spaces (a UUID works)"),
                    )
                    .into_response());
                }
                Some(String::from_utf8_lossy(v.as_bytes()).into_owned())
            }
        };
        let axum::Json(value) =
            axum::Json::<serde_json::Value>::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        let body = T::deserialize(&value).map_err(|e| {
            let status = axum::http::StatusCode::UNPROCESSABLE_ENTITY;
            ApiError::new(status, crate::guard::code_for(status), crate::guard::detail_for(status, &e.to_string()))
                .into_response()
        })?;
        let key = key.map(|key| {
            let canonical = serde_json::to_vec(&value).unwrap_or_default();
            let fingerprint = hex::encode(Sha256::digest(&canonical));
            IdempotencyKey { key, fingerprint }
        });
        Ok(Self { body, key })
    }
}
