//! `proxy::sniff::classify_bytes` (the classifier `sniff` runs on each peek
//! of a connection's first bytes: TLS ClientHello, HTTP/1, h2c preface).
//! Nothing panics, and a verdict on a prefix is final: once the first bytes
//! say HTTP or "other", more bytes never change it, and a ClientHello
//! parsed from a prefix reads the same with more bytes after it.
#![no_main]
use libfuzzer_sys::fuzz_target;
use pipelock_agent::proxy::sniff::{Sniffed, classify_bytes};

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else {
        return;
    };
    let full = classify_bytes(data);
    if data.len() >= 2 && data[0] == 0x16 && data[1] == 0x03 {
        assert!(!matches!(full, Ok(Some(Sniffed::Http { .. }))));
    }
    // A prefix, as an earlier peek would have seen it.
    let cut = usize::from(cut) * data.len() / 256;
    let prefix = classify_bytes(&data[..cut]);
    match prefix {
        Ok(Some(Sniffed::Tls(info))) => {
            if let Ok(Some(later)) = &full {
                assert_eq!(later, &Sniffed::Tls(info), "ClientHello changed");
            }
        }
        Ok(Some(p)) => {
            let later = full.expect("a final non-TLS verdict became an error");
            assert_eq!(later, Some(p), "a final verdict changed with more bytes");
        }
        Ok(None) | Err(_) => {}
    }
});
