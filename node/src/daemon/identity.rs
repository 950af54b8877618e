//! The node's data directory and identity key, kept private: the directory is created owner-only
//! (0700), and an existing key that group or others may read is refused rather than used, since
//! whoever reads it can be this node. The key is 32 secret bytes from which the node's ed25519
//! identity (its peer id) is derived, so the peer id survives restarts.

use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;

use anyhow::Context;

/// The key file's name in the data directory.
pub const KEY_FILE: &str = "identity.key";

/// Creates `data_dir` owner-only if it is missing; an existing one that group or others may
/// enter is made owner-only (the node's data is nobody else's business).
pub fn ensure_private_dir(data_dir: &Path) -> anyhow::Result<()> {
    match std::fs::metadata(data_dir) {
        Ok(meta) => {
            let mode = meta.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                tracing::warn!(
                    dir = %data_dir.display(),
                    mode = format!("{mode:o}"),
                    "the data directory was open to other users; making it owner-only (0700)"
                );
                std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
                    .with_context(|| {
                        format!(
                            "cannot make data directory {} owner-only",
                            data_dir.display()
                        )
                    })?;
            }
            Ok(())
        }
        Err(_) => std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(data_dir)
            .with_context(|| format!("cannot create data directory {}", data_dir.display())),
    }
}

/// The node's identity seed: read from `<data_dir>/identity.key`, or made and written there
/// (0600) on first start. A key file that group or others may read is refused.
pub fn seed(data_dir: &Path) -> anyhow::Result<[u8; 32]> {
    use std::io::Write;
    ensure_private_dir(data_dir)?;
    let path = data_dir.join(KEY_FILE);
    if let Ok(meta) = std::fs::metadata(&path) {
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            anyhow::bail!(
                "{} is readable by other users (mode {mode:o}): anyone who reads it can act as \
                 this node. Make it private with `chmod 600 {}` (and consider a new identity: \
                 move it away to get one), then start the node again",
                path.display(),
                path.display()
            );
        }
        let bytes =
            std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
        return bytes.as_slice().try_into().map_err(|_| {
            anyhow::anyhow!(
                "{} is not a 32-byte key: move it away to start with a new identity",
                path.display()
            )
        });
    }
    let seed: [u8; 32] = rand::random();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(&seed)?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn a_new_data_dir_and_key_are_owner_only_and_the_key_is_kept() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("a/data");
        let first = seed(&dir).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&dir.join(KEY_FILE)), 0o600);
        assert_eq!(
            seed(&dir).unwrap(),
            first,
            "the identity survives a restart"
        );
        // An existing directory open to others is closed.
        let open = root.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        seed(&open).unwrap();
        assert_eq!(mode(&open), 0o700);
    }

    #[test]
    fn a_key_others_can_read_is_refused_with_the_fix() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("data");
        let first = seed(&dir).unwrap();
        let key = dir.join(KEY_FILE);
        for loose in [0o644, 0o640, 0o604] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(loose)).unwrap();
            let err = format!("{:#}", seed(&dir).unwrap_err());
            assert!(err.contains("readable by other users"), "{err}");
            assert!(
                err.contains(&format!("chmod 600 {}", key.display())),
                "{err}"
            );
        }
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(seed(&dir).unwrap(), first);
    }
}
