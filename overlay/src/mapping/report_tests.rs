//! Issue 17: maps whose reached nodes report straight to the origin ([`MapConfig::reports`]).
//! Every test drives the state machines by hand with fixed numbers: no clock, no randomness.

use super::reach_tests::{at, hows, node, pinged, reach, record_at, requests, A, C, D, E, O};
use super::*;

fn reporting() -> MapConfig {
    MapConfig {
        reports: true,
        ..MapConfig::default()
    }
}

/// Reports, ending each map at the budget plus the largest RTT confirmed so far.
fn ending_early() -> MapConfig {
    MapConfig {
        reports_end_at_confirmed: true,
        ..reporting()
    }
}

fn reports(out: &[Output]) -> Vec<(NodeId, NeighbourhoodMap, Vec<NodeId>)> {
    out.iter()
        .filter_map(|o| match o {
            Output::Send {
                to,
                msg: Message::Report { map, children, .. },
            } => Some((*to, map.clone(), children.clone())),
            _ => None,
        })
        .collect()
}

fn probed(out: &[Output]) -> Vec<NodeId> {
    out.iter()
        .flat_map(|o| match o {
            Output::Probe { targets, .. } => targets.iter().map(|r| r.id).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The one map `out` finishes, which must be `complete` or not as said.
fn finished(out: &[Output], complete: bool) -> &NeighbourhoodMap {
    match out {
        [Output::MapDone {
            map, complete: c, ..
        }] if *c == complete => map,
        _ => panic!("not one map done with complete = {complete}: {out:?}"),
    }
}

fn report(id: MapId, map: NeighbourhoodMap, children: Vec<NodeId>) -> Message {
    Message::Report { id, map, children }
}

/// A part of a map: `sender`'s record with its proof, and candidates it lists.
fn part(sender: (NodeId, f64, RttHow), listed: &[(NodeId, f64, RttHow)]) -> NeighbourhoodMap {
    let mut m = NeighbourhoodMap::single(NodeRecord::bare(sender.0));
    for &(id, rtt_ms, how) in std::iter::once(&sender).chain(listed) {
        if id != sender.0 {
            m.nodes.push(record_at(id, rtt_ms));
        }
        m.proofs.push(RttProof { id, rtt_ms, how });
    }
    m.normalize();
    m
}

/// `A` gets a request asking for reports with 3 ms of path budget left: it forwards to `C`
/// (predicted ~10 ms from the origin) and `E` (2 ms away: within the path budget), reports
/// its own part straight to the origin with the peers it forwarded to, and lists those whose
/// records it has (with the path's RTT for `E`, the prediction for `C`) so the origin can
/// probe them at once. It acknowledges nothing and keeps no state. A second copy of the
/// request gets no answer at all.
#[test]
fn a_reached_node_reports_to_the_origin_and_keeps_no_state() {
    let mut a = node(A, MapConfig::default());
    pinged(&mut a, C, 12.0);
    pinged(&mut a, D, 12.0);
    pinged(&mut a, E, 2.0);
    a.set_peer_coord(C, at(10.0), 0.05);
    a.set_peer_coord(D, at(100.0), 0.05);
    a.set_peer_coord(E, at(2.0), 0.05);
    a.set_peer_record(C, record_at(C, 10.0));
    a.set_peer_record(E, record_at(E, 2.0));
    let asking = Reach {
        report: true,
        ..reach(true)
    };
    let req = Message::Request(MapRequest {
        id: MapId { origin: O, seq: 1 },
        origin: O,
        budget_ms: 3.0,
        wait_ms: 40.0,
        skip: vec![],
        reach: Some(asking),
    });
    let out = a.handle_message(Time(0), D, req.clone());
    let sent = requests(&out);
    let to: Vec<NodeId> = sent.iter().map(|s| s.0).collect();
    assert_eq!(to, vec![C, E], "{out:?}");
    assert!(sent.iter().all(|s| s.1.reach.is_some_and(|r| r.report)));
    let [(origin, map, children)] = &reports(&out)[..] else {
        panic!("{out:?}")
    };
    assert_eq!((*origin, children.clone()), (O, vec![C, E]));
    assert_eq!(map.ids(), vec![A, C, E]);
    let how = |n: NodeId| map.proof(n).map(|p| (p.how, p.rtt_ms));
    assert_eq!(how(A), Some((RttHow::Path, 12.0)));
    assert_eq!(how(E), Some((RttHow::Path, 14.0)));
    let predicted = at(0.0).predicted_rtt(&at(10.0));
    assert_eq!(how(C), Some((RttHow::Candidate, predicted)));
    assert_eq!(out.len(), 3, "a report and two requests, no ack: {out:?}");
    assert_eq!(a.open_sessions(), 0);
    assert_eq!(a.poll_timeout(), None);
    assert!(a.handle_message(Time(1_000), E, req).is_empty());
}

/// The origin probes what each report brings the moment it arrives (a report's claim that a
/// node was measured directly counts as a candidate), waits for a report from every node
/// named, and is done at its last probe's result, long before its report window closes.
#[test]
fn the_origin_probes_each_report_as_it_arrives() {
    let mut o = node(O, reporting());
    pinged(&mut o, A, 5.0);
    let (id, out) = o.start_fresh_map(Time(0), 15.0);
    let sent = requests(&out);
    assert_eq!(sent.len(), 1, "{out:?}");
    assert!(sent[0].1.reach.is_some_and(|r| r.report));
    assert!(
        probed(&out).is_empty(),
        "A is measured by the origin: {out:?}"
    );

    let from_a = part((A, 5.0, RttHow::Path), &[(C, 9.0, RttHow::Candidate)]);
    let out = o.handle_message(Time(3_000), A, report(id, from_a, vec![E]));
    assert_eq!(probed(&out), vec![C]);

    let from_e = part((E, 13.0, RttHow::Path), &[(D, 2.0, RttHow::Direct)]);
    let out = o.handle_message(Time(7_000), E, report(id, from_e, vec![]));
    assert_eq!(probed(&out), vec![D, E]);

    assert!(o
        .handle_probe_result(Time(12_000), id, C, Some(9.5))
        .is_empty());
    assert!(o.handle_probe_result(Time(13_000), id, D, None).is_empty());
    let done = o.handle_probe_result(Time(20_000), id, E, Some(14.0));
    let map = finished(&done, true);
    assert_eq!(map.ids(), vec![O, A, C, E]);
    assert_eq!(
        hows(map),
        vec![
            (O, RttHow::Origin, 0.0),
            (A, RttHow::Direct, 5.0),
            (C, RttHow::Direct, 9.5),
            (E, RttHow::Direct, 14.0),
        ]
    );
    assert_eq!(o.open_sessions(), 0);
    assert_eq!(o.poll_timeout(), None);
}

/// A node named by a report that never reports holds the map until the report window closes
/// (budget + grace + `reach_wait_factor` x budget: 15 + 2 + 15 ms); the map is then
/// incomplete and holds what was confirmed. Reports without their sender's record, repeated
/// or after the window, are ignored; so is a probe's result after its time.
#[test]
fn a_silent_node_leaves_the_map_incomplete_when_the_window_closes() {
    let mut o = node(O, reporting());
    pinged(&mut o, A, 5.0);
    let (id, _) = o.start_fresh_map(Time(0), 15.0);
    let from_a = part((A, 5.0, RttHow::Path), &[]);
    assert!(o
        .handle_message(Time(3_000), A, report(id, from_a.clone(), vec![E, D]))
        .is_empty());
    // E's record in D's report speaks for E, not D: ignored, D still expected.
    let e_only = part((E, 13.0, RttHow::Path), &[]);
    assert!(o
        .handle_message(Time(4_000), D, report(id, e_only, vec![]))
        .is_empty());
    assert!(o
        .handle_message(Time(4_000), A, report(id, from_a, vec![]))
        .is_empty());
    let from_d = part((D, 12.0, RttHow::Path), &[]);
    let out = o.handle_message(Time(8_000), D, report(id, from_d, vec![]));
    assert_eq!(probed(&out), vec![D]);
    assert_eq!(o.poll_timeout(), Some(Time(8_000).plus_ms(15.0)));
    // The probe of D is not back in time: D is beyond the budget.
    assert!(o.handle_timeout(Time(23_000)).is_empty());
    assert!(o
        .handle_probe_result(Time(24_000), id, D, Some(3.0))
        .is_empty());
    assert_eq!(o.poll_timeout(), Some(Time(32_000)));
    let done = o.handle_timeout(Time(32_000));
    let map = finished(&done, false);
    assert_eq!(map.ids(), vec![O, A]);
    let late = part((E, 13.0, RttHow::Path), &[]);
    assert!(o
        .handle_message(Time(33_000), E, report(id, late, vec![]))
        .is_empty());
    assert_eq!(o.open_sessions(), 0);
}

/// With `reports_end_at_confirmed` the map ends at the budget plus the largest RTT a probe
/// confirmed so far (15 + 9.5 ms here), not at its deadline (32 ms): E, reported late and
/// probed at 20 ms, is left out although every named node reported (the map is complete), and
/// its probe's result after the end is ignored. Before the end a probe gets its whole time
/// (D's, until 18 ms).
#[test]
fn ending_at_the_largest_confirmed_rtt_leaves_late_nodes_out() {
    let mut o = node(O, ending_early());
    pinged(&mut o, A, 5.0);
    let (id, _) = o.start_fresh_map(Time(0), 15.0);
    assert_eq!(
        o.poll_timeout(),
        Some(Time(15_000)),
        "nothing confirmed yet"
    );
    let from_a = part(
        (A, 5.0, RttHow::Path),
        &[(C, 9.0, RttHow::Candidate), (D, 14.0, RttHow::Candidate)],
    );
    let out = o.handle_message(Time(3_000), A, report(id, from_a, vec![E]));
    assert_eq!(probed(&out), vec![C, D]);
    assert!(o
        .handle_probe_result(Time(12_500), id, C, Some(9.5))
        .is_empty());
    assert_eq!(o.poll_timeout(), Some(Time(18_000)), "D's probe times out");
    assert!(o.handle_timeout(Time(18_000)).is_empty());
    let from_e = part((E, 13.0, RttHow::Path), &[]);
    let out = o.handle_message(Time(20_000), E, report(id, from_e, vec![]));
    assert_eq!(probed(&out), vec![E]);
    assert_eq!(o.poll_timeout(), Some(Time(24_500)));
    let done = o.handle_timeout(Time(24_500));
    let map = finished(&done, true);
    assert_eq!(map.ids(), vec![O, A, C]);
    assert!(o
        .handle_probe_result(Time(26_000), id, E, Some(13.0))
        .is_empty());
    assert_eq!(o.open_sessions(), 0);
}

/// A clustered origin: A is 2 ms away, D (a link to a farther cluster) 12 ms, budget 15 ms.
/// Ending at the budget plus the largest RTT confirmed so far, the map would end at 18 ms once
/// C (3 ms, A's neighbour) is confirmed, before E (13 ms, learned from D's report at 6 ms)
/// answers its probe at 19.5 ms. So the map also probes, at its start, the farthest node its
/// own links prove (D: A is not probed), and D's confirmation at 12 ms (12.2 ms) moves the end
/// to 27.2 ms: E is in, and the map is done when its last probe is back.
#[test]
fn ending_at_the_largest_confirmed_rtt_waits_for_the_farthest_link_of_the_origin() {
    let mut o = node(O, ending_early());
    pinged(&mut o, A, 2.0);
    pinged(&mut o, D, 12.0);
    o.set_peer_record(A, record_at(A, 2.0));
    o.set_peer_record(D, record_at(D, 12.0));
    let (id, out) = o.start_fresh_map(Time(0), 15.0);
    assert_eq!(requests(&out).len(), 2, "{out:?}");
    assert_eq!(probed(&out), vec![D]);

    let from_a = part((A, 2.0, RttHow::Path), &[(C, 3.0, RttHow::Candidate)]);
    let out = o.handle_message(Time(1_000), A, report(id, from_a, vec![]));
    assert_eq!(probed(&out), vec![C]);
    assert!(o
        .handle_probe_result(Time(4_000), id, C, Some(3.0))
        .is_empty());
    let from_d = part((D, 12.0, RttHow::Path), &[(E, 13.0, RttHow::Candidate)]);
    let out = o.handle_message(Time(6_000), D, report(id, from_d, vec![]));
    assert_eq!(probed(&out), vec![E], "D is probed once");
    assert_eq!(o.poll_timeout(), Some(Time(15_000)), "D's probe times out");
    assert!(o
        .handle_probe_result(Time(12_200), id, D, Some(12.2))
        .is_empty());
    assert_eq!(o.poll_timeout(), Some(Time(21_000)), "E's probe times out");
    assert!(
        o.handle_timeout(Time(18_000)).is_empty(),
        "the map does not end at the budget plus C's RTT"
    );
    let done = o.handle_probe_result(Time(19_500), id, E, Some(13.5));
    let map = finished(&done, true);
    assert_eq!(
        hows(map),
        vec![
            (O, RttHow::Origin, 0.0),
            (A, RttHow::Direct, 2.0),
            (C, RttHow::Direct, 3.0),
            (D, RttHow::Direct, 12.2),
            (E, RttHow::Direct, 13.5),
        ]
    );
    assert_eq!(o.open_sessions(), 0);
}
