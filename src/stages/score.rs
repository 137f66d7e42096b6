//! score: a transparent lead score from versioned rules.
//!
//! Behaviour (what the customer did) and fit (who they are) are scored
//! separately, each capped, and added into a 0–100 score, graded A to D,
//! with an MQL flag. Every contribution carries a human-readable reason
//! (`"action PLT +50"`), and the largest ones travel with the lead. The
//! rules are a TOML file with a version string (`rules/scoring.toml` is the
//! default); they are checked once at start-up and then only read.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use serde::Deserialize;

use crate::catalog::{Listing, OfferType};
use crate::domain::{ActionCode, EmailClass, Grade, Lead, Offer, Score, Seniority};
use crate::error::{ConfigError, parse_toml};

/// The default rules, compiled in so leadflow runs without a rules file.
pub const DEFAULT_RULES: &str = include_str!("../../rules/scoring.toml");

/// The rules file as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RulesFile {
    version: String,
    reasons: usize,
    behaviour: BehaviourFile,
    fit: FitFile,
    grades: GradesFile,
    mql: MqlFile,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct BehaviourFile {
    max: i32,
    notes: i32,
    actions: BTreeMap<String, i32>,
    /// Points by listing, offer type and offer: what the lead is about.
    #[serde(default)]
    listings: BTreeMap<String, i32>,
    #[serde(default)]
    offer_types: BTreeMap<String, i32>,
    #[serde(default)]
    offers: BTreeMap<String, i32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FitFile {
    max: i32,
    company: i32,
    target_country: i32,
    target_countries: Vec<String>,
    target_regions: Vec<String>,
    incomplete_profile: i32,
    incomplete_below: u8,
    seniority: SeniorityFile,
    email: EmailFile,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeniorityFile {
    c_level: i32,
    vp: i32,
    director: i32,
    manager: i32,
    ic: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct EmailFile {
    business: i32,
    free: i32,
    education: i32,
    disposable: i32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct GradesFile {
    a: u8,
    b: u8,
    c: u8,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct MqlFile {
    behaviour_min: i32,
    fit_min: i32,
}

/// One scoring rule: its points and the reason text shown for it, built
/// once so that scoring a lead formats nothing.
#[derive(Debug, Clone)]
struct Rule {
    points: i32,
    reason: Arc<str>,
}

impl Rule {
    fn new(what: &str, points: i32) -> Rule {
        Rule {
            points,
            reason: format!("{what} {points:+}").into(),
        }
    }
}

/// Scoring rules, validated and ready to apply.
#[derive(Debug, Clone)]
pub struct ScoringRules {
    version: Arc<str>,
    reasons: usize,
    behaviour_max: i32,
    actions: BTreeMap<String, Rule>,
    other_action: Rule,
    notes: Rule,
    listings: Vec<(Listing, Rule)>,
    /// By offer type id; `unknown` for offers not in the catalog.
    offer_types: Vec<(String, Rule)>,
    offers: Vec<(Offer, Rule)>,
    fit_max: i32,
    seniority: [Rule; 5],
    email: [Rule; 4],
    company: Rule,
    target_country: Rule,
    target_countries: Vec<String>,
    target_regions: Vec<String>,
    incomplete_profile: Rule,
    incomplete_below: u8,
    grades: GradesFile,
    mql: MqlFile,
}

impl ScoringRules {
    /// The built-in default rules.
    pub fn default_rules() -> ScoringRules {
        // The embedded file is checked by a unit test, so this cannot fail
        // in a released build; fall back loudly rather than panic.
        Self::parse(Path::new("rules/scoring.toml (built in)"), DEFAULT_RULES)
            .unwrap_or_else(|e| unreachable_rules(&e))
    }

    /// Loads and validates a rules file.
    pub fn load(path: &Path) -> Result<ScoringRules, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(path, &text)
    }

    /// Parses and validates rules text; `path` names it in errors.
    pub fn parse(path: &Path, text: &str) -> Result<ScoringRules, ConfigError> {
        let file: RulesFile = parse_toml(path, text)?;
        let other = Self::validate(&file).map_err(|(key, reason)| ConfigError::Invalid {
            origin: path.display().to_string(),
            key: key.to_owned(),
            reason,
        })?;
        Ok(Self::from_file(file, other))
    }

    /// Checks a rules file, in the order its errors are reported: the key
    /// at fault and why. Returns the points for unknown action codes,
    /// which must be set.
    fn validate(file: &RulesFile) -> Result<i32, (&'static str, String)> {
        if file.version.trim().is_empty() {
            return Err(("version", "must not be empty".into()));
        }
        if file.behaviour.max < 0 || file.fit.max < 0 || file.behaviour.max + file.fit.max > 100 {
            return Err((
                "fit.max",
                format!(
                    "behaviour.max ({}) and fit.max ({}) must be non-negative and add up to at most 100",
                    file.behaviour.max, file.fit.max
                ),
            ));
        }
        let GradesFile { a, b, c } = file.grades;
        if !(a > b && b > c && a <= 100) {
            return Err((
                "grades",
                format!("need 100 >= a > b > c, got a={a} b={b} c={c}"),
            ));
        }
        if file.fit.incomplete_below > 100 {
            return Err(("fit.incomplete_below", "is a percentage, 0 to 100".into()));
        }
        let other = file
            .behaviour
            .actions
            .get("other")
            .copied()
            .ok_or_else(|| {
                (
                    "behaviour.actions.other",
                    "must be set: points for unknown action codes".to_owned(),
                )
            })?;
        let b = &file.behaviour;
        if let Some(listing) = b.listings.keys().find(|l| Listing::parse(l).is_none()) {
            let known = Listing::ALL.map(Listing::as_str).join(", ");
            return Err((
                "behaviour.listings",
                format!("{listing:?} is not a listing ({known})"),
            ));
        }
        if let Some(t) = b.offer_types.keys().find(|t| OfferType::parse(t).is_none()) {
            return Err((
                "behaviour.offer_types",
                format!("{t:?} is not an offer type"),
            ));
        }
        if let Some(offer) = b.offers.keys().find(|o| Offer::parse(o).is_none()) {
            return Err((
                "behaviour.offers",
                format!("{offer:?} is not publisher.offer"),
            ));
        }
        for code in &file.fit.target_countries {
            if crate::reference::country(code).is_none() {
                return Err((
                    "fit.target_countries",
                    format!("{code:?} is not an ISO 3166 country code"),
                ));
            }
        }
        Ok(other)
    }

    /// The rules of a checked file; `other` is the points for unknown
    /// action codes.
    fn from_file(file: RulesFile, other: i32) -> ScoringRules {
        let actions = file
            .behaviour
            .actions
            .iter()
            .filter(|(code, _)| code.as_str() != "other")
            .map(|(code, points)| {
                let code = ActionCode::parse(code).code().to_owned();
                (code.clone(), Rule::new(&format!("action {code}"), *points))
            })
            .collect();
        let b = &file.behaviour;
        let listings = b
            .listings
            .iter()
            .filter_map(|(l, p)| Some((Listing::parse(l)?, *p)))
            .map(|(l, p)| (l, Rule::new(&format!("listing {l}"), p)))
            .collect();
        let offer_types = b
            .offer_types
            .iter()
            .filter_map(|(t, p)| Some((OfferType::parse(t)?, *p)))
            .map(|(t, p)| (t.to_string(), Rule::new(&format!("offer type {t}"), p)))
            .collect();
        let offers = b
            .offers
            .iter()
            .filter_map(|(o, p)| Some((Offer::parse(o)?, *p)))
            .map(|(o, p)| {
                let rule = Rule::new(&format!("offer {o}"), p);
                (o, rule)
            })
            .collect();
        let s = &file.fit.seniority;
        let e = &file.fit.email;
        ScoringRules {
            version: file.version.trim().into(),
            reasons: file.reasons,
            behaviour_max: file.behaviour.max,
            actions,
            other_action: Rule::new("action other", other),
            notes: Rule::new("notes", file.behaviour.notes),
            listings,
            offer_types,
            offers,
            fit_max: file.fit.max,
            seniority: [
                Rule::new("title C-level", s.c_level),
                Rule::new("title VP", s.vp),
                Rule::new("title Director", s.director),
                Rule::new("title Manager", s.manager),
                Rule::new("title IC", s.ic),
            ],
            email: [
                Rule::new("email business", e.business),
                Rule::new("email free", e.free),
                Rule::new("email education", e.education),
                Rule::new("email disposable", e.disposable),
            ],
            company: Rule::new("company", file.fit.company),
            target_country: Rule::new("target country", file.fit.target_country),
            target_countries: file
                .fit
                .target_countries
                .iter()
                .map(|c| c.to_uppercase())
                .collect(),
            target_regions: file.fit.target_regions.clone(),
            incomplete_profile: Rule::new("incomplete profile", file.fit.incomplete_profile),
            incomplete_below: file.fit.incomplete_below,
            grades: file.grades,
            mql: file.mql,
        }
    }

    pub fn version(&self) -> &Arc<str> {
        &self.version
    }

    /// The rules for what the lead is about: its listing, offer type and offer.
    fn about_the_offer<'r>(&'r self, lead: &Lead, contributions: &mut Vec<&'r Rule>) {
        let offer_type = lead.offer_type();
        let listing = lead.listing();
        let listing = self.listings.iter().find(|(l, _)| *l == listing);
        let of_type = self.offer_types.iter().find(|(t, _)| t == offer_type);
        let offer = self.offers.iter().find(|(o, _)| *o == lead.offer);
        let rules = [
            listing.map(|(_, r)| r),
            of_type.map(|(_, r)| r),
            offer.map(|(_, r)| r),
        ];
        contributions.extend(rules.into_iter().flatten());
    }

    fn in_target(&self, lead: &Lead) -> bool {
        let Some(country) = lead.country else {
            return false;
        };
        self.target_countries.contains(&country.alpha2)
            || country.region.as_ref().is_some_and(|region| {
                self.target_regions
                    .iter()
                    .any(|r| r.eq_ignore_ascii_case(region))
            })
    }
}

#[cold]
fn unreachable_rules(error: &ConfigError) -> ScoringRules {
    panic!("the built-in scoring rules are invalid: {error}")
}

/// Scores a lead by the rules.
pub fn score(lead: &Lead, rules: &ScoringRules) -> Score {
    let mut contributions: Vec<&Rule> = Vec::with_capacity(8);

    let action = rules
        .actions
        .get(lead.action.code())
        .unwrap_or(&rules.other_action);
    contributions.push(action);
    if lead.action == ActionCode::PartnerLedTrial
        && lead.description.as_deref().is_some_and(has_notes)
    {
        contributions.push(&rules.notes);
    }
    rules.about_the_offer(lead, &mut contributions);
    let behaviour_points: i32 = contributions.iter().map(|r| r.points).sum();
    let behaviour = behaviour_points.clamp(0, rules.behaviour_max);

    let fit_start = contributions.len();
    if let Some(seniority) = lead.seniority {
        let i = match seniority {
            Seniority::CLevel => 0,
            Seniority::VicePresident => 1,
            Seniority::Director => 2,
            Seniority::Manager => 3,
            Seniority::IndividualContributor => 4,
        };
        contributions.push(&rules.seniority[i]);
    }
    let email = match lead.email_class {
        EmailClass::Business => 0,
        EmailClass::Free => 1,
        EmailClass::Education => 2,
        EmailClass::Disposable => 3,
    };
    contributions.push(&rules.email[email]);
    if lead.company.is_some() {
        contributions.push(&rules.company);
    }
    if rules.in_target(lead) {
        contributions.push(&rules.target_country);
    }
    // Microsoft sends no personal data for education addresses, so an empty
    // profile there says nothing about the lead.
    if lead.completeness < rules.incomplete_below && lead.email_class != EmailClass::Education {
        contributions.push(&rules.incomplete_profile);
    }
    let fit_points: i32 = contributions[fit_start..].iter().map(|r| r.points).sum();
    let fit = fit_points.clamp(0, rules.fit_max);

    let points = u8::try_from(behaviour + fit).unwrap_or(100).min(100);
    let g = &rules.grades;
    let grade = match points {
        p if p >= g.a => Grade::A,
        p if p >= g.b => Grade::B,
        p if p >= g.c => Grade::C,
        _ => Grade::D,
    };
    let mql = behaviour >= rules.mql.behaviour_min && fit >= rules.mql.fit_min;

    // Largest contributions first; zero-point rules explain nothing.
    contributions.retain(|r| r.points != 0);
    contributions.sort_by_key(|r| std::cmp::Reverse(r.points.abs()));
    let reasons = contributions
        .iter()
        .take(rules.reasons)
        .map(|r| Arc::clone(&r.reason))
        .collect();
    Score {
        points,
        behaviour,
        fit,
        grade,
        mql,
        reasons,
        rules_version: Arc::clone(&rules.version),
    }
}

/// A `Description` of `Campaigns: ...` is Microsoft's, not the customer's.
fn has_notes(description: &str) -> bool {
    !description.trim_start().starts_with("Campaigns:")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{Storefront, fixtures};

    fn lead(action: ActionCode, seniority: Option<Seniority>, company: Option<&str>) -> Lead {
        let mut lead = fixtures::lead(Storefront::AppSource, action);
        lead.seniority = seniority;
        lead.company = company.map(Into::into);
        lead.completeness = 100;
        lead.description = Some("Need forecasting".into());
        lead
    }

    fn reasons(score: &Score) -> Vec<&str> {
        score.reasons.iter().map(|r| &**r).collect()
    }

    #[test]
    fn the_built_in_rules_are_valid() {
        let rules = ScoringRules::default_rules();
        assert_eq!(&**rules.version(), "default-2025.1");
    }

    #[test]
    fn scores_behaviour_and_fit_with_reasons() {
        let rules = ScoringRules::default_rules();
        let s = score(
            &lead(ActionCode::Create, Some(Seniority::CLevel), Some("Adatum")),
            &rules,
        );
        // Behaviour 60; fit 25 + 10 (business) + 5 (company) = 40.
        assert_eq!(
            (s.behaviour, s.fit, s.points, s.grade, s.mql),
            (60, 40, 100, Grade::A, true)
        );
        assert_eq!(
            reasons(&s),
            vec![
                "action Create +60",
                "title C-level +25",
                "email business +10"
            ]
        );

        let s = score(
            &lead(ActionCode::PartnerLedTrial, Some(Seniority::Manager), None),
            &rules,
        );
        assert_eq!(
            (s.behaviour, s.fit, s.points, s.grade),
            (55, 20, 75, Grade::A)
        );
        assert_eq!(
            reasons(&s),
            vec!["action PLT +50", "title Manager +10", "email business +10"]
        );

        let mut free = lead(
            ActionCode::Other("Subscribe".into()),
            Some(Seniority::IndividualContributor),
            None,
        );
        free.email_class = EmailClass::Free;
        let s = score(&free, &rules);
        assert_eq!(
            (s.behaviour, s.fit, s.points, s.grade, s.mql),
            (20, 0, 20, Grade::D, false)
        );
        assert_eq!(reasons(&s), vec!["action other +20", "email free -10"]);
    }

    #[test]
    fn education_leads_are_not_penalised_for_an_empty_profile() {
        let rules = ScoringRules::default_rules();
        let mut edu = lead(ActionCode::StartTestDrive, None, None);
        edu.completeness = 0;
        edu.email_class = EmailClass::Education;
        let s = score(&edu, &rules);
        assert_eq!(s.fit, 0);
        assert!(!reasons(&s).contains(&"incomplete profile -5"));

        let mut sparse = lead(ActionCode::StartTestDrive, None, None);
        sparse.completeness = 0;
        let s = score(&sparse, &rules);
        assert!(
            reasons(&s).contains(&"incomplete profile -5"),
            "{:?}",
            s.reasons
        );
        assert_eq!(s.fit, 5); // business 10 - 5
    }

    #[test]
    fn target_regions_and_countries_add_fit() {
        let text = DEFAULT_RULES.replace("target_regions = []", "target_regions = [\"Europe\"]");
        let rules = ScoringRules::parse(Path::new("t.toml"), &text).expect("rules");
        let mut lead = lead(ActionCode::Install, None, None);
        lead.country = crate::reference::country("PT");
        let s = score(&lead, &rules);
        assert_eq!(s.fit, 20); // business 10 + target 10
    }

    #[test]
    fn invalid_rules_are_refused_with_file_key_and_reason() {
        let check = |from: &str, to: &str, key: &str| {
            let text = DEFAULT_RULES.replacen(from, to, 1);
            let message = ScoringRules::parse(Path::new("my-rules.toml"), &text)
                .expect_err("invalid rules")
                .to_string();
            assert!(
                message.contains("my-rules.toml") && message.contains(key),
                "{message}"
            );
        };
        check("max = 40", "max = 41", "fit.max");
        check("a = 75", "a = 40", "grades");
        check("version = \"default-2025.1\"", "version = \" \"", "version");
        check("other = 20", "", "behaviour.actions.other");
        check(
            "target_countries = []",
            "target_countries = [\"XX\"]",
            "fit.target_countries",
        );
        check("company = 5", "company = \"five\"", "company");
        check("[mql]", "[mql]\nsurprise = 1", "surprise");
        let about = |table: &str, key: &str| format!("[behaviour.{table}]\n{key:?} = 5\n\n[fit]");
        check("[fit]", &about("listings", "apps"), "behaviour.listings");
        check(
            "[fit]",
            &about("offer_types", "saas!"),
            "behaviour.offer_types",
        );
        check("[fit]", &about("offers", "nodot"), "behaviour.offers");
    }

    /// docs/scoring-and-routing.md's example: weights by listing, offer
    /// type and offer, added to behaviour (and capped with it).
    #[test]
    fn weighs_listing_offer_type_and_offer() {
        let text = DEFAULT_RULES.replacen(
            "[fit]",
            "[behaviour.listings]\nconsulting-service = 10\nunknown = -10\n\n\
             [behaviour.offer_types]\n\"Power BI app\" = -5\n\n\
             [behaviour.offers]\n\"Contoso.Flagship\" = 8\n\n[fit]",
            1,
        );
        let rules = ScoringRules::parse(Path::new("rules.toml"), &text).expect("rules");
        let mut workshop = lead(ActionCode::PartnerLedTrial, None, None);
        workshop.description = None;
        fixtures::catalogued(&mut workshop, OfferType::ConsultingService);
        let s = score(&workshop, &rules);
        assert_eq!(s.behaviour, 60, "PLT 50 + listing 10");
        assert!(
            reasons(&s).contains(&"listing consulting-service +10"),
            "{s:?}"
        );

        let mut report = lead(ActionCode::Install, None, None);
        fixtures::catalogued(&mut report, OfferType::PowerBi);
        let s = score(&report, &rules);
        assert_eq!(s.behaviour, 45, "INS 50, offer type power-bi -5");

        let mut flagship = lead(ActionCode::Install, None, None);
        flagship.offer = Offer::parse("contoso.flagship").expect("offer");
        let s = score(&flagship, &rules);
        assert_eq!(s.behaviour, 48, "INS 50, listing unknown -10, offer +8");
    }
}
