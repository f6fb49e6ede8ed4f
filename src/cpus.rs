//! CPU lists (`2-9,12`, as the kernel writes them) and the CPUs this process may run on.
//!
//! `--cpus LIST` pins executors to exact CPUs (a host tuned with `isolcpus=` needs that; `--cores
//! N` takes the first N the process may use). A CPU that is not online, or that the process's
//! affinity mask (taskset, a cgroup's cpuset) excludes, is refused before anything starts: an
//! executor pinned there would fail to start or would share a CPU the user meant to keep apart.

use std::fmt::Write;

/// Parses a kernel-style CPU list: comma-separated CPUs and inclusive ranges (`0-3,6`), sorted
/// and without duplicates. `None` when it is not one (empty, a reversed range, not numbers).
pub fn parse_list(list: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in list.split(',').map(str::trim) {
        if part.is_empty() {
            return None;
        }
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.trim().parse().ok()?, b.trim().parse().ok()?);
                // A typo such as 0-100000 would allocate for nothing; no host has that many.
                if a > b || b >= MAX_CPU {
                    return None;
                }
                cpus.extend(a..=b);
            }
            None => cpus.push(part.parse().ok().filter(|&c| c < MAX_CPU)?),
        }
    }
    cpus.sort_unstable();
    cpus.dedup();
    Some(cpus)
}

/// Above any CPU number Linux supports (`CONFIG_NR_CPUS` tops out at 8,192).
const MAX_CPU: usize = 1 << 16;

/// Formats CPUs back as a compact list (`0-3,6`).
pub fn format_list(cpus: &[usize]) -> String {
    let mut out = String::new();
    let mut i = 0;
    while i < cpus.len() {
        let mut j = i;
        while j + 1 < cpus.len() && cpus[j + 1] == cpus[j] + 1 {
            j += 1;
        }
        if !out.is_empty() {
            out.push(',');
        }
        if j > i {
            let _ = write!(out, "{}-{}", cpus[i], cpus[j]);
        } else {
            let _ = write!(out, "{}", cpus[i]);
        }
        i = j + 1;
    }
    out
}

/// The CPUs this process may run on (its affinity mask), ascending.
pub fn allowed() -> Vec<usize> {
    let mut cpus: Vec<usize> = core_affinity::get_core_ids()
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.id)
        .collect();
    if cpus.is_empty() {
        cpus = (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
    }
    cpus.sort_unstable();
    cpus
}

/// The CPUs the kernel has online (`/sys/devices/system/cpu/online`); the allowed ones when that
/// cannot be read.
pub fn online() -> Vec<usize> {
    std::fs::read_to_string("/sys/devices/system/cpu/online")
        .ok()
        .and_then(|s| parse_list(s.trim()))
        .unwrap_or_else(allowed)
}

/// Why `requested` cannot be used, if it cannot: CPUs that are not online, then CPUs outside the
/// affinity mask. Pure, so the wording is tested without such a host.
pub fn check(requested: &[usize], online: &[usize], allowed: &[usize]) -> Result<(), String> {
    let missing: Vec<usize> = requested
        .iter()
        .copied()
        .filter(|c| !online.contains(c))
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{} {} not exist or {} offline (online CPUs: {})",
            plural(&missing),
            if missing.len() == 1 { "does" } else { "do" },
            if missing.len() == 1 { "is" } else { "are" },
            format_list(online)
        ));
    }
    let denied: Vec<usize> = requested
        .iter()
        .copied()
        .filter(|c| !allowed.contains(c))
        .collect();
    if !denied.is_empty() {
        return Err(format!(
            "{} {} outside this process's CPU affinity (allowed: {}; see taskset or the cgroup's \
             cpuset.cpus)",
            plural(&denied),
            if denied.len() == 1 { "is" } else { "are" },
            format_list(allowed)
        ));
    }
    Ok(())
}

fn plural(cpus: &[usize]) -> String {
    match cpus {
        [one] => format!("CPU {one}"),
        many => format!("CPUs {}", format_list(many)),
    }
}

/// Parses and checks `list` against this host, for a flag's error message.
pub fn resolve(list: &str) -> Result<Vec<usize>, String> {
    let cpus = parse_list(list).ok_or_else(|| {
        format!("{list:?} is not a CPU list such as 2-9,12 (CPUs and inclusive ranges)")
    })?;
    check(&cpus, &online(), &allowed())?;
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_sorted_and_deduplicated() {
        assert_eq!(parse_list("2-4,12,3"), Some(vec![2, 3, 4, 12]));
        assert_eq!(parse_list("0"), Some(vec![0]));
        assert_eq!(parse_list(" 1 - 2 , 5 "), Some(vec![1, 2, 5]));
        for bad in ["", "a", "3-1", "1,,2", "1-", "-1", "0-70000", "1.5"] {
            assert_eq!(parse_list(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn lists_format_compactly_and_round_trip() {
        assert_eq!(format_list(&[0, 1, 2, 3, 6, 8, 9]), "0-3,6,8-9");
        assert_eq!(format_list(&[]), "");
        let cpus = vec![2, 3, 4, 5, 6, 7, 8, 9, 12];
        assert_eq!(parse_list(&format_list(&cpus)), Some(cpus));
    }

    #[test]
    fn check_names_missing_then_denied_cpus() {
        let online = [0, 1, 2, 3];
        let allowed = [0, 1];
        assert_eq!(check(&[0, 1], &online, &allowed), Ok(()));
        let e = check(&[1, 7], &online, &allowed).unwrap_err();
        assert_eq!(e, "CPU 7 does not exist or is offline (online CPUs: 0-3)");
        let e = check(&[4, 5, 9], &online, &allowed).unwrap_err();
        assert!(
            e.starts_with("CPUs 4-5,9 do not exist or are offline"),
            "{e}"
        );
        let e = check(&[1, 2, 3], &online, &allowed).unwrap_err();
        assert!(
            e.starts_with("CPUs 2-3 are outside this process's CPU affinity (allowed: 0-1;"),
            "{e}"
        );
    }

    #[test]
    fn this_host_allows_a_subset_of_its_online_cpus() {
        let (online, allowed) = (online(), allowed());
        assert!(!allowed.is_empty());
        assert_eq!(check(&allowed, &online, &allowed), Ok(()));
        assert!(resolve(&format_list(&allowed)).is_ok());
        let absent = online.iter().max().unwrap() + 1;
        assert!(resolve(&absent.to_string()).is_err());
    }
}
