//! Who a host obeys about a service. A service belongs to the peer id that deployed it (its
//! owner, proven by the signature on every spec: [`super::grant`]). A host stops, removes,
//! moves, fences and shows the logs of an instance only when the owner asks, or the node
//! itself (its own control socket, a drain), or, for what a move needs, the node that brought
//! the instance here (the source of a move undoing its start on the target). Everyone else is
//! refused with a reason that names the owner, except (for `Moved` and `Remove`) a holder of the
//! service's record that shows the owner's signed delegation naming it ([`check_delegated`]: it
//! re-placed the instance for a dead owner, and reroutes its callers or retires the old copy). The rule is one function, so every handler
//! reads the same. The other way round, the owner takes a checkpoint of an instance only from
//! the node its ledger says hosts that instance, at that generation ([`checkpoint_from`]): a
//! copy left behind by a move or a re-placement cannot overwrite the state of the one that runs.

use std::fmt::Display;

use brume_overlay::PeerId;

use super::wire::Generation;
use crate::heal::delegation::Delegation;

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

/// [`check`], and failing it, whether `from` shows the `owner`'s delegation for `service`
/// naming it (a holder of the service record acting for a dead owner:
/// [`crate::heal::delegation`]). Without a known owner no delegation helps.
#[allow(clippy::too_many_arguments)]
pub fn check_delegated(
    from: PeerId,
    me: PeerId,
    act: &str,
    subject: &dyn Display,
    service: &str,
    owner: Option<PeerId>,
    also: &[PeerId],
    delegation: Option<&Delegation>,
) -> Result<(), String> {
    let refused = match check(from, me, act, subject, owner, also) {
        Ok(()) => return Ok(()),
        Err(reason) => reason,
    };
    match (delegation, owner) {
        (Some(d), Some(owner)) => d
            .allows(owner, service, from, None)
            .map(|_| ())
            .map_err(|e| format!("{refused} (its delegation: {e})")),
        _ => Err(refused),
    }
}

/// Whether the owner takes a checkpoint of `instance` at `generation` from `from`, when its
/// ledger says the instance runs on `hosted` (host and generation), if anywhere.
pub fn checkpoint_from(
    from: PeerId,
    instance: &dyn Display,
    generation: Generation,
    hosted: Option<(PeerId, Generation)>,
) -> Result<(), String> {
    match hosted {
        None => Err(format!(
            "refused: {instance} is not in this node's ledger: no checkpoint of it is kept here"
        )),
        Some((host, _)) if host != from => Err(format!(
            "refused: {from} may not checkpoint {instance}: it runs on {host}"
        )),
        Some((_, current)) if current != generation => Err(format!(
            "refused: the checkpoint of {instance} is of generation {generation}, but {current} \
             runs now"
        )),
        Some(_) => Ok(()),
    }
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

    #[test]
    fn a_holder_with_the_owner_s_delegation_may_and_no_one_else() {
        let key = |s: u8| brume_overlay::Keypair::ed25519_from_bytes([s; 32]).unwrap();
        let (me, owner, holder, thief) = (peer(1), peer(2), peer(3), peer(4));
        let good = Delegation::sign(&key(2), "web", 7, 1, vec![holder]);
        let ok = |from, d: Option<&Delegation>| {
            check_delegated(
                from,
                me,
                "reroute",
                &"web.back.0",
                "web",
                Some(owner),
                &[],
                d,
            )
        };
        assert!(ok(holder, Some(&good)).is_ok());
        assert!(ok(owner, None).is_ok());
        // No delegation, or one not naming the sender, or forged, or for another service.
        assert!(ok(holder, None).is_err());
        assert!(ok(thief, Some(&good))
            .unwrap_err()
            .contains("not among the holders"));
        let forged = Delegation::sign(&key(4), "web", 7, 1, vec![thief]);
        assert!(ok(thief, Some(&forged))
            .unwrap_err()
            .contains("not by the service's owner"));
        let other = Delegation::sign(&key(2), "db", 7, 1, vec![holder]);
        assert!(ok(holder, Some(&other))
            .unwrap_err()
            .contains("for service db"));
        // An owner this node does not know: no delegation helps.
        let unknown = check_delegated(holder, me, "reroute", &"x", "web", None, &[], Some(&good));
        assert!(unknown.is_err());
    }

    #[test]
    fn only_the_current_host_at_its_generation_may_checkpoint() {
        let (host, other) = (peer(1), peer(2));
        let g = Generation(3);
        assert!(checkpoint_from(host, &"web", g, Some((host, g))).is_ok());
        let why = checkpoint_from(other, &"web", g, Some((host, g))).unwrap_err();
        assert!(why.contains("runs on"), "{why}");
        let why = checkpoint_from(host, &"web", Generation(2), Some((host, g))).unwrap_err();
        assert!(why.contains("g2") && why.contains("g3"), "{why}");
        assert!(checkpoint_from(host, &"web", g, None).is_err());
    }
}
