//! The made-up world generated leads come from: the offers (and the
//! catalog entries a config needs to resolve them), and the people,
//! companies and countries that ask for them.

use crate::catalog::{CatalogEntry, CatalogFile, OfferType};
use crate::domain::Storefront;

/// An offer generated leads are for.
pub(super) struct GeneratedOffer {
    /// `publisher.offer`.
    pub id: &'static str,
    pub title: &'static str,
    pub storefront: Storefront,
    /// `None`: not in the catalog, so its leads always name it in
    /// `LeadSource` (a bare or test-drive lead for it would be a dead
    /// letter) and carry `unknown` listing, type and publisher.
    pub offer_type: Option<OfferType>,
    pub publisher: &'static str,
}

const fn offer(
    id: &'static str,
    title: &'static str,
    storefront: Storefront,
    offer_type: Option<OfferType>,
    publisher: &'static str,
) -> GeneratedOffer {
    GeneratedOffer {
        id,
        title,
        storefront,
        offer_type,
        publisher,
    }
}

/// Offers the generator's leads are for: several types on both
/// storefronts, and two the catalog ([`catalog`]) does not list.
pub(super) const OFFERS: &[GeneratedOffer] = &[
    offer(
        "contoso.sales-insights",
        "Contoso Sales Insights",
        Storefront::AppSource,
        Some(OfferType::Saas),
        "Contoso",
    ),
    offer(
        "contoso.contoso-gateway-byol",
        "Contoso Gateway (BYOL)",
        Storefront::AzureMarketplace,
        Some(OfferType::VirtualMachine),
        "Contoso",
    ),
    offer(
        "fabrikam.field-service-hub",
        "Fabrikam Field Service Hub",
        Storefront::AppSource,
        Some(OfferType::Dynamics365),
        "Fabrikam, Inc.",
    ),
    offer(
        "litware.data-vault",
        "Litware Data Vault",
        Storefront::AzureMarketplace,
        Some(OfferType::AzureApplication),
        "Litware",
    ),
    offer(
        "fabrikam.copilot-readiness-workshop",
        "Copilot Readiness: 2-Week Workshop",
        Storefront::AppSource,
        Some(OfferType::ConsultingService),
        "Fabrikam, Inc.",
    ),
    offer(
        "litware.managed-sentinel",
        "Litware Managed Sentinel",
        Storefront::AzureMarketplace,
        Some(OfferType::ManagedService),
        "Litware",
    ),
    offer(
        "tailspin.flight-planner",
        "Tailspin Flight Planner",
        Storefront::AppSource,
        None,
        "Tailspin Toys",
    ),
    offer(
        "wingtip.edge-telemetry",
        "Wingtip Edge Telemetry",
        Storefront::AzureMarketplace,
        None,
        "Wingtip",
    ),
];

pub(super) const FIRST_NAMES: &[&str] = &[
    "Ana", "Raj", "Lee", "Mia", "Omar", "Sam", "Kim", "Noah", "Aiko", "Lars",
];
pub(super) const LAST_NAMES: &[&str] = &[
    "Silva", "Mehta", "Wong", "Keller", "Haddad", "Rivera", "Park", "Okafor", "Sato", "Berg",
];
pub(super) const COMPANIES: &[(&str, &str)] = &[
    ("Fabrikam", "fabrikam.com"),
    ("Northwind Traders", "northwindtraders.com"),
    ("Adatum GmbH", "adatum.de"),
    ("Tailspin Toys", "tailspintoys.com"),
    ("Wingtip", "wingtiptoys.com"),
    ("Litware", "litware.co.uk"),
];
pub(super) const TITLES: &[&str] = &[
    "CIO",
    "CTO",
    "VP Engineering",
    "Head of Sales Ops",
    "Director of Platform",
    "IT Manager",
    "Cloud Architect",
    "Developer",
    "Analyst",
    "",
];
pub(super) const COUNTRIES: &[(&str, &str)] = &[
    ("US", "USA"),
    ("DE", "DEU"),
    ("PT", "PRT"),
    ("GB", "GBR"),
    ("IN", "IND"),
    ("KR", "KOR"),
    ("MX", "MEX"),
];

/// The catalog of the generator's catalogued offers
/// (`config/catalog.toml`, which the quickstart uses).
pub fn catalog() -> CatalogFile {
    let offers = OFFERS
        .iter()
        .filter_map(|o| {
            Some(CatalogEntry {
                id: o.id.to_owned(),
                title: o.title.to_owned(),
                storefront: o.storefront,
                offer_type: o.offer_type.clone()?,
                publisher: o.publisher.to_owned(),
            })
        })
        .collect();
    CatalogFile { offers }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_quickstart_catalog_lists_the_generated_offers() {
        let config = crate::testkit::quickstart_config();
        let path = config.catalog.file.as_deref().expect("a catalog file");
        let text = std::fs::read_to_string(path).expect("the catalog file");
        let listed: CatalogFile = toml::from_str(&text).expect("a catalog");
        assert_eq!(listed.offers, catalog().offers);
    }

    #[test]
    fn generated_offers_cover_both_storefronts_catalogued_or_not() {
        for storefront in [Storefront::AppSource, Storefront::AzureMarketplace] {
            let on = |catalogued: bool| {
                OFFERS
                    .iter()
                    .filter(|o| o.storefront == storefront && o.offer_type.is_some() == catalogued)
                    .count()
            };
            assert!(on(true) >= 3 && on(false) >= 1, "{storefront}");
        }
    }
}
