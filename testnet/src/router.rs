//! The router: one thread that holds every TUN device of a testbed and delays each packet.
//!
//! The thread sleeps in `ppoll` on all devices plus a stop `eventfd`, with a timeout that ends at
//! the next packet's due time (nanosecond resolution, timer slack set to 1 ns). An IPv4 packet read
//! from host `i`'s device and addressed to host `j` is held in a binary heap keyed by
//! `(due time, sequence number)` and written to `j`'s device at `due = read time + rtt(i, j) / 2`.
//! Since the delay of a pair is constant and reads of one device come in order, per-pair order is
//! preserved. Non-IPv4 packets and packets to addresses outside the testbed are dropped.
//!
//! Optional bandwidth shaping ([`Shaping`], per host and direction) models a serialising link
//! with a drop-tail queue: a packet leaves host `i`'s uplink `len * 8 / rate` after the previous
//! one finished (then travels the latency), and enters host `j` through its downlink the same way.
//! A packet that would wait longer than the queue limit is dropped, as a full router buffer would.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::addr::Subnet;
use crate::error::{Error, Result};
use crate::tun::Tun;

/// A serialising link of a given rate with a drop-tail queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shaping {
    /// Link rate in bits per second (> 0).
    pub bits_per_sec: u64,
    /// A packet that would wait longer than this in the queue is dropped.
    pub max_queue: Duration,
}

impl Shaping {
    /// A link of `mbit` Mbit/s (10^6 bit/s) with a 50 ms queue.
    pub fn mbit(mbit: u64) -> Shaping {
        Shaping {
            bits_per_sec: mbit * 1_000_000,
            max_queue: Duration::from_millis(50),
        }
    }

    /// The time `len` bytes take on the wire.
    fn serialisation(&self, len: usize) -> Duration {
        let nanos = (len as u128 * 8 * 1_000_000_000) / u128::from(self.bits_per_sec.max(1));
        Duration::from_nanos(nanos as u64)
    }
}

/// What the router is told about the testbed.
#[derive(Debug, Clone)]
pub struct RouterConfig {
    /// The addresses of the hosts (host `i` owns the `i`-th device).
    pub subnet: Subnet,
    /// Row-major `n x n` RTTs in ms; a packet from `i` to `j` is held `rtt[i][j] / 2`. A negative
    /// or non-finite entry makes the pair unreachable (its packets are dropped).
    pub rtt_ms: Vec<f64>,
    /// Per-host uplink shaping (what host `i` sends), `None` = unlimited.
    pub uplink: Vec<Option<Shaping>>,
    /// Per-host downlink shaping (what host `i` receives), `None` = unlimited.
    pub downlink: Vec<Option<Shaping>>,
}

/// Counters of a running router (read with [`Router::stats`]).
#[derive(Debug, Default)]
struct Counters {
    forwarded: AtomicU64,
    dropped_no_host: AtomicU64,
    dropped_unreachable: AtomicU64,
    dropped_queue: AtomicU64,
    write_errors: AtomicU64,
    late_total_ns: AtomicU64,
    late_max_ns: AtomicU64,
}

/// A snapshot of the router's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouterStats {
    /// Packets written to their destination device.
    pub forwarded: u64,
    /// Packets dropped because they were not IPv4 or not addressed to a host of the testbed.
    pub dropped_no_host: u64,
    /// Packets dropped because their pair has no latency (unreachable).
    pub dropped_unreachable: u64,
    /// Packets dropped by a full shaping queue.
    pub dropped_queue: u64,
    /// Writes to a device that failed.
    pub write_errors: u64,
    /// Mean of how late packets were written after their due time (the timer's error).
    pub late_mean: Duration,
    /// The latest a packet was written after its due time.
    pub late_max: Duration,
}

/// A running router thread; dropping it stops the thread and closes the devices.
#[derive(Debug)]
pub struct Router {
    stop: OwnedFd,
    thread: Option<JoinHandle<Vec<Tun>>>,
    counters: Arc<Counters>,
}

impl Router {
    /// Starts the router thread over the devices (`tuns[i]` is host `i`).
    pub fn start(tuns: Vec<Tun>, config: RouterConfig) -> Result<Router> {
        let n = tuns.len();
        if config.rtt_ms.len() != n * n || config.uplink.len() != n || config.downlink.len() != n {
            return Err(Error::Invalid(format!(
                "router config is not for {n} hosts ({} RTT entries, {} uplinks, {} downlinks)",
                config.rtt_ms.len(),
                config.uplink.len(),
                config.downlink.len()
            )));
        }
        // SAFETY: eventfd has no memory-safety preconditions.
        let raw = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        if raw < 0 {
            return Err(Error::last_os("create the router's stop eventfd"));
        }
        // SAFETY: raw is a fresh descriptor owned by nothing else.
        let stop = unsafe { OwnedFd::from_raw_fd(raw) };
        let stop_raw = stop.as_raw_fd();
        let counters = Arc::new(Counters::default());
        let state = State::new(tuns, config, counters.clone());
        let thread = std::thread::Builder::new()
            .name("brume-testnet-router".into())
            .spawn(move || state.run(stop_raw))
            .map_err(|source| Error::Os {
                what: "spawn the router thread".into(),
                source,
            })?;
        Ok(Router {
            stop,
            thread: Some(thread),
            counters,
        })
    }

    /// The router's counters so far.
    pub fn stats(&self) -> RouterStats {
        let c = &self.counters;
        let forwarded = c.forwarded.load(Relaxed);
        RouterStats {
            forwarded,
            dropped_no_host: c.dropped_no_host.load(Relaxed),
            dropped_unreachable: c.dropped_unreachable.load(Relaxed),
            dropped_queue: c.dropped_queue.load(Relaxed),
            write_errors: c.write_errors.load(Relaxed),
            late_mean: Duration::from_nanos(c.late_total_ns.load(Relaxed) / forwarded.max(1)),
            late_max: Duration::from_nanos(c.late_max_ns.load(Relaxed)),
        }
    }

    /// Stops the thread (packets still held are dropped) and closes the devices.
    pub fn stop(&mut self) {
        drop(self.stop_keeping_devices());
    }

    /// Stops the thread (packets still held are dropped) and hands back its devices, open, in
    /// host order: a router started again over them (with another RTT matrix, or one more
    /// device) routes for the same namespaces, which keep their interfaces and addresses. This
    /// is how `brume testnet` partitions, heals and adds a node.
    pub fn into_devices(mut self) -> Vec<Tun> {
        self.stop_keeping_devices()
    }

    fn stop_keeping_devices(&mut self) -> Vec<Tun> {
        let Some(thread) = self.thread.take() else {
            return Vec::new();
        };
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a live u64 to our eventfd.
        unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        thread.join().unwrap_or_default()
    }
}

impl Drop for Router {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Which step a held packet waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Arrival at the destination's downlink (after uplink and propagation).
    Arrive,
    /// Delivery after the destination's downlink serialised it.
    Deliver,
}

/// A packet held until `due`.
struct Held {
    due: Instant,
    seq: u64,
    dst: usize,
    stage: Stage,
    packet: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Reversed, so that the max-heap pops the earliest due time first (then the oldest).
    fn cmp(&self, other: &Self) -> Ordering {
        (other.due, other.seq).cmp(&(self.due, self.seq))
    }
}

/// Most packets read from one device before looking at the others and at the heap.
const READ_BURST: usize = 64;

/// The router thread's state.
struct State {
    tuns: Vec<Tun>,
    subnet: Subnet,
    /// Row-major one-way delays; `None` = unreachable.
    one_way: Vec<Option<Duration>>,
    uplink: Vec<Option<Shaping>>,
    downlink: Vec<Option<Shaping>>,
    /// When each host's uplink / downlink finishes sending what it already holds.
    up_free: Vec<Instant>,
    down_free: Vec<Instant>,
    heap: BinaryHeap<Held>,
    seq: u64,
    counters: Arc<Counters>,
}

impl State {
    fn new(tuns: Vec<Tun>, config: RouterConfig, counters: Arc<Counters>) -> State {
        let n = tuns.len();
        let one_way = config
            .rtt_ms
            .iter()
            .map(|&ms| (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64(ms / 2000.0)))
            .collect();
        let now = Instant::now();
        State {
            tuns,
            subnet: config.subnet,
            one_way,
            uplink: config.uplink,
            downlink: config.downlink,
            up_free: vec![now; n],
            down_free: vec![now; n],
            heap: BinaryHeap::new(),
            seq: 0,
            counters,
        }
    }

    fn run(mut self, stop: i32) -> Vec<Tun> {
        // Wake-ups as close to the due time as the kernel's hrtimers allow.
        // SAFETY: prctl(PR_SET_TIMERSLACK) only changes this thread's timer slack.
        unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong) };
        let n = self.tuns.len();
        let mut fds: Vec<libc::pollfd> = self
            .tuns
            .iter()
            .map(|t| t.as_fd().as_raw_fd())
            .chain([stop])
            .map(|fd| libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        let mut buf = vec![0u8; 65_536];
        loop {
            let timeout = self.heap.peek().map(|h| {
                let wait = h.due.saturating_duration_since(Instant::now());
                libc::timespec {
                    tv_sec: wait.as_secs() as libc::time_t,
                    tv_nsec: wait.subsec_nanos() as libc::c_long,
                }
            });
            let timeout_ptr = timeout
                .as_ref()
                .map_or(std::ptr::null(), |t| t as *const libc::timespec);
            // SAFETY: fds is a live array of fds.len() pollfds; the timeout lives for the call.
            let ready = unsafe {
                libc::ppoll(
                    fds.as_mut_ptr(),
                    fds.len() as libc::nfds_t,
                    timeout_ptr,
                    std::ptr::null(),
                )
            };
            if ready < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
                return self.tuns; // Only EFAULT/EINVAL/ENOMEM: nothing sensible is left to do.
            }
            if ready > 0 {
                if fds[n].revents != 0 {
                    return self.tuns;
                }
                for (i, fd) in fds[..n].iter_mut().enumerate() {
                    let revents = std::mem::take(&mut fd.revents);
                    if revents & (libc::POLLERR | libc::POLLHUP | libc::POLLNVAL) != 0 {
                        fd.events = 0; // A broken device: stop polling it.
                    }
                    if revents & libc::POLLIN != 0 {
                        self.read_from(i, &mut buf);
                    }
                }
            }
            self.release_due();
        }
    }

    /// Reads up to [`READ_BURST`] packets from host `src`'s device and schedules them.
    fn read_from(&mut self, src: usize, buf: &mut [u8]) {
        for _ in 0..READ_BURST {
            let len = match self.tuns[src].recv(buf) {
                Ok(len) => len,
                Err(_) => return, // WouldBlock (drained) or a transient error.
            };
            let now = Instant::now();
            self.schedule(src, &buf[..len], now);
        }
    }

    /// Schedules a packet host `src` sent at `now`.
    fn schedule(&mut self, src: usize, packet: &[u8], now: Instant) {
        let c = &self.counters;
        let Some(dst) = ipv4_destination(packet).and_then(|a| self.subnet.host_of(a)) else {
            c.dropped_no_host.fetch_add(1, Relaxed);
            return;
        };
        let n = self.tuns.len();
        if dst >= n {
            c.dropped_no_host.fetch_add(1, Relaxed);
            return;
        }
        let Some(delay) = self.one_way[src * n + dst] else {
            c.dropped_unreachable.fetch_add(1, Relaxed);
            return;
        };
        let departs = match self.uplink[src] {
            None => now,
            Some(shaping) => match shape(&mut self.up_free[src], shaping, now, packet.len()) {
                Some(done) => done,
                None => {
                    c.dropped_queue.fetch_add(1, Relaxed);
                    return;
                }
            },
        };
        self.push(departs + delay, dst, Stage::Arrive, packet.to_vec());
    }

    fn push(&mut self, due: Instant, dst: usize, stage: Stage, packet: Vec<u8>) {
        self.seq += 1;
        self.heap.push(Held {
            due,
            seq: self.seq,
            dst,
            stage,
            packet,
        });
    }

    /// Moves every held packet whose time has come one step on.
    fn release_due(&mut self) {
        loop {
            let now = Instant::now();
            match self.heap.peek() {
                Some(next) if next.due <= now => {}
                _ => return,
            }
            let Some(held) = self.heap.pop() else { return };
            match (held.stage, self.downlink[held.dst]) {
                (Stage::Arrive, Some(shaping)) => {
                    let len = held.packet.len();
                    match shape(&mut self.down_free[held.dst], shaping, held.due, len) {
                        Some(done) => self.push(done, held.dst, Stage::Deliver, held.packet),
                        None => {
                            self.counters.dropped_queue.fetch_add(1, Relaxed);
                        }
                    }
                }
                _ => self.deliver(&held, now),
            }
        }
    }

    fn deliver(&self, held: &Held, now: Instant) {
        let c = &self.counters;
        match self.tuns[held.dst].send(&held.packet) {
            Ok(_) => {
                let late = now.saturating_duration_since(held.due).as_nanos() as u64;
                c.forwarded.fetch_add(1, Relaxed);
                c.late_total_ns.fetch_add(late, Relaxed);
                c.late_max_ns.fetch_max(late, Relaxed);
            }
            Err(_) => {
                c.write_errors.fetch_add(1, Relaxed);
            }
        }
    }
}

/// Puts a packet of `len` bytes that reaches a link at `at` through it: returns when it has been
/// sent, or `None` when it would wait in the queue longer than the limit.
fn shape(free: &mut Instant, shaping: Shaping, at: Instant, len: usize) -> Option<Instant> {
    let start = (*free).max(at);
    if start.duration_since(at) > shaping.max_queue {
        return None;
    }
    *free = start + shaping.serialisation(len);
    Some(*free)
}

/// The destination of an IPv4 packet; `None` for anything else.
fn ipv4_destination(packet: &[u8]) -> Option<Ipv4Addr> {
    if packet.len() < 20 || packet[0] >> 4 != 4 {
        return None;
    }
    Some(Ipv4Addr::new(
        packet[16], packet[17], packet[18], packet[19],
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heap_pops_earliest_then_oldest() {
        let t = Instant::now();
        let mut heap = BinaryHeap::new();
        for (ms, seq) in [(5, 1), (1, 2), (5, 0), (3, 3)] {
            heap.push(Held {
                due: t + Duration::from_millis(ms),
                seq,
                dst: 0,
                stage: Stage::Arrive,
                packet: Vec::new(),
            });
        }
        let order: Vec<u64> = std::iter::from_fn(|| heap.pop().map(|h| h.seq)).collect();
        assert_eq!(order, [2, 3, 0, 1]);
    }

    #[test]
    fn shaping_serialises_and_drops_past_the_queue_limit() {
        let t = Instant::now();
        let link = Shaping {
            bits_per_sec: 8_000_000, // 1 byte per µs
            max_queue: Duration::from_micros(2_500),
        };
        let mut free = t;
        let done: Vec<Option<Instant>> = (0..4).map(|_| shape(&mut free, link, t, 1000)).collect();
        let us = |d: Option<Instant>| d.map(|d| d.duration_since(t).as_micros());
        assert_eq!(us(done[0]), Some(1000));
        assert_eq!(us(done[1]), Some(2000));
        assert_eq!(us(done[2]), Some(3000)); // waited 2 ms: under the 2.5 ms limit
        assert_eq!(us(done[3]), None); // would wait 3 ms: dropped
        assert_eq!(
            Shaping::mbit(100).serialisation(1500),
            Duration::from_micros(120)
        );
    }

    #[test]
    fn only_ipv4_has_a_destination() {
        let mut p = vec![0u8; 20];
        p[0] = 0x45;
        p[16..20].copy_from_slice(&[10, 1, 2, 3]);
        assert_eq!(ipv4_destination(&p), Some(Ipv4Addr::new(10, 1, 2, 3)));
        p[0] = 0x60;
        assert_eq!(ipv4_destination(&p), None);
        assert_eq!(ipv4_destination(&[0x45; 10]), None);
    }
}
