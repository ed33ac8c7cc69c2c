//! The provisioning change feed on ScyllaDB: dense change numbers in buckets, each
//! change added by compare-and-set on its bucket's `head`.

use super::logic::*;
use super::queries as q;
use super::store::{Inner, CAS_ROUNDS};
use crate::model::*;
use crate::now_ms;
use crate::{Result, StoreError};

impl Inner {
    /// The newest change: its bucket and number ((0, 0) for an empty feed).
    pub(super) async fn latest_change(&self) -> Result<(i64, i64)> {
        let hint = self
            .first::<(Option<i64>,)>(q::CH_META_GET, ())
            .await?
            .and_then(|(b,)| b)
            .unwrap_or(0)
            .max(0);
        let mut bucket = hint;
        let mut head = self.head(bucket).await?;
        // The hint is written after its bucket's first change: walk back only if a
        // bucket was dropped under it.
        let mut back = 0;
        while head.is_none() && bucket > 0 && back < CHANGE_BUCKETS_KEPT {
            bucket -= 1;
            back += 1;
            head = self.head(bucket).await?;
        }
        let Some(mut head) = head else {
            return Ok((bucket, 0));
        };
        // The hint lags when another node started a bucket: probe forward.
        while head == bucket_last(bucket) {
            match self.head(bucket + 1).await? {
                Some(h) => {
                    bucket += 1;
                    head = h;
                }
                None => break,
            }
        }
        Ok((bucket, head))
    }

    pub(super) async fn head(&self, bucket: i64) -> Result<Option<i64>> {
        Ok(self
            .first::<(Option<i64>,)>(q::CH_HEAD, (bucket,))
            .await?
            .and_then(|(h,)| h))
    }

    pub(super) async fn record_change(&self, kind: &str, key: &str) -> Result<i64> {
        for _ in 0..CAS_ROUNDS * 2 {
            let (bucket, head) = self.latest_change().await?;
            let (next, next_bucket, starts_bucket) = next_change(bucket, head);
            let now = now_ms();
            let cas = if starts_bucket {
                self.cas(q::CH_ADD_FIRST, (next, kind, key, now, next_bucket, next))
                    .await?
            } else {
                self.cas(q::CH_ADD, (next, kind, key, now, next_bucket, next, head))
                    .await?
            };
            if !cas.applied {
                continue;
            }
            if starts_bucket {
                self.write(q::CH_META_SET, (next_bucket,)).await?;
                if let Some(old) = bucket_to_drop(next_bucket) {
                    self.write(q::CH_DROP, (old,)).await?;
                }
            }
            return Ok(next);
        }
        Err(StoreError::Unavailable(
            "the change feed is contended; try again".into(),
        ))
    }

    pub(super) async fn changes_since(&self, seq: i64, limit: usize) -> Result<Changes> {
        let (last_bucket, latest) = self.latest_change().await?;
        let complete = feed_complete(seq, latest);
        let mut items = Vec::new();
        // An incomplete answer makes the caller reload everything: no items needed.
        if complete && seq < latest {
            let mut bucket = change_bucket(seq.saturating_add(1));
            while items.len() < limit && bucket <= last_bucket {
                let want = (limit - items.len()).min(i32::MAX as usize) as i32;
                let rows = self
                    .rows::<(i64, Option<String>, Option<String>)>(q::CH_SINCE, (bucket, seq, want))
                    .await?;
                items.extend(rows.into_iter().map(|(seq, kind, key)| Change {
                    seq,
                    kind: kind.unwrap_or_default(),
                    key: key.unwrap_or_default(),
                }));
                bucket += 1;
            }
        }
        Ok(Changes {
            items,
            latest,
            complete,
        })
    }
}
