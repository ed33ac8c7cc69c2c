//! Rows of the embedded store to model values and back: the column lists each query
//! names, the decoders of a row, and the outbox insert shared by the writes that
//! queue follow-ups.

use crate::model::*;
use crate::{Result, StoreError};
use rusqlite::{params, Row};

pub(super) const CALL_COLUMNS: &str = "call_id, operator_id, advertiser_id, tracking_number, caller_number, caller_kind, \
    destination_number, started_at, answered_at, ended_at, ring_seconds, talk_seconds, result, validity, \
    ivr_digits, judgement_digit, recording, tracking_params, node, sip_code, trunk, rtp_packets_in, \
    rtp_packets_out, rtp_lost, callback_of, recording_status, attempts, end_reason, nodes, taken_over_at, recording_parts, \
    rtp_jitter_us";

pub(super) fn operator_from(row: &Row) -> rusqlite::Result<Operator> {
    Ok(Operator {
        id: row.get(0)?,
        name: row.get(1)?,
        created_at: row.get(2)?,
    })
}

pub(super) const ADVERTISER_COLUMNS: &str = "id, operator_id, name, created_at, lines";

pub(super) fn advertiser_from(row: &Row) -> rusqlite::Result<Advertiser> {
    let lines: Option<String> = row.get(4)?;
    Ok(Advertiser {
        id: row.get(0)?,
        operator_id: row.get(1)?,
        name: row.get(2)?,
        created_at: row.get(3)?,
        lines: lines.and_then(|l| serde_json::from_str(&l).ok()),
    })
}

/// A settings column as text, None when it is not UTF-8 text (a damaged row: that
/// row's error, where reading it as a String failed the whole query).
pub(super) fn settings_text(row: &Row, idx: usize) -> rusqlite::Result<Option<String>> {
    Ok(match row.get_ref(idx)? {
        rusqlite::types::ValueRef::Text(t) => String::from_utf8(t.to_vec()).ok(),
        _ => None,
    })
}

/// A row's settings (`what`: "number", "pool") from a column read by
/// [`settings_text`]: [`StoreError::Corrupt`] when it is not text or does not parse in
/// this version (a newer release's, or damaged), naming what and why.
pub(super) fn settings_from<T: serde::de::DeserializeOwned>(
    what: &str,
    settings: Option<String>,
) -> Result<T> {
    let text = settings
        .ok_or_else(|| StoreError::Corrupt(format!("{what} settings are not UTF-8 text")))?;
    serde_json::from_str(&text).map_err(|e| StoreError::Corrupt(format!("{what} settings: {e}")))
}

/// [`settings_from`] for a number.
pub(super) fn number_from_text(settings: Option<String>) -> Result<TrackingNumber> {
    settings_from("number", settings)
}

/// [`settings_from`] for a pool.
pub(super) fn pool_from_text(settings: Option<String>) -> Result<Pool> {
    settings_from("pool", settings)
}

pub(super) fn parse_enum<T: std::str::FromStr<Err = String>>(
    row: &Row,
    i: usize,
) -> rusqlite::Result<T> {
    let text: String = row.get(i)?;
    text.parse().map_err(|e: String| {
        rusqlite::Error::FromSqlConversionFailure(i, rusqlite::types::Type::Text, e.into())
    })
}

pub(super) fn lease_from(row: &Row) -> rusqlite::Result<Lease> {
    let params: String = row.get(3)?;
    Ok(Lease {
        pool_id: row.get(0)?,
        number: row.get(1)?,
        session: row.get(2)?,
        params: serde_json::from_str(&params).unwrap_or_default(),
        issued_at: row.get(4)?,
        expires_at: row.get(5)?,
    })
}

pub(super) const LEASE_COLUMNS: &str = "pool_id, number, session, params, issued_at, expires_at";

pub(super) fn call_from(row: &Row) -> rusqlite::Result<CallRecord> {
    let params: String = row.get(17)?;
    Ok(CallRecord {
        call_id: row.get(0)?,
        operator_id: row.get(1)?,
        advertiser_id: row.get(2)?,
        tracking_number: row.get(3)?,
        caller_number: row.get(4)?,
        caller_kind: parse_enum(row, 5)?,
        destination_number: row.get(6)?,
        started_at: row.get(7)?,
        answered_at: row.get(8)?,
        ended_at: row.get(9)?,
        ring_seconds: row.get(10)?,
        talk_seconds: row.get(11)?,
        result: parse_enum(row, 12)?,
        validity: parse_enum(row, 13)?,
        ivr_digits: row.get(14)?,
        judgement_digit: row.get(15)?,
        recording: row.get(16)?,
        tracking_params: serde_json::from_str(&params).unwrap_or_default(),
        node: row.get(18)?,
        sip_code: row.get(19)?,
        trunk: row.get(20)?,
        rtp_packets_in: row.get::<_, i64>(21)? as u64,
        rtp_packets_out: row.get::<_, i64>(22)? as u64,
        rtp_lost: row.get::<_, i64>(23)? as u64,
        rtp_jitter_us: row
            .get::<_, Option<i64>>(31)?
            .and_then(|us| u64::try_from(us).ok()),
        callback_of: row.get(24)?,
        recording_status: match row.get::<_, Option<String>>(25)? {
            Some(t) => Some(t.parse().map_err(|e: String| {
                rusqlite::Error::FromSqlConversionFailure(25, rusqlite::types::Type::Text, e.into())
            })?),
            None => None,
        },
        attempts: row
            .get::<_, Option<String>>(26)?
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
        state: CallState::Ended,
        stage: None,
        end_reason: row.get(27)?,
        nodes: row
            .get::<_, Option<String>>(28)?
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
        taken_over_at: row.get(29)?,
        recording_parts: row
            .get::<_, Option<String>>(30)?
            .and_then(|a| serde_json::from_str(&a).ok())
            .unwrap_or_default(),
        owner_epoch: 0,
    })
}

/// An active call's stored record (JSON).
pub(super) fn active_from(json: String) -> Result<CallRecord> {
    serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("active call: {e}")))
}

pub(super) fn webhook_from(row: &Row) -> rusqlite::Result<Webhook> {
    let events: String = row.get(4)?;
    Ok(Webhook {
        id: row.get(0)?,
        operator_id: row.get(1)?,
        url: row.get(2)?,
        secret: row.get(3)?,
        events: serde_json::from_str(&events).unwrap_or_default(),
        created_at: row.get(5)?,
    })
}

pub(super) const WEBHOOK_COLUMNS: &str = "id, operator_id, url, secret, events, created_at";

pub(super) fn enqueue(
    tx: &rusqlite::Transaction,
    item: &NewFollowUp,
    now: i64,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO outbox (kind, operator_id, target, payload, next_at, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?5)",
    )?
    .execute(params![
        item.kind.as_str(),
        item.operator_id,
        item.target,
        item.payload,
        now
    ])?;
    Ok(())
}
