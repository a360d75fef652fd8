//! Who the client is at the network level, and how fast it may go.
//!
//! The client address is the connection's, unless that connection comes
//! from a configured trusted proxy: then it is the right-most
//! `X-Forwarded-For` entry that is not itself a trusted proxy. Forwarding
//! headers from anyone else are ignored (they are trivially forged).
//!
//! Each client address gets a token bucket; probes (`/healthz`, `/readyz`,
//! `/version`) are exempt so monitoring never trips it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderValue, Request, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::{ApiError, AppState};

/// The address a request is attributed to; in the request's extensions.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// Proxies whose `X-Forwarded-For` is believed: addresses or CIDR blocks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    /// Parses `10.0.0.0/8`, `192.0.2.7`, `::1`, `fd00::/8`.
    pub fn parse(items: &[String]) -> Result<Self, String> {
        let mut out = Vec::new();
        for raw in items.iter().flat_map(|i| i.split(',')).map(str::trim).filter(|i| !i.is_empty()) {
            let (addr, bits) = match raw.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (raw, None),
            };
            let ip: IpAddr = addr.parse().map_err(|_| format!("{raw:?} is not an IP address or CIDR block"))?;
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b.parse::<u8>().ok().filter(|b| *b <= max).ok_or_else(|| format!("{raw:?}: bad prefix"))?,
                None => max,
            };
            out.push((ip, bits));
        }
        Ok(Self(out))
    }

    #[must_use]
    pub fn contains(&self, ip: IpAddr) -> bool {
        self.0.iter().any(|(net, bits)| match (net, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => prefix_eq(&n.octets(), &i.octets(), *bits),
            (IpAddr::V6(n), IpAddr::V6(i)) => prefix_eq(&n.octets(), &i.octets(), *bits),
            _ => false,
        })
    }
}

fn prefix_eq(a: &[u8], b: &[u8], bits: u8) -> bool {
    let (full, rest) = (usize::from(bits / 8), bits % 8);
    if a[..full] != b[..full] {
        return false;
    }
    rest == 0 || (a[full] ^ b[full]) >> (8 - rest) == 0
}

/// The client address for a request (see the module documentation).
fn client_ip(req: &Request<Body>, trusted: &TrustedProxies) -> Option<IpAddr> {
    let peer = req.extensions().get::<ConnectInfo<SocketAddr>>()?.0.ip();
    if !trusted.contains(peer) {
        return Some(peer);
    }
    let forwarded: Vec<IpAddr> = req
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|a| a.trim().parse().ok())
        .collect();
    Some(forwarded.into_iter().rev().find(|a| !trusted.contains(*a)).unwrap_or(peer))
}

/// Requests per minute per client address (a token bucket of that size).
#[derive(Debug)]
pub struct RateLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, (f64, Instant)>>,
}

impl RateLimiter {
    /// `per_minute == 0` turns limiting off.
    #[must_use]
    pub fn new(per_minute: u32) -> Arc<Self> {
        Arc::new(Self { per_minute, buckets: Mutex::default() })
    }

    /// `Err(wait)` when `ip` has no request left.
    fn take(&self, ip: IpAddr) -> Result<(), Duration> {
        if self.per_minute == 0 {
            return Ok(());
        }
        let capacity = f64::from(self.per_minute);
        let rate = capacity / 60.0;
        let now = Instant::now();
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() > 50_000 {
            // Full buckets are the same as no bucket: forget them.
            buckets.retain(|_, (tokens, at)| *tokens + now.duration_since(*at).as_secs_f64() * rate < capacity);
        }
        let (tokens, at) = buckets.entry(ip).or_insert((capacity, now));
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / rate))
        }
    }
}

fn exempt(path: &str) -> bool {
    matches!(path, "/healthz" | "/readyz" | "/version")
}

pub(crate) async fn limit(State(state): State<AppState>, mut req: Request<Body>, next: Next) -> Response {
    let ip = client_ip(&req, &state.trusted_proxies);
    if let Some(ip) = ip {
        req.extensions_mut().insert(ClientIp(ip));
        if !exempt(req.uri().path())
            && let Err(wait) = state.rate_limiter.take(ip)
        {
            let secs = wait.as_secs().max(1);
            let mut resp = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "TOO_MANY_REQUESTS",
                format!("too many requests from {ip}; try again in {secs} s"),
            )
            .into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            return resp;
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_blocks_match_what_they_should() {
        let t = TrustedProxies::parse(&["10.0.0.0/8, 192.0.2.7".into(), "fd00::/8".into()]).unwrap();
        assert!(t.contains("10.200.3.4".parse().unwrap()));
        assert!(!t.contains("11.0.0.1".parse().unwrap()));
        assert!(t.contains("192.0.2.7".parse().unwrap()));
        assert!(!t.contains("192.0.2.8".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("fe80::1".parse().unwrap()));
        assert!(TrustedProxies::parse(&["10.0.0.0/33".into()]).is_err());
        assert!(TrustedProxies::parse(&["proxy.example".into()]).is_err());
    }

    #[test]
    fn a_bucket_empties_and_refills() {
        let l = RateLimiter::new(60);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..60 {
            assert!(l.take(ip).is_ok());
        }
        let wait = l.take(ip).unwrap_err();
        assert!(wait <= Duration::from_secs(1), "{wait:?}");
        assert!(l.take("192.0.2.2".parse().unwrap()).is_ok(), "per address");
        assert!(RateLimiter::new(0).take(ip).is_ok(), "0 is off");
    }
}
