//! Domain types of a marketplace lead, named as Microsoft's commercial
//! marketplace names them. Nothing here knows about Kafka, I/O or metrics.

use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::catalog::{CatalogOffer, Listing};
pub use crate::reference::{Country, EmailClass};

/// Where the customer acted. Each storefront feeds one campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Storefront {
    /// AppSource: business customers, fed to the nurture campaign.
    #[serde(rename = "appsource")]
    AppSource,
    /// Azure Marketplace (and Azure portal purchases): fed to demand generation.
    AzureMarketplace,
}

impl Storefront {
    pub fn as_str(self) -> &'static str {
        match self {
            Storefront::AppSource => "appsource",
            Storefront::AzureMarketplace => "azure-marketplace",
        }
    }
}

impl fmt::Display for Storefront {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The tag before the action in `LeadSource`, e.g. `SPZA` in `SPZA-PLT|contoso.x`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum SourceTag {
    AzureMarketplace,
    AzurePortal,
    AppSource,
    TestDrive,
}

impl SourceTag {
    /// Parses a tag case-insensitively, accepting the spellings Microsoft's
    /// docs have used over time (`SPZA`, `AppSource`, `AppSource (SPZA)`).
    pub fn parse(tag: &str) -> Option<SourceTag> {
        let tag = tag.trim();
        let is = |name: &str| tag.eq_ignore_ascii_case(name);
        if is("AzureMarketplace") {
            Some(SourceTag::AzureMarketplace)
        } else if is("AzurePortal") {
            Some(SourceTag::AzurePortal)
        } else if is("SPZA") || is("AppSource") || is("AppSource (SPZA)") {
            Some(SourceTag::AppSource)
        } else if is("TestDrive") {
            Some(SourceTag::TestDrive)
        } else {
            None
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SourceTag::AzureMarketplace => "AzureMarketplace",
            SourceTag::AzurePortal => "AzurePortal",
            SourceTag::AppSource => "AppSource",
            SourceTag::TestDrive => "TestDrive",
        }
    }

    /// The storefront the tag implies; `None` for test drives, whose
    /// storefront comes from the offer catalog.
    pub fn storefront(self) -> Option<Storefront> {
        match self {
            SourceTag::AzureMarketplace | SourceTag::AzurePortal => {
                Some(Storefront::AzureMarketplace)
            }
            SourceTag::AppSource => Some(Storefront::AppSource),
            SourceTag::TestDrive => None,
        }
    }
}

/// What the customer did. Microsoft documents five codes but never promised
/// the list is complete, so unknown codes are kept, not rejected.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ActionCode {
    /// `INS`: acquired the product ("Get it now").
    Install,
    /// `PLT`: partner-led trial ("Contact me").
    PartnerLedTrial,
    /// `DNC`: do not contact.
    DoNotContact,
    /// `Create`: purchase or deploy inside the Azure portal.
    Create,
    /// `StartTestDrive`: started a test drive.
    StartTestDrive,
    /// Any other code, as sent.
    Other(String),
}

impl ActionCode {
    pub fn parse(code: &str) -> ActionCode {
        let code = code.trim();
        let is = |name: &str| code.eq_ignore_ascii_case(name);
        if is("INS") {
            ActionCode::Install
        } else if is("PLT") {
            ActionCode::PartnerLedTrial
        } else if is("DNC") {
            ActionCode::DoNotContact
        } else if is("Create") {
            ActionCode::Create
        } else if is("StartTestDrive") {
            ActionCode::StartTestDrive
        } else {
            ActionCode::Other(code.to_owned())
        }
    }

    /// The code as Microsoft spells it; used in dedupe keys and outputs.
    pub fn code(&self) -> &str {
        match self {
            ActionCode::Install => "INS",
            ActionCode::PartnerLedTrial => "PLT",
            ActionCode::DoNotContact => "DNC",
            ActionCode::Create => "Create",
            ActionCode::StartTestDrive => "StartTestDrive",
            ActionCode::Other(code) => code,
        }
    }
}

/// A set of action codes, one bit each; every unknown code shares one bit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct ActionSet(pub u8);

impl ActionSet {
    fn bit(action: &ActionCode) -> u8 {
        match action {
            ActionCode::Install => 1,
            ActionCode::PartnerLedTrial => 1 << 1,
            ActionCode::DoNotContact => 1 << 2,
            ActionCode::Create => 1 << 3,
            ActionCode::StartTestDrive => 1 << 4,
            ActionCode::Other(_) => 1 << 5,
        }
    }

    pub fn with(self, action: &ActionCode) -> ActionSet {
        ActionSet(self.0 | Self::bit(action))
    }

    pub fn without(self, action: &ActionCode) -> ActionSet {
        ActionSet(self.0 & !Self::bit(action))
    }

    /// The actions in the set, in a fixed order; unknown codes as `Other`.
    pub fn to_vec(self) -> Vec<ActionCode> {
        [
            ActionCode::Install,
            ActionCode::PartnerLedTrial,
            ActionCode::Create,
            ActionCode::StartTestDrive,
            ActionCode::DoNotContact,
            ActionCode::Other("Other".into()),
        ]
        .into_iter()
        .filter(|a| self.0 & Self::bit(a) != 0)
        .collect()
    }
}

impl Serialize for ActionCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.code())
    }
}

/// A marketplace offer, `publisherid.offerid` (e.g. `bitnami.openedxcypress`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Offer {
    pub publisher_id: String,
    pub offer_id: String,
}

impl Offer {
    /// Parses `publisher.offer`. Offer ids have no dots, publisher ids neither,
    /// so the first dot separates them.
    pub fn parse(text: &str) -> Option<Offer> {
        let (publisher, offer) = text.trim().split_once('.')?;
        let valid = |s: &str| {
            !s.is_empty()
                && s.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        };
        if !valid(publisher) || !valid(offer) {
            return None;
        }
        Some(Offer {
            publisher_id: publisher.to_ascii_lowercase(),
            offer_id: offer.to_ascii_lowercase(),
        })
    }
}

impl fmt::Display for Offer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.publisher_id, self.offer_id)
    }
}

/// A lead as it arrived, after decoding and before any interpretation.
/// Every field is optional because Microsoft's payload leaves any of them
/// out; empty strings are already `None` here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RawLead {
    pub event_id: Option<String>,
    /// Event time in milliseconds since the Unix epoch: `received_at` from
    /// the envelope, else the record timestamp.
    pub event_time_ms: i64,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    pub email: String,
    pub phone: Option<String>,
    pub country: Option<String>,
    pub company: Option<String>,
    pub title: Option<String>,
    pub lead_source: Option<String>,
    pub action_code: Option<String>,
    pub offer_title: Option<String>,
    pub description: Option<String>,
}

/// An envelope's `received_at`: milliseconds since the Unix epoch in
/// RFC 3339, UTC (`2025-03-04T10:15:02Z`).
pub fn rfc3339(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    let at = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    // Years past 9999 have no RFC 3339 form: the number says what it was.
    at.format(&Rfc3339).unwrap_or_else(|_| ms.to_string())
}

/// Marker Microsoft puts in every field of its test leads.
const TEST_LEAD_MARKER: &str = "MSFT_TEST";

impl RawLead {
    /// Microsoft's test leads carry `MSFT_TEST` in their fields.
    pub fn is_test_lead(&self) -> bool {
        [
            Some(&self.email),
            self.first_name.as_ref(),
            self.last_name.as_ref(),
            self.company.as_ref(),
            self.title.as_ref(),
            self.description.as_ref(),
        ]
        .into_iter()
        .flatten()
        .any(|field| contains_ignore_ascii_case(field, TEST_LEAD_MARKER))
    }
}

fn contains_ignore_ascii_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

/// The bytes every key of a person and offer starts with. Separators that
/// cannot occur in the parts keep distinct triples distinct; one buffer
/// hashed whole gives the same XXH3 as the streaming hasher earlier
/// versions fed part by part, so keys in existing changelogs stay valid.
fn person_offer_bytes(normalized_email: &str, offer: &Offer) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(
        normalized_email.len() + offer.publisher_id.len() + offer.offer_id.len() + 24,
    );
    bytes.extend_from_slice(normalized_email.as_bytes());
    bytes.push(b'\n');
    bytes.extend_from_slice(offer.publisher_id.as_bytes());
    bytes.push(b'.');
    bytes.extend_from_slice(offer.offer_id.as_bytes());
    bytes
}

/// Identity of a lead for de-duplication: (normalized email, offer, action).
/// Stored as a 128-bit hash so that state stays small and holds no personal data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DedupeKey(pub u128);

impl DedupeKey {
    pub fn new(normalized_email: &str, offer: &Offer, action: &ActionCode) -> DedupeKey {
        Self::hash(normalized_email, offer, Some(action))
    }

    /// Identity of a person's interest in an offer, whatever the action:
    /// (normalized email, offer). Used to remember earlier actions.
    pub fn person_offer(normalized_email: &str, offer: &Offer) -> DedupeKey {
        Self::hash(normalized_email, offer, None)
    }

    fn hash(normalized_email: &str, offer: &Offer, action: Option<&ActionCode>) -> DedupeKey {
        let mut bytes = person_offer_bytes(normalized_email, offer);
        if let Some(action) = action {
            bytes.push(b'\n');
            bytes.extend_from_slice(action.code().as_bytes());
        }
        DedupeKey(xxhash_rust::xxh3::xxh3_128(&bytes))
    }

    /// The keys of (email, offer, code) for each of `codes`, as
    /// [`DedupeKey::new`] makes them for actions of these codes.
    pub fn with_codes<'c>(
        normalized_email: &str,
        offer: &Offer,
        codes: impl Iterator<Item = &'c str>,
    ) -> impl Iterator<Item = (&'c str, DedupeKey)> {
        let mut bytes = person_offer_bytes(normalized_email, offer);
        bytes.push(b'\n');
        let prefix = bytes.len();
        codes.map(move |code| {
            bytes.truncate(prefix);
            bytes.extend_from_slice(code.as_bytes());
            (code, DedupeKey(xxhash_rust::xxh3::xxh3_128(&bytes)))
        })
    }

    /// Lower-case hex, used as the record key of every output.
    pub fn to_hex(self) -> String {
        self.hex().as_str().to_owned()
    }

    /// [`DedupeKey::to_hex`] without allocating, for the per-record path.
    pub fn hex(self) -> HexKey {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut text = [0u8; 32];
        for (i, slot) in text.iter_mut().enumerate() {
            let shift = 124 - 4 * i;
            *slot = DIGITS[((self.0 >> shift) & 0xf) as usize];
        }
        HexKey(text)
    }
}

/// A dedupe key's 32 lower-case hex digits, on the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HexKey([u8; 32]);

impl HexKey {
    pub fn as_str(&self) -> &str {
        // Only ASCII hex digits are ever written.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

/// How senior a job title is, for fit scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Seniority {
    CLevel,
    #[serde(rename = "vp")]
    VicePresident,
    Director,
    Manager,
    /// A title that names no management level.
    #[serde(rename = "ic")]
    IndividualContributor,
}

impl Seniority {
    pub fn as_str(self) -> &'static str {
        match self {
            Seniority::CLevel => "c-level",
            Seniority::VicePresident => "vp",
            Seniority::Director => "director",
            Seniority::Manager => "manager",
            Seniority::IndividualContributor => "ic",
        }
    }
}

/// A lead after enrichment: interpreted, normalized and ready to dedupe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lead {
    pub event_id: Option<String>,
    pub event_time_ms: i64,
    pub storefront: Storefront,
    pub source_tag: SourceTag,
    pub action: ActionCode,
    pub offer: Offer,
    /// `OfferTitle` as sent.
    pub offer_title: Option<String>,
    /// The offer's catalog entry; `None` when the catalog does not list it.
    pub catalogued: Option<Arc<CatalogOffer>>,
    /// Normalized per the provider rules in `enrich::normalize_email`.
    pub email: String,
    /// Everything after the `@` of the normalized email.
    pub email_domain: String,
    /// The domain an organisation registered, e.g. `contoso.co.uk`.
    pub registrable_domain: String,
    pub email_class: EmailClass,
    pub first_name: Option<String>,
    pub last_name: Option<String>,
    /// The phone as sent.
    pub phone: Option<String>,
    /// The phone in E.164, when it is a valid number.
    pub phone_e164: Option<String>,
    /// The country as sent.
    pub country_code: Option<String>,
    /// The country, when the code is ISO 3166 alpha-2 or alpha-3.
    pub country: Option<&'static Country>,
    pub company: Option<String>,
    pub title: Option<String>,
    /// `None` when there is no title.
    pub seniority: Option<Seniority>,
    /// Share of the optional profile fields present, 0–100.
    pub completeness: u8,
    pub description: Option<String>,
    pub dedupe_key: DedupeKey,
    /// (email, offer) without the action: see [`DedupeKey::person_offer`].
    pub person_offer_key: DedupeKey,
    /// Other actions this person took on this offer before, as far as the
    /// dedupe state knows.
    pub earlier_actions: Vec<ActionCode>,
}

impl Lead {
    /// The kind of listing the lead came from; `unknown` when the catalog
    /// does not list its offer.
    pub fn listing(&self) -> Listing {
        self.catalogued
            .as_ref()
            .map_or(Listing::Unknown, |c| c.listing)
    }

    /// The offer's type as the catalog names it, else `unknown`.
    pub fn offer_type(&self) -> &str {
        self.catalogued
            .as_ref()
            .map_or(crate::catalog::UNKNOWN, |c| c.offer_type.as_str())
    }

    /// The publisher's display name from the catalog, else `unknown`.
    pub fn publisher(&self) -> &str {
        self.catalogued
            .as_ref()
            .map_or(crate::catalog::UNKNOWN, |c| c.publisher.as_str())
    }
}

/// Qualification grade on the combined score, A (best) to D.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Grade {
    A,
    B,
    C,
    D,
}

impl Grade {
    pub fn as_str(self) -> &'static str {
        match self {
            Grade::A => "A",
            Grade::B => "B",
            Grade::C => "C",
            Grade::D => "D",
        }
    }
}

/// The outcome of scoring: points, grade and the reasons behind them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Score {
    /// Behaviour plus fit, 0–100.
    pub points: u8,
    pub behaviour: i32,
    pub fit: i32,
    pub grade: Grade,
    /// Marketing-qualified: enough behaviour and enough fit.
    pub mql: bool,
    /// The largest contributions, e.g. `"action PLT +50"`.
    pub reasons: Vec<Arc<str>>,
    pub rules_version: Arc<str>,
}

/// Why a lead was kept away from every campaign.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SuppressionReason {
    /// The customer asked not to be contacted (`DNC`).
    DoNotContact,
    /// The address is from a throw-away mail service.
    DisposableEmail,
}

impl SuppressionReason {
    pub fn as_str(self) -> &'static str {
        match self {
            SuppressionReason::DoNotContact => "do_not_contact",
            SuppressionReason::DisposableEmail => "disposable_email",
        }
    }
}

/// Leads for unit tests of the stages.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use crate::catalog::OfferType;

    /// Puts `lead`'s offer in the catalog as an offer of `offer_type`, by
    /// publisher Fabrikam, and gives the lead that type's listing.
    pub fn catalogued(lead: &mut Lead, offer_type: OfferType) {
        lead.catalogued = Some(Arc::new(CatalogOffer {
            offer: lead.offer.clone(),
            title: "Offer".into(),
            storefront: lead.storefront,
            listing: Listing::of(Some(&offer_type)),
            offer_type,
            publisher: "Fabrikam".into(),
        }));
    }

    /// A minimal valid lead of the given storefront and action.
    pub fn lead(storefront: Storefront, action: ActionCode) -> Lead {
        let offer = Offer::parse("contoso.x").expect("offer");
        Lead {
            event_id: None,
            event_time_ms: 0,
            storefront,
            source_tag: SourceTag::AzureMarketplace,
            dedupe_key: DedupeKey::new("a@b.com", &offer, &action),
            person_offer_key: DedupeKey::person_offer("a@b.com", &offer),
            action,
            offer,
            offer_title: None,
            catalogued: None,
            email: "a@b.com".into(),
            email_domain: "b.com".into(),
            registrable_domain: "b.com".into(),
            email_class: EmailClass::Business,
            first_name: None,
            last_name: None,
            phone: None,
            phone_e164: None,
            country_code: None,
            country: None,
            company: None,
            title: None,
            seniority: None,
            completeness: 0,
            description: None,
            earlier_actions: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_tags_accept_documented_spellings() {
        assert_eq!(SourceTag::parse("SPZA"), Some(SourceTag::AppSource));
        assert_eq!(
            SourceTag::parse("appsource (spza)"),
            Some(SourceTag::AppSource)
        );
        assert_eq!(
            SourceTag::parse("AzurePortal"),
            Some(SourceTag::AzurePortal)
        );
        assert_eq!(
            SourceTag::AzurePortal.storefront(),
            Some(Storefront::AzureMarketplace)
        );
        assert_eq!(SourceTag::TestDrive.storefront(), None);
        assert_eq!(SourceTag::parse("Bing"), None);
    }

    #[test]
    fn action_codes_are_an_open_enumeration() {
        assert_eq!(ActionCode::parse("ins"), ActionCode::Install);
        assert_eq!(ActionCode::parse(" DNC "), ActionCode::DoNotContact);
        let other = ActionCode::parse("Subscribe");
        assert_eq!(other, ActionCode::Other("Subscribe".into()));
        assert_eq!(other.code(), "Subscribe");
    }

    #[test]
    fn offers_split_publisher_and_offer() {
        let offer = Offer::parse("Contoso.Sales-Insights").expect("valid offer");
        assert_eq!(offer.publisher_id, "contoso");
        assert_eq!(offer.offer_id, "sales-insights");
        assert_eq!(offer.to_string(), "contoso.sales-insights");
        assert_eq!(Offer::parse("nodot"), None);
        assert_eq!(Offer::parse(".x"), None);
        assert_eq!(Offer::parse("a b.c"), None);
    }

    #[test]
    fn dedupe_key_depends_on_every_part() {
        let offer = Offer::parse("contoso.gateway").expect("valid offer");
        let other_offer = Offer::parse("contoso.other").expect("valid offer");
        let a = DedupeKey::new("a@x.com", &offer, &ActionCode::Install);
        assert_eq!(a, DedupeKey::new("a@x.com", &offer, &ActionCode::Install));
        assert_ne!(a, DedupeKey::new("b@x.com", &offer, &ActionCode::Install));
        assert_ne!(
            a,
            DedupeKey::new("a@x.com", &other_offer, &ActionCode::Install)
        );
        assert_ne!(a, DedupeKey::new("a@x.com", &offer, &ActionCode::Create));
        assert_eq!(a.to_hex().len(), 32);
        assert_eq!(a.to_hex(), format!("{:032x}", a.0));
        // The streamed hash is the one-buffer hash that existing changelogs hold.
        let one_buffer = xxhash_rust::xxh3::xxh3_128(b"a@x.com\ncontoso.gateway\nINS");
        assert_eq!(a.0, one_buffer);
        assert_eq!(
            DedupeKey(1).hex().as_str(),
            "00000000000000000000000000000001"
        );
    }

    #[test]
    fn test_leads_are_recognised_in_any_field() {
        let mut lead = RawLead {
            email: "someone@contoso.com".into(),
            ..RawLead::default()
        };
        assert!(!lead.is_test_lead());
        lead.company = Some("msft_test_636573304831318844".into());
        assert!(lead.is_test_lead());
    }
}
