//! brume's live migration. The decisions and transformations are pure (chunks, compression
//! choice, planner, predictor: no socket, process, clock or CRIU; time is always a parameter);
//! two modules are the edge that drives them: [`criu`] runs the `criu` program, and [`live`]
//! runs a whole migration (source and target) over any async byte stream.
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
//! freezes when the predicted downtime fits. [`live`] carries this out with real dumps and a
//! real stream: pre-copy rounds, the final round, the target's rebuild and restore, and the
//! fallback that restores the task on the source when the target cannot. Its post-copy mode
//! freezes the task once, sends everything but its memory and restores it at once; [`lazy`]
//! runs CRIU's lazy-pages processes whose page traffic [`live`] relays over the same stream
//! until the target holds every page, so the freeze does not grow with the task's memory.
//! [`track`] tells, on kernels without soft-dirty bits, which pages a running task wrote since
//! the last round (userfaultfd async write-protect and `PAGEMAP_SCAN`), and reads them.

pub mod app;
pub mod checkpointer;
pub mod chunks;
pub mod compress;
pub mod criu;
pub mod drain;
pub mod lazy;
pub mod live;
pub mod planner;
pub mod predictor;
pub mod preflight;
pub mod track;

/// Bytes in a page (x86_64's base page): the unit of the tracker, the replica and the page images.
pub use track::abi::PAGE;

#[cfg(test)]
mod testing;
