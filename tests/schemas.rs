//! The JSON Schemas in `schemas/` hold real output: runs against `parley sim` (and the built-in
//! sim) that fill the optional sections — failures, several URLs, warmup, goodput, thresholds,
//! server metrics, an open loop with a cap, AIPerf synthetic flags — validate, and a renamed,
//! missing or extra key fails.

mod common;

use std::path::Path;

use common::Sim;
use serde_json::Value;

fn schema(name: &str) -> jsonschema::Validator {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("schemas")
        .join(name);
    let schema: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    assert_eq!(
        schema["$schema"], "https://json-schema.org/draft/2020-12/schema",
        "{name}"
    );
    jsonschema::draft202012::new(&schema).unwrap_or_else(|e| panic!("{name}: {e}"))
}

/// Every error of `instance` against `v`, one per line (empty: valid).
fn errors(v: &jsonschema::Validator, instance: &Value) -> String {
    v.iter_errors(instance)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Each parley-native file of the run in `dir` validates against its schema.
fn check_run(run: &common::Bench) {
    for (file, schema_file) in [
        ("summary.json", "summary.schema.json"),
        ("trace_summary.json", "trace_summary.schema.json"),
        (
            "workload_throughput.json",
            "workload_throughput.schema.json",
        ),
        ("workload_timeline.json", "workload_timeline.schema.json"),
    ] {
        let v = schema(schema_file);
        let instance = run.json(file);
        let errs = errors(&v, &instance);
        assert!(errs.is_empty(), "{file} against {schema_file}:\n{errs}");
    }
    let v = schema("records.line.schema.json");
    let paths = common::find_all(run.dir(), "records.jsonl");
    assert_eq!(paths.len(), 1, "{paths:?}");
    let text = std::fs::read_to_string(&paths[0]).unwrap();
    assert!(!text.is_empty());
    for (k, line) in text.lines().enumerate() {
        let instance: Value = serde_json::from_str(line).unwrap();
        let errs = errors(&v, &instance);
        assert!(errs.is_empty(), "records.jsonl line {}:\n{errs}", k + 1);
        if k == 0 {
            // The line schema is strict too: a renamed field fails.
            let mut renamed = instance.clone();
            let ttft = renamed.as_object_mut().unwrap().remove("ttft_ns").unwrap();
            renamed["ttft"] = ttft;
            assert!(!errors(&v, &renamed).is_empty());
        }
    }
}

/// An external sim with failures, two URLs, warmup, goodput, thresholds and server metrics.
#[test]
fn a_run_with_every_section_validates() {
    let sim = Sim::start(&["--itl-ms", "2", "--fail-every", "7"]);
    let url = sim.url();
    let run = sim.bench(&[
        "--url",
        &url,
        "--number",
        "10",
        "--parallel",
        "3",
        "--max-turns",
        "3",
        "--max-tokens",
        "8",
        "--warmup-conversations",
        "2",
        "--goodput",
        "ttft:5000",
        "--slo",
        "ttft_p99_ms=100000",
        "--server-metrics",
        "--api-key",
        "sk-secret",
        "-H",
        "X-Api-Key: sk-secret-2",
    ]);
    sim.stop();
    let s = &run.summary;
    // The sections the schema makes optional are filled here.
    assert!(s["requests"]["failed"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["by_url"].as_array().unwrap().len(), 2);
    assert!(s["warmup"].is_object());
    assert!(s["goodput"].is_object());
    assert_eq!(s["thresholds"].as_array().unwrap().len(), 1);
    assert!(s["server_metrics"].is_object());
    assert_eq!(s["config"]["flags"]["api_key"], "***");
    assert!(!s.to_string().contains("sk-secret"));
    check_run(&run);
}

/// The built-in sim, an open loop with a cap, and AIPerf synthetic flags.
#[test]
fn an_open_loop_synthetic_run_validates() {
    let run = common::bench(&[
        "--cores",
        "1",
        "--request-rate",
        "40",
        "--parallel",
        "3",
        "--number",
        "8",
        "--isl",
        "48",
        "--isl-stddev",
        "4",
        "--osl",
        "6",
        "--conversation-turn-mean",
        "2",
    ]);
    let flags = &run.summary["config"]["flags"];
    assert_eq!(flags["dataset"]["name"], "synthetic");
    assert_eq!(
        flags["dataset"]["params"]["synthetic_input_tokens_mean"],
        48.0
    );
    assert_eq!(flags["dataset"]["params"]["output_tokens_mean"], 6.0);
    assert_eq!(flags["points"][0]["rate_per_s"], 40.0);
    check_run(&run);
}

/// A change made to a valid summary.
type Edit = Box<dyn Fn(&mut Value)>;

/// The schemas are strict: a renamed, a missing and an unknown key each fail, at any depth.
#[test]
fn renamed_missing_or_extra_keys_fail() {
    let run = common::bench(&["--cores", "1", "--number", "2", "--max-turns", "2"]);
    let v = schema("summary.schema.json");
    let good = run.summary.clone();
    assert_eq!(errors(&v, &good), "");
    let edits: Vec<(&str, Edit)> = vec![
        (
            "renamed top-level key",
            Box::new(|s: &mut Value| {
                let x = s.as_object_mut().unwrap().remove("ttft_ms").unwrap();
                s["ttft_ms_renamed"] = x;
            }),
        ),
        (
            "missing nested key",
            Box::new(|s: &mut Value| {
                s["requests"].as_object_mut().unwrap().remove("succeeded");
            }),
        ),
        (
            "extra key in stats",
            Box::new(|s: &mut Value| s["itl_ms"]["p999"] = Value::from(1.0)),
        ),
        (
            "renamed flag",
            Box::new(|s: &mut Value| {
                let flags = s["config"]["flags"].as_object_mut().unwrap();
                let x = flags.remove("max_tokens").unwrap();
                flags.insert("max_token".into(), x);
            }),
        ),
        (
            "wrong type",
            Box::new(|s: &mut Value| s["duration_s"] = Value::from("1.0")),
        ),
        (
            "bad start time",
            Box::new(|s: &mut Value| s["config"]["start_time"] = Value::from("yesterday")),
        ),
    ];
    for (what, edit) in edits {
        let mut bad = good.clone();
        edit(&mut bad);
        assert!(!errors(&v, &bad).is_empty(), "{what} passed the schema");
    }
    for (file, schema_file, key) in [
        (
            "trace_summary.json",
            "trace_summary.schema.json",
            "n_traces",
        ),
        (
            "workload_throughput.json",
            "workload_throughput.schema.json",
            "rows",
        ),
        (
            "workload_timeline.json",
            "workload_timeline.schema.json",
            "bucket_s",
        ),
    ] {
        let v = schema(schema_file);
        let mut bad = run.json(file);
        bad.as_object_mut().unwrap().remove(key);
        assert!(!errors(&v, &bad).is_empty(), "{file} without {key} passed");
    }
}
