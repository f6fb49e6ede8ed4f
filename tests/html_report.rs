//! The HTML report: a real run's `report.html` loaded in headless Chromium (every chart drew
//! finite marks, no script error, nothing logged), its figures held against the sim's record,
//! `parley report` rebuilding the same bytes, and `parley compare`'s deltas from the runs'
//! summary.json values. Errors on missing or malformed files name the file.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{f, parley, u, Sim};

/// The charts every report has, by `data-chart` id.
const CHARTS: [&str; 8] = [
    "ttft_cdf",
    "itl_cdf",
    "ttft_by_turn",
    "latency_by_turn",
    "throughput_over_time",
    "requests_over_time",
    "failures_over_time",
    "trace_latency",
];

/// The Chromium binary: `$PARLEY_CHROMIUM`, else `chromium` or `chromium-browser` on PATH.
fn chromium() -> PathBuf {
    if let Some(p) = std::env::var_os("PARLEY_CHROMIUM") {
        return PathBuf::from(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        for name in ["chromium", "chromium-browser"] {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "chromium not found: this test renders report.html in headless Chromium. Install it \
         with `sudo apt-get install -y chromium` (Debian/Ubuntu; scripts/test.sh does this when \
         run as root), or point PARLEY_CHROMIUM at a Chromium binary"
    );
}

/// Loads `page` in headless Chromium and returns (the DOM after load, stderr).
fn dump_dom(page: &Path) -> (String, String) {
    let profile = tempfile::tempdir().unwrap();
    let out = tempfile::tempdir().unwrap();
    let (stdout_path, stderr_path) = (out.path().join("dom"), out.path().join("err"));
    let mut child = Command::new(chromium())
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--enable-logging=stderr",
            "--v=0",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(format!("file://{}", page.canonicalize().unwrap().display()))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout_path).unwrap())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let dom = std::fs::read_to_string(&stdout_path).unwrap();
    let stderr = std::fs::read_to_string(&stderr_path).unwrap();
    assert!(status.success(), "chromium: {status}\n{stderr}");
    (dom, stderr)
}

/// The `<svg …>…</svg>` of chart `id` in `html`: (its opening tag, the whole element).
fn chart<'a>(html: &'a str, id: &str) -> (&'a str, &'a str) {
    let at = html
        .find(&format!("data-chart=\"{id}\""))
        .unwrap_or_else(|| panic!("no chart {id}"));
    let start = html[..at].rfind("<svg").unwrap();
    let end = start + html[start..].find("</svg>").unwrap() + "</svg>".len();
    let tag_end = start + html[start..].find('>').unwrap() + 1;
    (&html[start..tag_end], &html[start..end])
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!(" {name}=\"");
    let i = tag.find(&pat)? + pat.len();
    Some(&tag[i..i + tag[i..].find('"')?])
}

/// The opening tags of an element's plotted marks.
fn marks(svg: &str) -> Vec<&str> {
    svg.match_indices("class=\"mark")
        .map(|(i, _)| {
            let start = svg[..i].rfind('<').unwrap();
            &svg[start..i + svg[i..].find('>').unwrap()]
        })
        .collect()
}

/// Every coordinate of a mark (its position attributes and path data) as numbers.
fn coordinates(mark: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for name in ["d", "x", "y", "width", "height", "cx", "cy"] {
        if let Some(v) = attr(mark, name) {
            for part in v
                .split(|c: char| c == ',' || c.is_ascii_alphabetic())
                .filter(|s| !s.is_empty())
            {
                out.push(
                    part.parse()
                        .unwrap_or_else(|_| panic!("not a number {part:?} in {mark}")),
                );
            }
        }
    }
    out
}

fn report_path(stdout: &str) -> PathBuf {
    let line = stdout
        .lines()
        .find(|l| l.starts_with("wrote ") && l.ends_with("/report.html"))
        .unwrap_or_else(|| panic!("console does not name report.html:\n{stdout}"));
    PathBuf::from(&line["wrote ".len()..])
}

#[test]
fn report_draws_every_chart_in_headless_chromium() {
    // Every 5th request fails, so the failures chart has something to draw.
    let sim = Sim::start(&["--ttft-base-ms", "5", "--itl-ms", "2", "--fail-every", "5"]);
    let run = sim.bench(&[
        "--number",
        "16",
        "--parallel",
        "4",
        "--min-turns",
        "2",
        "--max-turns",
        "3",
        "--max-tokens",
        "8",
    ]);
    let records = sim.stop();
    let s = &run.summary;
    let failed_in_record = records.iter().filter(|r| r["failed"] == true).count() as u64;
    assert!(failed_in_record > 0);
    assert_eq!(u(&s["requests"]["failed"]), failed_in_record);

    let page = report_path(&run.stdout);
    assert!(page.starts_with(run.dir()), "{}", page.display());
    let html = std::fs::read_to_string(&page).unwrap();
    // Self-contained: nothing loaded from anywhere, and the policy forbids it.
    for needle in [" src=", " href=", "<link", "@import", "url("] {
        assert!(!html.contains(needle), "report loads something: {needle}");
    }
    assert!(html.contains("Content-Security-Policy"));

    let started = Instant::now();
    let (dom, stderr) = dump_dom(&page);
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "chromium took {took:?} for one page"
    );
    let html_tag = &dom[dom.find("<html").unwrap()..];
    let html_tag = &html_tag[..html_tag.find('>').unwrap()];
    assert!(
        dom.contains("data-report=\"drawn\""),
        "the page's script did not finish: {}",
        &dom[..dom.len().min(500)]
    );
    assert!(
        !html_tag.contains("data-errors"),
        "script errors: {html_tag}\n{stderr}"
    );
    let console: Vec<&str> = stderr.lines().filter(|l| l.contains(":CONSOLE")).collect();
    assert!(console.is_empty(), "the page logged: {console:#?}");

    for id in CHARTS {
        let (tag, svg) = chart(&dom, id);
        assert_eq!(attr(tag, "data-empty"), None, "{id} has no data");
        assert_eq!(
            attr(tag, "data-bad"),
            None,
            "{id}: marks without a finite box"
        );
        let drawn: usize = attr(tag, "data-drawn")
            .unwrap_or_else(|| panic!("{id} not checked by the page: {tag}"))
            .parse()
            .unwrap();
        let marks = marks(svg);
        assert!(drawn > 0, "{id} drew nothing");
        assert_eq!(drawn, marks.len(), "{id}: every mark has a box");
        for m in &marks {
            let c = coordinates(m);
            assert!(!c.is_empty(), "{id}: mark without coordinates: {m}");
            assert!(
                c.iter()
                    .all(|v| v.is_finite() && (-1.0..=641.0).contains(v)),
                "{id}: {m}"
            );
        }
    }

    // The failures chart's bars add up to the failures the sim served; the trace chart's to
    // 100 % of the completed conversations.
    let bar_values = |id: &str| -> Vec<f64> {
        let (_, svg) = chart(&dom, id);
        svg.match_indices("class=\"mark bar\"")
            .map(|(i, _)| {
                let title = &svg[i + svg[i..].find("<title>").unwrap() + 7..];
                let title = &title[..title.find("</title>").unwrap()];
                title.rsplit(": ").next().unwrap().parse().unwrap()
            })
            .collect()
    };
    let failures: f64 = bar_values("failures_over_time").iter().sum();
    assert_eq!(failures, failed_in_record as f64);
    let shares: f64 = bar_values("trace_latency").iter().sum();
    assert!((shares - 100.0).abs() < 0.5, "{shares}");
    // The TTFT-by-turn chart has a point per turn index the run had.
    let (_, svg) = chart(&dom, "ttft_by_turn");
    let turns = s["by_turn"].as_array().unwrap().len();
    assert_eq!(svg.matches("class=\"mark dot\"").count(), 3 * turns);
    // The quantile table behind the CDFs agrees with the summary's percentiles.
    let q = &s["quantiles"];
    assert_eq!(q["q"].as_array().unwrap().len(), 200);
    for (col, stats) in [("ttft_ms", "ttft_ms"), ("latency_ms", "latency_ms")] {
        let v = q[col].as_array().unwrap();
        assert_eq!(v.len(), 200, "{col}");
        assert_eq!(f(&v[99]), f(&s[stats]["p50"]), "{col} p50");
        assert_eq!(f(&v[197]), f(&s[stats]["p99"]), "{col} p99");
        assert_eq!(f(&v[199]), f(&s[stats]["max"]), "{col} max");
        assert!(v.windows(2).all(|w| f(&w[0]) <= f(&w[1])), "{col} sorted");
    }
    let traces = q["trace_latency_s"].as_array().unwrap();
    assert_eq!(f(&traces[199]), f(&s["traces"]["latency_s"]["max"]));
    // The page shows the console's tables.
    for heading in [
        "Performance Overview",
        "Per-Request Metrics",
        "Per-Trace Metrics",
        "Workload Throughput",
        "Per Turn",
        "Failures",
    ] {
        assert!(html.contains(&format!("<h2>{heading}")), "{heading}");
    }
    assert!(html.contains("<td>http_500</td>"));
}

/// Runs `parley ARGS` in `cwd`; returns (exit code, stdout, stderr).
fn parley_in(cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let out = parley()
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run parley");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!stderr.contains("panicked"), "{stderr}");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr,
    )
}

fn run_dir(b: &common::Bench) -> PathBuf {
    common::find_all(b.dir(), "summary.json")[0]
        .parent()
        .unwrap()
        .to_path_buf()
}

#[test]
fn report_rebuilds_the_same_file_and_compare_shows_deltas() {
    let sim = Sim::start(&["--ttft-base-ms", "5", "--itl-ms", "2"]);
    let args = |tokens: &'static str| {
        [
            "--number",
            "6",
            "--parallel",
            "2",
            "--min-turns",
            "2",
            "--max-turns",
            "2",
            "--max-tokens",
            tokens,
            "--extra-args",
            r#"{"ignore_eos": true}"#,
        ]
    };
    let a = sim.bench(&args("4"));
    let b = sim.bench(&args("12"));
    sim.stop();
    let (dir_a, dir_b) = (run_dir(&a), run_dir(&b));

    // `parley report` gives the bytes the run wrote, from the files alone.
    let page = dir_a.join("report.html");
    let written = std::fs::read(&page).unwrap();
    std::fs::remove_file(&page).unwrap();
    let cwd = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = parley_in(cwd.path(), &["report", dir_a.to_str().unwrap()]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), format!("wrote {}", page.display()));
    assert_eq!(std::fs::read(&page).unwrap(), written);

    // `parley compare`: default output in the current directory; deltas from the summaries.
    let (code, stdout, stderr) = parley_in(
        cwd.path(),
        &["compare", dir_a.to_str().unwrap(), dir_b.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{stderr}");
    let out = cwd.path().join("compare.html");
    assert!(
        stdout.trim_end().ends_with("wrote compare.html"),
        "{stdout}"
    );
    let html = std::fs::read_to_string(&out).unwrap();
    assert!(html.contains("data-chart=\"ttft_cdf\""));
    assert!(
        stdout.contains(&format!("A: {}", dir_a.display())),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("B: {}", dir_b.display())),
        "{stdout}"
    );
    let (sa, sb) = (&a.summary, &b.summary);
    let row = |metric: &str| -> Vec<String> {
        stdout
            .lines()
            .find(|l| l.starts_with(&format!("│ {metric} ")))
            .unwrap_or_else(|| panic!("no row {metric}:\n{stdout}"))
            .split('│')
            .map(|c| c.trim().to_string())
            .filter(|c| !c.is_empty())
            .collect()
    };
    let check = |metric: &str, va: f64, vb: f64, prec: usize| {
        let r = row(metric);
        assert_eq!(r[1], format!("{va:.prec$}"), "{metric}");
        assert_eq!(r[2], format!("{vb:.prec$}"), "{metric}");
        assert_eq!(r[3], format!("{:+.prec$}", vb - va), "{metric}");
        assert_eq!(r[4], format!("{:+.1}%", 100.0 * (vb - va) / va), "{metric}");
        // The page carries the same cells.
        for cell in &r[1..] {
            assert!(
                html.contains(&format!("<td>{cell}</td>")),
                "{metric} {cell}"
            );
        }
    };
    check(
        "Output tok/s",
        f(&sa["throughput"]["output_tokens_per_s"]),
        f(&sb["throughput"]["output_tokens_per_s"]),
        1,
    );
    check(
        "Requests/s",
        f(&sa["throughput"]["requests_per_s"]),
        f(&sb["throughput"]["requests_per_s"]),
        2,
    );
    check(
        "TTFT p99 (ms)",
        f(&sa["ttft_ms"]["p99"]),
        f(&sb["ttft_ms"]["p99"]),
        2,
    );
    check(
        "Latency p50 (s)",
        f(&sa["latency_ms"]["p50"]) / 1e3,
        f(&sb["latency_ms"]["p50"]) / 1e3,
        3,
    );
    // Three times the tokens at 2 ms each: B's latency is clearly longer.
    assert!(f(&sb["latency_ms"]["p50"]) > f(&sa["latency_ms"]["p50"]) + 10.0);
    // No failures in either: error rate 0 → a delta, but no percentage of 0.
    let r = row("Error rate (%)");
    assert_eq!(r[1..], ["0.00", "0.00", "+0.00", "-"]);

    // --output elsewhere; a run's summary.json may be given instead of its directory.
    let (code, stdout, stderr) = parley_in(
        cwd.path(),
        &[
            "compare",
            dir_a.join("summary.json").to_str().unwrap(),
            dir_b.to_str().unwrap(),
            dir_a.to_str().unwrap(),
            "--output",
            "sub.html",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("C − A") && stdout.contains("wrote sub.html"));
    assert!(cwd.path().join("sub.html").is_file());

    // The timeline gone: `parley report` names it.
    std::fs::remove_file(dir_a.join("workload_timeline.json")).unwrap();
    let (code, _, stderr) = parley_in(cwd.path(), &["report", dir_a.to_str().unwrap()]);
    assert_eq!(code, 2);
    assert!(
        stderr.contains("workload_timeline.json") && stderr.contains("No such file"),
        "{stderr}"
    );
}

#[test]
fn missing_and_malformed_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let err = |args: &[&str]| {
        let (code, _, stderr) = parley_in(d, args);
        assert_eq!(code, 2, "{args:?}: {stderr}");
        stderr
    };
    // No such directory.
    let e = err(&["report", "nope"]);
    assert!(
        e.contains("nope/summary.json") && e.contains("No such file"),
        "{e}"
    );
    // Not JSON.
    std::fs::create_dir(d.join("bad")).unwrap();
    std::fs::write(d.join("bad/summary.json"), "{\"parley_version\": ").unwrap();
    let e = err(&["report", "bad"]);
    assert!(
        e.contains("bad/summary.json: not a parley run file") && e.contains("line 1"),
        "{e}"
    );
    // JSON without the fields a report needs: the field is named.
    std::fs::write(d.join("bad/summary.json"), "{\"parley_version\": \"0\"}").unwrap();
    let e = err(&["compare", "bad", "bad"]);
    assert!(
        e.contains("bad/summary.json") && e.contains("missing field"),
        "{e}"
    );
    assert!(!d.join("compare.html").exists());
    // A sweep's root: the points are named.
    std::fs::create_dir_all(d.join("sweep/parallel_1")).unwrap();
    std::fs::create_dir_all(d.join("sweep/parallel_2")).unwrap();
    std::fs::write(d.join("sweep/parallel_1/summary.json"), "{}").unwrap();
    std::fs::write(d.join("sweep/parallel_2/summary.json"), "{}").unwrap();
    let e = err(&["report", "sweep"]);
    assert!(
        e.contains("looks like a sweep") && e.contains("parallel_1, parallel_2"),
        "{e}"
    );
    // compare needs two runs.
    let (code, _, stderr) = parley_in(d, &["compare", "bad"]);
    assert_eq!(code, 2, "{stderr}");
}
