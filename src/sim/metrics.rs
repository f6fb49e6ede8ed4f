//! The sim's counters and their Prometheus text rendering (`GET /metrics`), named as vLLM names
//! them so a client that scrapes vLLM scrapes the sim the same way.
//!
//! Counters are relaxed atomics shared by all executors; they are exact once the requests they
//! count have finished.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

#[derive(Default)]
pub(crate) struct Metrics {
    /// Generation requests that arrived.
    pub(crate) requests: AtomicU64,
    pub(crate) success_length: AtomicU64,
    pub(crate) success_stop: AtomicU64,
    /// Requests failed on purpose (`--fail-every`).
    pub(crate) failed_injected: AtomicU64,
    /// Requests rejected with a 4xx.
    pub(crate) rejected: AtomicU64,
    /// Requests whose client went away before the reply was complete.
    pub(crate) aborted: AtomicU64,
    pub(crate) prompt_tokens: AtomicU64,
    pub(crate) generation_tokens: AtomicU64,
    /// Prefix cache queries and hits, in tokens.
    pub(crate) cache_queries: AtomicU64,
    pub(crate) cache_hits: AtomicU64,
    /// Requests started minus finished.
    pub(crate) running: AtomicU64,
    pub(crate) running_done: AtomicU64,
}

fn counter(out: &mut String, name: &str, help: &str, labels: &str, value: u64) {
    let _ = writeln!(out, "# HELP {name}_total {help}");
    let _ = writeln!(out, "# TYPE {name}_total counter");
    let _ = writeln!(out, "{name}_total{{{labels}}} {value}");
}

impl Metrics {
    /// Prometheus text exposition format 0.0.4.
    pub(crate) fn render(&self, model: &str, block_size: usize, cache_tokens: u64) -> String {
        let mut out = String::with_capacity(4096);
        let m = format!("model_name=\"{}\"", model.replace(['"', '\\', '\n'], "_"));
        let running = self
            .running
            .load(Relaxed)
            .saturating_sub(self.running_done.load(Relaxed));
        let _ = writeln!(
            out,
            "# HELP vllm:num_requests_running Number of requests being generated.\n\
             # TYPE vllm:num_requests_running gauge\n\
             vllm:num_requests_running{{{m}}} {running}"
        );
        let _ = writeln!(
            out,
            "# HELP vllm:num_requests_waiting Number of requests waiting (the sim never queues).\n\
             # TYPE vllm:num_requests_waiting gauge\n\
             vllm:num_requests_waiting{{{m}}} 0"
        );
        counter(
            &mut out,
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in prompt tokens.",
            &m,
            self.cache_queries.load(Relaxed),
        );
        let hits = self.cache_hits.load(Relaxed);
        counter(
            &mut out,
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in tokens (the sum of cached_tokens).",
            &m,
            hits,
        );
        counter(
            &mut out,
            "vllm:prompt_tokens_cached",
            "Prompt tokens served from the prefix cache.",
            &m,
            hits,
        );
        counter(
            &mut out,
            "vllm:prompt_tokens",
            "Prompt tokens processed.",
            &m,
            self.prompt_tokens.load(Relaxed),
        );
        counter(
            &mut out,
            "vllm:generation_tokens",
            "Output tokens sent.",
            &m,
            self.generation_tokens.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP vllm:request_success_total Requests finished, by finish reason.\n\
             # TYPE vllm:request_success_total counter\n\
             vllm:request_success_total{{finished_reason=\"length\",{m}}} {}\n\
             vllm:request_success_total{{finished_reason=\"stop\",{m}}} {}",
            self.success_length.load(Relaxed),
            self.success_stop.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP vllm:cache_config_info Cache configuration.\n\
             # TYPE vllm:cache_config_info gauge\n\
             vllm:cache_config_info{{block_size=\"{block_size}\",enable_prefix_caching=\"True\"}} 1"
        );
        counter(
            &mut out,
            "parley_sim:requests",
            "Generation requests received.",
            &m,
            self.requests.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP parley_sim:request_failures_total Requests that did not complete, by reason.\n\
             # TYPE parley_sim:request_failures_total counter\n\
             parley_sim:request_failures_total{{reason=\"injected\",{m}}} {}\n\
             parley_sim:request_failures_total{{reason=\"rejected\",{m}}} {}\n\
             parley_sim:request_failures_total{{reason=\"aborted\",{m}}} {}",
            self.failed_injected.load(Relaxed),
            self.rejected.load(Relaxed),
            self.aborted.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP parley_sim:prefix_cache_tokens Tokens held in the prefix cache.\n\
             # TYPE parley_sim:prefix_cache_tokens gauge\n\
             parley_sim:prefix_cache_tokens{{{m}}} {cache_tokens}"
        );
        out
    }
}

impl Metrics {
    /// SGLang's names (`sglang:…`, counters as floats as its Python client prints them): prompt,
    /// generation and cached tokens (`cache_source="device"`), the `cache_hit_rate` gauge
    /// (here over the whole run; SGLang's covers its recent batches) and running requests.
    pub(crate) fn render_sglang(&self, model: &str) -> String {
        let mut out = String::with_capacity(2048);
        let m = format!("model_name=\"{}\"", model.replace(['"', '\\', '\n'], "_"));
        let running = self
            .running
            .load(Relaxed)
            .saturating_sub(self.running_done.load(Relaxed));
        let prompt = self.prompt_tokens.load(Relaxed);
        let hits = self.cache_hits.load(Relaxed);
        let queries = self.cache_queries.load(Relaxed);
        let float_counter = |out: &mut String, name: &str, help: &str, labels: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} counter");
            let _ = writeln!(out, "{name}{{{labels}}} {v}.0");
        };
        float_counter(
            &mut out,
            "sglang:prompt_tokens_total",
            "Number of prefill tokens processed.",
            &m,
            prompt,
        );
        float_counter(
            &mut out,
            "sglang:generation_tokens_total",
            "Number of generation tokens processed.",
            &m,
            self.generation_tokens.load(Relaxed),
        );
        float_counter(
            &mut out,
            "sglang:cached_tokens_total",
            "Number of cached prompt tokens.",
            &format!("cache_source=\"device\",{m}"),
            hits,
        );
        let rate = if queries > 0 {
            hits as f64 / queries as f64
        } else {
            0.0
        };
        let _ = writeln!(
            out,
            "# HELP sglang:cache_hit_rate The cache hit rate\n\
             # TYPE sglang:cache_hit_rate gauge\n\
             sglang:cache_hit_rate{{{m}}} {rate}\n\
             # HELP sglang:num_running_reqs The number of running requests.\n\
             # TYPE sglang:num_running_reqs gauge\n\
             sglang:num_running_reqs{{{m}}} {running}.0"
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_styles_scrape_to_the_same_counters() {
        use crate::server_metrics::{parse, Counters, Flavor};
        let m = Metrics::default();
        m.prompt_tokens.store(1000, Relaxed);
        m.cache_queries.store(1000, Relaxed);
        m.cache_hits.store(640, Relaxed);
        m.generation_tokens.store(50, Relaxed);
        for (text, flavor) in [
            (m.render("parley-sim", 16, 0), Flavor::Vllm),
            (m.render_sglang("parley-sim"), Flavor::Sglang),
        ] {
            let c = Counters::of(&parse(&text).unwrap());
            assert_eq!(c.flavor, Some(flavor), "{text}");
            assert_eq!(c.prompt_tokens, Some(1000.0));
            assert_eq!(c.generation_tokens, Some(50.0));
            assert_eq!(c.cache_queries, Some(1000.0));
            assert_eq!(c.cache_hits, Some(640.0));
        }
    }

    #[test]
    fn renders_vllm_names() {
        let m = Metrics::default();
        m.cache_queries.store(100, Relaxed);
        m.cache_hits.store(64, Relaxed);
        m.success_length.store(3, Relaxed);
        m.failed_injected.store(1, Relaxed);
        let text = m.render("parley-sim", 16, 64);
        assert!(text.contains("vllm:prefix_cache_queries_total{model_name=\"parley-sim\"} 100\n"));
        assert!(text.contains("vllm:prefix_cache_hits_total{model_name=\"parley-sim\"} 64\n"));
        assert!(text.contains(
            "vllm:request_success_total{finished_reason=\"length\",model_name=\"parley-sim\"} 3\n"
        ));
        assert!(text.contains("vllm:cache_config_info{block_size=\"16\""));
        assert!(text.contains(
            "parley_sim:request_failures_total{reason=\"injected\",model_name=\"parley-sim\"} 1\n"
        ));
        // Every sample line is `name{labels} value`.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, v) = line.rsplit_once(' ').unwrap();
            v.parse::<u64>().unwrap();
            assert!(line.contains('{') && line.contains('}'), "{line}");
        }
    }
}
