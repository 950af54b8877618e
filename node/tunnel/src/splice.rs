//! Moving a call's bytes: [`splice`] copies both ways between two byte streams until both
//! directions have ended, passing each end of stream on as a shutdown of the other side's write
//! half (a caller's half-close reaches the task as a FIN, and back).
//!
//! Each direction reads into one [`COPY_BUFFER`]-sized buffer and writes what it read, so bulk
//! transfers move in large writes. The buffers come from a [`BufferPool`]: allocating fresh
//! 256 KiB buffers for every call costs page faults and zeroing that showed up as ~0.5 ms more
//! per new tunnelled connection (four buffers per call, two at each end); reused buffers cost
//! nothing. The pool is a value, not a global: the node's [`crate::Routes`] carries one, so
//! every forwarder and the tunnel server of a node share it, and separate nodes in one process
//! (tests, benches) do not. At most [`POOL_MAX`] idle buffers are kept per pool. Only the bytes
//! just read are ever written, so what a reused buffer held before never leaves it.

use std::io;
use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::COPY_BUFFER;

/// Most idle copy buffers a pool keeps (4 MiB at 256 KiB each).
pub const POOL_MAX: usize = 16;

/// Copy buffers for reuse by the calls of one node; clones share the same buffers.
#[derive(Debug, Clone, Default)]
pub struct BufferPool {
    idle: Arc<Mutex<Vec<Box<[u8]>>>>,
}

impl BufferPool {
    pub fn new() -> Self {
        Self::default()
    }

    /// How many buffers wait for reuse.
    pub fn idle(&self) -> usize {
        self.lock().len()
    }

    // A poisoned pool only ever holds whole buffers: still good to use.
    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Box<[u8]>>> {
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn take(&self) -> PooledBuf<'_> {
        let reused = self.lock().pop();
        PooledBuf {
            buf: Some(reused.unwrap_or_else(|| vec![0u8; COPY_BUFFER].into_boxed_slice())),
            pool: self,
        }
    }
}

/// A copy buffer that goes back to its pool when dropped.
struct PooledBuf<'a> {
    buf: Option<Box<[u8]>>,
    pool: &'a BufferPool,
}

impl Deref for PooledBuf<'_> {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.buf.as_deref().unwrap_or_default()
    }
}

impl DerefMut for PooledBuf<'_> {
    fn deref_mut(&mut self) -> &mut [u8] {
        self.buf.as_deref_mut().unwrap_or_default()
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut idle = self.pool.lock();
            if idle.len() < POOL_MAX {
                idle.push(buf);
            }
        }
    }
}

/// Copies bytes both ways until both directions have ended, with buffers from `pool`; returns
/// the bytes moved (a to b, b to a). The first error in either direction ends both.
pub(crate) async fn splice<A, B>(a: A, b: B, pool: &BufferPool) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let (mut a_read, mut a_write) = tokio::io::split(a);
    let (mut b_read, mut b_write) = tokio::io::split(b);
    tokio::try_join!(
        one_way(&mut a_read, &mut b_write, pool),
        one_way(&mut b_read, &mut a_write, pool)
    )
}

/// Copies `from` into `to` until `from` ends, then shuts `to`'s write half down.
async fn one_way<R, W>(from: &mut R, to: &mut W, pool: &BufferPool) -> io::Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = pool.take();
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        to.flush().await?;
        total += n as u64;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pool_reuses_its_buffers_and_keeps_at_most_pool_max() {
        let pool = BufferPool::new();
        let first = pool.take();
        let addr = first.as_ptr();
        drop(first);
        assert_eq!(pool.idle(), 1);
        assert_eq!(pool.take().as_ptr(), addr, "the idle buffer is reused");

        let many: Vec<_> = (0..POOL_MAX + 3).map(|_| pool.take()).collect();
        assert!(many.iter().all(|b| b.len() == COPY_BUFFER));
        drop(many);
        assert_eq!(pool.idle(), POOL_MAX);
    }

    #[test]
    fn pools_do_not_share_buffers_but_clones_do() {
        let (a, b) = (BufferPool::new(), BufferPool::new());
        drop(a.take());
        assert_eq!((a.idle(), b.idle()), (1, 0));
        let a2 = a.clone();
        drop(a2.take());
        drop((a2.take(), a2.take()));
        assert_eq!(
            a.idle(),
            2,
            "a clone draws from and returns to the same buffers"
        );
    }

    #[tokio::test]
    async fn splice_copies_both_ways_and_returns_its_buffers() {
        let pool = BufferPool::new();
        let (mut caller, near) = tokio::io::duplex(1024);
        let (far, mut task) = tokio::io::duplex(1024);
        let spliced = tokio::spawn({
            let pool = pool.clone();
            async move { splice(near, far, &pool).await }
        });
        let request = vec![7u8; 300_000];
        let (sent, echoed) = tokio::join!(
            async {
                caller.write_all(&request).await.unwrap();
                caller.shutdown().await.unwrap();
                let mut back = Vec::new();
                caller.read_to_end(&mut back).await.unwrap();
                back
            },
            async {
                let mut got = Vec::new();
                task.read_to_end(&mut got).await.unwrap();
                task.write_all(b"done").await.unwrap();
                task.shutdown().await.unwrap();
                got
            }
        );
        assert_eq!(echoed, request);
        assert_eq!(sent, b"done");
        assert_eq!(spliced.await.unwrap().unwrap(), (300_000, 4));
        assert_eq!(pool.idle(), 2, "both directions gave their buffer back");
    }
}
