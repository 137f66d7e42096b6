//! `leadflow config check FILE`: the effective configuration as TOML on
//! stdout. An invalid one fails to load before this, with exit code 1.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use leadflow::config::Config;

#[derive(Subcommand)]
pub enum ConfigCommand {
    /// Validate FILE (with `LEADFLOW_…` variables and `--set` over it) and
    /// print the effective configuration, every key with its value.
    Check { file: PathBuf },
}

/// `leadflow config check`: `config` is FILE's, loaded already.
pub fn check(config: &Config, file: &Path) -> anyhow::Result<()> {
    print!("{}", config.to_toml());
    eprintln!("{}: valid", file.display());
    Ok(())
}
