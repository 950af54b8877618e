//! One CRIU dump of an instance at a time on this node. A live move and a periodic checkpoint
//! both attach to the task with ptrace; a second dump while one runs fails, and failing a
//! move's dump would fail the move. So each takes a [`Claim`] on the instance first: the
//! periodic checkpoint skips a period when it cannot have one, the move waits for it.

use std::collections::BTreeSet;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use brume_tunnel::InstanceId;

/// How often [`DumpClaims::claim`] looks again.
const POLL: Duration = Duration::from_millis(10);

/// The instances a dump is under way for.
#[derive(Debug, Default)]
pub struct DumpClaims {
    held: Mutex<BTreeSet<InstanceId>>,
}

/// The right to dump one instance, until dropped.
#[derive(Debug)]
pub struct Claim<'a> {
    claims: &'a DumpClaims,
    id: InstanceId,
}

impl DumpClaims {
    fn held(&self) -> std::sync::MutexGuard<'_, BTreeSet<InstanceId>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The claim on `id`, unless another dump holds it.
    pub fn try_claim(&self, id: &InstanceId) -> Option<Claim<'_>> {
        self.held().insert(id.clone()).then(|| Claim {
            claims: self,
            id: id.clone(),
        })
    }

    /// The claim on `id`, waiting at most `within` for the dump that holds it to end.
    pub async fn claim(&self, id: &InstanceId, within: Duration) -> Option<Claim<'_>> {
        let until = Instant::now() + within;
        loop {
            if let Some(c) = self.try_claim(id) {
                return Some(c);
            }
            if Instant::now() >= until {
                return None;
            }
            tokio::time::sleep(POLL).await;
        }
    }
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        self.claims.held().remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn one_claim_per_instance_until_it_is_dropped() {
        let claims = DumpClaims::default();
        let (a, b) = (
            InstanceId::new("web", "db", 0),
            InstanceId::new("web", "db", 1),
        );
        let first = claims.try_claim(&a).expect("free");
        assert!(claims.try_claim(&a).is_none());
        assert!(claims.claim(&a, Duration::ZERO).await.is_none());
        // Another instance is not held up.
        let other = claims.try_claim(&b).expect("another instance");
        drop(first);
        let again = claims.claim(&a, Duration::ZERO).await;
        assert!(again.is_some());
        drop((again, other));
        assert!(claims.held().is_empty());
    }
}
