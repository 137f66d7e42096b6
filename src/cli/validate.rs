//! `leadflow validate`: where each lead of a file would go, offline, one
//! line each; exit code 1 if any would be dead-lettered.

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use clap::Args;
use leadflow::config::Config;
use leadflow::pipeline::{Pipeline, PipelineSettings};
use leadflow::stages::decode::Format;

#[derive(Args)]
pub struct ValidateArgs {
    /// JSON Lines, or one JSON lead; `-` reads standard input.
    pub file: PathBuf,
    /// One JSON object per lead, in input order.
    #[arg(long)]
    pub json: bool,
}

/// `leadflow validate`.
pub fn run(config: &Config, args: ValidateArgs) -> anyhow::Result<()> {
    let bytes = read_input(&args.file)?;
    let mut settings = PipelineSettings::from_config(config)?;
    // Lead exports are JSON, whatever the input topic carries.
    settings.input_format = Format::Json;
    let mut pipeline = Pipeline::new(settings);
    let verdicts =
        leadflow::validate::validate(config, &mut pipeline, &bytes, leadflow::metrics::now_ms());
    let mut out = std::io::stdout().lock();
    for verdict in &verdicts {
        if args.json {
            writeln!(out, "{}", serde_json::to_string(verdict)?)?;
        } else {
            writeln!(out, "{}", leadflow::validate::describe(verdict))?;
        }
    }
    let dead = verdicts
        .iter()
        .filter(|v| v.outcome == "dead_letter")
        .count();
    if dead > 0 {
        anyhow::bail!("{dead} of {} leads would be dead-lettered", verdicts.len());
    }
    Ok(())
}

/// The bytes of `file`, or of standard input for `-`.
fn read_input(file: &Path) -> anyhow::Result<Vec<u8>> {
    if file.as_os_str() == "-" {
        let mut bytes = Vec::new();
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("cannot read standard input")?;
        Ok(bytes)
    } else {
        std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))
    }
}
