//! `brume node`: the long-running process every device runs. It reads its settings
//! ([`config`]), runs the overlay, and answers the local control socket ([`control`]) that the
//! other subcommands talk to.

mod backend;
pub mod config;
pub mod dispatch;
pub mod identity;
pub mod network_key;
pub mod resources;
pub mod run;
pub mod services;
