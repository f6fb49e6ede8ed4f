//! Fixed-schedule replay (`--fixed-schedule`, AIPerf's flags and rules): each conversation's
//! first turn is sent at its recorded time rather than when a slot frees up.
//!
//! [`fixed_schedule`] turns the pool's recorded first-turn times ([`Turn::timestamp_ns`]) into
//! offsets from a schedule origin, sorted by time; the engine sends first turns at run start +
//! offset. As AIPerf (`timing/strategies/fixed_schedule.py`):
//!
//! - the origin is 0 on the trace's clock; with `--fixed-schedule-auto-offset` the earliest
//!   first-turn time (the first request goes out at once); else with
//!   `--fixed-schedule-start-offset S` it is S;
//! - `--fixed-schedule-start-offset S` / `--fixed-schedule-end-offset E` (ms) keep only the
//!   conversations whose first turn's time lies in [S, E], both ends included;
//! - a later turn with a recorded time is sent at max(that time, the previous reply's end)
//!   ([`FixedSchedule::turn_offset_ns`]); one without is sent its `delay_ns` after the previous
//!   reply (0: at once).
//!
//! Pure: [`crate::resources::Resources::build`] calls it once; nothing here touches a clock.

use super::{Conversation, Turn};

/// The `--fixed-schedule-*` options.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FixedOptions {
    /// `--fixed-schedule-auto-offset`: the origin is the earliest first-turn time. Wins over
    /// `start_offset_ms` as the origin (the CLI does not allow both).
    pub auto_offset: bool,
    /// `--fixed-schedule-start-offset` (ms): earliest first-turn time kept; the origin.
    pub start_offset_ms: Option<u64>,
    /// `--fixed-schedule-end-offset` (ms): latest first-turn time kept.
    pub end_offset_ms: Option<u64>,
}

/// One conversation's place in the schedule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FixedEntry {
    /// Index into the pool the schedule was made from.
    pub conversation: usize,
    /// When its first turn is sent: nanoseconds after the run's start.
    pub offset_ns: u64,
}

/// The run's schedule: every scheduled conversation once, by first-turn time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FixedSchedule {
    /// The trace time (ns) that maps to the run's start.
    pub origin_ns: u64,
    /// Sorted by `offset_ns`; equal times keep pool order.
    pub entries: Vec<FixedEntry>,
    /// Conversations of the pool left out by the start/end window.
    pub outside_window: usize,
}

impl FixedSchedule {
    /// When a later turn may be sent, in ns after the run's start: its recorded time (the engine
    /// sends it at the later of this and the previous reply's end), or `None` when it has no
    /// recorded time (then `turn.delay_ns` after the previous reply). A time before the origin
    /// is 0.
    pub fn turn_offset_ns(&self, turn: &Turn) -> Option<u64> {
        turn.timestamp_ns.map(|t| t.saturating_sub(self.origin_ns))
    }

    /// Conversations scheduled.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Keeps only the first `n` conversations by time (`--number` smaller than the schedule).
    pub fn truncate(&mut self, n: usize) {
        self.entries.truncate(n);
    }

    /// The pool with only the scheduled conversations (in pool order), and the schedule
    /// re-indexed into it, so the run holds no conversation it will never send.
    pub fn compact(mut self, pool: Vec<Conversation>) -> (Vec<Conversation>, FixedSchedule) {
        let mut new_index = vec![usize::MAX; pool.len()];
        let mut scheduled: Vec<usize> = self.entries.iter().map(|e| e.conversation).collect();
        scheduled.sort_unstable();
        for (new, &old) in scheduled.iter().enumerate() {
            new_index[old] = new;
        }
        let kept = pool
            .into_iter()
            .enumerate()
            .filter(|(i, _)| new_index[*i] != usize::MAX)
            .map(|(_, c)| c)
            .collect();
        for e in &mut self.entries {
            e.conversation = new_index[e.conversation];
        }
        (kept, self)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum FixedError {
    #[error(
        "--fixed-schedule: conversation {index} (0-based, in file order after --dataset-offset \
         and --shard) has no timestamp on its first turn; fixed-schedule replay sends first \
         turns at their recorded times (--skip-invalid leaves such conversations out)"
    )]
    NoFirstTimestamp { index: usize },
    #[error(
        "--fixed-schedule-start-offset {start_ms} is after --fixed-schedule-end-offset {end_ms}"
    )]
    BadWindow { start_ms: u64, end_ms: u64 },
    #[error(
        "--fixed-schedule: no conversation starts within [{}, {}] ms \
         (--fixed-schedule-start-offset/--fixed-schedule-end-offset); all {total} fall outside",
        fmt_ms(.start_ms), fmt_ms(.end_ms)
    )]
    EmptyWindow {
        start_ms: Option<u64>,
        end_ms: Option<u64>,
        total: usize,
    },
}

fn fmt_ms(ms: &Option<u64>) -> String {
    ms.map_or_else(|| "…".to_string(), |v| v.to_string())
}

/// The schedule of `convs` (see the module docs). Every conversation's first turn needs a
/// timestamp.
pub fn fixed_schedule(
    convs: &[Conversation],
    opts: &FixedOptions,
) -> Result<FixedSchedule, FixedError> {
    if let (Some(start_ms), Some(end_ms)) = (opts.start_offset_ms, opts.end_offset_ms) {
        if start_ms > end_ms {
            return Err(FixedError::BadWindow { start_ms, end_ms });
        }
    }
    let ms = |v: u64| v.saturating_mul(1_000_000);
    let start_ns = opts.start_offset_ms.map_or(0, ms);
    let end_ns = opts.end_offset_ms.map_or(u64::MAX, ms);
    let mut firsts: Vec<(u64, usize)> = Vec::with_capacity(convs.len());
    for (index, c) in convs.iter().enumerate() {
        let first = c
            .turns
            .first()
            .and_then(|t| t.timestamp_ns)
            .ok_or(FixedError::NoFirstTimestamp { index })?;
        if (start_ns..=end_ns).contains(&first) {
            firsts.push((first, index));
        }
    }
    if firsts.is_empty() {
        return Err(FixedError::EmptyWindow {
            start_ms: opts.start_offset_ms,
            end_ms: opts.end_offset_ms,
            total: convs.len(),
        });
    }
    // Stable: equal times keep pool order.
    firsts.sort_by_key(|&(t, _)| t);
    let origin_ns = if opts.auto_offset {
        firsts[0].0
    } else {
        start_ns
    };
    let entries = firsts
        .iter()
        .map(|&(t, conversation)| FixedEntry {
            conversation,
            offset_ns: t - origin_ns,
        })
        .collect();
    Ok(FixedSchedule {
        origin_ns,
        entries,
        outside_window: convs.len() - firsts.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    /// A conversation whose turns were recorded at these times (ms; None = no timestamp).
    fn conv(times_ms: &[Option<u64>]) -> Conversation {
        Conversation::live(
            times_ms
                .iter()
                .map(|t| Turn {
                    timestamp_ns: t.map(|ms| ms * MS),
                    ..Turn::user("x", Some(1))
                })
                .collect(),
        )
    }

    fn at(times_ms: &[u64]) -> Vec<Conversation> {
        times_ms.iter().map(|&t| conv(&[Some(t)])).collect()
    }

    fn order(s: &FixedSchedule) -> Vec<(usize, u64)> {
        s.entries
            .iter()
            .map(|e| (e.conversation, e.offset_ns / MS))
            .collect()
    }

    #[test]
    fn sorted_by_first_turn_time_with_ties_in_pool_order() {
        let pool = at(&[3000, 1000, 2000, 1000]);
        let s = fixed_schedule(&pool, &FixedOptions::default()).unwrap();
        assert_eq!(s.origin_ns, 0);
        assert_eq!(order(&s), [(1, 1000), (3, 1000), (2, 2000), (0, 3000)]);
        assert_eq!(s.outside_window, 0);
    }

    #[test]
    fn auto_offset_starts_at_the_earliest_first_turn() {
        let pool = at(&[5500, 5000, 7250]);
        let opts = FixedOptions {
            auto_offset: true,
            ..FixedOptions::default()
        };
        let s = fixed_schedule(&pool, &opts).unwrap();
        assert_eq!(s.origin_ns, 5000 * MS);
        assert_eq!(order(&s), [(1, 0), (0, 500), (2, 2250)]);
    }

    #[test]
    fn window_keeps_first_turns_in_start_end_and_starts_at_start() {
        let pool = at(&[0, 500, 2000, 2500, 4000, 5000]);
        let opts = FixedOptions {
            start_offset_ms: Some(2000),
            end_offset_ms: Some(4000),
            ..FixedOptions::default()
        };
        let s = fixed_schedule(&pool, &opts).unwrap();
        assert_eq!(s.origin_ns, 2000 * MS);
        assert_eq!(order(&s), [(2, 0), (3, 500), (4, 2000)]);
        assert_eq!(s.outside_window, 3);
        // End only: the origin stays 0.
        let end_only = FixedOptions {
            end_offset_ms: Some(500),
            ..FixedOptions::default()
        };
        let s = fixed_schedule(&pool, &end_only).unwrap();
        assert_eq!(order(&s), [(0, 0), (1, 500)]);
        // Auto-offset with a window: the earliest kept first turn.
        let auto = FixedOptions {
            auto_offset: true,
            start_offset_ms: Some(400),
            end_offset_ms: None,
        };
        let s = fixed_schedule(&pool, &auto).unwrap();
        assert_eq!(s.origin_ns, 500 * MS);
        assert_eq!(
            s.entries[0],
            FixedEntry {
                conversation: 1,
                offset_ns: 0
            }
        );
    }

    #[test]
    fn later_turns_by_their_own_time_or_by_delay() {
        let pool = vec![conv(&[Some(1000), Some(1800), None]), conv(&[Some(900)])];
        let opts = FixedOptions {
            start_offset_ms: Some(500),
            ..FixedOptions::default()
        };
        let s = fixed_schedule(&pool, &opts).unwrap();
        assert_eq!(order(&s), [(1, 400), (0, 500)]);
        let turns = &pool[0].turns;
        assert_eq!(s.turn_offset_ns(&turns[1]), Some(1300 * MS));
        assert_eq!(s.turn_offset_ns(&turns[2]), None);
        // A recorded time before the origin: at once.
        let early = conv(&[Some(100)]);
        assert_eq!(s.turn_offset_ns(&early.turns[0]), Some(0));
    }

    #[test]
    fn errors_name_the_conversation_and_the_window() {
        let pool = vec![conv(&[Some(1)]), conv(&[None, Some(5)])];
        let e = fixed_schedule(&pool, &FixedOptions::default()).unwrap_err();
        assert!(
            matches!(e, FixedError::NoFirstTimestamp { index: 1 }),
            "{e}"
        );
        assert!(e.to_string().contains("conversation 1"), "{e}");
        let bad = FixedOptions {
            start_offset_ms: Some(10),
            end_offset_ms: Some(5),
            ..FixedOptions::default()
        };
        let e = fixed_schedule(&at(&[7]), &bad).unwrap_err().to_string();
        assert!(e.contains("--fixed-schedule-start-offset 10"), "{e}");
        let outside = FixedOptions {
            start_offset_ms: Some(100),
            end_offset_ms: Some(200),
            ..FixedOptions::default()
        };
        let e = fixed_schedule(&at(&[0, 50, 300]), &outside)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[100, 200] ms") && e.contains("all 3"), "{e}");
    }

    #[test]
    fn compact_keeps_only_scheduled_conversations() {
        let pool = at(&[0, 3000, 1000, 2000]);
        let opts = FixedOptions {
            start_offset_ms: Some(1000),
            ..FixedOptions::default()
        };
        let mut s = fixed_schedule(&pool, &opts).unwrap();
        s.truncate(2);
        let (kept, s) = s.compact(pool);
        // Scheduled: 2 (1000 ms) then 3 (2000 ms); kept in pool order.
        assert_eq!(kept.len(), 2);
        let first_ms = |c: &Conversation| c.turns[0].timestamp_ns.unwrap() / MS;
        assert_eq!(first_ms(&kept[0]), 1000);
        assert_eq!(order(&s), [(0, 0), (1, 1000)]);
        for e in &s.entries {
            assert_eq!(
                kept[e.conversation].turns[0].timestamp_ns.unwrap() - s.origin_ns,
                e.offset_ns
            );
        }
    }
}
