//! The node's running calls ([`Calls`]) and their supervisor. A call task is started
//! through [`Calls`], which hears how it ended and cleans up after one that panicked or
//! was stopped — the caller gets a 500 if still unanswered, the call's routes and media
//! are released (its state drops), and a `failed` log record is written, so no call is
//! ever lost from the logs. The supervisor actor acts on all calls at once (drain,
//! shutdown, takeover, hand-over) and its sweep ends calls older than
//! `node.max_call_seconds`.

use crate::call::{failed_record, CallArgs, CallRef, CallSeed, Exit};
use crate::context::NodeContext;
use futures_util::FutureExt;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub enum SupervisorMsg {
    /// Runs a call claimed from another node (see `call::takeover`).
    Resume(Box<crate::call::takeover::ResumeArgs>),
    Sweep,
    /// Ends every call now, for this reason (see `CallMsg::End`).
    EndAll(&'static str),
    /// Every call still waiting for the far end to confirm its teardown writes its
    /// record now (the guard timer, early).
    FinishAll,
    /// Logs every call task still running as failed with this reason and stops it;
    /// answers when done.
    Abandon(&'static str, ractor::RpcReplyPort<usize>),
    /// The cluster declared this incarnation down: every call ends silently
    /// (`CallMsg::Vanish`); answers how many there were.
    VanishAll(ractor::RpcReplyPort<usize>),
    /// A peer took these calls over (a drain): they end here silently.
    HandedOff(Vec<String>),
    /// Test hook: makes every running call actor panic.
    #[cfg(test)]
    CrashAll,
    /// Test hook: puts these messages in a running call's inbox at once (a test with
    /// one call), as when they arrive together at a busy node.
    #[cfg(test)]
    InjectAll(Vec<crate::call::CallMsg>),
}

/// A local message (never sent to another node): ractor_cluster, in the build for the
/// cluster, turns off ractor's blanket `Message` impl, so local message types say so.
impl ractor::Message for SupervisorMsg {}

/// The calls running on this node. Admission (on the SIP core's task) starts a call
/// here directly, and the call's task takes itself out when it ends: a call's start
/// and end no longer pass through one actor's mailbox (that hop was one of five a
/// setup crossed, and one task every call of the node queued behind). The lock is
/// held only to insert, remove or walk the table, never across an await.
#[derive(Default)]
pub struct Calls {
    table: Mutex<Table>,
}

#[derive(Default)]
struct Table {
    calls: HashMap<u64, (CallSeed, CallRef)>,
    next: u64,
}

impl Calls {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Enters a call in the table; its number and its inbox.
    fn enter(&self, ctx: &NodeContext, seed: CallSeed) -> (u64, CallRef) {
        let calls = &ctx.metrics.calls;
        let me = CallRef::new(
            calls.mailbox_messages.clone(),
            calls.mailbox_dropped.clone(),
        );
        let mut t = self.table();
        let n = t.next;
        t.next += 1;
        t.calls.insert(n, (seed, me.clone()));
        (n, me)
    }

    /// Starts a new call's task.
    pub fn spawn(self: &Arc<Self>, args: CallArgs) {
        let (ctx, seed) = (args.ctx.clone(), CallSeed::new(&args));
        self.start(ctx, seed, |me| crate::call::run(Box::new(args), me));
    }

    /// Starts the task of a call claimed from another node.
    pub fn resume(self: &Arc<Self>, args: crate::call::takeover::ResumeArgs) {
        let id = &args.record.call_id;
        let epoch = args.ctx.epoch.load(Ordering::Relaxed);
        let dropped = args.ctx.dropped_epoch.load(Ordering::SeqCst);
        if !resumable(args.record.owner_epoch, epoch, dropped) {
            // Claimed by an incarnation of this node the cluster has declared down
            // since (a claim retried after its store error can land after the calls
            // were dropped for the rejoin): the call stays that incarnation's, whose
            // finaliser takes it; resumed here too, it ran on two nodes (a review).
            tracing::warn!(call_id = %id, claimed_by = args.record.owner_epoch, epoch, dropped, "a call claimed by an incarnation declared down since: not resumed");
            return;
        }
        if self.table().calls.values().any(|(seed, _)| seed.id == *id) {
            // Claimed twice on this node (a hand-over's claim and a member-down
            // claim, one of them retried after a store error): one actor per call.
            tracing::warn!(call_id = %id, "a call claimed again while it runs here: not resumed twice");
            return;
        }
        let (ctx, seed) = (args.ctx.clone(), CallSeed::resumed(&args));
        self.start(ctx, seed, |me| {
            crate::call::takeover::resume(Box::new(args), me)
        });
    }

    /// Enters a call and runs `call` as its task; the task takes itself out when it
    /// ends, however it ends.
    fn start<F>(
        self: &Arc<Self>,
        ctx: Arc<NodeContext>,
        seed: CallSeed,
        call: impl FnOnce(CallRef) -> F,
    ) where
        F: Future<Output = Exit> + Send + 'static,
    {
        let (n, me) = self.enter(&ctx, seed);
        let calls = self.clone();
        tokio::spawn(catching(call(me)).map(move |exit| calls.exited(&ctx, n, exit)));
    }

    /// A call's task ended: out of the table, and logged as failed if it did not log
    /// itself. A call that shutdown already took out (`SupervisorMsg::Abandon`) is left
    /// alone.
    fn exited(&self, ctx: &NodeContext, n: u64, exit: Exit) {
        let Some((seed, _)) = self.table().calls.remove(&n) else {
            return;
        };
        match exit {
            Exit::Done | Exit::Stopped => {
                if !seed.logged.load(Ordering::Acquire) {
                    clean_up(ctx, &seed, None);
                }
            }
            Exit::Panicked(e) | Exit::Failed(e) => {
                tracing::error!(call_id = %seed.id, error = %e, "call failed");
                clean_up(ctx, &seed, None);
            }
        }
    }

    /// Calls `f` on every running call; answers how many there were.
    fn each(&self, mut f: impl FnMut(&CallSeed, &CallRef)) -> usize {
        let t = self.table();
        for (seed, me) in t.calls.values() {
            f(seed, me);
        }
        t.calls.len()
    }

    /// Takes every running call out of the table.
    fn take_all(&self) -> HashMap<u64, (CallSeed, CallRef)> {
        std::mem::take(&mut self.table().calls)
    }
}

/// `call`, with a panic turned into [`Exit::Panicked`]. Panics of the call's handlers
/// are caught inside the call; this also catches one while it starts. Combinators, not
/// an async block: a block would hold the call's future twice (captured, and moved into
/// the awaited `CatchUnwind`), for the call's whole life.
fn catching<F: Future<Output = Exit>>(call: F) -> impl Future<Output = Exit> {
    std::panic::AssertUnwindSafe(call)
        .catch_unwind()
        .map(|exit| exit.unwrap_or_else(|p| Exit::Panicked(crate::call::panic_text(&*p))))
}

pub struct CallSupervisor {
    pub ctx: Arc<NodeContext>,
    pub calls: Arc<Calls>,
    pub max_call: Duration,
}

const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A call past `node.max_call_seconds` is first asked to end (BYE to answered legs,
/// CANCEL to ringing ones, logged with `end_reason = "max_call"`); one still there this
/// long after being asked no longer handles its messages, and its task is stopped.
/// Longer than a call's own end guard (32 s), so a call that ends itself is never cut.
const STOP_AFTER: Duration = Duration::from_secs(60);

/// What the sweep does with one call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SweepAction {
    Nothing,
    /// Past `node.max_call_seconds`: the call ends itself.
    AskToEnd,
    /// Asked [`STOP_AFTER`] ago and still running: its task is stopped (the caller,
    /// if still unanswered, gets a 500; the call is logged `failed`).
    Stop,
}

/// The sweep's decision for a call of `age`, asked to end `asked` ago (if it was).
fn sweep_action(age: Duration, asked: Option<Duration>, max_call: Duration) -> SweepAction {
    match asked {
        Some(since) if since >= STOP_AFTER => SweepAction::Stop,
        Some(_) => SweepAction::Nothing,
        None if age > max_call => SweepAction::AskToEnd,
        None => SweepAction::Nothing,
    }
}

impl Actor for CallSupervisor {
    type Msg = SupervisorMsg;
    type State = ();
    type Arguments = ();

    async fn pre_start(
        &self,
        myself: ActorRef<SupervisorMsg>,
        _: (),
    ) -> Result<(), ActorProcessingErr> {
        myself.send_interval(SWEEP_EVERY, || SupervisorMsg::Sweep);
        Ok(())
    }

    async fn handle(
        &self,
        _: ActorRef<SupervisorMsg>,
        msg: SupervisorMsg,
        _: &mut (),
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Resume(args) => self.calls.resume(*args),
            #[cfg(test)]
            SupervisorMsg::CrashAll => {
                self.calls.each(|_, me| {
                    let _ = me.send_message(crate::call::CallMsg::Crash);
                });
            }
            #[cfg(test)]
            SupervisorMsg::InjectAll(msgs) => {
                let mut msgs = Some(msgs);
                self.calls.each(|_, me| {
                    if let Some(msgs) = msgs.take() {
                        me.send_all(msgs);
                    }
                });
            }
            SupervisorMsg::EndAll(reason) => {
                self.calls.each(|_, me| {
                    let _ = me.send_message(crate::call::CallMsg::End(reason));
                });
            }
            SupervisorMsg::FinishAll => {
                self.calls.each(|_, me| {
                    let _ = me.send_message(crate::call::CallMsg::EndGuard);
                });
            }
            SupervisorMsg::Abandon(reason, reply) => {
                let left = self.calls.take_all();
                for (seed, me) in left.values() {
                    if !seed.logged.swap(true, Ordering::AcqRel) {
                        tracing::warn!(call_id = %seed.id, reason, "call still running at shutdown: logged as failed");
                        clean_up(&self.ctx, seed, Some(reason));
                    }
                    me.stop();
                }
                let _ = reply.send(left.len());
            }
            SupervisorMsg::VanishAll(reply) => {
                let n = self.calls.each(|seed, me| {
                    // Marked here too, so that a call that cannot take the message
                    // (its inbox closing) is not logged by its exit either.
                    seed.logged.store(true, Ordering::Release);
                    let _ = me.send_message(crate::call::CallMsg::Vanish);
                });
                let _ = reply.send(n);
            }
            SupervisorMsg::HandedOff(ids) => {
                // Counted here, once per call still running: the same call may be
                // named twice (the peer's HandedOver, then the drain's own check of
                // the store for calls whose HandedOver was lost).
                let ids: std::collections::HashSet<String> = ids.into_iter().collect();
                let handed_over = &self.ctx.metrics.calls.handed_over;
                self.calls.each(|seed, me| {
                    if ids.contains(&seed.id) && !seed.logged.swap(true, Ordering::AcqRel) {
                        handed_over.inc();
                        let _ = me.send_message(crate::call::CallMsg::Vanish);
                    }
                });
            }
            SupervisorMsg::Sweep => {
                let now = std::time::Instant::now();
                self.calls.each(|seed, me| {
                    let since = seed
                        .asked_to_end
                        .get()
                        .map(|at| now.saturating_duration_since(*at));
                    match sweep_action(seed.started.elapsed(), since, self.max_call) {
                        SweepAction::Nothing => {}
                        SweepAction::AskToEnd => {
                            tracing::warn!(call_id = %seed.id, "call exceeded node.max_call_seconds; ending it");
                            let _ = seed.asked_to_end.set(now);
                            let _ = me.send_message(crate::call::CallMsg::End("max_call"));
                        }
                        SweepAction::Stop => {
                            tracing::warn!(call_id = %seed.id, "call did not end when asked; stopping it");
                            me.stop();
                        }
                    }
                });
            }
        }
        Ok(())
    }
}

/// What a call that could not finish itself leaves to do: the caller's 500 if still
/// unanswered, its routes dropped, a `failed` record.
fn clean_up(ctx: &NodeContext, seed: &CallSeed, end_reason: Option<&str>) {
    ctx.metrics.calls.actor_failures.inc();
    // Only sent if the INVITE is still unanswered; the transaction layer drops it otherwise.
    ctx.endpoint.send(tsunagu_sip::Command::Fail {
        key: seed.key.clone(),
        code: 500,
        call_id: seed.a_call_id.clone(),
    });
    ctx.endpoint.unregister(&seed.a_call_id);
    ctx.log.write(failed_record(ctx, seed, end_reason));
    ctx.metrics
        .calls
        .ended
        .get_or_create(&crate::metrics::ResultLabel { result: "failed" })
        .inc();
}

/// Whether a call claimed for incarnation `claimed_by` of this node runs here, this
/// node being incarnation `epoch` and having dropped the calls of incarnations up to
/// `dropped` to rejoin: only for the incarnation that runs, and not one whose calls
/// were dropped (its claim may land after the drop, before the new incarnation is
/// registered). A check of "declared down, not rejoined yet" instead refused the new
/// incarnation's own claims in the moments before the cluster took it back (a
/// review).
fn resumable(claimed_by: u64, epoch: u64, dropped: u64) -> bool {
    claimed_by == epoch && claimed_by > dropped
}

#[cfg(test)]
mod tests {
    //! Supervision with real parts: a real endpoint on loopback, a real SQLite store,
    //! raw UDP sockets as the caller and the callee.
    use super::*;
    use crate::admission::Admission;
    use crate::call_log::CallLog;
    use crate::decide::routing::Routing;
    use crate::directory::Directory;
    use crate::metrics::Metrics;
    use std::net::UdpSocket;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::time::Instant;
    use tsunagu_store::{conformance::sample_number, CallQuery, CallResult, SqliteStore, Store};

    /// A claim resumes only for the incarnation that runs, not one whose calls were
    /// dropped.
    #[test]
    fn only_the_running_incarnation_resumes_its_claims() {
        // (claimed by, running, dropped up to) -> resumed
        let cases = [
            ((4, 4, 0), true),
            ((4, 4, 3), true),
            // Dropped to rejoin, the new incarnation not registered yet.
            ((4, 4, 4), false),
            ((3, 4, 3), false),
            ((5, 4, 0), false),
        ];
        for ((by, epoch, dropped), want) in cases {
            assert_eq!(
                resumable(by, epoch, dropped),
                want,
                "{by} {epoch} {dropped}"
            );
        }
    }

    /// The wrapper around every call's task adds a few bytes to the call's future (an
    /// async block would double it) and turns a panic into `Exit::Panicked`.
    #[tokio::test]
    async fn the_panic_guard_holds_the_call_once() {
        let call = async {
            let state = [1u8; 1000];
            tokio::task::yield_now().await;
            std::hint::black_box(state);
            Exit::Done
        };
        let bare = std::mem::size_of_val(&call);
        let guarded = catching(call);
        assert!(
            std::mem::size_of_val(&guarded) < bare + 64,
            "{} bytes around a {bare}-byte call",
            std::mem::size_of_val(&guarded)
        );
        assert!(matches!(guarded.await, Exit::Done));
        let exit = catching(async { panic!("boom") }).await;
        assert!(
            matches!(exit, Exit::Panicked(ref e) if e.contains("boom")),
            "{exit:?}"
        );
    }

    /// The first message `sock` receives that does not start with `skip` (a
    /// retransmission, a provisional).
    fn recv_past(sock: &UdpSocket, skip: &str) -> String {
        std::iter::repeat_with(|| recv_text(sock))
            .find(|m| !m.starts_with(skip))
            .unwrap()
    }

    fn recv_text(sock: &UdpSocket) -> String {
        let mut buf = [0u8; 8192];
        let (n, _) = sock.recv_from(&mut buf).expect("a SIP message");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    struct Fixture {
        _dir: tempfile::TempDir,
        callee: UdpSocket,
        store: Arc<dyn Store>,
        operator: String,
        caller: UdpSocket,
        sup: ActorRef<SupervisorMsg>,
        metrics: Metrics,
        ctx: Arc<NodeContext>,
        log: CallLog,
    }

    /// The callee's answer (PCMU).
    const CALLEE_SDP: &str = "v=0\r\no=- 2 2 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4002 RTP/AVP 0\r\n";

    impl Fixture {
        /// The callee answers the forwarded INVITE (200 with [`CALLEE_SDP`]), and the
        /// caller gets the 200.
        fn callee_answers(&self) {
            let invite = recv_text(&self.callee);
            self.callee_says(&invite, "200 OK", Some(CALLEE_SDP));
            let answer = recv_past(&self.caller, "SIP/2.0 1");
            assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
        }

        /// The callee answers `request` with `status` (and `sdp`), to the node.
        fn callee_says(&self, request: &str, status: &str, sdp: Option<&str>) {
            let me = self.callee.local_addr().unwrap();
            let node = self
                .ctx
                .endpoint
                .local(tsunagu_sip::Transport::Udp)
                .unwrap();
            let response = callee_response(request, status, me, sdp);
            self.callee.send_to(response.as_bytes(), node).unwrap();
        }
    }

    /// A node's call path with real parts, and one call forwarding (the callee never answers).
    async fn forwarding_call(max_call: Duration) -> Fixture {
        forwarding_call_with(max_call, Duration::from_secs(180), Duration::from_secs(32)).await
    }

    /// The same with `sip.max_ring_seconds` and the end guard given.
    async fn forwarding_call_with(
        max_call: Duration,
        max_ring: Duration,
        end_guard: Duration,
    ) -> Fixture {
        forwarding_call_from(max_call, max_ring, end_guard, "", 20).await
    }

    /// The same with more headers in the caller's INVITE (each ending in CRLF).
    async fn forwarding_call_from(
        max_call: Duration,
        max_ring: Duration,
        end_guard: Duration,
        invite_headers: &str,
        ring_seconds: u32,
    ) -> Fixture {
        forwarding_call_to(max_call, max_ring, end_guard, invite_headers, |number| {
            number.destinations[0].ring_seconds = ring_seconds;
        })
        .await
    }

    /// The same with the number's settings changed by `edit`.
    async fn forwarding_call_to(
        max_call: Duration,
        max_ring: Duration,
        end_guard: Duration,
        invite_headers: &str,
        edit: impl FnOnce(&mut tsunagu_store::TrackingNumber),
    ) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("t.db")).unwrap());
        let op = store.create_operator("op").unwrap();
        let adv = store.create_advertiser(&op.id, "shop", None).unwrap();
        let mut number = sample_number(&op.id, &adv.id);
        number.number = "0501234567".into();
        edit(&mut number);
        store.create_number(&number).unwrap();

        let callee = UdpSocket::bind("127.0.0.1:0").unwrap();
        callee
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let caller = UdpSocket::bind("127.0.0.1:0").unwrap();
        caller
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let config = tsunagu_config::Config::from_toml(&format!(
            "[[trunks]]\nname = \"t\"\ninbound = [\"127.0.0.1/32\"]\noutbound = \"udp:{}\"\n[[routes]]\nprefix = \"\"\ntrunks = [\"t\"]\n",
            callee.local_addr().unwrap()
        ))
        .unwrap();

        let metrics = Metrics::default();
        let (log, _thread) = CallLog::start(crate::call_log::Writer {
            store: store.clone(),
            metrics: metrics.calls.clone(),
            follow_up_metrics: metrics.follow_ups.clone(),
            planner: crate::follow_up::plan::Planner {
                email: false,
                sms: false,
                utc_offset_minutes: 540,
            },
            wake: Arc::new(tokio::sync::Notify::new()),
            webhooks: crate::follow_up::hooks::WebhookCache::load(store.clone()).unwrap(),
            node_id: "n1".into(),
            epoch: Arc::new(1.into()),
            high_water: 1000,
            notices_per_hour: 0,
            rejected: std::env::temp_dir().join("tsunagu-supervisor-test-rejected.jsonl"),
            rejected_cut: Default::default(),
            notices_decided: Default::default(),
        });
        let ports = tsunagu_media::PortPool::new(
            "127.0.0.1".parse().unwrap(),
            42000,
            42019,
            65536,
            metrics.media.clone(),
        );
        let handler = Arc::new(crate::admission::LateHandler::default());
        let endpoint = tsunagu_sip::Endpoint::start(
            &[(tsunagu_sip::Transport::Udp, "127.0.0.1:0".parse().unwrap())],
            tsunagu_sip::EdgeSettings::new(tsunagu_sip::SourcePolicy::trust_all()),
            handler.clone(),
            metrics.sip.clone(),
            tsunagu_sip::TlsSetup::default(),
        )
        .await
        .unwrap();
        let routing = Routing::from_config(&config);
        let ctx = Arc::new(NodeContext {
            epoch: Arc::new(1.into()),
            dropped_epoch: 0.into(),
            superseded: tokio::sync::Notify::new(),
            cluster: std::sync::OnceLock::new(),
            node_id: "t".into(),
            endpoint: endpoint.clone(),
            ports,
            trunk_channels: vec![AtomicUsize::new(0)],
            trunk_counters: metrics.trunk_counters(&["t".to_string()]),
            trunk_up: vec![AtomicBool::new(true)],
            store: store.clone(),
            recorder: tsunagu_media::Recorder::start(),
            lines: crate::lines::Lines::new("n1", Default::default()),
            webhooks: crate::follow_up::hooks::WebhookCache::load(store.clone()).unwrap(),
            recordings_dir: std::env::temp_dir(),
            recording_space: crate::recording_space::RecordingSpace::unwatched(),
            prompts: tsunagu_media::Prompts::default(),
            ringback: Arc::new(tsunagu_media::Prompt::ringback()),
            routing,
            log: log.clone(),
            metrics: metrics.clone(),
            system_number: None,
            end_guard,
            max_ring,
            media_timeout: None,
            max_calls: 10,
            retry_after: 5,
            min_se: 90,
            active: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            checkpoints: true,
        });
        let calls = Arc::new(Calls::default());
        let (sup, _) = Actor::spawn(
            None,
            CallSupervisor {
                ctx: ctx.clone(),
                calls: calls.clone(),
                max_call,
            },
            (),
        )
        .await
        .unwrap();
        handler.set(Admission::new(
            ctx.clone(),
            Directory::load(store.clone(), Default::default()).unwrap(),
            calls,
        ));

        let node = endpoint.local(tsunagu_sip::Transport::Udp).unwrap();
        let me = caller.local_addr().unwrap();
        let sdp = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\nm=audio 4000 RTP/AVP 0\r\n";
        let invite = format!(
            "INVITE sip:0501234567@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bKcrash\r\nFrom: <sip:09012345678@{me}>;tag=c\r\nTo: <sip:0501234567@{node}>\r\nCall-ID: crash-1\r\nCSeq: 1 INVITE\r\nContact: <sip:c@{me}>\r\nMax-Forwards: 70\r\n{invite_headers}Content-Type: application/sdp\r\nContent-Length: {}\r\n\r\n{sdp}",
            sdp.len()
        );
        caller.send_to(invite.as_bytes(), node).unwrap();
        assert!(recv_text(&caller).starts_with("SIP/2.0 100 "));
        assert!(
            recv_text(&callee).starts_with("INVITE sip:0311112222@"),
            "the call is forwarding"
        );
        assert_eq!(metrics.media.ports_in_use.get(), 2);

        Fixture {
            _dir: dir,
            callee,
            store,
            operator: op.id,
            caller,
            sup,
            metrics,
            ctx,
            log,
        }
    }

    /// The call's one final record (not its record in progress), waited for (5 s at
    /// most) as the call-log writer commits it.
    async fn final_record(f: &Fixture) -> tsunagu_store::CallRecord {
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut records = Vec::new();
        while records.is_empty() && Instant::now() < deadline {
            assert!(f.log.flush(Duration::from_secs(5)));
            f.store
                .scan_calls(
                    &CallQuery {
                        operator_id: f.operator.clone(),
                        ..Default::default()
                    },
                    &mut |r| {
                        records.push(r);
                        true
                    },
                )
                .unwrap();
            records.retain(|r| r.state != tsunagu_store::CallState::Active);
            if records.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        assert_eq!(records.len(), 1, "one final record");
        records.remove(0)
    }

    /// The caller got a 500, the call is logged `failed`, and its ports and slot are free.
    async fn assert_cleaned_up(f: &Fixture) {
        let (caller, log, store, metrics, ctx) = (&f.caller, &f.log, &f.store, &f.metrics, &f.ctx);
        let op = &f.operator;
        let reply = recv_text(caller);
        assert!(
            reply.starts_with("SIP/2.0 500 "),
            "the caller is answered: {reply}"
        );
        assert!(log.flush(Duration::from_secs(5)));
        let mut records = Vec::new();
        store
            .scan_calls(
                &CallQuery {
                    operator_id: op.clone(),
                    ..Default::default()
                },
                &mut |r| {
                    records.push(r);
                    true
                },
            )
            .unwrap();
        assert_eq!(records.len(), 1);
        assert_eq!(records[0].result, CallResult::Failed);
        assert_eq!(metrics.calls.actor_failures.get(), 1);
        // The relay task releases its ports when the runtime processes its cancellation:
        // wait for that to be observable, bounded.
        let deadline = Instant::now() + Duration::from_secs(5);
        while (metrics.media.ports_in_use.get() != 0 || ctx.active_calls() != 0)
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            metrics.media.ports_in_use.get(),
            0,
            "the crashed call's ports were returned"
        );
        assert_eq!(ctx.active_calls(), 0, "its call slot was released");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_call_is_answered_released_and_logged() {
        let f = forwarding_call(Duration::from_secs(3600)).await;
        f.sup.send_message(SupervisorMsg::CrashAll).unwrap();
        assert_cleaned_up(&f).await;
    }

    /// An answered call whose actor panics: both parties get a BYE (they were left up,
    /// connected to nobody, a review), and the call is logged failed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_crashed_answered_call_hangs_up_both_parties() {
        let f = forwarding_call(Duration::from_secs(3600)).await;
        f.callee_answers();
        f.sup.send_message(SupervisorMsg::CrashAll).unwrap();
        let bye = recv_past(&f.callee, "ACK ");
        assert!(bye.starts_with("BYE "), "{bye}");
        let bye = recv_past(&f.caller, "SIP/2.0 ");
        assert!(bye.starts_with("BYE "), "{bye}");
        let r = final_record(&f).await;
        assert_eq!(r.result, CallResult::Failed);
        assert_eq!(f.metrics.calls.actor_failures.get(), 1);
    }

    /// The callee's answer `status` (with `sdp`) to `invite`, as the SIP core would
    /// give it to the call.
    fn callee_event(
        f: &Fixture,
        invite: &str,
        status: &str,
        sdp: Option<&str>,
    ) -> crate::call::CallMsg {
        use tsunagu_sip::{SipEvent, SipMessage};
        let me = f.callee.local_addr().unwrap();
        let text = callee_response(invite, status, me, sdp);
        let Ok((SipMessage::Response(response), info)) = tsunagu_sip::parse::parse(text.as_bytes())
        else {
            panic!("{text}")
        };
        crate::call::CallMsg::Sip(Box::new(SipEvent::Response { response, info }))
    }

    /// The first attempt's 5 s without a word from its trunk (its leg let go) and, in
    /// the call's inbox at the same moment, the callee's answers `after` (as a busy
    /// node has them).
    fn attempt_times_out_with(f: &Fixture, after: Vec<crate::call::CallMsg>) {
        let mut msgs = vec![crate::call::CallMsg::NoResponse(1)];
        msgs.extend(after);
        f.sup.send_message(SupervisorMsg::InjectAll(msgs)).unwrap();
    }

    /// The Call-ID line of a SIP message.
    fn call_id_of(message: &str) -> String {
        let line = message.lines().find(|l| l.starts_with("Call-ID:"));
        line.unwrap_or_default().to_string()
    }

    /// A trunk that answers an attempt's INVITE just as the node gives up waiting for
    /// it (5 s of nothing: the leg is handed to `abandoned`, its CANCEL held until a
    /// provisional, RFC 3261 9.1): the 180 waits at the call behind the time-out
    /// (both put in its inbox at once here; on the wire it takes a busy node). With
    /// no other destination the call ends with the 180 unread, and what it leaves
    /// unread goes back to the SIP core, to the handler: the callee is cancelled. The
    /// 180 was dropped with the call, and the callee rang on for nobody.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provisional_left_unread_by_an_ended_call_reaches_the_leg_it_let_go() {
        let f = forwarding_call(Duration::from_secs(3600)).await;
        let invite = recv_text(&f.callee);
        attempt_times_out_with(&f, vec![callee_event(&f, &invite, "180 Ringing", None)]);
        let cancel = std::iter::repeat_with(|| recv_text(&f.callee))
            .find(|m| !m.starts_with("INVITE "))
            .unwrap();
        assert!(cancel.starts_with("CANCEL "), "{cancel}");
        assert_eq!(call_id_of(&cancel), call_id_of(&invite));
        final_record(&f).await;
    }

    /// The same with the callee's 200 ahead of its 180 (a provisional reordered, or
    /// repeated): the handler ACKs and hangs up the 200 and sends no CANCEL for the
    /// 180 after it (a review: the held CANCEL went out on a leg already answered).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provisional_after_the_answer_of_a_leg_let_go_brings_no_cancel() {
        let f = forwarding_call(Duration::from_secs(3600)).await;
        let invite = recv_text(&f.callee);
        let answers = vec![
            callee_event(&f, &invite, "200 OK", Some(CALLEE_SDP)),
            callee_event(&f, &invite, "180 Ringing", None),
        ];
        attempt_times_out_with(&f, answers);
        let bye = std::iter::repeat_with(|| recv_text(&f.callee))
            .find(|m| !m.starts_with("INVITE ") && !m.starts_with("ACK "))
            .unwrap();
        assert!(bye.starts_with("BYE "), "{bye}");
        // The 180 was handled in order after the 200: anything it sent came by now,
        // past which the BYE's retransmission (T1) is all that comes.
        f.callee
            .set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        let mut buf = [0u8; 8192];
        while let Ok((n, _)) = f.callee.recv_from(&mut buf) {
            let m = String::from_utf8_lossy(&buf[..n]).into_owned();
            assert!(!m.starts_with("CANCEL "), "a CANCEL after the answer: {m}");
        }
        final_record(&f).await;
    }

    /// The same with a second destination: the call goes on to it and reads the first
    /// attempt's 180 after letting that leg go; it passes it on to the leg's handler,
    /// which cancels the first callee (the call dropped it, not holding that leg).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_provisional_for_a_leg_the_call_let_go_reaches_that_legs_handler() {
        let f = forwarding_call_to(
            Duration::from_secs(3600),
            Duration::from_secs(180),
            Duration::from_secs(32),
            "",
            |number| {
                let mut second = number.destinations[0].clone();
                second.number = "0399999999".into();
                number.destinations.push(second);
            },
        )
        .await;
        let first = recv_text(&f.callee);
        attempt_times_out_with(&f, vec![callee_event(&f, &first, "180 Ringing", None)]);
        // Both, in either order (they leave from different shards).
        let mut got: Vec<String> = Vec::new();
        let seen = |got: &[String]| {
            got.iter().any(|m| m.starts_with("CANCEL "))
                && got
                    .iter()
                    .any(|m| m.starts_with("INVITE ") && call_id_of(m) != call_id_of(&first))
        };
        while !seen(&got) {
            got.push(recv_text(&f.callee));
        }
        let cancel = got.iter().find(|m| m.starts_with("CANCEL ")).unwrap();
        assert_eq!(call_id_of(cancel), call_id_of(&first), "{got:?}");
        assert!(
            got.iter()
                .any(|m| m.starts_with("INVITE ") && call_id_of(m) != call_id_of(&first)),
            "the second destination tried: {got:?}"
        );
    }

    /// A call whose actor panics while it ends (the caller hung up, the callee has not
    /// answered the node's BYE yet) sends nothing twice: the callee's BYE goes on as
    /// it was (its retransmissions, one CSeq) and the caller, already gone, gets none.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_call_crashing_while_it_ends_sends_no_second_bye() {
        let f = forwarding_call(Duration::from_secs(3600)).await;
        let node = f.ctx.endpoint.local(tsunagu_sip::Transport::Udp).unwrap();
        let me = f.caller.local_addr().unwrap();
        let invite = recv_text(&f.callee);
        f.callee_says(&invite, "200 OK", Some(CALLEE_SDP));
        let answer = recv_past(&f.caller, "SIP/2.0 1");
        assert!(answer.starts_with("SIP/2.0 200 "), "{answer}");
        let to = answer.lines().find(|l| l.starts_with("To:")).unwrap();
        let request = |method: &str, cseq: u32| {
            format!(
                "{method} sip:tsunagu@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {me};branch=z9hG4bK{method}{cseq}\r\nFrom: <sip:09012345678@{me}>;tag=c\r\n{to}\r\nCall-ID: crash-1\r\nCSeq: {cseq} {method}\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
            )
        };
        f.caller
            .send_to(request("ACK", 1).as_bytes(), node)
            .unwrap();
        f.caller
            .send_to(request("BYE", 2).as_bytes(), node)
            .unwrap();
        // (Past the 200's retransmissions, if any came before the ACK.)
        let ok = std::iter::repeat_with(|| recv_text(&f.caller))
            .find(|m| m.contains("CSeq: 2 BYE"))
            .unwrap();
        assert!(ok.starts_with("SIP/2.0 200 "), "{ok}");
        let bye = recv_past(&f.callee, "ACK ");
        assert!(bye.starts_with("BYE "), "{bye}");
        let cseq = |m: &str| {
            m.lines()
                .find(|l| l.starts_with("CSeq:"))
                .map(str::to_string)
        };
        f.sup.send_message(SupervisorMsg::CrashAll).unwrap();
        let r = final_record(&f).await;
        assert_eq!(r.result, CallResult::Failed);
        for sock in [&f.callee, &f.caller] {
            sock.set_read_timeout(Some(Duration::from_millis(100)))
                .unwrap();
        }
        let deadline = Instant::now() + Duration::from_millis(1500);
        while Instant::now() < deadline {
            let mut buf = [0u8; 8192];
            if let Ok((n, _)) = f.callee.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(
                    !m.starts_with("BYE ") || cseq(&m) == cseq(&bye),
                    "a second BYE to the callee: {m}"
                );
            }
            if let Ok((n, _)) = f.caller.recv_from(&mut buf) {
                let m = String::from_utf8_lossy(&buf[..n]).into_owned();
                assert!(!m.starts_with("BYE "), "a BYE to the caller, gone: {m}");
            }
        }
    }

    /// Each row: (age, asked to end this long ago, node.max_call_seconds) → action.
    #[test]
    fn the_sweep_asks_a_long_call_to_end_and_stops_one_that_does_not() {
        let s = Duration::from_secs;
        let rows = [
            (s(10), None, s(60), SweepAction::Nothing),
            (s(61), None, s(60), SweepAction::AskToEnd),
            (s(61), Some(s(0)), s(60), SweepAction::Nothing),
            (s(100), Some(s(59)), s(60), SweepAction::Nothing),
            (s(130), Some(s(60)), s(60), SweepAction::Stop),
            (s(0), Some(STOP_AFTER), s(0), SweepAction::Stop),
        ];
        for (age, asked, max_call, want) in rows {
            assert_eq!(
                sweep_action(age, asked, max_call),
                want,
                "{age:?} {asked:?}"
            );
        }
    }

    /// An answered call past `node.max_call_seconds` is ended by the node: both
    /// parties get a BYE (not only the task stopped, which left both dialogs up), and
    /// the call is logged with `end_reason = "max_call"`.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answered_call_past_max_call_seconds_is_hung_up_on_both_sides() {
        let f = forwarding_call(Duration::ZERO).await;
        f.callee_answers();
        f.sup.send_message(SupervisorMsg::Sweep).unwrap();
        let to_caller = recv_past(&f.caller, "SIP/2.0 ");
        assert!(to_caller.starts_with("BYE "), "{to_caller}");
        let to_callee = recv_past(&f.callee, "ACK ");
        assert!(to_callee.starts_with("BYE "), "{to_callee}");
        f.callee_says(&to_callee, "200 OK", None);
        let r = final_record(&f).await;
        assert_eq!(r.end_reason.as_deref(), Some("max_call"));
        assert_eq!(f.metrics.calls.actor_failures.get(), 0, "ended by the call");
    }

    /// A recorded call ends while the recorder is stalled (here on a FIFO nobody
    /// reads, as on a hung disk or network share): its final record is written all
    /// the same once the recorder has taken its time (3 s here), the recording
    /// `truncated`. It waited for the recorder for as long as the stall, and the
    /// call-log flush at shutdown gave up on it (a review).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_recorded_calls_record_does_not_wait_for_a_stalled_recorder() {
        let f = forwarding_call_to(
            Duration::from_secs(3600),
            Duration::from_secs(180),
            Duration::from_secs(32),
            "",
            |number| {
                number.recording = Some(tsunagu_store::RecordingSettings {
                    mode: tsunagu_store::RecordingMode::Both,
                    notice: None,
                });
            },
        )
        .await;
        f.callee_answers();
        // The recorder's thread stalls on a file that cannot be opened yet.
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("stall.wav");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo");
        let stalled = f
            .ctx
            .recorder
            .open(fifo.clone(), tsunagu_media::RecordMode::Both);
        f.sup
            .send_message(SupervisorMsg::EndAll("max_call"))
            .unwrap();
        let to_callee = recv_past(&f.callee, "ACK ");
        assert!(to_callee.starts_with("BYE "), "{to_callee}");
        f.callee_says(&to_callee, "200 OK", None);
        let r = final_record(&f).await;
        assert!(r.recording.is_some(), "{r:?}");
        assert_eq!(
            r.recording_status,
            Some(tsunagu_store::RecordingStatus::Truncated),
            "{r:?}"
        );
        // The disk comes back: the recorder goes on.
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ =
                std::io::Read::read_to_end(&mut std::fs::File::open(&fifo).unwrap(), &mut bytes);
        });
        stalled.close(Box::new(|_| {}));
        reader.join().unwrap();
    }

    /// A caller nobody answers within `sip.max_ring_seconds` is answered 480, the
    /// forwarded leg is cancelled, and the call is logged `failed` with reason
    /// `max_ring` (the callee here never answers, nor even rings).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_nobody_answers_is_given_up_at_max_ring_seconds() {
        let f = forwarding_call_with(
            Duration::from_secs(3600),
            Duration::from_secs(1),
            Duration::from_millis(500),
        )
        .await;
        // The callee says 100 Trying (a CANCEL may only follow a provisional answer)
        // and then nothing.
        let invite = recv_text(&f.callee);
        f.callee_says(&invite, "100 Trying", None);
        let reply = recv_text(&f.caller);
        assert!(reply.starts_with("SIP/2.0 480 "), "{reply}");
        // Retransmissions of the unanswered INVITE may come first.
        let cancel = recv_past(&f.callee, "INVITE ");
        assert!(cancel.starts_with("CANCEL sip:0311112222@"), "{cancel}");
        // The callee never confirms: the call ends at the guard and is logged.
        let r = final_record(&f).await;
        assert_eq!(r.result, CallResult::Failed);
        assert_eq!(r.end_reason.as_deref(), Some("max_ring"));
        let outcomes: Vec<&str> = r.attempts.iter().map(|a| a.outcome.as_str()).collect();
        assert_eq!(outcomes, ["no_answer"], "not the caller's hang-up");
        assert_eq!(f.metrics.calls.actor_failures.get(), 0, "ended by the call");
    }

    /// A callee that rings, answers the node's CANCEL at its ring time and never sends
    /// the INVITE's 487: 64*T1 after the CANCEL the attempt is over (RFC 3261 9.1), and
    /// the call moves on (here, with no other destination, the caller gets 480 and the
    /// call is logged `no_answer`). It waited for `sip.max_ring_seconds`, an hour here.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_attempt_without_its_487_is_over_64_t1_after_the_cancel() {
        let f = forwarding_call_from(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            Duration::from_secs(5),
            "",
            1,
        )
        .await;
        let invite = recv_text(&f.callee);
        f.callee_says(&invite, "180 Ringing", None);
        let cancel = recv_past(&f.callee, "INVITE ");
        assert!(cancel.starts_with("CANCEL "), "{cancel}");
        let cancelled_at = Instant::now();
        f.callee_says(&cancel, "200 OK", None);
        let reply = recv_past(&f.caller, "SIP/2.0 1");
        assert!(reply.starts_with("SIP/2.0 480 "), "{reply}");
        let waited = cancelled_at.elapsed();
        assert!(
            waited >= Duration::from_millis(3000) && waited < Duration::from_secs(5),
            "{waited:?}"
        );
        let r = final_record(&f).await;
        assert_eq!(r.result, CallResult::NoAnswer);
        assert_eq!(f.metrics.calls.attempts_abandoned.get(), 1);
    }

    /// A caller still ringing gets its last provisional again every minute (every
    /// second in unit tests) until it is answered or given up at `max_ring` (RFC 3261
    /// 13.3.1.1: a proxy upstream cancels an INVITE silent for over 3 minutes). It got
    /// one only.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_ringing_caller_gets_its_provisional_again_until_given_up() {
        let f = forwarding_call_from(
            Duration::from_secs(3600),
            Duration::from_millis(2500),
            Duration::from_millis(500),
            "",
            20,
        )
        .await;
        let invite = recv_text(&f.callee);
        f.callee_says(&invite, "180 Ringing", None);
        let mut ringing = 0;
        let last = loop {
            let m = recv_text(&f.caller);
            if m.starts_with("SIP/2.0 180 ") {
                ringing += 1;
            } else if !m.starts_with("SIP/2.0 1") {
                break m;
            }
        };
        assert!(last.starts_with("SIP/2.0 480 "), "{last}");
        assert_eq!(ringing, 3, "the 180, then again at 1 s and 2 s");
    }

    /// The caller cancels before the callee has said anything (no CANCEL may go yet);
    /// the callee then rings (the node's CANCEL goes), takes the CANCEL and never sends
    /// the INVITE's 487: at the end guard the call is logged and the leg handed to the
    /// abandoned-attempt handler, so the callee's 200 after that is acknowledged and
    /// hung up. The call forgot the leg there, and that 200 reached nobody (a review).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_callee_answering_after_the_end_guard_is_not_left_connected() {
        let f = forwarding_call_from(
            Duration::from_secs(3600),
            Duration::from_secs(3600),
            Duration::from_millis(500),
            "",
            20,
        )
        .await;
        let node = f.ctx.endpoint.local(tsunagu_sip::Transport::Udp).unwrap();
        let invite = recv_text(&f.callee);
        let caller = f.caller.local_addr().unwrap();
        let cancel = format!(
            "CANCEL sip:0501234567@{node} SIP/2.0\r\nVia: SIP/2.0/UDP {caller};branch=z9hG4bKcrash\r\nFrom: <sip:09012345678@{caller}>;tag=c\r\nTo: <sip:0501234567@{node}>\r\nCall-ID: crash-1\r\nCSeq: 1 CANCEL\r\nMax-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
        );
        f.caller.send_to(cancel.as_bytes(), node).unwrap();
        let cancelled = std::iter::repeat_with(|| recv_text(&f.caller))
            .find(|m| m.starts_with("SIP/2.0 487 "))
            .unwrap();
        assert!(cancelled.contains("CSeq: 1 INVITE"), "{cancelled}");
        f.callee_says(&invite, "180 Ringing", None);
        let node_cancel = recv_past(&f.callee, "INVITE ");
        assert!(node_cancel.starts_with("CANCEL "), "{node_cancel}");
        f.callee_says(&node_cancel, "200 OK", None);
        let r = final_record(&f).await;
        assert_eq!(r.result, CallResult::Cancelled);
        f.callee_says(&invite, "200 OK", Some(CALLEE_SDP));
        let after: Vec<String> = std::iter::repeat_with(|| recv_text(&f.callee))
            .take_while(|m| !m.starts_with("BYE "))
            .collect();
        assert!(after.iter().any(|m| m.starts_with("ACK ")), "{after:?}");
    }

    /// A response of the callee at `me` to `request` (its Via, From, To with tag
    /// `callee`, Call-ID and CSeq), with SDP if given.
    fn callee_response(
        request: &str,
        status: &str,
        me: std::net::SocketAddr,
        sdp: Option<&str>,
    ) -> String {
        let mut lines: Vec<String> = vec![format!("SIP/2.0 {status}")];
        for l in request.lines() {
            if l.starts_with("To:") && !l.contains(";tag=") {
                lines.push(format!("{l};tag=callee"));
            } else if ["Via:", "From:", "To:", "Call-ID:", "CSeq:"]
                .iter()
                .any(|h| l.starts_with(h))
            {
                lines.push(l.to_string());
            }
        }
        lines.push(format!("Contact: <sip:callee@{me}>"));
        let body = sdp.unwrap_or_default();
        if sdp.is_some() {
            lines.push("Content-Type: application/sdp".into());
        }
        lines.push(format!("Content-Length: {}", body.len()));
        format!("{}\r\n\r\n{body}", lines.join("\r\n"))
    }

    /// RFC 3262: a caller requiring 100rel that never PRACKs the callee's 183 with SDP
    /// does not get the callee's 200, which waits for that PRACK; when the 183's
    /// retransmissions give up (64*T1: 3.2 s in unit tests, 32 s in the node) the
    /// caller is refused 500, the answered callee gets a BYE, and the call is logged
    /// `failed` with end reason `prack_timeout` and no answer.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_caller_that_never_pracks_the_answer_is_refused_and_the_callee_hung_up() {
        let f = forwarding_call_from(
            Duration::from_secs(3600),
            Duration::from_secs(180),
            Duration::from_secs(5),
            "Require: 100rel\r\nSupported: 100rel\r\n",
            20,
        )
        .await;
        let invite = recv_text(&f.callee);
        for status in ["183 Session Progress", "200 OK"] {
            f.callee_says(&invite, status, Some(CALLEE_SDP));
        }
        let first = recv_text(&f.caller);
        assert!(
            first.starts_with("SIP/2.0 183 ") && first.contains("RSeq: "),
            "a reliable 183: {first}"
        );
        // The 183 again until the node gives up; never the held 200.
        let mut retransmitted = 0;
        let last = loop {
            let m = recv_text(&f.caller);
            if !m.starts_with("SIP/2.0 183 ") {
                break m;
            }
            retransmitted += 1;
        };
        assert!(
            last.starts_with("SIP/2.0 500 "),
            "refused, not answered: {last}"
        );
        assert!(retransmitted >= 5, "{retransmitted} retransmissions");
        // The callee: the ACK of its 200, then the BYE, which it answers.
        let bye = std::iter::repeat_with(|| recv_text(&f.callee))
            .find(|m| !m.starts_with("ACK ") && !m.starts_with("INVITE "))
            .unwrap();
        assert!(bye.starts_with("BYE sip:"), "{bye}");
        f.callee_says(&bye, "200 OK", None);
        let r = final_record(&f).await;
        assert_eq!(r.result, CallResult::Failed);
        assert_eq!(r.end_reason.as_deref(), Some("prack_timeout"));
        assert_eq!((r.sip_code, r.answered_at, r.talk_seconds), (500, None, 0));
        assert_eq!(f.metrics.calls.actor_failures.get(), 0, "ended by the call");
    }
}
