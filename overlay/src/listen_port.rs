//! A node's TCP port is its own: refuse to listen where another program already listens.
//!
//! libp2p's TCP transport sets `SO_REUSEPORT` on its listeners (so that outgoing connections can
//! leave from the listen port). On Linux that lets a second process of the same user bind a port
//! a libp2p node already listens on, without any error: the kernel then splits incoming
//! connections between the two by a hash of the connecting address. For brume that is silent
//! breakage: two `brume node`s started with the same `--listen` port both "work", and a peer
//! dialling one of them always reaches the same one of the two (its source port is fixed, so is
//! the hash), which fails the peer-id check on every dial, for good. Reproduced in the loopback
//! suite by starting a second node on the port a test's node came back to: the test's other node
//! never reached it again.
//!
//! So before libp2p binds, each fixed port is probed with a plain listener (`SO_REUSEADDR`, which
//! lets it bind over connections lingering in `TIME_WAIT`, but no `SO_REUSEPORT`, which makes
//! any live listener on the port refuse it) and closed again. Port 0 (the kernel picks a free
//! one) and non-TCP addresses need no probe.

use std::net::{IpAddr, SocketAddr, TcpListener};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// The socket address a listen address binds, if it names a fixed TCP port on an IP address.
fn fixed_tcp_port(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut it = addr.iter();
    let ip: IpAddr = match it.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match it.next()? {
        Protocol::Tcp(port) if port != 0 => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// `Err(reason)` when another socket listens on `addr`'s fixed TCP port.
pub(crate) fn check_free(addr: &Multiaddr) -> Result<(), String> {
    let Some(sock) = fixed_tcp_port(addr) else {
        return Ok(());
    };
    match TcpListener::bind(sock) {
        Ok(probe) => {
            drop(probe);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => Err(format!(
            "another program already listens on {sock} (libp2p would share the port with it \
             silently and split the connections meant for this node); stop it or pick another \
             port"
        )),
        Err(e) => Err(format!("cannot bind {sock}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fixed_tcp_ports_on_ip_addresses_are_probed() {
        let p = |s: &str| fixed_tcp_port(&s.parse().unwrap());
        assert_eq!(
            p("/ip4/127.0.0.1/tcp/4001"),
            Some("127.0.0.1:4001".parse().unwrap())
        );
        assert_eq!(p("/ip6/::1/tcp/4001"), Some("[::1]:4001".parse().unwrap()));
        assert_eq!(p("/ip4/127.0.0.1/tcp/0"), None);
        assert_eq!(p("/dns4/example.invalid/tcp/4001"), None);
        assert_eq!(p("/memory/5"), None);
    }

    #[test]
    fn a_port_another_listener_holds_is_refused() {
        let other = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = other.local_addr().unwrap().port();
        let addr: Multiaddr = format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap();
        let err = check_free(&addr).unwrap_err();
        assert!(err.contains("already listens"), "{err}");
        drop(other);
    }
}
