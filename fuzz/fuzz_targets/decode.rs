//! Fuzzes the decoder and the stages behind it with arbitrary record values.
//! `scripts/test.sh` checks that it compiles, so it cannot rot unseen.
//! The first byte picks the input format (even: JSON, odd: Avro); the rest is
//! the record value. Any panic is a bug: bad input must become an error.

#![no_main]

use std::sync::{LazyLock, Mutex};

use leadflow::pipeline::Pipeline;
use leadflow::stages::decode::Format;
use leadflow::testkit;
use libfuzzer_sys::fuzz_target;

fn pipeline(format: Format) -> Mutex<Pipeline> {
    Mutex::new(testkit::pipeline(&testkit::generated_config(format)))
}

static JSON: LazyLock<Mutex<Pipeline>> = LazyLock::new(|| pipeline(Format::Json));
static AVRO: LazyLock<Mutex<Pipeline>> = LazyLock::new(|| pipeline(Format::Avro));

fuzz_target!(|data: &[u8]| {
    let Some((selector, value)) = data.split_first() else {
        return;
    };
    let pipeline = if selector % 2 == 0 { &JSON } else { &AVRO };
    let mut pipeline = pipeline.lock().unwrap_or_else(|e| e.into_inner());
    let input = testkit::input(value, testkit::EXAMPLE_TIMESTAMP_MS, 0);
    // Both hops: re-keying on the raw topic, the whole pipeline after it.
    let _ = pipeline.rekey(input);
    let _ = pipeline.process(input);
});
