//! `GET /v1/calls/stream` (an operator's key: the operator's calls; an advertiser's:
//! that advertiser's) as server-sent events,
//! from every node of the cluster: `call.started` (admitted), `call.queued` (waiting
//! for a line), `call.ringing` (offered to a destination: the record names it),
//! `call.answered` and `call.ended` (the final record). The incoming-call screen
//! (`/ui/live`) reads it.
//!
//! Read from the store, where every node writes its calls in progress (within half a
//! second of each change: see the node's call log) and their final records, once a
//! second: no node forwards events to another, and a node that dies takes no event
//! with it. A call that starts and ends between two reads is still told, from its
//! final record (started, answered if it was, ended). After the first read's events
//! comes `stream.ready` (what was in progress has been told): a client that
//! reconnects looks up the calls it showed that the new stream did not tell (they
//! ended in between). [`Tracker`] turns the reads into events (pure); the task around
//! it reads, sends and keeps the connection alive.
//!
//! Bounded: streams in all and per operator (`api.max_streams`,
//! `api.max_streams_per_operator`), each cut after `api.stream_max_seconds` (a client
//! reconnects) or when its client stops reading for `api.export_send_timeout_seconds`,
//! and ended (`stream.closed`) when its key is revoked, looked up every few reads;
//! each read takes at most [`MAX_CALLS`] calls in progress and as many recent ends.

use crate::auth::CallReader;
use crate::calls::{call_json, refused};
use crate::metrics::Held;
use crate::{ApiError, ApiState};
use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::json;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;
use tsunagu_store::{CallQuery, CallRecord, CallStage, CallState, SortOrder, Store};

/// How often the store is read.
const POLL: Duration = Duration::from_secs(1);
/// Every this many reads (five seconds at one a second) the stream's key is looked up
/// again: a revoked key's stream ends within that.
const KEY_CHECK_READS: u32 = 5;
/// The most calls in progress (and recent ends) one read takes.
pub const MAX_CALLS: usize = 2000;
/// How far before the previous read each read looks for final records of calls that
/// started and ended between two reads (a call ended within half a second of its
/// start has no record in progress). Their final records are written within a
/// second of the end; one whose node's writer stalled longer is told only if it
/// started within this of the read before.
const RECENT_MS: i64 = 10_000;
/// Ended calls remembered so that none is told twice.
const ENDED_KEPT: usize = 20_000;
/// Reads a call in progress that vanished without a final record (its record not yet
/// written, or the row of a call whose node was lost) is looked for before it is
/// forgotten untold.
const VANISHED_READS: u8 = 5;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct StreamParams {
    advertiser_id: Option<String>,
}

/// What a call is doing, in the order a call goes through them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Started,
    Queued,
    Ringing,
    Answered,
    Ended,
}

impl Stage {
    pub fn event(self) -> &'static str {
        match self {
            Stage::Started => "call.started",
            Stage::Queued => "call.queued",
            Stage::Ringing => "call.ringing",
            Stage::Answered => "call.answered",
            Stage::Ended => "call.ended",
        }
    }

    /// Where a record says its call is.
    pub fn of(r: &CallRecord) -> Stage {
        if r.state == CallState::Ended {
            Stage::Ended
        } else if r.answered_at.is_some() {
            Stage::Answered
        } else {
            match r.stage {
                Some(CallStage::Queued) => Stage::Queued,
                Some(CallStage::Ringing) => Stage::Ringing,
                None => Stage::Started,
            }
        }
    }
}

/// One event to send: the stage reached and the call's record as last read.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub stage: Stage,
    pub record: CallRecord,
}

/// What a stream told of a call in progress.
#[derive(Debug, Clone)]
struct Told {
    stage: Stage,
    destination: Option<String>,
    missed: u8,
}

/// The calls a stream has told of, and what it told (pure).
#[derive(Debug, Default)]
pub struct Tracker {
    /// Calls in progress told so far: their last stage told, the destination it
    /// named, and reads since they were last seen in progress (see
    /// [`VANISHED_READS`]).
    live: HashMap<String, Told>,
    /// Calls whose end was told (bounded: the oldest forgotten first).
    ended: HashSet<String>,
    ended_order: VecDeque<String>,
}

impl Tracker {
    /// The events of one read: `active`, the calls in progress; `ended`, final records
    /// (those of calls that started recently, and those looked up for calls that
    /// vanished from `active`). A call first seen ended is told started (and answered
    /// if it was) before its end; a call whose stage moved on is told the stage it is
    /// at, not the ones it passed between two reads (a queued call seen ringing:
    /// ringing; a call seen answered straight after it started: answered, not
    /// ringing); a stage never goes back (a
    /// row written late), but a call ringing on another destination than told (the
    /// next destination of a hunt) is told ringing again. Ends come first, oldest
    /// first; then calls in progress in the order of their start.
    pub fn update(&mut self, active: &[CallRecord], ended: &[CallRecord]) -> Vec<Event> {
        let mut events = Vec::new();
        let mut ended: Vec<&CallRecord> = ended
            .iter()
            .filter(|r| r.state == CallState::Ended && !self.ended.contains(&r.call_id))
            .collect();
        ended.sort_by(|a, b| (a.ended_at, &a.call_id).cmp(&(b.ended_at, &b.call_id)));
        ended.dedup_by(|a, b| a.call_id == b.call_id);
        for r in ended {
            let told = self.live.remove(&r.call_id).map(|t| t.stage);
            if told.is_none() {
                events.push(Event {
                    stage: Stage::Started,
                    record: r.clone(),
                });
            }
            let answered_told = told.is_some_and(|s| s >= Stage::Answered);
            if r.answered_at.is_some() && !answered_told {
                events.push(Event {
                    stage: Stage::Answered,
                    record: r.clone(),
                });
            }
            events.push(Event {
                stage: Stage::Ended,
                record: r.clone(),
            });
            self.remember_end(&r.call_id);
        }
        let mut seen = HashSet::new();
        let mut active: Vec<&CallRecord> = active
            .iter()
            .filter(|r| r.state == CallState::Active && !self.ended.contains(&r.call_id))
            .collect();
        active.sort_by(|a, b| (a.started_at, &a.call_id).cmp(&(b.started_at, &b.call_id)));
        for r in active {
            if !seen.insert(r.call_id.clone()) {
                continue;
            }
            let stage = Stage::of(r);
            let before = self.live.get(&r.call_id).cloned();
            if before.is_none() {
                events.push(Event {
                    stage: Stage::Started,
                    record: r.clone(),
                });
            }
            let (told, destination) = before
                .map(|t| (t.stage, t.destination))
                .unwrap_or((Stage::Started, None));
            let moved_on = stage == Stage::Ringing
                && told == Stage::Ringing
                && r.destination_number.is_some()
                && r.destination_number != destination;
            let tell = stage > told || moved_on;
            if tell {
                events.push(Event {
                    stage,
                    record: r.clone(),
                });
            }
            let told = Told {
                stage: stage.max(told),
                destination: if tell {
                    r.destination_number.clone()
                } else {
                    destination
                },
                missed: 0,
            };
            self.live.insert(r.call_id.clone(), told);
        }
        // Calls in progress not in this read: looked for again, then forgotten.
        self.live.retain(|id, t| {
            if seen.contains(id) {
                return true;
            }
            t.missed = t.missed.saturating_add(1);
            t.missed <= VANISHED_READS
        });
        events
    }

    /// Calls told in progress: those a read does not find in progress have their
    /// final records looked up by id (see [`read`]).
    pub fn live(&self) -> HashSet<String> {
        self.live.keys().cloned().collect()
    }

    /// The first read of a stream: the calls that ended before it are not told (a
    /// screen opened now shows what is in progress), only remembered.
    pub fn skip_ended(&mut self, ended: &[CallRecord]) {
        for r in ended {
            self.remember_end(&r.call_id);
        }
    }

    fn remember_end(&mut self, id: &str) {
        if self.ended.insert(id.to_string()) {
            self.ended_order.push_back(id.to_string());
        }
        while self.ended_order.len() > ENDED_KEPT {
            if let Some(old) = self.ended_order.pop_front() {
                self.ended.remove(&old);
            }
        }
    }
}

/// An event as the stream sends it (`text/event-stream`): its type, and the call as
/// `GET /v1/calls/{call_id}` shows it.
pub fn frame(e: &Event) -> String {
    let data = json!({"type": e.stage.event(), "call": call_json(&e.record)});
    format!("event: {}\ndata: {data}\n\n", e.stage.event())
}

/// What one read of the store gives.
struct Read {
    active: Vec<CallRecord>,
    ended: Vec<CallRecord>,
}

/// Reads the operator's calls in progress (of the advertiser, if named), the final
/// records of calls that started since `recent_from`, and those of the `live` calls
/// (told in progress) no longer in progress.
fn read(
    store: &dyn Store,
    operator: &str,
    advertiser: Option<&str>,
    recent_from: i64,
    live: &HashSet<String>,
) -> tsunagu_store::Result<Read> {
    let query = |state, from_ms| CallQuery {
        operator_id: operator.to_string(),
        advertiser_id: advertiser.map(str::to_string),
        from_ms,
        order: SortOrder::Asc,
        limit: Some(MAX_CALLS),
        state,
        deadline: Some(std::time::Instant::now() + Duration::from_secs(5)),
        ..Default::default()
    };
    let mut active = Vec::new();
    store.scan_calls(&query(CallState::Active, None), &mut |r| {
        active.push(r);
        true
    })?;
    let mut ended = Vec::new();
    let mut recent = query(CallState::Ended, Some(recent_from));
    recent.order = SortOrder::Desc; // past the cap, the newest
    store.scan_calls(&recent, &mut |r| {
        ended.push(r);
        true
    })?;
    let present: HashSet<&str> = active.iter().map(|r| r.call_id.as_str()).collect();
    let gone = live.iter().filter(|id| !present.contains(id.as_str()));
    for id in gone.take(MAX_CALLS) {
        if let Some(r) = store.get_call(operator, id)? {
            let ours = advertiser.is_none_or(|a| a == r.advertiser_id);
            if r.state == CallState::Ended && ours {
                ended.push(r);
            }
        }
    }
    Ok(Read { active, ended })
}

pub async fn stream(
    reader: CallReader,
    State(st): State<Arc<ApiState>>,
    params: Result<Query<StreamParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(mut p) = params.map_err(|e| ApiError::bad_request(None, e.body_text()))?;
    p.advertiser_id = reader.narrow(&st, p.advertiser_id.take())?;
    let d = &st.defences;
    let permit = d
        .streams
        .try_start(&reader.owner.operator_id)
        .map_err(|why| {
            d.metrics.streams_refused.inc();
            refused(why, "call streams", 5)
        })?;
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(16);
    let st2 = st.clone();
    tokio::spawn(async move {
        let _permit = permit;
        produce(st2, reader, p.advertiser_id, tx).await;
    });
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|s| (Ok::<_, std::io::Error>(bytes::Bytes::from(s)), rx))
    });
    Ok((
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::HeaderName::from_static("x-accel-buffering"), "no"),
        ],
        Body::from_stream(body),
    )
        .into_response())
}

/// Reads `reader`'s calls (of `advertiser`, if named), tells and keeps alive until
/// the client goes, stops reading, the stream's time is up, or its key no longer
/// speaks for the same (revoked, or its advertiser deleted): looked up every
/// [`KEY_CHECK_READS`] reads, the stream then ends with `stream.closed` (a revoked key
/// kept a screen's stream for up to `api.stream_max_seconds`: a review).
async fn produce(
    st: Arc<ApiState>,
    reader: CallReader,
    advertiser: Option<String>,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    let d = &st.defences;
    let metrics = d.metrics.clone();
    let _active = Held::new(&metrics.streams_active);
    let ends_at = tokio::time::Instant::now() + d.stream_max_duration;
    let (send_timeout, keepalive) = (d.export_send_timeout, d.stream_keepalive);
    let send = |text: String| {
        let tx = tx.clone();
        async move {
            matches!(
                tokio::time::timeout(send_timeout, tx.send(text)).await,
                Ok(Ok(()))
            )
        }
    };
    // Tells the client how long to wait before it reconnects (EventSource reads it).
    if !send("retry: 2000\n\n".into()).await {
        return;
    }
    let mut tracker = Tracker::default();
    let mut first = true;
    let mut last_read = tsunagu_store::now_ms();
    let mut quiet = tokio::time::Instant::now();
    // Reads once a second, or more often where the idle timeout is shorter than two
    // (a keepalive is due before it).
    let mut tick = tokio::time::interval(POLL.min(keepalive).max(Duration::from_millis(100)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut reads: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = tx.closed() => return,
        }
        if tokio::time::Instant::now() >= ends_at {
            return;
        }
        let store = st.store.clone();
        let (operator, adv) = (reader.owner.operator_id.clone(), advertiser.clone());
        let live = tracker.live();
        let recent_from = last_read.saturating_sub(RECENT_MS);
        let started = tsunagu_store::now_ms();
        reads = reads.wrapping_add(1);
        let hash = reads
            .is_multiple_of(KEY_CHECK_READS)
            .then(|| reader.key_hash.clone());
        let got = tokio::task::spawn_blocking(move || {
            let now_owner = hash.map(|h| store.key_owner(&h));
            (
                now_owner,
                read(&*store, &operator, adv.as_deref(), recent_from, &live),
            )
        })
        .await;
        let (now_owner, got) = got.unwrap_or_else(|_| {
            let failed = tsunagu_store::StoreError::Unavailable("the read task failed".into());
            (None, Err(failed))
        });
        if let Some(Ok(now)) = now_owner {
            if now.as_ref() != Some(&reader.owner) {
                let closed = "event: stream.closed\ndata: {\"reason\":\"key revoked\"}\n\n";
                let _ = send(closed.into()).await;
                return;
            }
        }
        match got {
            Ok(got) => {
                last_read = started;
                let first = std::mem::take(&mut first);
                if first {
                    tracker.skip_ended(&got.ended);
                }
                let events = tracker.update(&got.active, &got.ended);
                for e in &events {
                    if !send(frame(e)).await {
                        return;
                    }
                    metrics.stream_events.inc();
                    quiet = tokio::time::Instant::now();
                }
                if first {
                    // What was in progress has been told: a client that reconnects
                    // looks up the calls it showed that this stream did not tell.
                    let ready = json!({"calls_in_progress": tracker.live.len()});
                    if !send(format!("event: stream.ready\ndata: {ready}\n\n")).await {
                        return;
                    }
                    quiet = tokio::time::Instant::now();
                }
            }
            // The store did not answer: the next read tries again (from the same read
            // before, so nothing that ended meanwhile is missed), and the keepalive
            // still goes.
            _ => {
                metrics.stream_read_failures.inc();
            }
        }
        if quiet.elapsed() >= keepalive {
            if !send(": keepalive\n\n".into()).await {
                return;
            }
            quiet = tokio::time::Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{api, api_with};
    use futures_util::StreamExt;
    use tsunagu_store::conformance::sample_call;

    /// A record of call `id` as a read finds it: in progress at `stage` (with its
    /// answer for `Answered`), or ended (answered or not).
    fn rec(id: &str, stage: Stage, started_at: i64) -> CallRecord {
        let mut r = sample_call("op", "adv", started_at);
        r.call_id = id.into();
        r.state = CallState::Active;
        r.answered_at = None;
        match stage {
            Stage::Started => {}
            Stage::Queued => r.stage = Some(CallStage::Queued),
            Stage::Ringing => r.stage = Some(CallStage::Ringing),
            Stage::Answered => r.answered_at = Some(started_at + 1000),
            Stage::Ended => r.state = CallState::Ended,
        }
        r
    }

    fn told(events: &[Event]) -> Vec<(&str, Stage)> {
        events
            .iter()
            .map(|e| (e.record.call_id.as_str(), e.stage))
            .collect()
    }

    /// Reads in order (calls in progress, ended records) and the events each gives.
    #[test]
    fn reads_become_events() {
        use Stage::*;
        let mut answered_end = rec("c", Ended, 3);
        answered_end.answered_at = Some(4);
        let rows: Vec<(Vec<CallRecord>, Vec<CallRecord>, Vec<(&str, Stage)>)> = vec![
            // A call admitted, then another queued at once (told started first).
            (
                vec![rec("a", Started, 1), rec("b", Queued, 2)],
                vec![],
                vec![("a", Started), ("b", Started), ("b", Queued)],
            ),
            // Nothing new: nothing told.
            (
                vec![rec("a", Started, 1), rec("b", Queued, 2)],
                vec![],
                vec![],
            ),
            // `a` rings and is answered between two reads: answered only (a stage is
            // told once, the latest); `b` rings; `c` started and ended between reads,
            // answered: started, answered, ended.
            (
                vec![rec("a", Answered, 1), rec("b", Ringing, 2)],
                vec![answered_end.clone()],
                vec![
                    ("c", Started),
                    ("c", Answered),
                    ("c", Ended),
                    ("a", Answered),
                    ("b", Ringing),
                ],
            ),
            // A row written late, behind what was told: nothing (never back); the
            // same final record again: nothing.
            (
                vec![rec("a", Ringing, 1), rec("b", Ringing, 2)],
                vec![answered_end],
                vec![],
            ),
            // `a` ends (found by id once gone); `b` ends unanswered; a late row of `b`
            // in progress after its end is ignored.
            (
                vec![rec("b", Ringing, 2)],
                vec![rec("a", Ended, 1), rec("b", Ended, 2)],
                vec![("a", Ended), ("b", Ended)],
            ),
        ];
        let mut t = Tracker::default();
        let hunted = |dest: &str| {
            let mut r = rec("h", Ringing, 5);
            r.destination_number = Some(dest.into());
            r
        };
        let mut rows = rows;
        rows.extend([
            // A hunt: ringing on the first destination, then (told again) on the
            // next; the same destination read again is not told again.
            (
                vec![hunted("0311112222")],
                vec![],
                vec![("h", Started), ("h", Ringing)],
            ),
            (vec![hunted("0311112222")], vec![], vec![]),
            (vec![hunted("0322223333")], vec![], vec![("h", Ringing)]),
            (vec![], vec![rec("h", Ended, 5)], vec![("h", Ended)]),
        ]);
        for (i, (active, ended, want)) in rows.iter().enumerate() {
            let events = t.update(active, ended);
            assert_eq!(told(&events), *want, "read {i}");
        }
        assert!(t.live().is_empty(), "{:?}", t.live());
    }

    /// A call told in progress that vanishes without a final record (its node lost,
    /// the row taken by nobody yet) is looked for a few reads, then forgotten.
    #[test]
    fn a_vanished_call_is_forgotten_after_a_few_reads() {
        let mut t = Tracker::default();
        t.update(&[rec("a", Stage::Ringing, 1)], &[]);
        for _ in 0..VANISHED_READS {
            t.update(&[], &[]);
            assert!(t.live().contains("a"));
        }
        t.update(&[], &[]);
        assert!(t.live().is_empty());
    }

    /// The first read tells calls in progress, not those that ended before.
    #[test]
    fn calls_ended_before_the_stream_are_not_told() {
        let mut t = Tracker::default();
        let ended = [rec("old", Stage::Ended, 1)];
        t.skip_ended(&ended);
        let events = t.update(&[rec("a", Stage::Started, 2)], &ended);
        assert_eq!(told(&events), [("a", Stage::Started)]);
    }

    /// The next frame of a stream's body within `within`, as text.
    async fn next_frame(
        body: &mut (impl futures_util::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin),
        within: Duration,
    ) -> Option<String> {
        match tokio::time::timeout(within, body.next()).await {
            Ok(Some(Ok(b))) => Some(String::from_utf8_lossy(&b).into_owned()),
            _ => None,
        }
    }

    /// Reads frames into `frames` until they hold `what`, 5 s at most.
    async fn wait_for(
        body: &mut (impl futures_util::Stream<Item = Result<bytes::Bytes, axum::Error>> + Unpin),
        frames: &mut String,
        what: &str,
    ) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !frames.contains(what) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match next_frame(body, left).await {
                Some(f) => frames.push_str(&f),
                None => panic!("no `{what}` within 5 s: {frames}"),
            }
        }
    }

    /// The stream tells the operator's calls as another node writes them to the shared
    /// store: started, ringing (naming the destination), answered, ended; another
    /// operator's call and another advertiser's (when one is named) never.
    #[tokio::test]
    async fn a_stream_tells_the_operator_s_calls_written_by_any_node() {
        let a = api();
        let peer = a.peer(); // the node carrying the calls, on the same store
        let other = a.store.create_operator("other").unwrap().id;
        let path = format!("/v1/calls/stream?advertiser_id={}", a.advertiser);
        let resp = a.call(&a.router, "GET", &path, Some(&a.key), "").await;
        assert_eq!(resp.status(), StatusCode::OK);
        let kind = resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .to_string();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        let mut body = resp.into_body().into_data_stream();
        assert_eq!(
            next_frame(&mut body, Duration::from_secs(5))
                .await
                .as_deref(),
            Some("retry: 2000\n\n")
        );
        // The first read: nothing in progress yet.
        let mut frames = String::new();
        wait_for(&mut body, &mut frames, "event: stream.ready").await;
        assert!(
            frames.contains("data: {\"calls_in_progress\":0}"),
            "{frames}"
        );
        let now = tsunagu_store::now_ms();
        let progress = |op: &str, adv: &str, id: &str, stage: Stage| {
            let mut r = rec(id, stage, now);
            r.operator_id = op.into();
            r.advertiser_id = adv.into();
            r.node = "n2".into();
            tsunagu_store::ActiveCall {
                record: r,
                checkpoint: None,
            }
        };
        let mine = |id, stage| progress(&a.operator, &a.advertiser, id, stage);
        let write = |calls: Vec<tsunagu_store::ActiveCall>| {
            peer.store.upsert_active_calls(&calls).unwrap();
        };
        write(vec![
            mine("call_mine", Stage::Ringing),
            progress(&other, "adv_other", "call_theirs", Stage::Ringing),
            progress(&a.operator, "adv_else", "call_elsewhere", Stage::Ringing),
        ]);
        wait_for(&mut body, &mut frames, "event: call.ringing").await;
        assert!(frames.contains("event: call.started\ndata: {"), "{frames}");
        assert!(
            frames.contains("\"destination_number\":\"0311112222\""),
            "{frames}"
        );
        write(vec![mine("call_mine", Stage::Answered)]);
        wait_for(&mut body, &mut frames, "event: call.answered").await;
        let mut ended = rec("call_mine", Stage::Ended, now);
        ended.operator_id = a.operator.clone();
        ended.advertiser_id = a.advertiser.clone();
        ended.node = "n2".into(); // its owner's final record (a write of another is fenced off)
        peer.store.insert_calls(&[ended], &[]).unwrap();
        wait_for(&mut body, &mut frames, "event: call.ended").await;
        assert!(!frames.contains("call_theirs"), "{frames}");
        assert!(!frames.contains("call_elsewhere"), "{frames}");
        let order: Vec<&str> = frames
            .lines()
            .filter_map(|l| l.strip_prefix("event: "))
            .collect();
        assert_eq!(
            order,
            [
                "stream.ready",
                "call.started",
                "call.ringing",
                "call.answered",
                "call.ended"
            ]
        );
        assert_eq!(a.state.defences.metrics.streams_active.get(), 1);
        drop(body);
        for _ in 0..50 {
            if a.state.defences.metrics.streams_active.get() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("the stream's task outlived its client");
    }

    /// A stream ends once its key is revoked (looked up every few reads; the reads
    /// come every 200 ms here, the keepalive being that short), with
    /// `stream.closed`: a revoked key kept a screen's stream until
    /// `api.stream_max_seconds`. Another key's revocation ends nothing.
    #[tokio::test]
    async fn a_stream_ends_when_its_key_is_revoked() {
        let a = api_with(&tsunagu_config::ApiConfig::default(), |d| {
            d.stream_keepalive = Duration::from_millis(200);
        });
        let other = tsunagu_store::new_api_key();
        let other_id = a
            .store
            .add_api_key(&a.operator, &tsunagu_store::hash_api_key(&other), "tsk_o")
            .unwrap()
            .id;
        let open = |key: String| {
            let a = &a;
            async move {
                let resp = a
                    .call(&a.router, "GET", "/v1/calls/stream", Some(&key), "")
                    .await;
                assert_eq!(resp.status(), StatusCode::OK);
                let mut body = resp.into_body().into_data_stream();
                let mut frames = String::new();
                wait_for(&mut body, &mut frames, "event: stream.ready").await;
                body
            }
        };
        let mut mine = open(a.key.clone()).await;
        let mut theirs = open(other.clone()).await;
        assert!(a
            .store
            .revoke_api_key(&a.operator, &other_id, None)
            .unwrap());
        let mut frames = String::new();
        wait_for(&mut theirs, &mut frames, "event: stream.closed").await;
        assert!(frames.contains("\"reason\":\"key revoked\""), "{frames}");
        assert!(
            next_frame(&mut theirs, Duration::from_secs(2))
                .await
                .is_none(),
            "the stream ended"
        );
        // The key still valid goes on: a keepalive comes, nothing closes.
        let mut kept = String::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while tokio::time::Instant::now() < deadline {
            if let Some(f) = next_frame(&mut mine, Duration::from_millis(500)).await {
                kept.push_str(&f);
            }
        }
        assert!(kept.contains(": keepalive"), "{kept}");
        assert!(!kept.contains("stream.closed"), "{kept}");
    }

    /// Streams are capped per operator (and in all): past the cap 503 with
    /// Retry-After; a closed stream gives its place back.
    #[tokio::test]
    async fn streams_are_capped() {
        let config = tsunagu_config::ApiConfig {
            max_streams_per_operator: 1,
            ..Default::default()
        };
        let a = api_with(&config, |_| {});
        let first = a
            .call(&a.router, "GET", "/v1/calls/stream", Some(&a.key), "")
            .await;
        assert_eq!(first.status(), StatusCode::OK);
        let second = a.send("GET", "/v1/calls/stream", Some(&a.key), "").await;
        assert_eq!(
            second.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            second.text()
        );
        assert!(second.headers.contains_key(header::RETRY_AFTER));
        assert_eq!(a.state.defences.metrics.streams_refused.get(), 1);
        let unknown = a
            .send("GET", "/v1/calls/stream?number=1", Some(&a.key), "")
            .await;
        assert_eq!(
            unknown.status,
            StatusCode::BAD_REQUEST,
            "{}",
            unknown.text()
        );
        let anonymous = a.send("GET", "/v1/calls/stream", None, "").await;
        assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
        drop(first);
        for _ in 0..50 {
            let again = a
                .call(&a.router, "GET", "/v1/calls/stream", Some(&a.key), "")
                .await;
            if again.status() == StatusCode::OK {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("a closed stream kept its place");
    }
}
