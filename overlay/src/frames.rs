//! Length-prefixed CBOR frames: how brume's own stream protocols (deploy, transfer, tunnel
//! headers, migration) put typed messages on a raw overlay stream.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes of CBOR. Bytes from the
//! network are hostile: [`read_frame`] refuses a length over the caller's limit before reading
//! the body, and a body that does not parse is an error, never a panic.

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
    let mut body = vec![0u8; len];
    io.read_exact(&mut body).await?;
    ciborium::de::from_reader_with_recursion_limit(body.as_slice(), 32)
        .map_err(|e| FrameError::Malformed(e.to_string()))
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
}
