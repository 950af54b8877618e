//! Overlay membership as a sans-IO state machine: joining, degree bounds, shuffling, rejoining and
//! peer scoring (DESIGN.md flow step 1, seed 004's "randomized phase").
//!
//! One [`Membership`] runs per node. Like [`crate::mapping::MappingNode`] it never reads a clock,
//! a socket or global randomness: the shell tells it what happened (a connection came up or went
//! down, a dial failed, a join or shuffle answer arrived, a peer sent garbage, an RTT was measured)
//! with the current [`Time`], and it answers with [`Action`]s (dial this address, drop that peer,
//! send a join or shuffle request). Randomness comes from a generator seeded at construction, so
//! every run with the same inputs takes the same decisions.
//!
//! * **Join.** A node dials its bootstrap addresses and asks the first members it reaches for a
//!   sample of their peers ([`Action::SendJoin`]). A member answers with [`Membership::join_sample`]:
//!   half its nearest peers (by RTT, measured or predicted) and half drawn at random among the
//!   others, so a newcomer gets both local links (cheap mapping) and long ones (a small world).
//! * **Degree.** Below `min_degree` the node dials addresses it knows; above `max_degree` it drops
//!   the worst-scoring surplus (lowest score, then largest RTT), never going below `max_degree`
//!   (hence never below `min_degree`) by trimming. Cone links ([`Membership::set_cone_links`])
//!   are never trimmed: they count beyond `max_degree`.
//! * **Shuffle.** Every `shuffle_interval_ms` (jittered) the node sends a few addresses (its own
//!   included) to a random peer, which answers with a few of its own ([`Membership::on_shuffle`]).
//!   Addresses learnt so are remembered; while the degree is below the target (halfway between
//!   the bounds) one of them is dialled, which adds random long links and heals partitions. A
//!   peer that went away (or that we dropped) cools down before it is dialled again, so trimming
//!   does not turn into churn.
//! * **Rejoin.** A node that has lost all its peers dials every address it remembers: the
//!   bootstrap list and the peers it has known, with a backoff between attempts.
//! * **Scoring.** Every peer starts at [`INITIAL_SCORE`]; malformed and oversized messages lower it
//!   ([`Misbehaviour`]), good messages raise it slowly back. A peer whose score falls below
//!   `ban_threshold` is disconnected and not dialled again (nor accepted) for `ban_ms`.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::Hash;

use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::ids::{NodeId, Time};

/// The score every peer starts with; good messages never raise it above this.
pub const INITIAL_SCORE: f64 = 100.0;

/// Tuning of membership.
#[derive(Debug, Clone, PartialEq)]
pub struct MembershipConfig {
    /// The node dials more peers while it has fewer than this.
    pub min_degree: usize,
    /// The node drops its worst peers while it has more than this.
    pub max_degree: usize,
    /// How many peers a member returns to a newcomer.
    pub join_sample: usize,
    /// How many addresses a shuffle carries each way.
    pub shuffle_len: usize,
    /// Mean time between shuffles (each interval is jittered by +-25 %).
    pub shuffle_interval_ms: f64,
    /// How often degree bounds are checked.
    pub maintain_interval_ms: f64,
    /// A dial not reported back within this is forgotten.
    pub dial_timeout_ms: f64,
    /// Wait at least this between two rejoin attempts; it doubles after every attempt that
    /// finds nobody (up to 32 times), and resets once a peer connects.
    pub rejoin_backoff_ms: f64,
    /// A remembered address is forgotten after this many failed dials in a row, but only while
    /// the node has other peers: a lonely node keeps every address it knows, since one of them
    /// coming back (a gateway rebooting) is its only way home.
    pub forget_after_failures: u32,
    /// A peer that disconnected (or that we dropped) is not dialled again for this long, unless
    /// the node is alone: without it a dropped surplus peer would be dialled straight back.
    pub redial_cooldown_ms: f64,
    /// At most this many remembered addresses (the oldest are forgotten first).
    pub max_known: usize,
    /// At most this many peers with a remembered score or ban. Past it, the scores closest to
    /// [`INITIAL_SCORE`] of peers not connected are forgotten first (forgetting a full score
    /// loses nothing), then the bans that end soonest: a flood of new peer ids cannot grow the
    /// tables without bound.
    pub max_scored: usize,
    /// A peer whose score falls below this is disconnected and banned.
    pub ban_threshold: f64,
    /// How long a banned peer stays banned.
    pub ban_ms: f64,
    pub malformed_penalty: f64,
    pub oversized_penalty: f64,
    pub unresponsive_penalty: f64,
    /// Added per good message (up to [`INITIAL_SCORE`]).
    pub good_reward: f64,
}

impl Default for MembershipConfig {
    fn default() -> Self {
        MembershipConfig {
            min_degree: 4,
            max_degree: 12,
            join_sample: 8,
            shuffle_len: 4,
            shuffle_interval_ms: 10_000.0,
            maintain_interval_ms: 1_000.0,
            dial_timeout_ms: 5_000.0,
            rejoin_backoff_ms: 2_000.0,
            forget_after_failures: 5,
            redial_cooldown_ms: 30_000.0,
            max_known: 256,
            max_scored: 1024,
            ban_threshold: 50.0,
            ban_ms: 60_000.0,
            malformed_penalty: 20.0,
            oversized_penalty: 30.0,
            unresponsive_penalty: 5.0,
            good_reward: 1.0,
        }
    }
}

/// Something a peer did wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Misbehaviour {
    /// A message that could not be decoded or was refused by a protocol core.
    Malformed,
    /// A message over the size limit.
    Oversized,
    /// A request that was never answered.
    Unresponsive,
}

/// Why the state machine asks to disconnect a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The degree is above `max_degree` and this peer scored worst.
    Surplus,
    /// The peer's score fell below the threshold (or it is banned).
    Banned,
}

/// What membership asks its shell to do.
#[derive(Debug, Clone, PartialEq)]
pub enum Action<A> {
    /// Dial an address (`node` if known).
    Dial { addr: A, node: Option<NodeId> },
    /// Close every connection to a peer.
    Disconnect { node: NodeId, reason: DropReason },
    /// Ask a member for a sample of its peers; feed the answer to [`Membership::on_join_reply`].
    SendJoin { to: NodeId },
    /// Offer addresses to a peer; feed its answer to [`Membership::on_shuffle_reply`].
    SendShuffle {
        to: NodeId,
        entries: Vec<(NodeId, A)>,
    },
}

#[derive(Debug, Clone)]
struct Connected<A> {
    addr: Option<A>,
    score: f64,
    rtt_ms: Option<f64>,
    since: Time,
}

/// One node's membership state.
#[derive(Debug, Clone)]
pub struct Membership<A> {
    id: NodeId,
    config: MembershipConfig,
    self_addr: Option<A>,
    bootstrap: Vec<A>,
    connected: BTreeMap<NodeId, Connected<A>>,
    /// Remembered addresses with the time they were last heard of.
    known: BTreeMap<NodeId, (A, Time)>,
    /// Dials in flight: address -> give-up time.
    dialing: Vec<(A, Time)>,
    banned: BTreeMap<NodeId, Time>,
    /// Recently disconnected peers: not dialled again before the time given.
    cooling: BTreeMap<NodeId, Time>,
    /// Scores survive disconnection so a misbehaving peer cannot reset its score by reconnecting.
    scores: BTreeMap<NodeId, f64>,
    next_shuffle: Time,
    next_maintain: Time,
    next_rejoin: Time,
    /// Rejoin attempts since the last connection (drives the backoff).
    rejoin_rounds: u32,
    /// Failed dials in a row per remembered address.
    failures: BTreeMap<A, u32>,
    /// Cone links ([`Membership::set_cone_links`]): never trimmed as surplus.
    protected: BTreeSet<NodeId>,
    joined: bool,
    rng: ChaCha8Rng,
}

impl<A: Clone + Eq + Hash + Ord + std::fmt::Debug> Membership<A> {
    /// A node that knows only its bootstrap addresses. `seed` drives every random choice.
    pub fn new(id: NodeId, config: MembershipConfig, bootstrap: Vec<A>, seed: u64) -> Self {
        let mut config = config;
        config.min_degree = config.min_degree.max(1);
        config.max_degree = config.max_degree.max(config.min_degree);
        Membership {
            id,
            config,
            self_addr: None,
            bootstrap,
            connected: BTreeMap::new(),
            known: BTreeMap::new(),
            dialing: Vec::new(),
            banned: BTreeMap::new(),
            cooling: BTreeMap::new(),
            scores: BTreeMap::new(),
            next_shuffle: Time(0),
            next_maintain: Time(0),
            next_rejoin: Time(0),
            rejoin_rounds: 0,
            failures: BTreeMap::new(),
            protected: BTreeSet::new(),
            joined: false,
            rng: ChaCha8Rng::seed_from_u64(seed ^ id.0),
        }
    }

    pub fn id(&self) -> NodeId {
        self.id
    }

    pub fn config(&self) -> &MembershipConfig {
        &self.config
    }

    /// The address this node advertises of itself in shuffles.
    pub fn set_self_addr(&mut self, addr: A) {
        self.self_addr = Some(addr);
    }

    /// The degree shuffles grow the node to: halfway between the bounds. Staying clear of
    /// `max_degree` leaves room for inbound connections, so trimming (and churn) stays rare.
    pub fn target_degree(&self) -> usize {
        (self.config.min_degree + self.config.max_degree) / 2
    }

    fn cooling(&self, now: Time, node: NodeId) -> bool {
        self.cooling.get(&node).is_some_and(|until| *until > now)
    }

    /// The number of connected peers.
    pub fn degree(&self) -> usize {
        self.connected.len()
    }

    /// The connected peers, sorted.
    pub fn peers(&self) -> Vec<NodeId> {
        self.connected.keys().copied().collect()
    }

    pub fn is_connected(&self, node: NodeId) -> bool {
        self.connected.contains_key(&node)
    }

    /// The score of a peer (connected or not); [`INITIAL_SCORE`] if never seen.
    pub fn score(&self, node: NodeId) -> f64 {
        self.scores.get(&node).copied().unwrap_or(INITIAL_SCORE)
    }

    /// Whether the peer is banned now (the shell refuses its connections).
    pub fn is_banned(&self, now: Time, node: NodeId) -> bool {
        self.banned.get(&node).is_some_and(|until| *until > now)
    }

    /// The addresses this node remembers (bootstrap excluded).
    pub fn known(&self) -> Vec<(NodeId, A)> {
        self.known
            .iter()
            .map(|(n, (a, _))| (*n, a.clone()))
            .collect()
    }

    /// Starts: schedules the timers and dials the bootstrap addresses.
    pub fn start(&mut self, now: Time) -> Vec<Action<A>> {
        self.next_maintain = now.plus_ms(self.config.maintain_interval_ms);
        let first = self.jittered_shuffle_ms();
        self.next_shuffle = now.plus_ms(first);
        let mut out = Vec::new();
        self.rejoin(now, &mut out);
        out
    }

    fn jittered_shuffle_ms(&mut self) -> f64 {
        let j: f64 = self.rng.random_range(0.75..1.25);
        self.config.shuffle_interval_ms * j
    }

    /// A connection to `node` is up; `addr` is its dialable address if known (the address we
    /// dialled, or a listen address it told us).
    pub fn on_connected(&mut self, now: Time, node: NodeId, addr: Option<A>) -> Vec<Action<A>> {
        let mut out = Vec::new();
        if node == self.id {
            return out;
        }
        if self.is_banned(now, node) {
            out.push(Action::Disconnect {
                node,
                reason: DropReason::Banned,
            });
            return out;
        }
        if let Some(a) = &addr {
            self.dialing.retain(|(d, _)| d != a);
            self.failures.remove(a);
        }
        let fresh = !self.connected.contains_key(&node);
        if fresh {
            self.rejoin_rounds = 0;
        }
        let entry = self.connected.entry(node).or_insert(Connected {
            addr: None,
            score: INITIAL_SCORE,
            rtt_ms: None,
            since: now,
        });
        entry.score = self.scores.get(&node).copied().unwrap_or(INITIAL_SCORE);
        if addr.is_some() {
            entry.addr = addr.clone();
        }
        if let Some(a) = addr {
            self.remember(now, node, a);
        }
        // Ask the first members we reach for a sample until we have enough peers.
        if fresh && (!self.joined || self.connected.len() < self.config.min_degree) {
            self.joined = true;
            out.push(Action::SendJoin { to: node });
        }
        out
    }

    /// One more connection to `node` is up while another was already open (or closing). A peer
    /// this node dropped (a trim, a ban) can come back this way: its connection was still in
    /// its handshake when the drop closed the others, so the swarm reports it as a second one.
    /// Counting only first connections left such a peer connected but unknown here: the degree
    /// stayed above `max_degree` for good (seen in the loopback suite). It counts as connected
    /// again, so the next maintenance trims (or refuses) it once more.
    pub fn on_another_connection(
        &mut self,
        now: Time,
        node: NodeId,
        addr: Option<A>,
    ) -> Vec<Action<A>> {
        if !self.connected.contains_key(&node) {
            return self.on_connected(now, node, addr);
        }
        if let Some(a) = addr {
            self.set_addr(now, node, a);
        }
        Vec::new()
    }

    /// The peer's dialable address became known (e.g. from identify).
    pub fn set_addr(&mut self, now: Time, node: NodeId, addr: A) {
        if node == self.id {
            return;
        }
        if let Some(c) = self.connected.get_mut(&node) {
            c.addr = Some(addr.clone());
        }
        self.remember(now, node, addr);
    }

    /// The smoothed RTT (measured, or a Vivaldi prediction) of a connected peer.
    pub fn set_rtt(&mut self, node: NodeId, rtt_ms: f64) {
        if let Some(c) = self.connected.get_mut(&node) {
            if rtt_ms.is_finite() && rtt_ms >= 0.0 {
                c.rtt_ms = Some(rtt_ms);
            }
        }
    }

    /// The last connection to `node` closed.
    pub fn on_disconnected(&mut self, now: Time, node: NodeId) -> Vec<Action<A>> {
        let mut out = Vec::new();
        if self.connected.remove(&node).is_some() {
            self.cooling
                .insert(node, now.plus_ms(self.config.redial_cooldown_ms));
        }
        if self.connected.is_empty() {
            // A fresh rejoin: its backoff starts over, whatever the bootstrap redials while
            // connected had built up (up to a minute, which kept a lonely node from dialling a
            // peer that came back a moment later).
            self.rejoin_rounds = 0;
            self.next_rejoin = now;
            self.rejoin(now, &mut out);
        }
        out
    }

    /// A dial to `addr` failed.
    pub fn on_dial_failed(&mut self, _now: Time, addr: &A) {
        self.dialing.retain(|(d, _)| d != addr);
        if !self.known.values().any(|(a, _)| a == addr) {
            return;
        }
        let failures = self.failures.entry(addr.clone()).or_insert(0);
        *failures += 1;
        // Forget a remembered peer whose address keeps failing, unless we are alone;
        // bootstrap addresses always stay.
        if *failures >= self.config.forget_after_failures && !self.connected.is_empty() {
            self.known.retain(|_, (a, _)| a != addr);
            self.failures.remove(addr);
        }
    }

    fn remember(&mut self, now: Time, node: NodeId, addr: A) {
        if node == self.id || self.bootstrap.contains(&addr) && self.known.contains_key(&node) {
            return;
        }
        self.known.insert(node, (addr, now));
        while self.known.len() > self.config.max_known {
            let oldest = self
                .known
                .iter()
                .filter(|(n, _)| !self.connected.contains_key(n))
                .min_by_key(|(_, (_, t))| *t)
                .map(|(n, _)| *n);
            match oldest {
                Some(n) => {
                    self.known.remove(&n);
                }
                None => break,
            }
        }
    }

    /// The sample a member gives a newcomer `to`: half its nearest peers, half random others,
    /// then remembered addresses if it has too few peers.
    pub fn join_sample(&mut self, to: NodeId) -> Vec<(NodeId, A)> {
        let n = self.config.join_sample;
        let mut cands: Vec<(NodeId, A, f64)> = self
            .connected
            .iter()
            .filter(|(id, _)| **id != to)
            .filter_map(|(id, c)| {
                c.addr
                    .clone()
                    .map(|a| (*id, a, c.rtt_ms.unwrap_or(f64::INFINITY)))
            })
            .collect();
        cands.sort_by(|x, y| x.2.total_cmp(&y.2).then(x.0.cmp(&y.0)));
        let near = n.div_ceil(2).min(cands.len());
        let mut out: Vec<(NodeId, A)> = cands
            .iter()
            .take(near)
            .map(|(i, a, _)| (*i, a.clone()))
            .collect();
        let mut far: Vec<(NodeId, A)> = cands
            .iter()
            .skip(near)
            .map(|(i, a, _)| (*i, a.clone()))
            .collect();
        far.shuffle(&mut self.rng);
        out.extend(far.into_iter().take(n - out.len()));
        if out.len() < n {
            let mut extra: Vec<(NodeId, A)> = self
                .known
                .iter()
                .filter(|(id, _)| **id != to && !out.iter().any(|(o, _)| o == *id))
                .map(|(id, (a, _))| (*id, a.clone()))
                .collect();
            extra.shuffle(&mut self.rng);
            let room = n - out.len();
            out.extend(extra.into_iter().take(room));
        }
        out
    }

    /// A member's answer to our join request: remember the addresses, dial up to `min_degree`.
    pub fn on_join_reply(
        &mut self,
        now: Time,
        _from: NodeId,
        entries: Vec<(NodeId, A)>,
    ) -> Vec<Action<A>> {
        for (node, addr) in entries.into_iter().take(self.config.join_sample.max(1) * 4) {
            self.remember(now, node, addr);
        }
        let mut out = Vec::new();
        self.fill(now, self.config.min_degree, &mut out);
        out
    }

    /// A peer offers addresses: remember them and answer with as many of ours.
    pub fn on_shuffle(
        &mut self,
        now: Time,
        from: NodeId,
        entries: Vec<(NodeId, A)>,
    ) -> Vec<(NodeId, A)> {
        let reply = self.shuffle_entries(Some(from));
        for (node, addr) in entries.into_iter().take(self.config.shuffle_len.max(1) * 2) {
            self.remember(now, node, addr);
        }
        reply
    }

    /// The answer to our shuffle: remember it; while below the target degree, dial one new
    /// address (not a peer cooling down).
    pub fn on_shuffle_reply(
        &mut self,
        now: Time,
        _from: NodeId,
        entries: Vec<(NodeId, A)>,
    ) -> Vec<Action<A>> {
        let mut fresh = Vec::new();
        for (node, addr) in entries.into_iter().take(self.config.shuffle_len.max(1) * 2) {
            if node != self.id && !self.connected.contains_key(&node) {
                fresh.push((node, addr.clone()));
            }
            self.remember(now, node, addr);
        }
        let mut out = Vec::new();
        if self.connected.len() + self.dialing.len() < self.target_degree() {
            fresh.retain(|(n, a)| {
                !self.is_banned(now, *n) && !self.cooling(now, *n) && !self.is_dialing(a)
            });
            if let Some((node, addr)) = fresh.choose(&mut self.rng).cloned() {
                self.dial(now, addr, Some(node), &mut out);
            }
        }
        out
    }

    fn shuffle_entries(&mut self, exclude: Option<NodeId>) -> Vec<(NodeId, A)> {
        let mut pool: Vec<(NodeId, A)> = self
            .connected
            .iter()
            .filter(|(id, _)| Some(**id) != exclude)
            .filter_map(|(id, c)| c.addr.clone().map(|a| (*id, a)))
            .collect();
        pool.extend(
            self.known
                .iter()
                .filter(|(id, _)| Some(**id) != exclude && !self.connected.contains_key(id))
                .map(|(id, (a, _))| (*id, a.clone())),
        );
        pool.shuffle(&mut self.rng);
        let mut out = Vec::new();
        if let Some(me) = &self.self_addr {
            out.push((self.id, me.clone()));
        }
        let room = self.config.shuffle_len.saturating_sub(out.len());
        out.extend(pool.into_iter().take(room));
        out
    }

    /// A peer misbehaved: lower its score; below the threshold it is disconnected and banned.
    pub fn on_misbehaviour(
        &mut self,
        now: Time,
        node: NodeId,
        what: Misbehaviour,
    ) -> Vec<Action<A>> {
        let penalty = match what {
            Misbehaviour::Malformed => self.config.malformed_penalty,
            Misbehaviour::Oversized => self.config.oversized_penalty,
            Misbehaviour::Unresponsive => self.config.unresponsive_penalty,
        };
        let score = self.score(node) - penalty;
        self.scores.insert(node, score);
        self.bound_scores(node);
        if let Some(c) = self.connected.get_mut(&node) {
            c.score = score;
        }
        let mut out = Vec::new();
        if score < self.config.ban_threshold {
            self.banned.insert(node, now.plus_ms(self.config.ban_ms));
            self.bound_bans(node);
            self.known.remove(&node);
            if self.connected.contains_key(&node) {
                out.push(Action::Disconnect {
                    node,
                    reason: DropReason::Banned,
                });
            }
        }
        out
    }

    /// A peer sent a well-formed, useful message: its score recovers a little.
    pub fn on_good(&mut self, node: NodeId) {
        if let Some(s) = self.scores.get_mut(&node) {
            *s = (*s + self.config.good_reward).min(INITIAL_SCORE);
            let s = *s;
            if let Some(c) = self.connected.get_mut(&node) {
                c.score = s;
            }
            if s >= INITIAL_SCORE && !self.banned.contains_key(&node) {
                // A full score is the default: nothing to remember.
                self.scores.remove(&node);
            }
        }
    }

    /// Peers with a remembered score (bounded by `max_scored`).
    pub fn scored(&self) -> usize {
        self.scores.len()
    }

    /// Peers with a remembered ban (bounded by `max_scored`).
    pub fn bans(&self) -> usize {
        self.banned.len()
    }

    /// Keeps `scores` within `max_scored`, never forgetting `keep` (just scored) or a banned or
    /// connected peer's score while another can go.
    fn bound_scores(&mut self, keep: NodeId) {
        while self.scores.len() > self.config.max_scored.max(1) {
            let victim = self
                .scores
                .iter()
                .filter(|(n, _)| **n != keep)
                .min_by(|(a, sa), (b, sb)| {
                    let rank =
                        |n: &NodeId| (self.banned.contains_key(n), self.connected.contains_key(n));
                    rank(a).cmp(&rank(b)).then(sb.total_cmp(sa))
                })
                .map(|(n, _)| *n);
            match victim {
                Some(n) => {
                    self.scores.remove(&n);
                }
                None => break,
            }
        }
    }

    /// Keeps `banned` within `max_scored`: the bans that end soonest go first.
    fn bound_bans(&mut self, keep: NodeId) {
        while self.banned.len() > self.config.max_scored.max(1) {
            let victim = self
                .banned
                .iter()
                .filter(|(n, _)| **n != keep)
                .min_by_key(|(_, until)| **until)
                .map(|(n, _)| *n);
            match victim {
                Some(n) => {
                    self.banned.remove(&n);
                }
                None => break,
            }
        }
    }

    fn is_dialing(&self, addr: &A) -> bool {
        self.dialing.iter().any(|(d, _)| d == addr)
    }

    fn dial(&mut self, now: Time, addr: A, node: Option<NodeId>, out: &mut Vec<Action<A>>) {
        if self.is_dialing(&addr) {
            return;
        }
        self.dialing
            .push((addr.clone(), now.plus_ms(self.config.dial_timeout_ms)));
        out.push(Action::Dial { addr, node });
    }

    /// Dials remembered peers until connected + dialling reaches `target`.
    fn fill(&mut self, now: Time, target: usize, out: &mut Vec<Action<A>>) {
        let have = self.connected.len() + self.dialing.len();
        if have >= target {
            return;
        }
        let mut cands: Vec<(NodeId, A)> = self
            .known
            .iter()
            .filter(|(id, (a, _))| {
                !self.connected.contains_key(id)
                    && !self.is_banned(now, **id)
                    && !self.cooling(now, **id)
                    && !self.is_dialing(a)
            })
            .map(|(id, (a, _))| (*id, a.clone()))
            .collect();
        cands.shuffle(&mut self.rng);
        for (node, addr) in cands.into_iter().take(target - have) {
            self.dial(now, addr, Some(node), out);
        }
    }

    /// Below `min_degree` with nothing remembered left to dial: dial again the bootstrap
    /// addresses no connected peer was reached at, with the rejoin backoff. Without it a node
    /// whose first dial to its bootstrap failed, and which a later node reached meanwhile, never
    /// met its bootstrap, and a bootstrap node (which dials no one) stayed alone (seen in the
    /// container testnet: peers {0: {}, 1: {2}, 2: {1}} for good).
    fn redial_bootstrap(&mut self, now: Time, out: &mut Vec<Action<A>>) {
        if now < self.next_rejoin
            || self.connected.len() + self.dialing.len() >= self.config.min_degree
        {
            return;
        }
        let reached: Vec<&A> = self
            .connected
            .values()
            .filter_map(|c| c.addr.as_ref())
            .collect();
        let boots: Vec<A> = self
            .bootstrap
            .iter()
            .filter(|a| !reached.contains(a) && !self.is_dialing(a))
            .cloned()
            .collect();
        if boots.is_empty() {
            return;
        }
        let factor = f64::from(1u32 << self.rejoin_rounds.min(5));
        self.next_rejoin = now.plus_ms(self.config.rejoin_backoff_ms * factor);
        self.rejoin_rounds += 1;
        for a in boots {
            self.dial(now, a, None, out);
        }
    }

    /// Lost every peer: dial the bootstrap list and every remembered address (with a backoff).
    fn rejoin(&mut self, now: Time, out: &mut Vec<Action<A>>) {
        if now < self.next_rejoin {
            return;
        }
        let factor = f64::from(1u32 << self.rejoin_rounds.min(5));
        self.next_rejoin = now.plus_ms(self.config.rejoin_backoff_ms * factor);
        self.rejoin_rounds += 1;
        self.joined = false;
        let boots = self.bootstrap.clone();
        for a in boots {
            self.dial(now, a, None, out);
        }
        let known: Vec<(NodeId, A)> = self
            .known
            .iter()
            .filter(|(id, _)| !self.is_banned(now, **id))
            .map(|(id, (a, _))| (*id, a.clone()))
            .collect();
        for (node, addr) in known {
            self.dial(now, addr, Some(node), out);
        }
    }

    /// Drops the worst-scoring peers above `max_degree` (lowest score, then largest RTT, then the
    /// most recent connection).
    fn trim(&mut self, now: Time, out: &mut Vec<Action<A>>) {
        let mut ranked: Vec<(NodeId, f64, f64, Time)> = self
            .connected
            .iter()
            .filter(|(id, _)| !self.protected.contains(id))
            .map(|(id, c)| (*id, c.score, c.rtt_ms.unwrap_or(f64::INFINITY), c.since))
            .collect();
        let surplus = ranked.len().saturating_sub(self.config.max_degree);
        if surplus == 0 {
            return;
        }
        ranked.sort_by(|x, y| {
            x.1.total_cmp(&y.1)
                .then(y.2.total_cmp(&x.2))
                .then(y.3.cmp(&x.3))
                .then(x.0.cmp(&y.0))
        });
        for (node, ..) in ranked.into_iter().take(surplus) {
            self.connected.remove(&node);
            self.cooling
                .insert(node, now.plus_ms(self.config.redial_cooldown_ms));
            out.push(Action::Disconnect {
                node,
                reason: DropReason::Surplus,
            });
        }
    }

    /// The node's cone links (issue 17, [`crate::cones`]): `protected` are the peers at the
    /// other end of a link this node or that peer chose as a cone link; they are never trimmed
    /// as surplus (the degree bounds count the other links only). Each of `dial`, a cone link
    /// this node chose, is dialled at its address unless connected, dialling or banned; a peer
    /// cooling down after a trim is dialled too, since a cone link is not trimmed.
    pub fn set_cone_links(
        &mut self,
        now: Time,
        dial: Vec<(NodeId, A)>,
        protected: BTreeSet<NodeId>,
    ) -> Vec<Action<A>> {
        self.protected = protected;
        let mut out = Vec::new();
        for (node, addr) in dial {
            if node == self.id || self.connected.contains_key(&node) || self.is_banned(now, node) {
                continue;
            }
            self.cooling.remove(&node);
            self.remember(now, node, addr.clone());
            self.dial(now, addr, Some(node), &mut out);
        }
        out
    }

    /// Periodic work: expire dials and bans, keep the degree in bounds, rejoin, shuffle.
    pub fn handle_timeout(&mut self, now: Time) -> Vec<Action<A>> {
        let mut out = Vec::new();
        if now >= self.next_maintain {
            self.next_maintain = now.plus_ms(self.config.maintain_interval_ms);
            self.dialing.retain(|(_, until)| *until > now);
            self.banned.retain(|_, until| *until > now);
            self.cooling.retain(|_, until| *until > now);
            if self.connected.is_empty() {
                if self.dialing.is_empty() {
                    self.rejoin(now, &mut out);
                }
            } else {
                self.fill(now, self.config.min_degree, &mut out);
                self.redial_bootstrap(now, &mut out);
                self.trim(now, &mut out);
            }
        }
        if now >= self.next_shuffle {
            let ms = self.jittered_shuffle_ms();
            self.next_shuffle = now.plus_ms(ms);
            let peers = self.peers();
            if let Some(&to) = peers.choose(&mut self.rng) {
                let entries = self.shuffle_entries(Some(to));
                out.push(Action::SendShuffle { to, entries });
            }
        }
        out
    }

    /// The next time [`Membership::handle_timeout`] must be called.
    pub fn poll_timeout(&self) -> Time {
        self.next_maintain.min(self.next_shuffle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_and_bans_of_a_flood_of_peer_ids_stay_bounded() {
        let config = MembershipConfig {
            max_scored: 16,
            ..cfg()
        };
        let mut m = M::new(NodeId(1), config, vec![], 7);
        // A thousand ids, each misbehaving enough to be banned, a thousand more once.
        for n in 0..1000u64 {
            for _ in 0..3 {
                m.on_misbehaviour(ms(n), NodeId(10_000 + n), Misbehaviour::Oversized);
            }
            m.on_misbehaviour(ms(n), NodeId(20_000 + n), Misbehaviour::Malformed);
        }
        assert!(m.scored() <= 16, "{} scores", m.scored());
        assert!(m.bans() <= 16, "{} bans", m.bans());
        // The latest offender is remembered, and banned.
        assert!(m.is_banned(ms(999), NodeId(10_999)));
        // A peer that earns its score back is forgotten.
        let mut m = M::new(NodeId(1), cfg(), vec![], 7);
        m.on_misbehaviour(ms(0), NodeId(5), Misbehaviour::Unresponsive);
        assert_eq!(m.scored(), 1);
        for _ in 0..10 {
            m.on_good(NodeId(5));
        }
        assert_eq!(m.scored(), 0);
        assert_eq!(m.score(NodeId(5)), INITIAL_SCORE);
    }

    type M = Membership<String>;

    fn cfg() -> MembershipConfig {
        MembershipConfig {
            min_degree: 2,
            max_degree: 4,
            join_sample: 4,
            shuffle_len: 3,
            ..MembershipConfig::default()
        }
    }

    fn addr(n: u64) -> String {
        format!("a{n}")
    }

    fn dials(out: &[Action<String>]) -> Vec<String> {
        out.iter()
            .filter_map(|a| match a {
                Action::Dial { addr, .. } => Some(addr.clone()),
                _ => None,
            })
            .collect()
    }

    /// The peers `out` drops as surplus.
    fn surplus_drops(out: &[Action<String>]) -> Vec<u64> {
        out.iter()
            .filter_map(|a| match a {
                Action::Disconnect {
                    node,
                    reason: DropReason::Surplus,
                } => Some(node.0),
                _ => None,
            })
            .collect()
    }

    fn ms(v: u64) -> Time {
        Time(v * 1000)
    }

    #[test]
    fn joins_through_bootstrap_and_fills_to_min_degree() {
        let mut m = M::new(NodeId(1), cfg(), vec!["boot".into()], 7);
        let out = m.start(ms(0));
        assert_eq!(dials(&out), vec!["boot".to_string()]);
        let out = m.on_connected(ms(1), NodeId(2), Some("boot".into()));
        assert_eq!(out, vec![Action::SendJoin { to: NodeId(2) }]);
        let out = m.on_join_reply(
            ms(2),
            NodeId(2),
            vec![
                (NodeId(3), addr(3)),
                (NodeId(4), addr(4)),
                (NodeId(5), addr(5)),
            ],
        );
        // One connected; dials one more to reach min_degree = 2.
        assert_eq!(dials(&out).len(), 1);
        let d = dials(&out)[0].clone();
        let n: u64 = d[1..].parse().unwrap();
        let out = m.on_connected(ms(3), NodeId(n), Some(d));
        // Still below min when the second member connects? degree 2 == min: no new join.
        assert!(out.is_empty());
        assert_eq!(m.degree(), 2);
    }

    #[test]
    fn a_node_reached_by_others_before_its_bootstrap_dials_the_bootstrap_again() {
        let s = |v: u64| ms(v * 1000);
        let boot = "boot".to_string();
        let c = MembershipConfig {
            min_degree: 3,
            ..cfg()
        };
        let mut m = M::new(NodeId(1), c, vec![boot.clone()], 7);
        assert_eq!(dials(&m.start(s(0))), vec![boot.clone()]);
        m.on_dial_failed(ms(100), &boot);
        // Another node dials in: one peer, below min_degree, nothing else remembered.
        m.on_connected(ms(200), NodeId(3), None);
        assert_eq!(
            dials(&m.handle_timeout(s(3))),
            vec![boot.clone()],
            "the bootstrap is dialled again"
        );
        // Backed off: not again at once.
        m.on_dial_failed(ms(3100), &boot);
        assert!(dials(&m.handle_timeout(ms(4500))).is_empty());
        // Reached at last: never dialled again while connected, though still below min_degree.
        m.on_connected(s(6), NodeId(2), Some(boot.clone()));
        for t in 7..200 {
            assert!(
                !dials(&m.handle_timeout(s(t))).contains(&boot),
                "a connected bootstrap was dialled again at {t} s"
            );
        }
    }

    #[test]
    fn join_sample_mixes_near_and_far() {
        let mut c = cfg();
        c.join_sample = 4;
        let mut m = M::new(NodeId(1), c, vec![], 1);
        for i in 2..=11u64 {
            m.on_connected(ms(0), NodeId(i), Some(addr(i)));
            m.set_rtt(NodeId(i), i as f64 * 10.0);
        }
        let s = m.join_sample(NodeId(99));
        assert_eq!(s.len(), 4);
        let ids: Vec<u64> = s.iter().map(|(n, _)| n.0).collect();
        // Two nearest first, then two drawn among the far ones.
        assert_eq!(&ids[..2], &[2, 3]);
        assert!(ids[2..].iter().all(|&i| i > 3));
        // The requester is never offered to itself.
        let s = m.join_sample(NodeId(2));
        assert!(s.iter().all(|(n, _)| n.0 != 2));
        // Deterministic: same seed, same sample.
        let mut m2 = M::new(NodeId(1), cfg(), vec![], 1);
        for i in 2..=11u64 {
            m2.on_connected(ms(0), NodeId(i), Some(addr(i)));
            m2.set_rtt(NodeId(i), i as f64 * 10.0);
        }
        let mut m3 = m2.clone();
        assert_eq!(m2.join_sample(NodeId(99)), m3.join_sample(NodeId(99)));
    }

    /// Node 1 with peers 2 to 8 (max degree 4): 5 the slowest, 7 slightly misbehaved.
    fn seven_peers() -> M {
        let mut m = M::new(NodeId(1), cfg(), vec![], 3);
        m.start(ms(0));
        for i in 2..=8u64 {
            m.on_connected(ms(0), NodeId(i), Some(addr(i)));
            m.set_rtt(NodeId(i), 5.0);
        }
        m.set_rtt(NodeId(5), 500.0);
        m.on_misbehaviour(ms(0), NodeId(7), Misbehaviour::Unresponsive);
        m
    }

    #[test]
    fn cone_links_are_dialled_and_not_trimmed_as_surplus() {
        // Peer 5 is the worst (slowest) and 7 the lowest scored: both cone links, so kept.
        let mut m = seven_peers();
        // Cone links: 5 and 7 connected already, 9 to dial, 10 banned.
        for _ in 0..20 {
            m.on_misbehaviour(ms(0), NodeId(10), Misbehaviour::Malformed);
        }
        assert!(m.is_banned(ms(0), NodeId(10)));
        let out = m.set_cone_links(
            ms(0),
            vec![
                (NodeId(5), addr(5)),
                (NodeId(9), addr(9)),
                (NodeId(10), addr(10)),
            ],
            [5, 7, 9].map(NodeId).into(),
        );
        assert_eq!(dials(&out), vec![addr(9)]);
        let dropped = surplus_drops(&m.handle_timeout(ms(1_000)));
        // Seven peers, two protected: the other five are trimmed to max_degree (4).
        assert_eq!(dropped.len(), 1, "{dropped:?}");
        assert!(!dropped.contains(&5) && !dropped.contains(&7));
        assert_eq!(m.degree(), 6);
        // Once no longer cone links, they are surplus like any other.
        m.set_cone_links(ms(1_000), Vec::new(), BTreeSet::new());
        let dropped = surplus_drops(&m.handle_timeout(ms(2_000)));
        assert_eq!(dropped, vec![7, 5]);
        assert_eq!(m.degree(), 4);
    }

    #[test]
    fn trims_worst_surplus_but_never_below_max() {
        // Peer 7 is slightly misbehaved: lowest score, dropped first; then 5, the slowest.
        let mut m = seven_peers();
        let dropped = surplus_drops(&m.handle_timeout(ms(1_000)));
        assert_eq!(dropped.len(), 3);
        assert_eq!(dropped[0], 7);
        assert_eq!(dropped[1], 5);
        assert_eq!(m.degree(), 4);
        // A second round drops nothing more.
        let out = m.handle_timeout(ms(2_000));
        assert!(!out.iter().any(|a| matches!(a, Action::Disconnect { .. })));
    }

    #[test]
    fn a_trimmed_peer_back_on_a_connection_still_in_its_handshake_is_counted_and_trimmed_again() {
        let mut m = M::new(NodeId(1), cfg(), vec![], 3);
        m.start(ms(0));
        let max = m.config().max_degree;
        // One peer more than the maximum.
        for i in 2..=(max as u64 + 2) {
            m.on_connected(ms(0), NodeId(i), Some(addr(i)));
            m.set_rtt(NodeId(i), 5.0);
        }
        let dropped = surplus_drops(&m.handle_timeout(ms(1_000)));
        assert_eq!(dropped.len(), 1);
        assert_eq!(m.degree(), max);
        // The swarm closes the dropped peer's connection, but a second one from it, still in its
        // handshake then, comes up: the swarm reports one more connection of that peer.
        m.on_another_connection(ms(1_050), NodeId(dropped[0]), None);
        assert_eq!(m.degree(), max + 1, "the peer is connected again");
        assert!(m.is_connected(NodeId(dropped[0])));
        // The next maintenance drops a surplus peer again.
        assert_eq!(surplus_drops(&m.handle_timeout(ms(2_000))).len(), 1);
        assert_eq!(m.degree(), max);
        // A second connection of a peer still counted changes nothing.
        let kept = m.peers()[0];
        m.on_another_connection(ms(2_050), kept, None);
        assert_eq!(m.degree(), max);
    }

    #[test]
    fn a_lost_peer_cools_down_before_it_is_dialled_again() {
        let mut m = M::new(NodeId(1), cfg(), vec![], 3);
        m.start(ms(0));
        m.on_connected(ms(0), NodeId(2), Some(addr(2)));
        m.on_connected(ms(0), NodeId(3), Some(addr(3)));
        m.on_disconnected(ms(10), NodeId(2));
        let out = m.on_shuffle_reply(ms(11), NodeId(3), vec![(NodeId(2), addr(2))]);
        assert!(dials(&out).is_empty());
        let out = m.on_shuffle_reply(ms(40_000), NodeId(3), vec![(NodeId(2), addr(2))]);
        assert_eq!(dials(&out), vec![addr(2)]);
    }

    #[test]
    fn below_min_dials_known_addresses() {
        let mut m = M::new(NodeId(1), cfg(), vec![], 3);
        m.start(ms(0));
        m.on_connected(ms(0), NodeId(2), Some(addr(2)));
        m.on_join_reply(ms(0), NodeId(2), vec![]);
        m.set_addr(ms(0), NodeId(9), addr(9));
        let out = m.handle_timeout(ms(1_000));
        assert_eq!(dials(&out), vec![addr(9)]);
        // The dial is in flight: no duplicate next round.
        let out = m.handle_timeout(ms(2_000));
        assert!(dials(&out).is_empty());
        // Forgotten after `forget_after_failures` failures in a row (we are not alone).
        for i in 0..5 {
            assert_eq!(m.known().len(), 2);
            m.on_dial_failed(ms(2_500 + i), &addr(9));
        }
        assert_eq!(m.known(), vec![(NodeId(2), addr(2))]);
    }

    #[test]
    fn rejoins_through_everything_remembered_when_alone() {
        let mut m = M::new(NodeId(1), cfg(), vec!["boot".into()], 3);
        m.start(ms(0));
        m.on_dial_failed(ms(0), &"boot".to_string());
        m.on_connected(ms(10), NodeId(2), Some(addr(2)));
        m.on_connected(ms(10), NodeId(3), Some(addr(3)));
        m.set_addr(ms(10), NodeId(4), addr(4));
        assert!(m.on_disconnected(ms(20), NodeId(2)).is_empty());
        let out = m.on_disconnected(ms(5_000), NodeId(3));
        let mut d = dials(&out);
        d.sort();
        assert_eq!(d, vec![addr(2), addr(3), addr(4), "boot".to_string()]);
        // Dials failing: a lonely node forgets nothing, and after the backoff (2 s) the next
        // maintenance tries everything again; the next wait doubles (4 s).
        for _ in 0..10 {
            for a in &d {
                m.on_dial_failed(ms(5_001), a);
            }
        }
        let out = m.handle_timeout(ms(8_000));
        let mut again = dials(&out);
        again.sort();
        assert_eq!(again, d);
        for a in &d {
            m.on_dial_failed(ms(8_001), a);
        }
        assert!(dials(&m.handle_timeout(ms(11_000))).is_empty());
        assert_eq!(dials(&m.handle_timeout(ms(12_100))).len(), 4);
    }

    #[test]
    fn a_node_alone_again_rejoins_after_the_first_backoff_whatever_came_before() {
        let mut m = M::new(NodeId(1), cfg(), vec!["boot".into()], 3);
        m.start(ms(0));
        m.on_dial_failed(ms(0), &"boot".to_string());
        // One peer, which dialled this node (so "boot" was never reached): below min_degree,
        // the bootstrap is dialled again with the backoff, for minutes, and fails each time.
        m.on_connected(ms(10), NodeId(2), None);
        m.set_addr(ms(10), NodeId(2), addr(2));
        let mut t = 10;
        let mut redials = 0;
        for _ in 0..300 {
            t += 1_000;
            for a in dials(&m.handle_timeout(ms(t))) {
                redials += 1;
                m.on_dial_failed(ms(t), &a);
            }
        }
        assert!(redials >= 5, "the bootstrap was redialled {redials} times");
        // Alone: every address at once, and again after the first backoff (2 s), not after
        // the long one the redials built up.
        t += 1_000;
        let out = m.on_disconnected(ms(t), NodeId(2));
        let first = dials(&out);
        assert!(first.contains(&addr(2)), "{first:?}");
        for a in &first {
            m.on_dial_failed(ms(t), a);
        }
        let mut again = Vec::new();
        for step in 1..=3 {
            again.extend(dials(&m.handle_timeout(ms(t + step * 1_000))));
        }
        assert!(
            again.contains(&addr(2)),
            "no second try within 3 s: {again:?}"
        );
    }

    #[test]
    fn forgets_an_address_that_keeps_failing_only_when_not_alone() {
        let mut m = M::new(NodeId(1), cfg(), vec![], 3);
        m.start(ms(0));
        m.on_connected(ms(10), NodeId(2), Some(addr(2)));
        m.set_addr(ms(10), NodeId(4), addr(4));
        for i in 0..4 {
            m.on_dial_failed(ms(20 + i), &addr(4));
        }
        assert!(m.known().iter().any(|(_, a)| *a == addr(4)));
        m.on_dial_failed(ms(30), &addr(4));
        assert!(!m.known().iter().any(|(_, a)| *a == addr(4)));
    }

    #[test]
    fn shuffle_exchanges_addresses_and_adds_a_random_link() {
        let mut a = M::new(NodeId(1), cfg(), vec![], 5);
        let mut b = M::new(NodeId(2), cfg(), vec![], 6);
        a.set_self_addr(addr(1));
        b.set_self_addr(addr(2));
        a.start(ms(0));
        b.start(ms(0));
        a.on_connected(ms(0), NodeId(2), Some(addr(2)));
        b.on_connected(ms(0), NodeId(1), Some(addr(1)));
        b.set_addr(ms(0), NodeId(7), addr(7));
        b.set_addr(ms(0), NodeId(8), addr(8));
        let out = a.handle_timeout(ms(20_000));
        let (to, entries) = out
            .iter()
            .find_map(|x| match x {
                Action::SendShuffle { to, entries } => Some((*to, entries.clone())),
                _ => None,
            })
            .expect("a shuffle is due");
        assert_eq!(to, NodeId(2));
        assert_eq!(entries[0], (NodeId(1), addr(1)));
        let reply = b.on_shuffle(ms(20_001), NodeId(1), entries);
        assert!(reply.len() <= 3);
        assert!(reply.contains(&(NodeId(2), addr(2))));
        let out = a.on_shuffle_reply(ms(20_002), NodeId(2), reply);
        // One fresh address is dialled (7 or 8: node 2 is connected already).
        let d = dials(&out);
        assert_eq!(d.len(), 1);
        assert!(d[0] == addr(7) || d[0] == addr(8));
    }

    #[test]
    fn misbehaving_peer_is_scored_down_banned_and_refused() {
        let mut m = M::new(NodeId(1), cfg(), vec![], 3);
        m.on_connected(ms(0), NodeId(2), Some(addr(2)));
        assert!(m
            .on_misbehaviour(ms(0), NodeId(2), Misbehaviour::Malformed)
            .is_empty());
        assert_eq!(m.score(NodeId(2)), INITIAL_SCORE - 20.0);
        m.on_good(NodeId(2));
        assert_eq!(m.score(NodeId(2)), INITIAL_SCORE - 19.0);
        m.on_misbehaviour(ms(0), NodeId(2), Misbehaviour::Oversized);
        let out = m.on_misbehaviour(ms(0), NodeId(2), Misbehaviour::Malformed);
        assert_eq!(
            out,
            vec![Action::Disconnect {
                node: NodeId(2),
                reason: DropReason::Banned
            }]
        );
        assert!(m.is_banned(ms(1), NodeId(2)));
        m.on_disconnected(ms(1), NodeId(2));
        // Reconnecting while banned is refused, and the score is not reset.
        let out = m.on_connected(ms(2), NodeId(2), Some(addr(2)));
        assert!(matches!(out[0], Action::Disconnect { .. }));
        assert!(m.score(NodeId(2)) < 50.0);
        assert!(!m.is_banned(ms(61_000), NodeId(2)));
    }
}
