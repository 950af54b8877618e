//! The pre-shared key of a private overlay (libp2p `pnet`): every connection is wrapped in
//! XSalsa20 keyed by it before anything else is said, so a machine without the same key cannot
//! complete a connection, let alone join. The same key on every member is the whole setup (as
//! Serf's gossip key or K3s's join token). Keys are written in the standard swarm-key text
//! form (`/key/swarm/psk/1.0.0/`, `/base16/`, 64 hex digits), the one go-libp2p and IPFS read.

use std::fmt;
use std::str::FromStr;

use libp2p::pnet::PreSharedKey;

/// Why a text is not a network key.
#[derive(Debug, thiserror::Error)]
pub enum NetworkKeyError {
    #[error(
        "not a network key ({0}): expected the three lines `brume key gen` prints \
         (/key/swarm/psk/1.0.0/, /base16/, 64 hex digits)"
    )]
    Malformed(String),
}

/// A private overlay's pre-shared key.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct NetworkKey(PreSharedKey);

impl NetworkKey {
    /// A new random key.
    pub fn generate() -> NetworkKey {
        NetworkKey(PreSharedKey::new(rand::random()))
    }

    /// The key from its 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> NetworkKey {
        NetworkKey(PreSharedKey::new(bytes))
    }

    /// A short digest of the key that can be logged or compared without revealing it.
    pub fn fingerprint(&self) -> String {
        self.0.fingerprint().to_string()
    }

    /// The key file's text (what `brume key gen` prints): whoever reads it is a member.
    pub fn to_key_file(self) -> String {
        self.0.to_key_file()
    }

    pub(crate) fn psk(self) -> PreSharedKey {
        self.0
    }
}

impl FromStr for NetworkKey {
    type Err = NetworkKeyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        // libp2p-pnet slices the hex by byte index and panics inside a multi-byte character
        // (found by fuzz/fuzz_targets/network_key.rs): a key file is ASCII, so refuse the rest
        // before it gets there.
        if let Some(c) = s.chars().find(|c| !c.is_ascii()) {
            return Err(NetworkKeyError::Malformed(format!(
                "a key file is ASCII text; it holds {c:?}"
            )));
        }
        PreSharedKey::from_str(s.trim_start())
            .map(NetworkKey)
            .map_err(|e| NetworkKeyError::Malformed(e.to_string()))
    }
}

/// Shows the fingerprint only: a key must not end up in a log by accident.
impl fmt::Debug for NetworkKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NetworkKey({})", self.fingerprint())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_file_round_trips_and_garbage_is_refused() {
        let key = NetworkKey::from_bytes([7; 32]);
        let text = key.to_key_file();
        assert!(
            text.starts_with("/key/swarm/psk/1.0.0/\n/base16/\n"),
            "{text}"
        );
        assert_eq!(text.parse::<NetworkKey>().unwrap(), key);
        assert_ne!(NetworkKey::generate(), NetworkKey::generate());
        assert!(!format!("{key:?}").contains("0707"), "the key is not shown");
        // The last: a multi-byte character inside the hex, which made libp2p-pnet panic.
        let inside = "/key/swarm/psk/1.0.0/\n/base16/\n3be68f20ade2632e2d59df37374bd98f7ab51d899ec11e0\u{464}k64201acc1916e1\n";
        for bad in ["", "hello", "/key/swarm/psk/1.0.0/\n/base16/\n12\n", inside] {
            assert!(bad.parse::<NetworkKey>().is_err(), "{bad:?}");
        }
    }
}
