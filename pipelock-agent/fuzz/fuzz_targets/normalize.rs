//! `scan::text::normalize::Normalizer`: any chunking gives the output of
//! `normalize` (one whole feed); the output is valid UTF-8 and never holds
//! two whitespace bytes in a row (every run is collapsed to one byte).
#![no_main]
use libfuzzer_sys::fuzz_target;
use pipelock_agent::scan::text::normalize::{Normalizer, normalize};

mod common;

fuzz_target!(|data: &[u8]| {
    let (sizes, payload) = common::plan(data);
    let whole = normalize(payload);

    let mut split = Vec::new();
    let mut n = Normalizer::default();
    for c in common::chunks(payload, sizes) {
        n.feed(c, &mut split);
    }
    n.finish(&mut split);
    assert!(split == whole, "chunking changed the normalised text");
    assert!(std::str::from_utf8(&whole).is_ok(), "output is not UTF-8");
    let ws = |b: &u8| matches!(b, b' ' | b'\n');
    assert!(
        !whole.windows(2).any(|w| ws(&w[0]) && ws(&w[1])),
        "uncollapsed whitespace run"
    );
});
