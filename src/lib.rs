//! parley: a thread-per-core load engine for OpenAI-compatible LLM serving endpoints, built for
//! realistic multi-turn conversations.
//!
//! How the pieces fit, in the order a run flows through them:
//!
//! - [`cli`] parses flags (evalscope and AIPerf spellings) and only validates them.
//! - [`plan`] turns validated flags into a [`plan::BenchPlan`]: a pure value with the target, the
//!   load shape and the synthesized conversations. All tokenizer and synthesis work happens here,
//!   before any I/O executor starts.
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
//!   writes `summary.json`.
//! - [`run`] is the pipeline after the plan: resources built in one place, each load point run
//!   through the engine into a summary, files written. `main.rs` only calls it.
//! - [`sim`] is the built-in OpenAI-compatible server: the default target and every test's
//!   ground truth.
//! - [`tokenizer`] wraps the HF tokenizer (builtin Qwen2 BPE or a user's tokenizer.json) and the
//!   chat rendering shared by the client's synthesis and the sim's prompt counting.
//! - [`net`] adapts glommio sockets to hyper's I/O traits.
//! - [`doctor`] checks the host's tuning for benchmarking (`parley doctor`); [`host`] holds the
//!   process-wide settings that keep parley's own timing true.

pub mod chunk;
pub mod cli;
pub mod client;
pub mod clock;
pub mod doctor;
pub mod engine;
pub mod host;
pub mod metrics;
pub mod net;
pub mod plan;
pub mod report;
pub mod run;
pub mod signal;
pub mod sim;
pub mod sse;
pub mod tokenizer;
pub mod workload;
