//! `leadflow ingest azure-table`: reads the lead entities Microsoft writes
//! to a storage table and writes them to the input topic, exactly once.
//! Each poll asks the table for entities since the position's watermark
//! (less the overlap), and writes the new ones, wrapped in the envelope
//! (`event_id` derived from the entity's keys, `received_at` its
//! `Timestamp`), together with the position that covers them, in one Kafka
//! transaction. On start the last committed position is read back, so a
//! restart after any crash neither loses nor repeats a lead; a second
//! reader of the same table fences the first.

pub mod account;
pub mod client;
pub mod entity;
pub mod position;

use std::sync::Arc;
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::message::Message as _;
use rdkafka::producer::{BaseRecord, Producer as _};

use self::account::{Account, ConnectionError};
use self::client::{TableClient, TableError};
use self::entity::{TableLead, to_lead};
use self::position::Position;
use super::Envelope;
use crate::config::{Config, TableIngestConfig};
use crate::error::ConfigError;
use crate::health::{Observed, Phase};
use crate::kafka::txn::{Group, Txn, TxnError};
use crate::kafka::{
    DeliveryTracker, LeadProducer, Role, SetupError, check_topics, client_config, read_to_end,
    reader, send,
};

#[derive(Debug, thiserror::Error)]
pub enum TableIngestError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Connection(#[from] ConnectionError),
    #[error(transparent)]
    Table(#[from] TableError),
    #[error(transparent)]
    Setup(#[from] SetupError),
    #[error("cannot start transactions as {id:?}: {source}")]
    InitTransactions {
        id: String,
        source: rdkafka::error::KafkaError,
    },
    #[error("cannot write leads: {0}")]
    Send(rdkafka::error::KafkaError),
    #[error(transparent)]
    Txn(#[from] TxnError),
    #[error("cannot read the position from {topic:?}: {reason}")]
    Position { topic: String, reason: String },
}

/// What to do after a failed poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// Poll again with the same reader: nothing was left open in Kafka
    /// (the table could not be read, or the transaction was aborted).
    Retry,
    /// Start the reader again: the transaction's outcome is not known (a
    /// commit that timed out, say) or the producer is no longer usable. A
    /// new producer settles the open transaction, and the position is read
    /// back from what Kafka committed.
    Restart,
    /// Stop: another reader took over, or the credentials were refused.
    Exit,
}

impl TableIngestError {
    pub fn recovery(&self) -> Recovery {
        match self {
            TableIngestError::Table(e) if e.is_retriable() => Recovery::Retry,
            TableIngestError::Txn(TxnError::Aborted(_)) => Recovery::Retry,
            TableIngestError::Txn(e) if e.is_fenced() => Recovery::Exit,
            TableIngestError::Txn(_)
            | TableIngestError::Send(_)
            | TableIngestError::Position { .. }
            | TableIngestError::Setup(_) => Recovery::Restart,
            _ => Recovery::Exit,
        }
    }
}

/// Most leads written in one transaction.
const MAX_PER_POLL: usize = 1_000;

/// No consumer group: the position travels as a record, not as offsets.
struct NoGroup;

impl Group for NoGroup {
    fn group_metadata(&self) -> Option<rdkafka::consumer::ConsumerGroupMetadata> {
        None
    }

    fn commit_offsets(&self, _: &TopicPartitionList) -> rdkafka::error::KafkaResult<()> {
        Ok(())
    }
}

/// The reader, between polls.
pub struct TableIngest {
    settings: TableIngestConfig,
    client: TableClient,
    envelope: Envelope,
    txn: Txn,
    input: String,
    /// The position record's key: the Table service's endpoint (without
    /// its scheme) and the table.
    position_key: String,
    position: Position,
    observed: Observed,
    /// Whether the table was missing at the last poll, to say so once.
    missing: bool,
}

impl std::fmt::Debug for TableIngest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableIngest")
            .field("client", &self.client)
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

/// Checks the settings `ingest azure-table` needs, naming the key at fault.
pub fn check(config: &Config) -> Result<(), ConfigError> {
    let table = &config.ingest.azure_table;
    let invalid = |key: &str, reason: &str| {
        Err(ConfigError::Invalid {
            origin: "config".into(),
            key: format!("ingest.azure_table.{key}"),
            reason: reason.into(),
        })
    };
    if table.connection_string.trim().is_empty() {
        return invalid(
            "connection_string",
            "must be set: the storage account's connection string, as given to Partner Center",
        );
    }
    let valid_name = (3..=63).contains(&table.table.len())
        && table.table.bytes().all(|b| b.is_ascii_alphanumeric())
        && table
            .table
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_alphabetic());
    if !valid_name {
        return invalid(
            "table",
            "must be 3 to 63 letters and digits, starting with a letter",
        );
    }
    for (key, value) in [
        ("poll_interval_ms", table.poll_interval_ms),
        ("request_timeout_ms", table.request_timeout_ms),
    ] {
        if value == 0 {
            return invalid(key, "must be greater than 0");
        }
    }
    if table.position_topic.trim().is_empty() {
        return invalid("position_topic", "must not be empty");
    }
    Ok(())
}

impl TableIngest {
    /// Checks the settings and the credentials (a wrong key is an error
    /// now; a table not made yet is not), connects to Kafka, fences any
    /// earlier reader of the table, and reads back the position.
    pub fn start(config: &Config, observed: Observed) -> Result<TableIngest, TableIngestError> {
        check(config)?;
        let settings = config.ingest.azure_table.clone();
        let account = Account::parse(&settings.connection_string)?;
        let position_key = position_key(&account, &settings.table);
        let timeout = Duration::from_millis(settings.request_timeout_ms);
        let client = TableClient::new(account, &settings.table, timeout);
        match client.since(crate::metrics::now_ms()) {
            Ok(_) | Err(TableError::NotFound(_)) => {}
            Err(e) => return Err(e.into()),
        }
        let id: String = format!("leadflow-ingest-{position_key}")
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let delivery = config.pipeline.delivery_timeout_ms.to_string();
        let mut producer_config = client_config(&config.kafka, Role::Producer, &[]);
        producer_config
            .set("enable.idempotence", "true")
            .set("transactional.id", &id)
            .set("transaction.timeout.ms", &delivery)
            .set("message.timeout.ms", &delivery);
        let tracker = DeliveryTracker::with_health(Arc::clone(&observed.health));
        let producer: LeadProducer = producer_config
            .create_with_context(tracker)
            .map_err(SetupError::Client)?;
        let topics = [
            config.topics.input.as_str(),
            settings.position_topic.as_str(),
        ];
        check_topics(producer.client(), &config.kafka, &topics)?;
        let patience = Duration::from_millis(config.pipeline.delivery_timeout_ms);
        producer
            .init_transactions(patience)
            .map_err(|source| TableIngestError::InitTransactions { id, source })?;
        let position = read_position(config, &position_key)?;
        tracing::info!(
            table = settings.table,
            watermark = %crate::domain::rfc3339(position.watermark_ms),
            "ingest: reading the lead table"
        );
        Ok(TableIngest {
            envelope: Envelope::new(config.pipeline.max_record_bytes, config.catalog()?),
            txn: Txn::new(Arc::new(producer), true, patience),
            input: config.topics.input.clone(),
            client,
            settings,
            position_key,
            position,
            observed,
            missing: false,
        })
    }

    /// Ready from now on.
    pub fn reading(&self) {
        self.observed.health.set_phase(Phase::Taking);
    }

    /// One poll: the new entities and the position covering them, in one
    /// transaction. How many leads it wrote.
    pub fn poll(&mut self) -> Result<usize, TableIngestError> {
        let overlap = i64::try_from(self.settings.overlap_ms).unwrap_or(i64::MAX);
        let entities = match self.client.since(self.position.query_from(overlap)) {
            Ok(entities) => entities,
            Err(TableError::NotFound(table)) => {
                if !self.missing {
                    tracing::warn!(
                        table,
                        "ingest: the lead table does not exist yet; Microsoft creates it with the first lead"
                    );
                }
                self.missing = true;
                return Ok(0);
            }
            Err(e) => return Err(e.into()),
        };
        self.missing = false;
        let mut leads: Vec<TableLead> = entities
            .iter()
            .filter_map(|entity| match to_lead(entity, &self.settings.columns) {
                Ok(lead) => Some(lead),
                Err(e) => {
                    tracing::warn!(error = %e, "ingest: an entity skipped");
                    None
                }
            })
            .filter(|lead| self.position.is_new(lead))
            .collect();
        if leads.is_empty() {
            return Ok(0);
        }
        leads.sort_by(|a, b| {
            (a.timestamp_ms, &a.partition_key, &a.row_key).cmp(&(
                b.timestamp_ms,
                &b.partition_key,
                &b.row_key,
            ))
        });
        // The oldest first, a bounded number per transaction: a first run
        // over a full table commits as it goes.
        leads.truncate(MAX_PER_POLL);
        let next = self.position.after(&leads, overlap);
        match self.write(&leads, &next) {
            Ok(()) => {
                self.position = next;
                Ok(leads.len())
            }
            Err(e) if e.recovery() == Recovery::Retry => Err(e),
            Err(e) => {
                // Nothing of it is visible unless the commit went through
                // unseen: the reader is started again, and reads back
                // what Kafka committed.
                if let Err(abort) = self.txn.abort() {
                    tracing::warn!(error = %abort, "ingest: abort failed");
                }
                Err(e)
            }
        }
    }

    fn write(&self, leads: &[TableLead], next: &Position) -> Result<(), TableIngestError> {
        self.txn.begin()?;
        let producer = self.txn.producer();
        for lead in leads {
            let accepted = self.envelope.seal(
                lead.lead.clone(),
                event_id(&self.position_key, lead),
                lead.timestamp_ms,
            );
            let record = BaseRecord::to(&self.input)
                .key(accepted.key.as_bytes())
                .payload(accepted.value.as_slice());
            send(producer, record).map_err(TableIngestError::Send)?;
        }
        let position = next.to_json();
        let record = BaseRecord::to(&self.settings.position_topic)
            .key(self.position_key.as_bytes())
            .payload(position.as_slice());
        send(producer, record).map_err(TableIngestError::Send)?;
        self.txn.commit(&NoGroup, &TopicPartitionList::new())?;
        let metrics = &self.observed.metrics;
        metrics
            .records_out
            .get_or_create(&crate::metrics::TopicLabels {
                topic: self.input.clone(),
            })
            .inc_by(leads.len() as u64);
        Ok(())
    }
}

/// Where a table's position is kept, and what its event ids derive from:
/// the endpoint, not the account name, since a SAS connection string may
/// name no account, and changing the credential must change neither.
fn position_key(account: &Account, table: &str) -> String {
    let endpoint = &account.endpoint;
    let endpoint = endpoint
        .split_once("://")
        .map_or(endpoint.as_str(), |(_, r)| r);
    // Host names are case-insensitive; paths (Azurite's account) are not.
    match endpoint.split_once('/') {
        Some((host, path)) => format!("{}/{path}/{table}", host.to_ascii_lowercase()),
        None => format!("{}/{table}", endpoint.to_ascii_lowercase()),
    }
}

/// A lead's event id: a UUID (version 8) of the XXH3-128 of the endpoint,
/// table and entity keys, the same whenever the entity is read.
fn event_id(position_key: &str, lead: &TableLead) -> String {
    let name = format!("{position_key}/{}/{}", lead.partition_key, lead.row_key);
    let hash = xxhash_rust::xxh3::xxh3_128(name.as_bytes());
    uuid::Uuid::new_v8(hash.to_be_bytes()).to_string()
}

/// The last committed position of `key` in the position topic, or the
/// start of the table.
fn read_position(config: &Config, key: &str) -> Result<Position, TableIngestError> {
    let topic = &config.ingest.azure_table.position_topic;
    let failed = |reason: String| TableIngestError::Position {
        topic: topic.clone(),
        reason,
    };
    let consumer = reader(&config.kafka, &format!("leadflow-ingest-position-{key}"))
        .map_err(|e| failed(e.to_string()))?;
    let metadata = rdkafka::consumer::Consumer::fetch_metadata(
        &consumer,
        Some(topic),
        Duration::from_millis(config.kafka.connect_timeout_ms),
    )
    .map_err(|e| failed(e.to_string()))?;
    let partitions: Vec<i32> = metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect();
    let mut position = Some(Position::default());
    let patience = Duration::from_millis(config.pipeline.delivery_timeout_ms);
    read_to_end(&consumer, (topic, &partitions), patience, |record| {
        if record.key() == Some(key.as_bytes()) {
            // Unreadable is not "from the start": that would read the
            // whole table in again.
            position = record.payload().and_then(Position::from_json);
        }
    })
    .map_err(failed)?;
    position.ok_or_else(|| failed("the last position record is not one leadflow wrote".into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A commit whose outcome is not known must not be retried with the
    /// same reader: its position in memory may be behind what Kafka has.
    #[test]
    fn failures_retry_restart_or_exit_by_what_kafka_may_hold() {
        use rdkafka::error::{KafkaError, RDKafkaErrorCode};
        let kafka = || KafkaError::MessageProduction(RDKafkaErrorCode::OperationTimedOut);
        let cases = [
            (
                TableIngestError::Table(TableError::Service {
                    status: 500,
                    reason: String::new(),
                }),
                Recovery::Retry,
            ),
            (
                TableIngestError::Table(TableError::Denied {
                    status: 403,
                    reason: String::new(),
                }),
                Recovery::Exit,
            ),
            (
                TableIngestError::Txn(TxnError::Aborted(kafka())),
                Recovery::Retry,
            ),
            (
                TableIngestError::Txn(TxnError::Transaction(kafka())),
                Recovery::Restart,
            ),
            (
                TableIngestError::Txn(TxnError::TimedOut(kafka())),
                Recovery::Restart,
            ),
            (
                TableIngestError::Send(KafkaError::MessageProduction(RDKafkaErrorCode::Fatal)),
                Recovery::Restart,
            ),
            (
                TableIngestError::Position {
                    topic: "p".into(),
                    reason: String::new(),
                },
                Recovery::Restart,
            ),
        ];
        for (error, recovery) in cases {
            assert_eq!(error.recovery(), recovery, "{error}");
        }
    }

    #[test]
    fn the_key_and_a_sas_for_one_table_share_position_and_event_ids() {
        let by_key = Account::parse("AccountName=contoso;AccountKey=a2V5").expect("key");
        let by_sas = Account::parse(
            "TableEndpoint=https://Contoso.Table.Core.Windows.Net;SharedAccessSignature=sv=1&sig=x",
        )
        .expect("sas");
        let key = position_key(&by_key, "MarketplaceLeads");
        assert_eq!(key, "contoso.table.core.windows.net/MarketplaceLeads");
        assert_eq!(position_key(&by_sas, "MarketplaceLeads"), key);

        let lead = TableLead {
            partition_key: "12:2F04:2F2026".into(),
            row_key: "r1".into(),
            timestamp_ms: 0,
            lead: serde_json::Map::new(),
        };
        let id = event_id(&key, &lead);
        assert_eq!(
            uuid::Uuid::parse_str(&id).map(|u| u.get_version_num()),
            Ok(8)
        );
        assert_eq!(event_id(&key, &lead), id, "the same whenever it is read");
        let other = TableLead {
            row_key: "r2".into(),
            ..lead
        };
        assert_ne!(event_id(&key, &other), id);
    }
}
