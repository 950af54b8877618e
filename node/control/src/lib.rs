//! brume-control: the local control API of a running node, shared by the daemon and the CLI:
//! how every `brume` subcommand that talks to a running `brume node` (`status`, `peers`, `map`,
//! `deploy`, `ps`, `logs`, `stop`, `migrate`, `drain`, `gc`) reaches it, what it answers, and how a
//! person reads the nodes those answers name ([`NodeName`]).
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
//! back whatever the daemon answers, so the daemon's logic (brume's `daemon::dispatch`) is tested
//! without a socket and the socket without an overlay.

mod command;
pub mod deploy;
pub mod moves;
pub mod names;
mod socket;
mod views;

pub use command::{
    Call, Command, DrainRequest, GcRequest, LogsRequest, MapRequest, PeersRequest, PsRequest,
    Request, Response, StatusRequest, StopRequest, MAX_LINE,
};
pub use deploy::{DeployRequest, Deployed, Event, Row, Step};
pub use moves::{DrainLine, MigrateRequest, MoveProgress, MoveStep, Moved};
pub use names::NodeName;
pub use socket::{bind, call, serve, ControlError};
pub use views::{
    GcReport, LogLines, PeerView, PredictorView, ProbesView, Progress, PsRow, Reply, StatusView,
    Stopped,
};

#[cfg(test)]
mod tests;
