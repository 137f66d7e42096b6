//! The made-up world generated leads come from: the offers (and the
//! catalog entries a config needs to resolve them), and the people,
//! companies and countries that ask for them.

use crate::config::CatalogEntry;
use crate::domain::Storefront;

/// Offers the generator's leads are for. A config whose catalog lists them
/// (see [`catalog`]) lets leadflow resolve bare and test-drive leads.
pub(super) const OFFERS: &[(&str, &str, Storefront)] = &[
    (
        "contoso.sales-insights",
        "Contoso Sales Insights",
        Storefront::AppSource,
    ),
    (
        "contoso.contoso-gateway-byol",
        "Contoso Gateway (BYOL)",
        Storefront::AzureMarketplace,
    ),
    (
        "fabrikam.field-service-hub",
        "Fabrikam Field Service Hub",
        Storefront::AppSource,
    ),
    (
        "litware.data-vault",
        "Litware Data Vault",
        Storefront::AzureMarketplace,
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

/// The catalog entries for the generator's offers, for a config file.
pub fn catalog() -> Vec<CatalogEntry> {
    OFFERS
        .iter()
        .map(|(offer, title, storefront)| CatalogEntry {
            offer: (*offer).to_owned(),
            title: (*title).to_owned(),
            storefront: *storefront,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_quickstart_config_lists_the_generated_offers() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/config/quickstart.toml");
        let config = Config::load(Some(std::path::Path::new(path))).expect("quickstart config");
        let listed: Vec<_> = config
            .catalog
            .iter()
            .map(|e| (&e.offer, &e.title, e.storefront))
            .collect();
        let generated = catalog();
        let wanted: Vec<_> = generated
            .iter()
            .map(|e| (&e.offer, &e.title, e.storefront))
            .collect();
        assert_eq!(listed, wanted);
    }
}
