//! Which holder of a service record re-places the instances of a dead host when the owner is
//! dead too, and when: the decision, with no I/O and no clock (the shell,
//! [`super::replicator`], feeds the verdicts and the `now`).
//!
//! Every holder watches the owner and the hosts its record names, and the other holders. Once
//! the owner is declared dead and a host of the service is declared dead, holder `r` (its
//! place in the owner's signed list, nearest first) waits `live_above * step`, where
//! `live_above` counts the holders ranked before it not declared dead: the first live holder
//! acts at once, the next one only if the first has not re-placed the instances within a step
//! (it hears so: the acting holder forwards its updated record to the others, and a record
//! whose instances no longer sit on dead hosts needs nothing). Each holder judges with the same
//! list and the same rule, so they agree on who goes first without talking.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use brume_overlay::PeerId;

use crate::deploy::ledger::Placed;

/// How many holders ranked before `me` in `holders` are not declared `dead`; `None` when `me`
/// is not a holder.
pub fn live_above(holders: &[PeerId], me: PeerId, dead: &BTreeSet<PeerId>) -> Option<usize> {
    let rank = holders.iter().position(|h| *h == me)?;
    Some(holders[..rank].iter().filter(|h| !dead.contains(h)).count())
}

/// The instances of `instances` on hosts declared dead (the owner's own included).
pub fn lost<'a>(instances: &'a [Placed], dead: &BTreeSet<PeerId>) -> Vec<&'a Placed> {
    instances
        .iter()
        .filter(|p| dead.contains(&p.peer))
        .collect()
}

/// Whether `me` re-places `record`'s lost instances now: the owner declared dead, some host of
/// the service declared dead, and `me`'s wait past since the later of the two verdicts.
/// `declared` maps each peer declared dead to when.
pub fn my_turn(
    owner: PeerId,
    holders: &[PeerId],
    instances: &[Placed],
    me: PeerId,
    declared: &BTreeMap<PeerId, Instant>,
    step: Duration,
    now: Instant,
) -> bool {
    let Some(&owner_at) = declared.get(&owner) else {
        return false;
    };
    let dead: BTreeSet<PeerId> = declared.keys().copied().collect();
    let lost = lost(instances, &dead);
    let Some(host_at) = lost.iter().filter_map(|p| declared.get(&p.peer)).max() else {
        return false;
    };
    let Some(above) = live_above(holders, me, &dead) else {
        return false;
    };
    let since = owner_at.max(*host_at);
    let wait = step.saturating_mul(u32::try_from(above).unwrap_or(u32::MAX));
    now.saturating_duration_since(since) >= wait
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::wire::Generation;

    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    fn on(task: &str, host: PeerId) -> Placed {
        Placed {
            task: task.into(),
            replica: 0,
            host: format!("n{host}"),
            peer: host,
            addrs: Vec::new(),
            generation: Generation(0),
        }
    }

    const STEP: Duration = Duration::from_secs(3);

    #[test]
    fn the_first_live_holder_goes_first_and_the_next_one_step_later() {
        let (owner, host, h1, h2, h3) = (peer(1), peer(2), peer(3), peer(4), peer(5));
        let holders = [h1, h2, h3];
        let instances = [on("front", owner), on("back", host)];
        let t0 = Instant::now();
        let declared: BTreeMap<PeerId, Instant> = [(owner, t0), (host, t0)].into();
        let turn = |me, at| my_turn(owner, &holders, &instances, me, &declared, STEP, at);
        // Every holder reads the same: h1 at once, h2 a step later, h3 two.
        assert!(turn(h1, t0));
        assert!(!turn(h2, t0) && !turn(h3, t0));
        assert!(turn(h2, t0 + STEP) && !turn(h3, t0 + STEP));
        assert!(turn(h3, t0 + STEP * 2));
        // A stranger never acts.
        assert!(!turn(peer(9), t0 + STEP * 100));
    }

    #[test]
    fn a_dead_holder_above_is_skipped() {
        let (owner, host, h1, h2) = (peer(1), peer(2), peer(3), peer(4));
        let t0 = Instant::now();
        let declared: BTreeMap<PeerId, Instant> = [(owner, t0), (host, t0), (h1, t0)].into();
        let instances = [on("back", host)];
        assert!(my_turn(
            owner,
            &[h1, h2],
            &instances,
            h2,
            &declared,
            STEP,
            t0
        ));
        assert_eq!(live_above(&[h1, h2], h2, &BTreeSet::new()), Some(1));
        assert_eq!(live_above(&[h1, h2], h2, &[h1].into()), Some(0));
        assert_eq!(live_above(&[h1, h2], peer(9), &BTreeSet::new()), None);
    }

    #[test]
    fn nothing_is_done_while_the_owner_lives_or_no_host_is_dead() {
        let (owner, host, other, h1) = (peer(1), peer(2), peer(6), peer(3));
        let t0 = Instant::now();
        let later = t0 + STEP * 10;
        let instances = [on("back", host)];
        // The host dead, the owner alive: the owner heals it (super::healer).
        let only_host: BTreeMap<PeerId, Instant> = [(host, t0)].into();
        assert!(!my_turn(
            owner,
            &[h1],
            &instances,
            h1,
            &only_host,
            STEP,
            later
        ));
        // The owner dead, its hosts alive: nothing to re-place.
        let owner_and_other: BTreeMap<PeerId, Instant> = [(owner, t0), (other, t0)].into();
        assert!(!my_turn(
            owner,
            &[h1],
            &instances,
            h1,
            &owner_and_other,
            STEP,
            later
        ));
        // The wait counts from the later verdict.
        let staggered: BTreeMap<PeerId, Instant> = [(owner, t0), (host, later)].into();
        assert!(my_turn(
            owner,
            &[h1],
            &instances,
            h1,
            &staggered,
            STEP,
            later
        ));
        let h2 = peer(4);
        assert!(!my_turn(
            owner,
            &[h1, h2],
            &instances,
            h2,
            &staggered,
            STEP,
            later
        ));
        assert!(my_turn(
            owner,
            &[h1, h2],
            &instances,
            h2,
            &staggered,
            STEP,
            later + STEP
        ));
    }
}
