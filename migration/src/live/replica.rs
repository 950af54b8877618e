//! The target's copy of a task's memory, kept from the tracked pre-copy rounds
//! ([`crate::track`]): every page the source read, by (PID in the task's namespace, address),
//! with the content of its last copy.
//!
//! Why: the final step is CRIU's lazy restore, whose daemon asks for every page of the dump;
//! the page proxy ([`super::pageproxy`]) answers those it finds here at once and asks the
//! source only for the rest, so the freeze carries the pages written since the last round, not
//! the task's memory. Valid because the source sends a last round read while the task is
//! frozen (after CRIU's dump): a page here is the page the dump holds.

use std::collections::{BTreeMap, HashMap};

use super::LiveError;

pub use crate::PAGE;

/// Pages by (namespace PID, address).
#[derive(Debug, Default)]
pub struct Replica {
    pages: HashMap<(u64, u64), Box<[u8]>>,
}

impl Replica {
    /// Stores the pages of `runs` ((start, pages) of process `pid`), whose bytes are `data`
    /// back to back; refuses a run off the page grid or data of the wrong length.
    pub fn insert(&mut self, pid: u64, runs: &[(u64, u32)], data: &[u8]) -> Result<(), LiveError> {
        let want: u64 = runs.iter().map(|r| u64::from(r.1) * PAGE).sum();
        if want != data.len() as u64 {
            return Err(LiveError::Worker(format!(
                "tracked pages: {} bytes for runs of {want}",
                data.len()
            )));
        }
        let mut at = 0usize;
        for &(start, pages) in runs {
            if start % PAGE != 0 {
                return Err(LiveError::Worker(format!(
                    "tracked pages: a run at {start:#x}, off the page grid"
                )));
            }
            for i in 0..u64::from(pages) {
                let page = data[at..at + PAGE as usize].to_vec().into_boxed_slice();
                self.pages.insert((pid, start + i * PAGE), page);
                at += PAGE as usize;
            }
        }
        Ok(())
    }

    /// How many pages are held.
    pub fn len(&self) -> usize {
        self.pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    /// The pages held from `vaddr` of process `pid` on, at most `max`, consecutive: their
    /// count and bytes (none when the first is not held).
    pub fn run(&self, pid: u64, vaddr: u64, max: u64) -> Option<(u64, Vec<u8>)> {
        let mut out = Vec::new();
        let mut n = 0;
        while n < max {
            let Some(page) = self.pages.get(&(pid, vaddr + n * PAGE)) else {
                break;
            };
            out.extend_from_slice(page);
            n += 1;
        }
        (n > 0).then_some((n, out))
    }

    /// Forgets the pages of [vaddr, vaddr + n pages) of `pid` (the daemon has them now, or
    /// the task wrote them since). The work is bounded by the pages held, whatever `n` says.
    pub fn forget(&mut self, pid: u64, vaddr: u64, n: u64) {
        if n > self.pages.len() as u64 {
            let end = vaddr.saturating_add(n.saturating_mul(PAGE));
            self.pages
                .retain(|&(p, a), _| p != pid || a < vaddr || a >= end);
            return;
        }
        for i in 0..n {
            self.pages.remove(&(pid, vaddr + i * PAGE));
        }
    }

    /// Every run of held pages, per process: (pid, start, end), sorted.
    pub fn ranges(&self) -> Vec<(u64, u64, u64)> {
        let mut by_pid: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
        for &(pid, addr) in self.pages.keys() {
            by_pid.entry(pid).or_default().push(addr);
        }
        let mut out = Vec::new();
        for (pid, mut addrs) in by_pid {
            addrs.sort_unstable();
            for a in addrs {
                match out.last_mut() {
                    Some((p, _, end)) if *p == pid && *end == a => *end += PAGE,
                    _ => out.push((pid, a, a + PAGE)),
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(b: u8) -> Vec<u8> {
        vec![b; PAGE as usize]
    }

    #[test]
    fn runs_are_cut_where_pages_are_missing_and_later_copies_win() {
        let mut r = Replica::default();
        let data = [page(1), page(2), page(3)].concat();
        r.insert(1, &[(0x1000, 2), (0x5000, 1)], &data).unwrap();
        r.insert(1, &[(0x2000, 1)], &page(9)).unwrap();
        let (n, bytes) = r.run(1, 0x1000, 8).unwrap();
        assert_eq!(n, 2);
        assert_eq!(bytes, [page(1), page(9)].concat());
        assert_eq!(r.run(1, 0x1000, 1).unwrap().0, 1);
        assert!(r.run(1, 0x3000, 8).is_none());
        assert!(r.run(2, 0x1000, 8).is_none());
        assert_eq!(r.ranges(), vec![(1, 0x1000, 0x3000), (1, 0x5000, 0x6000)]);
        r.forget(1, 0x1000, 1);
        assert_eq!(r.ranges(), vec![(1, 0x2000, 0x3000), (1, 0x5000, 0x6000)]);
    }

    #[test]
    fn a_huge_stale_run_forgets_only_what_it_covers() {
        let mut r = Replica::default();
        let data = [page(1), page(2), page(3)].concat();
        r.insert(1, &[(0x1000, 2), (0x9000, 1)], &data).unwrap();
        r.insert(2, &[(0x1000, 1)], &page(4)).unwrap();
        // More pages than the replica holds: the other path, same meaning.
        r.forget(1, 0x2000, 8);
        assert_eq!(r.ranges(), vec![(1, 0x1000, 0x2000), (2, 0x1000, 0x2000)]);
        // A run of 2^32 - 1 pages from address 0 costs the pages held, not the run.
        r.forget(1, 0, u64::from(u32::MAX));
        assert_eq!(r.ranges(), vec![(2, 0x1000, 0x2000)]);
    }

    #[test]
    fn refuses_bad_runs() {
        let mut r = Replica::default();
        assert!(r.insert(1, &[(0x1000, 2)], &page(1)).is_err());
        assert!(r.insert(1, &[(0x1001, 1)], &page(1)).is_err());
        assert!(r.is_empty());
    }
}
