//! The node's routing table for calls: where each callee runs now.
//!
//! The daemon writes it (on deploy, after a migration, when a host dies) and the tunnel ends read
//! it: a [`crate::tunnel::Forwarder`] once per accepted connection, [`crate::tunnel::serve`] once
//! per incoming stream. Reads and writes are short critical sections under one lock.

use std::collections::HashMap;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use brume_overlay::PeerId;

use super::wire::Endpoint;

/// Where a callee runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On this node, listening on 127.0.0.1:`port`.
    Local { port: u16 },
    /// On another node of the overlay.
    Remote { peer: PeerId },
}

/// A shared table from [`Endpoint`] to [`Route`]; clones share the same table.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    inner: Arc<RwLock<HashMap<Endpoint, Route>>>,
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave the map half-updated (every write is a
    // single insert or remove), so a poisoned lock is still good to use.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<Endpoint, Route>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<Endpoint, Route>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets where `endpoint` runs; returns the previous route.
    pub fn set(&self, endpoint: Endpoint, route: Route) -> Option<Route> {
        self.write().insert(endpoint, route)
    }

    /// Forgets `endpoint`; returns its route.
    pub fn remove(&self, endpoint: &Endpoint) -> Option<Route> {
        self.write().remove(endpoint)
    }

    /// Where `endpoint` runs now.
    pub fn get(&self, endpoint: &Endpoint) -> Option<Route> {
        self.read().get(endpoint).copied()
    }

    /// The port of `endpoint` if it runs on this node.
    pub fn local_port(&self, endpoint: &Endpoint) -> Option<u16> {
        match self.get(endpoint) {
            Some(Route::Local { port }) => Some(port),
            _ => None,
        }
    }

    /// Every route, sorted by endpoint.
    pub fn snapshot(&self) -> Vec<(Endpoint, Route)> {
        let mut all: Vec<_> = self.read().iter().map(|(e, r)| (e.clone(), *r)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
