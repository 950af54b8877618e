//! The client that counts acknowledged writes while redis moves.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::bail;

use super::resp::{Redis, Resp};

/// The writer's bounds: it stops after this many writes or this long, whatever happens.
const MAX_WRITES: u64 = 1_000_000;
const MAX_WRITING: Duration = Duration::from_secs(240);

/// What the writer saw.
#[derive(Debug, Clone)]
pub struct Writes {
    /// Writes acknowledged with `+OK`: keys `k0..k<acked>`.
    pub acked: u64,
    /// Connections that broke (or never answered) and were made again.
    pub reconnects: u64,
    /// The longest time between two acknowledged writes: the pause the client saw.
    pub longest_gap: Duration,
}

/// Writes `SET k<i> <i>` for i = 0, 1, ... one at a time, until stopped (bounded). A write
/// whose connection breaks, or whose answer is not `+OK`, is sent again on a new connection
/// (a repeated SET is harmless).
pub struct Writer {
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Writes>,
}

impl Writer {
    /// Starts writing to `addr`; one answer may take up to `wait`.
    pub fn start(addr: String, wait: Duration) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let acked = Arc::new(AtomicU64::new(0));
        let (flag, count) = (stop.clone(), acked.clone());
        let thread = std::thread::spawn(move || {
            let started = Instant::now();
            let (mut conn, mut reconnects) = (None::<Redis>, 0);
            let (mut last_ack, mut longest_gap) = (Instant::now(), Duration::ZERO);
            let mut i = 0;
            while !flag.load(Ordering::SeqCst) && i < MAX_WRITES && started.elapsed() < MAX_WRITING
            {
                let (key, value) = (format!("k{i}"), i.to_string());
                let reply = match &mut conn {
                    Some(c) => c.call(&["SET", &key, &value]),
                    None => Redis::connect(&addr, wait).and_then(|mut c| {
                        let r = c.call(&["SET", &key, &value]);
                        conn = Some(c);
                        r
                    }),
                };
                match reply {
                    Ok(Resp::Simple(ok)) if ok == "OK" => {
                        let now = Instant::now();
                        if i > 0 {
                            longest_gap = longest_gap.max(now - last_ack);
                        }
                        last_ack = now;
                        i += 1;
                        count.store(i, Ordering::SeqCst);
                    }
                    // An answer that is not +OK is not an acknowledgement: the same write goes
                    // again (on a fresh connection, in case this one is confused).
                    Ok(_) | Err(_) => {
                        conn = None;
                        reconnects += 1;
                        std::thread::sleep(Duration::from_millis(10));
                    }
                }
            }
            Writes {
                acked: i,
                reconnects,
                longest_gap,
            }
        });
        Writer {
            stop,
            acked,
            thread,
        }
    }

    /// Waits until at least `n` writes were acknowledged in all, for at most `limit`.
    pub fn wait_acked(&self, n: u64, limit: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while self.acked() < n {
            if self.thread.is_finished() {
                bail!("the writer stopped after {} writes", self.acked());
            }
            if Instant::now() >= deadline {
                bail!(
                    "{} of {n} writes acknowledged within {limit:?}",
                    self.acked()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    pub fn acked(&self) -> u64 {
        self.acked.load(Ordering::SeqCst)
    }

    pub fn stop(self) -> anyhow::Result<Writes> {
        self.stop.store(true, Ordering::SeqCst);
        self.thread
            .join()
            .map_err(|_| anyhow::anyhow!("the writer thread panicked"))
    }
}
