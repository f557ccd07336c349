//! Where and how OTLP data leaves the agent: endpoint, protocol, headers, timeout,
//! compression and TLS files, resolved per signal (traces, metrics) from the flags and the
//! OpenTelemetry environment variables, with the specification's precedence (the per-signal
//! variable, then the general one, then the default).

use std::{path::PathBuf, str::FromStr, time::Duration};

/// OTLP transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    #[value(name = "grpc")]
    Grpc,
    #[value(name = "http/protobuf")]
    HttpProtobuf,
}

impl FromStr for Protocol {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim() {
            "grpc" => Ok(Protocol::Grpc),
            "http/protobuf" => Ok(Protocol::HttpProtobuf),
            other => Err(ConfigError::Protocol(other.to_string())),
        }
    }
}

/// What is exported: each has its own variables (`OTEL_EXPORTER_OTLP_TRACES_*`,
/// `OTEL_EXPORTER_OTLP_METRICS_*`) over the general ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
}

impl Signal {
    fn upper(self) -> &'static str {
        match self {
            Signal::Traces => "TRACES",
            Signal::Metrics => "METRICS",
        }
    }

    /// The path appended to a base endpoint for http/protobuf.
    pub fn path(self) -> &'static str {
        match self {
            Signal::Traces => "/v1/traces",
            Signal::Metrics => "/v1/metrics",
        }
    }

    /// `OTEL_EXPORTER_OTLP_<SIGNAL>_<what>` then `OTEL_EXPORTER_OTLP_<what>`.
    fn vars(self, what: &str) -> [String; 2] {
        [
            format!("OTEL_EXPORTER_OTLP_{}_{what}", self.upper()),
            format!("OTEL_EXPORTER_OTLP_{what}"),
        ]
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("OTLP protocol `{0}` is not supported: use `grpc` or `http/protobuf`")]
    Protocol(String),
    #[error("OTLP endpoint `{0}` is not an http:// or https:// URL")]
    Endpoint(String),
    #[error("{0}: `{1}` is not a timeout in milliseconds (1 to 3600000)")]
    Timeout(String, String),
    #[error("{0}: `{1}` is not a compression: use `gzip` or `none`")]
    Compression(String, String),
    #[error("{var}: `{entry}` is not a key=value pair")]
    Header { var: String, entry: String },
    #[error(
        "{0} is set but {1} is not: a client certificate needs its private key and the other way round"
    )]
    HalfIdentity(String, String),
}

/// Files for TLS to the receiver (`https://` endpoints), as the variables name them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// PEM certificates trusted besides the system's (`..._CERTIFICATE`).
    pub ca: Option<PathBuf>,
    /// PEM client certificate chain for mTLS (`..._CLIENT_CERTIFICATE`).
    pub client_certificate: Option<PathBuf>,
    /// PEM private key of the client certificate (`..._CLIENT_KEY`).
    pub client_key: Option<PathBuf>,
}

impl TlsFiles {
    pub fn is_empty(&self) -> bool {
        *self == TlsFiles::default()
    }
}

/// Where and how to export one signal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OtlpConfig {
    /// Full URL: for HTTP, including the signal's path (`/v1/traces`).
    pub endpoint: String,
    pub protocol: Protocol,
    /// Longest wait for one export request (`OTEL_EXPORTER_OTLP_TIMEOUT`).
    pub timeout: Duration,
    /// Compress request bodies with gzip (`OTEL_EXPORTER_OTLP_COMPRESSION=gzip`).
    pub gzip: bool,
    /// Sent with every request (`OTEL_EXPORTER_OTLP_HEADERS`): lower-case names, decoded values.
    pub headers: Vec<(String, String)>,
    pub tls: TlsFiles,
}

/// The specification's default export timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

impl OtlpConfig {
    /// `endpoint` over `protocol` with the specification's defaults: 10 s, no compression,
    /// no headers, the system's trusted certificates.
    pub fn new(endpoint: impl Into<String>, protocol: Protocol) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            protocol,
            timeout: DEFAULT_TIMEOUT,
            gzip: false,
            headers: Vec::new(),
            tls: TlsFiles::default(),
        }
    }

    /// Whether requests go over TLS.
    pub fn is_tls(&self) -> bool {
        self.endpoint.starts_with("https://")
    }
}

/// The first of `vars` that `env` gives a value: its name and value.
fn first_set(env: &impl Fn(&str) -> Option<String>, vars: [String; 2]) -> Option<(String, String)> {
    vars.into_iter().find_map(|v| env(&v).map(|x| (v, x)))
}

/// Resolve the export configuration of `signal` from the flags, then the standard variables:
/// `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` (used as is), `OTEL_EXPORTER_OTLP_ENDPOINT` (a base
/// URL: the signal's path is appended for HTTP), and the `..._PROTOCOL`, `..._TIMEOUT`
/// (milliseconds), `..._COMPRESSION`, `..._HEADERS`, `..._CERTIFICATE`,
/// `..._CLIENT_CERTIFICATE` and `..._CLIENT_KEY` variables in their per-signal and general
/// forms. A blank variable counts as unset. `None` when no endpoint is configured anywhere.
pub fn resolve(
    signal: Signal,
    endpoint_flag: Option<&str>,
    protocol_flag: Option<Protocol>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Option<OtlpConfig>, ConfigError> {
    let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
    let protocol = match protocol_flag {
        Some(p) => p,
        // The specification's default.
        None => match first_set(&env, signal.vars("PROTOCOL")) {
            Some((_, p)) => p.parse()?,
            None => Protocol::HttpProtobuf,
        },
    };
    let [signal_endpoint, base_endpoint] = signal.vars("ENDPOINT");
    let (url, is_base) = match endpoint_flag {
        Some(e) => (e.to_string(), true),
        None => match env(&signal_endpoint) {
            Some(e) => (e, false),
            None => match env(&base_endpoint) {
                Some(e) => (e, true),
                None => return Ok(None),
            },
        },
    };
    let url = url.trim().to_string();
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(ConfigError::Endpoint(url));
    }
    let path = signal.path();
    let endpoint = match protocol {
        Protocol::HttpProtobuf if is_base && !url.trim_end_matches('/').ends_with(path) => {
            format!("{}{path}", url.trim_end_matches('/'))
        }
        _ => url,
    };
    let timeout = match first_set(&env, signal.vars("TIMEOUT")) {
        None => DEFAULT_TIMEOUT,
        Some((var, v)) => match v.trim().parse::<u64>() {
            Ok(ms) if (1..=3_600_000).contains(&ms) => Duration::from_millis(ms),
            _ => return Err(ConfigError::Timeout(var, v)),
        },
    };
    let gzip = match first_set(&env, signal.vars("COMPRESSION")) {
        None => false,
        Some((var, v)) => match v.trim().to_ascii_lowercase().as_str() {
            "gzip" => true,
            "none" => false,
            _ => return Err(ConfigError::Compression(var, v)),
        },
    };
    let headers = match first_set(&env, signal.vars("HEADERS")) {
        None => Vec::new(),
        Some((var, text)) => parse_headers(&var, &text)?,
    };
    let file = |what: &str| first_set(&env, signal.vars(what));
    let client_certificate = file("CLIENT_CERTIFICATE");
    let client_key = file("CLIENT_KEY");
    match (&client_certificate, &client_key) {
        (Some((var, _)), None) => {
            return Err(ConfigError::HalfIdentity(
                var.clone(),
                signal.vars("CLIENT_KEY").join(" or "),
            ));
        }
        (None, Some((var, _))) => {
            return Err(ConfigError::HalfIdentity(
                var.clone(),
                signal.vars("CLIENT_CERTIFICATE").join(" or "),
            ));
        }
        _ => {}
    }
    let path = |v: Option<(String, String)>| v.map(|(_, p)| PathBuf::from(p.trim()));
    Ok(Some(OtlpConfig {
        endpoint,
        protocol,
        timeout,
        gzip,
        headers,
        tls: TlsFiles {
            ca: path(file("CERTIFICATE")),
            client_certificate: path(client_certificate),
            client_key: path(client_key),
        },
    }))
}

/// Export headers as `..._HEADERS` gives them: `key=value` pairs separated by commas, keys
/// lower-cased, values percent-decoded (W3C Baggage format, as the specification says).
/// Empty entries are skipped; an entry without `=` or with an empty key is an error that
/// names the variable.
fn parse_headers(var: &str, text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let bad = || ConfigError::Header {
                var: var.to_string(),
                entry: pair.trim().to_string(),
            };
            let (k, v) = pair.split_once('=').ok_or_else(bad)?;
            let k = k.trim();
            if k.is_empty() {
                return Err(bad());
            }
            let value = percent_encoding::percent_decode_str(v.trim()).decode_utf8_lossy();
            Ok((k.to_ascii_lowercase(), value.into_owned()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| map.get(k).cloned()
    }

    fn traces(
        endpoint: Option<&str>,
        protocol: Option<Protocol>,
        pairs: &[(&str, &str)],
    ) -> Result<Option<OtlpConfig>, ConfigError> {
        resolve(Signal::Traces, endpoint, protocol, env(pairs))
    }

    #[test]
    fn nothing_configured_means_no_export() {
        assert_eq!(traces(None, None, &[]), Ok(None));
    }

    #[test]
    fn base_endpoint_gets_the_signal_path_for_http() {
        let base = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/")];
        let c = traces(None, None, &base).unwrap().unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
        assert_eq!(c.protocol, Protocol::HttpProtobuf);
        let c = resolve(Signal::Metrics, None, None, env(&base))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/metrics");
        let c = traces(Some("http://c:4318/v1/traces"), None, &[])
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "http://c:4318/v1/traces");
    }

    #[test]
    fn signal_endpoint_is_used_as_is_and_wins() {
        let pairs = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://base:4318"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t:9999/custom"),
            ("OTEL_EXPORTER_OTLP_METRICS_ENDPOINT", "https://m:9999/m"),
        ];
        let c = traces(None, None, &pairs).unwrap().unwrap();
        assert_eq!(c.endpoint, "http://t:9999/custom");
        let c = resolve(Signal::Metrics, None, None, env(&pairs))
            .unwrap()
            .unwrap();
        assert_eq!(c.endpoint, "https://m:9999/m");
        assert!(c.is_tls());
    }

    #[test]
    fn flags_override_the_environment() {
        let c = traces(
            Some("http://flag:4317"),
            Some(Protocol::Grpc),
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://env:4318"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c, OtlpConfig::new("http://flag:4317", Protocol::Grpc));
    }

    #[test]
    fn grpc_from_the_environment() {
        let c = traces(
            None,
            None,
            &[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317"),
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "grpc"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(c.protocol, Protocol::Grpc);
        assert_eq!(c.endpoint, "http://c:4317");
    }

    #[test]
    fn bad_values_are_clear_errors() {
        assert_eq!(
            traces(
                None,
                None,
                &[
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://x")
                ]
            ),
            Err(ConfigError::Protocol("http/json".into()))
        );
        for bad in ["collector:4317", "ftp://x", "unix:///run/otel.sock"] {
            assert!(matches!(
                traces(Some(bad), None, &[]),
                Err(ConfigError::Endpoint(_))
            ));
        }
    }

    #[test]
    fn timeout_and_compression_per_signal_or_general() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let c = traces(None, None, &[base]).unwrap().unwrap();
        assert_eq!((c.timeout, c.gzip), (DEFAULT_TIMEOUT, false));
        let c = traces(
            None,
            None,
            &[
                base,
                ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
                ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!((c.timeout, c.gzip), (Duration::from_millis(2500), true));
        let pairs = [
            base,
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "2500"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "700"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "gzip"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "none"),
        ];
        let c = traces(None, None, &pairs).unwrap().unwrap();
        assert_eq!((c.timeout, c.gzip), (Duration::from_millis(700), false));
        // The traces' variables do not reach metrics.
        let c = resolve(Signal::Metrics, None, None, env(&pairs))
            .unwrap()
            .unwrap();
        assert_eq!((c.timeout, c.gzip), (Duration::from_millis(2500), true));
        for (var, bad) in [
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "0"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "10s"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "-5"),
            ("OTEL_EXPORTER_OTLP_TIMEOUT", "99999999999999999999"),
            ("OTEL_EXPORTER_OTLP_COMPRESSION", "zstd"),
            ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "g\u{e9}zip"),
        ] {
            let err = traces(None, None, &[base, (var, bad)]).unwrap_err();
            assert!(err.to_string().starts_with(var), "{var}={bad}: {err}");
            assert!(err.to_string().contains(bad), "{err}");
        }
    }

    #[test]
    fn header_variables_are_parsed_and_decoded() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        let h = |pairs: &[(&str, &str)]| {
            let mut all = vec![base];
            all.extend_from_slice(pairs);
            traces(None, None, &all).map(|c| c.unwrap().headers)
        };
        assert_eq!(h(&[]).unwrap(), vec![]);
        assert_eq!(
            h(&[(
                "OTEL_EXPORTER_OTLP_HEADERS",
                " Authorization=Bearer%20x%3Dy , api-key = k1,,x-empty=",
            )])
            .unwrap(),
            vec![
                ("authorization".to_string(), "Bearer x=y".to_string()),
                ("api-key".to_string(), "k1".to_string()),
                ("x-empty".to_string(), String::new()),
            ]
        );
        // The per-signal variable wins; a blank one counts as unset, like every other.
        assert_eq!(
            h(&[
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "b=2"),
            ])
            .unwrap(),
            vec![("b".to_string(), "2".to_string())]
        );
        assert_eq!(
            h(&[
                ("OTEL_EXPORTER_OTLP_HEADERS", "a=1"),
                ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "  "),
            ])
            .unwrap(),
            vec![("a".to_string(), "1".to_string())]
        );
    }

    #[test]
    fn malformed_header_variables_are_errors_not_panics() {
        let h = |v: &str| parse_headers("OTEL_EXPORTER_OTLP_HEADERS", v);
        for bad in ["novalue", "=x", "a=1,b"] {
            let err = h(bad).unwrap_err().to_string();
            assert!(err.contains("OTEL_EXPORTER_OTLP_HEADERS"), "{err}");
        }
        // Broken escapes and multi-byte text decode without a panic.
        for odd in [
            "k=%",
            "k=%4",
            "k=%zz",
            "k=%a\u{e9}",
            "k=\u{e9}%\u{e9}",
            "k=%ff%fe",
        ] {
            assert!(h(odd).is_ok(), "{odd}");
        }
    }

    #[test]
    fn tls_files_per_signal_and_a_client_key_needs_its_certificate() {
        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4318");
        let c = traces(
            None,
            None,
            &[
                base,
                ("OTEL_EXPORTER_OTLP_CERTIFICATE", "/etc/ca.pem"),
                (
                    "OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE",
                    "/etc/traces-ca.pem",
                ),
                ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/etc/client.pem"),
                ("OTEL_EXPORTER_OTLP_CLIENT_KEY", " /etc/client.key "),
            ],
        )
        .unwrap()
        .unwrap();
        assert_eq!(
            c.tls,
            TlsFiles {
                ca: Some("/etc/traces-ca.pem".into()),
                client_certificate: Some("/etc/client.pem".into()),
                client_key: Some("/etc/client.key".into()),
            }
        );
        let err = traces(
            None,
            None,
            &[base, ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "/k")],
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.starts_with("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY is set")
                && err.contains("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE or"),
            "{err}"
        );
        assert!(matches!(
            traces(
                None,
                None,
                &[base, ("OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE", "/c")]
            ),
            Err(ConfigError::HalfIdentity(..))
        ));
    }
}
