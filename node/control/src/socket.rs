//! The transport: a Unix socket, one JSON line per request and per response.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LinesCodec};

use crate::{Call, Command, Progress, Request, Response, MAX_LINE};

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
    /// The node understood the request and refused it; the message says why.
    #[error("{0}")]
    Refused(String),
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

/// Sends `command` to the node at `path` and waits at most `timeout` for its reply, handing
/// every progress line to `progress` as it arrives. A refusal is [`ControlError::Refused`].
pub async fn call<C: Command>(
    path: &Path,
    command: C,
    timeout: Duration,
    progress: impl FnMut(Progress),
) -> Result<C::Reply, ControlError> {
    match exchange(path, &command.into_request(), timeout, progress).await? {
        Response::Ok(reply) => C::unwrap(reply).map_err(|other| {
            ControlError::BadAnswer(format!("it answered another command: {other:?}"))
        }),
        Response::Error(e) => Err(ControlError::Refused(e)),
        Response::Progress(_) => Err(ControlError::BadAnswer(
            "a progress line where the answer was due".into(),
        )),
    }
}

/// Sends one request line and reads lines until the final response.
async fn exchange(
    path: &Path,
    request: &Request,
    timeout: Duration,
    mut progress: impl FnMut(Progress),
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
                Response::Progress(p) => progress(p),
                last => return Ok(last),
            }
        }
    };
    tokio::time::timeout(timeout, exchange)
        .await
        .map_err(|_| ControlError::Timeout(timeout))?
}
