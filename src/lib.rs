//! parley: a thread-per-core load engine for OpenAI-compatible LLM serving endpoints, built for
//! realistic multi-turn conversations.
//!
//! How the pieces fit, in the order a run flows through them:
//!
//! - [`cli`] parses flags (evalscope and AIPerf spellings) and only validates them.
//! - [`plan`] turns the flags into a [`plan::Plan`]: a pure value with everything the flags
//!   decide (targets as parsed URLs, body, load points, dataset to build, cores asked for,
//!   output name). No I/O, so every flag error comes first and plans are unit-tested.
//! - [`resources`] does the I/O a plan asks for, in one place, before any executor starts:
//!   the tokenizer, the conversations (all tokenizer and synthesis work), the final load points,
//!   socket addresses, CPUs, the run directory and, without `--url`, the built-in sim.
//! - [`workload`] owns the conversation sources (`random_multi_turn`, …) and the immutable,
//!   pre-serialized turn data the engine sends.
//! - [`engine`] pins one glommio executor per core; each follows its share of the load
//!   [`engine::schedule`] (closed loop, open-loop arrivals, fixed timestamps), walks each
//!   conversation with a [`engine::cursor`] and counts tokens with [`engine::accounting`], over
//!   its own pooled connections into its own [`metrics::Recorder`]. Closed-loop claims use one
//!   atomic counter; nothing else is shared while the run is hot.
//! - [`client`] sends one turn over a keep-alive hyper connection and streams the reply through
//!   [`sse`] framing and [`chunk`] parsing (simd-json), stamping every read with [`clock`].
//! - [`metrics`] merges per-core histograms once at the end; [`report`] prints the tables and
//!   writes `summary.json`; [`html`] builds `report.html` (and `parley compare`'s page) from
//!   a run directory's files.
//! - [`run`] runs a plan with its resources: each load point through the engine into a
//!   summary ([`run::run_point`], callable in-process by tests), files written ([`run::bench`]);
//!   [`records`] writes one line per request from every core, off the hot path.
//!   `main.rs` only chains `Plan::from_args` → `Resources::build` → `run::bench`, and exits
//!   with the code [`verdict`] gives the run's outcome (thresholds, nothing measured, signal).
//! - [`sim`] is the built-in OpenAI-compatible server: the default target and every test's
//!   ground truth.
//! - [`tokenizer`] wraps the HF tokenizer (builtin Qwen2 BPE or a user's tokenizer.json) and the
//!   chat rendering shared by the client's synthesis and the sim's prompt counting.
//! - [`server_metrics`] scrapes the server's Prometheus `/metrics` around a run
//!   (`--server-metrics`), on its own thread.
//! - [`net`] adapts glommio sockets to hyper's I/O traits; [`tls`] puts rustls between them
//!   for `https://` targets and `parley sim --tls-cert`.
//! - [`doctor`] checks the host's tuning for benchmarking (`parley doctor`); [`host`] holds the
//!   process-wide settings that keep parley's own timing true.

pub mod chunk;
pub mod cli;
pub mod client;
pub mod clock;
pub mod cpus;
pub mod doctor;
pub mod engine;
pub mod export;
pub mod host;
pub mod html;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod preflight;
pub mod records;
pub mod report;
pub mod resources;
pub mod run;
pub mod server_metrics;
pub mod signal;
pub mod sim;
pub mod sse;
pub mod template;
pub mod timeline;
pub mod tls;
pub mod tokenizer;
pub mod trace;
pub mod turns;
pub mod verdict;
pub mod workload;
