//! The checks both engines make around a start, because tasks share the host network: before, is
//! the task's port free (else the task would start and fail to bind, or worse, a caller would
//! reach someone else's listener); after, does the task accept on its port, or did it exit first?
//! The wait is bounded: a task that keeps running without listening is reported started, with a
//! warning, when the bound runs out.

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};
use std::time::Duration;

use tokio::net::TcpStream;
use tokio::time::Instant;

use super::error::EngineError;

/// Refuses a port something on this host already listens on (loopback or any address).
pub fn ensure_port_free(port: u16) -> Result<(), EngineError> {
    let addrs = [
        SocketAddr::from((Ipv4Addr::LOCALHOST, port)),
        SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)),
        SocketAddr::from((Ipv6Addr::UNSPECIFIED, port)),
    ];
    for addr in addrs {
        match TcpListener::bind(addr) {
            Ok(listener) => drop(listener),
            Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
                return Err(EngineError::PortInUse { port })
            }
            // No IPv6 on this host, or a privileged port the node may not bind itself (the task
            // might): the other checks decide.
            Err(_) => {}
        }
    }
    Ok(())
}

/// How the wait after a start ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Readiness {
    /// The task accepted a connection on its port.
    Accepting,
    /// The task exited (or was restarted) before accepting; its last exit code.
    Exited(i64),
    /// The bound ran out with the task still running and not accepting.
    TimedOut,
}

/// Polls `127.0.0.1:port` and `exited()` every 50 ms until the task accepts, exits, or `bound`
/// passes. `exited` returns the exit code once the task has exited or been restarted.
pub async fn wait_until_ready<F, Fut>(port: u16, bound: Duration, mut exited: F) -> Readiness
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<i64>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(code) = exited().await {
            return Readiness::Exited(code);
        }
        let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_millis(500), connect).await {
            drop(stream);
            // The listener may belong to an instance that is about to die: look once more.
            return match exited().await {
                Some(code) => Readiness::Exited(code),
                None => Readiness::Accepting,
            };
        }
        if Instant::now() >= deadline {
            return Readiness::TimedOut;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The last `n` lines of `text`.
pub fn tail_lines(text: &str, n: usize) -> String {
    if n == 0 {
        return String::new();
    }
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    let mut start = trimmed.len();
    let mut seen = 0;
    for (i, b) in trimmed.bytes().enumerate().rev() {
        if b == b'\n' {
            seen += 1;
            if seen == n {
                start = i + 1;
                break;
            }
        }
        start = i;
    }
    text[start..].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tails() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail_lines("", 5), "");
        assert_eq!(tail_lines("a\n", 0), "");
    }

    #[test]
    fn a_listened_port_is_refused_and_a_free_one_passes() {
        // The port is held by a socket bound with SO_REUSEADDR and never listened on, on every
        // address ([::] takes IPv4 too; 0.0.0.0 where the host has no IPv6): nothing else takes
        // it (bind(0) and outgoing connections skip a bound port, a bind without SO_REUSEADDR
        // conflicts), while binds with SO_REUSEADDR, as the check's and a task listener's are,
        // still pass. So the port found free at the end cannot have been taken in between.
        let held = |h: tokio::net::TcpSocket, any: SocketAddr| {
            h.set_reuseaddr(true).ok()?;
            h.bind(any).ok()?;
            Some(h)
        };
        let hold = tokio::net::TcpSocket::new_v6()
            .ok()
            .and_then(|h| held(h, (Ipv6Addr::UNSPECIFIED, 0).into()))
            .or_else(|| {
                held(
                    tokio::net::TcpSocket::new_v4().ok()?,
                    (Ipv4Addr::UNSPECIFIED, 0).into(),
                )
            })
            .expect("a socket holding a port");
        let port = hold.local_addr().unwrap().port();
        let l = TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
        let err = ensure_port_free(port).unwrap_err();
        assert!(
            err.to_string().contains(&format!("port {port} is in use")),
            "{err}"
        );
        drop(l);
        ensure_port_free(port).unwrap();
    }

    #[tokio::test]
    async fn readiness_sees_a_listener_an_exit_and_a_timeout() {
        // The bounds are far beyond what the first two waits need: only the third runs out.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let r = wait_until_ready(port, Duration::from_secs(60), || async { None }).await;
        assert_eq!(r, Readiness::Accepting);
        let r = wait_until_ready(port, Duration::from_secs(60), || async { Some(3) }).await;
        assert_eq!(r, Readiness::Exited(3));
        // A port bound without SO_REUSEADDR and never listened on: every connection is refused
        // and nothing else can listen there while `closed` lives.
        let closed = tokio::net::TcpSocket::new_v4().unwrap();
        closed.bind((Ipv4Addr::LOCALHOST, 0).into()).unwrap();
        let port = closed.local_addr().unwrap().port();
        let r = wait_until_ready(port, Duration::from_millis(200), || async { None }).await;
        assert_eq!(r, Readiness::TimedOut);
    }
}
