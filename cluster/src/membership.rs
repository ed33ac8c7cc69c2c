//! Who is in the cluster, as one node sees it: a failure detector over heartbeats, with
//! incarnations. Sans-IO: heartbeats and ticks go in with the time, events come out.
//!
//! - Every node sends a heartbeat to every other every [`Timing::heartbeat`]; a peer
//!   not heard from for [`Timing::down_after`] is declared down.
//! - A node is an incarnation: `(name, epoch)`, the epoch going up at every start. A
//!   heartbeat from a newer epoch is a new member (the old incarnation is down); one
//!   from an incarnation already declared down is *stale*: that node was frozen or cut
//!   off, others may have taken over what it held, and it must rejoin as a new
//!   incarnation before it acts again. It is told so ([`Verdict::Stale`]).
//! - A tick that comes long after the previous one means this node itself was frozen
//!   (SIGSTOP, a VM pause): peers are then given a fresh window instead of being
//!   declared down for a silence that was ours.
//! - The node's *lease* ([`Membership::lease_valid`]): it may act (send RTP, answer,
//!   grant lines) only while a peer acknowledged one of its heartbeats within
//!   [`Timing::lease`], which is shorter than `down_after`: by the time peers declare it
//!   down, it has stopped acting on its own. A node with no peer up holds the lease
//!   if it is a majority (below).
//! - A node that has not heard a single peer since it started (a wrong cluster secret
//!   or certificate, a cut network) knows nothing of the others: it declares nobody
//!   down while the store shows a member alive ([`Membership::store_signs`]).
//!   Otherwise such a node, alone in its view, would hold the lease, declare every
//!   live member down and take their calls over. It stays without the lease instead
//!   (its peers up and never acknowledging), so it takes no calls until it joins.
//! - *Majority*: a silent peer is declared down only by a side of the cluster that is a
//!   majority ([`is_majority`]) of the members that count: those it hears, and the
//!   incarnations the store shows alive that it cannot reach (heard before and silent
//!   now, or listed by the store and never heard: alive, so silent because the network
//!   between us is cut, not dead), and those the store has shown alive for
//!   [`NEWER_GRACE`] that this view has not (a member's newer start, a member never
//!   known: a survivor whose peers restarted out of its reach is a minority). A member never heard in its incarnation is not
//!   declared down for its silence while the store shows it alive. A node cut off from
//!   its peers but not from the store is such a minority: it declares nobody down,
//!   holds no lease (it stops sending RTP and SIP within [`Timing::lease`]), and the
//!   majority declares it down, marks that in the store and takes its calls over; it
//!   learns so from the store and rejoins as a new incarnation, which has no lease
//!   until a peer acknowledges it ([`Membership::rejoined`]). Without the rule it
//!   would declare the majority down and, when the network healed, tell every one of
//!   them to rejoin, dropping their calls. Halves of equal size: the half with the
//!   lowest-named member is the majority. Incarnations are matched exactly: a newer
//!   incarnation of a member in the store proves the one heard here gone. A member
//!   dead for good stops counting when its sign of life ages out of the store's
//!   window. A store that cannot be read leaves its last read standing: a node cut
//!   off from its peers and from the store alike stays the minority it was (were the
//!   read to age out, it would be a majority of one, declare everyone down, and when
//!   the network healed tell the real majority to rejoin); the price is that a member
//!   that dies while the store is unreadable still counts until the next read (a
//!   majority of the rest goes on; two nodes, one dead, go on only on the tie-break).
//!   A node just started holds its lease for one
//!   lease period whatever the majority (it has nothing yet others could take over).
//! - *Heard through others* (SWIM's indirect probe, by gossip): every heartbeat says
//!   which members its sender heard itself, and how long ago ([`Membership::hears`]).
//!   A member this node cannot hear but another member in good standing heard within
//!   `down_after` is alive, only not reachable from here: it is not declared down
//!   ([`Membership::on_hears`]). Without this one bad link (a firewall rule, a route,
//!   one member's receive queue) took a member down for the whole cluster, which then
//!   dropped and took over its calls, and its next incarnation, still cut off from
//!   that one observer, went down again the same way. Only what a member heard itself
//!   is passed on, never what it was told: two members cannot keep a dead one alive
//!   by vouching for it to each other.
//! - A member an operator took out of the cluster for good is *retired*
//!   ([`Membership::retire`]): no longer listed, counted or alerted on, but
//!   remembered, so its incarnation's heartbeats stay stale; a new incarnation of
//!   that name is a member again.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// How long after a node first hears a peer the members the store lists but it never
/// heard stay exempt from being declared down for their silence (see
/// `Membership::silent`).
pub const UNHEARD_GRACE: Duration = Duration::from_secs(10);

/// How long the store must show alive an incarnation this node has not in its view
/// (a member's newer start, a member it never knew) before it counts in the majority
/// unheard (with at least one other member out of reach: one process alone can take
/// nothing over). A member's restart is heard within a second or two, so the members
/// that hear each other keep their lease through it (counted at once, a restart cut
/// a healthy pair's lease until it was heard: a review); and a node left alone by its
/// peers' deaths, whose peers restarted where it cannot reach them, stops being a
/// majority of one before they, the majority, declare it down ([`UNHEARD_GRACE`]
/// after they hear each other) and take its calls: it learnt their incarnations only
/// at its start and from their frames, and held its lease without end meanwhile (a
/// review).
pub const NEWER_GRACE: Duration = Duration::from_secs(5);

/// The detector's timing.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub heartbeat: Duration,
    pub down_after: Duration,
    /// How long an acknowledged heartbeat keeps the lease (less than `down_after`).
    pub lease: Duration,
}

impl Default for Timing {
    /// 250 ms heartbeats, down after 1.5 s of silence (six missed heartbeats: a busy
    /// runtime delaying a few does not fail a node), lease 1 s.
    fn default() -> Self {
        Timing {
            heartbeat: Duration::from_millis(250),
            down_after: Duration::from_millis(1500),
            lease: Duration::from_millis(1000),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Up,
    Down,
    /// Down, and taken out of the cluster by an operator: not listed.
    Retired,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Up => "up",
            State::Down => "down",
            State::Retired => "retired",
        }
    }
}

/// One peer as this node sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub epoch: u64,
    pub state: State,
    /// When it entered its state.
    pub since: Instant,
    last_heard: Instant,
    /// A frame of this incarnation of it was taken since this node's incarnation
    /// started (else it is up here because the store lists it, or down).
    heard: bool,
    /// The last heartbeat round trip measured to it.
    pub rtt: Option<Duration>,
    /// The newest word of another member in good standing that it heard this
    /// incarnation itself (see the module doc).
    vouch: Option<Vouch>,
    /// When this node last took a frame of this incarnation (`last_heard` is also
    /// moved on after this node's own freeze; this is not): what it tells others.
    last_frame: Option<Instant>,
}

impl Member {
    /// Incarnation `epoch` entering `state` at `now`, not heard yet in it.
    fn new(epoch: u64, state: State, now: Instant) -> Member {
        Member {
            epoch,
            state,
            since: now,
            last_heard: now,
            heard: false,
            rtt: None,
            vouch: None,
            last_frame: None,
        }
    }

    /// Whether it is silent here: not heard for `window`, nor heard by another member
    /// within it. A word grown old still holds while its voucher has not spoken since
    /// without it: the voucher is then as silent as it will soon be, and the member
    /// goes silent with it, not before (`voucher_silent`). Otherwise a node cut off
    /// from the member, whose only voucher froze or died, would find the member silent
    /// up to a heartbeat before the voucher, count the voucher still reachable, and
    /// declare the member down as a majority it no longer is (a live torture run
    /// caught both ends of a cut link declaring each other down so).
    ///
    /// A word says something only if the voucher heard the member at least a
    /// heartbeat later than this node last did: this node missed what it heard (a
    /// cut). A member that dies is last heard by everyone within a heartbeat, and
    /// then the word is ignored, so detection keeps its time (else it waited for the
    /// voucher to withdraw its word: up to half a second more, past 2 s).
    fn silent(&self, now: Instant, timing: &Timing, voucher_silent: impl Fn(&str) -> bool) -> bool {
        let window = timing.down_after;
        if now.saturating_duration_since(self.last_heard) <= window {
            return false;
        }
        match self.vouch_beyond(timing.heartbeat) {
            None => true,
            Some(v) if now.saturating_duration_since(v.at) <= window => false,
            Some(v) => v.withdrawn || voucher_silent(&v.by),
        }
    }

    /// The vouch, if its voucher heard the member over `margin` after this node did.
    fn vouch_beyond(&self, margin: Duration) -> Option<&Vouch> {
        self.vouch
            .as_ref()
            .filter(|v| v.at > self.last_heard + margin)
    }

    /// Whether it is reachable through another member now: a vouch that says
    /// something (see `silent`), fresh and not withdrawn. A stale one made a member
    /// the store lists, never heard here, count as reachable, and a node cut off with
    /// one peer could count itself a majority (a review).
    fn reachable_through_others(&self, now: Instant, timing: &Timing) -> bool {
        self.vouch_beyond(timing.heartbeat).is_some_and(|v| {
            !v.withdrawn && now.saturating_duration_since(v.at) <= timing.down_after
        })
    }
}

/// Another member's word that it heard a member itself.
#[derive(Debug, Clone)]
struct Vouch {
    /// When it heard it, by its word.
    at: Instant,
    /// Who said so.
    by: String,
    /// `by` has since sent a heartbeat that no longer lists it.
    withdrawn: bool,
}

/// One member a heartbeat's sender heard itself, and how long before it sent it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heard {
    pub node: String,
    pub epoch: u64,
    pub ago_ms: u32,
}

/// Entries of one heartbeat's [`Heard`] list taken (a member's list names each other
/// member once; the rest is ignored).
pub const MAX_HEARD: usize = 64;

/// What changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Up { name: String, epoch: u64 },
    Down { name: String, epoch: u64 },
}

/// How a heartbeat was taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// From a member in good standing: acknowledge it.
    Fresh,
    /// From an incarnation this node declared down, or an older one: tell it so.
    Stale,
}

pub struct Membership {
    name: String,
    epoch: u64,
    timing: Timing,
    members: BTreeMap<String, Member>,
    events: Vec<Event>,
    last_tick: Option<Instant>,
    /// When the newest heartbeat a peer acknowledged was sent.
    acked: Option<Instant>,
    /// Heartbeats sent, by sequence number, with when (the last few).
    sent: Vec<(u64, Instant)>,
    next_seq: u64,
    /// When this incarnation started, and when it first heard a peer (None: it has
    /// heard none).
    started: Instant,
    first_heard: Option<Instant>,
    /// The incarnations whose sign of life in the store is recent, as last read (it
    /// stands until the next read: see the module doc), each with when a read first
    /// showed it alive.
    alive_in_store: BTreeMap<String, (u64, Instant)>,
    /// A node just started holds its lease for one lease period before any peer
    /// acknowledges it, majority or not (it has nothing yet others could take over).
    grace_until: Option<Instant>,
}

impl Membership {
    /// A new incarnation: it holds its lease from the start (it has no state of its own
    /// yet that others could have taken over), for one lease period.
    pub fn new(name: &str, epoch: u64, timing: Timing) -> Membership {
        Membership::starting_at(name, epoch, timing, Instant::now())
    }

    pub fn starting_at(name: &str, epoch: u64, timing: Timing, now: Instant) -> Membership {
        Membership {
            name: name.to_string(),
            epoch,
            timing,
            members: BTreeMap::new(),
            events: Vec::new(),
            // Created now: a freeze before the first tick (a node stopped right after
            // it rejoined) is a gap like any other, not its peers' silence.
            last_tick: Some(now),
            acked: Some(now),
            sent: Vec::new(),
            next_seq: 1,
            started: now,
            first_heard: None,
            alive_in_store: BTreeMap::new(),
            grace_until: Some(now + timing.lease),
        }
    }

    /// A new incarnation of a node that was declared down (frozen, cut off): no grace
    /// (it may still be cut off), so it acts once a peer acknowledges it.
    pub fn rejoined(name: &str, epoch: u64, timing: Timing, now: Instant) -> Membership {
        Membership {
            acked: None,
            grace_until: None,
            ..Membership::starting_at(name, epoch, timing, now)
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn timing(&self) -> Timing {
        self.timing
    }

    /// A heartbeat of `from` in incarnation `epoch` arrived at `now`.
    pub fn on_heartbeat(&mut self, from: &str, epoch: u64, now: Instant) -> Verdict {
        if from == self.name {
            return Verdict::Stale; // another process under our name
        }
        self.first_heard.get_or_insert(now);
        let held_alone =
            !self.members.values().any(|m| m.state == State::Up) && self.lease_valid(now);
        let verdict = self.seen(from, epoch, now);
        if verdict == Verdict::Fresh {
            if let Some(m) = self.members.get_mut(from) {
                m.heard = true;
                m.last_frame = Some(now);
            }
            if held_alone {
                // The lease held alone goes on while the newcomer's first
                // acknowledgement is on its way (else it would lapse at once: the
                // last acknowledgement is as old as the last peer's).
                self.acked = Some(now);
            }
        }
        verdict
    }

    /// `from` in incarnation `epoch` is alive as of `now` (heard, or listed by the store).
    fn seen(&mut self, from: &str, epoch: u64, now: Instant) -> Verdict {
        match self.members.get_mut(from) {
            None => {
                self.members
                    .insert(from.to_string(), Member::new(epoch, State::Up, now));
                self.events.push(Event::Up {
                    name: from.to_string(),
                    epoch,
                });
                Verdict::Fresh
            }
            Some(m) if epoch > m.epoch => {
                // Restarted faster than we noticed, if the old one was still up here.
                let next = Member::new(epoch, State::Up, now);
                supersede(&mut self.events, from, m, next);
                self.events.push(Event::Up {
                    name: from.to_string(),
                    epoch,
                });
                Verdict::Fresh
            }
            Some(m) if epoch == m.epoch && m.state == State::Up => {
                m.last_heard = now;
                Verdict::Fresh
            }
            Some(_) => Verdict::Stale,
        }
    }

    /// A member the store lists (not heard from yet): up until heard from or silent
    /// for `down_after`, so a starting node's view is never smaller than the cluster.
    pub fn expect(&mut self, name: &str, epoch: u64, now: Instant) {
        if name == self.name || self.members.get(name).is_some_and(|m| m.epoch >= epoch) {
            return;
        }
        self.seen(name, epoch, now);
    }

    /// The incarnations whose sign of life in the store is recent (the store's
    /// registry as just read; it stands until the next read): members up here but
    /// never heard in those incarnations are not declared down for their silence, and
    /// they and those heard before count in the majority (see the module doc).
    pub fn store_signs(&mut self, alive: impl IntoIterator<Item = (String, u64)>, now: Instant) {
        let before = std::mem::take(&mut self.alive_in_store);
        self.alive_in_store = alive
            .into_iter()
            .map(|(name, epoch)| {
                let since = before
                    .get(&name)
                    .filter(|(e, _)| *e == epoch)
                    .map_or(now, |(_, since)| *since);
                (name, (epoch, since))
            })
            .collect();
    }

    /// Whether a peer's frame was taken since this incarnation started.
    pub fn heard_any(&self) -> bool {
        self.first_heard.is_some()
    }

    /// Whether the store's last read shows member `name`'s incarnation alive.
    fn alive_in_store(&self, name: &str, m: &Member) -> bool {
        self.alive_epoch(name) == Some(m.epoch)
    }

    /// The incarnation of `name` the store's last read shows alive.
    fn alive_epoch(&self, name: &str) -> Option<u64> {
        self.alive_in_store.get(name).map(|(epoch, _)| *epoch)
    }

    /// The incarnations the store has shown alive for [`NEWER_GRACE`] that this view
    /// has not up or down in them or a later one: newer starts of members it saw go
    /// (restarted where it cannot reach them), and members it never knew. They count
    /// in the majority, unreachable, where they and the other members out of reach
    /// are two or more (see [`Membership::majority_without`]).
    fn alive_elsewhere(&self, now: Instant) -> impl Iterator<Item = &str> {
        self.alive_in_store
            .iter()
            .filter(move |(name, (epoch, since))| {
                **name != self.name
                    && now.saturating_duration_since(*since) >= NEWER_GRACE
                    && self.members.get(*name).is_none_or(|m| m.epoch < *epoch)
            })
            .map(|(name, _)| name.as_str())
    }

    /// Whether this node's side is a majority at `now` with the members in `silent`
    /// gone from it (see the module doc). Reachable: this node and the members up
    /// here and heard (not silent). Counted: those, the members up here by the store's
    /// word and not heard yet (not silent), and the incarnations the store shows alive
    /// that were heard before and are silent or declared down now.
    fn majority_without(&self, silent: &BTreeSet<&str>, now: Instant) -> bool {
        let mut counted = BTreeSet::from([self.name.as_str()]);
        let mut reachable = counted.clone();
        for (name, m) in &self.members {
            let name = name.as_str();
            let alive = self.alive_in_store(name, m);
            let (reach, count) = match m.state {
                State::Retired => (false, false),
                State::Up if silent.contains(name) => (false, alive),
                State::Up if m.heard || m.reachable_through_others(now, &self.timing) => {
                    (true, true)
                }
                // Listed by the store, not heard yet: counted, not reachable.
                State::Up => (false, true),
                State::Down => (false, m.heard && alive),
            };
            if reach {
                reachable.insert(name);
            }
            if count {
                counted.insert(name);
            }
        }
        // Those alive elsewhere count where, with the others counted and out of
        // reach, they are two or more: one process alone that hears nobody is a
        // majority of nothing (it cannot declare anyone down), and counting it cut a
        // pair's lease while its partner's restart went unheard (a review).
        let elsewhere: BTreeSet<&str> = self.alive_elsewhere(now).collect();
        let unreachable = counted.difference(&reachable).count();
        if unreachable + elsewhere.difference(&counted).count() >= 2 {
            counted.extend(elsewhere);
        }
        // A node that has heard no peer since it started knows nothing of the others:
        // it wins nothing on a tie-break (a newcomer with a wrong secret, named
        // lowest, would otherwise declare the real cluster's dead members down).
        (self.heard_any() || counted.len() == 1) && is_majority(&reachable, &counted)
    }

    /// Whether this node's side of the cluster is a majority now, without the members
    /// up here but silent for longer than `down_after`: false while the store shows
    /// alive as many members this node cannot hear as it can (a cut network, see the
    /// module doc).
    pub fn in_majority(&self, now: Instant) -> bool {
        self.majority_without(&self.silent(now), now)
    }

    /// The members up here but silent for longer than `down_after`, except those never
    /// heard in their incarnation that the store (as last read) says live, until
    /// [`UNHEARD_GRACE`] after this node first heard a peer: a node cut off, from birth
    /// or since it rejoined, cannot tell them dead, and when the network heals its
    /// sessions come back one by one (TCP's retransmission back-off: seconds apart).
    /// A member that registers and never joins is declared down after that.
    fn silent(&self, now: Instant) -> BTreeSet<&str> {
        let unheard_exempt = self
            .first_heard
            .is_none_or(|t| now.saturating_duration_since(t) < UNHEARD_GRACE);
        let window = self.timing.down_after;
        // A voucher is silent by what this node heard of it itself (no vouching for
        // vouchers: the chain stops at one hop).
        let voucher_silent = |by: &str| {
            self.members.get(by).is_none_or(|v| {
                v.state != State::Up || now.saturating_duration_since(v.last_heard) > window
            })
        };
        self.members
            .iter()
            .filter(|(name, m)| {
                m.state == State::Up
                    && (m.heard || !unheard_exempt || !self.alive_in_store(name, m))
                    && m.silent(now, &self.timing, voucher_silent)
            })
            .map(|(name, _)| name.as_str())
            .collect()
    }

    /// Whether this node's side is a majority, as reported (metric, status): a node
    /// that started or rejoined less than `down_after` ago counts as one, as its view
    /// still fills while members are heard (a minority for a moment by the count, not
    /// cut off). Decisions use [`Membership::in_majority`].
    pub fn reported_majority(&self, now: Instant) -> bool {
        self.in_majority(now)
            || now.saturating_duration_since(self.started) < self.timing.down_after
    }

    /// Another node (or the store) says `name` in incarnation `epoch` is down.
    pub fn on_down_notice(&mut self, name: &str, epoch: u64, now: Instant) {
        if let Some(m) = self.members.get_mut(name) {
            if m.epoch == epoch && m.state == State::Up {
                m.state = State::Down;
                m.since = now;
                self.events.push(Event::Down {
                    name: name.to_string(),
                    epoch,
                });
            } else if epoch > m.epoch {
                // A newer incarnation we never heard of is already down.
                if m.state == State::Up {
                    self.events.push(Event::Down {
                        name: name.to_string(),
                        epoch: m.epoch,
                    });
                }
                m.epoch = epoch;
                m.state = State::Down;
                m.since = now;
                m.heard = false;
            }
        }
    }

    /// `name` in incarnation `epoch` said it leaves the cluster for good (its drain is
    /// over): down, and no longer counted (it marked itself down in the store too), so
    /// the members left are a majority without it at once.
    pub fn on_leave(&mut self, name: &str, epoch: u64, now: Instant) {
        self.on_down_notice(name, epoch, now);
        // A member down counts only as heard and alive by the store: not again,
        // whatever the store shows until it reads the leaver's own mark.
        if let Some(m) = self.members.get_mut(name).filter(|m| m.epoch == epoch) {
            m.heard = false;
        }
    }

    /// The store says `name` in incarnation `epoch` was declared down: a member up here
    /// in that incarnation goes down (as on a peer's notice); one unknown here is
    /// remembered down, so that its heartbeats (a frozen node waking up after the
    /// others declared it down, before this node joined) are stale, not a fresh
    /// member's. A retired member stays retired.
    pub fn known_down(&mut self, name: &str, epoch: u64, now: Instant) {
        if name == self.name {
            return;
        }
        match self.members.get(name) {
            Some(m) if m.state == State::Retired => {}
            Some(_) => self.on_down_notice(name, epoch, now),
            None => {
                self.members
                    .insert(name.to_string(), Member::new(epoch, State::Down, now));
            }
        }
    }

    /// `name` in incarnation `epoch` (or an older one) was retired by an operator:
    /// unless a newer incarnation is known, it is no longer listed, and what that
    /// incarnation sends stays stale. Only a member not up in this view is retired
    /// (one up here is a newer start the store will list); true if it was.
    pub fn retire(&mut self, name: &str, epoch: u64, now: Instant) -> bool {
        if name == self.name {
            return false;
        }
        match self.members.get_mut(name) {
            Some(m) if m.state == State::Retired => {
                // A later incarnation retired too: that one's heartbeats are stale now.
                m.epoch = m.epoch.max(epoch);
                false
            }
            Some(m) if m.epoch > epoch => false,
            Some(m) if m.state == State::Up && m.epoch == epoch => false,
            Some(m) => {
                // An older incarnation we still thought up is down too.
                let next = Member {
                    last_heard: m.last_heard,
                    ..Member::new(epoch, State::Retired, now)
                };
                supersede(&mut self.events, name, m, next);
                true
            }
            None => {
                // Never seen here: remembered, so its heartbeats are stale.
                self.members
                    .insert(name.to_string(), Member::new(epoch, State::Retired, now));
                false
            }
        }
    }

    /// A heartbeat to send to every peer: its sequence number (remembered with `now`
    /// for the round trip and the lease).
    pub fn heartbeat(&mut self, now: Instant) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.sent.push((seq, now));
        if self.sent.len() > 64 {
            self.sent.remove(0);
        }
        seq
    }

    /// `from` acknowledged our heartbeat `seq`.
    pub fn on_ack(&mut self, from: &str, epoch: u64, seq: u64, now: Instant) {
        let Some(&(_, sent)) = self.sent.iter().find(|(s, _)| *s == seq) else {
            return;
        };
        if let Some(m) = self
            .members
            .get_mut(from)
            .filter(|m| m.epoch == epoch && m.state == State::Up)
        {
            m.rtt = Some(now.saturating_duration_since(sent));
            self.acked = Some(self.acked.map_or(sent, |a| a.max(sent)));
        }
    }

    /// The members this node heard itself within `down_after`, for its heartbeats
    /// (see the module doc): what it was told by others is not passed on, nor the
    /// fresh window its members get after this node's own freeze.
    pub fn hears(&self, now: Instant) -> Vec<Heard> {
        self.members
            .iter()
            .filter(|(_, m)| m.state == State::Up)
            .filter_map(|(name, m)| {
                let ago = now.saturating_duration_since(m.last_frame?);
                (ago <= self.timing.down_after).then(|| Heard {
                    node: name.clone(),
                    epoch: m.epoch,
                    ago_ms: u32::try_from(ago.as_millis()).unwrap_or(u32::MAX),
                })
            })
            .collect()
    }

    /// `from` in incarnation `epoch` heard these members itself (its heartbeat's
    /// list): each one up here in that incarnation is alive as of then, though this
    /// node may not hear it. Taken only from a member in good standing, about others
    /// (not this node, not the sender); a word older than `down_after`, or a time a
    /// peer puts before this clock's start, says nothing. What `from` vouched for
    /// before and no longer lists is withdrawn.
    pub fn on_hears(&mut self, from: &str, epoch: u64, heard: &[Heard], now: Instant) {
        if !self.in_good_standing(from, epoch) {
            return;
        }
        let heard = &heard[..heard.len().min(MAX_HEARD)];
        // What `from` vouched for before and no longer lists is withdrawn.
        for (name, m) in self.members.iter_mut() {
            if let Some(v) = m.vouch.as_mut().filter(|v| v.by == from) {
                v.withdrawn |= !heard.iter().any(|h| h.node == *name && h.epoch == m.epoch);
            }
        }
        for h in heard {
            if h.node == self.name || h.node == from {
                continue;
            }
            let ago = Duration::from_millis(u64::from(h.ago_ms));
            if ago > self.timing.down_after {
                continue; // keeps nobody up
            }
            let Some(at) = now.checked_sub(ago) else {
                continue;
            };
            // A newer incarnation this node has not heard (the member rejoined while
            // the link between us was cut) is a member once the store also shows it
            // alive: else this view kept the old one down for as long as the cut
            // lasted, owned line keys by another set of members than the others', and
            // every node's calls needing those lines waited (a live torture run).
            let newer = self.members.get(&h.node).is_none_or(|m| h.epoch > m.epoch);
            if newer && self.alive_epoch(&h.node) == Some(h.epoch) {
                self.seen(&h.node, h.epoch, now);
            }
            if let Some(m) = self
                .members
                .get_mut(&h.node)
                .filter(|m| m.epoch == h.epoch && m.state == State::Up)
            {
                if m.vouch.as_ref().is_none_or(|v| at >= v.at) {
                    m.vouch = Some(Vouch {
                        at,
                        by: from.to_string(),
                        withdrawn: false,
                    });
                }
            }
        }
    }

    /// Whether member `name` is up here only by others' word: not heard itself within
    /// `down_after`, heard by another member since (status, metric).
    pub fn only_heard_through_others(&self, name: &str, now: Instant) -> bool {
        self.members
            .get(name)
            .is_some_and(|m| self.member_only_heard_through_others(m, now))
    }

    /// The members up here by others' word only (see
    /// [`Membership::only_heard_through_others`]).
    pub fn heard_only_through_others(&self, now: Instant) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| self.member_only_heard_through_others(m, now))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The members declared down here for longer than `after` and silent since (no
    /// frame of theirs taken): a session still open to one (a process frozen with its
    /// TCP connection open, its window at zero) only queues what is sent to it, in a
    /// channel without a bound (see the driver's `reset_cut_sessions`).
    pub fn down_and_silent(&self, now: Instant, after: Duration) -> Vec<String> {
        self.members
            .iter()
            .filter(|(_, m)| {
                m.state == State::Down
                    && now.saturating_duration_since(m.since) > after
                    && m.last_frame.is_none_or(|f| f <= m.since)
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Not heard here within the window, and reachable through a voucher by the same
    /// rule the detector and the majority use.
    fn member_only_heard_through_others(&self, m: &Member, now: Instant) -> bool {
        m.state == State::Up
            && now.saturating_duration_since(m.last_heard) > self.timing.down_after
            && m.reachable_through_others(now, &self.timing)
    }

    /// Declares down every peer silent for longer than `down_after`, if this node's
    /// side is a majority without them (see the module doc; if not, they stay up
    /// here, unacknowledging, and this node holds no lease). A tick long after the
    /// previous one means this node was frozen: everyone gets a fresh window.
    pub fn tick(&mut self, now: Instant) {
        let frozen = self
            .last_tick
            .is_some_and(|t| now.saturating_duration_since(t) > self.timing.down_after / 2);
        self.last_tick = Some(now);
        if frozen {
            for m in self.members.values_mut() {
                if m.state == State::Up {
                    m.last_heard = m.last_heard.max(now);
                }
            }
            return;
        }
        let silent = self.silent(now);
        if silent.is_empty() || !self.majority_without(&silent, now) {
            return;
        }
        let silent: Vec<String> = silent.into_iter().map(str::to_string).collect();
        for name in silent {
            if let Some(m) = self.members.get_mut(&name) {
                m.state = State::Down;
                m.since = now;
                self.events.push(Event::Down {
                    name,
                    epoch: m.epoch,
                });
            }
        }
    }

    /// Whether this node may act now (see the module doc).
    pub fn lease_valid(&self, now: Instant) -> bool {
        self.lease_until(now).is_none_or(|until| now < until)
    }

    /// Until when this node holds its lease as things stand (None: without end, no
    /// peer being up).
    pub fn lease_until(&self, now: Instant) -> Option<Instant> {
        if !self.in_majority(now) {
            return Some(self.grace_until.filter(|g| now < *g).unwrap_or(now));
        }
        if !self.members.values().any(|m| m.state == State::Up) {
            return None;
        }
        Some(self.acked.map_or(now, |a| a + self.timing.lease))
    }

    /// The next event, oldest first.
    pub fn poll_event(&mut self) -> Option<Event> {
        (!self.events.is_empty()).then(|| self.events.remove(0))
    }

    /// Live members, this node included, with their epochs.
    pub fn up(&self) -> Vec<(String, u64)> {
        let mut up: Vec<(String, u64)> = self
            .members
            .iter()
            .filter(|(_, m)| m.state == State::Up)
            .map(|(n, m)| (n.clone(), m.epoch))
            .collect();
        up.push((self.name.clone(), self.epoch));
        up.sort();
        up
    }

    /// The incarnation of member `name` in this view, up or not (None: unknown here).
    pub fn member_epoch(&self, name: &str) -> Option<u64> {
        self.members.get(name).map(|m| m.epoch)
    }

    /// The epoch of `name` if it is up in this view (this node included).
    pub fn up_epoch(&self, name: &str) -> Option<u64> {
        if name == self.name {
            return Some(self.epoch);
        }
        self.members
            .get(name)
            .filter(|m| m.state == State::Up)
            .map(|m| m.epoch)
    }

    /// The members this node lists: every peer it knows but the retired ones.
    pub fn members(&self) -> impl Iterator<Item = (&String, &Member)> {
        self.members
            .iter()
            .filter(|(_, m)| m.state != State::Retired)
    }

    /// Whether `from` in incarnation `epoch` may tell this node who is down (a down
    /// notice): only a member up in this view, in that incarnation.
    /// A node that was frozen and declared down itself still believes its old view
    /// when it wakes; what it says must not take healthy members down with it.
    pub fn in_good_standing(&self, from: &str, epoch: u64) -> bool {
        from != self.name && self.up_epoch(from) == Some(epoch)
    }
}

/// Whether `reachable` (the members a node hears, itself included) is a majority of
/// `counted` (those, and the members alive elsewhere): more than half, or exactly half
/// with the lowest-named member of `counted` among them (so of two halves exactly one
/// is the majority, whichever side judges).
pub fn is_majority(reachable: &BTreeSet<&str>, counted: &BTreeSet<&str>) -> bool {
    let (r, c) = (reachable.len(), counted.len());
    r * 2 > c || (r * 2 == c && counted.first().is_some_and(|n| reachable.contains(n)))
}

/// `m` (member `name`) becomes `next`; the end of its incarnation is an event if it
/// was up in this view.
fn supersede(events: &mut Vec<Event>, name: &str, m: &mut Member, next: Member) {
    if m.state == State::Up {
        events.push(Event::Down {
            name: name.to_string(),
            epoch: m.epoch,
        });
    }
    *m = next;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(base: Instant, n: u64) -> Instant {
        base + Duration::from_millis(n)
    }

    /// Ticks `m` every 250 ms of `range` (milliseconds after `t0`).
    fn ticks(m: &mut Membership, t0: Instant, range: std::ops::RangeInclusive<u64>) {
        for t in range.step_by(250) {
            m.tick(ms(t0, t));
        }
    }

    /// The events waiting, oldest first (and none left).
    fn drain(m: &mut Membership) -> Vec<Event> {
        std::iter::from_fn(|| m.poll_event()).collect()
    }

    /// (at ms, input) -> events expected after it.
    enum In {
        Beat(&'static str, u64),
        Tick,
        Notice(&'static str, u64),
    }

    #[test]
    fn detection_incarnations_and_staleness() {
        use In::*;
        let up = |n: &str, e| Event::Up {
            name: n.into(),
            epoch: e,
        };
        let down = |n: &str, e| Event::Down {
            name: n.into(),
            epoch: e,
        };
        let rows: Vec<(u64, In, Option<Verdict>, Vec<Event>)> = vec![
            (0, Beat("b", 1), Some(Verdict::Fresh), vec![up("b", 1)]),
            (0, Beat("c", 4), Some(Verdict::Fresh), vec![up("c", 4)]),
            (250, Tick, None, vec![]),
            (250, Beat("b", 1), Some(Verdict::Fresh), vec![]),
            (500, Tick, None, vec![]),
            (1000, Tick, None, vec![]),
            (1400, Beat("b", 1), Some(Verdict::Fresh), vec![]),
            // c silent since 0: down once 1.5 s have passed.
            (1500, Tick, None, vec![]),
            (1750, Tick, None, vec![down("c", 4)]),
            // The same incarnation of c speaking again is stale: it must rejoin.
            (1800, Beat("c", 4), Some(Verdict::Stale), vec![]),
            (2000, Tick, None, vec![]),
            // c restarted: a new incarnation.
            (2100, Beat("c", 5), Some(Verdict::Fresh), vec![up("c", 5)]),
            (2200, Beat("c", 4), Some(Verdict::Stale), vec![]),
            // b restarted before we noticed: old incarnation down, new one up.
            (
                2300,
                Beat("b", 2),
                Some(Verdict::Fresh),
                vec![down("b", 1), up("b", 2)],
            ),
            // Another node declared c@5 down first.
            (2400, Notice("c", 5), None, vec![down("c", 5)]),
            (2450, Notice("c", 5), None, vec![]),
            // Our own name from elsewhere is never a member.
            (2500, Beat("a", 9), Some(Verdict::Stale), vec![]),
        ];
        let t0 = Instant::now();
        let mut m = Membership::new("a", 1, Timing::default());
        for (at, input, verdict, events) in rows {
            let now = ms(t0, at);
            let got = match input {
                Beat(n, e) => Some(m.on_heartbeat(n, e, now)),
                Tick => {
                    m.tick(now);
                    None
                }
                Notice(n, e) => {
                    m.on_down_notice(n, e, now);
                    None
                }
            };
            assert_eq!(got, verdict, "at {at}");
            let mut seen = Vec::new();
            while let Some(e) = m.poll_event() {
                seen.push(e);
            }
            assert_eq!(seen, events, "at {at}");
        }
        assert_eq!(m.up(), vec![("a".into(), 1), ("b".into(), 2)]);
    }

    /// Retirement, row by row: (member, its epoch in this view and state before,
    /// retired epoch) -> retired?, what the view lists after, and how a heartbeat
    /// of the retired incarnation is taken.
    /// What the store says was declared down: (state here before, incarnation the
    /// store has down) → (listed after, events, verdict on that incarnation's
    /// heartbeat). A node that joined after the others declared `c` down treats `c`
    /// waking up as stale, not as a fresh member.
    #[test]
    fn members_the_store_has_down_are_down_here() {
        type Row = (
            Option<(u64, State)>,
            u64,
            Option<(u64, State)>,
            usize,
            Verdict,
        );
        let rows: &[Row] = &[
            // Never seen here: remembered down, quietly (nothing was up).
            (None, 4, Some((4, State::Down)), 0, Verdict::Stale),
            // Up here in that incarnation: down, as on a peer's notice.
            (
                Some((4, State::Up)),
                4,
                Some((4, State::Down)),
                1,
                Verdict::Stale,
            ),
            // Up here in an older one: the older one goes down, the newer is down.
            (
                Some((3, State::Up)),
                4,
                Some((4, State::Down)),
                1,
                Verdict::Stale,
            ),
            // Up here in a newer one (it restarted): left alone.
            (
                Some((5, State::Up)),
                4,
                Some((5, State::Up)),
                0,
                Verdict::Stale,
            ),
            // Down here already: nothing new.
            (
                Some((4, State::Down)),
                4,
                Some((4, State::Down)),
                0,
                Verdict::Stale,
            ),
        ];
        let t0 = Instant::now();
        for (i, (before, down, after, events, verdict)) in rows.iter().enumerate() {
            let mut m = Membership::new("a", 1, Timing::default());
            if let Some((epoch, state)) = before {
                m.on_heartbeat("c", *epoch, t0);
                if *state == State::Down {
                    m.on_down_notice("c", *epoch, t0);
                }
            }
            drain(&mut m);
            m.known_down("c", *down, ms(t0, 10));
            let mut n = 0;
            while m.poll_event().is_some() {
                n += 1;
            }
            assert_eq!(n, *events, "row {i}");
            let listed: Vec<(u64, State)> = m.members().map(|(_, x)| (x.epoch, x.state)).collect();
            assert_eq!(listed, after.iter().copied().collect::<Vec<_>>(), "row {i}");
            assert_eq!(m.on_heartbeat("c", *down, ms(t0, 20)), *verdict, "row {i}");
        }
        // Its own row (declared down itself) is not for the membership to judge.
        let mut m = Membership::new("a", 1, Timing::default());
        m.known_down("a", 1, t0);
        assert_eq!(m.members().count(), 0);
    }

    #[test]
    fn retired_members_are_unlisted_and_their_incarnation_stays_stale() {
        type Row = (
            Option<(u64, State)>,
            u64,
            bool,
            Option<(u64, State)>,
            Verdict,
        );
        let rows: &[Row] = &[
            // Down here, retired in that incarnation: unlisted, stale.
            (Some((3, State::Down)), 3, true, None, Verdict::Stale),
            // Up here in the incarnation retired: not retired here (it is heard).
            (
                Some((3, State::Up)),
                3,
                false,
                Some((3, State::Up)),
                Verdict::Fresh,
            ),
            // Up here in an older one than retired: that one is down, the newer retired.
            (Some((2, State::Up)), 3, true, None, Verdict::Stale),
            // A newer incarnation than the one retired runs: left alone.
            (
                Some((4, State::Up)),
                3,
                false,
                Some((4, State::Up)),
                Verdict::Stale,
            ),
            (
                Some((4, State::Down)),
                3,
                false,
                Some((4, State::Down)),
                Verdict::Stale,
            ),
            // Never seen here: remembered, never listed, stale.
            (None, 3, false, None, Verdict::Stale),
        ];
        let t0 = Instant::now();
        for (i, (before, retired, was, after, verdict)) in rows.iter().enumerate() {
            let mut m = Membership::new("a", 1, Timing::default());
            if let Some((epoch, state)) = before {
                m.on_heartbeat("c", *epoch, t0);
                if *state == State::Down {
                    m.on_down_notice("c", *epoch, t0);
                }
            }
            drain(&mut m);
            assert_eq!(m.retire("c", *retired, ms(t0, 10)), *was, "row {i}");
            let listed: Vec<(u64, State)> = m.members().map(|(_, x)| (x.epoch, x.state)).collect();
            assert_eq!(listed, after.iter().copied().collect::<Vec<_>>(), "row {i}");
            assert_eq!(
                m.on_heartbeat("c", *retired, ms(t0, 20)),
                *verdict,
                "row {i}"
            );
        }
        // A new incarnation of a retired node is a member again.
        let mut m = Membership::new("a", 1, Timing::default());
        m.on_heartbeat("c", 3, t0);
        m.on_down_notice("c", 3, t0);
        m.retire("c", 3, t0);
        drain(&mut m);
        assert_eq!(m.on_heartbeat("c", 4, ms(t0, 5)), Verdict::Fresh);
        assert_eq!(
            m.poll_event(),
            Some(Event::Up {
                name: "c".into(),
                epoch: 4
            })
        );
        assert_eq!(m.members().count(), 1);
        assert!(!m.retire("a", 1, t0), "never itself");
        // Retired at 3, and later (unheard here) at 5: 5's heartbeats are stale too.
        let mut m = Membership::new("a", 1, Timing::default());
        m.on_heartbeat("c", 3, t0);
        m.on_down_notice("c", 3, t0);
        assert!(m.retire("c", 3, t0));
        m.retire("c", 5, t0);
        assert_eq!(m.on_heartbeat("c", 5, ms(t0, 5)), Verdict::Stale);
        assert_eq!(m.on_heartbeat("c", 6, ms(t0, 5)), Verdict::Fresh);
    }

    /// A member declared down and silent since is listed once 10 s have passed, so
    /// its session, if still open, is stopped.
    #[test]
    fn members_down_and_silent_are_listed() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        m.on_heartbeat("b", 1, t0);
        m.on_heartbeat("c", 1, t0);
        ticks(&mut m, t0, 250..=1000);
        for t in (1250..=2500).step_by(250) {
            m.on_heartbeat("c", 1, ms(t0, t));
            m.tick(ms(t0, t));
        }
        drain(&mut m);
        let after = Duration::from_secs(10);
        assert!(m.down_and_silent(ms(t0, 5_000), after).is_empty());
        assert_eq!(m.down_and_silent(ms(t0, 13_000), after), ["b"]);
    }

    #[test]
    fn a_frozen_node_does_not_declare_its_peers_down() {
        let t0 = Instant::now();
        let mut m = Membership::new("a", 1, Timing::default());
        m.on_heartbeat("b", 1, t0);
        m.tick(ms(t0, 250));
        // SIGSTOP for 10 s: the first tick after waking sees the gap.
        m.tick(ms(t0, 10_250));
        assert_eq!(
            m.poll_event(),
            Some(Event::Up {
                name: "b".into(),
                epoch: 1
            })
        );
        assert_eq!(m.poll_event(), None, "b is not blamed for our silence");
        assert_eq!(
            m.hears(ms(t0, 10_250)),
            vec![],
            "nor vouched for by its window"
        );
        // But b must then be heard from within the normal window.
        ticks(&mut m, t0, 10_500..=11_750);
        assert_eq!(m.poll_event(), None, "1.5 s since waking: not more");
        m.tick(ms(t0, 12_000));
        assert_eq!(
            m.poll_event(),
            Some(Event::Down {
                name: "b".into(),
                epoch: 1
            })
        );
    }

    #[test]
    fn a_node_frozen_before_its_first_tick_does_not_declare_its_peers_down() {
        // A new incarnation (just rejoined) seeded with its peers, then SIGSTOPped
        // before its first tick for longer than the detector's window.
        let t0 = Instant::now();
        let mut m = Membership::starting_at("a", 2, Timing::default(), t0);
        m.expect("b", 1, t0);
        m.expect("c", 1, t0);
        drain(&mut m);
        m.tick(ms(t0, 1_600));
        assert_eq!(
            m.poll_event(),
            None,
            "b and c are not blamed for our freeze"
        );
        assert_eq!(m.up().len(), 3);
    }

    /// A node that never heard a peer (a wrong secret, a cut network) declares nobody
    /// down while the store shows a member alive (it is no majority: it hears nobody);
    /// once the store shows them all dead, it is alone and declares them down.
    #[test]
    fn a_node_cut_off_from_birth_trusts_the_stores_signs_of_life() {
        let t0 = Instant::now();
        let down = |n: &str, e| Event::Down {
            name: n.into(),
            epoch: e,
        };
        for me in ["rogue", "a"] {
            let mut m = Membership::starting_at(me, 1, Timing::default(), t0);
            m.expect("b", 3, t0);
            m.expect("c", 2, t0);
            m.store_signs([("b".to_string(), 3)], t0);
            drain(&mut m);
            ticks(&mut m, t0, 250..=3_000);
            assert_eq!(
                m.poll_event(),
                None,
                "{me}: b lives by the store, and with it alive {me} is no majority (not even named lowest)"
            );
            assert!(!m.in_majority(ms(t0, 3_000)));
            assert!(
                !m.lease_valid(ms(t0, 3_000)),
                "{me}: without the lease: b never acknowledged"
            );
            // b's sign of life stops: alone, it declares both down at the next tick.
            m.store_signs([], t0);
            m.tick(ms(t0, 3_250));
            assert_eq!(m.poll_event(), Some(down("b", 3)));
            assert_eq!(m.poll_event(), Some(down("c", 2)));
            assert!(m.lease_valid(ms(t0, 3_250)));
        }

        // Having heard a peer, silence and the majority decide: of two, a (the
        // lowest name) is the majority, whatever the store says of b.
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        m.on_heartbeat("b", 3, t0);
        m.store_signs([("b".to_string(), 3)], t0);
        drain(&mut m);
        ticks(&mut m, t0, 250..=1_750);
        assert_eq!(m.poll_event(), Some(down("b", 3)));
        assert!(m.heard_any());
    }

    #[test]
    fn only_members_in_good_standing_may_say_who_is_down() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        m.on_heartbeat("b", 1, t0);
        m.on_heartbeat("c", 4, t0);
        m.on_down_notice("c", 4, ms(t0, 10));
        let cases = [
            ("b", 1, true),
            ("b", 2, false), // an incarnation not heard of yet
            ("b", 0, false), // an older one
            ("c", 4, false), // declared down: its view is history
            ("d", 1, false), // never heard of
            ("a", 1, false), // our own name from elsewhere
        ];
        for (from, epoch, want) in cases {
            assert_eq!(m.in_good_standing(from, epoch), want, "{from}@{epoch}");
        }
    }

    #[test]
    fn the_lease_needs_an_acknowledged_heartbeat() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        assert!(m.lease_valid(t0), "alone: always");
        m.on_heartbeat("b", 3, t0);
        assert!(
            m.lease_valid(ms(t0, 999)),
            "a new incarnation holds it for one lease period"
        );
        assert!(
            !m.lease_valid(ms(t0, 1000)),
            "a peer is up and nothing was acknowledged since"
        );
        let seq = m.heartbeat(ms(t0, 1100));
        m.on_ack("b", 2, seq, ms(t0, 1102)); // an old incarnation's ack counts nothing
        assert!(!m.lease_valid(ms(t0, 1102)));
        m.on_ack("b", 3, seq, ms(t0, 1103));
        assert!(m.lease_valid(ms(t0, 1103)));
        assert_eq!(
            m.members().next().unwrap().1.rtt,
            Some(Duration::from_millis(3))
        );
        assert!(m.lease_valid(ms(t0, 2099)));
        assert!(
            !m.lease_valid(ms(t0, 2100)),
            "1 s after the acknowledged heartbeat"
        );
        // Frozen for 10 s: on waking the lease is long gone.
        assert!(!m.lease_valid(ms(t0, 12_000)));
    }

    #[test]
    fn a_majority_is_more_than_half_or_the_half_with_the_lowest_name() {
        let set = |names: &[&'static str]| names.iter().copied().collect::<BTreeSet<&str>>();
        let cases: &[(&[&str], &[&str], bool)] = &[
            (&["a"], &["a"], true),
            (&["b", "c"], &["a", "b", "c"], true),
            (&["a"], &["a", "b", "c"], false),
            (&["a"], &["a", "b"], true),
            (&["b"], &["a", "b"], false),
            (&["a", "d"], &["a", "b", "c", "d"], true),
            (&["b", "c"], &["a", "b", "c", "d"], false),
            (&["c"], &["a", "b", "c", "d"], false),
            (&["a", "b", "c"], &["a", "b", "c", "d", "e"], true),
        ];
        for (reachable, counted, want) in cases {
            assert_eq!(
                is_majority(&set(reachable), &set(counted)),
                *want,
                "{reachable:?} of {counted:?}"
            );
        }
    }

    /// Three members; the network around `me` is cut from `cut` at 0 while everyone
    /// keeps writing its sign of life to the store. Returns the membership after
    /// 3 s of ticks, with the events drained into the second value.
    fn cut_off(
        me: &str,
        others: [&str; 2],
        cut: &[&str],
        store_alive: &[&str],
    ) -> (Membership, Vec<Event>) {
        let t0 = Instant::now();
        let mut m = Membership::starting_at(me, 1, Timing::default(), t0);
        for o in others {
            m.on_heartbeat(o, 1, t0);
        }
        drain(&mut m);
        let alive: Vec<(String, u64)> = store_alive.iter().map(|s| (s.to_string(), 1)).collect();
        m.store_signs(alive, t0);
        for t in (250..=3_000).step_by(250) {
            let now = ms(t0, t);
            let seq = m.heartbeat(now);
            for o in others.iter().filter(|o| !cut.contains(o)) {
                m.on_heartbeat(o, 1, now);
                m.on_ack(o, 1, seq, now);
            }
            m.tick(now);
        }
        let events = drain(&mut m);
        (m, events)
    }

    /// A network partition, everyone still writing to the store: the side alone
    /// declares nobody down and holds no lease; the side of two declares it down and
    /// keeps its lease. Without the store's word (or once a member's sign of life is
    /// gone: it died) silence alone decides, as for a crash.
    #[test]
    fn only_the_majority_declares_a_cut_off_side_down() {
        let end = Instant::now() + Duration::from_millis(3_000);
        let down = |n: &str| Event::Down {
            name: n.into(),
            epoch: 1,
        };
        // "a" cut off from b and c, which the store shows alive.
        let (a, events) = cut_off("a", ["b", "c"], &["b", "c"], &["b", "c"]);
        assert_eq!(events, vec![], "a, alone, declares nobody down");
        assert!(!a.in_majority(end));
        assert!(!a.lease_valid(end), "a acts on nothing");
        assert_eq!(a.up().len(), 3, "b and c stay up in a's view");
        // b's view of it: c answers, a is silent though alive in the store.
        let (b, events) = cut_off("b", ["a", "c"], &["a"], &["a", "c"]);
        assert_eq!(events, vec![down("a")]);
        assert!(b.in_majority(end) && b.lease_valid(end));
        // The store no longer shows b and c alive (they died): a is all there is.
        let (a, events) = cut_off("a", ["b", "c"], &["b", "c"], &[]);
        assert_eq!(events, vec![down("b"), down("c")]);
        assert!(a.lease_valid(end), "alone and a majority of one");
        // Cut off from the store as well (no read since): its last read stands, so
        // a stays a minority however long it lasts. (Had that read aged out, a would
        // have been a majority of one: declared b and c down, held a lease without
        // end, and when the network healed answered their heartbeats as stale,
        // making the whole majority drop its calls and rejoin.)
        let t0 = Instant::now();
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        m.on_heartbeat("b", 1, t0);
        m.on_heartbeat("c", 1, t0);
        m.store_signs([("b".to_string(), 1), ("c".to_string(), 1)], t0);
        drain(&mut m);
        ticks(&mut m, t0, 250..=60_000);
        assert_eq!(drain(&mut m), vec![], "a declares nobody down");
        assert!(!m.lease_valid(ms(t0, 60_000)), "a acts on nothing");
        let healed = ms(t0, 60_250);
        assert_eq!(
            m.on_heartbeat("b", 1, healed),
            Verdict::Fresh,
            "b is told nothing"
        );
    }

    /// Two halves of equal size: the one with the lowest-named member is the majority,
    /// as both judge it.
    #[test]
    fn of_two_halves_the_one_with_the_lowest_name_goes_on() {
        let down = |n: &str| Event::Down {
            name: n.into(),
            epoch: 1,
        };
        let t0 = Instant::now();
        let end = ms(t0, 3_000);
        let mut views = Vec::new();
        for (me, peer) in [("a", "b"), ("b", "a")] {
            let mut m = Membership::starting_at(me, 1, Timing::default(), t0);
            m.on_heartbeat(peer, 1, t0);
            m.store_signs([(peer.to_string(), 1)], t0);
            drain(&mut m);
            ticks(&mut m, t0, 250..=3_000);
            views.push((m.poll_event(), m.lease_valid(end)));
        }
        assert_eq!(views, vec![(Some(down("b")), true), (None, false)]);
    }

    /// A node rejoined while still cut off (it learned from the store that the others
    /// declared it down) hears one peer of its side, never the members listed by the
    /// store: those are alive there, so they are neither declared down for their
    /// silence nor left out of the count, and the two are no majority of five (found
    /// by review: a 2|3 split rejoined back and forth). It holds no lease at first.
    #[test]
    fn a_rejoined_node_does_not_declare_members_it_never_heard() {
        let t0 = Instant::now();
        let mut m = Membership::rejoined("a", 7, Timing::default(), t0);
        for (n, e) in [("b", 2), ("c", 1), ("d", 1), ("e", 1)] {
            m.expect(n, e, t0);
        }
        m.store_signs(
            [("b", 2), ("c", 1), ("d", 1), ("e", 1)].map(|(n, e)| (n.to_string(), e)),
            t0,
        );
        assert!(!m.lease_valid(t0), "no grace after a rejoin");
        assert_eq!(m.lease_until(t0), Some(t0), "nor in what the gate is given");
        let mut fresh = Membership::starting_at("a", 7, Timing::default(), t0);
        fresh.expect("b", 2, t0);
        fresh.store_signs([("b".to_string(), 2)], t0);
        assert_eq!(
            fresh.lease_until(t0),
            Some(ms(t0, 1_000)),
            "a start has its grace"
        );
        drain(&mut m);
        for t in (250..=3_000).step_by(250) {
            let now = ms(t0, t);
            let seq = m.heartbeat(now);
            m.on_heartbeat("b", 2, now);
            m.on_ack("b", 2, seq, now);
            m.tick(now);
        }
        assert_eq!(m.poll_event(), None, "c, d and e live by the store");
        assert!(!m.in_majority(ms(t0, 3_000)), "two of five");
        assert!(!m.lease_valid(ms(t0, 3_000)));
        // The network heals: c, d and e are heard.
        for n in ["c", "d", "e"] {
            m.on_heartbeat(n, 1, ms(t0, 3_100));
        }
        assert!(m.in_majority(ms(t0, 3_100)));
    }

    /// Incarnations are matched exactly: b heard a in epoch 1; the store shows a
    /// restarted (epoch 2) and never joining (a wrong secret, a crash loop). Epoch 1
    /// is gone for sure, so b, alone in the count, declares it down and goes on
    /// (found by review: with names alone b held no lease for good).
    #[test]
    fn a_newer_incarnation_in_the_store_proves_the_old_one_gone() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("b", 1, Timing::default(), t0);
        m.on_heartbeat("a", 1, t0);
        m.store_signs([("a".to_string(), 2)], t0);
        drain(&mut m);
        ticks(&mut m, t0, 250..=1_750);
        assert_eq!(
            m.poll_event(),
            Some(Event::Down {
                name: "a".into(),
                epoch: 1
            })
        );
        assert!(m.lease_valid(ms(t0, 1_750)));
    }

    /// A node left alone by its peers' deaths, whose peers restart where it cannot
    /// reach them (the store shows their new incarnations alive, never heard here):
    /// it stays a majority of one for [`NEWER_GRACE`] (a restart is heard within
    /// that), then counts them, is a minority and holds no lease, before they, a
    /// majority of two, declare it down ([`UNHEARD_GRACE`] after they hear each
    /// other) and take its calls over. It held its lease without end (a review).
    /// Heard, they are members as before.
    #[test]
    fn a_lone_survivor_counts_its_peers_restarted_out_of_its_reach() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        m.on_heartbeat("b", 1, t0);
        m.on_heartbeat("c", 1, t0);
        ticks(&mut m, t0, 250..=2_000);
        let events: Vec<Event> = std::iter::from_fn(|| m.poll_event()).collect();
        let down = events
            .iter()
            .filter(|e| matches!(e, Event::Down { .. }))
            .count();
        assert_eq!(down, 2, "b and c declared down: {events:?}");
        assert!(m.lease_valid(ms(t0, 2_000)), "alone, a majority of one");
        let restarted = [("b".to_string(), 2), ("c".to_string(), 2)];
        for read in (3_000..=8_000).step_by(1_000) {
            m.store_signs(restarted.clone(), ms(t0, read));
        }
        ticks(&mut m, t0, 2_250..=8_000);
        assert!(m.lease_valid(ms(t0, 7_999)), "within the grace");
        assert!(!m.in_majority(ms(t0, 8_000)));
        assert!(!m.lease_valid(ms(t0, 8_000)), "a minority of the three");
        // The link heals: b's new incarnation heard, a majority again.
        assert_eq!(m.on_heartbeat("b", 2, ms(t0, 8_100)), Verdict::Fresh);
        assert!(m.in_majority(ms(t0, 8_100)));
    }

    /// Of two, the survivor keeps its lease through its partner's restart, heard or
    /// not: one process alone out of reach takes nothing over, and counted (the night
    /// this rule came, counting it after the grace) it cut the lease of a survivor not
    /// named lowest until the restart was heard (a review). Beside a member already
    /// out of reach (a cut link), the same restart counts after [`NEWER_GRACE`]: the
    /// two may be a majority without this node.
    #[test]
    fn a_restarted_member_counts_only_with_another_out_of_reach_after_the_grace() {
        // (this node, the restarted peer, a member cut off from this node, the
        // restart heard at, a majority at 8 s)
        let cases = [
            ("b", "a", None, None, true),
            ("a", "b", None, None, true),
            ("b", "a", None, Some(4_000), true),
            ("a", "c", Some("b"), None, false),
            ("a", "c", Some("b"), Some(4_000), true),
        ];
        for (me, peer, cut, heard_at, majority) in cases {
            let t0 = Instant::now();
            let mut m = Membership::starting_at(me, 1, Timing::default(), t0);
            m.on_heartbeat(peer, 1, t0);
            if let Some(cut) = cut {
                m.on_heartbeat(cut, 1, t0);
            }
            let alive = |restarted: bool| {
                let mut alive = vec![];
                if restarted {
                    alive.push((peer.to_string(), 2));
                }
                alive.extend(cut.map(|c| (c.to_string(), 1)));
                alive
            };
            m.store_signs(alive(false), t0);
            // The peer dies; the cut member goes on living out of reach, heard until
            // 1.75 s (the tie-break keeps `a`, named lowest, a majority).
            for t in (250..=2_000).step_by(250) {
                if let Some(cut) = cut.filter(|_| t <= 1_750) {
                    m.on_heartbeat(cut, 1, ms(t0, t));
                }
                m.tick(ms(t0, t));
            }
            let state = m.members().find(|(n, _)| *n == peer).map(|(_, p)| p.state);
            assert_eq!(state, Some(State::Down), "{me}");
            for read in (3_000..=8_000).step_by(1_000) {
                m.store_signs(alive(true), ms(t0, read));
            }
            for t in (2_250..=8_000).step_by(250) {
                if heard_at.is_some_and(|at| t >= at) {
                    assert_eq!(m.on_heartbeat(peer, 2, ms(t0, t)), Verdict::Fresh);
                }
                if t < 8_000 {
                    assert!(m.in_majority(ms(t0, t)), "{me} at {t} ms: within the grace");
                }
                m.tick(ms(t0, t));
            }
            let got = m.in_majority(ms(t0, 8_000));
            assert_eq!(
                got, majority,
                "{me}, {peer} restarted, {cut:?} cut, heard at {heard_at:?}"
            );
        }
    }

    /// Of two, the lower-named leaves for good (SIGTERM, its drain over) and says so:
    /// the other is a majority at once, instead of holding no lease until the
    /// leaver's sign of life in the store ages (the tie-break favours the leaver).
    #[test]
    fn a_member_that_leaves_is_counted_out_at_once() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("b", 1, Timing::default(), t0);
        m.on_heartbeat("a", 1, t0);
        m.store_signs([("a".to_string(), 1)], t0);
        let later = ms(t0, 2_000);
        assert!(
            !m.in_majority(later),
            "a silent, alive by the store, named lower"
        );
        m.on_leave("a", 1, ms(t0, 100));
        assert!(m.in_majority(later));
        assert!(m.lease_valid(later), "no peer up, a majority");
    }

    /// A node that rejoined hears b, c and d when the network heals, and e's session
    /// comes back later (TCP's back-off): e, listed alive by the store and never heard
    /// yet, is not declared down by the four for its silence until UNHEARD_GRACE after
    /// the first peer was heard (then it is: a member that registers and never joins
    /// does not stay in the view for good).
    #[test]
    fn a_member_heard_late_after_a_heal_is_not_declared_down() {
        let t0 = Instant::now();
        let mut m = Membership::rejoined("a", 7, Timing::default(), t0);
        for n in ["b", "c", "d", "e"] {
            m.expect(n, 1, t0);
        }
        m.store_signs(["b", "c", "d", "e"].map(|n| (n.to_string(), 1)), t0);
        drain(&mut m);
        let heard_from = 5_000;
        let grace = 10_000;
        assert_eq!(UNHEARD_GRACE, Duration::from_millis(grace));
        for t in (250..=heard_from + grace - 250).step_by(250) {
            let now = ms(t0, t);
            if t >= heard_from {
                let seq = m.heartbeat(now);
                for n in ["b", "c", "d"] {
                    m.on_heartbeat(n, 1, now);
                    m.on_ack(n, 1, seq, now);
                }
            }
            m.tick(now);
        }
        assert_eq!(m.poll_event(), None, "e not declared down");
        assert!(m.in_majority(ms(t0, heard_from + 1_000)), "four of five");
        let now = ms(t0, heard_from + grace + 250);
        for n in ["b", "c", "d"] {
            m.on_heartbeat(n, 1, now);
        }
        m.tick(now);
        assert_eq!(
            m.poll_event(),
            Some(Event::Down {
                name: "e".into(),
                epoch: 1
            })
        );
    }

    /// A node alone holds its lease; when a peer comes up (a restarted member's first
    /// heartbeat) the lease goes on until that peer's acknowledgements come, instead
    /// of lapsing at once for an acknowledgement as old as the last peer's (found by
    /// review: every rolling restart of a two-node cluster suspended the survivor's
    /// line tables).
    #[test]
    fn a_lease_held_alone_goes_on_when_a_peer_comes_up() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("b", 1, Timing::default(), t0);
        m.on_heartbeat("a", 1, t0);
        ticks(&mut m, t0, 250..=3_000);
        drain(&mut m);
        assert!(m.lease_valid(ms(t0, 10_000)), "alone");
        m.on_heartbeat("a", 2, ms(t0, 10_000));
        assert!(m.lease_valid(ms(t0, 10_250)), "a newcomer's ack on its way");
        assert!(!m.lease_valid(ms(t0, 11_000)), "and it must come");
    }

    fn heard(node: &str, epoch: u64, ago_ms: u32) -> Heard {
        Heard {
            node: node.into(),
            epoch,
            ago_ms,
        }
    }

    /// A cut link between a and b only: c hears both and says so in its heartbeats.
    /// a does not declare b down while c heard b within `down_after` (before: down at
    /// 1.75 s for the whole cluster, its calls dropped); once c stops hearing b too, b
    /// is declared down as before, `down_after` after the last word of it.
    #[test]
    fn a_member_others_hear_is_not_declared_down() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        m.on_heartbeat("b", 1, t0);
        m.on_heartbeat("c", 1, t0);
        drain(&mut m);
        for t in (250..=6_000).step_by(250) {
            let now = ms(t0, t);
            m.on_heartbeat("c", 1, now);
            m.on_hears("c", 1, &[heard("b", 1, 100)], now);
            m.tick(now);
        }
        assert_eq!(drain(&mut m), vec![], "b declared down by one observer");
        assert!(m.only_heard_through_others("b", ms(t0, 6_000)));
        assert!(!m.only_heard_through_others("c", ms(t0, 6_000)));
        assert!(m.in_majority(ms(t0, 6_000)));
        // What a was told is not passed on: only what it heard itself.
        let passed: Vec<String> = m.hears(ms(t0, 6_000)).into_iter().map(|h| h.node).collect();
        assert_eq!(passed, vec!["c".to_string()]);
        // b stops too (c no longer names it): down 1.5 s after c last heard it.
        let mut down_at = None;
        for t in (6_250..=9_000).step_by(250) {
            let now = ms(t0, t);
            m.on_heartbeat("c", 1, now);
            m.on_hears("c", 1, &[], now);
            m.tick(now);
            if !drain(&mut m).is_empty() {
                down_at.get_or_insert(t);
            }
        }
        // c heard b at 5,900 (its last word: at 6,000, 100 ms ago).
        assert_eq!(down_at, Some(7_500));
        assert_eq!(m.up_epoch("b"), None);
    }

    /// Which words of others are taken: (sender, its epoch, what it says) -> whether b,
    /// silent here since 0, is still up at 2 s.
    #[test]
    fn only_fresh_words_of_members_in_good_standing_about_others_count() {
        let rows: Vec<(&str, &str, u64, Vec<Heard>, bool)> = vec![
            ("c heard b", "c", 1, vec![heard("b", 1, 100)], true),
            (
                "c heard b 1 s before",
                "c",
                1,
                vec![heard("b", 1, 1_000)],
                true,
            ),
            ("too long ago", "c", 1, vec![heard("b", 1, 1_600)], false),
            (
                "a time before the clock's start",
                "c",
                1,
                vec![heard("b", 1, u32::MAX)],
                false,
            ),
            (
                "another incarnation of b",
                "c",
                1,
                vec![heard("b", 2, 100)],
                false,
            ),
            (
                "from an incarnation of c not up here",
                "c",
                2,
                vec![heard("b", 1, 100)],
                false,
            ),
            ("from a stranger", "x", 1, vec![heard("b", 1, 100)], false),
            ("b about itself", "b", 1, vec![heard("b", 1, 100)], false),
            (
                "past the entries taken",
                "c",
                1,
                (0..MAX_HEARD as u32)
                    .map(|i| heard("z", 1, i))
                    .chain([heard("b", 1, 100)])
                    .collect(),
                false,
            ),
        ];
        let t0 = Instant::now();
        for (what, from, epoch, said, alive) in rows {
            let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
            m.on_heartbeat("b", 1, t0);
            m.on_heartbeat("c", 1, t0);
            for t in (250..=2_000).step_by(250) {
                let now = ms(t0, t);
                m.on_heartbeat("c", 1, now);
                if t == 1_500 {
                    m.on_hears(from, epoch, &said, now);
                } else {
                    m.on_hears("c", 1, &[], now);
                }
                m.tick(now);
            }
            assert_eq!(m.up_epoch("b").is_some(), alive, "{what}");
        }
        // Never about a: what others say of this node does not make it a member.
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        m.on_heartbeat("c", 1, t0);
        m.on_hears("c", 1, &[heard("a", 1, 0)], t0);
        assert_eq!(m.members().count(), 1);
    }

    /// The link between a and b is cut and c, which vouches for each to the other,
    /// dies at 3 s (its last heartbeat names b heard 100 ms before). Neither a nor b
    /// declares the other down while c is counted alive by the store: b goes silent
    /// at a only with c, and a side of one is no majority of three (a live torture
    /// run had both declare each other down: b went silent up to a heartbeat before
    /// its voucher). Once c's sign ages out of the store, the tie of two goes to the
    /// lowest name: a declares b and c down, b never declares a.
    #[test]
    fn a_member_vouched_for_goes_silent_with_its_voucher_not_before() {
        let t0 = Instant::now();
        let mut views: Vec<(Membership, &str)> = vec![
            (Membership::starting_at("a", 1, Timing::default(), t0), "b"),
            (Membership::starting_at("b", 1, Timing::default(), t0), "a"),
        ];
        for (m, other) in views.iter_mut() {
            m.on_heartbeat(other, 1, t0);
            m.on_heartbeat("c", 1, t0);
            m.store_signs([(other.to_string(), 1), ("c".to_string(), 1)], t0);
            drain(m);
            for t in (10..=10_000).step_by(10) {
                let now = ms(t0, t);
                if t % 250 == 0 && t <= 3_000 {
                    m.on_heartbeat("c", 1, now);
                    m.on_hears("c", 1, &[heard(other, 1, 100)], now);
                }
                if t % 250 == 0 {
                    m.tick(now);
                }
            }
            assert_eq!(drain(m), vec![], "{} declared someone down", m.name());
            assert!(!m.in_majority(ms(t0, 10_000)));
            assert!(!m.lease_valid(ms(t0, 10_000)));
            // c's sign of life ages out of the store: the other end of the link and
            // this node are left, a tie.
            m.store_signs([(other.to_string(), 1)], t0);
            m.tick(ms(t0, 10_250));
        }
        let downs: Vec<String> = drain(&mut views[0].0)
            .into_iter()
            .map(|e| match e {
                Event::Down { name, .. } => name,
                Event::Up { name, .. } => panic!("{name} up"),
            })
            .collect();
        assert_eq!(downs, vec!["b".to_string(), "c".to_string()]);
        assert_eq!(
            drain(&mut views[1].0),
            vec![],
            "b, not the lowest name, declared a down"
        );
    }

    /// b was declared down here (its link to a cut) and rejoined as incarnation 2,
    /// which a still cannot hear. c's word brings b@2 into a's view once the store
    /// also shows b@2 alive; neither alone does.
    #[test]
    fn a_newer_incarnation_others_hear_joins_the_view_by_their_word_and_the_store() {
        let t0 = Instant::now();
        let up = |n: &str, e| Event::Up {
            name: n.into(),
            epoch: e,
        };
        let rows: Vec<(&str, Vec<(String, u64)>, Vec<Heard>, Option<u64>)> = vec![
            (
                "c's word and the store",
                vec![("b".into(), 2)],
                vec![heard("b", 2, 50)],
                Some(2),
            ),
            ("c's word alone", vec![], vec![heard("b", 2, 50)], None),
            ("the store alone", vec![("b".into(), 2)], vec![], None),
            (
                "the store shows another incarnation",
                vec![("b".into(), 3)],
                vec![heard("b", 2, 50)],
                None,
            ),
            (
                "c's word about the old one",
                vec![("b".into(), 1)],
                vec![heard("b", 1, 50)],
                None,
            ),
        ];
        for (what, alive, said, want) in rows {
            let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
            m.on_heartbeat("b", 1, t0);
            m.on_heartbeat("c", 1, t0);
            m.on_down_notice("b", 1, ms(t0, 100));
            drain(&mut m);
            m.store_signs(alive.into_iter().chain([("c".to_string(), 1)]), t0);
            let now = ms(t0, 500);
            m.on_heartbeat("c", 1, now);
            m.on_hears("c", 1, &said, now);
            assert_eq!(m.up_epoch("b"), want, "{what}");
            let events = drain(&mut m);
            match want {
                Some(e) => assert_eq!(events, vec![up("b", e)], "{what}"),
                None => assert_eq!(events, vec![], "{what}"),
            }
        }
    }

    /// b dies at 1 s; c heard it last 10 ms after a did and says so in its heartbeats
    /// (5 ms after a's ticks): a declares b down when its own window ends (2.75 s, the
    /// first tick past 2.5 s), as without c's word. Taken at its word, c's listing at
    /// 2.505 s (1.495 s after it heard b) held b up until c withdrew it at 2.755 s, and
    /// a declared it at 3 s: detection drifting past 2 s (a review).
    #[test]
    fn a_voucher_that_heard_a_dead_member_when_this_node_did_does_not_delay_it() {
        let t0 = Instant::now();
        let mut m = Membership::starting_at("a", 1, Timing::default(), t0);
        m.on_heartbeat("b", 1, t0);
        m.on_heartbeat("c", 1, t0);
        drain(&mut m);
        let mut down_at = None;
        for t in (5..=4_000).step_by(5) {
            let now = ms(t0, t);
            if t % 250 == 0 && t <= 1_000 {
                m.on_heartbeat("b", 1, now);
            }
            if t % 250 == 5 {
                m.on_heartbeat("c", 1, now);
                // c heard b every 250 ms, last at 1.01 s, and lists it within 1.5 s.
                let last = if t <= 1_010 { t } else { 1_010 };
                let said: Vec<Heard> = (t - last <= 1_500)
                    .then(|| heard("b", 1, (t - last) as u32))
                    .into_iter()
                    .collect();
                m.on_hears("c", 1, &said, now);
            }
            if t % 250 == 0 {
                m.tick(now);
                if !drain(&mut m).is_empty() {
                    down_at.get_or_insert(t);
                }
            }
        }
        assert_eq!(down_at, Some(2_750));
    }

    /// A rejoined node counts b (listed by the store, never heard) as reachable while
    /// c's word of it is fresh, not after c withdrew it: else, cut off with c from the
    /// other three, it counted three of five and held its lease (a review).
    #[test]
    fn a_withdrawn_word_makes_nobody_reachable() {
        let t0 = Instant::now();
        let mut m = Membership::rejoined("a", 7, Timing::default(), t0);
        for n in ["b", "c", "d", "e"] {
            m.expect(n, 1, t0);
        }
        m.store_signs(["b", "c", "d", "e"].map(|n| (n.to_string(), 1)), t0);
        m.on_heartbeat("c", 1, ms(t0, 100));
        m.on_hears("c", 1, &[heard("b", 1, 0)], ms(t0, 400));
        assert!(
            m.in_majority(ms(t0, 450)),
            "a, c and b (by c's word) of five"
        );
        m.on_heartbeat("c", 1, ms(t0, 650));
        m.on_hears("c", 1, &[], ms(t0, 650));
        assert!(
            !m.in_majority(ms(t0, 700)),
            "b no longer vouched for: two of five"
        );
    }
}
