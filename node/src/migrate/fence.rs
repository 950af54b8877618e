//! The target's side of "exactly one copy": the live moves coming into this node, by instance
//! and generation, and the fences the sources sent. Pure: the mover ([`super::live`]) consults
//! it before and after every restore and when a fence arrives, and does the killing.
//!
//! A source whose move failed after its final dump fences the target before it restores the
//! task itself: "stop `instance` if it runs here at generation G, and never run G". The answer
//! must be true when it is given, so a fence that finds a restore under way waits for it to
//! end; a restore that ends after a fence kills what it restored; a move of a fenced
//! generation is refused from then on. Fences are idempotent: the same one again answers the
//! same. One entry per instance is kept (the newest generation heard of), so the table is as
//! large as the number of instances that ever moved here.

use std::collections::HashMap;

use brume_tunnel::InstanceId;

use crate::deploy::wire::Generation;

/// Where an incoming copy of one generation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    /// Its images are arriving; nothing runs.
    Receiving,
    /// `criu restore` runs; `fenced` if a fence came meanwhile.
    Restoring { fenced: bool },
    /// It runs as `pid`, not yet the instance here (waiting for the source's `Released`).
    Restored(u32),
    /// Fenced: nothing of this generation runs here, nor ever will.
    Fenced,
}

/// What a fence comes to now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceStep {
    /// Nothing of that generation runs here or will; `kill` names a restored copy to kill
    /// first.
    Settled { kill: Option<u32> },
    /// A restore of that generation is under way: ask again when it ended.
    Wait,
}

/// The incoming live moves and fences of one node.
#[derive(Debug, Default)]
pub struct Fences {
    by_instance: HashMap<InstanceId, (Generation, Copy)>,
}

impl Fences {
    /// A live move of `id` at `g` begins; refused if `g` was fenced (or a newer one is known).
    pub fn arrive(&mut self, id: &InstanceId, g: Generation) -> Result<(), String> {
        match self.by_instance.get(id) {
            Some(&(known, Copy::Fenced)) if known >= g => Err(format!(
                "generation {g} of {id} was fenced here (a failed move's copy must never run)"
            )),
            Some(&(known, _)) if known > g => Err(format!(
                "a newer generation ({known}) of {id} already came here"
            )),
            Some(&(known, copy)) if known == g && copy != Copy::Receiving => Err(format!(
                "generation {g} of {id} is already being received here"
            )),
            _ => {
                self.by_instance.insert(id.clone(), (g, Copy::Receiving));
                Ok(())
            }
        }
    }

    /// Whether the restore of `id` at `g` may start (it then counts as under way).
    pub fn may_restore(&mut self, id: &InstanceId, g: Generation) -> bool {
        match self.by_instance.get_mut(id) {
            Some((known, copy)) if *known == g && *copy == Copy::Receiving => {
                *copy = Copy::Restoring { fenced: false };
                true
            }
            _ => false,
        }
    }

    /// The restore of `id` at `g` ended with `pid` running (or nothing, `None`). Returns
    /// whether the copy may stay: `false` when a fence came meanwhile (the caller kills `pid`).
    pub fn restored(&mut self, id: &InstanceId, g: Generation, pid: Option<u32>) -> bool {
        let Some((known, copy)) = self.by_instance.get_mut(id) else {
            return false;
        };
        if *known != g {
            return false;
        }
        match (*copy, pid) {
            (Copy::Restoring { fenced: false }, Some(pid)) => {
                *copy = Copy::Restored(pid);
                true
            }
            (Copy::Restoring { fenced: false }, None) => {
                self.by_instance.remove(id);
                false
            }
            _ => {
                *copy = Copy::Fenced;
                false
            }
        }
    }

    /// The restored copy of `id` at `g` becomes the instance here (the source released it).
    /// `false` when it was fenced meanwhile: it must not be adopted.
    pub fn adopt(&mut self, id: &InstanceId, g: Generation) -> bool {
        match self.by_instance.get(id) {
            Some(&(known, Copy::Restored(_))) if known == g => {
                self.by_instance.remove(id);
                true
            }
            _ => false,
        }
    }

    /// The incoming move of `id` at `g` ended with no copy here (failed, or killed).
    pub fn gone(&mut self, id: &InstanceId, g: Generation) {
        if matches!(self.by_instance.get(id), Some(&(known, copy)) if known == g && copy != Copy::Fenced)
        {
            self.by_instance.remove(id);
        }
    }

    /// Whether `id` at `g` was fenced.
    pub fn is_fenced(&self, id: &InstanceId, g: Generation) -> bool {
        matches!(self.by_instance.get(id), Some(&(known, Copy::Fenced)) if known >= g)
            || matches!(
                self.by_instance.get(id),
                Some(&(known, Copy::Restoring { fenced: true })) if known == g
            )
    }

    /// A fence of `id` at `g`.
    pub fn fence(&mut self, id: &InstanceId, g: Generation) -> FenceStep {
        let entry = self.by_instance.get(id).copied();
        match entry {
            // A newer copy is not concerned.
            Some((known, _)) if known > g => FenceStep::Settled { kill: None },
            Some((known, Copy::Restoring { .. })) if known == g => {
                self.by_instance
                    .insert(id.clone(), (g, Copy::Restoring { fenced: true }));
                FenceStep::Wait
            }
            Some((known, Copy::Restored(pid))) if known == g => {
                self.by_instance.insert(id.clone(), (g, Copy::Fenced));
                FenceStep::Settled { kill: Some(pid) }
            }
            _ => {
                self.by_instance.insert(id.clone(), (g, Copy::Fenced));
                FenceStep::Settled { kill: None }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> InstanceId {
        InstanceId::new("svc", "mid", 0)
    }

    const G: Generation = Generation(3);

    #[test]
    fn a_move_that_is_never_fenced_is_adopted() {
        let mut f = Fences::default();
        f.arrive(&id(), G).expect("arrives");
        assert!(f.may_restore(&id(), G));
        assert!(f.restored(&id(), G, Some(42)));
        assert!(!f.is_fenced(&id(), G));
        assert!(f.adopt(&id(), G));
        // Adopted: a later move of the next generation may come.
        f.arrive(&id(), G.next()).expect("the next move");
    }

    #[test]
    fn a_fence_before_the_restore_stops_it_from_starting_and_answers_at_once() {
        let mut f = Fences::default();
        f.arrive(&id(), G).expect("arrives");
        assert_eq!(f.fence(&id(), G), FenceStep::Settled { kill: None });
        assert!(
            !f.may_restore(&id(), G),
            "a fenced generation is never restored"
        );
        assert!(f.is_fenced(&id(), G));
        assert!(f.arrive(&id(), G).is_err(), "nor received again");
    }

    #[test]
    fn a_fence_during_the_restore_waits_and_the_restored_copy_is_killed() {
        let mut f = Fences::default();
        f.arrive(&id(), G).expect("arrives");
        assert!(f.may_restore(&id(), G));
        assert_eq!(f.fence(&id(), G), FenceStep::Wait);
        assert!(f.is_fenced(&id(), G), "the receiver learns it");
        assert!(
            !f.restored(&id(), G, Some(42)),
            "the restorer kills what it restored"
        );
        assert_eq!(f.fence(&id(), G), FenceStep::Settled { kill: None });
        assert!(!f.adopt(&id(), G));
    }

    #[test]
    fn a_fence_after_the_restore_kills_the_copy_and_it_is_never_adopted() {
        let mut f = Fences::default();
        f.arrive(&id(), G).expect("arrives");
        assert!(f.may_restore(&id(), G));
        assert!(f.restored(&id(), G, Some(42)));
        assert_eq!(f.fence(&id(), G), FenceStep::Settled { kill: Some(42) });
        assert!(!f.adopt(&id(), G), "a Released that comes late is refused");
        // Idempotent: asked again, nothing more to kill.
        assert_eq!(f.fence(&id(), G), FenceStep::Settled { kill: None });
    }

    #[test]
    fn a_fence_of_a_move_never_seen_refuses_it_when_it_comes_late() {
        let mut f = Fences::default();
        assert_eq!(f.fence(&id(), G), FenceStep::Settled { kill: None });
        assert!(f.arrive(&id(), G).is_err());
        assert!(
            f.arrive(&id(), Generation(2)).is_err(),
            "older generations neither"
        );
        f.arrive(&id(), G.next())
            .expect("a newer move is another copy");
    }

    #[test]
    fn a_stale_fence_leaves_a_newer_copy_alone() {
        let mut f = Fences::default();
        f.arrive(&id(), G).expect("arrives");
        assert!(f.may_restore(&id(), G));
        assert!(f.restored(&id(), G, Some(42)));
        assert_eq!(
            f.fence(&id(), Generation(2)),
            FenceStep::Settled { kill: None }
        );
        assert!(f.adopt(&id(), G));
    }

    #[test]
    fn a_failed_receive_forgets_its_entry_but_a_fenced_one_stays_fenced() {
        let mut f = Fences::default();
        f.arrive(&id(), G).expect("arrives");
        assert!(f.may_restore(&id(), G));
        assert!(!f.restored(&id(), G, None), "nothing restored");
        f.arrive(&id(), G)
            .expect("the same move may be tried again");
        assert_eq!(f.fence(&id(), G), FenceStep::Settled { kill: None });
        f.gone(&id(), G);
        assert!(f.is_fenced(&id(), G), "the tombstone stays");
    }
}
