//! The public face of the overlay: [`Overlay::spawn`] starts a node on the tokio runtime and
//! returns an [`OverlayHandle`] to talk to it. The names a caller needs beside it are re-exported
//! here (and at the crate root) from the files that hold them.

use tokio::task::JoinHandle;

pub use crate::commands::{MapOutcome, MapSize, PeerInfo, ProbeCounts, Status};
pub use crate::config::{network_map_config, Identity, OverlayConfig, Timings};
pub use crate::error::OverlayError;
pub use crate::handle::{IncomingStreams, OverlayHandle};

/// Starts overlay nodes.
pub struct Overlay;

impl Overlay {
    /// Builds the swarm, starts listening, waits until every listener has an address, dials the
    /// bootstrap members and runs the node on a tokio task. The task ends on
    /// [`OverlayHandle::shutdown`] or when every handle is dropped.
    pub async fn spawn(
        config: OverlayConfig,
    ) -> Result<(OverlayHandle, JoinHandle<Result<(), OverlayError>>), OverlayError> {
        crate::swarm::spawn(config).await
    }
}
