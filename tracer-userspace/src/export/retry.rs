//! When an export request is tried again: which answers mean "later" (the OTLP
//! specification's retryable HTTP statuses and gRPC codes), how long the receiver asked to
//! wait (`Retry-After`), and the exponential backoff with jitter between tries otherwise.

use std::{
    future::Future,
    time::{Duration, SystemTime},
};

/// Retries of a request the receiver could not take for now.
pub const RETRIES: u32 = 4;
/// The first backoff; each later one doubles (0.1 s, 0.2 s, 0.4 s, 0.8 s), and each wait is
/// drawn between half and one and a half times its backoff (jitter), so that agents that
/// failed together do not all try again together.
pub const FIRST_WAIT: Duration = Duration::from_millis(100);
/// The longest `Retry-After` followed: a receiver that asks for more is given up on for this
/// request (its spans are counted as failed).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(30);

/// Why an export request failed, and whether trying again may help.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendError {
    pub message: String,
    pub retryable: bool,
    /// How long the receiver asked to wait before trying again.
    pub retry_after: Option<Duration>,
}

impl SendError {
    pub fn new(message: impl Into<String>, retryable: bool) -> Self {
        SendError {
            message: message.into(),
            retryable,
            retry_after: None,
        }
    }
}

/// An HTTP `Retry-After` value: delay-seconds, or an HTTP-date (a date already past means
/// now). `None` for anything else.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// `backoff` scaled by a factor drawn from [0.5, 1.5).
fn jittered(backoff: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    // A fresh random seed per call: enough randomness for spreading retries.
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    let factor = 0.5 + (r >> 11) as f64 / (1u64 << 53) as f64;
    backoff.mul_f64(factor)
}

/// The HTTP statuses the OTLP specification says to retry: the receiver is overloaded or a
/// gateway could not reach it.
pub fn http_retryable(status: u16) -> bool {
    matches!(status, 429 | 502 | 503 | 504)
}

/// A failed gRPC export as the OTLP specification reads it: the retryable codes, and the
/// wait the receiver asked for in a `google.rpc.RetryInfo` detail. `RESOURCE_EXHAUSTED` is
/// retried only with such a detail (the receiver says recovery is possible).
pub fn grpc_error(status: &tonic::Status) -> SendError {
    use tonic_types::StatusExt as _;
    let info = status.get_details_retry_info();
    let retryable = match status.code() {
        // A RetryInfo, with or without a delay, says recovery is possible.
        tonic::Code::ResourceExhausted => info.is_some(),
        code => grpc_retryable(code),
    };
    let retry_after = info.and_then(|i| i.retry_delay);
    SendError {
        message: format!("{}: {}", status.code(), status.message()),
        retryable,
        retry_after: retry_after.filter(|_| retryable),
    }
}

/// The gRPC codes the OTLP specification says to retry (`RESOURCE_EXHAUSTED` with a
/// `RetryInfo` only: see [`grpc_error`]).
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

/// Call `send` until it succeeds, fails for good, or [`RETRIES`] retries have failed. Between
/// tries it waits what the receiver asked for (`Retry-After`, up to [`MAX_RETRY_AFTER`]), else
/// a jittered backoff from [`FIRST_WAIT`], doubling each time.
pub async fn with_retries<T, F, Fut>(mut send: F) -> Result<T, String>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SendError>>,
{
    let mut backoff = FIRST_WAIT;
    let mut attempt = 0;
    loop {
        match send().await {
            Ok(v) => return Ok(v),
            Err(e) if e.retryable && attempt < RETRIES => {
                let wait = match e.retry_after {
                    Some(asked) if asked > MAX_RETRY_AFTER => {
                        return Err(format!(
                            "{} (the receiver asked to wait {} s; at most {} s is waited)",
                            e.message,
                            asked.as_secs(),
                            MAX_RETRY_AFTER.as_secs()
                        ));
                    }
                    Some(asked) => asked,
                    None => jittered(backoff),
                };
                tokio::time::sleep(wait).await;
                backoff *= 2;
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
        SendError::new("nope", retryable)
    }

    #[test]
    fn grpc_retry_info_is_the_wait_and_makes_resource_exhausted_retryable() {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let two = Duration::from_secs(2);
        let asked = |code| {
            grpc_error(&tonic::Status::with_error_details(
                code,
                "busy",
                ErrorDetails::with_retry_info(Some(two)),
            ))
        };
        let e = asked(tonic::Code::Unavailable);
        assert_eq!((e.retryable, e.retry_after), (true, Some(two)));
        assert_eq!(e.message, "The service is currently unavailable: busy");
        let e = asked(tonic::Code::ResourceExhausted);
        assert_eq!((e.retryable, e.retry_after), (true, Some(two)));
        let e = grpc_error(&tonic::Status::resource_exhausted("quota"));
        assert_eq!((e.retryable, e.retry_after), (false, None));
        let e = grpc_error(&tonic::Status::with_error_details(
            tonic::Code::ResourceExhausted,
            "quota",
            ErrorDetails::with_retry_info(None),
        ));
        assert_eq!((e.retryable, e.retry_after), (true, None));
        let e = grpc_error(&tonic::Status::unavailable("down"));
        assert_eq!((e.retryable, e.retry_after), (true, None));
        // A wait asked with a code that is not retried is not waited.
        let e = asked(tonic::Code::InvalidArgument);
        assert_eq!((e.retryable, e.retry_after), (false, None));
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
        // 0.1 + 0.2 + 0.4 s of (paused, auto-advanced) time, each from half to one and a
        // half times.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(350) && waited < Duration::from_millis(1050),
            "{waited:?}"
        );
    }

    #[test]
    fn jitter_spreads_waits_around_the_backoff() {
        let waits: Vec<Duration> = (0..200).map(|_| jittered(Duration::from_secs(1))).collect();
        assert!(waits.iter().all(|w| *w >= Duration::from_millis(500)));
        assert!(waits.iter().all(|w| *w < Duration::from_millis(1500)));
        let distinct: std::collections::BTreeSet<_> = waits.iter().collect();
        assert!(distinct.len() > 150, "{}", distinct.len());
        assert!(waits.iter().any(|w| *w < Duration::from_millis(900)));
        assert!(waits.iter().any(|w| *w > Duration::from_millis(1100)));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_exactly_up_to_the_limit() {
        let calls = Cell::new(0);
        let start = tokio::time::Instant::now();
        let result = with_retries(|| {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 3 {
                    Err(SendError {
                        retry_after: Some(Duration::from_secs(7)),
                        ..failing(true)
                    })
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(result, Ok(3));
        assert_eq!(start.elapsed(), Duration::from_secs(14));
        let result: Result<(), String> = with_retries(|| async {
            Err(SendError {
                retry_after: Some(Duration::from_secs(3600)),
                ..failing(true)
            })
        })
        .await;
        let err = result.unwrap_err();
        assert!(err.contains("asked to wait 3600 s"), "{err}");
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_784_000_000);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(now + Duration::from_secs(90));
        assert_eq!(
            parse_retry_after(&later, now),
            Some(Duration::from_secs(90))
        );
        let past = httpdate::fmt_http_date(now - Duration::from_secs(90));
        assert_eq!(parse_retry_after(&past, now), Some(Duration::ZERO));
        for bad in [
            "",
            "-1",
            "1.5",
            "soon",
            "Mon, 99 Foo 2026",
            "99999999999999999999999",
        ] {
            let got = parse_retry_after(bad, now);
            assert!(got.is_none() || bad.starts_with('9'), "{bad}: {got:?}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_is_not_retried() {
        let calls = Cell::new(0);
        let result: Result<(), String> = with_retries(|| {
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
        let result: Result<(), String> = with_retries(|| {
            calls.set(calls.get() + 1);
            async { Err(failing(true)) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.get(), RETRIES + 1);
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(750) && waited < Duration::from_millis(2250),
            "{waited:?}"
        );
    }
}
