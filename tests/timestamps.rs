//! Event times are the kernel's receive times: they hold when the client's core is busy.
//!
//! Three threads spin on the CPU the client's executor is pinned to, and the client runs at a
//! lower priority than they do, so the executor gets a scheduler slice now and then and reads
//! each SSE event milliseconds after it arrived. The
//! client's per-chunk ITL and its TTFT must still match what the sim recorded sending: each read
//! is stamped with the kernel's receive timestamp of its bytes (`SO_TIMESTAMPNS`), not with the
//! moment parley got around to reading them. With read-time stamps, the same run reports ITLs
//! off by up to the hogs' slices (several ms) in its upper percentiles.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect()
}

#[test]
fn event_times_hold_when_the_client_core_is_busy() {
    let cpus = allowed_cpus();
    let client_cpu = cpus[0];
    let stop = Arc::new(AtomicBool::new(false));
    let hogs: Vec<_> = (0..3)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: client_cpu });
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
                    std::hint::black_box(x);
                }
            })
        })
        .collect();

    // 40 ms between tokens: a read delayed by the hogs (a few ms) never holds two events of one
    // stream, so one kernel stamp per read is one event's arrival.
    let sim = Sim::start(&[
        "--ttft-base-ms",
        "20",
        "--ttft-per-uncached-token-us",
        "0",
        "--itl-ms",
        "40",
    ]);
    // The client at nice 10 against the hogs' 0 (children inherit the spawning thread's nice,
    // and on Linux a thread's nice is its own): the hogs win the CPU whenever they contend, so
    // the executor reads late instead of preempting them as a freshly woken task would.
    // SAFETY: setpriority on the calling thread (who = 0).
    unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 10) };
    let url = sim.url();
    let cpu = client_cpu.to_string();
    let run = bench(&[
        "--url",
        &url,
        "--model",
        "parley-sim",
        "--cpus",
        &cpu,
        "--number",
        "16",
        "--parallel",
        "8",
        "--min-turns",
        "1",
        "--max-turns",
        "1",
        "--min-prompt-length",
        "16",
        "--max-prompt-length",
        "16",
        "--max-tokens",
        "16",
        "--extra-args",
        r#"{"ignore_eos": true}"#,
    ]);
    stop.store(true, Ordering::Relaxed);
    for h in hogs {
        h.join().unwrap();
    }
    let records = sim.stop();
    let s = &run.summary;
    assert_eq!(u(&s["requests"]["succeeded"]), 16);

    let truth_itl = sim_itl_ms(&records);
    let truth_ttft = sim_ttft_ms(&records);
    for (p, key, bound_ms) in [(0.5, "p50", 0.5), (0.9, "p90", 1.0)] {
        let client = f(&s["itl_ms"][key]);
        let truth = percentile(truth_itl.clone(), p);
        assert!(
            (client - truth).abs() <= bound_ms,
            "ITL {key}: client {client:.3} ms vs sim {truth:.3} ms (bound {bound_ms} ms)"
        );
    }
    // The client's TTFT starts when it issued the request and the sim's when the request
    // arrived, so the client's is longer by the loopback transit only.
    let client_ttft = f(&s["ttft_ms"]["p50"]);
    let truth_ttft = percentile(truth_ttft, 0.5);
    assert!(
        (client_ttft - truth_ttft).abs() <= 1.0,
        "TTFT p50: client {client_ttft:.3} ms vs sim {truth_ttft:.3} ms"
    );
}
