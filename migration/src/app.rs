//! Capturing an instance's state before it moves.
//!
//! A task with `checkpoint = "app"` exports its own state (seed 001: kilobytes in milliseconds,
//! instead of a process image): asked `CHECKPOINT` on its port, it answers one line, and a new
//! instance started with that line in the file `BRUME_RESTORE_FILE` names continues from it.
//! The line is opaque to brume; it only bounds its size and the time the task may take.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// Largest state line a task may export (it travels inside one deploy frame).
pub const MAX_STATE: usize = 3 << 20;

/// How long a task may take to answer `CHECKPOINT`.
pub const CHECKPOINT_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a task's state could not be captured.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot reach the task on 127.0.0.1:{port}: {source}")]
    Connect { port: u16, source: std::io::Error },
    #[error("the task broke off its checkpoint: {0}")]
    Io(#[from] std::io::Error),
    #[error("the task did not answer CHECKPOINT within {0:?}")]
    Timeout(Duration),
    #[error("the task's checkpoint is empty")]
    Empty,
    #[error("the task's checkpoint exceeds {MAX_STATE} bytes")]
    TooLarge,
    #[error("the task's checkpoint is not text: {0}")]
    NotText(#[from] std::string::FromUtf8Error),
}

/// Asks the task listening on `127.0.0.1:port` for its state line.
pub async fn capture(port: u16, timeout: Duration) -> Result<String, CheckpointError> {
    tokio::time::timeout(timeout, ask(port))
        .await
        .map_err(|_| CheckpointError::Timeout(timeout))?
}

async fn ask(port: u16) -> Result<String, CheckpointError> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|source| CheckpointError::Connect { port, source })?;
    stream.write_all(b"CHECKPOINT\n").await?;
    let mut reader = BufReader::new(stream);
    let mut line = Vec::new();
    // One more byte than allowed tells an over-long line from one that just fits.
    let mut limited = (&mut reader).take(MAX_STATE as u64 + 1);
    limited.read_until(b'\n', &mut line).await?;
    if line.len() > MAX_STATE {
        return Err(CheckpointError::TooLarge);
    }
    while matches!(line.last(), Some(b'\n' | b'\r')) {
        line.pop();
    }
    if line.is_empty() {
        return Err(CheckpointError::Empty);
    }
    Ok(String::from_utf8(line)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A one-shot task that answers CHECKPOINT with `answer` (raw bytes).
    async fn task(answer: Vec<u8>) -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        tokio::spawn(async move {
            let (s, _) = listener.accept().await.expect("accept");
            let mut r = BufReader::new(s);
            let mut l = String::new();
            r.read_line(&mut l).await.expect("read");
            assert_eq!(l, "CHECKPOINT\n");
            let _ = r.get_mut().write_all(&answer).await;
        });
        port
    }

    #[tokio::test]
    async fn a_state_line_comes_back_without_its_newline() {
        let port = task(b"fedavg-state/1 round=3\r\n".to_vec()).await;
        let state = capture(port, Duration::from_secs(60)).await.expect("state");
        assert_eq!(state, "fedavg-state/1 round=3");
    }

    #[tokio::test]
    async fn empty_oversized_silent_and_absent_tasks_are_errors() {
        let port = task(b"\n".to_vec()).await;
        assert!(matches!(
            capture(port, Duration::from_secs(60)).await,
            Err(CheckpointError::Empty)
        ));
        let port = task(vec![b'x'; MAX_STATE + 10]).await;
        assert!(matches!(
            capture(port, Duration::from_secs(60)).await,
            Err(CheckpointError::TooLarge)
        ));
        // Accepts and never answers (holds the connection until the test ends).
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let held = tokio::spawn(async move {
            let conn = listener.accept().await;
            std::future::pending::<()>().await;
            drop(conn);
        });
        assert!(matches!(
            capture(port, Duration::from_millis(200)).await,
            Err(CheckpointError::Timeout(_))
        ));
        held.abort();
        // Bound without SO_REUSEADDR and never listened on: every connection is refused, and
        // nothing else can listen there while `closed` lives.
        let closed = tokio::net::TcpSocket::new_v4().expect("socket");
        closed
            .bind((std::net::Ipv4Addr::LOCALHOST, 0).into())
            .expect("bind");
        let closed_port = closed.local_addr().expect("addr").port();
        assert!(matches!(
            capture(closed_port, Duration::from_secs(60)).await,
            Err(CheckpointError::Connect { .. })
        ));
    }
}
