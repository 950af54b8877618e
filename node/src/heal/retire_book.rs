//! The stale copies ([`Retirements`]) kept on disk, so that an initiator that restarts still
//! asks the old hosts to stop them.
//!
//! Without it a restart forgets them: a host that was frozen or cut off while its instance was
//! placed elsewhere, and comes back after the initiator restarted, runs its old copy beside the
//! new one for ever (nobody else knows it is stale). The book is written whole, atomically
//! (`<data_dir>/retiring.json`), every time it changes; it is small (one entry per instance
//! re-placed and not yet confirmed stopped). A copy is recorded just after the ledger takes
//! its new host: a crash between the two writes loses that one record (recording it first
//! would let a failed re-placement retire the only copy). An unreadable file is set aside as
//! `retiring.json.corrupt` with a warning, never deleted, and the node starts with an empty
//! book.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use brume_overlay::PeerId;
use serde::{Deserialize, Serialize};
use tracing::warn;

use super::retire::{Answer, Retirements, Stale};
use crate::deploy::ledger::{write_atomically, Entry, Placed};

/// The file, in the data dir.
pub const FILE: &str = "retiring.json";
/// The book of the copies a holder of service records left behind when it re-placed
/// instances for a dead owner (it asks their old hosts with the owner's delegation).
pub const HELD_FILE: &str = "held-retiring.json";
const VERSION: u32 = 1;

#[derive(Serialize, Deserialize)]
struct OnDisk {
    version: u32,
    stale: Vec<Stale>,
}

/// [`Retirements`] shared by the healer's loop and its recoveries, saved after every change.
pub struct RetireBook {
    path: PathBuf,
    inner: Mutex<Retirements>,
}

impl RetireBook {
    /// The book of `data_dir`: what it held at the last save, or empty (see the module doc).
    pub fn open(data_dir: &Path) -> RetireBook {
        Self::open_file(data_dir, FILE)
    }

    /// The book kept in `data_dir/file` ([`FILE`] or [`HELD_FILE`]).
    pub fn open_file(data_dir: &Path, file: &str) -> RetireBook {
        let path = data_dir.join(file);
        let inner = Mutex::new(read(&path));
        RetireBook { path, inner }
    }

    /// Remembers a copy left behind by a re-placement, and saves.
    pub fn record(&self, stale: Stale) {
        let mut r = self.lock();
        let before = r.len();
        r.record(stale);
        if r.len() != before {
            self.save(&r);
        }
    }

    /// What to ask each old host now (see [`Retirements::due`]); saves when the ledger made
    /// some copies not stale any more.
    pub fn due(&self, ledger: &BTreeMap<String, Entry>) -> Vec<(PeerId, Vec<Stale>)> {
        self.due_with(|service| {
            ledger
                .get(service)
                .map(|e| (e.epoch, e.instances.as_slice()))
        })
    }

    /// [`Retirements::due_with`], then a save when some copies were dropped.
    pub fn due_with<'a>(
        &self,
        placed: impl Fn(&str) -> Option<(u64, &'a [Placed])>,
    ) -> Vec<(PeerId, Vec<Stale>)> {
        let mut r = self.lock();
        let before = r.len();
        let due = r.due_with(placed);
        if r.len() != before {
            self.save(&r);
        }
        due
    }

    /// The old hosts' answers (see [`Retirements::answered`]), then one save.
    pub fn answered(&self, answers: &[(Stale, Answer)]) {
        let mut r = self.lock();
        let before = r.len();
        for (s, a) in answers {
            r.answered(s, *a);
        }
        if r.len() != before {
            self.save(&r);
        }
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Retirements> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A failed save is logged, not fatal: the book in memory still works until a restart.
    fn save(&self, r: &Retirements) {
        let disk = OnDisk {
            version: VERSION,
            stale: r.all(),
        };
        let result = serde_json::to_vec_pretty(&disk)
            .map_err(anyhow::Error::from)
            .and_then(|bytes| write_atomically(&self.path, &bytes));
        if let Err(e) = result {
            warn!(path = %self.path.display(), "cannot save the stale copies to retire: {e:#}");
        }
    }
}

fn read(path: &Path) -> Retirements {
    let mut r = Retirements::new();
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return r,
        Err(e) => {
            warn!(path = %path.display(), "cannot read the stale copies to retire ({e}); starting without them");
            return r;
        }
    };
    match serde_json::from_slice::<OnDisk>(&bytes) {
        Ok(disk) if disk.version == VERSION => {
            for s in disk.stale {
                r.record(s);
            }
        }
        parsed => {
            let why = match parsed {
                Ok(d) => format!("version {} (this node reads {VERSION})", d.version),
                Err(e) => e.to_string(),
            };
            let aside = path.with_extension("json.corrupt");
            let kept = std::fs::rename(path, &aside).is_ok();
            warn!(path = %path.display(), kept_as = %aside.display(), kept,
                "the stale copies to retire cannot be read ({why}); starting without them");
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::wire::Generation;
    use brume_tunnel::InstanceId;

    fn stale(seed: u8) -> Stale {
        Stale {
            instance: InstanceId::new("svc", "back", u32::from(seed)),
            epoch: 3,
            generation: Generation(1),
            peer: brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
                .unwrap()
                .public()
                .to_peer_id(),
            host: format!("h{seed}"),
            addrs: vec!["/ip4/127.0.0.1/tcp/4001".parse().unwrap()],
        }
    }

    #[test]
    fn a_reopened_book_holds_what_was_recorded_and_not_what_was_answered() {
        let dir = tempfile::tempdir().unwrap();
        let book = RetireBook::open(dir.path());
        assert!(book.is_empty());
        book.record(stale(1));
        book.record(stale(2));
        book.answered(&[(stale(1), Answer::Done)]);
        drop(book);
        let again = RetireBook::open(dir.path());
        assert_eq!(again.lock().all(), vec![stale(2)]);
        // Silence changes nothing, on disk either.
        again.answered(&[(stale(2), Answer::Silent)]);
        assert_eq!(RetireBook::open(dir.path()).len(), 1);
    }

    #[test]
    fn an_unreadable_book_is_set_aside_and_the_node_starts_empty() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), b"{ not json").unwrap();
        let book = RetireBook::open(dir.path());
        assert!(book.is_empty());
        let aside = dir.path().join("retiring.json.corrupt");
        assert_eq!(std::fs::read(&aside).unwrap(), b"{ not json");
        // A later save writes a fresh file and leaves the corrupt one alone.
        book.record(stale(3));
        assert_eq!(RetireBook::open(dir.path()).len(), 1);
        assert!(aside.is_file());
    }

    #[test]
    fn a_book_of_another_version_is_not_guessed_at() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(FILE), br#"{"version": 99, "stale": []}"#).unwrap();
        assert!(RetireBook::open(dir.path()).is_empty());
        assert!(dir.path().join("retiring.json.corrupt").is_file());
    }
}
