//! Which hosts the initiator watches, and when one is declared dead: a phi-accrual detector
//! ([`super::phi`]) per host, and whether the overlay still holds a connection to it.
//!
//! A host is declared dead when its phi is above the threshold **and** either its connection
//! is down or it has been silent for [`WatchConfig::stall_intervals`] heartbeat periods. The
//! second condition keeps a host whose connection is up from being declared dead on one slow
//! probe: a loaded machine delays answers, a dead one (killed, crashed, its machine gone)
//! loses its connections, and a frozen one stops answering for good. Each host is declared
//! once; it stays declared until the ledger no longer names it.
//!
//! No I/O and no clock: the shell ([`super::healer`]) feeds arrivals, connection states and
//! the `now` to judge at.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use brume_overlay::PeerId;

use super::phi::{PhiConfig, PhiDetector};

/// How hosts are judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WatchConfig {
    /// The heartbeat period.
    pub interval: Duration,
    pub phi: PhiConfig,
    /// With its connection up, a host must also have been silent this many periods.
    pub stall_intervals: u32,
}

impl WatchConfig {
    pub fn for_interval(interval: Duration) -> WatchConfig {
        WatchConfig {
            interval,
            phi: PhiConfig::for_interval(interval),
            stall_intervals: 20,
        }
    }
}

/// A host declared dead, with the evidence.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    pub peer: PeerId,
    pub phi: f64,
    /// Since its last heartbeat (or since it was first watched).
    pub silent: Duration,
    pub connected: bool,
}

#[derive(Debug, Clone)]
struct Host {
    detector: PhiDetector,
    connected: bool,
    declared: bool,
}

/// The watched hosts.
#[derive(Debug, Clone)]
pub struct Watch {
    config: WatchConfig,
    hosts: BTreeMap<PeerId, Host>,
}

impl Watch {
    pub fn new(config: WatchConfig) -> Watch {
        Watch {
            config,
            hosts: BTreeMap::new(),
        }
    }

    /// Watches exactly `hosts` from now on: a new one starts as if it had just spoken (and as
    /// connected), one no longer named is forgotten.
    pub fn track(&mut self, hosts: &BTreeSet<PeerId>, now: Instant) {
        self.hosts.retain(|p, _| hosts.contains(p));
        for &peer in hosts {
            self.hosts.entry(peer).or_insert_with(|| {
                let mut detector = PhiDetector::new(self.config.phi);
                detector.heartbeat(now);
                Host {
                    detector,
                    connected: true,
                    declared: false,
                }
            });
        }
    }

    /// The watched hosts.
    pub fn hosts(&self) -> impl Iterator<Item = PeerId> + '_ {
        self.hosts.keys().copied()
    }

    /// `peer` answered a heartbeat at `at`.
    pub fn heartbeat(&mut self, peer: PeerId, at: Instant) {
        if let Some(h) = self.hosts.get_mut(&peer) {
            h.detector.heartbeat(at);
        }
    }

    /// Whether the overlay holds a connection to `peer`.
    pub fn connection(&mut self, peer: PeerId, up: bool) {
        if let Some(h) = self.hosts.get_mut(&peer) {
            h.connected = up;
        }
    }

    /// Stops watching `peer` (it is watched afresh at the next [`Watch::track`]): a peer
    /// declared dead that is heard again (an owner back after a restart) is judged anew.
    pub fn forget(&mut self, peer: &PeerId) {
        self.hosts.remove(peer);
    }

    /// Whether `peer` was declared dead.
    pub fn is_declared(&self, peer: &PeerId) -> bool {
        self.hosts.get(peer).is_some_and(|h| h.declared)
    }

    /// The hosts declared dead at `now` that were not before (each is declared once).
    pub fn judge(&mut self, now: Instant) -> Vec<Verdict> {
        let stall = self.config.interval * self.config.stall_intervals;
        let mut out = Vec::new();
        for (&peer, h) in &mut self.hosts {
            if h.declared {
                continue;
            }
            let phi = h.detector.phi(now);
            let silent = h
                .detector
                .last_heartbeat()
                .map(|t| now.saturating_duration_since(t))
                .unwrap_or_default();
            if phi > h.detector.config().threshold && (!h.connected || silent >= stall) {
                h.declared = true;
                out.push(Verdict {
                    peer,
                    phi,
                    silent,
                    connected: h.connected,
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PERIOD: Duration = Duration::from_millis(500);

    fn peer(seed: u8) -> PeerId {
        brume_overlay::Keypair::ed25519_from_bytes([seed; 32])
            .expect("32 bytes are an ed25519 key")
            .public()
            .to_peer_id()
    }

    /// Both hosts speak every period for ten periods; then `b` stops.
    fn warmed() -> (Watch, PeerId, PeerId, Instant) {
        let (a, b) = (peer(1), peer(2));
        let mut w = Watch::new(WatchConfig::for_interval(PERIOD));
        let t0 = Instant::now();
        w.track(&[a, b].into(), t0);
        let mut now = t0;
        for _ in 0..10 {
            now += PERIOD;
            w.heartbeat(a, now);
            w.heartbeat(b, now);
            assert!(w.judge(now).is_empty());
        }
        (w, a, b, now)
    }

    #[test]
    fn a_silent_host_with_its_connection_down_is_declared_once() {
        let (mut w, a, b, mut now) = warmed();
        w.connection(b, false);
        let mut declared = None;
        for _ in 0..20 {
            now += PERIOD / 5;
            w.heartbeat(a, now);
            let v = w.judge(now);
            if !v.is_empty() {
                assert_eq!(v.len(), 1);
                assert_eq!(v[0].peer, b);
                assert!(!v[0].connected && v[0].phi > 8.0);
                declared = Some(v[0].silent);
                break;
            }
        }
        let silent = declared.expect("b declared within four seconds");
        assert!(silent <= PERIOD * 3, "declared after {silent:?}");
        assert!(w.is_declared(&b) && !w.is_declared(&a));
        let later = w.judge(now + PERIOD * 100);
        assert!(later.iter().all(|v| v.peer != b), "declared once");
    }

    #[test]
    fn a_slow_host_still_connected_is_given_the_stall_time() {
        let (mut w, _a, b, last) = warmed();
        // Phi is long past the threshold at three periods, but the connection is up.
        assert!(w.judge(last + PERIOD * 3).is_empty());
        assert!(w.judge(last + PERIOD * 19).is_empty());
        assert!(!w.is_declared(&b));
        let v = w.judge(last + PERIOD * 20);
        assert!(v.iter().any(|v| v.peer == b && v.connected));
    }

    #[test]
    fn a_host_no_longer_in_the_ledger_is_forgotten() {
        let (mut w, a, b, now) = warmed();
        w.track(&[a].into(), now);
        assert_eq!(w.hosts().collect::<Vec<_>>(), vec![a]);
        w.connection(b, false);
        assert!(w.judge(now + PERIOD * 100).iter().all(|v| v.peer != b));
    }
}
