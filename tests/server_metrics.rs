//! `--server-metrics`: the server's own counters, scraped around the run, held against the sim's
//! record (what the server really processed), and a target without `/metrics` as a note.

mod common;

use common::{u, Sim};
use serde_json::Value;

/// 12 conversations of 3 turns, 2 at a time: a few seconds, so some scrapes land mid-run.
fn load() -> Vec<&'static str> {
    vec![
        "--number",
        "12",
        "--parallel",
        "2",
        "--min-turns",
        "3",
        "--max-turns",
        "3",
        "--min-prompt-length",
        "32",
        "--max-prompt-length",
        "96",
        "--max-tokens",
        "16",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]
}

/// The record's totals: (prompt, cached, completion) tokens over every request.
fn record_totals(records: &[Value]) -> (u64, u64, u64) {
    records.iter().fold((0, 0, 0), |(p, c, g), r| {
        (
            p + u(&r["prompt_tokens"]),
            c + u(&r["cached_tokens"]),
            g + u(&r["completion_tokens"]),
        )
    })
}

/// The server's deltas equal the sim's record exactly, and the client's figures too.
fn check_against_record(sm: &Value, records: &[Value], flavor: &str) {
    let (prompt, cached, generated) = record_totals(records);
    assert!(prompt > 0 && cached > 0 && generated > 0, "{records:?}");
    let server = &sm["server"];
    assert_eq!(u(&server["prompt_tokens"]), prompt, "{sm:#}");
    assert_eq!(u(&server["generation_tokens"]), generated, "{sm:#}");
    assert_eq!(u(&server["prefix_cache_hits"]), cached, "{sm:#}");
    assert_eq!(u(&server["prefix_cache_queries"]), prompt, "{sm:#}");
    let rate = server["prefix_cache_hit_rate"].as_f64().unwrap();
    assert!((rate - cached as f64 / prompt as f64).abs() < 1e-12);
    // Every request succeeded and the sim reports full usage: the client agrees to the token.
    assert_eq!(u(&sm["client"]["prompt_tokens"]), prompt);
    assert_eq!(u(&sm["client"]["output_tokens"]), generated);
    assert_eq!(sm["difference"]["prompt_tokens"], 0);
    assert_eq!(sm["difference"]["generation_tokens"], 0);
    assert!(
        sm["difference"]["prefix_cache_hit_rate"]
            .as_f64()
            .unwrap()
            .abs()
            < 1e-12
    );
    let endpoints = sm["endpoints"].as_array().unwrap();
    assert_eq!(endpoints.len(), 1);
    let e = &endpoints[0];
    assert_eq!(e["flavor"], flavor);
    assert_eq!(e["scrapes_failed"], 0);
    // Before and after at least; mid-run ones every 2 s.
    assert!(u(&e["scrapes_ok"]) >= 2, "{e:#}");
    let timeline = e["timeline"].as_array().unwrap();
    assert_eq!(timeline.len() as u64, u(&e["scrapes_ok"]) - 2, "{e:#}");
    let mut last = 0;
    for p in timeline {
        let g = u(&p["generation_tokens"]);
        assert!(g >= last && g <= generated, "{timeline:?}");
        last = g;
    }
    assert!(sm["notes"].as_array().unwrap().is_empty(), "{sm:#}");
}

#[test]
fn vllm_names_deltas_equal_the_sims_record() {
    let sim = Sim::start(&["--itl-ms", "10"]);
    let mut args = load();
    // No URL: the target's own /metrics.
    args.push("--server-metrics");
    let run = sim.bench(&args);
    let records = sim.stop();
    let sm = &run.summary["server_metrics"];
    check_against_record(sm, &records, "vllm");
    assert!(run.summary["duration_s"].as_f64().unwrap() > 0.0);
    assert!(run.stdout.contains("Server Metrics"), "{}", run.stdout);
    assert!(run.stdout.contains("Prefix cache hit"), "{}", run.stdout);
}

#[test]
fn sglang_names_deltas_equal_the_sims_record() {
    let sim = Sim::start(&["--itl-ms", "10", "--metrics-style", "sglang"]);
    let url = format!("{}/metrics", sim.url());
    let mut args = load();
    args.extend(["--server-metrics", url.as_str()]);
    let run = sim.bench(&args);
    let records = sim.stop();
    let sm = &run.summary["server_metrics"];
    check_against_record(sm, &records, "sglang");
    let (prompt, cached, _) = record_totals(&records);
    // The sim's gauge is its whole-run rate, so at the end it is the counters' ratio.
    let gauge = sm["endpoints"][0]["cache_hit_rate_gauge"].as_f64().unwrap();
    assert!(
        (gauge - cached as f64 / prompt as f64).abs() < 1e-9,
        "{gauge}"
    );
    assert!(
        run.stdout.contains("sglang:cache_hit_rate"),
        "{}",
        run.stdout
    );
}

/// Refused, 404 and a server that never answers: each a note, the run exits 0 with its report.
#[test]
fn a_target_without_metrics_is_a_note() {
    let sim = Sim::start(&[]);
    // A port nobody listens on: bind one, then close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refused = format!("http://{}/metrics", closed.local_addr().unwrap());
    drop(closed);
    // Accepted by the kernel's backlog, never answered: the scrape times out.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_url = format!("http://{}/metrics", silent.local_addr().unwrap());
    let not_found = format!("{}/no-metrics-here", sim.url());
    let list = format!("{refused},{not_found}");
    let run = sim.bench(&[
        "--number",
        "2",
        "--max-turns",
        "2",
        "--server-metrics",
        &list,
        "--server-metrics",
        &silent_url,
    ]);
    assert!(run.output.status.success());
    assert_eq!(run.summary["requests"]["failed"], 0);
    let sm = &run.summary["server_metrics"];
    let notes: Vec<&str> = sm["notes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(notes.len(), 3, "{notes:?}");
    assert!(notes[0].contains(&refused) && notes[0].contains("no server metrics"));
    assert!(notes[1].contains("HTTP 404"), "{notes:?}");
    assert!(notes[2].contains(&silent_url), "{notes:?}");
    assert_eq!(sm["server"]["prompt_tokens"], Value::Null);
    assert_eq!(sm["difference"]["prompt_tokens"], Value::Null);
    for e in sm["endpoints"].as_array().unwrap() {
        assert_eq!(e["scrapes_ok"], 0);
        assert_eq!(e["scrapes_failed"], 1);
        assert_eq!(e["flavor"], Value::Null);
    }
    assert!(run.stdout.contains("note: "), "{}", run.stdout);
    drop(silent);
    sim.stop();
}

/// Without the flag nothing is scraped and the section is null.
#[test]
fn off_by_default() {
    let sim = Sim::start(&[]);
    let run = sim.bench(&["--number", "2", "--max-turns", "2"]);
    assert_eq!(run.summary["server_metrics"], Value::Null);
    assert!(!run.stdout.contains("Server Metrics"));
    sim.stop();
}

/// The built-in sim (no --url) is scraped at its own address.
#[test]
fn builtin_sim_is_scraped() {
    let run = common::bench(&[
        "--cores",
        "1",
        "--number",
        "4",
        "--max-turns",
        "2",
        "--server-metrics",
    ]);
    let sm = &run.summary["server_metrics"];
    assert_eq!(sm["endpoints"][0]["flavor"], "vllm", "{sm:#}");
    assert_eq!(
        sm["server"]["prompt_tokens"], sm["client"]["prompt_tokens"],
        "{sm:#}"
    );
    assert_eq!(sm["difference"]["generation_tokens"], 0, "{sm:#}");
}
