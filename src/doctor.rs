//! `parley doctor`: checks the host settings that decide whether a benchmark's numbers can be
//! trusted (descriptor limits, ports, TIME_WAIT reuse, listen backlog, CPU frequency and idle
//! states, PM-QoS, IRQ placement, isolated cores) and says what to change.
//!
//! Reading the host ([`HostFacts::read`]) is kept apart from judging it ([`checks`]): the checks
//! are pure functions over read values, so they are unit-tested with fake hosts. Every check is
//! advice: `doctor` exits 0 with warnings, and fails only when it cannot run at all.

use std::fmt::Write as _;
use std::path::Path;

/// Verdict of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warn,
}

/// One check's result, printed as a block.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: &'static str,
    pub status: Status,
    pub current: String,
    pub recommended: String,
    /// Why it matters for a load generator.
    pub why: &'static str,
    /// The exact command(s) that change it; empty when nothing needs doing.
    pub fix: String,
}

/// One CPU's idle state as `/sys/devices/system/cpu/cpuN/cpuidle/stateK` describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdleState {
    pub name: String,
    /// Exit latency, µs.
    pub latency_us: u64,
    pub disabled: bool,
}

/// Everything the checks look at, read once. `None`: the host does not expose it (or it could
/// not be read), which each check words for itself.
#[derive(Clone, Debug, Default)]
pub struct HostFacts {
    /// Soft and hard `RLIMIT_NOFILE`.
    pub nofile: Option<(u64, u64)>,
    /// `net.ipv4.ip_local_port_range` as (low, high).
    pub port_range: Option<(u64, u64)>,
    /// `net.ipv4.tcp_tw_reuse` (0 off, 1 on, 2 loopback only).
    pub tcp_tw_reuse: Option<u64>,
    /// `net.core.somaxconn`.
    pub somaxconn: Option<u64>,
    /// Per checked CPU: (cpu, scaling_governor) where cpufreq is exposed.
    pub governors: Vec<(usize, String)>,
    /// Per checked CPU: (cpu, its idle states) where cpuidle is exposed.
    pub idle_states: Vec<(usize, Vec<IdleState>)>,
    /// The current PM-QoS CPU latency target in µs from `/dev/cpu_dma_latency` (readable by
    /// root only); `None` when unreadable.
    pub cpu_dma_latency_us: Option<u64>,
    /// Every IRQ's `smp_affinity` as a CPU mask (bit i = CPU i), by IRQ number.
    pub irq_masks: Vec<(u32, Vec<usize>)>,
    /// `/proc/cmdline`.
    pub cmdline: Option<String>,
}

/// The run the host is checked for.
#[derive(Clone, Debug)]
pub struct Target {
    /// CPUs the engine's executors will be pinned to.
    pub cpus: Vec<usize>,
    /// Planned `--parallel` (one connection each).
    pub parallel: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum DoctorError {
    #[error("--cpus: {0}")]
    CpuList(String),
}

/// The CPUs `parley bench` pins to by default: every CPU this process may run on.
pub fn online_cpus() -> Vec<usize> {
    crate::cpus::allowed()
}

/// Parses and checks `--cpus` (a kernel-style list such as `0-3,6`) against this host: a CPU
/// that does not exist or that the process may not use is an error, not a check row.
pub fn resolve_cpu_list(list: &str) -> Result<Vec<usize>, DoctorError> {
    crate::cpus::resolve(list).map_err(DoctorError::CpuList)
}

/// Parses a `/proc/irq/N/smp_affinity` hex mask (comma-separated 32-bit words, most
/// significant first) into CPU ids.
pub fn parse_affinity_mask(mask: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    let words: Vec<&str> = mask.trim().split(',').collect();
    for (k, word) in words.iter().rev().enumerate() {
        let bits = u32::from_str_radix(word, 16).ok()?;
        for b in 0..32 {
            if bits & (1 << b) != 0 {
                cpus.push(k * 32 + b);
            }
        }
    }
    Some(cpus)
}

/// The value of `key=` in a kernel command line.
fn cmdline_value<'a>(cmdline: &'a str, key: &str) -> Option<&'a str> {
    cmdline
        .split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('='))
}

/// Connections beyond `--parallel` a process needs descriptors for (sim, logs, tokenizer files).
const NOFILE_MARGIN: u64 = 1_024;
/// Ephemeral ports a run may burn through when it reconnects (TIME_WAIT holds each ~60 s).
const PORT_SPAN_MIN: u64 = 28_000;
const SOMAXCONN_MIN: u64 = 4_096;
/// Idle states whose exit takes longer than this add visible jitter to µs-scale timestamps.
const IDLE_LATENCY_MAX_US: u64 = 10;

pub fn check_nofile(nofile: Option<(u64, u64)>, parallel: u64) -> Check {
    let want = parallel + NOFILE_MARGIN;
    let (status, current) = match nofile {
        Some((soft, hard)) => (
            if soft >= want {
                Status::Ok
            } else {
                Status::Warn
            },
            format!("soft {soft}, hard {hard}"),
        ),
        None => (Status::Warn, "unknown (getrlimit failed)".into()),
    };
    Check {
        name: "fd-limit",
        status,
        current,
        recommended: format!("soft ≥ {want} (--parallel {parallel} + {NOFILE_MARGIN})"),
        why: "one socket per concurrency slot; running out fails connects mid-run",
        fix: if status == Status::Ok {
            String::new()
        } else {
            format!(
                "ulimit -n {n}   # this shell; persistently: tuning/apply.sh --apply (limits.conf nofile {n})",
                n = want.max(1 << 20)
            )
        },
    }
}

pub fn check_port_range(range: Option<(u64, u64)>, parallel: u64) -> Check {
    let want = PORT_SPAN_MIN.max(4 * parallel);
    let (status, current) = match range {
        Some((lo, hi)) => {
            let span = hi.saturating_sub(lo) + 1;
            (
                if span >= want {
                    Status::Ok
                } else {
                    Status::Warn
                },
                format!("{lo} {hi} ({span} ports)"),
            )
        }
        None => (Status::Warn, "unknown".into()),
    };
    Check {
        name: "ephemeral-ports",
        status,
        current,
        recommended: format!("≥ {want} ports, e.g. 1024 65535"),
        why: "every reconnect takes a local port that TIME_WAIT then holds for a minute",
        fix: if status == Status::Ok {
            String::new()
        } else {
            "sudo sysctl -w net.ipv4.ip_local_port_range=\"1024 65535\"".into()
        },
    }
}

pub fn check_tw_reuse(value: Option<u64>) -> Check {
    let status = if value == Some(1) {
        Status::Ok
    } else {
        Status::Warn
    };
    Check {
        name: "tcp-tw-reuse",
        status,
        current: match value {
            Some(2) => "2 (loopback only)".into(),
            Some(v) => v.to_string(),
            None => "unknown".into(),
        },
        recommended: "1".into(),
        why: "lets new outgoing connections reuse TIME_WAIT ports, so reconnect-heavy runs do \
              not exhaust them",
        fix: if status == Status::Ok {
            String::new()
        } else {
            "sudo sysctl -w net.ipv4.tcp_tw_reuse=1".into()
        },
    }
}

pub fn check_somaxconn(value: Option<u64>, parallel: u64) -> Check {
    let want = SOMAXCONN_MIN.max(parallel);
    let status = match value {
        Some(v) if v >= want => Status::Ok,
        _ => Status::Warn,
    };
    Check {
        name: "somaxconn",
        status,
        current: value.map_or("unknown".into(), |v| v.to_string()),
        recommended: format!("≥ {want}"),
        why: "the listen backlog of the server host (parley sim): a burst of connects beyond it \
              is dropped and retried after 1 s, which shows up as connect latency",
        fix: if status == Status::Ok {
            String::new()
        } else {
            format!("sudo sysctl -w net.core.somaxconn={}", want.max(65_535))
        },
    }
}

pub fn check_governor(governors: &[(usize, String)], cpus: &[usize]) -> Check {
    let slow: Vec<usize> = governors
        .iter()
        .filter(|(_, g)| g != "performance")
        .map(|(c, _)| *c)
        .collect();
    let (status, current) = if governors.is_empty() {
        (
            Status::Ok,
            "not exposed (no cpufreq: a VM or firmware-controlled frequency)".to_string(),
        )
    } else {
        let mut names: Vec<&str> = governors.iter().map(|(_, g)| g.as_str()).collect();
        names.sort_unstable();
        names.dedup();
        (
            if slow.is_empty() {
                Status::Ok
            } else {
                Status::Warn
            },
            names.join(", "),
        )
    };
    Check {
        name: "cpu-governor",
        status,
        current,
        recommended: "performance".into(),
        why: "frequency ramps change per-event CPU cost mid-run",
        fix: if status == Status::Ok {
            String::new()
        } else {
            format!(
                "for c in {}; do echo performance | sudo tee /sys/devices/system/cpu/cpu$c/cpufreq/scaling_governor; done",
                slow.iter()
                    .map(|c| c.to_string())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        },
    }
    .with_cpus_note(cpus)
}

pub fn check_idle_states(states: &[(usize, Vec<IdleState>)]) -> Check {
    let mut deep: Vec<String> = Vec::new();
    let mut fixes: Vec<String> = Vec::new();
    for (cpu, list) in states {
        for (k, s) in list.iter().enumerate() {
            if !s.disabled && s.latency_us > IDLE_LATENCY_MAX_US {
                deep.push(format!("cpu{cpu} {} ({} µs)", s.name, s.latency_us));
                fixes.push(format!(
                    "echo 1 | sudo tee /sys/devices/system/cpu/cpu{cpu}/cpuidle/state{k}/disable"
                ));
            }
        }
    }
    let status = if deep.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    Check {
        name: "cpu-idle-states",
        status,
        current: if states.is_empty() {
            "not exposed (no cpuidle driver)".into()
        } else if deep.is_empty() {
            format!("no enabled state exits slower than {IDLE_LATENCY_MAX_US} µs")
        } else {
            format!("enabled deep states: {}", deep.join(", "))
        },
        recommended: format!(
            "no enabled idle state with exit latency > {IDLE_LATENCY_MAX_US} µs on pinned CPUs \
             (or hold /dev/cpu_dma_latency at 0 for the run)"
        ),
        why: "a CPU waking from a deep state delivers timer and socket wake-ups late",
        fix: fixes.join("\n"),
    }
}

pub fn check_dma_latency(value_us: Option<u64>) -> Check {
    let status = if value_us == Some(0) {
        Status::Ok
    } else {
        Status::Warn
    };
    Check {
        name: "cpu-dma-latency",
        status,
        current: match value_us {
            Some(0) => "0 µs (held: idle CPUs poll)".into(),
            Some(v) if v >= 2_000_000_000 => format!("{v} µs (default: nobody holds it)"),
            Some(v) => format!("{v} µs"),
            None => "unreadable (needs root to read /dev/cpu_dma_latency)".into(),
        },
        recommended: "0 µs, held for the whole run".into(),
        why: "on this project's VMs a 10 ms sleep had p99 100–200 ms with idle CPUs and ≈ 10.4 ms \
              with a PM-QoS request of 0 held",
        fix: if status == Status::Ok {
            String::new()
        } else {
            "sudo tuning/hold-cpu-dma-latency.sh &   # holds the request until killed".into()
        },
    }
}

pub fn check_irq_affinity(irq_masks: &[(u32, Vec<usize>)], cpus: &[usize]) -> Check {
    let on_pinned: Vec<u32> = irq_masks
        .iter()
        .filter(|(_, mask)| mask.iter().any(|c| cpus.contains(c)))
        .map(|(irq, _)| *irq)
        .collect();
    let status = if on_pinned.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    let list = crate::cpus::format_list(cpus);
    Check {
        name: "irq-affinity",
        status,
        current: if irq_masks.is_empty() {
            "no IRQ affinities readable".into()
        } else {
            format!(
                "{} of {} IRQs may run on CPUs {list}",
                on_pinned.len(),
                irq_masks.len()
            )
        },
        recommended: format!("no IRQ on the pinned CPUs {list} (irqbalance stopped)"),
        why: "interrupt handling on a pinned core steals time from its executor mid-event",
        fix: if status == Status::Ok {
            String::new()
        } else {
            format!("sudo systemctl stop irqbalance; sudo tuning/irq-affinity.sh --away-from {list} --apply")
        },
    }
}

pub fn check_isolcpus(cmdline: Option<&str>, cpus: &[usize]) -> Check {
    let isolated = cmdline
        .and_then(|c| cmdline_value(c, "isolcpus"))
        // isolcpus may carry flags first: isolcpus=domain,managed_irq,2-3
        .map(|v| {
            v.split(',')
                .filter(|p| p.chars().next().is_some_and(|ch| ch.is_ascii_digit()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .and_then(|v| crate::cpus::parse_list(&v))
        .unwrap_or_default();
    let missing: Vec<usize> = cpus
        .iter()
        .copied()
        .filter(|c| !isolated.contains(c))
        .collect();
    let status = if missing.is_empty() {
        Status::Ok
    } else {
        Status::Warn
    };
    let list = crate::cpus::format_list(cpus);
    Check {
        name: "isolcpus",
        status,
        current: if isolated.is_empty() {
            "none".into()
        } else {
            crate::cpus::format_list(&isolated)
        },
        recommended: format!("isolcpus={list} nohz_full={list} (dedicated benchmark hosts)"),
        why: "keeps the scheduler's other work and the tick off the cores parley pins to",
        fix: if status == Status::Ok {
            String::new()
        } else {
            format!(
                "add 'isolcpus={list} nohz_full={list}' to GRUB_CMDLINE_LINUX in /etc/default/grub, \
                 then sudo update-grub && sudo reboot"
            )
        },
    }
}

impl Check {
    fn with_cpus_note(mut self, cpus: &[usize]) -> Check {
        let _ = write!(
            self.recommended,
            " on CPUs {}",
            crate::cpus::format_list(cpus)
        );
        self
    }
}

/// Every check, in print order.
pub fn checks(facts: &HostFacts, target: &Target) -> Vec<Check> {
    vec![
        check_nofile(facts.nofile, target.parallel),
        check_port_range(facts.port_range, target.parallel),
        check_tw_reuse(facts.tcp_tw_reuse),
        check_somaxconn(facts.somaxconn, target.parallel),
        check_governor(&facts.governors, &target.cpus),
        check_idle_states(&facts.idle_states),
        check_dma_latency(facts.cpu_dma_latency_us),
        check_irq_affinity(&facts.irq_masks, &target.cpus),
        check_isolcpus(facts.cmdline.as_deref(), &target.cpus),
    ]
}

/// Names of every check, in print order (the integration test looks for each).
pub const CHECK_NAMES: [&str; 9] = [
    "fd-limit",
    "ephemeral-ports",
    "tcp-tw-reuse",
    "somaxconn",
    "cpu-governor",
    "cpu-idle-states",
    "cpu-dma-latency",
    "irq-affinity",
    "isolcpus",
];

/// The report as printed: one block per check, then a count.
pub fn render(checks: &[Check]) -> String {
    let mut out = String::new();
    for c in checks {
        let tag = match c.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
        };
        let _ = writeln!(out, "[{tag}] {:<16} current: {}", c.name, c.current);
        let _ = writeln!(out, "       {:<16} recommended: {}", "", c.recommended);
        if c.status == Status::Warn {
            let _ = writeln!(out, "       {:<16} why: {}", "", c.why);
            for line in c.fix.lines() {
                let _ = writeln!(out, "       {:<16} fix: {line}", "");
            }
        }
    }
    let warnings = checks.iter().filter(|c| c.status == Status::Warn).count();
    let _ = writeln!(
        out,
        "\n{} checks, {warnings} warnings (advice only; see tuning/README.md)",
        checks.len()
    );
    out
}

fn read_trimmed(path: impl AsRef<Path>) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_u64(path: impl AsRef<Path>) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

impl HostFacts {
    /// Reads the host: /proc/sys, /sys/devices/system/cpu, getrlimit, /proc/irq, /proc/cmdline.
    /// Anything unreadable is left `None`/empty for the checks to word.
    pub fn read(cpus: &[usize]) -> HostFacts {
        let nofile = {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit only writes into the provided struct.
            let rc = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
            (rc == 0).then_some((lim.rlim_cur, lim.rlim_max))
        };
        let port_range = read_trimmed("/proc/sys/net/ipv4/ip_local_port_range").and_then(|s| {
            let mut it = s.split_whitespace().map(|v| v.parse::<u64>());
            match (it.next(), it.next()) {
                (Some(Ok(lo)), Some(Ok(hi))) => Some((lo, hi)),
                _ => None,
            }
        });
        let cpu_dir = |c: usize| format!("/sys/devices/system/cpu/cpu{c}");
        let governors = cpus
            .iter()
            .filter_map(|&c| {
                read_trimmed(format!("{}/cpufreq/scaling_governor", cpu_dir(c))).map(|g| (c, g))
            })
            .collect();
        let idle_states = cpus
            .iter()
            .filter_map(|&c| {
                let mut list = Vec::new();
                for k in 0.. {
                    let dir = format!("{}/cpuidle/state{k}", cpu_dir(c));
                    let Some(name) = read_trimmed(format!("{dir}/name")) else {
                        break;
                    };
                    list.push(IdleState {
                        name,
                        latency_us: read_u64(format!("{dir}/latency")).unwrap_or(0),
                        disabled: read_u64(format!("{dir}/disable")) == Some(1),
                    });
                }
                (!list.is_empty()).then_some((c, list))
            })
            .collect();
        let cpu_dma_latency_us = std::fs::read("/dev/cpu_dma_latency")
            .ok()
            .and_then(|b| <[u8; 4]>::try_from(b.get(..4)?).ok())
            .map(|b| i32::from_ne_bytes(b).max(0) as u64);
        let mut irq_masks: Vec<(u32, Vec<usize>)> = std::fs::read_dir("/proc/irq")
            .map(|dir| {
                dir.filter_map(|e| {
                    let e = e.ok()?;
                    let irq: u32 = e.file_name().to_str()?.parse().ok()?;
                    let mask = read_trimmed(e.path().join("smp_affinity"))?;
                    Some((irq, parse_affinity_mask(&mask)?))
                })
                .collect()
            })
            .unwrap_or_default();
        irq_masks.sort_unstable();
        HostFacts {
            nofile,
            port_range,
            tcp_tw_reuse: read_u64("/proc/sys/net/ipv4/tcp_tw_reuse"),
            somaxconn: read_u64("/proc/sys/net/core/somaxconn"),
            governors,
            idle_states,
            cpu_dma_latency_us,
            irq_masks,
            cmdline: read_trimmed("/proc/cmdline"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target {
            cpus: vec![2, 3],
            parallel: 512,
        }
    }

    fn tuned() -> HostFacts {
        HostFacts {
            nofile: Some((1 << 20, 1 << 20)),
            port_range: Some((1024, 65535)),
            tcp_tw_reuse: Some(1),
            somaxconn: Some(65535),
            governors: vec![(2, "performance".into()), (3, "performance".into())],
            idle_states: vec![(
                2,
                vec![
                    IdleState {
                        name: "POLL".into(),
                        latency_us: 0,
                        disabled: false,
                    },
                    IdleState {
                        name: "C6".into(),
                        latency_us: 133,
                        disabled: true,
                    },
                ],
            )],
            cpu_dma_latency_us: Some(0),
            irq_masks: vec![(24, vec![0, 1]), (25, vec![1])],
            cmdline: Some(
                "BOOT_IMAGE=/vmlinuz ro isolcpus=domain,managed_irq,2-3 nohz_full=2-3".into(),
            ),
        }
    }

    #[test]
    fn a_tuned_host_passes_every_check() {
        let all = checks(&tuned(), &target());
        let names: Vec<&str> = all.iter().map(|c| c.name).collect();
        assert_eq!(names, CHECK_NAMES);
        for c in &all {
            assert_eq!(c.status, Status::Ok, "{c:?}");
            assert!(c.fix.is_empty(), "{c:?}");
        }
        assert!(render(&all).contains("9 checks, 0 warnings"));
    }

    #[test]
    fn a_default_host_gets_each_fix() {
        let facts = HostFacts {
            nofile: Some((1024, 524288)),
            port_range: Some((32768, 60999)),
            tcp_tw_reuse: Some(2),
            somaxconn: Some(4096),
            governors: vec![(2, "powersave".into()), (3, "performance".into())],
            idle_states: vec![(
                3,
                vec![IdleState {
                    name: "C6".into(),
                    latency_us: 133,
                    disabled: false,
                }],
            )],
            cpu_dma_latency_us: Some(2_000_000_000),
            irq_masks: vec![(24, vec![0, 1, 2, 3]), (25, vec![0])],
            cmdline: Some("ro quiet".into()),
        };
        let all = checks(&facts, &target());
        let by = |n: &str| all.iter().find(|c| c.name == n).unwrap().clone();
        assert_eq!(by("fd-limit").status, Status::Warn);
        assert!(by("fd-limit").recommended.contains("1536"));
        assert!(by("fd-limit").fix.starts_with("ulimit -n 1048576"));
        // 28,232 ports ≥ 4 × 512: fine for this run.
        assert_eq!(by("ephemeral-ports").status, Status::Ok);
        assert_eq!(
            by("tcp-tw-reuse").fix,
            "sudo sysctl -w net.ipv4.tcp_tw_reuse=1"
        );
        assert_eq!(by("tcp-tw-reuse").current, "2 (loopback only)");
        assert_eq!(by("somaxconn").status, Status::Ok);
        let gov = by("cpu-governor");
        assert_eq!(gov.status, Status::Warn);
        assert!(gov.fix.contains("for c in 2;"), "{}", gov.fix);
        let idle = by("cpu-idle-states");
        assert!(idle.current.contains("cpu3 C6 (133 µs)"));
        assert_eq!(
            idle.fix,
            "echo 1 | sudo tee /sys/devices/system/cpu/cpu3/cpuidle/state0/disable"
        );
        assert!(by("cpu-dma-latency").current.contains("nobody holds it"));
        let irq = by("irq-affinity");
        assert_eq!(irq.current, "1 of 2 IRQs may run on CPUs 2-3");
        assert!(irq.fix.contains("--away-from 2-3"));
        assert_eq!(by("isolcpus").current, "none");
        assert!(by("isolcpus").fix.contains("isolcpus=2-3 nohz_full=2-3"));
        let text = render(&all);
        assert!(text.contains("[warn] tcp-tw-reuse"), "{text}");
        assert!(text.contains("fix: sudo sysctl -w net.ipv4.tcp_tw_reuse=1"));
        assert!(text.contains("9 checks, 7 warnings"), "{text}");
    }

    #[test]
    fn unexposed_cpufreq_and_unknown_values_are_worded() {
        let all = checks(&HostFacts::default(), &target());
        let by = |n: &str| all.iter().find(|c| c.name == n).unwrap().clone();
        assert_eq!(by("cpu-governor").status, Status::Ok);
        assert!(by("cpu-governor").current.starts_with("not exposed"));
        assert_eq!(by("somaxconn").current, "unknown");
        assert!(by("cpu-dma-latency").current.starts_with("unreadable"));
        // A big run needs a wider port range than the default.
        let big = Target {
            cpus: vec![0],
            parallel: 10_000,
        };
        let ports = check_port_range(Some((32768, 60999)), big.parallel);
        assert_eq!(ports.status, Status::Warn);
        assert!(ports.recommended.contains("≥ 40000"));
    }

    #[test]
    fn cpu_lists_and_masks_parse() {
        assert!(resolve_cpu_list("3-1").is_err());
        let e = resolve_cpu_list("100000").unwrap_err().to_string();
        assert!(e.starts_with("--cpus: \"100000\" is not a CPU list"), "{e}");
        assert_eq!(parse_affinity_mask("3").unwrap(), vec![0, 1]);
        assert_eq!(
            parse_affinity_mask("00000001,00000004").unwrap(),
            vec![2, 32]
        );
        assert!(parse_affinity_mask("zz").is_none());
    }
}
