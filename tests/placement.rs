//! `--cpus LIST` on `parley bench`, `parley sim` and `parley doctor`: executors run on exactly
//! the CPUs listed, and a CPU the host does not have (or the process may not use) is refused
//! before anything starts, naming it.

mod common;

use common::{bench_err, parley, Sim};

/// The last CPU this process may use: on a multi-CPU host, not the one `--cores 1` would pick.
fn last_allowed() -> usize {
    *parley::cpus::allowed().last().unwrap()
}

/// A CPU number no host running these tests has.
const ABSENT: &str = "4095";

#[test]
fn bench_and_sim_run_on_the_cpus_listed() {
    let cpu = last_allowed().to_string();
    let sim = Sim::start(&["--cpus", &cpu]);
    let run = sim.bench(&["--number", "4", "--parallel", "2"]);
    let records = sim.stop();
    assert_eq!(
        records.len() as u64,
        run.summary["requests"]["succeeded"].as_u64().unwrap()
    );
    // Sim::bench passes --cores 1; the same run with --cpus instead pins to the CPU named.
    let sim = Sim::start(&["--cpus", &cpu]);
    let url = sim.url();
    let run = common::bench(&[
        "--url",
        &url,
        "--model",
        "m",
        "--cpus",
        &cpu,
        "--number",
        "4",
        "--parallel",
        "2",
    ]);
    let cores = run.summary["client"]["cores"].as_array().unwrap();
    assert_eq!(cores.len(), 1, "{cores:?}");
    assert_eq!(cores[0]["cpu"].as_u64(), Some(last_allowed() as u64));
    assert_eq!(run.summary["requests"]["failed"], 0);
    assert_eq!(
        sim.stop().len() as u64,
        run.summary["requests"]["succeeded"].as_u64().unwrap()
    );
}

#[test]
fn absent_cpus_are_refused_before_anything_starts() {
    let err = bench_err(&[
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--cpus",
        ABSENT,
    ]);
    assert!(
        err.contains(&format!(
            "--cpus: CPU {ABSENT} does not exist or is offline (online CPUs: "
        )),
        "{err}"
    );
    let err = bench_err(&[
        "--url",
        "http://127.0.0.1:9",
        "--model",
        "m",
        "--cpus",
        "3-1",
    ]);
    assert!(
        err.contains("--cpus: \"3-1\" is not a CPU list such as 2-9,12"),
        "{err}"
    );
    let err = bench_err(&["--cpus", "0", "--cores", "1"]);
    assert!(err.contains("cannot be used with"), "{err}");

    let out = parley()
        .args(["sim", "--port", "0", "--cpus", ABSENT])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--cpus: CPU {ABSENT} does not exist")),
        "{stderr}"
    );

    let out = parley()
        .args(["doctor", "--cpus", ABSENT])
        .output()
        .unwrap();
    assert!(!out.status.success(), "{out:?}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("--cpus: CPU {ABSENT} does not exist")),
        "{stderr}"
    );
    // The older doctor spelling still works, on a CPU that exists.
    let out = parley()
        .args(["doctor", "--cores", &last_allowed().to_string()])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
}
