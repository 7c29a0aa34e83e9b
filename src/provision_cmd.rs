//! `egresswatch provision`: argument parsing and human output for the provisioner.

use std::process::ExitCode;

#[derive(clap::Args)]
pub struct ProvisionArgs {}

pub fn run(_args: ProvisionArgs) -> ExitCode {
    eprintln!("egresswatch provision: not yet available in this version");
    ExitCode::from(2)
}
