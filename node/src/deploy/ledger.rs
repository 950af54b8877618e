//! The services this node deployed as initiator, kept on disk so `brume ps`, `brume logs` and
//! `brume stop` work after the daemon restarts.
//!
//! One JSON file, `deployments.json` in the data directory, rewritten whole through a temporary
//! file and a rename: a crash mid-write leaves the old file, never half of a new one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use brume_overlay::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

/// Where one instance of a deployed service runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placed {
    pub task: String,
    pub replica: u32,
    /// The host's node id as maps print it.
    pub host: String,
    pub peer: String,
    pub addrs: Vec<String>,
}

impl Placed {
    /// The host's peer id and the addresses to dial it by (unparsable ones skipped).
    pub fn target(&self) -> anyhow::Result<(PeerId, Vec<Multiaddr>)> {
        let peer: PeerId = self
            .peer
            .parse()
            .map_err(|_| anyhow::anyhow!("the ledger holds a bad peer id {:?}", self.peer))?;
        Ok((
            peer,
            self.addrs.iter().filter_map(|a| a.parse().ok()).collect(),
        ))
    }
}

/// One deployed service.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub epoch: u64,
    pub manifest: PathBuf,
    pub instances: Vec<Placed>,
}

/// The deployments of this node.
#[derive(Debug)]
pub struct Ledger {
    path: PathBuf,
    entries: Mutex<BTreeMap<String, Entry>>,
}

impl Ledger {
    /// Opens the ledger in `data_dir`; a missing file is an empty ledger, an unreadable one an
    /// error (it is not overwritten).
    pub fn open(data_dir: &Path) -> anyhow::Result<Ledger> {
        let path = data_dir.join("deployments.json");
        let entries = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                anyhow::anyhow!(
                    "{} is not a deployment ledger ({e}); move it away to start afresh",
                    path.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => anyhow::bail!("cannot read {}: {e}", path.display()),
        };
        Ok(Ledger {
            path,
            entries: Mutex::new(entries),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn get(&self, service: &str) -> Option<Entry> {
        self.lock().get(service).cloned()
    }

    pub fn all(&self) -> BTreeMap<String, Entry> {
        self.lock().clone()
    }

    pub fn put(&self, service: &str, entry: Entry) -> anyhow::Result<()> {
        let mut entries = self.lock();
        entries.insert(service.to_string(), entry);
        self.save(&entries)
    }

    pub fn remove(&self, service: &str) -> anyhow::Result<Option<Entry>> {
        let mut entries = self.lock();
        let old = entries.remove(service);
        self.save(&entries)?;
        Ok(old)
    }

    /// The instances `replica` of `task` in the services deployed from here (in `service`
    /// only, when given), as (service, where it runs); more than one when services share a
    /// task name.
    pub fn locate(&self, service: Option<&str>, task: &str, replica: u32) -> Vec<(String, Placed)> {
        self.lock()
            .iter()
            .filter(|(s, _)| service.is_none_or(|want| want == s.as_str()))
            .flat_map(|(s, e)| e.instances.iter().map(move |p| (s, p)))
            .filter(|(_, p)| p.task == task && p.replica == replica)
            .map(|(s, p)| (s.clone(), p.clone()))
            .collect()
    }

    /// Records that an instance of `service` moved to another host; `false` when the service
    /// or the instance is not in this ledger (it was deployed from another node).
    pub fn relocate(
        &self,
        service: &str,
        task: &str,
        replica: u32,
        to: Placed,
    ) -> anyhow::Result<bool> {
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(service) else {
            return Ok(false);
        };
        let Some(placed) = entry
            .instances
            .iter_mut()
            .find(|p| p.task == task && p.replica == replica)
        else {
            return Ok(false);
        };
        *placed = Placed {
            task: task.to_string(),
            replica,
            ..to
        };
        self.save(&entries)?;
        Ok(true)
    }

    fn save(&self, entries: &BTreeMap<String, Entry>) -> anyhow::Result<()> {
        let dir = self.path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let tmp = tempfile::NamedTempFile::new_in(dir)?;
        serde_json::to_writer_pretty(tmp.as_file(), entries)?;
        tmp.as_file().sync_all()?;
        tmp.persist(&self.path)
            .map_err(|e| anyhow::anyhow!("cannot write {}: {e}", self.path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_reopen_and_refuses_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let l = Ledger::open(dir.path()).unwrap();
        let entry = Entry {
            epoch: 7,
            manifest: "/x/service.toml".into(),
            instances: vec![Placed {
                task: "a".into(),
                replica: 0,
                host: "n1".into(),
                peer: "p".into(),
                addrs: vec![],
            }],
        };
        l.put("svc", entry.clone()).unwrap();
        let again = Ledger::open(dir.path()).unwrap();
        assert_eq!(again.get("svc"), Some(entry));
        assert!(again.remove("svc").unwrap().is_some());
        assert!(Ledger::open(dir.path()).unwrap().all().is_empty());
        std::fs::write(dir.path().join("deployments.json"), "{oops").unwrap();
        assert!(Ledger::open(dir.path()).is_err());
    }
}
