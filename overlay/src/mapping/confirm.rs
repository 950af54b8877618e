//! The origin's part of a map by direct RTT (issue 17): once its answers are in, what it
//! measured itself becomes direct evidence, the nodes that need it are probed (only those whose
//! record may put them within reach), and only what a probe confirmed stays in the map.

use super::*;

/// What the origin makes of one node of a map by direct RTT ([`MappingNode::verdict`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(super) enum Verdict {
    /// Its own link measured the node within the budget, at this smoothed RTT.
    Direct(f64),
    /// Its own link measured the node beyond the budget: out of the map.
    Out,
    /// A probe decides.
    Probe,
    /// Left as the map has it: path-proven with paths trusted, or a candidate whose record puts
    /// it out of reach (unconfirmed candidates leave the map when it ends).
    Keep,
}

impl MappingNode {
    /// Whether a candidate may be within `budget_ms` by the coordinate in its record, as seen
    /// from this node (the origin) now: its prediction less `reach_margin` times the summed
    /// errors fits `budget_ms * (1 + probe_slack)`. A relay far outside the ball is not probed.
    pub(super) fn worth_probing(&self, rec: &NodeRecord, budget_ms: f64) -> bool {
        let here = self.vivaldi.coord();
        match self.direct_range(&here, self.vivaldi.error(), &rec.coord, rec.coord_error) {
            Some((_, lower, _)) => lower <= budget_ms * (1.0 + self.config.probe_slack),
            None => true,
        }
    }

    /// The origin's verdict, in a map by direct RTT within `budget_ms`, on node `n`, which the
    /// map's parts say is reached `how` (`record` is its record, if the map has it). A smoothed
    /// RTT of the origin's own link decides, unless it is within the budget while its variance
    /// margin is not: the smoothed value of a link on the budget's edge is as likely below its
    /// true RTT as above, so that link is measured afresh. Otherwise a probe decides, except
    /// for a path-proven node when paths are trusted (`confirm_paths` off) and a candidate whose
    /// record puts it out of reach. A claim of a direct RTT in another node's part (a forged
    /// one: only the origin measures directly) is probed like a node with no proof.
    pub(super) fn verdict(
        &self,
        n: NodeId,
        how: Option<RttHow>,
        record: Option<&NodeRecord>,
        budget_ms: f64,
    ) -> Verdict {
        let own = self.peers.get(&n).map(|p| &p.rtt);
        if let Some(srtt) = own.and_then(|r| r.srtt()) {
            let upper = own.and_then(|r| r.predicted_upper(self.config.margin_k));
            if srtt <= budget_ms && upper.is_none_or(|u| u <= budget_ms) {
                return Verdict::Direct(srtt);
            }
            if srtt > budget_ms {
                return Verdict::Out;
            }
        }
        match how {
            Some(RttHow::Path) if !self.config.confirm_paths => Verdict::Keep,
            Some(RttHow::Candidate)
                if !record.is_some_and(|r| self.worth_probing(r, budget_ms)) =>
            {
                Verdict::Keep
            }
            _ => Verdict::Probe,
        }
    }

    /// The result of one confirmation probe of map `id` (see [`Output::Probe`]): the RTT
    /// measured, or `None` if the target could not be reached. A target whose RTT exceeds the
    /// budget, or that is not reached, leaves the map; one within it is kept as directly
    /// confirmed. Results for unknown maps or targets, or after the probes' deadline, are ignored.
    pub fn handle_probe_result(
        &mut self,
        now: Time,
        id: MapId,
        target: NodeId,
        rtt_ms: Option<f64>,
    ) -> Vec<Output> {
        let mut out = Vec::new();
        let Some(p) = self.probing.get_mut(&id) else {
            self.collected_probe(now, id, target, rtt_ms, &mut out);
            return out;
        };
        if !p.pending.remove(&target) {
            return out;
        }
        match rtt_ms.filter(|r| r.is_finite() && *r >= 0.0 && *r <= p.budget_ms) {
            Some(rtt_ms) if now <= p.deadline => p.map.set_proof(RttProof {
                id: target,
                rtt_ms,
                how: RttHow::Direct,
            }),
            _ => p.map.remove_node(target),
        }
        if p.pending.is_empty() {
            if let Some(p) = self.probing.remove(&id) {
                self.finish_origin(now, id, p.budget_ms, p.map, p.complete, &mut out);
            }
        }
        out
    }

    /// The origin's answers are all in: what the origin measured itself becomes direct
    /// evidence, and the nodes that need it are probed before the map is done.
    pub(super) fn confirm(&mut self, now: Time, id: MapId, s: Session, out: &mut Vec<Output>) {
        let mut map = s.map;
        map.drop_dangling_links();
        let budget = s.budget_ms;
        let extend = s.reach.is_some_and(|r| r.extend);
        let mut targets = Vec::new();
        let ids = map.ids();
        for n in ids {
            if n == self.id {
                continue;
            }
            let proof = map.proof(n).copied();
            if !extend {
                // Seed 004's map: the origin's own link proves what it measured within the
                // budget; another node's claim of a direct RTT (a forged answer) is taken as a
                // path's at best, since only the origin measures directly.
                match self.peers.get(&n).and_then(|p| p.rtt.srtt()) {
                    Some(srtt) if srtt <= budget => map.set_proof(RttProof {
                        id: n,
                        rtt_ms: srtt,
                        how: RttHow::Direct,
                    }),
                    _ => {
                        if let Some(p) = proof.filter(|p| p.how > RttHow::Path) {
                            map.set_proof(RttProof {
                                how: RttHow::Path,
                                ..p
                            });
                        }
                    }
                }
                continue;
            }
            let record = map.nodes.iter().find(|r| r.id == n);
            match self.verdict(n, proof.map(|p| p.how), record, budget) {
                Verdict::Direct(rtt_ms) => map.set_proof(RttProof {
                    id: n,
                    rtt_ms,
                    how: RttHow::Direct,
                }),
                Verdict::Out => map.remove_node(n),
                Verdict::Probe => targets.push(n),
                Verdict::Keep => {}
            }
        }
        if targets.is_empty() {
            self.finish_origin(now, id, budget, map, s.complete, out);
            return;
        }
        let records = map
            .nodes
            .iter()
            .filter(|n| targets.contains(&n.id))
            .cloned()
            .collect();
        self.probing.insert(
            id,
            Probing {
                budget_ms: budget,
                deadline: now.plus_ms(self.config.probe_wait_ms(budget)),
                pending: targets.into_iter().collect(),
                map,
                complete: s.complete,
            },
        );
        out.push(Output::Probe {
            id,
            targets: records,
            timeout_ms: budget,
        });
    }

    pub(super) fn finish_origin(
        &mut self,
        now: Time,
        id: MapId,
        budget_ms: f64,
        mut map: NeighbourhoodMap,
        complete: bool,
        out: &mut Vec<Output>,
    ) {
        let unconfirmed: Vec<NodeId> = map
            .proofs
            .iter()
            .filter(|p| p.how == RttHow::Candidate)
            .map(|p| p.id)
            .collect();
        for n in unconfirmed {
            map.remove_node(n);
        }
        map.drop_dangling_links();
        if complete {
            self.cache_map(now, budget_ms, map.clone());
        }
        out.push(Output::MapDone {
            id,
            map,
            complete,
            from_cache: false,
        });
    }
}
