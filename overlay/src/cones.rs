//! Which links a node adds so that every direction around it is one short hop away (issue 17).
//!
//! A map by direct RTT must find the nodes near the origin whatever the overlay paths to them
//! look like, and joining links a node to its nearest peers plus a few random ones: a
//! neighbourhood reached only through a detour is found late or not at all. A Yao graph fixes
//! that: cut the Vivaldi plane around a node into `k` equal cones and link to the nearest node in
//! each. With enough cones it is a spanner (every pair has an overlay path at most a constant
//! factor longer than their distance), which is what forwarding by predicted RTT needs.
//!
//! No node knows every node. [`cone_choices`] takes whatever a node knows with coordinates (its
//! peers and the links they published, so its peers' peers): linking to the nearest known node
//! in each cone, then looking again at what the new peers publish, walks each cone's choice
//! toward the true nearest one round after round.

use crate::ids::NodeId;
use crate::vivaldi::Coord;

/// The cone of the `k` around `own` that `other` lies in (0..k), by the angle of their
/// difference in the plane; the height plays no part.
pub fn cone_of(own: &Coord, other: &Coord, k: usize) -> usize {
    let width = std::f64::consts::TAU / k as f64;
    let (dx, dy) = (other.x - own.x, other.y - own.y);
    (((dy.atan2(dx) + std::f64::consts::PI) / width) as usize).min(k - 1)
}

/// The nearest node (by Vivaldi distance in the plane) in each of `k` cones around `own`, among
/// `known`; ties go to the smaller id, so every order of `known` gives the same choice. Cones
/// with no known node are left out; the rest come in cone order. Empty if `k` is 0.
pub fn cone_choices(
    own: &Coord,
    known: impl IntoIterator<Item = (NodeId, Coord)>,
    k: usize,
) -> Vec<NodeId> {
    sticky_cone_choices(own, known, &[], Stickiness::NONE, k)
        .into_iter()
        .map(|c| c.1)
        .collect()
}

/// How a node that already chose cone links keeps them stable. Coordinates move a little with
/// every ping, so without margins a node would keep trading a link for one a hair nearer and
/// back, and a near node, whose angle a small move turns far, would keep changing cones.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stickiness {
    /// A held node stays its cone's choice unless another is nearer by more than this fraction
    /// of its distance.
    pub keep: f64,
    /// A held node keeps its cone while its angle is within this many cone widths outside it.
    pub slack: f64,
    /// Nodes nearer than this (ms in the plane) are no cone's choice: their direction is within
    /// the coordinates' noise, and joining already links a node to its nearest peers.
    pub floor_ms: f64,
}

impl Stickiness {
    /// No margin: the choice of [`cone_choices`].
    pub const NONE: Stickiness = Stickiness {
        keep: 0.0,
        slack: 0.0,
        floor_ms: 0.0,
    };
}

/// [`cone_choices`] for a node that already chose `held` (each with the cone it holds and its
/// coordinate of now), kept with the margins of `sticky`. Returns `(cone, node)` in cone order.
pub fn sticky_cone_choices(
    own: &Coord,
    known: impl IntoIterator<Item = (NodeId, Coord)>,
    held: &[(usize, NodeId, Coord)],
    sticky: Stickiness,
    k: usize,
) -> Vec<(usize, NodeId)> {
    if k == 0 {
        return Vec::new();
    }
    let floor = sticky.floor_ms.max(0.0);
    let far = |c: &Coord| c.is_finite() && distance(own, c) >= floor;
    let best = nearest_per_cone(own, known.into_iter().filter(|n| far(&n.1)), k);
    let mut holds: Vec<Option<(f64, NodeId)>> = vec![None; k];
    for &(cone, id, c) in held {
        if cone >= k || !far(&c) || angle_outside(own, &c, cone, k) > sticky.slack.max(0.0) {
            continue;
        }
        offer(&mut holds[cone], distance(own, &c), id);
    }
    best.into_iter()
        .zip(holds)
        .enumerate()
        .filter_map(|(cone, (b, h))| {
            let pick = match (b, h) {
                (Some(b), Some(h)) if h.0 <= b.0 * (1.0 + sticky.keep.max(0.0)) => h,
                (b, h) => b.or(h)?,
            };
            Some((cone, pick.1))
        })
        .collect()
}

fn distance(a: &Coord, b: &Coord) -> f64 {
    (b.x - a.x).hypot(b.y - a.y)
}

/// How far, in cone widths, the direction from `own` to `other` lies outside `cone` (0 inside).
fn angle_outside(own: &Coord, other: &Coord, cone: usize, k: usize) -> f64 {
    use std::f64::consts::{PI, TAU};
    let width = TAU / k as f64;
    let angle = (other.y - own.y).atan2(other.x - own.x) + PI; // 0..=TAU, as in cone_of
    let centre = (cone as f64 + 0.5) * width;
    let off = (angle - centre).rem_euclid(TAU);
    let off = off.min(TAU - off);
    ((off - width / 2.0) / width).max(0.0)
}

/// The nearest of `nodes` in each of the `k` cones around `own` (ties to the smaller id), with
/// its distance in the plane.
fn nearest_per_cone(
    own: &Coord,
    nodes: impl IntoIterator<Item = (NodeId, Coord)>,
    k: usize,
) -> Vec<Option<(f64, NodeId)>> {
    let mut best: Vec<Option<(f64, NodeId)>> = vec![None; k];
    for (id, c) in nodes {
        if !c.is_finite() {
            continue;
        }
        offer(&mut best[cone_of(own, &c, k)], distance(own, &c), id);
    }
    best
}

/// Puts `id` at distance `d` in `slot` if it is nearer than what the slot holds (ties to the
/// smaller id, so the choice does not depend on the order nodes are offered in).
fn offer(slot: &mut Option<(f64, NodeId)>, d: f64, id: NodeId) {
    if slot.is_none_or(|(sd, sid)| d < sd || (d == sd && id < sid)) {
        *slot = Some((d, id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vivaldi::MIN_HEIGHT;

    fn margins(keep: f64, slack: f64) -> Stickiness {
        Stickiness {
            keep,
            slack,
            floor_ms: 0.0,
        }
    }

    fn at(x: f64, y: f64) -> Coord {
        Coord {
            x,
            y,
            height: MIN_HEIGHT,
        }
    }

    #[test]
    fn the_nearest_node_of_each_cone_is_chosen() {
        let own = at(0.0, 0.0);
        let known = [
            (NodeId(1), at(10.0, 1.0)),  // east, near
            (NodeId(2), at(20.0, 1.0)),  // east, farther: not chosen
            (NodeId(3), at(-5.0, -0.5)), // west
            (NodeId(4), at(-0.5, 30.0)), // north
        ];
        assert_eq!(
            cone_choices(&own, known, 4),
            vec![NodeId(3), NodeId(1), NodeId(4)]
        );
        // With one cone, only the nearest of all.
        assert_eq!(cone_choices(&own, known, 1), vec![NodeId(3)]);
        assert!(cone_choices(&own, known, 0).is_empty());
    }

    #[test]
    fn the_choice_does_not_depend_on_the_order_known_nodes_come_in() {
        let own = at(1.0, 1.0);
        let mut known: Vec<(NodeId, Coord)> = (0..40u64)
            .map(|i| {
                let a = i as f64 * 0.7;
                (
                    NodeId(i),
                    at(1.0 + a.cos() * (5.0 + i as f64), 1.0 + a.sin() * 7.0),
                )
            })
            .collect();
        known.push((NodeId(99), at(1.0 + 6.0, 1.0))); // ties nothing, but is near east
        let forward = cone_choices(&own, known.clone(), 8);
        known.reverse();
        assert_eq!(cone_choices(&own, known, 8), forward);
        assert!(forward.len() <= 8);
    }

    #[test]
    fn a_held_choice_stays_unless_another_is_nearer_by_more_than_the_margin() {
        let own = at(0.0, 0.0);
        let (one, two) = (at(10.0, 0.5), at(9.5, 0.5));
        let known = [(NodeId(1), one), (NodeId(2), two)];
        let cone = cone_of(&own, &one, 8);
        assert_eq!(cone, cone_of(&own, &two, 8));
        // Node 2 is 5% nearer than the held node 1: within a 10% margin, 1 stays.
        let held = [(cone, NodeId(1), one)];
        assert_eq!(
            sticky_cone_choices(&own, known, &held, margins(0.1, 0.0), 8),
            vec![(cone, NodeId(1))]
        );
        // Beyond a 2% margin it does not.
        assert_eq!(
            sticky_cone_choices(&own, known, &held, margins(0.02, 0.0), 8),
            vec![(cone, NodeId(2))]
        );
    }

    #[test]
    fn a_held_node_keeps_its_cone_while_its_angle_is_within_the_slack() {
        let own = at(0.0, 0.0);
        // Cone 4 of 8 spans angles 0..45 degrees; node 1 sits 5 degrees below it, in cone 3.
        let a = (-5.0f64).to_radians();
        let one = at(10.0 * a.cos(), 10.0 * a.sin());
        assert_eq!(cone_of(&own, &one, 8), 3);
        let held = [(4, NodeId(1), one)];
        let known = [(NodeId(1), one)];
        // A quarter of a cone's width (11 degrees) of slack: node 1 holds cone 4 and is the
        // nearest of cone 3 as well.
        assert_eq!(
            sticky_cone_choices(&own, known, &held, margins(0.1, 0.25), 8),
            vec![(3, NodeId(1)), (4, NodeId(1))]
        );
        // Without slack it holds cone 3 only.
        assert_eq!(
            sticky_cone_choices(&own, known, &held, margins(0.1, 0.0), 8),
            vec![(3, NodeId(1))]
        );
    }

    #[test]
    fn nodes_nearer_than_the_floor_are_no_cones_choice() {
        let own = at(0.0, 0.0);
        let known = [(NodeId(1), at(1.0, 0.1)), (NodeId(2), at(8.0, 0.5))];
        let floor = Stickiness {
            floor_ms: 2.0,
            ..Stickiness::NONE
        };
        let cone = cone_of(&own, &at(8.0, 0.5), 8);
        assert_eq!(
            sticky_cone_choices(&own, known, &[], floor, 8),
            vec![(cone, NodeId(2))]
        );
        assert_eq!(cone_choices(&own, known, 8), vec![NodeId(1)]);
    }

    #[test]
    fn equal_distances_go_to_the_smaller_id_and_bad_coordinates_are_ignored() {
        let own = at(0.0, 0.0);
        let known = [
            (NodeId(9), at(3.0, 4.0)),
            (NodeId(2), at(3.0, 4.0)),
            (NodeId(1), at(f64::NAN, 1.0)),
        ];
        assert_eq!(cone_choices(&own, known, 8), vec![NodeId(2)]);
    }
}
