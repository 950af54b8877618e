//! Deployment: a manifest becomes running tasks on the hosts placement chose, with no registry.
//!
//! The initiator ([`initiator`]) maps its neighbourhood, places the call graph ([`plan`]), packs
//! each task's artifact into its chunk store and sends every host a deploy request on
//! `/brume/deploy/3` ([`wire`], sent by [`client`]). The host's [`deployer`] checks the request
//! and its own free resources ([`instances`]), fetches the chunks it lacks from the initiator
//! over `/brume/transfer/1`, builds or loads the image through its engine, wires the task's
//! calls to local tunnel forwarders (`BRUME_CALL_*`) and starts it. If any instance fails, the
//! initiator stops every instance of that epoch on every host it asked ([`rollout`]), so a
//! failed deploy leaves nothing behind. The [`ledger`] records a deploy before any host is
//! asked (write-ahead) and marks it done after, so an initiator that died mid-deploy undoes it
//! when it starts again. A host keeps what it runs in [`hosted`]; on start it adopts, restarts
//! or removes those tasks ([`recovery`]) before it serves anything. A `checkpoint = "criu"`
//! instance re-placed by its owner after its host died comes with the CRIU images of its latest
//! periodic checkpoint, and the host restores it from them ([`from_images`]).

pub mod authority;
pub mod cli;
pub mod client;
pub mod deployer;
pub mod dump_claims;
pub mod from_images;
pub mod grant;
pub mod hosted;
pub mod initiator;
pub mod instances;
pub mod ledger;
pub mod recovery;
pub mod rollout;
pub mod wire;
