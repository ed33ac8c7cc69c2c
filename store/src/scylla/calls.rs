//! Call records on ScyllaDB: idempotent inserts of finished calls (with their
//! follow-ups), calls in progress, and call-log scans by (operator, day) partitions.

use super::logic::*;
use super::queries as q;
use super::store::{now_ms, CallScanRow, Inner, CALLER_INDEX_TTL_SECONDS, CONCURRENT_CALLS};
use crate::model::*;
use crate::Result;
use futures_util::{StreamExt, TryStreamExt};

impl Inner {
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
            let by_caller = self.write(
                q::CALL_BY_CALLER_PUT,
                (
                    r.advertiser_id.as_str(),
                    r.caller_number.as_str(),
                    r.started_at,
                    r.call_id.as_str(),
                    CALLER_INDEX_TTL_SECONDS,
                ),
            );
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

    pub(super) async fn upsert_active_calls(&self, calls: &[CallRecord]) -> Result<()> {
        futures_util::stream::iter(calls.iter().map(|r| self.upsert_active(r)))
            .buffer_unordered(CONCURRENT_CALLS)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    pub(super) async fn upsert_active(&self, r: &CallRecord) -> Result<()> {
        if self.call_exists(&r.call_id).await? {
            return Ok(());
        }
        let record = record_json(r)?;
        let id = r.call_id.as_str();
        let before = self
            .first::<(Option<String>, Option<String>, Option<i64>)>(q::ACT_LOCATE, (id,))
            .await?;
        if let Some((node, op, started)) = before {
            let started = started.unwrap_or(0);
            if node.as_deref() != Some(r.node.as_str()) || started != r.started_at {
                if let Some(node) = &node {
                    self.write(q::ACT_NODE_DELETE, (node.as_str(), started, id))
                        .await?;
                }
            }
            if op.as_deref() != Some(r.operator_id.as_str()) || started != r.started_at {
                if let Some(op) = &op {
                    self.write(q::ACT_OP_DELETE, (op.as_str(), started, id))
                        .await?;
                }
            }
        }
        futures_util::future::try_join3(
            self.write(
                q::ACT_PUT,
                (id, r.operator_id.as_str(), r.node.as_str(), r.started_at),
            ),
            self.write(
                q::ACT_NODE_PUT,
                (r.node.as_str(), r.started_at, id, record.as_str()),
            ),
            self.write(
                q::ACT_OP_PUT,
                (r.operator_id.as_str(), r.started_at, id, record.as_str()),
            ),
        )
        .await?;
        // Written first, checked second: a final record that landed meanwhile (its
        // writer removes these rows after writing it) is seen here.
        if self.call_exists(id).await? {
            self.remove_active(id).await?;
        }
        Ok(())
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
