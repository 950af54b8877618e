//! Healing: a host that dies takes its instances with it, and the initiator that deployed them
//! notices and runs them again elsewhere (issue 15, "Failure" and "Replicas"; docs/healing.md).
//!
//! * [`phi`]: the phi-accrual failure detector, fed heartbeat arrivals (no clock of its own);
//! * [`watch`]: the hosts watched and the rule that declares one dead (phi above the threshold
//!   and its connection down, or silent for several periods);
//! * [`replace`]: where each instance of the dead hosts goes (a pure function of the ledger,
//!   the dead set and a fresh map; replicas stay on distinct hosts);
//! * [`retire`]: the copies left on hosts declared dead, asked to stop until they answer (after
//!   a partition heals the newer generation wins);
//! * [`retire_book`]: those copies on disk, so that a restarted initiator still asks;
//! * [`retired`]: the host's side: a copy removed keeps its log tail and state on disk;
//! * [`healer`]: the thin async shell: heartbeats every `heartbeat_interval_ms` to the hosts in
//!   the ledger, the judgement every period, and the re-placement (a signed deploy at the next
//!   generation, the ledger, `Moved` to the callers), from the latest checkpoint kept;
//! * [`checkpointer`]: on a host, the periodic capture of the instances that ask for it
//!   (`checkpoint_every_s`), sent to their owner: the task's answer to `CHECKPOINT`
//!   (`checkpoint = "app"`) or a CRIU dump of it (`checkpoint = "criu"`, either engine);
//! * [`criu_images`]: such a dump as it travels, and its archive (packed, and unpacked safely);
//! * [`checkpoints`]: on the owner, the latest checkpoint of each, on disk;
//! * [`checkpoint_relay`]: the owner passing each latest checkpoint on to the record's holders;
//! * [`delegation`]: the owner's signed word naming the holders of its service records;
//! * [`record_replicas`]: a service's record and the holder's bounded book of them, on disk;
//! * [`takeover`]: which holder re-places a dead owner's lost instances, and when;
//! * [`replicator`]: the I/O of the three: the owner's pushes, the holder's watch and takeover;
//! * [`holder`]: a holder keeping records, their artifacts and their instances' checkpoints;
//! * [`owner_return`]: an owner back from the dead (or a freeze) learning what its holders did.

pub mod checkpoint_relay;
pub mod checkpointer;
pub mod checkpoints;
pub mod criu_images;
pub mod delegation;
pub mod healer;
pub mod holder;
pub mod owner_return;
pub mod phi;
pub mod record_replicas;
pub mod replace;
pub mod replicator;
pub mod retire;
pub mod retire_book;
pub mod retired;
pub mod takeover;
pub mod watch;
