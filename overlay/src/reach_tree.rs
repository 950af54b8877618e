//! Which neighbours forward a map request to a node, when requests follow a tree (issue 17).
//!
//! Beyond the path budget a request floods the ball around the origin: every link inside it
//! carries a request and an acknowledgement, so the map costs more than two messages per link
//! before any answer or probe. A tree sends one request per node instead. No node knows the
//! tree; each sender computes, from the links a peer published with their coordinates, whether
//! it is one of that peer's parents: the peer's `k` neighbours predicted nearest the origin,
//! among those predicted nearer than the peer itself. Every sender sees the same published
//! links, so each node gets its request from at most `k` parents, and predicted RTTs to the
//! origin shrink along every tree path, so the tree has no cycles and a node predicted inside
//! the ball has its parents inside it too. A node with no neighbour predicted nearer (a local
//! minimum of the prediction) has no parent: then every neighbour that has the request sends it.

use crate::ids::NodeId;
use crate::vivaldi::Coord;

/// The parents of a node at `own` with `links` on a map from `origin` at `origin_coord`: the
/// origin alone if linked to it, else up to `k` neighbours predicted nearer the origin, nearest
/// first (ties by id). Empty: no neighbour is predicted nearer.
pub fn tree_parents(
    own: &Coord,
    links: &[(NodeId, Coord)],
    origin: NodeId,
    origin_coord: &Coord,
    k: usize,
) -> Vec<NodeId> {
    if links.iter().any(|l| l.0 == origin) {
        return vec![origin];
    }
    let here = own.predicted_rtt(origin_coord);
    let mut nearer: Vec<(f64, NodeId)> = links
        .iter()
        .map(|l| (l.1.predicted_rtt(origin_coord), l.0))
        .filter(|l| l.0 < here)
        .collect();
    nearer.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    nearer.into_iter().take(k).map(|l| l.1).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vivaldi::MIN_HEIGHT;

    fn at(x: f64, y: f64) -> Coord {
        Coord {
            x,
            y,
            height: MIN_HEIGHT,
        }
    }

    #[test]
    fn a_node_linked_to_the_origin_has_the_origin_alone_as_parent() {
        let links = [(NodeId(1), at(1.0, 0.0)), (NodeId(0), at(0.0, 0.0))];
        let p = tree_parents(&at(5.0, 0.0), &links, NodeId(0), &at(0.0, 0.0), 3);
        assert_eq!(p, vec![NodeId(0)]);
    }

    #[test]
    fn parents_are_the_k_neighbours_nearest_the_origin_among_the_nearer_ones() {
        let own = at(10.0, 0.0);
        let links = [
            (NodeId(5), at(20.0, 0.0)), // farther than the node: never a parent
            (NodeId(4), at(8.0, 0.0)),
            (NodeId(3), at(2.0, 1.0)),
            (NodeId(2), at(6.0, 0.0)),
            (NodeId(7), at(6.0, 0.0)), // ties with 2: the smaller id first
        ];
        let o = at(0.0, 0.0);
        assert_eq!(
            tree_parents(&own, &links, NodeId(0), &o, 3),
            vec![NodeId(3), NodeId(2), NodeId(7)]
        );
        assert_eq!(
            tree_parents(&own, &links, NodeId(0), &o, 1),
            vec![NodeId(3)]
        );
        // Every sender computes the same answer from the same links, whatever their order.
        let mut reversed = links;
        reversed.reverse();
        assert_eq!(
            tree_parents(&own, &reversed, NodeId(0), &o, 3),
            tree_parents(&own, &links, NodeId(0), &o, 3)
        );
    }

    #[test]
    fn a_local_minimum_of_the_prediction_has_no_parent() {
        let links = [(NodeId(1), at(20.0, 0.0)), (NodeId(2), at(10.0, 15.0))];
        assert!(tree_parents(&at(10.0, 0.0), &links, NodeId(0), &at(0.0, 0.0), 2).is_empty());
    }
}
