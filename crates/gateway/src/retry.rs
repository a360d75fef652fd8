//! Retries with jittered exponential backoff inside a total budget.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::Rng;

use crate::{GatewayError, RetryPolicy};

/// Whether a call may be sent twice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Idempotency {
    /// Reads: always safe to repeat.
    Read,
    /// Mutations carrying a `request_id`: the gateway deduplicates them.
    Keyed,
    /// Mutations without a `request_id`: a retry could apply them twice.
    Unsafe,
}

/// Delay before attempt `attempt + 1` (attempt counts from 1): half fixed,
/// half random, so many clients that failed together do not retry together.
pub(crate) fn backoff(policy: &RetryPolicy, attempt: u32) -> Duration {
    let exp = policy.initial_backoff.saturating_mul(1u32 << attempt.saturating_sub(1).min(16));
    let base = exp.min(policy.max_backoff);
    let half = base / 2;
    half + rand::rng().random_range(Duration::ZERO..=half)
}

pub(crate) async fn with_retry<T, F, Fut>(
    policy: &RetryPolicy,
    idempotency: Idempotency,
    method: &'static str,
    mut call: F,
) -> Result<T, GatewayError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, GatewayError>>,
{
    let started = Instant::now();
    let mut attempt = 1;
    loop {
        let err = match call().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        if idempotency == Idempotency::Unsafe || !err.is_retryable() || attempt >= policy.max_attempts {
            return Err(err);
        }
        let mut delay = backoff(policy, attempt);
        if let GatewayError::ResourceExhausted { retry_after: Some(after), .. } = &err {
            delay = delay.max(*after);
        }
        if started.elapsed() + delay > policy.budget {
            return Err(err);
        }
        tracing::debug!(method, attempt, ?delay, error = %err, "retrying gateway call");
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(4),
            budget: Duration::from_secs(5),
        }
    }

    fn unavailable() -> GatewayError {
        GatewayError::Unreachable { message: "down".into() }
    }

    #[tokio::test]
    async fn reads_retry_until_success() {
        let calls = AtomicU32::new(0);
        let out = with_retry(&quick(), Idempotency::Read, "X", || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 2 { Err(unavailable()) } else { Ok(7) }
        })
        .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn unsafe_mutations_never_retry() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = with_retry(&quick(), Idempotency::Unsafe, "X", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn non_retryable_errors_are_returned_at_once() {
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = with_retry(&quick(), Idempotency::Read, "X", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(GatewayError::NotFound { message: "x".into() })
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn attempts_are_capped() {
        let calls = AtomicU32::new(0);
        let _: Result<(), _> = with_retry(&quick(), Idempotency::Keyed, "X", || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(unavailable())
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
            budget: Duration::from_secs(10),
        };
        for _ in 0..50 {
            let first = backoff(&p, 1);
            assert!(first >= Duration::from_millis(50) && first <= Duration::from_millis(100));
            let late = backoff(&p, 8);
            assert!(late >= Duration::from_millis(500) && late <= Duration::from_secs(1));
        }
    }
}
