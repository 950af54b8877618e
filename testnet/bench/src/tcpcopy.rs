//! The plain TCP copy the byte movers are measured against, on loopback (`transfer`) and over a
//! shaped link (`linkspeed`): one receiver, so both baselines do the same work per byte.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::bail;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How much a copy reads before it writes, and how big its writes are.
pub const COPY_BUF: usize = 1 << 20;

/// Reads `size` bytes off a new connection to `addr`, into the file `out` if given (whole
/// buffers at a time, as the chunk fetch writes whole chunks); fails on any other length.
pub async fn receive(addr: SocketAddr, out: Option<&Path>, size: usize) -> anyhow::Result<()> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    let mut file = match out {
        Some(p) => Some(tokio::fs::File::create(p).await?),
        None => None,
    };
    let mut buf = vec![0u8; COPY_BUF];
    let mut got = 0usize;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = s.read(&mut buf[n..]).await?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        got += n;
        if let Some(f) = file.as_mut() {
            f.write_all(&buf[..n]).await?;
        }
    }
    if let Some(mut f) = file {
        f.flush().await?;
    }
    if got != size {
        bail!("the TCP copy got {got} bytes of {size}");
    }
    Ok(())
}
