//! A run of pages the tracker reports and why: what a round hands to the copier
//! ([`super::memory::read_regions`]) and what the copier hands back, apart from the tracker
//! that finds them.

use super::abi::PAGE;

/// Why a run of pages is reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Why {
    /// Written since the last round.
    Written,
    /// In a mapping new to the tracker (or the first round): all its present pages.
    New,
    /// In a mapping whose writes cannot be tracked (shared, or registration refused): all its
    /// present pages, every round.
    Untracked,
}

/// A run of pages `[start, end)` to copy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    pub start: u64,
    pub end: u64,
    pub why: Why,
}

impl Region {
    pub fn pages(&self) -> u64 {
        (self.end - self.start) / PAGE
    }
}
