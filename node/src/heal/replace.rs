//! Where the instances of dead hosts go: the decision, with no I/O.
//!
//! Given the ledger (every service deployed from here and where its instances run), the hosts
//! declared dead and the live candidates of a fresh map, each instance on a dead host gets a
//! new host that
//! * is not dead,
//! * runs no other replica of the same task (replicas stay on distinct hosts, counting the
//!   survivors and the replicas placed earlier in the same plan),
//! * has the free CPU and memory the task asks for (what earlier choices of the plan took is
//!   deducted),
//!
//! preferring the host running the fewest instances of the service (spreading what is left),
//! then the nearest to this node, then the smaller peer id (deterministic). An instance no
//! host fits is reported, with why, and left where it is; the next round tries again.

use std::collections::{BTreeMap, BTreeSet};

use brume_overlay::{Multiaddr, PeerId};

use crate::deploy::ledger::{Entry, Placed};

/// A live host a lost instance may go to, from a fresh map.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub peer: PeerId,
    /// Its node id as maps print it (`n…`).
    pub host: String,
    pub addrs: Vec<Multiaddr>,
    pub cpu_free_milli: u64,
    pub mem_free_mb: u64,
    /// RTT from this node (0 for this node itself).
    pub rtt_ms: f64,
}

/// What one instance asks of its host: (CPU millicores, MiB).
pub type Demands = BTreeMap<(String, String), (u64, u64)>;

/// One instance of a dead host, and where it goes.
#[derive(Debug, Clone, PartialEq)]
pub struct Replacement {
    pub service: String,
    /// Where it ran (on the dead host).
    pub from: Placed,
    pub to: Result<Candidate, String>,
}

/// Decides where every instance of the `dead` hosts in `ledger` goes among `candidates`;
/// `demands` names each (service, task)'s CPU and memory (a task not named asks nothing).
pub fn plan(
    ledger: &BTreeMap<String, Entry>,
    dead: &BTreeSet<PeerId>,
    candidates: &[Candidate],
    demands: &Demands,
) -> Vec<Replacement> {
    let mut live: Vec<Candidate> = candidates
        .iter()
        .filter(|c| !dead.contains(&c.peer))
        .cloned()
        .collect();
    live.sort_by_key(|c| c.peer);
    live.dedup_by(|a, b| a.peer == b.peer);
    let mut out = Vec::new();
    for (service, entry) in ledger {
        // Where the service's instances are once this plan is carried out: survivors now,
        // replacements as they are chosen.
        let mut hosts: Vec<(String, PeerId)> = entry
            .instances
            .iter()
            .filter(|p| !dead.contains(&p.peer))
            .map(|p| (p.task.clone(), p.peer))
            .collect();
        let mut lost: Vec<&Placed> = entry
            .instances
            .iter()
            .filter(|p| dead.contains(&p.peer))
            .collect();
        lost.sort_by(|a, b| (&a.task, a.replica).cmp(&(&b.task, b.replica)));
        for from in lost {
            let (cpu, mem) = demands
                .get(&(service.clone(), from.task.clone()))
                .copied()
                .unwrap_or((0, 0));
            let sibling_hosts: BTreeSet<PeerId> = hosts
                .iter()
                .filter(|(t, _)| *t == from.task)
                .map(|(_, p)| *p)
                .collect();
            let fits = |c: &&mut Candidate| {
                !sibling_hosts.contains(&c.peer) && c.cpu_free_milli >= cpu && c.mem_free_mb >= mem
            };
            let load = |peer: PeerId| hosts.iter().filter(|(_, p)| *p == peer).count();
            let best = live.iter_mut().filter(fits).min_by(|a, b| {
                load(a.peer)
                    .cmp(&load(b.peer))
                    .then(a.rtt_ms.total_cmp(&b.rtt_ms))
                    .then(a.peer.cmp(&b.peer))
            });
            let to = match best {
                Some(c) => {
                    c.cpu_free_milli -= cpu;
                    c.mem_free_mb -= mem;
                    hosts.push((from.task.clone(), c.peer));
                    Ok(c.clone())
                }
                None => Err(why_none(&live, dead, &sibling_hosts, cpu, mem)),
            };
            out.push(Replacement {
                service: service.clone(),
                from: from.clone(),
                to,
            });
        }
    }
    out
}

fn why_none(
    live: &[Candidate],
    dead: &BTreeSet<PeerId>,
    siblings: &BTreeSet<PeerId>,
    cpu: u64,
    mem: u64,
) -> String {
    if live.is_empty() {
        return format!("no live host in the map ({} declared dead)", dead.len());
    }
    let free = live.iter().filter(|c| !siblings.contains(&c.peer)).count();
    if free == 0 {
        return format!(
            "every live host ({}) already runs a replica of this task: replicas stay on distinct \
             hosts",
            live.len()
        );
    }
    format!("no live host without a replica of this task has {cpu} mCPU and {mem} MiB free")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .expect("32 bytes are an ed25519 key")
            .public()
            .to_peer_id()
    }

    fn placed(task: &str, replica: u32, host: u8) -> Placed {
        Placed {
            task: task.into(),
            replica,
            host: format!("n{host}"),
            peer: peer(host),
            addrs: vec![],
            generation: Default::default(),
        }
    }

    fn cand(host: u8, rtt_ms: f64) -> Candidate {
        Candidate {
            peer: peer(host),
            host: format!("n{host}"),
            addrs: vec![],
            cpu_free_milli: 1000,
            mem_free_mb: 1000,
            rtt_ms,
        }
    }

    fn ledger(instances: Vec<Placed>) -> BTreeMap<String, Entry> {
        [(
            "svc".to_string(),
            Entry {
                epoch: 1,
                manifest: "/m.toml".into(),
                instances,
                state: Default::default(),
                previous: None,
                artifacts: None,
                specs: Vec::new(),
                holders: Vec::new(),
            },
        )]
        .into()
    }

    #[test]
    fn only_the_dead_hosts_instances_move_and_never_to_a_dead_host() {
        let l = ledger(vec![placed("front", 0, 1), placed("back", 0, 2)]);
        let dead: BTreeSet<PeerId> = [peer(2), peer(3)].into();
        let cands = [cand(1, 0.0), cand(2, 0.1), cand(3, 0.2), cand(4, 5.0)];
        let p = plan(&l, &dead, &cands, &Demands::new());
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].from.task, "back");
        // n1 already runs one instance of the service: n4 spreads it.
        assert_eq!(p[0].to.as_ref().unwrap().peer, peer(4));
    }

    #[test]
    fn replicas_stay_on_distinct_hosts() {
        let l = ledger(vec![
            placed("front", 0, 1),
            placed("back", 0, 2),
            placed("back", 1, 3),
            placed("back", 2, 4),
        ]);
        let dead: BTreeSet<PeerId> = [peer(2), peer(3)].into();
        let cands = [cand(1, 0.0), cand(4, 1.0), cand(5, 2.0)];
        let p = plan(&l, &dead, &cands, &Demands::new());
        assert_eq!(p.len(), 2);
        let to: Vec<PeerId> = p.iter().map(|r| r.to.as_ref().unwrap().peer).collect();
        // n4 runs replica 2: the two lost replicas go to n1 and n5, one each.
        assert!(!to.contains(&peer(4)));
        assert_ne!(to[0], to[1]);
        // With no distinct host left, the replica is reported, not doubled up.
        let p = plan(&l, &dead, &[cand(1, 0.0), cand(4, 1.0)], &Demands::new());
        assert!(p[0].to.is_ok());
        let why = p[1].to.as_ref().unwrap_err();
        assert!(why.contains("distinct hosts"), "{why}");
    }

    #[test]
    fn demands_are_met_and_deducted() {
        let l = ledger(vec![placed("a", 0, 2), placed("b", 0, 2)]);
        let dead: BTreeSet<PeerId> = [peer(2)].into();
        let mut small = cand(1, 0.0);
        small.cpu_free_milli = 300;
        let demands: Demands = [
            (("svc".into(), "a".into()), (200, 10)),
            (("svc".into(), "b".into()), (200, 10)),
        ]
        .into();
        let p = plan(&l, &dead, &[small.clone()], &demands);
        assert!(p[0].to.is_ok());
        let why = p[1].to.as_ref().unwrap_err();
        assert!(why.contains("200 mCPU"), "{why}");
        // A second host takes the second one.
        let p = plan(&l, &dead, &[small, cand(5, 9.0)], &demands);
        assert!(p.iter().all(|r| r.to.is_ok()));
        assert_ne!(
            p[0].to.as_ref().unwrap().peer,
            p[1].to.as_ref().unwrap().peer
        );
    }

    #[test]
    fn no_live_host_is_said_plainly() {
        let l = ledger(vec![placed("a", 0, 2)]);
        let p = plan(&l, &[peer(2)].into(), &[cand(2, 0.0)], &Demands::new());
        assert!(p[0].to.as_ref().unwrap_err().contains("no live host"));
    }
}
