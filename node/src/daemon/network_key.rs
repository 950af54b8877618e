//! The private overlay's key on disk: `brume key gen` prints a new one, `brume node
//! --network-key FILE` reads it. The file is a secret (whoever reads it can join), so a file
//! other users can read is reported, though still used: the operator decides where it lives.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::Context;
use brume_overlay::NetworkKey;

/// A new network key in its file form, for `brume key gen > net.key`.
pub fn generate() -> String {
    NetworkKey::generate().to_key_file()
}

/// The key in `path`.
pub fn load(path: &Path) -> anyhow::Result<NetworkKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the network key {}", path.display()))?;
    let key: NetworkKey = text
        .parse()
        .with_context(|| format!("in {}", path.display()))?;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                "the network key {} can be read by other users: chmod 600 it",
                path.display()
            );
        }
    }
    tracing::debug!(fingerprint = %key.fingerprint(), "network key read");
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_generated_key_loads_and_a_bad_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("net.key");
        let text = generate();
        std::fs::write(&path, &text).unwrap();
        assert_eq!(load(&path).unwrap(), text.parse().unwrap());
        assert_ne!(generate(), text, "every key is new");
        std::fs::write(&path, "not a key\n").unwrap();
        let err = format!("{:#}", load(&path).unwrap_err());
        assert!(
            err.contains("net.key") && err.contains("brume key gen"),
            "{err}"
        );
        let err = format!("{:#}", load(&dir.path().join("absent")).unwrap_err());
        assert!(err.contains("cannot read the network key"), "{err}");
    }
}
