//! The local control API: how every `brume` subcommand that talks to a running `brume node`
//! (`status`, `peers`, `map`, `deploy`, `ps`, `logs`, `stop`, `migrate`, `drain`) reaches it.
//!
//! A Unix socket, readable and writable by the node's user only (the socket's directory is 0700),
//! so no token is needed and nothing listens on the network. The protocol is one JSON request per
//! line and one JSON response per line, which a person can also speak with `socat`:
//!
//! ```text
//! $ echo '{"cmd":"status"}' | socat - UNIX-CONNECT:$XDG_RUNTIME_DIR/brume/node.sock
//! {"ok":{"status":{"peer_id":"12D3KooW…","node_id":…,"listen":[…],…}}}
//! ```
//!
//! Each command is a request type with its own reply type, tied together by [`Command`]: the
//! daemon can only answer a command with that command's reply ([`Command::wrap`]) and the CLI
//! gets that type back from [`call`], so neither side reads JSON by key. A long command (deploy,
//! migrate, drain) first sends any number of [`Response::Progress`] lines, typed as well
//! ([`Progress`]); `Ok` or `Error` ends the answer. A line that is not a request is answered
//! with an error that shows an example, and the connection stays open for the next one.
//!
//! The server is transport only: it hands each request to the daemon over a channel and writes
//! back whatever the daemon answers, so the daemon's logic ([`super::dispatch`]) is tested
//! without a socket and the socket without an overlay.

use std::path::{Path, PathBuf};
use std::time::Duration;

use brume_overlay::neighbourhood::NeighbourhoodMap;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LinesCodec};

pub use super::views::{LogLines, PeerView, Progress, PsRow, Reply, StatusView, Stopped};
pub use crate::deploy::progress::{DeployRequest, Deployed};
pub use crate::migrate::control::{DrainLine, MigrateRequest, Moved};

/// Longest request or response line, in bytes. A neighbourhood map of a few thousand nodes fits.
pub const MAX_LINE: usize = 16 * 1024 * 1024;

/// What a client asks: `{"cmd":"<command>", ...its fields}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    Status,
    Peers,
    Map(MapRequest),
    Deploy(DeployRequest),
    Ps(PsRequest),
    Logs(LogsRequest),
    Stop(StopRequest),
    Migrate(MigrateRequest),
    Drain(DrainRequest),
}

/// `brume status`: who the node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatusRequest;

/// `brume peers`: the node's overlay peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeersRequest;

/// `brume map`: map the neighbourhood within `budget_ms`; `fresh` skips the node's cache.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapRequest {
    pub budget_ms: f64,
    pub fresh: bool,
}

/// `brume ps`: instances of the services deployed from this node (`all`: and every instance
/// this node runs for anyone, exited ones included).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PsRequest {
    pub all: bool,
}

/// `brume logs`: the last `tail` log lines of a task instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsRequest {
    pub service: Option<String>,
    pub task: String,
    pub replica: u32,
    pub tail: usize,
}

/// `brume stop`: stop every instance of a service deployed from this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopRequest {
    pub service: String,
}

/// `brume drain`: move every instance running here to other nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DrainRequest {
    pub budget_ms: u64,
    pub cold: bool,
}

/// A command of the control API: its request and the one reply type that answers it.
pub trait Command {
    type Reply: Serialize + DeserializeOwned;
    /// The request line that asks for it.
    fn into_request(self) -> Request;
    /// The daemon's answer, as the response carries it.
    fn wrap(reply: Self::Reply) -> Reply;
    /// This command's reply out of a response, or the reply that came instead.
    fn unwrap(reply: Reply) -> Result<Self::Reply, Box<Reply>>;
}

/// One [`Command`] impl: the request type, how it becomes a [`Request`], and the [`Reply`]
/// variant with the reply type it carries.
macro_rules! command {
    ($req:ty, |$s:pat_param| $into:expr, $variant:ident($reply:ty)) => {
        impl Command for $req {
            type Reply = $reply;
            fn into_request(self) -> Request {
                let $s = self;
                $into
            }
            fn wrap(reply: $reply) -> Reply {
                Reply::$variant(reply)
            }
            fn unwrap(reply: Reply) -> Result<$reply, Box<Reply>> {
                match reply {
                    Reply::$variant(r) => Ok(r),
                    other => Err(Box::new(other)),
                }
            }
        }
    };
}

command!(StatusRequest, |_| Request::Status, Status(StatusView));
command!(PeersRequest, |_| Request::Peers, Peers(Vec<PeerView>));
command!(MapRequest, |r| Request::Map(r), Map(NeighbourhoodMap));
command!(DeployRequest, |r| Request::Deploy(r), Deployed(Deployed));
command!(PsRequest, |r| Request::Ps(r), Ps(Vec<PsRow>));
command!(LogsRequest, |r| Request::Logs(r), Logs(LogLines));
command!(StopRequest, |r| Request::Stop(r), Stopped(Stopped));
command!(MigrateRequest, |r| Request::Migrate(r), Moved(Moved));
command!(DrainRequest, |r| Request::Drain(r), Drained(Vec<DrainLine>));

/// One line the node sends: the command's reply, a refusal saying what went wrong, or (before
/// either) a progress report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    Ok(Reply),
    Error(String),
    Progress(Progress),
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

#[cfg(test)]
mod tests;
