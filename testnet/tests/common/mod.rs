//! Helpers of the testbed tests: a TCP echo server inside a host, RTT samples (TCP and ICMP), the
//! one-sided delay check, and a bounded wait for a condition. Every loop here is bounded in count
//! and in time; the time bounds are liveness bounds (generous, for a loaded two-core machine), never
//! claims about speed.

#![allow(dead_code)] // Each test file uses a different part.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use brume_testnet::Testbed;

/// No server here lives longer than this, whatever the test does (a bound on leaked threads,
/// far beyond any test's run time on a loaded machine).
const SERVER_LIFETIME: Duration = Duration::from_secs(900);

/// How long a socket operation or an awaited condition may take before the test fails: a
/// liveness bound, not a speed claim.
pub const PATIENCE: Duration = Duration::from_secs(60);

/// A TCP server inside one host that echoes (or swallows) what it reads; stopped on drop.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An echo server on host `host`'s testbed address.
pub fn echo_server(bed: &Testbed, host: usize) -> Server {
    server(bed, host, bed.addr(host).into(), true)
}

/// A server on `ip` inside host `host`; echoes when `echo`, else only reads.
pub fn server(bed: &Testbed, host: usize, ip: std::net::IpAddr, echo: bool) -> Server {
    let listener = bed
        .run_in(host, || TcpListener::bind((ip, 0)))
        .expect("enter host")
        .expect("bind inside host");
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let thread = std::thread::spawn(move || {
        let deadline = Instant::now() + SERVER_LIFETIME;
        while !flag.load(Ordering::Relaxed) && Instant::now() < deadline {
            match listener.accept() {
                Ok((stream, _)) => {
                    std::thread::spawn(move || serve(stream, echo));
                }
                Err(_) => std::thread::sleep(Duration::from_millis(1)),
            }
        }
    });
    Server {
        addr,
        stop,
        thread: Some(thread),
    }
}

fn serve(mut stream: TcpStream, echo: bool) {
    let _ = stream.set_nonblocking(false);
    let _ = stream.set_nodelay(true);
    let _ = stream.set_read_timeout(Some(PATIENCE));
    let deadline = Instant::now() + SERVER_LIFETIME;
    let mut buf = vec![0u8; 64 * 1024];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) if echo => {
                if stream.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Ok(_) => {}
        }
    }
}

/// `samples` TCP connect times (SYN to SYN-ACK: one round trip) from host `from` to `to`.
pub fn connect_rtts(bed: &Testbed, from: usize, to: SocketAddr, samples: usize) -> Vec<Duration> {
    (0..samples)
        .map(|_| {
            bed.run_in(from, || {
                let t = Instant::now();
                let stream = TcpStream::connect_timeout(&to, PATIENCE);
                let elapsed = t.elapsed();
                stream.expect("connect");
                elapsed
            })
            .expect("enter host")
        })
        .collect()
}

/// `samples` request/response times of a 32-byte message over one connection from host `from`
/// to the echo server at `to` (after one unmeasured warm-up exchange).
pub fn echo_rtts(bed: &Testbed, from: usize, to: SocketAddr, samples: usize) -> Vec<Duration> {
    let mut stream = bed
        .run_in(from, || TcpStream::connect_timeout(&to, PATIENCE))
        .expect("enter host")
        .expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(PATIENCE)).unwrap();
    let mut reply = [0u8; 32];
    (0..=samples)
        .map(|k| {
            let msg = [k as u8; 32];
            let t = Instant::now();
            stream.write_all(&msg).expect("send");
            stream.read_exact(&mut reply).expect("echo");
            let elapsed = t.elapsed();
            assert_eq!(reply, msg);
            elapsed
        })
        .skip(1)
        .collect()
}

/// The median, in ms.
pub fn median_ms(samples: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms[ms.len() / 2]
}

/// What a measured round trip may fall short of the matrix by: the router converts each half of
/// the RTT to nanoseconds (rounding to the nearest one). Nothing else can make a round trip
/// shorter; a loaded machine only makes it longer.
pub const ROUNDING_MS: f64 = 1e-5;

/// Asserts that no sample is shorter than `matrix_ms`: the router holds each direction half the
/// matrix's RTT after it has read the packet, and the sample's clock started before the packet
/// was sent, so a shorter sample is a router bug. Only this side is checked: how much longer a
/// sample is depends on the machine's load (`brume bench` and `--nocapture` show the figures).
pub fn assert_never_below(what: &str, samples: &[Duration], matrix_ms: f64) {
    let ms: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    let min = ms.iter().copied().fold(f64::INFINITY, f64::min);
    assert!(!ms.is_empty(), "{what}: no samples");
    assert!(
        min >= matrix_ms - ROUNDING_MS,
        "{what}: a round trip of {min:.4} ms is shorter than the matrix's {matrix_ms} ms \
         (samples {ms:.3?})"
    );
}

/// Polls `probe` (every 10 ms) until it says the condition holds, at most [`PATIENCE`]; fails
/// with `what` and the last state `probe` described.
pub fn wait_for(what: &str, mut probe: impl FnMut() -> (bool, String)) {
    let started = Instant::now();
    loop {
        let (done, state) = probe();
        if done {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "waited {PATIENCE:?} for {what}; last seen: {state}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `samples` ICMP echo round trips from host `from` to address `to` (a raw socket opened inside
/// `from`; the kernel of the host at `to` answers). Each is timed from just before the request
/// is sent to just after its reply is read.
pub fn icmp_rtts(
    bed: &Testbed,
    from: usize,
    to: std::net::Ipv4Addr,
    samples: u16,
) -> Vec<Duration> {
    bed.run_in(from, || {
        let sock = IcmpSocket::open().expect("open a raw ICMP socket (needs root)");
        (1..=samples).map(|seq| sock.echo(to, seq)).collect()
    })
    .expect("enter host")
}

/// A raw IPv4 ICMP socket (closed on drop).
struct IcmpSocket(std::os::fd::OwnedFd);

impl IcmpSocket {
    fn open() -> std::io::Result<IcmpSocket> {
        use std::os::fd::FromRawFd;
        // SAFETY: socket(2) has no memory preconditions; a valid fd is owned from here on.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor nothing else owns.
        let sock = IcmpSocket(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) });
        let timeout = libc::timeval {
            tv_sec: PATIENCE.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: the option value is a timeval that lives for the call.
        let rc = unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sock)
    }

    /// Sends echo request `seq` to `to` and waits for its reply (other ICMP is skipped).
    fn echo(&self, to: std::net::Ipv4Addr, seq: u16) -> Duration {
        use std::os::fd::AsRawFd;
        let id = (std::process::id() & 0xffff) as u16;
        let mut req = [0u8; 40];
        req[0] = 8; // echo request, code 0
        req[4..6].copy_from_slice(&id.to_be_bytes());
        req[6..8].copy_from_slice(&seq.to_be_bytes());
        for (k, b) in req[8..].iter_mut().enumerate() {
            *b = k as u8;
        }
        let sum = checksum(&req);
        req[2..4].copy_from_slice(&sum.to_be_bytes());
        let dst = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(to).to_be(),
            },
            sin_zero: [0; 8],
        };
        let started = Instant::now();
        // SAFETY: req and dst live for the call; the lengths are theirs.
        let sent = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                req.as_ptr().cast(),
                req.len(),
                0,
                (&dst as *const libc::sockaddr_in).cast(),
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(
            sent,
            req.len() as isize,
            "send an ICMP echo request: {}",
            std::io::Error::last_os_error()
        );
        let mut buf = [0u8; 1500];
        loop {
            // SAFETY: buf lives for the call and its length is given.
            let n =
                unsafe { libc::recv(self.0.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            let elapsed = started.elapsed();
            assert!(
                n > 0,
                "no ICMP echo reply within {PATIENCE:?}: {}",
                std::io::Error::last_os_error()
            );
            // A raw socket reads the IP header too.
            let packet = &buf[..n as usize];
            let icmp = &packet[usize::from(packet[0] & 0x0f) * 4..];
            let is_ours = icmp.len() >= 8
                && icmp[0] == 0
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes();
            if is_ours {
                return elapsed;
            }
        }
    }
}

/// The Internet checksum (RFC 1071) of `bytes`.
fn checksum(bytes: &[u8]) -> u16 {
    let mut sum: u32 = bytes
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
