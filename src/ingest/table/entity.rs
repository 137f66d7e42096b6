//! A lead entity of Microsoft's Azure-table destination, turned into the
//! lead shape of the HTTPS destination (`UserDetails`, `LeadSource`,
//! `ActionCode`, `OfferTitle`, `Description`), which the rest of leadflow
//! reads. Microsoft documents no column list; the one here is what two
//! independent readers of real tables show (docs/lead-destinations.md), so
//! every column name is configuration.

use serde_json::{Map, Value};

pub use crate::config::Columns;

/// One entity, as a lead.
#[derive(Debug, Clone, PartialEq)]
pub struct TableLead {
    /// `PartitionKey` and `RowKey`: the entity's identity in the table.
    pub partition_key: String,
    pub row_key: String,
    /// The service's `Timestamp`, in milliseconds since the Unix epoch.
    pub timestamp_ms: i64,
    /// The lead, in the HTTPS destination's shape.
    pub lead: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the table's entity has no {0}: not what Query Entities returns")]
pub struct NotAnEntity(&'static str);

/// Reads an entity. An entity without its keys or `Timestamp` is not one
/// the service returns; anything else becomes a lead, however incomplete:
/// `run` dead-letters what is not a lead, with the entity's fields kept.
pub fn to_lead(entity: &Map<String, Value>, columns: &Columns) -> Result<TableLead, NotAnEntity> {
    let text = |name: &str| entity.get(name).and_then(Value::as_str).map(str::to_owned);
    let partition_key = text("PartitionKey").ok_or(NotAnEntity("PartitionKey"))?;
    let row_key = text("RowKey").ok_or(NotAnEntity("RowKey"))?;
    let timestamp_ms = text("Timestamp")
        .as_deref()
        .and_then(parse_timestamp)
        .ok_or(NotAnEntity("Timestamp"))?;
    let mut lead = Map::new();
    match text(&columns.customer_info).map(|info| serde_json::from_str::<Value>(&info)) {
        Some(Ok(details @ Value::Object(_))) => {
            lead.insert("UserDetails".into(), details);
        }
        // Kept as it is, for the dead letter to show.
        Some(_) => {
            lead.insert(
                columns.customer_info.clone(),
                entity[&columns.customer_info].clone(),
            );
        }
        None => {}
    }
    let source = text(&columns.lead_source);
    let product = text(&columns.product_id).filter(|p| !p.is_empty());
    let source = match (source, product) {
        // The offer from its own column, where LeadSource leaves it out.
        (Some(source), Some(product)) if !source.contains('|') => {
            Some(format!("{source}|{product}"))
        }
        (source, _) => source,
    };
    for (field, value) in [
        ("LeadSource", source),
        ("ActionCode", text(&columns.action_code)),
        ("OfferTitle", text(&columns.offer_title)),
        ("Description", text(&columns.description)),
    ] {
        if let Some(value) = value {
            lead.insert(field.into(), Value::String(value));
        }
    }
    Ok(TableLead {
        partition_key,
        row_key,
        timestamp_ms,
        lead,
    })
}

/// An entity's `Timestamp` (RFC 3339, up to seven decimals, UTC).
fn parse_timestamp(text: &str) -> Option<i64> {
    let at =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entity(more: serde_json::Value) -> Map<String, Value> {
        let mut entity = serde_json::json!({
            "PartitionKey": "12:2F04:2F2026",
            "RowKey": "b0c1",
            "Timestamp": "2026-12-04T17:00:00.1234567Z",
            "LeadSource": "SPZA-PLT|contoso.sales-insights",
            "ActionCode": "PLT",
            "CustomerInfo": "{\"FirstName\":\"Ana\",\"Email\":\"ana@fabrikam.com\",\"Country\":\"PT\"}",
            "OfferDisplayName": "Contoso Sales Insights",
            "Description": "Need a demo",
            "CreatedTime": "12/4/2026 5:00:00 PM"
        });
        if let (Some(base), Value::Object(more)) = (entity.as_object_mut(), more) {
            base.extend(more);
        }
        entity.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn an_entity_becomes_a_lead_in_the_https_shape() {
        let lead = to_lead(&entity(serde_json::json!({})), &Columns::default()).expect("lead");
        assert_eq!(
            (lead.partition_key.as_str(), lead.row_key.as_str()),
            ("12:2F04:2F2026", "b0c1")
        );
        assert_eq!(lead.timestamp_ms, 1_796_403_600_123);
        let json = Value::Object(lead.lead);
        assert_eq!(json["UserDetails"]["Email"], "ana@fabrikam.com");
        assert_eq!(json["LeadSource"], "SPZA-PLT|contoso.sales-insights");
        assert_eq!(json["OfferTitle"], "Contoso Sales Insights");
        assert_eq!(json["ActionCode"], "PLT");
        assert!(json.get("CreatedTime").is_none());
    }

    #[test]
    fn the_offer_comes_from_its_own_column_when_lead_source_leaves_it_out() {
        let bare = entity(
            serde_json::json!({"LeadSource": "AzureMarketplace", "ProductId": "litware.data-vault"}),
        );
        let lead = to_lead(&bare, &Columns::default()).expect("lead");
        assert_eq!(
            lead.lead["LeadSource"],
            "AzureMarketplace|litware.data-vault"
        );
    }

    #[test]
    fn column_names_are_configuration() {
        let renamed = entity(serde_json::json!({"Customer": "{\"Email\":\"raj@northwind.com\"}"}));
        let columns = Columns {
            customer_info: "Customer".into(),
            ..Columns::default()
        };
        let lead = to_lead(&renamed, &columns).expect("lead");
        assert_eq!(lead.lead["UserDetails"]["Email"], "raj@northwind.com");
    }

    #[test]
    fn customer_info_that_is_not_json_is_kept_for_the_dead_letter() {
        let broken = entity(serde_json::json!({"CustomerInfo": "Ana, ana@fabrikam.com"}));
        let lead = to_lead(&broken, &Columns::default()).expect("lead");
        assert!(lead.lead.get("UserDetails").is_none());
        assert_eq!(lead.lead["CustomerInfo"], "Ana, ana@fabrikam.com");
    }

    #[test]
    fn an_entity_without_keys_or_timestamp_is_refused() {
        let mut missing = entity(serde_json::json!({}));
        missing.remove("RowKey");
        assert_eq!(
            to_lead(&missing, &Columns::default()),
            Err(NotAnEntity("RowKey"))
        );
        let late = entity(serde_json::json!({"Timestamp": "yesterday"}));
        assert_eq!(
            to_lead(&late, &Columns::default()),
            Err(NotAnEntity("Timestamp"))
        );
    }
}
