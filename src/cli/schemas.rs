//! `leadflow schemas check|register`: one line per subject on stdout; exit
//! code 1 if the registry would refuse, or refused, any schema.

use clap::Subcommand;
use leadflow::config::Config;
use leadflow::registry::{Compatibility, Registration, RegistryClient, topic_schemas};

#[derive(Subcommand)]
pub enum SchemasCommand {
    /// Whether each schema may be registered under its subject by the
    /// registry's compatibility rule. Exit code 1 if any may not.
    Check,
    /// Register each schema under its subject (a schema registered
    /// already keeps its id). Exit code 1 if the registry refuses any.
    Register,
}

/// `leadflow schemas check|register`: one line per subject.
pub fn run(config: &Config, command: SchemasCommand) -> anyhow::Result<()> {
    let schemas = topic_schemas(config);
    if schemas.is_empty() {
        anyhow::bail!("no topic uses the confluent-avro format, so no schema needs the registry");
    }
    let client = RegistryClient::new(&config.schema_registry)?;
    let mut refused = 0;
    for topic in &schemas {
        let verdict = match command {
            SchemasCommand::Check => match client.check(&topic.subject, topic.schema)? {
                Compatibility::Compatible => "compatible".to_owned(),
                Compatibility::NoSubject => {
                    "compatible (the subject has no version yet)".to_owned()
                }
                Compatibility::Incompatible(messages) => {
                    refused += 1;
                    format!("INCOMPATIBLE: {}", messages.join("; "))
                }
            },
            SchemasCommand::Register => match client.register(&topic.subject, topic.schema)? {
                Registration::Registered(id) => format!("registered, id {id}"),
                Registration::Incompatible(message) => {
                    refused += 1;
                    format!("REFUSED: {message}")
                }
            },
        };
        println!(
            "{} ({} for {}): {verdict}",
            topic.subject, topic.file, topic.topic
        );
    }
    if refused > 0 {
        anyhow::bail!(
            "{refused} of {} schemas refused by {}",
            schemas.len(),
            client.url()
        );
    }
    Ok(())
}
