//! Property tests: normalizers are idempotent and never panic, decoders
//! never panic on arbitrary bytes, the dedupe key does not depend on how an
//! address is spelled, and every score lies in 0..=100 whatever the rules.

mod common;

use std::time::Duration;

use std::path::Path;

use leadflow::domain::{ActionCode, DedupeKey, Offer};
use leadflow::reference;
use leadflow::stages::decode::{Decoder, Format};
use leadflow::stages::enrich::{is_valid_address, normalize_email};
use leadflow::stages::score::{DEFAULT_RULES, ScoringRules, score};
use leadflow::testkit;
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

fn key(email: &str) -> Option<DedupeKey> {
    let offer = Offer::parse("contoso.gateway")?;
    Some(DedupeKey::new(
        &normalize_email(email).ok()?,
        &offer,
        &ActionCode::Install,
    ))
}

/// A plausible address: a local part and a domain, either a provider whose
/// spelling rules apply or a business domain.
fn address() -> impl Strategy<Value = (String, String)> {
    let local = "[a-z0-9]{1,8}(\\.[a-z0-9]{1,8}){0,2}";
    let domain = prop_oneof![
        Just("gmail.com".to_owned()),
        Just("googlemail.com".to_owned()),
        Just("outlook.com".to_owned()),
        Just("icloud.com".to_owned()),
        "[a-z]{2,10}\\.(com|de|co\\.uk|io)",
    ];
    (local, domain)
}

proptest! {
    // Failures are kept beside this file and replayed first on every run.
    #![proptest_config(ProptestConfig {
        failure_persistence: Some(Box::new(FileFailurePersistence::Direct(
            concat!(env!("CARGO_MANIFEST_DIR"), "/tests/properties.proptest-regressions"),
        ))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn email_normalization_never_panics_and_is_idempotent(raw in "\\PC{0,40}") {
        let _deadline = common::deadline(Duration::from_secs(60));
        if let Ok(normalized) = normalize_email(&raw) {
            prop_assert_eq!(normalize_email(&normalized), Ok(normalized.clone()));
        }
    }

    /// leadflow's one-pass check of plain addresses agrees with the
    /// `email_address` crate on every string: plain addresses built from
    /// atoms and labels of every character the rules treat apart; sizes
    /// around the limits (a 64-character local part, 63-character labels,
    /// a 254-character domain); and text with quotes, display names,
    /// domain literals and non-ASCII, which the crate judges itself.
    #[test]
    fn plain_addresses_are_judged_as_the_crate_judges_them(
        atoms in proptest::collection::vec("[a-z0-9!#'+_~\\-]{0,30}", 1..4),
        labels in proptest::collection::vec("[a-z0-9_\\-]{0,66}", 1..6),
        (local_len, label_len, repeats) in (60usize..70, 58usize..66, 1usize..6),
        (local, domain) in ("[a-z0-9.!#'+_~\\-\"@ <>\\[\\]é]{0,70}", "[a-z0-9.\\-_@ <>\\[\\]é]{0,70}"),
        text in "\\PC{0,40}",
    ) {
        let _deadline = common::deadline(Duration::from_secs(60));
        let sized = format!(
            "{}@{}com",
            "a".repeat(local_len),
            format!("{}.", "b".repeat(label_len)).repeat(repeats)
        );
        for address in [
            format!("{}@{}", atoms.join("."), labels.join(".")),
            sized,
            format!("{local}@{domain}"),
            text,
        ] {
            prop_assert_eq!(
                is_valid_address(&address),
                email_address::EmailAddress::is_valid(&address),
                "{:?}", address
            );
        }
    }

    #[test]
    fn reference_lookups_never_panic(text in "\\PC{0,30}") {
        let _deadline = common::deadline(Duration::from_secs(60));
        let country = reference::country(&text);
        let _ = reference::e164(&text, country);
        let lower = text.to_lowercase();
        let _ = reference::email_class(&lower, reference::registrable_domain(&lower).unwrap_or(&lower));
        let _ = reference::registrable_domain(&text);
    }

    #[test]
    fn the_dedupe_key_ignores_case_whitespace_and_provider_spelling(
        (local, domain) in address(),
        upper in proptest::collection::vec(any::<bool>(), 0..40),
        pad in "[ \\t]{0,3}",
        tag in "[a-z0-9]{1,6}",
        dot_at in 1usize..8,
    ) {
        let _deadline = common::deadline(Duration::from_secs(60));
        let original = format!("{local}@{domain}");
        let Some(expected) = key(&original) else { return Ok(()); };
        // Case and surrounding whitespace never matter.
        let cased: String = original
            .chars()
            .zip(upper.iter().chain(std::iter::repeat(&false)))
            .map(|(c, up)| if *up { c.to_ascii_uppercase() } else { c })
            .collect();
        prop_assert_eq!(key(&format!("{pad}{cased}{pad}")), Some(expected));
        if matches!(domain.as_str(), "gmail.com" | "googlemail.com" | "outlook.com" | "icloud.com") {
            prop_assert_eq!(key(&format!("{local}+{tag}@{domain}")), Some(expected));
        }
        if matches!(domain.as_str(), "gmail.com" | "googlemail.com") {
            let flat = local.replace('.', "");
            let split = dot_at.min(flat.len().saturating_sub(1)).max(1);
            let dotted = if flat.len() > 1 { format!("{}.{}", &flat[..split], &flat[split..]) } else { flat.clone() };
            prop_assert_eq!(key(&format!("{dotted}@gmail.com")), Some(expected));
            prop_assert_eq!(key(&format!("{flat}@googlemail.com")), Some(expected));
        }
    }

    #[test]
    fn decoders_never_panic_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _deadline = common::deadline(Duration::from_secs(60));
        for format in [Format::Json, Format::Avro] {
            let _ = Decoder::new(format, 64 * 1024).decode(Some(&bytes), Some(0));
        }
    }

    #[test]
    fn the_pipeline_never_panics_on_lead_shaped_json(
        email in "\\PC{0,20}",
        source in "(AzureMarketplace|AzurePortal|SPZA|AppSource|TestDrive|\\PC{0,6})(-\\PC{0,8})?(\\|\\PC{0,12})?",
        action in proptest::option::of("\\PC{0,10}"),
        country in "\\PC{0,4}",
        phone in "[0-9+ ()-]{0,18}",
        title in "\\PC{0,20}",
    ) {
        let _deadline = common::deadline(Duration::from_secs(60));
        let lead = serde_json::json!({
            "UserDetails": {"Email": email, "Country": country, "Phone": phone, "Title": title},
            "LeadSource": source,
            "ActionCode": action,
            "OfferTitle": "Contoso Gateway (BYOL)",
        });
        let bytes = serde_json::to_vec(&lead).unwrap_or_default();
        let mut pipeline = testkit::pipeline(&testkit::generated_config(Format::Json));
        let _ = pipeline.process(testkit::input(&bytes, 0, 0));
    }

    #[test]
    fn every_score_lies_in_0_to_100_whatever_the_rules(
        behaviour_max in 0i32..=100,
        fit_share in 0.0f64..=1.0,
        points in proptest::collection::vec(-200i32..200, 17),
        lead_json in "(INS|PLT|DNC|Create|StartTestDrive|Other)",
        title in "(CEO|VP Sales|Director|IT Manager|Engineer|)",
        email in "(a@contoso\\.com|a@gmail\\.com|a@stateu\\.edu|a@mailinator\\.com)",
        company in proptest::option::of("[A-Z][a-z]{2,8}"),
    ) {
        let _deadline = common::deadline(Duration::from_secs(60));
        let fit_max = ((100 - behaviour_max) as f64 * fit_share) as i32;
        let mut rules = DEFAULT_RULES.to_owned();
        let replacements = [
            ("[behaviour]\nmax = 60", format!("[behaviour]\nmax = {behaviour_max}")),
            ("[fit]\nmax = 40", format!("[fit]\nmax = {fit_max}")),
            ("notes = 5", format!("notes = {}", points[0])),
            ("Create = 60", format!("Create = {}", points[1])),
            ("INS = 50", format!("INS = {}", points[2])),
            ("PLT = 50", format!("PLT = {}", points[3])),
            ("StartTestDrive = 40", format!("StartTestDrive = {}", points[4])),
            ("other = 20", format!("other = {}", points[5])),
            ("company = 5", format!("company = {}", points[6])),
            ("incomplete_profile = -5", format!("incomplete_profile = {}", points[7])),
            ("c_level = 25", format!("c_level = {}", points[8])),
            ("vp = 20", format!("vp = {}", points[9])),
            ("director = 15", format!("director = {}", points[10])),
            ("manager = 10", format!("manager = {}", points[11])),
            ("business = 10", format!("business = {}", points[12])),
            ("free = -10", format!("free = {}", points[13])),
            ("education = 0", format!("education = {}", points[14])),
            ("disposable = 0", format!("disposable = {}", points[15])),
            ("target_country = 10", format!("target_country = {}", points[16])),
        ];
        for (from, to) in &replacements {
            prop_assert!(rules.contains(from), "the default rules no longer hold {:?}", from);
            rules = rules.replacen(from, to, 1);
        }
        let rules = ScoringRules::parse(Path::new("prop.toml"), &rules).expect("valid rules");
        let lead = serde_json::json!({
            "UserDetails": {"Email": email, "Title": title, "Company": company},
            "LeadSource": format!("SPZA-{lead_json}|contoso.x"),
        });
        let raw = leadflow::stages::decode::decode_json(Some(&serde_json::to_vec(&lead).unwrap_or_default()), Some(0), 4096)
            .expect("decodes");
        let lead = leadflow::stages::enrich::enrich(raw, &leadflow::catalog::Catalog::default()).expect("enriches");
        let s = score(&lead, &rules);
        prop_assert!(s.points <= 100);
        prop_assert!((0..=behaviour_max).contains(&s.behaviour));
        prop_assert!((0..=fit_max).contains(&s.fit));
        prop_assert_eq!(i32::from(s.points), s.behaviour + s.fit);
    }
}

/// The fuzzer's seed corpus (`fuzz/corpus/decode`) replayed as a test, the
/// way the fuzz target feeds it: the first byte picks JSON (even) or Avro
/// (odd). Keeps the seeds meaningful and panic-free without a fuzzer.
#[test]
fn the_fuzz_seed_corpus_decodes_without_panicking() {
    let _deadline = common::deadline(Duration::from_secs(60));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/fuzz/corpus/decode");
    let mut pipelines = [Format::Json, Format::Avro]
        .map(|format| testkit::pipeline(&testkit::generated_config(format)));
    let mut routed = 0;
    let mut seeds = 0;
    for entry in std::fs::read_dir(dir).expect("seed corpus") {
        let data = std::fs::read(entry.expect("entry").path()).expect("seed");
        let Some((selector, value)) = data.split_first() else {
            continue;
        };
        seeds += 1;
        let input = testkit::input(value, testkit::EXAMPLE_TIMESTAMP_MS, 0);
        let outcome = pipelines[usize::from(selector % 2)].process(input);
        if matches!(outcome, leadflow::pipeline::Outcome::Routed { .. }) {
            routed += 1;
        }
    }
    assert!(seeds >= 20, "only {seeds} seeds");
    // The seeds are mostly real leads in both formats, not just noise.
    assert!(routed >= 10, "only {routed} seeds were routed");
}
