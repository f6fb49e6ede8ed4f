//! Holding a PM-QoS request of 0 µs on `/dev/cpu_dma_latency` while the sim runs.
//!
//! On an idle VM, wake-ups arrive late (a 10 ms sleep measured p99 100–200 ms) because vCPUs
//! sink into deep idle states. The sim's chunks go out on timers, so without this its own
//! schedule — the ground truth a client is judged against — would be off by that much. While the
//! file stays open with a 32-bit 0 written to it, idle CPUs poll instead; the polling is not
//! charged to any process. Best effort: without the permission (not root) nothing happens.

use std::fs::{File, OpenOptions};
use std::io::Write;

/// Keeps the request in force until dropped.
pub struct PmQos {
    _file: Option<File>,
}

impl PmQos {
    /// Requests 0 µs wake-up latency if possible; check [`PmQos::active`].
    pub fn hold() -> PmQos {
        let file = OpenOptions::new()
            .write(true)
            .open("/dev/cpu_dma_latency")
            .and_then(|mut f| {
                f.write_all(&0i32.to_ne_bytes())?;
                Ok(f)
            })
            .ok();
        PmQos { _file: file }
    }

    /// A request that holds nothing.
    pub fn none() -> PmQos {
        PmQos { _file: None }
    }

    pub fn active(&self) -> bool {
        self._file.is_some()
    }
}
