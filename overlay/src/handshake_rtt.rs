//! The RTT the kernel measured in a connection's TCP handshake, for the probes that had to dial.
//!
//! A map confirms a node its overlay paths cannot prove with a probe; a node it is not
//! connected to is dialled first. The first ping on that new connection is a poor measure of the
//! path on a busy host: it runs after TCP, noise and yamux, in two user-space tasks that wait for
//! a CPU, and on a testbed of 48 daemons on two cores it measured 30-90 ms for paths of 10-25 ms.
//! The kernel times the handshake itself (SYN to SYN-ACK on the dialling side, SYN-ACK to ACK on
//! the listening side) with no user-space work on either end, so the socket's smallest sample
//! (`tcpi_min_rtt`, read from `TCP_INFO` as soon as it connects, when the handshake's is its only
//! one) is the path's RTT.
//!
//! The transport ([`crate::transport`]) records each new socket's sample here under its remote
//! address; the swarm takes it when libp2p reports the connection established (the same remote
//! address) and answers the probes waiting for that node with it. A sample of a connection that
//! never gets established (a failed noise or network-key handshake) is never taken, so samples
//! are dropped after [`SAMPLE_TTL`] and at most [`MAX_SAMPLES`] are kept.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::multiaddr::Protocol;
use libp2p::Multiaddr;

/// How long a sample waits for its connection to be established (libp2p's connection timeout,
/// which bounds the handshakes after TCP, is 10 s).
pub const SAMPLE_TTL: Duration = Duration::from_secs(30);

/// Samples kept at most (connections being set up at once, with room to spare).
pub const MAX_SAMPLES: usize = 1024;

/// The handshake RTT of connected TCP socket `stream`, if the kernel has one (Linux only).
#[cfg(target_os = "linux")]
pub fn of_socket(stream: &tokio::net::TcpStream) -> Option<Duration> {
    use std::os::fd::AsRawFd;
    // SAFETY: `info` is a plain C struct that zeroed bytes make valid; getsockopt writes at
    // most `len` bytes into it, and the descriptor is borrowed from a live socket.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let rc = unsafe {
        libc::getsockopt(
            stream.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    // `tcpi_min_rtt` is in microseconds, `u32::MAX` while there is no sample; loopback
    // handshakes may take under a microsecond, so 0 is a sample. It came with Linux 4.6: the
    // kernel writes only the fields it knows (libc's struct has newer ones), so it must have
    // written that far.
    let min_rtt_end = std::mem::offset_of!(libc::tcp_info, tcpi_min_rtt) + 4;
    (rc == 0 && len as usize >= min_rtt_end && info.tcpi_min_rtt != u32::MAX)
        .then(|| Duration::from_micros(u64::from(info.tcpi_min_rtt)))
}

/// The handshake RTT of connected TCP socket `stream`: none off Linux.
#[cfg(not(target_os = "linux"))]
pub fn of_socket(_stream: &tokio::net::TcpStream) -> Option<Duration> {
    None
}

/// The socket address of a TCP multiaddr (`/ip4|ip6/../tcp/..`, anything after ignored).
pub fn socket_addr(addr: &Multiaddr) -> Option<SocketAddr> {
    let mut parts = addr.iter();
    let ip = match parts.next()? {
        Protocol::Ip4(ip) => ip.into(),
        Protocol::Ip6(ip) => ip.into(),
        _ => return None,
    };
    match parts.next()? {
        Protocol::Tcp(port) => Some(SocketAddr::new(ip, port)),
        _ => None,
    }
}

/// Handshake samples of new connections, by remote address, shared by the transport (which
/// records) and the swarm task (which takes).
#[derive(Clone, Default)]
pub struct HandshakeRtts {
    samples: Arc<Mutex<HashMap<SocketAddr, (Instant, Duration)>>>,
}

impl HandshakeRtts {
    /// Keeps `rtt` as the handshake sample of the connection with `remote`.
    pub fn record(&self, remote: SocketAddr, rtt: Duration, now: Instant) {
        let Ok(mut samples) = self.samples.lock() else {
            return;
        };
        samples.retain(|_, (at, _)| now.saturating_duration_since(*at) < SAMPLE_TTL);
        if samples.len() >= MAX_SAMPLES && !samples.contains_key(&remote) {
            return;
        }
        samples.insert(remote, (now, rtt));
    }

    /// The sample of the connection with `remote`, which no one else will take.
    pub fn take(&self, remote: SocketAddr) -> Option<Duration> {
        let mut samples = self.samples.lock().ok()?;
        samples.remove(&remote).map(|(_, rtt)| rtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sample_is_taken_once_by_its_remote_address() {
        let rtts = HandshakeRtts::default();
        let a: SocketAddr = "10.0.0.1:4001".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:4001".parse().unwrap();
        let now = Instant::now();
        rtts.record(a, Duration::from_millis(12), now);
        assert_eq!(rtts.take(b), None);
        assert_eq!(rtts.take(a), Some(Duration::from_millis(12)));
        assert_eq!(rtts.take(a), None);
    }

    #[test]
    fn samples_nobody_takes_expire_and_are_bounded() {
        let rtts = HandshakeRtts::default();
        let t0 = Instant::now();
        let addr = |i: usize| SocketAddr::from(([10, 0, (i / 256) as u8, (i % 256) as u8], 4001));
        for i in 0..MAX_SAMPLES + 10 {
            rtts.record(addr(i), Duration::from_millis(1), t0);
        }
        assert_eq!(rtts.take(addr(MAX_SAMPLES + 5)), None, "beyond the bound");
        assert!(rtts.take(addr(0)).is_some());
        // A record after the TTL first drops what expired, so there is room again.
        rtts.record(
            addr(MAX_SAMPLES + 5),
            Duration::from_millis(2),
            t0 + SAMPLE_TTL,
        );
        assert_eq!(rtts.take(addr(1)), None, "expired");
        assert_eq!(
            rtts.take(addr(MAX_SAMPLES + 5)),
            Some(Duration::from_millis(2))
        );
    }

    #[test]
    fn tcp_multiaddrs_give_their_socket_address() {
        let m: Multiaddr =
            "/ip4/10.1.2.3/tcp/4001/p2p/12D3KooWDpJ7As7BWAwRMfu1VU2WCqNjvq387JEYKDBj4kx6nXTN"
                .parse()
                .unwrap();
        assert_eq!(socket_addr(&m), Some("10.1.2.3:4001".parse().unwrap()));
        let m: Multiaddr = "/ip6/::1/tcp/7".parse().unwrap();
        assert_eq!(socket_addr(&m), Some("[::1]:7".parse().unwrap()));
        let m: Multiaddr = "/dns4/example.org/tcp/7".parse().unwrap();
        assert_eq!(socket_addr(&m), None);
    }

    /// The kernel's sample is there as soon as a socket connects, and it is a real RTT: a loopback
    /// handshake is far below a second.
    #[tokio::test]
    #[cfg(target_os = "linux")]
    async fn a_connected_socket_has_the_kernels_handshake_sample() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) =
            tokio::join!(tokio::net::TcpStream::connect(addr), listener.accept());
        let client = client.unwrap();
        let (server, _) = accepted.unwrap();
        let dialled = of_socket(&client).expect("the dialling side has a sample");
        assert!(dialled < Duration::from_secs(1), "{dialled:?}");
        let accepted = of_socket(&server).expect("the listening side has a sample");
        assert!(accepted < Duration::from_secs(1), "{accepted:?}");
    }
}
