//! Phone numbers to E.164: `phonenumber`'s metadata compiled per region on
//! first use and read the way `phonenumber` reads it, and `phonenumber`
//! itself for what those patterns leave undecided.

use std::collections::HashMap;
use std::sync::{LazyLock, OnceLock};

use super::{COUNTRIES, Country};

impl Country {
    /// Whether `digits` could be a valid national number here: one of the
    /// region's types of number (fixed line, mobile, toll free, …) by
    /// `phonenumber`'s metadata, with or without the region's trunk prefix
    /// (Russia's `8`, say: `8 495 …` is Moscow, not a number in Vietnam,
    /// whose calling code is 84); `true` when the metadata does not say.
    fn may_be_national(&self, digits: &str) -> bool {
        let Some(patterns) = self.phone_region.and_then(number_patterns) else {
            return true;
        };
        patterns.is_valid(digits)
            || patterns
                .trunk_prefix
                .as_deref()
                .and_then(|prefix| digits.strip_prefix(prefix))
                .is_some_and(|national| patterns.is_valid(national))
    }
}

/// Every region's number patterns, compiled on first use, and the regions
/// that share each calling code, in `phonenumber`'s order.
struct PhoneRegions {
    patterns: HashMap<&'static str, OnceLock<Option<NumberPatterns>>>,
    by_code: HashMap<u16, Vec<&'static str>>,
}

static PHONE_REGIONS: LazyLock<PhoneRegions> = LazyLock::new(|| {
    let database = &*phonenumber::metadata::DATABASE;
    let mut patterns = HashMap::new();
    let mut by_code = HashMap::new();
    for meta in database.iter() {
        patterns.insert(meta.id(), OnceLock::new());
        let code = meta.country_code();
        by_code
            .entry(code)
            .or_insert_with(|| database.region(&code).unwrap_or_default());
    }
    PhoneRegions { patterns, by_code }
});

/// A region's patterns, compiled from `phonenumber`'s metadata the first
/// time a lead needs them. `phonenumber` matches the same patterns through
/// one cache shared by all regions and keyed by pattern text, which costs
/// microseconds per pattern (hashing and comparing the text, then an
/// unanchored search); these are anchored and cost tens of nanoseconds.
fn number_patterns(region: impl AsRef<str>) -> Option<&'static NumberPatterns> {
    let region = region.as_ref();
    PHONE_REGIONS
        .patterns
        .get(region)?
        .get_or_init(|| NumberPatterns::compile(region))
        .as_ref()
}

struct NumberPatterns {
    calling_code: u16,
    general: LengthsAndPattern,
    /// The region's types of number, grouped by their possible lengths.
    types: Vec<LengthsAndPattern>,
    trunk_prefix: Option<String>,
    /// What is dropped from the start of a national number before it is
    /// read (the trunk prefix, carrier codes), anchored.
    prefix_for_parsing: Option<regex::Regex>,
    /// How what `prefix_for_parsing` captured is rewritten, if it is.
    prefix_transform: Option<String>,
    /// The prefix for dialling abroad, anchored.
    international_prefix: Option<regex::Regex>,
    /// Where several regions share a calling code: the leading digits of
    /// this region's national numbers, anchored.
    leading_digits: Option<regex::Regex>,
}

/// One or more of `phonenumber`'s descriptors, matched as its
/// `Descriptor::is_match` does: a possible length (any, when the metadata
/// lists none), and the pattern matching from the first digit.
struct LengthsAndPattern {
    /// Bit `n` set: `n` digits are possible. `None`: any number of digits.
    lengths: Option<u32>,
    /// Lengths possible only for local dialling, as bits.
    local_lengths: u32,
    pattern: regex::Regex,
}

impl NumberPatterns {
    fn compile(region: &str) -> Option<NumberPatterns> {
        let meta = phonenumber::metadata::DATABASE.by_id(region)?;
        let d = meta.descriptors();
        let mut groups: Vec<(Option<u32>, Vec<&str>)> = Vec::new();
        for desc in number_types(d).into_iter().flatten() {
            let lengths = length_bits(desc.possible_length());
            let pattern = desc.national_number().as_str();
            match groups.iter_mut().find(|(l, _)| *l == lengths) {
                Some((_, patterns)) => patterns.push(pattern),
                None => groups.push((lengths, vec![pattern])),
            }
        }
        let types = groups
            .into_iter()
            .map(|(lengths, patterns)| LengthsAndPattern::compile(lengths, &patterns))
            .collect::<Option<Vec<_>>>()?;
        let general = d.general();
        Some(NumberPatterns {
            general: LengthsAndPattern {
                local_lengths: length_bits(general.possible_local_length()).unwrap_or(0),
                ..LengthsAndPattern::compile(
                    length_bits(general.possible_length()),
                    &[general.national_number().as_str()],
                )?
            },
            types,
            trunk_prefix: meta.national_prefix().map(str::to_owned),
            prefix_for_parsing: anchored(meta.national_prefix_for_parsing().map(|p| p.as_str()))?,
            prefix_transform: meta.national_prefix_transform_rule().map(str::to_owned),
            international_prefix: anchored(meta.international_prefix().map(|p| p.as_str()))?,
            leading_digits: anchored(meta.leading_digits().map(|p| p.as_str()))?,
            calling_code: meta.country_code(),
        })
    }

    /// Whether `national` is a number of some type here: what
    /// `phonenumber`'s validation asks of a national number once its
    /// region is known.
    fn is_valid(&self, national: &str) -> bool {
        self.general.is_match(national) && self.types.iter().any(|t| t.is_match(national))
    }
}

/// One of `phonenumber`'s patterns, matching from the start only, as it
/// uses them. `Some(None)` when there is none; `None` if it does not
/// compile.
fn anchored(pattern: Option<&str>) -> Option<Option<regex::Regex>> {
    match pattern {
        None => Some(None),
        Some(pattern) => compile_anchored(&[pattern]).map(Some),
    }
}

/// Any of `patterns`, matching from the start.
fn compile_anchored(patterns: &[&str]) -> Option<regex::Regex> {
    let alternatives: Vec<String> = patterns.iter().map(|p| format!("(?:{p})")).collect();
    // As `phonenumber` builds them: its patterns may contain layout
    // whitespace.
    regex::RegexBuilder::new(&format!("^(?:{})", alternatives.join("|")))
        .ignore_whitespace(true)
        .build()
        .ok()
}

impl LengthsAndPattern {
    fn compile(lengths: Option<u32>, patterns: &[&str]) -> Option<LengthsAndPattern> {
        let pattern = compile_anchored(patterns)?;
        Some(LengthsAndPattern {
            lengths,
            local_lengths: 0,
            pattern,
        })
    }

    /// Whether `number` is shorter than any number here, as
    /// `phonenumber::validator::length` judges it for the general
    /// descriptor: a local-only length is not too short.
    fn too_short(&self, number: &str) -> bool {
        let Ok(length) = u32::try_from(number.len()) else {
            return false;
        };
        let local = 1u32
            .checked_shl(length)
            .is_some_and(|bit| self.local_lengths & bit != 0);
        let shortest = self.lengths.map(u32::trailing_zeros);
        !local && shortest.is_some_and(|shortest| length < shortest)
    }

    fn is_match(&self, number: &str) -> bool {
        let length_fits = self.lengths.is_none_or(|bits| {
            u32::try_from(number.len())
                .ok()
                .and_then(|n| 1u32.checked_shl(n))
                .is_some_and(|bit| bits & bit != 0)
        });
        length_fits && self.pattern.is_match(number)
    }
}

/// Possible lengths as a bit set; `None` for an empty list, which
/// `phonenumber` reads as "any length".
fn length_bits(lengths: &[u16]) -> Option<u32> {
    (!lengths.is_empty()).then(|| {
        lengths
            .iter()
            .filter_map(|n| 1u32.checked_shl(u32::from(*n)))
            .fold(0, |bits, bit| bits | bit)
    })
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

/// The phone number in E.164 (`+` and up to 15 digits), if it is one.
///
/// Microsoft sends digits with the country code and without `+`. Digits that
/// start with a calling code become E.164 directly when nothing says
/// otherwise: a `+` or `00`, the lead's country's own calling code, no
/// country, or digits that are no valid national number of that country
/// (a foreign mobile, say). A valid national number, with or without its
/// trunk prefix, gets the country's calling code (see [`national_e164`]).
/// Other forms (a prefix for dialling abroad, carrier codes leadflow does
/// not read, invalid numbers) are parsed by `phonenumber` with the country
/// as the hint, which costs ten to a thousand times more.
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
    if !international && let Some(e164) = country.and_then(|c| national_e164(digits, c)) {
        return Some(e164);
    }
    size_phone_regex_cache();
    let number = phonenumber::parse(country.and_then(|c| c.phone_region), trimmed).ok()?;
    phonenumber::is_valid(&number)
        .then(|| number.format().mode(phonenumber::Mode::E164).to_string())
}

/// E.164 of `digits` as a valid national number of the lead's country,
/// read with leadflow's compiled patterns the way `phonenumber::parse`
/// and `phonenumber::is_valid` read it (prefix for parsing and its
/// rewrite rule, the trunk prefix, the region among those sharing a
/// calling code); `None` leaves the number to those two: a prefix for
/// dialling abroad, the calling code in front, an invalid number. A test
/// checks that both agree over every region.
fn national_e164(digits: &str, country: &Country) -> Option<String> {
    let here = number_patterns(country.phone_region?)?;
    let starts_abroad = here
        .international_prefix
        .as_ref()
        .is_some_and(|prefix| prefix.is_match(digits));
    if starts_abroad || starts_with_number(digits, here.calling_code) {
        return None;
    }
    let trunk = here.trunk_prefix.as_deref();
    let mut national = std::borrow::Cow::Borrowed(digits);
    match &here.prefix_for_parsing {
        Some(parsing) => {
            if let Some(captures) = parsing.captures(digits) {
                let last = captures.get(captures.len() - 1);
                match (&here.prefix_transform, last) {
                    (Some(rule), Some(_)) => {
                        let rewritten = parsing.replace(digits, rule.as_str());
                        if !here.general.is_match(digits) || here.general.is_match(&rewritten) {
                            national = std::borrow::Cow::Owned(rewritten.into_owned());
                        }
                    }
                    _ => {
                        let end = captures.get(0)?.end();
                        national = std::borrow::Cow::Borrowed(digits.get(end..)?);
                    }
                }
            }
        }
        None => {
            if let Some(rest) = trunk.and_then(|prefix| digits.strip_prefix(prefix)) {
                national = std::borrow::Cow::Borrowed(rest);
            }
        }
    }
    // `parse` then drops the trunk prefix once more, and keeps what is
    // left only if it is not too short to be a number here.
    let mut national: &str = &national;
    if let Some(rest) = trunk.and_then(|prefix| national.strip_prefix(prefix)) {
        national = rest;
    }
    if here.general.too_short(national) {
        national = digits;
    }
    // Longer numbers, or all zeros, are errors of `phonenumber`'s own.
    if !(2..=16).contains(&national.len()) || national.bytes().all(|b| b == b'0') {
        return None;
    }
    judging_region(here, national)?
        .is_valid(national)
        .then(|| format!("+{}{national}", here.calling_code))
}

/// The region whose patterns judge `national` under `here`'s calling
/// code, chosen as `phonenumber` chooses among regions that share one: the
/// first whose leading digits match or, for a region without leading
/// digits, whose numbers it is. `None` when no region is.
fn judging_region(
    here: &'static NumberPatterns,
    national: &str,
) -> Option<&'static NumberPatterns> {
    let regions = PHONE_REGIONS.by_code.get(&here.calling_code)?;
    if let [_only] = regions.as_slice() {
        return Some(here);
    }
    for region in regions {
        let patterns = number_patterns(region)?;
        let chosen = match &patterns.leading_digits {
            Some(leading) => leading.is_match(national),
            None => patterns.is_valid(national),
        };
        if chosen {
            return Some(patterns);
        }
    }
    None
}

/// How many compiled patterns `phonenumber` keeps, for the numbers left to
/// it. Its own default is 100 for all regions together. Parsing and
/// validating one national number touches a dozen of its region's
/// patterns, so a stream with leads from more than a handful of countries
/// evicted and recompiled patterns on nearly every number: 2.5 ms each
/// over every region's example numbers, against 34 µs with room for all
/// of them (and 1.6 µs now that leadflow reads those itself; see
/// `e164_every_region` in `benches/stages.rs`). The cache holds every
/// distinct pattern of `phonenumber` 0.3.10's metadata (2,058, checked by
/// a test).
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

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::reference::country;

    /// Numbers to try in a region: each type's example number, it with a
    /// digit more, a digit fewer and its last digit changed, and random
    /// digits of every length up to 17; each also after the trunk prefix.
    fn test_numbers(meta: &phonenumber::Metadata, rng: &mut fastrand::Rng) -> Vec<String> {
        let mut numbers: Vec<String> = Vec::new();
        for example in number_types(meta.descriptors())
            .into_iter()
            .flatten()
            .filter_map(|t| t.example())
        {
            numbers.push(example.to_owned());
            numbers.push(format!("{example}{}", rng.digit(10)));
            numbers.push(example[..example.len().saturating_sub(1)].to_owned());
            let mut changed: Vec<u8> = example.bytes().collect();
            if let Some(last) = changed.last_mut() {
                *last = b'0' + (*last - b'0' + 5) % 10;
            }
            numbers.push(String::from_utf8(changed).unwrap_or_default());
        }
        for length in 2..=17 {
            for _ in 0..5 {
                numbers.push((0..length).map(|_| rng.digit(10)).collect());
            }
        }
        let trunk = meta.national_prefix().unwrap_or_default();
        let with_trunk: Vec<String> = numbers.iter().map(|n| format!("{trunk}{n}")).collect();
        numbers.extend(with_trunk);
        numbers
    }

    /// leadflow's compiled patterns against `phonenumber`'s own matching,
    /// for every region.
    #[test]
    fn compiled_patterns_judge_national_numbers_as_phonenumber_does() {
        let mut rng = fastrand::Rng::with_seed(7);
        let mut regions = 0;
        let mut valid = 0;
        let mut checked = 0;
        for meta in phonenumber::metadata::DATABASE.iter() {
            let Some(patterns) = NumberPatterns::compile(meta.id()) else {
                panic!("{} does not compile", meta.id());
            };
            regions += 1;
            let d = meta.descriptors();
            let oracle = |n: &str| {
                d.general().is_match(n)
                    && number_types(d).into_iter().flatten().any(|t| t.is_match(n))
            };
            let candidates = test_numbers(meta, &mut rng);
            for candidate in &candidates {
                let expected = oracle(candidate);
                assert_eq!(
                    patterns.is_valid(candidate),
                    expected,
                    "{} {candidate}",
                    meta.id()
                );
                checked += 1;
                valid += usize::from(expected);
            }
        }
        assert!(regions > 200, "{regions} regions");
        assert!(
            valid > 1_000 && valid < checked,
            "{valid} of {checked} valid"
        );
    }

    /// Wherever leadflow reads a national number itself, `phonenumber`
    /// reads it the same, in every region, punctuated or not.
    #[test]
    fn national_numbers_read_as_phonenumber_reads_them() {
        let mut rng = fastrand::Rng::with_seed(11);
        let (mut decided, mut valid_examples) = (0, 0);
        for meta in phonenumber::metadata::DATABASE.iter() {
            let Some(country) = country(meta.id()).filter(|c| c.phone_region.is_some()) else {
                continue;
            };
            let trunk = meta.national_prefix().unwrap_or_default();
            let d = meta.descriptors();
            let candidates = test_numbers(meta, &mut rng);
            for candidate in &candidates {
                let ours = national_e164(candidate, country);
                let theirs = phonenumber::parse(country.phone_region, candidate)
                    .ok()
                    .filter(phonenumber::is_valid)
                    .map(|n| n.format().mode(phonenumber::Mode::E164).to_string());
                if let Some(ours) = ours {
                    assert_eq!(Some(ours), theirs, "{} {candidate}", meta.id());
                    decided += 1;
                } else if theirs.is_some() && candidate.len() > 6 {
                    valid_examples += 1;
                }
            }
            // Punctuated as people write numbers.
            if let Some(example) = d.fixed_line().and_then(|t| t.example()) {
                let (head, tail) = example.split_at(example.len() / 2);
                let written = format!("({trunk}{head}) {tail}");
                if let Some(ours) = national_e164(&format!("{trunk}{example}"), country) {
                    let theirs = phonenumber::parse(country.phone_region, &written)
                        .ok()
                        .filter(phonenumber::is_valid)
                        .map(|n| n.format().mode(phonenumber::Mode::E164).to_string());
                    assert_eq!(Some(ours), theirs, "{} {written}", meta.id());
                }
            }
        }
        // Most valid national numbers are read without `phonenumber`.
        assert!(
            decided > 3 * valid_examples,
            "{decided} decided, {valid_examples} left"
        );
    }

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
        // The first number left to `phonenumber` sizes the cache: here, a
        // number dialled from the US, after its prefix for abroad.
        assert_eq!(
            e164("011 44 20 7946 0018", country("US")).as_deref(),
            Some("+442079460018")
        );
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
        // German numbers come in almost any length, but this is none of
        // Germany's types of number, so it is the US mobile it looks like;
        // a German mobile keeps its region.
        let de = country("DE");
        assert!(de.is_some_and(|de| !de.may_be_national("14255551234")));
        assert_eq!(e164("14255551234", de).as_deref(), Some("+14255551234"));
        assert_eq!(e164("0151 23456789", de).as_deref(), Some("+4915123456789"));
    }
}
