//! Micro-benchmarks of the stages, alone and composed, per lead, and of the
//! dedupe state at 1 and 10 million keys. Run with `cargo bench --bench
//! stages`; `docs/BENCHMARKS.md` records a run. Inputs are generated leads
//! (the generator's mix: duplicates, malformed records, both storefronts),
//! cycled so that caches see a realistic spread.

use std::hint::black_box;

use divan::Bencher;
use divan::counter::ItemsCount;
use leadflow::catalog::Catalog;
use leadflow::config::Config;
use leadflow::domain::{DedupeKey, Lead, Score};
use leadflow::generate::{Generator, GeneratorOptions};
use leadflow::pipeline::{Pipeline, PipelineSettings};
use leadflow::stages::decode::{Decoder, Format};
use leadflow::stages::dedupe::Deduper;
use leadflow::stages::encode::Encoder;
use leadflow::stages::enrich::enrich;
use leadflow::stages::route::{Destination, RoutingTable, route};
use leadflow::stages::score::{ScoringRules, score};
use leadflow::testkit;

fn main() {
    divan::main();
}

const LEADS: usize = 10_000;
/// The whole path keeps dedupe state, so it gets enough distinct leads that
/// a long run (`--sample-count 10000 --sample-size 10`) is not mostly
/// repeats of leads it has already seen.
const WHOLE_PATH_LEADS: usize = 100_000;
const WINDOW_MS: i64 = 180 * 86_400_000;

fn config() -> Config {
    testkit::generated_config(Format::Json)
}

/// Generated records: (value, record timestamp).
fn records(format: Format, count: usize) -> Vec<(Vec<u8>, i64)> {
    Generator::new(GeneratorOptions {
        format,
        ..GeneratorOptions::default()
    })
    .take(count)
    .map(|lead| (lead.value, lead.timestamp_ms))
    .collect()
}

struct Fixture {
    catalog: Catalog,
    rules: ScoringRules,
    routing: RoutingTable,
    /// Leads that decode and enrich, with their score and destination.
    routed: Vec<(Lead, Score, Destination)>,
}

fn fixture() -> Fixture {
    let config = config();
    let catalog = config.catalog().expect("catalog");
    let rules = config.scoring_rules().expect("rules");
    let routing = config.routing_table();
    let decoder = Decoder::new(Format::Json, 1 << 20);
    let routed = records(Format::Json, LEADS)
        .into_iter()
        .filter_map(|(value, ts)| decoder.decode(Some(&value), Some(ts)).ok())
        .filter_map(|raw| enrich(raw, &catalog).ok())
        .filter_map(|lead| {
            let score = score(&lead, &rules);
            let destination = route(&lead, &score, &routing).ok()?;
            Some((lead, score, destination))
        })
        .collect();
    Fixture {
        catalog,
        rules,
        routing,
        routed,
    }
}

/// Cycles through `items`, one per iteration.
fn cycle<'a, T>(items: &'a [T]) -> impl FnMut() -> &'a T + 'a {
    let mut i = 0;
    move || {
        i = (i + 1) % items.len();
        &items[i]
    }
}

#[divan::bench(args = [Format::Json, Format::Avro])]
fn decode(bencher: Bencher, format: Format) {
    let records = records(format, LEADS);
    let decoder = Decoder::new(format, 1 << 20);
    let mut next = cycle(&records);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (value, ts) = next();
        black_box(decoder.decode(Some(value), Some(*ts)).ok())
    });
}

#[divan::bench]
fn enrich_lead(bencher: Bencher) {
    let fixture = fixture();
    let decoder = Decoder::new(Format::Json, 1 << 20);
    let raws: Vec<_> = records(Format::Json, LEADS)
        .into_iter()
        .filter_map(|(value, ts)| decoder.decode(Some(&value), Some(ts)).ok())
        .collect();
    let mut next = cycle(&raws);
    bencher
        .counter(ItemsCount::new(1usize))
        .with_inputs(|| next().clone())
        .bench_local_values(|raw| black_box(enrich(raw, &fixture.catalog).ok()));
}

#[divan::bench]
fn dedupe_check_and_record(bencher: Bencher) {
    let fixture = fixture();
    let mut deduper = Deduper::new(WINDOW_MS, usize::MAX);
    deduper.add_partition(0);
    let mut next = cycle(&fixture.routed);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (lead, _, _) = next();
        if deduper.duplicate_of(0, lead).is_none() {
            black_box(deduper.record(0, lead));
        }
        // Keep the journal from growing: commit as a batch would.
        deduper.commit();
    });
}

#[divan::bench]
fn score_lead(bencher: Bencher) {
    let fixture = fixture();
    let mut next = cycle(&fixture.routed);
    bencher
        .counter(ItemsCount::new(1usize))
        .bench_local(|| black_box(score(&next().0, &fixture.rules)));
}

#[divan::bench]
fn route_lead(bencher: Bencher) {
    let fixture = fixture();
    let mut next = cycle(&fixture.routed);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (lead, score, _) = next();
        black_box(route(lead, score, &fixture.routing).ok())
    });
}

#[divan::bench(args = [Format::Json, Format::Avro])]
fn encode(bencher: Bencher, format: Format) {
    let fixture = fixture();
    let encoder = Encoder::new(format);
    let mut next = cycle(&fixture.routed);
    let mut out = Vec::new();
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (lead, score, destination) = next();
        encoder.encode(lead, score, *destination, Some("nurture"), &mut out);
        black_box(out.len())
    });
}

/// The whole path per record: decode → enrich → dedupe → score → route →
/// encode, over the generator's mix (so some records stop early, as in a
/// real stream).
#[divan::bench(args = [(Format::Json, Format::Json), (Format::Json, Format::Avro), (Format::Avro, Format::Avro)])]
fn whole_path(bencher: Bencher, (input, output): (Format, Format)) {
    let config = config();
    let mut settings = PipelineSettings::from_config(&config).expect("settings");
    settings.input_format = input;
    settings.dedupe_max_keys = usize::MAX;
    let mut pipeline = Pipeline::new(settings);
    pipeline.dedupe().add_partition(0);
    let encoder = Encoder::new(output);
    let records = records(input, WHOLE_PATH_LEADS);
    let mut next = cycle(&records);
    let mut offset = 0;
    let mut out = Vec::new();
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (value, ts) = next();
        offset += 1;
        let outcome = pipeline.process(testkit::input(value, *ts, offset));
        if let leadflow::pipeline::Outcome::Routed {
            destination,
            lead,
            score,
        } = &outcome
        {
            encoder.encode(lead, score, *destination, Some("nurture"), &mut out);
            black_box(out.len());
        }
        pipeline.commit_batch();
        black_box(outcome)
    });
}

/// Dedupe state holding `keys` keys of generated leads' shape.
fn filled_deduper(keys: u64) -> (Deduper, Lead) {
    let fixture = fixture();
    let mut lead = fixture.routed[0].0.clone();
    let mut deduper = Deduper::new(WINDOW_MS, usize::MAX);
    deduper.add_partition(0);
    for i in 0..keys {
        lead.dedupe_key =
            DedupeKey(u128::from(i).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        lead.person_offer_key = lead.dedupe_key;
        deduper.record(0, &lead);
        if i.is_multiple_of(65_536) {
            deduper.commit();
        }
    }
    deduper.commit();
    (deduper, lead)
}

#[divan::bench(args = [1_000_000_u64, 10_000_000])]
fn dedupe_at_size(bencher: Bencher, keys: u64) {
    let before = leadflow::metrics::resident_memory_bytes().unwrap_or(0);
    let (mut deduper, mut lead) = filled_deduper(keys);
    let after = leadflow::metrics::resident_memory_bytes().unwrap_or(0);
    // The memory figure the issue asks for, printed beside the timings.
    println!(
        "dedupe state, {keys} keys: {:.1} bytes/key by map capacity, {:.1} bytes/key by resident memory",
        deduper.bytes() as f64 / keys as f64,
        after.saturating_sub(before) as f64 / keys as f64
    );
    let mut i = keys;
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        // Half repeats of held keys, half new ones.
        i += 1;
        let n = if i.is_multiple_of(2) { i % keys } else { i };
        lead.dedupe_key =
            DedupeKey(u128::from(n).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835));
        lead.person_offer_key = lead.dedupe_key;
        if deduper.duplicate_of(0, &lead).is_none() {
            black_box(deduper.record(0, &lead));
        }
        deduper.commit();
    });
}

/// E.164 for national numbers (with their trunk prefix) of every region
/// `phonenumber` knows, round after round: the slow path of a stream whose
/// leads come from everywhere, where `phonenumber`'s shared cache of
/// compiled patterns matters.
#[divan::bench]
fn e164_every_region(bencher: Bencher) {
    let phones: Vec<(String, &leadflow::reference::Country)> = phonenumber::metadata::DATABASE
        .iter()
        .filter_map(|meta| {
            let country = leadflow::reference::country(meta.id())?;
            let example = meta.descriptors().fixed_line()?.example()?;
            let prefix = meta.national_prefix().unwrap_or_default();
            Some((format!("{prefix}{example}"), country))
        })
        .collect();
    let before = leadflow::metrics::resident_memory_bytes().unwrap_or(0);
    let valid = phones
        .iter()
        .filter(|(phone, country)| leadflow::reference::e164(phone, Some(country)).is_some())
        .count();
    let after = leadflow::metrics::resident_memory_bytes().unwrap_or(0);
    let patterns = phonenumber::metadata::DATABASE
        .cache()
        .lock()
        .map_or(0, |cache| cache.len());
    println!(
        "e164: {valid} of {} regions' example numbers valid; {patterns} compiled patterns, {:.1} MB resident",
        phones.len(),
        after.saturating_sub(before) as f64 / 1e6
    );
    let mut next = cycle(&phones);
    bencher.counter(ItemsCount::new(1usize)).bench_local(|| {
        let (phone, country) = next();
        black_box(leadflow::reference::e164(phone, Some(country)))
    });
}
