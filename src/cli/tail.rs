//! `leadflow tail`: prints a topic's records, one per line, until `--max`,
//! `--exit-at-end` or Ctrl-C; a reader that stops reading (`| head`) is no error.

use std::io::Write as _;

use clap::Args;
use leadflow::config::Config;
use leadflow::kafka::tail::{self, TailError, TailOptions};

#[derive(Args)]
pub struct TailArgs {
    pub topic: String,
    /// Start at the oldest record [default: only new records].
    #[arg(long)]
    pub from_beginning: bool,
    /// Stop after N records.
    #[arg(long, value_name = "N")]
    pub max: Option<u64>,
    /// Stop once every partition is read to its end.
    #[arg(long)]
    pub exit_at_end: bool,
    /// One JSON object per record.
    #[arg(long)]
    pub json: bool,
    /// Only when each record's lead entered leadflow (ms since the epoch:
    /// its `leadflow.source.timestamp` header, else its own timestamp),
    /// one per line, without reading values: for timing arrivals.
    #[arg(long, conflicts_with = "json")]
    pub timestamps: bool,
}

/// `leadflow tail`.
pub fn run(config: &Config, args: TailArgs) -> anyhow::Result<()> {
    let TailArgs {
        topic,
        from_beginning,
        max,
        exit_at_end,
        json,
        timestamps,
    } = args;
    let options = TailOptions {
        from_beginning,
        max,
        exit_at_end,
        positions_only: timestamps,
    };
    let mut out = std::io::stdout().lock();
    let printed = tail::tail(config, &topic, options, |record| {
        if timestamps {
            writeln!(out, "{}", record.timestamp_ms.unwrap_or(-1))
        } else if json {
            let line = serde_json::to_string(&record).map_err(std::io::Error::other)?;
            writeln!(out, "{line}")
        } else {
            writeln!(out, "{}", tail::describe(&record))
        }
    });
    match printed {
        // A reader that stopped reading (`| head`) is no failure.
        Err(TailError::Output(e)) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => other.map(|_| ()).map_err(Into::into),
    }
}
