//! Request extractors shared by the routes.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use breakwater_services::Actor;

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
        for raw in self.all("label") {
            let (k, v) = raw
                .split_once(':')
                .ok_or_else(|| ApiError::bad_request("label", format!("{raw:?} is not key:value")))?;
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
