//! Length-prefixed CBOR frames: how brume's own stream protocols (deploy, transfer, tunnel
//! headers, migration) put typed messages on a raw overlay stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of CBOR. Bytes from the
//! network are hostile: [`read_frame`] refuses a length over the caller's limit before reading
//! the body, and a body that does not parse is an error, never a panic. The body's buffer grows
//! with the bytes that arrive ([`read_body`]), never from the length header alone: a peer that
//! announces 16 MiB and sends ten bytes costs ten bytes (plus one step), not 16 MiB.

use futures::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("frame of {len} bytes exceeds the {limit}-byte limit; dropped unread")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed frame: {0}")]
    Malformed(String),
    #[error("cannot encode frame: {0}")]
    Encode(String),
}

/// Writes one frame and flushes.
pub async fn write_frame<W, T>(io: &mut W, msg: &T) -> Result<(), FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let mut body = Vec::new();
    ciborium::ser::into_writer(msg, &mut body).map_err(|e| FrameError::Encode(e.to_string()))?;
    let len = u32::try_from(body.len()).map_err(|_| FrameError::TooLarge {
        len: body.len(),
        limit: u32::MAX as usize,
    })?;
    io.write_all(&len.to_be_bytes()).await?;
    io.write_all(&body).await?;
    io.flush().await?;
    Ok(())
}

/// Reads one frame of at most `limit` bytes.
pub async fn read_frame<R, T>(io: &mut R, limit: usize) -> Result<T, FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut len = [0u8; 4];
    io.read_exact(&mut len).await?;
    let len = u32::from_be_bytes(len) as usize;
    if len > limit {
        return Err(FrameError::TooLarge { len, limit });
    }
    let mut body = Vec::new();
    read_body(io, len, &mut body).await?;
    ciborium::de::from_reader_with_recursion_limit(body.as_slice(), 32)
        .map_err(|e| FrameError::Malformed(e.to_string()))
}

/// How far a body's buffer grows ahead of the bytes that arrived.
pub const READ_STEP: usize = 64 * 1024;

/// Appends exactly `len` bytes from `io` to `buf`, growing it by at most [`READ_STEP`] beyond
/// what has arrived; an early end of stream is `UnexpectedEof`.
pub async fn read_body<R>(io: &mut R, len: usize, buf: &mut Vec<u8>) -> std::io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let end = buf.len() + len;
    while buf.len() < end {
        let start = buf.len();
        let step = (end - start).min(READ_STEP);
        buf.resize(start + step, 0);
        let mut got = 0;
        while got < step {
            match io.read(&mut buf[start + got..start + step]).await {
                Ok(0) => {
                    buf.truncate(start + got);
                    return Err(std::io::ErrorKind::UnexpectedEof.into());
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    buf.truncate(start + got);
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;

    #[test]
    fn round_trips_and_refuses_bad_frames() {
        futures::executor::block_on(async {
            let mut out = Cursor::new(Vec::new());
            write_frame(&mut out, &("deploy", 7u32)).await.unwrap();
            let bytes = out.into_inner();
            let got: (String, u32) = read_frame(&mut Cursor::new(bytes.clone()), 64)
                .await
                .unwrap();
            assert_eq!(got, ("deploy".to_string(), 7));
            let small = read_frame::<_, (String, u32)>(&mut Cursor::new(bytes), 4).await;
            assert!(matches!(small, Err(FrameError::TooLarge { .. })));
            let junk = [0, 0, 0, 3, 0xff, 0xff, 0xff];
            let bad = read_frame::<_, (String, u32)>(&mut Cursor::new(junk.to_vec()), 64).await;
            assert!(matches!(bad, Err(FrameError::Malformed(_))));
            let cut = [0, 0, 0, 9, 1];
            let short = read_frame::<_, (String, u32)>(&mut Cursor::new(cut.to_vec()), 64).await;
            assert!(matches!(short, Err(FrameError::Io(_))));
        });
    }

    /// A peer that announces a 16 MiB frame, sends a few bytes and stops: the buffer holds what
    /// arrived plus one step, not 16 MiB.
    #[test]
    fn an_announced_length_is_not_allocated_before_its_bytes_arrive() {
        futures::executor::block_on(async {
            let len = 16usize << 20;
            let mut wire = (len as u32).to_be_bytes().to_vec();
            wire.extend_from_slice(&[7u8; 1000]);
            let mut io = Cursor::new(wire);
            let mut head = [0u8; 4];
            io.read_exact(&mut head).await.unwrap();
            let mut buf = Vec::new();
            let r = read_body(&mut io, u32::from_be_bytes(head) as usize, &mut buf).await;
            assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::UnexpectedEof);
            assert_eq!(buf.len(), 1000, "what arrived is kept");
            assert!(
                buf.capacity() <= 2 * READ_STEP,
                "{} bytes allocated for 1000 received",
                buf.capacity()
            );
            // And read_frame with the limit at 16 MiB fails the same way, without the 16 MiB.
            let mut wire = (len as u32).to_be_bytes().to_vec();
            wire.extend_from_slice(&[7u8; 1000]);
            let r = read_frame::<_, Vec<u8>>(&mut Cursor::new(wire), len).await;
            assert!(matches!(r, Err(FrameError::Io(_))), "{r:?}");
            // A whole body of several steps still arrives intact.
            let big: Vec<u8> = (0..3 * READ_STEP + 5).map(|i| i as u8).collect();
            let mut out = Cursor::new(Vec::new());
            write_frame(&mut out, &big).await.unwrap();
            let back: Vec<u8> = read_frame(&mut Cursor::new(out.into_inner()), 1 << 20)
                .await
                .unwrap();
            assert_eq!(back, big);
        });
    }
}
