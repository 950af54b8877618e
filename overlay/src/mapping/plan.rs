//! What a reached node does with a request (issue 17): its own part of the map (its record with
//! the proof of its RTT from the origin, its measured links, the candidates it lists) and the
//! requests it forwards, within the path budget as in seed 004 and beyond it by the direct RTT
//! Vivaldi predicts from the origin. The same plan serves answers and reports.

use super::*;

impl MappingNode {
    /// The peer's record and predicted RTT from the origin, when [`MapConfig::reach_rim`] lists
    /// it: a record is known and its coordinate, less `reach_margin` times the summed errors,
    /// may fit `B * (1 + rim_slack)`.
    pub(super) fn rim_candidate(&self, peer: &Peer, r: &Reach) -> Option<(NodeRecord, f64)> {
        let rec = peer.record.as_ref().filter(|_| self.config.reach_rim)?;
        let (v, lower, _) = self.direct_range(&r.coord, r.error, &rec.coord, rec.coord_error)?;
        (lower <= r.budget_ms * (1.0 + self.config.rim_slack)).then(|| (rec.clone(), v))
    }

    /// `(predicted, lower, upper)`: the direct RTT Vivaldi predicts between coordinates `a`
    /// and `b` (with errors `ea` and `eb`), the least it may be (the prediction less
    /// `reach_margin` times the summed error) and the most (plus `vivaldi_margin` times it).
    /// `None` while that error says nothing (a fresh node on either side): a node is then
    /// neither forwarded to, listed nor spared a probe on its coordinate.
    pub(super) fn direct_range(
        &self,
        a: &Coord,
        ea: f64,
        b: &Coord,
        eb: f64,
    ) -> Option<(f64, f64, f64)> {
        let err = ea.max(0.0) + eb.max(0.0);
        if err.is_nan() || err >= VIVALDI_UNTRUSTED {
            return None;
        }
        let v = a.predicted_rtt(b);
        let lower = v * (1.0 - self.config.reach_margin * err).max(0.0);
        Some((v, lower, v * (1.0 + self.config.vivaldi_margin * err)))
    }

    /// What a reached node does with a request: its own part of the map (its record with the
    /// proof of its RTT from the origin, its measured links, the candidates it lists) and the
    /// peers it forwards to, as `(peer, est, upper, proven)`.
    pub(super) fn plan(&self, ask: &Ask) -> (NeighbourhoodMap, Vec<Child>) {
        let Ask {
            id,
            parent,
            budget_ms,
            wait_ms,
            skip,
            reach,
        } = *ask;
        let mut map = NeighbourhoodMap::single(self.record());
        if let Some(r) = &reach {
            let (rtt_ms, how) = if parent.is_none() {
                (0.0, RttHow::Origin)
            } else if r.proven {
                ((r.budget_ms - budget_ms).max(0.0), RttHow::Path)
            } else {
                (self.vivaldi.predict(&r.coord), RttHow::Candidate)
            };
            map.proofs.push(RttProof {
                id: self.id,
                rtt_ms,
                how,
            });
        }
        let proven = reach.is_none_or(|r| r.proven);
        let report = reach.is_some_and(|r| r.report);
        let here = reach.map_or(0.0, |r| self.vivaldi.predict(&r.coord));
        let link_budget = reach.map_or(budget_ms, |r| r.budget_ms.max(budget_ms));
        let mut children: Vec<Child> = Vec::new();
        // Records of peers listed as candidates (`reach_rim`), with their predicted RTT.
        let mut rim: Vec<(NodeRecord, f64)> = Vec::new();
        for (&pid, peer) in &self.peers {
            if let Some(s) = peer.rtt.srtt() {
                if s <= link_budget {
                    // Measured links near enough to matter; the originator drops those whose
                    // other end is not in the map.
                    map.links.push(Link::new(self.id, pid, s));
                }
            }
            if Some(pid) == parent || pid == id.origin || skip.contains(&pid) {
                continue;
            }
            let Some((est, upper)) = self.predict(peer) else {
                continue;
            };
            let r = reach.filter(|r| r.extend);
            if let (Some(r), Some((own, links)), true) = (r, &peer.links, self.config.reach_tree) {
                if (self.config.reach_tree_paths || !(proven && upper <= budget_ms)) && {
                    let k = self.config.reach_tree_parents;
                    let ps = tree_parents(own, links, id.origin, &r.coord, k);
                    !ps.is_empty() && !ps.contains(&self.id)
                } {
                    if self.config.rim_others {
                        rim.extend(self.rim_candidate(peer, &r));
                    }
                    continue;
                }
            }
            if proven && upper <= budget_ms {
                children.push((pid, est, upper, true));
                continue;
            }
            // Beyond the path budget: worth a request while the peer's predicted direct RTT
            // from the origin, less its error margin, may fit and its answer (or, with reports,
            // its report) can reach the origin in time; otherwise perhaps worth listing as a
            // candidate.
            let Some(r) = r else {
                continue;
            };
            let range = peer
                .coord
                .and_then(|(c, e)| self.direct_range(&r.coord, r.error, &c, e));
            if let (true, Some((v, lower, v_upper))) = (self.config.reach_beyond, range) {
                // With reports, the peer's report must reach the origin before the map's
                // deadline (the request's way there and the report's way back, at most): the
                // peer itself is listed in this node's report, so what the peer's own report
                // brings in time is its children.
                let back = if report {
                    (upper + v_upper) / 2.0
                } else {
                    upper
                };
                let in_time = wait_ms - back - self.config.hop_guard_ms > 0.0;
                let outward = !self.config.reach_outward || v > here;
                if in_time && outward && lower <= r.budget_ms * (1.0 + self.config.reach_slack) {
                    children.push((pid, est, upper, false));
                    continue;
                }
            }
            rim.extend(self.rim_candidate(peer, &r));
        }
        children.sort_by_key(|c| c.0);
        for (record, predicted) in rim {
            map.proofs.push(RttProof {
                id: record.id,
                rtt_ms: predicted,
                how: RttHow::Candidate,
            });
            map.nodes.push(record);
        }
        (map, children)
    }

    /// The requests to send `children`, with each child's `upper` RTT. A request's `wait_ms`
    /// is what is left of this node's `wait_ms` once it reached the child (and, when answers
    /// climb back, once the answer is back: a round trip).
    pub(super) fn requests(&self, ask: &Ask, children: &[Child]) -> Vec<(NodeId, f64, MapRequest)> {
        let Ask {
            id,
            parent,
            budget_ms,
            wait_ms,
            skip,
            reach,
        } = *ask;
        let report = reach.is_some_and(|r| r.report);
        let mut sibling_skip: Vec<NodeId> = Vec::with_capacity(children.len() + 1);
        sibling_skip.push(self.id);
        sibling_skip.extend(parent);
        sibling_skip.extend(children.iter().map(|c| c.0));
        // Whatever our sender listed has the request too: pass it on while room remains.
        for s in skip {
            if !sibling_skip.contains(s) {
                sibling_skip.push(*s);
            }
        }
        sibling_skip.truncate(self.config.max_skip);
        children
            .iter()
            .map(|&(pid, est, upper, child_proven)| {
                let there = if report { upper / 2.0 } else { upper };
                let child_wait = (wait_ms - there - self.config.hop_guard_ms).max(0.0);
                let req = MapRequest {
                    id,
                    origin: id.origin,
                    budget_ms: if child_proven {
                        (budget_ms - est).max(0.0)
                    } else {
                        0.0
                    },
                    wait_ms: child_wait,
                    skip: sibling_skip.clone(),
                    reach: reach.map(|r| Reach {
                        proven: child_proven,
                        ..r
                    }),
                };
                (pid, upper, req)
            })
            .collect()
    }
}
