//! The origin's part of a map by direct RTT (issue 17): once its answers are in, what it
//! measured itself becomes direct evidence, the nodes that need it are probed (only those whose
//! record may put them within reach), and only what a probe confirmed stays in the map.

use super::*;

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
            let own = self.peers.get(&n).map(|p| &p.rtt);
            if let Some(srtt) = own.and_then(|r| r.srtt()) {
                // A link whose smoothed RTT is within the budget but whose variance margin is
                // not is measured afresh (a probe) when the map reaches by direct RTT: the
                // smoothed value of a link on the budget's edge is as likely below its true RTT
                // as above.
                let upper = own.and_then(|r| r.predicted_upper(self.config.margin_k));
                let borderline = extend && upper.is_some_and(|u| u > budget);
                if srtt <= budget && !borderline {
                    map.set_proof(RttProof {
                        id: n,
                        rtt_ms: srtt,
                        how: RttHow::Direct,
                    });
                    continue;
                }
                if extend && srtt > budget {
                    // Measured by the origin itself beyond the budget.
                    map.remove_node(n);
                    continue;
                }
            }
            // Only the origin measures directly: another node's claim of it (a forged answer)
            // is probed like a candidate, or taken as a path's at best in seed 004's map.
            let proof = map.proof(n).copied();
            if !extend {
                if let Some(p) = proof.filter(|p| p.how > RttHow::Path) {
                    map.set_proof(RttProof {
                        how: RttHow::Path,
                        ..p
                    });
                }
                continue;
            }
            let probe = match proof.map(|p| p.how) {
                Some(RttHow::Direct | RttHow::Origin) => true,
                Some(RttHow::Path) => self.config.confirm_paths,
                Some(RttHow::Candidate) => map
                    .nodes
                    .iter()
                    .find(|r| r.id == n)
                    .is_some_and(|r| self.worth_probing(r, budget)),
                None => true,
            };
            if probe {
                targets.push(n);
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
                deadline: now.plus_ms(budget),
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
