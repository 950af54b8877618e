//! brume's live migration, the pure part: everything that decides or transforms, nothing that
//! touches a socket, a process, a clock or CRIU (time is always a parameter).
//!
//! How data flows during a migration (DESIGN.md step 7): each pre-copy round dumps the task while
//! it keeps running; its image files are cut into 4 KiB content-addressed chunks ([`chunks`]);
//! the chunks are compared with the set of digests the target already holds, from this task's
//! earlier rounds and from every other task, so only the delta travels, with a recipe per file that
//! lets the target rebuild it exactly; the delta is compressed at the zstd level that
//! [`compress::Chooser`] picks every 100 ms from measured compression cost, ratio and link
//! bandwidth (seed 003), and goes on the wire. Between rounds the [`planner`] state machine decides
//! whether to run another pre-copy round, freeze the task for the final dump, or abort and keep
//! the source running; the [`predictor`] (seed 000), learned online from every dump, tells it how
//! long a dump and the final downtime will take, so it starts in time before a deadline and only
//! freezes when the predicted downtime fits.

pub mod chunks;
pub mod compress;
pub mod criu;
pub mod planner;
pub mod predictor;
