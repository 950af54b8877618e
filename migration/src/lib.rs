//! brume's live migration: incremental CRIU checkpoints, 4 KiB chunk deltas, adaptive compression
//! and the learned predictor of checkpoint duration (issue 6).
//!
//! Nothing is implemented yet: this crate only reserves its place in the workspace.
