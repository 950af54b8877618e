//! The node's routing table for calls: where each callee runs now. It is also what the node's
//! tunnel ends share, so it carries the [`BufferPool`] their connections copy through.
//!
//! The daemon writes it (on deploy, after a migration, when a host dies) and the tunnel ends read
//! it: a [`crate::Forwarder`] once per accepted connection, [`crate::serve`] once
//! per incoming stream. Reads and writes are short critical sections under one lock.
//!
//! A move holds an endpoint ([`Routes::hold`]) while it captures the instance's state and starts
//! it elsewhere: the connections this node carries to the instance are cut (so nothing changes
//! its state after the checkpoint), and new ones wait in [`Routes::resolve`] instead of failing,
//! until the hold ends and the route says where the instance runs now. Callers see a pause, not
//! an error, and no request reaches the old instance after its checkpoint.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use brume_overlay::{Multiaddr, PeerId};
use tokio::sync::watch;

use super::splice::BufferPool;
use crate::InstanceId;

/// Where a callee runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// On this node, listening on 127.0.0.1:`port`.
    Local { port: u16 },
    /// On another node of the overlay.
    Remote { peer: PeerId },
}

/// A shared table from [`InstanceId`] to [`Route`]; clones share the same table.
#[derive(Debug, Clone, Default)]
pub struct Routes {
    inner: Arc<RwLock<HashMap<InstanceId, Route>>>,
    gates: Arc<Mutex<HashMap<InstanceId, watch::Sender<Gate>>>>,
    /// Where remote hosts can be dialled, as far as this node was told: handed on with a
    /// redirect, since the caller may never have met the host a task moved to.
    hosts: Arc<Mutex<HashMap<PeerId, Vec<Multiaddr>>>>,
    /// The copy buffers of this node's tunnelled connections.
    buffers: BufferPool,
}

/// At most this many hosts' addresses are kept (beyond it, new hosts are not noted).
const MAX_HOSTS: usize = 4096;

/// Past this many hold gates, the unused ones are forgotten (see [`Routes::gate`]).
const MAX_IDLE_GATES: usize = 1024;

/// Whether an endpoint is held, and how many holds have cut its connections so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Gate {
    held: bool,
    cuts: u64,
}

/// An endpoint held by a move; dropping it lets waiting connections through.
#[derive(Debug)]
pub struct Hold {
    gate: watch::Sender<Gate>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.gate.send_modify(|g| g.held = false);
    }
}

/// Resolves once the connections of an endpoint are cut by a hold that began after it was made.
#[derive(Debug)]
pub struct CutSignal {
    rx: watch::Receiver<Gate>,
    seen: u64,
}

impl CutSignal {
    /// Completes when a later hold cuts this endpoint's connections (never, if none does).
    pub async fn cut(mut self) {
        let seen = self.seen;
        if self.rx.wait_for(|g| g.cuts != seen).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Routes {
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave the map half-updated (every write is a
    // single insert or remove), so a poisoned lock is still good to use.
    fn read(&self) -> RwLockReadGuard<'_, HashMap<InstanceId, Route>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, HashMap<InstanceId, Route>> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Sets where `endpoint` runs; returns the previous route.
    pub fn set(&self, endpoint: InstanceId, route: Route) -> Option<Route> {
        self.write().insert(endpoint, route)
    }

    /// Forgets `endpoint`; returns its route.
    pub fn remove(&self, endpoint: &InstanceId) -> Option<Route> {
        self.write().remove(endpoint)
    }

    /// Where `endpoint` runs now.
    pub fn get(&self, endpoint: &InstanceId) -> Option<Route> {
        self.read().get(endpoint).copied()
    }

    /// The port of `endpoint` if it runs on this node.
    pub fn local_port(&self, endpoint: &InstanceId) -> Option<u16> {
        match self.get(endpoint) {
            Some(Route::Local { port }) => Some(port),
            _ => None,
        }
    }

    /// The hold gate of `endpoint`, made on first use.
    fn gate(&self, endpoint: &InstanceId) -> watch::Sender<Gate> {
        let mut gates = self.gates.lock().unwrap_or_else(|e| e.into_inner());
        if gates.len() >= MAX_IDLE_GATES && !gates.contains_key(endpoint) {
            // Endpoints are named by callers: forget the gates nobody holds or watches, so
            // asking for made-up endpoints cannot grow the table.
            gates.retain(|_, g| g.borrow().held || g.receiver_count() > 0);
        }
        gates
            .entry(endpoint.clone())
            .or_insert_with(|| watch::channel(Gate::default()).0)
            .clone()
    }

    /// Holds `endpoint`: cuts the connections this node carries to it now and makes new ones
    /// wait in [`Routes::resolve`] until the returned guard is dropped.
    pub fn hold(&self, endpoint: &InstanceId) -> Hold {
        let gate = self.gate(endpoint);
        gate.send_modify(|g| {
            g.held = true;
            g.cuts += 1;
        });
        Hold { gate }
    }

    /// Where `endpoint` runs, once no hold is on it (waiting at most `bound`; after that the
    /// route as it stands).
    pub async fn resolve(&self, endpoint: &InstanceId, bound: Duration) -> Option<Route> {
        let mut rx = self.gate(endpoint).subscribe();
        let _ = tokio::time::timeout(bound, rx.wait_for(|g| !g.held)).await;
        self.get(endpoint)
    }

    /// A signal for a connection to `endpoint` set up now: it fires when a later hold cuts it.
    pub fn cut_signal(&self, endpoint: &InstanceId) -> CutSignal {
        let rx = self.gate(endpoint).subscribe();
        let seen = rx.borrow().cuts;
        CutSignal { rx, seen }
    }

    /// Notes where `peer` can be dialled (replacing what was noted).
    pub fn set_host_addrs(&self, peer: PeerId, addrs: Vec<Multiaddr>) {
        let mut hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        if hosts.len() < MAX_HOSTS || hosts.contains_key(&peer) {
            hosts.insert(peer, addrs);
        }
    }

    /// Where `peer` can be dialled, if this node was told (else empty).
    pub fn host_addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        let hosts = self.hosts.lock().unwrap_or_else(|e| e.into_inner());
        hosts.get(peer).cloned().unwrap_or_default()
    }

    /// The copy buffers the tunnels of this node reuse.
    pub fn buffers(&self) -> &BufferPool {
        &self.buffers
    }

    /// Every route, sorted by endpoint.
    pub fn snapshot(&self) -> Vec<(InstanceId, Route)> {
        let mut all: Vec<_> = self.read().iter().map(|(e, r)| (e.clone(), *r)).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep() -> InstanceId {
        InstanceId::new("svc", "mid", 0)
    }

    #[tokio::test]
    async fn a_hold_cuts_live_connections_and_makes_new_ones_wait_for_the_new_route() {
        let routes = Routes::new();
        routes.set(ep(), Route::Local { port: 7 });
        let live = routes.cut_signal(&ep());
        let other = routes.cut_signal(&InstanceId::new("svc", "back", 0));
        let hold = routes.hold(&ep());
        // The live connection is cut at once; one to another endpoint is not.
        // Positive waits are bounded generously (a hang fails); negative ones ("not cut", "still
        // waiting") briefly, and can only fail if the thing happens.
        tokio::time::timeout(Duration::from_secs(60), live.cut())
            .await
            .expect("the hold cuts the live connection");
        assert!(
            tokio::time::timeout(Duration::from_millis(50), other.cut())
                .await
                .is_err(),
            "another endpoint's connection was cut"
        );
        // A new connection waits for the hold, then sees the route the move set.
        let waiter = {
            let routes = routes.clone();
            tokio::spawn(async move { routes.resolve(&ep(), Duration::from_secs(600)).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!waiter.is_finished(), "resolve did not wait for the hold");
        let peer = PeerId::random();
        routes.set(ep(), Route::Remote { peer });
        drop(hold);
        let route = tokio::time::timeout(Duration::from_secs(60), waiter)
            .await
            .expect("released")
            .expect("joined");
        assert_eq!(route, Some(Route::Remote { peer }));
        // A connection made after the hold ended is not cut by it.
        let after = routes.cut_signal(&ep());
        assert!(tokio::time::timeout(Duration::from_millis(50), after.cut())
            .await
            .is_err());
    }

    #[tokio::test]
    async fn gates_of_endpoints_nobody_holds_or_watches_do_not_pile_up() {
        let routes = Routes::new();
        let held = routes.hold(&ep());
        let watched = routes.cut_signal(&InstanceId::new("svc", "watched", 0));
        for i in 0..(3 * MAX_IDLE_GATES as u32) {
            // Made-up endpoints, as a caller could name them.
            routes
                .resolve(&InstanceId::new("nope", "x", i), Duration::from_secs(60))
                .await;
        }
        let n = routes.gates.lock().unwrap().len();
        assert!(n <= MAX_IDLE_GATES + 1, "{n} gates");
        // What is held or watched survives the pruning.
        let cut = routes.hold(&InstanceId::new("svc", "watched", 0));
        tokio::time::timeout(Duration::from_secs(60), watched.cut())
            .await
            .expect("the watched gate is the same one");
        drop((held, cut));
    }

    #[tokio::test]
    async fn a_hold_that_is_never_released_is_waited_for_only_up_to_the_bound() {
        let routes = Routes::new();
        routes.set(ep(), Route::Local { port: 7 });
        let _hold = routes.hold(&ep());
        let t = std::time::Instant::now();
        let route = routes.resolve(&ep(), Duration::from_millis(100)).await;
        assert!(t.elapsed() >= Duration::from_millis(100));
        assert_eq!(route, Some(Route::Local { port: 7 }));
    }
}
