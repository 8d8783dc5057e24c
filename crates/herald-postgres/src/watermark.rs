//! The safe watermark of the global log: which gaps in the positions are
//! final.
//!
//! Positions come from a sequence when a row is inserted, and become visible
//! when its transaction commits, in any order. A reader that returned
//! position 11 while 10 was still in flight would skip 10 for ever, so
//! readers return events in position order only while the positions are
//! *settled*: every position after the reader's checkpoint is there (an
//! event, or the erased position of a deleted one), or the gap before it is
//! known to be final, because every transaction that could still commit
//! into it has ended.
//!
//! # Knowing that a gap is final
//!
//! A reader that meets a gap it cannot pass takes a *mark* `(q, m)`: in one
//! short transaction it reads `q`, the position sequence's last value, then
//! takes a transaction id `m`, and rolls back. Appends take their
//! transaction id before they draw positions (they write the stream's row
//! first), and ids are handed out in order, so every transaction that drew a
//! position ≤ `q` has an id below `m`. Once a snapshot taken after the mark
//! has `xmin ≥ m`, all of them have ended, and every position ≤ `q` is
//! settled: committed and visible, or gone for good.
//!
//! The snapshot's `xmax` cannot stand in for `m`: it is the last *completed*
//! id plus one, and a transaction that took a larger id and still runs is
//! below neither `xmin` nor `xmax`.
//!
//! Marks are kept per store (they are facts about the database, so any
//! statement of any connection may resolve them), with stamps that say which
//! statement was issued after which mark was taken. Only gaps need marks; a
//! reader that finds every position in place returns it at once.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

/// The most marks kept; dropping one only delays settling.
const MAX_MARKS: usize = 64;

/// The settled prefix of the global log, as far as this store knows.
#[derive(Debug, Default)]
pub(crate) struct Watermark {
    stamp: AtomicU64,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// `(stamp, m, q)`: every position up to `q` is settled once a snapshot
    /// of a statement issued at or after `stamp` has `xmin ≥ m`.
    marks: Vec<(u64, i64, i64)>,
    /// Every position up to this one is settled.
    settled: i64,
}

/// A statement about to be sent; pass it back with what it saw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Issued(u64);

impl Watermark {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call before sending a statement whose snapshot will be observed.
    pub(crate) fn issue(&self) -> Issued {
        Issued(self.stamp.load(Ordering::SeqCst))
    }

    /// Records the `xmin` seen by a statement issued at `issued`, and
    /// returns the position up to which the log is settled.
    pub(crate) fn observe(&self, issued: Issued, xmin: i64) -> i64 {
        let mut state = self.state();
        let State { marks, settled } = &mut *state;
        marks.retain(|&(stamp, m, q)| {
            if stamp <= issued.0 && m <= xmin {
                *settled = (*settled).max(q);
                false
            } else {
                q > *settled
            }
        });
        *settled
    }

    /// Records a mark taken by a probe that has returned.
    pub(crate) fn mark(&self, m: i64, q: i64) {
        let stamp = self.stamp.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self.state();
        if q <= state.settled {
            return;
        }
        state.marks.push((stamp, m, q));
        if state.marks.len() > MAX_MARKS {
            // Keep the ones that will settle soonest.
            state.marks.sort_unstable_by_key(|&(_, m, _)| m);
            state.marks.truncate(MAX_MARKS);
        }
    }

    /// Whether a mark that would settle `position` is waiting.
    pub(crate) fn awaits(&self, position: i64) -> bool {
        self.state().marks.iter().any(|&(_, _, q)| q >= position)
    }

    /// Notes that every position up to `position` is settled (a reader found
    /// them all in place after a settled one).
    pub(crate) fn settle(&self, position: i64) {
        let mut state = self.state();
        state.settled = state.settled.max(position);
    }

    /// Every position up to this one is settled.
    pub(crate) fn settled(&self) -> i64 {
        self.state().settled
    }
}

/// Walks positions read in order after `after`: returns how many of them are
/// settled (in place with no gap before them, or with a gap that lies at or
/// below `settled`).
pub(crate) fn settled_prefix(
    after: i64,
    settled: i64,
    positions: impl IntoIterator<Item = i64>,
) -> usize {
    let mut cursor = after;
    let mut count = 0;
    for position in positions {
        if position != cursor + 1 && position - 1 > settled {
            break;
        }
        cursor = position;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mark_settles_once_every_older_transaction_ended() {
        let w = Watermark::default();
        let before = w.issue();
        w.mark(105, 10);
        assert!(w.awaits(7));
        // A statement issued before the mark was taken proves nothing.
        assert_eq!(w.observe(before, 200), 0);
        let after = w.issue();
        // Transaction 100 still runs.
        assert_eq!(w.observe(after, 100), 0);
        assert_eq!(w.observe(after, 105), 10);
        assert!(!w.awaits(7));
        assert_eq!(w.settled(), 10);
    }

    #[test]
    fn settling_never_goes_back() {
        let w = Watermark::default();
        w.settle(20);
        w.mark(5, 10);
        assert!(!w.awaits(10));
        assert_eq!(w.observe(w.issue(), 6), 20);
    }

    #[test]
    fn settled_prefix_stops_at_an_unsettled_gap() {
        assert_eq!(settled_prefix(0, 0, [1, 2, 3]), 3);
        assert_eq!(settled_prefix(0, 0, [1, 3, 4]), 1);
        assert_eq!(settled_prefix(0, 2, [1, 3, 4]), 3);
        assert_eq!(settled_prefix(5, 0, [7]), 0);
        assert_eq!(settled_prefix(5, 6, [7, 9]), 1);
    }
}
