//! `scan::text::unescape::JsonUnescape`: any chunking gives the output of
//! one whole feed; the output is never longer than the input (every escape
//! shrinks or stays), and input without a backslash is unchanged.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pipelock_agent::scan::text::unescape::JsonUnescape;

mod common;

fuzz_target!(|data: &[u8]| {
    let (sizes, payload) = common::plan(data);
    let mut whole = Vec::new();
    let mut u = JsonUnescape::default();
    u.feed(payload, &mut whole);
    u.finish(&mut whole);
    assert!(u.is_idle());

    let mut split = Vec::new();
    let mut u = JsonUnescape::default();
    for c in common::chunks(payload, sizes) {
        u.feed(c, &mut split);
    }
    u.finish(&mut split);
    assert_eq!(split, whole, "chunking changed the unescaped text");
    assert!(whole.len() <= payload.len());
    if !payload.contains(&b'\\') {
        assert_eq!(whole, payload);
    }
});
