//! Process-wide settings that keep parley's own timing true.

/// Turns transparent huge pages off for this process.
///
/// mimalloc asks for huge pages on its segments (`MADV_HUGEPAGE`), so the first touch of a fresh
/// 2 MiB region faults in a whole huge page and the kernel zeroes it on the faulting thread. On
/// the project's VMs that takes ≈ 5 ms, and it lands on an executor thread in the middle of a
/// run: the first large request bodies waited 5–11 ms before their first write
/// (docs/performance.md). 4 KiB pages fault in microseconds. Best effort: an old kernel without
/// `PR_SET_THP_DISABLE` keeps its default.
pub fn disable_transparent_huge_pages() -> bool {
    // SAFETY: prctl with integer arguments only; it changes no memory we own.
    unsafe { libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0 }
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit (every connection is a descriptor, and the
/// common soft default of 1,024 is far below what `--parallel` asks for); returns the soft limit
/// now in force, or `None` if it cannot be read.
pub fn raise_fd_limit() -> Option<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return None;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: lim.rlim_max,
                rlim_max: lim.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
    }
    Some(lim.rlim_cur)
}

/// Descriptors this process has open now (`None` without /proc).
pub fn open_fds() -> Option<u64> {
    Some(std::fs::read_dir("/proc/self/fd").ok()?.count() as u64)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_fd_limit_is_raised_to_the_hard_one() {
        let soft = super::raise_fd_limit().expect("getrlimit works");
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: as above.
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        assert_eq!(soft, lim.rlim_max);
        assert_eq!(lim.rlim_cur, lim.rlim_max);
        assert!(super::open_fds().unwrap() >= 3);
    }

    #[test]
    fn huge_pages_are_off_after_the_call() {
        assert!(super::disable_transparent_huge_pages());
        // SAFETY: as above.
        let state = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(state, 1);
    }
}
