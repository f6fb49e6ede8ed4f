//! `SimArgs` checked and converted once into the units the server works in (pure, unit-tested).

use super::fault::{self, FaultKind, FaultSpec};
use super::{SimArgs, SimError};

/// Longest duration any timing flag may ask for.
const MAX_MS: f64 = 3_600_000.0;

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) cores: usize,
    pub(crate) pin_cpus: Vec<usize>,
    pub(crate) model: String,
    pub(crate) strict_model: bool,
    pub(crate) block_size: usize,
    pub(crate) cache_capacity_tokens: u64,
    pub(crate) cache_output_tokens: bool,
    pub(crate) encode_cache_tokens: u64,
    pub(crate) ttft_base_ns: u64,
    pub(crate) ttft_per_uncached_token_ns: u64,
    pub(crate) itl_ns: u64,
    pub(crate) tokens_per_chunk: u32,
    pub(crate) default_output_tokens: u32,
    pub(crate) max_model_len: u64,
    pub(crate) max_body_bytes: usize,
    pub(crate) seed: u64,
    /// `--fault` flags, then `--fail-every` as `http_500:every=N`.
    pub(crate) faults: Vec<FaultSpec>,
    pub(crate) pm_qos: bool,
    pub(crate) usage: super::UsageMode,
    /// Lower-case name of the header carrying the conversation id.
    pub(crate) session_header: String,
    pub(crate) record_prompts: bool,
    pub(crate) metrics_style: super::MetricsStyle,
}

fn invalid(flag: &'static str, reason: impl Into<String>) -> SimError {
    SimError::InvalidArg {
        flag,
        reason: reason.into(),
    }
}

fn ms_to_ns(flag: &'static str, v: f64, scale_ns: f64) -> Result<u64, SimError> {
    if !v.is_finite() || v < 0.0 {
        return Err(invalid(
            flag,
            format!("must be a non-negative number, got {v}"),
        ));
    }
    let ns = v * scale_ns;
    if ns > MAX_MS * 1e6 {
        return Err(invalid(flag, format!("{v} is longer than an hour")));
    }
    Ok(ns.round() as u64)
}

impl Config {
    pub(crate) fn from_args(a: &SimArgs) -> Result<Config, SimError> {
        if a.cores == 0 || a.cores > 1024 {
            return Err(invalid(
                "--cores",
                format!("must be 1..=1024, got {}", a.cores),
            ));
        }
        if a.block_size == 0 || a.block_size > 65_536 {
            return Err(invalid(
                "--block-size",
                format!("must be 1..=65536, got {}", a.block_size),
            ));
        }
        if a.tokens_per_chunk == 0 {
            return Err(invalid("--tokens-per-chunk", "must be at least 1"));
        }
        if a.default_output_tokens == 0 {
            return Err(invalid("--default-output-tokens", "must be at least 1"));
        }
        if a.advanced.max_model_len == 0 {
            return Err(invalid("--max-model-len", "must be at least 1"));
        }
        if a.advanced.max_body_bytes < 1024 {
            return Err(invalid("--max-body-bytes", "must be at least 1024"));
        }
        if a.model.is_empty() {
            return Err(invalid("--model", "must not be empty"));
        }
        let mut faults = a
            .faults
            .iter()
            .map(|f| fault::parse(f).map_err(|e| invalid("--fault", e)))
            .collect::<Result<Vec<_>, _>>()?;
        if a.fail_every > 0 {
            faults.push(FaultSpec {
                kind: FaultKind::Http500,
                every: a.fail_every,
                after_ms: 0,
            });
        }
        let (cores, pin_cpus) = match &a.cpus {
            Some(list) => {
                let cpus = crate::cpus::resolve(list).map_err(|e| invalid("--cpus", e))?;
                (cpus.len(), cpus)
            }
            None => (a.cores, a.advanced.pin_cpus.clone()),
        };
        Ok(Config {
            cores,
            pin_cpus,
            model: a.model.clone(),
            strict_model: a.advanced.strict_model,
            block_size: a.block_size,
            cache_capacity_tokens: a.cache_capacity_tokens,
            cache_output_tokens: !a.advanced.no_cache_output_tokens,
            encode_cache_tokens: a.advanced.encode_cache_tokens,
            ttft_base_ns: ms_to_ns("--ttft-base-ms", a.ttft_base_ms, 1e6)?,
            ttft_per_uncached_token_ns: ms_to_ns(
                "--ttft-per-uncached-token-us",
                a.ttft_per_uncached_token_us,
                1e3,
            )?,
            itl_ns: ms_to_ns("--itl-ms", a.itl_ms, 1e6)?,
            tokens_per_chunk: a.tokens_per_chunk,
            default_output_tokens: a.default_output_tokens,
            max_model_len: a.advanced.max_model_len,
            max_body_bytes: a.advanced.max_body_bytes,
            seed: a.seed,
            faults,
            pm_qos: !a.advanced.no_pm_qos,
            usage: a.advanced.usage,
            session_header: a.advanced.session_header.to_ascii_lowercase(),
            record_prompts: a.advanced.record_prompts,
            metrics_style: a.advanced.metrics_style,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        sim: SimArgs,
    }

    fn args(extra: &[&str]) -> SimArgs {
        let mut argv = vec!["sim"];
        argv.extend_from_slice(extra);
        Cli::try_parse_from(argv).unwrap().sim
    }

    #[test]
    fn defaults_and_units() {
        let c = Config::from_args(&args(&[])).unwrap();
        assert_eq!(c.cores, 1);
        assert_eq!(c.block_size, 16);
        assert_eq!(c.cache_capacity_tokens, 1_000_000);
        assert_eq!(c.ttft_base_ns, 20_000_000);
        assert_eq!(c.ttft_per_uncached_token_ns, 10_000);
        assert_eq!(c.itl_ns, 10_000_000);
        assert_eq!(c.tokens_per_chunk, 1);
        assert_eq!(c.default_output_tokens, 64);
        assert!(c.faults.is_empty());
        let c = Config::from_args(&args(&["--fail-every", "3", "--fault", "http_503:every=2"]))
            .unwrap();
        let kinds: Vec<_> = c.faults.iter().map(|f| (f.kind, f.every)).collect();
        assert_eq!(kinds, [(FaultKind::Http503, 2), (FaultKind::Http500, 3)]);
        assert_eq!(c.model, "parley-sim");
        assert!(c.cache_output_tokens);
        let c = Config::from_args(&args(&[
            "--itl-ms",
            "0.5",
            "--ttft-per-uncached-token-us",
            "2.5",
        ]))
        .unwrap();
        assert_eq!(c.itl_ns, 500_000);
        assert_eq!(c.ttft_per_uncached_token_ns, 2_500);
    }

    #[test]
    fn default_impl_equals_flag_defaults() {
        let (d, p) = (SimArgs::default(), args(&[]));
        assert_eq!(format!("{d:?}"), format!("{p:?}"));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            &["--cores", "0"][..],
            &["--block-size", "0"],
            &["--tokens-per-chunk", "0"],
            &["--itl-ms=-1"],
            &["--itl-ms", "NaN"],
            &["--ttft-base-ms", "1e12"],
            &["--default-output-tokens", "0"],
            &["--fault", "nope"],
        ] {
            assert!(Config::from_args(&args(bad)).is_err(), "{bad:?}");
        }
    }
}
