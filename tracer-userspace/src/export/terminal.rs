//! Terminal output: one readable line per span, or one JSON object per span.

use std::io::Write;

use serde_json::{Map, Value as Json, json};

use crate::correlate::{
    clock::Clock,
    ids::to_hex,
    span::{HttpSpan, Value},
};

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` for a time since the Unix epoch.
pub fn utc(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// A duration in the unit that reads best.
fn duration(ns: u64) -> String {
    match ns {
        0..=999_999 => format!("{:.1}us", ns as f64 / 1e3),
        1_000_000..=999_999_999 => format!("{:.2}ms", ns as f64 / 1e6),
        _ => format!("{:.3}s", ns as f64 / 1e9),
    }
}

/// The one-line text form of a span.
pub fn text_line(span: &HttpSpan, clock: &Clock) -> String {
    let status = match &span.response {
        Some(r) => r
            .status
            .map_or_else(|| "---".to_string(), |s| s.to_string()),
        None => "---".to_string(),
    };
    let mut line = format!(
        "{} {}[{}] {:<6} {} {} {} {} trace={} span={}",
        utc(clock.to_system(span.start_ns)),
        span.process.service_name(),
        span.process.pid,
        span.kind.as_str(),
        span.method,
        span.path(),
        status,
        duration(span.end_ns - span.start_ns),
        to_hex(&span.trace_id),
        to_hex(&span.span_id),
    );
    if let Some(parent) = span.parent_span_id {
        line.push_str(&format!(" parent={}", to_hex(&parent)));
    }
    if span.response.is_none() {
        line.push_str(" (no response observed)");
    }
    line
}

/// The JSON form of a span: ids, times, resource and attributes.
pub fn json_value(span: &HttpSpan, clock: &Clock) -> Json {
    let nanos = |ns: u64| {
        clock
            .to_system(ns)
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
    };
    let mut attributes = Map::new();
    for (k, v) in span.attributes() {
        let v = match v {
            Value::Str(s) => Json::String(s),
            Value::Int(i) => Json::from(i),
            Value::StrList(list) => Json::from(list),
        };
        attributes.insert(k.to_string(), v);
    }
    let p = &span.process;
    json!({
        "trace_id": to_hex(&span.trace_id),
        "span_id": to_hex(&span.span_id),
        "parent_span_id": span.parent_span_id.map(|p| to_hex(&p)),
        "name": span.name(),
        "kind": span.kind.as_str(),
        "start_time_unix_nano": nanos(span.start_ns),
        "end_time_unix_nano": nanos(span.end_ns),
        "duration_ns": span.end_ns - span.start_ns,
        "status": if span.is_error() { "ERROR" } else { "UNSET" },
        "resource": {
            "service.name": p.service_name(),
            "process.pid": p.pid,
            "process.executable.name": p.executable_name,
        },
        "attributes": attributes,
    })
}

/// Prints spans to standard output in one of the terminal formats.
pub struct Terminal {
    json: bool,
}

impl Terminal {
    pub fn text() -> Self {
        Terminal { json: false }
    }

    pub fn json() -> Self {
        Terminal { json: true }
    }

    /// Print spans; a closed stdout (a pipe whose reader left) is not an error worth dying for.
    pub fn print(&self, spans: &[HttpSpan], clock: &Clock) {
        let mut out = std::io::stdout().lock();
        for span in spans {
            let line = if self.json {
                json_value(span, clock).to_string()
            } else {
                text_line(span, clock)
            };
            if writeln!(out, "{line}").is_err() {
                return;
            }
        }
        let _ = out.flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_utc_times() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_764_000_000_123);
        assert_eq!(utc(t), "2025-11-24T16:00:00.123Z");
        assert_eq!(utc(std::time::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = std::time::UNIX_EPOCH + std::time::Duration::from_secs(951_782_400);
        assert_eq!(utc(leap), "2000-02-29T00:00:00.000Z");
    }

    #[test]
    fn formats_durations() {
        assert_eq!(duration(1_500), "1.5us");
        assert_eq!(duration(12_340_000), "12.34ms");
        assert_eq!(duration(2_000_000_000), "2.000s");
    }
}
