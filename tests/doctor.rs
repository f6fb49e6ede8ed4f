//! `parley doctor` on the real host: it runs, exits 0 (warnings are advice) and prints every
//! check with its current and recommended value.

mod common;

use parley::doctor::CHECK_NAMES;

#[test]
fn doctor_runs_and_prints_every_check() {
    let out = common::parley()
        .args(["doctor", "--cores", "0", "--parallel", "64"])
        .output()
        .expect("run parley doctor");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    for name in CHECK_NAMES {
        let line = text
            .lines()
            .find(|l| l.contains(&format!("] {name} ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{text}"));
        assert!(
            line.starts_with("[ok  ]") || line.starts_with("[warn]"),
            "{line}"
        );
        assert!(line.contains("current: "), "{line}");
    }
    assert_eq!(text.matches("recommended: ").count(), CHECK_NAMES.len());
    let warns = text.lines().filter(|l| l.starts_with("[warn]")).count();
    assert!(
        text.matches("fix: ").count() >= warns,
        "every warning says what to run:\n{text}"
    );
    assert!(text.contains(&format!("{} checks, {warns} warnings", CHECK_NAMES.len())));
}

#[test]
fn doctor_rejects_a_bad_cpu_list() {
    let out = common::parley()
        .args(["doctor", "--cpus", "3-1"])
        .output()
        .expect("run parley doctor");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("--cpus: \"3-1\" is not a CPU list such as 2-9,12"),
        "{stderr}"
    );
}
