//! enrich: [`RawLead`] → [`Lead`].
//!
//! Interprets `LeadSource` in its three documented forms (split
//! `Source` + `ActionCode`, combined `Source-Action|publisher.offer`, and a
//! bare `Source` whose offer is found in the catalog by `OfferTitle`),
//! normalizes the email address by mail-provider rules and derives the
//! dedupe key. A lead whose storefront, action or offer cannot be
//! determined is an error, never a guess.

use crate::catalog::Catalog;
use crate::domain::{
    ActionCode, DedupeKey, Lead, Offer, RawLead, Seniority, SourceTag, Storefront,
};
use crate::error::ErrorClass;
use crate::reference;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnrichError {
    #[error("email address {0:?} is not valid")]
    InvalidEmail(String),
    #[error("lead has no LeadSource")]
    MissingSource,
    #[error("unknown lead source tag {0:?}")]
    UnknownSource(String),
    #[error("lead has no action code")]
    MissingAction,
    #[error("LeadSource says action {in_source:?} but ActionCode says {in_field:?}")]
    ConflictingAction { in_source: String, in_field: String },
    #[error("offer {0:?} is not publisher.offer")]
    InvalidOffer(String),
    #[error("no offer in LeadSource and offer title {0:?} is not in the catalog")]
    UnknownOffer(String),
    #[error(
        "test-drive lead for offer {0} which is not in the catalog, so its storefront is unknown"
    )]
    UnknownStorefront(String),
}

impl ErrorClass for EnrichError {
    fn class(&self) -> &'static str {
        match self {
            EnrichError::InvalidEmail(_) => "invalid_email",
            EnrichError::MissingSource => "missing_source",
            EnrichError::UnknownSource(_) => "unknown_source",
            EnrichError::MissingAction => "missing_action",
            EnrichError::ConflictingAction { .. } => "conflicting_action",
            EnrichError::InvalidOffer(_) => "invalid_offer",
            EnrichError::UnknownOffer(_) => "unknown_offer",
            EnrichError::UnknownStorefront(_) => "unknown_storefront",
        }
    }
}

/// Providers whose addresses ignore a `+tag` in the local part.
const PLUS_TAG_DOMAINS: &[&str] = &[
    "gmail.com",
    "googlemail.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "icloud.com",
];

/// Normalizes an email address for identity: trim and lowercase; drop a
/// `+tag` where the provider ignores it; drop dots in Gmail local parts; map
/// googlemail.com to gmail.com. Rejects what cannot be an address.
pub fn normalize_email(raw: &str) -> Result<String, EnrichError> {
    let invalid = || EnrichError::InvalidEmail(raw.to_owned());
    let trimmed = raw.trim();
    if !is_valid_address(trimmed) {
        return Err(invalid());
    }
    // Nearly every address is ASCII, whose lower case needs no Unicode tables.
    let lowered = if trimmed.is_ascii() {
        trimmed.to_ascii_lowercase()
    } else {
        trimmed.to_lowercase()
    };
    let (local, domain) = lowered.split_once('@').ok_or_else(invalid)?;
    let domain_ok = domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !domain.contains("..")
        && domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    let local_ok = !local.is_empty()
        && !local.contains('@')
        && !local.chars().any(|c| c.is_whitespace() || c.is_control());
    if !domain_ok || !local_ok {
        return Err(invalid());
    }
    let gmail = domain == "gmail.com" || domain == "googlemail.com";
    let tagged = PLUS_TAG_DOMAINS.contains(&domain) && local.contains('+');
    if !gmail && !tagged {
        // Most addresses: the lower-cased address is the identity.
        return Ok(lowered);
    }
    let local = local.split_once('+').map_or(local, |(base, _tag)| base);
    let mut normalized = String::with_capacity(lowered.len());
    if gmail {
        normalized.extend(local.chars().filter(|c| *c != '.'));
    } else {
        normalized.push_str(local);
    }
    if normalized.is_empty() {
        return Err(invalid());
    }
    normalized.push('@');
    normalized.push_str(if gmail { "gmail.com" } else { domain });
    Ok(normalized)
}

/// Whether `address` is an address by the `email_address` crate's rules
/// (RFC 5322's addr-spec, with a display name or a domain literal allowed).
/// Nearly every lead's address is plain ASCII; for those the crate's rules
/// are checked here in one pass, without the copy it makes of a valid
/// address and its scan for a display name, which together cost 7% of the
/// process's CPU. The property `plain_addresses_are_judged_as_the_crate_judges_them`
/// compares the two.
pub fn is_valid_address(address: &str) -> bool {
    plain_address(address).unwrap_or_else(|| email_address::EmailAddress::is_valid(address))
}

/// The crate's verdict on an ASCII address without `"`, `<` or `[` (which
/// begin its quoted local parts, display names and domain literals), or
/// `None` for any other: a dot-atom local part of 1 to 64 characters, then
/// after the last `@` a domain of at most 254 characters whose labels are
/// 1 to 63 characters of atext that begin and end with a letter or digit.
fn plain_address(address: &str) -> Option<bool> {
    if !address.is_ascii() || address.bytes().any(|b| matches!(b, b'"' | b'<' | b'[')) {
        return None;
    }
    let atext = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-/=?^_`{|}~".contains(&b);
    let Some((local, domain)) = address.rsplit_once('@') else {
        return Some(false);
    };
    let local_ok = local.len() <= 64
        && local
            .split('.')
            .all(|atom| !atom.is_empty() && atom.bytes().all(atext));
    let domain_ok = domain.len() <= 254
        && domain.split('.').all(|label| {
            let ends = label.bytes().next().zip(label.bytes().last());
            ends.is_some_and(|(first, last)| {
                first.is_ascii_alphanumeric() && last.is_ascii_alphanumeric()
            }) && label.len() <= 63
                && label.bytes().all(atext)
        });
    Some(local_ok && domain_ok)
}

/// Who acted on which offer, how, and through which storefront: the part of
/// enrichment that identity (and so dedupe and partitioning) depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Normalized per [`normalize_email`].
    pub email: String,
    pub source_tag: SourceTag,
    pub action: ActionCode,
    pub offer: Offer,
    pub storefront: Storefront,
}

impl Identity {
    /// The key leads are partitioned by, so that everything dedupe compares
    /// a lead with (its repeats and the person's other actions on the
    /// offer) is in the same partition.
    pub fn partition_key(&self) -> DedupeKey {
        DedupeKey::person_offer(&self.email, &self.offer)
    }
}

/// Resolves a lead's identity without the profile work, which is all that
/// re-keying needs. Fails exactly as [`enrich`] would on identity fields.
pub fn identify(raw: &RawLead, catalog: &Catalog) -> Result<Identity, EnrichError> {
    let email = normalize_email(&raw.email)?;
    let source = raw
        .lead_source
        .as_deref()
        .ok_or(EnrichError::MissingSource)?;
    let (head, offer_text) = match source.split_once('|') {
        Some((head, offer)) => (head, Some(offer.trim()).filter(|o| !o.is_empty())),
        None => (source, None),
    };
    let (tag_text, action_in_source) = match head.split_once('-') {
        Some((tag, action)) => (tag, Some(action.trim()).filter(|a| !a.is_empty())),
        None => (head, None),
    };
    let source_tag =
        SourceTag::parse(tag_text).ok_or_else(|| EnrichError::UnknownSource(tag_text.into()))?;

    let action = match (action_in_source, raw.action_code.as_deref()) {
        (Some(a), Some(b)) if !a.eq_ignore_ascii_case(b) => {
            return Err(EnrichError::ConflictingAction {
                in_source: a.to_owned(),
                in_field: b.to_owned(),
            });
        }
        (Some(code), _) | (None, Some(code)) => ActionCode::parse(code),
        (None, None) => return Err(EnrichError::MissingAction),
    };

    let offer = match offer_text {
        Some(text) => Offer::parse(text).ok_or_else(|| EnrichError::InvalidOffer(text.into()))?,
        None => {
            let title = raw.offer_title.as_deref().unwrap_or_default();
            catalog
                .offer_by_title(title)
                .map(|entry| entry.offer.clone())
                .ok_or_else(|| EnrichError::UnknownOffer(title.to_owned()))?
        }
    };

    let storefront = match source_tag.storefront() {
        Some(storefront) => storefront,
        None => catalog
            .offer(&offer)
            .map(|entry| entry.storefront)
            .ok_or_else(|| EnrichError::UnknownStorefront(offer.to_string()))?,
    };

    Ok(Identity {
        email,
        source_tag,
        action,
        offer,
        storefront,
    })
}

/// Enriches a decoded lead. Takes ownership so that strings move, not copy.
pub fn enrich(raw: RawLead, catalog: &Catalog) -> Result<Lead, EnrichError> {
    let identity = identify(&raw, catalog)?;
    let person_offer_key = identity.partition_key();
    Ok(enrich_identified(
        raw,
        (identity, person_offer_key),
        catalog,
    ))
}

/// [`enrich`] for a lead already identified, with its partition key (as
/// re-keying computed it), which cannot fail from here on.
pub fn enrich_identified(
    raw: RawLead,
    (identity, person_offer_key): (Identity, DedupeKey),
    catalog: &Catalog,
) -> Lead {
    let Identity {
        email,
        source_tag,
        action,
        offer,
        storefront,
    } = identity;
    let catalogued = catalog.offer(&offer).cloned();
    let dedupe_key = DedupeKey::new(&email, &offer, &action);
    let email_domain = email
        .rsplit_once('@')
        .map(|(_, domain)| domain.to_owned())
        .unwrap_or_default();
    let (registrable_domain, email_class) = reference::domain_facts(&email_domain);
    let country = raw.country.as_deref().and_then(reference::country);
    let phone_e164 = raw
        .phone
        .as_deref()
        .and_then(|p| reference::e164(p, country));
    let seniority = raw.title.as_deref().map(seniority);
    let profile = [
        raw.first_name.is_some(),
        raw.last_name.is_some(),
        raw.phone.is_some(),
        raw.country.is_some(),
        raw.company.is_some(),
        raw.title.is_some(),
    ];
    let present = profile.iter().filter(|p| **p).count();
    let completeness = u8::try_from(present * 100 / profile.len()).unwrap_or(100);
    Lead {
        event_id: raw.event_id,
        event_time_ms: raw.event_time_ms,
        storefront,
        source_tag,
        action,
        offer,
        offer_title: raw.offer_title,
        catalogued,
        email,
        email_domain,
        registrable_domain,
        email_class,
        first_name: raw.first_name,
        last_name: raw.last_name,
        phone: raw.phone,
        phone_e164,
        country_code: raw.country,
        country,
        company: raw.company,
        title: raw.title,
        seniority,
        completeness,
        description: raw.description,
        dedupe_key,
        person_offer_key,
        earlier_actions: Vec::new(),
    }
}

/// Seniority from a job title, by whole words, so that "Doctor" is no CTO.
/// Compares words in place rather than lower-casing a copy: this runs for
/// every lead.
pub fn seniority(title: &str) -> Seniority {
    const C_LEVEL: [&str; 12] = [
        "ceo",
        "cto",
        "cio",
        "cfo",
        "coo",
        "cmo",
        "ciso",
        "cdo",
        "chief",
        "founder",
        "owner",
        "president",
    ];
    // One pass over the words, noting what each could mean.
    let (mut c_level, mut vice_president, mut vp, mut director, mut manager) =
        (false, false, false, false, false);
    let mut after_vice = false;
    let words = title
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty());
    for word in words {
        let is = |name: &str| word.eq_ignore_ascii_case(name);
        vice_president |= after_vice && is("president");
        after_vice = is("vice");
        c_level |= C_LEVEL.iter().any(|c| is(c));
        vp |= is("vp") || is("svp") || is("evp") || is("head");
        director |= is("director");
        manager |= is("manager") || is("lead");
    }
    if c_level && !vice_president {
        Seniority::CLevel
    } else if vp || vice_president {
        Seniority::VicePresident
    } else if director {
        Seniority::Director
    } else if manager {
        Seniority::Manager
    } else {
        Seniority::IndividualContributor
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::Listing;

    fn catalog() -> Catalog {
        use crate::catalog::{CatalogEntry, OfferType};
        let entry = |id: &str, title: &str, storefront, offer_type| CatalogEntry {
            id: id.into(),
            title: title.into(),
            storefront,
            offer_type,
            publisher: "Contoso".into(),
        };
        Catalog::from_entries(vec![
            entry(
                "contoso.contoso-gateway-byol",
                "Contoso Gateway (BYOL)",
                Storefront::AzureMarketplace,
                OfferType::VirtualMachine,
            ),
            entry(
                "contoso.sales-insights",
                "Contoso Sales Insights",
                Storefront::AppSource,
                OfferType::Saas,
            ),
        ])
        .expect("catalog")
    }

    fn raw(source: &str, action: Option<&str>) -> RawLead {
        RawLead {
            email: "Ana@Fabrikam.com".into(),
            lead_source: Some(source.into()),
            action_code: action.map(Into::into),
            offer_title: Some("contoso gateway (byol) ".into()),
            ..RawLead::default()
        }
    }

    #[test]
    fn normalizes_email_by_provider_rules() {
        let n = |e: &str| normalize_email(e).expect("valid email");
        assert_eq!(n(" Ana.Silva@Fabrikam.com "), "ana.silva@fabrikam.com");
        assert_eq!(n("Lee.Wong+trial@GMail.com"), "leewong@gmail.com");
        assert_eq!(n("l.e.e.wong@googlemail.com"), "leewong@gmail.com");
        assert_eq!(n("kim+news@outlook.com"), "kim@outlook.com");
        // Dots matter outside Gmail, and +tags outside the listed providers.
        assert_eq!(n("k.im+news@contoso.com"), "k.im+news@contoso.com");
        assert_eq!(n("k.im@hotmail.com"), "k.im@hotmail.com");
        for bad in [
            "",
            "no-at",
            "@x.com",
            "a@b",
            "a@.com",
            "a b@x.com",
            "a@x..com",
            "+x@gmail.com",
        ] {
            assert_eq!(
                normalize_email(bad).map_err(|e| e.class()),
                Err("invalid_email"),
                "{bad}"
            );
        }
    }

    #[test]
    fn recognises_seniority_by_whole_words() {
        assert_eq!(seniority("CIO"), Seniority::CLevel);
        assert_eq!(seniority("VP Engineering"), Seniority::VicePresident);
        assert_eq!(seniority("Vice President, Sales"), Seniority::VicePresident);
        assert_eq!(seniority("vice-president"), Seniority::VicePresident);
        assert_eq!(seniority("President"), Seniority::CLevel);
        assert_eq!(seniority("SENIOR ENGINEERING MANAGER"), Seniority::Manager);
        assert_eq!(seniority("Head of Sales Ops"), Seniority::VicePresident);
        assert_eq!(seniority("Director of Platform"), Seniority::Director);
        assert_eq!(seniority("IT Manager"), Seniority::Manager);
        assert_eq!(
            seniority("Cloud Architect"),
            Seniority::IndividualContributor
        );
        // "cto" inside another word is not a CTO.
        assert_eq!(seniority("Doctor"), Seniority::IndividualContributor);
    }

    #[test]
    fn derives_profile_fields_from_reference_data() {
        let mut lead = raw("SPZA-PLT|contoso.sales-insights", None);
        lead.email = "Ana@Mail.Fabrikam.co.uk".into();
        lead.country = Some("PRT".into());
        lead.phone = Some("351912345678".into());
        lead.title = Some("Head of Sales Ops".into());
        let lead = enrich(lead, &catalog()).expect("enriched");
        assert_eq!(lead.registrable_domain, "fabrikam.co.uk");
        assert_eq!(lead.email_class, crate::domain::EmailClass::Business);
        assert_eq!(lead.country.map(|c| c.name), Some("Portugal"));
        assert_eq!(lead.phone_e164.as_deref(), Some("+351912345678"));
        assert_eq!(lead.seniority, Some(Seniority::VicePresident));
        assert_eq!(lead.completeness, 50); // phone, country, title of six fields
    }

    #[test]
    fn reads_the_combined_form() {
        let lead = enrich(
            raw("SPZA-PLT|Contoso.Sales-Insights", Some("plt")),
            &catalog(),
        )
        .expect("enriched");
        assert_eq!(lead.storefront, Storefront::AppSource);
        assert_eq!(lead.source_tag, SourceTag::AppSource);
        assert_eq!(lead.action, ActionCode::PartnerLedTrial);
        assert_eq!(lead.offer.to_string(), "contoso.sales-insights");
        assert_eq!(lead.email, "ana@fabrikam.com");
        assert_eq!(lead.email_domain, "fabrikam.com");
    }

    #[test]
    fn reads_the_split_and_bare_forms_through_the_catalog() {
        let lead = enrich(raw("AzureMarketplace", Some("INS")), &catalog()).expect("enriched");
        assert_eq!(lead.storefront, Storefront::AzureMarketplace);
        assert_eq!(lead.action, ActionCode::Install);
        assert_eq!(lead.offer.to_string(), "contoso.contoso-gateway-byol");

        let portal = enrich(raw("AzurePortal-Create", None), &catalog()).expect("enriched");
        assert_eq!(portal.storefront, Storefront::AzureMarketplace);
        assert_eq!(portal.action, ActionCode::Create);
    }

    #[test]
    fn a_catalogued_offer_gives_the_lead_its_type_publisher_and_listing() {
        let lead = enrich(raw("AzureMarketplace", Some("INS")), &catalog()).expect("enriched");
        let entry = lead.catalogued.as_ref().expect("catalogued");
        assert_eq!(entry.offer_type, crate::catalog::OfferType::VirtualMachine);
        assert_eq!(entry.publisher, "Contoso");
        assert_eq!(lead.listing(), Listing::App);

        let mut elsewhere = raw("SPZA-PLT|fabrikam.not-listed", None);
        elsewhere.offer_title = None;
        let lead = enrich(elsewhere, &catalog()).expect("an uncatalogued offer is no error");
        assert_eq!(lead.catalogued, None);
        assert_eq!(lead.listing(), Listing::Unknown);
    }

    #[test]
    fn test_drives_take_their_storefront_from_the_catalog() {
        let lead = enrich(
            raw("TestDrive-StartTestDrive|contoso.sales-insights", None),
            &catalog(),
        )
        .expect("enriched");
        assert_eq!(lead.storefront, Storefront::AppSource);
        let unknown = enrich(
            raw("TestDrive-StartTestDrive|fabrikam.unlisted", None),
            &catalog(),
        );
        assert_eq!(unknown.map_err(|e| e.class()), Err("unknown_storefront"));
    }

    #[test]
    fn refuses_to_guess() {
        let class = |lead: RawLead| enrich(lead, &catalog()).map(|_| ()).map_err(|e| e.class());
        assert_eq!(class(raw("Bing-INS|a.b", None)), Err("unknown_source"));
        assert_eq!(class(raw("SPZA|a.b", None)), Err("missing_action"));
        assert_eq!(
            class(raw("SPZA-INS|a.b", Some("PLT"))),
            Err("conflicting_action")
        );
        assert_eq!(class(raw("SPZA-INS|nodot", None)), Err("invalid_offer"));
        let mut unknown_title = raw("AzureMarketplace-INS", None);
        unknown_title.offer_title = Some("Something Else".into());
        assert_eq!(class(unknown_title), Err("unknown_offer"));
        let mut no_source = raw("x", None);
        no_source.lead_source = None;
        assert_eq!(class(no_source), Err("missing_source"));
        let mut bad_email = raw("SPZA-INS|a.b", None);
        bad_email.email = "not an email".into();
        assert_eq!(class(bad_email), Err("invalid_email"));
    }

    #[test]
    fn dedupe_key_ignores_spelling_of_the_same_gmail_identity() {
        let mut a = raw("AzureMarketplace-INS|contoso.x", None);
        a.email = "Lee.Wong+trial@GMail.com".into();
        let mut b = raw("AzureMarketplace-INS|contoso.x", None);
        b.email = "leewong@googlemail.com".into();
        let key = |lead| enrich(lead, &catalog()).expect("enriched").dedupe_key;
        assert_eq!(key(a), key(b));
    }
}
