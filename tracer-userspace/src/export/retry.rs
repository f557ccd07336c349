//! When an export request is tried again: which answers mean "later" (the OTLP
//! specification's retryable HTTP statuses and gRPC codes), and the backoff between tries.

use std::{future::Future, time::Duration};

/// Retries of a request the receiver could not take for now.
pub const RETRIES: u32 = 4;
/// The first wait; each later one doubles (0.1 s, 0.2 s, 0.4 s, 0.8 s).
pub const FIRST_WAIT: Duration = Duration::from_millis(100);

/// Why an export request failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub message: String,
    pub retryable: bool,
}

/// The HTTP statuses the OTLP specification says to retry: the receiver is overloaded or a
/// gateway could not reach it.
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// The gRPC codes the OTLP specification says to retry.
pub fn grpc_retryable(code: tonic::Code) -> bool {
    use tonic::Code::*;
    matches!(
        code,
        Cancelled
            | DeadlineExceeded
            | ResourceExhausted
            | Aborted
            | OutOfRange
            | Unavailable
            | DataLoss
    )
}

/// Call `send` until it succeeds, fails for good, or [`RETRIES`] retries have failed, waiting
/// [`FIRST_WAIT`], then twice as long each time, between tries.
pub async fn with_retries<F, Fut>(mut send: F) -> Result<(), String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<(), SendError>>,
{
    let mut wait = FIRST_WAIT;
    let mut attempt = 0;
    loop {
        match send().await {
            Ok(()) => return Ok(()),
            Err(e) if e.retryable && attempt < RETRIES => {
                tokio::time::sleep(wait).await;
                wait *= 2;
                attempt += 1;
            }
            Err(e) => return Err(e.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    fn failing(retryable: bool) -> SendError {
        SendError {
            message: "nope".into(),
            retryable,
        }
    }

    #[test]
    fn the_specifications_statuses_and_codes() {
        for s in [429, 502, 503, 504] {
            assert!(http_retryable(s), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 413, 500, 501] {
            assert!(!http_retryable(s), "{s}");
        }
        assert!(grpc_retryable(tonic::Code::Unavailable));
        assert!(grpc_retryable(tonic::Code::ResourceExhausted));
        assert!(!grpc_retryable(tonic::Code::InvalidArgument));
        assert!(!grpc_retryable(tonic::Code::Unauthenticated));
        assert!(!grpc_retryable(tonic::Code::PermissionDenied));
    }

    #[tokio::test(start_paused = true)]
    async fn retryable_failures_are_tried_again_with_doubling_waits() {
        let calls = Cell::new(0);
        let start = tokio::time::Instant::now();
        let result = with_retries(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 4 { Err(failing(true)) } else { Ok(()) } }
        })
        .await;
        assert_eq!(result, Ok(()));
        assert_eq!(calls.get(), 4);
        // 0.1 + 0.2 + 0.4 s of (paused, auto-advanced) time.
        assert_eq!(start.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_not_retried() {
        let calls = Cell::new(0);
        let result = with_retries(|| {
            calls.set(calls.get() + 1);
            async { Err(failing(false)) }
        })
        .await;
        assert_eq!(result, Err("nope".to_string()));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_stop_after_the_limit() {
        let calls = Cell::new(0);
        let start = tokio::time::Instant::now();
        let result = with_retries(|| {
            calls.set(calls.get() + 1);
            async { Err(failing(true)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), RETRIES + 1);
        assert_eq!(start.elapsed(), Duration::from_millis(1500));
    }
}
