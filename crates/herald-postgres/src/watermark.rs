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
//! A mark also records which transactions held the lock that every append
//! takes on the `events` table before it draws a position (`RowExclusiveLock`,
//! kept to the end of the transaction), as `pg_locks` shows them just after
//! `q` was read. Every transaction that drew a position ≤ `q` and had not
//! ended then is among them, so once none of them holds the lock any more,
//! the positions ≤ `q` are settled too. This second test only waits for the
//! store's own writers, where `xmin` waits for every transaction of the
//! cluster; readers use it when they are stopped at a gap that a mark
//! covers.
//!
//! # Which snapshot a settled position is good for
//!
//! "Every position up to `p` is settled" is a fact about the snapshots taken
//! after it was established: a statement whose snapshot is older may not see
//! an append that committed in between. So a statement uses the settled
//! position known when it was *issued*, plus the marks its own snapshot
//! resolves (`xmin ≥ m`, for marks taken before it was issued); what it
//! learns raises the store's settled position for the statements issued
//! after it.
//!
//! Marks are kept per store (they are facts about the database, so any
//! statement of any connection may resolve them). Only gaps need marks; a
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

/// A mark: every position up to `q` is settled once a snapshot of a
/// statement issued after it has `xmin ≥ m`, or once none of `holders`
/// holds the `events` table's lock.
#[derive(Clone, Debug)]
pub(crate) struct Mark {
    stamp: u64,
    m: i64,
    pub(crate) q: i64,
    /// Virtual transaction ids.
    pub(crate) holders: Vec<String>,
}

#[derive(Debug, Default)]
struct State {
    marks: Vec<Mark>,
    /// Every position up to this one is settled (for statements issued from
    /// now on).
    settled: i64,
}

/// A statement about to be sent; pass it back with what it saw.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Issued {
    stamp: u64,
    settled: i64,
}

impl Issued {
    /// The settled position known when the statement was issued.
    pub(crate) fn settled(&self) -> i64 {
        self.settled
    }
}

impl Watermark {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Call before sending a statement whose snapshot will be observed.
    pub(crate) fn issue(&self) -> Issued {
        let state = self.state();
        Issued {
            stamp: self.stamp.load(Ordering::SeqCst),
            settled: state.settled,
        }
    }

    /// Records the `xmin` seen by a statement, and returns the position up
    /// to which the log is settled *for that statement's snapshot*.
    pub(crate) fn observe(&self, issued: Issued, xmin: i64) -> i64 {
        let mut state = self.state();
        let mut valid = issued.settled;
        state.marks.retain(|mark| {
            let resolved = mark.stamp <= issued.stamp && mark.m <= xmin;
            if resolved {
                valid = valid.max(mark.q);
            }
            !resolved
        });
        state.settled = state.settled.max(valid);
        let settled = state.settled;
        state.marks.retain(|mark| mark.q > settled);
        valid
    }

    /// Records a mark taken by a probe that has returned.
    pub(crate) fn mark(&self, m: i64, q: i64, holders: Vec<String>) {
        let stamp = self.stamp.fetch_add(1, Ordering::SeqCst) + 1;
        let mut state = self.state();
        if q <= state.settled {
            return;
        }
        state.marks.push(Mark {
            stamp,
            m,
            q,
            holders,
        });
        if state.marks.len() > MAX_MARKS {
            // Keep the ones that will settle soonest.
            state.marks.sort_unstable_by_key(|mark| mark.m);
            state.marks.truncate(MAX_MARKS);
        }
    }

    /// The mark with the smallest `q` that would settle `position`, if one
    /// is waiting.
    pub(crate) fn awaiting(&self, position: i64) -> Option<Mark> {
        self.state()
            .marks
            .iter()
            .filter(|mark| mark.q >= position)
            .min_by_key(|mark| mark.q)
            .cloned()
    }

    /// Notes that every position up to `position` is settled, for the
    /// statements issued from now on.
    pub(crate) fn settle(&self, position: i64) {
        let mut state = self.state();
        state.settled = state.settled.max(position);
        let settled = state.settled;
        state.marks.retain(|mark| mark.q > settled);
    }

    /// Every position up to this one is settled, for statements issued from
    /// now on.
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
        w.mark(105, 10, Vec::new());
        assert_eq!(w.awaiting(7).map(|m| m.q), Some(10));
        // A statement issued before the mark was taken proves nothing.
        assert_eq!(w.observe(before, 200), 0);
        let after = w.issue();
        // Transaction 100 still runs.
        assert_eq!(w.observe(after, 100), 0);
        assert_eq!(w.observe(after, 105), 10);
        assert!(w.awaiting(7).is_none());
        assert_eq!(w.settled(), 10);
    }

    #[test]
    fn a_statement_issued_before_a_position_settled_does_not_use_it() {
        let w = Watermark::default();
        let old = w.issue();
        w.settle(20);
        // `old` may have a snapshot older than the fact.
        assert_eq!(w.observe(old, 1_000), 0);
        assert_eq!(w.observe(w.issue(), 1_000), 20);
    }

    #[test]
    fn settling_never_goes_back() {
        let w = Watermark::default();
        w.settle(20);
        w.mark(5, 10, Vec::new());
        assert!(w.awaiting(10).is_none());
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
