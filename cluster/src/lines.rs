//! Lines and queues across the cluster (コールキューイング): at most `limit` calls of a
//! key (a number's or an advertiser's) hold a line at once, whichever nodes took them;
//! callers over the limit wait first come, first served across nodes.
//!
//! Each key has one owner (rendezvous hashing over the live members, see
//! [`crate::placement`]) that counts its lines and keeps its queue; a node asks the
//! owner for a line for each of its calls and gives it back when the call is over. This
//! module is the whole protocol as a sans-IO state machine ([`LineService`]): local
//! requests, messages from peers and view changes go in; messages to send and answers
//! for local calls come out.
//!
//! Ownership moves when members come and go. On every view change each node *rebuilds*
//! the tables of the keys it owns from snapshots of every live member: the lines their
//! calls hold or wait for, and the table entries of keys they owned before. Until every
//! live member has answered it grants nothing, so no line is ever granted twice: a
//! line held through a dead owner is counted again from its holder's report, and a
//! frozen owner that wakes up finds its grants refused (answers are taken only from
//! members up in the current view: a declared-down incarnation is fenced off by its
//! epoch). A member's messages that reach a rebuilding owner before its snapshot are
//! already reflected in it (one ordered session per pair) and are dropped; later ones
//! wait for the rebuild to finish. Whether a live member's call has a line at all is
//! that member's word alone: what a previous owner hands over only says it was granted
//! (a review: an old owner's copy brought back lines released since). Members are
//! told apart by incarnation: one that restarted under the same name holds none of its
//! old incarnation's lines. Queue order survives: waiters carry the time they started
//! waiting.
//!
//! A call that moves to another node (taken over, handed over) keeps its lines: the
//! new node *adopts* them ([`LineService::adopt`]: the owner counts them as held by it,
//! even over the limit, since the call is up) and the old one, if alive, forgets them
//! without a release ([`LineService::forget`]). Between a member's death and the
//! adoption its calls' lines stay counted: the owner keeps them *reserved* for
//! [`RESERVED_FOR`] ([`LineService::expire_reservations`]). Without that a caller
//! queued meanwhile was granted a dead member's line, and once the call was taken over
//! one caller too many was connected (a review). Not covered: a line of a key the dead
//! member itself owned (its table died with it) is counted again only when the call is
//! adopted.
//!
//! Messages per call with a remote owner: the request and its answer. The line comes
//! back with the next heartbeat, or at once when the owner said others may need it
//! (`urgent`: the key was at its limit or had waiters).

use crate::placement::owner;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// How long a line held by a call of a member that left the view stays counted,
/// waiting for the node that takes the call over to adopt it: failure detection
/// (1.5 s), the takeover's claim grace (2 s) and the resume, with room to spare. A call
/// nobody takes over frees its line this long after its node left.
pub const RESERVED_FOR: Duration = Duration::from_secs(15);

/// The longest key or call id taken from a peer; a message with a longer one is
/// dropped. Ours are far shorter (a number or an advertiser's id with a prefix, a
/// call's id); without a bound a peer made an owner store ids of any length (a review).
const MAX_ID_LEN: usize = 256;

/// The most callers kept waiting for one key's lines: a request past it is answered
/// as queued last and not kept (the protocol has no refusal: its caller gives up after
/// its longest wait), so a peer cannot grow a queue without bound, nor make each
/// message scan a queue of any length (a review).
const MAX_WAITING_PER_KEY: usize = 5_000;

/// The most lines and places in queues another member may have in this node's tables,
/// over all keys (so also the most keys it can make this node keep): past it its new
/// requests are refused as past [`MAX_WAITING_PER_KEY`] (a review). Five times what a
/// node at the default `node.max_calls` (20,000 calls, each asking at most two lines:
/// its number's and its advertiser's) can ask; this node's own calls and adopted lines
/// (calls that already hold theirs: refusing them would let the reservation lapse and
/// the line be granted twice) are never refused.
const MAX_ENTRIES_PER_MEMBER: usize = 200_000;

/// The most messages of one member held back while a rebuild waits for others: past
/// it they are dropped, and a reconcile follows the rebuild (its snapshots reflect what
/// was dropped), rather than buffering without bound (a review).
const MAX_HELD_BACK_PER_MEMBER: usize = 10_000;

/// The longest a caller waits for a line (a number's or an advertiser's
/// `max_wait_seconds` is at most an hour): a peer's queue stamp is taken as no earlier
/// than this before the owner's clock, and no later than it (see
/// [`LineService::on_message`]).
const MAX_WAIT: Duration = Duration::from_secs(3600);

/// A line a node's call holds or waits for, as reported in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Holding {
    pub key: String,
    pub call: String,
    pub node: String,
    pub limit: u32,
    /// When the call started waiting (ms since the epoch): queue order.
    pub arrived_ms: i64,
    /// Held (granted), or asked for and not granted yet.
    pub held: bool,
    /// The incarnation of `node` the line is (or was) for, where the sender reports
    /// another node's line (what it hands over): a member that restarted under the same
    /// name holds none of its old incarnation's lines (a review). Absent from a holder's
    /// own lines (the sender's current incarnation) and from a node of a release before
    /// it (then taken as the named member's current incarnation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
}

/// The owner's answer to a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Answer {
    /// The line is the call's. `urgent`: give it back at once when done (others may
    /// be waiting), rather than with the next heartbeat.
    Granted { urgent: bool },
    /// Waiting, at this position (1 = next).
    Queued { position: u32 },
}

/// Line messages between nodes (the envelope says who sent them, in which epoch).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum LineMsg {
    Acquire {
        key: String,
        call: String,
        limit: u32,
        arrived_ms: i64,
    },
    Answer {
        key: String,
        call: String,
        answer: Answer,
    },
    Release {
        key: String,
        call: String,
        /// Already passed on once by a node that was not the owner.
        forwarded: bool,
    },
    /// A call that held a line on another node now runs on the sender (taken over, or
    /// handed over): it holds the line there, whatever the count. Answered `Granted`.
    Adopt {
        key: String,
        call: String,
        limit: u32,
    },
    SnapshotRequest {
        round: u64,
    },
    Snapshot {
        round: u64,
        /// Lines the sender's calls hold or wait for.
        holdings: Vec<Holding>,
        /// Table entries of keys the sender owned and the requester owns now.
        handed_over: Vec<Holding>,
    },
}

/// What the service wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Send {
        to: String,
        msg: LineMsg,
    },
    /// An answer for a call of this node.
    Local {
        key: String,
        call: String,
        answer: Answer,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReqState {
    /// Asked, no answer yet.
    Pending,
    Waiting,
    Held,
}

/// One of this node's calls' lines.
#[derive(Debug, Clone)]
struct Request {
    limit: u32,
    arrived_ms: i64,
    state: ReqState,
    /// The call gave up while its request was unanswered: undo on the answer.
    cancelled: bool,
    /// The owner asked for the line back at once when done.
    urgent: bool,
    /// Adopted from the node that ran the call before ([`LineService::adopt`]): held
    /// whatever the answer, reported as held in snapshots.
    adopted: bool,
}

/// A node in one incarnation, holding a line or waiting for one: by name alone, a
/// member that restarted under the same name was taken for the holder of its old
/// incarnation's lines, which its empty snapshot then dropped (a review).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Holder {
    node: String,
    /// 0 for a node not in the view when recorded (never up).
    epoch: u64,
}

/// The owner's table of one key.
#[derive(Debug, Default)]
struct KeyTable {
    limit: u32,
    /// call -> holder
    held: BTreeMap<String, Holder>,
    /// (arrived_ms, call) -> holder
    waiting: BTreeMap<(i64, String), Holder>,
}

/// A table of a key this node owned and no longer does, kept for its new owner's
/// rebuild: grants that may still be on their way, lines of members that left.
#[derive(Debug)]
struct Handed {
    table: KeyTable,
    /// When it is dropped (None until the next [`LineService::expire_reservations`]
    /// sets it). Kept through later view changes until then, not to the next one: the
    /// new owner's rebuild may start again (a second view change) and ask again, and a
    /// line of a member that left must still be in it (a review).
    until: Option<Instant>,
}

impl KeyTable {
    fn position(&self, call: &str) -> Option<u32> {
        self.waiting
            .keys()
            .position(|(_, c)| c == call)
            .map(|p| p as u32 + 1)
    }

    /// Takes `call`'s entry out (held or waiting): its holder, if it had one.
    fn remove(&mut self, call: &str) -> Option<Holder> {
        if let Some(h) = self.held.remove(call) {
            return Some(h);
        }
        let k = self.waiting.keys().find(|(_, c)| c == call).cloned()?;
        self.waiting.remove(&k)
    }

    /// Grants freed lines to waiters in order: (node, call) of each newly granted.
    fn fill(&mut self) -> Vec<(String, String)> {
        let mut granted = Vec::new();
        while (self.held.len() as u32) < self.limit {
            let Some(((_, call), holder)) = self.waiting.pop_first() else {
                break;
            };
            granted.push((holder.node.clone(), call.clone()));
            self.held.insert(call, holder);
        }
        granted
    }

    fn urgent(&self) -> bool {
        !self.waiting.is_empty() || self.held.len() as u32 >= self.limit
    }
}

/// A rebuild in progress: who still owes a snapshot, and what came meanwhile.
#[derive(Debug, Default)]
struct Rebuild {
    round: u64,
    waiting_for: BTreeSet<String>,
    /// The holders' reports of their own calls' lines (ours included): whether a call
    /// of a member up in the view still has a line is its holder's word alone.
    reported: Vec<Holding>,
    /// Other lines a table knows of: our old table's of members that left, and what
    /// previous owners handed over. One of a member up in the view counts only if its
    /// holder reports the call (the table may be older than a release that never
    /// reached it: a review), then as held if the table says so (a grant that crossed
    /// the holder's snapshot); one of a member that left counts if held (reserved).
    kept: Vec<Holding>,
    /// Members whose snapshot arrived: their later messages wait in `held_back`,
    /// each once (a request resent every second while the rebuild waits for a member
    /// that cannot be reached was held back every time: without bound, and replayed
    /// all at once: a review).
    answered: BTreeSet<String>,
    held_back: Vec<(String, LineMsg)>,
    held_back_seen: std::collections::HashSet<(String, LineMsg)>,
    /// Messages held back, by sender (see [`MAX_HELD_BACK_PER_MEMBER`]).
    held_back_from: BTreeMap<String, usize>,
    /// This node's own requests made meanwhile.
    local_held_back: Vec<LineMsg>,
}

/// The line protocol of one node (see the module doc).
pub struct LineService {
    me: String,
    /// Live members in the current view, this node included.
    members: Vec<String>,
    /// Their incarnations (see [`Holder`]).
    epochs: BTreeMap<String, u64>,
    /// The members when the tables were last rebuilt (None before the first rebuild):
    /// what others kept of a key this node owned then is not taken again (it is as old
    /// as that rebuild or older: lines released to this node since would come back; a
    /// reconcile, or a resume after the lease lapsed, took them: a review).
    settled: Option<Vec<String>>,
    requests: HashMap<(String, String), Request>,
    tables: HashMap<String, KeyTable>,
    /// Table entries of keys this node owned and no longer does, kept for their new
    /// owner's snapshot request (grants that may still be on their way to holders).
    handover: HashMap<String, Handed>,
    rebuild: Option<Rebuild>,
    /// See [`LineService::suspend`].
    suspended: bool,
    /// A reconcile asked for while a rebuild ran: it starts when that one ends.
    reconcile_wanted: bool,
    next_round: u64,
    out: Vec<Output>,
    /// Each node's entries (held and waiting) in `tables`, by name: see
    /// [`MAX_ENTRIES_PER_MEMBER`].
    entries: HashMap<String, usize>,
    /// Lines to give back with the next heartbeat, by owner.
    lazy_releases: BTreeMap<String, Vec<(String, String)>>,
    /// Lines of keys this node owns held by calls of members that left, by (key,
    /// call): when their reservation lapses (None until the next
    /// [`LineService::expire_reservations`] sets it).
    reserved: HashMap<(String, String), Option<Instant>>,
}

impl LineService {
    /// A node alone (its first view): it owns every key.
    pub fn new(me: &str) -> LineService {
        LineService {
            me: me.to_string(),
            members: vec![me.to_string()],
            epochs: BTreeMap::new(),
            settled: None,
            requests: HashMap::new(),
            tables: HashMap::new(),
            handover: HashMap::new(),
            rebuild: None,
            suspended: false,
            reconcile_wanted: false,
            next_round: 1,
            out: Vec::new(),
            entries: HashMap::new(),
            lazy_releases: BTreeMap::new(),
            reserved: HashMap::new(),
        }
    }

    fn owner_of(&self, key: &str) -> String {
        owner(key, self.members.iter().map(String::as_str))
            .unwrap_or(&self.me)
            .to_string()
    }

    /// The live members of the current view (this node included).
    pub fn members(&self) -> &[String] {
        &self.members
    }

    /// `node` in its incarnation of the current view (see [`Holder`]).
    fn holder(&self, node: &str) -> Holder {
        Holder {
            node: node.to_string(),
            epoch: self.epochs.get(node).copied().unwrap_or(0),
        }
    }

    /// Whether `h` is a member up in the current view in that incarnation.
    fn is_up(&self, h: &Holder) -> bool {
        self.epochs.get(&h.node) == Some(&h.epoch)
    }

    /// Each node's entries in the tables, counted afresh.
    fn count_entries(&self) -> HashMap<String, usize> {
        let mut n: HashMap<String, usize> = HashMap::new();
        for t in self.tables.values() {
            for h in t.held.values().chain(t.waiting.values()) {
                *n.entry(h.node.clone()).or_default() += 1;
            }
        }
        n
    }

    /// An entry of `holder` left the tables (if one did).
    fn entry_gone(&mut self, holder: Option<Holder>) {
        let Some(h) = holder else { return };
        if let Some(n) = self.entries.get_mut(&h.node) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.entries.remove(&h.node);
            }
        }
    }

    /// Whether a new entry of `node`'s for `key` is refused: past
    /// [`MAX_ENTRIES_PER_MEMBER`], or a queue past [`MAX_WAITING_PER_KEY`].
    fn refuses(&self, node: &str, key: &str) -> bool {
        if node == self.me {
            return false;
        }
        self.entries.get(node).copied().unwrap_or(0) >= MAX_ENTRIES_PER_MEMBER
            || self
                .tables
                .get(key)
                .is_some_and(|t| t.waiting.len() >= MAX_WAITING_PER_KEY)
    }

    /// Whether this node owned `key` when its tables were last rebuilt (see
    /// [`LineService::settled`]).
    fn owned_when_settled(&self, key: &str) -> bool {
        self.settled
            .as_ref()
            .is_some_and(|m| owner(key, m.iter().map(String::as_str)) == Some(self.me.as_str()))
    }

    /// Whether this node is rebuilding or suspended (granting nothing).
    pub fn rebuilding(&self) -> bool {
        self.rebuild.is_some()
    }

    /// Grants nothing until [`LineService::resume`] (the node's lease lapsed: others
    /// may be taking over): requests wait as during a rebuild.
    pub fn suspend(&mut self) {
        self.suspended = true;
        if self.rebuild.is_none() {
            self.rebuild = Some(Rebuild {
                round: 0,
                ..Rebuild::default()
            });
        }
    }

    /// Ends a suspension with a rebuild over `members` (see [`LineService::view`]):
    /// while suspended the tables may have fallen behind (messages from peers were
    /// dropped as if a rebuild were under way), so they are rebuilt from every
    /// holder's report before anything is granted.
    pub fn resume(&mut self, members: Vec<(String, u64)>) {
        self.suspended = false;
        self.view(members);
    }

    /// What to do next, in order.
    pub fn poll(&mut self) -> Option<Output> {
        (!self.out.is_empty()).then(|| self.out.remove(0))
    }

    /// Drains every output.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.out)
    }

    /// Releases to send with the next heartbeat to `owner` (taken).
    pub fn take_lazy_releases(&mut self, to: &str) -> Vec<LineMsg> {
        self.lazy_releases
            .remove(to)
            .unwrap_or_default()
            .into_iter()
            .map(|(key, call)| LineMsg::Release {
                key,
                call,
                forwarded: false,
            })
            .collect()
    }

    /// Every owner with releases waiting for a heartbeat.
    pub fn lazy_release_owners(&self) -> Vec<String> {
        self.lazy_releases.keys().cloned().collect()
    }

    // ---- this node's calls ----

    /// A call of this node asks for a line of `key`. The answer comes as an
    /// [`Output::Local`] (at once when this node owns the key and is not rebuilding).
    pub fn acquire(&mut self, key: &str, call: &str, limit: u32, now_ms: i64) {
        let id = (key.to_string(), call.to_string());
        if self.requests.contains_key(&id) {
            return;
        }
        self.requests.insert(
            id,
            Request {
                limit,
                arrived_ms: now_ms,
                state: ReqState::Pending,
                cancelled: false,
                urgent: false,
                adopted: false,
            },
        );
        let msg = LineMsg::Acquire {
            key: key.to_string(),
            call: call.to_string(),
            limit,
            arrived_ms: now_ms,
        };
        self.send_to_owner(key, msg);
    }

    /// A call that held a line of `key` on the node that ran it before (it died, or
    /// handed the call over) runs here now: it holds the line here from now on, even
    /// over the limit (the call is up, and a count without it would let one caller too
    /// many through). The owner counts it when the `Adopt` arrives; until it answers,
    /// the request is resent like an unanswered one, and reported as held.
    pub fn adopt(&mut self, key: &str, call: &str, limit: u32) {
        self.requests.insert(
            (key.to_string(), call.to_string()),
            Request {
                limit,
                // Held, never queued: no arrival (so its checkpoint's limit, maybe
                // older than any request's, never decides a rebuilt table's).
                arrived_ms: i64::MIN,
                state: ReqState::Pending,
                cancelled: false,
                urgent: true,
                adopted: true,
            },
        );
        let msg = LineMsg::Adopt {
            key: key.to_string(),
            call: call.to_string(),
            limit,
        };
        self.send_to_owner(key, msg);
    }

    /// Forgets a line of this node's call without giving it back: the call moved to
    /// another node, which adopted the line (a release from here would free it there).
    pub fn forget(&mut self, key: &str, call: &str) {
        self.requests.remove(&(key.to_string(), call.to_string()));
    }

    /// The message that asks `key`'s owner again for an unanswered request.
    fn ask_again(key: String, call: String, r: &Request) -> LineMsg {
        if r.adopted {
            LineMsg::Adopt {
                key,
                call,
                limit: r.limit,
            }
        } else {
            LineMsg::Acquire {
                key,
                call,
                limit: r.limit,
                arrived_ms: r.arrived_ms,
            }
        }
    }

    /// A call of this node is done with `key` (held or waiting or still asking).
    pub fn release(&mut self, key: &str, call: &str) {
        let id = (key.to_string(), call.to_string());
        let Some(req) = self.requests.get_mut(&id) else {
            return;
        };
        match req.state {
            ReqState::Pending => req.cancelled = true, // undone when the answer comes
            ReqState::Waiting | ReqState::Held => {
                let urgent = req.state == ReqState::Waiting || req.urgent;
                self.requests.remove(&id);
                self.give_back(key, call, urgent);
            }
        }
    }

    /// Sends a release to the key's owner: now, or with the next heartbeat.
    fn give_back(&mut self, key: &str, call: &str, urgent: bool) {
        let owner = self.owner_of(key);
        if owner != self.me && !urgent {
            self.lazy_releases
                .entry(owner)
                .or_default()
                .push((key.to_string(), call.to_string()));
            return;
        }
        let msg = LineMsg::Release {
            key: key.to_string(),
            call: call.to_string(),
            forwarded: false,
        };
        self.send_to_owner(key, msg);
    }

    /// Sends `msg` to the key's owner, or handles it here if that is this node.
    fn send_to_owner(&mut self, key: &str, msg: LineMsg) {
        let owner = self.owner_of(key);
        if owner == self.me {
            let me = self.me.clone();
            if let Some(r) = self.rebuild.as_mut() {
                r.local_held_back.push(msg);
                return;
            }
            self.as_owner(&me, msg);
        } else {
            self.out.push(Output::Send { to: owner, msg });
        }
    }

    /// This node's view changed: these members are up, each in its incarnation (this
    /// node included). Every node rebuilds its tables (see the module doc); requests
    /// still unanswered go to their owners again.
    pub fn view(&mut self, members: Vec<(String, u64)>) {
        let mine = self.epochs.get(&self.me).copied().unwrap_or(0);
        let mut epochs: BTreeMap<String, u64> = members.into_iter().collect();
        epochs.entry(self.me.clone()).or_insert(mine);
        self.members = epochs.keys().cloned().collect();
        self.epochs = epochs;
        // Keys that moved away: their entries wait for the new owner's request (see
        // `Handed`); keys that came back need nothing of the sort (the rebuild counts
        // them).
        let moved: Vec<String> = self
            .tables
            .keys()
            .filter(|k| self.owner_of(k) != self.me)
            .cloned()
            .collect();
        for key in moved {
            if let Some(table) = self.tables.remove(&key) {
                self.handover.insert(key, Handed { table, until: None });
            }
        }
        // Keys that came back take back what this node kept of them: the lines of
        // members that left in it must stay reserved through the rebuild (dropped, a
        // line reserved for a takeover was granted to a waiter, then adopted: one over
        // the limit; a review). The rebuild counts live members' lines by their own
        // reports, as for any table of ours.
        let back: Vec<String> = self
            .handover
            .keys()
            .filter(|k| self.owner_of(k) == self.me)
            .cloned()
            .collect();
        for key in back {
            if let Some(h) = self.handover.remove(&key) {
                self.tables.entry(key).or_insert(h.table);
            }
        }
        self.entries = self.count_entries();
        // Releases waiting for a heartbeat to an owner that left go to the new owner.
        let lazy = std::mem::take(&mut self.lazy_releases);
        for (_, items) in lazy {
            for (key, call) in items {
                self.give_back(&key, &call, false);
            }
        }
        self.start_rebuild();
    }

    /// Rebuilds the tables with the members as they are: a session with a member came
    /// back, and line frames sent while it was down are lost (a release, and the owner
    /// counts a line nobody holds until the next view change while callers queue; a
    /// grant, and a caller waits for a line that is its own: a review). Keys keep their
    /// owners, and the entries kept for other owners stay (their snapshot request may
    /// come again), and are not taken from the others' snapshots (see
    /// [`LineService::settled`]). One asked for while
    /// a rebuild (or a suspension) is under way starts when it ends: that one may have
    /// had a snapshot from before the frames were lost.
    pub fn reconcile(&mut self) {
        if self.rebuild.is_some() {
            self.reconcile_wanted = true;
            return;
        }
        self.start_rebuild();
    }

    /// Asks every other member for its snapshot and grants nothing until all are in
    /// (see the module doc); requests still unanswered go to their owners again.
    fn start_rebuild(&mut self) {
        let round = self.next_round;
        self.next_round += 1;
        let others: BTreeSet<String> = self
            .members
            .iter()
            .filter(|m| **m != self.me)
            .cloned()
            .collect();
        let mut rebuild = Rebuild {
            round,
            waiting_for: others.clone(),
            ..Rebuild::default()
        };
        // A rebuild interrupted by this change: what was held back still counts.
        if let Some(old) = self.rebuild.take() {
            rebuild.local_held_back = old.local_held_back;
        }
        // The tables are rebuilt from the holders' reports alone (ours included): an
        // entry of our old table may be a line given back in a message dropped as
        // already reflected in its holder's snapshot. Entries of keys we owned and now
        // do not go to their new owners with our snapshot.
        rebuild.reported = self.own_holdings();
        // Except the lines of calls of members that left (or restarted): their holders
        // report nothing now, and the calls may be taken over (see `RESERVED_FOR`).
        rebuild.kept = self.departed_holdings();
        self.rebuild = Some(rebuild);
        for m in &others {
            self.out.push(Output::Send {
                to: m.clone(),
                msg: LineMsg::SnapshotRequest { round },
            });
        }
        self.try_finish_rebuild();
        // Unanswered requests: to their (possibly new) owners. Duplicates are harmless.
        self.ask_again_pending(|_| true);
    }

    /// Asks the owners again for the unanswered requests `which` picks (those owned
    /// elsewhere: this node answers its own).
    fn ask_again_pending(&mut self, which: impl Fn(&Request) -> bool) {
        let pending: Vec<(String, String, Request)> = self
            .requests
            .iter()
            .filter(|(_, r)| r.state == ReqState::Pending && which(r))
            .map(|((k, c), r)| (k.clone(), c.clone(), r.clone()))
            .collect();
        for (key, call, r) in pending {
            let owner = self.owner_of(&key);
            if owner != self.me {
                self.out.push(Output::Send {
                    to: owner,
                    msg: Self::ask_again(key, call, &r),
                });
            }
        }
    }

    /// Sends again what may have been lost (a frame finds no session while a peer is
    /// connecting or reconnecting): the snapshot requests of a rebuild still waiting,
    /// and requests still unanswered. Both are idempotent at their receivers. Not a
    /// request its call gave up: asked again every second while its owner could not
    /// be reached, they grew with every call that gave up meanwhile; its answer comes,
    /// or the rebuild when the owner is reachable again answers it. Except an adopted
    /// line's: reported held, no rebuild answers it, and an owner that dropped its
    /// `Adopt` would count it from the next snapshot on. The driver calls this every
    /// second or so.
    pub fn retry(&mut self) {
        if let Some(r) = &self.rebuild {
            let round = r.round;
            for m in r.waiting_for.clone() {
                self.out.push(Output::Send {
                    to: m,
                    msg: LineMsg::SnapshotRequest { round },
                });
            }
        }
        self.ask_again_pending(|r| !r.cancelled || r.adopted);
    }

    /// This node's calls' lines, for a snapshot. A request its call gave up while it
    /// was unanswered is reported too: its new owner answers it, and the answer gives
    /// the line back (a grant of the old owner may be on its way).
    fn own_holdings(&self) -> Vec<Holding> {
        self.requests
            .iter()
            .map(|((key, call), r)| Holding {
                key: key.clone(),
                call: call.clone(),
                node: self.me.clone(),
                limit: r.limit,
                arrived_ms: r.arrived_ms,
                held: r.state == ReqState::Held || r.adopted,
                epoch: None,
            })
            .collect()
    }

    /// Held lines of our tables whose holders are not members (any more) in that
    /// incarnation: reported with no arrival, like adopted ones, so they never decide
    /// a rebuilt table's limit.
    fn departed_holdings(&self) -> Vec<Holding> {
        let mut out = Vec::new();
        for (key, t) in &self.tables {
            for (call, holder) in &t.held {
                if !self.is_up(holder) {
                    out.push(Holding {
                        key: key.clone(),
                        call: call.clone(),
                        node: holder.node.clone(),
                        limit: t.limit,
                        arrived_ms: i64::MIN,
                        held: true,
                        epoch: Some(holder.epoch),
                    });
                }
            }
        }
        out
    }

    /// Reservations lapse: a line held by a call of a member that left, and not
    /// adopted within [`RESERVED_FOR`] of the first call after its reservation began,
    /// is freed for the queue. The driver calls this about every second; nothing
    /// lapses during a rebuild. What this node keeps of keys that moved away is dropped
    /// [`RESERVED_FOR`] after they moved (see [`Handed`]), rebuilding or not: it serves
    /// the new owners' rebuilds.
    pub fn expire_reservations(&mut self, now: Instant) {
        self.handover.retain(|_, h| match h.until {
            None => {
                h.until = Some(now + RESERVED_FOR);
                true
            }
            Some(t) => t > now,
        });
        if self.rebuild.is_some() {
            return;
        }
        let mut lapsed = Vec::new();
        for (id, until) in self.reserved.iter_mut() {
            match until {
                None => *until = Some(now + RESERVED_FOR),
                Some(t) if *t <= now => lapsed.push(id.clone()),
                Some(_) => {}
            }
        }
        for (key, call) in lapsed {
            self.reserved.remove(&(key.clone(), call.clone()));
            let departed = self
                .tables
                .get(&key)
                .and_then(|t| t.held.get(&call))
                .is_some_and(|holder| !self.is_up(holder));
            let gone = departed
                .then(|| self.tables.get_mut(&key).and_then(|t| t.remove(&call)))
                .flatten();
            if gone.is_some() {
                self.entry_gone(gone);
                tracing::info!(%key, %call, "a line of a call of a member that left was not taken over: freed");
                self.fill_and_answer(&key);
            }
        }
    }

    /// Lines reserved for calls of members that left (see [`RESERVED_FOR`]).
    pub fn reserved_lines(&self) -> usize {
        self.reserved.len()
    }

    /// The handed-over entries of keys `who` owns in the current view.
    fn handover_for(&self, who: &str) -> Vec<Holding> {
        let mut out = Vec::new();
        for (key, h) in &self.handover {
            if self.owner_of(key) != who {
                continue;
            }
            let t = &h.table;
            for (call, holder) in &t.held {
                out.push(Holding {
                    key: key.clone(),
                    call: call.clone(),
                    node: holder.node.clone(),
                    limit: t.limit,
                    arrived_ms: 0,
                    held: true,
                    epoch: Some(holder.epoch),
                });
            }
            for ((arrived_ms, call), holder) in &t.waiting {
                out.push(Holding {
                    key: key.clone(),
                    call: call.clone(),
                    node: holder.node.clone(),
                    limit: t.limit,
                    arrived_ms: *arrived_ms,
                    held: false,
                    epoch: Some(holder.epoch),
                });
            }
        }
        out
    }

    /// A line message from member `from` (up in the current view: the caller checks),
    /// at `now_ms` by this node's wall clock (ms since the epoch). One naming an id
    /// longer than [`MAX_ID_LEN`] is dropped.
    pub fn on_message(&mut self, from: &str, msg: LineMsg, now_ms: i64) {
        if !ids_fit(&msg) {
            tracing::debug!(member = %from, "line message with an over-long id dropped");
            return;
        }
        let msg = stamped_within(msg, now_ms);
        match msg {
            LineMsg::Answer { key, call, answer } => self.on_answer(&key, &call, answer),
            LineMsg::SnapshotRequest { round } => {
                let handed_over = self.handover_for(from);
                let msg = LineMsg::Snapshot {
                    round,
                    holdings: self.own_holdings(),
                    handed_over,
                };
                self.out.push(Output::Send {
                    to: from.to_string(),
                    msg,
                });
            }
            LineMsg::Snapshot {
                round,
                holdings,
                handed_over,
            } => {
                // What the sender kept of keys this node already owned when its tables
                // were last rebuilt is older than they are (see `settled`).
                let handed_over: Vec<Holding> = handed_over
                    .into_iter()
                    .filter(|h| !self.owned_when_settled(&h.key))
                    .filter(|h| holding_fits(h) && crate::protocol::is_node_name(&h.node))
                    .collect();
                // Not cut at a count: a holder lists every line it has, of every
                // owner's keys, and one cut from a busy node lost held lines, granted
                // again over the limit (a review). The frame's size bounds them.
                let holdings = holdings.into_iter().filter(holding_fits);
                let Some(r) = self.rebuild.as_mut().filter(|r| r.round == round) else {
                    return; // an old round's
                };
                if r.waiting_for.remove(from) {
                    r.answered.insert(from.to_string());
                    // A holder reports its own calls' lines: in its current incarnation.
                    r.reported.extend(holdings.into_iter().map(|h| Holding {
                        node: from.to_string(),
                        epoch: None,
                        ..h
                    }));
                    r.kept.extend(handed_over);
                }
                self.try_finish_rebuild();
            }
            LineMsg::Release { ref key, .. }
            | LineMsg::Acquire { ref key, .. }
            | LineMsg::Adopt { ref key, .. }
                if self.owner_of(key) != self.me =>
            {
                // Not a key of ours: handled at once, rebuilding or not (a release
                // leaves our old entries and goes on to the owner).
                self.as_owner(from, msg);
            }
            other => {
                if let Some(r) = self.rebuild.as_mut() {
                    // Before the sender's snapshot: already in it.
                    if !r.answered.contains(from) {
                        return;
                    }
                    let n = r.held_back_from.entry(from.to_string()).or_default();
                    if *n >= MAX_HELD_BACK_PER_MEMBER {
                        // Dropped: the next rebuild's snapshots reflect it.
                        self.reconcile_wanted = true;
                        return;
                    }
                    let held = (from.to_string(), other);
                    if r.held_back_seen.insert(held.clone()) {
                        r.held_back.push(held);
                        *n += 1;
                    }
                    return;
                }
                self.as_owner(from, other);
            }
        }
    }

    /// Ends the rebuild once every live member's snapshot is in: the tables of the
    /// keys this node owns are replaced by what the snapshots say, every request that
    /// waited for an answer gets one, and what was held back is handled in order.
    fn try_finish_rebuild(&mut self) {
        // Suspended, nothing is granted: the rebuild ends after `resume`.
        if self.suspended
            || !self
                .rebuild
                .as_ref()
                .is_some_and(|r| r.waiting_for.is_empty())
        {
            return;
        }
        let Some(r) = self.rebuild.take() else { return };
        let mut tables: HashMap<String, KeyTable> = HashMap::new();
        // Held wins over waiting for the same call (a grant that crossed a snapshot).
        let pending_reported: Vec<Holding> = r
            .reported
            .iter()
            .filter(|h| !h.held && h.node != self.me)
            .cloned()
            .collect();
        let mut by_call: BTreeMap<(String, String), (Holding, Holder)> = BTreeMap::new();
        for (h, holder) in self.counted(r.reported, r.kept) {
            if self.owner_of(&h.key) != self.me {
                continue;
            }
            let id = (h.key.clone(), h.call.clone());
            match by_call.get(&id) {
                Some((old, _)) if old.held || (!h.held && old.arrived_ms <= h.arrived_ms) => {}
                _ => {
                    by_call.insert(id, (h, holder));
                }
            }
        }
        // Each key's limit is that of its newest request (by arrival), as the request
        // path takes it: the provisioning in force when the latest caller came. Not
        // the highest (a limit lowered since an older call took its line would come
        // back) nor the lowest (a raised one would). Adopted lines report no arrival:
        // their limit is their checkpoint's, maybe older than any request's.
        let mut newest: HashMap<String, (i64, u32)> = HashMap::new();
        for ((key, call), (h, holder)) in by_call {
            let n = newest.entry(key.clone()).or_insert((h.arrived_ms, h.limit));
            if h.arrived_ms > n.0 || (h.arrived_ms == n.0 && h.limit < n.1) {
                *n = (h.arrived_ms, h.limit);
            }
            let t = tables.entry(key).or_default();
            if h.held {
                t.held.insert(call, holder);
            } else {
                t.waiting.insert((h.arrived_ms, call), holder);
            }
        }
        for (key, (_, limit)) in newest {
            if let Some(t) = tables.get_mut(&key) {
                t.limit = limit;
            }
        }
        // Past a queue's bound, the latest callers are not kept (see
        // `MAX_WAITING_PER_KEY`).
        for t in tables.values_mut() {
            while t.waiting.len() > MAX_WAITING_PER_KEY {
                t.waiting.pop_last();
            }
        }
        self.tables = tables;
        self.entries = self.count_entries();
        self.settled = Some(self.members.clone());
        // Held by calls of members that left (our old table's, or handed over by the
        // key's previous owner): reserved, a reservation already running kept as it is.
        let departed: BTreeSet<(String, String)> = self
            .departed_holdings()
            .into_iter()
            .map(|h| (h.key, h.call))
            .collect();
        self.reserved.retain(|id, _| departed.contains(id));
        for id in departed {
            self.reserved.entry(id).or_insert(None);
        }
        // Grant what fits, then tell every waiter where it stands (remote requests
        // were reported as not held: they may be waiting for their first answer).
        let keys: Vec<String> = self.tables.keys().cloned().collect();
        for key in keys {
            self.fill_and_answer(&key);
        }
        for h in pending_reported {
            let Some(t) = self.tables.get(&h.key) else {
                continue;
            };
            let answer = if t.held.contains_key(&h.call) {
                Answer::Granted { urgent: t.urgent() }
            } else if let Some(position) = t.position(&h.call) {
                Answer::Queued { position }
            } else {
                continue;
            };
            self.answer(&h.node, &h.key, &h.call, answer);
        }
        // This node's own pending requests for keys it owns: answered from the table.
        let mine: Vec<(String, String)> = self
            .requests
            .iter()
            .filter(|((k, _), q)| q.state == ReqState::Pending && self.owner_of(k) == self.me)
            .map(|(id, _)| id.clone())
            .collect();
        for (key, call) in mine {
            let Some(t) = self.tables.get(&key) else {
                continue;
            };
            let answer = if t.held.contains_key(&call) {
                Answer::Granted { urgent: t.urgent() }
            } else if let Some(position) = t.position(&call) {
                Answer::Queued { position }
            } else {
                continue;
            };
            let me = self.me.clone();
            self.answer(&me, &key, &call, answer);
        }
        for (from, msg) in r.held_back {
            self.as_owner(&from, msg);
        }
        let me = self.me.clone();
        for msg in r.local_held_back {
            self.as_owner(&me, msg);
        }
        if std::mem::take(&mut self.reconcile_wanted) {
            self.reconcile();
        }
    }

    /// What a rebuild counts, with each line's holder: every holder's report, and of
    /// the lines a table knows of (see [`Rebuild::kept`]) those of members that left
    /// (held) and those of members up that their holder reports. The reports come
    /// first: of two held entries of one call (an old one of a member that left, and
    /// its adopter's), the first counts.
    fn counted(&self, reported: Vec<Holding>, kept: Vec<Holding>) -> Vec<(Holding, Holder)> {
        let named: BTreeSet<(&str, &str, &str)> = reported
            .iter()
            .map(|h| (h.key.as_str(), h.call.as_str(), h.node.as_str()))
            .collect();
        let admitted: Vec<(Holding, Holder)> = kept
            .into_iter()
            .filter_map(|h| {
                let holder = match h.epoch {
                    Some(epoch) => Holder {
                        node: h.node.clone(),
                        epoch,
                    },
                    None => self.holder(&h.node),
                };
                let counts = if self.is_up(&holder) {
                    named.contains(&(h.key.as_str(), h.call.as_str(), h.node.as_str()))
                } else {
                    h.held
                };
                counts.then_some((h, holder))
            })
            .collect();
        let mut out: Vec<(Holding, Holder)> = reported
            .into_iter()
            .map(|h| {
                let holder = self.holder(&h.node);
                (h, holder)
            })
            .collect();
        out.extend(admitted);
        out
    }

    /// Grants freed lines of `key` to its waiters in order and tells them.
    fn fill_and_answer(&mut self, key: &str) {
        let Some(t) = self.tables.get_mut(key) else {
            return;
        };
        let granted = t.fill();
        let urgent = t.urgent();
        for (node, call) in granted {
            self.answer(&node, key, &call, Answer::Granted { urgent });
        }
        if self
            .tables
            .get(key)
            .is_some_and(|t| t.held.is_empty() && t.waiting.is_empty())
        {
            self.tables.remove(key);
        }
    }

    fn answer(&mut self, node: &str, key: &str, call: &str, answer: Answer) {
        if node == self.me {
            self.on_answer(key, call, answer);
        } else {
            self.out.push(Output::Send {
                to: node.to_string(),
                msg: LineMsg::Answer {
                    key: key.to_string(),
                    call: call.to_string(),
                    answer,
                },
            });
        }
    }

    /// The owner's side: a request of `from`'s call.
    fn as_owner(&mut self, from: &str, msg: LineMsg) {
        match msg {
            LineMsg::Acquire {
                key,
                call,
                limit,
                arrived_ms,
            } => {
                if self.owner_of(&key) != self.me {
                    // Not ours (views differ for a moment): the requester sends it
                    // again to the right owner when its view changes, and the new
                    // owner's rebuild asks it anyway.
                    return;
                }
                // A call the table knows is answered as it stands, bound or not (the
                // queue scanned only when a bound is hit).
                let known =
                    |t: &KeyTable| t.held.contains_key(&call) || t.position(&call).is_some();
                if self.refuses(from, &key) && !self.tables.get(&key).is_some_and(known) {
                    // Answered as queued last, so its requester does not ask again; its
                    // caller gives up after its longest wait.
                    let waiting = self.tables.get(&key).map_or(0, |t| t.waiting.len());
                    let position = u32::try_from(waiting).unwrap_or(u32::MAX).saturating_add(1);
                    tracing::debug!(member = %from, %key, "line request past a bound refused");
                    self.answer(from, &key, &call, Answer::Queued { position });
                    return;
                }
                let holder = self.holder(from);
                let t = self.tables.entry(key.clone()).or_default();
                let raised = limit > t.limit && !(t.held.is_empty() && t.waiting.is_empty());
                t.limit = limit;
                let answer = if t.held.contains_key(&call) {
                    Answer::Granted { urgent: t.urgent() }
                } else if let Some(position) = t.position(&call) {
                    Answer::Queued { position }
                } else if (t.held.len() as u32) < t.limit && t.waiting.is_empty() {
                    t.held.insert(call.clone(), holder);
                    *self.entries.entry(from.to_string()).or_default() += 1;
                    Answer::Granted { urgent: t.urgent() }
                } else {
                    t.waiting.insert((arrived_ms, call.clone()), holder);
                    *self.entries.entry(from.to_string()).or_default() += 1;
                    Answer::Queued {
                        position: t.position(&call).unwrap_or(1),
                    }
                };
                self.answer(from, &key, &call, answer);
                if raised {
                    // Lines the new limit frees go to the queue, in its order.
                    self.fill_and_answer(&key);
                }
            }
            LineMsg::Release {
                key,
                call,
                forwarded,
            } => {
                let owner = self.owner_of(&key);
                if owner != self.me {
                    // A key we owned before: the entry leaves our table here (so the
                    // new owner does not get it with our snapshot) and the release
                    // goes on to the new owner.
                    if let Some(h) = self.handover.get_mut(&key) {
                        h.table.remove(&call);
                    }
                    let gone = self.tables.get_mut(&key).and_then(|t| t.remove(&call));
                    self.entry_gone(gone);
                    if !forwarded {
                        self.out.push(Output::Send {
                            to: owner,
                            msg: LineMsg::Release {
                                key,
                                call,
                                forwarded: true,
                            },
                        });
                    }
                    return;
                }
                self.reserved.remove(&(key.clone(), call.clone()));
                let gone = self.tables.get_mut(&key).and_then(|t| t.remove(&call));
                if gone.is_some() {
                    self.entry_gone(gone);
                    self.fill_and_answer(&key);
                }
            }
            LineMsg::Adopt { key, call, limit } => {
                if self.owner_of(&key) != self.me {
                    return; // resent to the right owner when the views agree
                }
                // Never refused for a bound: the call holds its line already (see
                // `MAX_ENTRIES_PER_MEMBER`).
                let holder = self.holder(from);
                let t = self.tables.entry(key.clone()).or_default();
                // The adopted call's limit is its checkpoint's, maybe older than the
                // table's (set by the latest request): it only starts a new table.
                if t.held.is_empty() && t.waiting.is_empty() {
                    t.limit = limit;
                }
                let gone = t.remove(&call); // a waiting, older or reserved entry of the call
                t.held.insert(call.clone(), holder);
                let answer = Answer::Granted { urgent: t.urgent() };
                self.entry_gone(gone);
                *self.entries.entry(from.to_string()).or_default() += 1;
                self.reserved.remove(&(key.clone(), call.clone()));
                self.answer(from, &key, &call, answer);
            }
            // Answers and snapshots are not owner business: `on_message` takes them
            // before they could come here.
            LineMsg::Answer { .. } | LineMsg::SnapshotRequest { .. } | LineMsg::Snapshot { .. } => {
            }
        }
    }

    /// The owner answered one of this node's calls.
    fn on_answer(&mut self, key: &str, call: &str, answer: Answer) {
        let id = (key.to_string(), call.to_string());
        let Some(req) = self.requests.get_mut(&id) else {
            // Gone already: a grant for it goes straight back.
            if let Answer::Granted { .. } = answer {
                self.give_back(key, call, true);
            }
            return;
        };
        let before = req.state;
        req.state = match answer {
            Answer::Granted { urgent } => {
                req.urgent |= urgent;
                ReqState::Held
            }
            // A queue position sent before the grant, arriving after it (or an old
            // owner's): a held line never goes back to waiting, or the next snapshot
            // would queue a call that talks and give its line away.
            Answer::Queued { .. } if before == ReqState::Held => ReqState::Held,
            Answer::Queued { .. } => ReqState::Waiting,
        };
        if req.cancelled {
            self.requests.remove(&id);
            self.give_back(key, call, true);
            return;
        }
        if before == ReqState::Held || req.adopted {
            return; // told again (after a rebuild), or adopted: nothing new for the call
        }
        if before == ReqState::Waiting && req.state == ReqState::Waiting {
            return;
        }
        self.out.push(Output::Local {
            key: key.to_string(),
            call: call.to_string(),
            answer,
        });
    }

    /// Lines held and calls waiting in this node's tables (keys it owns): for status.
    pub fn table_counts(&self) -> (usize, usize) {
        self.tables
            .values()
            .fold((0, 0), |(h, w), t| (h + t.held.len(), w + t.waiting.len()))
    }

    /// Calls of this node waiting in some queue.
    pub fn waiting_calls(&self) -> usize {
        self.requests
            .values()
            .filter(|r| r.state == ReqState::Waiting)
            .count()
    }
}

/// `msg` with its queue stamps taken within this node's clock at `now_ms`: a waiting
/// call's no earlier than [`MAX_WAIT`] before it, any no later than it. A peer's stamp
/// is its own wall clock's: one from long ago jumped every queue, one from the future
/// stayed behind every later caller (a review). Held lines keep earlier stamps (those
/// carry no queue order, and some mean "no arrival"). Not helped: a rebuild takes a
/// table's limit from its newest stamp, and one from the future counts as now there.
fn stamped_within(msg: LineMsg, now_ms: i64) -> LineMsg {
    let earliest = now_ms.saturating_sub(i64::try_from(MAX_WAIT.as_millis()).unwrap_or(i64::MAX));
    let within = |h: Holding| Holding {
        arrived_ms: if h.held {
            h.arrived_ms.min(now_ms)
        } else {
            h.arrived_ms.clamp(earliest, now_ms.max(earliest))
        },
        ..h
    };
    match msg {
        LineMsg::Acquire {
            key,
            call,
            limit,
            arrived_ms,
        } => LineMsg::Acquire {
            key,
            call,
            limit,
            arrived_ms: arrived_ms.clamp(earliest, now_ms.max(earliest)),
        },
        LineMsg::Snapshot {
            round,
            holdings,
            handed_over,
        } => LineMsg::Snapshot {
            round,
            holdings: holdings.into_iter().map(within).collect(),
            handed_over: handed_over.into_iter().map(within).collect(),
        },
        other => other,
    }
}

/// Whether every id `msg` names is at most [`MAX_ID_LEN`] long (a snapshot's entries
/// are looked at one by one: [`holding_fits`]).
fn ids_fit(msg: &LineMsg) -> bool {
    match msg {
        LineMsg::Acquire { key, call, .. }
        | LineMsg::Answer { key, call, .. }
        | LineMsg::Release { key, call, .. }
        | LineMsg::Adopt { key, call, .. } => key.len() <= MAX_ID_LEN && call.len() <= MAX_ID_LEN,
        LineMsg::SnapshotRequest { .. } | LineMsg::Snapshot { .. } => true,
    }
}

/// Whether a snapshot's entry names ids at most [`MAX_ID_LEN`] long.
fn holding_fits(h: &Holding) -> bool {
    h.key.len() <= MAX_ID_LEN && h.call.len() <= MAX_ID_LEN
}

#[cfg(test)]
mod tests;
