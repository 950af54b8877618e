//! Who a host obeys about a service. A service belongs to the peer id that deployed it (its
//! owner, proven by the signature on every spec: [`super::grant`]). A host stops, removes,
//! moves, fences and shows the logs of an instance only when the owner asks, or the node
//! itself (its own control socket, a drain), or, for what a move needs, the node that brought
//! the instance here (the source of a move undoing its start on the target). Everyone else is
//! refused with a reason that names the owner. The rule is one function, so every handler
//! reads the same.

use std::fmt::Display;

use brume_overlay::PeerId;

/// Whether `from` may `act` on `subject` at the node `me`: yes for `me` itself, the `owner`
/// and any of `also`; otherwise the refusal.
pub fn check(
    from: PeerId,
    me: PeerId,
    act: &str,
    subject: &dyn Display,
    owner: Option<PeerId>,
    also: &[PeerId],
) -> Result<(), String> {
    if from == me || owner == Some(from) || also.contains(&from) {
        return Ok(());
    }
    Err(match owner {
        Some(owner) => format!(
            "refused: {from} may not {act} {subject}: it belongs to {owner}, and only its owner \
             may"
        ),
        None => format!("refused: {from} may not {act} {subject}: it is not its owner"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .unwrap()
            .public()
            .to_peer_id()
    }

    #[test]
    fn the_node_the_owner_and_the_named_others_may_and_nobody_else() {
        let (me, owner, source, stranger) = (peer(1), peer(2), peer(3), peer(4));
        let ok = |from| check(from, me, "stop", &"web", Some(owner), &[source]);
        assert!(ok(me).is_ok() && ok(owner).is_ok() && ok(source).is_ok());
        let why = ok(stranger).unwrap_err();
        assert!(
            why.contains("may not stop web") && why.contains(&owner.to_string()),
            "{why}"
        );
        assert!(check(stranger, me, "move", &"web", None, &[]).is_err());
    }
}
