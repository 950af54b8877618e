//! The fence table of this node ([`Fences`], pure) behind a lock, with the two wake-ups the
//! guard's I/O waits on: a fence came (an incoming restore must look again), a restore ended (a
//! fence that found it under way may answer). Shared by the mover and the guard.

use std::sync::Mutex;

use brume_tunnel::InstanceId;
use tokio::sync::Notify;

use crate::deploy::wire::Generation;
use crate::migrate::fence::Fences;

/// This node's fence table, with a wake-up for the receivers when a fence came and one for
/// the fences when a restore ended.
#[derive(Debug, Default)]
pub(crate) struct FenceBook {
    table: Mutex<Fences>,
    pub(super) fence_came: Notify,
    pub(super) restore_ended: Notify,
}

impl FenceBook {
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut Fences) -> T) -> T {
        f(&mut self.table.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Returns once `id` at `g` is fenced.
    pub(crate) async fn fenced(&self, id: &InstanceId, g: Generation) {
        loop {
            let came = self.fence_came.notified();
            tokio::pin!(came);
            came.as_mut().enable();
            if self.with(|f| f.is_fenced(id, g)) {
                return;
            }
            came.await;
        }
    }
}
