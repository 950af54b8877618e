//! The one error type of the crate.

use std::io;

/// Why a testbed could not be built, run or cleaned up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Namespaces and TUN devices need CAP_NET_ADMIN and CAP_SYS_ADMIN; we ask for root.
    #[error(
        "brume-testnet needs root: it creates network namespaces and TUN devices (running as uid \
         {uid}); run the tests or `brume-testnet` as root (CI does) or under sudo"
    )]
    NotRoot { uid: u32 },
    /// `/dev/net/tun` is missing (kernel without CONFIG_TUN, or a container without the device).
    #[error(
        "/dev/net/tun is not available ({source}); the kernel needs CONFIG_TUN and a container \
         needs --device /dev/net/tun"
    )]
    NoTun {
        #[source]
        source: io::Error,
    },
    /// The `ip` program of iproute2 could not be run.
    #[error("cannot run `ip` ({source}); install iproute2 (apt-get install iproute2)")]
    NoIpTool {
        #[source]
        source: io::Error,
    },
    /// An `ip` command ran and failed.
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    /// A system call failed.
    #[error("cannot {what}: {source}")]
    Os {
        what: String,
        #[source]
        source: io::Error,
    },
    /// The testbed asked for makes no sense (zero hosts, a bad matrix, an unknown host).
    #[error("invalid testbed: {0}")]
    Invalid(String),
}

impl Error {
    /// An [`Error::Os`] from the last OS error (`errno`).
    pub(crate) fn last_os(what: impl Into<String>) -> Self {
        Error::Os {
            what: what.into(),
            source: io::Error::last_os_error(),
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
