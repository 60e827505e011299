//! The BIP-39 English word list as a lookup table, and the phrase checksum.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

/// Open-addressing table: word packed little-endian in a `u64` → index.
const SLOTS: usize = 4096;

pub(super) struct Table {
    keys: Vec<u64>,
    idx: Vec<u16>,
}

#[inline]
fn slot(key: u64) -> usize {
    (key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - 12)) as usize
}

pub(super) fn pack(word: &str) -> u64 {
    word.bytes()
        .take(8)
        .enumerate()
        .fold(0, |acc, (i, b)| acc | u64::from(b) << (8 * i))
}

pub(super) fn table() -> &'static Table {
    static T: OnceLock<Table> = OnceLock::new();
    T.get_or_init(|| {
        let mut t = Table {
            keys: vec![0; SLOTS],
            idx: vec![0; SLOTS],
        };
        for (i, w) in bip39::Language::English.word_list().iter().enumerate() {
            let key = pack(w);
            let mut s = slot(key);
            while t.keys[s] != 0 {
                s = (s + 1) % SLOTS;
            }
            t.keys[s] = key;
            t.idx[s] = i as u16;
        }
        t
    })
}

/// Index of a lowercase word packed by [`pack`], if it is a BIP-39 word.
#[inline]
pub(super) fn lookup(t: &Table, key: u64) -> Option<u16> {
    let mut s = slot(key);
    loop {
        let k = t.keys[s];
        if k == key {
            return Some(t.idx[s]);
        }
        if k == 0 {
            return None;
        }
        s = (s + 1) % SLOTS;
    }
}

/// At least a third of the words are distinct. Generated phrases always are
/// (12 random words of 2048); repetitive text ("test test test …", padding)
/// would otherwise pass the 4–8-bit checksum by chance, and so do the
/// all-`abandon` / all-`zoo` test vectors, which are public anyway.
pub(super) fn varied(idx: &[u16]) -> bool {
    let mut seen = [0u64; 32];
    let mut distinct = 0;
    for &i in idx {
        let (w, b) = (usize::from(i / 64) % 32, i % 64);
        if seen[w] >> b & 1 == 0 {
            seen[w] |= 1 << b;
            distinct += 1;
        }
    }
    distinct * 3 >= idx.len()
}

/// BIP-39 checksum of a 12/15/18/21/24-word sequence of indices.
pub(super) fn checksum_ok(idx: &[u16]) -> bool {
    let n = idx.len();
    let mut buf = [0u8; 33];
    let mut acc: u32 = 0;
    let mut bits = 0u32;
    let mut k = 0;
    for &i in idx {
        acc = (acc << 11) | u32::from(i & 0x7ff);
        bits += 11;
        while bits >= 8 {
            bits -= 8;
            buf[k] = (acc >> bits) as u8;
            k += 1;
        }
        acc &= (1 << bits) - 1;
    }
    let ent = n * 4 / 3;
    let cs_bits = n / 3;
    let cs = if bits == 0 { u32::from(buf[32]) } else { acc };
    let h = Sha256::digest(&buf[..ent]);
    u32::from(h[0] >> (8 - cs_bits)) == cs
}
