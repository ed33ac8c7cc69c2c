//! Who owns a call in progress, as pure decisions (tested without a server). The row
//! of `active_calls` (partition: call id) is the authority: its `(node, epoch)` is the
//! fencing token, changed only by compare-and-set (a takeover's claim), and `ending`
//! is set, by compare-and-set on that token, before the call's final record is
//! written. Every write about a call in progress is a lightweight transaction on that
//! one row, so two nodes never both win it; the rows by node and by operator are
//! indexes, checked against the authority when read.

use crate::model::{ActiveCall, CallState};
use crate::Result;

/// The owner columns of a call's `active_calls` row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Owner {
    pub node: String,
    pub epoch: i64,
    /// Its final record is being written: no update or claim any more.
    pub ending: bool,
}

impl Owner {
    /// The owner from a row's columns; None when there is no row (`node` is written
    /// with every row, so a row without it is no row: a compare-and-set that did not
    /// apply to a missing row answers with nulls, or with no columns at all).
    pub fn of(node: Option<String>, epoch: Option<i64>, ending: Option<bool>) -> Option<Owner> {
        Some(Owner {
            node: node?,
            epoch: epoch.unwrap_or(0),
            ending: ending.unwrap_or(false),
        })
    }

    /// Whether this is the incarnation `(node, epoch)`.
    pub fn is(&self, node: &str, epoch: i64) -> bool {
        self.node == node && self.epoch == epoch
    }
}

/// An epoch as stored (`bigint`): epochs count starts of a node, far below `i64::MAX`.
pub fn epoch_column(epoch: u64) -> i64 {
    i64::try_from(epoch).unwrap_or(i64::MAX)
}

/// An epoch read back (a negative one, never written, reads as 0).
pub fn epoch_of(column: i64) -> u64 {
    u64::try_from(column).unwrap_or(0)
}

/// What writing a call in progress does, given its owner row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveWrite {
    /// No row: insert it (`IF NOT EXISTS`).
    Insert,
    /// The writer's own row: replace the record (`IF node AND epoch AND ending = null`).
    Update,
    /// Another incarnation owns the call, or its final record is being written:
    /// nothing is written.
    Fenced,
}

pub fn active_write(owner: Option<&Owner>, node: &str, epoch: i64) -> ActiveWrite {
    match owner {
        None => ActiveWrite::Insert,
        Some(o) if o.is(node, epoch) && !o.ending => ActiveWrite::Update,
        Some(_) => ActiveWrite::Fenced,
    }
}

/// What the writer of a call's final record does first, given its owner row.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinalWrite {
    /// No call in progress (never written, or already over), or the writer's own call
    /// already marked ending (a retry, or the finaliser of a node that died while
    /// writing it): write the record (idempotent by call id).
    Write,
    /// The writer's call: mark it ending (`IF node AND epoch`), then write the record.
    MarkEnding,
    /// Another incarnation owns the call (it was taken over): the record is not written.
    Fenced,
}

pub fn final_write(owner: Option<&Owner>, node: &str, epoch: i64) -> FinalWrite {
    match owner {
        None => FinalWrite::Write,
        Some(o) if o.is(node, epoch) && o.ending => FinalWrite::Write,
        Some(o) if o.is(node, epoch) => FinalWrite::MarkEnding,
        Some(_) => FinalWrite::Fenced,
    }
}

/// Whether the incarnation `epoch` of a node may still write its calls in progress,
/// given the node's row (`epoch`, `down`): not once declared down or superseded by a
/// newer incarnation (a woken node's queued writes would leave rows no survivor looks
/// at again). A node the store does not list (tests, a store shared by hand) may.
pub fn incarnation_current(row: Option<(Option<i64>, Option<bool>)>, epoch: i64) -> bool {
    match row {
        None => true,
        Some((e, down)) => e.unwrap_or(0) == epoch && !down.unwrap_or(false),
    }
}

/// Whether a claim from `from` is worth its compare-and-set: the call is `from`'s and
/// not ending (the compare-and-set decides; this only spares a hopeless one).
pub fn claimable(owner: Option<&Owner>, from: (&str, i64)) -> bool {
    owner.is_some_and(|o| o.is(from.0, from.1) && !o.ending)
}

/// Whether a claim for `to` won: its compare-and-set applied, or, when an earlier try
/// of the same claim failed without an answer (its outcome unknown), the row shows
/// `to` as the owner (that try applied).
pub fn claim_won(applied: bool, owner_after: Option<&Owner>, to: (&str, i64), retry: bool) -> bool {
    applied || (retry && owner_after.is_some_and(|o| o.is(to.0, to.1) && !o.ending))
}

/// A call's `active_calls` row as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRow {
    pub call_id: String,
    pub owner: Owner,
    pub started_at: i64,
    pub record: String,
    pub checkpoint: Option<String>,
}

/// The calls `node` owns among rows found through its index (which may list a call
/// twice or one that moved: index rows are written before the compare-and-set), once
/// each, oldest first.
pub fn owned_in_order(node: &str, mut rows: Vec<ActiveRow>) -> Vec<ActiveRow> {
    rows.retain(|r| r.owner.node == node);
    rows.sort_by(|a, b| (a.started_at, &a.call_id).cmp(&(b.started_at, &b.call_id)));
    rows.dedup_by(|a, b| a.call_id == b.call_id);
    rows
}

/// The call in progress a row holds: the record with its owner from the row (the
/// record's own copy may predate a claim). A call whose final record is being
/// written comes without its checkpoint: it cannot be resumed, only logged (which
/// completes that record, idempotently).
pub fn active_call(row: &ActiveRow) -> Result<ActiveCall> {
    let mut record = super::logic::record_from(&row.record, Some(&row.call_id), CallState::Active)?;
    record.node = row.owner.node.clone();
    record.owner_epoch = epoch_of(row.owner.epoch);
    Ok(ActiveCall {
        record,
        checkpoint: if row.owner.ending {
            None
        } else {
            row.checkpoint.clone()
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conformance::sample_call;

    fn owner(node: &str, epoch: i64, ending: bool) -> Owner {
        Owner {
            node: node.into(),
            epoch,
            ending,
        }
    }

    #[test]
    fn only_the_current_incarnation_writes_calls_in_progress() {
        // (node row: epoch, down), writer's epoch -> may write
        let cases = [
            (None, 3, true),
            (Some((Some(3), Some(false))), 3, true),
            (Some((Some(3), None)), 3, true),
            (Some((Some(3), Some(true))), 3, false),
            (Some((Some(4), Some(false))), 3, false),
            (Some((None, None)), 3, false),
        ];
        for (row, epoch, may) in cases {
            assert_eq!(incarnation_current(row, epoch), may, "{row:?} {epoch}");
        }
    }

    #[test]
    fn owners_from_columns() {
        assert_eq!(Owner::of(None, Some(3), Some(true)), None, "no row");
        assert_eq!(
            Owner::of(Some("n1".into()), None, None),
            Some(owner("n1", 0, false))
        );
        assert_eq!(
            Owner::of(Some("n1".into()), Some(7), Some(true)),
            Some(owner("n1", 7, true))
        );
    }

    #[test]
    fn epochs_round_trip_and_saturate() {
        let cases = [(0u64, 0i64), (5, 5), (u64::MAX, i64::MAX)];
        for (epoch, column) in cases {
            assert_eq!(epoch_column(epoch), column, "{epoch}");
        }
        assert_eq!(epoch_of(5), 5);
        assert_eq!(epoch_of(-1), 0);
    }

    #[test]
    fn updates_in_progress_are_fenced_by_owner_and_epoch() {
        let cases = [
            (None, ActiveWrite::Insert),
            (Some(owner("n1", 4, false)), ActiveWrite::Update),
            (Some(owner("n1", 4, true)), ActiveWrite::Fenced),
            (Some(owner("n1", 5, false)), ActiveWrite::Fenced),
            (Some(owner("n2", 4, false)), ActiveWrite::Fenced),
        ];
        for (row, want) in cases {
            assert_eq!(active_write(row.as_ref(), "n1", 4), want, "{row:?}");
        }
    }

    #[test]
    fn final_records_are_fenced_by_owner_and_epoch() {
        let cases = [
            (None, FinalWrite::Write),
            (Some(owner("n1", 4, false)), FinalWrite::MarkEnding),
            (Some(owner("n1", 4, true)), FinalWrite::Write),
            (Some(owner("n1", 3, false)), FinalWrite::Fenced),
            (Some(owner("n1", 3, true)), FinalWrite::Fenced),
            (Some(owner("n2", 4, false)), FinalWrite::Fenced),
        ];
        for (row, want) in cases {
            assert_eq!(final_write(row.as_ref(), "n1", 4), want, "{row:?}");
        }
    }

    #[test]
    fn claims() {
        let from = ("old", 4);
        let cases = [
            (None, false),
            (Some(owner("old", 4, false)), true),
            (Some(owner("old", 4, true)), false),
            (Some(owner("old", 3, false)), false),
            (Some(owner("a", 1, false)), false),
        ];
        for (row, want) in cases {
            assert_eq!(claimable(row.as_ref(), from), want, "{row:?}");
        }
        let to = ("a", 2);
        let won = [
            (true, None, false, true),
            (false, Some(owner("a", 2, false)), false, false),
            (false, Some(owner("a", 2, false)), true, true),
            (false, Some(owner("a", 1, false)), true, false),
            (false, Some(owner("b", 2, false)), true, false),
            (false, Some(owner("a", 2, true)), true, false),
            (false, None, true, false),
        ];
        for (applied, after, retry, want) in won {
            assert_eq!(
                claim_won(applied, after.as_ref(), to, retry),
                want,
                "{applied} {after:?} {retry}"
            );
        }
    }

    fn row(call_id: &str, node: &str, started_at: i64, ending: bool) -> ActiveRow {
        let mut r = sample_call("op", "adv", started_at);
        r.call_id = call_id.into();
        r.node = "written-by".into();
        r.state = CallState::Active;
        ActiveRow {
            call_id: call_id.into(),
            owner: owner(node, 9, ending),
            started_at,
            record: serde_json::to_string(&r).unwrap(),
            checkpoint: Some("cp".into()),
        }
    }

    #[test]
    fn a_node_owns_the_calls_its_index_lists_once_oldest_first() {
        let rows = vec![
            row("c3", "n1", 300, false),
            row("c1", "n1", 100, false),
            row("moved", "n2", 50, false),
            row("c2", "n1", 100, false),
            row("c1", "n1", 100, false),
        ];
        let ids: Vec<String> = owned_in_order("n1", rows)
            .into_iter()
            .map(|r| r.call_id)
            .collect();
        assert_eq!(ids, ["c1", "c2", "c3"]);
    }

    #[test]
    fn calls_in_progress_carry_their_owner_and_resumable_ones_their_checkpoint() {
        let live = active_call(&row("c1", "n1", 100, false)).unwrap();
        assert_eq!(
            (live.record.node.as_str(), live.record.owner_epoch),
            ("n1", 9)
        );
        assert_eq!(live.record.state, CallState::Active);
        assert_eq!(live.checkpoint.as_deref(), Some("cp"));
        let ending = active_call(&row("c1", "n1", 100, true)).unwrap();
        assert_eq!(ending.checkpoint, None);
        let mut wrong = row("c1", "n1", 100, false);
        wrong.call_id = "c2".into();
        assert!(active_call(&wrong).is_err(), "record under another id");
    }
}
