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

#[cfg(test)]
mod tests {
    #[test]
    fn huge_pages_are_off_after_the_call() {
        assert!(super::disable_transparent_huge_pages());
        // SAFETY: as above.
        let state = unsafe { libc::prctl(libc::PR_GET_THP_DISABLE, 0, 0, 0, 0) };
        assert_eq!(state, 1);
    }
}
