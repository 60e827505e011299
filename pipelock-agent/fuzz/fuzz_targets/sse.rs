//! `scan::text::sse::SseParser`: any chunking gives the same sequence of
//! extracted texts as one whole feed; nothing panics.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pipelock_agent::scan::text::sse::SseParser;

mod common;

fn run(max_event: usize, pieces: &[&[u8]]) -> Vec<Vec<u8>> {
    let mut p = SseParser::new(max_event);
    let mut out = Vec::new();
    for c in pieces {
        p.feed(c, &mut |t| out.push(t.to_vec()));
    }
    p.finish(&mut |t| out.push(t.to_vec()));
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&m, data)) = data.split_first() else {
        return;
    };
    // Small limits reach the oversized-event path; 0 stands for a large one.
    let max_event = if m == 0 { 1 << 16 } else { usize::from(m) };
    let (sizes, payload) = common::plan(data);
    let whole = run(max_event, &[payload]);
    let split = run(max_event, &common::chunks(payload, sizes));
    assert_eq!(split, whole, "chunking changed the extracted SSE text");
});
