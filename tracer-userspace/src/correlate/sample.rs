//! Head sampling as `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` say: `always_on`,
//! `always_off`, `traceidratio`, and the `parentbased_*` forms (the default is
//! `parentbased_always_on`).
//!
//! The parent is the real one: the `traceparent` the request came with, or the client span on
//! this host that sent it; its sampled flag decides for `parentbased_*`. A root decision
//! depends on the trace id alone, as the specification's `TraceIdRatioBased` threshold test:
//! the trace id's last 56 bits (its random part) compared with `(1 - ratio) * 2^56`. Every
//! agent on a trace's path, and the kernel when it writes `traceparent`, decides alike.

/// 2^56: the number of values of a trace id's random part.
const RANDOM_VALUES: u64 = 1 << 56;

/// The decision for traces that start here.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Root {
    AlwaysOn,
    AlwaysOff,
    /// Sample when the random part is at least this threshold.
    Ratio {
        ratio: f64,
        threshold: u64,
    },
}

/// A malformed sampler variable.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum SamplerError {
    #[error(
        "OTEL_TRACES_SAMPLER: `{0}` is not one of always_on, always_off, traceidratio, \
         parentbased_always_on, parentbased_always_off, parentbased_traceidratio"
    )]
    Unknown(String),
    #[error("OTEL_TRACES_SAMPLER_ARG: `{0}` is not a ratio from 0 to 1")]
    Ratio(String),
}

/// Which spans are kept (sampled) and exported.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampler {
    root: Root,
    parent_based: bool,
}

impl Default for Sampler {
    /// `parentbased_always_on`.
    fn default() -> Self {
        Sampler {
            root: Root::AlwaysOn,
            parent_based: true,
        }
    }
}

impl Sampler {
    /// From the standard variables (`env` reads one); unset or empty means the default.
    /// `OTEL_TRACES_SAMPLER_ARG` is read for the ratio samplers only (default 1.0).
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Result<Self, SamplerError> {
        let name = env("OTEL_TRACES_SAMPLER")
            .map(|v| v.trim().to_ascii_lowercase())
            .filter(|v| !v.is_empty());
        let Some(name) = name else {
            return Ok(Sampler::default());
        };
        let (parent_based, root) = match name.strip_prefix("parentbased_") {
            Some(root) => (true, root),
            None => (false, name.as_str()),
        };
        let root = match root {
            "always_on" => Root::AlwaysOn,
            "always_off" => Root::AlwaysOff,
            "traceidratio" => {
                let arg = env("OTEL_TRACES_SAMPLER_ARG").filter(|v| !v.trim().is_empty());
                let ratio = match arg {
                    None => 1.0,
                    Some(a) => match a.trim().parse::<f64>() {
                        Ok(r) if (0.0..=1.0).contains(&r) => r,
                        _ => return Err(SamplerError::Ratio(a)),
                    },
                };
                Root::Ratio {
                    ratio,
                    threshold: threshold(ratio),
                }
            }
            _ => return Err(SamplerError::Unknown(name)),
        };
        Ok(Sampler { root, parent_based })
    }

    /// Whether a span is sampled: its parent's flag for `parentbased_*` when it has a parent,
    /// else the root decision on its trace id.
    pub fn sampled(&self, parent_flags: Option<u8>, trace_id: &[u8; 16]) -> bool {
        match parent_flags {
            Some(flags) if self.parent_based => flags & 1 != 0,
            _ => match self.root {
                Root::AlwaysOn => true,
                Root::AlwaysOff => false,
                Root::Ratio { threshold, .. } => random_part(trace_id) >= threshold,
            },
        }
    }

    /// The flags a span carries (and a `traceparent` written for it): the parent's, or none,
    /// with the sampled bit set to the decision.
    pub fn flags(&self, parent_flags: Option<u8>, trace_id: &[u8; 16]) -> u8 {
        let sampled = self.sampled(parent_flags, trace_id);
        (parent_flags.unwrap_or(0) & !1) | u8::from(sampled)
    }

    /// The kernel's form of the root decision: sample a new trace when its random part is at
    /// least this (0: every trace; 2^56: none).
    pub fn root_threshold(&self) -> u64 {
        match self.root {
            Root::AlwaysOn => 0,
            Root::AlwaysOff => RANDOM_VALUES,
            Root::Ratio { threshold, .. } => threshold,
        }
    }

    pub fn parent_based(&self) -> bool {
        self.parent_based
    }

    /// As the variable would name it, for the start-up log.
    pub fn describe(&self) -> String {
        let root = match self.root {
            Root::AlwaysOn => "always_on".to_string(),
            Root::AlwaysOff => "always_off".to_string(),
            Root::Ratio { ratio, .. } => format!("traceidratio {ratio}"),
        };
        if self.parent_based {
            format!("parentbased_{root}")
        } else {
            root
        }
    }
}

/// `(1 - ratio) * 2^56`, rounded: the specification's rejection threshold.
fn threshold(ratio: f64) -> u64 {
    (((1.0 - ratio) * RANDOM_VALUES as f64).round() as u64).min(RANDOM_VALUES)
}

/// A trace id's last 7 bytes, big-endian: its random part under W3C Trace Context level 2.
pub fn random_part(trace_id: &[u8; 16]) -> u64 {
    let mut b = [0u8; 8];
    b[1..].copy_from_slice(&trace_id[9..]);
    u64::from_be_bytes(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(name: &str, arg: Option<&str>) -> Result<Sampler, SamplerError> {
        Sampler::from_env(|k| match k {
            "OTEL_TRACES_SAMPLER" => Some(name.to_string()),
            "OTEL_TRACES_SAMPLER_ARG" => arg.map(str::to_string),
            _ => None,
        })
    }

    fn trace(random: u64) -> [u8; 16] {
        let mut t = [0xAB; 16];
        t[8..].copy_from_slice(&random.to_be_bytes());
        t
    }

    #[test]
    fn the_default_is_parent_based_always_on() {
        let s = Sampler::from_env(|_| None).unwrap();
        assert_eq!(s, Sampler::default());
        assert_eq!(sampler("", None).unwrap(), Sampler::default());
        assert_eq!(s.describe(), "parentbased_always_on");
        assert!(s.sampled(None, &trace(0)));
        assert!(s.sampled(Some(1), &trace(0)));
        assert!(
            !s.sampled(Some(0), &trace(0)),
            "the parent's decision stands"
        );
        assert_eq!(s.root_threshold(), 0);
    }

    #[test]
    fn every_sampler_decides_as_named() {
        let t = trace(0);
        let cases = [
            // name, root, parent sampled, parent not sampled
            ("always_on", true, true, true),
            ("always_off", false, false, false),
            ("parentbased_always_on", true, true, false),
            ("parentbased_always_off", false, true, false),
            ("ALWAYS_ON", true, true, true),
        ];
        for (name, root, with_sampled, with_unsampled) in cases {
            let s = sampler(name, Some("garbage is not read")).unwrap();
            assert_eq!(s.sampled(None, &t), root, "{name}");
            assert_eq!(s.sampled(Some(1), &t), with_sampled, "{name}");
            assert_eq!(s.sampled(Some(0), &t), with_unsampled, "{name}");
        }
    }

    #[test]
    fn the_ratio_compares_the_random_part_with_the_threshold() {
        let s = sampler("traceidratio", Some("0.5")).unwrap();
        assert_eq!(s.root_threshold(), 1 << 55);
        assert!(!s.sampled(None, &trace((1 << 55) - 1)));
        assert!(s.sampled(None, &trace(1 << 55)));
        // Only the last 56 bits count.
        assert!(!s.sampled(None, &trace(0xFF00_0000_0000_0000)));
        // Not parent-based: the parent's flag does not matter.
        assert!(s.sampled(Some(0), &trace(1 << 55)));
        let p = sampler("parentbased_traceidratio", Some("0.5")).unwrap();
        assert!(p.sampled(Some(1), &trace(0)));
        assert!(!p.sampled(Some(0), &trace(u64::MAX)));
        assert!(p.sampled(None, &trace(u64::MAX)));
        assert_eq!(p.describe(), "parentbased_traceidratio 0.5");
        assert_eq!(sampler("traceidratio", None).unwrap().root_threshold(), 0);
        assert_eq!(
            sampler("traceidratio", Some("0")).unwrap().root_threshold(),
            1 << 56
        );
        assert!(
            !sampler("traceidratio", Some("0"))
                .unwrap()
                .sampled(None, &trace(u64::MAX))
        );
    }

    #[test]
    fn a_ratio_keeps_its_share_of_random_traces() {
        let s = sampler("traceidratio", Some("0.25")).unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut kept = 0;
        for _ in 0..100_000 {
            // xorshift: a stand-in for random trace ids.
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            kept += usize::from(s.sampled(None, &trace(x)));
        }
        assert!((24_000..26_000).contains(&kept), "{kept}");
    }

    #[test]
    fn flags_carry_the_decision_and_keep_the_rest() {
        let s = sampler("parentbased_always_off", None).unwrap();
        assert_eq!(s.flags(None, &trace(0)), 0);
        assert_eq!(s.flags(Some(0x03), &trace(0)), 0x03);
        assert_eq!(s.flags(Some(0x02), &trace(0)), 0x02);
        let on = sampler("always_on", None).unwrap();
        assert_eq!(on.flags(Some(0x02), &trace(0)), 0x03);
    }

    #[test]
    fn malformed_values_are_clear_errors() {
        assert_eq!(
            sampler("sometimes", None),
            Err(SamplerError::Unknown("sometimes".into()))
        );
        assert_eq!(
            sampler("parentbased_", None),
            Err(SamplerError::Unknown("parentbased_".into()))
        );
        for bad in ["1.5", "-0.1", "half", "NaN", "inf", "0.5x", "é"] {
            assert_eq!(
                sampler("traceidratio", Some(bad)),
                Err(SamplerError::Ratio(bad.into())),
                "{bad}"
            );
        }
        let msg = sampler("x", None).unwrap_err().to_string();
        assert!(
            msg.contains("OTEL_TRACES_SAMPLER") && msg.contains("traceidratio"),
            "{msg}"
        );
    }
}
