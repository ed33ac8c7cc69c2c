//! Number leases on ScyllaDB: a session's slots (its cap), the number taken by
//! compare-and-set on its own partition, extensions of a session's live lease, and a
//! client's live leases (its cap, counted by a read before a number is taken).

use super::logic::*;
use super::queries as q;
use super::store::{
    json, parse, slot_from, Inner, SlotRow, CANDIDATES_PER_READ, CAS_ROUNDS,
    LEASE_HISTORY_MARGIN_SECONDS, SESSION_SLOT_MARGIN_SECONDS,
};
use crate::model::*;
use crate::{Result, StoreError};
use std::collections::BTreeMap;

impl Inner {
    /// A lease under `caps` (see `Store::issue_lease_capped`); the client's row of
    /// `client_leases` is written for a new lease and an extension alike, so an
    /// extended lease goes on counting toward its client's cap.
    pub(super) async fn lease(
        &self,
        pool: &Pool,
        session: Option<&str>,
        params: &BTreeMap<String, String>,
        now: i64,
        caps: LeaseCaps<'_>,
    ) -> Result<IssueOutcome> {
        let outcome = self
            .lease_for_session(pool, session, params, now, caps)
            .await?;
        if let (IssueOutcome::Leased(lease), Some((client, _))) = (&outcome, caps.client) {
            let ttl = ttl_seconds(lease.expires_at, now, 0);
            let counted = self
                .write(
                    q::CL_PUT,
                    (
                        pool.id.as_str(),
                        client,
                        lease.number.as_str(),
                        lease.expires_at,
                        ttl,
                    ),
                )
                .await;
            // The number is leased: answering an error would lose it for its hold
            // time. The client's count misses it instead (logged).
            if let Err(e) = counted {
                tracing::warn!(%e, pool = %pool.id, "a client's lease was not counted");
            }
        }
        Ok(outcome)
    }

    /// Whether the client already holds its cap of live leases in the pool.
    async fn client_full(
        &self,
        pool: &Pool,
        caps: LeaseCaps<'_>,
        now: i64,
    ) -> Result<Option<IssueOutcome>> {
        let Some((client, cap)) = caps.client else {
            return Ok(None);
        };
        let live: Vec<i64> = self
            .rows::<(Option<i64>,)>(q::CL_OF, (pool.id.as_str(), client))
            .await?
            .into_iter()
            .filter_map(|(e,)| e)
            .filter(|&e| e > now)
            .collect();
        Ok(client_cap_reached(&live, cap, now)
            .map(|retry_at_ms| IssueOutcome::ClientFull { retry_at_ms }))
    }

    async fn lease_for_session(
        &self,
        pool: &Pool,
        session: Option<&str>,
        params: &BTreeMap<String, String>,
        now: i64,
        caps: LeaseCaps<'_>,
    ) -> Result<IssueOutcome> {
        let cap = caps.per_session;
        let hold_ms = i64::from(pool.hold_seconds) * 1000;
        let recycle_ms = i64::from(pool.recycle_seconds) * 1000;
        let expires_at = now.saturating_add(hold_ms);
        let params_json = json(params)?;
        let slot_ttl = ttl_seconds(
            expires_at,
            now,
            i64::from(pool.recycle_seconds) + SESSION_SLOT_MARGIN_SECONDS,
        );
        let Some(session) = session else {
            if let Some(full) = self.client_full(pool, caps, now).await? {
                return Ok(full);
            }
            return Ok(
                match self
                    .take_number(pool, None, &params_json, now, expires_at, recycle_ms)
                    .await?
                {
                    Some(lease) => IssueOutcome::Leased(lease),
                    None => IssueOutcome::Exhausted,
                },
            );
        };
        for _ in 0..CAS_ROUNDS {
            let slots: Vec<SessionSlot> = self
                .rows::<SlotRow>(q::SL_OF, (pool.id.as_str(), session))
                .await?
                .into_iter()
                .map(slot_from)
                .collect();
            if matches!(pool.mode, PoolMode::Dynamic | PoolMode::Callback) {
                if let Some(live) = lease_to_extend(&slots, now) {
                    if let Some(lease) = self
                        .extend(pool, session, live, expires_at, now, slot_ttl)
                        .await?
                    {
                        return Ok(IssueOutcome::Leased(lease));
                    }
                }
            }
            let (slot, seen) = match choose_slot(&slots, now, cap) {
                SlotChoice::Full { retry_at_ms } => {
                    return Ok(IssueOutcome::SessionFull { retry_at_ms })
                }
                SlotChoice::Take { slot, seen_claim } => (slot, seen_claim),
            };
            // After the session's cap, as the embedded store checks them.
            if let Some(full) = self.client_full(pool, caps, now).await? {
                return Ok(full);
            }
            let claim = crate::new_id("claim");
            let reserved = match &seen {
                None => {
                    self.cas(
                        q::SL_NEW,
                        (
                            pool.id.as_str(),
                            session,
                            slot,
                            claim.as_str(),
                            now,
                            expires_at,
                            slot_ttl,
                        ),
                    )
                    .await?
                }
                Some(seen) => {
                    self.cas(
                        q::SL_REUSE,
                        (
                            slot_ttl,
                            claim.as_str(),
                            now,
                            expires_at,
                            pool.id.as_str(),
                            session,
                            slot,
                            seen.as_str(),
                        ),
                    )
                    .await?
                }
            };
            if !reserved.applied {
                continue;
            }
            let key = (pool.id.as_str(), session, slot, claim.as_str());
            return match self
                .take_number(
                    pool,
                    Some(session),
                    &params_json,
                    now,
                    expires_at,
                    recycle_ms,
                )
                .await?
            {
                Some(lease) => {
                    self.cas(
                        q::SL_FILL,
                        (
                            slot_ttl,
                            lease.number.as_str(),
                            params_json.as_str(),
                            lease.issued_at,
                            lease.expires_at,
                            key.0,
                            key.1,
                            key.2,
                            key.3,
                        ),
                    )
                    .await?;
                    Ok(IssueOutcome::Leased(lease))
                }
                None => {
                    self.cas(q::SL_RELEASE, key).await?;
                    Ok(IssueOutcome::Exhausted)
                }
            };
        }
        Err(StoreError::Unavailable(
            "the session's lease slots are contended; try again".into(),
        ))
    }

    /// Extends a session's live lease (compare-and-set on the number: it must still be
    /// this lease's); None if the lease was lost meanwhile.
    pub(super) async fn extend(
        &self,
        pool: &Pool,
        session: &str,
        live: &SessionSlot,
        expires_at: i64,
        now: i64,
        slot_ttl: i32,
    ) -> Result<Option<Lease>> {
        let Some(number) = live.number.as_deref() else {
            return Ok(None);
        };
        let until = live.expires_at.max(expires_at);
        let moved = self
            .cas(q::NL_EXTEND, (until, number, session, live.issued_at))
            .await?;
        if !moved.applied {
            return Ok(None);
        }
        let claim = live.claim.as_deref().unwrap_or("");
        self.cas(
            q::SL_EXTEND,
            (slot_ttl, until, pool.id.as_str(), session, live.slot, claim),
        )
        .await?;
        let params = live.params.as_deref().unwrap_or("{}");
        self.write(
            q::LH_PUT,
            (
                number,
                live.issued_at,
                until,
                pool.id.as_str(),
                session,
                params,
                ttl_seconds(until, now, LEASE_HISTORY_MARGIN_SECONDS),
            ),
        )
        .await?;
        self.write(q::PN_SET, (live.issued_at, until, pool.id.as_str(), number))
            .await?;
        Ok(Some(Lease {
            number: number.to_string(),
            pool_id: pool.id.clone(),
            session: Some(session.to_string()),
            params: parse("lease params", params)?,
            issued_at: live.issued_at,
            expires_at: until,
        }))
    }

    /// Leases the free number issued longest ago by compare-and-set on its
    /// `number_leases` row; None when none is free.
    pub(super) async fn take_number(
        &self,
        pool: &Pool,
        session: Option<&str>,
        params_json: &str,
        now: i64,
        expires_at: i64,
        recycle_ms: i64,
    ) -> Result<Option<Lease>> {
        for _ in 0..4 {
            let rows: Vec<PoolNumber> = self
                .rows::<(String, Option<i32>, Option<i64>, Option<i64>)>(
                    q::PN_OF,
                    (pool.id.as_str(),),
                )
                .await?
                .into_iter()
                .map(|(number, position, last, expires)| PoolNumber {
                    number,
                    position: position.unwrap_or(0),
                    last_issued_at: last.unwrap_or(0),
                    expires_at: expires.unwrap_or(0),
                })
                .collect();
            let candidates = free_in_order(&rows, now, recycle_ms);
            if candidates.is_empty() {
                return Ok(None);
            }
            // Only numbers whose settings this version reads are issued (see the
            // SQLite issuer); a pool of none but unreadable free numbers is exhausted.
            // At most 16 unreadable ones are looked past, as in SQLite.
            let (mut tried, mut unreadable) = (0, 0);
            for c in candidates {
                if tried == CANDIDATES_PER_READ || unreadable == 16 {
                    break;
                }
                if !self.readable_number(&c.number).await? {
                    unreadable += 1;
                    continue;
                }
                tried += 1;
                let taken = self
                    .cas(
                        q::NL_TAKE,
                        (
                            now,
                            now,
                            expires_at,
                            session,
                            params_json,
                            c.number.as_str(),
                            pool.id.as_str(),
                            free_if_expired_by(now, recycle_ms),
                        ),
                    )
                    .await?;
                if taken.applied {
                    self.write(
                        q::PN_SET,
                        (now, expires_at, pool.id.as_str(), c.number.as_str()),
                    )
                    .await?;
                    self.write(
                        q::LH_PUT,
                        (
                            c.number.as_str(),
                            now,
                            expires_at,
                            pool.id.as_str(),
                            session,
                            params_json,
                            ttl_seconds(expires_at, now, LEASE_HISTORY_MARGIN_SECONDS),
                        ),
                    )
                    .await?;
                    return Ok(Some(Lease {
                        number: c.number.clone(),
                        pool_id: pool.id.clone(),
                        session: session.map(str::to_string),
                        params: parse("lease params", params_json)?,
                        issued_at: now,
                        expires_at,
                    }));
                }
                // Someone else took it: bring the pool's row up to date.
                if let Some((last, expires)) = self
                    .first::<(Option<i64>, Option<i64>)>(q::NL_GET, (c.number.as_str(),))
                    .await?
                {
                    self.write(
                        q::PN_SET,
                        (
                            last.unwrap_or(0),
                            expires.unwrap_or(0),
                            pool.id.as_str(),
                            c.number.as_str(),
                        ),
                    )
                    .await?;
                }
            }
            if tried == 0 {
                return Ok(None);
            }
        }
        Err(StoreError::Unavailable(
            "the pool's free numbers are contended; try again".into(),
        ))
    }

    /// Whether `number`'s settings read in this version (logged when they do not).
    async fn readable_number(&self, number: &str) -> Result<bool> {
        let row = self
            .first::<(Option<String>, Option<String>, Option<String>)>(q::NUM_GET, (number,))
            .await?;
        let settings = row
            .and_then(|(_, _, settings)| settings)
            .unwrap_or_default();
        Ok(parse::<TrackingNumber>("number settings", &settings)
            .inspect_err(|e| {
                tracing::warn!(%number, %e, "a pool number's settings cannot be read: not issued")
            })
            .is_ok())
    }
}
