//! `brume bench migration`: live migration against stop-and-copy over shaped links.
//! (Being built; see issue 6.)

use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct MigrationArgs {}

pub fn run(_args: &MigrationArgs) -> anyhow::Result<()> {
    anyhow::bail!("brume bench migration is not built yet")
}
