//! The local control API: how `brume peers`, `brume map` and `brume status` talk to a running
//! `brume node`.
//!
//! A Unix socket, readable and writable by the node's user only (the socket's directory is 0700),
//! so no token is needed and nothing listens on the network. The protocol is one JSON request per
//! line and one JSON response per line, which a person can also speak with `socat`. The server is
//! transport only: it hands each request to the daemon over a channel and writes back whatever
//! the daemon answers, so the daemon's logic is tested without a socket and the socket without
//! an overlay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LinesCodec};

/// Longest request or response line, in bytes. A neighbourhood map of a few thousand nodes fits.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// What a client asks.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Peers,
    /// Map the neighbourhood within `budget_ms`; `fresh` skips the node's cache.
    Map {
        budget_ms: f64,
        fresh: bool,
    },
    /// Deploy the service in the manifest at `manifest` (an absolute path on this machine).
    Deploy(DeployRequest),
    /// Instances of the services deployed from this node (`all`: and every instance this node
    /// runs for anyone, exited ones included).
    Ps {
        all: bool,
    },
    /// The last `tail` log lines of a task instance.
    Logs {
        service: Option<String>,
        task: String,
        replica: u32,
        tail: usize,
    },
    /// Stop every instance of a service deployed from this node.
    Stop {
        service: String,
    },
    /// Move one instance (running here, or deployed from here) to another node.
    Migrate(MigrateRequest),
    /// Move every instance running here to other nodes.
    Drain {
        budget_ms: u64,
        cold: bool,
    },
}

/// How `brume migrate` asks for a move.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MigrateRequest {
    pub service: Option<String>,
    pub task: String,
    pub replica: u32,
    /// The target's peer id; `None` lets the node that runs the instance pick.
    pub to: Option<String>,
    pub budget_ms: u64,
    /// Restart cold a task whose state cannot be carried.
    pub cold: bool,
    /// Give up, leaving the instance where it is, if the move takes longer.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The longest freeze a live move may predict before it gives up (the planner's default
    /// when `None`).
    #[serde(default)]
    pub max_downtime_ms: Option<u64>,
}

/// How `brume deploy` asks for a deployment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeployRequest {
    pub manifest: PathBuf,
    pub budget_ms: f64,
    pub policy: String,
    pub seed: u64,
    pub rounds: u32,
}

/// What the node answers: a JSON value on success, or a message saying what went wrong. A long
/// request (a deploy) may first send any number of `Progress` lines; `Ok` or `Error` ends it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(serde_json::Value),
    Error(String),
    Progress(serde_json::Value),
}

impl Response {
    /// Whether this line ends the answer.
    pub fn is_final(&self) -> bool {
        !matches!(self, Response::Progress(_))
    }
}

/// A request on its way to the daemon, with the channel for its answer: progress lines, then
/// one final response.
pub type Call = (Request, mpsc::Sender<Response>);

/// Why talking to a node failed.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(
        "no brume node answers on {0}: is `brume node` running? (pass --control PATH if it uses another socket)"
    )]
    NotRunning(PathBuf),
    #[error("another brume node already listens on {0}: stop it, or give this one --control PATH")]
    InUse(PathBuf),
    #[error("control socket {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the node closed the connection without answering")]
    NoAnswer,
    #[error("the node's answer is not valid: {0}")]
    BadAnswer(String),
    #[error("the node took longer than {0:?} to answer")]
    Timeout(Duration),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ControlError + '_ {
    move |source| ControlError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Binds the control socket: creates its directory owner-only, refuses if a live node already
/// answers there, and replaces a stale socket left by a node that died.
pub async fn bind(path: &Path) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(ControlError::InUse(path.to_path_buf()));
        }
        std::fs::remove_file(path).map_err(io(path))?;
    }
    UnixListener::bind(path).map_err(io(path))
}

/// Serves connections until `calls` is closed by the daemon. Each connection may send several
/// requests; a malformed line gets an error response and the connection stays usable.
pub async fn serve(listener: UnixListener, calls: mpsc::Sender<Call>) {
    loop {
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!("control socket: accept failed: {e}");
                    continue;
                }
            },
            () = calls.closed() => return,
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
            while let Some(line) = lines.next().await {
                let response = match line {
                    Err(e) => Response::Error(format!("unreadable request: {e}")),
                    Ok(line) => match serde_json::from_str::<Request>(&line) {
                        Err(e) => Response::Error(format!(
                            "bad request `{}`: {e}; expected e.g. {{\"cmd\":\"status\"}}",
                            line.chars().take(80).collect::<String>()
                        )),
                        Ok(request) => {
                            let (tx, mut rx) = mpsc::channel(64);
                            if calls.send((request, tx)).await.is_err() {
                                return;
                            }
                            loop {
                                match rx.recv().await {
                                    Some(r) if r.is_final() => break r,
                                    Some(progress) => {
                                        let Ok(text) = serde_json::to_string(&progress) else {
                                            return;
                                        };
                                        if lines.send(text).await.is_err() {
                                            return;
                                        }
                                    }
                                    None => {
                                        break Response::Error("the node is shutting down".into())
                                    }
                                }
                            }
                        }
                    },
                };
                let Ok(text) = serde_json::to_string(&response) else {
                    return;
                };
                if lines.send(text).await.is_err() {
                    return;
                }
            }
        });
    }
}

/// Sends one request to the node at `path` and waits at most `timeout` for its answer.
pub async fn call(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    call_with_progress(path, request, timeout, |_| {}).await
}

/// Like [`call`], handing every progress line to `progress` as it arrives.
pub async fn call_with_progress(
    path: &Path,
    request: &Request,
    timeout: Duration,
    mut progress: impl FnMut(serde_json::Value),
) -> Result<Response, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|_| ControlError::NotRunning(path.to_path_buf()))?;
    let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
    let text =
        serde_json::to_string(request).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
    let exchange = async {
        lines
            .send(text)
            .await
            .map_err(|e| ControlError::BadAnswer(e.to_string()))?;
        loop {
            let line = lines
                .next()
                .await
                .ok_or(ControlError::NoAnswer)?
                .map_err(|e| ControlError::BadAnswer(e.to_string()))?;
            let response: Response =
                serde_json::from_str(&line).map_err(|e| ControlError::BadAnswer(e.to_string()))?;
            match response {
                Response::Progress(v) => progress(v),
                last => return Ok(last),
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon stand-in that echoes what it was asked.
    fn echo(mut rx: mpsc::Receiver<Call>) {
        tokio::spawn(async move {
            while let Some((req, tx)) = rx.recv().await {
                let v = serde_json::to_value(&req).unwrap_or_default();
                let _ = tx.send(Response::Progress(v.clone())).await;
                let _ = tx.send(Response::Ok(v)).await;
            }
        });
    }

    #[tokio::test]
    async fn round_trip_bad_lines_and_second_node() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ctl/node.sock");
        let listener = bind(&path).await.unwrap();
        let (tx, rx) = mpsc::channel(4);
        echo(rx);
        tokio::spawn(serve(listener, tx));

        let req = Request::Map {
            budget_ms: 50.0,
            fresh: true,
        };
        let mut seen = Vec::new();
        let got = call_with_progress(&path, &req, Duration::from_secs(5), |p| seen.push(p))
            .await
            .unwrap();
        assert_eq!(got, Response::Ok(serde_json::to_value(&req).unwrap()));
        assert_eq!(seen, vec![serde_json::to_value(&req).unwrap()]);

        // A malformed line is answered with an error, and the connection keeps working.
        let stream = UnixStream::connect(&path).await.unwrap();
        let mut lines = Framed::new(stream, LinesCodec::new_with_max_length(MAX_LINE));
        lines.send("{not json".to_string()).await.unwrap();
        // (the echo daemon sends a progress line before each answer; a bad line gets none)
        let answer: Response = serde_json::from_str(&lines.next().await.unwrap().unwrap()).unwrap();
        assert!(matches!(answer, Response::Error(m) if m.contains("bad request")));
        lines.send(r#"{"cmd":"status"}"#.to_string()).await.unwrap();
        let answer: Response = serde_json::from_str(&lines.next().await.unwrap().unwrap()).unwrap();
        assert!(matches!(answer, Response::Progress(_)));
        let answer: Response = serde_json::from_str(&lines.next().await.unwrap().unwrap()).unwrap();
        assert!(matches!(answer, Response::Ok(_)));

        // A second node on the same socket is refused while the first is alive.
        assert!(matches!(bind(&path).await, Err(ControlError::InUse(_))));
    }

    #[tokio::test]
    async fn no_node_and_stale_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("node.sock");
        let err = call(&path, &Request::Status, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("is `brume node` running"), "{err}");
        // A socket file nobody listens on (a node that died) is replaced.
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        assert!(bind(&path).await.is_ok());
    }
}
