//! The callers of a task that moves live, held from its first checkpoint to the switch.
//!
//! CRIU cannot dump a task with an established TCP connection, and no call may reach the old
//! instance after its final capture. So before the first checkpoint of a move (brume_migration's
//! [`DumpGate`]) this node cuts the connections it carries to the task, makes new calls wait
//! ([`brume_tunnel::Routes::hold`]) and gives the task's own connections a moment to close; the
//! hold lasts until the switch to the new host. Callers used to be held from the start of a
//! move, through the target's preparation (for Docker, a second or more); tracked rounds read
//! memory while the task runs, so there the hold starts at the freeze.
//!
//! Letting callers through between pre-copy rounds was tried (a client of a moved redis paused
//! 0.47x as long on processes, 0.28x on Docker), but every hold cuts the calls in flight, and a
//! caller that retries once (the relay example) then saw its retry cut by the next round's hold:
//! a failed call in one move of five. It waits for a cut that spares a call in flight.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use brume_migration::live::DumpGate;
use brume_migration::preflight::quiet;
use brume_tunnel::{Hold, InstanceId, Routes};
use tracing::warn;

use super::QUIET_WAIT;

/// The hold on one moving task's callers: taken before the first checkpoint, handed over to
/// the move's finish after the last.
#[derive(Clone)]
pub(super) struct HeldCallers {
    inner: Arc<Inner>,
}

struct Inner {
    routes: Routes,
    endpoint: InstanceId,
    pid: u32,
    slot: Mutex<Option<(Hold, Instant)>>,
}

impl std::fmt::Debug for HeldCallers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HeldCallers")
            .field("endpoint", &self.inner.endpoint)
            .field("pid", &self.inner.pid)
            .finish()
    }
}

impl HeldCallers {
    pub(super) fn new(routes: Routes, endpoint: InstanceId, pid: u32) -> HeldCallers {
        HeldCallers {
            inner: Arc::new(Inner {
                routes,
                endpoint,
                pid,
                slot: Mutex::new(None),
            }),
        }
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Option<(Hold, Instant)>> {
        self.inner.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Holds the callers (unless held already: later checkpoints find them held) and waits, at most [`QUIET_WAIT`], for the
    /// task's TCP connections to close.
    pub(super) async fn hold(&self) {
        let i = &self.inner;
        {
            let mut slot = self.slot();
            if slot.is_some() {
                return;
            }
            *slot = Some((i.routes.hold(&i.endpoint), Instant::now()));
        }
        let open = quiet(i.pid, QUIET_WAIT).await;
        if open > 0 {
            warn!(instance = %i.endpoint, open, "the task still holds TCP connections; the checkpoint may fail");
        }
    }

    /// Lets the callers through again, if they were held (the task runs on here).
    pub(super) fn release(&self) {
        drop(self.slot().take());
    }

    /// The hold and when it began; taken now if no checkpoint took it (the task is frozen or
    /// lost here, and nothing may reach it any more).
    pub(super) fn take(&self) -> (Hold, Instant) {
        let taken = self.slot().take();
        let i = &self.inner;
        taken.unwrap_or_else(|| (i.routes.hold(&i.endpoint), Instant::now()))
    }
}

impl DumpGate for HeldCallers {
    fn before_dump(&self) -> Pin<Box<dyn Future<Output = ()> + Send + '_>> {
        Box::pin(self.hold())
    }
}
