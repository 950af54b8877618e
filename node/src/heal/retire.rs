//! The copies an initiator left behind on hosts it declared dead, until each host confirms it
//! stopped them. A host that was only cut off or frozen comes back still running its old copy
//! (the single removal sent at re-placement did not reach it), so the initiator keeps, per
//! re-placed instance, the old host and the old generation, and asks that host again every
//! period until it answers: the newer generation wins, exactly one copy runs after a
//! partition heals. Sans-IO: [`Retirements`] decides whom to ask about what; the healer asks.

use std::collections::BTreeMap;

use brume_overlay::{Multiaddr, PeerId};
use brume_tunnel::InstanceId;
use serde::{Deserialize, Serialize};

use crate::deploy::ledger::{Entry, Placed};
use crate::deploy::wire::{Generation, InstanceSpec};

/// A copy that must not run any more: the instance, where it ran and which generation it was.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stale {
    pub instance: InstanceId,
    pub epoch: u64,
    pub generation: Generation,
    pub peer: PeerId,
    pub host: String,
    pub addrs: Vec<Multiaddr>,
}

impl Stale {
    /// The copy that `from` (the instance's old placement) still runs after the instance of
    /// `spec` was placed again elsewhere.
    pub fn left_by(spec: &InstanceSpec, from: &Placed) -> Stale {
        Stale {
            instance: spec.id.clone(),
            epoch: spec.epoch,
            generation: from.generation,
            peer: from.peer,
            host: from.host.clone(),
            addrs: from.addrs.clone(),
        }
    }
}

/// What a host said when asked to retire a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// It stopped the copy, or had none: done.
    Done,
    /// It refused (the copy is not this node's to retire): nothing more to ask.
    Refused,
    /// No answer: ask again next period.
    Silent,
}

/// The stale copies, by old host.
#[derive(Debug, Default)]
pub struct Retirements {
    pending: BTreeMap<PeerId, Vec<Stale>>,
}

impl Retirements {
    pub fn new() -> Retirements {
        Retirements::default()
    }

    /// Remembers a copy left behind by a re-placement (once).
    pub fn record(&mut self, stale: Stale) {
        let list = self.pending.entry(stale.peer).or_default();
        if !list.contains(&stale) {
            list.push(stale);
        }
    }

    /// Whether any copy waits on `peer`.
    pub fn waits_on(&self, peer: &PeerId) -> bool {
        self.pending.contains_key(peer)
    }

    pub fn len(&self) -> usize {
        self.pending.values().map(Vec::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// Every stale copy, by old host (what [`super::retire_book`] saves).
    pub fn all(&self) -> Vec<Stale> {
        self.pending.values().flatten().cloned().collect()
    }

    /// What to ask each old host now, given the ledger: a stale copy is dropped when its
    /// service is gone or redeployed at another epoch, or when the ledger places the instance
    /// on that very host again at a newer generation (asking would remove the live copy).
    pub fn due(&mut self, ledger: &BTreeMap<String, Entry>) -> Vec<(PeerId, Vec<Stale>)> {
        self.due_with(|service| {
            ledger
                .get(service)
                .map(|e| (e.epoch, e.instances.as_slice()))
        })
    }

    /// [`Retirements::due`] against any placement record: `placed(service)` gives the epoch
    /// and the instances where they run now (a holder's record of a dead owner's service).
    pub fn due_with<'a>(
        &mut self,
        placed: impl Fn(&str) -> Option<(u64, &'a [Placed])>,
    ) -> Vec<(PeerId, Vec<Stale>)> {
        for list in self.pending.values_mut() {
            list.retain(|s| still_stale(s, placed(&s.instance.service)));
        }
        self.pending.retain(|_, l| !l.is_empty());
        self.pending.iter().map(|(p, l)| (*p, l.clone())).collect()
    }

    /// The old host answered about `stale`.
    pub fn answered(&mut self, stale: &Stale, answer: Answer) {
        if answer == Answer::Silent {
            return;
        }
        if let Some(list) = self.pending.get_mut(&stale.peer) {
            list.retain(|s| s != stale);
            if list.is_empty() {
                self.pending.remove(&stale.peer);
            }
        }
    }
}

fn still_stale(s: &Stale, placed: Option<(u64, &[Placed])>) -> bool {
    let Some((epoch, instances)) = placed else {
        return false;
    };
    if epoch != s.epoch {
        return false;
    }
    !instances.iter().any(|p| {
        p.task == s.instance.task
            && p.replica == s.instance.replica
            && p.peer == s.peer
            && p.generation > s.generation
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::ledger::Placed;

    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    fn stale(on: u8, generation: u64) -> Stale {
        Stale {
            instance: InstanceId::new("svc", "back", 0),
            epoch: 7,
            generation: Generation(generation),
            peer: peer(on),
            host: format!("h{on}"),
            addrs: Vec::new(),
        }
    }

    fn ledger(on: u8, generation: u64, epoch: u64) -> BTreeMap<String, Entry> {
        let placed = Placed {
            task: "back".into(),
            replica: 0,
            host: format!("h{on}"),
            peer: peer(on),
            addrs: Vec::new(),
            generation: Generation(generation),
        };
        BTreeMap::from([(
            "svc".to_string(),
            Entry {
                epoch,
                manifest: "m.toml".into(),
                instances: vec![placed],
                state: Default::default(),
                previous: None,
                artifacts: None,
                specs: Vec::new(),
                holders: Vec::new(),
            },
        )])
    }

    #[test]
    fn the_old_host_is_asked_every_period_until_it_answers() {
        let mut r = Retirements::new();
        r.record(stale(1, 0));
        r.record(stale(1, 0));
        let now = ledger(2, 1, 7);
        for _ in 0..3 {
            let due = r.due(&now);
            assert_eq!(due, vec![(peer(1), vec![stale(1, 0)])]);
            r.answered(&stale(1, 0), Answer::Silent);
        }
        assert!(r.waits_on(&peer(1)));
        r.answered(&stale(1, 0), Answer::Done);
        assert!(r.due(&now).is_empty() && r.is_empty());
    }

    #[test]
    fn a_refusal_ends_the_asking() {
        let mut r = Retirements::new();
        r.record(stale(1, 0));
        r.answered(&stale(1, 0), Answer::Refused);
        assert!(r.is_empty());
    }

    #[test]
    fn a_copy_placed_back_on_the_old_host_at_a_newer_generation_is_not_retired() {
        let mut r = Retirements::new();
        r.record(stale(1, 0));
        assert!(r.due(&ledger(1, 2, 7)).is_empty());
        assert!(!r.waits_on(&peer(1)));
    }

    #[test]
    fn a_stopped_or_redeployed_service_forgets_its_stale_copies() {
        let mut r = Retirements::new();
        r.record(stale(1, 0));
        assert!(r.due(&BTreeMap::new()).is_empty());
        r.record(stale(1, 0));
        assert!(r.due(&ledger(2, 1, 8)).is_empty());
    }

    #[test]
    fn a_holder_s_record_decides_as_the_owner_s_ledger_does() {
        // A holder has no ledger, only the record: its epoch and where the instances run now.
        let record = ledger(2, 1, 7).remove("svc").unwrap();
        let placed = |service: &str| {
            (service == "svc").then_some((record.epoch, record.instances.as_slice()))
        };
        let mut r = Retirements::new();
        r.record(stale(1, 0));
        assert_eq!(r.due_with(placed), vec![(peer(1), vec![stale(1, 0)])]);
        // The record forgotten (the owner stopped the service): nothing more to ask.
        assert!(r.due_with(|_| None).is_empty());
        assert!(r.is_empty());
    }

    #[test]
    fn copies_on_several_hosts_are_asked_of_each() {
        let mut r = Retirements::new();
        r.record(stale(1, 0));
        let mut other = stale(3, 1);
        other.instance.replica = 1;
        r.record(other.clone());
        let due = r.due(&ledger(2, 1, 7));
        assert_eq!(due.len(), 2);
        assert_eq!(r.len(), 2);
        r.answered(&other, Answer::Done);
        assert_eq!(r.due(&ledger(2, 1, 7)), vec![(peer(1), vec![stale(1, 0)])]);
    }
}
