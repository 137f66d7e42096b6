//! The publisher's offer catalog: what a lead's payload does not say about
//! its offer. Microsoft's payload names the offer (and only sometimes by
//! id), never its type or publisher, so a TOML file of the publisher's
//! offers supplies them: each offer's id, title, storefront, offer type and
//! publisher. The catalog resolves bare leads (offer by title) and test
//! drives (storefront by offer), and gives every lead its listing
//! ([`Listing::of`], rule and sources in docs/listings.md). It is checked
//! whole when loaded and then only read; a reload swaps it between two
//! transactions, like the scoring rules.

// Seeded foldhash rather than SipHash: looked up with text from every lead.
use foldhash::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::domain::{Offer, Storefront};
use crate::error::{ConfigError, parse_toml, read};

/// An offer type as Partner Center names it. Microsoft adds types over
/// time, so a type leadflow does not know is kept by its id
/// ([`OfferType::Other`]) rather than refused.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum OfferType {
    Saas,
    /// Solution template or managed application.
    AzureApplication,
    VirtualMachine,
    /// Container image or Kubernetes application.
    Container,
    IotEdgeModule,
    ConsultingService,
    ManagedService,
    /// Dynamics 365 apps on Dataverse and Power Apps, Business Central,
    /// Operations apps.
    Dynamics365,
    /// Power BI apps and visuals.
    PowerBi,
    /// Office add-ins, Teams apps, SharePoint solutions.
    Microsoft365,
    /// A type leadflow does not know, by its id.
    Other(Box<str>),
}

/// Known types: the id leadflow writes, then other names it reads, after
/// lower-casing and turning spaces and underscores into hyphens
/// (so Partner Center's "Azure application" is read as one).
const KNOWN: &[(OfferType, &str, &[&str])] = &[
    (OfferType::Saas, "saas", &["software-as-a-service"]),
    (
        OfferType::AzureApplication,
        "azure-application",
        &["solution-template", "managed-application", "azure-app"],
    ),
    (
        OfferType::VirtualMachine,
        "virtual-machine",
        &["azure-virtual-machine", "vm"],
    ),
    (
        OfferType::Container,
        "container",
        &["azure-container", "kubernetes-app", "container-image"],
    ),
    (OfferType::IotEdgeModule, "iot-edge-module", &["iot-edge"]),
    (
        OfferType::ConsultingService,
        "consulting-service",
        &["consulting-services", "consulting"],
    ),
    (
        OfferType::ManagedService,
        "managed-service",
        &["managed-services"],
    ),
    (
        OfferType::Dynamics365,
        "dynamics-365",
        &["dynamics-365-app", "dynamics-365-apps"],
    ),
    (
        OfferType::PowerBi,
        "power-bi",
        &["power-bi-app", "power-bi-apps", "power-bi-visual"],
    ),
    (
        OfferType::Microsoft365,
        "microsoft-365",
        &["microsoft-365-app", "microsoft-365-apps", "office-365"],
    ),
];

impl OfferType {
    /// Reads an offer type by id or by Partner Center's name, in any case.
    /// `None` when the text cannot be an id (empty, or not letters,
    /// digits and separators).
    pub fn parse(text: &str) -> Option<OfferType> {
        let id: String = text
            .trim()
            .chars()
            .map(|c| match c {
                ' ' | '_' => '-',
                c => c.to_ascii_lowercase(),
            })
            .collect();
        let well_formed = !id.is_empty()
            && id.len() <= 64
            && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
        if !well_formed {
            return None;
        }
        let known = KNOWN
            .iter()
            .find(|(_, name, aliases)| *name == id || aliases.contains(&id.as_str()));
        Some(match known {
            Some((offer_type, ..)) => offer_type.clone(),
            None => OfferType::Other(id.into()),
        })
    }

    /// The id leadflow writes, e.g. `azure-application`.
    pub fn as_str(&self) -> &str {
        match self {
            OfferType::Other(id) => id,
            known => KNOWN
                .iter()
                .find(|(t, ..)| t == known)
                .map_or("other", |(_, id, _)| id),
        }
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, OfferType::Other(_))
    }

    /// The storefronts Microsoft lists a known type on (all, for a type
    /// leadflow does not know).
    pub fn storefronts(&self) -> &'static [Storefront] {
        use Storefront::{AppSource, AzureMarketplace};
        match self {
            OfferType::AzureApplication
            | OfferType::VirtualMachine
            | OfferType::Container
            | OfferType::IotEdgeModule
            | OfferType::ManagedService => &[AzureMarketplace],
            OfferType::Dynamics365 | OfferType::PowerBi | OfferType::Microsoft365 => &[AppSource],
            OfferType::Saas | OfferType::ConsultingService | OfferType::Other(_) => {
                &[AppSource, AzureMarketplace]
            }
        }
    }
}

impl fmt::Display for OfferType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for OfferType {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for OfferType {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        OfferType::parse(&text).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "{text:?} is not an offer type: letters, digits, spaces and hyphens"
            ))
        })
    }
}

/// The kind of listing a lead came from: the storefront's section. Both
/// storefronts have the same sections (docs/listings.md), so the
/// storefront, a field of its own on every lead, does not change it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Listing {
    /// The apps section: every offer type that is not a service.
    App,
    /// A consulting service ("Contact me" only).
    ConsultingService,
    /// An Azure Lighthouse managed service (Azure Marketplace).
    ManagedService,
    /// The offer is not in the catalog, so its type is not known.
    Unknown,
}

impl Listing {
    pub const ALL: [Listing; 4] = [
        Listing::App,
        Listing::ConsultingService,
        Listing::ManagedService,
        Listing::Unknown,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Listing::App => "app",
            Listing::ConsultingService => "consulting-service",
            Listing::ManagedService => "managed-service",
            Listing::Unknown => "unknown",
        }
    }

    /// The listing of an offer of `offer_type` (`None`: not in the
    /// catalog). Services list as services; everything else, types
    /// leadflow does not know included, in the apps section, where all but
    /// services list (guessing from a name would take "Software as a
    /// Service" for a service).
    pub fn of(offer_type: Option<&OfferType>) -> Listing {
        match offer_type {
            None => Listing::Unknown,
            Some(OfferType::ConsultingService) => Listing::ConsultingService,
            Some(OfferType::ManagedService) => Listing::ManagedService,
            Some(_) => Listing::App,
        }
    }

    /// Reads a listing id, for route filters and scoring rules.
    pub fn parse(text: &str) -> Option<Listing> {
        Listing::ALL.into_iter().find(|l| l.as_str() == text.trim())
    }
}

impl fmt::Display for Listing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One offer the publisher lists, as the catalog file writes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogEntry {
    /// `publisher.offer`, as in `LeadSource`.
    pub id: String,
    /// The offer's display name, as in `OfferTitle`.
    pub title: String,
    /// The storefront the offer is listed on; test drives take theirs from it.
    pub storefront: Storefront,
    /// Partner Center's offer type, e.g. `saas` or `consulting-service`.
    #[serde(rename = "type")]
    pub offer_type: OfferType,
    /// The publisher's display name, e.g. `Contoso Ltd`.
    pub publisher: String,
}

/// The catalog file as written.
#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogFile {
    #[serde(default, rename = "offer")]
    pub offers: Vec<CatalogEntry>,
}

impl CatalogFile {
    /// The file's text, as `leadflow produce` and the demo write it.
    pub fn to_toml(&self) -> String {
        // A list of plain tables always has a TOML form.
        toml::to_string(self).unwrap_or_default()
    }
}

/// One catalogued offer, checked, as leads carry it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CatalogOffer {
    pub offer: Offer,
    pub title: String,
    pub storefront: Storefront,
    pub offer_type: OfferType,
    pub publisher: String,
    /// [`Listing::of`] the offer type, worked out once per offer.
    pub listing: Listing,
}

/// What a record says of an offer the catalog does not list.
pub const UNKNOWN: &str = "unknown";

/// The catalog, checked and indexed.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    offers: Vec<Arc<CatalogOffer>>,
    /// Lower-cased, trimmed title → index into `offers`.
    by_title: HashMap<String, usize>,
    by_offer: HashMap<Offer, usize>,
}

impl Catalog {
    /// Reads and checks a catalog file.
    pub fn load(path: &Path) -> Result<Catalog, ConfigError> {
        Catalog::parse(path, &read(path)?)
    }

    /// Parses and checks catalog text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<Catalog, ConfigError> {
        let file: CatalogFile = parse_toml(path, text)?;
        Catalog::from_entries(file.offers).map_err(|(key, reason)| ConfigError::Invalid {
            origin: path.display().to_string(),
            key,
            reason,
        })
    }

    /// Checks entries: ids are `publisher.offer`, and neither ids nor
    /// titles repeat (a bare lead is found by its title). On error, the
    /// key at fault and why.
    pub fn from_entries(entries: Vec<CatalogEntry>) -> Result<Catalog, (String, String)> {
        let mut catalog = Catalog::default();
        for (i, entry) in entries.into_iter().enumerate() {
            let at = |field: &str| format!("offer[{i}].{field}");
            let offer = Offer::parse(&entry.id)
                .ok_or_else(|| (at("id"), format!("{:?} is not publisher.offer", entry.id)))?;
            for (field, value) in [("title", &entry.title), ("publisher", &entry.publisher)] {
                if value.trim().is_empty() {
                    return Err((at(field), "must not be empty".into()));
                }
            }
            let title = entry.title.trim().to_lowercase();
            if catalog.by_offer.contains_key(&offer) {
                return Err((at("id"), format!("{offer} is listed twice")));
            }
            if catalog.by_title.contains_key(&title) {
                let reason = format!("{:?} is another offer's title too", entry.title);
                return Err((at("title"), reason));
            }
            catalog.by_offer.insert(offer.clone(), i);
            catalog.by_title.insert(title, i);
            catalog.offers.push(Arc::new(CatalogOffer {
                offer,
                title: entry.title,
                storefront: entry.storefront,
                listing: Listing::of(Some(&entry.offer_type)),
                offer_type: entry.offer_type,
                publisher: entry.publisher,
            }));
        }
        Ok(catalog)
    }

    pub fn len(&self) -> usize {
        self.offers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.offers.is_empty()
    }

    pub fn offers(&self) -> impl Iterator<Item = &Arc<CatalogOffer>> {
        self.offers.iter()
    }

    /// The offer with this id.
    pub fn offer(&self, offer: &Offer) -> Option<&Arc<CatalogOffer>> {
        self.offers.get(*self.by_offer.get(offer)?)
    }

    /// The offer with this title, ignoring case and surrounding space.
    pub fn offer_by_title(&self, title: &str) -> Option<&Arc<CatalogOffer>> {
        self.offers
            .get(*self.by_title.get(&title.trim().to_lowercase())?)
    }

    /// Logs what in the catalog is probably a mistake: types leadflow does
    /// not know and offers on a storefront their type is not listed on.
    pub fn warn_about_mistakes(&self) {
        let unknown = self.unknown_types();
        if !unknown.is_empty() {
            tracing::warn!(
                types = ?unknown,
                "catalog: offer types leadflow does not know; their leads are listed as apps"
            );
        }
        let misplaced = self.misplaced();
        if !misplaced.is_empty() {
            tracing::warn!(
                offers = ?misplaced,
                "catalog: offers on a storefront Microsoft does not list their type on"
            );
        }
    }

    /// Offers listed on a storefront Microsoft does not list their type
    /// on (a virtual machine on AppSource, say), for a warning: the entry
    /// is probably wrong.
    pub fn misplaced(&self) -> Vec<String> {
        self.offers
            .iter()
            .filter(|o| !o.offer_type.storefronts().contains(&o.storefront))
            .map(|o| format!("{} ({} on {})", o.offer, o.offer_type, o.storefront))
            .collect()
    }

    /// Offer types in the catalog that leadflow does not know, for a
    /// warning: a misspelt known type reads as an unknown one.
    pub fn unknown_types(&self) -> Vec<&str> {
        let mut types: Vec<&str> = self
            .offers
            .iter()
            .filter(|o| !o.offer_type.is_known())
            .map(|o| o.offer_type.as_str())
            .collect();
        types.sort_unstable();
        types.dedup();
        types
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Catalog, String> {
        Catalog::parse(Path::new("catalog.toml"), text).map_err(|e| e.to_string())
    }

    const ONE: &str = r#"
        [[offer]]
        id = "contoso.sales-insights"
        title = "Contoso Sales Insights"
        storefront = "appsource"
        type = "SaaS"
        publisher = "Contoso"
    "#;

    #[test]
    fn reads_offer_types_by_id_and_by_partner_center_name() {
        let cases = [
            ("saas", OfferType::Saas),
            ("SaaS", OfferType::Saas),
            ("Azure application", OfferType::AzureApplication),
            ("managed_application", OfferType::AzureApplication),
            ("Consulting service", OfferType::ConsultingService),
            ("Dynamics 365 apps", OfferType::Dynamics365),
            ("Power BI visual", OfferType::PowerBi),
            ("IoT Edge module", OfferType::IotEdgeModule),
            (
                "Azure Virtual Desktop",
                OfferType::Other("azure-virtual-desktop".into()),
            ),
        ];
        for (text, wanted) in cases {
            assert_eq!(OfferType::parse(text), Some(wanted), "{text}");
        }
        assert_eq!(OfferType::parse(""), None);
        assert_eq!(OfferType::parse("saas; drop table"), None);
    }

    #[test]
    fn every_known_type_reads_back_from_its_own_id() {
        for (offer_type, id, _) in KNOWN {
            assert_eq!(offer_type.as_str(), *id);
            assert_eq!(OfferType::parse(id).as_ref(), Some(offer_type));
        }
    }

    #[test]
    fn the_listing_follows_from_the_offer_type() {
        let of = |offer_type: &str| Listing::of(OfferType::parse(offer_type).as_ref());
        for app in [
            "saas",
            "power-bi",
            "virtual-machine",
            "azure-application",
            "quantum-widget",
        ] {
            assert_eq!(of(app), Listing::App, "{app}");
        }
        assert_eq!(of("Consulting service"), Listing::ConsultingService);
        assert_eq!(of("managed-service"), Listing::ManagedService);
        assert_eq!(Listing::of(None), Listing::Unknown);
        for listing in Listing::ALL {
            assert_eq!(Listing::parse(listing.as_str()), Some(listing));
        }
    }

    #[test]
    fn names_offers_on_a_storefront_their_type_is_not_listed_on() {
        let catalog = parse(ONE).expect("catalog");
        assert!(catalog.misplaced().is_empty());
        let vm = ONE.replace("SaaS", "Azure virtual machine");
        let catalog = parse(&vm).expect("catalog");
        assert_eq!(
            catalog.misplaced(),
            ["contoso.sales-insights (virtual-machine on appsource)"]
        );
    }

    #[test]
    fn finds_offers_by_id_and_by_title() {
        let catalog = parse(ONE).expect("catalog");
        let offer = Offer::parse("Contoso.Sales-Insights").expect("offer");
        let entry = catalog.offer(&offer).expect("by id");
        assert_eq!(entry.offer_type, OfferType::Saas);
        assert_eq!(entry.publisher, "Contoso");
        let by_title = catalog
            .offer_by_title("  contoso sales insights ")
            .expect("by title");
        assert_eq!(by_title.offer, offer);
        assert!(catalog.unknown_types().is_empty());
    }

    #[test]
    fn refuses_what_would_make_a_lookup_ambiguous_or_empty() {
        let twice = format!("{ONE}\n{}", ONE.replace("Contoso Sales", "Other"));
        assert!(
            parse(&twice).expect_err("refused").contains("offer[1].id"),
            "{twice}"
        );
        let same_title = format!("{ONE}\n{}", ONE.replace("sales-insights", "other"));
        let error = parse(&same_title).expect_err("refused");
        assert!(error.contains("offer[1].title"), "{error}");
        let error = parse(&ONE.replace("\"Contoso\"", "\" \"")).expect_err("refused");
        assert!(error.contains("offer[0].publisher"), "{error}");
        let error = parse(&ONE.replace("contoso.sales-insights", "nodot")).expect_err("refused");
        assert!(error.contains("offer[0].id"), "{error}");
        let error = parse(&ONE.replace("publisher = ", "owner = ")).expect_err("refused");
        assert!(error.contains("line"), "{error}");
    }

    #[test]
    fn keeps_types_it_does_not_know_and_names_them() {
        let catalog = parse(&ONE.replace("SaaS", "Azure Virtual Desktop")).expect("catalog");
        assert_eq!(catalog.unknown_types(), ["azure-virtual-desktop"]);
    }

    #[test]
    fn a_written_catalog_reads_back_the_same() {
        let file = CatalogFile {
            offers: vec![CatalogEntry {
                id: "litware.data-vault".into(),
                title: "Litware Data Vault".into(),
                storefront: Storefront::AzureMarketplace,
                offer_type: OfferType::VirtualMachine,
                publisher: "Litware".into(),
            }],
        };
        let back: CatalogFile = toml::from_str(&file.to_toml()).expect("reads back");
        assert_eq!(back.offers, file.offers);
    }
}
