//! `leadflow topics create|counts`: creates the topics that do not exist yet
//! (naming each on stderr), or prints each topic's record count as JSON.

use clap::Subcommand;
use leadflow::config::Config;
use leadflow::kafka::topics;

#[derive(Subcommand)]
pub enum TopicsCommand {
    /// Create the topics that do not exist yet: input, campaign, suppressed,
    /// dead-letter, and the repartition and changelog topics `run` uses.
    Create {
        #[arg(long, default_value_t = 12)]
        partitions: i32,
        /// Replicas of each partition [default: the broker's
        /// `default.replication.factor`]. 3 on a production cluster.
        #[arg(long)]
        replication_factor: Option<i32>,
        /// The topics' `min.insync.replicas` [default: the broker's]. 2 with
        /// 3 replicas: a write survives the loss of one broker.
        #[arg(long)]
        min_insync_replicas: Option<u32>,
    },
    /// Print the number of records in each of leadflow's topics as JSON.
    Counts,
}

/// `leadflow topics create`.
pub fn create(
    config: &Config,
    runtime: &tokio::runtime::Runtime,
    partitions: i32,
    replication_factor: Option<i32>,
    min_insync_replicas: Option<u32>,
) -> anyhow::Result<()> {
    let roles = topics::roles(config);
    let named: Vec<(&str, topics::TopicRole)> = roles
        .iter()
        .map(|(name, role)| (name.as_str(), *role))
        .collect();
    let layout = topics::Layout {
        partitions,
        replication_factor,
        min_insync_replicas,
    };
    let created = runtime.block_on(topics::create(
        &config.kafka,
        &named,
        layout,
        config.pipeline.max_record_bytes,
    ))?;
    for name in created {
        eprintln!("created {name}");
    }
    Ok(())
}

/// `leadflow topics counts`.
pub fn counts(config: &Config) -> anyhow::Result<()> {
    let names = config.all_topics();
    let names: Vec<&str> = names.iter().map(String::as_str).collect();
    let counts = topics::counts(&config.kafka, &names)?;
    let map: serde_json::Map<String, serde_json::Value> = names
        .iter()
        .zip(counts)
        .map(|(name, count)| ((*name).to_owned(), count.into()))
        .collect();
    println!("{}", serde_json::Value::Object(map));
    Ok(())
}
