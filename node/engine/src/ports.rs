//! Choosing the port a task will listen on.
//!
//! Tasks share the host network, so the node picks each task's port before starting it, and the
//! task binds it a moment later. Asking the kernel (`bind(0)`) gives a port from the *ephemeral*
//! range, the same range every outgoing connection on the host draws its local port from: with a
//! busy node (overlay dials, tunnels, health probes) such a port is regularly taken by someone
//! else's connection between the pick and the task's own bind. So the pick comes from below the
//! ephemeral range, at random, and is checked free on loopback and on every address. The engine's
//! start still refuses a port that got taken in between ([`super::EngineError::PortInUse`]);
//! callers pick again.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::ops::Range;

use rand::Rng;

/// Where task ports come from when the ephemeral range cannot be read: below Linux's default
/// ephemeral range (32768-60999) and above the well-known and most registered service ports.
const FALLBACK: Range<u16> = 20_000..32_768;

/// Tries before giving up on the non-ephemeral range and asking the kernel.
const TRIES: usize = 64;

/// The range task ports are drawn from: `[20000, lower bound of the ephemeral range)`, or
/// 20000..32768 when `/proc/sys/net/ipv4/ip_local_port_range` is unreadable or leaves too little.
pub fn task_port_range() -> Range<u16> {
    let low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .next()
                .and_then(|l| l.parse::<u16>().ok())
        });
    match low {
        Some(low) if low >= FALLBACK.start + 1024 => FALLBACK.start..low,
        _ => FALLBACK,
    }
}

/// A port nobody on this host listens on or connects from right now, drawn at random below the
/// ephemeral range so outgoing connections do not take it before the task binds it.
pub fn free_task_port() -> std::io::Result<u16> {
    let range = task_port_range();
    let mut rng = rand::rng();
    for _ in 0..TRIES {
        let port = rng.random_range(range.clone());
        if bindable(port) {
            return Ok(port);
        }
    }
    // The whole range looks busy: let the kernel choose.
    Ok(TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?
        .local_addr()?
        .port())
}

fn bindable(port: u16) -> bool {
    [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
    ]
    .iter()
    .all(|addr| TcpListener::bind(addr).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether a picked port is still free when this test looks again depends on every other
    /// process on the host (tests run in parallel, and their daemons pick from this range too),
    /// so only the range is checked here; what "free" means is checked on a held port below.
    #[test]
    fn ports_come_from_below_the_ephemeral_range() {
        let range = task_port_range();
        assert!(range.start >= 20_000 && range.end > range.start);
        for _ in 0..20 {
            let port = free_task_port().expect("a port");
            assert!(range.contains(&port), "{port} outside {range:?}");
        }
    }

    #[test]
    fn a_held_port_is_not_bindable() {
        let held = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).expect("bind");
        let port = held.local_addr().expect("addr").port();
        assert!(!bindable(port));
    }
}
