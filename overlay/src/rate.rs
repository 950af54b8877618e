//! Requests per second per peer: a token bucket for each peer, in a table of bounded size.
//!
//! The caps of [`crate::limits`] bound what a peer holds *at once*; they do not stop a peer that
//! opens a stream, lets it be refused or answered, and opens the next in a tight loop, making the
//! node parse, verify signatures and log for every one. A bucket of `burst` tokens, refilled one
//! token every `every`, lets a peer's honest bursts through (an initiator asks for every instance
//! of a service at once) and refuses the loop's excess cheaply, before anything is read.
//!
//! The table is keyed by peers, i.e. by whoever connects, so it is bounded: a bucket that has
//! refilled completely means nothing more than no bucket, and those are forgotten first; at the
//! bound the fullest bucket goes, the one whose loss forgives least.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A rate: bursts of up to `burst` requests, then one every `every`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// One token comes back this often.
    pub every: Duration,
    /// Tokens a bucket holds when full (and starts with).
    pub burst: u32,
}

impl Rate {
    /// `per_second` requests per second, in bursts of up to `burst`.
    pub const fn per_second(per_second: u32, burst: u32) -> Rate {
        let per = if per_second == 0 { 1 } else { per_second };
        Rate {
            every: Duration::from_nanos(1_000_000_000 / per as u64),
            burst,
        }
    }
}

/// Peers' buckets, at most `max_keys` of them.
#[derive(Debug)]
pub struct RateBook<K> {
    rate: Rate,
    max_keys: usize,
    buckets: HashMap<K, Bucket>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn refill(&mut self, rate: Rate, now: Instant) {
        let dt = now.saturating_duration_since(self.at);
        let every = rate.every.as_secs_f64().max(1e-9);
        self.tokens = (self.tokens + dt.as_secs_f64() / every).min(f64::from(rate.burst));
        self.at = now;
    }
}

impl<K: Eq + Hash + Clone> RateBook<K> {
    pub fn new(rate: Rate, max_keys: usize) -> Self {
        RateBook {
            rate,
            max_keys: max_keys.max(1),
            buckets: HashMap::new(),
        }
    }

    /// Takes a token of `key`'s bucket at `now`: `false` when it is empty (the request is over
    /// the rate and should be refused).
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        let rate = self.rate;
        if let Some(b) = self.buckets.get_mut(key) {
            b.refill(rate, now);
            if b.tokens < 1.0 {
                return false;
            }
            b.tokens -= 1.0;
            return true;
        }
        if rate.burst == 0 {
            return false;
        }
        if self.buckets.len() >= self.max_keys {
            self.make_room(now);
        }
        self.buckets.insert(
            key.clone(),
            Bucket {
                tokens: f64::from(rate.burst) - 1.0,
                at: now,
            },
        );
        true
    }

    /// Peers with a bucket (for tests and metrics).
    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }

    /// Forgets every bucket that is full again, and if none is, the fullest one.
    fn make_room(&mut self, now: Instant) {
        let rate = self.rate;
        let full = f64::from(rate.burst);
        for b in self.buckets.values_mut() {
            b.refill(rate, now);
        }
        self.buckets.retain(|_, b| b.tokens < full);
        if self.buckets.len() >= self.max_keys {
            let fullest = self
                .buckets
                .iter()
                .max_by(|a, b| a.1.tokens.total_cmp(&b.1.tokens))
                .map(|(k, _)| k.clone());
            if let Some(k) = fullest {
                self.buckets.remove(&k);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_one_request_per_period() {
        let rate = Rate {
            every: Duration::from_millis(100),
            burst: 3,
        };
        let mut book = RateBook::new(rate, 8);
        let t0 = Instant::now();
        assert!((0..3).all(|_| book.allow(&1, t0)), "the burst passes");
        assert!(!book.allow(&1, t0), "the fourth at once is refused");
        assert!(book.allow(&2, t0), "another peer has its own bucket");
        assert!(!book.allow(&1, t0 + Duration::from_millis(99)));
        assert!(book.allow(&1, t0 + Duration::from_millis(100)), "refilled");
        assert!(!book.allow(&1, t0 + Duration::from_millis(150)));
        // A long pause refills up to the burst, not beyond it.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| book.allow(&1, later)));
        assert!(!book.allow(&1, later));
    }

    #[test]
    fn per_second_spaces_tokens_evenly() {
        assert_eq!(Rate::per_second(20, 5).every, Duration::from_millis(50));
        assert_eq!(Rate::per_second(0, 5).every, Duration::from_secs(1));
    }

    #[test]
    fn the_table_stays_bounded_and_forgets_full_buckets_first() {
        let rate = Rate {
            every: Duration::from_secs(1),
            burst: 2,
        };
        let mut book = RateBook::new(rate, 3);
        let t0 = Instant::now();
        // Peer 1 drains its bucket; 2 and 3 take one token each.
        assert!(book.allow(&1, t0) && book.allow(&1, t0));
        assert!(book.allow(&2, t0) && book.allow(&3, t0));
        // A fourth peer arrives at once: no bucket is full, so the fullest (2 or 3) goes.
        assert!(book.allow(&4, t0));
        assert_eq!(book.len(), 3);
        assert!(!book.allow(&1, t0), "the drained bucket was kept");
        // Later, every bucket but 1's has refilled: they are forgotten to make room.
        let t1 = t0 + Duration::from_millis(1500);
        assert!(book.allow(&5, t1));
        assert!(book.len() <= 3);
        assert!(book.allow(&1, t1), "1 refilled one token in 1.5 s");
        assert!(!book.allow(&1, t1), "but only one");
    }

    #[test]
    fn a_zero_burst_refuses_everything() {
        let mut book = RateBook::new(Rate::per_second(10, 0), 4);
        assert!(!book.allow(&1, Instant::now()));
        assert!(book.is_empty());
    }
}
