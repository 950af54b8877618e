//! Issue 17: maps by direct RTT. Every test drives the state machine by hand with fixed
//! numbers: no clock, no randomness.

use super::*;
use crate::vivaldi::MIN_HEIGHT;

pub(super) const O: NodeId = NodeId(1);
pub(super) const A: NodeId = NodeId(2);
pub(super) const C: NodeId = NodeId(3);
pub(super) const D: NodeId = NodeId(4);
pub(super) const E: NodeId = NodeId(5);

pub(super) fn at(x: f64) -> Coord {
    Coord {
        x,
        y: 0.0,
        height: MIN_HEIGHT,
    }
}

pub(super) fn node(id: NodeId, config: MapConfig) -> MappingNode {
    MappingNode::new(id, NodeRecord::bare(id), config)
}

pub(super) fn pinged(n: &mut MappingNode, peer: NodeId, rtt: f64) {
    n.add_peer(peer);
    for _ in 0..20 {
        n.on_rtt_sample(peer, rtt, None);
    }
}

pub(super) fn requests(out: &[Output]) -> Vec<(NodeId, MapRequest)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                to,
                msg: Message::Request(r),
            } => Some((*to, r.clone())),
            _ => None,
        })
        .collect()
}

pub(super) fn reach(proven: bool) -> Reach {
    Reach {
        budget_ms: 15.0,
        coord: at(0.0),
        error: 0.05,
        proven,
        extend: true,
        report: false,
    }
}

fn request(budget_ms: f64, reach: Option<Reach>) -> Message {
    Message::Request(MapRequest {
        id: MapId { origin: O, seq: 1 },
        origin: O,
        budget_ms,
        wait_ms: 40.0,
        skip: vec![],
        reach,
    })
}

/// `A` got the request with 3 ms of path budget left. Its link to `C` (12 ms) does not fit
/// the path budget, but `C`'s coordinate says it is ~10 ms from the origin: `C` gets an
/// unproven request. `D`, as far on its link but ~100 ms from the origin, gets none; nor
/// does anyone when the origin did not ask to reach beyond paths.
#[test]
fn beyond_the_path_budget_requests_go_to_peers_predicted_near_the_origin() {
    let mut a = node(A, MapConfig::default());
    pinged(&mut a, C, 12.0);
    pinged(&mut a, D, 12.0);
    a.set_peer_coord(C, at(10.0), 0.05);
    a.set_peer_coord(D, at(100.0), 0.05);

    let out = a.handle_message(Time(0), O, request(3.0, Some(reach(true))));
    let sent = requests(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    let (to, r) = &sent[0];
    assert_eq!(*to, C);
    assert_eq!(r.budget_ms, 0.0);
    assert_eq!(r.reach, Some(reach(false)));

    // Seed 004's map: the same request without `extend`, or from an old node without
    // `reach`, is forwarded on the path budget only.
    let mut a2 = a.clone();
    let plain = Reach {
        extend: false,
        ..reach(true)
    };
    let id2 = MapId { origin: O, seq: 2 };
    let msg = Message::Request(MapRequest {
        id: id2,
        origin: O,
        budget_ms: 3.0,
        wait_ms: 40.0,
        skip: vec![],
        reach: Some(plain),
    });
    assert!(requests(&a2.handle_message(Time(0), O, msg)).is_empty());
    let old = Message::Request(MapRequest {
        id: MapId { origin: O, seq: 3 },
        origin: O,
        budget_ms: 3.0,
        wait_ms: 40.0,
        skip: vec![],
        reach: None,
    });
    assert!(requests(&a2.handle_message(Time(0), O, old)).is_empty());
}

/// With `reach_tree`, `A` sends `C` the unproven request only while `C`'s published links
/// make `A` one of its parents: once `C` publishes a link to `E`, predicted nearer the
/// origin than `A`, `E` is `C`'s one parent and `A` stays silent. A peer that published
/// nothing is judged as without the tree.
#[test]
fn on_a_tree_only_a_parent_forwards_beyond_the_path_budget() {
    let tree = MapConfig {
        reach_tree: true,
        reach_tree_parents: 1,
        ..MapConfig::default()
    };
    let mut a = node(A, tree);
    pinged(&mut a, C, 12.0);
    a.set_peer_coord(C, at(10.0), 0.05);
    let mut a_is_parent = a.clone();
    a_is_parent.set_peer_links(C, at(10.0), vec![(A, at(3.0)), (D, at(30.0))]);
    let sent = requests(&a_is_parent.handle_message(Time(0), O, request(3.0, Some(reach(true)))));
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![C]);

    let mut e_is_parent = a.clone();
    e_is_parent.set_peer_links(C, at(10.0), vec![(A, at(3.0)), (E, at(1.0))]);
    let out = e_is_parent.handle_message(Time(0), O, request(3.0, Some(reach(true))));
    assert!(requests(&out).is_empty(), "{out:?}");

    let sent = requests(&a.handle_message(Time(0), O, request(3.0, Some(reach(true)))));
    assert_eq!(sent.iter().map(|s| s.0).collect::<Vec<_>>(), vec![C]);
}

/// On a tree, `A` lists `C` as a candidate when `C` is its own child it sends no request to
/// (no forwarding beyond the path budget here); when `C`'s published links make `E` its
/// parent, `A` lists it only with `rim_others` (otherwise `E` alone answers for `C`).
#[test]
fn on_a_tree_a_node_lists_its_own_children_and_others_only_when_asked() {
    let tree = MapConfig {
        reach_tree: true,
        reach_tree_parents: 1,
        reach_beyond: false,
        ..MapConfig::default()
    };
    assert!(
        !tree.rim_others,
        "others' children are not listed by default"
    );
    let mut a = node(A, tree.clone());
    pinged(&mut a, C, 12.0);
    a.set_peer_coord(C, at(10.0), 0.05);
    a.set_peer_record(C, record_at(C, 10.0));
    let listed = |a: &mut MappingNode| {
        let out = a.handle_message(Time(0), O, request(3.0, Some(reach(true))));
        match &out[..] {
            [Output::Send {
                msg: Message::Answer { map, .. },
                ..
            }] => map.ids(),
            _ => panic!("{out:?}"),
        }
    };
    let mut a_is_parent = a.clone();
    a_is_parent.set_peer_links(C, at(10.0), vec![(A, at(3.0)), (D, at(30.0))]);
    assert_eq!(listed(&mut a_is_parent), vec![A, C]);

    let mut e_is_parent = a.clone();
    e_is_parent.set_peer_links(C, at(10.0), vec![(A, at(3.0)), (E, at(1.0))]);
    assert_eq!(listed(&mut e_is_parent.clone()), vec![A]);
    e_is_parent.set_config(MapConfig {
        rim_others: true,
        ..tree
    });
    assert_eq!(listed(&mut e_is_parent), vec![A, C]);
}

/// A node's own answer says how it was reached: by a proven path (with the path's RTT sum),
/// or as a candidate (with its predicted RTT from the origin).
#[test]
fn answers_say_how_each_node_was_reached() {
    for (proven, how) in [(true, RttHow::Path), (false, RttHow::Candidate)] {
        let mut c = node(C, MapConfig::default());
        c.add_peer(A);
        let out = c.handle_message(Time(0), A, request(4.0, Some(reach(proven))));
        let answer = out
            .iter()
            .find_map(|o| match o {
                Output::Send {
                    msg: Message::Answer { map, .. },
                    ..
                } => Some(map.clone()),
                _ => None,
            })
            .expect("a leaf answers at once");
        let p = answer.proof(C).expect("the node's own proof");
        assert_eq!(p.how, how);
        if proven {
            assert_eq!(p.rtt_ms, 11.0);
        }
    }
}

/// Each proof of `map` as `(node, how, rtt)`, in the map's order.
pub(super) fn hows(map: &NeighbourhoodMap) -> Vec<(NodeId, RttHow, f64)> {
    map.proofs.iter().map(|p| (p.id, p.how, p.rtt_ms)).collect()
}

pub(super) fn record_at(id: NodeId, x: f64) -> NodeRecord {
    let mut r = NodeRecord::bare(id);
    r.coord = at(x);
    r.coord_error = 0.05;
    r
}

/// `A` got the request with 3 ms of path budget left; its links to `C` and `D` (12 ms) do
/// not fit it. With `reach_rim` and no forwarding beyond the path budget, `A` sends no
/// request and answers at once, listing `C` (its record says ~10 ms from the origin) as a
/// candidate with that prediction, and not `D` (~100 ms). The answer is also `A`'s ack.
/// A record of another node than the peer it is given for is ignored.
#[test]
fn a_reached_node_lists_the_peers_it_does_not_ask_as_candidates() {
    let rim = MapConfig {
        reach_rim: true,
        reach_beyond: false,
        ..MapConfig::default()
    };
    let mut a = node(A, rim.clone());
    pinged(&mut a, C, 12.0);
    pinged(&mut a, D, 12.0);
    pinged(&mut a, E, 12.0);
    a.set_peer_record(C, record_at(C, 10.0));
    a.set_peer_record(D, record_at(D, 100.0));
    a.set_peer_record(E, record_at(C, 5.0));
    let answer_of = |a: &mut MappingNode| {
        let out = a.handle_message(Time(0), O, request(3.0, Some(reach(true))));
        match &out[..] {
            [Output::Send {
                to,
                msg: Message::Answer { map, .. },
            }] if *to == O => map.clone(),
            _ => panic!("{out:?}"),
        }
    };
    let map = answer_of(&mut a.clone());
    assert_eq!(map.ids(), vec![A, C]);
    let p = map.proof(C).copied();
    assert_eq!(p.map(|p| p.how), Some(RttHow::Candidate));
    let predicted = at(0.0).predicted_rtt(&at(10.0));
    assert!(
        p.is_some_and(|p| (p.rtt_ms - predicted).abs() < 1e-9),
        "{p:?}"
    );
    assert_eq!(map.proof(A).map(|p| p.how), Some(RttHow::Path));

    a.set_config(MapConfig {
        reach_rim: false,
        ..rim
    });
    assert_eq!(answer_of(&mut a).ids(), vec![A]);
}

/// An answer that arrives without an ack (a leaf answers at once) measures the link as an
/// ack would: the time it took is a sample of the peer's RTT.
#[test]
fn an_answer_without_an_ack_measures_the_link() {
    let mut o = node(O, MapConfig::default());
    pinged(&mut o, A, 5.0);
    let (id, out) = o.start_fresh_map(Time(0), 15.0);
    assert_eq!(requests(&out).len(), 1, "{out:?}");
    let mut answer = NeighbourhoodMap::single(NodeRecord::bare(A));
    answer.proofs.push(RttProof {
        id: A,
        rtt_ms: 5.0,
        how: RttHow::Path,
    });
    let out = o.handle_message(Time(6_000), A, Message::Answer { id, map: answer });
    assert!(matches!(&out[..], [Output::MapDone { .. }]), "{out:?}");
    let srtt = o.peer_rtt(A).and_then(|r| r.srtt());
    assert!(srtt.is_some_and(|s| s > 5.0 && s < 6.0), "{srtt:?}");
}

/// The origin does not probe a candidate whose record puts it far beyond the budget (a
/// relay): it leaves the map unprobed. One whose record may fit is probed.
#[test]
fn the_origin_probes_only_candidates_that_may_fit() {
    let mut o = node(O, MapConfig::default());
    for _ in 0..200 {
        o.on_remote_sample(&Coord::origin(), 0.01, 0.5);
    }
    assert!(o.vivaldi().error() < 0.2, "error {}", o.vivaldi().error());
    pinged(&mut o, A, 5.0);
    let (id, out) = o.start_fresh_map(Time(0), 15.0);
    assert_eq!(requests(&out).len(), 1, "{out:?}");
    let mut answer = NeighbourhoodMap::single(NodeRecord::bare(A));
    answer.nodes.push(record_at(C, 8.0));
    answer.nodes.push(record_at(D, 500.0));
    for (id, rtt_ms, how) in [
        (A, 5.0, RttHow::Path),
        (C, 8.0, RttHow::Candidate),
        (D, 500.0, RttHow::Candidate),
    ] {
        answer.proofs.push(RttProof { id, rtt_ms, how });
    }
    answer.normalize();
    let out = o.handle_message(Time(6_000), A, Message::Answer { id, map: answer });
    let [Output::Probe { targets, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(targets.iter().map(|r| r.id).collect::<Vec<_>>(), vec![C]);
    let out = o.handle_probe_result(Time(14_000), id, C, Some(8.0));
    let [Output::MapDone { map, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(map.ids(), vec![O, A, C]);
}

/// Runs the origin `O` (peer `A` at 5 ms) to the point where `A` answered with `answer`.
fn origin_with_answer(
    config: MapConfig,
    answer: NeighbourhoodMap,
) -> (MappingNode, MapId, Vec<Output>) {
    let mut o = node(O, config);
    pinged(&mut o, A, 5.0);
    let (id, out) = o.start_fresh_map(Time(0), 15.0);
    assert_eq!(requests(&out).len(), 1, "{out:?}");
    let mut done = o.handle_message(
        Time(5_000),
        A,
        Message::Ack {
            id,
            answer_follows: true,
        },
    );
    done.extend(o.handle_message(Time(6_000), A, Message::Answer { id, map: answer }));
    (o, id, done)
}

fn answer_of_a() -> NeighbourhoodMap {
    let mut m = NeighbourhoodMap::single(NodeRecord::bare(A));
    for id in [C, D, E] {
        m.nodes.push(NodeRecord::bare(id));
    }
    m.proofs = vec![
        RttProof {
            id: A,
            rtt_ms: 5.0,
            how: RttHow::Path,
        },
        RttProof {
            id: C,
            rtt_ms: 9.0,
            how: RttHow::Candidate,
        },
        RttProof {
            id: D,
            rtt_ms: 12.0,
            how: RttHow::Candidate,
        },
        RttProof {
            id: E,
            rtt_ms: 13.0,
            how: RttHow::Path,
        },
    ];
    m.links = vec![Link::new(A, C, 7.0), Link::new(A, D, 8.0)];
    m.normalize();
    m
}

/// The origin probes what it has not measured itself; a probe within the budget confirms
/// the node, one beyond it, or none before the deadline, removes it (with its links).
#[test]
fn the_origin_keeps_only_what_its_probes_confirm() {
    let (mut o, id, out) = origin_with_answer(MapConfig::default(), answer_of_a());
    let [Output::Probe {
        id: pid,
        targets,
        timeout_ms,
    }] = &out[..]
    else {
        panic!("{out:?}")
    };
    assert_eq!(*pid, id);
    assert_eq!(*timeout_ms, 15.0);
    let ids: Vec<NodeId> = targets.iter().map(|r| r.id).collect();
    // A is the origin's peer (measured: 5 ms), C and D are candidates, E is path-proven.
    assert_eq!(ids, vec![C, D, E]);
    assert!(o
        .poll_timeout()
        .is_some_and(|t| t <= Time(6_000).plus_ms(15.0)));

    assert!(o
        .handle_probe_result(Time(15_000), id, C, Some(9.5))
        .is_empty());
    assert!(o
        .handle_probe_result(Time(21_000), id, D, Some(15.1))
        .is_empty());
    // Unknown targets and maps are ignored.
    assert!(o
        .handle_probe_result(Time(21_000), id, NodeId(77), Some(1.0))
        .is_empty());
    let done = o.handle_timeout(Time(6_000).plus_ms(15.0));
    let [Output::MapDone {
        map,
        complete: true,
        ..
    }] = &done[..]
    else {
        panic!("{done:?}")
    };
    assert_eq!(map.ids(), vec![O, A, C]);
    assert_eq!(
        hows(map),
        vec![
            (O, RttHow::Origin, 0.0),
            (A, RttHow::Direct, 5.0),
            (C, RttHow::Direct, 9.5)
        ]
    );
    assert_eq!(map.links, vec![Link::new(O, A, 5.0), Link::new(A, C, 7.0)]);
    assert_eq!(o.open_sessions(), 0);
}

/// A daemon's probe of a node it is not connected to dials first, so its result comes
/// several RTTs after the probe went out: with `probe_wait_factor` 3 the origin waits three
/// budgets (45 ms from 6 ms) for it and keeps what the ping measured within the budget. C's
/// result at 40 ms (9.5 ms measured) confirms it; D's RTT is beyond the budget whenever it
/// comes; E's result after the wait (52 ms) counts for nothing.
#[test]
fn the_origin_waits_several_budgets_for_a_probe_that_must_dial() {
    let config = MapConfig {
        probe_wait_factor: 3.0,
        ..MapConfig::default()
    };
    assert_eq!(config.probe_wait_ms(15.0), 45.0);
    // The daemon's: six budgets, at most a second beyond one, at least 250 ms.
    let daemon = crate::config::network_map_config();
    let waits: Vec<f64> = [25.0, 80.0, 5_000.0]
        .iter()
        .map(|b| daemon.probe_wait_ms(*b))
        .collect();
    assert_eq!(waits, vec![250.0, 480.0, 6_000.0]);
    let (mut o, id, out) = origin_with_answer(config, answer_of_a());
    assert_eq!(out.len(), 1, "{out:?}");
    assert_eq!(o.poll_timeout(), Some(Time(51_000)));
    assert!(o
        .handle_probe_result(Time(40_000), id, C, Some(9.5))
        .is_empty());
    assert!(o
        .handle_probe_result(Time(41_000), id, D, Some(15.1))
        .is_empty());
    let done = o.handle_timeout(Time(51_000));
    let [Output::MapDone { map, .. }] = &done[..] else {
        panic!("{done:?}")
    };
    assert_eq!(map.ids(), vec![O, A, C]);
    assert!(o
        .handle_probe_result(Time(52_000), id, E, Some(3.0))
        .is_empty());
    assert_eq!(o.open_sessions(), 0);
}

/// Only the origin measures directly: a node that an answer claims was measured directly
/// (a forged claim: no other node sets it) is probed like a candidate, and a seed 004 map
/// takes the claim as a path's at best.
#[test]
fn an_answers_claim_of_a_direct_rtt_is_probed() {
    let mut forged = answer_of_a();
    forged.set_proof(RttProof {
        id: E,
        rtt_ms: 1.0,
        how: RttHow::Direct,
    });
    let (_, _, out) = origin_with_answer(MapConfig::default(), forged.clone());
    assert!(
        matches!(&out[..], [Output::Probe { targets, .. }] if targets.iter().any(|r| r.id == E)),
        "{out:?}"
    );
    let seed_004 = MapConfig {
        reach: false,
        ..MapConfig::default()
    };
    let (_, _, out) = origin_with_answer(seed_004, forged);
    let [Output::MapDone { map, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(map.proof(E).map(|p| p.how), Some(RttHow::Path));
}

/// Without `confirm_paths` a path-proven node stays in the map as such, unprobed; a map
/// whose every probe answers is done at the last answer, not at the deadline.
#[test]
fn path_proven_nodes_are_probed_only_when_asked() {
    let config = MapConfig {
        confirm_paths: false,
        ..MapConfig::default()
    };
    let (mut o, id, out) = origin_with_answer(config, answer_of_a());
    let [Output::Probe { targets, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(targets.iter().map(|r| r.id).collect::<Vec<_>>(), vec![C, D]);
    assert!(o
        .handle_probe_result(Time(7_000), id, C, Some(3.0))
        .is_empty());
    let done = o.handle_probe_result(Time(8_000), id, D, None);
    let [Output::MapDone { map, .. }] = &done[..] else {
        panic!("{done:?}")
    };
    assert_eq!(map.ids(), vec![O, A, C, E]);
    assert_eq!(map.proof(E).map(|p| p.how), Some(RttHow::Path));
    assert_eq!(map.proof(C).map(|p| p.how), Some(RttHow::Direct));
}

/// Seed 004's map (`reach: false`) probes nothing and keeps what the paths found (an
/// unconfirmed candidate never survives into a finished map).
#[test]
fn seed_004_maps_probe_nothing() {
    let config = MapConfig {
        reach: false,
        ..MapConfig::default()
    };
    let (_, _, out) = origin_with_answer(config, answer_of_a());
    let [Output::MapDone { map, .. }] = &out[..] else {
        panic!("{out:?}")
    };
    assert_eq!(map.ids(), vec![O, A, E]);
    assert_eq!(map.proof(E).map(|p| p.how), Some(RttHow::Path));
}

/// A request of a node before issue 17 (no `reach` field on the wire) still decodes.
#[test]
fn requests_without_reach_decode() {
    use serde::Serialize;
    #[derive(Serialize)]
    struct Old {
        id: MapId,
        origin: NodeId,
        budget_ms: f64,
        wait_ms: f64,
        skip: Vec<NodeId>,
    }
    #[derive(Serialize)]
    enum OldMessage {
        Request(Old),
    }
    let old = OldMessage::Request(Old {
        id: MapId { origin: O, seq: 1 },
        origin: O,
        budget_ms: 3.0,
        wait_ms: 4.0,
        skip: vec![],
    });
    let mut bytes = Vec::new();
    ciborium::ser::into_writer(&old, &mut bytes).unwrap();
    let got: Message = ciborium::de::from_reader(bytes.as_slice()).unwrap();
    let Message::Request(r) = got else {
        panic!("{got:?}")
    };
    assert_eq!(r.reach, None);
    assert_eq!(r.budget_ms, 3.0);
}
