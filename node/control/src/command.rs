//! The commands: what a client may ask, and which reply answers which request.

use brume_overlay::neighbourhood::NeighbourhoodMap;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::{DeployRequest, Deployed, DrainLine, LogLines, MigrateRequest, Moved, PeerView};
use crate::{GcReport, Progress, PsRow, Reply, StatusView, Stopped};

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
    Gc,
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
    /// Every instance must run on its new host within this many ms: each move starts at the
    /// deadline minus its predicted duration minus `margin_ms`, not at once.
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// The slack kept before the deadline (with `deadline_ms`).
    #[serde(default)]
    pub margin_ms: Option<u64>,
}

/// `brume gc`: delete now what nothing on the node uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcRequest;

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
command!(GcRequest, |_| Request::Gc, Gc(GcReport));

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
