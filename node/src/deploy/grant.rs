//! A service belongs to the node that deployed it (its initiator, named by peer id), and every
//! instance spec carries that node's signature: the proof a host checks before it runs,
//! prepares or adopts anything.
//!
//! The signature covers what the owner decides: the instance's name, epoch, payload (the
//! artifact's digests: the chunks fetched are checked against them), resources, environment,
//! restarts, checkpoint mode and period, the downtime budget of a live move, the user it runs as and the owner's own id. It leaves out what a move changes on the
//! way (the source of a move forwards the owner's signature with its copy): the generation,
//! where the callees run now, and the state line it starts from (`restore`). The key travels with the
//! signature and must be the owner's: a spec whose key is not its `initiator`'s, or whose
//! signature fails, is refused. The signed bytes are the CBOR of [`Signed`], built the same
//! way on both sides from the spec's fields, after a domain string.

use std::collections::BTreeMap;

use brume_overlay::{Keypair, PeerId};
use serde::Serialize;

use super::wire::{CheckpointMode, Grant, InstanceSpec, Payload};

/// What the signed bytes start with: a signature made for anything else never verifies here.
const DOMAIN: &[u8] = b"brume/instance-spec/1\n";

/// Why a spec's grant does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GrantError {
    #[error("the spec names no owner (initiator)")]
    NoOwner,
    #[error("the spec is not signed by its owner (this brume is older than the host's?)")]
    Unsigned,
    #[error("the spec's signing key is not a public key")]
    BadKey,
    #[error("the spec is signed by {signer}, not by the owner it names")]
    NotTheOwner { signer: PeerId },
    #[error("the owner's signature does not match the spec (altered on the way?)")]
    BadSignature,
}

/// The fields the owner vouches for, in a fixed order.
#[derive(Serialize)]
struct Signed<'a> {
    service: &'a str,
    task: &'a str,
    replica: u32,
    epoch: u64,
    payload: &'a Payload,
    cpu_millis: u64,
    memory_mb: u64,
    env: BTreeMap<&'a str, &'a str>,
    max_restarts: u32,
    checkpoint: CheckpointMode,
    user: Option<&'a str>,
    owner: PeerId,
    /// Left out when unset, so specs signed before it existed still verify.
    #[serde(skip_serializing_if = "Option::is_none")]
    checkpoint_every_s: Option<u32>,
    /// Left out when unset, like `checkpoint_every_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    downtime_budget_ms: Option<u64>,
    /// Left out when unset, like `checkpoint_every_s`.
    #[serde(skip_serializing_if = "Option::is_none")]
    max_runtime_s: Option<u32>,
}

fn signed_bytes(spec: &InstanceSpec, owner: PeerId) -> Vec<u8> {
    let signed = Signed {
        service: &spec.id.service,
        task: &spec.id.task,
        replica: spec.id.replica,
        epoch: spec.epoch,
        payload: &spec.payload,
        cpu_millis: spec.cpu_millis,
        memory_mb: spec.memory_mb,
        env: spec
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect(),
        max_restarts: spec.max_restarts,
        checkpoint: spec.checkpoint,
        user: spec.user.as_deref(),
        owner,
        checkpoint_every_s: spec.checkpoint_every_s,
        downtime_budget_ms: spec.downtime_budget_ms,
        max_runtime_s: spec.max_runtime_s,
    };
    let mut out = DOMAIN.to_vec();
    // Writing into a Vec cannot fail, and every field is plainly serialisable.
    ciborium::into_writer(&signed, &mut out).expect("a spec encodes as CBOR");
    out
}

impl InstanceSpec {
    /// This spec, owned and signed by `key`'s node.
    pub fn signed(mut self, key: &Keypair) -> InstanceSpec {
        let owner = key.public().to_peer_id();
        self.initiator = Some(owner);
        // ed25519 signing cannot fail; another key type that could is refused when checked.
        let signature = key.sign(&signed_bytes(&self, owner)).unwrap_or_default();
        self.grant = Some(Grant {
            key: key.public().encode_protobuf(),
            signature,
        });
        self
    }

    /// The owner of this spec, once its signature holds.
    pub fn owner(&self) -> Result<PeerId, GrantError> {
        let owner = self.initiator.ok_or(GrantError::NoOwner)?;
        let grant = self.grant.as_ref().ok_or(GrantError::Unsigned)?;
        let key = brume_overlay::PublicKey::try_decode_protobuf(&grant.key)
            .map_err(|_| GrantError::BadKey)?;
        let signer = key.to_peer_id();
        if signer != owner {
            return Err(GrantError::NotTheOwner { signer });
        }
        if !key.verify(&signed_bytes(self, owner), &grant.signature) {
            return Err(GrantError::BadSignature);
        }
        Ok(owner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deploy::wire::Generation;
    use brume_tunnel::InstanceId;

    fn key(seed: u8) -> Keypair {
        Keypair::ed25519_from_bytes([seed; 32]).unwrap()
    }

    fn spec() -> InstanceSpec {
        InstanceSpec {
            env: [("MODE".to_string(), "fast".to_string())].into(),
            checkpoint: CheckpointMode::App,
            ..InstanceSpec::new(
                InstanceId::new("web", "front", 0),
                7,
                Payload::Command(vec!["/bin/true".into()]),
                100,
                64,
            )
        }
    }

    #[test]
    fn the_owner_signs_and_a_move_keeps_the_signature() {
        let owner = key(1);
        let signed = spec().signed(&owner);
        assert_eq!(signed.owner(), Ok(owner.public().to_peer_id()));
        // What a move changes is not covered: the copy still proves its owner.
        let mut moved = signed.clone();
        moved.generation = Generation(3);
        moved.restore = Some("state".into());
        assert_eq!(moved.owner(), Ok(owner.public().to_peer_id()));
        // Through CBOR, as on the wire.
        let mut bytes = Vec::new();
        ciborium::into_writer(&moved, &mut bytes).unwrap();
        let back: InstanceSpec = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back.owner(), Ok(owner.public().to_peer_id()));
    }

    #[test]
    fn unsigned_altered_or_borrowed_specs_are_refused() {
        let owner = key(1);
        let thief = key(2);
        assert_eq!(spec().owner(), Err(GrantError::NoOwner));
        let mut unsigned = spec();
        unsigned.initiator = Some(owner.public().to_peer_id());
        assert_eq!(unsigned.owner(), Err(GrantError::Unsigned));

        let signed = spec().signed(&owner);
        for alter in [
            |s: &mut InstanceSpec| s.epoch = u64::MAX,
            |s: &mut InstanceSpec| s.cpu_millis += 1,
            |s: &mut InstanceSpec| {
                s.env.insert("LD_PRELOAD".into(), "/x".into());
            },
            |s: &mut InstanceSpec| s.payload = Payload::Command(vec!["/bin/sh".into()]),
            |s: &mut InstanceSpec| s.id.service = "other".into(),
            |s: &mut InstanceSpec| s.user = Some("root".into()),
            |s: &mut InstanceSpec| s.checkpoint_every_s = Some(1),
            |s: &mut InstanceSpec| s.downtime_budget_ms = Some(60_000),
            |s: &mut InstanceSpec| s.max_runtime_s = Some(3600),
        ] {
            let mut s = signed.clone();
            alter(&mut s);
            assert_eq!(s.owner(), Err(GrantError::BadSignature), "{s:?}");
        }
        // The thief signs with its own key but claims the owner's id.
        let mut claimed = spec().signed(&thief);
        claimed.initiator = Some(owner.public().to_peer_id());
        assert!(matches!(
            claimed.owner(),
            Err(GrantError::NotTheOwner { .. })
        ));
        // The thief's own signature over the owner's key bytes.
        let mut swapped = signed.clone();
        swapped.grant.as_mut().unwrap().signature = thief
            .sign(&signed_bytes(&signed, owner.public().to_peer_id()))
            .unwrap();
        assert_eq!(swapped.owner(), Err(GrantError::BadSignature));
        let mut garbage = signed.clone();
        garbage.grant.as_mut().unwrap().key = vec![1, 2, 3];
        assert_eq!(garbage.owner(), Err(GrantError::BadKey));
    }
}
