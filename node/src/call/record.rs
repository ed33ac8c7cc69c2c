//! A call's records: the record in progress (written at admission, when it queues, at
//! each forwarding attempt and at answer), the
//! final record and its log entry when the call ends, and the record of a call that
//! could not be carried at all.

use super::*;

impl Call {
    /// What every record of this call says (see [`base_record`]).
    fn base_record(&self) -> CallRecord {
        base_record(
            &self.ctx,
            &self.id,
            &self.number,
            &self.caller,
            self.started,
            self.started_at_ms,
        )
    }

    /// The call's record as it stands, in progress (state `active`): written at
    /// admission, when it queues, at each forwarding attempt and at answer, so the
    /// store knows every call a node carries and where it is (its `stage`).
    pub(super) fn progress_record(&self) -> CallRecord {
        let mut record = self.base_record();
        record.state = CallState::Active;
        record.ended_at = 0;
        record.destination_number = self.destination();
        record.answered_at = self.answered.map(|(_, ms)| ms);
        record.result = if self.answered.is_some() {
            CallResult::Answered
        } else {
            CallResult::Failed
        };
        record.sip_code = if self.answered.is_some() { 200 } else { 0 };
        record.trunk = self
            .last_trunk
            .map(|t| self.ctx.routing.trunks[t].name.clone());
        record.attempts = self.attempts.clone();
        // Known before the answer: a record finalised by another node (the call lost
        // with its node) says it too.
        record.ivr_digits = Some(self.ivr_digits.clone()).filter(|d| !d.is_empty());
        record.stage = match (&self.answered, &self.queued, &self.b) {
            (Some(_), _, _) => None,
            (None, Some(q), _) if q.waiting() => Some(tsunagu_store::CallStage::Queued),
            (None, _, Some(_)) => Some(tsunagu_store::CallStage::Ringing),
            _ => None,
        };
        record
    }

    /// The record in progress after a change the live call stream tells (queued,
    /// offered to a destination: see [`Call::progress_record`]): with the checkpoint
    /// where the node keeps them (a survivor needs it too), and only while the writer
    /// is ready (see `MESSAGES_PER_CALL`). Records in progress wait half a second in
    /// the writer and replace one another there, so a call answered or ended sooner
    /// costs the store nothing more.
    pub(super) fn note_progress(&mut self) {
        if self.ctx.checkpoints {
            return self.checkpoint_now(false);
        }
        if self.ctx.log.ready() {
            self.ctx.log.active(self.progress_record(), None);
        }
    }

    pub(super) fn finish(&mut self) {
        if self.phase == Phase::Done {
            return;
        }
        // A re-offer still pending is answered (the judgement's end, or an end that
        // did not go through `end_and_wait`).
        self.abandon_reoffer();
        self.phase = Phase::Done;
        self.stop_ring_timer();
        self.stop_ring_guard();
        // Stamped before the lines go: the next queued caller may be answered on
        // another worker within milliseconds, and its `answered_at` must not come
        // before this call's `ended_at` (a line's calls never overlap in the log).
        let ended_at_ms = self.ended_ms.unwrap_or_else(now_ms);
        self.held_lines.clear(); // the next queued caller may go
        self.leave_queue();
        let ended = self.talk_end.unwrap_or_else(Instant::now);
        let ring_end = self.answered.map(|(t, _)| t).unwrap_or(ended);
        let mut record = self.base_record();
        // A wall clock stepped back mid-call put the end before the answer: then the
        // end is the answer plus the talk time the monotonic clock measured.
        record.ended_at = match self.answered {
            Some((t, at)) if ended_at_ms < at => {
                let talked = i64::try_from(ended.duration_since(t).as_millis()).unwrap_or(0);
                at.saturating_add(talked)
            }
            _ => ended_at_ms,
        };
        record.destination_number = self.destination();
        record.answered_at = self.answered.map(|(_, ms)| ms);
        record.ring_seconds = rounded_seconds(ring_end.duration_since(self.started));
        record.talk_seconds = self
            .answered
            .map(|(t, _)| rounded_seconds(ended.duration_since(t)))
            .unwrap_or(0);
        record.result = self.result;
        // What the caller was sent: a caller the node answered itself (its menu) got
        // 200, whatever came of the call after (it was logged with the 480, 486 or
        // 487 of what followed: a review).
        record.sip_code = if self.a_answered {
            200
        } else {
            self.upstream_code
        };
        record.end_reason = self.end_reason.map(str::to_string);
        if !self.nodes.is_empty() {
            record.nodes = self.carried_by();
            record.taken_over_at = self.taken_over_at;
        }
        record.ivr_digits = Some(self.ivr_digits.clone()).filter(|d| !d.is_empty());
        // Still open: the caller hung up first, or the node ended the call while it
        // rang (its ring guard, a drain, the longest call). Told apart: all were
        // `cancelled`, which says the caller hung up (a review).
        let (code, open) = match self.end_reason {
            None => (0, "cancelled"),
            // The node's CANCEL ended it.
            Some("max_ring") => (487, "no_answer"),
            Some(_) => (487, "failed"),
        };
        self.attempt_ended(code, open);
        record.attempts = std::mem::take(&mut self.attempts);
        record.judgement_digit = self.judgement_digit.map(String::from);
        if let Some(closed) = self.closed_result {
            // Answered by the closed-hours destination: the record still says why.
            record
                .tracking_params
                .insert("closed".into(), closed.to_string());
        }
        record.trunk = self
            .last_trunk
            .map(|t| self.ctx.routing.trunks[t].name.clone());
        if let Some(r) = &self.relay {
            (record.rtp_packets_in, record.rtp_packets_out) = r.stats.packets();
            record.rtp_lost = r.stats.lost();
            let (from_caller, from_callee) = r.stats.jitter_us();
            let jitter = &self.ctx.metrics.calls.rtp_jitter_seconds;
            let directions = tsunagu_media::metrics::DIRECTIONS;
            for (direction, measured) in directions.into_iter().zip([from_caller, from_callee]) {
                if let Some(us) = measured {
                    let label = tsunagu_media::metrics::DirectionLabel { direction };
                    jitter.get_or_create(&label).observe(us as f64 / 1e6);
                    record.rtp_jitter_us = record.rtp_jitter_us.max(Some(us));
                }
            }
        }
        let (ring_seconds, talk_seconds) = (record.ring_seconds, record.talk_seconds);
        let (pin, pout) = (record.rtp_packets_in, record.rtp_packets_out);
        let m = &self.ctx.metrics.calls;
        m.ended
            .get_or_create(&ResultLabel {
                result: self.result.as_str(),
            })
            .inc();
        m.ring_seconds
            .observe(ring_end.duration_since(self.started).as_secs_f64());
        if self.attempt > 0 {
            m.attempts.observe(f64::from(self.attempt));
        }
        if let Some((t, _)) = self.answered {
            m.talk_seconds
                .observe(ended.duration_since(t).as_secs_f64());
        }
        tracing::info!(result = %self.result, ring_seconds, talk_seconds, rtp_in = pin, rtp_out = pout, "call ended");
        let mut entry = log_entry(record, &self.number);
        entry.caller_verified = self.caller_verified;
        entry.ivr_offered = self.ivr_offered;
        match (self.recording.take(), self.relay.as_ref()) {
            (Some(rel), Some(relay)) => {
                // The record waits for the recording file to be complete.
                let span = self.span.clone();
                // A call taken over records in parts: this node's part covers the talk
                // time since it started.
                let mut parts = self.recording_parts.clone();
                let covered =
                    talk_seconds.saturating_sub((self.recording_offset_ms.max(0) / 1000) as u32);
                if !parts.is_empty() {
                    parts.push(tsunagu_store::RecordingPart {
                        node: self.ctx.node_id.clone(),
                        path: rel.clone(),
                        offset_ms: self.recording_offset_ms,
                    });
                }
                let several_parts = parts.len() > 1;
                let mut entry = entry;
                entry.record.recording = Some(parts.first().map_or(rel, |p| p.path.clone()));
                entry.record.recording_parts = parts;
                let record = PendingRecord::new(entry, &self.ctx);
                // The wait's timer first, so that the close can cancel it: one sleeping
                // task per recorded call for 30 s, holding its span, was what a normal
                // close left behind (a review).
                let (gave_up, late_span) = (record.clone(), span.clone());
                let timer = tokio::spawn(async move {
                    tokio::time::sleep(RECORDING_CLOSE_WAIT).await;
                    if let Some(r) = PendingRecord::take(&gave_up) {
                        late_span.in_scope(|| tracing::warn!("the recorder did not close the recording in time (a stalled disk or share): the call's record is written without it, truncated"));
                        r.write(RecordingStatus::Truncated);
                    }
                })
                .abort_handle();
                relay.stop_recording(Box::new(move |outcome| {
                    timer.abort();
                    let Some(r) = PendingRecord::take(&record) else {
                        span.in_scope(|| tracing::info!(seconds = outcome.seconds, error = ?outcome.error, "recording closed after its call's record was written"));
                        return;
                    };
                    let mut status = recording_status(
                        outcome.seconds,
                        covered,
                        outcome.error.is_some(),
                        outcome.heard,
                    );
                    if status == RecordingStatus::Missing && several_parts {
                        // Earlier parts hold the call's audio; this one (the call ended
                        // as it moved here) holds none.
                        status = RecordingStatus::Truncated;
                    }
                    span.in_scope(|| tracing::info!(seconds = outcome.seconds, status = %status, error = ?outcome.error, "recording closed"));
                    r.write(status);
                }));
            }
            _ if !self.recording_parts.is_empty() => {
                // Taken over with a recording, and nothing recorded here (no ports
                // for it, or the call ended as it moved): the earlier parts hold the
                // call's audio and stay in its record.
                let mut entry = entry;
                let parts = self.recording_parts.clone();
                entry.record.recording = parts.first().map(|p| p.path.clone());
                entry.record.recording_status = Some(RecordingStatus::Truncated);
                entry.record.recording_parts = parts;
                self.ctx.log.write(entry);
            }
            _ => self.ctx.log.write(entry),
        }
        // Ended here only if nothing had marked it logged first (the supervisor does,
        // at once, for a call handed to another node or dropped by the cluster).
        self.wrote_record = !self.logged.swap(true, Ordering::AcqRel);
        self.ep().unregister(&self.a.info.call_id);
        if let Some(b) = &self.b {
            self.ep().unregister(b.call_id());
        }
        self.relay = None;
    }
}

/// Whether a closed recording holds the conversation: audio within 1.5 s of the talk
/// time and no write error is complete; a file of silence alone (nobody's audio
/// arrived) is missing.
pub fn recording_status(
    seconds: f64,
    talk_seconds: u32,
    write_failed: bool,
    heard: bool,
) -> RecordingStatus {
    if seconds <= 0.0 || !heard {
        RecordingStatus::Missing
    } else if write_failed || seconds + 1.5 < f64::from(talk_seconds) {
        RecordingStatus::Truncated
    } else {
        RecordingStatus::Complete
    }
}

/// How long a recorded call's final record waits for its recording to close (the
/// file written and synced): a recorder stalled on a hung disk or network share held
/// every such record, for as long as the stall, and for good if the node stopped
/// meanwhile (a review). Past it the record is written `truncated`: what reached the
/// file is not known.
#[cfg(not(test))]
const RECORDING_CLOSE_WAIT: Duration = Duration::from_secs(30);
/// Unit tests stall a recorder and wait 3 s.
#[cfg(test)]
const RECORDING_CLOSE_WAIT: Duration = Duration::from_secs(3);

/// A recorded call's final record, written once: by its recording's close, or
/// without the recording's outcome once [`RECORDING_CLOSE_WAIT`] has passed (the
/// first of the two to take it). Holds the call log's promise until then.
struct PendingRecord {
    entry: LogEntry,
    log: crate::call_log::CallLog,
    metrics: crate::metrics::CallMetrics,
    _promise: crate::call_log::Promise,
}

impl PendingRecord {
    fn new(entry: LogEntry, ctx: &NodeContext) -> Arc<std::sync::Mutex<Option<PendingRecord>>> {
        Arc::new(std::sync::Mutex::new(Some(PendingRecord {
            entry,
            log: ctx.log.clone(),
            metrics: ctx.metrics.calls.clone(),
            _promise: ctx.log.promise(),
        })))
    }

    /// The record, if the other side has not written it yet.
    fn take(once: &std::sync::Mutex<Option<PendingRecord>>) -> Option<PendingRecord> {
        once.lock().unwrap_or_else(|p| p.into_inner()).take()
    }

    /// Writes it with its recording's `status`, counted (the promise is kept until
    /// the write is queued).
    fn write(mut self, status: RecordingStatus) {
        self.metrics
            .recordings
            .get_or_create(&StatusLabel {
                status: status.as_str(),
            })
            .inc();
        self.entry.record.recording_status = Some(status);
        self.log.write(self.entry);
    }
}

/// Seconds rounded to the nearest second, as call logs count them.
fn rounded_seconds(d: Duration) -> u32 {
    ((d.as_millis() + 500) / 1000) as u32
}

/// A call's record before its outcome is known: who, what, when, and result `failed`
/// with nothing answered. Validity is judged later by the call-log writer.
fn base_record(
    ctx: &NodeContext,
    id: &str,
    number: &TrackingNumber,
    caller: &Caller,
    started: Instant,
    started_at_ms: i64,
) -> CallRecord {
    CallRecord {
        call_id: id.to_string(),
        operator_id: number.operator_id.clone(),
        advertiser_id: number.advertiser_id.clone(),
        tracking_number: number.number.clone(),
        caller_number: caller.number.clone(),
        caller_kind: caller.kind,
        destination_number: None,
        started_at: started_at_ms,
        answered_at: None,
        ended_at: now_ms(),
        ring_seconds: rounded_seconds(started.elapsed()),
        talk_seconds: 0,
        result: CallResult::Failed,
        validity: Validity::InvalidShort,
        ivr_digits: None,
        judgement_digit: None,
        recording: None,
        tracking_params: number.tracking_params.clone(),
        node: ctx.node_id.clone(),
        sip_code: 500,
        trunk: None,
        rtp_packets_in: 0,
        rtp_packets_out: 0,
        rtp_lost: 0,
        rtp_jitter_us: None,
        callback_of: None,
        recording_status: None,
        attempts: Vec::new(),
        state: CallState::Ended,
        stage: None,
        end_reason: None,
        nodes: Vec::new(),
        taken_over_at: None,
        recording_parts: Vec::new(),
        owner_epoch: ctx.epoch.load(Ordering::Relaxed),
    }
}

fn log_entry(record: CallRecord, number: &Arc<TrackingNumber>) -> LogEntry {
    LogEntry {
        record,
        number: number.clone(),
        caller_verified: false,
        ivr_offered: false,
    }
}

/// The record of a call whose actor died (or was abandoned at shutdown, with
/// `end_reason`): what the call table knows, result `failed`.
pub fn failed_record(ctx: &NodeContext, seed: &CallSeed, end_reason: Option<&str>) -> LogEntry {
    let mut record = base_record(
        ctx,
        &seed.id,
        &seed.number,
        &seed.caller,
        seed.started,
        seed.started_at_ms,
    );
    record.end_reason = end_reason.map(str::to_string);
    log_entry(record, &seed.number)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recording_statuses() {
        // Each row: seconds in the file, talk seconds, a write failed, audio heard.
        let rows = [
            (0.0, 10, false, true, RecordingStatus::Missing),
            (0.0, 0, true, true, RecordingStatus::Missing),
            (9.0, 10, false, true, RecordingStatus::Complete),
            (8.4, 10, false, true, RecordingStatus::Truncated),
            (9.9, 10, true, true, RecordingStatus::Truncated),
            (0.5, 0, false, true, RecordingStatus::Complete),
            // Silence alone: nobody's audio was recorded.
            (4.0, 4, false, false, RecordingStatus::Missing),
            (4.0, 4, true, false, RecordingStatus::Missing),
        ];
        for (seconds, talk, failed, heard, want) in rows {
            assert_eq!(
                recording_status(seconds, talk, failed, heard),
                want,
                "{seconds} {talk} {failed} {heard}"
            );
        }
    }
}
