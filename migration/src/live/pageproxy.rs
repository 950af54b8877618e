//! The target's side of the post-copy page relay: a small page proxy between CRIU's lazy-pages
//! daemon and the source's page server, without I/O (fed bytes, returns bytes for each side).
//!
//! Why: the daemon keeps one background request in flight and reads answers strictly in order,
//! so a fault waits behind the whole background answer; capping every request (at `cap` pages)
//! bounds that wait but leaves one capped answer per round trip, a quarter of the link at 2 ms.
//! The proxy keeps the cap on what it forwards and requests cap-sized prefetches ahead: first
//! the rest of the ranges the daemon asked for, then every lazy range of the dump (read from its
//! pagemaps), in address order. The daemon issues a background request only while no fault is
//! outstanding, so a task that keeps faulting would otherwise get one page per round trip; the
//! proxy keeps at most `window` prefetched pages in flight (requested, not yet arrived), so the
//! sweep runs at link rate, and holds what arrived (at most [`CACHE_PAGES`], lowest dropped
//! first) until the daemon asks. Any daemon request whose first page is cached is answered from
//! there, cut at the end of that cached answer; one whose first page is in flight waits for it.
//! (Measured at 100 Mbit/s, 2 ms: when only requests starting where a prefetch started were
//! served, faults at random addresses missed, the window filled with untaken pages and 32 MiB
//! took 35.6 s instead of 7.8 s.) A fault forwarded still waits behind at most the window.
//!
//! Protocol (CRIU's `struct page_server_iov`, little-endian, 32 bytes: u32 command, 4 bytes of
//! padding, u64 page count, u64 address, u64 target id). The server answers in request order: a
//! `GET` with a header (page count possibly lower) and the pages, a close with a 4-byte status.
//! The daemon's close is answered here and never forwarded: closing the page server ends the
//! source's task, which the source does itself once the target said it holds every page.
//! The proxy only ever asks for pages inside ranges the daemon asked for or the dump's lazy
//! ranges (a request outside them fails the server's whole transfer), with the PID of the
//! pagemap image as target id (what the daemon sends and the server's `pstree_item_by_virt`
//! takes), and hands the daemon answers in exactly its
//! own request order, each never longer than what the daemon asked for.

use std::collections::{BTreeMap, HashMap, VecDeque};

use super::replica::Replica;
use crate::PAGE;

/// Bytes of one request or answer header.
pub const REQUEST: usize = 32;
/// The low bits of the command word carry the command, the high ones flags.
const CMD_MASK: u32 = 0xffff;
const PS_IOV_GET: u32 = 7;
const PS_IOV_CLOSE: u32 = 0x1023;
const PS_IOV_FORCE_CLOSE: u32 = 0x1024;
/// Bytes of the page server's answer to a close.
const CLOSE_ANSWER: usize = 4;
/// The command word of the page server's answers: `PS_IOV_ADD_F | PE_PRESENT << 16`
/// (criu/page-xfer.c, `page_server_get_pages`); what the proxy puts on answers of its own.
const SERVER_ANSWER: u32 = 6 | (4 << 16);

/// Why the conversation cannot go on (either peer broke the protocol as the proxy knows it).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ProxyError {
    #[error("the lazy-pages daemon sent an unknown request (command {0:#x})")]
    UnknownCommand(u32),
    #[error("the lazy-pages daemon asked for {pages} pages at {vaddr:#x}")]
    BadRange { pages: u64, vaddr: u64 },
    #[error("the lazy-pages daemon sent a request after closing")]
    AfterClose,
    #[error("the page server sent bytes nobody asked for")]
    Unrequested,
    #[error("the page server answered {got} where {expected} was asked")]
    WrongAnswer { expected: String, got: String },
}

/// What one call produced for each side.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Out {
    pub to_source: Vec<u8>,
    pub to_daemon: Vec<u8>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Iov {
    cmd: u32,
    nr_pages: u64,
    vaddr: u64,
    dst_id: u64,
}

impl Iov {
    fn parse(b: &[u8]) -> Iov {
        let u64_at = |o: usize| {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[o..o + 8]);
            u64::from_le_bytes(w)
        };
        Iov {
            cmd: u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
            nr_pages: u64_at(8),
            vaddr: u64_at(16),
            dst_id: u64_at(24),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.cmd.to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.extend_from_slice(&self.nr_pages.to_le_bytes());
        out.extend_from_slice(&self.vaddr.to_le_bytes());
        out.extend_from_slice(&self.dst_id.to_le_bytes());
    }
}

/// A process's address, the key of prefetched answers.
type Key = (u64, u64);

/// One daemon request, waiting for its answer.
#[derive(Debug)]
enum Slot {
    /// Forwarded to the source; its answer fills the slot.
    Forwarded,
    /// Answered from the prefetch holding its first page (arrived or in flight), cut to
    /// `asked` pages and that prefetch's end; forwarded if the prefetch came back short of it.
    Cached { iov: Iov },
    /// The daemon's close, answered here once nothing asked of the source is outstanding:
    /// the daemon then exits, and the target says `PagesDone`, only after the last byte the
    /// source's page server sends for this move (nothing of the move's page relay may follow
    /// that message on the stream).
    Closing,
    /// The answer, and the pages it gives the daemon.
    Ready {
        bytes: Vec<u8>,
        covers: Option<(u64, u64, u64)>,
    },
}

/// Where the answer to a request sent to the source goes.
#[derive(Debug)]
enum Dest {
    Slot(u64),
    Cache(Key),
}

#[derive(Debug)]
enum Expect {
    Get { iov: Iov },
}

#[derive(Debug)]
struct Sent {
    expect: Expect,
    dest: Dest,
}

/// A prefetch: in flight (`data` empty) or arrived. Entries never overlap.
#[derive(Debug)]
struct Entry {
    cmd: u32,
    pages: u64,
    data: Option<Vec<u8>>,
}

/// The most arrived pages kept (64 MiB): the daemon takes prefetched pages only when it asks
/// for them, which a busy task's faults do at random; beyond this the oldest (lowest) are
/// dropped and fetched again if asked for.
pub const CACHE_PAGES: u64 = 16384;

/// The proxy between one lazy-pages daemon and one page server.
#[derive(Debug)]
pub struct PageProxy {
    cap: u64,
    window: u64,
    daemon_in: Vec<u8>,
    source_in: Vec<u8>,
    /// Daemon requests not yet answered, oldest first; the front one has id `first_slot`.
    slots: VecDeque<Slot>,
    first_slot: u64,
    sent: VecDeque<Sent>,
    cache: BTreeMap<Key, Entry>,
    /// Pages of prefetches requested and not yet arrived: the link's share, not the cache's.
    window_used: u64,
    /// Pages of arrived prefetches held (at most `cache_max` once nothing waits for them).
    cached: u64,
    cache_max: u64,
    /// Ranges the daemon asked for, still to prefetch from: (id, start, end).
    plan: VecDeque<(u64, u64, u64)>,
    /// Every lazy range of the dump, prefetched in address order once `plan` is done: the
    /// daemon asks in the background only while no fault is outstanding, so a busy task would
    /// get its pages one fault per round trip; this keeps the link busy regardless.
    background: VecDeque<(u64, u64, u64)>,
    /// Per process, the address ranges ever requested from the source (merged, start -> end).
    requested: HashMap<u64, BTreeMap<u64, u64>>,
    closed: bool,
    /// Pages the target already holds from tracked rounds ([`super::tracked`]): answered
    /// from here, never asked of the source.
    replica: Replica,
    /// Daemon requests answered from the replica.
    pub replica_hits: u64,
    /// Daemon requests answered from prefetched pages.
    pub hits: u64,
    /// Prefetch requests sent.
    pub prefetches: u64,
}

impl PageProxy {
    /// Forwards at most `cap_pages` (at least one) per daemon request and keeps at most
    /// `window_pages` pages of prefetch requested and not yet arrived (0: no prefetch).
    pub fn new(cap_pages: u64, window_pages: u64) -> Self {
        PageProxy {
            cap: cap_pages.max(1),
            window: window_pages,
            daemon_in: Vec::with_capacity(REQUEST),
            source_in: Vec::new(),
            slots: VecDeque::new(),
            first_slot: 0,
            sent: VecDeque::new(),
            cache: BTreeMap::new(),
            window_used: 0,
            cached: 0,
            cache_max: CACHE_PAGES,
            plan: VecDeque::new(),
            background: VecDeque::new(),
            requested: HashMap::new(),
            closed: false,
            replica: Replica::default(),
            replica_hits: 0,
            hits: 0,
            prefetches: 0,
        }
    }

    /// Also fetches, in the background and in this order, the pages of `ranges` ((target id,
    /// start, end), the dump's lazy ranges: nothing outside them may be asked of the server).
    pub fn with_lazy_ranges(mut self, ranges: impl IntoIterator<Item = (u64, u64, u64)>) -> Self {
        self.background = ranges.into_iter().filter(|r| r.1 < r.2).collect();
        self
    }

    /// Answers from `replica` whatever it holds: those pages are never asked of the source,
    /// by the daemon's requests or the background sweep.
    pub fn with_replica(mut self, replica: Replica) -> Self {
        for (id, start, end) in replica.ranges() {
            self.mark(id, start, end);
        }
        self.replica = replica;
        self
    }

    /// Pages of prefetches requested and not yet arrived (never more than the window).
    pub fn prefetched_pages(&self) -> u64 {
        self.window_used
    }

    /// Pages of arrived prefetches held for the daemon.
    pub fn cached_pages(&self) -> u64 {
        self.cached
    }

    /// Takes what the daemon wrote (any split).
    pub fn from_daemon(&mut self, bytes: &[u8]) -> Result<Out, ProxyError> {
        let mut out = Out::default();
        self.daemon_in.extend_from_slice(bytes);
        let whole = self.daemon_in.len() / REQUEST * REQUEST;
        let reqs: Vec<u8> = self.daemon_in.drain(..whole).collect();
        for r in reqs.chunks_exact(REQUEST) {
            self.request(Iov::parse(r), &mut out)?;
        }
        self.flush(&mut out);
        self.prefetch(&mut out);
        Ok(out)
    }

    /// Takes what the page server wrote (any split).
    pub fn from_source(&mut self, bytes: &[u8]) -> Result<Out, ProxyError> {
        let mut out = Out::default();
        self.source_in.extend_from_slice(bytes);
        let mut at = 0;
        while at < self.source_in.len() {
            let Some(front) = self.sent.front() else {
                return Err(ProxyError::Unrequested);
            };
            let avail = &self.source_in[at..];
            match front.expect {
                Expect::Get { iov } => {
                    if avail.len() < REQUEST {
                        break;
                    }
                    let h = Iov::parse(&avail[..REQUEST]);
                    if h.vaddr != iov.vaddr
                        || h.dst_id != iov.dst_id
                        || h.nr_pages == 0
                        || h.nr_pages > iov.nr_pages
                    {
                        return Err(ProxyError::WrongAnswer {
                            expected: format!("{} pages at {:#x}", iov.nr_pages, iov.vaddr),
                            got: format!("{} pages at {:#x}", h.nr_pages, h.vaddr),
                        });
                    }
                    let len = REQUEST + (h.nr_pages * PAGE) as usize;
                    if avail.len() < len {
                        break;
                    }
                    let answer = avail[..len].to_vec();
                    at += len;
                    let Some(sent) = self.sent.pop_front() else {
                        break;
                    };
                    match sent.dest {
                        Dest::Slot(id) => {
                            self.fill(id, answer, Some((h.dst_id, h.vaddr, h.nr_pages)))
                        }
                        Dest::Cache(key) => self.arrived(key, h, answer),
                    }
                }
            }
        }
        self.source_in.drain(..at);
        self.flush(&mut out);
        self.evict();
        self.prefetch(&mut out);
        Ok(out)
    }

    fn request(&mut self, iov: Iov, out: &mut Out) -> Result<(), ProxyError> {
        if self.closed {
            return Err(ProxyError::AfterClose);
        }
        let id = self.first_slot + self.slots.len() as u64;
        match iov.cmd & CMD_MASK {
            PS_IOV_GET => {
                let end = iov
                    .nr_pages
                    .checked_mul(PAGE)
                    .and_then(|l| iov.vaddr.checked_add(l))
                    .filter(|_| iov.nr_pages > 0)
                    .ok_or(ProxyError::BadRange {
                        pages: iov.nr_pages,
                        vaddr: iov.vaddr,
                    })?;
                if let Some((n, data)) = self.replica.run(iov.dst_id, iov.vaddr, iov.nr_pages) {
                    let mut bytes = Vec::with_capacity(REQUEST + data.len());
                    Iov {
                        cmd: SERVER_ANSWER,
                        nr_pages: n,
                        ..iov
                    }
                    .encode(&mut bytes);
                    bytes.extend_from_slice(&data);
                    self.replica.forget(iov.dst_id, iov.vaddr, n);
                    self.replica_hits += 1;
                    self.slots.push_back(Slot::Ready {
                        bytes,
                        covers: Some((iov.dst_id, iov.vaddr, n)),
                    });
                    if n < iov.nr_pages {
                        self.plan.push_back((iov.dst_id, iov.vaddr + n * PAGE, end));
                    }
                    return Ok(());
                }
                match self.holder(iov.dst_id, iov.vaddr) {
                    Some(_) => {
                        self.hits += 1;
                        self.slots.push_back(Slot::Cached { iov });
                    }
                    None => {
                        let fwd = Iov {
                            nr_pages: iov.nr_pages.min(self.cap),
                            ..iov
                        };
                        fwd.encode(&mut out.to_source);
                        self.mark(iov.dst_id, iov.vaddr, iov.vaddr + fwd.nr_pages * PAGE);
                        self.sent.push_back(Sent {
                            expect: Expect::Get { iov: fwd },
                            dest: Dest::Slot(id),
                        });
                        self.slots.push_back(Slot::Forwarded);
                    }
                }
                self.plan.push_back((iov.dst_id, iov.vaddr, end));
            }
            PS_IOV_CLOSE | PS_IOV_FORCE_CLOSE => {
                // Answered here, in its turn, and never forwarded: the page server ends the
                // source's task when it is closed, which the source does only once it heard
                // that every page is here (`PagesDone`), so a link lost before that leaves the
                // task frozen on the source, to be thawed, and never nowhere.
                self.slots.push_back(Slot::Closing);
                self.closed = true;
                self.plan.clear();
            }
            other => return Err(ProxyError::UnknownCommand(other)),
        }
        Ok(())
    }

    /// Requests prefetches, from the daemon's ranges first, then the background ranges, while
    /// the window has room.
    fn prefetch(&mut self, out: &mut Out) {
        // The sweep also pauses while what arrived fills the cache: the daemon takes pages only
        // as its task touches them, so dropping pages to sweep on would fetch them twice
        // (measured, 512 MiB: 905 MiB on the wire and 515 s).
        while !self.closed
            && self.window_used < self.window
            && self.cached + self.window_used < self.cache_max
        {
            let from_plan = !self.plan.is_empty();
            let queue = if from_plan {
                &self.plan
            } else {
                &self.background
            };
            let Some(&(id, start, end)) = queue.front() else {
                return;
            };
            let gap = self.first_gap(id, start, end);
            let queue = if from_plan {
                &mut self.plan
            } else {
                &mut self.background
            };
            let Some((a, b)) = gap else {
                queue.pop_front();
                continue;
            };
            let room = self.window - self.window_used;
            let pages = ((b - a) / PAGE).min(self.cap);
            if pages == 0 {
                queue.pop_front();
                continue;
            }
            // Whole requests only (each costs a header and a turn of the server): wait for room
            // rather than trickle one-page requests as the daemon takes pages.
            if pages > room && self.window_used > 0 {
                return;
            }
            let pages = pages.min(room);
            if let Some(f) = queue.front_mut() {
                f.1 = a + pages * PAGE;
            }
            let iov = Iov {
                cmd: PS_IOV_GET,
                nr_pages: pages,
                vaddr: a,
                dst_id: id,
            };
            iov.encode(&mut out.to_source);
            self.mark(id, a, a + pages * PAGE);
            self.sent.push_back(Sent {
                expect: Expect::Get { iov },
                dest: Dest::Cache((id, a)),
            });
            self.cache.insert(
                (id, a),
                Entry {
                    cmd: 0,
                    pages,
                    data: None,
                },
            );
            self.window_used += pages;
            self.prefetches += 1;
        }
    }

    fn fill(&mut self, slot: u64, bytes: Vec<u8>, covers: Option<(u64, u64, u64)>) {
        if let Some(s) = slot
            .checked_sub(self.first_slot)
            .and_then(|i| self.slots.get_mut(i as usize))
        {
            *s = Slot::Ready { bytes, covers };
        }
    }

    fn arrived(&mut self, key: Key, h: Iov, answer: Vec<u8>) {
        let Some(e) = self.cache.get_mut(&key) else {
            return;
        };
        if h.nr_pages < e.pages {
            // The server stops at the end of its buffer: the rest was not fetched, so it
            // goes back to the background (it lies in ranges already allowed).
            let (from, to) = (key.1 + h.nr_pages * PAGE, key.1 + e.pages * PAGE);
            self.background.push_front((key.0, from, to));
            let set = self.requested.entry(key.0).or_default();
            unmark(set, from, to);
        }
        let Some(e) = self.cache.get_mut(&key) else {
            return;
        };
        self.window_used -= e.pages;
        self.cached += h.nr_pages;
        e.pages = h.nr_pages;
        e.cmd = h.cmd;
        e.data = Some(answer[REQUEST..].to_vec());
    }

    /// The prefetch holding the page at `vaddr` of process `id`, if any.
    fn holder(&self, id: u64, vaddr: u64) -> Option<Key> {
        let (&k, e) = self.cache.range(..=(id, vaddr)).next_back()?;
        if k.0 != id {
            return None;
        }
        // An address off the pages' grid is the server's to refuse, not ours to answer.
        let on_grid = vaddr.checked_sub(k.1)?.is_multiple_of(PAGE);
        (on_grid && vaddr < k.1.saturating_add(e.pages * PAGE)).then_some(k)
    }

    /// Drops the arrived pages in [from, to) of process `id` from the cache (the daemon has
    /// them and never asks for them again), splitting entries; in-flight ones stay (a page
    /// handed twice is harmless: CRIU's uffd_copy tolerates EEXIST, and the daemon never asks
    /// for a page it has, so such pages only wait for the cache bound).
    fn drop_pages(&mut self, id: u64, from: u64, to: u64) {
        let mut keys: Vec<Key> = self
            .cache
            .range((id, from)..(id, to))
            .map(|(k, _)| *k)
            .collect();
        if let Some(k) = self.holder(id, from) {
            if k.1 < from {
                keys.insert(0, k);
            }
        }
        for k in keys {
            let Some(e) = self.cache.get(&k) else {
                continue;
            };
            if e.data.is_none() {
                continue;
            }
            let Some(e) = self.cache.remove(&k) else {
                continue;
            };
            let Some(data) = e.data else { continue };
            let end = k.1 + e.pages * PAGE;
            self.cached -= e.pages;
            let mut keep = |a: u64, b: u64| {
                if a < b {
                    let o = ((a - k.1) as usize, (b - k.1) as usize);
                    let pages = (b - a) / PAGE;
                    self.cached += pages;
                    self.cache.insert(
                        (id, a),
                        Entry {
                            cmd: e.cmd,
                            pages,
                            data: Some(data[o.0..o.1].to_vec()),
                        },
                    );
                }
            };
            keep(k.1, from.clamp(k.1, end));
            keep(to.clamp(k.1, end), end);
        }
    }

    /// Keeps the cache within its bound, dropping the lowest arrived pages no daemon request
    /// waits for.
    fn evict(&mut self) {
        if self.cached <= self.cache_max {
            return;
        }
        let waiting: Vec<Key> = self
            .slots
            .iter()
            .filter_map(|s| match s {
                Slot::Cached { iov } => self.holder(iov.dst_id, iov.vaddr),
                _ => None,
            })
            .collect();
        let victims: Vec<(Key, u64)> = self
            .cache
            .iter()
            .filter(|(k, e)| e.data.is_some() && !waiting.contains(k))
            .map(|(k, e)| (*k, e.pages))
            .collect();
        for (k, pages) in victims {
            if self.cached <= self.cache_max {
                break;
            }
            self.cache.remove(&k);
            self.cached -= pages;
        }
    }

    /// Hands the daemon every answer that is ready, in its request order.
    fn flush(&mut self, out: &mut Out) {
        loop {
            let covers = match self.slots.front_mut() {
                Some(Slot::Ready { bytes, covers }) => {
                    out.to_daemon.append(bytes);
                    *covers
                }
                Some(Slot::Closing) if self.sent.is_empty() => {
                    out.to_daemon.extend_from_slice(&[0u8; CLOSE_ANSWER]);
                    None
                }
                Some(&mut Slot::Cached { iov }) => {
                    let Some(key) = self.holder(iov.dst_id, iov.vaddr) else {
                        // Its prefetch came back short (or was dropped): ask the source.
                        let fwd = Iov {
                            nr_pages: iov.nr_pages.min(self.cap),
                            ..iov
                        };
                        fwd.encode(&mut out.to_source);
                        self.mark(iov.dst_id, iov.vaddr, iov.vaddr + fwd.nr_pages * PAGE);
                        self.sent.push_back(Sent {
                            expect: Expect::Get { iov: fwd },
                            dest: Dest::Slot(self.first_slot),
                        });
                        if let Some(s) = self.slots.front_mut() {
                            *s = Slot::Forwarded;
                        }
                        return;
                    };
                    let Some(e) = self.cache.get(&key) else {
                        return;
                    };
                    let Some(data) = &e.data else {
                        return;
                    };
                    let skip = (iov.vaddr - key.1) / PAGE;
                    let n = iov.nr_pages.min(e.pages - skip);
                    Iov {
                        cmd: e.cmd,
                        nr_pages: n,
                        vaddr: iov.vaddr,
                        dst_id: iov.dst_id,
                    }
                    .encode(&mut out.to_daemon);
                    out.to_daemon.extend_from_slice(
                        &data[(skip * PAGE) as usize..((skip + n) * PAGE) as usize],
                    );
                    Some((iov.dst_id, iov.vaddr, n))
                }
                _ => return,
            };
            self.slots.pop_front();
            self.first_slot += 1;
            if let Some((id, vaddr, n)) = covers {
                self.delivered(id, vaddr, n);
            }
        }
    }

    /// The daemon has the pages at [vaddr, vaddr + n pages) and never asks for them again.
    fn delivered(&mut self, id: u64, vaddr: u64, n: u64) {
        self.drop_pages(id, vaddr, vaddr.saturating_add(n * PAGE));
    }

    /// The first range inside [start, end) never requested from the source.
    fn first_gap(&self, id: u64, start: u64, end: u64) -> Option<(u64, u64)> {
        let mut a = start;
        let set = self.requested.get(&id);
        if let Some(set) = set {
            if let Some((_, &e)) = set.range(..=a).next_back() {
                a = a.max(e);
            }
        }
        if a >= end {
            return None;
        }
        let b = set
            .and_then(|s| s.range(a..).next())
            .map_or(end, |(&s, _)| s.min(end));
        Some((a, b))
    }

    fn mark(&mut self, id: u64, mut start: u64, mut end: u64) {
        let set = self.requested.entry(id).or_default();
        if let Some((&s, &e)) = set.range(..=start).next_back() {
            if e >= start {
                start = s;
                end = end.max(e);
                set.remove(&s);
            }
        }
        let inside: Vec<(u64, u64)> = set.range(start..=end).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            end = end.max(e);
            set.remove(&s);
        }
        set.insert(start, end);
    }
}

/// Removes [from, to) from a merged range set.
fn unmark(set: &mut BTreeMap<u64, u64>, from: u64, to: u64) {
    let over: Vec<(u64, u64)> = set
        .range(..to)
        .rev()
        .take_while(|(_, &e)| e > from)
        .map(|(&s, &e)| (s, e))
        .collect();
    for (s, e) in over {
        set.remove(&s);
        if s < from {
            set.insert(s, from);
        }
        if e > to {
            set.insert(to, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ANSWER_CMD: u32 = 0x2 | (1 << 16);

    fn get(pages: u64, vaddr: u64, id: u64) -> Vec<u8> {
        let mut v = Vec::new();
        Iov {
            cmd: PS_IOV_GET,
            nr_pages: pages,
            vaddr,
            dst_id: id,
        }
        .encode(&mut v);
        v
    }

    fn close() -> Vec<u8> {
        let mut v = Vec::new();
        Iov {
            cmd: PS_IOV_CLOSE,
            nr_pages: 0,
            vaddr: 0,
            dst_id: 0,
        }
        .encode(&mut v);
        v
    }

    /// The byte of page `p` of process `id` at offset `o` (distinct per page and process).
    fn byte(id: u64, vaddr: u64, o: u64) -> u8 {
        ((vaddr / PAGE).wrapping_mul(31) ^ id.wrapping_mul(7) ^ (o % 251)) as u8
    }

    /// The server's answer: `pages` pages at `vaddr`.
    fn answer(pages: u64, vaddr: u64, id: u64) -> Vec<u8> {
        let mut v = Vec::new();
        Iov {
            cmd: ANSWER_CMD,
            nr_pages: pages,
            vaddr,
            dst_id: id,
        }
        .encode(&mut v);
        for p in 0..pages {
            let va = vaddr + p * PAGE;
            v.extend((0..PAGE).map(|o| byte(id, va, o)));
        }
        v
    }

    /// A fake page server: answers every whole request in order, with at most `limit` pages
    /// per answer, and records what it was asked.
    struct Server {
        inbuf: Vec<u8>,
        limit: u64,
        asked: Vec<Iov>,
    }

    impl Server {
        fn new(limit: u64) -> Self {
            Server {
                inbuf: Vec::new(),
                limit,
                asked: Vec::new(),
            }
        }
        fn take(&mut self, bytes: &[u8]) -> Vec<u8> {
            self.inbuf.extend_from_slice(bytes);
            let whole = self.inbuf.len() / REQUEST * REQUEST;
            let reqs: Vec<u8> = self.inbuf.drain(..whole).collect();
            let mut out = Vec::new();
            for r in reqs.chunks_exact(REQUEST) {
                let iov = Iov::parse(r);
                self.asked.push(iov);
                if iov.cmd & CMD_MASK == PS_IOV_GET {
                    out.extend(answer(iov.nr_pages.min(self.limit), iov.vaddr, iov.dst_id));
                } else {
                    out.extend([0u8; 4]);
                }
            }
            out
        }
        fn hits_only_once(&self) -> bool {
            let mut seen = std::collections::HashSet::new();
            self.asked
                .iter()
                .filter(|i| i.cmd & CMD_MASK == PS_IOV_GET)
                .all(|i| (0..i.nr_pages).all(|n| seen.insert((i.dst_id, i.vaddr + n * PAGE))))
        }
    }

    /// Parses the daemon's side: (header, data) per answer, or 4-byte statuses.
    fn answers(mut b: &[u8], closes_at: &[usize]) -> Vec<(Iov, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            if closes_at.contains(&v.len()) {
                v.push((
                    Iov {
                        cmd: 0,
                        nr_pages: 0,
                        vaddr: 0,
                        dst_id: 0,
                    },
                    b[..4].to_vec(),
                ));
                b = &b[4..];
                continue;
            }
            let h = Iov::parse(&b[..REQUEST]);
            let len = REQUEST + (h.nr_pages * PAGE) as usize;
            v.push((h, b[REQUEST..len].to_vec()));
            b = &b[len..];
        }
        v
    }

    fn check_data(h: &Iov, data: &[u8]) {
        assert_eq!(data.len() as u64, h.nr_pages * PAGE);
        for p in 0..h.nr_pages {
            let va = h.vaddr + p * PAGE;
            for o in [0u64, 1, 4095] {
                assert_eq!(
                    data[(p * PAGE + o) as usize],
                    byte(h.dst_id, va, o),
                    "page {va:#x}"
                );
            }
        }
    }

    /// Runs a request through proxy and server with reads split into `split`-byte pieces.
    fn round(p: &mut PageProxy, s: &mut Server, req: &[u8], split: usize) -> Vec<u8> {
        let mut to_daemon = Vec::new();
        let mut to_source = Vec::new();
        for piece in req.chunks(split) {
            let o = p.from_daemon(piece).unwrap();
            to_daemon.extend(o.to_daemon);
            to_source.extend(o.to_source);
        }
        // Bounded: each pass answers what was asked; the proxy only asks for more within the
        // window.
        for _ in 0..1000 {
            if to_source.is_empty() {
                break;
            }
            let from_server = s.take(&std::mem::take(&mut to_source));
            for piece in from_server.chunks(split) {
                let o = p.from_source(piece).unwrap();
                to_daemon.extend(o.to_daemon);
                to_source.extend(o.to_source);
            }
        }
        to_daemon
    }

    #[test]
    fn a_big_request_is_capped_and_the_rest_prefetched_then_answered_from_the_cache() {
        for split in [1, 7, 32, 4097, 1 << 20] {
            let mut p = PageProxy::new(4, 8);
            let mut s = Server::new(u64::MAX);
            let base = 0x10_0000;
            // Like the daemon: ask for 16, get 4, ask for the rest where the answer ended.
            let mut at = base;
            let end = base + 16 * PAGE;
            while at < end {
                let left = (end - at) / PAGE;
                let got = round(&mut p, &mut s, &get(left, at, 3), split);
                let a = answers(&got, &[]);
                assert_eq!(a.len(), 1);
                let (h, data) = &a[0];
                assert_eq!((h.vaddr, h.dst_id, h.cmd), (at, 3, ANSWER_CMD));
                assert!(h.nr_pages <= left && h.nr_pages <= 4);
                check_data(h, data);
                at += h.nr_pages * PAGE;
            }
            let pages: u64 = s.asked.iter().map(|i| i.nr_pages).sum();
            assert_eq!(pages, 16, "every page asked of the server once");
            assert!(s
                .asked
                .iter()
                .all(|i| i.vaddr >= base && i.vaddr + i.nr_pages * PAGE <= end));
            assert_eq!(p.hits, 3);
            assert_eq!(p.prefetched_pages(), 0);
            assert!(p.cache.is_empty());
        }
    }

    #[test]
    fn the_window_bounds_what_is_prefetched_ahead() {
        let mut p = PageProxy::new(2, 4);
        let o = p.from_daemon(&get(100, 0x4000_0000, 1)).unwrap();
        assert_eq!(o.to_source.len(), 3 * REQUEST, "forward 2 + prefetch 2 + 2");
        assert!(o.to_daemon.is_empty());
        assert_eq!(p.prefetched_pages(), 4);
    }

    #[test]
    fn answers_keep_the_daemon_order_and_partial_answers_are_handed_on() {
        let mut p = PageProxy::new(4, 8);
        let mut s = Server::new(3);
        // A background request and a fault and a close, all at once.
        let mut req = get(8, 0x1000_0000, 1);
        req.extend(get(1, 0x2000_0000, 1));
        let got = round(&mut p, &mut s, &req, 13);
        let a = answers(&got, &[]);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].0.vaddr, a[0].0.nr_pages), (0x1000_0000, 3));
        assert_eq!((a[1].0.vaddr, a[1].0.nr_pages), (0x2000_0000, 1));
        check_data(&a[0].0, &a[0].1);
        check_data(&a[1].0, &a[1].1);
        // The daemon asks for the rest: 5 pages at +3, not cached (the forwarded answer was
        // short), so forwarded; its answer (+3..+6) drops +4 and +5 from the prefetch at +4.
        let got = round(&mut p, &mut s, &get(5, 0x1000_0000 + 3 * PAGE, 1), 5);
        let a = answers(&got, &[]);
        assert_eq!((a[0].0.vaddr, a[0].0.nr_pages), (0x1000_0000 + 3 * PAGE, 3));
        check_data(&a[0].0, &a[0].1);
        // The prefetch at +4 came back short (3 of 4): its last page was fetched on its own.
        assert_eq!((p.prefetched_pages(), p.cached_pages()), (0, 2));
        let keys: Vec<u64> = p.cache.keys().map(|k| k.1 - 0x1000_0000).collect();
        assert_eq!(keys, vec![6 * PAGE, 7 * PAGE]);
        // A request reaching past a cached chunk is cut at the chunk's end.
        let asked = s.asked.len();
        let got = round(&mut p, &mut s, &get(2, 0x1000_0000 + 6 * PAGE, 1), 7);
        let a = answers(&got, &[]);
        assert_eq!((a[0].0.vaddr, a[0].0.nr_pages), (0x1000_0000 + 6 * PAGE, 1));
        check_data(&a[0].0, &a[0].1);
        assert_eq!(s.asked.len(), asked, "answered from the cache");
        let got = round(&mut p, &mut s, &close(), 32);
        assert_eq!(got, vec![0u8; 4]);
        assert!(
            s.asked.iter().all(|i| i.cmd & CMD_MASK == PS_IOV_GET),
            "the close reached the server"
        );
        assert_eq!(p.from_daemon(&get(1, 0, 1)), Err(ProxyError::AfterClose));
    }

    #[test]
    fn a_cached_answer_is_cut_to_what_the_daemon_asks() {
        let mut p = PageProxy::new(4, 8);
        let mut s = Server::new(u64::MAX);
        let base = 0x7000_0000;
        let got = round(&mut p, &mut s, &get(12, base, 2), 4096);
        assert_eq!(answers(&got, &[])[0].0.nr_pages, 4);
        // A fault took page +6; the daemon asks for +4..+6 only.
        let got = round(&mut p, &mut s, &get(2, base + 4 * PAGE, 2), 4096);
        let a = answers(&got, &[]);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].0.vaddr, a[0].0.nr_pages, a[0].0.cmd),
            (base + 4 * PAGE, 2, ANSWER_CMD)
        );
        check_data(&a[0].0, &a[0].1);
        assert_eq!(p.hits, 1);
    }

    #[test]
    fn a_hit_waits_for_an_earlier_forwarded_answer() {
        let mut p = PageProxy::new(1, 4);
        let base = 0x5000_0000;
        let o = p.from_daemon(&get(3, base, 1)).unwrap();
        assert_eq!(o.to_source.len(), 3 * REQUEST);
        // The server answers the prefetches' bytes only after the forwarded one: feed it all
        // but the first answer's last byte, then the daemon asks for the prefetched page.
        let mut all = answer(1, base, 1);
        all.extend(answer(1, base + PAGE, 1));
        all.extend(answer(1, base + 2 * PAGE, 1));
        let first = REQUEST + PAGE as usize;
        let o = p.from_source(&all[..first - 1]).unwrap();
        assert!(o.to_daemon.is_empty());
        // Not yet asked by the daemon: nothing to hand over even with the prefetches here.
        let o = p.from_source(&all[first - 1..]).unwrap();
        assert_eq!(o.to_daemon.len(), first);
        let o = p.from_daemon(&get(2, base + PAGE, 1)).unwrap();
        assert!(o.to_source.is_empty(), "answered from the cache");
        let a = answers(&o.to_daemon, &[]);
        assert_eq!((a[0].0.vaddr, a[0].0.nr_pages), (base + PAGE, 1));
        let o = p.from_daemon(&get(1, base + 2 * PAGE, 1)).unwrap();
        assert_eq!(answers(&o.to_daemon, &[])[0].0.vaddr, base + 2 * PAGE);
        assert_eq!(p.hits, 2);
    }

    #[test]
    fn a_close_is_answered_here_in_its_turn_and_never_reaches_the_source() {
        let mut p = PageProxy::new(1, 2);
        let base = 0x6000_0000;
        let o = p.from_daemon(&get(3, base, 1)).unwrap();
        assert_eq!(o.to_source.len(), 3 * REQUEST);
        let o = p.from_daemon(&close()).unwrap();
        assert!(o.to_source.is_empty(), "the close went to the source");
        assert!(
            o.to_daemon.is_empty(),
            "the close was answered before the fault"
        );
        // The fault's answer goes to the daemon; the close waits while the prefetches are out,
        // so that no byte of the source's follows the daemon's exit.
        let mut to_daemon = Vec::new();
        for piece in answer(1, base, 1).chunks(3) {
            let o = p.from_source(piece).unwrap();
            assert!(o.to_source.is_empty(), "asked the source after the close");
            to_daemon.extend(o.to_daemon);
        }
        assert_eq!(answers(&to_daemon, &[]).len(), 1, "only the fault's answer");
        let mut rest = answer(1, base + PAGE, 1);
        rest.extend(answer(1, base + 2 * PAGE, 1));
        let (last, before) = rest.split_last().unwrap();
        let o = p.from_source(before).unwrap();
        assert!(
            o.to_daemon.is_empty(),
            "the close was answered with a prefetch out"
        );
        let o = p.from_source(&[*last]).unwrap();
        assert!(o.to_source.is_empty(), "asked the source after the close");
        to_daemon.extend(o.to_daemon);
        let a = answers(&to_daemon, &[1]);
        assert_eq!(a.len(), 2);
        assert_eq!(a[0].0.vaddr, base);
        assert_eq!(a[1].1, vec![0u8; 4]);
    }

    #[test]
    fn bad_answers_and_requests_are_errors() {
        let mut p = PageProxy::new(4, 0);
        assert_eq!(p.from_source(&[0]), Err(ProxyError::Unrequested));
        let mut p = PageProxy::new(4, 0);
        p.from_daemon(&get(1, 0x1000, 1)).unwrap();
        assert!(matches!(
            p.from_source(&answer(2, 0x1000, 1)),
            Err(ProxyError::WrongAnswer { .. })
        ));
        let mut p = PageProxy::new(4, 0);
        assert_eq!(
            p.from_daemon(&get(0, 0x1000, 1)),
            Err(ProxyError::BadRange {
                pages: 0,
                vaddr: 0x1000
            })
        );
        let mut r = get(1, 0, 1);
        r[0] = 9;
        assert_eq!(
            PageProxy::new(4, 4).from_daemon(&r),
            Err(ProxyError::UnknownCommand(9))
        );
    }

    /// Runs the proxy alone until the server has nothing more to answer.
    fn settle(p: &mut PageProxy, s: &mut Server, mut to_source: Vec<u8>) -> Vec<u8> {
        let mut to_daemon = Vec::new();
        for _ in 0..10_000 {
            if to_source.is_empty() {
                break;
            }
            let from_server = s.take(&std::mem::take(&mut to_source));
            for piece in from_server.chunks(1000) {
                let o = p.from_source(piece).unwrap();
                to_daemon.extend(o.to_daemon);
                to_source.extend(o.to_source);
            }
        }
        to_daemon
    }

    fn inside(i: &Iov, ranges: &[(u64, u64, u64)]) -> bool {
        let end = i.vaddr + i.nr_pages * PAGE;
        ranges
            .iter()
            .any(|&(id, a, b)| id == i.dst_id && a <= i.vaddr && end <= b)
    }

    #[test]
    fn every_lazy_page_is_fetched_in_the_background_within_the_ranges_and_the_window() {
        let ranges = [
            (1u64 << 8 | 1, 0x1000_0000, 0x1000_0000 + 10 * PAGE),
            (1 << 8 | 1, 0x2000_0000, 0x2000_0000 + 3 * PAGE),
            (2 << 8 | 1, 0x1000_0000, 0x1000_0000 + 5 * PAGE),
        ];
        let mut p = PageProxy::new(4, 8).with_lazy_ranges(ranges);
        let mut s = Server::new(u64::MAX);
        // A fault somewhere starts the conversation.
        let got = round(&mut p, &mut s, &get(1, 0x2000_0000 + PAGE, 1 << 8 | 1), 32);
        let a = answers(&got, &[]);
        assert_eq!(a.len(), 1);
        check_data(&a[0].0, &a[0].1);
        assert!(s.asked.iter().all(|i| inside(i, &ranges)));
        assert!(s.asked.iter().all(|i| i.nr_pages <= 4));
        // The window bounds pages in flight only: the whole dump arrived in the background.
        assert_eq!(p.prefetched_pages(), 0);
        assert_eq!(p.cached_pages(), 17);
        let fetched: u64 = s.asked.iter().map(|i| i.nr_pages).sum();
        assert_eq!(fetched, 18);
        // The daemon's background sweep, like CRIU's: the first missing range, then the rest.
        let mut daemon_got = vec![(1 << 8 | 1, 0x2000_0000 + PAGE)];
        let mut to_ask: Vec<(u64, u64, u64)> = vec![
            (1 << 8 | 1, 0x1000_0000, 0x1000_0000 + 10 * PAGE),
            (1 << 8 | 1, 0x2000_0000, 0x2000_0000 + PAGE),
            (1 << 8 | 1, 0x2000_0000 + 2 * PAGE, 0x2000_0000 + 3 * PAGE),
            (2 << 8 | 1, 0x1000_0000, 0x1000_0000 + 5 * PAGE),
        ];
        for _ in 0..100 {
            let Some(&(id, a, b)) = to_ask.first() else {
                break;
            };
            let o = p.from_daemon(&get((b - a) / PAGE, a, id)).unwrap();
            let mut got = o.to_daemon;
            got.extend(settle(&mut p, &mut s, o.to_source));
            let ans = answers(&got, &[]);
            assert_eq!(ans.len(), 1, "one answer per request");
            let (h, data) = &ans[0];
            assert_eq!((h.dst_id, h.vaddr), (id, a));
            assert!(h.nr_pages >= 1 && a + h.nr_pages * PAGE <= b);
            check_data(h, data);
            for n in 0..h.nr_pages {
                daemon_got.push((id, a + n * PAGE));
            }
            to_ask[0].1 += h.nr_pages * PAGE;
            if to_ask[0].1 == b {
                to_ask.remove(0);
            }
            assert!(p.prefetched_pages() <= 8);
        }
        assert!(to_ask.is_empty());
        assert_eq!(daemon_got.len(), 18);
        assert!(s.asked.iter().all(|i| inside(i, &ranges)));
        assert!(s.hits_only_once(), "no page fetched twice");
        assert!(p.hits > 0);
        assert_eq!(p.prefetched_pages(), 0);
        assert!(p.cache.is_empty());
    }

    #[test]
    fn a_fault_inside_a_cached_chunk_is_answered_from_the_cache() {
        let base = 0x3000_0000;
        let ranges = [(1u64, base, base + 8 * PAGE)];
        let mut p = PageProxy::new(2, 4).with_lazy_ranges(ranges);
        let mut s = Server::new(u64::MAX);
        // A fault at +5 is forwarded; the background takes the rest, 4 pages in flight at most.
        let got = round(&mut p, &mut s, &get(1, base + 5 * PAGE, 1), 32);
        assert_eq!(answers(&got, &[]).len(), 1);
        let asked: Vec<(u64, u64)> = s
            .asked
            .iter()
            .map(|i| (i.vaddr - base, i.nr_pages))
            .collect();
        assert_eq!(
            asked,
            vec![
                (5 * PAGE, 1),
                (0, 2),
                (2 * PAGE, 2),
                (4 * PAGE, 1),
                (6 * PAGE, 2)
            ]
        );
        assert_eq!((p.prefetched_pages(), p.cached_pages()), (0, 7));
        // A fault at +1, inside the chunk at +0: answered from it, cut at its end.
        let o = p.from_daemon(&get(3, base + PAGE, 1)).unwrap();
        assert!(o.to_source.is_empty(), "not forwarded");
        let a = answers(&o.to_daemon, &[]);
        assert_eq!(a.len(), 1);
        assert_eq!(
            (a[0].0.vaddr, a[0].0.nr_pages, a[0].0.dst_id, a[0].0.cmd),
            (base + PAGE, 1, 1, ANSWER_CMD)
        );
        check_data(&a[0].0, &a[0].1);
        // The page handed over leaves the cache; the rest of its chunk stays.
        assert_eq!(p.cached_pages(), 6);
        assert!(p.cache.contains_key(&(1, base)));
        assert!(p.holder(1, base + PAGE).is_none());
        assert_eq!(p.hits, 1);
    }

    #[test]
    fn a_fault_inside_an_in_flight_prefetch_waits_for_it() {
        let base = 0x3000_0000;
        let mut p = PageProxy::new(4, 8).with_lazy_ranges([(1, base, base + 4 * PAGE)]);
        let mut s = Server::new(u64::MAX);
        let o = p.from_daemon(&get(1, 0x9000_0000, 1)).unwrap();
        assert_eq!(o.to_source.len(), 2 * REQUEST, "the fault and one prefetch");
        let to_source = o.to_source;
        let o = p.from_daemon(&get(1, base + 2 * PAGE, 1)).unwrap();
        assert!(o.to_source.is_empty(), "not forwarded again");
        assert!(o.to_daemon.is_empty());
        let from_server = s.take(&to_source);
        let mut to_daemon = Vec::new();
        for piece in from_server.chunks(100) {
            to_daemon.extend(p.from_source(piece).unwrap().to_daemon);
        }
        let a = answers(&to_daemon, &[]);
        assert_eq!(a.len(), 2);
        assert_eq!((a[0].0.vaddr, a[0].0.nr_pages), (0x9000_0000, 1));
        assert_eq!((a[1].0.vaddr, a[1].0.nr_pages), (base + 2 * PAGE, 1));
        check_data(&a[1].0, &a[1].1);
        assert_eq!(s.asked.len(), 2);
        assert_eq!(p.hits, 1);
    }

    #[test]
    fn the_sweep_pauses_while_the_cache_is_full_and_goes_on_as_the_daemon_takes_pages() {
        let base = 0x3000_0000;
        let mut p = PageProxy::new(4, 8).with_lazy_ranges([(1, base, base + 32 * PAGE)]);
        p.cache_max = 8;
        let mut s = Server::new(u64::MAX);
        round(&mut p, &mut s, &get(1, 0x9000_0000, 1), 4096);
        let fetched = |s: &Server| -> u64 { s.asked.iter().map(|i| i.nr_pages).sum() };
        assert_eq!(fetched(&s), 1 + 8, "the sweep stops at the cache's bound");
        assert_eq!(p.cached_pages(), 8);
        assert!(
            p.cache.keys().all(|k| k.1 < base + 8 * PAGE),
            "nothing dropped: the lowest pages, which the daemon wants next, are kept"
        );
        let got = round(&mut p, &mut s, &get(4, base, 1), 4096);
        let a = answers(&got, &[]);
        assert_eq!((a[0].0.vaddr, a[0].0.nr_pages), (base, 4));
        check_data(&a[0].0, &a[0].1);
        assert!(fetched(&s) > 1 + 8, "taking pages lets the sweep go on");
        assert!(p.cached_pages() <= 8);
        let mut asked: Vec<u64> = s.asked.iter().map(|i| i.vaddr).collect();
        let n = asked.len();
        asked.sort_unstable();
        asked.dedup();
        assert_eq!(asked.len(), n, "no page is fetched twice");
    }

    #[test]
    fn a_short_background_answer_fetches_the_rest_later() {
        let base = 0x3000_0000;
        let mut p = PageProxy::new(4, 8).with_lazy_ranges([(1, base, base + 4 * PAGE)]);
        let mut s = Server::new(3);
        round(&mut p, &mut s, &get(1, 0x9000_0000, 1), 32);
        let asked: Vec<(u64, u64)> = s.asked.iter().map(|i| (i.vaddr, i.nr_pages)).collect();
        assert_eq!(
            asked,
            vec![(0x9000_0000, 1), (base, 4), (base + 3 * PAGE, 1)]
        );
        assert_eq!((p.prefetched_pages(), p.cached_pages()), (0, 4));
    }

    #[test]
    fn unmark_splits_merged_ranges() {
        let mut set = BTreeMap::from([(0u64, 10u64), (20, 30)]);
        unmark(&mut set, 5, 25);
        assert_eq!(set, BTreeMap::from([(0, 5), (25, 30)]));
        unmark(&mut set, 26, 27);
        assert_eq!(set, BTreeMap::from([(0, 5), (25, 26), (27, 30)]));
    }

    #[test]
    fn pages_the_replica_holds_are_answered_here_and_never_asked_of_the_source() {
        let base = 0x40_0000;
        // The replica holds pages 0..8 and 12..16 of process 3, with the server's bytes.
        let mut replica = Replica::default();
        let held = |from: u64, n: u64| -> Vec<u8> {
            (0..n)
                .flat_map(|p| (0..PAGE).map(move |o| byte(3, base + (from + p) * PAGE, o)))
                .collect()
        };
        replica
            .insert(
                3,
                &[(base, 8), (base + 12 * PAGE, 4)],
                &[held(0, 8), held(12, 4)].concat(),
            )
            .unwrap();
        let mut p = PageProxy::new(4, 8)
            .with_replica(replica)
            .with_lazy_ranges([(3, base, base + 16 * PAGE)]);
        let mut s = Server::new(u64::MAX);
        // Like the daemon: 16 pages from the start, then the rest where each answer ended.
        let mut at = base;
        let end = base + 16 * PAGE;
        let mut got_pages = 0;
        while at < end {
            let left = (end - at) / PAGE;
            let a = answers(&round(&mut p, &mut s, &get(left, at, 3), 7), &[]);
            assert_eq!(a.len(), 1);
            let (h, data) = &a[0];
            assert_eq!((h.vaddr, h.dst_id), (at, 3));
            check_data(h, data);
            at += h.nr_pages * PAGE;
            got_pages += h.nr_pages;
        }
        assert_eq!(got_pages, 16);
        assert_eq!(
            p.replica_hits, 2,
            "the two held runs answered from the replica"
        );
        // The source was asked for pages 8..12 only, each once.
        let asked: u64 = s
            .asked
            .iter()
            .filter(|i| i.cmd & CMD_MASK == PS_IOV_GET)
            .map(|i| {
                assert!(
                    i.vaddr >= base + 8 * PAGE && i.vaddr + i.nr_pages * PAGE <= base + 12 * PAGE,
                    "asked {} pages at {:#x}",
                    i.nr_pages,
                    i.vaddr
                );
                i.nr_pages
            })
            .sum();
        assert_eq!(asked, 4);
        assert!(s.hits_only_once());
    }
}
