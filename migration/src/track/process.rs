//! One process's written pages, round after round: the tracker of one address space.
//!
//! Each [`ProcessTracker::round`] re-reads the mappings and, for each one the tracker follows,
//! asks `PAGEMAP_SCAN` for the pages written since the last round (re-arming them in the same
//! walk). A mapping the scan refuses as unregistered is new to the tracker (made, moved by
//! `mremap`, or replaced since the last round): it is registered, armed, and its present pages
//! are reported whole. Arming comes before the pages are listed and read, so a write racing the
//! copy is reported again next round: a page's last copy is never older than its last write
//! once a round has run with the task frozen. Shared mappings, and private ones the kernel will
//! not let us register (the task uses userfaultfd itself), are reported whole every round.
//!
//! A process that `exec`s gets a new address space our userfaultfd does not reach: its
//! registrations fail, the tracker takes a new userfaultfd and reports everything whole.

use std::collections::HashSet;
use std::fmt;

use super::maps::{self, Class};
use super::memory;
use super::region::{Region, Why};
use super::uffd::{Pagemap, ScanError, Uffd};
use super::TrackError;

/// Which mappings a tracker follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every private readable mapping (anonymous and file-backed) and every shared one.
    All,
    /// Anonymous memory only: what CRIU's lazy restore serves page by page.
    Anonymous,
}

/// One round's answer for one process.
#[derive(Clone, Debug, Default)]
pub struct Round {
    pub regions: Vec<Region>,
    /// Bytes in the mappings followed (their whole length, present or not).
    pub mapped: u64,
}

impl Round {
    pub fn pages(&self, why: Why) -> u64 {
        self.regions
            .iter()
            .filter(|r| r.why == why)
            .map(Region::pages)
            .sum()
    }
}

/// The tracker of one process's address space.
pub struct ProcessTracker {
    pid: i32,
    scope: Scope,
    uffd: Uffd,
    pagemap: Pagemap,
    /// Mappings (by start) whose registration the kernel refused; reported whole each round.
    refused: HashSet<u64>,
    /// Times a new userfaultfd was taken after the old one lost the address space.
    pub reattached: u32,
}

impl fmt::Debug for ProcessTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProcessTracker")
            .field("pid", &self.pid)
            .field("scope", &self.scope)
            .finish()
    }
}

impl ProcessTracker {
    /// Starts tracking process `pid`; its first [`round`](Self::round) reports all its pages.
    pub fn attach(pid: i32, scope: Scope) -> Result<Self, TrackError> {
        Ok(ProcessTracker {
            pid,
            scope,
            uffd: Uffd::take(pid)?,
            pagemap: Pagemap::open(pid)?,
            refused: HashSet::new(),
            reattached: 0,
        })
    }

    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pages to copy now (see the module comment).
    pub fn round(&mut self) -> Result<Round, TrackError> {
        match self.round_once() {
            Err(TrackError::AddressSpaceGone) => {
                // exec replaced the address space: a new userfaultfd, and everything is new.
                self.uffd = Uffd::take(self.pid)?;
                self.pagemap = Pagemap::open(self.pid)?;
                self.refused.clear();
                self.reattached += 1;
                self.round_once()
            }
            other => other,
        }
    }

    fn round_once(&mut self) -> Result<Round, TrackError> {
        let mut round = Round::default();
        let mut runs = Vec::new();
        for m in maps::read(self.pid)? {
            let class = m.class();
            if class == Class::Skipped || (self.scope == Scope::Anonymous && !m.anonymous()) {
                continue;
            }
            round.mapped += m.bytes();
            let mut why = Why::Written;
            runs.clear();
            if class == Class::Shared || self.refused.contains(&m.start) {
                why = Why::Untracked;
            } else {
                match self.pagemap.take_written(m.start, m.end, &mut runs) {
                    Ok(()) => {}
                    Err(ScanError::Unregistered) => {
                        runs.clear();
                        why = Why::New;
                        if let Err(e) = self.uffd.register(m.start, m.end) {
                            match e.raw_os_error() {
                                // The mm our userfaultfd belongs to is gone (exec).
                                Some(libc::ESRCH) | Some(libc::ENOENT) => {
                                    return Err(TrackError::AddressSpaceGone)
                                }
                                _ => {
                                    tracing::info!(
                                        pid = self.pid,
                                        start = m.start,
                                        path = %m.path,
                                        "mapping not trackable ({e}): copied whole every round"
                                    );
                                    self.refused.insert(m.start);
                                    why = Why::Untracked;
                                }
                            }
                        }
                        if why == Why::New {
                            self.uffd.arm(m.start, m.end).map_err(|e| {
                                TrackError::Process(self.pid, "arming a new mapping", e)
                            })?;
                        }
                    }
                    Err(ScanError::Io(e)) => {
                        return Err(TrackError::Process(self.pid, "PAGEMAP_SCAN", e))
                    }
                }
            }
            if why != Why::Written {
                // Whole: the present pages, listed after arming (see the module comment).
                match self.pagemap.present(m.start, m.end, &mut runs) {
                    Ok(()) => {}
                    // The mapping went away meanwhile; nothing to copy.
                    Err(ScanError::Unregistered) => {}
                    Err(ScanError::Io(e)) => {
                        return Err(TrackError::Process(self.pid, "PAGEMAP_SCAN", e))
                    }
                }
            }
            round
                .regions
                .extend(runs.iter().map(|&(start, end)| Region { start, end, why }));
        }
        Ok(round)
    }

    /// Reads the pages of `regions` now. Returns the runs actually read (a region unmapped
    /// since it was listed is left out: its pages no longer exist) and their bytes, back to
    /// back.
    pub fn read(&self, regions: &[Region]) -> Result<(Vec<Region>, Vec<u8>), TrackError> {
        memory::read_regions(self.pid, regions)
            .map_err(|e| TrackError::Process(self.pid, "process_vm_readv", e))
    }
}
