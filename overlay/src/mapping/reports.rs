//! Maps whose reached nodes report straight to the origin (issue 17, [`MapConfig::reports`]).
//!
//! Why: with recursive aggregation a record climbs back along every hop its request took, so
//! the origin learns of a node a whole overlay path RTT after it started, a subtree's answer
//! waits for its slowest branch, and a map's bytes grow with the depth of the tree (every
//! record is sent once per hop). A node that reports the moment the request reaches it is
//! known to the origin after half the path RTT plus half its direct RTT, and its record
//! crosses the network once. The origin probes each node as its report arrives, so
//! confirmation overlaps collection instead of following it.
//!
//! Nothing is acknowledged, yet the origin knows when it has heard from every reached node:
//! each report names the peers its sender forwarded the request to, and the origin waits for a
//! report from every node named (a node named twice reports once, on the first request).
//!
//! One deadline bounds the whole map: `wait` (budget + grace + `reach_wait_factor` x budget,
//! so with the default factor of 1, the budget plus one probe's timeout). A request goes
//! beyond the path budget only while the receiver's report could still arrive before it (the
//! receiver itself is probed when its sender's report, which lists it, arrives); a probe is
//! given until the deadline at most; whatever has not reported by then (a dead node, a report
//! slower than its coordinate predicted) is left out and the map is marked incomplete.
//!
//! With [`MapConfig::reports_end_at_confirmed`] the map ends sooner: at the budget plus the
//! largest RTT a probe of it confirmed so far. The probes still out then are mostly those of
//! candidates beyond the budget, each of which would otherwise hold the map for a whole
//! timeout; what is lost is a node slower than every node confirmed so far whose report or
//! probe came late, and reports that arrive after the end. Such a map also probes, at its
//! start, the farthest peer its own links prove within the budget: a clustered origin's first
//! confirmations are all of its own cluster, and without a far one the map would end before
//! a farther cluster it links to is learned of and probed.
//!
//! Trust: a report speaks only for its sender (its own record must be in it) and no report
//! can make a node direct: what a report claims to be measured by the origin is taken as a
//! candidate, so only the origin's own links and probes confirm.

use super::confirm::Verdict;
use super::*;

/// A map this node originated with reports: what it collected and what it still waits for.
#[derive(Debug, Clone)]
pub(super) struct Collecting {
    budget_ms: f64,
    /// When the map ends, whatever is still missing.
    deadline: Time,
    /// With [`MapConfig::reports_end_at_confirmed`], the start plus the budget: the map ends
    /// by this plus `confirmed_ms`.
    early: Option<Time>,
    /// Named by a report (or by the origin's own requests) and not heard from yet.
    expected: HashSet<NodeId>,
    reported: HashSet<NodeId>,
    records: HashMap<NodeId, NodeRecord>,
    proofs: HashMap<NodeId, RttProof>,
    links: Vec<Link>,
    /// Probes in flight, each with the time its result must be back by.
    probes: HashMap<NodeId, Time>,
    /// The largest RTT a probe of this map confirmed so far.
    confirmed_ms: f64,
    /// Nodes proven by the origin's own link, probed, or rejected: each is decided once.
    settled: HashSet<NodeId>,
    /// Nodes the origin's own link or a probe put beyond the budget.
    rejected: HashSet<NodeId>,
    complete: bool,
}

impl Collecting {
    /// When the origin must next look at this map: a probe's time is over, or the map's.
    pub(super) fn next_timeout(&self) -> Option<Time> {
        self.probes.values().copied().chain([self.ends()]).min()
    }

    /// When the map ends whatever is missing: its deadline, or sooner (see `early`).
    fn ends(&self) -> Time {
        self.early.map_or(self.deadline, |t| {
            t.plus_ms(self.confirmed_ms).min(self.deadline)
        })
    }

    /// Settles `n` by a probe, whose result must be back within `wait_ms` (and the map's time).
    fn probe(&mut self, n: NodeId, now: Time, wait_ms: f64) {
        self.settled.insert(n);
        self.probes
            .insert(n, now.plus_ms(wait_ms).min(self.deadline));
    }

    fn reject(&mut self, n: NodeId) {
        self.rejected.insert(n);
        self.records.remove(&n);
        self.proofs.remove(&n);
    }

    /// Keeps the strongest evidence of a node's RTT from the origin (then the smallest RTT).
    fn prove(&mut self, p: RttProof) {
        let stronger = |old: &RttProof| (p.how, -p.rtt_ms) > (old.how, -old.rtt_ms);
        if self.proofs.get(&p.id).is_none_or(stronger) {
            self.proofs.insert(p.id, p);
        }
    }

    /// Every named node reported and every probe is back, or the map's time is over.
    fn done(&self, now: Time) -> bool {
        self.expected.is_empty() && self.probes.is_empty() || self.ends() <= now
    }
}

impl MappingNode {
    /// The origin's start of a map with reports: its requests, its own part of the map.
    pub(super) fn start_collecting(
        &mut self,
        now: Time,
        id: MapId,
        budget_ms: f64,
        wait_ms: f64,
        reach: Reach,
        out: &mut Vec<Output>,
    ) {
        let ask = Ask {
            id,
            parent: None,
            budget_ms,
            wait_ms,
            skip: &[],
            reach: Some(reach),
        };
        let (mut map, children) = self.plan(&ask);
        // Sorted, so the probes go out in the same order whatever the peers' hash order.
        map.normalize();
        let requests = self.requests(&ask, &children);
        let collecting = Collecting {
            budget_ms,
            deadline: now.plus_ms(wait_ms),
            early: self
                .config
                .reports_end_at_confirmed
                .then(|| now.plus_ms(budget_ms)),
            expected: children.iter().map(|c| c.0).collect(),
            reported: HashSet::from([self.id]),
            records: HashMap::new(),
            proofs: HashMap::new(),
            links: Vec::new(),
            probes: HashMap::new(),
            confirmed_ms: 0.0,
            settled: HashSet::from([self.id]),
            rejected: HashSet::new(),
            complete: true,
        };
        self.collecting.insert(id, collecting);
        for (to, _, req) in requests {
            out.push(Output::Send {
                to,
                msg: Message::Request(req),
            });
        }
        if self.config.reports_end_at_confirmed {
            self.probe_farthest_link(now, id, budget_ms, out);
        }
        self.absorb(now, id, map, true, out);
        self.maybe_finish_collecting(now, id, out);
    }

    /// Probes, at the start of a map that ends at the largest RTT confirmed so far, the farthest
    /// peer whose own link proves it within the budget: its confirmation, back within the
    /// budget, lets the map wait for probes of nodes as far. Without it a clustered origin,
    /// whose first confirmations are all of its own cluster, would end the map at little more
    /// than the budget, before a farther cluster it links to is learned of and probed.
    fn probe_farthest_link(&mut self, now: Time, id: MapId, budget_ms: f64, out: &mut Vec<Output>) {
        let farthest = self
            .peers
            .iter()
            .filter_map(|(&n, p)| {
                match self.verdict(n, None, Some(p.record.as_ref()?), budget_ms) {
                    Verdict::Direct(rtt_ms) => Some((rtt_ms, n)),
                    _ => None,
                }
            })
            .max_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let Some((_, n)) = farthest else {
            return;
        };
        let record = self.peers.get(&n).and_then(|p| p.record.clone());
        let wait_ms = self.config.probe_wait_ms(budget_ms);
        let (Some(record), Some(c)) = (record, self.collecting.get_mut(&id)) else {
            return;
        };
        if c.settled.contains(&n) {
            return;
        }
        c.records.insert(n, record.clone());
        c.probe(n, now, wait_ms);
        out.push(Output::Probe {
            id,
            targets: vec![record],
            timeout_ms: budget_ms,
        });
    }

    /// A reached node's part of a map with reports: it forwards the request and reports its own
    /// part to the origin at once, keeping no state.
    pub(super) fn report(&mut self, ask: Ask, out: &mut Vec<Output>) {
        let (mut map, children) = self.plan(&ask);
        if let Some(r) = ask.reach {
            self.list_children(&mut map, &children, ask.budget_ms, &r);
        }
        map.normalize();
        let requests = self.requests(&ask, &children);
        let id = ask.id;
        out.push(Output::Send {
            to: id.origin,
            msg: Message::Report {
                id,
                map,
                children: requests.iter().map(|r| r.0).collect(),
            },
        });
        for (to, _, req) in requests {
            out.push(Output::Send {
                to,
                msg: Message::Request(req),
            });
        }
    }

    /// Lists in `map` the records of the peers this node forwards to (those it has), each
    /// with what it knows of the peer's RTT from the origin: the path's, or the prediction.
    /// The origin can then probe a peer a hop sooner than the peer's own report would let it,
    /// which is what lets a map end at the budget plus one probe: the peer's own report brings
    /// in time what lies behind it.
    fn list_children(
        &self,
        map: &mut NeighbourhoodMap,
        children: &[Child],
        budget_ms: f64,
        r: &Reach,
    ) {
        for &(pid, est, _, proven) in children {
            let Some(rec) = self.peers.get(&pid).and_then(|p| p.record.clone()) else {
                continue;
            };
            let proof = if proven {
                Some((r.budget_ms - budget_ms + est, RttHow::Path))
            } else {
                self.direct_range(&r.coord, r.error, &rec.coord, rec.coord_error)
                    .map(|(v, _, _)| (v, RttHow::Candidate))
            };
            if let Some((rtt_ms, how)) = proof {
                map.proofs.push(RttProof {
                    id: pid,
                    rtt_ms,
                    how,
                });
                map.nodes.push(rec);
            }
        }
    }

    /// A report for a map this node is collecting. Repeated or unsolicited reports, those
    /// after the map ended, and those without their sender's record are ignored.
    pub(super) fn on_report(
        &mut self,
        now: Time,
        from: NodeId,
        id: MapId,
        mut map: NeighbourhoodMap,
        children: Vec<NodeId>,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.collecting.get_mut(&id) else {
            return;
        };
        map.normalize();
        if !map.contains(from) || !c.reported.insert(from) {
            return;
        }
        c.expected.remove(&from);
        for n in children {
            if !c.reported.contains(&n) {
                c.expected.insert(n);
            }
        }
        self.absorb(now, id, map, false, out);
        self.maybe_finish_collecting(now, id, out);
    }

    /// Adds a part of the map to what map `id` collected, and decides each node seen for the
    /// first time: proven by the origin's own link, rejected by it, or probed now. `own` is
    /// the origin's own part (the only one whose direct proofs count).
    fn absorb(
        &mut self,
        now: Time,
        id: MapId,
        map: NeighbourhoodMap,
        own: bool,
        out: &mut Vec<Output>,
    ) {
        // Taken out while it is worked on, so the node's own state can be read beside it.
        let Some(mut c) = self.collecting.remove(&id) else {
            return;
        };
        let budget = c.budget_ms;
        let mut fresh = Vec::new();
        for r in map.nodes {
            if c.rejected.contains(&r.id) {
                continue;
            }
            if !c.settled.contains(&r.id) {
                fresh.push(r.id);
            }
            c.records.entry(r.id).or_insert(r);
        }
        for mut p in map.proofs {
            if !c.records.contains_key(&p.id) {
                continue;
            }
            if !own && matches!(p.how, RttHow::Direct | RttHow::Origin) {
                p.how = RttHow::Candidate;
            }
            c.prove(p);
        }
        c.links.extend(map.links);
        let mut targets = Vec::new();
        for n in fresh {
            if c.settled.contains(&n) {
                continue;
            }
            let how = c.proofs.get(&n).map(|p| p.how);
            let record = c.records.get(&n);
            match self.verdict(n, how, record, budget) {
                Verdict::Direct(rtt_ms) => {
                    c.settled.insert(n);
                    c.prove(RttProof {
                        id: n,
                        rtt_ms,
                        how: RttHow::Direct,
                    });
                }
                Verdict::Out => {
                    c.settled.insert(n);
                    c.reject(n);
                }
                Verdict::Probe => {
                    if let Some(record) = record.cloned() {
                        c.probe(n, now, self.config.probe_wait_ms(budget));
                        targets.push(record);
                    }
                }
                // Not settled: a later part may prove it another way.
                Verdict::Keep => {}
            }
        }
        self.collecting.insert(id, c);
        if !targets.is_empty() {
            out.push(Output::Probe {
                id,
                targets,
                timeout_ms: budget,
            });
        }
    }

    /// The result of a probe of a map with reports (see [`MappingNode::handle_probe_result`]).
    pub(super) fn collected_probe(
        &mut self,
        now: Time,
        id: MapId,
        target: NodeId,
        rtt_ms: Option<f64>,
        out: &mut Vec<Output>,
    ) {
        let Some(c) = self.collecting.get_mut(&id) else {
            return;
        };
        let Some(by) = c.probes.remove(&target) else {
            return;
        };
        let budget = c.budget_ms;
        match rtt_ms.filter(|r| r.is_finite() && *r >= 0.0 && *r <= budget) {
            Some(rtt_ms) if now <= by => {
                c.confirmed_ms = c.confirmed_ms.max(rtt_ms);
                c.prove(RttProof {
                    id: target,
                    rtt_ms,
                    how: RttHow::Direct,
                });
            }
            _ => c.reject(target),
        }
        self.maybe_finish_collecting(now, id, out);
    }

    /// Gives up on probes whose time is over, and on maps whose time is over.
    pub(super) fn collecting_timeouts(&mut self, now: Time, out: &mut Vec<Output>) {
        let mut due: Vec<MapId> = Vec::new();
        for (id, c) in &mut self.collecting {
            let late: Vec<NodeId> = c
                .probes
                .iter()
                .filter(|(_, by)| **by <= now)
                .map(|(n, _)| *n)
                .collect();
            for n in late {
                // No answer within the budget: the target is beyond it.
                c.probes.remove(&n);
                c.reject(n);
            }
            if c.done(now) {
                due.push(*id);
            }
        }
        due.sort();
        for id in due {
            self.maybe_finish_collecting(now, id, out);
        }
    }

    fn maybe_finish_collecting(&mut self, now: Time, id: MapId, out: &mut Vec<Output>) {
        if !self.collecting.get(&id).is_some_and(|c| c.done(now)) {
            return;
        }
        let Some(mut c) = self.collecting.remove(&id) else {
            return;
        };
        // The map's time is over: nodes whose probe is still out are left out.
        for n in std::mem::take(&mut c.probes).into_keys() {
            c.reject(n);
        }
        let complete = c.complete && c.expected.is_empty();
        let mut map = NeighbourhoodMap {
            nodes: c.records.into_values().collect(),
            links: c.links,
            proofs: c.proofs.into_values().collect(),
        };
        map.normalize();
        self.finish_origin(now, id, c.budget_ms, map, complete, out);
    }
}
