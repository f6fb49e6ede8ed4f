//! SIGINT / SIGTERM / SIGHUP handling without a runtime. The handler only touches atomics (and,
//! before the run starts or on a third signal, `write(2)` and `_exit(2)`), so it is
//! async-signal-safe; the engine learns of a signal by polling [`interrupted`] and
//! [`cancel_now`] on a short per-core timer (see `engine::shard`), so an interrupted run stops
//! claiming, cuts think time short, gives requests in flight `--grace` seconds, and always writes
//! the report.
//!
//! While the dataset is being loaded or synthesised ([`arm`] not yet called) there is nothing
//! to report and nothing sent, so a signal exits at once with 128 + its number: loading never
//! polls a flag, and so cannot be slow to stop.
//!
//! - first signal: stop (the engine drains, the report is written, exit 128 + signal);
//! - second: cancel requests in flight at once (the report is still written);
//! - third: exit at once without a report (an escape hatch should anything hang).

use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU32, Ordering};
use std::time::Duration;

static SIGNALS: AtomicU32 = AtomicU32::new(0);
/// The first signal's number (0: none yet).
static FIRST: AtomicI32 = AtomicI32::new(0);
/// Set by [`arm`] once the run has something to report.
static ARMED: AtomicBool = AtomicBool::new(false);

/// The signals handled.
const HANDLED: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

extern "C" fn on_signal(sig: libc::c_int) {
    let _ = FIRST.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
    let n = SIGNALS.fetch_add(1, Ordering::SeqCst) + 1;
    let armed = ARMED.load(Ordering::SeqCst);
    if !armed || n >= 3 {
        let msg: &[u8] = if armed {
            b"\nparley: third interrupt: exiting without a report\n"
        } else {
            b"\nparley: interrupted before the run started; nothing was sent\n"
        };
        // SAFETY: write(2) and _exit(2) are async-signal-safe; `msg` is a static buffer.
        unsafe {
            libc::write(2, msg.as_ptr().cast(), msg.len());
            libc::_exit(128 + FIRST.load(Ordering::SeqCst));
        }
    }
}

/// Installs the SIGINT, SIGTERM and SIGHUP handlers (idempotent). Until [`arm`], a signal exits
/// at once.
pub fn install() {
    // SAFETY: the handler only touches atomics, write(2) and _exit(2).
    unsafe {
        let handler = on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        for sig in HANDLED {
            libc::signal(sig, handler);
        }
    }
}

/// From now on a signal stops the run gracefully (the report is written) instead of exiting.
/// Called when the run is about to send its first request.
pub fn arm() {
    ARMED.store(true, Ordering::SeqCst);
}

/// True once SIGINT, SIGTERM or SIGHUP has been received: stop claiming and cut waits short.
#[inline]
pub fn interrupted() -> bool {
    SIGNALS.load(Ordering::Relaxed) > 0
}

/// True after a second signal: cancel requests in flight now, without waiting out `--grace`.
#[inline]
pub fn cancel_now() -> bool {
    SIGNALS.load(Ordering::Relaxed) > 1
}

/// The first signal received (`libc::SIGINT`, …), if any; the process exits 128 + it.
pub fn received() -> Option<i32> {
    match FIRST.load(Ordering::SeqCst) {
        0 => None,
        sig => Some(sig),
    }
}

/// The first signal's name (`"SIGINT"`, …), for reports.
pub fn received_name() -> Option<&'static str> {
    received().map(|sig| match sig {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        _ => "signal",
    })
}

/// Blocks the calling thread until an interrupt arrives.
pub fn wait_for_interrupt() {
    while !interrupted() {
        std::thread::sleep(Duration::from_millis(20));
    }
}
