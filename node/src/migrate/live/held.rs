//! The callers of a task that moves live, held while CRIU checkpoints it.
//!
//! CRIU cannot dump a task with an established TCP connection, and no call may reach the old
//! instance after its final capture. So around each checkpoint of a move (brume_migration's
//! [`DumpGate`]) this node cuts the connections it carries to the task, makes new calls wait
//! ([`brume_tunnel::Routes::hold`]) and gives the task's own connections a moment to close;
//! after a pre-copy round's checkpoint the task runs on, and so do its calls, until the next.
//! The final checkpoint's hold lasts until the switch to the new host. Callers used to be held
//! from the start of a move through every round: a client of a moved redis paused 3-4 times
//! the downtime.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use brume_migration::live::DumpGate;
use brume_migration::preflight::quiet;
use brume_tunnel::{Hold, InstanceId, Routes};
use tracing::{debug, warn};

use super::QUIET_WAIT;

/// The hold on one moving task's callers: taken before each checkpoint, let go after each one
/// the task runs on from, handed over to the move's finish after the last.
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

    /// Holds the callers (unless held already) and waits, at most [`QUIET_WAIT`], for the
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

    /// Lets the callers through again, if they were held.
    pub(super) fn release(&self) {
        let taken = self.slot().take();
        if let Some((_, since)) = &taken {
            debug!(instance = %self.inner.endpoint, held_ms = since.elapsed().as_millis() as u64, "callers let through between checkpoints");
        }
        drop(taken);
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

    fn after_dump(&self) {
        self.release();
    }
}
