//! Deployment: a manifest becomes running tasks on the hosts placement chose, with no registry.
//!
//! The initiator ([`initiator`]) maps its neighbourhood, places the call graph ([`plan`]), packs
//! each task's artifact into its chunk store and sends every host a deploy request on
//! `/brume/deploy/1` ([`wire`]). The host ([`agent`]) checks the request and its own free
//! resources, fetches the chunks it lacks from the initiator over `/brume/transfer/1`, builds or
//! loads the image through its engine, wires the task's calls to local tunnel forwarders
//! (`BRUME_CALL_*`) and starts it. If any instance fails, the initiator stops every instance of
//! that epoch on every host it asked, so a failed deploy leaves nothing behind.

pub mod agent;
pub mod cli;
pub mod initiator;
pub mod ledger;
pub mod plan;
pub mod progress;
pub mod wire;
