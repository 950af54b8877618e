//! The owner's word that named nodes may act for it on one service once it is gone: the
//! holders of the service record's replicas ([`super::record_replicas`]), in rank order
//! (nearest first), for one epoch of the service at one version of the record.
//!
//! A host or a caller obeys a `Moved` (and a holder takes a record) from a peer other than the
//! owner only when that peer shows a delegation that verifies: signed by the owner's key (the
//! key travels with it and must be the owner's), for this service, naming that peer, and not
//! older than one already seen. Specs need no delegation: they carry the owner's own signature
//! ([`crate::deploy::grant`]), which a holder forwards unchanged, as a move does.
//!
//! The signed bytes are a domain string and the CBOR of [`Signed`]: a signature made for a spec
//! never verifies here, nor one made here for a spec.

use brume_overlay::{Keypair, PeerId};
use serde::{Deserialize, Serialize};

/// What the signed bytes start with.
const DOMAIN: &[u8] = b"brume/record-delegation/1\n";

/// At most this many holders in one delegation (a peer's input: bounded).
pub const MAX_HOLDERS: usize = 8;

/// The owner's signed list of the nodes that may re-place a service's instances for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delegation {
    pub service: String,
    /// The service's epoch the record is of.
    pub epoch: u64,
    /// Increases with every record the owner pushes: an older one never replaces a newer.
    pub version: u64,
    /// The holders, nearest the owner first: the first live one takes over.
    pub holders: Vec<PeerId>,
    /// The owner's public key (protobuf-encoded, as libp2p encodes keys) and its signature.
    pub key: Vec<u8>,
    pub signature: Vec<u8>,
}

/// Why a delegation does not let a peer act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DelegationError {
    #[error("the delegation's key is not a public key")]
    BadKey,
    #[error("the delegation is signed by {signer}, not by the service's owner {owner}")]
    NotTheOwner {
        signer: Box<PeerId>,
        owner: Box<PeerId>,
    },
    #[error("the owner's signature does not match the delegation (altered on the way?)")]
    BadSignature,
    #[error("the delegation is for service {named}, not {wanted}")]
    WrongService { named: String, wanted: String },
    #[error("{peer} is not among the holders the delegation names")]
    NotAHolder { peer: PeerId },
    #[error("the delegation (epoch {epoch}, version {version}) is older than one seen before (epoch {seen_epoch}, version {seen_version})")]
    Superseded {
        epoch: u64,
        version: u64,
        seen_epoch: u64,
        seen_version: u64,
    },
    #[error("the delegation names {0} holders; at most {MAX_HOLDERS} are allowed")]
    TooManyHolders(usize),
}

/// The fields the owner vouches for, in a fixed order.
#[derive(Serialize)]
struct Signed<'a> {
    service: &'a str,
    epoch: u64,
    version: u64,
    holders: &'a [PeerId],
    owner: PeerId,
}

fn signed_bytes(d: &Delegation, owner: PeerId) -> Vec<u8> {
    let signed = Signed {
        service: &d.service,
        epoch: d.epoch,
        version: d.version,
        holders: &d.holders,
        owner,
    };
    let mut out = DOMAIN.to_vec();
    // Writing into a Vec cannot fail, and every field is plainly serialisable.
    ciborium::into_writer(&signed, &mut out).expect("a delegation encodes as CBOR");
    out
}

impl Delegation {
    /// `key`'s node delegates `service` (at `epoch`, record `version`) to `holders`, nearest
    /// first.
    pub fn sign(
        key: &Keypair,
        service: &str,
        epoch: u64,
        version: u64,
        holders: Vec<PeerId>,
    ) -> Delegation {
        let mut d = Delegation {
            service: service.to_string(),
            epoch,
            version,
            holders,
            key: key.public().encode_protobuf(),
            signature: Vec::new(),
        };
        let owner = key.public().to_peer_id();
        // ed25519 signing cannot fail; another key type that could is refused when checked.
        d.signature = key.sign(&signed_bytes(&d, owner)).unwrap_or_default();
        d
    }

    /// Who signed it, once the signature holds.
    pub fn signer(&self) -> Result<PeerId, DelegationError> {
        if self.holders.len() > MAX_HOLDERS {
            return Err(DelegationError::TooManyHolders(self.holders.len()));
        }
        let key = brume_overlay::PublicKey::try_decode_protobuf(&self.key)
            .map_err(|_| DelegationError::BadKey)?;
        let signer = key.to_peer_id();
        if !key.verify(&signed_bytes(self, signer), &self.signature) {
            return Err(DelegationError::BadSignature);
        }
        Ok(signer)
    }

    /// Where `peer` stands among the holders (0: the first to take over).
    pub fn rank_of(&self, peer: &PeerId) -> Option<usize> {
        self.holders.iter().position(|h| h == peer)
    }

    /// Whether `holder` may act for `owner` on `service` under this delegation, given the
    /// newest (epoch, version) of the service's delegations seen before, if any; its rank.
    pub fn allows(
        &self,
        owner: PeerId,
        service: &str,
        holder: PeerId,
        newest_seen: Option<(u64, u64)>,
    ) -> Result<usize, DelegationError> {
        let signer = self.signer()?;
        if signer != owner {
            return Err(DelegationError::NotTheOwner {
                signer: Box::new(signer),
                owner: Box::new(owner),
            });
        }
        if self.service != service {
            return Err(DelegationError::WrongService {
                named: self.service.clone(),
                wanted: service.to_string(),
            });
        }
        let rank = self
            .rank_of(&holder)
            .ok_or(DelegationError::NotAHolder { peer: holder })?;
        if let Some((seen_epoch, seen_version)) = newest_seen {
            if (self.epoch, self.version) < (seen_epoch, seen_version) {
                return Err(DelegationError::Superseded {
                    epoch: self.epoch,
                    version: self.version,
                    seen_epoch,
                    seen_version,
                });
            }
        }
        Ok(rank)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> Keypair {
        Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    fn peer(seed: u8) -> PeerId {
        key(seed).public().to_peer_id()
    }

    #[test]
    fn a_named_holder_may_act_at_its_rank() {
        let owner = key(1);
        let d = Delegation::sign(&owner, "web", 7, 3, vec![peer(2), peer(3)]);
        let o = peer(1);
        assert_eq!(d.allows(o, "web", peer(2), None), Ok(0));
        assert_eq!(d.allows(o, "web", peer(3), Some((7, 3))), Ok(1));
        // Through CBOR, as on the wire.
        let mut bytes = Vec::new();
        ciborium::into_writer(&d, &mut bytes).unwrap();
        let back: Delegation = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back.allows(o, "web", peer(3), None), Ok(1));
    }

    #[test]
    fn forged_borrowed_or_altered_delegations_are_refused() {
        let (owner, thief) = (key(1), key(9));
        let o = peer(1);
        let good = Delegation::sign(&owner, "web", 7, 3, vec![peer(2)]);
        // Signed by another node that claims to act for the owner.
        let forged = Delegation::sign(&thief, "web", 7, 3, vec![peer(9)]);
        assert!(matches!(
            forged.allows(o, "web", peer(9), None),
            Err(DelegationError::NotTheOwner { .. })
        ));
        // The owner's key with the thief's signature.
        let mut swapped = forged.clone();
        swapped.key = good.key.clone();
        assert_eq!(
            swapped.allows(o, "web", peer(9), None),
            Err(DelegationError::BadSignature)
        );
        // A holder added on the way.
        let mut added = good.clone();
        added.holders.push(peer(9));
        assert_eq!(
            added.allows(o, "web", peer(9), None),
            Err(DelegationError::BadSignature)
        );
        // A version raised on the way (to outrank a newer record).
        let mut raised = good.clone();
        raised.version = u64::MAX;
        assert_eq!(
            raised.allows(o, "web", peer(2), None),
            Err(DelegationError::BadSignature)
        );
        let mut garbage = good.clone();
        garbage.key = vec![1, 2, 3];
        assert_eq!(
            garbage.allows(o, "web", peer(2), None),
            Err(DelegationError::BadKey)
        );
    }

    #[test]
    fn wrong_service_wrong_holder_and_older_versions_are_refused() {
        let o = peer(1);
        let d = Delegation::sign(&key(1), "web", 7, 3, vec![peer(2)]);
        assert!(matches!(
            d.allows(o, "db", peer(2), None),
            Err(DelegationError::WrongService { .. })
        ));
        assert_eq!(
            d.allows(o, "web", peer(3), None),
            Err(DelegationError::NotAHolder { peer: peer(3) })
        );
        // A newer version, or a newer epoch, was seen: this one is spent.
        assert!(matches!(
            d.allows(o, "web", peer(2), Some((7, 4))),
            Err(DelegationError::Superseded { .. })
        ));
        assert!(matches!(
            d.allows(o, "web", peer(2), Some((8, 0))),
            Err(DelegationError::Superseded { .. })
        ));
        let many: Vec<PeerId> = (2..=2 + MAX_HOLDERS as u8).map(peer).collect();
        let too_many = Delegation::sign(&key(1), "web", 7, 3, many);
        assert_eq!(
            too_many.allows(o, "web", peer(2), None),
            Err(DelegationError::TooManyHolders(MAX_HOLDERS + 1))
        );
    }
}
