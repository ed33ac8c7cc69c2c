//! Call records on ScyllaDB: idempotent inserts of finished calls (with their
//! follow-ups), calls in progress fenced by their owner (updates, the final record and
//! takeover claims are compare-and-set on the call's `active_calls` row: see
//! `ownership.rs`), and call-log scans by (operator, day) partitions.

use super::logic::*;
use super::ownership::*;
use super::queries as q;
use super::store::{
    CallScanRow, Cas, Inner, CALLER_INDEX_TTL_SECONDS, CAS_ROUNDS, CONCURRENT_CALLS,
};
use crate::model::*;
use crate::now_ms;
use crate::{Result, StoreError};
use futures_util::{StreamExt, TryStreamExt};

/// Tries of a claim's compare-and-set that fails without an answer (its outcome is
/// unknown: the next try finds out whether it applied).
const CLAIM_TRIES: usize = 3;

type ActiveGetRow = (
    Option<String>,
    Option<i64>,
    Option<bool>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

/// The owner a compare-and-set on `active_calls` found (its condition columns).
fn owner_in(cas: &Cas) -> Option<Owner> {
    Owner::of(cas.text("node"), cas.i64("epoch"), cas.bool("ending"))
}

fn contended(call_id: &str) -> StoreError {
    StoreError::Unavailable(format!("call {call_id} in progress is contended"))
}

impl Inner {
    /// The owner of a call in progress, if it has a row.
    async fn owner(&self, call_id: &str) -> Result<Option<Owner>> {
        Ok(self
            .first::<(Option<String>, Option<i64>, Option<bool>)>(q::ACT_OWNER, (call_id,))
            .await?
            .and_then(|(node, epoch, ending)| Owner::of(node, epoch, ending)))
    }

    /// A call's row of `active_calls` (the authority), if it has one.
    async fn active_row(&self, call_id: &str) -> Result<Option<ActiveRow>> {
        let row = self.first::<ActiveGetRow>(q::ACT_GET, (call_id,)).await?;
        Ok(
            row.and_then(|(node, epoch, ending, started_at, record, checkpoint)| {
                Some(ActiveRow {
                    call_id: call_id.to_string(),
                    owner: Owner::of(node, epoch, ending)?,
                    started_at: started_at.unwrap_or(0),
                    record: record.unwrap_or_default(),
                    checkpoint,
                })
            }),
        )
    }

    pub(super) async fn remove_active(&self, call_id: &str) -> Result<()> {
        let at = self
            .first::<(Option<String>, Option<String>, Option<i64>)>(q::ACT_LOCATE, (call_id,))
            .await?;
        if let Some((node, operator, started_at)) = at {
            let started_at = started_at.unwrap_or(0);
            if let Some(node) = &node {
                self.write(q::ACT_NODE_DELETE, (node.as_str(), started_at, call_id))
                    .await?;
            }
            if let Some(op) = &operator {
                self.write(q::ACT_OP_DELETE, (op.as_str(), started_at, call_id))
                    .await?;
            }
            self.write(q::ACT_DELETE, (call_id,)).await?;
        }
        Ok(())
    }

    pub(super) async fn call_exists(&self, call_id: &str) -> Result<bool> {
        Ok(self
            .first::<(Option<Vec<i64>>, Option<bool>)>(q::CALL_STATE, (call_id,))
            .await?
            .is_some())
    }

    pub(super) async fn insert_calls(
        &self,
        calls: &[CallRecord],
        follow_ups: &[(usize, NewFollowUp)],
    ) -> Result<()> {
        let now = now_ms();
        let items: Vec<Vec<&NewFollowUp>> = (0..calls.len())
            .map(|i| {
                follow_ups
                    .iter()
                    .filter(|(of, _)| *of == i)
                    .map(|(_, item)| item)
                    .collect()
            })
            .collect();
        // Ids in batch order (claims return oldest first, by id), then the calls
        // written concurrently: a batch is bounded by the call-log writer, and each
        // call is a handful of round trips.
        let mut ids = self
            .next_ids(items.iter().map(Vec::len).sum())
            .await?
            .into_iter();
        let jobs: Vec<_> = calls
            .iter()
            .zip(items)
            .map(|(r, items)| {
                let ids: Vec<i64> = ids.by_ref().take(items.len()).collect();
                self.insert_call(r, items, ids, now)
            })
            .collect();
        futures_util::stream::iter(jobs)
            .buffer_unordered(CONCURRENT_CALLS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    pub(super) async fn insert_call(
        &self,
        r: &CallRecord,
        items: Vec<&NewFollowUp>,
        ids: Vec<i64>,
        now: i64,
    ) -> Result<()> {
        if !self.may_write_final(r).await? {
            return Ok(()); // the call was taken over: its record is the new owner's
        }
        let row = CallRow::of(r)?;
        // The compare-and-set that makes the insert idempotent: the first writer of a
        // call id records the follow-up ids it assigns with it.
        let claim = self
            .cas(
                q::CALL_CLAIM,
                (
                    row.call_id.as_str(),
                    row.operator_id.as_str(),
                    row.started_at,
                    row.record.as_str(),
                    &ids,
                ),
            )
            .await?;
        let (ids, complete) = if claim.applied {
            (ids, false)
        } else {
            match (claim.i64_list("follow_up_ids"), claim.bool("complete")) {
                (Some(ids), Some(done)) => (ids, done),
                _ => match self
                    .first::<(Option<Vec<i64>>, Option<bool>)>(q::CALL_STATE, (r.call_id.as_str(),))
                    .await?
                {
                    Some((ids, done)) => (ids.unwrap_or_default(), done.unwrap_or(false)),
                    None => (Vec::new(), true),
                },
            }
        };
        if !complete {
            // First write, or a writer that stopped half-way: the rest is idempotent
            // (same keys, same values; follow-ups under the ids recorded above).
            let by_day = self.write(
                q::CALL_BY_DAY_PUT,
                (
                    row.operator_id.as_str(),
                    row.day,
                    row.started_at,
                    row.call_id.as_str(),
                    row.advertiser_id.as_str(),
                    row.tracking_number.as_str(),
                    row.result.as_str(),
                    row.validity.as_str(),
                    row.record.as_str(),
                ),
            );
            let day = self.write(q::CALL_DAY_PUT, (row.operator_id.as_str(), row.day));
            let by_caller = self.index_by_caller(r);
            let queued = futures_util::future::try_join_all(
                items
                    .iter()
                    .zip(ids.iter())
                    .map(|(item, id)| self.enqueue(item, *id, now)),
            );
            futures_util::future::try_join4(by_day, day, by_caller, queued).await?;
            self.write(q::CALL_COMPLETE, (r.call_id.as_str(),)).await?;
        }
        self.remove_active(&r.call_id).await
    }

    /// Whether the final record of `r` may be written: the call in progress is its
    /// writer's (`r.node`, `r.owner_epoch`), now marked ending so that no claim can
    /// take it any more, or there is none. Fenced off when another incarnation owns it.
    async fn may_write_final(&self, r: &CallRecord) -> Result<bool> {
        let (id, node, epoch) = (
            r.call_id.as_str(),
            r.node.as_str(),
            epoch_column(r.owner_epoch),
        );
        let mut owner = self.owner(id).await?;
        for _ in 0..CAS_ROUNDS {
            match final_write(owner.as_ref(), node, epoch) {
                FinalWrite::Write => return Ok(true),
                FinalWrite::Fenced => return Ok(false),
                FinalWrite::MarkEnding => {
                    let cas = self.cas(q::ACT_ENDING, (id, node, epoch)).await?;
                    if cas.applied {
                        return Ok(true);
                    }
                    owner = owner_in(&cas);
                }
            }
        }
        Err(contended(id))
    }

    /// The call's row in `calls_by_caller`, what the duplicate check reads.
    async fn index_by_caller(&self, r: &CallRecord) -> Result<()> {
        let row = (
            r.advertiser_id.as_str(),
            r.caller_number.as_str(),
            r.started_at,
            r.call_id.as_str(),
            CALLER_INDEX_TTL_SECONDS,
        );
        self.write(q::CALL_BY_CALLER_PUT, row).await
    }

    pub(super) async fn upsert_active_calls(&self, calls: &[ActiveCall]) -> Result<()> {
        futures_util::stream::iter(calls.iter().map(|a| self.upsert_active(a)))
            .buffer_unordered(CONCURRENT_CALLS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Writes a call in progress if its writer owns it (compare-and-set on the owner:
    /// see `ownership.rs`), then its row by operator.
    pub(super) async fn upsert_active(&self, a: &ActiveCall) -> Result<()> {
        let r = &a.record;
        let (id, node, epoch) = (
            r.call_id.as_str(),
            r.node.as_str(),
            epoch_column(r.owner_epoch),
        );
        if self.call_exists(id).await? {
            return Ok(());
        }
        // Read before the compare-and-set (not in it: another partition); the node row
        // changes only when the node is declared down or starts again.
        let standing = self
            .first::<(Option<i64>, Option<bool>)>(q::NODE_STANDING, (node,))
            .await?;
        if !incarnation_current(standing, epoch) {
            return Ok(());
        }
        let record = record_json(r)?;
        let mut owner = self.owner(id).await?;
        let mut indexed = false;
        let mut written = false;
        for _ in 0..CAS_ROUNDS {
            let cas = match active_write(owner.as_ref(), node, epoch) {
                ActiveWrite::Fenced => break,
                ActiveWrite::Insert => {
                    // Listed under its node before it exists: a call is never owned
                    // without being found by `active_calls_of` (stale index rows are
                    // checked against the authority when read).
                    // And under its caller: the duplicate check sees calls in
                    // progress as well as ended ones (the final record writes the
                    // same row again).
                    if !indexed {
                        self.write(q::ACT_NODE_PUT, (node, r.started_at, id))
                            .await?;
                        self.index_by_caller(r).await?;
                        indexed = true;
                    }
                    let values = (
                        id,
                        r.operator_id.as_str(),
                        node,
                        epoch,
                        r.started_at,
                        record.as_str(),
                        a.checkpoint.as_deref(),
                    );
                    self.cas(q::ACT_NEW, values).await?
                }
                ActiveWrite::Update => match &a.checkpoint {
                    Some(cp) => {
                        let values = (record.as_str(), cp.as_str(), id, node, epoch);
                        self.cas(q::ACT_UPDATE_CHECKPOINT, values).await?
                    }
                    None => {
                        self.cas(q::ACT_UPDATE, (record.as_str(), id, node, epoch))
                            .await?
                    }
                },
            };
            if cas.applied {
                written = true;
                break;
            }
            owner = owner_in(&cas);
        }
        if !written {
            if active_write(owner.as_ref(), node, epoch) != ActiveWrite::Fenced {
                return Err(contended(id));
            }
            // Fenced: an index row put under this node for a call another node owns
            // is not this node's.
            if indexed && owner.is_some_and(|o| o.node != node) {
                self.write(q::ACT_NODE_DELETE, (node, r.started_at, id))
                    .await?;
            }
            return Ok(());
        }
        self.write(
            q::ACT_OP_PUT,
            (r.operator_id.as_str(), r.started_at, id, record.as_str()),
        )
        .await?;
        // Written first, checked second: a final record that landed meanwhile (its
        // writer removes these rows after writing it) is seen here.
        if self.call_exists(id).await? {
            self.remove_active(id).await?;
        }
        Ok(())
    }

    /// The calls in progress `node` owns, oldest first: its index rows, each checked
    /// against the call's row (the authority).
    pub(super) async fn active_calls_of(&self, node: &str) -> Result<Vec<ActiveCall>> {
        let mut ids: Vec<String> = self
            .rows::<(String,)>(q::ACT_OF_NODE, (node,))
            .await?
            .into_iter()
            .map(|(id,)| id)
            .collect();
        ids.sort_unstable();
        ids.dedup();
        let rows: Vec<Option<ActiveRow>> =
            futures_util::stream::iter(ids.iter().map(|id| self.active_row(id)))
                .buffer_unordered(CONCURRENT_CALLS)
                .try_collect()
                .await?;
        Ok(owned_in_order(node, rows.into_iter().flatten().collect())
            .iter()
            .map(active_call)
            .filter_map(|call| crate::readable_listed("a call in progress's", call))
            .collect())
    }

    /// Moves a call in progress from incarnation `from` to `to` by compare-and-set on
    /// its owner; the call as stored if this claim won.
    pub(super) async fn claim_call(
        &self,
        call_id: &str,
        from: (&str, u64),
        to: (&str, u64),
    ) -> Result<Option<ActiveCall>> {
        let (from, to) = ((from.0, epoch_column(from.1)), (to.0, epoch_column(to.1)));
        // A claimer the cluster declared down (or a newer incarnation replaced) claims
        // nothing: read before the compare-and-set, as `upsert_active` does.
        let standing = self
            .first::<(Option<i64>, Option<bool>)>(q::NODE_STANDING, (to.0,))
            .await?;
        if !incarnation_current(standing, to.1) {
            return Ok(None);
        }
        let Some(before) = self.active_row(call_id).await? else {
            return Ok(None);
        };
        if !claimable(Some(&before.owner), from) {
            return Ok(None);
        }
        let started_at = before.started_at;
        let moves = from.0 != to.0;
        if moves {
            // Listed under the new owner before it is one (see `upsert_active`).
            self.write(q::ACT_NODE_PUT, (to.0, started_at, call_id))
                .await?;
        }
        let mut tries = 0;
        let (won, after) = loop {
            tries += 1;
            match self
                .cas(q::ACT_CLAIM, (to.0, to.1, call_id, from.0, from.1))
                .await
            {
                Ok(cas) => {
                    let after = owner_in(&cas);
                    break (claim_won(cas.applied, after.as_ref(), to, tries > 1), after);
                }
                Err(e) if tries < CLAIM_TRIES => {
                    tracing::warn!(%e, call_id, "claim of a call in progress unanswered; trying again");
                }
                Err(e) => {
                    // One of the unanswered tries may have been applied: an owner read
                    // back as this node settles it (a won claim reported as an error
                    // left a row owned by a node that runs no call: a review). Read
                    // otherwise, it settles nothing (a plain read does not see a
                    // proposal not yet committed): the index row under this node stays,
                    // for its recovery to find the call if the claim did win.
                    match self.active_row(call_id).await {
                        Ok(Some(now)) if now.owner.is(to.0, to.1) => {
                            break (true, Some(now.owner));
                        }
                        _ => return Err(e),
                    }
                }
            }
        };
        if !won {
            // The index row put under `to` is stale unless `to` owns the call anyway.
            if moves && after.is_none_or(|o| o.node != to.0) {
                self.write(q::ACT_NODE_DELETE, (to.0, started_at, call_id))
                    .await?;
            }
            return Ok(None);
        }
        if moves {
            // The claim is won: a stale index row under the old owner costs a filtered
            // read, an error here would lose the call (the claimer would not run it).
            if let Err(e) = self
                .write(q::ACT_NODE_DELETE, (from.0, started_at, call_id))
                .await
            {
                tracing::warn!(%e, call_id, "the old owner's index row of a claimed call stays");
            }
        }
        // The call as it is now (its old owner may have updated it since it was read
        // above; it can no longer), else as read above.
        let mut row = match self.active_row(call_id).await {
            Ok(Some(now)) if now.owner.is(to.0, to.1) => now,
            _ => before,
        };
        row.owner = Owner {
            node: to.0.to_string(),
            epoch: to.1,
            ending: false,
        };
        active_call(&row).map(Some)
    }

    pub(super) async fn scan_active(
        &self,
        query: &CallQuery,
        visit: &mut dyn FnMut(CallRecord) -> bool,
    ) -> Result<()> {
        let rows = self
            .rows::<(Option<String>,)>(q::ACT_OF_OPERATOR, (query.operator_id.as_str(),))
            .await?;
        let (lower, upper) = scan_bounds(query);
        let mut calls = Vec::new();
        for (record,) in rows {
            let r = record_from(record.as_deref().unwrap_or(""), None, CallState::Active)?;
            let key = (r.started_at, r.call_id.clone());
            if key > lower
                && key < upper
                && matches_filters(
                    query,
                    &r.advertiser_id,
                    &r.tracking_number,
                    r.result.as_str(),
                    r.validity.as_str(),
                )
            {
                calls.push(r);
            }
        }
        calls.sort_by(|a, b| (a.started_at, &a.call_id).cmp(&(b.started_at, &b.call_id)));
        if query.order == SortOrder::Desc {
            calls.reverse();
        }
        for r in calls.into_iter().take(query.limit.unwrap_or(usize::MAX)) {
            if !visit(r) {
                break;
            }
        }
        Ok(())
    }

    pub(super) async fn scan_calls(
        &self,
        query: &CallQuery,
        visit: &mut dyn FnMut(CallRecord) -> bool,
    ) -> Result<()> {
        let late = || {
            query
                .deadline
                .is_some_and(|d| std::time::Instant::now() >= d)
        };
        if late() {
            return Err(StoreError::scan_timed_out());
        }
        if query.state == CallState::Active {
            return self.scan_active(query, visit).await;
        }
        let Some((first_day, last_day)) = day_range(query) else {
            return Ok(());
        };
        let op = query.operator_id.as_str();
        let days: Vec<i64> = self
            .rows::<(i64,)>(q::CALL_DAYS, (op, first_day, last_day))
            .await?
            .into_iter()
            .map(|(d,)| d)
            .collect();
        let (lower, upper) = scan_bounds(query);
        let statement = match query.order {
            SortOrder::Asc => q::CALLS_ASC,
            SortOrder::Desc => q::CALLS_DESC,
        };
        let mut left = query.limit.unwrap_or(usize::MAX);
        let mut failed = None;
        let mut stop = left == 0;
        for day in scan_days(query, &days) {
            if stop {
                break;
            }
            self.each(
                statement,
                (
                    op,
                    day,
                    lower.0,
                    lower.1.as_str(),
                    upper.0,
                    upper.1.as_str(),
                ),
                |(call_id, adv, number, result, validity, record): CallScanRow| {
                    // Checked on every row read, matching or not (the driver pages).
                    if late() {
                        failed = Some(StoreError::scan_timed_out());
                        stop = true;
                        return false;
                    }
                    let keep = matches_filters(
                        query,
                        adv.as_deref().unwrap_or(""),
                        number.as_deref().unwrap_or(""),
                        result.as_deref().unwrap_or(""),
                        validity.as_deref().unwrap_or(""),
                    );
                    if !keep {
                        return true;
                    }
                    match record_from(
                        record.as_deref().unwrap_or(""),
                        Some(&call_id),
                        CallState::Ended,
                    ) {
                        Ok(r) => {
                            left -= 1;
                            stop = !visit(r) || left == 0;
                        }
                        Err(e) => {
                            failed = Some(e);
                            stop = true;
                        }
                    }
                    !stop
                },
            )
            .await?;
        }
        match failed {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}
