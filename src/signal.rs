//! Ctrl-C / SIGTERM handling without a runtime: the handler only sets an atomic flag that the
//! engine polls at conversation boundaries (async-signal-safe), so an interrupted run still
//! writes the report for what it measured.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

static SIGNALS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_signal(_sig: libc::c_int) {
    let n = SIGNALS.fetch_add(1, Ordering::SeqCst);
    if n >= 1 {
        // Second interrupt: the user wants out now.
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(130) };
    }
}

/// Installs the SIGINT and SIGTERM handlers (idempotent).
pub fn install() {
    // SAFETY: installing a handler that only touches an atomic and calls _exit.
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::signal(libc::SIGINT, handler);
        libc::signal(libc::SIGTERM, handler);
    }
}

/// True once SIGINT or SIGTERM has been received.
#[inline]
pub fn interrupted() -> bool {
    SIGNALS.load(Ordering::Relaxed) > 0
}

/// Blocks the calling thread until an interrupt arrives.
pub fn wait_for_interrupt() {
    while !interrupted() {
        std::thread::sleep(Duration::from_millis(20));
    }
}
