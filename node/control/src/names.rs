//! How a person reads a node's name, the same in every listing (`status`, `peers`, `map`, `ps`,
//! `deploy`, `migrate`, `drain`).
//!
//! A node is known by its libp2p peer id (base58, e.g. `12D3KooW…`). Every Ed25519 peer id
//! starts with the same `12D3KooW`, so the short form is the id's **last 8 characters after an
//! ellipsis**: `…Xy7Qp2Lm`. A node with a human name (the `name` setting of its config) reads
//! `name (…Xy7Qp2Lm)`. The overlay's numeric node id (`n5687827581467869587`) is an internal
//! hash and is never shown to a person; JSON output keeps full peer ids, so programs compare
//! exact identities.

use std::fmt;

use brume_overlay::neighbourhood::NodeRecord;

/// How many trailing characters of the peer id the short form keeps.
pub const SHORT_LEN: usize = 8;

/// A node as a person reads it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName {
    /// `…` and the peer id's last [`SHORT_LEN`] characters.
    pub short: String,
    /// The node's own name from its config, when it has one.
    pub human: Option<String>,
}

impl NodeName {
    /// The name of the node with peer id `peer` (a `PeerId` or its base58 text).
    pub fn of(peer: impl fmt::Display) -> Self {
        NodeName {
            short: short_id(&peer.to_string()),
            human: None,
        }
    }

    /// Adds the node's human name, if it has a non-empty one.
    pub fn named(mut self, human: Option<&str>) -> Self {
        self.human = human
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(String::from);
        self
    }

    /// The name of a node in a map. A record without a peer id (a simulated node) reads as its
    /// numeric id, the only name it has.
    pub fn of_record(r: &NodeRecord) -> Self {
        match r.peer {
            Some(peer) => NodeName::of(peer).named(r.name.as_deref()),
            None => NodeName {
                short: r.id.to_string(),
                human: None,
            },
        }
    }

    /// Whether `text` names this node the way a person would type it: its human name, its
    /// short form with or without the ellipsis, or the whole `name (…short)`.
    pub fn answers_to(&self, text: &str) -> bool {
        let text = text.trim();
        let tail = self.short.trim_start_matches('…');
        !text.is_empty()
            && (self.human.as_deref() == Some(text)
                || text == self.short
                || text == tail
                || text == self.to_string())
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width and alignment (`{:<24}`) work on the whole name.
        match &self.human {
            Some(h) => f.pad(&format!("{h} ({})", self.short)),
            None => f.pad(&self.short),
        }
    }
}

/// `…` and the last [`SHORT_LEN`] characters of a peer id; an id that short or shorter (or
/// empty: not known) is shown whole, or as `-`.
pub fn short_id(peer: &str) -> String {
    let n = peer.chars().count();
    if n == 0 {
        return "-".into();
    }
    if n <= SHORT_LEN {
        return peer.to_string();
    }
    let tail: String = peer.chars().skip(n - SHORT_LEN).collect();
    format!("…{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use brume_overlay::ids::NodeId;

    const PEER: &str = "12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN";

    #[test]
    fn short_form_and_human_name() {
        let n = NodeName::of(PEER);
        assert_eq!(n.to_string(), "…4kx6nXTN");
        assert_eq!(format!("{n:<12}|"), "…4kx6nXTN   |");
        let named = n.clone().named(Some("kitchen-pi"));
        assert_eq!(named.to_string(), "kitchen-pi (…4kx6nXTN)");
        assert_eq!(n.clone().named(Some("  ")), n);
        assert_eq!(short_id(""), "-");
        assert_eq!(short_id("abc"), "abc");
        for typed in [
            "…4kx6nXTN",
            "4kx6nXTN",
            "kitchen-pi",
            "kitchen-pi (…4kx6nXTN)",
        ] {
            assert!(named.answers_to(typed), "{typed}");
        }
        for other in ["", "4kx6nXT", "kitchen", PEER] {
            assert!(!named.answers_to(other), "{other}");
        }
    }

    #[test]
    fn records_without_peer_read_as_their_id() {
        let mut r = NodeRecord::bare(NodeId(7));
        assert_eq!(NodeName::of_record(&r).to_string(), NodeId(7).to_string());
        r.peer = Some(PEER.parse().expect("a peer id"));
        assert_eq!(NodeName::of_record(&r).to_string(), "…4kx6nXTN");
    }
}
